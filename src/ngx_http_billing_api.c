
/*
 * billing_api: the subscription API of the marketplace backend.
 *
 * POST subscriptions claims the subscription in Redis, then runs the
 * Stripe sequence for its first invoice (customer, invoice, item,
 * finalize), recording each object as soon as Stripe made it.  A
 * sequence cut short anywhere is resumed by the same request sent
 * again: the steps done are skipped, and the idempotency keys, derived
 * from the subscription and the step, make a retried step return what
 * Stripe created the first time.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include <ngx_md5.h>
#include <jansson.h>

#include "ngx_http_billing_module.h"
#include "ngx_http_billing_store.h"
#include "ngx_http_billing_stripe.h"
#include "ngx_billing_form.h"
#include "ngx_billing_plan.h"
#include "ngx_billing_signature.h"
#include "ngx_billing_state.h"


typedef struct {
    ngx_http_billing_ctx_t           base;
    ngx_http_billing_stripe_call_t   call;

    ngx_billing_sub_request_t        req;
    ngx_str_t                        id;

    /* how far the first invoice got, from Redis then from Stripe */
    ngx_str_t                        customer;
    ngx_str_t                        invoice;
    ngx_str_t                        item;
    ngx_str_t                        created;
    unsigned                         finalized:1;
    unsigned                         existed:1;     /* and was complete */

    time_t                           period_end;
} ngx_http_billing_api_ctx_t;


static ngx_int_t ngx_http_billing_api_handler(ngx_http_request_t *r);
static ngx_int_t ngx_http_billing_api_authorized(ngx_http_request_t *r);
static ngx_int_t ngx_http_billing_api_route(ngx_http_request_t *r,
    ngx_str_t *id);
static ngx_int_t ngx_http_billing_api_reject(ngx_http_request_t *r,
    ngx_uint_t status, const char *code, const char *message,
    const char *header, const char *value);
static void ngx_http_billing_api_create(ngx_http_request_t *r);
static void ngx_http_billing_api_claimed(void *data, redisReply *reply);
static void ngx_http_billing_api_next(ngx_http_request_t *r);
static ngx_int_t ngx_http_billing_api_stripe(ngx_http_request_t *r,
    const char *path, ngx_str_t *id, const char *suffix,
    ngx_billing_form_t *form, const char *step);
static ngx_int_t ngx_http_billing_api_created(ngx_http_request_t *r,
    ngx_http_billing_stripe_call_t *call, ngx_str_t *id);
static void ngx_http_billing_api_customer(ngx_http_request_t *r,
    ngx_http_billing_stripe_call_t *call);
static void ngx_http_billing_api_customer_stored(void *data,
    redisReply *reply);
static void ngx_http_billing_api_invoice(ngx_http_request_t *r,
    ngx_http_billing_stripe_call_t *call);
static void ngx_http_billing_api_item(ngx_http_request_t *r,
    ngx_http_billing_stripe_call_t *call);
static void ngx_http_billing_api_finalize(ngx_http_request_t *r,
    ngx_http_billing_stripe_call_t *call);
static void ngx_http_billing_api_attached(void *data, redisReply *reply);
static void ngx_http_billing_api_stored(void *data, redisReply *reply);
static ngx_int_t ngx_http_billing_api_read(ngx_http_request_t *r);
static void ngx_http_billing_api_answer(void *data, redisReply *reply);
static json_t *ngx_http_billing_api_subscription(ngx_http_request_t *r,
    redisReply *sub, redisReply *invoices);
static json_t *ngx_http_billing_api_invoice_json(redisReply *invoice);
static json_t *ngx_http_billing_api_string(redisReply *hash,
    const char *field);
static json_t *ngx_http_billing_api_integer(redisReply *hash,
    const char *field);
static ngx_int_t ngx_http_billing_api_copy(ngx_http_request_t *r,
    ngx_str_t *dst, redisReply *reply);
static void ngx_http_billing_api_fail(ngx_http_request_t *r,
    ngx_uint_t status, const char *code, const char *message);
