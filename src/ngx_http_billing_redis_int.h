
/*
 * Internals of the Redis client shared by its two halves: the
 * connection (ngx_http_billing_redis.c) and the commands
 * (ngx_http_billing_redis_cmd.c).  Only those two include it.
 */


#ifndef _NGX_HTTP_BILLING_REDIS_INT_H_INCLUDED_
#define _NGX_HTTP_BILLING_REDIS_INT_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_event.h>
#include <ngx_event_connect.h>

#include "ngx_http_billing_redis.h"


typedef enum {
    NGX_HTTP_BILLING_REDIS_DISCONNECTED = 0,
    NGX_HTTP_BILLING_REDIS_CONNECTING,
    NGX_HTTP_BILLING_REDIS_HANDSHAKE,
    NGX_HTTP_BILLING_REDIS_READY
} ngx_http_billing_redis_state_e;


struct ngx_http_billing_redis_cmd_s {
    ngx_queue_t                         queue;
    ngx_http_billing_redis_t           *rd;

    /* NULL once cancelled: the reply is then read and dropped */
    ngx_http_billing_redis_handler_pt   handler;
    void                               *data;
    ngx_pool_cleanup_t                 *cleanup;

    char                               *buf;
    size_t                              len;
    size_t                              sent;

    /* an EVALSHA that becomes an EVAL on NOSCRIPT */
    ngx_http_billing_redis_script_t    *script;

    unsigned                            handshake:1;
    unsigned                            own_buf:1;

    /* taken out of the queue by fail_all(), which frees it */
    unsigned                            failing:1;
};


struct ngx_http_billing_redis_s {
    ngx_http_billing_redis_conf_t      *conf;
    ngx_log_t                          *log;

    ngx_peer_connection_t               peer;
    redisReader                        *reader;
    ngx_uint_t                          state;
    ngx_msec_t                          connected_at;

    ngx_queue_t                         cmds;
    ngx_uint_t                          ncmds;

    ngx_msec_t                          backoff;
    ngx_event_t                         reconnect;
    ngx_event_t                         heartbeat;
    ngx_msec_t                          heartbeat_interval;

    /* a subscriber's channel and handlers */
    ngx_str_t                           channel;
    ngx_http_billing_redis_message_pt   on_message;
    ngx_http_billing_redis_state_pt     on_state;
    void                               *data;

    /* the last attempt failed and the backoff runs */
    unsigned                            down:1;
};


/* ngx_http_billing_redis.c */
void ngx_http_billing_redis_connect(ngx_http_billing_redis_t *rd);

/* ngx_http_billing_redis_cmd.c */
ngx_http_billing_redis_cmd_t *ngx_http_billing_redis_format(
    ngx_http_billing_redis_t *rd, ngx_uint_t argc, ngx_str_t *argv);
void ngx_http_billing_redis_free(ngx_http_billing_redis_cmd_t *cmd);
void ngx_http_billing_redis_unbind(ngx_http_billing_redis_cmd_t *cmd);
ngx_int_t ngx_http_billing_redis_to_eval(ngx_http_billing_redis_cmd_t *cmd,
    ngx_http_billing_redis_script_t *script);


#endif /* _NGX_HTTP_BILLING_REDIS_INT_H_INCLUDED_ */
