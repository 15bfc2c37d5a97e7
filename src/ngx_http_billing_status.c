
/*
 * billing_status: this node's counters and their Prometheus exposition.
 *
 * Every counter is an atomic in a shared zone of its own, added to by
 * every worker without a lock; the zone outlives a reload, so counters
 * only start again from zero when nginx does, or when a reload changes
 * the marketplaces (a counter is never shown under another one's
 * label).  Labels are fixed lists, never a subscription id: a metric is
 * a block of counters, one per combination of its labels' values, and
 * one such block per marketplace but for the node's own metrics (Redis:
 * one for all).  A histogram has, per label value, a count per bucket,
 * the sum of what it saw in milliseconds and the number of observations.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_billing_module.h"
#include "ngx_http_billing_status.h"
#include "ngx_http_billing_json.h"


#define NGX_HTTP_BILLING_STATUS_ZONE  "billing_status"

#define NGX_HTTP_BILLING_COUNTER      0
#define NGX_HTTP_BILLING_GAUGE        1
#define NGX_HTTP_BILLING_HISTOGRAM    2

#define NGX_HTTP_BILLING_PER_NODE     0
#define NGX_HTTP_BILLING_PER_MARKET   1


typedef struct {
    const char                 *name;
    const char                 *help;
    ngx_uint_t                  type;
    ngx_uint_t                  market;     /* NGX_HTTP_BILLING_PER_* */
    const char                 *label1;
    const char                **values1;
    ngx_uint_t                  n1;
    const char                 *label2;
    const char                **values2;
    ngx_uint_t                  n2;
} ngx_http_billing_metric_t;


/* in the zone: the counters, and the layout they were made for */
typedef struct {
    uint32_t                    signature;
    ngx_uint_t                  nstats;
    ngx_atomic_t                stats[1];
} ngx_http_billing_status_shm_t;


/*
 * A configuration's layout, the zone's data: where each metric starts,
 * for the first marketplace (the others follow it), the number of
 * counters in all and a signature of the marketplaces' names.
 */
typedef struct {
    ngx_uint_t                      offsets[NGX_HTTP_BILLING_M_N];

    /* from one marketplace's counters to the next; 0: the node's */
    ngx_uint_t                      strides[NGX_HTTP_BILLING_M_N];
    ngx_uint_t                      nstats;
    uint32_t                        signature;

    /* of the configuration, in index order: their labels */
    ngx_http_billing_srv_conf_t   **markets;
    ngx_uint_t                      nmarkets;

    /* NULL until the zone is there */
    ngx_http_billing_status_shm_t  *sh;
} ngx_http_billing_status_t;


static ngx_http_billing_status_t *ngx_http_billing_status_find(
    ngx_cycle_t *cycle);
static ngx_http_billing_status_t *ngx_http_billing_status_current(void);
static ngx_int_t ngx_http_billing_status_init_zone(ngx_shm_zone_t *shm_zone,
    void *data);
static ngx_atomic_t *ngx_http_billing_stat_block(ngx_uint_t metric,
    ngx_uint_t market);
static ngx_int_t ngx_http_billing_status_handler(ngx_http_request_t *r);
static u_char *ngx_http_billing_status_write(ngx_http_billing_status_t *st,
    u_char *p, u_char *last);
static u_char *ngx_http_billing_status_labels(u_char *p, u_char *last,
    ngx_http_billing_metric_t *m, ngx_str_t *market, ngx_uint_t i,
    ngx_uint_t j, const char *le);


/* histogram buckets, in milliseconds */
static ngx_msec_t  ngx_http_billing_buckets[] = {
    1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000
};

#define NGX_HTTP_BILLING_NBUCKETS                                           \
    (sizeof(ngx_http_billing_buckets) / sizeof(ngx_msec_t))

/* per label value: the buckets and +Inf, the sum; the count is +Inf's */
#define NGX_HTTP_BILLING_HSLOTS  (NGX_HTTP_BILLING_NBUCKETS + 2)


static const char  *ngx_http_billing_event_types[] = {
    "invoice.created", "invoice.finalized", "invoice.paid",
    "invoice.payment_failed", "invoice.voided",
    "invoice.marked_uncollectible", "invoice.other", "other"
};