static void ngx_http_billing_api_unavailable(ngx_http_request_t *r);
static void ngx_http_billing_api_stripe_failed(ngx_http_request_t *r,
    ngx_http_billing_stripe_call_t *call);
static void ngx_http_billing_api_cleanup(void *data);


char *
ngx_http_billing_api(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_billing_main_conf_t  *bmcf = conf;

    return ngx_http_billing_content(cf, ngx_http_billing_api_handler,
                                    &bmcf->api_file, &bmcf->api_line);
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

    /* subscriptions/{id} */

    ctx->id = id;

    if (r->method == NGX_HTTP_DELETE) {
        return ngx_http_billing_api_reject(r, 501, "not_implemented",
                                           "cancelling a subscription is "
                                           "not available in this version",
                                           NULL, NULL);
    }

    if (r->method != NGX_HTTP_GET && r->method != NGX_HTTP_HEAD) {
        return ngx_http_billing_api_reject(r, NGX_HTTP_NOT_ALLOWED,
                                           "method_not_allowed",
                                           "a subscription accepts GET and "
                                           "DELETE", "Allow", "GET, DELETE");
    }

    rc = ngx_http_discard_request_body(r);

    if (rc != NGX_OK) {
        return rc;
    }

    if (ngx_http_billing_api_read(r) != NGX_OK) {
        return ngx_http_billing_send_unavailable(r);
    }

    /* the answer comes from Redis: keep the request until then */

    r->main->count++;

    return NGX_DONE;
}


static ngx_int_t
ngx_http_billing_api_authorized(ngx_http_request_t *r)
{
    u_char                        *p, *last;
    ngx_table_elt_t               *h;
    ngx_http_billing_main_conf_t  *bmcf;

    bmcf = ngx_http_get_module_main_conf(r, ngx_http_billing_module);

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

    if (!ngx_billing_secure_equal(p, last - p, bmcf->api_token.data,
                                  bmcf->api_token.len))
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

    if (!ngx_billing_sub_id_valid((char *) p, last - p)) {
        return NGX_DECLINED;
    }

    id->data = p;
    id->len = last - p;

    return NGX_OK;
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

    ctx->period_end = (time_t) ngx_billing_period_end(&ctx->req.period,
                                                      ngx_time());

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
    claim.period_end = ctx->period_end;

    if (ngx_http_billing_store_claim(r, &claim, ngx_http_billing_api_claimed,
                                     r)
        != NGX_OK)
    {
        ngx_http_billing_api_unavailable(r);
    }
}


static void
ngx_http_billing_api_claimed(void *data, redisReply *reply)
{
    ngx_http_request_t *r = data;

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
        || ngx_http_billing_api_copy(r, &ctx->customer, reply->element[2])
           != NGX_OK
        || ngx_http_billing_api_copy(r, &ctx->invoice, reply->element[3])
           != NGX_OK
        || ngx_http_billing_api_copy(r, &ctx->item, reply->element[4])
           != NGX_OK
        || ngx_http_billing_api_copy(r, &ctx->created, reply->element[5])
           != NGX_OK)
    {
        ngx_http_billing_api_fail(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                                  "billing_unavailable",
                                  "unexpected answer from billing storage");
        goto done;
    }

    /* a status is set once Stripe finalized the invoice */

    ctx->finalized = (reply->element[6]->type == REDIS_REPLY_STRING
                      && reply->element[6]->len > 0);

    /* done before: 200; created or completed by this request: 201 */

    ctx->existed = ctx->finalized;

    ngx_log_error(NGX_LOG_INFO, c->log, 0,
                  "billing api: subscription %V: %s", &ctx->id,
                  reply->element[0]->str);

    ngx_http_billing_api_next(r);

done:

    ngx_http_run_posted_requests(c);
}


