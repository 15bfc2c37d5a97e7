
/*
 * The Stripe API client.
 *
 * A call is a subrequest to billing_stripe_location + path, with a body
 * of our own and headers of our own only: nothing of the client's
 * request (Cookie, Authorization, ...) goes to Stripe.  The answer is
 * caught by this module's header and body filters, whatever its size,
 * and never reaches the client.  The parent resumes in its own context
 * once the subrequest is over; a retryable failure is sent again after
 * a backoff, with the same Idempotency-Key, until billing_stripe_timeout.
 *
 * nginx's proxy module writes the whole upstream request header to the
 * debug log, Authorization included.  The Stripe key must never reach
 * a log, so debug logging of the connection is off from the moment a
 * call is made until Stripe's answer starts.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_billing_stripe.h"


#define NGX_HTTP_BILLING_STRIPE_MAX_BODY    (4 * 1024 * 1024)
#define NGX_HTTP_BILLING_STRIPE_BACKOFF     250
#define NGX_HTTP_BILLING_STRIPE_BACKOFF_MAX 4000
#define NGX_HTTP_BILLING_STRIPE_ATTEMPTS    10


static ngx_int_t ngx_http_billing_stripe_send(ngx_http_request_t *r,
    ngx_http_billing_stripe_call_t *call);
static ngx_int_t ngx_http_billing_stripe_headers(ngx_http_request_t *r,
    ngx_http_billing_stripe_call_t *call, ngx_http_headers_in_t *hin);
static ngx_int_t ngx_http_billing_stripe_header(ngx_http_request_t *r,
    ngx_http_headers_in_t *hin, const char *name, ngx_str_t *value);
static ngx_int_t ngx_http_billing_stripe_done(ngx_http_request_t *sr,
    void *data, ngx_int_t rc);
static void ngx_http_billing_stripe_resume(ngx_http_request_t *r);
static void ngx_http_billing_stripe_evaluate(ngx_http_request_t *r,
    ngx_http_billing_stripe_call_t *call);
static void ngx_http_billing_stripe_retry_handler(ngx_event_t *ev);
static void ngx_http_billing_stripe_finish(ngx_http_request_t *r,
    ngx_http_billing_stripe_call_t *call);
static void ngx_http_billing_stripe_cleanup(void *data);
static void ngx_http_billing_stripe_mask(ngx_http_billing_stripe_call_t *call);
static void ngx_http_billing_stripe_unmask(
    ngx_http_billing_stripe_call_t *call);
static ngx_http_billing_stripe_call_t *ngx_http_billing_stripe_of(
    ngx_http_request_t *r);
static ngx_int_t ngx_http_billing_stripe_header_filter(ngx_http_request_t *r);
static ngx_int_t ngx_http_billing_stripe_body_filter(ngx_http_request_t *r,
    ngx_chain_t *in);


static ngx_http_output_header_filter_pt  ngx_http_next_header_filter;
static ngx_http_output_body_filter_pt    ngx_http_next_body_filter;


ngx_int_t
ngx_http_billing_stripe_init(ngx_conf_t *cf)
{
    ngx_http_next_header_filter = ngx_http_top_header_filter;
    ngx_http_top_header_filter = ngx_http_billing_stripe_header_filter;

    ngx_http_next_body_filter = ngx_http_top_body_filter;
    ngx_http_top_body_filter = ngx_http_billing_stripe_body_filter;

    return NGX_OK;
}


ngx_int_t
ngx_http_billing_stripe_call(ngx_http_request_t *r,
    ngx_http_billing_stripe_call_t *call)
{
    ngx_http_billing_ctx_t        *ctx;
    ngx_pool_cleanup_t            *cln;
    ngx_http_billing_main_conf_t  *bmcf;

    bmcf = ngx_http_get_module_main_conf(r, ngx_http_billing_module);
    ctx = ngx_http_get_module_ctx(r, ngx_http_billing_module);

    if (ctx == NULL || ctx->call) {
        return NGX_ERROR;
    }

    call->kind = NGX_HTTP_BILLING_CTX_STRIPE;
    call->request = r;
    call->status = 0;

    /* a call struct serves one step after another: the last answer goes */

    if (call->json) {
        json_decref(call->json);
        call->json = NULL;
    }

    ngx_str_null(&call->error);
    call->attempts = 0;
    call->deadline = ngx_current_msec + bmcf->stripe_timeout;

    if (call->retry.handler == NULL) {
        cln = ngx_pool_cleanup_add(r->pool, 0);
        if (cln == NULL) {
            return NGX_ERROR;
        }

        cln->handler = ngx_http_billing_stripe_cleanup;
        cln->data = call;

        call->retry.handler = ngx_http_billing_stripe_retry_handler;
        call->retry.data = call;
        call->retry.log = r->connection->log;
    }

    ctx->call = call;

    if (ngx_http_billing_stripe_send(r, call) != NGX_OK) {
        ctx->call = NULL;
        return NGX_ERROR;
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_billing_stripe_send(ngx_http_request_t *r,
    ngx_http_billing_stripe_call_t *call)
{
    u_char                        *p;
    ngx_buf_t                     *b;
    ngx_str_t                      uri;
    ngx_chain_t                   *cl;
    ngx_http_request_t            *sr;
    ngx_http_headers_in_t         *hin;
    ngx_http_request_body_t       *rb;
    ngx_http_post_subrequest_t    *ps;
    ngx_http_billing_main_conf_t  *bmcf;

    bmcf = ngx_http_get_module_main_conf(r, ngx_http_billing_module);

    uri.len = bmcf->stripe_location.len + call->path.len;
    uri.data = ngx_pnalloc(r->pool, uri.len);
    if (uri.data == NULL) {
        return NGX_ERROR;
    }

    p = ngx_cpymem(uri.data, bmcf->stripe_location.data,
                   bmcf->stripe_location.len);
    ngx_memcpy(p, call->path.data, call->path.len);

    ps = ngx_palloc(r->pool, sizeof(ngx_http_post_subrequest_t));
    if (ps == NULL) {
        return NGX_ERROR;
    }

    ps->handler = ngx_http_billing_stripe_done;
    ps->data = call;

    call->attempts++;
    call->status = 0;
    call->should_retry = -1;
    call->len = 0;
    call->too_large = 0;

    /* all that can fail is made before the subrequest exists */

    hin = ngx_pcalloc(r->pool, sizeof(ngx_http_headers_in_t));
    rb = ngx_pcalloc(r->pool, sizeof(ngx_http_request_body_t));
    if (hin == NULL || rb == NULL) {
        return NGX_ERROR;
    }

    if (ngx_http_billing_stripe_headers(r, call, hin) != NGX_OK) {
        return NGX_ERROR;
    }

    /* the form, in memory, as the whole request body */

    if (call->body.len) {
        b = ngx_calloc_buf(r->pool);
        cl = ngx_alloc_chain_link(r->pool);
        if (b == NULL || cl == NULL) {
            return NGX_ERROR;
        }

        b->memory = 1;
        b->pos = call->body.data;
        b->last = call->body.data + call->body.len;
        b->last_buf = 1;
        b->last_in_chain = 1;

        cl->buf = b;
        cl->next = NULL;

        rb->bufs = cl;
    }

    ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                  "billing stripe: %s %V, attempt %ui",
                  call->method == NGX_HTTP_POST ? "POST" : "GET",
                  &call->path, call->attempts);

    ngx_http_billing_stripe_mask(call);

    if (ngx_http_subrequest(r, &uri, NULL, &sr, ps,
                            NGX_HTTP_SUBREQUEST_WAITED)
        != NGX_OK)
    {
        ngx_http_billing_stripe_unmask(call);
        return NGX_ERROR;
    }

    ngx_http_set_ctx(sr, call, ngx_http_billing_module);

    if (call->method == NGX_HTTP_POST) {
        sr->method = NGX_HTTP_POST;
        ngx_str_set(&sr->method_name, "POST");

    } else {
        sr->method = NGX_HTTP_GET;
        ngx_str_set(&sr->method_name, "GET");
    }

    /*
     * A subrequest starts with its parent's headers: none of them goes.
     * The list is one part, whose address changes with the copy.
     */

    sr->headers_in = *hin;
    sr->headers_in.headers.last = &sr->headers_in.headers.part;
    sr->request_body = rb;

    call->sr = sr;
    call->running = 1;

    return NGX_OK;
}


