
/*
 * ngx_http_billing_module: Stripe billing at the edge.
 *
 * The configuration, and what every part of the module shares.  Each
 * part declares its own entry points in its own header.
 */


#ifndef _NGX_HTTP_BILLING_MODULE_H_INCLUDED_
#define _NGX_HTTP_BILLING_MODULE_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>


#define NGX_HTTP_BILLING_VERSION     "0.6.0"

/* what a request's module context is: the first field of each */
#define NGX_HTTP_BILLING_CTX_API     1
#define NGX_HTTP_BILLING_CTX_STRIPE  2
#define NGX_HTTP_BILLING_CTX_GATE    3
#define NGX_HTTP_BILLING_CTX_ERROR   4


typedef struct ngx_http_billing_redis_s        ngx_http_billing_redis_t;
typedef struct ngx_http_billing_cache_s        ngx_http_billing_cache_t;
typedef struct ngx_http_billing_meter_s        ngx_http_billing_meter_t;
typedef struct ngx_http_billing_scheduler_s    ngx_http_billing_scheduler_t;
typedef struct ngx_http_billing_srv_conf_s     ngx_http_billing_srv_conf_t;


/* the head of a client request's context */
typedef struct {
    ngx_uint_t                        kind;

    /* nginx's error answer "match" is to become "status" with this body */
    ngx_int_t                         error_match;
    ngx_uint_t                        error_status;
    ngx_buf_t                        *error_body;
} ngx_http_billing_ctx_t;


typedef struct {
    /* the Redis server (one), or with "sentinel" every Sentinel address */
    ngx_addr_t                   *addrs;
    ngx_uint_t                    naddrs;

    ngx_uint_t                    db;
    ngx_str_t                     password;
    ngx_str_t                     prefix;
    ngx_msec_t                    connect_timeout;
    ngx_msec_t                    timeout;

    /* the primary's name at the Sentinels; empty: no Sentinel */
    ngx_str_t                     sentinel;
    ngx_str_t                     sentinel_password;

    /* a command counts as done once this many replicas have it (WAIT) */
    ngx_uint_t                    replicas;

    /* this worker's watch on the Sentinels, made when it starts */
    struct ngx_http_billing_sentinel_s  *watch;
} ngx_http_billing_redis_conf_t;


typedef struct {
    ngx_http_billing_redis_conf_t  *redis_conf;

    time_t                          webhook_tolerance;
    ngx_msec_t                      stripe_timeout;

    /* the directives that need others, for the checks at the end */
    ngx_str_t                       gate_file;
    ngx_uint_t                      gate_line;

    ngx_http_billing_cache_t       *cache;

    /*
     * of ngx_http_billing_srv_conf_t *: the marketplaces, the http
     * level's (the default one) first
     */
    ngx_array_t                     markets;

    /* of ngx_http_billing_server_t: the servers with billing_api */
    ngx_array_t                    *api_servers;

    /* metering: its shared zone (NULL: nothing is metered) */
    ngx_http_billing_meter_t       *meter;
    size_t                          meter_zone_size;
    ngx_msec_t                      meter_flush;

    /* billing_reconcile: how old an open invoice is asked about; 0: off */
    ngx_msec_t                      reconcile;

    /* period-end and final invoices */
    time_t                          invoice_delay;
    ngx_flag_t                      scheduler;

    /* this worker's connections: commands, and pub/sub for the cache */
    ngx_http_billing_redis_t       *redis;
    ngx_http_billing_redis_t       *subscriber;
} ngx_http_billing_main_conf_t;

/*
 * A server's settings, and what a marketplace is: the http level's
 * (the default marketplace), or a server's with billing_marketplace,
 * that every server naming the same marketplace must agree with.
 */
struct ngx_http_billing_srv_conf_s {
    /* billing_marketplace; "" is the default one, of the http level */
    ngx_str_t                       name;
    ngx_str_t                       name_file;
    ngx_uint_t                      name_line;

    /* of ngx_billing_secret_t */
    ngx_array_t                    *webhook_secrets;

    ngx_str_t                       stripe_key;
    ngx_str_t                       stripe_authorization;
    ngx_str_t                       stripe_api_version;
    ngx_str_t                       stripe_location;

    ngx_str_t                       portal_url;
    ngx_str_t                       api_token;

    /*
     * billing_overdue: a period invoice unpaid this long after its due
     * date makes its subscription past_due; 0: off
     */
    ngx_msec_t                      overdue;

    /* the server's billing_webhook and billing_api, for the checks */
    ngx_str_t                       webhook_file;
    ngx_uint_t                      webhook_line;
    ngx_str_t                       api_file;
    ngx_uint_t                      api_line;

    /* the marketplace the server belongs to */
    ngx_http_billing_srv_conf_t    *market;

