
/*
 * Asking the Sentinels where a primary is, for a client of
 * ngx_http_billing_redis.c (before each connection) or for the watch of
 * ngx_http_billing_redis_sentinel.c (after each subscription).
 *
 * One short connection at a time, over nginx's event loop with the
 * billing_redis timeouts: [AUTH,] SENTINEL get-master-addr-by-name NAME,
 * pipelined, then closed.  A Sentinel that fails, refuses or does not
 * know NAME passes the question to the next one; the one that answers is
 * asked first from now on.  Each question keeps its own place in the list,
 * so that asks under way at once do not move each other back to a
 * Sentinel that failed.  The answer must be an IP address (resolving a
 * host name here would block the worker).
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_event.h>
#include <ngx_event_connect.h>

#include "ngx_http_billing_redis_int.h"


#define NGX_HTTP_BILLING_SENTINEL_BUF  4096


static void ngx_http_billing_sentinel_next(
    ngx_http_billing_sentinel_ask_t *ask);
static void ngx_http_billing_sentinel_fail(
    ngx_http_billing_sentinel_ask_t *ask, const char *reason);
static void ngx_http_billing_sentinel_finish(
    ngx_http_billing_sentinel_ask_t *ask, ngx_int_t rc);
static void ngx_http_billing_sentinel_close(
    ngx_http_billing_sentinel_ask_t *ask);
static ngx_int_t ngx_http_billing_sentinel_connected(
    ngx_http_billing_sentinel_ask_t *ask);
static void ngx_http_billing_sentinel_write_handler(ngx_event_t *wev);
static void ngx_http_billing_sentinel_read_handler(ngx_event_t *rev);
static ngx_int_t ngx_http_billing_sentinel_reply(
    ngx_http_billing_sentinel_ask_t *ask, redisReply *reply);


void
ngx_http_billing_sentinel_ask(ngx_http_billing_sentinel_ask_t *ask,
    ngx_http_billing_sentinel_done_pt done, void *data)
{
    ngx_http_billing_sentinel_abort(ask);

    ask->done = done;
    ask->data = data;
    ask->tries = ask->watch->conf.naddrs;
    ask->pos = ask->watch->next;

    ngx_http_billing_sentinel_next(ask);
}


/*
 * The primary the Sentinel of ask named is no primary (its answer was
 * stale): the next question starts past it.
 */

void
ngx_http_billing_sentinel_stale(ngx_http_billing_sentinel_ask_t *ask)
{
    ngx_http_billing_sentinel_t  *w;

    w = ask->watch;

    if (w && w->next == ask->pos % w->conf.naddrs) {
        w->next = (ask->pos + 1) % w->conf.naddrs;
    }
}


void
ngx_http_billing_sentinel_abort(ngx_http_billing_sentinel_ask_t *ask)
{
    /* the answer, if any comes, goes nowhere */

    ngx_http_billing_sentinel_close(ask);
    ask->done = NULL;
}


static void
ngx_http_billing_sentinel_next(ngx_http_billing_sentinel_ask_t *ask)
{
    ngx_int_t                     rc;
    ngx_addr_t                   *addr;
    ngx_connection_t             *c;
    ngx_http_billing_sentinel_t  *w;

    w = ask->watch;

    for ( ;; ) {

        if (ask->tries == 0) {
            ngx_http_billing_sentinel_finish(ask, NGX_ERROR);
            return;
        }

        ask->tries--;

        addr = &w->conf.addrs[ask->pos % w->conf.naddrs];

        ngx_memzero(&ask->peer, sizeof(ngx_peer_connection_t));

        ask->peer.sockaddr = addr->sockaddr;
        ask->peer.socklen = addr->socklen;
        ask->peer.name = &addr->name;
        ask->peer.get = ngx_event_get_peer;
        ask->peer.log = ask->log;
        ask->peer.log_error = NGX_ERROR_ERR;
        ask->peer.tries = 1;

        ask->sentinel = &addr->name;
        ask->sent = 0;
        ask->replies = w->replies;
        ask->connected = 0;

        rc = ngx_event_connect_peer(&ask->peer);

        if (rc == NGX_ERROR || rc == NGX_BUSY || rc == NGX_DECLINED) {
            /* ngx_event_connect_peer() has logged why */
            ask->peer.connection = NULL;
            ask->pos++;
            continue;
        }

        c = ask->peer.connection;

        c->data = ask;
        c->read->handler = ngx_http_billing_sentinel_read_handler;
        c->write->handler = ngx_http_billing_sentinel_write_handler;
        c->log = ask->log;
        c->read->log = ask->log;
        c->write->log = ask->log;

        ask->reader = redisReaderCreate();
        if (ask->reader == NULL) {
            ngx_http_billing_sentinel_finish(ask, NGX_ERROR);
            return;
        }

        if (rc == NGX_AGAIN) {
            ngx_add_timer(c->write, w->conf.connect_timeout);
            return;
        }

        ngx_post_event(c->write, &ngx_posted_events);
        return;
    }
}


