
/*
 * A main request with no client.
 *
 * Subrequests need a main request: it holds their pool, their count and
 * the list of posted requests, and its connection their log.  When no
 * client request may be that parent (a timer has none; a sequence of
 * Stripe calls must not end because a client went away), this module
 * makes one of its own, as lua-nginx-module and nchan do for timers.
 *
 * Its connection has no socket and is in no event set: its events are
 * marked active, so that nothing adds them, and ready.  Nothing is to
 * be written to it, as the filter module takes every answer of its
 * subrequests; should anything try, the connection's I/O functions
 * fail.  A timer nginx sets on its write event (limit_req's delay, a
 * send timeout) resumes the active request, as for a client.
 *
 * The connection is not in any pool: nginx reads it after closing it
 * (ngx_http_run_posted_requests), should it ever close the request for
 * an internal error, so it is freed from a posted event, last.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_billing_fake.h"


/* nginx takes a connection's log data for this, the owner's follows */
typedef struct {
    ngx_http_log_ctx_t                http;
    ngx_log_handler_pt                handler;
    void                             *data;
} ngx_http_billing_fake_log_ctx_t;


typedef struct {
    ngx_connection_t                  connection;
    ngx_event_t                       read;
    ngx_event_t                       write;
    ngx_log_t                         log;
    ngx_http_billing_fake_log_ctx_t   log_ctx;
    ngx_http_connection_t             hc;

    ngx_event_t                       run;
    ngx_event_t                       close;
    ngx_event_t                       free;
    ngx_http_request_t               *request;   /* NULL once freed */
} ngx_http_billing_fake_t;


static void ngx_http_billing_fake_run_handler(ngx_event_t *ev);
static void ngx_http_billing_fake_close_handler(ngx_event_t *ev);
static void ngx_http_billing_fake_free_handler(ngx_event_t *ev);
static void ngx_http_billing_fake_gone(void *data);
static void ngx_http_billing_fake_read_handler(ngx_event_t *ev);
static void ngx_http_billing_fake_write_handler(ngx_event_t *ev);
static ssize_t ngx_http_billing_fake_recv(ngx_connection_t *c, u_char *buf,
    size_t size);
static ssize_t ngx_http_billing_fake_send(ngx_connection_t *c, u_char *buf,
    size_t size);
static ngx_chain_t *ngx_http_billing_fake_send_chain(ngx_connection_t *c,
    ngx_chain_t *in, off_t limit);
static u_char *ngx_http_billing_fake_log_handler(ngx_log_t *log, u_char *buf,
    size_t len);


/* seen by variables such as $remote_addr: the module itself */
static struct sockaddr_in  ngx_http_billing_fake_addr;


