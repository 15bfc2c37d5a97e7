
/*
 * billing_api: the subscription API of the marketplace backend.
 *
 * POST subscriptions claims the subscription in Redis, then has the
 * billing engine (ngx_http_billing_invoice.c) issue its first invoice,
 * and answers once the engine is done.  The engine needs no client: a
 * backend that goes away does not cut the sequence short.  A sequence
 * that stopped (Stripe or Redis down) is resumed by the same request
 * sent again, skipping the steps done.
 *
 * DELETE subscriptions/{id}: ngx_http_billing_cancel.c.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include <jansson.h>

#include "ngx_http_billing_api_int.h"
#include "ngx_http_billing_json.h"
#include "ngx_http_billing_store.h"
#include "ngx_http_billing_invoice.h"
#include "ngx_http_billing_stripe.h"
#include "ngx_billing_plan.h"
#include "ngx_billing_signature.h"
#include "ngx_billing_state.h"


static ngx_int_t ngx_http_billing_api_handler(ngx_http_request_t *r);
static ngx_int_t ngx_http_billing_api_authorized(ngx_http_request_t *r);
static ngx_int_t ngx_http_billing_api_route(ngx_http_request_t *r,
    ngx_str_t *id);
static ngx_int_t ngx_http_billing_api_reject(ngx_http_request_t *r,
    ngx_uint_t status, const char *code, const char *message,
    const char *header, const char *value);
static void ngx_http_billing_api_create(ngx_http_request_t *r);
static void ngx_http_billing_api_claimed(void *data, redisReply *reply);
static void ngx_http_billing_api_issue(ngx_http_request_t *r);
static void ngx_http_billing_api_issued(void *data,
    ngx_http_billing_invoice_result_t *result);
static void ngx_http_billing_api_answer(void *data, redisReply *reply);
static json_t *ngx_http_billing_api_subscription(ngx_http_request_t *r,
    redisReply *sub, redisReply *invoices, redisReply *usage);
static json_t *ngx_http_billing_api_period(redisReply *sub,
    redisReply *usage);
static json_t *ngx_http_billing_api_time(redisReply *hash,
    const char *field);
static json_t *ngx_http_billing_api_invoice_json(redisReply *invoice);
static json_t *ngx_http_billing_api_string(redisReply *hash,
    const char *field);
static json_t *ngx_http_billing_api_integer(redisReply *hash,
    const char *field);
static void ngx_http_billing_api_cleanup(void *data);


char *
ngx_http_billing_api(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_billing_srv_conf_t  *bscf = conf;

    ngx_http_core_srv_conf_t      *cscf;
    ngx_http_billing_server_t     *srv;
    ngx_http_billing_main_conf_t  *bmcf;

    cscf = ngx_http_conf_get_module_srv_conf(cf, ngx_http_core_module);
    bmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_billing_module);

    /* each such server must have billing_stripe_location: checked later */

    if (bmcf->api_servers == NULL) {
        bmcf->api_servers = ngx_array_create(cf->pool, 2,
                                             sizeof(ngx_http_billing_server_t));
        if (bmcf->api_servers == NULL) {
            return NGX_CONF_ERROR;
        }
    }

    srv = ngx_array_push(bmcf->api_servers);
    if (srv == NULL) {
        return NGX_CONF_ERROR;
    }

    srv->cscf = cscf;
    srv->file = cf->conf_file->file.name;
    srv->line = cf->conf_file->line;

    return ngx_http_billing_content(cf, ngx_http_billing_api_handler,
                                    &bscf->api_file, &bscf->api_line);
}