static void
ngx_http_billing_sentinel_fail(ngx_http_billing_sentinel_ask_t *ask,
    const char *reason)
{
    if (reason) {
        ngx_log_error(NGX_LOG_WARN, ask->log, 0, "billing redis %V: %s",
                      ask->sentinel, reason);
    }

    ngx_http_billing_sentinel_close(ask);

    ask->pos++;

    ngx_http_billing_sentinel_next(ask);
}


static void
ngx_http_billing_sentinel_finish(ngx_http_billing_sentinel_ask_t *ask,
    ngx_int_t rc)
{
    void                               *data;
    ngx_http_billing_sentinel_done_pt   done;

    ngx_http_billing_sentinel_close(ask);

    if (rc == NGX_OK) {
        /* this one answered: asked first from now on */
        ask->watch->next = ask->pos % ask->watch->conf.naddrs;
    }

    done = ask->done;
    data = ask->data;
    ask->done = NULL;

    if (done) {
        done(data, ask, rc);
    }
}


static void
ngx_http_billing_sentinel_close(ngx_http_billing_sentinel_ask_t *ask)
{
    if (ask->peer.connection) {
        ngx_close_connection(ask->peer.connection);
        ask->peer.connection = NULL;
    }

    if (ask->reader) {
        redisReaderFree(ask->reader);
        ask->reader = NULL;
    }
}


/* a refused connection may be told to the read handler first */

static ngx_int_t
ngx_http_billing_sentinel_connected(ngx_http_billing_sentinel_ask_t *ask)
{
    ngx_err_t  err;

    if (ask->connected) {
        return NGX_OK;
    }

    err = ngx_http_billing_redis_connect_error(ask->peer.connection);

    if (err) {
        ngx_log_error(NGX_LOG_WARN, ask->log, err,
                      "billing redis: connect() to %V failed",
                      ask->sentinel);
        ngx_http_billing_sentinel_fail(ask, NULL);
        return NGX_ERROR;
    }

    ask->connected = 1;

    return NGX_OK;
}


static void
ngx_http_billing_sentinel_write_handler(ngx_event_t *wev)
{
    ssize_t                           n;
    ngx_connection_t                 *c;
    ngx_http_billing_sentinel_t      *w;
    ngx_http_billing_sentinel_ask_t  *ask;

    c = wev->data;
    ask = c->data;
    w = ask->watch;

    if (wev->timedout) {
        ngx_http_billing_sentinel_fail(ask, ask->connected
                                            ? "send timed out"
                                            : "connect timed out");
        return;
    }

    if (wev->timer_set) {
        ngx_del_timer(wev);
    }

    if (ngx_http_billing_sentinel_connected(ask) != NGX_OK) {
        return;
    }

    while (ask->sent < w->request_len) {
        n = c->send(c, w->request + ask->sent, w->request_len - ask->sent);

        if (n == NGX_ERROR) {
            ngx_http_billing_sentinel_fail(ask, "send() failed");
            return;
        }

        if (n == NGX_AGAIN) {
            ngx_add_timer(wev, w->conf.timeout);

            if (ngx_handle_write_event(wev, 0) != NGX_OK) {
                ngx_http_billing_sentinel_fail(ask, "send() failed");
            }

            return;
        }

        ask->sent += n;
    }

    if (!c->read->timer_set) {
        ngx_add_timer(c->read, w->conf.timeout);
    }

    if (ngx_handle_read_event(c->read, 0) != NGX_OK) {
        ngx_http_billing_sentinel_fail(ask, "ngx_handle_read_event() failed");
    }
}


static void
ngx_http_billing_sentinel_read_handler(ngx_event_t *rev)
{
    void                             *reply;
    u_char                            buf[NGX_HTTP_BILLING_SENTINEL_BUF];
    ssize_t                           n;
    ngx_int_t                         rc;
    ngx_connection_t                 *c;
    ngx_http_billing_sentinel_ask_t  *ask;

    c = rev->data;
    ask = c->data;

    if (rev->timedout) {
        ngx_http_billing_sentinel_fail(ask, "no reply within timeout");
        return;
    }

    if (ngx_http_billing_sentinel_connected(ask) != NGX_OK) {
        return;
    }

    for ( ;; ) {
        n = c->recv(c, buf, sizeof(buf));

        if (n == NGX_AGAIN) {
            break;
        }

        if (n == 0 || n == NGX_ERROR) {
            ngx_http_billing_sentinel_fail(ask, "connection closed");
            return;
        }

        if (redisReaderFeed(ask->reader, (const char *) buf, n) != REDIS_OK)
        {
            ngx_http_billing_sentinel_fail(ask, "redisReaderFeed() failed");
            return;
        }

        for ( ;; ) {
            reply = NULL;

            if (redisReaderGetReply(ask->reader, &reply) != REDIS_OK) {
                ngx_http_billing_sentinel_fail(ask, "invalid reply");
                return;
            }

            if (reply == NULL) {
                break;
            }

            rc = ngx_http_billing_sentinel_reply(ask, reply);
            freeReplyObject(reply);

            if (rc == NGX_OK) {
                ngx_http_billing_sentinel_finish(ask, NGX_OK);
                return;
            }

            if (rc == NGX_ERROR) {
                ngx_http_billing_sentinel_fail(ask, NULL);
                return;
            }

            /* NGX_AGAIN: AUTH went through, the answer comes next */
        }
    }

    if (ngx_handle_read_event(rev, 0) != NGX_OK) {
        ngx_http_billing_sentinel_fail(ask, "ngx_handle_read_event() failed");
    }
}


