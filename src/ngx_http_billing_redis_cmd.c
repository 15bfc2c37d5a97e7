
/*
 * The Redis client's commands: queueing one (with EVALSHA and its
 * fallback to EVAL on NOSCRIPT, and with replicas= the WAIT after a write
 * and the fast failures while the replicas lag), cancelling it or binding
 * it to a pool, writing it in RESP and freeing it, and the handshake of
 * a new connection.  The connection that writes them and reads their
 * replies is in ngx_http_billing_redis.c.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_event.h>
#include <ngx_event_connect.h>
#include <ngx_sha1.h>

#include "ngx_http_billing_redis_int.h"


#define NGX_HTTP_BILLING_REDIS_MAX_CMDS     8192
#define NGX_HTTP_BILLING_REDIS_MAX_ARGS     64


static ngx_uint_t ngx_http_billing_redis_reads(ngx_str_t *name);
static ngx_int_t ngx_http_billing_redis_lag_check(
    ngx_http_billing_redis_t *rd);
static void ngx_http_billing_redis_lag(ngx_http_billing_redis_t *rd,
    ngx_http_billing_redis_cmd_t *cmd, ngx_uint_t ok);
static void ngx_http_billing_redis_cleanup(void *data);
static void ngx_http_billing_redis_pong(void *data, redisReply *reply);
static void ngx_http_billing_redis_free_buf(
    ngx_http_billing_redis_cmd_t *cmd);
static size_t ngx_http_billing_redis_resp_len(ngx_uint_t argc,
    ngx_str_t *argv);
static u_char *ngx_http_billing_redis_resp(u_char *p, ngx_uint_t argc,
    ngx_str_t *argv);
static ngx_uint_t ngx_http_billing_redis_digits(size_t n);
static u_char *ngx_http_billing_redis_number(u_char *p, size_t n);


void
ngx_http_billing_redis_script_init(ngx_http_billing_redis_script_t *script,
    const char *source)
{
    u_char      digest[20];
    ngx_sha1_t  sha1;

    script->source.data = (u_char *) source;
    script->source.len = ngx_strlen(source);

    ngx_sha1_init(&sha1);
    ngx_sha1_update(&sha1, script->source.data, script->source.len);
    ngx_sha1_final(digest, &sha1);

    ngx_hex_dump(script->sha1, digest, sizeof(digest));
}


ngx_http_billing_redis_cmd_t *
ngx_http_billing_redis_send(ngx_http_billing_redis_t *rd, ngx_uint_t argc,
    ngx_str_t *argv, ngx_http_billing_redis_handler_pt handler, void *data)
{
    ngx_uint_t  wait;

    /* a read has nothing for the replicas to acknowledge */

    wait = rd->conf->replicas && rd->channel.len == 0 && argc
           && !ngx_http_billing_redis_reads(&argv[0]);

    return ngx_http_billing_redis_queue(rd, argc, argv, handler, data, wait);
}


static ngx_uint_t
ngx_http_billing_redis_reads(ngx_str_t *name)
{
    ngx_uint_t  i;

    static const char  *reads[] = {
        "GET", "MGET", "HGET", "HMGET", "HGETALL", "HEXISTS", "HLEN",
        "EXISTS", "TTL", "PTTL", "SMEMBERS", "SISMEMBER", "SCARD",
        "ZRANGE", "ZRANGEBYSCORE", "ZSCORE", "ZCARD", "LRANGE", "LLEN",
        "PING", "ROLE", NULL
    };

    for (i = 0; reads[i]; i++) {
        if (name->len == ngx_strlen(reads[i])
            && ngx_strncasecmp(name->data, (u_char *) reads[i], name->len)
               == 0)
        {
            return 1;
        }
    }

    return 0;
}


/*
 * replicas=: after a WAIT that counted too few replicas, a command that
 * needs one fails at once for a backoff, but one probe: Redis blocks the
 * connection in WAIT, so everything behind each would wait too.
 */