static ngx_int_t
ngx_http_billing_api_handler(ngx_http_request_t *r)
{
    ngx_int_t                    rc;
    ngx_str_t                    id;
    ngx_pool_cleanup_t          *cln;
    ngx_http_billing_api_ctx_t  *ctx;

    if (r != r->main) {
        return NGX_HTTP_NOT_FOUND;
    }

    if (ngx_http_billing_api_authorized(r) != NGX_OK) {
        return ngx_http_billing_api_reject(r, NGX_HTTP_UNAUTHORIZED,
                                           "unauthorized",
                                           "a valid bearer token is required",
                                           "WWW-Authenticate", "Bearer");
    }

    ctx = ngx_pcalloc(r->pool, sizeof(ngx_http_billing_api_ctx_t));
    if (ctx == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    cln = ngx_pool_cleanup_add(r->pool, 0);
    if (cln == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    cln->handler = ngx_http_billing_api_cleanup;
    cln->data = ctx;

    ctx->base.kind = NGX_HTTP_BILLING_CTX_API;
    ngx_http_set_ctx(r, ctx, ngx_http_billing_module);

    ngx_http_billing_owner_request(&ctx->owner, r);

    rc = ngx_http_billing_api_route(r, &id);

    if (rc == NGX_DECLINED) {
        return ngx_http_billing_api_reject(r, NGX_HTTP_NOT_FOUND, "not_found",
                                           "no such resource", NULL, NULL);
    }

    /* POST subscriptions */

    if (id.len == 0) {
        if (r->method != NGX_HTTP_POST) {
            return ngx_http_billing_api_reject(r, NGX_HTTP_NOT_ALLOWED,
                                               "method_not_allowed",
                                               "subscriptions accepts POST",
                                               "Allow", "POST");
        }

        rc = ngx_http_read_client_request_body(r,
                                               ngx_http_billing_api_create);

        if (rc >= NGX_HTTP_SPECIAL_RESPONSE) {
            return rc;
        }

        return NGX_DONE;
    }

    /* subscriptions/{id} and subscriptions/{id}/refresh */

    ctx->id = id;

    if (rc == NGX_AGAIN) {
        if (r->method != NGX_HTTP_POST) {
            return ngx_http_billing_api_reject(r, NGX_HTTP_NOT_ALLOWED,
                                               "method_not_allowed",
                                               "refresh accepts POST",
                                               "Allow", "POST");
        }

    } else if (r->method != NGX_HTTP_GET && r->method != NGX_HTTP_HEAD
               && r->method != NGX_HTTP_DELETE)
    {
        return ngx_http_billing_api_reject(r, NGX_HTTP_NOT_ALLOWED,
                                           "method_not_allowed",
                                           "a subscription accepts GET and "
                                           "DELETE", "Allow", "GET, DELETE");
    }

    rc = ngx_http_discard_request_body(r);

    if (rc != NGX_OK) {
        return rc;
    }

    if (r->method == NGX_HTTP_POST) {
        rc = ngx_http_billing_api_refresh(r);

    } else if (r->method == NGX_HTTP_DELETE) {
        ctx->poll.handler = ngx_http_billing_api_poll;
        ctx->poll.data = r;
        ctx->poll.log = r->connection->log;

        rc = ngx_http_billing_store_cancel(&ctx->owner, &ctx->id, 0,
                                           ngx_http_billing_api_cancelled, r);

    } else {
        rc = ngx_http_billing_api_read(r);
    }

    if (rc != NGX_OK) {
        return ngx_http_billing_send_unavailable(r);
    }

    /* a client that goes away ends the request; the work goes on */

    if (!r->discard_body) {
        r->read_event_handler = ngx_http_test_reading;
    }

    /* the answer comes from Redis: keep the request until then */

    r->main->count++;

    return NGX_DONE;
}


static ngx_int_t
ngx_http_billing_api_authorized(ngx_http_request_t *r)
{
    u_char                       *p, *last;
    ngx_table_elt_t              *h;
    ngx_http_billing_srv_conf_t  *m;

    m = ngx_http_billing_market(r);

    h = r->headers_in.authorization;

    if (h == NULL || h->value.len < sizeof("Bearer ") - 1
        || ngx_strncasecmp(h->value.data, (u_char *) "Bearer ",
                           sizeof("Bearer ") - 1) != 0)
    {
        return NGX_DECLINED;
    }

    p = h->value.data + sizeof("Bearer ") - 1;
    last = h->value.data + h->value.len;

    while (p < last && *p == ' ') {
        p++;
    }

    /* compared as digests: the time taken says nothing of the token */

    if (!ngx_billing_secure_equal(p, last - p, m->api_token.data,
                                  m->api_token.len))
    {
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "billing api: wrong bearer token");
        return NGX_DECLINED;
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_billing_api_route(ngx_http_request_t *r, ngx_str_t *id)
{
    u_char                    *p, *last;
    ngx_int_t                  rc;
    ngx_http_core_loc_conf_t  *clcf;

    /* paths are relative to the location's prefix */

    clcf = ngx_http_get_module_loc_conf(r, ngx_http_core_module);

    p = r->uri.data;
    last = r->uri.data + r->uri.len;

#if (NGX_PCRE)
    if (clcf->regex == NULL)
#endif
    {
        if (r->uri.len >= clcf->name.len
            && ngx_strncmp(p, clcf->name.data, clcf->name.len) == 0)
        {
            p += clcf->name.len;
        }
    }

    if (p < last && *p == '/') {
        p++;
    }

    if (last - p < 13 || ngx_strncmp(p, "subscriptions", 13) != 0) {
        return NGX_DECLINED;
    }

    p += 13;

    if (p == last || (p + 1 == last && *p == '/')) {
        ngx_str_null(id);
        return NGX_OK;
    }

    if (*p != '/') {
        return NGX_DECLINED;
    }

    p++;

    /* subscriptions/{id}/refresh */

    rc = NGX_OK;

    if (last - p > 8 && ngx_strncmp(last - 8, "/refresh", 8) == 0) {
        last -= 8;
        rc = NGX_AGAIN;
    }

    if (!ngx_billing_sub_id_valid((char *) p, last - p)) {
        return NGX_DECLINED;
    }

    id->data = p;
    id->len = last - p;

    return rc;
}


static ngx_int_t
ngx_http_billing_api_reject(ngx_http_request_t *r, ngx_uint_t status,
    const char *code, const char *message, const char *header,
    const char *value)
{
    ngx_int_t  rc;

    rc = ngx_http_discard_request_body(r);

    if (rc != NGX_OK) {
        return rc;
    }

    if (header
        && ngx_http_billing_add_header(r, header, value) != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_billing_send_error(r, status, code, message);
}


static void
ngx_http_billing_api_create(ngx_http_request_t *r)
{
    ngx_str_t                    body;
    ngx_http_billing_claim_t     claim;
    ngx_http_billing_api_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_billing_module);

    if (ngx_http_billing_request_body(r, &body) != NGX_OK) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    if (ngx_billing_sub_request_parse(&ctx->req, body.data, body.len) != 0) {
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "billing api: invalid request: %s", ctx->req.error);

        ngx_http_finalize_request(r,
                   ngx_http_billing_send_error(r, NGX_HTTP_BAD_REQUEST,
                                               "invalid_request",
                                               ctx->req.error));
        return;
    }

    ctx->id.data = (u_char *) ctx->req.id.data;
    ctx->id.len = ctx->req.id.len;

    claim.id = ctx->id;
    claim.consumer_org.data = (u_char *) ctx->req.consumer_org.data;
    claim.consumer_org.len = ctx->req.consumer_org.len;
    claim.email.data = (u_char *) ctx->req.email.data;
    claim.email.len = ctx->req.email.len;
    claim.name.data = (u_char *) ctx->req.name.data;
    claim.name.len = ctx->req.name.len;
    claim.plan.data = (u_char *) ctx->req.plan;
    claim.plan.len = ngx_strlen(ctx->req.plan);
    claim.fingerprint.data = (u_char *) ctx->req.fingerprint;
    claim.fingerprint.len = ngx_strlen(ctx->req.fingerprint);
    claim.period.data = (u_char *) ctx->req.period_name;
    claim.period.len = ngx_strlen(ctx->req.period_name);

    if (ngx_http_billing_store_claim(&ctx->owner, &claim,
                                     ngx_http_billing_api_claimed, r)
        != NGX_OK)
    {
        ngx_http_billing_api_unavailable(r);
    }
}


static void
ngx_http_billing_api_claimed(void *data, redisReply *reply)
{
    ngx_http_request_t  *r = data;

    ngx_connection_t            *c;
    ngx_http_billing_api_ctx_t  *ctx;

    c = r->connection;
    ctx = ngx_http_get_module_ctx(r, ngx_http_billing_module);

    if (reply == NULL || reply->type != REDIS_REPLY_ARRAY
        || reply->elements < 1
        || reply->element[0]->type != REDIS_REPLY_STRING)
    {
        ngx_http_billing_api_unavailable(r);
        goto done;
    }

    if (ngx_strcmp(reply->element[0]->str, "conflict") == 0) {
        ngx_http_billing_api_fail(r, NGX_HTTP_CONFLICT, "conflict",
                                  "a subscription with this id exists "
                                  "with other content");
        goto done;
    }

    if (reply->elements != 7
        || reply->element[6]->type != REDIS_REPLY_STRING
        || ngx_http_billing_store_copy(r->pool, &ctx->created,
                                       reply->element[5])
           != NGX_OK)
    {
        ngx_http_billing_api_fail(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                                  "billing_unavailable",
                                  "unexpected answer from billing storage");
        goto done;
    }

    /*
     * A status is set once Stripe finalized the invoice.  Done before:
     * 200; created or completed by this request: 201.
     */

    ctx->existed = (reply->element[6]->len > 0);

    ngx_log_error(NGX_LOG_INFO, c->log, 0,
                  "billing api: subscription %V: %s", &ctx->id,
                  reply->element[0]->str);

    if (ctx->existed) {
        if (ngx_http_billing_api_read(r) != NGX_OK) {
            ngx_http_billing_api_unavailable(r);
        }

    } else {
        ngx_http_billing_api_issue(r);
    }

done:

    ngx_http_run_posted_requests(c);
}


static void
ngx_http_billing_api_issue(ngx_http_request_t *r)
{
    u_char                           *p;
    ngx_log_t                         log;
    ngx_str_t                        *prefix;
    ngx_http_billing_api_ctx_t       *ctx;
    ngx_http_core_loc_conf_t         *clcf;
    ngx_http_billing_invoice_item_t   item;
    ngx_http_billing_invoice_spec_t   spec;

    ctx = ngx_http_get_module_ctx(r, ngx_http_billing_module);
    clcf = ngx_http_get_module_loc_conf(r, ngx_http_core_module);

    ngx_memzero(&spec, sizeof(ngx_http_billing_invoice_spec_t));
    ngx_memzero(&item, sizeof(ngx_http_billing_invoice_item_t));

    /* the keys name a step of this subscription, claimed at "created" */

    prefix = &ctx->owner.market->prefix;

    spec.key.len = prefix->len + sizeof("sub:::initial") - 1 + ctx->id.len
                   + ctx->created.len;
    spec.key.data = ngx_pnalloc(r->pool, spec.key.len);
    if (spec.key.data == NULL) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    p = ngx_cpymem(spec.key.data, prefix->data, prefix->len);
    ngx_sprintf(p, "sub:%V:%V:initial", &ctx->id, &ctx->created);

    spec.subscription = ctx->id;
    ngx_str_set(&spec.kind, "initial");
    ngx_str_set(&spec.field, "initial_invoice");

    spec.consumer_org.data = (u_char *) ctx->req.consumer_org.data;
    spec.consumer_org.len = ctx->req.consumer_org.len;
    spec.email.data = (u_char *) ctx->req.email.data;
    spec.email.len = ctx->req.email.len;
    spec.name.data = (u_char *) ctx->req.name.data;
    spec.name.len = ctx->req.name.len;

    spec.currency.data = (u_char *) ctx->req.currency;
    spec.currency.len = ngx_strlen(ctx->req.currency);
    spec.days_until_due = ctx->req.days_until_due;

    /* it pays for the first period, which starts when it is paid */
    spec.period_start = 0;
    spec.period_end = 0;
    spec.units = 0;

    ngx_str_set(&item.name, "item");
    ngx_str_set(&item.description, "Base price");
    item.amount = ctx->req.base_price;

    spec.items = &item;
    spec.nitems = 1;

    spec.handler = ngx_http_billing_api_issued;
    spec.data = r;

    /* the location's error_log, with the client's connection number */

    log = *clcf->error_log;
    log.connection = r->connection->number;

    ctx->job = ngx_http_billing_invoice_issue(&spec, &ctx->owner, &log);
    if (ctx->job == NULL) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    /*
     * The job goes on without the client: a client that goes away now
     * is noticed, its request closed (and logged as 499), the job
     * detached.
     */

    r->read_event_handler = ngx_http_test_reading;
}


static void
ngx_http_billing_api_issued(void *data,
    ngx_http_billing_invoice_result_t *result)
{
    ngx_http_request_t  *r = data;

    ngx_connection_t            *c;
    ngx_http_billing_api_ctx_t  *ctx;

    c = r->connection;
    ctx = ngx_http_get_module_ctx(r, ngx_http_billing_module);

    ctx->job = NULL;

    switch (result->rc) {

    case NGX_OK:
    case NGX_HTTP_CONFLICT:     /* cancelled meanwhile: as it is now */
        if (ngx_http_billing_api_read(r) != NGX_OK) {
            ngx_http_billing_api_unavailable(r);
        }

        break;

    case NGX_HTTP_BAD_GATEWAY:
        ngx_http_billing_api_stripe_failed(r, result);
        break;

    case NGX_HTTP_SERVICE_UNAVAILABLE:
        ngx_http_billing_api_unavailable(r);
        break;

    default:
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
    }

    ngx_http_run_posted_requests(c);
}


ngx_int_t
ngx_http_billing_api_read(ngx_http_request_t *r)
{
    ngx_http_billing_api_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_billing_module);

    return ngx_http_billing_store_get(&ctx->owner, &ctx->id,
                                      ngx_http_billing_api_answer, r);
}


static void
ngx_http_billing_api_answer(void *data, redisReply *reply)
{
    ngx_http_request_t  *r = data;

    size_t                       i;
    json_t                      *json, *invoices, *inv, *kind;
    ngx_int_t                    rc;
    ngx_uint_t                   status;
    ngx_connection_t            *c;
    ngx_http_billing_api_ctx_t  *ctx;

    c = r->connection;
    ctx = ngx_http_get_module_ctx(r, ngx_http_billing_module);

    if (reply == NULL || reply->type == REDIS_REPLY_ERROR
        || (reply->type != REDIS_REPLY_NIL
            && (reply->type != REDIS_REPLY_ARRAY || reply->elements != 3)))
    {
        ngx_http_billing_api_unavailable(r);
        goto done;
    }

    if (reply->type == REDIS_REPLY_NIL) {
        ngx_http_billing_api_fail(r, NGX_HTTP_NOT_FOUND, "not_found",
                                  "no such subscription");
        goto done;
    }

    json = ngx_http_billing_api_subscription(r, reply->element[0],
                                             reply->element[1],
                                             reply->element[2]);
    if (json == NULL) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        goto done;
    }

    status = NGX_HTTP_OK;

    if (r->method == NGX_HTTP_DELETE) {
        rc = ngx_http_billing_api_final(r, reply->element[0], json);

        if (rc == NGX_AGAIN) {
            /* the final invoice is not there yet: look again soon */
            json_decref(json);
            ngx_add_timer(&ctx->poll, 250);
            goto done;
        }

        status = (rc == NGX_OK) ? NGX_HTTP_OK : NGX_HTTP_ACCEPTED;
    }

    if (r->method == NGX_HTTP_POST) {

        /* the answer to a creation carries the first invoice */

        invoices = json_object_get(json, "invoices");

        json_array_foreach(invoices, i, inv) {
            kind = json_object_get(inv, "kind");

            if (json_is_string(kind)
                && ngx_strcmp(json_string_value(kind), "initial") == 0)
            {
                json_object_set(json, "invoice", inv);
                break;
            }
        }

        status = (ctx->existed || ctx->refreshed) ? NGX_HTTP_OK
                                                   : NGX_HTTP_CREATED;
    }

    rc = ngx_http_billing_send_json(r, status, json);
    json_decref(json);

    ngx_http_finalize_request(r, rc);

done:

    ngx_http_run_posted_requests(c);
}


