
/*
 * The billing engine: issues one invoice of a subscription at Stripe,
 * step by step, on its own (see ngx_http_billing_invoice.c).
 */


#ifndef _NGX_HTTP_BILLING_INVOICE_H_INCLUDED_
#define _NGX_HTTP_BILLING_INVOICE_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_billing_module.h"
#include "ngx_http_billing_store.h"
#include "ngx_http_billing_stripe.h"


typedef struct ngx_http_billing_invoice_job_s  ngx_http_billing_invoice_job_t;


typedef struct {
    /* names the item's step: its idempotency key, its field in Redis */
    ngx_str_t                         name;
    ngx_str_t                         description;

    /* amount >= 0: that amount; else quantity x unit_amount_decimal */
    int64_t                           amount;
    int64_t                           quantity;
    ngx_str_t                         unit_amount_decimal;

    /* period[start] and period[end], when period_end is not 0 */
    time_t                            period_start;
    time_t                            period_end;
} ngx_http_billing_invoice_item_t;


typedef struct {
    ngx_str_t                         key;
    ngx_str_t                         value;
} ngx_http_billing_invoice_meta_t;


typedef struct {
    ngx_int_t                         rc;      /* NGX_OK, or a status */
    ngx_str_t                         invoice;
    ngx_uint_t                        stripe_status;
    ngx_str_t                         message;
} ngx_http_billing_invoice_result_t;


/*
 * rc: NGX_OK, NGX_HTTP_BAD_GATEWAY (Stripe), 503 (Redis), or 409 (a
 * first invoice whose subscription was cancelled before it was
 * finalized: it stays a draft)
 */
typedef void (*ngx_http_billing_invoice_done_pt)(void *data,
    ngx_http_billing_invoice_result_t *result);


typedef struct {
    ngx_str_t                         subscription;
    ngx_str_t                         kind;       /* initial, period, final */

    /* the subscription's field that names the invoice */
    ngx_str_t                         field;

    /* what the steps' idempotency keys start with, e.g. "...:initial" */
    ngx_str_t                         key;

    /* the consumer org's customer at Stripe, made if it has none */
    ngx_str_t                         consumer_org;
    ngx_str_t                         email;
    ngx_str_t                         name;

    ngx_str_t                         currency;
    ngx_int_t                         days_until_due;

    /* what the invoice is for, recorded with it */
    time_t                            period_start;
    time_t                            period_end;
    int64_t                           units;

    ngx_http_billing_invoice_item_t  *items;
    ngx_uint_t                        nitems;

    /* besides billing_subscription and billing_kind */
    ngx_http_billing_invoice_meta_t  *metadata;
    ngx_uint_t                        nmetadata;

    ngx_http_billing_invoice_done_pt  handler;
    void                             *data;
} ngx_http_billing_invoice_spec_t;


/*
 * Starts issuing the invoice; everything in spec is copied.  It is of
 * the marketplace of "from", its Stripe calls go to the locations of
 * the server of "from" (whose pool and log it does not use), and it
 * logs to a copy of log.  The handler is called once, never from within
 * this call, unless the job is detached first.  NULL: nothing was
 * started.
 */
ngx_http_billing_invoice_job_t *ngx_http_billing_invoice_issue(
    ngx_http_billing_invoice_spec_t *spec, ngx_http_billing_owner_t *from,
    ngx_log_t *log);

/* the handler will not be called; the job still goes to its end */
void ngx_http_billing_invoice_detach(ngx_http_billing_invoice_job_t *job);

/*
 * What Stripe's invoice object in a call's answer says of the invoice:
 * its page, currency, amount due, due date, and customer unless known.
 */
void ngx_http_billing_invoice_from_stripe(ngx_http_billing_stripe_call_t *call,
    ngx_http_billing_invoice_t *inv);


#endif /* _NGX_HTTP_BILLING_INVOICE_H_INCLUDED_ */
