
/*
 * The Redis client's commands: queueing one (with EVALSHA and its
 * fallback to EVAL on NOSCRIPT), cancelling it or binding it to a pool,
 * formatting it with hiredis and freeing it.  The connection that writes
 * them and reads their replies is in ngx_http_billing_redis.c.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_event.h>
#include <ngx_event_connect.h>
#include <ngx_sha1.h>

#include "ngx_http_billing_redis_int.h"


#define NGX_HTTP_BILLING_REDIS_MAX_CMDS     8192
#define NGX_HTTP_BILLING_REDIS_MAX_ARGS     64


static void ngx_http_billing_redis_cleanup(void *data);
static void ngx_http_billing_redis_free_buf(
    ngx_http_billing_redis_cmd_t *cmd);


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
    ngx_http_billing_redis_cmd_t  *cmd;

    if (rd->ncmds >= NGX_HTTP_BILLING_REDIS_MAX_CMDS) {
        ngx_log_error(NGX_LOG_ERR, rd->log, 0,
                      "billing redis %V: too many commands queued",
                      rd->peer.name);
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

    cmd = ngx_http_billing_redis_format(rd, argc, argv);
    if (cmd == NULL) {
        return NULL;
    }

    cmd->handler = handler;
    cmd->data = data;

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

    cmd = ngx_http_billing_redis_send(rd, argc + 3, args, handler, data);

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
     * hiredis formats "*N\r\n$7\r\nEVALSHA\r\n$40\r\n<sha1>\r\n<rest>";
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
                    + NGX_SIZE_T_LEN + script->source.len + tail,
                    cmd->rd->log);
    if (buf == NULL) {
        return NGX_ERROR;
    }

    p = ngx_cpymem(buf, cmd->buf, head);
    p = ngx_cpymem(p, "$4\r\nEVAL\r\n", sizeof("$4\r\nEVAL\r\n") - 1);
    p = ngx_sprintf(p, "$%uz\r\n%V\r\n", script->source.len,
                    &script->source);
    p = ngx_cpymem(p, rest, tail);

    ngx_http_billing_redis_free_buf(cmd);

    cmd->buf = (char *) buf;
    cmd->len = p - buf;
    cmd->sent = 0;
    cmd->own_buf = 1;

    return NGX_OK;
}


ngx_http_billing_redis_cmd_t *
ngx_http_billing_redis_format(ngx_http_billing_redis_t *rd, ngx_uint_t argc,
    ngx_str_t *argv)
{
    int                            len;
    char                          *buf;
    size_t                         lens[NGX_HTTP_BILLING_REDIS_MAX_ARGS];
    ngx_uint_t                     i;
    const char                    *args[NGX_HTTP_BILLING_REDIS_MAX_ARGS];
    ngx_http_billing_redis_cmd_t  *cmd;

    if (argc == 0 || argc > NGX_HTTP_BILLING_REDIS_MAX_ARGS) {
        return NULL;
    }

    for (i = 0; i < argc; i++) {
        args[i] = (const char *) argv[i].data;
        lens[i] = argv[i].len;
    }

    len = redisFormatCommandArgv(&buf, (int) argc, args, lens);
    if (len < 0) {
        return NULL;
    }

    cmd = ngx_calloc(sizeof(ngx_http_billing_redis_cmd_t), rd->log);
    if (cmd == NULL) {
        redisFreeCommand(buf);
        return NULL;
    }

    cmd->rd = rd;
    cmd->buf = buf;
    cmd->len = len;

    return cmd;
}


void
ngx_http_billing_redis_free(ngx_http_billing_redis_cmd_t *cmd)
{
    ngx_http_billing_redis_free_buf(cmd);
    ngx_free(cmd);
}


static void
ngx_http_billing_redis_free_buf(ngx_http_billing_redis_cmd_t *cmd)
{
    if (cmd->buf == NULL) {
        return;
    }

    if (cmd->own_buf) {
        ngx_free(cmd->buf);

    } else {
        redisFreeCommand(cmd->buf);
    }

    cmd->buf = NULL;
}
