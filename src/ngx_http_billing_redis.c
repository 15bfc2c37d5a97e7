
/*
 * A Redis client on nginx's event loop.
 *
 * One connection per worker, opened at worker start and kept: commands
 * from requests and timers are queued, written in batches (pipelined)
 * and answered in order.  hiredis only formats commands and parses
 * replies; all I/O is nginx's, so nothing ever blocks a worker.
 *
 * On any failure (connect error or timeout, no reply within "timeout",
 * connection lost, protocol error, a READONLY answer) every queued
 * command fails at once, and the client reconnects after a backoff that
 * doubles up to a limit.  While that backoff runs, new commands fail at
 * once, so callers answer quickly instead of piling up.  Each
 * (re)connection starts with AUTH and SELECT before anything else is
 * written; under Sentinel, a Sentinel is asked for the primary first, and
 * ROLE must say "master".
 *
 * This file holds the connection; queueing, formatting and cancelling
 * commands, the handshake and the WAITs of replicas= are in
 * ngx_http_billing_redis_cmd.c, the Sentinels in
 * ngx_http_billing_redis_sentinel.c.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_event.h>
#include <ngx_event_connect.h>

#include "ngx_http_billing_redis_int.h"
#include "ngx_http_billing_status.h"


#define NGX_HTTP_BILLING_REDIS_BACKOFF_MIN  100
#define NGX_HTTP_BILLING_REDIS_BACKOFF_MAX  5000
#define NGX_HTTP_BILLING_REDIS_STABLE       1000
#define NGX_HTTP_BILLING_REDIS_HEARTBEAT    5000

/* a subscription lost in silence must be found within about a second */
#define NGX_HTTP_BILLING_REDIS_SUB_HEARTBEAT 300
#define NGX_HTTP_BILLING_REDIS_BUF          16384


static ngx_uint_t ngx_http_billing_redis_may_connect(
    ngx_http_billing_redis_t *rd);
static void ngx_http_billing_redis_write_handler(ngx_event_t *wev);
static void ngx_http_billing_redis_read_handler(ngx_event_t *rev);
static ngx_int_t ngx_http_billing_redis_test_connect(
    ngx_http_billing_redis_t *rd);
static ngx_int_t ngx_http_billing_redis_flush(ngx_http_billing_redis_t *rd);
static ngx_int_t ngx_http_billing_redis_dispatch(ngx_http_billing_redis_t *rd,
    redisReply *reply);
static void ngx_http_billing_redis_arm(ngx_http_billing_redis_t *rd);
static void ngx_http_billing_redis_close(ngx_http_billing_redis_t *rd);
static ngx_uint_t ngx_http_billing_redis_error_kind(const char *reason);
static void ngx_http_billing_redis_fail_all(ngx_http_billing_redis_t *rd,
    ngx_uint_t notify);
static void ngx_http_billing_redis_reconnect_handler(ngx_event_t *ev);


ngx_http_billing_redis_t *
ngx_http_billing_redis_create(ngx_cycle_t *cycle,
    ngx_http_billing_redis_conf_t *conf)
{
    ngx_http_billing_redis_t  *rd;

    rd = ngx_pcalloc(cycle->pool, sizeof(ngx_http_billing_redis_t));
    if (rd == NULL) {
        return NULL;
    }

    rd->conf = conf;
    rd->stat = NGX_HTTP_BILLING_CONN_COMMANDS;
    rd->log = cycle->log;

    rd->peer.sockaddr = conf->addrs[0].sockaddr;
    rd->peer.socklen = conf->addrs[0].socklen;
    rd->peer.name = &conf->addrs[0].name;
    rd->peer.get = ngx_event_get_peer;
    rd->peer.log = rd->log;
    rd->peer.log_error = NGX_ERROR_ERR;

    ngx_queue_init(&rd->cmds);

    rd->backoff = NGX_HTTP_BILLING_REDIS_BACKOFF_MIN;

    rd->reconnect.handler = ngx_http_billing_redis_reconnect_handler;
    rd->reconnect.data = rd;
    rd->reconnect.log = rd->log;

    /* a pending reconnection must not hold up a graceful shutdown */
    rd->reconnect.cancelable = 1;

    /* connect as soon as the event loop runs */
    ngx_add_timer(&rd->reconnect, 1);

    /*
     * An idle connection is checked now and then: a Redis that died or
     * froze meanwhile is found before a request needs it, and NAT and
     * firewall state along the way stays alive.
     */

    rd->heartbeat.handler = ngx_http_billing_redis_heartbeat_handler;
    rd->heartbeat.data = rd;
    rd->heartbeat.log = rd->log;
    rd->heartbeat.cancelable = 1;
    rd->heartbeat_interval = NGX_HTTP_BILLING_REDIS_HEARTBEAT;

    ngx_add_timer(&rd->heartbeat, rd->heartbeat_interval);

    if (conf->sentinel.len) {
        /* the Sentinels say where: until then, logs name the primary */
        rd->peer.name = &conf->sentinel;

        if (ngx_http_billing_sentinel_watch(cycle, rd) != NGX_OK) {
            ngx_http_billing_redis_destroy(rd);
            return NULL;
        }
    }

    return rd;
}


