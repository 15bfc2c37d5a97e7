
/*
 * billing_api: DELETE subscriptions/{id}.
 *
 * A pending subscription's unpaid first invoice is voided in Stripe
 * before it is cancelled; an active (or past_due) one is cancelled at
 * once, and the answer waits, reading Redis, for its final invoice.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include <jansson.h>

#include "ngx_http_billing_api_int.h"
#include "ngx_http_billing_scheduler.h"
#include "ngx_billing_state.h"


static void ngx_http_billing_api_voided(ngx_http_billing_stripe_call_t *call);
static void ngx_http_billing_api_void_failed(ngx_http_request_t *r);
static void ngx_http_billing_api_void_recorded(void *data,
    redisReply *reply);


/*
 * DELETE: NGX_OK when the answer is complete (json has the final
 * invoice, or null when none is due), NGX_AGAIN to wait for it, and
 * NGX_DECLINED when it did not come in time (202).
 */

ngx_int_t
ngx_http_billing_api_final(ngx_http_request_t *r, redisReply *sub,
    json_t *json)
{
    size_t                       i;
    json_t                      *inv, *kind, *status;
    redisReply                  *v;
    ngx_http_billing_api_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_billing_module);

    v = ngx_http_billing_store_field(sub, "cancelled_from");

    if (v == NULL || v->type != REDIS_REPLY_STRING
        || !((v->len == 6 && ngx_strncmp(v->str, "active", 6) == 0)
             || (v->len == 8 && ngx_strncmp(v->str, "past_due", 8) == 0)))
    {
        /* pending (its first invoice voided) or payment_failed */
        json_object_set_new(json, "invoice", json_null());
        return NGX_OK;
    }

    v = ngx_http_billing_store_field(sub, "finals");

    if (v && v->type == REDIS_REPLY_STRING && v->len && v->str[0] != '0') {
        json_array_foreach(json_object_get(json, "invoices"), i, inv) {
            kind = json_object_get(inv, "kind");
            status = json_object_get(inv, "status");

            if (json_is_string(kind) && json_is_string(status)
                && ngx_strcmp(json_string_value(kind), "final") == 0
                && ngx_strcmp(json_string_value(status), "draft") != 0)
            {
                json_object_set(json, "invoice", inv);
                return NGX_OK;
            }
        }
    }

    if ((ngx_msec_int_t) (ctx->deadline - ngx_current_msec) > 0) {
        return NGX_AGAIN;
    }

    json_object_set_new(json, "invoice", json_null());

    return NGX_DECLINED;
}


void
ngx_http_billing_api_cancelled(void *data, redisReply *reply)
{
    ngx_http_request_t  *r = data;

    u_char                        *p;
    size_t                         len;
    ngx_str_t                      state, created;
    ngx_connection_t              *c;
    ngx_http_billing_api_ctx_t    *ctx;
    ngx_http_billing_main_conf_t  *bmcf;

    c = r->connection;
    ctx = ngx_http_get_module_ctx(r, ngx_http_billing_module);
    bmcf = ctx->owner.bmcf;

    if (reply && reply->type == REDIS_REPLY_NIL) {
        ngx_http_billing_api_fail(r, NGX_HTTP_NOT_FOUND, "not_found",
                                  "no such subscription");
        goto done;
    }

    if (reply == NULL || reply->type != REDIS_REPLY_ARRAY
        || reply->elements < 3
        || ngx_http_billing_store_copy(r->pool, &state, reply->element[0])
           != NGX_OK)
    {
        ngx_http_billing_api_unavailable(r);
        goto done;
    }

    if (state.len == 7 && ngx_strncmp(state.data, "pending", 7) == 0) {

        if (reply->elements != 4
            || ngx_http_billing_store_copy(r->pool, &ctx->invoice,
                                           reply->element[1])
               != NGX_OK
            || ngx_http_billing_store_copy(r->pool, &created, reply->element[3])
               != NGX_OK)
        {
            ngx_http_billing_api_unavailable(r);
            goto done;
        }

        if (ctx->invoice.len == 0
            || reply->element[2]->type != REDIS_REPLY_STRING
            || reply->element[2]->len == 0
            || (reply->element[2]->len == 4
                && ngx_strncmp(reply->element[2]->str, "void", 4) == 0))
        {
            /*
             * Nothing to void: no first invoice, a draft (the job making
             * it finalizes nothing once it sees the cancellation), or
             * void already.
             */

            if (ngx_http_billing_store_cancel(&ctx->owner, &ctx->id, 1,
                                              ngx_http_billing_api_cancelled,
                                              r)
                != NGX_OK)
            {
                ngx_http_billing_api_unavailable(r);
            }

            goto done;
        }

        /* the unpaid first invoice is voided first: nothing else to pay */

        len = sizeof("/v1/invoices//void") - 1 + ctx->invoice.len;
        p = ngx_pnalloc(r->pool, len);
        if (p == NULL) {
            ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
            goto done;
        }

        ctx->call.path.data = p;
        ctx->call.path.len = ngx_sprintf(p, "/v1/invoices/%V/void",
                                         &ctx->invoice)
                             - p;

        len = ctx->owner.market->prefix.len + sizeof("sub:::void") - 1
              + ctx->id.len + created.len;
        p = ngx_pnalloc(r->pool, len);
        if (p == NULL) {
            ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
            goto done;
        }

        ctx->call.idempotency_key.data = p;
        ctx->call.idempotency_key.len = ngx_sprintf(p, "%Vsub:%V:%V:void",
                                                    &ctx->owner.market->prefix,
                                                    &ctx->id, &created)
                                        - p;

        ctx->call.owner = ctx->owner;
        ctx->call.handler = ngx_http_billing_api_voided;
        ctx->call.data = r;
        ctx->call.method = NGX_HTTP_POST;
        ngx_str_set(&ctx->call.body, "");

        if (ngx_http_billing_stripe_call(&ctx->call) != NGX_OK) {
            ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
            goto done;
        }

        goto done;
    }

    /* cancelled: now or before; an active one gets its final invoice */

    if (reply->element[2]->type == REDIS_REPLY_STRING
        && ((reply->element[2]->len == 6
             && ngx_strncmp(reply->element[2]->str, "active", 6) == 0)
            || (reply->element[2]->len == 8
                && ngx_strncmp(reply->element[2]->str, "past_due", 8) == 0)))
    {
        (void) ngx_http_billing_scheduler_kick(ctx->owner.market, &ctx->id);
    }

    ctx->deadline = ngx_current_msec + bmcf->stripe_timeout
                    + ngx_http_billing_scheduler_final_wait(bmcf);

    if (ngx_http_billing_api_read(r) != NGX_OK) {
        ngx_http_billing_api_unavailable(r);
    }

done:

    ngx_http_run_posted_requests(c);
}


