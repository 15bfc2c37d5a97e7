
/*
 * The Stripe API client: subrequests to the internal location named by
 * billing_stripe_location, whose proxy_pass decides where they go.
 */


#ifndef _NGX_HTTP_BILLING_STRIPE_H_INCLUDED_
#define _NGX_HTTP_BILLING_STRIPE_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include <jansson.h>

#include "ngx_http_billing_module.h"


/* the largest answer taken; a larger one fails the call */
#define NGX_HTTP_BILLING_STRIPE_MAX_BODY    (4 * 1024 * 1024)


typedef struct ngx_http_billing_stripe_call_s
    ngx_http_billing_stripe_call_t;
typedef struct ngx_http_billing_stripe_attempt_s
    ngx_http_billing_stripe_attempt_t;

/* called once the call is over, from the event loop */
typedef void (*ngx_http_billing_stripe_handler_pt)(
    ngx_http_billing_stripe_call_t *call);


struct ngx_http_billing_stripe_call_s {
    ngx_http_billing_owner_t            owner;
    ngx_http_billing_stripe_handler_pt  handler;
    void                               *data;

    ngx_uint_t                          method;   /* NGX_HTTP_POST, GET */
    ngx_str_t                           path;     /* "/v1/customers" */
    ngx_str_t                           body;     /* form */
    ngx_str_t                           idempotency_key;

    /* the outcome: Stripe's object, or why there is none */
    ngx_uint_t                          status;
    json_t                             *json;
    ngx_str_t                           error;

    /* private */
    ngx_http_billing_stripe_attempt_t  *attempt;  /* under way */
    ngx_uint_t                          attempts;
    ngx_msec_t                          sent_at;  /* the attempt's */
    ngx_msec_t                          deadline;
    ngx_event_t                         retry;
    ngx_event_t                         watchdog;
    ngx_pool_cleanup_t                 *cleanup;
    unsigned                            lost:1;   /* the attempt died */

    /* the call could not be made: nothing of Stripe's in the outcome */
    unsigned                            internal:1;
};


/*
 * Starts the call for call->owner, whose pool must outlive it (the
 * call is cancelled when the pool goes).  Each attempt is a subrequest
 * of a request of its own (ngx_http_billing_fake.h), so that the call
 * needs no client and survives its owner's client.  It is retried
 * with backoff and the same idempotency key while Stripe or the way to
 * it fails in a retryable way, for at most billing_stripe_timeout.  The
 * handler then finds call->json (2xx) or call->status and call->error.
 * A call struct may serve one call after another.  Should an attempt
 * hang past that (the last one may take one proxy_read_timeout more),
 * the call fails with 504 once billing_stripe_timeout has passed twice,
 * or a minute, whichever is longer, after its deadline.
 *
 * Returns NGX_OK (the handler will be called, never from within this
 * call) or NGX_ERROR.
 */
ngx_int_t ngx_http_billing_stripe_call(ngx_http_billing_stripe_call_t *call);

/*
 * nginx -t: billing_stripe_location must lead, in every server that makes
 * Stripe calls, to an internal location with a content handler, which is
 * then the only one a call may land in (a rewrite phase handler refuses
 * the others, before anything is sent).
 */
ngx_int_t ngx_http_billing_stripe_init(ngx_conf_t *cf);

/* the attempt r is landed elsewhere: it fails, and is not tried again */
void ngx_http_billing_stripe_misrouted(ngx_http_request_t *r);

/* the handler will not be called */
void ngx_http_billing_stripe_cancel(ngx_http_billing_stripe_call_t *call);

/* a string member of Stripe's object, or an empty string */
ngx_int_t ngx_http_billing_stripe_string(ngx_http_billing_stripe_call_t *call,
    const char *name, ngx_str_t *value);

/* for the filter module: the attempt r is, or NULL; and its filters */
ngx_http_billing_stripe_attempt_t *ngx_http_billing_stripe_attempt(
    ngx_http_request_t *r);
ngx_int_t ngx_http_billing_stripe_header(ngx_http_request_t *r);
ngx_int_t ngx_http_billing_stripe_body(ngx_http_request_t *r,
    ngx_chain_t *in);


#endif /* _NGX_HTTP_BILLING_STRIPE_H_INCLUDED_ */