ngx_http_request_t *
ngx_http_billing_fake_create(ngx_http_conf_ctx_t *conf_ctx, ngx_log_t *log)
{
    ngx_pool_t                 *pool;
    ngx_time_t                 *tp;
    ngx_connection_t           *c;
    ngx_pool_cleanup_t         *cln;
    ngx_http_request_t         *r;
    ngx_http_billing_fake_t    *fake;
    ngx_http_core_srv_conf_t   *cscf;
    ngx_http_core_main_conf_t  *cmcf;

    fake = ngx_calloc(sizeof(ngx_http_billing_fake_t), log);
    if (fake == NULL) {
        return NULL;
    }

    c = &fake->connection;

    fake->log = *log;
    fake->log.handler = ngx_http_billing_fake_log_handler;
    fake->log.data = &fake->log_ctx;
    fake->log.action = NULL;

    fake->log_ctx.http.connection = c;
    fake->log_ctx.handler = log->handler;
    fake->log_ctx.data = log->data;

    /* nginx's own close of the connection destroys this pool */

    c->pool = ngx_create_pool(128, &fake->log);
    if (c->pool == NULL) {
        ngx_free(fake);
        return NULL;
    }

    c->fd = (ngx_socket_t) -1;
    c->log = &fake->log;
    c->log_error = NGX_ERROR_INFO;
    c->read = &fake->read;
    c->write = &fake->write;
    c->recv = ngx_http_billing_fake_recv;
    c->send = ngx_http_billing_fake_send;
    c->send_chain = ngx_http_billing_fake_send_chain;
    c->number = ngx_atomic_fetch_add(ngx_connection_counter, 1);
    c->start_time = ngx_current_msec;

    /* no socket options to set (proxy_buffering off, send_lowat) */

    c->tcp_nodelay = NGX_TCP_NODELAY_DISABLED;
    c->tcp_nopush = NGX_TCP_NOPUSH_DISABLED;
    c->sndlowat = 1;

    ngx_http_billing_fake_addr.sin_family = AF_INET;
    ngx_http_billing_fake_addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);

    c->sockaddr = (struct sockaddr *) &ngx_http_billing_fake_addr;
    c->socklen = sizeof(struct sockaddr_in);
    c->local_sockaddr = c->sockaddr;
    c->local_socklen = c->socklen;
    ngx_str_set(&c->addr_text, "127.0.0.1");

    fake->log.connection = c->number;

    /* never in an event set: nothing adds them, or deletes them */

    c->read->data = c;
    c->read->log = c->log;
    c->read->active = 1;
    c->read->index = NGX_INVALID_INDEX;
    c->read->handler = ngx_http_billing_fake_read_handler;

    c->write->data = c;
    c->write->log = c->log;
    c->write->active = 1;
    c->write->ready = 1;
    c->write->write = 1;
    c->write->index = NGX_INVALID_INDEX;
    c->write->handler = ngx_http_billing_fake_write_handler;

    fake->run.data = fake;
    fake->run.log = c->log;
    fake->run.handler = ngx_http_billing_fake_run_handler;

    fake->close.data = fake;
    fake->close.log = c->log;
    fake->close.handler = ngx_http_billing_fake_close_handler;

    fake->free.data = fake;
    fake->free.log = c->log;
    fake->free.handler = ngx_http_billing_fake_free_handler;

    fake->hc.conf_ctx = conf_ctx;

    /* the request, as ngx_http_alloc_request() makes a client's */

    cscf = conf_ctx->srv_conf[ngx_http_core_module.ctx_index];

    pool = ngx_create_pool(cscf->request_pool_size, c->log);
    if (pool == NULL) {
        goto failed;
    }

    r = ngx_pcalloc(pool, sizeof(ngx_http_request_t));
    if (r == NULL) {
        ngx_destroy_pool(pool);
        goto failed;
    }

    r->pool = pool;

    /* nginx frees the request's pool; the connection is ours to free */

    cln = ngx_pool_cleanup_add(r->pool, 0);
    if (cln == NULL) {
        ngx_destroy_pool(pool);
        goto failed;
    }

    cln->handler = ngx_http_billing_fake_gone;
    cln->data = fake;

    fake->request = r;

    r->http_connection = &fake->hc;
    r->signature = NGX_HTTP_MODULE;
    r->connection = c;

    r->main_conf = conf_ctx->main_conf;
    r->srv_conf = conf_ctx->srv_conf;
    r->loc_conf = conf_ctx->loc_conf;

    r->read_event_handler = ngx_http_block_reading;
    r->write_event_handler = ngx_http_request_empty_handler;

    /* an empty buffer where nginx may look for a pipelined request */

    c->buffer = ngx_create_temp_buf(r->pool, 1);
    if (c->buffer == NULL) {
        goto failed_request;
    }

    r->header_in = c->buffer;

    if (ngx_list_init(&r->headers_out.headers, r->pool, 2,
                      sizeof(ngx_table_elt_t))
        != NGX_OK
        || ngx_list_init(&r->headers_in.headers, r->pool, 2,
                         sizeof(ngx_table_elt_t))
           != NGX_OK)
    {
        goto failed_request;
    }

