
/*
 * A Redis client on nginx's event loop: one pipelined connection per
 * worker, hiredis only as the RESP codec.
 */


#ifndef _NGX_HTTP_BILLING_REDIS_H_INCLUDED_
#define _NGX_HTTP_BILLING_REDIS_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_event.h>
#include <ngx_event_connect.h>

#include <hiredis/hiredis.h>

#include "ngx_http_billing_module.h"


typedef struct ngx_http_billing_redis_cmd_s  ngx_http_billing_redis_cmd_t;

/*
 * Called once per command: reply is NULL when the command failed (no
 * connection, timeout, connection lost); it is freed after the call.
 */
typedef void (*ngx_http_billing_redis_handler_pt)(void *data,
    redisReply *reply);


/* a message on one of the subscribed channels */
typedef void (*ngx_http_billing_redis_message_pt)(void *data,
    ngx_str_t *channel, ngx_str_t *message);

/* the subscription is up (1: messages will come) or lost (0) */
typedef void (*ngx_http_billing_redis_state_pt)(void *data, ngx_uint_t up);


typedef struct {
    ngx_str_t                     source;
    u_char                        sha1[40];

    /* writes nothing: with replicas= no WAIT follows it */
    unsigned                      readonly:1;
} ngx_http_billing_redis_script_t;


ngx_http_billing_redis_t *ngx_http_billing_redis_create(ngx_cycle_t *cycle,
    ngx_http_billing_redis_conf_t *conf);
void ngx_http_billing_redis_destroy(ngx_http_billing_redis_t *rd);

/*
 * Makes rd a subscriber: every (re)connection SUBSCRIBEs to the n
 * channels (kept, not copied) after AUTH and SELECT, and messages go to
 * the handler.  Called right after ngx_http_billing_redis_create(); rd
 * is then for nothing else.
 */
void ngx_http_billing_redis_subscribe(ngx_http_billing_redis_t *rd,
    ngx_str_t *channels, ngx_uint_t n,
    ngx_http_billing_redis_message_pt message,
    ngx_http_billing_redis_state_pt state, void *data);

/*
 * Queues a command; NULL when it cannot be sent now (Redis is known to be
 * down and the next attempt is not due yet), so that callers fail fast.
 */
ngx_http_billing_redis_cmd_t *ngx_http_billing_redis_send(
    ngx_http_billing_redis_t *rd, ngx_uint_t argc, ngx_str_t *argv,
    ngx_http_billing_redis_handler_pt handler, void *data);

/* EVALSHA, falling back to EVAL once if Redis does not know the script */
ngx_http_billing_redis_cmd_t *ngx_http_billing_redis_eval(
    ngx_http_billing_redis_t *rd, ngx_http_billing_redis_script_t *script,
    ngx_uint_t nkeys, ngx_uint_t argc, ngx_str_t *argv,
    ngx_http_billing_redis_handler_pt handler, void *data);

/* the handler will not be called; for callers that go away first */
void ngx_http_billing_redis_cancel(ngx_http_billing_redis_cmd_t *cmd);

/* cancels the command when pool is destroyed before its reply came */
ngx_int_t ngx_http_billing_redis_bind(ngx_http_billing_redis_cmd_t *cmd,
    ngx_pool_t *pool);

/* billing_redis */
char *ngx_http_billing_redis_conf(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);

/* this worker's connection for commands, bmcf->redis */
ngx_int_t ngx_http_billing_redis_init_worker(ngx_cycle_t *cycle,
    ngx_http_billing_main_conf_t *bmcf);
void ngx_http_billing_redis_exit_worker(ngx_http_billing_main_conf_t *bmcf);

void ngx_http_billing_redis_script_init(
    ngx_http_billing_redis_script_t *script, const char *source);


#endif /* _NGX_HTTP_BILLING_REDIS_H_INCLUDED_ */