static ngx_int_t
ngx_http_billing_stripe_headers(ngx_http_request_t *r,
    ngx_http_billing_stripe_call_t *call, ngx_http_headers_in_t *hin)
{
    ngx_str_t                      s;
    ngx_http_billing_main_conf_t  *bmcf;

    bmcf = ngx_http_get_module_main_conf(r, ngx_http_billing_module);

    if (ngx_list_init(&hin->headers, r->pool, 8, sizeof(ngx_table_elt_t))
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    hin->content_length_n = -1;
    hin->keep_alive_n = -1;

    if (ngx_http_billing_stripe_header(r, hin, "Authorization",
                                       &bmcf->stripe_authorization)
        != NGX_OK
        || ngx_http_billing_stripe_header(r, hin, "Stripe-Version",
                                          &bmcf->stripe_api_version)
           != NGX_OK)
    {
        return NGX_ERROR;
    }

    ngx_str_set(&s, "application/json");

    if (ngx_http_billing_stripe_header(r, hin, "Accept", &s) != NGX_OK) {
        return NGX_ERROR;
    }

    ngx_str_set(&s, "ngx_http_billing_module/" NGX_HTTP_BILLING_VERSION);

    if (ngx_http_billing_stripe_header(r, hin, "User-Agent", &s) != NGX_OK)
    {
        return NGX_ERROR;
    }

    if (call->method != NGX_HTTP_POST) {
        return NGX_OK;
    }

    ngx_str_set(&s, "application/x-www-form-urlencoded");

    if (ngx_http_billing_stripe_header(r, hin, "Content-Type", &s) != NGX_OK
        || ngx_http_billing_stripe_header(r, hin, "Idempotency-Key",
                                          &call->idempotency_key)
           != NGX_OK)
    {
        return NGX_ERROR;
    }

    hin->content_length_n = call->body.len;

    return NGX_OK;
}


static ngx_int_t
ngx_http_billing_stripe_header(ngx_http_request_t *r,
    ngx_http_headers_in_t *hin, const char *name, ngx_str_t *value)
{
    ngx_table_elt_t  *h;

    h = ngx_list_push(&hin->headers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    h->key.data = (u_char *) name;
    h->key.len = ngx_strlen(name);
    h->value = *value;

    h->lowcase_key = ngx_pnalloc(r->pool, h->key.len);
    if (h->lowcase_key == NULL) {
        return NGX_ERROR;
    }

    h->hash = ngx_hash_strlow(h->lowcase_key, h->key.data, h->key.len);

#if (nginx_version >= 1023000)
    h->next = NULL;
#endif

    if (ngx_strcmp(name, "Content-Type") == 0) {
        hin->content_type = h;
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_billing_stripe_done(ngx_http_request_t *sr, void *data, ngx_int_t rc)
{
    ngx_http_billing_stripe_call_t  *call = data;

    /*
     * A subrequest may be finalized more than once, an earlier attempt's
     * even during a later one: only the first of the current one counts.
     */

    if (!call->running || sr != call->sr) {
        return rc;
    }

    call->running = 0;

    ngx_http_billing_stripe_unmask(call);

    if (rc == NGX_ERROR || rc >= NGX_HTTP_SPECIAL_RESPONSE) {

        /* nginx's own failure (no connection, timeout): its status */

        if (call->status < NGX_HTTP_SPECIAL_RESPONSE) {
            call->status = (rc >= NGX_HTTP_SPECIAL_RESPONSE)
                           ? (ngx_uint_t) rc : NGX_HTTP_BAD_GATEWAY;
            call->len = 0;
        }

    } else if (call->status == 0) {
        call->status = NGX_HTTP_BAD_GATEWAY;
    }

    sr->parent->write_event_handler = ngx_http_billing_stripe_resume;

    return rc;
}


static void
ngx_http_billing_stripe_resume(ngx_http_request_t *r)
{
    ngx_http_billing_ctx_t  *ctx;

    r->write_event_handler = ngx_http_request_empty_handler;

    ctx = ngx_http_get_module_ctx(r, ngx_http_billing_module);

    if (ctx == NULL || ctx->call == NULL) {
        return;
    }

    ngx_http_billing_stripe_evaluate(r, ctx->call);
}


static void
ngx_http_billing_stripe_evaluate(ngx_http_request_t *r,
    ngx_http_billing_stripe_call_t *call)
{
    json_t        *err, *msg;
    ngx_msec_t     backoff;
    ngx_uint_t     retry;
    json_error_t   error;

    if (call->json) {
        json_decref(call->json);
        call->json = NULL;
    }

    if (call->len && !call->too_large) {
        call->json = json_loadb((char *) call->buf, call->len, 0, &error);

        if (call->json && !json_is_object(call->json)) {
            json_decref(call->json);
            call->json = NULL;
        }
    }

    ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                  "billing stripe: %V answered %ui", &call->path,
                  call->status);

    if (call->status >= 200 && call->status < 300 && call->json) {
        ngx_http_billing_stripe_finish(r, call);
        return;
    }

    /* Stripe says whether to retry; else what its libraries do */

    if (call->should_retry != -1) {
        retry = call->should_retry;

    } else {
        retry = call->status == NGX_HTTP_CONFLICT || call->status == 429
                || call->status >= NGX_HTTP_INTERNAL_SERVER_ERROR
                || (call->status < 300 && call->json == NULL);
    }

    if (call->too_large) {
        /* the same answer again would be as large */
        retry = 0;
    }

    backoff = NGX_HTTP_BILLING_STRIPE_BACKOFF << ngx_min(call->attempts - 1, 8);
    backoff = ngx_min(backoff, NGX_HTTP_BILLING_STRIPE_BACKOFF_MAX);

    if (retry
        && call->attempts < NGX_HTTP_BILLING_STRIPE_ATTEMPTS
        && (ngx_msec_int_t) (call->deadline - ngx_current_msec - backoff) > 0)
    {
        ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                      "billing stripe: %V failed with %ui, "
                      "retrying in %Mms", &call->path, call->status, backoff);

        ngx_add_timer(&call->retry, backoff);
        return;
    }

    /* Stripe's own words, when it said something */

    err = call->json ? json_object_get(call->json, "error") : NULL;
    msg = json_is_object(err) ? json_object_get(err, "message") : NULL;

    if (json_is_string(msg)) {
        call->error.data = (u_char *) json_string_value(msg);
        call->error.len = json_string_length(msg);

    } else if (call->status == NGX_HTTP_GATEWAY_TIME_OUT) {
        ngx_str_set(&call->error, "Stripe did not answer in time");

    } else {
        ngx_str_set(&call->error, "Stripe could not be reached or gave "
                                  "no usable answer");
    }

    ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                  "billing stripe: %V failed with %ui after %ui attempts: "
                  "\"%V\"", &call->path, call->status, call->attempts,
                  &call->error);

    ngx_http_billing_stripe_finish(r, call);
}


static void
ngx_http_billing_stripe_retry_handler(ngx_event_t *ev)
{
    ngx_http_billing_stripe_call_t  *call = ev->data;

    ngx_connection_t    *c;
    ngx_http_request_t  *r;

    r = call->request;
    c = r->connection;

    if (ngx_http_billing_stripe_send(r, call) != NGX_OK) {
        call->status = NGX_HTTP_INTERNAL_SERVER_ERROR;
        ngx_str_set(&call->error, "the Stripe call could not be made");
        ngx_http_billing_stripe_finish(r, call);
    }

    ngx_http_run_posted_requests(c);
}


static void
ngx_http_billing_stripe_finish(ngx_http_request_t *r,
    ngx_http_billing_stripe_call_t *call)
{
    ngx_http_billing_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_billing_module);
    ctx->call = NULL;

    call->handler(r, call);
}


