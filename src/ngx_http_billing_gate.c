
/*
 * billing_gate: access to product resources, by subscription state.
 *
 * It answers with a status code, as nginx's access modules do.  With
 * "satisfy all" (the default) it runs early in the rewrite phase, so
 * that it stands in front of "return" too: every check must pass, the
 * order only decides which denial is answered.  With "satisfy any" it
 * runs first in the access phase, where a denial is a 403 (a 401 when
 * there is no subscription) so that allow, auth_request and the rest
 * may still grant access; a second handler, last in the phase and so
 * reached only when none did, turns nginx's 403 into the gate's own
 * status.  nginx then answers that status itself, error_page included,
 * and the module's filter gives its page the JSON body.
 *
 * In the target location of auth_request it gates the main request:
 * the subrequest can only say 401 or 403 to auth_request (anything else
 * is a 500), so the decision goes to the main request's context, whose
 * answer the filter turns into the gate's own status and JSON, and the
 * main request is metered as its target location says.
 *
 * Decisions come from billing_cache when they are fresh, from Redis
 * otherwise.  Fresh means younger than the ttl (negative_ttl for
 * unknown ids) and known to this worker's pub/sub subscription, which
 * drops entries as soon as any node changes them; while that
 * subscription is down, nothing older than a second is trusted.  When
 * Redis cannot answer, an entry up to "stale" past its ttl is used.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include <jansson.h>

#include "ngx_http_billing_module.h"
#include "ngx_http_billing_gate.h"
#include "ngx_http_billing_gate_int.h"
#include "ngx_http_billing_json.h"
#include "ngx_http_billing_cache.h"
#include "ngx_http_billing_redis.h"
#include "ngx_http_billing_store.h"
#include "ngx_http_billing_status.h"
#include "ngx_billing_event.h"
#include "ngx_billing_state.h"
#include "ngx_billing_plan.h"


/* a payment seen by another node is honoured here within this */
#define NGX_HTTP_BILLING_GATE_UNSUBSCRIBED_TTL  1000

#define NGX_HTTP_BILLING_PAYMENT_REQUIRED       402


static ngx_int_t ngx_http_billing_gate_rewrite(ngx_http_request_t *r);
static ngx_int_t ngx_http_billing_gate_access(ngx_http_request_t *r);
static ngx_int_t ngx_http_billing_gate_access_last(ngx_http_request_t *r);
static ngx_int_t ngx_http_billing_gate_handler(ngx_http_request_t *r);
static ngx_int_t ngx_http_billing_gate_id(ngx_http_request_t *r,
    ngx_http_complex_value_t *cv, ngx_str_t *id);
static ngx_uint_t ngx_http_billing_gate_direct(ngx_http_request_t *r,
    ngx_http_billing_gate_value_t *gv);
static ngx_int_t ngx_http_billing_gate_variable(ngx_http_request_t *r,
    ngx_int_t index, ngx_str_t *id);
static ngx_int_t ngx_http_billing_gate_fresh(ngx_http_request_t *r,
    ngx_http_billing_entry_t *entry);
static void ngx_http_billing_gate_looked_up(void *data, redisReply *reply);
static ngx_int_t ngx_http_billing_gate_verdict(ngx_http_request_t *r,
    ngx_http_billing_gate_ctx_t *ctx);
static ngx_int_t ngx_http_billing_gate_let_through(ngx_http_request_t *r,
    ngx_http_billing_gate_ctx_t *ctx);
static ngx_int_t ngx_http_billing_gate_allow(ngx_http_request_t *r,
    ngx_http_billing_gate_ctx_t *ctx);
static void ngx_http_billing_gate_count(ngx_http_billing_gate_ctx_t *ctx,
    ngx_uint_t decision);
static ngx_int_t ngx_http_billing_gate_deny(ngx_http_request_t *r,
    ngx_http_billing_gate_ctx_t *ctx, ngx_uint_t status, const char *code,
    const char *message);
static ngx_int_t ngx_http_billing_gate_body(ngx_http_request_t *r,
    ngx_http_billing_gate_ctx_t *ctx);