static void
ngx_http_billing_api_next(ngx_http_request_t *r)
{
    char                        *buf;
    size_t                       size;
    ngx_int_t                    rc;
    ngx_billing_form_t           form;
    ngx_http_billing_api_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_billing_module);

    if (ctx->finalized) {

        if (ngx_http_billing_api_read(r) != NGX_OK) {
            ngx_http_billing_api_unavailable(r);
        }

        return;
    }

    /* each field fits twice over: values are bounded by validation */

    size = 4096;
    buf = ngx_pnalloc(r->pool, size);
    if (buf == NULL) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    ngx_billing_form_init(&form, buf, size);

    if (ctx->customer.len == 0) {
        ngx_billing_form_add(&form, "email", ctx->req.email.data,
                             ctx->req.email.len);

        if (ctx->req.name.len) {
            ngx_billing_form_add(&form, "name", ctx->req.name.data,
                                 ctx->req.name.len);
        }

        ngx_billing_form_add(&form, "metadata[consumer_org]",
                             ctx->req.consumer_org.data,
                             ctx->req.consumer_org.len);

        ctx->call.handler = ngx_http_billing_api_customer;

        rc = ngx_http_billing_api_stripe(r, "/v1/customers", NULL, NULL,
                                         &form, "customer");

    } else if (ctx->invoice.len == 0) {
        ngx_billing_form_add(&form, "customer", (char *) ctx->customer.data,
                             ctx->customer.len);
        ngx_billing_form_add(&form, "collection_method", "send_invoice",
                             sizeof("send_invoice") - 1);

        /* else Stripe takes the customer's, and the plan's item may clash */
        ngx_billing_form_add(&form, "currency", ctx->req.currency, 3);
        ngx_billing_form_add_int(&form, "days_until_due",
                                 ctx->req.days_until_due);
        ngx_billing_form_add(&form, "pending_invoice_items_behavior",
                             "exclude", sizeof("exclude") - 1);
        ngx_billing_form_add(&form, "metadata[billing_subscription]",
                             (char *) ctx->id.data, ctx->id.len);
        ngx_billing_form_add(&form, "metadata[billing_kind]", "initial",
                             sizeof("initial") - 1);

        ctx->call.handler = ngx_http_billing_api_invoice;

        rc = ngx_http_billing_api_stripe(r, "/v1/invoices", NULL, NULL,
                                         &form, "initial:invoice");

    } else if (ctx->item.len == 0) {
        ngx_billing_form_add(&form, "customer", (char *) ctx->customer.data,
                             ctx->customer.len);
        ngx_billing_form_add(&form, "invoice", (char *) ctx->invoice.data,
                             ctx->invoice.len);
        ngx_billing_form_add(&form, "currency", ctx->req.currency, 3);
        ngx_billing_form_add_int(&form, "amount", ctx->req.base_price);
        ngx_billing_form_add(&form, "description", "Base price",
                             sizeof("Base price") - 1);

        ctx->call.handler = ngx_http_billing_api_item;

        rc = ngx_http_billing_api_stripe(r, "/v1/invoiceitems", NULL, NULL,
                                         &form, "initial:item");

    } else {
        ctx->call.handler = ngx_http_billing_api_finalize;

        rc = ngx_http_billing_api_stripe(r, "/v1/invoices/", &ctx->invoice,
                                         "/finalize", &form,
                                         "initial:finalize");
    }

    if (rc != NGX_OK) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
    }
}