#if (nginx_version >= 1013002)
    if (ngx_list_init(&r->headers_out.trailers, r->pool, 2,
                      sizeof(ngx_table_elt_t))
        != NGX_OK)
    {
        goto failed_request;
    }
#endif

    r->ctx = ngx_pcalloc(r->pool, sizeof(void *) * ngx_http_max_module);
    if (r->ctx == NULL) {
        goto failed_request;
    }

    cmcf = conf_ctx->main_conf[ngx_http_core_module.ctx_index];

    r->variables = ngx_pcalloc(r->pool, cmcf->variables.nelts
                                        * sizeof(ngx_http_variable_value_t));
    if (r->variables == NULL) {
        goto failed_request;
    }

    r->main = r;
    r->count = 1;

    tp = ngx_timeofday();
    r->start_sec = tp->sec;
    r->start_msec = tp->msec;

    r->method = NGX_HTTP_GET;
    ngx_str_set(&r->method_name, "GET");
    r->http_version = NGX_HTTP_VERSION_10;
    ngx_str_set(&r->http_protocol, "HTTP/1.0");
    ngx_str_set(&r->uri, "/");
    ngx_str_set(&r->unparsed_uri, "/");
    ngx_str_set(&r->request_line, "GET / HTTP/1.0");

    r->headers_in.content_length_n = -1;
    r->headers_in.keep_alive_n = -1;
    r->headers_out.content_length_n = -1;
    r->headers_out.last_modified_time = -1;

    r->uri_changes = NGX_HTTP_MAX_URI_CHANGES + 1;
    r->subrequests = NGX_HTTP_MAX_SUBREQUESTS + 1;

    r->http_state = NGX_HTTP_PROCESS_REQUEST_STATE;

    /* nothing to log: its subrequests are what happens */
    r->logged = 1;

    c->data = r;
    c->requests = 1;

    fake->log_ctx.http.request = r;
    fake->log_ctx.http.current_request = r;

    return r;

failed_request:

    /* fake_gone() runs, and posts the free of the connection */

    ngx_destroy_pool(pool);
    ngx_destroy_pool(c->pool);

    return NULL;

failed:

    ngx_destroy_pool(c->pool);
    ngx_free(fake);
    return NULL;
}


void
ngx_http_billing_fake_run(ngx_http_request_t *r)
{
    ngx_http_billing_fake_t  *fake;

    fake = (ngx_http_billing_fake_t *) r->connection;

    if (!fake->run.posted && !fake->close.posted && !fake->close.timer_set)
    {
        ngx_post_event(&fake->run, &ngx_posted_events);
    }
}


void
ngx_http_billing_fake_detach_log(ngx_http_request_t *r)
{
    ngx_http_billing_fake_t  *fake;

    fake = (ngx_http_billing_fake_t *) r->connection;

    fake->log_ctx.handler = NULL;
    fake->log_ctx.data = NULL;
}


void
ngx_http_billing_fake_close(ngx_http_request_t *r)
{
    ngx_http_billing_fake_t  *fake;

    fake = (ngx_http_billing_fake_t *) r->connection;

    if (fake->run.posted) {
        ngx_delete_posted_event(&fake->run);
    }

    if (!fake->close.posted && !fake->close.timer_set) {
        ngx_post_event(&fake->close, &ngx_posted_events);
    }
}


static void
ngx_http_billing_fake_run_handler(ngx_event_t *ev)
{
    ngx_http_billing_fake_t  *fake = ev->data;

    ngx_http_run_posted_requests(&fake->connection);
}