static ngx_int_t
ngx_http_billing_redis_lag_check(ngx_http_billing_redis_t *rd)
{
    if (!rd->lagging) {
        return NGX_OK;
    }

    if (!rd->probing
        && (ngx_msec_int_t) (ngx_current_msec - rd->lag_until) >= 0)
    {
        return NGX_AGAIN;
    }

    if ((ngx_msec_int_t) (ngx_current_msec - rd->lag_logged) >= 1000) {
        rd->lag_logged = ngx_current_msec;

        ngx_log_error(NGX_LOG_ERR, rd->log, 0,
                      "billing redis %V: fewer than %ui replicas "
                      "acknowledge, writes fail at once for now",
                      rd->peer.name, rd->conf->replicas);
    }

    return NGX_DECLINED;
}


ngx_http_billing_redis_cmd_t *
ngx_http_billing_redis_queue(ngx_http_billing_redis_t *rd, ngx_uint_t argc,
    ngx_str_t *argv, ngx_http_billing_redis_handler_pt handler, void *data,
    ngx_uint_t wait)
{
    ngx_int_t                      lag;
    ngx_http_billing_redis_cmd_t  *cmd;

    if (rd->ncmds >= NGX_HTTP_BILLING_REDIS_MAX_CMDS) {
        ngx_log_error(NGX_LOG_ERR, rd->log, 0,
                      "billing redis %V: too many commands queued",
                      rd->peer.name);
        return NULL;
    }

    lag = wait ? ngx_http_billing_redis_lag_check(rd) : NGX_OK;

    if (lag == NGX_DECLINED) {
        return NULL;
    }

    if (rd->state == NGX_HTTP_BILLING_REDIS_DISCONNECTED) {

        if (rd->down) {
            /* known to be down: fail fast until the next attempt */
            return NULL;
        }

        if (rd->reconnect.timer_set) {
            ngx_del_timer(&rd->reconnect);
        }

        ngx_http_billing_redis_connect(rd);

        if (rd->state == NGX_HTTP_BILLING_REDIS_DISCONNECTED) {
            return NULL;
        }
    }

    cmd = ngx_http_billing_redis_format(rd, argc, argv, wait);
    if (cmd == NULL) {
        return NULL;
    }

    cmd->handler = handler;
    cmd->data = data;

    if (lag == NGX_AGAIN) {
        /* the probe: whether the replicas are back */
        cmd->probe = 1;
        rd->probing = 1;
    }

    ngx_queue_insert_tail(&rd->cmds, &cmd->queue);
    rd->ncmds++;

    ngx_log_debug3(NGX_LOG_DEBUG_HTTP, rd->log, 0,
                   "billing redis: queued %V, %ui args, %ui pending",
                   &argv[0], argc, rd->ncmds);

    /* written from the event loop, so that a batch goes in one send() */

    if (rd->state == NGX_HTTP_BILLING_REDIS_READY) {
        ngx_post_event(rd->peer.connection->write, &ngx_posted_events);
    }

    return cmd;
}


ngx_http_billing_redis_cmd_t *
ngx_http_billing_redis_eval(ngx_http_billing_redis_t *rd,
    ngx_http_billing_redis_script_t *script, ngx_uint_t nkeys,
    ngx_uint_t argc, ngx_str_t *argv,
    ngx_http_billing_redis_handler_pt handler, void *data)
{
    u_char                        nkeys_buf[NGX_INT_T_LEN];
    ngx_str_t                     args[NGX_HTTP_BILLING_REDIS_MAX_ARGS];
    ngx_uint_t                    i;
    ngx_http_billing_redis_cmd_t  *cmd;

    if (argc + 3 > NGX_HTTP_BILLING_REDIS_MAX_ARGS) {
        return NULL;
    }

    ngx_str_set(&args[0], "EVALSHA");
    args[1].data = script->sha1;
    args[1].len = sizeof(script->sha1);
    args[2].data = nkeys_buf;
    args[2].len = ngx_sprintf(nkeys_buf, "%ui", nkeys) - nkeys_buf;

    for (i = 0; i < argc; i++) {
        args[i + 3] = argv[i];
    }

    cmd = ngx_http_billing_redis_queue(rd, argc + 3, args, handler, data,
                                       rd->conf->replicas
                                       && rd->channel.len == 0
                                       && !script->readonly);

    if (cmd) {
        cmd->script = script;
    }

    return cmd;
}


