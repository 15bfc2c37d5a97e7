
/*
 * The module's data in Redis: key layout and the scripts that change
 * several keys at once.  See "Redis key layout" in README.md.
 */


#ifndef _NGX_HTTP_BILLING_STORE_H_INCLUDED_
#define _NGX_HTTP_BILLING_STORE_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_billing_module.h"
#include "ngx_http_billing_redis.h"


/* what is known of an invoice, from a webhook or from Stripe's answer */
typedef struct {
    ngx_str_t                     id;
    ngx_int_t                     status;       /* NGX_BILLING_INVOICE_* */
    ngx_str_t                     event;        /* "" when not an event */
    int64_t                       created;
    ngx_str_t                     subscription;
    ngx_str_t                     kind;
    ngx_str_t                     customer;
    ngx_str_t                     hosted_invoice_url;
    ngx_str_t                     currency;
    int64_t                       amount_due;   /* -1 when unknown */
    int64_t                       due_date;     /* 0 when none */
} ngx_http_billing_invoice_t;


/* a new subscription, as POST subscriptions claims it */
typedef struct {
    ngx_str_t                     id;
    ngx_str_t                     consumer_org;
    ngx_str_t                     email;
    ngx_str_t                     name;
    ngx_str_t                     plan;         /* normalized JSON */
    ngx_str_t                     fingerprint;
    ngx_str_t                     period;       /* "month", "year", "3600" */
} ngx_http_billing_claim_t;


/* the scripts, made when the configuration loads; NGX_ERROR: said why */
ngx_int_t ngx_http_billing_store_init(void);

/* ngx_http_billing_store_invoice.c: the invoice script's, of the above */
ngx_int_t ngx_http_billing_store_invoice_init(void);

/*
 * Records an invoice's status, never going back (ngx_billing_state.h),
 * and moves its subscription when it is the first invoice.  The reply
 * is { status, changed (0/1), subscription state or "" (also when the
 * event was recorded already), the version published or 0 }.
 */
ngx_int_t ngx_http_billing_store_invoice(ngx_http_billing_owner_t *o,
    ngx_http_billing_invoice_t *inv, ngx_http_billing_redis_handler_pt handler,
    void *data);

/*
 * Creates the subscription, pending, unless it exists.  The reply is
 * { "new" | "exists" | "conflict", state, customer id, initial invoice,
 *   initial item, created at, initial invoice status }.
 */
ngx_int_t ngx_http_billing_store_claim(ngx_http_billing_owner_t *o,
    ngx_http_billing_claim_t *claim, ngx_http_billing_redis_handler_pt handler,
    void *data);

/* the consumer org's customer: the first one stored wins; reply: its id */
ngx_int_t ngx_http_billing_store_customer(ngx_http_billing_owner_t *o,
    ngx_str_t *sub, ngx_str_t *org, ngx_str_t *customer,
    ngx_http_billing_redis_handler_pt handler, void *data);

/*
 * Ties a new (draft) invoice to its subscription as "field" (e.g.
 * initial_invoice); reply: the invoice id the subscription has there.
 */
ngx_int_t ngx_http_billing_store_attach(ngx_http_billing_owner_t *o,
    ngx_str_t *sub, ngx_str_t *field, ngx_http_billing_invoice_t *inv,
    time_t period_start, time_t period_end, int64_t units,
    ngx_http_billing_redis_handler_pt handler, void *data);

/* the most items an invoice has */
#define NGX_HTTP_BILLING_STORE_ITEMS  8

/*
 * How far an invoice of the subscription got, to go on from there: the
 * reply is { customer id, invoice id (that "field" of the subscription),
 * its status, the Stripe id of each item named }, "" for what is not.
 */
ngx_int_t ngx_http_billing_store_resume(ngx_http_billing_owner_t *o,
    ngx_str_t *sub, ngx_str_t *org, ngx_str_t *field, ngx_str_t *items,
    ngx_uint_t nitems, ngx_http_billing_redis_handler_pt handler,
    void *data);

/* records the Stripe id of the invoice's item "name" */
ngx_int_t ngx_http_billing_store_item(ngx_http_billing_owner_t *o,
    ngx_str_t *invoice, ngx_str_t *name, ngx_str_t *item,
    ngx_http_billing_redis_handler_pt handler, void *data);

/*
 * A subscription and all its invoices in one reply: nil, or
 * { HGETALL of the subscription, { HGETALL of each invoice },
 *   HGETALL of its usage (period start -> units) }.
 */
ngx_int_t ngx_http_billing_store_get(ngx_http_billing_owner_t *o,
    ngx_str_t *sub, ngx_http_billing_redis_handler_pt handler, void *data);

/*
 * What the gate and the meter need: nil, or { state, first invoice, its
 * pay url, period start (activation; "" before), metering period }.
 */
ngx_int_t ngx_http_billing_store_gate(ngx_http_billing_owner_t *o,
    ngx_str_t *sub, ngx_http_billing_redis_handler_pt handler, void *data);

/*
 * Cancels the subscription, or for a pending one (voided 0) says which
 * first invoice is to be voided before; see the script for the reply.
 */
ngx_int_t ngx_http_billing_store_cancel(ngx_http_billing_owner_t *o,
    ngx_str_t *sub, ngx_uint_t voided,
    ngx_http_billing_redis_handler_pt handler, void *data);

/*
 * For the other parts' scripts (the scheduler's): runs a script (or,
 * script NULL, a command) for the owner; the key prefix + kind + id +
 * suffix; a number as a string in the owner's pool.
 */
ngx_int_t ngx_http_billing_store_run(ngx_http_billing_owner_t *o,
    ngx_http_billing_redis_script_t *script, ngx_uint_t nkeys,
    ngx_uint_t argc, ngx_str_t *argv,
    ngx_http_billing_redis_handler_pt handler, void *data);
ngx_int_t ngx_http_billing_store_key(ngx_http_billing_owner_t *o,
    ngx_str_t *key, const char *kind, ngx_str_t *id, const char *suffix);
ngx_int_t ngx_http_billing_store_num(ngx_http_billing_owner_t *o,
    ngx_str_t *s, int64_t n);

/* a string reply, copied into pool with a '\0' after it */
ngx_int_t ngx_http_billing_store_copy(ngx_pool_t *pool, ngx_str_t *dst,
    redisReply *reply);

/* the value of field in an HGETALL reply, or NULL */
redisReply *ngx_http_billing_store_field(redisReply *hash, const char *field);


#endif /* _NGX_HTTP_BILLING_STORE_H_INCLUDED_ */