static const char  *ngx_http_billing_outcomes[] = {
    "changed", "unchanged", "ignored", "malformed", "unavailable"
};

static const char  *ngx_http_billing_rejections[] = {
    "no_header", "malformed", "no_v1", "mismatch", "tolerance"
};

static const char  *ngx_http_billing_decisions[] = {
    "allow", "allow_unavailable", "payment_required", "payment_overdue",
    "payment_failed",
    "subscription_cancelled", "unknown_subscription",
    "subscription_required", "billing_unavailable"
};

static const char  *ngx_http_billing_cache_results[] = {
    "hit", "miss", "stale"
};

static const char  *ngx_http_billing_connections[] = {
    "commands", "subscriber"
};

static const char  *ngx_http_billing_redis_errors[] = {
    "connect", "timeout", "closed", "protocol", "reply"
};

static const char  *ngx_http_billing_endpoints[] = {
    "customers", "invoiceitems", "invoices", "finalize", "void",
    "invoice", "other"
};

static const char  *ngx_http_billing_classes[] = {
    "2xx", "4xx", "429", "5xx", "error"
};

static const char  *ngx_http_billing_kinds[] = {
    "initial", "period", "final"
};

static const char  *ngx_http_billing_reconcile_results[] = {
    "changed", "unchanged", "gone", "failed"
};

static const char  *ngx_http_billing_reconcile_sources[] = {
    "round", "refresh"
};


#define ngx_http_billing_values(a)  a, sizeof(a) / sizeof(a[0])


