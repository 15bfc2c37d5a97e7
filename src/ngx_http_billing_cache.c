
/*
 * billing_cache: a red-black tree of subscriptions keyed by a hash of
 * their id, and a queue in order of use, in a shared zone, after
 * ngx_http_limit_req_module.  Entries carry the time Redis was asked;
 * whether that is still fresh enough is the gate's call.  They also
 * carry the subscription's current metering period, so that the meter
 * finds it with the decision and the calendar is worked out once a
 * period, not once a request.
 *
 * A hit, on every gated request, reads under the zone's lock and writes
 * nothing unless it must: the entry moves in the queue at most once a
 * second (the eviction order is by the second of last use), the period
 * only when it ended, and the strings are copied out only for an answer
 * that shows them (not an active subscription's).
 *
 * Every change of a subscription in Redis increments its version, and
 * the notification carries it.  The cache keeps the highest version seen
 * per id, and when: a change drops the entry's data but leaves its
 * version (a marker), and a lookup answer is stored unless a newer
 * version is known that came no earlier than the lookup was asked.  An
 * answer that was on its way during a change is never kept, and one that
 * came after it is.  A lookup asked after the change reflects it, so a
 * lower version then means Redis went back (a failover that lost the
 * last writes, a restore): what it says now is taken.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_billing_module.h"
#include "ngx_http_billing_cache.h"
#include "ngx_billing_state.h"


/* a version known, its data not: looked up as a miss */
#define NGX_HTTP_BILLING_CACHE_MARKER  0xff

/*
 * The same id in two marketplaces names two entries: the marketplace's
 * name is part of the key (not its index, which a reload may change
 * while the zone stays).
 */


typedef struct {
    u_char                      color;
    u_char                      state;
    u_char                      market_len;
    u_char                      id_len;       /* ids are 64 bytes at most */
    u_short                     invoice_len;
    u_short                     url_len;
    ngx_queue_t                 queue;
    ngx_msec_t                  fetched;
    uint64_t                    version;

    /* the meter's: see ngx_http_billing_entry_t */
    time_t                      anchor;
    time_t                      cur_start;
    time_t                      cur_end;
    int64_t                     period_seconds;
    u_char                      period_kind;

    /*
     * The second it last moved to the head of the queue, modulo 256:
     * only "this second or not" is asked, in a byte the entry had free.
     */
    u_char                      used;

    u_char                      data[1];  /* market, id, invoice, pay_url */
} ngx_http_billing_cache_node_t;


typedef struct {
    ngx_rbtree_t                rbtree;
    ngx_rbtree_node_t           sentinel;
    ngx_queue_t                 queue;
} ngx_http_billing_cache_sh_t;


typedef struct {
    ngx_http_billing_cache_sh_t  *sh;
    ngx_slab_pool_t              *shpool;
} ngx_http_billing_cache_zone_t;


static ngx_int_t ngx_http_billing_cache_init_zone(ngx_shm_zone_t *shm_zone,
    void *data);
static void ngx_http_billing_cache_rbtree_insert_value(
    ngx_rbtree_node_t *temp, ngx_rbtree_node_t *node,
    ngx_rbtree_node_t *sentinel);
static ngx_inline ngx_rbtree_node_t *ngx_http_billing_cache_lookup(
    ngx_http_billing_cache_zone_t *zone, ngx_str_t *market, ngx_str_t *id,
    uint32_t hash);
static void ngx_http_billing_cache_remove(ngx_http_billing_cache_zone_t *zone,
    ngx_rbtree_node_t *node);
static ngx_rbtree_node_t *ngx_http_billing_cache_alloc(
    ngx_http_billing_cache_zone_t *zone, size_t size, ngx_log_t *log);


