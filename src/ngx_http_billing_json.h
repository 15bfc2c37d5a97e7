
/*
 * The module's answers: JSON, never cached on the way.  Every error is
 * {"error": {"code": ..., "message": ...}}, other fields beside "error".
 */


#ifndef _NGX_HTTP_BILLING_JSON_H_INCLUDED_
#define _NGX_HTTP_BILLING_JSON_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include <jansson.h>

#include "ngx_http_billing_module.h"


/* jansson's allocation functions, as they were before a parse */
typedef struct {
    json_malloc_t                 malloc;
    json_free_t                   free;
} ngx_http_billing_json_alloc_t;


/*
 * From ngx_http_billing_json_pool() to ngx_http_billing_json_unpool(),
 * jansson allocates from pool and frees nothing: for one json_loadb()
 * whose document then lives as long as the pool and is never
 * json_decref()ed.  Nothing else may run in between: any other jansson
 * user keeps its own allocator (jansson's is process-wide).
 */
void ngx_http_billing_json_pool(ngx_pool_t *pool,
    ngx_http_billing_json_alloc_t *saved);
void ngx_http_billing_json_unpool(ngx_http_billing_json_alloc_t *saved);

/* {"error": {"code": code, "message": message}}, or NULL */
json_t *ngx_http_billing_json_error(const char *code, const char *message,
    size_t len);

/* json, compact, with a newline, in a buffer of the pool; NULL on error */
ngx_buf_t *ngx_http_billing_json_buf(ngx_pool_t *pool, json_t *json);

ngx_int_t ngx_http_billing_send_json(ngx_http_request_t *r,
    ngx_uint_t status, json_t *json);
/* a constant answer: body is JSON with its newline, never copied */
ngx_int_t ngx_http_billing_send_static(ngx_http_request_t *r,
    ngx_uint_t status, ngx_str_t *body);
ngx_int_t ngx_http_billing_send_error(ngx_http_request_t *r,
    ngx_uint_t status, const char *code, const char *message);

/* 503 billing_unavailable: Redis cannot be reached or did not answer */
ngx_int_t ngx_http_billing_send_unavailable(ngx_http_request_t *r);

ngx_int_t ngx_http_billing_add_header(ngx_http_request_t *r,
    const char *name, const char *value);

/*
 * When nginx answers "match" (from a handler's return code, through its
 * special response), the answer becomes "status" with the JSON "json"
 * instead; an error_page of the operator's still goes first.  The
 * filter module makes the swap.
 */
ngx_int_t ngx_http_billing_error_replace(ngx_http_request_t *r,
    ngx_http_billing_ctx_t *ctx, ngx_int_t match, ngx_uint_t status,
    json_t *json);

/* the code and message of nginx's own error answers */
void ngx_http_billing_error_code(ngx_uint_t status, const char **code,
    const char **message);


#endif /* _NGX_HTTP_BILLING_JSON_H_INCLUDED_ */
