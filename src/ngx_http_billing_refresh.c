
/*
 * POST subscriptions/{id}/refresh: the subscription's open invoices are
 * asked about at Stripe now, as reconciliation would in its next round,
 * and the answer is the subscription as it then is.  A question Stripe
 * did not answer makes it 502 stripe_error: what was learnt is kept.
 * At most a few questions are under way at a time, as in a round.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_billing_module.h"
#include "ngx_http_billing_api.h"
#include "ngx_http_billing_api_int.h"
#include "ngx_http_billing_store.h"
#include "ngx_http_billing_reconcile.h"
#include "ngx_http_billing_status.h"


static void ngx_http_billing_refresh_listed(void *data, redisReply *reply);
static void ngx_http_billing_refresh_asked(void *data, ngx_uint_t result);
static void ngx_http_billing_refresh_ask(ngx_http_request_t *r);
static void ngx_http_billing_refresh_done(ngx_http_request_t *r);


#define NGX_HTTP_BILLING_REFRESH_RUNS  4


/*
 * KEYS[1] the subscription, KEYS[2] its invoices; ARGV[1] the invoice
 * key prefix.  The reply: nil (unknown), or id and kind of each of its
 * open invoices.
 */

static const char  ngx_http_billing_refresh_lua[] =
    "if redis.call('EXISTS', KEYS[1]) == 0 then return false end\n"
    "local got = {}\n"
    "for _, id in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do\n"
    "  local h = redis.call('HMGET', ARGV[1] .. id, 'status', 'kind')\n"
    "  if h[1] == 'open' or h[1] == 'uncollectible' then\n"
    "    got[#got + 1] = id\n"
    "    got[#got + 1] = h[2] or ''\n"
    "  end\n"
    "end\n"
    "return got\n";


static ngx_http_billing_redis_script_t  ngx_http_billing_refresh_script;


ngx_int_t
ngx_http_billing_api_refresh(ngx_http_request_t *r)
{
    ngx_str_t                    argv[3];
    ngx_http_billing_api_ctx_t  *ctx;

    if (ngx_http_billing_refresh_script.source.len == 0) {
        ngx_http_billing_redis_script_init(&ngx_http_billing_refresh_script,
                                           ngx_http_billing_refresh_lua);
    }

    ctx = ngx_http_get_module_ctx(r, ngx_http_billing_module);

    if (ngx_http_billing_store_key(&ctx->owner, &argv[0], "sub:", &ctx->id,
                                   NULL)
        != NGX_OK
        || ngx_http_billing_store_key(&ctx->owner, &argv[1], "sub:",
                                      &ctx->id, ":invoices")
           != NGX_OK
        || ngx_http_billing_store_key(&ctx->owner, &argv[2], "invoice:",
                                      NULL, NULL)
           != NGX_OK)
    {
        return NGX_ERROR;
    }

    return ngx_http_billing_store_run(&ctx->owner,
                                      &ngx_http_billing_refresh_script, 2, 3,
                                      argv, ngx_http_billing_refresh_listed,
                                      r);
}


static void
ngx_http_billing_refresh_listed(void *data, redisReply *reply)
{
    ngx_http_request_t  *r = data;

    size_t                       i;
    ngx_str_t                   *q, s;
    ngx_uint_t                   k;
    ngx_connection_t            *c;
    ngx_http_billing_api_ctx_t  *ctx;

    c = r->connection;
    ctx = ngx_http_get_module_ctx(r, ngx_http_billing_module);

    if (reply == NULL || (reply->type != REDIS_REPLY_ARRAY
                          && reply->type != REDIS_REPLY_NIL))
    {
        ngx_http_billing_api_unavailable(r);
        goto done;
    }

    if (reply->type == REDIS_REPLY_NIL) {
        ngx_http_billing_api_fail(r, NGX_HTTP_NOT_FOUND, "not_found",
                                  "no such subscription");
        goto done;
    }

    /* the reply goes when this returns: the ids are copied */

    ctx->refresh_queue = ngx_array_create(r->pool, reply->elements + 1,
                                          sizeof(ngx_str_t));
    if (ctx->refresh_queue == NULL) {
        ngx_http_billing_api_fail(r, NGX_HTTP_INTERNAL_SERVER_ERROR,
                                  "internal_error", "out of memory");
        goto done;
    }

    for (i = 0; i + 1 < reply->elements; i += 2) {

        if (reply->element[i]->type != REDIS_REPLY_STRING
            || reply->element[i + 1]->type != REDIS_REPLY_STRING)
        {
            continue;
        }

        q = ngx_array_push_n(ctx->refresh_queue, 2);
        if (q == NULL) {
            break;
        }

        for (k = 0; k < 2; k++) {
            s.data = (u_char *) reply->element[i + k]->str;
            s.len = reply->element[i + k]->len;

            q[k].data = ngx_pstrdup(r->pool, &s);
            q[k].len = s.len;

            if (q[k].data == NULL && s.len) {
                ctx->refresh_failed = 1;
                q[0].len = 0;
            }
        }
    }

    ngx_http_billing_refresh_ask(r);

done:

    ngx_http_run_posted_requests(c);
}


static void
ngx_http_billing_refresh_asked(void *data, ngx_uint_t result)
{
    ngx_http_request_t  *r = data;

    ngx_connection_t            *c;
    ngx_http_billing_api_ctx_t  *ctx;

    c = r->connection;
    ctx = ngx_http_get_module_ctx(r, ngx_http_billing_module);

    if (result == NGX_HTTP_BILLING_REC_FAILED) {
        ctx->refresh_failed = 1;
    }

    ctx->refreshing--;

    ngx_http_billing_refresh_ask(r);

    ngx_http_run_posted_requests(c);
}


/* the next questions, while few are under way; the answer after the last */

static void
ngx_http_billing_refresh_ask(ngx_http_request_t *r)
{
    ngx_str_t                   *q;
    ngx_http_billing_api_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_billing_module);

    while (ctx->refreshing < NGX_HTTP_BILLING_REFRESH_RUNS
           && ctx->refresh_next < ctx->refresh_queue->nelts)
    {
        q = (ngx_str_t *) ctx->refresh_queue->elts + ctx->refresh_next;
        ctx->refresh_next += 2;

        if (q[0].len == 0) {
            continue;
        }

        ctx->refreshing++;

        if (ngx_http_billing_reconcile_invoice(&ctx->owner, &q[0], &ctx->id,
                                               &q[1],
                                               NGX_HTTP_BILLING_REC_REFRESH,
                                               ngx_http_billing_refresh_asked,
                                               r)
            != NGX_OK)
        {
            ctx->refreshing--;
            ctx->refresh_failed = 1;
        }
    }

    if (ctx->refreshing == 0
        && ctx->refresh_next >= ctx->refresh_queue->nelts)
    {
        ngx_http_billing_refresh_done(r);
    }
}


static void
ngx_http_billing_refresh_done(ngx_http_request_t *r)
{
    ngx_http_billing_api_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_billing_module);

    if (ctx->refresh_failed) {
        ngx_http_billing_api_fail(r, NGX_HTTP_BAD_GATEWAY, "stripe_error",
                                  "Stripe could not be asked about every "
                                  "open invoice of the subscription; what "
                                  "it answered is recorded");
        return;
    }

    ctx->refreshed = 1;

    if (ngx_http_billing_api_read(r) != NGX_OK) {
        ngx_http_billing_api_unavailable(r);
    }
}
