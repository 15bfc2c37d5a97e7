
/*
 * billing_meter: what the gate let through, counted in the log phase.
 *
 * A request adds its units to a count keyed by (subscription, period
 * start) in the shared zone "billing_meter", under the zone's mutex:
 * no I/O, no waiting.  The zone never evicts a count; when it is full,
 * counts go to this worker's overflow, in its own memory.  The zone is
 * named, sized and tagged the same in every cycle, so that a reload
 * keeps it and what it holds.
 *
 * Sending the counts to Redis, and what a stop may lose:
 * ngx_http_billing_meter_flush.c.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_billing_status.h"
#include "ngx_http_billing_meter_int.h"
#include "ngx_http_billing_gate.h"
#include "ngx_http_billing_cache.h"
#include "ngx_billing_event.h"


/* units one request may count: sums stay far from overflowing */
#define NGX_HTTP_BILLING_METER_UNITS_MAX  1000000000000LL

/* the overflow is logged at [warn] at most this often */
#define NGX_HTTP_BILLING_METER_WARN       60

#define NGX_HTTP_BILLING_METER_ZONE       "billing_meter"


static ngx_int_t ngx_http_billing_meter_init_zone(ngx_shm_zone_t *shm_zone,
    void *data);
static void ngx_http_billing_counts_init(ngx_http_billing_counts_t *counts);
static void ngx_http_billing_counts_insert_value(ngx_rbtree_node_t *temp,
    ngx_rbtree_node_t *node, ngx_rbtree_node_t *sentinel);
static ngx_inline ngx_http_billing_count_t *ngx_http_billing_counts_find(
    ngx_http_billing_counts_t *counts, ngx_http_billing_meter_key_t *key,
    time_t start, uint32_t hash);
static ngx_int_t ngx_http_billing_meter_handler(ngx_http_request_t *r);
static void ngx_http_billing_meter_add(ngx_http_billing_meter_t *meter,
    ngx_uint_t market, ngx_http_billing_meter_key_t *key, time_t start,
    int64_t units, uint32_t hash, ngx_log_t *log);
static ngx_http_billing_count_t *ngx_http_billing_count_init(
    ngx_http_billing_count_t *c, ngx_http_billing_meter_key_t *key,
    time_t start, uint32_t hash);
static ngx_int_t ngx_http_billing_meter_zone_add(
    ngx_http_billing_meter_t *meter, ngx_http_billing_meter_key_t *key,
    time_t start, int64_t units, uint32_t hash);
static void ngx_http_billing_meter_overflow_add(
    ngx_http_billing_meter_t *meter, ngx_http_billing_meter_key_t *key,
    time_t start, int64_t units, uint32_t hash, ngx_log_t *log);
static void ngx_http_billing_meter_key_split(u_char *p, size_t len,
    ngx_http_billing_meter_key_t *key);
static uint32_t ngx_http_billing_meter_hash(ngx_http_billing_meter_key_t *key,
    time_t start);


