
/*
 * Internals of billing_api shared by its two halves: the API
 * (ngx_http_billing_api.c) and DELETE subscriptions/{id}
 * (ngx_http_billing_cancel.c).  Only those two include it.
 */


#ifndef _NGX_HTTP_BILLING_API_INT_H_INCLUDED_
#define _NGX_HTTP_BILLING_API_INT_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include <jansson.h>

#include "ngx_http_billing_module.h"
#include "ngx_http_billing_api.h"
#include "ngx_http_billing_store.h"
#include "ngx_http_billing_invoice.h"
#include "ngx_http_billing_stripe.h"
#include "ngx_billing_plan.h"


typedef struct {
    ngx_http_billing_ctx_t           base;
    ngx_http_billing_owner_t         owner;

    ngx_billing_sub_request_t        req;
    ngx_str_t                        id;
    ngx_str_t                        created;

    /* the engine issuing the first invoice, while this request waits */
    ngx_http_billing_invoice_job_t  *job;

    /* DELETE: voiding a first invoice; waiting for the final one */
    ngx_http_billing_stripe_call_t   call;
    ngx_str_t                        invoice;
    ngx_str_t                        void_error;   /* Stripe's refusal */
    ngx_uint_t                       void_status;
    ngx_event_t                      poll;
    ngx_msec_t                       deadline;

    unsigned                         existed:1;     /* and was complete */
    /*
     * POST subscriptions/{id}/refresh: the open invoices (id and kind
     * each), the next to ask about, the questions under way
     */
    ngx_array_t                     *refresh_queue;
    ngx_uint_t                       refresh_next;
    ngx_uint_t                       refreshing;
    unsigned                         refresh_failed:1;
    unsigned                         refreshed:1;
} ngx_http_billing_api_ctx_t;


/* ngx_http_billing_api.c */
ngx_int_t ngx_http_billing_api_read(ngx_http_request_t *r);

/* ngx_http_billing_refresh.c */
ngx_int_t ngx_http_billing_api_refresh(ngx_http_request_t *r);
void ngx_http_billing_api_fail(ngx_http_request_t *r,
    ngx_uint_t status, const char *code, const char *message);
void ngx_http_billing_api_unavailable(ngx_http_request_t *r);
void ngx_http_billing_api_stripe_failed(ngx_http_request_t *r,
    ngx_http_billing_invoice_result_t *result);

/* ngx_http_billing_cancel.c */
void ngx_http_billing_api_cancelled(void *data, redisReply *reply);
void ngx_http_billing_api_poll(ngx_event_t *ev);
ngx_int_t ngx_http_billing_api_final(ngx_http_request_t *r,
    redisReply *sub, json_t *json);


#endif /* _NGX_HTTP_BILLING_API_INT_H_INCLUDED_ */