void
ngx_http_billing_redis_destroy(ngx_http_billing_redis_t *rd)
{
    if (rd->reconnect.timer_set) {
        ngx_del_timer(&rd->reconnect);
    }

    if (rd->heartbeat.timer_set) {
        ngx_del_timer(&rd->heartbeat);
    }

    ngx_http_billing_redis_close(rd);
    ngx_http_billing_redis_fail_all(rd, 0);

    if (rd->conf->sentinel.len) {
        ngx_http_billing_sentinel_unwatch(rd);
    }
}


void
ngx_http_billing_redis_subscribe(ngx_http_billing_redis_t *rd,
    ngx_str_t *channels, ngx_uint_t n,
    ngx_http_billing_redis_message_pt message,
    ngx_http_billing_redis_state_pt state, void *data)
{
    rd->channel = channels[0];
    rd->channels = channels;
    rd->nchannels = n;
    rd->on_message = message;
    rd->on_state = state;
    rd->data = data;
    rd->stat = NGX_HTTP_BILLING_CONN_SUBSCRIBER;

    rd->heartbeat_interval = NGX_HTTP_BILLING_REDIS_SUB_HEARTBEAT;
}


/*
 * A worker that stops gracefully still sends what it must (the meter's
 * last counts): its command connection may connect again, within the
 * time the meter holds the worker for; the subscription has no more use.
 */

static ngx_uint_t
ngx_http_billing_redis_may_connect(ngx_http_billing_redis_t *rd)
{
    if (ngx_terminate) {
        return 0;
    }

    return !((ngx_exiting || ngx_quit) && rd->channel.len);
}


void
ngx_http_billing_redis_connect(ngx_http_billing_redis_t *rd)
{
    ngx_addr_t  *addr;

    if (!ngx_http_billing_redis_may_connect(rd)) {
        return;
    }

    if (rd->conf->sentinel.len) {

        /* where the primary is now: asked anew on every connection */

        rd->state = NGX_HTTP_BILLING_REDIS_RESOLVING;

        ngx_http_billing_sentinel_ask(&rd->ask,
                                      ngx_http_billing_redis_resolved, rd);
        return;
    }

    if (rd->conf->naddrs > 1) {
        /* the Sentinels, for a watch: each in turn, from the last good */
        addr = &rd->conf->addrs[rd->next_addr % rd->conf->naddrs];

        rd->peer.sockaddr = addr->sockaddr;
        rd->peer.socklen = addr->socklen;
        rd->peer.name = &addr->name;
    }

    ngx_http_billing_redis_open(rd);
}