void
ngx_http_billing_redis_cancel(ngx_http_billing_redis_cmd_t *cmd)
{
    ngx_http_billing_redis_t  *rd;

    ngx_http_billing_redis_unbind(cmd);

    cmd->handler = NULL;
    cmd->data = NULL;

    /* not written yet: forget it; otherwise its reply is still due */

    if (cmd->sent == 0 && !cmd->failing) {
        rd = cmd->rd;
        ngx_queue_remove(&cmd->queue);
        rd->ncmds--;
        ngx_http_billing_redis_free(cmd);
    }
}


ngx_int_t
ngx_http_billing_redis_bind(ngx_http_billing_redis_cmd_t *cmd,
    ngx_pool_t *pool)
{
    ngx_pool_cleanup_t  *cln;

    cln = ngx_pool_cleanup_add(pool, 0);
    if (cln == NULL) {
        return NGX_ERROR;
    }

    cln->handler = ngx_http_billing_redis_cleanup;
    cln->data = cmd;
    cmd->cleanup = cln;

    return NGX_OK;
}


void
ngx_http_billing_redis_unbind(ngx_http_billing_redis_cmd_t *cmd)
{
    /* the command is done with: its pool no longer needs to cancel it */

    if (cmd->cleanup) {
        cmd->cleanup->handler = NULL;
        cmd->cleanup = NULL;
    }
}


static void
ngx_http_billing_redis_cleanup(void *data)
{
    ngx_http_billing_redis_cmd_t  *cmd = data;

    cmd->cleanup = NULL;
    ngx_http_billing_redis_cancel(cmd);
}


ngx_int_t
ngx_http_billing_redis_to_eval(ngx_http_billing_redis_cmd_t *cmd,
    ngx_http_billing_redis_script_t *script)
{
    u_char  *buf, *p, *end, *rest;
    size_t   head, tail;

    /*
     * The command is "*N\r\n$7\r\nEVALSHA\r\n$40\r\n<sha1>\r\n<rest>";
     * the EVAL differs only in its name and the script in place of sha1.
     */

    end = (u_char *) cmd->buf + cmd->len;

    p = ngx_strlchr((u_char *) cmd->buf, end, '\n');
    if (p == NULL) {
        return NGX_ERROR;
    }

    head = p + 1 - (u_char *) cmd->buf;
    rest = p + 1 + sizeof("$7\r\nEVALSHA\r\n$40\r\n") - 1 + 40 + 2;

    if (rest > end) {
        return NGX_ERROR;
    }

    tail = end - rest;

    buf = ngx_alloc(head + sizeof("$4\r\nEVAL\r\n$\r\n\r\n") - 1
                    + ngx_http_billing_redis_digits(script->source.len)
                    + script->source.len + tail,
                    cmd->rd->log);
    if (buf == NULL) {
        return NGX_ERROR;
    }

    p = ngx_cpymem(buf, cmd->buf, head);
    p = ngx_cpymem(p, "$4\r\nEVAL\r\n$", sizeof("$4\r\nEVAL\r\n$") - 1);
    p = ngx_http_billing_redis_number(p, script->source.len);
    *p++ = CR; *p++ = LF;
    p = ngx_cpymem(p, script->source.data, script->source.len);
    *p++ = CR; *p++ = LF;
    p = ngx_cpymem(p, rest, tail);

    ngx_http_billing_redis_free_buf(cmd);

    cmd->buf = (char *) buf;
    cmd->len = p - buf;
    cmd->sent = 0;
    cmd->own_buf = 1;

    return NGX_OK;
}


/*
 * The command in RESP, written here into one buffer sized exactly (and
 * allocated with the command): "*N\r\n", then "$LEN\r\nDATA\r\n" for
 * each argument.  hiredis' formatter spends a sprintf() on each length,
 * a measurable part of a webhook event with its script's arguments.
 */