    /* a marketplace's own, from here on */
    ngx_uint_t                      index;      /* in markets; 0: default */
    ngx_str_t                       label;      /* in metrics */
    ngx_str_t                       prefix;     /* of its Redis keys */
    ngx_str_t                       events;     /* its pub/sub channel */

    /*
     * The server whose billing_stripe_location the timers' calls go
     * through: its first with billing_api, else its first server.
     */
    ngx_http_conf_ctx_t            *timer_ctx;
    ngx_uint_t                      timer_api;

    /* this worker's */
    ngx_http_billing_scheduler_t   *sched;

    /*
     * When this worker last saw this account's rate limit (429), whoever
     * made the call: its timers take no new work for a while after it.
     * Marketplaces of one key share one (limited points to it).
     */
    ngx_msec_t                      stripe_limited;
    ngx_msec_t                     *limited;
};

/* the most marketplaces one configuration has; the longest name */
#define NGX_HTTP_BILLING_MARKETS_MAX      64
#define NGX_HTTP_BILLING_MARKET_NAME_MAX  32



typedef struct {
    ngx_http_complex_value_t       *gate;      /* NULL: off */

    /* nginx's own error answers here are made JSON */
    ngx_flag_t                      json_errors;

    /* the location billing_stripe_location leads to, checked: not merged */
    ngx_flag_t                      stripe_ok;

    /* billing_unavailable: 1 lets a request through when Redis is down */
    ngx_uint_t                      unavailable;

    /* billing_meter: NGX_HTTP_BILLING_METER_* */
    ngx_int_t                       meter;
    ngx_http_complex_value_t       *meter_value;
} ngx_http_billing_loc_conf_t;


#define NGX_HTTP_BILLING_METER_OFF    0
#define NGX_HTTP_BILLING_METER_ON     1   /* a unit per request */
#define NGX_HTTP_BILLING_METER_VALUE  2   /* meter_value units */


/* a server that makes Stripe calls, and the directive that makes it */
typedef struct {
    ngx_http_core_srv_conf_t       *cscf;
    ngx_str_t                       file;
    ngx_uint_t                      line;
} ngx_http_billing_server_t;


/*
 * Whom a piece of work belongs to: a client request, or a job of the
 * module's own.  Redis commands and Stripe calls made for it allocate
 * from its pool, log to its log, and are cancelled when the pool goes.
 */
typedef struct {
    ngx_pool_t                     *pool;
    ngx_log_t                      *log;
    ngx_http_billing_main_conf_t   *bmcf;

    /* the marketplace: its keys in Redis, its Stripe account */
    ngx_http_billing_srv_conf_t    *market;

    /* the server whose locations its Stripe subrequests go to */
    ngx_http_conf_ctx_t            *conf_ctx;
} ngx_http_billing_owner_t;


/* the marketplace of a request's server */
#define ngx_http_billing_market(r)                                           \
    ((ngx_http_billing_srv_conf_t *)                                        \
        ngx_http_get_module_srv_conf(r, ngx_http_billing_module))->market

/* the marketplace named so, NULL if none */
ngx_http_billing_srv_conf_t *ngx_http_billing_market_find(
    ngx_http_billing_main_conf_t *bmcf, ngx_str_t *name);

/* a client request as an owner */
void ngx_http_billing_owner_request(ngx_http_billing_owner_t *owner,
    ngx_http_request_t *r);

/* 1 if a directive's parameter is "name=...", with *rest the value */
ngx_uint_t ngx_http_billing_param(ngx_str_t *value, const char *name,
    ngx_str_t *rest);

/* the whole request body in one piece, read back from a file if need be */
ngx_int_t ngx_http_billing_request_body(ngx_http_request_t *r,
    ngx_str_t *body);

/* the header of that name in a list, NULL if none; *n: how many */
ngx_table_elt_t *ngx_http_billing_find_header(ngx_list_t *headers,
    const char *name, ngx_uint_t *n);

/*
 * Makes the location's content handler h (billing_webhook, billing_api),
 * remembering where the first such directive stands for later checks.
 */
char *ngx_http_billing_content(ngx_conf_t *cf, ngx_http_handler_pt h,
    ngx_str_t *file, ngx_uint_t *line);


/* the wall clock in milliseconds, as nodes compare it */
int64_t ngx_http_billing_now_ms(void);

/* bytes of a client's string a log line shows at most */
#define NGX_HTTP_BILLING_LOG_MAX  96

/* a client's string made safe for a log line (see the function) */
void ngx_http_billing_log_safe(ngx_pool_t *pool, ngx_str_t *in,
    ngx_str_t *out);


extern ngx_module_t  ngx_http_billing_module;


#endif /* _NGX_HTTP_BILLING_MODULE_H_INCLUDED_ */