static ngx_int_t
ngx_http_billing_api_stripe(ngx_http_request_t *r, const char *path,
    ngx_str_t *id, const char *suffix, ngx_billing_form_t *form,
    const char *step)
{
    u_char                        *p, digest[16];
    size_t                         len;
    ngx_md5_t                      md5;
    ngx_http_billing_api_ctx_t    *ctx;
    ngx_http_billing_main_conf_t  *bmcf;

    ctx = ngx_http_get_module_ctx(r, ngx_http_billing_module);
    bmcf = ngx_http_get_module_main_conf(r, ngx_http_billing_module);

    if (form->overflow) {
        return NGX_ERROR;
    }

    /* the path */

    len = ngx_strlen(path) + (id ? id->len : 0)
          + (suffix ? ngx_strlen(suffix) : 0);

    p = ngx_pnalloc(r->pool, len);
    if (p == NULL) {
        return NGX_ERROR;
    }

    ctx->call.path.data = p;
    p = ngx_cpymem(p, path, ngx_strlen(path));

    if (id) {
        p = ngx_cpymem(p, id->data, id->len);
    }

    if (suffix) {
        p = ngx_cpymem(p, suffix, ngx_strlen(suffix));
    }

    ctx->call.path.len = p - ctx->call.path.data;

    /*
     * The idempotency key names what is created: the consumer org's
     * customer with these details (a key reused with other parameters
     * is an error at Stripe for a day), or a step of this subscription,
     * claimed at "created".
     */

    len = bmcf->redis_conf->prefix.len + sizeof("sub::") - 1 + ctx->id.len
          + ctx->created.len + 1 + ngx_strlen(step)
          + ctx->req.consumer_org.len + sizeof("customer::") - 1 + 32;

    p = ngx_pnalloc(r->pool, len);
    if (p == NULL) {
        return NGX_ERROR;
    }

    ctx->call.idempotency_key.data = p;
    p = ngx_cpymem(p, bmcf->redis_conf->prefix.data,
                   bmcf->redis_conf->prefix.len);

    if (ngx_strcmp(step, "customer") == 0) {
        ngx_md5_init(&md5);
        ngx_md5_update(&md5, ctx->req.email.data, ctx->req.email.len);
        ngx_md5_update(&md5, "\n", 1);
        ngx_md5_update(&md5, ctx->req.name.data, ctx->req.name.len);
        ngx_md5_final(digest, &md5);

        p = ngx_sprintf(p, "customer:%*s:", ctx->req.consumer_org.len,
                        ctx->req.consumer_org.data);
        p = ngx_hex_dump(p, digest, sizeof(digest));

    } else {
        p = ngx_sprintf(p, "sub:%V:%V:%s", &ctx->id, &ctx->created, step);
    }

    ctx->call.idempotency_key.len = p - ctx->call.idempotency_key.data;

    ctx->call.method = NGX_HTTP_POST;
    ctx->call.body.data = (u_char *) form->data;
    ctx->call.body.len = form->len;

    return ngx_http_billing_stripe_call(r, &ctx->call);
}


static ngx_int_t
ngx_http_billing_api_created(ngx_http_request_t *r,
    ngx_http_billing_stripe_call_t *call, ngx_str_t *id)
{
    /* the object Stripe made, or the answer is a failure to report */

    ngx_str_t  s;

    if (call->json == NULL
        || ngx_http_billing_stripe_string(call, "id", &s) != NGX_OK
        || !ngx_billing_stripe_id_valid((char *) s.data, s.len))
    {
        ngx_http_billing_api_stripe_failed(r, call);
        return NGX_ERROR;
    }

    /* Stripe's answer goes with the next call: the id must outlive it */

    id->len = s.len;
    id->data = ngx_pstrdup(r->pool, &s);

    if (id->data == NULL) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return NGX_ERROR;
    }

    return NGX_OK;
}


static void
ngx_http_billing_api_customer(ngx_http_request_t *r,
    ngx_http_billing_stripe_call_t *call)
{
    ngx_str_t                    id, org;
    ngx_http_billing_api_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_billing_module);

    if (ngx_http_billing_api_created(r, call, &id) != NGX_OK) {
        return;
    }

    org.data = (u_char *) ctx->req.consumer_org.data;
    org.len = ctx->req.consumer_org.len;

    if (ngx_http_billing_store_customer(r, &ctx->id, &org, &id,
                                        ngx_http_billing_api_customer_stored,
                                        r)
        != NGX_OK)
    {
        ngx_http_billing_api_unavailable(r);
    }
}


static void
ngx_http_billing_api_customer_stored(void *data, redisReply *reply)
{
    ngx_http_request_t *r = data;

    ngx_connection_t            *c;
    ngx_http_billing_api_ctx_t  *ctx;

    c = r->connection;
    ctx = ngx_http_get_module_ctx(r, ngx_http_billing_module);

    if (ngx_http_billing_api_copy(r, &ctx->customer, reply) != NGX_OK
        || ctx->customer.len == 0)
    {
        ngx_http_billing_api_unavailable(r);

    } else {
        ngx_http_billing_api_next(r);
    }

    ngx_http_run_posted_requests(c);
}