ngx_http_billing_redis_cmd_t *
ngx_http_billing_redis_format(ngx_http_billing_redis_t *rd, ngx_uint_t argc,
    ngx_str_t *argv, ngx_uint_t wait)
{
    u_char                        *p;
    size_t                         len, wlen;
    ngx_str_t                      w[3];
    u_char                         n[NGX_INT_T_LEN], t[NGX_INT_T_LEN];
    ngx_http_billing_redis_cmd_t  *cmd;

    if (argc == 0 || argc > NGX_HTTP_BILLING_REDIS_MAX_ARGS) {
        return NULL;
    }

    len = ngx_http_billing_redis_resp_len(argc, argv);
    wlen = 0;

    if (wait) {

        /*
         * WAIT in the same buffer, so that nothing comes between the two;
         * it gives up before the reply timeout would close the connection.
         */

        ngx_str_set(&w[0], "WAIT");
        w[1].data = n;
        w[1].len = ngx_sprintf(n, "%ui", rd->conf->replicas) - n;
        w[2].data = t;
        w[2].len = ngx_sprintf(t, "%M", ngx_max(rd->conf->timeout / 2, 1))
                   - t;

        wlen = ngx_http_billing_redis_resp_len(3, w);
    }

    cmd = ngx_alloc(sizeof(ngx_http_billing_redis_cmd_t) + len + wlen,
                    rd->log);
    if (cmd == NULL) {
        return NULL;
    }

    ngx_memzero(cmd, sizeof(ngx_http_billing_redis_cmd_t));

    p = (u_char *) (cmd + 1);
    p = ngx_http_billing_redis_resp(p, argc, argv);

    if (wait) {
        p = ngx_http_billing_redis_resp(p, 3, w);
        cmd->wait_len = wlen;
        cmd->wait = 1;
    }

    cmd->rd = rd;
    cmd->buf = (char *) (cmd + 1);
    cmd->len = p - (u_char *) cmd->buf;
    cmd->queued = ngx_current_msec;

    return cmd;
}


static size_t
ngx_http_billing_redis_resp_len(ngx_uint_t argc, ngx_str_t *argv)
{
    size_t      len;
    ngx_uint_t  i;

    len = sizeof("*\r\n") - 1 + ngx_http_billing_redis_digits(argc);

    for (i = 0; i < argc; i++) {
        len += sizeof("$\r\n\r\n") - 1
               + ngx_http_billing_redis_digits(argv[i].len) + argv[i].len;
    }

    return len;
}


static u_char *
ngx_http_billing_redis_resp(u_char *p, ngx_uint_t argc, ngx_str_t *argv)
{
    ngx_uint_t  i;

    *p++ = '*';
    p = ngx_http_billing_redis_number(p, argc);
    *p++ = CR; *p++ = LF;

    for (i = 0; i < argc; i++) {
        *p++ = '$';
        p = ngx_http_billing_redis_number(p, argv[i].len);
        *p++ = CR; *p++ = LF;

        if (argv[i].len) {
            p = ngx_cpymem(p, argv[i].data, argv[i].len);
        }

        *p++ = CR; *p++ = LF;
    }

    return p;
}


static ngx_uint_t
ngx_http_billing_redis_digits(size_t n)
{
    ngx_uint_t  d;

    for (d = 1; n >= 10; d++) {
        n /= 10;
    }

    return d;
}


static u_char *
ngx_http_billing_redis_number(u_char *p, size_t n)
{
    u_char  *end;

    end = p + ngx_http_billing_redis_digits(n);
    p = end;

    do {
        *--p = (u_char) ('0' + n % 10);
        n /= 10;
    } while (n);

    return end;
}


void
ngx_http_billing_redis_free(ngx_http_billing_redis_cmd_t *cmd)
{
    if (cmd->probe) {
        cmd->rd->probing = 0;
    }

    if (cmd->reply) {
        freeReplyObject(cmd->reply);
    }

    ngx_http_billing_redis_free_buf(cmd);
    ngx_free(cmd);
}


