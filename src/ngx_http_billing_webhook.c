
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
#include "ngx_http_billing_redis.h"
#include "ngx_billing_event.h"
#include "ngx_billing_signature.h"
#include "ngx_billing_state.h"


#define NGX_HTTP_BILLING_ALLOWED_LEN  64


static ngx_int_t ngx_http_billing_webhook_handler(ngx_http_request_t *r);
static void ngx_http_billing_webhook_body(ngx_http_request_t *r);
static ngx_int_t ngx_http_billing_webhook_process(ngx_http_request_t *r);
static ngx_int_t ngx_http_billing_webhook_signature(ngx_http_request_t *r,
    ngx_str_t *header);
static ngx_int_t ngx_http_billing_webhook_record(ngx_http_request_t *r,
    ngx_billing_event_t *ev);
static void ngx_http_billing_webhook_recorded(void *data, redisReply *reply);


/*
 * KEYS[1] the invoice, KEYS[2] its subscription (when it names one)
 *
 * ARGV[1] status, ARGV[2] the statuses allowed to move to it,
 * ARGV[3] event id, ARGV[4] event created, ARGV[5] subscription id,
 * ARGV[6] kind, ARGV[7] customer, ARGV[8] hosted_invoice_url,
 * ARGV[9] amount_due, ARGV[10] currency, ARGV[11] the state a first
 * invoice in this status gives its subscription, ARGV[12] the states
 * allowed to move to it, ARGV[13] the notification channel,
 * ARGV[14] invoice id, ARGV[15] now
 *
 * Returns { invoice status, invoice changed, subscription state or "" }.
 */

static const char  ngx_http_billing_invoice_script[] =
    "local cur = redis.call('HGET', KEYS[1], 'status') or 'none'\n"
    "local changed = 0\n"
    "if cur ~= ARGV[1]"
    " and string.find(ARGV[2], ' ' .. cur .. ' ', 1, true) then\n"
    "  redis.call('HSET', KEYS[1], 'status', ARGV[1], 'event', ARGV[3],"
    " 'event_created', ARGV[4], 'updated_at', ARGV[15])\n"
    "  cur = ARGV[1]\n"
    "  changed = 1\n"
    "end\n"
    "local f = { 'subscription', ARGV[5], 'kind', ARGV[6],"
    " 'customer', ARGV[7], 'hosted_invoice_url', ARGV[8],"
    " 'amount_due', ARGV[9], 'currency', ARGV[10] }\n"
    "for i = 1, #f, 2 do\n"
    "  if f[i + 1] ~= '' then\n"
    "    if changed == 1 then redis.call('HSET', KEYS[1], f[i], f[i + 1])\n"
    "    else redis.call('HSETNX', KEYS[1], f[i], f[i + 1]) end\n"
    "  end\n"
    "end\n"
    "local state = ''\n"
    "local moved = 0\n"
    "if #KEYS == 2 and cur == ARGV[1] then\n"
    "  local s = redis.call('HMGET', KEYS[2], 'state', 'initial_invoice')\n"
    "  if s[1] then\n"
    "    state = s[1]\n"
    "    local first = (s[2] == ARGV[14])"
    " or (not s[2] and ARGV[6] == 'initial')\n"
    "    if first and ARGV[11] ~= '' and state ~= ARGV[11]"
    " and string.find(ARGV[12], ' ' .. state .. ' ', 1, true) then\n"
    "      redis.call('HSET', KEYS[2], 'state', ARGV[11],"
    " 'updated_at', ARGV[15])\n"
    "      state = ARGV[11]\n"
    "      moved = 1\n"
    "    end\n"
    "  end\n"
    "end\n"
    "if ARGV[5] ~= '' and (changed == 1 or moved == 1) then\n"
    "  redis.call('PUBLISH', ARGV[13], ARGV[5])\n"
    "end\n"
    "return { cur, changed, state }\n";


static ngx_http_billing_redis_script_t  ngx_http_billing_invoice_lua;


