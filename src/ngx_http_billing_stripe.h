
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


typedef struct ngx_http_billing_stripe_call_s  ngx_http_billing_stripe_call_t;

/* called in the parent request's context once the call is over */
typedef void (*ngx_http_billing_stripe_handler_pt)(ngx_http_request_t *r,
    ngx_http_billing_stripe_call_t *call);


struct ngx_http_billing_stripe_call_s {
    ngx_uint_t                          kind;     /* CTX_STRIPE, first */

    ngx_http_request_t                 *request;  /* the parent */
    ngx_http_billing_stripe_handler_pt  handler;

    ngx_uint_t                          method;   /* NGX_HTTP_POST, GET */
    ngx_str_t                           path;     /* "/v1/customers" */
    ngx_str_t                           body;     /* form */
    ngx_str_t                           idempotency_key;

    /* the outcome: Stripe's object, or why there is none */
    ngx_uint_t                          status;
    json_t                             *json;
    ngx_str_t                           error;

    /* private */
    ngx_http_request_t                 *sr;       /* the attempt under way */
    ngx_uint_t                          attempts;
    ngx_msec_t                          deadline;
    ngx_event_t                         retry;
    ngx_uint_t                          log_level;
    ngx_int_t                           should_retry;
    u_char                             *buf;
    size_t                              len;
    size_t                              size;
    unsigned                            masked:1;
    unsigned                            running:1;
    unsigned                            too_large:1;
};


/*
 * Starts the call from the parent request r, retried with backoff and the same
 * idempotency key while Stripe or the way to it fails in a retryable
 * way, for at most billing_stripe_timeout.  The handler then finds
 * call->json (2xx) or call->status and call->error.
 *
 * Returns NGX_OK (the handler will be called) or NGX_ERROR.
 */
ngx_int_t ngx_http_billing_stripe_call(ngx_http_request_t *r,
    ngx_http_billing_stripe_call_t *call);

/* a string member of Stripe's object, or an empty string */
ngx_int_t ngx_http_billing_stripe_string(ngx_http_billing_stripe_call_t *call,
    const char *name, ngx_str_t *value);

ngx_int_t ngx_http_billing_stripe_init(ngx_conf_t *cf);


#endif /* _NGX_HTTP_BILLING_STRIPE_H_INCLUDED_ */