static void
ngx_http_billing_redis_free_buf(ngx_http_billing_redis_cmd_t *cmd)
{
    if (cmd->buf == NULL) {
        return;
    }

    /* the formatted one is part of the command's own allocation */

    if (cmd->own_buf) {
        ngx_free(cmd->buf);
    }

    cmd->buf = NULL;
}


ngx_int_t
ngx_http_billing_redis_handshake(ngx_http_billing_redis_t *rd)
{
    u_char                         db[NGX_INT_T_LEN];
    ngx_str_t                      argv[2];
    ngx_queue_t                   *head;
    ngx_http_billing_redis_cmd_t  *cmd[3 + NGX_HTTP_BILLING_MARKETS_MAX];
    ngx_uint_t                     n, i;

    /*
     * Queued ahead of whatever waits: a new connection has written
     * nothing yet, and nothing else is written before these succeed.
     */

    n = 0;

    if (rd->conf->password.len) {
        ngx_str_set(&argv[0], "AUTH");
        argv[1] = rd->conf->password;

        cmd[n] = ngx_http_billing_redis_format(rd, 2, argv, 0);
        if (cmd[n] == NULL) {
            return NGX_ERROR;
        }

        n++;
    }

    if (rd->conf->db) {
        ngx_str_set(&argv[0], "SELECT");
        argv[1].data = db;
        argv[1].len = ngx_sprintf(db, "%ui", rd->conf->db) - db;

        cmd[n] = ngx_http_billing_redis_format(rd, 2, argv, 0);
        if (cmd[n] == NULL) {
            goto failed;
        }

        n++;
    }

    if (rd->conf->sentinel.len) {

        /* the Sentinels' answer may be stale: a demoted primary says so */

        ngx_str_set(&argv[0], "ROLE");

        cmd[n] = ngx_http_billing_redis_format(rd, 1, argv, 0);
        if (cmd[n] == NULL) {
            goto failed;
        }

        cmd[n]->role = 1;
        n++;
    }

    /* one SUBSCRIBE a channel: Redis confirms each apart */

    for (i = 0; i < rd->nchannels; i++) {
        ngx_str_set(&argv[0], "SUBSCRIBE");
        argv[1] = rd->channels[i];

        cmd[n] = ngx_http_billing_redis_format(rd, 2, argv, 0);
        if (cmd[n] == NULL) {
            goto failed;
        }

        n++;
    }

    head = &rd->cmds;

    for (i = 0; i < n; i++) {
        cmd[i]->handshake = 1;

        ngx_queue_insert_after(head, &cmd[i]->queue);
        head = &cmd[i]->queue;
        rd->ncmds++;
    }

    return NGX_OK;

failed:

    while (n) {
        ngx_http_billing_redis_free(cmd[--n]);
    }

    return NGX_ERROR;
}


ngx_int_t
ngx_http_billing_redis_handshake_reply(ngx_http_billing_redis_t *rd,
    ngx_http_billing_redis_cmd_t *cmd, redisReply *reply)
{
    ngx_uint_t   ok;
    redisReply  *role;

    if (cmd->role) {

        /* [ "master", offset, replicas ]: anything else is no primary */

        role = (reply->type == REDIS_REPLY_ARRAY && reply->elements
                && reply->element[0]->type == REDIS_REPLY_STRING)
               ? reply->element[0] : NULL;

        ok = ngx_http_billing_redis_primary(reply);

        if (!ok && reply->type != REDIS_REPLY_ERROR) {
            ngx_log_error(NGX_LOG_WARN, rd->log, 0,
                          "billing redis %V: not a primary (role \"%*s\")",
                          rd->peer.name,
                          (size_t) (role ? ngx_min(role->len, 32) : 0),
                          role ? role->str : "");

            freeReplyObject(reply);
            ngx_http_billing_redis_free(cmd);

            /* a stale Sentinel: the next attempt asks another first */
            ngx_http_billing_sentinel_stale(&rd->ask);

            ngx_http_billing_redis_failed(rd, NGX_LOG_WARN,
                                          "handshake failed");
            return NGX_ERROR;
        }

    } else {
        ok = (reply->type == REDIS_REPLY_STATUS
              || ngx_http_billing_redis_is(reply, "subscribe"));
    }

    if (!ok) {

        /* Redis' error text names the problem, never the password */

        ngx_log_error(NGX_LOG_ERR, rd->log, 0,
                      "billing redis %V: handshake refused: \"%*s\"",
                      rd->peer.name,
                      (size_t) (reply->type == REDIS_REPLY_ERROR
                                ? reply->len : 0),
                      reply->type == REDIS_REPLY_ERROR ? reply->str : "");

        freeReplyObject(reply);
        ngx_http_billing_redis_free(cmd);
        ngx_http_billing_redis_failed(rd, NGX_LOG_ERR, "handshake failed");
        return NGX_ERROR;
    }

    freeReplyObject(reply);
    ngx_http_billing_redis_free(cmd);

    if (!ngx_http_billing_redis_handshaking(rd)) {
        ngx_http_billing_redis_ready(rd);
    }

    return NGX_OK;
}


