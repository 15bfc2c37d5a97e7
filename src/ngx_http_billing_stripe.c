
/*
 * The Stripe API client.
 *
 * An attempt is a subrequest to billing_stripe_location + path, with a
 * body of our own and headers of our own only, whose parent is a
 * request of the module's own (ngx_http_billing_fake.c): nothing of a
 * client's request (Cookie, Authorization, ...) goes to Stripe, and a
 * client that goes away (proxy_ignore_client_abort off) does not cut a
 * call short.  The answer is caught by the filter module, up to
 * NGX_HTTP_BILLING_STRIPE_MAX_BODY, and goes nowhere else.  A retryable
 * failure is sent again after a backoff, with the same Idempotency-Key,
 * until billing_stripe_timeout.
 *
 * nginx's proxy module writes the whole upstream request header to the
 * debug log, Authorization included.  The Stripe key must never reach
 * a log, so debug logging of the attempt's connection is off from the
 * moment it is made until Stripe's answer starts.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_billing_stripe.h"
#include "ngx_http_billing_status.h"
#include "ngx_http_billing_fake.h"


#define NGX_HTTP_BILLING_STRIPE_BACKOFF     250
#define NGX_HTTP_BILLING_STRIPE_BACKOFF_MAX 4000
#define NGX_HTTP_BILLING_STRIPE_ATTEMPTS    10
#define NGX_HTTP_BILLING_STRIPE_GRACE       60000


struct ngx_http_billing_stripe_attempt_s {
    ngx_uint_t                          kind;     /* CTX_STRIPE, first */

    /* NULL once the call no longer waits for it */
    ngx_http_billing_stripe_call_t     *call;

    ngx_http_request_t                 *request;  /* the parent */
    ngx_http_request_t                 *sr;

    ngx_uint_t                          status;
    ngx_int_t                           should_retry;
    u_char                             *buf;
    size_t                              len;
    size_t                              size;

    ngx_uint_t                          log_level;
    unsigned                            masked:1;
    unsigned                            running:1;
    unsigned                            too_large:1;
    unsigned                            broken:1;
    unsigned                            complete:1;
    unsigned                            over:1;
    unsigned                            misrouted:1;
};


static ngx_int_t ngx_http_billing_stripe_send(
    ngx_http_billing_stripe_call_t *call);
static ngx_int_t ngx_http_billing_stripe_request(
    ngx_http_billing_stripe_call_t *call,
    ngx_http_billing_stripe_attempt_t *at);
static ngx_int_t ngx_http_billing_stripe_headers(
    ngx_http_billing_stripe_call_t *call, ngx_pool_t *pool,
    ngx_http_headers_in_t *hin);
static ngx_int_t ngx_http_billing_stripe_add(ngx_pool_t *pool,
    ngx_http_headers_in_t *hin, const char *name, ngx_str_t *value);
static ngx_int_t ngx_http_billing_stripe_done(ngx_http_request_t *sr,
    void *data, ngx_int_t rc);
static void ngx_http_billing_stripe_resume(ngx_http_request_t *r);
static void ngx_http_billing_stripe_evaluate(
    ngx_http_billing_stripe_call_t *call,
    ngx_http_billing_stripe_attempt_t *at);
static void ngx_http_billing_stripe_retry_handler(ngx_event_t *ev);
static void ngx_http_billing_stripe_watchdog_handler(ngx_event_t *ev);
static void ngx_http_billing_stripe_finish(
    ngx_http_billing_stripe_call_t *call);
static void ngx_http_billing_stripe_detach(
    ngx_http_billing_stripe_attempt_t *at);
static void ngx_http_billing_stripe_gone(void *data);
static void ngx_http_billing_stripe_cleanup(void *data);
static void ngx_http_billing_stripe_mask(
    ngx_http_billing_stripe_attempt_t *at);
static void ngx_http_billing_stripe_unmask(
    ngx_http_billing_stripe_attempt_t *at);