void
ngx_http_billing_redis_open(ngx_http_billing_redis_t *rd)
{
    ngx_int_t          rc;
    ngx_connection_t  *c;

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, rd->log, 0,
                   "billing redis: connecting to %V", rd->peer.name);

    rd->peer.tries = 1;

    rc = ngx_event_connect_peer(&rd->peer);

    if (rc == NGX_ERROR || rc == NGX_BUSY || rc == NGX_DECLINED) {
        /* ngx_event_connect_peer() has logged why */
        rd->peer.connection = NULL;
        ngx_http_billing_redis_failed(rd, NGX_LOG_INFO, "connect() failed");
        return;
    }

    c = rd->peer.connection;

    c->data = rd;
    c->read->handler = ngx_http_billing_redis_read_handler;
    c->write->handler = ngx_http_billing_redis_write_handler;
    c->log = rd->log;
    c->read->log = rd->log;
    c->write->log = rd->log;

    rd->reader = redisReaderCreate();
    if (rd->reader == NULL) {
        ngx_http_billing_redis_failed(rd, NGX_LOG_ALERT,
                                      "redisReaderCreate() failed");
        return;
    }

    rd->state = NGX_HTTP_BILLING_REDIS_CONNECTING;

    if (ngx_http_billing_redis_handshake(rd) != NGX_OK) {
        ngx_http_billing_redis_failed(rd, NGX_LOG_ALERT,
                                      "could not queue the handshake");
        return;
    }

    if (rc == NGX_AGAIN) {
        ngx_add_timer(c->write, rd->conf->connect_timeout);
        return;
    }

    /* connected at once, as unix sockets are */

    ngx_post_event(c->write, &ngx_posted_events);
}


void
ngx_http_billing_redis_ready(ngx_http_billing_redis_t *rd)
{
    rd->state = NGX_HTTP_BILLING_REDIS_READY;
    rd->backoff = NGX_HTTP_BILLING_REDIS_BACKOFF_MIN;
    rd->down = 0;

    if (rd->connections++ && rd->stat != NGX_HTTP_BILLING_CONN_N) {
        ngx_http_billing_stat_inc(NGX_HTTP_BILLING_M_REDIS_RECONNECTS, 0,
                                  rd->stat, 0);
    }

    rd->counted = 1;
    ngx_http_billing_stat_add(NGX_HTTP_BILLING_M_REDIS_UP, 0, rd->stat, 0, 1);

    ngx_log_error(NGX_LOG_INFO, rd->log, 0,
                  "billing redis %V: connected%s", rd->peer.name,
                  rd->channel.len ? ", subscribed" : "");

    /* what waited for the connection goes now */
    ngx_post_event(rd->peer.connection->write, &ngx_posted_events);

    if (rd->on_state) {
        rd->on_state(rd->data, 1);
    }
}


ngx_uint_t
ngx_http_billing_redis_handshaking(ngx_http_billing_redis_t *rd)
{
    ngx_queue_t                   *q;
    ngx_http_billing_redis_cmd_t  *cmd;

    /* the handshake, when there is one, heads the queue */

    if (ngx_queue_empty(&rd->cmds)) {
        return 0;
    }

    q = ngx_queue_head(&rd->cmds);
    cmd = ngx_queue_data(q, ngx_http_billing_redis_cmd_t, queue);

    return cmd->handshake;
}


static void
ngx_http_billing_redis_write_handler(ngx_event_t *wev)
{
    ngx_connection_t          *c;
    ngx_http_billing_redis_t  *rd;

    c = wev->data;
    rd = c->data;

    if (wev->timedout) {
        ngx_http_billing_redis_failed(rd, NGX_LOG_ERR,
                                      rd->state
                                      == NGX_HTTP_BILLING_REDIS_CONNECTING
                                      ? "connect timed out"
                                      : "send timed out");
        return;
    }

    if (rd->state == NGX_HTTP_BILLING_REDIS_CONNECTING) {

        if (wev->timer_set) {
            ngx_del_timer(wev);
        }

        if (ngx_http_billing_redis_test_connect(rd) != NGX_OK) {
            ngx_http_billing_redis_failed(rd, NGX_LOG_INFO,
                                          "connect() failed");
            return;
        }

        if (rd->peer.sockaddr->sa_family != AF_UNIX) {
            (void) ngx_tcp_nodelay(c);
        }

        rd->connected_at = ngx_current_msec;

        if (ngx_http_billing_redis_handshaking(rd)) {
            rd->state = NGX_HTTP_BILLING_REDIS_HANDSHAKE;

        } else {
            ngx_http_billing_redis_ready(rd);
        }
    }

    if (ngx_http_billing_redis_flush(rd) != NGX_OK) {
        ngx_http_billing_redis_failed(rd, NGX_LOG_ERR, "send() failed");
    }
}


/* how a non-blocking connect() ended: 0, or its error */

ngx_err_t
ngx_http_billing_redis_connect_error(ngx_connection_t *c)
{
    int        err;
    socklen_t  len;

    err = 0;
    len = sizeof(int);

    if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, (void *) &err, &len) == -1) {
        err = ngx_socket_errno;
    }

    return err;
}