static void
ngx_http_billing_api_invoice(ngx_http_request_t *r,
    ngx_http_billing_stripe_call_t *call)
{
    ngx_str_t                    id;
    ngx_http_billing_invoice_t   inv;
    ngx_http_billing_api_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_billing_module);

    if (ngx_http_billing_api_created(r, call, &id) != NGX_OK) {
        return;
    }

    ngx_memzero(&inv, sizeof(ngx_http_billing_invoice_t));

    inv.id = id;
    ngx_str_set(&inv.kind, "initial");
    inv.currency.data = (u_char *) ctx->req.currency;
    inv.currency.len = 3;
    inv.customer = ctx->customer;

    ctx->invoice = id;

    if (ngx_http_billing_store_attach(r, &ctx->id, "initial_invoice", &inv,
                                      ngx_time(), ctx->period_end, 0,
                                      ngx_http_billing_api_attached, r)
        != NGX_OK)
    {
        ngx_http_billing_api_unavailable(r);
    }
}


static void
ngx_http_billing_api_item(ngx_http_request_t *r,
    ngx_http_billing_stripe_call_t *call)
{
    ngx_str_t                    id;
    ngx_http_billing_api_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_billing_module);

    if (ngx_http_billing_api_created(r, call, &id) != NGX_OK) {
        return;
    }

    ctx->item = id;

    if (ngx_http_billing_store_set(r, &ctx->id, "initial_item", &id,
                                   ngx_http_billing_api_stored, r)
        != NGX_OK)
    {
        ngx_http_billing_api_unavailable(r);
    }
}


static void
ngx_http_billing_api_finalize(ngx_http_request_t *r,
    ngx_http_billing_stripe_call_t *call)
{
    json_t                      *amount;
    ngx_str_t                    status;
    ngx_http_billing_invoice_t   inv;
    ngx_http_billing_api_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_billing_module);

    if (call->json == NULL
        || ngx_http_billing_stripe_string(call, "status", &status) != NGX_OK)
    {
        ngx_http_billing_api_stripe_failed(r, call);
        return;
    }

    ngx_memzero(&inv, sizeof(ngx_http_billing_invoice_t));

    inv.id = ctx->invoice;

    /* a zero total finalizes as "paid": that activates at once */

    inv.status = ngx_billing_invoice_status_parse((char *) status.data,
                                                  status.len);
    if (inv.status == NGX_BILLING_INVOICE_NONE) {
        ngx_http_billing_api_stripe_failed(r, call);
        return;
    }

    ngx_str_set(&inv.event, "");
    inv.created = ngx_time();
    inv.subscription = ctx->id;
    ngx_str_set(&inv.kind, "initial");
    inv.customer = ctx->customer;

    (void) ngx_http_billing_stripe_string(call, "hosted_invoice_url",
                                          &inv.hosted_invoice_url);
    (void) ngx_http_billing_stripe_string(call, "currency", &inv.currency);

    amount = json_object_get(call->json, "amount_due");
    inv.amount_due = json_is_integer(amount) ? json_integer_value(amount)
                                             : -1;

    ctx->finalized = 1;

    if (ngx_http_billing_store_invoice(r, &inv, ngx_http_billing_api_stored,
                                       r)
        != NGX_OK)
    {
        ngx_http_billing_api_unavailable(r);
    }
}


static void
ngx_http_billing_api_attached(void *data, redisReply *reply)
{
    ngx_http_request_t *r = data;

    ngx_connection_t            *c;
    ngx_http_billing_api_ctx_t  *ctx;

    c = r->connection;
    ctx = ngx_http_get_module_ctx(r, ngx_http_billing_module);

    /* the invoice the subscription has: another request's, if it won */

    if (ngx_http_billing_api_copy(r, &ctx->invoice, reply) != NGX_OK
        || ctx->invoice.len == 0)
    {
        ngx_http_billing_api_unavailable(r);

    } else {
        ngx_http_billing_api_next(r);
    }

    ngx_http_run_posted_requests(c);
}


