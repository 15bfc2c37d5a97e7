
/*
 * Internals of the Redis client shared by its parts: the connection
 * (ngx_http_billing_redis.c), the commands (ngx_http_billing_redis_cmd.c)
 * and the Sentinels (ngx_http_billing_redis_sentinel.c).  Only those
 * include it.
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
    NGX_HTTP_BILLING_REDIS_RESOLVING,       /* asking a Sentinel */
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

    /* RESP; part of the command's allocation unless own_buf */
    char                               *buf;
    size_t                              len;
    size_t                              sent;

    /* the WAIT at the end of buf, with replicas= */
    size_t                              wait_len;

    /* when it was queued: billing_status's latency */
    ngx_msec_t                          queued;

    /* an EVALSHA that becomes an EVAL on NOSCRIPT */
    ngx_http_billing_redis_script_t    *script;

    /* with replicas=: the command's own reply, held until WAIT's */
    redisReply                         *reply;

    unsigned                            handshake:1;

    /* buf allocated apart (the EVAL after NOSCRIPT), freed with it */
    unsigned                            own_buf:1;

    /* ROLE (a handshake's or the heartbeat's): it must be a primary */
    unsigned                            role:1;

    /* followed by WAIT in the same buffer: two replies */
    unsigned                            wait:1;
    unsigned                            replied:1;

    /* taken out of the queue by fail_all(), which frees it */
    unsigned                            failing:1;

    /* PING or ROLE of the heartbeat: not in the latency histogram */
    unsigned                            heartbeat:1;

    /* with replicas=, lagging: the one WAIT that asks if they are back */
    unsigned                            probe:1;
};


typedef struct ngx_http_billing_sentinel_s  ngx_http_billing_sentinel_t;

typedef struct ngx_http_billing_sentinel_ask_s
    ngx_http_billing_sentinel_ask_t;

/* rc: NGX_OK with ask->sockaddr set, or NGX_ERROR (every Sentinel failed) */
typedef void (*ngx_http_billing_sentinel_done_pt)(void *data,
    ngx_http_billing_sentinel_ask_t *ask, ngx_int_t rc);


/* one question to the Sentinels: which address NAME's primary has */
struct ngx_http_billing_sentinel_ask_s {
    ngx_http_billing_sentinel_t        *watch;
    ngx_log_t                          *log;

    ngx_peer_connection_t               peer;
    redisReader                        *reader;
    size_t                              sent;
    ngx_uint_t                          replies;    /* still due */
    ngx_uint_t                          tries;      /* Sentinels left */
    ngx_uint_t                          pos;        /* the one asked */

    ngx_sockaddr_t                      sockaddr;
    socklen_t                           socklen;
    ngx_str_t                          *sentinel;   /* which one answered */

    ngx_http_billing_sentinel_done_pt   done;
    void                               *data;

    unsigned                            connected:1;
};


/* a worker's watch on the Sentinels, for all its clients of one primary */
struct ngx_http_billing_sentinel_s {
    /* how the Sentinels are reached: billing_redis's, with their password */
    ngx_http_billing_redis_conf_t       conf;
    ngx_http_billing_redis_conf_t      *primary;

    /* the subscription to +switch-master, and the check after each */
    ngx_http_billing_redis_t           *rd;
    ngx_http_billing_sentinel_ask_t     check;

    /* the clients of the primary (rd->watched) */
    ngx_queue_t                         clients;

    /* the Sentinel asked first: the last that answered */
    ngx_uint_t                          next;

    /* [AUTH,] SENTINEL get-master-addr-by-name NAME */
    u_char                             *request;
    size_t                              request_len;
    ngx_uint_t                          replies;
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

    /* a subscriber's channels (the first; all) and handlers */
    ngx_str_t                           channel;
    ngx_str_t                          *channels;
    ngx_uint_t                          nchannels;
    ngx_http_billing_redis_message_pt   on_message;
    ngx_http_billing_redis_state_pt     on_state;
    void                               *data;

    /* a Redis of several addresses (the Sentinels): the one to try */
    ngx_uint_t                          next_addr;

    /* with sentinel=: asking, and the primary the Sentinels named */
    ngx_http_billing_sentinel_ask_t     ask;
    ngx_sockaddr_t                      primary;
    ngx_str_t                           primary_name;
    u_char                              primary_text[NGX_SOCKADDR_STRLEN];
    ngx_queue_t                         watched;