char *
ngx_http_billing_meter_conf(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_billing_loc_conf_t  *blcf = conf;

    ngx_str_t                         *value;
    ngx_http_compile_complex_value_t   ccv;

    if (blcf->meter != NGX_CONF_UNSET) {
        return "is duplicate";
    }

    value = cf->args->elts;

    if (ngx_strcmp(value[1].data, "off") == 0) {
        blcf->meter = NGX_HTTP_BILLING_METER_OFF;
        blcf->meter_value = NULL;
        return NGX_CONF_OK;
    }

    if (ngx_strcmp(value[1].data, "on") == 0) {
        blcf->meter = NGX_HTTP_BILLING_METER_ON;
        blcf->meter_value = NULL;
        return NGX_CONF_OK;
    }

    if (value[1].len == 0) {
        return "has an empty value";
    }

    blcf->meter_value = ngx_palloc(cf->pool, sizeof(ngx_http_complex_value_t));
    if (blcf->meter_value == NULL) {
        return NGX_CONF_ERROR;
    }

    ngx_memzero(&ccv, sizeof(ngx_http_compile_complex_value_t));

    ccv.cf = cf;
    ccv.value = &value[1];
    ccv.complex_value = blcf->meter_value;

    if (ngx_http_compile_complex_value(&ccv) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    blcf->meter = NGX_HTTP_BILLING_METER_VALUE;

    return NGX_CONF_OK;
}


ngx_int_t
ngx_http_billing_meter_init(ngx_conf_t *cf)
{
    ngx_str_t                      name;
    ngx_array_t                   *handlers;
    ngx_http_handler_pt           *h;
    ngx_http_billing_meter_t      *meter;
    ngx_http_core_main_conf_t     *cmcf;
    ngx_http_billing_main_conf_t  *bmcf;

    bmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_billing_module);

    /* nothing is metered where nothing is gated */

    if (bmcf->gate_file.len == 0 || bmcf->redis_conf == NULL) {
        return NGX_OK;
    }

    ngx_http_billing_meter_script_init();

    ngx_str_set(&name, NGX_HTTP_BILLING_METER_ZONE);

    if (bmcf->meter_zone_size < 8 * ngx_pagesize) {
        ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                      "\"billing_meter_zone\" of %uz bytes is too small, "
                      "%uz at least", bmcf->meter_zone_size, 8 * ngx_pagesize);
        return NGX_ERROR;
    }

    meter = ngx_pcalloc(cf->pool, sizeof(ngx_http_billing_meter_t));
    if (meter == NULL) {
        return NGX_ERROR;
    }

    meter->shm_zone = ngx_shared_memory_add(cf, &name, bmcf->meter_zone_size,
                                            &ngx_http_billing_module);
    if (meter->shm_zone == NULL) {
        return NGX_ERROR;
    }

    if (meter->shm_zone->data) {
        ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                      "the shared memory zone \"%V\" is the meter's: "
                      "\"billing_cache\" needs another name", &name);
        return NGX_ERROR;
    }

    meter->shm_zone->init = ngx_http_billing_meter_init_zone;
    meter->shm_zone->data = meter;

    ngx_http_billing_counts_init(&meter->overflow);

    cmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_core_module);

    /*
     * First of the log phase, whose handlers run in the order of the
     * array: access_log's $billing_units is then what was counted.
     */

    handlers = &cmcf->phases[NGX_HTTP_LOG_PHASE].handlers;

    h = ngx_array_push(handlers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    h = handlers->elts;
    ngx_memmove(&h[1], &h[0], (handlers->nelts - 1) * sizeof(*h));
    h[0] = ngx_http_billing_meter_handler;

    bmcf->meter = meter;

    return NGX_OK;
}


static ngx_int_t
ngx_http_billing_meter_init_zone(ngx_shm_zone_t *shm_zone, void *data)
{
    ngx_http_billing_meter_t  *ometer = data;

    ngx_http_billing_meter_t  *meter;

    meter = shm_zone->data;

    if (ometer) {
        /* a reload: the counts stay, the new workers send them */
        meter->shpool = ometer->shpool;
        meter->sh = ometer->sh;
        return NGX_OK;
    }

    meter->shpool = (ngx_slab_pool_t *) shm_zone->shm.addr;

    if (shm_zone->shm.exists) {
        meter->sh = meter->shpool->data;
        return NGX_OK;
    }

    meter->sh = ngx_slab_alloc(meter->shpool,
                               sizeof(ngx_http_billing_counts_t));
    if (meter->sh == NULL) {
        return NGX_ERROR;
    }

    meter->shpool->data = meter->sh;

    ngx_http_billing_counts_init(meter->sh);

    meter->sh->pids = ngx_slab_calloc(meter->shpool,
                                      NGX_HTTP_BILLING_METER_PIDS
                                      * sizeof(ngx_pid_t));
    if (meter->sh->pids == NULL) {
        return NGX_ERROR;
    }

    meter->shpool->log_ctx = ngx_slab_alloc(meter->shpool,
                                 sizeof(" in billing_meter zone"));
    if (meter->shpool->log_ctx == NULL) {
        return NGX_ERROR;
    }

    ngx_sprintf(meter->shpool->log_ctx, " in billing_meter zone%Z");

    /* a full zone is handled by the overflow, which says so itself */

    meter->shpool->log_nomem = 0;

    return NGX_OK;
}


static void
ngx_http_billing_counts_init(ngx_http_billing_counts_t *counts)
{
    ngx_rbtree_init(&counts->rbtree, &counts->sentinel,
                    ngx_http_billing_counts_insert_value);
    ngx_queue_init(&counts->queue);

    counts->entries = 0;
    counts->units = 0;
    counts->pids = NULL;
}


/*
 * A count's key is "<marketplace>/<id>", compared in its two parts as
 * given, never built for a count that exists: by length, then bytes
 * (ngx_http_billing_key_cmp()'s order).
 */