static json_t *
ngx_http_billing_api_subscription(ngx_http_request_t *r, redisReply *sub,
    redisReply *invoices, redisReply *usage)
{
    size_t                        i;
    json_t                       *json, *list, *plan, *period;
    redisReply                   *v;
    json_error_t                  error;
    ngx_http_billing_srv_conf_t  *m;

    m = ngx_http_billing_market(r);

    list = json_array();
    if (list == NULL) {
        return NULL;
    }

    for (i = 0; invoices->type == REDIS_REPLY_ARRAY
                && i < invoices->elements; i++)
    {
        json_array_append_new(list,
                     ngx_http_billing_api_invoice_json(invoices->element[i]));
    }

    v = ngx_http_billing_store_field(sub, "plan");
    plan = v ? json_loadb(v->str, v->len, 0, &error) : NULL;

    period = ngx_http_billing_api_period(sub, usage);

    json = json_pack("{s:o,s:o,s:o,s:o,s:o,s:o,s:o,s:o}",
                     "id", ngx_http_billing_api_string(sub, "id"),
                     "state", ngx_http_billing_api_string(sub, "state"),
                     "consumer_org",
                     ngx_http_billing_api_string(sub, "consumer_org"),
                     "customer_id",
                     ngx_http_billing_api_string(sub, "customer_id"),
                     "plan", plan ? plan : json_null(),
                     "current_period", period ? period : json_null(),
                     "invoices", list,
                     "portal_url", m->portal_url.len
                                   ? json_stringn((char *) m->portal_url.data,
                                                  m->portal_url.len)
                                   : json_null());

    return json;
}


