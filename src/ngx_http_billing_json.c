
/*
 * The module's JSON answers, in one place.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_billing_json.h"


static void *ngx_http_billing_json_palloc(size_t size);
static void ngx_http_billing_json_pfree(void *p);
static ngx_int_t ngx_http_billing_send_buf(ngx_http_request_t *r,
    ngx_uint_t status, ngx_buf_t *b);


/* the pool of the parse under way: a worker has one thread */
static ngx_pool_t  *ngx_http_billing_json_current;


void
ngx_http_billing_json_pool(ngx_pool_t *pool,
    ngx_http_billing_json_alloc_t *saved)
{
    /*
     * Set for one parse, not once for the process: the API's, Stripe's
     * and the plans' documents (and another module's, libjansson being
     * shared) keep malloc() and free(), whatever they were made with.
     */

    json_get_alloc_funcs(&saved->malloc, &saved->free);

    ngx_http_billing_json_current = pool;
    json_set_alloc_funcs(ngx_http_billing_json_palloc,
                         ngx_http_billing_json_pfree);
}


void
ngx_http_billing_json_unpool(ngx_http_billing_json_alloc_t *saved)
{
    json_set_alloc_funcs(saved->malloc, saved->free);
    ngx_http_billing_json_current = NULL;
}


static void *
ngx_http_billing_json_palloc(size_t size)
{
    /* aligned as nginx aligns: enough for jansson's values */
    return ngx_palloc(ngx_http_billing_json_current, size);
}


static void
ngx_http_billing_json_pfree(void *p)
{
    /* the pool frees it: a parse's own buffers, or a failed document */
}


json_t *
ngx_http_billing_json_error(const char *code, const char *message,
    size_t len)
{
    return json_pack("{s:{s:s,s:s#}}", "error", "code", code,
                     "message", message, len);
}


ngx_buf_t *
ngx_http_billing_json_buf(ngx_pool_t *pool, json_t *json)
{
    size_t      len;
    ngx_buf_t  *b;

    len = json_dumpb(json, NULL, 0, JSON_COMPACT);
    if (len == 0) {
        return NULL;
    }

    b = ngx_create_temp_buf(pool, len + 1);
    if (b == NULL) {
        return NULL;
    }

    if (json_dumpb(json, (char *) b->last, len, JSON_COMPACT) != len) {
        return NULL;
    }

    b->last += len;
    *b->last++ = '\n';

    return b;
}


ngx_int_t
ngx_http_billing_send_json(ngx_http_request_t *r, ngx_uint_t status,
    json_t *json)
{
    ngx_buf_t  *b;

    b = ngx_http_billing_json_buf(r->pool, json);
    if (b == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_billing_send_buf(r, status, b);
}


ngx_int_t
ngx_http_billing_send_static(ngx_http_request_t *r, ngx_uint_t status,
    ngx_str_t *body)
{
    ngx_buf_t  *b;

    b = ngx_calloc_buf(r->pool);
    if (b == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    b->pos = body->data;
    b->last = body->data + body->len;
    b->memory = 1;

    return ngx_http_billing_send_buf(r, status, b);
}


static ngx_int_t
ngx_http_billing_send_buf(ngx_http_request_t *r, ngx_uint_t status,
    ngx_buf_t *b)
{
    ngx_int_t     rc;
    ngx_chain_t   out;

    r->headers_out.status = status;
    r->headers_out.content_length_n = b->last - b->pos;

    ngx_str_set(&r->headers_out.content_type, "application/json");
    r->headers_out.content_type_len = r->headers_out.content_type.len;
    r->headers_out.content_type_lowcase = NULL;

    /* answers about money and access are never to be cached on the way */

    if (ngx_http_billing_add_header(r, "Cache-Control", "no-store")
        != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    b->last_buf = (r == r->main) ? 1 : 0;
    b->last_in_chain = 1;

    out.buf = b;
    out.next = NULL;

    return ngx_http_output_filter(r, &out);
}


ngx_int_t
ngx_http_billing_send_error(ngx_http_request_t *r, ngx_uint_t status,
    const char *code, const char *message)
{
    json_t     *json;
    ngx_int_t   rc;

    json = ngx_http_billing_json_error(code, message, ngx_strlen(message));
    if (json == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    rc = ngx_http_billing_send_json(r, status, json);

    json_decref(json);

    return rc;
}


ngx_int_t
ngx_http_billing_send_unavailable(ngx_http_request_t *r)
{
    return ngx_http_billing_send_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                                       "billing_unavailable",
                                       "billing storage is not available, "
                                       "retry later");
}


ngx_int_t
ngx_http_billing_add_header(ngx_http_request_t *r, const char *name,
    const char *value)
{
    ngx_table_elt_t  *h;

    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    h->hash = 1;
#if (nginx_version >= 1023000)
    h->next = NULL;
#endif
    h->key.data = (u_char *) name;
    h->key.len = ngx_strlen(name);
    h->value.data = (u_char *) value;
    h->value.len = ngx_strlen(value);

    return NGX_OK;
}


ngx_int_t
ngx_http_billing_error_replace(ngx_http_request_t *r,
    ngx_http_billing_ctx_t *ctx, ngx_int_t match, ngx_uint_t status,
    json_t *json)
{
    ngx_buf_t  *b;

    b = ngx_http_billing_json_buf(r->pool, json);
    if (b == NULL) {
        return NGX_ERROR;
    }

    ctx->error_match = match;
    ctx->error_status = status;
    ctx->error_body = b;

    return NGX_OK;
}


void
ngx_http_billing_error_code(ngx_uint_t status, const char **code,
    const char **message)
{
    switch (status) {

    case NGX_HTTP_UNAUTHORIZED:
    case NGX_HTTP_FORBIDDEN:
        *code = "unauthorized";
        *message = "access denied";
        return;

    case NGX_HTTP_NOT_FOUND:
        *code = "not_found";
        *message = "no such resource";
        return;

    case NGX_HTTP_NOT_ALLOWED:
        *code = "method_not_allowed";
        *message = "method not allowed";
        return;

    case NGX_HTTP_REQUEST_ENTITY_TOO_LARGE:
        *code = "invalid_request";
        *message = "the request body is too large";
        return;

    default:
        if (status >= NGX_HTTP_INTERNAL_SERVER_ERROR) {
            *code = "billing_unavailable";
            *message = "the request could not be served, retry later";

        } else {
            *code = "invalid_request";
            *message = "the request is malformed";
        }
    }
}
