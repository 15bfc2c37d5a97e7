
/*
 * billing_status: this node's counters, most of them per marketplace,
 * in shared memory for all its workers (a reload keeps them), and their
 * Prometheus exposition.
 */


#ifndef _NGX_HTTP_BILLING_STATUS_H_INCLUDED_
#define _NGX_HTTP_BILLING_STATUS_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>


/* the metrics; their labels' values are the enums below */
typedef enum {
    NGX_HTTP_BILLING_M_WEBHOOK_EVENTS = 0,  /* type, outcome */
    NGX_HTTP_BILLING_M_WEBHOOK_REJECTED,    /* reason */
    NGX_HTTP_BILLING_M_GATE_DECISIONS,      /* decision */
    NGX_HTTP_BILLING_M_GATE_CACHE,          /* result */
    NGX_HTTP_BILLING_M_REDIS_UP,            /* connection (gauge) */
    NGX_HTTP_BILLING_M_REDIS_RECONNECTS,    /* connection */
    NGX_HTTP_BILLING_M_REDIS_ERRORS,        /* kind */
    NGX_HTTP_BILLING_M_REDIS_DURATION,      /* histogram */
    NGX_HTTP_BILLING_M_STRIPE_CALLS,        /* endpoint, class */
    NGX_HTTP_BILLING_M_STRIPE_RETRIES,      /* endpoint */
    NGX_HTTP_BILLING_M_STRIPE_DURATION,     /* endpoint (histogram) */
    NGX_HTTP_BILLING_M_METER_COUNTED,
    NGX_HTTP_BILLING_M_METER_SENT,
    NGX_HTTP_BILLING_M_INVOICES_ISSUED,     /* kind */
    NGX_HTTP_BILLING_M_SCHEDULER_BACKLOG,   /* gauge, set */
    NGX_HTTP_BILLING_M_SCHEDULER_FAILURES,
    NGX_HTTP_BILLING_M_RECONCILED,          /* result */
    NGX_HTTP_BILLING_M_RECONCILE_OPEN,      /* gauge, set */
    NGX_HTTP_BILLING_M_N
} ngx_http_billing_metric_e;


typedef enum {
    NGX_HTTP_BILLING_EV_INVOICE_CREATED = 0,
    NGX_HTTP_BILLING_EV_INVOICE_FINALIZED,
    NGX_HTTP_BILLING_EV_INVOICE_PAID,
    NGX_HTTP_BILLING_EV_INVOICE_PAYMENT_FAILED,
    NGX_HTTP_BILLING_EV_INVOICE_VOIDED,
    NGX_HTTP_BILLING_EV_INVOICE_UNCOLLECTIBLE,
    NGX_HTTP_BILLING_EV_INVOICE_OTHER,
    NGX_HTTP_BILLING_EV_OTHER,
    NGX_HTTP_BILLING_EV_N
} ngx_http_billing_event_type_e;


typedef enum {
    NGX_HTTP_BILLING_OUT_CHANGED = 0,
    NGX_HTTP_BILLING_OUT_UNCHANGED,
    NGX_HTTP_BILLING_OUT_IGNORED,
    NGX_HTTP_BILLING_OUT_MALFORMED,
    NGX_HTTP_BILLING_OUT_UNAVAILABLE,
    NGX_HTTP_BILLING_OUT_N
} ngx_http_billing_outcome_e;


typedef enum {
    NGX_HTTP_BILLING_REJ_NO_HEADER = 0,
    NGX_HTTP_BILLING_REJ_MALFORMED,
    NGX_HTTP_BILLING_REJ_NO_V1,
    NGX_HTTP_BILLING_REJ_MISMATCH,
    NGX_HTTP_BILLING_REJ_TOLERANCE,
    NGX_HTTP_BILLING_REJ_N
} ngx_http_billing_rejection_e;


typedef enum {
    NGX_HTTP_BILLING_DEC_ALLOW = 0,
    NGX_HTTP_BILLING_DEC_ALLOW_UNAVAILABLE,
    NGX_HTTP_BILLING_DEC_PAYMENT_REQUIRED,
    NGX_HTTP_BILLING_DEC_PAYMENT_OVERDUE,
    NGX_HTTP_BILLING_DEC_PAYMENT_FAILED,
    NGX_HTTP_BILLING_DEC_CANCELLED,
    NGX_HTTP_BILLING_DEC_UNKNOWN,
    NGX_HTTP_BILLING_DEC_REQUIRED,
    NGX_HTTP_BILLING_DEC_UNAVAILABLE,
    NGX_HTTP_BILLING_DEC_N
} ngx_http_billing_decision_e;


typedef enum {
    NGX_HTTP_BILLING_CACHE_HIT = 0,
    NGX_HTTP_BILLING_CACHE_MISS,
    NGX_HTTP_BILLING_CACHE_STALE,
    NGX_HTTP_BILLING_CACHE_N
} ngx_http_billing_cache_result_e;


typedef enum {
    NGX_HTTP_BILLING_CONN_COMMANDS = 0,
    NGX_HTTP_BILLING_CONN_SUBSCRIBER,
    NGX_HTTP_BILLING_CONN_N
} ngx_http_billing_connection_e;