static json_t *
ngx_http_billing_api_invoice_json(redisReply *invoice)
{
    json_t  *status;

    status = ngx_http_billing_api_string(invoice, "status");

    /* recorded, not finalized yet */

    if (json_is_null(status)) {
        status = json_string("draft");
    }

    return json_pack("{s:o,s:o,s:o,s:o,s:o,s:o,s:o,s:o,s:o}",
                     "id", ngx_http_billing_api_string(invoice, "id"),
                     "kind", ngx_http_billing_api_string(invoice, "kind"),
                     "status", status,
                     "amount_due",
                     ngx_http_billing_api_integer(invoice, "amount_due"),
                     "currency",
                     ngx_http_billing_api_string(invoice, "currency"),
                     "period_start",
                     ngx_http_billing_api_time(invoice, "period_start"),
                     "period_end",
                     ngx_http_billing_api_time(invoice, "period_end"),
                     "units", ngx_http_billing_api_integer(invoice, "units"),
                     "hosted_invoice_url",
                     ngx_http_billing_api_string(invoice,
                                                 "hosted_invoice_url"));
}


/* the period now, with the units of it that reached Redis */

static json_t *
ngx_http_billing_api_period(redisReply *sub, redisReply *usage)
{
    int64_t                start, k, ps, pe, units;
    redisReply            *v;
    ngx_billing_period_t   period;
    u_char                 field[NGX_INT64_LEN + 1];

    v = ngx_http_billing_store_field(sub, "state");

    if (v == NULL || v->type != REDIS_REPLY_STRING
        || !((v->len == 6 && ngx_strncmp(v->str, "active", 6) == 0)
             || (v->len == 8 && ngx_strncmp(v->str, "past_due", 8) == 0)))
    {
        return json_null();
    }

    v = ngx_http_billing_store_field(sub, "period_start");

    if (v == NULL || v->type != REDIS_REPLY_STRING
        || (start = ngx_atoof((u_char *) v->str, v->len)) <= 0)
    {
        return json_null();
    }

    v = ngx_http_billing_store_field(sub, "period");

    if (v == NULL || v->type != REDIS_REPLY_STRING
        || ngx_billing_period_parse(&period, v->str, v->len) != 0)
    {
        return json_null();
    }

    k = ngx_billing_period_index(&period, start, ngx_time());

    if (k < 1) {
        return json_null();
    }

    ps = ngx_billing_period_bound(&period, start, (uint64_t) k - 1);
    pe = ngx_billing_period_bound(&period, start, (uint64_t) k);

    if (ps < 0 || pe < 0) {
        return json_null();
    }

    *ngx_sprintf(field, "%L", ps) = '\0';

    v = ngx_http_billing_store_field(usage, (char *) field);

    units = (v && v->type == REDIS_REPLY_STRING)
            ? ngx_atoof((u_char *) v->str, v->len) : 0;

    return json_pack("{s:I,s:I,s:I}", "start", (json_int_t) ps,
                     "end", (json_int_t) pe,
                     "units", (json_int_t) ngx_max(units, 0));
}