static ngx_int_t
ngx_http_billing_sentinel_reply(ngx_http_billing_sentinel_ask_t *ask,
    redisReply *reply)
{
    ngx_int_t    rc;
    ngx_str_t   *name;
    redisReply  *ip, *port;

    name = &ask->watch->primary->sentinel;

    if (--ask->replies) {

        /* AUTH's; the Sentinels' error text never holds the password */

        if (reply->type == REDIS_REPLY_STATUS) {
            return NGX_AGAIN;
        }

        ngx_log_error(NGX_LOG_WARN, ask->log, 0,
                      "billing redis %V: AUTH refused: \"%*s\"",
                      ask->sentinel,
                      (size_t) (reply->type == REDIS_REPLY_ERROR
                                ? ngx_min(reply->len, 128) : 0),
                      reply->type == REDIS_REPLY_ERROR ? reply->str : "");
        return NGX_ERROR;
    }

    if (reply->type == REDIS_REPLY_NIL) {
        ngx_log_error(NGX_LOG_WARN, ask->log, 0,
                      "billing redis %V: no primary named \"%V\" there",
                      ask->sentinel, name);
        return NGX_ERROR;
    }

    if (reply->type == REDIS_REPLY_ERROR) {
        ngx_log_error(NGX_LOG_WARN, ask->log, 0,
                      "billing redis %V: \"%*s\"", ask->sentinel,
                      (size_t) ngx_min(reply->len, 128), reply->str);
        return NGX_ERROR;
    }

    if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 2
        || reply->element[0]->type != REDIS_REPLY_STRING
        || reply->element[1]->type != REDIS_REPLY_STRING)
    {
        ngx_log_error(NGX_LOG_WARN, ask->log, 0,
                      "billing redis %V: unexpected answer for \"%V\"",
                      ask->sentinel, name);
        return NGX_ERROR;
    }

    ip = reply->element[0];
    port = reply->element[1];

    rc = ngx_http_billing_sentinel_addr((u_char *) ip->str, ip->len,
                                        (u_char *) port->str, port->len,
                                        &ask->sockaddr, &ask->socklen);

    if (rc == NGX_DECLINED) {

        /* resolving it here would block the worker */

        ngx_log_error(NGX_LOG_WARN, ask->log, 0,
                      "billing redis %V: the primary of \"%V\" is given as "
                      "\"%*s\", not an IP address (the Sentinels' "
                      "announce-hostnames?): not supported",
                      ask->sentinel, name, (size_t) ngx_min(ip->len, 128),
                      ip->str);
        return NGX_ERROR;
    }

    if (rc != NGX_OK) {
        ngx_log_error(NGX_LOG_WARN, ask->log, 0,
                      "billing redis %V: invalid port \"%*s\" for \"%V\"",
                      ask->sentinel, (size_t) ngx_min(port->len, 16),
                      port->str, name);
        return NGX_ERROR;
    }

    return NGX_OK;
}


/* NGX_DECLINED: not an IP address; NGX_ERROR: not a port */

ngx_int_t
ngx_http_billing_sentinel_addr(u_char *ip, size_t ip_len, u_char *port,
    size_t port_len, ngx_sockaddr_t *sa, socklen_t *socklen)
{
    ngx_int_t  n;
    in_addr_t  inaddr;

    n = ngx_atoi(port, port_len);

    if (n == NGX_ERROR || n < 1 || n > 65535) {
        return NGX_ERROR;
    }

    ngx_memzero(sa, sizeof(ngx_sockaddr_t));

    inaddr = ngx_inet_addr(ip, ip_len);

    if (inaddr != INADDR_NONE) {
        sa->sockaddr_in.sin_family = AF_INET;
        sa->sockaddr_in.sin_addr.s_addr = inaddr;
        sa->sockaddr_in.sin_port = htons((in_port_t) n);
        *socklen = sizeof(struct sockaddr_in);
        return NGX_OK;
    }

#if (NGX_HAVE_INET6)

    if (ngx_inet6_addr(ip, ip_len, sa->sockaddr_in6.sin6_addr.s6_addr)
        == NGX_OK)
    {
        sa->sockaddr_in6.sin6_family = AF_INET6;
        sa->sockaddr_in6.sin6_port = htons((in_port_t) n);
        *socklen = sizeof(struct sockaddr_in6);
        return NGX_OK;
    }

#endif

    return NGX_DECLINED;
}
