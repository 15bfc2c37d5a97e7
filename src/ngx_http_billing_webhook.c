
/*
 * billing_webhook: Stripe's webhook ingress.
 *
 * The body is read whole, its Stripe-Signature verified against every
 * configured secret, the event parsed, and an invoice event recorded in
 * Redis by one script, so that the invoice and its subscription change
 * together or not at all.  Stripe gets 200 only once Redis has answered;
 * any failure is 503, and Stripe delivers the event again later.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include <jansson.h>

#include "ngx_http_billing_module.h"
#include "ngx_http_billing_webhook.h"
#include "ngx_http_billing_json.h"
#include "ngx_http_billing_redis.h"
#include "ngx_http_billing_store.h"
#include "ngx_http_billing_cache.h"
#include "ngx_http_billing_status.h"
#include "ngx_billing_event.h"
#include "ngx_billing_signature.h"
#include "ngx_billing_state.h"


static ngx_int_t ngx_http_billing_webhook_handler(ngx_http_request_t *r);
static void ngx_http_billing_webhook_body(ngx_http_request_t *r);
static ngx_int_t ngx_http_billing_webhook_process(ngx_http_request_t *r);
static ngx_int_t ngx_http_billing_webhook_parse(ngx_http_request_t *r,
    ngx_str_t *body, ngx_billing_event_t *ev, int *rc, const char **err);
static ngx_int_t ngx_http_billing_webhook_signature(ngx_http_request_t *r,
    ngx_str_t *header);
static ngx_int_t ngx_http_billing_webhook_record(ngx_http_request_t *r,
    ngx_billing_event_t *ev);
static void ngx_http_billing_webhook_recorded(void *data, redisReply *reply);


/* what the answer of Redis needs to know */
typedef struct {
    ngx_http_request_t          *request;
    ngx_str_t                    subscription;
    ngx_uint_t                   type;        /* for billing_status */
} ngx_http_billing_webhook_t;


/* the answers of every 200, the same bytes as jansson's compact dump */
static ngx_str_t  ngx_http_billing_webhook_received =
    ngx_string("{\"received\":true}\n");
static ngx_str_t  ngx_http_billing_webhook_ignored =
    ngx_string("{\"received\":true,\"ignored\":true}\n");


/* a signature's failure, as billing_status names it */
static ngx_uint_t  ngx_http_billing_webhook_rejections[] = {
    0,                                     /* NGX_BILLING_SIG_OK */
    NGX_HTTP_BILLING_REJ_MALFORMED,
    NGX_HTTP_BILLING_REJ_NO_V1,
    NGX_HTTP_BILLING_REJ_MISMATCH,
    NGX_HTTP_BILLING_REJ_TOLERANCE
};


char *
ngx_http_billing_webhook(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_billing_srv_conf_t  *bscf = conf;

    return ngx_http_billing_content(cf, ngx_http_billing_webhook_handler,
                                    &bscf->webhook_file,
                                    &bscf->webhook_line);
}


static ngx_int_t
ngx_http_billing_webhook_handler(ngx_http_request_t *r)
{
    ngx_int_t  rc;

    if (r->method != NGX_HTTP_POST) {
        rc = ngx_http_discard_request_body(r);

        if (rc != NGX_OK) {
            return rc;
        }

        if (ngx_http_billing_add_header(r, "Allow", "POST") != NGX_OK) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        return ngx_http_billing_send_error(r, NGX_HTTP_NOT_ALLOWED,
                                           "method_not_allowed",
                                           "the webhook accepts only POST");
    }

    rc = ngx_http_read_client_request_body(r, ngx_http_billing_webhook_body);

    if (rc >= NGX_HTTP_SPECIAL_RESPONSE) {
        return rc;
    }

    return NGX_DONE;
}


static void
ngx_http_billing_webhook_body(ngx_http_request_t *r)
{
    ngx_int_t  rc;

    rc = ngx_http_billing_webhook_process(r);

    /* NGX_DONE: Redis has the event, its answer finalizes the request */

    if (rc != NGX_DONE) {
        ngx_http_finalize_request(r, rc);
    }
}