/* a time, null when none (0: the first invoice, before its period) */

static json_t *
ngx_http_billing_api_time(redisReply *hash, const char *field)
{
    json_t  *t;

    t = ngx_http_billing_api_integer(hash, field);

    if (json_is_integer(t) && json_integer_value(t) == 0) {
        json_decref(t);
        return json_null();
    }

    return t;
}


static json_t *
ngx_http_billing_api_string(redisReply *hash, const char *field)
{
    redisReply  *v;

    v = ngx_http_billing_store_field(hash, field);

    if (v == NULL || v->type != REDIS_REPLY_STRING || v->len == 0) {
        return json_null();
    }

    return json_stringn(v->str, v->len);
}


static json_t *
ngx_http_billing_api_integer(redisReply *hash, const char *field)
{
    ngx_int_t    n;
    redisReply  *v;

    v = ngx_http_billing_store_field(hash, field);

    if (v == NULL || v->type != REDIS_REPLY_STRING || v->len == 0) {
        return json_null();
    }

    n = ngx_atoi((u_char *) v->str, v->len);

    return (n == NGX_ERROR) ? json_null() : json_integer(n);
}


void
ngx_http_billing_api_fail(ngx_http_request_t *r, ngx_uint_t status,
    const char *code, const char *message)
{
    ngx_http_finalize_request(r, ngx_http_billing_send_error(r, status, code,
                                                             message));
}