static ngx_int_t
ngx_http_billing_redis_test_connect(ngx_http_billing_redis_t *rd)
{
    ngx_err_t  err;

    err = ngx_http_billing_redis_connect_error(rd->peer.connection);

    if (err) {
        ngx_log_error(NGX_LOG_ERR, rd->log, err,
                      "billing redis: connect() to %V failed",
                      rd->peer.name);
        return NGX_ERROR;
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_billing_redis_flush(ngx_http_billing_redis_t *rd)
{
    u_char                         buf[NGX_HTTP_BILLING_REDIS_BUF];
    size_t                         len, n, chunk;
    ssize_t                        sent;
    ngx_uint_t                     waiting;
    ngx_queue_t                   *q, *first;
    ngx_connection_t              *c;
    ngx_http_billing_redis_cmd_t  *cmd;

    c = rd->peer.connection;

    for ( ;; ) {

        /* gather what is unwritten into one buffer: one send() a batch */

        len = 0;
        first = NULL;
        waiting = 0;

        for (q = ngx_queue_head(&rd->cmds);
             q != ngx_queue_sentinel(&rd->cmds) && len < sizeof(buf);
             q = ngx_queue_next(q))
        {
            cmd = ngx_queue_data(q, ngx_http_billing_redis_cmd_t, queue);

            if (rd->state != NGX_HTTP_BILLING_REDIS_READY && !cmd->handshake)
            {
                break;
            }

            /*
             * One WAIT at a time: Redis holds the connection in it, so a
             * second behind it would add its own wait to everything after.
             */

            if (cmd->wait && cmd->sent == 0 && waiting) {
                break;
            }

            waiting |= cmd->wait;

            if (cmd->sent == cmd->len) {
                continue;
            }

            if (first == NULL) {
                first = q;
            }

            chunk = ngx_min(cmd->len - cmd->sent, sizeof(buf) - len);
            ngx_memcpy(buf + len, cmd->buf + cmd->sent, chunk);
            len += chunk;
        }

        if (len == 0) {
            break;
        }

        sent = c->send(c, buf, len);

        if (sent == NGX_ERROR) {
            return NGX_ERROR;
        }

        if (sent == NGX_AGAIN) {
            sent = 0;
        }

        /* account what went out to the commands it belongs to */

        n = sent;

        for (q = first; n && q != ngx_queue_sentinel(&rd->cmds);
             q = ngx_queue_next(q))
        {
            cmd = ngx_queue_data(q, ngx_http_billing_redis_cmd_t, queue);

            chunk = ngx_min(cmd->len - cmd->sent, n);
            cmd->sent += chunk;
            n -= chunk;
        }

        if ((size_t) sent < len) {
            /* the socket is full: wait for it */
            ngx_add_timer(c->write, rd->conf->timeout);

            if (ngx_handle_write_event(c->write, 0) != NGX_OK) {
                return NGX_ERROR;
            }

            ngx_http_billing_redis_arm(rd);
            return NGX_OK;
        }
    }

    if (c->write->timer_set) {
        ngx_del_timer(c->write);
    }

    ngx_http_billing_redis_arm(rd);

    return NGX_OK;
}


static void
ngx_http_billing_redis_read_handler(ngx_event_t *rev)
{
    void                      *reply;
    u_char                     buf[NGX_HTTP_BILLING_REDIS_BUF];
    ssize_t                    n;
    ngx_uint_t                 idle;
    ngx_connection_t          *c;
    ngx_http_billing_redis_t  *rd;

    c = rev->data;
    rd = c->data;

    if (rev->timedout) {
        ngx_http_billing_redis_failed(rd, NGX_LOG_ERR,
                                      "no reply within timeout");
        return;
    }

    for ( ;; ) {
        n = c->recv(c, buf, sizeof(buf));

        if (n == NGX_AGAIN) {
            break;
        }

        if (n == 0 || n == NGX_ERROR) {

            /*
             * Redis closes idle clients when its "timeout" says so:
             * that is no outage, reconnect at once if the connection
             * had lived a while.
             */

            idle = (rd->state == NGX_HTTP_BILLING_REDIS_READY
                    && rd->ncmds == 0
                    && ngx_current_msec - rd->connected_at
                       >= NGX_HTTP_BILLING_REDIS_STABLE);

            ngx_http_billing_redis_failed(rd, idle ? NGX_LOG_INFO
                                                   : NGX_LOG_ERR,
                                          "connection closed");
            if (idle) {
                if (rd->reconnect.timer_set) {
                    ngx_del_timer(&rd->reconnect);
                }

                rd->backoff = NGX_HTTP_BILLING_REDIS_BACKOFF_MIN;
                rd->down = 0;
                ngx_http_billing_redis_connect(rd);
            }

            return;
        }

        if (redisReaderFeed(rd->reader, (const char *) buf, n) != REDIS_OK) {
            ngx_http_billing_redis_failed(rd, NGX_LOG_ERR,
                                          "redisReaderFeed() failed");
            return;
        }

        for ( ;; ) {
            reply = NULL;

            if (redisReaderGetReply(rd->reader, &reply) != REDIS_OK) {
                ngx_http_billing_redis_failed(rd, NGX_LOG_ERR,
                                              "invalid reply from Redis");
                return;
            }

            if (reply == NULL) {
                break;
            }

            if (ngx_http_billing_redis_dispatch(rd, reply) != NGX_OK) {
                return;
            }
        }

        /* progress: the reply timeout starts again */

        if (rev->timer_set) {
            ngx_del_timer(rev);
        }
    }

    ngx_http_billing_redis_arm(rd);

    if (ngx_handle_read_event(rev, 0) != NGX_OK) {
        ngx_http_billing_redis_failed(rd, NGX_LOG_ERR,
                                      "ngx_handle_read_event() failed");
    }
}


static ngx_int_t
ngx_http_billing_redis_dispatch(ngx_http_billing_redis_t *rd,
    redisReply *reply)
{
    ngx_str_t                         channel, message;
    ngx_queue_t                      *q;
    ngx_http_billing_redis_cmd_t     *cmd;
    ngx_http_billing_redis_script_t  *script;

    if (rd->channel.len && ngx_http_billing_redis_is(reply, "message")
        && reply->elements == 3
        && reply->element[1]->type == REDIS_REPLY_STRING
        && reply->element[2]->type == REDIS_REPLY_STRING)
    {
        /* pushed, not a reply to a command */

        channel.data = (u_char *) reply->element[1]->str;
        channel.len = reply->element[1]->len;
        message.data = (u_char *) reply->element[2]->str;
        message.len = reply->element[2]->len;

        rd->on_message(rd->data, &channel, &message);

        freeReplyObject(reply);
        return NGX_OK;
    }

    q = ngx_queue_head(&rd->cmds);
    cmd = ngx_queue_data(q, ngx_http_billing_redis_cmd_t, queue);

    /* a command and its WAIT may be answered before WAIT is all sent */

    if (q == ngx_queue_sentinel(&rd->cmds)
        || cmd->sent < cmd->len - (cmd->replied ? 0 : cmd->wait_len))
    {
        freeReplyObject(reply);
        ngx_http_billing_redis_failed(rd, NGX_LOG_ERR, "reply to no command");
        return NGX_ERROR;
    }

    if (!cmd->handshake
        && (ngx_http_billing_redis_error(reply, "READONLY")
            || (cmd->replied && reply->type == REDIS_REPLY_ERROR
                && ngx_strstr(reply->str, "WAIT cannot be used with replica")
                   != NULL)))
    {
        /*
         * A primary demoted to a replica (a write says READONLY, a WAIT
         * that it cannot be used there): what is queued would fail the
         * same way.  Under Sentinel the new primary is asked for at once,
         * by the worker's other clients there too.
         */

        freeReplyObject(reply);

        if (rd->conf->sentinel.len) {
            ngx_http_billing_sentinel_demoted(rd);
            ngx_http_billing_redis_restart(rd, NGX_LOG_WARN,
                                           "READONLY, a replica now");

        } else {
            ngx_http_billing_redis_failed(rd, NGX_LOG_WARN,
                                          "READONLY, a replica now");
        }

        return NGX_ERROR;
    }

    if (cmd->role && !cmd->handshake && reply->type == REDIS_REPLY_ARRAY
        && !ngx_http_billing_redis_primary(reply))
    {
        /* the heartbeat found a demoted primary before any write did */

        freeReplyObject(reply);

        ngx_http_billing_sentinel_demoted(rd);
        ngx_http_billing_redis_restart(rd, NGX_LOG_WARN,
                                       "ROLE, a replica now");
        return NGX_ERROR;
    }

    if (cmd->wait && !cmd->replied) {
        /* the command's own reply: its WAIT's comes next */
        cmd->replied = 1;
        cmd->reply = reply;
        return NGX_OK;
    }

    ngx_queue_remove(q);
    rd->ncmds--;

    if (cmd->handshake) {
        return ngx_http_billing_redis_handshake_reply(rd, cmd, reply);
    }

    if (cmd->wait) {
        reply = ngx_http_billing_redis_waited(rd, cmd, reply);
    }

    if (cmd->script && reply
        && ngx_http_billing_redis_error(reply, "NOSCRIPT"))
    {
        /* flushed or never loaded (a restart): send the script itself */

        script = cmd->script;
        cmd->script = NULL;
        freeReplyObject(reply);

        if (ngx_http_billing_redis_to_eval(cmd, script) == NGX_OK) {
            ngx_queue_insert_tail(&rd->cmds, &cmd->queue);
            rd->ncmds++;
            ngx_post_event(rd->peer.connection->write, &ngx_posted_events);
            return NGX_OK;
        }

        reply = NULL;
    }

    ngx_http_billing_redis_unbind(cmd);

    /* the Sentinels' watch and the heartbeats are not the commands' */

    if (rd->stat != NGX_HTTP_BILLING_CONN_N) {

        if (!cmd->heartbeat) {
            ngx_http_billing_stat_time(NGX_HTTP_BILLING_M_REDIS_DURATION, 0,
                                       0, ngx_current_msec - cmd->queued);
        }

        if (reply && reply->type == REDIS_REPLY_ERROR) {
            ngx_http_billing_stat_inc(NGX_HTTP_BILLING_M_REDIS_ERRORS, 0,
                                      NGX_HTTP_BILLING_RERR_REPLY, 0);
        }
    }

    if (cmd->handler) {
        cmd->handler(cmd->data, reply);
    }

    if (reply) {
        freeReplyObject(reply);
    }

    ngx_http_billing_redis_free(cmd);

    return NGX_OK;
}


static void
ngx_http_billing_redis_arm(ngx_http_billing_redis_t *rd)
{
    ngx_queue_t                   *q;
    ngx_connection_t              *c;
    ngx_http_billing_redis_cmd_t  *cmd;

    /*
     * The reply timeout runs while a written command waits for its
     * reply, from the last progress on: replies come in order.
     */

    c = rd->peer.connection;

    if (c == NULL || c->read->timer_set) {
        return;
    }

    q = ngx_queue_head(&rd->cmds);

    if (q == ngx_queue_sentinel(&rd->cmds)) {
        return;
    }

    cmd = ngx_queue_data(q, ngx_http_billing_redis_cmd_t, queue);

    if (cmd->sent) {
        ngx_add_timer(c->read, rd->conf->timeout);
    }
}


void
ngx_http_billing_redis_failed(ngx_http_billing_redis_t *rd, ngx_uint_t level,
    const char *reason)
{
    ngx_log_error(level, rd->log, 0,
                  "billing redis %V: %s, %ui commands failed, "
                  "next attempt in %Mms",
                  rd->peer.name, reason, rd->ncmds, rd->backoff);

    if (rd->stat != NGX_HTTP_BILLING_CONN_N) {
        ngx_http_billing_stat_inc(NGX_HTTP_BILLING_M_REDIS_ERRORS, 0,
                                  ngx_http_billing_redis_error_kind(reason),
                                  0);
    }

    ngx_http_billing_redis_close(rd);

    /* several addresses (Sentinels): the next one then */
    rd->next_addr++;

    rd->down = 1;

    if (rd->on_state) {
        rd->on_state(rd->data, 0);
    }

    if (ngx_http_billing_redis_may_connect(rd)) {
        if (rd->reconnect.timer_set) {
            ngx_del_timer(&rd->reconnect);
        }

        ngx_add_timer(&rd->reconnect, rd->backoff);

        rd->backoff = ngx_min(rd->backoff * 2,
                              NGX_HTTP_BILLING_REDIS_BACKOFF_MAX);
    }

    ngx_http_billing_redis_fail_all(rd, 1);
}


void
ngx_http_billing_redis_restart(ngx_http_billing_redis_t *rd, ngx_uint_t level,
    const char *reason)
{
    /*
     * The primary moved and the Sentinels know where: what is under way
     * fails (it went to the old one), and the new one is asked for now.
     */

    ngx_log_error(level, rd->log, 0,
                  "billing redis %V: %s, %ui commands failed, reconnecting",
                  rd->peer.name, reason, rd->ncmds);

    ngx_http_billing_redis_close(rd);

    if (rd->reconnect.timer_set) {
        ngx_del_timer(&rd->reconnect);
    }

    /* failing handlers must not connect meanwhile */
    rd->down = 1;

    if (rd->on_state) {
        rd->on_state(rd->data, 0);
    }

    ngx_http_billing_redis_fail_all(rd, 1);

    rd->backoff = NGX_HTTP_BILLING_REDIS_BACKOFF_MIN;
    rd->down = 0;

    if (rd->state == NGX_HTTP_BILLING_REDIS_DISCONNECTED
        && !rd->reconnect.timer_set)
    {
        ngx_http_billing_redis_connect(rd);
    }
}


static ngx_uint_t
ngx_http_billing_redis_error_kind(const char *reason)
{
    /* the reasons of ngx_http_billing_redis_failed(), as billing_status */

    if (ngx_strncmp(reason, "connect", 7) == 0) {
        return NGX_HTTP_BILLING_RERR_CONNECT;
    }

    if (ngx_strstr(reason, "time") != NULL) {
        return NGX_HTTP_BILLING_RERR_TIMEOUT;
    }

    if (ngx_strcmp(reason, "connection closed") == 0) {
        return NGX_HTTP_BILLING_RERR_CLOSED;
    }

    return NGX_HTTP_BILLING_RERR_PROTOCOL;
}


static void
ngx_http_billing_redis_close(ngx_http_billing_redis_t *rd)
{
    if (rd->counted) {
        rd->counted = 0;
        ngx_http_billing_stat_add(NGX_HTTP_BILLING_M_REDIS_UP, 0, rd->stat,
                                  0, -1);
    }

    if (rd->state == NGX_HTTP_BILLING_REDIS_RESOLVING) {
        ngx_http_billing_sentinel_abort(&rd->ask);
    }

    if (rd->peer.connection) {
        ngx_close_connection(rd->peer.connection);
        rd->peer.connection = NULL;
    }

    if (rd->reader) {
        redisReaderFree(rd->reader);
        rd->reader = NULL;
    }

    rd->state = NGX_HTTP_BILLING_REDIS_DISCONNECTED;
}


static void
ngx_http_billing_redis_fail_all(ngx_http_billing_redis_t *rd,
    ngx_uint_t notify)
{
    ngx_queue_t                    cmds, *q;
    ngx_http_billing_redis_cmd_t  *cmd;

    /* handlers may queue new commands: they go to a fresh queue */

    if (ngx_queue_empty(&rd->cmds)) {
        return;
    }

    cmds = rd->cmds;
    cmds.next->prev = &cmds;
    cmds.prev->next = &cmds;

    ngx_queue_init(&rd->cmds);
    rd->ncmds = 0;

    for (q = ngx_queue_head(&cmds); q != ngx_queue_sentinel(&cmds);
         q = ngx_queue_next(q))
    {
        cmd = ngx_queue_data(q, ngx_http_billing_redis_cmd_t, queue);
        cmd->failing = 1;
    }

    while (!ngx_queue_empty(&cmds)) {
        q = ngx_queue_head(&cmds);
        ngx_queue_remove(q);

        cmd = ngx_queue_data(q, ngx_http_billing_redis_cmd_t, queue);

        ngx_http_billing_redis_unbind(cmd);

        if (notify && cmd->handler && !cmd->handshake) {
            cmd->handler(cmd->data, NULL);
        }

        ngx_http_billing_redis_free(cmd);
    }
}


static void
ngx_http_billing_redis_reconnect_handler(ngx_event_t *ev)
{
    ngx_http_billing_redis_t  *rd = ev->data;

    if (rd->state == NGX_HTTP_BILLING_REDIS_DISCONNECTED) {
        ngx_http_billing_redis_connect(rd);
    }
}