ngx_int_t
ngx_http_billing_gate_init(ngx_conf_t *cf)
{
    ngx_array_t                *handlers;
    ngx_http_handler_pt        *h;
    ngx_http_core_main_conf_t  *cmcf;

    cmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_core_module);

    /* registered after nginx's own: run before them in their phase */

    h = ngx_array_push(&cmcf->phases[NGX_HTTP_REWRITE_PHASE].handlers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    *h = ngx_http_billing_gate_rewrite;

    h = ngx_array_push(&cmcf->phases[NGX_HTTP_ACCESS_PHASE].handlers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    *h = ngx_http_billing_gate_access;

    /* and one at the front of the array: run last of the access phase */

    handlers = &cmcf->phases[NGX_HTTP_ACCESS_PHASE].handlers;

    h = ngx_array_push(handlers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    h = handlers->elts;
    ngx_memmove(&h[1], &h[0], (handlers->nelts - 1) * sizeof(*h));
    h[0] = ngx_http_billing_gate_access_last;

    return NGX_OK;
}


static ngx_int_t
ngx_http_billing_gate_rewrite(ngx_http_request_t *r)
{
    ngx_int_t                  rc;
    ngx_http_core_loc_conf_t  *clcf;

    clcf = ngx_http_get_module_loc_conf(r, ngx_http_core_module);

    if (clcf->satisfy != NGX_HTTP_SATISFY_ALL) {
        return NGX_DECLINED;
    }

    rc = ngx_http_billing_gate_handler(r);

    /* in the rewrite phase, "go on" is NGX_DECLINED, "wait" NGX_DONE */

    if (rc == NGX_OK) {
        return NGX_DECLINED;
    }

    if (rc == NGX_AGAIN) {
        return NGX_DONE;
    }

    return rc;
}


static ngx_int_t
ngx_http_billing_gate_access(ngx_http_request_t *r)
{
    ngx_http_core_loc_conf_t  *clcf;

    clcf = ngx_http_get_module_loc_conf(r, ngx_http_core_module);

    if (clcf->satisfy == NGX_HTTP_SATISFY_ALL) {
        return NGX_DECLINED;
    }

    return ngx_http_billing_gate_handler(r);
}


static ngx_int_t
ngx_http_billing_gate_access_last(ngx_http_request_t *r)
{
    ngx_http_billing_gate_ctx_t  *ctx;

    /*
     * Nothing granted access.  A 401 of another module (auth_basic,
     * auth_request) stands, so that the client may authenticate;
     * a 403 becomes the gate's denial.
     */

    ctx = (r == r->main || ngx_http_billing_gate_auth_subrequest(r))
          ? ngx_http_get_module_ctx(r, ngx_http_billing_module) : NULL;

    if (ctx == NULL || ctx->base.kind != NGX_HTTP_BILLING_CTX_GATE
        || ctx->deny == 0 || ctx->waiting)
    {
        return NGX_DECLINED;
    }

    if (r->access_code == NGX_HTTP_FORBIDDEN
        || (r->access_code == NGX_HTTP_UNAUTHORIZED
            && ctx->deny == NGX_HTTP_UNAUTHORIZED))
    {
        /* auth_request hears only 401 and 403: the main request the rest */

        if (r == r->main) {
            ctx->returned = ctx->deny;
            r->access_code = ctx->deny;
        }

        if (ngx_http_billing_gate_body(r, ctx) != NGX_OK) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
    }

    return NGX_DECLINED;
}


static ngx_int_t
ngx_http_billing_gate_handler(ngx_http_request_t *r)
{
    ngx_http_billing_owner_t       owner;
    ngx_http_billing_gate_ctx_t   *ctx;
    ngx_http_billing_loc_conf_t   *blcf;
    ngx_http_billing_main_conf_t  *bmcf;

    blcf = ngx_http_get_module_loc_conf(r, ngx_http_billing_module);

    /*
     * Other subrequests belong to a request that passed already, the
     * module's own among them.
     */

    if (blcf->gate == NULL
        || (r != r->main && !ngx_http_billing_gate_auth_subrequest(r)))
    {
        return NGX_DECLINED;
    }

    ctx = ngx_http_get_module_ctx(r, ngx_http_billing_module);

    if (ctx) {
        if (ctx->base.kind != NGX_HTTP_BILLING_CTX_GATE) {
            return NGX_DECLINED;
        }

        if (ctx->waiting) {
            return NGX_AGAIN;
        }

        if (ctx->gate == blcf->gate) {
            return ngx_http_billing_gate_verdict(r, ctx);
        }

        ngx_memzero(ctx, sizeof(ngx_http_billing_gate_ctx_t));

    } else {
        /* a zeroing of known size, which the compiler does inline */

        ctx = ngx_palloc(r->pool, sizeof(ngx_http_billing_gate_ctx_t));
        if (ctx == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        ngx_memzero(ctx, sizeof(ngx_http_billing_gate_ctx_t));

        ngx_http_set_ctx(r, ctx, ngx_http_billing_module);
    }

    ctx->base.kind = NGX_HTTP_BILLING_CTX_GATE;
    ctx->gate = blcf->gate;
    ctx->market = ngx_http_billing_market(r);

    if (ngx_http_billing_gate_id(r, blcf->gate, &ctx->id) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (ctx->id.len == 0) {
        ctx->status = NGX_HTTP_BILLING_GATE_NO_ID;
        return ngx_http_billing_gate_verdict(r, ctx);
    }

    bmcf = ngx_http_get_module_main_conf(r, ngx_http_billing_module);

    /* only valid ids are ever stored: validated on a miss alone */

    if (bmcf->cache) {
        ctx->hash = ngx_http_billing_key_hash(&ctx->market->name, &ctx->id);
        ctx->hashed = 1;
    }

    if (bmcf->cache
        && ngx_http_billing_cache_get(bmcf->cache, &ctx->market->name,
                                      &ctx->id, ctx->hash, &ctx->entry,
                                      r->pool)
           == NGX_OK)
    {
        if (ngx_http_billing_gate_fresh(r, &ctx->entry) == NGX_OK) {
            ngx_http_billing_stat_inc(NGX_HTTP_BILLING_M_GATE_CACHE,
                                      ctx->market->index,
                                      NGX_HTTP_BILLING_CACHE_HIT, 0);

            ctx->status = NGX_HTTP_BILLING_GATE_KNOWN;
            return ngx_http_billing_gate_verdict(r, ctx);
        }

        /* rare: kept out of the context, which every request zeroes */

        ctx->stale = ngx_palloc(r->pool, sizeof(ngx_http_billing_entry_t));

        if (ctx->stale) {
            *ctx->stale = ctx->entry;
            ctx->has_stale = 1;
        }

    } else if (!ngx_billing_sub_id_valid((char *) ctx->id.data,
                                         ctx->id.len))
    {
        /* an id we could never have issued: no need to ask */

        ctx->status = NGX_HTTP_BILLING_GATE_KNOWN;
        ctx->entry.state = NGX_BILLING_SUB_NONE;
        return ngx_http_billing_gate_verdict(r, ctx);
    }

    if (bmcf->cache) {
        ngx_http_billing_stat_inc(NGX_HTTP_BILLING_M_GATE_CACHE,
                                  ctx->market->index,
                                  NGX_HTTP_BILLING_CACHE_MISS, 0);
    }

    ctx->asked = ngx_current_msec;

    ngx_http_billing_owner_request(&owner, r);

    if (ngx_http_billing_store_gate(&owner, &ctx->id,
                                    ngx_http_billing_gate_looked_up, r)
        != NGX_OK)
    {
        ctx->status = NGX_HTTP_BILLING_GATE_UNAVAILABLE;
        return ngx_http_billing_gate_verdict(r, ctx);
    }

    /* Redis answers, or fails, within its timeout */

    ctx->waiting = 1;
    r->read_event_handler = ngx_http_test_reading;

    return NGX_AGAIN;
}


/*
 * The subscription id.  A variable alone is read as the script would
 * read it, without the script; $http_NAME, when nginx's own header
 * lookup stands behind it, straight from the request's headers, the
 * header's lowercased name compared whole rather than byte by byte.
 */

static ngx_int_t
ngx_http_billing_gate_id(ngx_http_request_t *r, ngx_http_complex_value_t *cv,
    ngx_str_t *id)
{
    ngx_uint_t                      i;
    ngx_list_part_t                *part;
    ngx_table_elt_t                *h, *found;
    ngx_http_billing_gate_value_t  *gv;

    gv = (ngx_http_billing_gate_value_t *) cv;

    if (gv->index == NGX_ERROR) {
        return ngx_http_complex_value(r, cv, id);
    }

    if (gv->direct == NGX_CONF_UNSET_UINT) {
        gv->direct = ngx_http_billing_gate_direct(r, gv);
    }

    /* known already, or "set" (satisfy any runs after the rewrite phase) */

    if (!gv->direct || r->variables[gv->index].valid
        || r->variables[gv->index].not_found)
    {
        return ngx_http_billing_gate_variable(r, gv->index, id);
    }

    found = NULL;

    part = &r->headers_in.headers.part;
    h = part->elts;

    for (i = 0; /* void */ ; i++) {

        if (i >= part->nelts) {
            if (part->next == NULL) {
                break;
            }

            part = part->next;
            h = part->elts;
            i = 0;
        }

        if (h[i].hash == 0 || h[i].key.len != gv->header.len) {
            continue;
        }

        /*
         * "_" for "-" in the name, a header added without its lowercase
         * key, or (nginx 1.23 joins them) a second one: nginx decides.
         */

        if (found || h[i].lowcase_key == NULL
            || ngx_http_billing_key_cmp(h[i].lowcase_key, gv->header.data,
                                        gv->header.len)
               != 0)
        {
            return ngx_http_billing_gate_variable(r, gv->index, id);
        }

        found = &h[i];

#if (nginx_version < 1023000)
        /* before 1.23, the first one */
        break;
#endif
    }

    if (found == NULL) {
        ngx_str_null(id);
        return NGX_OK;
    }

    *id = found->value;

    return NGX_OK;
}


/* whether $http_NAME is nginx's header lookup (not a "set" variable) */

static ngx_uint_t
ngx_http_billing_gate_direct(ngx_http_request_t *r,
    ngx_http_billing_gate_value_t *gv)
{
    ngx_uint_t                  i;
    ngx_http_variable_t        *v, *pv;
    ngx_http_core_main_conf_t  *cmcf;

    if (gv->header.len == 0) {
        return 0;
    }

    cmcf = ngx_http_get_module_main_conf(r, ngx_http_core_module);

    v = cmcf->variables.elts;
    pv = cmcf->prefix_variables.elts;

    for (i = 0; i < cmcf->prefix_variables.nelts; i++) {
        if (pv[i].name.len == 5
            && ngx_strncmp(pv[i].name.data, "http_", 5) == 0)
        {
            return v[gv->index].get_handler == pv[i].get_handler;
        }
    }

    return 0;
}


static ngx_int_t
ngx_http_billing_gate_variable(ngx_http_request_t *r, ngx_int_t index,
    ngx_str_t *id)
{
    ngx_http_variable_value_t  *vv;

    vv = ngx_http_get_flushed_variable(r, index);

    if (vv == NULL) {
        return NGX_ERROR;
    }

    if (vv->not_found) {
        ngx_str_null(id);
        return NGX_OK;
    }

    id->data = vv->data;
    id->len = vv->len;

    return NGX_OK;
}


static ngx_int_t
ngx_http_billing_gate_fresh(ngx_http_request_t *r,
    ngx_http_billing_entry_t *entry)
{
    ngx_msec_t                     age, ttl;
    ngx_http_billing_main_conf_t  *bmcf;

    bmcf = ngx_http_get_module_main_conf(r, ngx_http_billing_module);

    age = ngx_current_msec - entry->fetched;

    ttl = (entry->state == NGX_BILLING_SUB_NONE) ? bmcf->cache->negative_ttl
                                                  : bmcf->cache->ttl;

    if (ngx_http_billing_gate_since == 0
        || ngx_http_billing_gate_since > entry->fetched)
    {
        /* a change may have gone unannounced to this worker */
        ttl = ngx_min(ttl, NGX_HTTP_BILLING_GATE_UNSUBSCRIBED_TTL);
    }

    return (age < ttl) ? NGX_OK : NGX_DECLINED;
}


static void
ngx_http_billing_gate_looked_up(void *data, redisReply *reply)
{
    ngx_http_request_t  *r = data;

    off_t                          version;
    redisReply                    *e;
    ngx_connection_t              *c;
    ngx_http_billing_entry_t      *entry;
    ngx_http_billing_gate_ctx_t   *ctx;
    ngx_http_billing_main_conf_t  *bmcf;

    c = r->connection;
    ctx = ngx_http_get_module_ctx(r, ngx_http_billing_module);
    bmcf = ngx_http_get_module_main_conf(r, ngx_http_billing_module);

    entry = &ctx->entry;
    ngx_memzero(entry, sizeof(ngx_http_billing_entry_t));
    entry->fetched = ctx->asked;

    ctx->waiting = 0;
    ctx->status = NGX_HTTP_BILLING_GATE_KNOWN;

    if (reply == NULL || reply->type == REDIS_REPLY_ERROR
        || (reply->type != REDIS_REPLY_NIL
            && (reply->type != REDIS_REPLY_ARRAY || reply->elements != 6)))
    {
        ctx->status = NGX_HTTP_BILLING_GATE_UNAVAILABLE;

    } else if (reply->type == REDIS_REPLY_ARRAY) {
        e = reply->element[0];

        if (e->type == REDIS_REPLY_STRING) {
            entry->state = ngx_billing_sub_state_parse(e->str, e->len);
        }

        e = reply->element[1];

        if (e->type == REDIS_REPLY_STRING) {
            entry->invoice.data = (u_char *) e->str;
            entry->invoice.len = e->len;
        }

        e = reply->element[2];

        if (e->type == REDIS_REPLY_STRING) {
            entry->pay_url.data = (u_char *) e->str;
            entry->pay_url.len = e->len;
        }

        /* the meter's: activation ("" before) and the metering period */

        e = reply->element[3];

        if (e->type == REDIS_REPLY_STRING && e->len) {
            entry->anchor = ngx_atotm((u_char *) e->str, e->len);

            if (entry->anchor == NGX_ERROR) {
                entry->anchor = 0;
            }
        }

        e = reply->element[4];

        if (e->type != REDIS_REPLY_STRING
            || ngx_billing_period_parse(&entry->period, e->str, e->len) != 0)
        {
            entry->period.kind = 0;
        }

        ngx_http_billing_entry_period(entry, ngx_time());

        e = reply->element[5];

        if (e->type == REDIS_REPLY_STRING) {
            version = ngx_atoof((u_char *) e->str, e->len);
            entry->version = (version > 0) ? (uint64_t) version : 0;
        }
    }

    if (ctx->status == NGX_HTTP_BILLING_GATE_KNOWN && bmcf->cache) {
        ngx_http_billing_cache_put(bmcf->cache, &ctx->market->name, &ctx->id,
                                   ctx->hash, entry, c->log);
    }

    /* the reply goes when this returns: keep what the answer needs */

    if (entry->invoice.len || entry->pay_url.len) {
        u_char  *p;

        p = ngx_pnalloc(r->pool, entry->invoice.len + entry->pay_url.len);

        if (p == NULL) {
            ngx_str_null(&entry->invoice);
            ngx_str_null(&entry->pay_url);

        } else {
            if (entry->invoice.len) {
                ngx_memcpy(p, entry->invoice.data, entry->invoice.len);
            }

            entry->invoice.data = p;
            p += entry->invoice.len;

            if (entry->pay_url.len) {
                ngx_memcpy(p, entry->pay_url.data, entry->pay_url.len);
            }

            entry->pay_url.data = p;
        }
    }

    r->read_event_handler = ngx_http_block_reading;
    r->write_event_handler = ngx_http_core_run_phases;

    ngx_http_core_run_phases(r);
    ngx_http_run_posted_requests(c);
}


/* a request decided again (a "rewrite ... last") is one decision */

static void
ngx_http_billing_gate_count(ngx_http_billing_gate_ctx_t *ctx,
    ngx_uint_t decision)
{
    if (!ctx->counted) {
        ctx->counted = 1;
        ngx_http_billing_stat_inc(NGX_HTTP_BILLING_M_GATE_DECISIONS,
                                  ctx->market->index, decision, 0);
    }
}


static ngx_int_t
ngx_http_billing_gate_allow(ngx_http_request_t *r,
    ngx_http_billing_gate_ctx_t *ctx)
{
    ctx->allowed = 1;

    if (r != r->main) {
        return ngx_http_billing_gate_auth_allow(r, ctx);
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_billing_gate_verdict(ngx_http_request_t *r,
    ngx_http_billing_gate_ctx_t *ctx)
{
    ngx_msec_t                     age;
    ngx_http_billing_loc_conf_t   *blcf;
    ngx_http_billing_main_conf_t  *bmcf;

    if (ctx->deny) {
        return ctx->returned;
    }

    if (ctx->status == NGX_HTTP_BILLING_GATE_NO_ID) {
        return ngx_http_billing_gate_deny(r, ctx, NGX_HTTP_UNAUTHORIZED,
                                          "subscription_required",
                                          "this resource needs a "
                                          "subscription");
    }

    if (ctx->status == NGX_HTTP_BILLING_GATE_UNAVAILABLE) {
        bmcf = ngx_http_get_module_main_conf(r, ngx_http_billing_module);

        age = ctx->has_stale ? ngx_current_msec - ctx->stale->fetched : 0;

        if (!ctx->has_stale
            || age >= bmcf->cache->ttl + bmcf->cache->stale)
        {
            blcf = ngx_http_get_module_loc_conf(r, ngx_http_billing_module);

            if (blcf->unavailable) {
                return ngx_http_billing_gate_let_through(r, ctx);
            }

            return ngx_http_billing_gate_deny(r, ctx,
                                          NGX_HTTP_SERVICE_UNAVAILABLE,
                                          "billing_unavailable",
                                          "billing state cannot be read "
                                          "now, retry later");
        }

        ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                      "billing gate: Redis unavailable, subscription "
                      "\"%V\" decided on what was known %Mms ago",
                      &ctx->id, age);

        if (!ctx->counted) {
            ngx_http_billing_stat_inc(NGX_HTTP_BILLING_M_GATE_CACHE,
                                      ctx->market->index,
                                      NGX_HTTP_BILLING_CACHE_STALE, 0);
        }

        ctx->entry = *ctx->stale;
    }

    switch (ctx->entry.state) {

    case NGX_BILLING_SUB_ACTIVE:
        ngx_http_billing_gate_count(ctx, NGX_HTTP_BILLING_DEC_ALLOW);

        return ngx_http_billing_gate_allow(r, ctx);

    case NGX_BILLING_SUB_PENDING:
        return ngx_http_billing_gate_deny(r, ctx,
                                          NGX_HTTP_BILLING_PAYMENT_REQUIRED,
                                          "payment_required",
                                          "the subscription's first "
                                          "invoice is not paid yet");

    case NGX_BILLING_SUB_PAST_DUE:

        /* billing_overdue turned off: overdue invoices close no gate */

        if (ctx->market->overdue == 0) {
            ngx_http_billing_gate_count(ctx, NGX_HTTP_BILLING_DEC_ALLOW);
            return ngx_http_billing_gate_allow(r, ctx);
        }

        return ngx_http_billing_gate_deny(r, ctx,
                                          NGX_HTTP_BILLING_PAYMENT_REQUIRED,
                                          "payment_overdue",
                                          "a period invoice of the "
                                          "subscription is overdue");

    case NGX_BILLING_SUB_PAYMENT_FAILED:
        return ngx_http_billing_gate_deny(r, ctx, NGX_HTTP_FORBIDDEN,
                                          "payment_failed",
                                          "the subscription's first "
                                          "invoice was not paid");

    case NGX_BILLING_SUB_CANCELLED:
        return ngx_http_billing_gate_deny(r, ctx, NGX_HTTP_FORBIDDEN,
                                          "subscription_cancelled",
                                          "the subscription is cancelled");

    default:
        return ngx_http_billing_gate_deny(r, ctx, NGX_HTTP_FORBIDDEN,
                                          "unknown_subscription",
                                          "no such subscription");
    }
}


/*
 * billing_unavailable allow: the request goes on, metered on no period
 * (its units are billed with the subscription's next invoice); said at
 * most once a second, not once a request.
 */

static ngx_int_t
ngx_http_billing_gate_let_through(ngx_http_request_t *r,
    ngx_http_billing_gate_ctx_t *ctx)
{
    static time_t  said;

    if (said != ngx_time()) {
        said = ngx_time();

        ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                      "billing gate: Redis unavailable, subscription "
                      "\"%V\" let through (billing_unavailable allow)",
                      &ctx->id);
    }

    ngx_http_billing_gate_count(ctx, NGX_HTTP_BILLING_DEC_ALLOW_UNAVAILABLE);

    ngx_memzero(&ctx->entry, sizeof(ngx_http_billing_entry_t));
    ctx->entry.state = NGX_BILLING_SUB_ACTIVE;

    return ngx_http_billing_gate_allow(r, ctx);
}


ngx_int_t
ngx_http_billing_gate_metered(ngx_http_request_t *r,
    ngx_http_billing_metered_t *mt)
{
    time_t                        now;
    ngx_http_billing_loc_conf_t  *blcf;
    ngx_http_billing_gate_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_billing_module);

    /* an internal redirect drops the context: a new gate decides again */

    if (ctx == NULL || ctx->base.kind != NGX_HTTP_BILLING_CTX_GATE
        || !ctx->allowed || ctx->deny)
    {
        return NGX_DECLINED;
    }

    if (ctx->auth) {
        blcf = ctx->meter_conf;

    } else {
        /* the final location decides: a redirect may leave the gate */

        blcf = ngx_http_get_module_loc_conf(r, ngx_http_billing_module);

        if (blcf->gate == NULL) {
            return NGX_DECLINED;
        }
    }

    now = ngx_time();

    /* a request that outlived its period, or a period not computed yet */

    if (now >= ctx->entry.cur_end) {
        ngx_http_billing_entry_period(&ctx->entry, now);
    }

    if (!ctx->hashed) {
        ctx->hash = ngx_http_billing_key_hash(&ctx->market->name, &ctx->id);
        ctx->hashed = 1;
    }

    mt->id = ctx->id;
    mt->period_start = ctx->entry.cur_start;
    mt->meter_conf = blcf;
    mt->market = ctx->market;
    mt->hash = ctx->hash;
    mt->units = &ctx->units;

    return NGX_OK;
}


static ngx_int_t
ngx_http_billing_gate_deny(ngx_http_request_t *r,
    ngx_http_billing_gate_ctx_t *ctx, ngx_uint_t status, const char *code,
    const char *message)
{
    ngx_str_t                  id;
    ngx_http_core_loc_conf_t  *clcf;

    ctx->deny = status;
    ctx->code = code;
    ctx->message = message;

    ngx_http_billing_gate_count(ctx, ngx_http_billing_stat_decision(code));

    if (r->connection->log->log_level >= NGX_LOG_INFO) {
        ngx_http_billing_log_safe(r->pool, &ctx->id, &id);

        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "billing gate: %s for subscription \"%V\"", code, &id);
    }

    clcf = ngx_http_get_module_loc_conf(r, ngx_http_core_module);

    /* "satisfy any": a plain denial, which another module may overrule */

    if (clcf->satisfy == NGX_HTTP_SATISFY_ANY || r != r->main) {

        /* the body waits: another module may yet grant access */

        ctx->returned = (status == NGX_HTTP_UNAUTHORIZED)
                        ? NGX_HTTP_UNAUTHORIZED : NGX_HTTP_FORBIDDEN;

        if (clcf->satisfy == NGX_HTTP_SATISFY_ALL
            && ngx_http_billing_gate_body(r, ctx) != NGX_OK)
        {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        return ctx->returned;
    }

    ctx->returned = status;

    /* nginx answers ctx->returned; the body is put in its place */

    if (ngx_http_billing_gate_body(r, ctx) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ctx->returned;
}


static ngx_int_t
ngx_http_billing_gate_body(ngx_http_request_t *r,
    ngx_http_billing_gate_ctx_t *ctx)
{
    json_t                       *json, *v;
    ngx_int_t                     rc;
    ngx_http_billing_srv_conf_t  *m;

    m = ctx->market;

    json = ngx_http_billing_json_error(ctx->code, ctx->message,
                                       ngx_strlen(ctx->message));
    if (json == NULL) {
        return NGX_ERROR;
    }

    if (ctx->deny == NGX_HTTP_BILLING_PAYMENT_REQUIRED) {

        /* where to pay: the invoice, its page, the customer portal */

        v = ctx->entry.invoice.len
            ? json_stringn((char *) ctx->entry.invoice.data,
                           ctx->entry.invoice.len)
            : json_null();
        json_object_set_new(json, "invoice", v);

        v = ctx->entry.pay_url.len
            ? json_stringn((char *) ctx->entry.pay_url.data,
                           ctx->entry.pay_url.len)
            : json_null();
        json_object_set_new(json, "pay_url", v);

        v = m->portal_url.len
            ? json_stringn((char *) m->portal_url.data, m->portal_url.len)
            : json_null();
        json_object_set_new(json, "portal_url", v);
    }

    if (r == r->main) {
        rc = ngx_http_billing_error_replace(r, &ctx->base, ctx->returned,
                                            ctx->deny, json);
        json_decref(json);
        return rc;
    }

    rc = ngx_http_billing_gate_auth_deny(r, ctx, json);
    json_decref(json);

    return rc;
}