    /* billing_status's connection label; NGX_HTTP_BILLING_CONN_N: none */
    ngx_uint_t                          stat;
    ngx_uint_t                          connections;

    ngx_msec_t                          lag_until;
    ngx_msec_t                          lag_backoff;
    ngx_msec_t                          lag_logged;

    /* the last attempt failed and the backoff runs */
    unsigned                            down:1;

    /* primary holds what a Sentinel said */
    unsigned                            resolved:1;

    /* counted as up in billing_status */
    unsigned                            counted:1;

    /*
     * replicas=: the last WAIT counted too few; until lag_until commands
     * that need one fail at once, and then one of them probes
     */
    unsigned                            lagging:1;
    unsigned                            probing:1;
};


/* ngx_http_billing_redis.c */
void ngx_http_billing_redis_connect(ngx_http_billing_redis_t *rd);
ngx_err_t ngx_http_billing_redis_connect_error(ngx_connection_t *c);
void ngx_http_billing_redis_open(ngx_http_billing_redis_t *rd);
void ngx_http_billing_redis_failed(ngx_http_billing_redis_t *rd,
    ngx_uint_t level, const char *reason);
void ngx_http_billing_redis_restart(ngx_http_billing_redis_t *rd,
    ngx_uint_t level, const char *reason);
void ngx_http_billing_redis_ready(ngx_http_billing_redis_t *rd);
ngx_uint_t ngx_http_billing_redis_handshaking(ngx_http_billing_redis_t *rd);

/* ngx_http_billing_redis_cmd.c */
ngx_http_billing_redis_cmd_t *ngx_http_billing_redis_queue(
    ngx_http_billing_redis_t *rd, ngx_uint_t argc, ngx_str_t *argv,
    ngx_http_billing_redis_handler_pt handler, void *data, ngx_uint_t wait);
ngx_http_billing_redis_cmd_t *ngx_http_billing_redis_format(
    ngx_http_billing_redis_t *rd, ngx_uint_t argc, ngx_str_t *argv,
    ngx_uint_t wait);
void ngx_http_billing_redis_free(ngx_http_billing_redis_cmd_t *cmd);
void ngx_http_billing_redis_unbind(ngx_http_billing_redis_cmd_t *cmd);
ngx_int_t ngx_http_billing_redis_to_eval(ngx_http_billing_redis_cmd_t *cmd,
    ngx_http_billing_redis_script_t *script);
ngx_int_t ngx_http_billing_redis_handshake(ngx_http_billing_redis_t *rd);
ngx_int_t ngx_http_billing_redis_handshake_reply(ngx_http_billing_redis_t *rd,
    ngx_http_billing_redis_cmd_t *cmd, redisReply *reply);
redisReply *ngx_http_billing_redis_waited(ngx_http_billing_redis_t *rd,
    ngx_http_billing_redis_cmd_t *cmd, redisReply *reply);
ngx_uint_t ngx_http_billing_redis_is(redisReply *reply, const char *kind);
ngx_uint_t ngx_http_billing_redis_error(redisReply *reply, const char *code);
ngx_uint_t ngx_http_billing_redis_primary(redisReply *reply);
void ngx_http_billing_redis_heartbeat_handler(ngx_event_t *ev);

/* ngx_http_billing_redis_sentinel.c, ngx_http_billing_redis_ask.c */
ngx_int_t ngx_http_billing_sentinel_watch(ngx_cycle_t *cycle,
    ngx_http_billing_redis_t *rd);
void ngx_http_billing_sentinel_unwatch(ngx_http_billing_redis_t *rd);
void ngx_http_billing_sentinel_ask(ngx_http_billing_sentinel_ask_t *ask,
    ngx_http_billing_sentinel_done_pt done, void *data);
void ngx_http_billing_sentinel_abort(ngx_http_billing_sentinel_ask_t *ask);
void ngx_http_billing_sentinel_stale(ngx_http_billing_sentinel_ask_t *ask);
ngx_int_t ngx_http_billing_sentinel_addr(u_char *ip, size_t ip_len,
    u_char *port, size_t port_len, ngx_sockaddr_t *sa, socklen_t *socklen);
void ngx_http_billing_sentinel_demoted(ngx_http_billing_redis_t *rd);
void ngx_http_billing_redis_resolved(void *data,
    ngx_http_billing_sentinel_ask_t *ask, ngx_int_t rc);


#endif /* _NGX_HTTP_BILLING_REDIS_INT_H_INCLUDED_ */
