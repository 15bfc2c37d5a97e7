
/*
 * ngx_http_billing_filter_module: the header and body filters.
 *
 * A Stripe subrequest's answer is taken whole by the Stripe client and
 * goes no further.  A client request's error answer becomes the JSON
 * that a handler of the module prepared for it, or, in the module's own
 * locations, the JSON form of nginx's error page (a body over
 * client_max_body_size, a malformed request).
 *
 * A filter module of its own, declared as one in "config": a plain HTTP
 * module precedes the write filter in a static build, which would then
 * drop these filters when it installs itself.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_billing_module.h"
#include "ngx_http_billing_filter.h"
#include "ngx_http_billing_json.h"
#include "ngx_http_billing_stripe.h"
#include "ngx_http_billing_gate.h"


static ngx_int_t ngx_http_billing_filter_init(ngx_conf_t *cf);
static ngx_int_t ngx_http_billing_header_filter(ngx_http_request_t *r);
static ngx_int_t ngx_http_billing_body_filter(ngx_http_request_t *r,
    ngx_chain_t *in);
static ngx_http_billing_ctx_t *ngx_http_billing_filter_ctx(
    ngx_http_request_t *r);


static ngx_http_module_t  ngx_http_billing_filter_module_ctx = {
    NULL,                                  /* preconfiguration */
    ngx_http_billing_filter_init,          /* postconfiguration */

    NULL,                                  /* create main configuration */
    NULL,                                  /* init main configuration */

    NULL,                                  /* create server configuration */
    NULL,                                  /* merge server configuration */

    NULL,                                  /* create location configuration */
    NULL                                   /* merge location configuration */
};


ngx_module_t  ngx_http_billing_filter_module = {
    NGX_MODULE_V1,
    &ngx_http_billing_filter_module_ctx,   /* module context */
    NULL,                                  /* module directives */
    NGX_HTTP_MODULE,                       /* module type */
    NULL,                                  /* init master */
    NULL,                                  /* init module */
    NULL,                                  /* init process */
    NULL,                                  /* init thread */
    NULL,                                  /* exit thread */
    NULL,                                  /* exit process */
    NULL,                                  /* exit master */
    NGX_MODULE_V1_PADDING
};


static ngx_http_output_header_filter_pt  ngx_http_next_header_filter;
static ngx_http_output_body_filter_pt    ngx_http_next_body_filter;


static ngx_int_t
ngx_http_billing_filter_init(ngx_conf_t *cf)
{
    ngx_http_next_header_filter = ngx_http_top_header_filter;
    ngx_http_top_header_filter = ngx_http_billing_header_filter;

    ngx_http_next_body_filter = ngx_http_top_body_filter;
    ngx_http_top_body_filter = ngx_http_billing_body_filter;

    return NGX_OK;
}