static ngx_inline ngx_int_t
ngx_http_billing_count_cmp(ngx_http_billing_count_t *c,
    ngx_http_billing_meter_key_t *key, time_t start)
{
    size_t     n, m;
    u_char    *slash;
    ngx_int_t  rc;

    if (start != c->start) {
        return (start < c->start) ? -1 : 1;
    }

    n = key->market.len + 1 + key->id.len;

    if (n != c->len) {
        return (n < c->len) ? -1 : 1;
    }

    /*
     * Field by field (the marketplace's length, its name, the id): the
     * words key_cmp() compares are an order only of strings of one
     * length.  Neither a name nor an id has a "/".
     */

    slash = ngx_strlchr(c->id, c->id + c->len, '/');
    m = slash ? (size_t) (slash - c->id) : c->len;

    if (key->market.len != m) {
        return (key->market.len < m) ? -1 : 1;
    }

    rc = ngx_http_billing_key_cmp(key->market.data, c->id, m);

    if (rc) {
        return rc;
    }

    return ngx_http_billing_key_cmp(key->id.data, c->id + m + 1,
                                    key->id.len);
}


static void
ngx_http_billing_counts_insert_value(ngx_rbtree_node_t *temp,
    ngx_rbtree_node_t *node, ngx_rbtree_node_t *sentinel)
{
    ngx_rbtree_node_t              **p;
    ngx_http_billing_count_t        *c, *ct;
    ngx_http_billing_meter_key_t     key;

    c = (ngx_http_billing_count_t *) node;

    ngx_http_billing_meter_key_split(c->id, c->len, &key);

    for ( ;; ) {

        if (node->key < temp->key) {
            p = &temp->left;

        } else if (node->key > temp->key) {
            p = &temp->right;

        } else {
            ct = (ngx_http_billing_count_t *) temp;

            p = (ngx_http_billing_count_cmp(ct, &key, c->start) < 0)
                ? &temp->left : &temp->right;
        }

        if (*p == sentinel) {
            break;
        }

        temp = *p;
    }

    *p = node;
    node->parent = temp;
    node->left = sentinel;
    node->right = sentinel;
    ngx_rbt_red(node);
}


/* "<marketplace>/<id>": ids have no "/", the last one separates */

static void
ngx_http_billing_meter_key_split(u_char *p, size_t len,
    ngx_http_billing_meter_key_t *key)
{
    size_t  i;

    for (i = len; i > 0 && p[i - 1] != '/'; i--) { /* void */ }

    if (i == 0) {
        /* not a key of this version: all id, under the default's "" */
        key->market.data = p;
        key->market.len = 0;
        key->id.data = p;
        key->id.len = len;
        return;
    }

    key->market.data = p;
    key->market.len = i - 1;
    key->id.data = p + i;
    key->id.len = len - i;
}


static uint32_t
ngx_http_billing_meter_hash(ngx_http_billing_meter_key_t *key, time_t start)
{
    return ngx_http_billing_key_hash(&key->market, &key->id)
           ^ (uint32_t) start;
}


/* inline: under the lock of every count */

static ngx_inline ngx_http_billing_count_t *
ngx_http_billing_counts_find(ngx_http_billing_counts_t *counts,
    ngx_http_billing_meter_key_t *key, time_t start, uint32_t hash)
{
    ngx_int_t           rc;
    ngx_rbtree_node_t  *node, *sentinel;

    node = counts->rbtree.root;
    sentinel = counts->rbtree.sentinel;

    while (node != sentinel) {

        if (hash < node->key) {
            node = node->left;
            continue;
        }

        if (hash > node->key) {
            node = node->right;
            continue;
        }

        rc = ngx_http_billing_count_cmp((ngx_http_billing_count_t *) node,
                                        key, start);

        if (rc == 0) {
            return (ngx_http_billing_count_t *) node;
        }

        node = (rc < 0) ? node->left : node->right;
    }

    return NULL;
}