typedef enum {
    NGX_HTTP_BILLING_RERR_CONNECT = 0,
    NGX_HTTP_BILLING_RERR_TIMEOUT,
    NGX_HTTP_BILLING_RERR_CLOSED,
    NGX_HTTP_BILLING_RERR_PROTOCOL,
    NGX_HTTP_BILLING_RERR_REPLY,
    NGX_HTTP_BILLING_RERR_N
} ngx_http_billing_redis_error_e;


typedef enum {
    NGX_HTTP_BILLING_EP_CUSTOMERS = 0,
    NGX_HTTP_BILLING_EP_INVOICEITEMS,
    NGX_HTTP_BILLING_EP_INVOICES,
    NGX_HTTP_BILLING_EP_FINALIZE,
    NGX_HTTP_BILLING_EP_VOID,
    NGX_HTTP_BILLING_EP_INVOICE_GET,
    NGX_HTTP_BILLING_EP_OTHER,
    NGX_HTTP_BILLING_EP_N
} ngx_http_billing_endpoint_e;


typedef enum {
    NGX_HTTP_BILLING_CLASS_2XX = 0,
    NGX_HTTP_BILLING_CLASS_4XX,
    NGX_HTTP_BILLING_CLASS_429,
    NGX_HTTP_BILLING_CLASS_5XX,
    NGX_HTTP_BILLING_CLASS_ERROR,
    NGX_HTTP_BILLING_CLASS_N
} ngx_http_billing_class_e;


typedef enum {
    NGX_HTTP_BILLING_KIND_INITIAL = 0,
    NGX_HTTP_BILLING_KIND_PERIOD,
    NGX_HTTP_BILLING_KIND_FINAL,
    NGX_HTTP_BILLING_KIND_N
} ngx_http_billing_kind_e;


typedef enum {
    NGX_HTTP_BILLING_REC_CHANGED = 0,
    NGX_HTTP_BILLING_REC_UNCHANGED,
    NGX_HTTP_BILLING_REC_GONE,
    NGX_HTTP_BILLING_REC_FAILED,
    NGX_HTTP_BILLING_REC_N
} ngx_http_billing_reconcile_result_e;


typedef enum {
    NGX_HTTP_BILLING_REC_ROUND = 0,
    NGX_HTTP_BILLING_REC_REFRESH,
    NGX_HTTP_BILLING_REC_SOURCES
} ngx_http_billing_reconcile_source_e;


/* the zone, made by postconfiguration */
ngx_int_t ngx_http_billing_status_init(ngx_conf_t *cf);

/* billing_status */
char *ngx_http_billing_status_conf(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);

/*
 * Counters and gauges: metric, the index of the marketplace it is of
 * (ignored by the node's own, the redis_* ones), its labels' values (0
 * when it has none).
 */
void ngx_http_billing_stat_set(ngx_uint_t metric, ngx_uint_t market,
    ngx_atomic_int_t n);

/* a histogram's observation, in milliseconds */
void ngx_http_billing_stat_time(ngx_uint_t metric, ngx_uint_t market,
    ngx_uint_t l1, ngx_msec_t ms);

/*
 * A Stripe attempt of a marketplace: its status, whether Stripe's JSON
 * came, whether any answer came at all, how long it took.
 */
void ngx_http_billing_stat_stripe(ngx_uint_t market, ngx_uint_t endpoint,
    ngx_uint_t status, ngx_uint_t json, ngx_uint_t none, ngx_msec_t ms);

/* the label values of a Stripe call and an event type */
ngx_uint_t ngx_http_billing_stat_endpoint(ngx_uint_t method, ngx_str_t *path);
ngx_uint_t ngx_http_billing_stat_event(ngx_str_t *type);
ngx_uint_t ngx_http_billing_stat_decision(const char *code);
ngx_uint_t ngx_http_billing_stat_kind(ngx_str_t *kind);


/* where a metric's counters are in this process's cycle */
typedef struct {
    ngx_atomic_t               *base;    /* the first marketplace's; NULL */
    ngx_uint_t                  stride;  /* to the next one's; 0: node's */
    ngx_uint_t                  n1;
    ngx_uint_t                  n2;
} ngx_http_billing_stat_slot_t;

extern volatile ngx_cycle_t          *ngx_http_billing_stat_cycle;
extern ngx_http_billing_stat_slot_t   ngx_http_billing_stat_slots[];
extern ngx_uint_t                     ngx_http_billing_stat_nmarkets;

/* the slots, for ngx_cycle */
void ngx_http_billing_stat_refresh(void);


/* inline: a gated request counts three times */

static ngx_inline void
ngx_http_billing_stat_add(ngx_uint_t metric, ngx_uint_t market,
    ngx_uint_t l1, ngx_uint_t l2, ngx_atomic_int_t n)
{
    ngx_http_billing_stat_slot_t  *s;

    if (ngx_http_billing_stat_cycle != ngx_cycle) {
        ngx_http_billing_stat_refresh();
    }

    s = &ngx_http_billing_stat_slots[metric];

    if (s->base == NULL || l1 >= s->n1 || l2 >= s->n2
        || (s->stride && market >= ngx_http_billing_stat_nmarkets))
    {
        return;
    }

    (void) ngx_atomic_fetch_add(&s->base[market * s->stride + l1 * s->n2 + l2],
                                n);
}


#define ngx_http_billing_stat_inc(metric, market, l1, l2)                   \
    ngx_http_billing_stat_add(metric, market, l1, l2, 1)


#endif /* _NGX_HTTP_BILLING_STATUS_H_INCLUDED_ */