char *
ngx_http_billing_cache_conf(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_billing_main_conf_t  *bmcf = conf;

    u_char                         *p;
    ssize_t                         size;
    ngx_str_t                      *value, name, s;
    ngx_int_t                       n;
    ngx_msec_t                     *time;
    ngx_uint_t                      i;
    ngx_http_billing_cache_t       *cache;
    ngx_http_billing_cache_zone_t  *zone;

    if (bmcf->cache) {
        return "is duplicate";
    }

    cache = ngx_pcalloc(cf->pool, sizeof(ngx_http_billing_cache_t));
    zone = ngx_pcalloc(cf->pool, sizeof(ngx_http_billing_cache_zone_t));
    if (cache == NULL || zone == NULL) {
        return NGX_CONF_ERROR;
    }

    cache->ttl = 10000;
    cache->negative_ttl = 5000;
    cache->stale = 60000;

    value = cf->args->elts;

    size = 0;
    ngx_str_null(&name);

    for (i = 1; i < cf->args->nelts; i++) {

        if (ngx_http_billing_param(&value[i], "zone=", &s)) {

            p = ngx_strlchr(s.data, s.data + s.len, ':');

            if (p == NULL) {
                goto invalid;
            }

            name.data = s.data;
            name.len = p - s.data;

            s.len -= p + 1 - s.data;
            s.data = p + 1;

            size = ngx_parse_size(&s);

            if (name.len == 0 || size == NGX_ERROR) {
                goto invalid;
            }

            if (size < (ssize_t) (8 * ngx_pagesize)) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "zone \"%V\" is too small in \"%V\" "
                                   "directive", &value[i], &cmd->name);
                return NGX_CONF_ERROR;
            }

            continue;
        }

        if (ngx_http_billing_param(&value[i], "ttl=", &s)) {
            time = &cache->ttl;

        } else if (ngx_http_billing_param(&value[i], "negative_ttl=", &s)) {
            time = &cache->negative_ttl;

        } else if (ngx_http_billing_param(&value[i], "stale=", &s)) {
            time = &cache->stale;

        } else {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "unknown parameter \"%V\" in \"%V\" "
                               "directive", &value[i], &cmd->name);
            return NGX_CONF_ERROR;
        }

        n = ngx_parse_time(&s, 0);
        if (n == NGX_ERROR) {
            goto invalid;
        }

        *time = (ngx_msec_t) n;
    }

    if (name.len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"%V\" must have \"zone\" parameter",
                           &cmd->name);
        return NGX_CONF_ERROR;
    }

    cache->shm_zone = ngx_shared_memory_add(cf, &name, size,
                                            &ngx_http_billing_module);
    if (cache->shm_zone == NULL) {
        return NGX_CONF_ERROR;
    }

    if (cache->shm_zone->data) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "zone \"%V\" is already used", &name);
        return NGX_CONF_ERROR;
    }

    cache->shm_zone->init = ngx_http_billing_cache_init_zone;
    cache->shm_zone->data = zone;

    bmcf->cache = cache;

    return NGX_CONF_OK;

invalid:

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "invalid parameter \"%V\" in \"%V\" directive",
                       &value[i], &cmd->name);
    return NGX_CONF_ERROR;
}


static ngx_int_t
ngx_http_billing_cache_init_zone(ngx_shm_zone_t *shm_zone, void *data)
{
    ngx_http_billing_cache_zone_t  *ozone = data;

    size_t                          len;
    ngx_http_billing_cache_zone_t  *zone;

    zone = shm_zone->data;

    if (ozone) {
        /* a reload: what was cached stays */
        zone->sh = ozone->sh;
        zone->shpool = ozone->shpool;
        return NGX_OK;
    }

    zone->shpool = (ngx_slab_pool_t *) shm_zone->shm.addr;

    if (shm_zone->shm.exists) {
        zone->sh = zone->shpool->data;
        return NGX_OK;
    }

    zone->sh = ngx_slab_alloc(zone->shpool,
                              sizeof(ngx_http_billing_cache_sh_t));
    if (zone->sh == NULL) {
        return NGX_ERROR;
    }

    zone->shpool->data = zone->sh;

    ngx_rbtree_init(&zone->sh->rbtree, &zone->sh->sentinel,
                    ngx_http_billing_cache_rbtree_insert_value);

    ngx_queue_init(&zone->sh->queue);

    len = sizeof(" in billing_cache zone \"\"") + shm_zone->shm.name.len;

    zone->shpool->log_ctx = ngx_slab_alloc(zone->shpool, len);
    if (zone->shpool->log_ctx == NULL) {
        return NGX_ERROR;
    }

    ngx_sprintf(zone->shpool->log_ctx, " in billing_cache zone \"%V\"%Z",
                &shm_zone->shm.name);

    /* a full zone is handled by eviction: no "no memory" noise */

    zone->shpool->log_nomem = 0;

    return NGX_OK;
}