static ngx_int_t
ngx_http_billing_meter_handler(ngx_http_request_t *r)
{
    u_char                        *p;
    int64_t                        units;
    uint32_t                       hash;
    ngx_str_t                      value;
    ngx_uint_t                     status;
    ngx_http_billing_srv_conf_t   *m;
    ngx_http_billing_loc_conf_t   *blcf;
    ngx_http_billing_metered_t     mt;
    ngx_http_billing_main_conf_t  *bmcf;
    ngx_http_billing_meter_key_t   key;

    if (r != r->main) {
        return NGX_OK;
    }

    status = r->err_status ? r->err_status : r->headers_out.status;

    if (status == 0 || status >= NGX_HTTP_BAD_REQUEST) {
        return NGX_OK;
    }

    if (ngx_http_billing_gate_metered(r, &mt) != NGX_OK
        || mt.meter_conf->meter == NGX_HTTP_BILLING_METER_OFF)
    {
        return NGX_OK;
    }

    blcf = mt.meter_conf;

    bmcf = ngx_http_get_module_main_conf(r, ngx_http_billing_module);

    if (bmcf->meter == NULL) {
        return NGX_OK;
    }

    units = 1;
    ngx_str_null(&value);

    if (blcf->meter == NGX_HTTP_BILLING_METER_VALUE) {

        if (ngx_http_complex_value(r, blcf->meter_value, &value) != NGX_OK) {
            return NGX_OK;
        }

        units = 0;

        for (p = value.data; p < value.data + value.len; p++) {

            if (*p < '0' || *p > '9') {
                goto invalid;
            }

            units = units * 10 + (*p - '0');

            if (units > NGX_HTTP_BILLING_METER_UNITS_MAX) {
                goto invalid;
            }
        }

        if (units == 0) {
            return NGX_OK;
        }
    }

    /*
     * Counted as "<marketplace>/<id>": the name, not an index a reload
     * may change while the zone keeps its counts; "" is the default's.
     * The gate's hash of the two serves when it is of this marketplace.
     */

    m = ngx_http_billing_market(r);

    if (m->name.len + 1 + mt.id.len > NGX_HTTP_BILLING_METER_KEY_MAX) {
        return NGX_OK;
    }

    key.market = m->name;
    key.id = mt.id;

    hash = (m == mt.market) ? mt.hash ^ (uint32_t) mt.period_start
                            : ngx_http_billing_meter_hash(&key,
                                                          mt.period_start);

    ngx_http_billing_meter_add(bmcf->meter, m->index, &key, mt.period_start,
                               units, hash, r->connection->log);

    *mt.units += units;

    return NGX_OK;

invalid:

    ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                  "billing meter: \"%V\" is not a number of units, "
                  "nothing counted for subscription \"%V\"", &value, &mt.id);

    return NGX_OK;
}


static void
ngx_http_billing_meter_add(ngx_http_billing_meter_t *meter, ngx_uint_t market,
    ngx_http_billing_meter_key_t *key, time_t start, int64_t units,
    uint32_t hash, ngx_log_t *log)
{
    ngx_http_billing_stat_add(NGX_HTTP_BILLING_M_METER_COUNTED, market, 0, 0,
                              units);

    if (ngx_http_billing_meter_zone_add(meter, key, start, units, hash)
        != NGX_OK)
    {
        /* the zone is full: this worker keeps the count, sends it itself */

        ngx_http_billing_meter_overflow_add(meter, key, start, units, hash,
                                            log);
    }

    /* a worker that exits sends what it counts until it is gone */

    if (meter->exiting && meter->pool == NULL && !meter->gave_up
        && !meter->kick.posted)
    {
        ngx_post_event(&meter->kick, &ngx_posted_events);
    }
}


/* a new count: its key written out, "<marketplace>/<id>" */

static ngx_http_billing_count_t *
ngx_http_billing_count_init(ngx_http_billing_count_t *c,
    ngx_http_billing_meter_key_t *key, time_t start, uint32_t hash)
{
    u_char  *p;

    c->node.key = hash;
    c->start = start;
    c->units = 0;
    c->len = (u_char) (key->market.len + 1 + key->id.len);

    p = ngx_cpymem(c->id, key->market.data, key->market.len);
    *p++ = '/';
    ngx_memcpy(p, key->id.data, key->id.len);

    return c;
}


static ngx_int_t
ngx_http_billing_meter_zone_add(ngx_http_billing_meter_t *meter,
    ngx_http_billing_meter_key_t *key, time_t start, int64_t units,
    uint32_t hash)
{
    ngx_http_billing_count_t   *c;
    ngx_http_billing_counts_t  *sh;

    sh = meter->sh;

    /* held briefly: mostly free */

    ngx_http_billing_shmtx_lock(&meter->shpool->mutex);

    c = ngx_http_billing_counts_find(sh, key, start, hash);

    if (c == NULL) {
        c = ngx_slab_alloc_locked(meter->shpool,
                                  offsetof(ngx_http_billing_count_t, id)
                                  + key->market.len + 1 + key->id.len);
        if (c == NULL) {
            ngx_http_billing_shmtx_unlock(&meter->shpool->mutex);
            return NGX_DECLINED;
        }

        ngx_http_billing_count_init(c, key, start, hash);

        ngx_rbtree_insert(&sh->rbtree, &c->node);
        ngx_queue_insert_tail(&sh->queue, &c->queue);
        sh->entries++;
    }

    c->units += units;
    sh->units += units;

    ngx_http_billing_shmtx_unlock(&meter->shpool->mutex);

    return NGX_OK;
}