ngx_int_t
ngx_http_billing_stripe_call(ngx_http_billing_stripe_call_t *call)
{
    ngx_msec_t           grace;
    ngx_pool_cleanup_t  *cln;

    if (call->attempt || call->retry.timer_set) {
        return NGX_ERROR;
    }

    /*
     * A request of the module's own is in no event set, which only an
     * edge-triggered method (epoll, kqueue) allows.
     */

    if (!(ngx_event_flags & NGX_USE_CLEAR_EVENT)) {
        ngx_log_error(NGX_LOG_ERR, call->owner.log, 0,
                      "billing stripe: Stripe calls need the epoll or "
                      "kqueue event method");
        return NGX_ERROR;
    }

    if (call->cleanup == NULL) {
        cln = ngx_pool_cleanup_add(call->owner.pool, 0);
        if (cln == NULL) {
            return NGX_ERROR;
        }

        cln->handler = ngx_http_billing_stripe_cleanup;
        cln->data = call;
        call->cleanup = cln;

        call->retry.handler = ngx_http_billing_stripe_retry_handler;
        call->retry.data = call;
        call->retry.log = call->owner.log;

        call->watchdog.handler = ngx_http_billing_stripe_watchdog_handler;
        call->watchdog.data = call;
        call->watchdog.log = call->owner.log;
    }

    /* a call struct serves one step after another: the last answer goes */

    if (call->json) {
        json_decref(call->json);
        call->json = NULL;
    }

    call->status = 0;
    ngx_str_null(&call->error);
    call->attempts = 0;
    call->lost = 0;
    call->internal = 0;
    call->deadline = ngx_current_msec + call->owner.bmcf->stripe_timeout;

    if (ngx_http_billing_stripe_send(call) != NGX_OK) {
        return NGX_ERROR;
    }

    grace = ngx_max(call->owner.bmcf->stripe_timeout,
                    NGX_HTTP_BILLING_STRIPE_GRACE);

    ngx_add_timer(&call->watchdog, call->owner.bmcf->stripe_timeout + grace);

    return NGX_OK;
}


void
ngx_http_billing_stripe_cancel(ngx_http_billing_stripe_call_t *call)
{
    if (call->retry.timer_set) {
        ngx_del_timer(&call->retry);
    }

    if (call->watchdog.timer_set) {
        ngx_del_timer(&call->watchdog);
    }

    if (call->attempt) {
        ngx_http_billing_stripe_detach(call->attempt);
        call->attempt = NULL;
    }

    if (call->json) {
        json_decref(call->json);
        call->json = NULL;
    }
}


static ngx_int_t
ngx_http_billing_stripe_send(ngx_http_billing_stripe_call_t *call)
{
    ngx_http_request_t                 *r;
    ngx_pool_cleanup_t                 *cln;
    ngx_http_billing_stripe_attempt_t  *at;

    call->attempts++;
    call->sent_at = ngx_current_msec;

    r = ngx_http_billing_fake_create(call->owner.conf_ctx, call->owner.log);
    if (r == NULL) {
        return NGX_ERROR;
    }

    at = ngx_pcalloc(r->pool, sizeof(ngx_http_billing_stripe_attempt_t));
    cln = ngx_pool_cleanup_add(r->pool, 0);

    if (at == NULL || cln == NULL) {
        ngx_http_billing_fake_close(r);
        return NGX_ERROR;
    }

    at->kind = NGX_HTTP_BILLING_CTX_STRIPE;
    at->call = call;
    at->request = r;
    at->should_retry = -1;

    /* however the request ends, the attempt learns it */

    cln->handler = ngx_http_billing_stripe_gone;
    cln->data = at;

    ngx_http_set_ctx(r, at, ngx_http_billing_module);
    r->write_event_handler = ngx_http_billing_stripe_resume;

    if (ngx_http_billing_stripe_request(call, at) != NGX_OK) {
        at->over = 1;
        ngx_http_billing_stripe_unmask(at);
        ngx_http_billing_fake_close(r);
        return NGX_ERROR;
    }

    call->attempt = at;

    ngx_http_billing_fake_run(r);

    return NGX_OK;
}