ngx_int_t
ngx_http_billing_cache_get(ngx_http_billing_cache_t *cache,
    ngx_str_t *market, ngx_str_t *id, uint32_t hash,
    ngx_http_billing_entry_t *entry, ngx_pool_t *pool)
{
    u_char                         *p;
    time_t                          now;
    ngx_rbtree_node_t              *node;
    ngx_http_billing_cache_node_t  *cn;
    ngx_http_billing_cache_zone_t  *zone;

    zone = cache->shm_zone->data;

    /* held briefly, writing only what must change: mostly free */

    ngx_http_billing_shmtx_lock(&zone->shpool->mutex);

    node = ngx_http_billing_cache_lookup(zone, market, id, hash);

    if (node == NULL) {
        ngx_http_billing_shmtx_unlock(&zone->shpool->mutex);
        return NGX_DECLINED;
    }

    cn = (ngx_http_billing_cache_node_t *) &node->color;

    if (cn->state == NGX_HTTP_BILLING_CACHE_MARKER) {
        ngx_http_billing_shmtx_unlock(&zone->shpool->mutex);
        return NGX_DECLINED;
    }

    now = ngx_time();

    /* used: to the head of the queue, the last to be evicted */

    if (cn->used != (u_char) now) {
        cn->used = (u_char) now;
        ngx_queue_remove(&cn->queue);
        ngx_queue_insert_head(&zone->sh->queue, &cn->queue);
    }

    entry->state = cn->state;
    entry->fetched = cn->fetched;
    entry->version = cn->version;
    entry->anchor = cn->anchor;
    entry->period.kind = cn->period_kind;
    entry->period.seconds = cn->period_seconds;

    /* the metering period moved on: computed once for every worker */

    if (now >= cn->cur_end) {
        ngx_http_billing_entry_period(entry, now);

        cn->cur_start = entry->cur_start;
        cn->cur_end = entry->cur_end;

    } else {
        entry->cur_start = cn->cur_start;
        entry->cur_end = cn->cur_end;
    }

    /* an active subscription's answer shows neither invoice nor page */

    if (cn->state == NGX_BILLING_SUB_ACTIVE
        || (cn->invoice_len == 0 && cn->url_len == 0))
    {
        ngx_http_billing_shmtx_unlock(&zone->shpool->mutex);

        ngx_str_null(&entry->invoice);
        ngx_str_null(&entry->pay_url);

        return NGX_OK;
    }

    p = ngx_pnalloc(pool, cn->invoice_len + cn->url_len);
    if (p == NULL) {
        ngx_http_billing_shmtx_unlock(&zone->shpool->mutex);
        return NGX_DECLINED;
    }

    entry->invoice.data = p;
    entry->invoice.len = cn->invoice_len;
    p = ngx_cpymem(p, cn->data + cn->market_len + cn->id_len,
                   cn->invoice_len);

    entry->pay_url.data = p;
    entry->pay_url.len = cn->url_len;
    ngx_memcpy(p, cn->data + cn->market_len + cn->id_len + cn->invoice_len,
               cn->url_len);

    ngx_http_billing_shmtx_unlock(&zone->shpool->mutex);

    return NGX_OK;
}


void
ngx_http_billing_cache_put(ngx_http_billing_cache_t *cache,
    ngx_str_t *market, ngx_str_t *id, uint32_t hash,
    ngx_http_billing_entry_t *entry, ngx_log_t *log)
{
    u_char                         *p;
    size_t                          size;
    ngx_rbtree_node_t              *node;
    ngx_http_billing_cache_node_t  *cn;
    ngx_http_billing_cache_zone_t  *zone;

    if (id->len > 0xff || entry->invoice.len > 0xffff
        || entry->pay_url.len > 0xffff)
    {
        return;
    }

    zone = cache->shm_zone->data;

    size = offsetof(ngx_rbtree_node_t, color)
           + offsetof(ngx_http_billing_cache_node_t, data)
           + market->len + id->len + entry->invoice.len + entry->pay_url.len;

    ngx_shmtx_lock(&zone->shpool->mutex);

    node = ngx_http_billing_cache_lookup(zone, market, id, hash);

    if (node) {
        cn = (ngx_http_billing_cache_node_t *) &node->color;

        /* answered before a change this cache knows of: not kept */

        if (cn->version > entry->version
            && (ngx_msec_int_t) (entry->fetched - cn->fetched) <= 0)
        {
            ngx_shmtx_unlock(&zone->shpool->mutex);

            ngx_log_debug2(NGX_LOG_DEBUG_HTTP, log, 0,
                           "billing cache: version %uL older than %uL, "
                           "not kept", entry->version, cn->version);
            return;
        }

        ngx_http_billing_cache_remove(zone, node);
    }

    node = ngx_http_billing_cache_alloc(zone, size, log);

    if (node == NULL) {
        ngx_shmtx_unlock(&zone->shpool->mutex);
        return;
    }

    node->key = hash;

    cn = (ngx_http_billing_cache_node_t *) &node->color;

    cn->state = (u_char) entry->state;
    cn->fetched = entry->fetched;
    cn->version = entry->version;
    cn->used = (u_char) ngx_time();
    cn->market_len = (u_char) market->len;
    cn->id_len = (u_char) id->len;
    cn->invoice_len = (u_short) entry->invoice.len;
    cn->url_len = (u_short) entry->pay_url.len;
    cn->anchor = entry->anchor;
    cn->cur_start = entry->cur_start;
    cn->cur_end = entry->cur_end;
    cn->period_kind = (u_char) entry->period.kind;
    cn->period_seconds = entry->period.seconds;

    /* the strings may be empty, their data NULL: no memcpy() of those */

    p = ngx_cpymem(cn->data, market->data, market->len);
    p = ngx_cpymem(p, id->data, id->len);

    if (entry->invoice.len) {
        p = ngx_cpymem(p, entry->invoice.data, entry->invoice.len);
    }

    if (entry->pay_url.len) {
        ngx_memcpy(p, entry->pay_url.data, entry->pay_url.len);
    }

    ngx_rbtree_insert(&zone->sh->rbtree, node);
    ngx_queue_insert_head(&zone->sh->queue, &cn->queue);

    ngx_shmtx_unlock(&zone->shpool->mutex);
}