/* in the order of ngx_http_billing_metric_e */
static ngx_http_billing_metric_t  ngx_http_billing_metrics[] = {

    { "billing_webhook_events_total",
      "Stripe webhook events taken, by type and outcome",
      NGX_HTTP_BILLING_COUNTER, NGX_HTTP_BILLING_PER_MARKET,
      "type", ngx_http_billing_values(ngx_http_billing_event_types),
      "outcome", ngx_http_billing_values(ngx_http_billing_outcomes) },

    { "billing_webhook_rejected_total",
      "Stripe webhook requests refused for their signature, by reason",
      NGX_HTTP_BILLING_COUNTER, NGX_HTTP_BILLING_PER_MARKET,
      "reason", ngx_http_billing_values(ngx_http_billing_rejections),
      NULL, NULL, 1 },

    { "billing_gate_decisions_total",
      "Gate decisions, by answer",
      NGX_HTTP_BILLING_COUNTER, NGX_HTTP_BILLING_PER_MARKET,
      "decision", ngx_http_billing_values(ngx_http_billing_decisions),
      NULL, NULL, 1 },

    { "billing_gate_cache_total",
      "Gate lookups in billing_cache, by result",
      NGX_HTTP_BILLING_COUNTER, NGX_HTTP_BILLING_PER_MARKET,
      "result", ngx_http_billing_values(ngx_http_billing_cache_results),
      NULL, NULL, 1 },

    { "billing_redis_connections_up",
      "Redis connections of this node's workers that are up",
      NGX_HTTP_BILLING_GAUGE, NGX_HTTP_BILLING_PER_NODE,
      "connection", ngx_http_billing_values(ngx_http_billing_connections),
      NULL, NULL, 1 },

    { "billing_redis_reconnects_total",
      "Redis connections made again after a failure",
      NGX_HTTP_BILLING_COUNTER, NGX_HTTP_BILLING_PER_NODE,
      "connection", ngx_http_billing_values(ngx_http_billing_connections),
      NULL, NULL, 1 },

    { "billing_redis_errors_total",
      "Redis failures, by kind",
      NGX_HTTP_BILLING_COUNTER, NGX_HTTP_BILLING_PER_NODE,
      "kind", ngx_http_billing_values(ngx_http_billing_redis_errors),
      NULL, NULL, 1 },

    { "billing_redis_command_duration_seconds",
      "Time from queueing a Redis command to its reply",
      NGX_HTTP_BILLING_HISTOGRAM, NGX_HTTP_BILLING_PER_NODE,
      NULL, NULL, 1, NULL, NULL, 1 },

    { "billing_stripe_calls_total",
      "Stripe API attempts, by endpoint and status class",
      NGX_HTTP_BILLING_COUNTER, NGX_HTTP_BILLING_PER_MARKET,
      "endpoint", ngx_http_billing_values(ngx_http_billing_endpoints),
      "class", ngx_http_billing_values(ngx_http_billing_classes) },

    { "billing_stripe_retries_total",
      "Stripe API attempts retried, by endpoint",
      NGX_HTTP_BILLING_COUNTER, NGX_HTTP_BILLING_PER_MARKET,
      "endpoint", ngx_http_billing_values(ngx_http_billing_endpoints),
      NULL, NULL, 1 },

    { "billing_stripe_call_duration_seconds",
      "Time a Stripe API attempt took, by endpoint",
      NGX_HTTP_BILLING_HISTOGRAM, NGX_HTTP_BILLING_PER_MARKET,
      "endpoint", ngx_http_billing_values(ngx_http_billing_endpoints),
      NULL, NULL, 1 },

    { "billing_meter_units_counted_total",
      "Units of consumption counted by this node",
      NGX_HTTP_BILLING_COUNTER, NGX_HTTP_BILLING_PER_MARKET,
      NULL, NULL, 1, NULL, NULL, 1 },

    { "billing_meter_units_sent_total",
      "Units of consumption this node's workers had Redis accept",
      NGX_HTTP_BILLING_COUNTER, NGX_HTTP_BILLING_PER_MARKET,
      NULL, NULL, 1, NULL, NULL, 1 },

    { "billing_invoices_issued_total",
      "Invoices this node finalized at Stripe, by kind",
      NGX_HTTP_BILLING_COUNTER, NGX_HTTP_BILLING_PER_MARKET,
      "kind", ngx_http_billing_values(ngx_http_billing_kinds),
      NULL, NULL, 1 },

    { "billing_scheduler_backlog",
      "Subscriptions due for the scheduler, as last seen in Redis",
      NGX_HTTP_BILLING_GAUGE, NGX_HTTP_BILLING_PER_MARKET,
      NULL, NULL, 1, NULL, NULL, 1 },

    { "billing_scheduler_failures_total",
      "Scheduler runs that failed and were put off",
      NGX_HTTP_BILLING_COUNTER, NGX_HTTP_BILLING_PER_MARKET,
      NULL, NULL, 1, NULL, NULL, 1 },

    { "billing_reconcile_invoices_total",
      "Open invoices asked about at Stripe, by result (changed: what no "
      "webhook had said yet) and by who asked (a round, a refresh)",
      NGX_HTTP_BILLING_COUNTER, NGX_HTTP_BILLING_PER_MARKET,
      "result", ngx_http_billing_values(ngx_http_billing_reconcile_results),
      "source", ngx_http_billing_values(ngx_http_billing_reconcile_sources) },

    { "billing_reconcile_open_invoices",
      "Open invoices reconciliation watches, as last seen in Redis",
      NGX_HTTP_BILLING_GAUGE, NGX_HTTP_BILLING_PER_MARKET,
      NULL, NULL, 1, NULL, NULL, 1 },
};


/*
 * The layout this process counts in: its cycle's, looked up again when
 * ngx_cycle changes (a worker's never does).  Not set by
 * postconfiguration: a reload failing after it would leave the running
 * configuration's workers with another's layout.
 */
static volatile ngx_cycle_t        *ngx_http_billing_status_cycle;
static ngx_http_billing_status_t   *ngx_http_billing_status_cur;

/* the same, for ngx_http_billing_stat_add() inline: where each counts */
volatile ngx_cycle_t               *ngx_http_billing_stat_cycle;
ngx_http_billing_stat_slot_t        ngx_http_billing_stat_slots[
                                        NGX_HTTP_BILLING_M_N];
ngx_uint_t                          ngx_http_billing_stat_nmarkets;