static ngx_int_t
ngx_http_billing_header_filter(ngx_http_request_t *r)
{
    json_t                       *json;
    ngx_int_t                     rc;
    const char                   *code, *message;
    ngx_http_billing_ctx_t       *ctx;
    ngx_http_billing_loc_conf_t  *blcf;

    if (r != r->main) {

        /* Stripe's answer is the client's, and goes no further */

        if (ngx_http_billing_stripe_attempt(r)) {
            return ngx_http_billing_stripe_header(r);
        }

        ngx_http_billing_gate_auth_header(r);

        return ngx_http_next_header_filter(r);
    }

    if (r->headers_out.status < NGX_HTTP_BAD_REQUEST) {
        return ngx_http_next_header_filter(r);
    }

    ctx = ngx_http_billing_filter_ctx(r);

    if (ctx == NGX_CONF_UNSET_PTR) {
        return ngx_http_next_header_filter(r);
    }

    if (ctx == NULL || ctx->error_body == NULL) {

        /*
         * Where the module answers, nginx's own errors are made JSON
         * too; the module's own answers are JSON already.
         */

        blcf = ngx_http_get_module_loc_conf(r, ngx_http_billing_module);

        if (!blcf->json_errors
            || (r->headers_out.content_type.len == sizeof("application/json")
                                                   - 1
                && ngx_strncmp(r->headers_out.content_type.data,
                               "application/json",
                               sizeof("application/json") - 1)
                   == 0))
        {
            return ngx_http_next_header_filter(r);
        }

        if (ctx == NULL) {
            ctx = ngx_pcalloc(r->pool, sizeof(ngx_http_billing_ctx_t));
            if (ctx == NULL) {
                return NGX_ERROR;
            }

            ctx->kind = NGX_HTTP_BILLING_CTX_ERROR;
            ngx_http_set_ctx(r, ctx, ngx_http_billing_module);
        }

        ngx_http_billing_error_code(r->headers_out.status, &code, &message);

        json = ngx_http_billing_json_error(code, message,
                                           ngx_strlen(message));
        if (json == NULL) {
            return NGX_ERROR;
        }

        rc = ngx_http_billing_error_replace(r, ctx, r->headers_out.status,
                                            r->headers_out.status, json);
        json_decref(json);

        if (rc != NGX_OK) {
            return NGX_ERROR;
        }
    }

    if (r->headers_out.status != (ngx_uint_t) ctx->error_match
        || ctx->error_body->last_in_chain)
    {
        return ngx_http_next_header_filter(r);
    }

    r->headers_out.status = ctx->error_status;
    r->headers_out.status_line.len = 0;

    /* what $status and the log say */

    if (r->err_status) {
        r->err_status = ctx->error_status;
    }

    ngx_str_set(&r->headers_out.content_type, "application/json");
    r->headers_out.content_type_len = r->headers_out.content_type.len;
    r->headers_out.content_type_lowcase = NULL;
    r->headers_out.charset.len = 0;

    r->headers_out.content_length_n = ctx->error_body->last
                                      - ctx->error_body->pos;

    if (r->headers_out.content_length) {
        r->headers_out.content_length->hash = 0;
        r->headers_out.content_length = NULL;
    }

    ngx_http_clear_accept_ranges(r);
    ngx_http_clear_last_modified(r);
    ngx_http_clear_etag(r);

    /* marks the swap: the body filter sends ours */
    ctx->error_body->last_in_chain = 1;

    if (ngx_http_billing_add_header(r, "Cache-Control", "no-store")
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    return ngx_http_next_header_filter(r);
}


static ngx_int_t
ngx_http_billing_body_filter(ngx_http_request_t *r, ngx_chain_t *in)
{
    ngx_buf_t               *b;
    ngx_chain_t             *cl, out;
    ngx_http_billing_ctx_t  *ctx;

    if (r != r->main) {

        if (ngx_http_billing_stripe_attempt(r)) {
            return ngx_http_billing_stripe_body(r, in);
        }

        return ngx_http_next_body_filter(r, in);
    }

    ctx = ngx_http_billing_filter_ctx(r);

    if (ctx == NULL || ctx == NGX_CONF_UNSET_PTR || ctx->error_body == NULL
        || !ctx->error_body->last_in_chain)
    {
        return ngx_http_next_body_filter(r, in);
    }

    /* nginx's page is dropped; ours goes once, with the first call */

    for (cl = in; cl; cl = cl->next) {
        b = cl->buf;

        if (ngx_buf_in_memory(b)) {
            b->pos = b->last;
        }

        if (b->in_file) {
            b->file_pos = b->file_last;
        }
    }

    /*
     * Once ours went, later calls only flush what is still buffered
     * (a full socket, an HTTP/2 window): they must go on, without data.
     */

    if (ctx->error_body->last_buf) {
        return ngx_http_next_body_filter(r, NULL);
    }

    ctx->error_body->last_buf = 1;

    out.buf = ctx->error_body;
    out.next = NULL;

    return ngx_http_next_body_filter(r, &out);
}


/*
 * The context of a client request, NULL if it has none yet, or
 * NGX_CONF_UNSET_PTR for a request of the module's own (the parent of
 * its Stripe subrequests), whose context is of another kind.
 */

static ngx_http_billing_ctx_t *
ngx_http_billing_filter_ctx(ngx_http_request_t *r)
{
    ngx_http_billing_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_billing_module);

    if (ctx && ctx->kind == NGX_HTTP_BILLING_CTX_STRIPE) {
        return NGX_CONF_UNSET_PTR;
    }

    return ctx;
}