char *
ngx_http_billing_webhook(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_core_loc_conf_t      *clcf;
    ngx_http_billing_main_conf_t  *bmcf;

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);

    if (clcf->handler == ngx_http_billing_webhook_handler) {
        return "is duplicate";
    }

    clcf->handler = ngx_http_billing_webhook_handler;

    bmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_billing_module);

    if (bmcf->webhook_file.len == 0) {
        bmcf->webhook_file = cf->conf_file->file.name;
        bmcf->webhook_line = cf->conf_file->line;
    }

    if (ngx_http_billing_invoice_lua.source.len == 0) {
        ngx_http_billing_redis_script_init(&ngx_http_billing_invoice_lua,
                                           ngx_http_billing_invoice_script);
    }

    return NGX_CONF_OK;
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
    int                            rc;
    ngx_int_t                      n;
    ngx_str_t                      header, body;
    const char                    *err;
    ngx_billing_event_t            ev;
    ngx_http_billing_main_conf_t  *bmcf;

    bmcf = ngx_http_get_module_main_conf(r, ngx_http_billing_module);

    n = ngx_http_billing_webhook_signature(r, &header);

    if (n == NGX_DECLINED) {
        return ngx_http_billing_send_error(r, NGX_HTTP_BAD_REQUEST,
                                    "invalid_signature",
                                    "exactly one Stripe-Signature header "
                                    "is required");
    }

    if (ngx_http_billing_request_body(r, &body) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    rc = ngx_billing_sig_check(header.data, header.len, body.data, body.len,
                               bmcf->webhook_secrets->elts,
                               bmcf->webhook_secrets->nelts,
                               (int64_t) ngx_time(),
                               (int64_t) bmcf->webhook_tolerance);

    if (rc != NGX_BILLING_SIG_OK) {
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "billing webhook: %s", ngx_billing_sig_strerror(rc));

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

    if (ngx_billing_event_parse(&ev, body.data, body.len, &err) != 0) {
        ngx_billing_event_free(&ev);

        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "billing webhook: malformed event: %s", err);

        return ngx_http_billing_send_error(r, NGX_HTTP_BAD_REQUEST,
                                           "malformed_event", err);
    }

    n = ngx_http_billing_webhook_record(r, &ev);

    ngx_billing_event_free(&ev);

    return n;
}


static ngx_int_t
ngx_http_billing_webhook_signature(ngx_http_request_t *r, ngx_str_t *header)
{
    ngx_uint_t        i, found;
    ngx_list_part_t  *part;
    ngx_table_elt_t  *h;

    /* two headers would be two claims: neither is taken */

    found = 0;
    part = &r->headers_in.headers.part;
    h = part->elts;

    for (i = 0; /* void */; i++) {

        if (i >= part->nelts) {
            if (part->next == NULL) {
                break;
            }

            part = part->next;
            h = part->elts;
            i = 0;
        }

        if (h[i].key.len == sizeof("Stripe-Signature") - 1
            && ngx_strncasecmp(h[i].key.data, (u_char *) "Stripe-Signature",
                               sizeof("Stripe-Signature") - 1)
               == 0)
        {
            *header = h[i].value;
            found++;
        }
    }

    return (found == 1) ? NGX_OK : NGX_DECLINED;
}