static ngx_uint_t
ngx_http_billing_metric_size(ngx_http_billing_metric_t *m)
{
    ngx_uint_t  n;

    n = m->n1 * m->n2;

    return (m->type == NGX_HTTP_BILLING_HISTOGRAM)
           ? n * NGX_HTTP_BILLING_HSLOTS : n;
}


ngx_int_t
ngx_http_billing_status_init(ngx_conf_t *cf)
{
    u_char                         *p;
    size_t                          size;
    uint32_t                        crc;
    ngx_str_t                       name, *mname;
    ngx_uint_t                      i, n;
    ngx_shm_zone_t                 *shm_zone;
    ngx_http_billing_metric_t      *m;
    ngx_http_billing_status_t      *st;
    ngx_http_billing_main_conf_t   *bmcf;

    bmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_billing_module);

    st = ngx_pcalloc(cf->pool, sizeof(ngx_http_billing_status_t));
    if (st == NULL) {
        return NGX_ERROR;
    }

    /* the servers are merged: every marketplace is known */

    st->markets = bmcf->markets.elts;
    st->nmarkets = bmcf->markets.nelts;

    n = 0;

    for (i = 0; i < NGX_HTTP_BILLING_M_N; i++) {
        m = &ngx_http_billing_metrics[i];

        st->offsets[i] = n;
        st->strides[i] = m->market ? ngx_http_billing_metric_size(m) : 0;
        n += ngx_http_billing_metric_size(m)
             * (m->market ? st->nmarkets : 1);
    }

    st->nstats = n;

    /*
     * The names in order, not their number: a reload that renames or
     * reorders the marketplaces gives their indexes to others.
     */

    ngx_crc32_init(crc);

    for (i = 0; i < st->nmarkets; i++) {
        mname = &st->markets[i]->name;
        ngx_crc32_update(&crc, mname->data, mname->len);
        ngx_crc32_update(&crc, (u_char *) "/", 1);
    }

    ngx_crc32_update(&crc, (u_char *) &n, sizeof(ngx_uint_t));
    ngx_crc32_final(crc);

    st->signature = crc;

    /* the slab pool's own pages beside the counters */

    size = ngx_align(offsetof(ngx_http_billing_status_shm_t, stats)
                     + n * sizeof(ngx_atomic_t), ngx_pagesize)
           + 8 * ngx_pagesize;

    /*
     * A zone per layout, named by its signature: a reload that keeps the
     * marketplaces keeps the zone, one that changes them gets a new one
     * from zero; the old workers count on in theirs until they exit.
     */

    p = ngx_pnalloc(cf->pool, sizeof(NGX_HTTP_BILLING_STATUS_ZONE ":") - 1
                              + 8);
    if (p == NULL) {
        return NGX_ERROR;
    }

    name.data = p;
    name.len = ngx_sprintf(p, NGX_HTTP_BILLING_STATUS_ZONE ":%08xD",
                           st->signature)
               - p;

    shm_zone = ngx_shared_memory_add(cf, &name, size,
                                     &ngx_http_billing_module);
    if (shm_zone == NULL) {
        return NGX_ERROR;
    }

    shm_zone->init = ngx_http_billing_status_init_zone;
    shm_zone->data = st;

    return NGX_OK;
}


/* the layout of a cycle's zone, NULL if none */

static ngx_http_billing_status_t *
ngx_http_billing_status_find(ngx_cycle_t *cycle)
{
    ngx_uint_t        i;
    ngx_list_part_t  *part;
    ngx_shm_zone_t   *shm_zone;

    part = &cycle->shared_memory.part;
    shm_zone = part->elts;

    for (i = 0; /* void */ ; i++) {

        if (i >= part->nelts) {
            if (part->next == NULL) {
                return NULL;
            }

            part = part->next;
            shm_zone = part->elts;
            i = 0;
        }

        if (shm_zone[i].tag == &ngx_http_billing_module
            && shm_zone[i].init == ngx_http_billing_status_init_zone)
        {
            return shm_zone[i].data;
        }
    }
}


