
/*
 * Internals of the scheduler shared by its three parts: the ticks and
 * leases (ngx_http_billing_scheduler.c), the runs
 * (ngx_http_billing_scheduler_run.c) and their invoices
 * (ngx_http_billing_scheduler_issue.c).  Only those three include it.
 */


#ifndef _NGX_HTTP_BILLING_SCHEDULER_INT_H_INCLUDED_
#define _NGX_HTTP_BILLING_SCHEDULER_INT_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_billing_scheduler.h"
#include "ngx_http_billing_invoice.h"
#include "ngx_http_billing_store.h"
#include "ngx_billing_plan.h"


/* a failed invoice is tried again after 1s, 2s, 4s... 5 minutes */
#define NGX_HTTP_BILLING_SCHED_RETRY_MAX    300


/* a worker's scheduler of one marketplace */
struct ngx_http_billing_scheduler_s {
    ngx_http_billing_main_conf_t       *bmcf;
    ngx_http_billing_srv_conf_t        *market;
    ngx_event_t                         tick;
    ngx_log_t                          *log;
    ngx_str_t                           worker;     /* host:pid */
    ngx_uint_t                          serial;     /* of lease tokens */
    ngx_uint_t                          running;
    ngx_msec_t                          paused_until;
    ngx_msec_t                          pause;
    ngx_pool_t                         *taking;     /* a take under way */
    ngx_str_t                           token;      /* its leases' */
};


typedef struct {
    ngx_pool_t                         *pool;
    ngx_log_t                           log;
    ngx_http_billing_owner_t            owner;
    ngx_http_billing_scheduler_t       *sched;
    ngx_str_t                           id;
    ngx_str_t                           token;      /* its lease's */
    ngx_event_t                         wait;
    ngx_uint_t                          steps;

    /* the subscription, as loaded */
    ngx_str_t                           state;
    ngx_str_t                           cancelled_from;
    ngx_str_t                           created;
    ngx_str_t                           org;
    ngx_str_t                           email;
    ngx_str_t                           name;
    ngx_str_t                           currency;
    ngx_str_t                           unit_price;
    ngx_str_t                           unit;
    int64_t                             base_price;
    ngx_int_t                           days_until_due;
    ngx_billing_period_t                period;
    int64_t                             start;      /* 0: never active */
    int64_t                             billed;     /* periods invoiced */
    int64_t                             finals;
    int64_t                             cancelled_at;
    int64_t                             cancelled_ms;
    int64_t                             retries;
    unsigned                            marks_ok:1;

    /* the invoice under way */
    ngx_str_t                           kind;
    int64_t                             seq;
    int64_t                             units;
    int64_t                             period_start;
    int64_t                             period_end;
    int64_t                             base_start;
    int64_t                             base_end;
    ngx_http_billing_invoice_job_t     *job;
} ngx_http_billing_run_t;


/* ngx_http_billing_scheduler.c */
ngx_msec_t ngx_http_billing_scheduler_lease(
    ngx_http_billing_main_conf_t *bmcf);

/* ngx_http_billing_scheduler_run.c */
void ngx_http_billing_scheduler_run_init(void);
void ngx_http_billing_run_start(ngx_http_billing_scheduler_t *sched,
    ngx_str_t *id, ngx_str_t *token);
void ngx_http_billing_run_load(ngx_http_billing_run_t *run);
void ngx_http_billing_run_park(ngx_http_billing_run_t *run,
    int64_t when, ngx_uint_t failed);
void ngx_http_billing_run_end(ngx_http_billing_run_t *run);
ngx_int_t ngx_http_billing_run_keys(ngx_http_billing_run_t *run,
    ngx_str_t *argv, const char *record);
int64_t ngx_http_billing_run_int(redisReply *hash, const char *field);

/* ngx_http_billing_scheduler_issue.c */
void ngx_http_billing_scheduler_issue_init(void);
void ngx_http_billing_run_freeze(ngx_http_billing_run_t *run,
    const char *kind, int64_t seq, int64_t bound, int64_t ps, int64_t pe,
    int64_t bs, int64_t be, ngx_uint_t extra);


#endif /* _NGX_HTTP_BILLING_SCHEDULER_INT_H_INCLUDED_ */