ngx_int_t
ngx_http_billing_stripe_string(ngx_http_billing_stripe_call_t *call,
    const char *name, ngx_str_t *value)
{
    json_t  *v;

    v = call->json ? json_object_get(call->json, name) : NULL;

    if (!json_is_string(v)) {
        ngx_str_set(value, "");
        return NGX_DECLINED;
    }

    value->data = (u_char *) json_string_value(v);
    value->len = json_string_length(v);

    return NGX_OK;
}


static void
ngx_http_billing_stripe_cleanup(void *data)
{
    ngx_http_billing_stripe_call_t  *call = data;

    if (call->retry.timer_set) {
        ngx_del_timer(&call->retry);
    }

    ngx_http_billing_stripe_unmask(call);

    if (call->json) {
        json_decref(call->json);
        call->json = NULL;
    }
}


static void
ngx_http_billing_stripe_mask(ngx_http_billing_stripe_call_t *call)
{
    ngx_log_t  *log;

    log = call->request->connection->log;

    if (call->masked || !(log->log_level & NGX_LOG_DEBUG_ALL)) {
        return;
    }

    call->log_level = log->log_level;
    log->log_level = NGX_LOG_INFO;
    call->masked = 1;
}


static void
ngx_http_billing_stripe_unmask(ngx_http_billing_stripe_call_t *call)
{
    if (call->masked) {
        call->request->connection->log->log_level = call->log_level;
        call->masked = 0;
    }
}