static ngx_http_billing_status_t *
ngx_http_billing_status_current(void)
{
    if (ngx_http_billing_status_cycle != ngx_cycle) {
        ngx_http_billing_status_cur =
                  ngx_http_billing_status_find((ngx_cycle_t *) ngx_cycle);
        ngx_http_billing_status_cycle = ngx_cycle;
    }

    return ngx_http_billing_status_cur;
}


void
ngx_http_billing_stat_refresh(void)
{
    ngx_uint_t                     i;
    ngx_http_billing_metric_t     *m;
    ngx_http_billing_status_t     *st;
    ngx_http_billing_stat_slot_t  *slot;

    st = ngx_http_billing_status_current();

    for (i = 0; i < NGX_HTTP_BILLING_M_N; i++) {
        m = &ngx_http_billing_metrics[i];
        slot = &ngx_http_billing_stat_slots[i];

        /* a zone not there yet: its init_zone asks again */

        slot->base = (st && st->sh) ? &st->sh->stats[st->offsets[i]] : NULL;
        slot->stride = st ? st->strides[i] : 0;
        slot->n1 = m->n1;
        slot->n2 = m->n2;
    }

    ngx_http_billing_stat_nmarkets = st ? st->nmarkets : 0;
    ngx_http_billing_stat_cycle = ngx_cycle;
}


static ngx_int_t
ngx_http_billing_status_init_zone(ngx_shm_zone_t *shm_zone, void *data)
{
    ngx_http_billing_status_t  *st = shm_zone->data;

    size_t                          size;
    ngx_slab_pool_t                *shpool;
    ngx_http_billing_status_shm_t  *sh;

    /* a new cycle, maybe at a freed one's address: found again */

    ngx_http_billing_status_cycle = NULL;
    ngx_http_billing_stat_cycle = NULL;

    shpool = (ngx_slab_pool_t *) shm_zone->shm.addr;
    sh = shpool->data;

    /*
     * A reload, or a zone the master kept: the counters go on.  The
     * zone's name says its layout; checked all the same.
     */

    if (sh && (data || shm_zone->shm.exists)
        && sh->signature == st->signature && sh->nstats == st->nstats)
    {
        st->sh = sh;
        return NGX_OK;
    }

    size = offsetof(ngx_http_billing_status_shm_t, stats)
           + st->nstats * sizeof(ngx_atomic_t);

    sh = ngx_slab_calloc(shpool, size);
    if (sh == NULL) {
        return NGX_ERROR;
    }

    sh->signature = st->signature;
    sh->nstats = st->nstats;

    shpool->data = sh;
    st->sh = sh;

    return NGX_OK;
}


/* a metric's counters of a marketplace (the node's: the only ones) */

static ngx_atomic_t *
ngx_http_billing_stat_block(ngx_uint_t metric, ngx_uint_t market)
{
    ngx_http_billing_status_t  *st;
    ngx_http_billing_metric_t  *m;

    st = ngx_http_billing_status_current();

    if (st == NULL || st->sh == NULL) {
        return NULL;
    }

    m = &ngx_http_billing_metrics[metric];

    if (!m->market) {
        market = 0;

    } else if (market >= st->nmarkets) {
        return NULL;
    }

    return &st->sh->stats[st->offsets[metric]
                          + market * ngx_http_billing_metric_size(m)];
}


void
ngx_http_billing_stat_set(ngx_uint_t metric, ngx_uint_t market,
    ngx_atomic_int_t n)
{
    ngx_atomic_t  *v;

    v = ngx_http_billing_stat_block(metric, market);

    if (v == NULL) {
        return;
    }

    *v = n;
}


void
ngx_http_billing_stat_time(ngx_uint_t metric, ngx_uint_t market,
    ngx_uint_t l1, ngx_msec_t ms)
{
    ngx_uint_t                  b;
    ngx_atomic_t               *h;
    ngx_http_billing_metric_t  *m;

    m = &ngx_http_billing_metrics[metric];

    if (l1 >= m->n1) {
        return;
    }

    h = ngx_http_billing_stat_block(metric, market);

    if (h == NULL) {
        return;
    }

    h += l1 * NGX_HTTP_BILLING_HSLOTS;

    for (b = 0; b < NGX_HTTP_BILLING_NBUCKETS; b++) {
        if (ms <= ngx_http_billing_buckets[b]) {
            break;
        }
    }

    /* the buckets are counted apart: the exposition adds them up */

    (void) ngx_atomic_fetch_add(&h[b], 1);
    (void) ngx_atomic_fetch_add(&h[NGX_HTTP_BILLING_NBUCKETS + 1], ms);
}