ngx_uint_t
ngx_http_billing_redis_is(redisReply *reply, const char *kind)
{
    size_t  len;

    /* a pub/sub array: [ kind, channel, ... ] */

    len = ngx_strlen(kind);

    return reply->type == REDIS_REPLY_ARRAY && reply->elements >= 2
           && reply->element[0]->type == REDIS_REPLY_STRING
           && reply->element[0]->len == len
           && ngx_strncmp(reply->element[0]->str, kind, len) == 0;
}


ngx_uint_t
ngx_http_billing_redis_error(redisReply *reply, const char *code)
{
    size_t  len;

    len = ngx_strlen(code);

    return reply->type == REDIS_REPLY_ERROR
           && (size_t) reply->len >= len
           && ngx_strncmp(reply->str, code, len) == 0
           && ((size_t) reply->len == len || reply->str[len] == ' ');
}


/*
 * replicas=: a command's reply once WAIT (reply) has answered; NULL when
 * fewer replicas than required had it in time.  A NOSCRIPT reply goes
 * through: nothing ran, the script is sent again.
 */

redisReply *
ngx_http_billing_redis_waited(ngx_http_billing_redis_t *rd,
    ngx_http_billing_redis_cmd_t *cmd, redisReply *reply)
{
    long long    n;
    redisReply  *own;

    n = reply->type == REDIS_REPLY_INTEGER ? reply->integer : -1;

    if (n < 0) {
        ngx_log_error(NGX_LOG_ERR, rd->log, 0,
                      "billing redis %V: WAIT failed: \"%*s\"",
                      rd->peer.name,
                      (size_t) (reply->type == REDIS_REPLY_ERROR
                                ? ngx_min(reply->len, 128) : 0),
                      reply->type == REDIS_REPLY_ERROR ? reply->str : "");
    }

    freeReplyObject(reply);

    own = cmd->reply;
    cmd->reply = NULL;
    cmd->replied = 0;

    if (n >= 0 && n < (long long) rd->conf->replicas) {
        ngx_log_error(NGX_LOG_ERR, rd->log, 0,
                      "billing redis %V: %L of %ui replicas acknowledged "
                      "a command in time: failed",
                      rd->peer.name, n, rd->conf->replicas);
    }

    /* the next WAIT may go now (one at a time, see flush) */
    ngx_post_event(rd->peer.connection->write, &ngx_posted_events);

    ngx_http_billing_redis_lag(rd, cmd, n >= (long long) rd->conf->replicas);

    if (n >= (long long) rd->conf->replicas
        || (cmd->script && ngx_http_billing_redis_error(own, "NOSCRIPT")))
    {
        return own;
    }

    freeReplyObject(own);

    return NULL;
}