static ngx_http_billing_stripe_call_t *
ngx_http_billing_stripe_of(ngx_http_request_t *r)
{
    ngx_http_billing_stripe_call_t  *call;

    if (r == r->main) {
        return NULL;
    }

    call = ngx_http_get_module_ctx(r, ngx_http_billing_module);

    if (call == NULL || call->kind != NGX_HTTP_BILLING_CTX_STRIPE) {
        return NULL;
    }

    return call;
}


static ngx_int_t
ngx_http_billing_stripe_header_filter(ngx_http_request_t *r)
{
    ngx_uint_t                       n;
    ngx_table_elt_t                 *h;
    ngx_http_billing_stripe_call_t  *call;

    call = ngx_http_billing_stripe_of(r);

    if (call == NULL) {
        return ngx_http_next_header_filter(r);
    }

    ngx_http_billing_stripe_unmask(call);

    call->status = r->headers_out.status;

    h = ngx_http_billing_find_header(&r->headers_out.headers,
                                     "Stripe-Should-Retry", &n);
    if (h) {
        call->should_retry = (h->value.len == 4
                              && ngx_strncasecmp(h->value.data,
                                                 (u_char *) "true", 4) == 0);
    }

    /* the answer is ours: nothing of it goes further */

    r->header_sent = 1;

    return NGX_OK;
}