void
ngx_http_billing_stat_stripe(ngx_uint_t market, ngx_uint_t endpoint,
    ngx_uint_t status, ngx_uint_t json, ngx_uint_t none, ngx_msec_t ms)
{
    ngx_uint_t  class;

    /*
     * nginx's own 502 and 504 (no connection, no answer in time) come
     * without Stripe's JSON: no answer, as the rest.
     */

    if (none || ((status == NGX_HTTP_BAD_GATEWAY
                  || status == NGX_HTTP_GATEWAY_TIME_OUT)
                 && !json))
    {
        class = NGX_HTTP_BILLING_CLASS_ERROR;

    } else if (status == NGX_HTTP_TOO_MANY_REQUESTS) {
        class = NGX_HTTP_BILLING_CLASS_429;

    } else if (status >= NGX_HTTP_INTERNAL_SERVER_ERROR) {
        class = NGX_HTTP_BILLING_CLASS_5XX;

    } else if (status >= NGX_HTTP_SPECIAL_RESPONSE) {
        class = NGX_HTTP_BILLING_CLASS_4XX;

    } else {
        class = NGX_HTTP_BILLING_CLASS_2XX;
    }

    ngx_http_billing_stat_inc(NGX_HTTP_BILLING_M_STRIPE_CALLS, market,
                              endpoint, class);
    ngx_http_billing_stat_time(NGX_HTTP_BILLING_M_STRIPE_DURATION, market,
                               endpoint, ms);
}


ngx_uint_t
ngx_http_billing_stat_endpoint(ngx_uint_t method, ngx_str_t *path)
{
    u_char  *p, *last;

    if (path->len > 13 && ngx_strncmp(path->data, "/v1/invoices/", 13) == 0)
    {
        p = path->data + 13;
        last = path->data + path->len;

        p = ngx_strlchr(p, last, '/');

        if (p == NULL) {
            return (method == NGX_HTTP_GET) ? NGX_HTTP_BILLING_EP_INVOICE_GET
                                            : NGX_HTTP_BILLING_EP_OTHER;
        }

        if (last - p == 9 && ngx_strncmp(p, "/finalize", 9) == 0) {
            return NGX_HTTP_BILLING_EP_FINALIZE;
        }

        if (last - p == 5 && ngx_strncmp(p, "/void", 5) == 0) {
            return NGX_HTTP_BILLING_EP_VOID;
        }

        return NGX_HTTP_BILLING_EP_OTHER;
    }

    if (path->len == 12 && ngx_strncmp(path->data, "/v1/invoices", 12) == 0)
    {
        return NGX_HTTP_BILLING_EP_INVOICES;
    }

    if (path->len == 13 && ngx_strncmp(path->data, "/v1/customers", 13) == 0)
    {
        return NGX_HTTP_BILLING_EP_CUSTOMERS;
    }

    if (path->len == 16
        && ngx_strncmp(path->data, "/v1/invoiceitems", 16) == 0)
    {
        return NGX_HTTP_BILLING_EP_INVOICEITEMS;
    }

    return NGX_HTTP_BILLING_EP_OTHER;
}


/* the index of s among n label values, n if none */

static ngx_uint_t
ngx_http_billing_stat_find(const char **values, ngx_uint_t n, ngx_str_t *s)
{
    ngx_uint_t  i;

    for (i = 0; i < n; i++) {
        if (ngx_strlen(values[i]) == s->len
            && ngx_strncmp(values[i], s->data, s->len) == 0)
        {
            return i;
        }
    }

    return n;
}