void
ngx_http_billing_api_unavailable(ngx_http_request_t *r)
{
    ngx_http_finalize_request(r, ngx_http_billing_send_unavailable(r));
}


void
ngx_http_billing_api_stripe_failed(ngx_http_request_t *r,
    ngx_http_billing_invoice_result_t *result)
{
    json_t     *json, *err;
    ngx_int_t   rc;

    /* Stripe's own message, for the marketplace backend to act on */

    json = ngx_http_billing_json_error("stripe_error",
                                       (char *) result->message.data,
                                       result->message.len);
    err = json ? json_object_get(json, "error") : NULL;

    if (err == NULL
        || json_object_set_new(err, "stripe_status",
                               json_integer(result->stripe_status))
           != 0)
    {
        json_decref(json);
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    rc = ngx_http_billing_send_json(r, NGX_HTTP_BAD_GATEWAY, json);
    json_decref(json);

    ngx_http_finalize_request(r, rc);
}


static void
ngx_http_billing_api_cleanup(void *data)
{
    ngx_http_billing_api_ctx_t  *ctx = data;

    /* the request goes first: the engine goes on without it */

    if (ctx->poll.timer_set) {
        ngx_del_timer(&ctx->poll);
    }

    if (ctx->job) {
        ngx_http_billing_invoice_detach(ctx->job);
        ctx->job = NULL;
    }

    ngx_billing_sub_request_free(&ctx->req);
}