static ngx_int_t
ngx_http_billing_stripe_request(ngx_http_billing_stripe_call_t *call,
    ngx_http_billing_stripe_attempt_t *at)
{
    u_char                        *p;
    ngx_buf_t                     *b;
    ngx_str_t                      uri;
    ngx_chain_t                   *cl;
    ngx_http_request_t            *r, *sr;
    ngx_http_headers_in_t         *hin;
    ngx_http_request_body_t       *rb;
    ngx_http_post_subrequest_t    *ps;

    r = at->request;

    uri.len = call->owner.market->stripe_location.len + call->path.len;
    uri.data = ngx_pnalloc(r->pool, uri.len);
    if (uri.data == NULL) {
        return NGX_ERROR;
    }

    p = ngx_cpymem(uri.data, call->owner.market->stripe_location.data,
                   call->owner.market->stripe_location.len);
    ngx_memcpy(p, call->path.data, call->path.len);

    ps = ngx_palloc(r->pool, sizeof(ngx_http_post_subrequest_t));
    if (ps == NULL) {
        return NGX_ERROR;
    }

    ps->handler = ngx_http_billing_stripe_done;
    ps->data = at;

    /* all that can fail is made before the subrequest exists */

    hin = ngx_pcalloc(r->pool, sizeof(ngx_http_headers_in_t));
    rb = ngx_pcalloc(r->pool, sizeof(ngx_http_request_body_t));
    if (hin == NULL || rb == NULL) {
        return NGX_ERROR;
    }

    if (ngx_http_billing_stripe_headers(call, r->pool, hin) != NGX_OK) {
        return NGX_ERROR;
    }

    /* the form, in memory, as the whole request body */

    if (call->body.len) {
        b = ngx_create_temp_buf(r->pool, call->body.len);
        cl = ngx_alloc_chain_link(r->pool);
        if (b == NULL || cl == NULL) {
            return NGX_ERROR;
        }

        /* a copy: the attempt may outlive its owner for a while */

        b->last = ngx_cpymem(b->pos, call->body.data, call->body.len);
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

    ngx_http_billing_stripe_mask(at);

    if (ngx_http_subrequest(r, &uri, NULL, &sr, ps,
                            NGX_HTTP_SUBREQUEST_WAITED)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    ngx_http_set_ctx(sr, at, ngx_http_billing_module);

    /* nginx's status, not an operator's error page */
    sr->error_page = 1;

    if (call->method == NGX_HTTP_POST) {
        sr->method = NGX_HTTP_POST;
        ngx_str_set(&sr->method_name, "POST");

    } else {
        sr->method = NGX_HTTP_GET;
        ngx_str_set(&sr->method_name, "GET");
    }

    /*
     * A subrequest starts with its parent's headers: ours replace them.
     * The list is one part, whose address changes with the copy.
     */

    sr->headers_in = *hin;
    sr->headers_in.headers.last = &sr->headers_in.headers.part;
    sr->request_body = rb;

    at->sr = sr;
    at->running = 1;

    return NGX_OK;
}


static ngx_int_t
ngx_http_billing_stripe_headers(ngx_http_billing_stripe_call_t *call,
    ngx_pool_t *pool, ngx_http_headers_in_t *hin)
{
    ngx_str_t                     s;
    ngx_http_billing_srv_conf_t  *m;

    /* the marketplace's own key: its Stripe account */
    m = call->owner.market;

    if (ngx_list_init(&hin->headers, pool, 8, sizeof(ngx_table_elt_t))
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    hin->content_length_n = -1;
    hin->keep_alive_n = -1;

    if (ngx_http_billing_stripe_add(pool, hin, "Authorization",
                                    &m->stripe_authorization)
        != NGX_OK
        || ngx_http_billing_stripe_add(pool, hin, "Stripe-Version",
                                       &m->stripe_api_version)
           != NGX_OK)
    {
        return NGX_ERROR;
    }

    ngx_str_set(&s, "application/json");

    if (ngx_http_billing_stripe_add(pool, hin, "Accept", &s) != NGX_OK) {
        return NGX_ERROR;
    }

    ngx_str_set(&s, "ngx_http_billing_module/" NGX_HTTP_BILLING_VERSION);

    if (ngx_http_billing_stripe_add(pool, hin, "User-Agent", &s) != NGX_OK) {
        return NGX_ERROR;
    }

    if (call->method != NGX_HTTP_POST) {
        return NGX_OK;
    }

    ngx_str_set(&s, "application/x-www-form-urlencoded");

    if (ngx_http_billing_stripe_add(pool, hin, "Content-Type", &s) != NGX_OK)
    {
        return NGX_ERROR;
    }

    s.len = call->idempotency_key.len;
    s.data = ngx_pstrdup(pool, &call->idempotency_key);

    if (s.data == NULL
        || ngx_http_billing_stripe_add(pool, hin, "Idempotency-Key", &s)
           != NGX_OK)
    {
        return NGX_ERROR;
    }

    hin->content_length_n = call->body.len;

    return NGX_OK;
}


static ngx_int_t
ngx_http_billing_stripe_add(ngx_pool_t *pool, ngx_http_headers_in_t *hin,
    const char *name, ngx_str_t *value)
{
    ngx_table_elt_t  *h;

    h = ngx_list_push(&hin->headers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    h->key.data = (u_char *) name;
    h->key.len = ngx_strlen(name);
    h->value = *value;

    h->lowcase_key = ngx_pnalloc(pool, h->key.len);
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
    ngx_http_billing_stripe_attempt_t  *at = data;

    /*
     * A subrequest may be finalized more than once: the first end counts
     * (NGX_AGAIN is none: output still under way, a thread reading).
     */

    if (!at->running || sr != at->sr || rc == NGX_AGAIN) {
        return rc;
    }

    at->running = 0;

    ngx_http_billing_stripe_unmask(at);

    /* an error nginx takes for the client's is not to close ours */

    sr->connection->error = 0;

    if (rc != NGX_ERROR && rc < NGX_HTTP_SPECIAL_RESPONSE) {

        if (at->status == 0) {
            at->status = NGX_HTTP_BAD_GATEWAY;

        } else if (!at->complete) {
            /* the upstream failed after the header: a part is no answer */
            at->broken = 1;
        }

        return NGX_OK;
    }

    /* nginx's own failure (no connection, timeout): its status */

    if (at->status < NGX_HTTP_SPECIAL_RESPONSE) {
        at->status = (rc >= NGX_HTTP_SPECIAL_RESPONSE
                      && rc != NGX_HTTP_REQUEST_TIME_OUT
                      && rc != NGX_HTTP_CLOSE
                      && rc != NGX_HTTP_CLIENT_CLOSED_REQUEST)
                     ? (ngx_uint_t) rc : NGX_HTTP_BAD_GATEWAY;
        at->len = 0;
    }

    /*
     * Done with it, as with a success: nginx neither makes an error page
     * nor, for an error it takes for the client's, closes the request
     * and the connection, which are ours.  The parent is posted, and
     * resumes in stripe_resume().
     */

    return NGX_OK;
}


static void
ngx_http_billing_stripe_resume(ngx_http_request_t *r)
{
    ngx_http_billing_stripe_call_t     *call;
    ngx_http_billing_stripe_attempt_t  *at;

    r->write_event_handler = ngx_http_request_empty_handler;

    at = ngx_http_get_module_ctx(r, ngx_http_billing_module);

    if (at == NULL || at->over || at->running) {
        return;
    }

    at->over = 1;

    /* the owner may be gone before this request's end is logged */
    ngx_http_billing_fake_detach_log(r);

    call = at->call;

    if (call) {
        call->attempt = NULL;
        ngx_http_billing_stripe_evaluate(call, at);
    }

    /* the call may have gone on: this attempt's request is done with */

    ngx_http_billing_fake_close(r);
}


static void
ngx_http_billing_stripe_evaluate(ngx_http_billing_stripe_call_t *call,
    ngx_http_billing_stripe_attempt_t *at)
{
    json_t        *err, *msg;
    ngx_int_t      should_retry;
    ngx_msec_t     backoff;
    ngx_uint_t     retry, too_large, endpoint;
    json_error_t   error;

    if (call->json) {
        json_decref(call->json);
        call->json = NULL;
    }

    if (at) {
        call->status = at->status;
        should_retry = at->should_retry;
        too_large = at->too_large;

        if (at->broken) {
            /* our own failure to take the answer: as if none came */
            call->status = NGX_HTTP_BAD_GATEWAY;

        } else if (at->len && !at->too_large) {
            call->json = json_loadb((char *) at->buf, at->len, 0, &error);

            if (call->json && !json_is_object(call->json)) {
                json_decref(call->json);
                call->json = NULL;
            }
        }

    } else {
        /* the attempt's request was ended by nginx */
        call->status = NGX_HTTP_BAD_GATEWAY;
        should_retry = -1;
        too_large = 0;
    }

    ngx_log_error(NGX_LOG_INFO, call->owner.log, 0,
                  "billing stripe: %V answered %ui", &call->path,
                  call->status);

    endpoint = ngx_http_billing_stat_endpoint(call->method, &call->path);

    ngx_http_billing_stat_stripe(call->owner.market->index, endpoint,
                                 call->status, call->json != NULL,
                                 at == NULL || at->broken || at->status == 0,
                                 ngx_current_msec - call->sent_at);

    if (call->status == NGX_HTTP_TOO_MANY_REQUESTS) {
        *call->owner.market->limited = ngx_current_msec;
    }

    if (call->status >= 200 && call->status < 300 && call->json) {
        ngx_http_billing_stripe_finish(call);
        return;
    }

    /* Stripe says whether to retry; else what its libraries do */

    if (should_retry != -1) {
        retry = should_retry;

    } else {
        retry = call->status == NGX_HTTP_CONFLICT
                || call->status == NGX_HTTP_TOO_MANY_REQUESTS
                || call->status >= NGX_HTTP_INTERNAL_SERVER_ERROR
                || (call->status < 300 && call->json == NULL);
    }

    if (too_large || (at && at->misrouted)) {
        /* the same answer again would be as large; the same place */
        retry = 0;
    }

    backoff = NGX_HTTP_BILLING_STRIPE_BACKOFF << ngx_min(call->attempts - 1, 8);
    backoff = ngx_min(backoff, NGX_HTTP_BILLING_STRIPE_BACKOFF_MAX);

    if (retry
        && call->attempts < NGX_HTTP_BILLING_STRIPE_ATTEMPTS
        && (ngx_msec_int_t) (call->deadline - ngx_current_msec - backoff) > 0)
    {
        ngx_log_error(NGX_LOG_WARN, call->owner.log, 0,
                      "billing stripe: %V failed with %ui, "
                      "retrying in %Mms", &call->path, call->status, backoff);

        ngx_http_billing_stat_inc(NGX_HTTP_BILLING_M_STRIPE_RETRIES,
                                  call->owner.market->index, endpoint, 0);

        ngx_add_timer(&call->retry, backoff);
        return;
    }

    /* Stripe's own words, when it said something */

    err = call->json ? json_object_get(call->json, "error") : NULL;
    msg = json_is_object(err) ? json_object_get(err, "message") : NULL;

    if (at && at->misrouted) {
        ngx_str_set(&call->error, "the call did not reach "
                                  "billing_stripe_location: nothing was sent");

    } else if (json_is_string(msg)) {
        call->error.data = (u_char *) json_string_value(msg);
        call->error.len = json_string_length(msg);

    } else if (call->status == NGX_HTTP_GATEWAY_TIME_OUT) {
        ngx_str_set(&call->error, "Stripe did not answer in time");

    } else {
        ngx_str_set(&call->error, "Stripe could not be reached or gave "
                                  "no usable answer");
    }

    ngx_log_error(NGX_LOG_ERR, call->owner.log, 0,
                  "billing stripe: %V failed with %ui after %ui attempts: "
                  "\"%V\"", &call->path, call->status, call->attempts,
                  &call->error);

    ngx_http_billing_stripe_finish(call);
}


static void
ngx_http_billing_stripe_retry_handler(ngx_event_t *ev)
{
    ngx_http_billing_stripe_call_t  *call = ev->data;

    if (call->lost) {
        call->lost = 0;
        ngx_http_billing_stripe_evaluate(call, NULL);
        return;
    }

    if (ngx_http_billing_stripe_send(call) != NGX_OK) {
        if (call->json) {
            json_decref(call->json);
            call->json = NULL;
        }

        call->status = NGX_HTTP_INTERNAL_SERVER_ERROR;
        call->internal = 1;
        ngx_str_set(&call->error, "the Stripe call could not be made");

        ngx_http_billing_stripe_finish(call);
    }
}


static void
ngx_http_billing_stripe_watchdog_handler(ngx_event_t *ev)
{
    ngx_http_billing_stripe_call_t  *call = ev->data;

    /* an attempt that never ended: given up, its upstream closed */

    ngx_log_error(NGX_LOG_ERR, call->owner.log, 0,
                  "billing stripe: %V still under way long after "
                  "billing_stripe_timeout, given up", &call->path);

    ngx_http_billing_stripe_cancel(call);

    call->status = NGX_HTTP_GATEWAY_TIME_OUT;
    ngx_http_billing_stat_stripe(call->owner.market->index,
                                 ngx_http_billing_stat_endpoint(call->method,
                                                                &call->path),
                                 call->status, 0, 1,
                                 ngx_current_msec - call->sent_at);
    call->lost = 0;
    ngx_str_set(&call->error, "Stripe did not answer in time");

    call->handler(call);
}


static void
ngx_http_billing_stripe_finish(ngx_http_billing_stripe_call_t *call)
{
    if (call->watchdog.timer_set) {
        ngx_del_timer(&call->watchdog);
    }

    call->handler(call);
}


static void
ngx_http_billing_stripe_detach(ngx_http_billing_stripe_attempt_t *at)
{
    /*
     * Its request still ends, from the event loop; what it logs then
     * must not reach for an owner that may be gone.
     */

    at->call = NULL;
    at->over = 1;

    ngx_http_billing_stripe_unmask(at);

    ngx_http_billing_fake_detach_log(at->request);
    ngx_http_billing_fake_close(at->request);
}


static void
ngx_http_billing_stripe_gone(void *data)
{
    ngx_http_billing_stripe_attempt_t  *at = data;

    ngx_http_billing_stripe_call_t  *call;

    ngx_http_billing_stripe_unmask(at);

    if (at->over) {
        return;
    }

    /* ended by nginx itself (an internal error): a failed attempt */

    at->over = 1;
    call = at->call;

    if (call) {
        call->attempt = NULL;
        call->lost = 1;
        ngx_add_timer(&call->retry, 1);
    }
}


static void
ngx_http_billing_stripe_cleanup(void *data)
{
    ngx_http_billing_stripe_call_t  *call = data;

    call->cleanup = NULL;

    ngx_http_billing_stripe_cancel(call);
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
ngx_http_billing_stripe_mask(ngx_http_billing_stripe_attempt_t *at)
{
    ngx_log_t  *log;

    log = at->request->connection->log;

    if (at->masked || !(log->log_level & NGX_LOG_DEBUG_ALL)) {
        return;
    }

    at->log_level = log->log_level;
    log->log_level = ngx_min((log->log_level & ~NGX_LOG_DEBUG_ALL),
                             NGX_LOG_INFO);
    at->masked = 1;
}


static void
ngx_http_billing_stripe_unmask(ngx_http_billing_stripe_attempt_t *at)
{
    if (at->masked) {
        at->request->connection->log->log_level = at->log_level;
        at->masked = 0;
    }
}


ngx_http_billing_stripe_attempt_t *
ngx_http_billing_stripe_attempt(ngx_http_request_t *r)
{
    ngx_http_billing_stripe_attempt_t  *at;

    if (r == r->main) {
        return NULL;
    }

    /*
     * Known by its parent: an internal redirect (an error_page, an
     * X-Accel-Redirect) clears the subrequest's own context, and then
     * too nothing of it may go further.
     */

    at = ngx_http_get_module_ctx(r->main, ngx_http_billing_module);

    if (at == NULL || at->kind != NGX_HTTP_BILLING_CTX_STRIPE) {
        return NULL;
    }

    return at;
}


void
ngx_http_billing_stripe_misrouted(ngx_http_request_t *r)
{
    ngx_http_billing_stripe_attempt_t  *at;

    at = ngx_http_billing_stripe_attempt(r);

    if (at) {
        at->misrouted = 1;
    }
}


ngx_int_t
ngx_http_billing_stripe_header(ngx_http_request_t *r)
{
    ngx_uint_t                          n;
    ngx_table_elt_t                    *h;
    ngx_http_billing_stripe_attempt_t  *at;

    at = ngx_http_billing_stripe_attempt(r);

    /* the answer is ours: nothing of it goes further */

    r->header_sent = 1;

    if (r != at->sr) {
        /* a subrequest of its own (none of nginx's makes one): dropped */
        return NGX_OK;
    }

    ngx_http_billing_stripe_unmask(at);

    at->status = r->headers_out.status;

    h = ngx_http_billing_find_header(&r->headers_out.headers,
                                     "Stripe-Should-Retry", &n);
    if (h) {
        at->should_retry = (h->value.len == 4
                            && ngx_strncasecmp(h->value.data,
                                               (u_char *) "true", 4) == 0);
    }

    return NGX_OK;
}


ngx_int_t
ngx_http_billing_stripe_body(ngx_http_request_t *r, ngx_chain_t *in)
{
    u_char                             *p;
    off_t                               size;
    ssize_t                             n;
    ngx_buf_t                          *b;
    ngx_chain_t                        *cl;
    ngx_http_billing_stripe_attempt_t  *at;

    at = ngx_http_billing_stripe_attempt(r);

    /*
     * Never an error: that would end the whole request (ours) from
     * within nginx; a failure to keep the answer fails the attempt.
     */

    for (cl = in; cl; cl = cl->next) {
        b = cl->buf;
        size = ngx_buf_size(b);

        if (r != at->sr) {
            goto consumed;
        }

        if (b->last_buf || b->last_in_chain) {
            at->complete = 1;
        }

        if (size == 0 || at->too_large || at->broken) {
            goto consumed;
        }

        if (at->len + size > NGX_HTTP_BILLING_STRIPE_MAX_BODY) {
            ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                          "billing stripe: the answer to \"%V\" is larger "
                          "than %d bytes", &r->uri,
                          NGX_HTTP_BILLING_STRIPE_MAX_BODY);
            at->too_large = 1;
            goto consumed;
        }

        if (at->len + size > at->size) {

            /* in the parent's pool, which outlives the subrequest */

            at->size = ngx_max(2 * at->size, at->len + (size_t) size);
            at->size = ngx_max(at->size, 4096);

            p = ngx_pnalloc(at->request->pool, at->size);
            if (p == NULL) {
                at->broken = 1;
                goto consumed;
            }

            if (at->len) {
                ngx_memcpy(p, at->buf, at->len);
                ngx_pfree(at->request->pool, at->buf);
            }

            at->buf = p;
        }

        if (ngx_buf_in_memory(b)) {
            ngx_memcpy(at->buf + at->len, b->pos, (size_t) size);

        } else {
            n = ngx_read_file(b->file, at->buf + at->len, (size_t) size,
                              b->file_pos);

            if (n != size) {
                at->broken = 1;
                goto consumed;
            }
        }

        at->len += (size_t) size;

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