ngx_uint_t
ngx_http_billing_stat_event(ngx_str_t *type)
{
    ngx_uint_t  i;

    i = ngx_http_billing_stat_find(ngx_http_billing_event_types,
                                   NGX_HTTP_BILLING_EV_INVOICE_OTHER, type);

    if (i < NGX_HTTP_BILLING_EV_INVOICE_OTHER) {
        return i;
    }

    if (type->len > 8 && ngx_strncmp(type->data, "invoice.", 8) == 0) {
        return NGX_HTTP_BILLING_EV_INVOICE_OTHER;
    }

    return NGX_HTTP_BILLING_EV_OTHER;
}


ngx_uint_t
ngx_http_billing_stat_decision(const char *code)
{
    ngx_uint_t  i;

    /* the gate's codes are the label's values */

    for (i = NGX_HTTP_BILLING_DEC_PAYMENT_REQUIRED;
         i < NGX_HTTP_BILLING_DEC_N;
         i++)
    {
        if (ngx_strcmp(code, ngx_http_billing_decisions[i]) == 0) {
            return i;
        }
    }

    return NGX_HTTP_BILLING_DEC_N;
}


ngx_uint_t
ngx_http_billing_stat_kind(ngx_str_t *kind)
{
    return ngx_http_billing_stat_find(ngx_http_billing_kinds,
                                      NGX_HTTP_BILLING_KIND_N, kind);
}


char *
ngx_http_billing_status_conf(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    static ngx_str_t   file;
    static ngx_uint_t  line;

    return ngx_http_billing_content(cf, ngx_http_billing_status_handler,
                                    &file, &line);
}