static void
ngx_http_billing_fake_close_handler(ngx_event_t *ev)
{
    ngx_http_billing_fake_t  *fake = ev->data;

    ngx_pool_t          *pool;
    ngx_http_cleanup_t  *cln;
    ngx_http_request_t  *r;

    r = fake->request;

    if (r == NULL) {
        /* nginx closed it first: what is left goes with the free event */
        return;
    }

    /* a thread still works for it (aio threads): not before it is done */

    if (r->blocked) {
        ngx_add_timer(&fake->close, 100);
        return;
    }

    /*
     * What the subrequests left goes first (an upstream still connected
     * is closed): it may set timers on the connection, deleted after.
     */

    cln = r->cleanup;
    r->cleanup = NULL;

    while (cln) {
        if (cln->handler) {
            cln->handler(cln->data);
        }

        cln = cln->next;
    }

    /* no socket to reset, whatever timed out */

    fake->connection.timedout = 0;

    /* its pool cleanup, fake_gone(), posts the free of the connection */

    pool = fake->connection.pool;

    ngx_http_free_request(r, 0);

    fake->connection.pool = NULL;
    ngx_destroy_pool(pool);
}


static void
ngx_http_billing_fake_gone(void *data)
{
    ngx_http_billing_fake_t  *fake = data;

    ngx_connection_t  *c;

    /*
     * The request's pool goes, by our close or by nginx's own close of
     * the request (and then of the connection, with an alert, as it has
     * no socket).  Either way nothing may be left to fire on the
     * connection, which goes last, from the event loop.
     */

    c = &fake->connection;

    fake->request = NULL;
    c->destroyed = 1;

    if (c->read->timer_set) {
        ngx_del_timer(c->read);
    }

    if (c->write->timer_set) {
        ngx_del_timer(c->write);
    }

    if (c->read->posted) {
        ngx_delete_posted_event(c->read);
    }

    if (c->write->posted) {
        ngx_delete_posted_event(c->write);
    }

    if (fake->run.posted) {
        ngx_delete_posted_event(&fake->run);
    }

    if (fake->close.posted) {
        ngx_delete_posted_event(&fake->close);
    }

    if (fake->close.timer_set) {
        ngx_del_timer(&fake->close);
    }

    ngx_post_event(&fake->free, &ngx_posted_events);
}


static void
ngx_http_billing_fake_free_handler(ngx_event_t *ev)
{
    ngx_http_billing_fake_t  *fake = ev->data;

    /* its pool is gone already: with our close, or with nginx's */

    ngx_free(fake);
}


static void
ngx_http_billing_fake_read_handler(ngx_event_t *ev)
{
    /* no socket: nothing to read */
}


static void
ngx_http_billing_fake_write_handler(ngx_event_t *ev)
{
    ngx_connection_t    *c;
    ngx_http_request_t  *r;

    /* a timer on the write event: resumes the request, as for a client */

    c = ev->data;
    r = c->data;

    if (c->destroyed) {
        return;
    }

    ngx_http_set_log_request(c->log, r);

    if (ev->delayed && ev->timedout) {
        ev->delayed = 0;
        ev->timedout = 0;
    }

    r->write_event_handler(r);

    ngx_http_run_posted_requests(c);
}


static ssize_t
ngx_http_billing_fake_recv(ngx_connection_t *c, u_char *buf, size_t size)
{
    return NGX_AGAIN;
}


static ssize_t
ngx_http_billing_fake_send(ngx_connection_t *c, u_char *buf, size_t size)
{
    ngx_log_error(NGX_LOG_ALERT, c->log, 0,
                  "billing: output for a request of the module's own");

    return NGX_ERROR;
}


static ngx_chain_t *
ngx_http_billing_fake_send_chain(ngx_connection_t *c, ngx_chain_t *in,
    off_t limit)
{
    ngx_log_error(NGX_LOG_ALERT, c->log, 0,
                  "billing: output for a request of the module's own");

    return NGX_CHAIN_ERROR;
}


static u_char *
ngx_http_billing_fake_log_handler(ngx_log_t *log, u_char *buf, size_t len)
{
    ngx_log_t                         owner;
    ngx_http_billing_fake_log_ctx_t  *ctx;

    ctx = log->data;

    if (ctx->handler == NULL) {
        return buf;
    }

    owner = *log;
    owner.handler = ctx->handler;
    owner.data = ctx->data;

    return ctx->handler(&owner, buf, len);
}