void
ngx_http_billing_cache_changed(ngx_http_billing_cache_t *cache,
    ngx_str_t *market, ngx_str_t *id, uint64_t version, ngx_log_t *log)
{
    size_t                          size;
    uint32_t                        hash;
    ngx_rbtree_node_t              *node;
    ngx_http_billing_cache_node_t  *cn;
    ngx_http_billing_cache_zone_t  *zone;

    if (id->len == 0 || id->len > 0xff) {
        return;
    }

    zone = cache->shm_zone->data;
    hash = ngx_http_billing_key_hash(market, id);

    ngx_shmtx_lock(&zone->shpool->mutex);

    node = ngx_http_billing_cache_lookup(zone, market, id, hash);

    if (node) {
        cn = (ngx_http_billing_cache_node_t *) &node->color;

        /*
         * A change without a version (a node before 0.5, which does not
         * increment it): one past what is known keeps out what was asked
         * before it.
         */

        if (version == 0) {
            version = cn->version + 1;

        } else if (cn->version >= version) {
            /* known already, or older than what is known: a repeat */
            ngx_shmtx_unlock(&zone->shpool->mutex);
            return;
        }

        /* the data go, the version stays: the node's size does not matter */

        cn->state = NGX_HTTP_BILLING_CACHE_MARKER;
        cn->fetched = ngx_current_msec;
        cn->version = version;
        cn->invoice_len = 0;
        cn->url_len = 0;

        ngx_shmtx_unlock(&zone->shpool->mutex);
        return;
    }

    if (version == 0) {
        version = 1;
    }

    /*
     * Even for an id not cached: a lookup may be on its way, whose answer
     * predates this change.
     */

    size = offsetof(ngx_rbtree_node_t, color)
           + offsetof(ngx_http_billing_cache_node_t, data) + market->len
           + id->len;

    node = ngx_http_billing_cache_alloc(zone, size, log);
    if (node == NULL) {
        ngx_shmtx_unlock(&zone->shpool->mutex);
        return;
    }

    node->key = hash;

    cn = (ngx_http_billing_cache_node_t *) &node->color;

    ngx_memzero(cn, offsetof(ngx_http_billing_cache_node_t, data));

    cn->state = NGX_HTTP_BILLING_CACHE_MARKER;
    cn->fetched = ngx_current_msec;
    cn->version = version;
    cn->market_len = (u_char) market->len;
    cn->id_len = (u_char) id->len;
    ngx_memcpy(ngx_cpymem(cn->data, market->data, market->len), id->data,
               id->len);

    ngx_rbtree_insert(&zone->sh->rbtree, node);
    ngx_queue_insert_head(&zone->sh->queue, &cn->queue);

    ngx_shmtx_unlock(&zone->shpool->mutex);
}


static ngx_rbtree_node_t *
ngx_http_billing_cache_alloc(ngx_http_billing_cache_zone_t *zone, size_t size,
    ngx_log_t *log)
{
    ngx_uint_t                      evicted;
    ngx_queue_t                    *q;
    ngx_rbtree_node_t              *node;
    ngx_http_billing_cache_node_t  *cn;

    evicted = 0;

    for ( ;; ) {
        node = ngx_slab_alloc_locked(zone->shpool, size);

        if (node || ngx_queue_empty(&zone->sh->queue)) {
            break;
        }

        /* full: the least recently used go, a few at a time */

        q = ngx_queue_last(&zone->sh->queue);
        cn = ngx_queue_data(q, ngx_http_billing_cache_node_t, queue);

        ngx_http_billing_cache_remove(zone, (ngx_rbtree_node_t *)
                                  ((u_char *) cn
                                   - offsetof(ngx_rbtree_node_t, color)));
        evicted++;
    }

    if (evicted) {
        ngx_log_debug1(NGX_LOG_DEBUG_HTTP, log, 0,
                       "billing cache: %ui entries evicted", evicted);
    }

    return node;
}