static ngx_int_t
ngx_http_billing_status_handler(ngx_http_request_t *r)
{
    size_t                       size, labels, line;
    ngx_int_t                    rc;
    ngx_buf_t                   *b;
    ngx_uint_t                   i, lines;
    ngx_chain_t                  out;
    ngx_http_billing_metric_t   *m;
    ngx_http_billing_status_t   *st;

    rc = ngx_http_discard_request_body(r);

    if (rc != NGX_OK) {
        return rc;
    }

    if (!(r->method & (NGX_HTTP_GET | NGX_HTTP_HEAD))) {

        if (ngx_http_billing_add_header(r, "Allow", "GET, HEAD") != NGX_OK) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        return ngx_http_billing_send_error(r, NGX_HTTP_NOT_ALLOWED,
                                           "method_not_allowed",
                                           "billing_status answers GET "
                                           "and HEAD");
    }

    st = ngx_http_billing_status_current();

    if (st == NULL || st->sh == NULL) {
        return NGX_HTTP_SERVICE_UNAVAILABLE;
    }

    /*
     * Generous: a line per counter, per bucket, sum and count, of each
     * marketplace with its label, and the comments.
     */

    labels = 0;

    for (i = 0; i < st->nmarkets; i++) {
        labels += sizeof("marketplace=\"\",") - 1 + st->markets[i]->label.len;
    }

    size = 0;

    for (i = 0; i < NGX_HTTP_BILLING_M_N; i++) {
        m = &ngx_http_billing_metrics[i];

        lines = m->n1 * m->n2;

        if (m->type == NGX_HTTP_BILLING_HISTOGRAM) {
            lines *= NGX_HTTP_BILLING_NBUCKETS + 3;
        }

        line = m->market ? 160 * st->nmarkets + labels : 160;

        size += 512 + lines * line;
    }

    b = ngx_create_temp_buf(r->pool, size);
    if (b == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    b->last = ngx_http_billing_status_write(st, b->last, b->end);
    b->last_buf = (r == r->main) ? 1 : 0;
    b->last_in_chain = 1;

    r->headers_out.status = NGX_HTTP_OK;
    r->headers_out.content_length_n = b->last - b->pos;
    ngx_str_set(&r->headers_out.content_type, "text/plain; version=0.0.4");
    r->headers_out.content_type_len = r->headers_out.content_type.len;

    if (ngx_http_billing_add_header(r, "Cache-Control", "no-store")
        != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    out.buf = b;
    out.next = NULL;

    return ngx_http_output_filter(r, &out);
}


static u_char *
ngx_http_billing_status_write(ngx_http_billing_status_t *st, u_char *p,
    u_char *last)
{
    u_char                      le[NGX_INT_T_LEN + 8];
    uint64_t                    cumulative;
    ngx_str_t                  *label;
    ngx_uint_t                  i, j, k, b, mk, nm;
    ngx_atomic_t               *v;
    ngx_http_billing_metric_t  *m;

    static const char  *types[] = { "counter", "gauge", "histogram" };

    for (i = 0; i < NGX_HTTP_BILLING_M_N; i++) {
        m = &ngx_http_billing_metrics[i];

        p = ngx_slprintf(p, last, "# HELP %s %s.\n# TYPE %s %s\n",
                         m->name, m->help, m->name, types[m->type]);

        nm = m->market ? st->nmarkets : 1;

        for (mk = 0; mk < nm; mk++) {
            v = &st->sh->stats[st->offsets[i]
                               + mk * ngx_http_billing_metric_size(m)];
            label = m->market ? &st->markets[mk]->label : NULL;

            for (j = 0; j < m->n1; j++) {
                for (k = 0; k < m->n2; k++) {

                    if (m->type != NGX_HTTP_BILLING_HISTOGRAM) {
                        p = ngx_slprintf(p, last, "%s", m->name);
                        p = ngx_http_billing_status_labels(p, last, m, label,
                                                           j, k, NULL);
                        p = ngx_slprintf(p, last, " %uA\n",
                                         v[j * m->n2 + k]);
                        continue;
                    }

                    /* the buckets, cumulative, then +Inf, sum and count */

                    cumulative = 0;

                    for (b = 0; b <= NGX_HTTP_BILLING_NBUCKETS; b++) {
                        cumulative += v[j * NGX_HTTP_BILLING_HSLOTS + b];

                        if (b < NGX_HTTP_BILLING_NBUCKETS) {
                            *ngx_sprintf(le, "%.3f",
                                         (double) ngx_http_billing_buckets[b]
                                         / 1000) = '\0';
                        } else {
                            *ngx_cpymem(le, "+Inf", 4) = '\0';
                        }

                        p = ngx_slprintf(p, last, "%s_bucket", m->name);
                        p = ngx_http_billing_status_labels(p, last, m, label,
                                                           j, k,
                                                           (char *) le);
                        p = ngx_slprintf(p, last, " %uL\n", cumulative);
                    }

                    p = ngx_slprintf(p, last, "%s_sum", m->name);
                    p = ngx_http_billing_status_labels(p, last, m, label, j,
                                                       k, NULL);
                    p = ngx_slprintf(p, last, " %.3f\n",
                                     (double) v[j * NGX_HTTP_BILLING_HSLOTS
                                                + NGX_HTTP_BILLING_NBUCKETS
                                                + 1]
                                     / 1000);

                    /* as +Inf, read once: a scrape never sees them differ */

                    p = ngx_slprintf(p, last, "%s_count", m->name);
                    p = ngx_http_billing_status_labels(p, last, m, label, j,
                                                       k, NULL);
                    p = ngx_slprintf(p, last, " %uL\n", cumulative);
                }
            }
        }
    }

    return p;
}


/* the marketplace's label first, then the metric's own, then "le" */

static u_char *
ngx_http_billing_status_labels(u_char *p, u_char *last,
    ngx_http_billing_metric_t *m, ngx_str_t *market, ngx_uint_t i,
    ngx_uint_t j, const char *le)
{
    const char  *sep;

    if (market == NULL && m->label1 == NULL && le == NULL) {
        return p;
    }

    p = ngx_slprintf(p, last, "{");
    sep = "";

    if (market) {
        p = ngx_slprintf(p, last, "marketplace=\"%V\"", market);
        sep = ",";
    }

    if (m->label1) {
        p = ngx_slprintf(p, last, "%s%s=\"%s\"", sep, m->label1,
                         m->values1[i]);
        sep = ",";
    }

    if (m->label2) {
        p = ngx_slprintf(p, last, ",%s=\"%s\"", m->label2, m->values2[j]);
    }

    if (le) {
        p = ngx_slprintf(p, last, "%sle=\"%s\"", sep, le);
    }

    return ngx_slprintf(p, last, "}");
}
