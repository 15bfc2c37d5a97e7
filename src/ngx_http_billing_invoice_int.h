
/*
 * The billing engine's job, for its two files: the job's life
 * (ngx_http_billing_invoice.c) and its steps at Stripe
 * (ngx_http_billing_invoice_steps.c).
 */


#ifndef _NGX_HTTP_BILLING_INVOICE_INT_H_INCLUDED_
#define _NGX_HTTP_BILLING_INVOICE_INT_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_billing_invoice.h"
#include "ngx_http_billing_store.h"
#include "ngx_http_billing_stripe.h"
#include "ngx_billing_form.h"


/* how often a job looks again after another job's invoice won */
#define NGX_HTTP_BILLING_INVOICE_RESTARTS  3

#define NGX_HTTP_BILLING_INVOICE_FORM      4096


struct ngx_http_billing_invoice_job_s {
    ngx_pool_t                          *pool;
    ngx_log_t                            log;
    ngx_http_billing_owner_t             owner;
    ngx_http_billing_invoice_spec_t      spec;

    /* how far it got, from Redis then from Stripe */
    ngx_str_t                            customer;
    ngx_str_t                            invoice;
    ngx_str_t                            status;
    ngx_str_t                            names[NGX_HTTP_BILLING_STORE_ITEMS];
    ngx_str_t                            ids[NGX_HTTP_BILLING_STORE_ITEMS];
    ngx_uint_t                           item;       /* being made */
    ngx_uint_t                           restarts;

    ngx_http_billing_stripe_call_t       call;
    ngx_http_billing_invoice_result_t    result;
    ngx_event_t                          done;

    unsigned                             detached:1;
    unsigned                             checked:1;  /* not cancelled */
    unsigned                             counted:1;  /* billing_status */
};


ngx_int_t ngx_http_billing_invoice_dup(ngx_pool_t *pool,
    ngx_str_t *dst, ngx_str_t *src);
void ngx_http_billing_invoice_resume(
    ngx_http_billing_invoice_job_t *job);
void ngx_http_billing_invoice_next(
    ngx_http_billing_invoice_job_t *job);
void ngx_http_billing_invoice_stripe_failed(
    ngx_http_billing_invoice_job_t *job);
void ngx_http_billing_invoice_unavailable(
    ngx_http_billing_invoice_job_t *job);
void ngx_http_billing_invoice_finish(
    ngx_http_billing_invoice_job_t *job, ngx_int_t rc);
ngx_int_t ngx_http_billing_invoice_form(
    ngx_http_billing_invoice_job_t *job, ngx_billing_form_t *form);
ngx_int_t ngx_http_billing_invoice_stripe(
    ngx_http_billing_invoice_job_t *job, ngx_billing_form_t *form,
    ngx_str_t *path, const char *step, ngx_str_t *name);
void ngx_http_billing_invoice_customer(
    ngx_http_billing_stripe_call_t *call);
void ngx_http_billing_invoice_created_invoice(
    ngx_http_billing_stripe_call_t *call);
void ngx_http_billing_invoice_item(
    ngx_http_billing_stripe_call_t *call);
void ngx_http_billing_invoice_finalized(
    ngx_http_billing_stripe_call_t *call);
void ngx_http_billing_invoice_checked(void *data, redisReply *reply);


#endif /* _NGX_HTTP_BILLING_INVOICE_INT_H_INCLUDED_ */