static ngx_int_t
ngx_http_billing_stripe_body_filter(ngx_http_request_t *r, ngx_chain_t *in)
{
    u_char                          *p;
    off_t                            size;
    ssize_t                          n;
    ngx_buf_t                       *b;
    ngx_chain_t                     *cl;
    ngx_http_billing_stripe_call_t  *call;

    call = ngx_http_billing_stripe_of(r);

    if (call == NULL) {
        return ngx_http_next_body_filter(r, in);
    }

    for (cl = in; cl; cl = cl->next) {
        b = cl->buf;
        size = ngx_buf_size(b);

        if (size == 0 || call->too_large) {
            goto consumed;
        }

        if (call->len + size > NGX_HTTP_BILLING_STRIPE_MAX_BODY) {
            ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                          "billing stripe: the answer to %V is larger "
                          "than %d bytes", &call->path,
                          NGX_HTTP_BILLING_STRIPE_MAX_BODY);
            call->too_large = 1;
            goto consumed;
        }

        if (call->len + size > call->size) {

            /* in the parent's pool, which outlives every subrequest */

            call->size = ngx_max(2 * call->size, call->len + (size_t) size);
            call->size = ngx_max(call->size, 4096);

            p = ngx_pnalloc(call->request->pool, call->size);
            if (p == NULL) {
                return NGX_ERROR;
            }

            if (call->len) {
                ngx_memcpy(p, call->buf, call->len);
            }

            call->buf = p;
        }

        if (ngx_buf_in_memory(b)) {
            ngx_memcpy(call->buf + call->len, b->pos, (size_t) size);

        } else {
            n = ngx_read_file(b->file, call->buf + call->len, (size_t) size,
                              b->file_pos);

            if (n != size) {
                return NGX_ERROR;
            }
        }

        call->len += (size_t) size;

    consumed:

        /* taken: the upstream may reuse the buffer */

        if (ngx_buf_in_memory(b)) {
            b->pos = b->last;
        }

        if (b->in_file) {
            b->file_pos = b->file_last;
        }
    }

    return NGX_OK;
}