static ngx_int_t
ngx_http_billing_webhook_process(ngx_http_request_t *r)
{
    int                             rc;
    ngx_int_t                       n;
    ngx_str_t                       header, body;
    const char                     *err;
    ngx_billing_event_t             ev;
    ngx_http_billing_srv_conf_t    *m;
    ngx_http_billing_main_conf_t   *bmcf;

    bmcf = ngx_http_get_module_main_conf(r, ngx_http_billing_module);

    /* only this marketplace's secrets: each signs its own account's */
    m = ngx_http_billing_market(r);

    n = ngx_http_billing_webhook_signature(r, &header);

    if (n == NGX_DECLINED) {
        ngx_http_billing_stat_inc(NGX_HTTP_BILLING_M_WEBHOOK_REJECTED,
                                  m->index, NGX_HTTP_BILLING_REJ_NO_HEADER,
                                  0);

        return ngx_http_billing_send_error(r, NGX_HTTP_BAD_REQUEST,
                                    "invalid_signature",
                                    "exactly one Stripe-Signature header "
                                    "is required");
    }

    if (ngx_http_billing_request_body(r, &body) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    rc = ngx_billing_sig_check(header.data, header.len, body.data, body.len,
                               m->webhook_secrets->elts,
                               m->webhook_secrets->nelts,
                               (int64_t) ngx_time(),
                               (int64_t) bmcf->webhook_tolerance);

    if (rc != NGX_BILLING_SIG_OK) {
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "billing webhook: %s", ngx_billing_sig_strerror(rc));

        if (rc < NGX_BILLING_SIG_INTERNAL) {
            ngx_http_billing_stat_inc(NGX_HTTP_BILLING_M_WEBHOOK_REJECTED,
                                      m->index,
                                      ngx_http_billing_webhook_rejections[rc],
                                      0);
        }

        switch (rc) {

        case NGX_BILLING_SIG_TOLERANCE:
            return ngx_http_billing_send_error(r, NGX_HTTP_BAD_REQUEST,
                                          "timestamp_out_of_tolerance",
                                          ngx_billing_sig_strerror(rc));

        case NGX_BILLING_SIG_INTERNAL:
            ngx_log_error(NGX_LOG_ALERT, r->connection->log, 0,
                          "billing webhook: HMAC computation failed");
            return NGX_HTTP_INTERNAL_SERVER_ERROR;

        default:
            return ngx_http_billing_send_error(r, NGX_HTTP_BAD_REQUEST,
                                          "invalid_signature",
                                          ngx_billing_sig_strerror(rc));
        }
    }

    /*
     * The common case is read in one pass over the body, its strings
     * left where they are; jansson answers for the rest (an error, an
     * escape where the module reads, ...): the same answer either way.
     */

    rc = ngx_billing_event_scan(&ev, body.data, body.len, &err);

    if (rc == NGX_BILLING_EVENT_ASK_JANSSON) {
        if (ngx_http_billing_webhook_parse(r, &body, &ev, &rc, &err)
            != NGX_OK)
        {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
    }

    if (rc != 0) {
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "billing webhook: malformed event: %s", err);

        ngx_http_billing_stat_inc(NGX_HTTP_BILLING_M_WEBHOOK_EVENTS,
                                  m->index, NGX_HTTP_BILLING_EV_OTHER,
                                  NGX_HTTP_BILLING_OUT_MALFORMED);

        return ngx_http_billing_send_error(r, NGX_HTTP_BAD_REQUEST,
                                           "malformed_event", err);
    }

    return ngx_http_billing_webhook_record(r, &ev);
}


/* jansson's answer in *rc: 0, or -1 with *err */

