
/*
 * Internals of billing_meter shared by its two halves: the counts
 * (ngx_http_billing_meter.c) and their flush to Redis
 * (ngx_http_billing_meter_flush.c, ngx_http_billing_meter_report.c).
 * Only those include it.
 */


#ifndef _NGX_HTTP_BILLING_METER_INT_H_INCLUDED_
#define _NGX_HTTP_BILLING_METER_INT_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_billing_meter.h"


/* a count's key: "<marketplace>/<subscription id>" */
#define NGX_HTTP_BILLING_METER_KEY_MAX                                      \
    (NGX_HTTP_BILLING_MARKET_NAME_MAX + 1 + NGX_BILLING_SUB_ID_MAX)

/* workers of a node the zone knows of */
#define NGX_HTTP_BILLING_METER_PIDS       1024


typedef struct {
    ngx_rbtree_node_t                   node;      /* key: a hash */
    ngx_queue_t                         queue;
    time_t                              start;
    int64_t                             units;
    u_char                              len;
    u_char                              id[1];
} ngx_http_billing_count_t;


/* a count's key, "<marketplace>/<id>", in its two parts */
typedef struct {
    ngx_str_t                           market;
    ngx_str_t                           id;
} ngx_http_billing_meter_key_t;


/* counts, in the shared zone or in a worker's overflow */
typedef struct {
    ngx_rbtree_t                        rbtree;
    ngx_rbtree_node_t                   sentinel;
    ngx_queue_t                         queue;
    ngx_uint_t                          entries;
    int64_t                             units;

    /* the shared zone's only: the workers that run and do not exit */
    ngx_pid_t                          *pids;
} ngx_http_billing_counts_t;


struct ngx_http_billing_meter_s {
    ngx_shm_zone_t                     *shm_zone;
    ngx_slab_pool_t                    *shpool;
    ngx_http_billing_counts_t          *sh;

    /* this worker's, from here on */
    ngx_http_billing_main_conf_t       *bmcf;
    ngx_log_t                          *log;
    ngx_http_billing_counts_t           overflow;
    time_t                              overflow_warned;

    ngx_event_t                         tick;       /* cancelable */
    ngx_event_t                         hold;       /* at exit: not */
    ngx_event_t                         kick;       /* posted */
    ngx_connection_t                   *watcher;

    ngx_str_t                           worker;     /* host:pid */
    ngx_str_t                           flush_key;  /* of the batch */
    size_t                              flush_prefix;
    uint64_t                            seq;

    /* the batch: taken, not acknowledged yet */
    u_char                             *buf;
    size_t                              len;
    ngx_uint_t                          entries;
    int64_t                             units;
    int64_t                             mark;       /* 0: none */
    int64_t                             last_mark;  /* of a whole take */
    unsigned                            pending:1;
    unsigned                            queued:1;   /* sent at least once */

    ngx_pool_t                         *pool;       /* the send under way */
    unsigned                            failing:1;
    unsigned                            exiting:1;
    unsigned                            final_sent:1;
    unsigned                            gave_up:1;
};


/* ngx_http_billing_meter.c: puts back in the zone what a worker held */
void ngx_http_billing_meter_give_back(ngx_http_billing_meter_t *meter);

/* ngx_http_billing_meter_report.c: units sent, and counts lost */
void ngx_http_billing_meter_sent_units(ngx_http_billing_meter_t *meter);
void ngx_http_billing_meter_lost(ngx_http_billing_meter_t *meter,
    const char *why, ngx_uint_t others);

/* ngx_http_billing_meter_flush.c: the flush script */
void ngx_http_billing_meter_script_init(void);


#endif /* _NGX_HTTP_BILLING_METER_INT_H_INCLUDED_ */