static void
ngx_http_billing_api_voided(ngx_http_billing_stripe_call_t *call)
{
    ngx_http_request_t  *r = call->data;

    ngx_str_t                    status;
    ngx_connection_t            *c;
    ngx_http_billing_invoice_t   inv;
    ngx_http_billing_api_ctx_t  *ctx;

    c = r->connection;
    ctx = ngx_http_get_module_ctx(r, ngx_http_billing_module);

    if (call->json == NULL || call->status < 200 || call->status >= 300) {

        if (call->method == NGX_HTTP_GET || call->internal
            || call->status < 400 || call->status >= 500)
        {
            if (call->method == NGX_HTTP_POST) {
                ctx->void_status = call->status;
                ctx->void_error = call->error;
            }

            ngx_http_billing_api_void_failed(r);
            goto done;
        }

        /*
         * Refused: void already (in the Dashboard, or by a void whose
         * idempotency key Stripe has forgotten)?  Stripe's invoice says.
         */

        ctx->void_status = call->status;
        ctx->void_error.len = call->error.len;
        ctx->void_error.data = ngx_pstrdup(r->pool, &call->error);

        if (ctx->void_error.data == NULL) {
            ctx->void_error.len = 0;
        }

        call->method = NGX_HTTP_GET;
        ngx_str_set(&call->idempotency_key, "");
        call->path.len -= sizeof("/void") - 1;

        if (ngx_http_billing_stripe_call(call) != NGX_OK) {
            ngx_http_billing_api_void_failed(r);
        }

        goto done;
    }

    if (call->method == NGX_HTTP_GET
        && (ngx_http_billing_stripe_string(call, "status", &status) != NGX_OK
            || status.len != 4 || ngx_strncmp(status.data, "void", 4) != 0))
    {
        ngx_http_billing_api_void_failed(r);
        goto done;
    }

    ngx_memzero(&inv, sizeof(ngx_http_billing_invoice_t));

    inv.id = ctx->invoice;
    inv.status = NGX_BILLING_INVOICE_VOID;
    ngx_str_set(&inv.event, "");
    inv.created = ngx_time();
    inv.subscription = ctx->id;
    ngx_str_set(&inv.kind, "initial");

    ngx_http_billing_invoice_from_stripe(call, &inv);

    if (ngx_http_billing_store_invoice(&ctx->owner, &inv,
                                       ngx_http_billing_api_void_recorded, r)
        != NGX_OK)
    {
        ngx_http_billing_api_unavailable(r);
    }

done:

    ngx_http_run_posted_requests(c);
}


/* Stripe's refusal of the void, as it said it */

static void
ngx_http_billing_api_void_failed(ngx_http_request_t *r)
{
    ngx_http_billing_api_ctx_t         *ctx;
    ngx_http_billing_invoice_result_t   result;

    ctx = ngx_http_get_module_ctx(r, ngx_http_billing_module);

    ngx_memzero(&result, sizeof(ngx_http_billing_invoice_result_t));
    result.rc = NGX_HTTP_BAD_GATEWAY;
    result.stripe_status = ctx->void_status;
    result.message = ctx->void_error;

    if (result.message.len == 0) {
        ngx_str_set(&result.message, "unexpected answer from Stripe");
    }

    ngx_http_billing_api_stripe_failed(r, &result);
}


static void
ngx_http_billing_api_void_recorded(void *data, redisReply *reply)
{
    ngx_http_request_t  *r = data;

    ngx_connection_t            *c;
    ngx_http_billing_api_ctx_t  *ctx;

    c = r->connection;
    ctx = ngx_http_get_module_ctx(r, ngx_http_billing_module);

    if (reply == NULL || reply->type != REDIS_REPLY_ARRAY
        || ngx_http_billing_store_cancel(&ctx->owner, &ctx->id, 1,
                                         ngx_http_billing_api_cancelled, r)
           != NGX_OK)
    {
        ngx_http_billing_api_unavailable(r);
    }

    ngx_http_run_posted_requests(c);
}


void
ngx_http_billing_api_poll(ngx_event_t *ev)
{
    ngx_http_request_t  *r = ev->data;

    ngx_connection_t  *c;

    c = r->connection;

    if (ngx_http_billing_api_read(r) != NGX_OK) {
        ngx_http_billing_api_unavailable(r);
    }

    ngx_http_run_posted_requests(c);
}