static ngx_int_t
ngx_http_billing_webhook_record(ngx_http_request_t *r,
    ngx_billing_event_t *ev)
{
    int                            sub_state;
    char                           allowed[NGX_HTTP_BILLING_ALLOWED_LEN];
    char                           sub_allowed[NGX_HTTP_BILLING_ALLOWED_LEN];
    u_char                        *p;
    ngx_str_t                      argv[17];
    ngx_uint_t                     nkeys;
    ngx_http_billing_redis_cmd_t  *cmd;
    ngx_http_billing_main_conf_t  *bmcf;

    if (ev->status == NGX_BILLING_INVOICE_NONE) {
        json_t     *json;
        ngx_int_t   rc;

        ngx_log_debug2(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                       "billing webhook: ignored %*s",
                       ev->type.len, ev->type.data);

        json = json_pack("{s:b,s:b}", "received", 1, "ignored", 1);
        if (json == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        rc = ngx_http_billing_send_json(r, NGX_HTTP_OK, json);
        json_decref(json);

        return rc;
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

    bmcf = ngx_http_get_module_main_conf(r, ngx_http_billing_module);

    if (bmcf->redis == NULL) {
        return ngx_http_billing_send_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                                           "billing_unavailable",
                                           "billing storage is not "
                                           "available");
    }

    if (ngx_billing_invoice_allowed_from(ev->status, allowed, sizeof(allowed))
        == 0)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    sub_state = ngx_billing_sub_state_after_first_invoice(ev->status);

    if (ngx_billing_sub_allowed_from(sub_state, sub_allowed,
                                     sizeof(sub_allowed))
        == 0)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    /* keys */

    if (ngx_http_billing_key(r->pool, bmcf, &argv[0], "invoice:",
                             (u_char *) ev->invoice.data, ev->invoice.len)
        != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    nkeys = 1;

    if (ev->subscription.len) {
        if (ngx_http_billing_key(r->pool, bmcf, &argv[1], "sub:",
                                 (u_char *) ev->subscription.data,
                                 ev->subscription.len)
            != NGX_OK)
        {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        nkeys = 2;
    }

    /* arguments */

    p = ngx_pnalloc(r->pool, 3 * NGX_INT64_LEN);
    if (p == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    argv[nkeys].data = (u_char *) ngx_billing_invoice_status_name(ev->status);
    argv[nkeys].len = ngx_strlen(argv[nkeys].data);
    argv[nkeys + 1].data = (u_char *) allowed;
    argv[nkeys + 1].len = ngx_strlen(allowed);
    argv[nkeys + 2].data = (u_char *) ev->id.data;
    argv[nkeys + 2].len = ev->id.len;

    argv[nkeys + 3].data = p;
    p = ngx_sprintf(p, "%L", ev->created);
    argv[nkeys + 3].len = p - argv[nkeys + 3].data;

    argv[nkeys + 4].data = (u_char *) ev->subscription.data;
    argv[nkeys + 4].len = ev->subscription.len;
    argv[nkeys + 5].data = (u_char *) ev->kind.data;
    argv[nkeys + 5].len = ev->kind.len;
    argv[nkeys + 6].data = (u_char *) ev->customer.data;
    argv[nkeys + 6].len = ev->customer.len;
    argv[nkeys + 7].data = (u_char *) ev->hosted_invoice_url.data;
    argv[nkeys + 7].len = ev->hosted_invoice_url.len;

    argv[nkeys + 8].data = p;
    if (ev->amount_due >= 0) {
        p = ngx_sprintf(p, "%L", ev->amount_due);
    }
    argv[nkeys + 8].len = p - argv[nkeys + 8].data;

    argv[nkeys + 9].data = (u_char *) ev->currency.data;
    argv[nkeys + 9].len = ev->currency.len;

    if (sub_state == NGX_BILLING_SUB_NONE) {
        ngx_str_null(&argv[nkeys + 10]);

    } else {
        argv[nkeys + 10].data = (u_char *) ngx_billing_sub_state_name(sub_state);
        argv[nkeys + 10].len = ngx_strlen(argv[nkeys + 10].data);
    }

    argv[nkeys + 11].data = (u_char *) sub_allowed;
    argv[nkeys + 11].len = ngx_strlen(sub_allowed);

    if (ngx_http_billing_key(r->pool, bmcf, &argv[nkeys + 12], "events",
                             (u_char *) "", 0)
        != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    argv[nkeys + 13].data = (u_char *) ev->invoice.data;
    argv[nkeys + 13].len = ev->invoice.len;

    argv[nkeys + 14].data = p;
    p = ngx_sprintf(p, "%T", ngx_time());
    argv[nkeys + 14].len = p - argv[nkeys + 14].data;

    cmd = ngx_http_billing_redis_eval(bmcf->redis,
                                      &ngx_http_billing_invoice_lua, nkeys,
                                      nkeys + 15, argv,
                                      ngx_http_billing_webhook_recorded, r);

    if (cmd == NULL || ngx_http_billing_redis_bind(cmd, r->pool) != NGX_OK) {

        if (cmd) {
            ngx_http_billing_redis_cancel(cmd);
        }

        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "billing webhook: Redis is not available, "
                      "event %*s not recorded", ev->id.len, ev->id.data);

        return ngx_http_billing_send_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                                           "billing_unavailable",
                                           "billing storage is not "
                                           "available, retry later");
    }

    return NGX_DONE;
}


static void
ngx_http_billing_webhook_recorded(void *data, redisReply *reply)
{
    ngx_http_request_t *r = data;

    json_t            *json;
    ngx_int_t          rc;
    ngx_connection_t  *c;

    c = r->connection;

    if (reply == NULL || reply->type != REDIS_REPLY_ARRAY
        || reply->elements != 3)
    {
        if (reply && reply->type == REDIS_REPLY_ERROR) {
            ngx_log_error(NGX_LOG_ERR, c->log, 0,
                          "billing webhook: Redis error: \"%*s\"",
                          (size_t) reply->len, reply->str);

        } else {
            ngx_log_error(NGX_LOG_ERR, c->log, 0,
                          "billing webhook: Redis did not record the event");
        }

        rc = ngx_http_billing_send_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                                         "billing_unavailable",
                                         "billing storage is not "
                                         "available, retry later");
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

    json = json_pack("{s:b}", "received", 1);
    if (json == NULL) {
        rc = NGX_HTTP_INTERNAL_SERVER_ERROR;
        goto done;
    }

    rc = ngx_http_billing_send_json(r, NGX_HTTP_OK, json);
    json_decref(json);

done:

    ngx_http_finalize_request(r, rc);
    ngx_http_run_posted_requests(c);
}