void
ngx_http_billing_entry_period(ngx_http_billing_entry_t *entry, time_t now)
{
    int64_t  k, start, end;

    start = 0;
    end = NGX_MAX_TIME_T_VALUE;

    if (entry->anchor <= 0 || entry->period.kind == 0) {
        goto done;
    }

    k = ngx_billing_period_index(&entry->period, entry->anchor, now);

    if (k < 0) {
        goto done;
    }

    /* before the anchor (another node's clock set it): the first period */

    if (k <= 1) {
        start = entry->anchor;
        end = ngx_billing_period_bound(&entry->period, entry->anchor, 1);

    } else {
        start = ngx_billing_period_bound(&entry->period, entry->anchor,
                                         (uint64_t) k - 1);
        end = ngx_billing_period_bound(&entry->period, entry->anchor,
                                       (uint64_t) k);
    }

    if (start < 0 || end <= start) {
        start = 0;
        end = NGX_MAX_TIME_T_VALUE;
    }

done:

    entry->cur_start = (time_t) start;
    entry->cur_end = (time_t) end;
}


/* an order, not ngx_memn2cmp()'s: lengths first, then the bytes */

static ngx_inline ngx_int_t
ngx_http_billing_cache_cmp(ngx_str_t *market, ngx_str_t *id,
    ngx_http_billing_cache_node_t *cn)
{
    ngx_int_t  rc;

    if (market->len != cn->market_len) {
        return (market->len < cn->market_len) ? -1 : 1;
    }

    if (id->len != cn->id_len) {
        return (id->len < cn->id_len) ? -1 : 1;
    }

    rc = ngx_http_billing_key_cmp(market->data, cn->data, market->len);

    if (rc) {
        return rc;
    }

    return ngx_http_billing_key_cmp(id->data, cn->data + cn->market_len,
                                    id->len);
}


/* inline: under the lock of every hit */

static ngx_inline ngx_rbtree_node_t *
ngx_http_billing_cache_lookup(ngx_http_billing_cache_zone_t *zone,
    ngx_str_t *market, ngx_str_t *id, uint32_t hash)
{
    ngx_int_t                       rc;
    ngx_rbtree_node_t              *node, *sentinel;
    ngx_http_billing_cache_node_t  *cn;

    node = zone->sh->rbtree.root;
    sentinel = zone->sh->rbtree.sentinel;

    while (node != sentinel) {

        if (hash < node->key) {
            node = node->left;
            continue;
        }

        if (hash > node->key) {
            node = node->right;
            continue;
        }

        /* hash == node->key */

        cn = (ngx_http_billing_cache_node_t *) &node->color;

        rc = ngx_http_billing_cache_cmp(market, id, cn);

        if (rc == 0) {
            return node;
        }

        node = (rc < 0) ? node->left : node->right;
    }

    return NULL;
}


static void
ngx_http_billing_cache_remove(ngx_http_billing_cache_zone_t *zone,
    ngx_rbtree_node_t *node)
{
    ngx_http_billing_cache_node_t  *cn;

    cn = (ngx_http_billing_cache_node_t *) &node->color;

    ngx_queue_remove(&cn->queue);
    ngx_rbtree_delete(&zone->sh->rbtree, node);
    ngx_slab_free_locked(zone->shpool, node);
}


static void
ngx_http_billing_cache_rbtree_insert_value(ngx_rbtree_node_t *temp,
    ngx_rbtree_node_t *node, ngx_rbtree_node_t *sentinel)
{
    ngx_str_t                        market, id;
    ngx_int_t                        rc;
    ngx_rbtree_node_t              **p;
    ngx_http_billing_cache_node_t   *cn, *cnt;

    for ( ;; ) {

        if (node->key < temp->key) {

            p = &temp->left;

        } else if (node->key > temp->key) {

            p = &temp->right;

        } else { /* node->key == temp->key */

            cn = (ngx_http_billing_cache_node_t *) &node->color;
            cnt = (ngx_http_billing_cache_node_t *) &temp->color;

            market.data = cn->data;
            market.len = cn->market_len;
            id.data = cn->data + cn->market_len;
            id.len = cn->id_len;

            rc = ngx_http_billing_cache_cmp(&market, &id, cnt);

            p = (rc < 0) ? &temp->left : &temp->right;
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