static ngx_int_t
ngx_http_billing_webhook_parse(ngx_http_request_t *r, ngx_str_t *body,
    ngx_billing_event_t *ev, int *rc, const char **err)
{
    ngx_str_t                       compact;
    ngx_http_billing_json_alloc_t   saved;

    /*
     * jansson's lexer costs tens of instructions a byte, and a third of
     * the bytes Stripe sends are its pretty-printing ("{\n  \"id\": ..."):
     * they go first, in a copy (the signed body stays as it came).  A
     * body on one line is parsed as it is: the same answer either way.
     */

    compact = *body;

    if (body->len > 1 && body->data[1] == '\n') {
        compact.data = ngx_pnalloc(r->pool, body->len);
        if (compact.data == NULL) {
            return NGX_ERROR;
        }

        compact.len = ngx_billing_json_compact(compact.data, body->data,
                                               body->len);
    }

    /*
     * The document in the request's pool, every value of it a bump of
     * the pool's pointer rather than a malloc() and a free(); it is freed
     * with the request, never with ngx_billing_event_free().
     */

    ngx_http_billing_json_pool(r->pool, &saved);
    *rc = ngx_billing_event_parse_json(ev, compact.data, compact.len, err);
    ngx_http_billing_json_unpool(&saved);

    ev->json = NULL;

    return NGX_OK;
}


static ngx_int_t
ngx_http_billing_webhook_signature(ngx_http_request_t *r, ngx_str_t *header)
{
    ngx_uint_t        n;
    ngx_table_elt_t  *h;

    /* two headers would be two claims: neither is taken */

    h = ngx_http_billing_find_header(&r->headers_in.headers,
                                     "Stripe-Signature", &n);
    if (n != 1) {
        return NGX_DECLINED;
    }

    *header = h->value;

    return NGX_OK;
}


static ngx_int_t
ngx_http_billing_webhook_record(ngx_http_request_t *r,
    ngx_billing_event_t *ev)
{
    ngx_str_t                     type;
    ngx_uint_t                    label, market;
    ngx_http_billing_owner_t      owner;
    ngx_http_billing_srv_conf_t  *m;
    ngx_http_billing_webhook_t   *wh;
    ngx_http_billing_invoice_t    inv;

    type.data = (u_char *) ev->type.data;
    type.len = ev->type.len;
    label = ngx_http_billing_stat_event(&type);
    m = ngx_http_billing_market(r);
    market = m->index;

    /*
     * Another marketplace's invoice (metadata[billing_marketplace]; none
     * is the default's): two marketplaces on one Stripe account get each
     * other's events, and an invoice is of one of them only.
     */

    if (ev->status != NGX_BILLING_INVOICE_NONE
        && (ev->marketplace.len != m->name.len
            || ngx_strncmp(ev->marketplace.data, m->name.data,
                           m->name.len)
               != 0))
    {
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "billing webhook: invoice %*s is of another "
                      "marketplace, ignored",
                      ev->invoice.len, ev->invoice.data);

        ev->status = NGX_BILLING_INVOICE_NONE;
    }

    if (ev->status == NGX_BILLING_INVOICE_NONE) {
        ngx_http_billing_stat_inc(NGX_HTTP_BILLING_M_WEBHOOK_EVENTS, market,
                                  label, NGX_HTTP_BILLING_OUT_IGNORED);

        ngx_log_debug2(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                       "billing webhook: ignored %*s",
                       ev->type.len, ev->type.data);

        return ngx_http_billing_send_static(r, NGX_HTTP_OK,
                                            &ngx_http_billing_webhook_ignored);
    }

    if (ev->bad_metadata) {
        ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                      "billing webhook: invoice %*s has metadata this "
                      "module did not set, ignored",
                      ev->invoice.len, ev->invoice.data);
    }

    ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                  "billing webhook: %*s %*s for invoice %*s",
                  ev->id.len, ev->id.data, ev->type.len, ev->type.data,
                  ev->invoice.len, ev->invoice.data);

    /* the strings are copied into the command before this returns */

    inv.id.data = (u_char *) ev->invoice.data;
    inv.id.len = ev->invoice.len;
    inv.status = ev->status;
    inv.event.data = (u_char *) ev->id.data;
    inv.event.len = ev->id.len;
    inv.created = ev->created;
    inv.subscription.data = (u_char *) ev->subscription.data;
    inv.subscription.len = ev->subscription.len;
    inv.kind.data = (u_char *) ev->kind.data;
    inv.kind.len = ev->kind.len;
    inv.customer.data = (u_char *) ev->customer.data;
    inv.customer.len = ev->customer.len;
    inv.hosted_invoice_url.data = (u_char *) ev->hosted_invoice_url.data;
    inv.hosted_invoice_url.len = ev->hosted_invoice_url.len;
    inv.currency.data = (u_char *) ev->currency.data;
    inv.currency.len = ev->currency.len;
    inv.amount_due = ev->amount_due;
    inv.due_date = ev->due_date;

    wh = ngx_palloc(r->pool, sizeof(ngx_http_billing_webhook_t));
    if (wh == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    wh->request = r;
    wh->type = label;
    wh->subscription.len = ev->subscription.len;
    wh->subscription.data = ngx_pstrdup(r->pool, &inv.subscription);

    if (wh->subscription.data == NULL && wh->subscription.len) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_http_billing_owner_request(&owner, r);

    if (ngx_http_billing_store_invoice(&owner, &inv,
                                       ngx_http_billing_webhook_recorded, wh)
        != NGX_OK)
    {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "billing webhook: Redis is not available, "
                      "event %*s not recorded", ev->id.len, ev->id.data);

        ngx_http_billing_stat_inc(NGX_HTTP_BILLING_M_WEBHOOK_EVENTS, market,
                                  label, NGX_HTTP_BILLING_OUT_UNAVAILABLE);

        return ngx_http_billing_send_unavailable(r);
    }

    return NGX_DONE;
}