static void
ngx_http_billing_redis_lag(ngx_http_billing_redis_t *rd,
    ngx_http_billing_redis_cmd_t *cmd, ngx_uint_t ok)
{
    ngx_msec_t                     max;
    ngx_queue_t                    failed, *q, *next;
    ngx_http_billing_redis_cmd_t  *c;

    if (ok) {
        if (rd->lagging) {
            ngx_log_error(NGX_LOG_NOTICE, rd->log, 0,
                          "billing redis %V: %ui replicas acknowledge again",
                          rd->peer.name, rd->conf->replicas);
        }

        rd->lagging = 0;
        return;
    }

    max = ngx_max(rd->conf->timeout, 1000);

    if (!rd->lagging) {
        rd->lagging = 1;
        rd->lag_backoff = 1000;

        /* the line above said it: the next within a second is noise */
        rd->lag_logged = ngx_current_msec;

    } else if (cmd->probe) {
        rd->lag_backoff = ngx_min(rd->lag_backoff * 2, max);
    }

    rd->lag_until = ngx_current_msec + rd->lag_backoff;

    /*
     * What is queued to wait would wait as long and fail the same: it
     * fails now.  Only unwritten commands are queued behind a WAIT (one
     * is written at a time), and handlers may queue or cancel others:
     * they are taken out first.
     */

    ngx_queue_init(&failed);

    for (q = ngx_queue_head(&rd->cmds); q != ngx_queue_sentinel(&rd->cmds);
         q = next)
    {
        next = ngx_queue_next(q);
        c = ngx_queue_data(q, ngx_http_billing_redis_cmd_t, queue);

        if (!c->wait || c->sent || c->handshake) {
            continue;
        }

        ngx_queue_remove(q);
        rd->ncmds--;
        c->failing = 1;
        ngx_queue_insert_tail(&failed, q);
    }

    while (!ngx_queue_empty(&failed)) {
        q = ngx_queue_head(&failed);
        ngx_queue_remove(q);

        c = ngx_queue_data(q, ngx_http_billing_redis_cmd_t, queue);

        ngx_http_billing_redis_unbind(c);

        if (c->handler) {
            c->handler(c->data, NULL);
        }

        ngx_http_billing_redis_free(c);
    }
}


/*
 * Every few seconds: a PING on an idle connection, so that a Redis that
 * died or froze is found before a request needs it (and NAT state along
 * the way stays); under Sentinel a ROLE, idle or not, so that a primary
 * demoted is left even by a worker that only reads.
 */

void
ngx_http_billing_redis_heartbeat_handler(ngx_event_t *ev)
{
    ngx_http_billing_redis_t  *rd = ev->data;

    ngx_str_t                      ping = ngx_string("PING");
    ngx_str_t                      role = ngx_string("ROLE");
    ngx_http_billing_redis_cmd_t  *cmd;

    if (rd->state != NGX_HTTP_BILLING_REDIS_READY) {
        goto next;
    }

    /* no WAIT after either: they write nothing */

    if (rd->conf->sentinel.len && rd->channel.len == 0) {
        cmd = ngx_http_billing_redis_queue(rd, 1, &role,
                                           ngx_http_billing_redis_pong, rd,
                                           0);
        if (cmd) {
            cmd->role = 1;
            cmd->heartbeat = 1;
        }

    } else if (rd->ncmds == 0) {
        cmd = ngx_http_billing_redis_queue(rd, 1, &ping,
                                           ngx_http_billing_redis_pong, rd,
                                           0);
        if (cmd) {
            cmd->heartbeat = 1;
        }
    }

next:

    if (!(ngx_exiting || ngx_terminate || ngx_quit)) {
        ngx_add_timer(ev, rd->heartbeat_interval);
    }
}


static void
ngx_http_billing_redis_pong(void *data, redisReply *reply)
{
    /* a lost connection or a demoted primary was handled already */
}


ngx_uint_t
ngx_http_billing_redis_primary(redisReply *reply)
{
    redisReply  *role;

    /* ROLE: [ "master", offset, replicas ] */

    if (reply->type != REDIS_REPLY_ARRAY || reply->elements == 0) {
        return 0;
    }

    role = reply->element[0];

    return role->type == REDIS_REPLY_STRING && role->len == 6
           && ngx_strncmp(role->str, "master", 6) == 0;
}