static void
ngx_http_billing_api_stored(void *data, redisReply *reply)
{
    ngx_http_request_t *r = data;

    ngx_connection_t  *c;

    c = r->connection;

    if (reply == NULL || reply->type == REDIS_REPLY_ERROR) {
        ngx_http_billing_api_unavailable(r);

    } else {
        ngx_http_billing_api_next(r);
    }

    ngx_http_run_posted_requests(c);
}


static ngx_int_t
ngx_http_billing_api_read(ngx_http_request_t *r)
{
    ngx_http_billing_api_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_billing_module);

    return ngx_http_billing_store_get(r, &ctx->id,
                                      ngx_http_billing_api_answer, r);
}


static void
ngx_http_billing_api_answer(void *data, redisReply *reply)
{
    ngx_http_request_t *r = data;

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
            && (reply->type != REDIS_REPLY_ARRAY || reply->elements != 2)))
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
                                             reply->element[1]);
    if (json == NULL) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        goto done;
    }

    status = NGX_HTTP_OK;

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

        status = ctx->existed ? NGX_HTTP_OK : NGX_HTTP_CREATED;
    }

    rc = ngx_http_billing_send_json(r, status, json);
    json_decref(json);

    ngx_http_finalize_request(r, rc);

done:

    ngx_http_run_posted_requests(c);
}


static json_t *
ngx_http_billing_api_subscription(ngx_http_request_t *r, redisReply *sub,
    redisReply *invoices)
{
    size_t                         i;
    json_t                        *json, *list, *plan, *period;
    redisReply                    *v;
    json_error_t                   error;
    ngx_http_billing_main_conf_t  *bmcf;

    bmcf = ngx_http_get_module_main_conf(r, ngx_http_billing_module);

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

    period = json_pack("{s:o,s:o,s:i}",
                       "start", ngx_http_billing_api_integer(sub,
                                                            "period_start"),
                       "end", ngx_http_billing_api_integer(sub, "period_end"),
                       "units", 0);

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
                     "portal_url", bmcf->portal_url.len
                                   ? json_stringn((char *)
                                                  bmcf->portal_url.data,
                                                  bmcf->portal_url.len)
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
                     ngx_http_billing_api_integer(invoice, "period_start"),
                     "period_end",
                     ngx_http_billing_api_integer(invoice, "period_end"),
                     "units", ngx_http_billing_api_integer(invoice, "units"),
                     "hosted_invoice_url",
                     ngx_http_billing_api_string(invoice,
                                                 "hosted_invoice_url"));
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


static ngx_int_t
ngx_http_billing_api_copy(ngx_http_request_t *r, ngx_str_t *dst,
    redisReply *reply)
{
    if (reply == NULL || reply->type != REDIS_REPLY_STRING) {
        return NGX_ERROR;
    }

    dst->len = reply->len;
    dst->data = ngx_pnalloc(r->pool, reply->len + 1);

    if (dst->data == NULL) {
        return NGX_ERROR;
    }

    ngx_memcpy(dst->data, reply->str, reply->len);
    dst->data[dst->len] = '\0';

    return NGX_OK;
}


static void
ngx_http_billing_api_fail(ngx_http_request_t *r, ngx_uint_t status,
    const char *code, const char *message)
{
    ngx_http_finalize_request(r, ngx_http_billing_send_error(r, status, code,
                                                             message));
}


static void
ngx_http_billing_api_unavailable(ngx_http_request_t *r)
{
    ngx_http_finalize_request(r, ngx_http_billing_send_unavailable(r));
}


static void
ngx_http_billing_api_stripe_failed(ngx_http_request_t *r,
    ngx_http_billing_stripe_call_t *call)
{
    json_t     *json;
    ngx_int_t   rc;
    ngx_str_t   message;

    /* Stripe's own message, for the marketplace backend to act on */

    message = call->error;

    if (message.len == 0) {
        ngx_str_set(&message, "unexpected answer from Stripe");
    }

    json = json_pack("{s:{s:s,s:s#,s:i}}", "error",
                     "code", "stripe_error",
                     "message", (char *) message.data, (int) message.len,
                     "stripe_status", (int) call->status);

    if (json == NULL) {
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

    ngx_billing_sub_request_free(&ctx->req);
}