static void
ngx_http_billing_webhook_recorded(void *data, redisReply *reply)
{
    ngx_http_billing_webhook_t  *wh = data;

    ngx_int_t                      rc;
    ngx_connection_t              *c;
    ngx_http_request_t            *r;
    ngx_http_billing_main_conf_t  *bmcf;

    r = wh->request;
    c = r->connection;

    if (reply == NULL || reply->type != REDIS_REPLY_ARRAY
        || reply->elements != 4
        || reply->element[3]->type != REDIS_REPLY_INTEGER)
    {
        if (reply && reply->type == REDIS_REPLY_ERROR) {
            ngx_log_error(NGX_LOG_ERR, c->log, 0,
                          "billing webhook: Redis error: \"%*s\"",
                          (size_t) reply->len, reply->str);

        } else {
            ngx_log_error(NGX_LOG_ERR, c->log, 0,
                          "billing webhook: Redis did not record the event");
        }

        ngx_http_billing_stat_inc(NGX_HTTP_BILLING_M_WEBHOOK_EVENTS,
                                  ngx_http_billing_market(r)->index,
                                  wh->type, NGX_HTTP_BILLING_OUT_UNAVAILABLE);

        rc = ngx_http_billing_send_unavailable(r);
        goto done;
    }

    ngx_log_debug3(NGX_LOG_DEBUG_HTTP, c->log, 0,
                   "billing webhook: invoice %s, changed %L, "
                   "subscription \"%s\"",
                   reply->element[0]->type == REDIS_REPLY_STRING
                   ? reply->element[0]->str : "?",
                   (int64_t) reply->element[1]->integer,
                   reply->element[2]->type == REDIS_REPLY_STRING
                   ? reply->element[2]->str : "?");

    /*
     * This node's gate sees a change at once; other nodes drop their
     * entries when it is published.  A repeat changed nothing.
     */

    bmcf = ngx_http_get_module_main_conf(r, ngx_http_billing_module);

    ngx_http_billing_stat_inc(NGX_HTTP_BILLING_M_WEBHOOK_EVENTS,
                              ngx_http_billing_market(r)->index, wh->type,
                              (reply->element[1]->type == REDIS_REPLY_INTEGER
                               && reply->element[1]->integer)
                              || reply->element[3]->integer > 0
                              ? NGX_HTTP_BILLING_OUT_CHANGED
                              : NGX_HTTP_BILLING_OUT_UNCHANGED);

    if (bmcf->cache && wh->subscription.len
        && reply->element[3]->integer > 0)
    {
        ngx_http_billing_cache_changed(bmcf->cache,
                                       &ngx_http_billing_market(r)->name,
                                       &wh->subscription,
                                       (uint64_t) reply->element[3]->integer,
                                       c->log);
    }

    rc = ngx_http_billing_send_static(r, NGX_HTTP_OK,
                                      &ngx_http_billing_webhook_received);

done:

    ngx_http_finalize_request(r, rc);
    ngx_http_run_posted_requests(c);
}