static void
ngx_http_billing_meter_overflow_add(ngx_http_billing_meter_t *meter,
    ngx_http_billing_meter_key_t *key, time_t start, int64_t units,
    uint32_t hash, ngx_log_t *log)
{
    ngx_http_billing_count_t  *c;

    c = ngx_http_billing_counts_find(&meter->overflow, key, start, hash);

    if (c == NULL) {
        c = ngx_alloc(offsetof(ngx_http_billing_count_t, id)
                      + key->market.len + 1 + key->id.len, log);

        if (c == NULL) {
            ngx_log_error(NGX_LOG_CRIT, log, 0,
                          "billing meter: no memory, %L units of "
                          "subscription \"%V/%V\" lost", units,
                          &key->market, &key->id);
            return;
        }

        ngx_http_billing_count_init(c, key, start, hash);

        ngx_rbtree_insert(&meter->overflow.rbtree, &c->node);
        ngx_queue_insert_tail(&meter->overflow.queue, &c->queue);
        meter->overflow.entries++;
    }

    c->units += units;
    meter->overflow.units += units;

    if (ngx_time() - meter->overflow_warned >= NGX_HTTP_BILLING_METER_WARN) {
        meter->overflow_warned = ngx_time();

        ngx_log_error(NGX_LOG_WARN, log, 0,
                      "billing meter: the \"billing_meter_zone\" of %uz "
                      "bytes is full, counts wait in the worker's memory",
                      meter->shm_zone->shm.size);
    }
}


/*
 * A worker that gives up at exit puts back in the zone what Redis never
 * saw, when another worker is there to send it (the new workers of a
 * reload): only a stop loses it.
 */

void
ngx_http_billing_meter_give_back(ngx_http_billing_meter_t *meter)
{
    u_char                    *p, *last, *sp, *sp2, *nl;
    time_t                     start;
    off_t                      units;
    uint32_t                       hash;
    ngx_queue_t                   *q, *next;
    ngx_http_billing_count_t      *c;
    ngx_http_billing_meter_key_t   key;

    if (meter->pending && !meter->queued) {
        p = meter->buf;
        last = meter->buf + meter->len;

        while (p < last) {
            nl = ngx_strlchr(p, last, '\n');
            sp = ngx_strlchr(p, last, ' ');
            sp2 = sp ? ngx_strlchr(sp + 1, last, ' ') : NULL;

            if (nl == NULL || sp == NULL || sp2 == NULL || sp2 > nl) {
                break;
            }

            start = ngx_atotm(sp + 1, sp2 - sp - 1);
            units = ngx_atoof(sp2 + 1, nl - sp2 - 1);

            if (start != NGX_ERROR && units > 0
                && (size_t) (sp - p) <= NGX_HTTP_BILLING_METER_KEY_MAX)
            {
                ngx_http_billing_meter_key_split(p, sp - p, &key);
                hash = ngx_http_billing_meter_hash(&key, start);

                if (ngx_http_billing_meter_zone_add(meter, &key, start,
                                                    units, hash)
                    != NGX_OK)
                {
                    /* still this worker's, reported lost */
                    ngx_http_billing_meter_overflow_add(meter, &key, start,
                                                        units, hash,
                                                        meter->log);
                }
            }

            p = nl + 1;
        }

        meter->pending = 0;
    }

    for (q = ngx_queue_head(&meter->overflow.queue);
         q != ngx_queue_sentinel(&meter->overflow.queue);
         q = next)
    {
        next = ngx_queue_next(q);
        c = ngx_queue_data(q, ngx_http_billing_count_t, queue);

        ngx_http_billing_meter_key_split(c->id, c->len, &key);

        if (ngx_http_billing_meter_zone_add(meter, &key, c->start, c->units,
                                            c->node.key)
            != NGX_OK)
        {
            continue;
        }

        meter->overflow.entries--;
        meter->overflow.units -= c->units;

        ngx_queue_remove(q);
        ngx_rbtree_delete(&meter->overflow.rbtree, &c->node);
        ngx_free(c);
    }
}
