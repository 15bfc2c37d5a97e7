
/*
 * billing_cache: what Redis said of subscriptions, in shared memory,
 * for all workers.  Bounded: when the zone is full the least recently
 * used entries go, it is never an error.
 */


#ifndef _NGX_HTTP_BILLING_CACHE_H_INCLUDED_
#define _NGX_HTTP_BILLING_CACHE_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_billing_module.h"
#include "ngx_billing_plan.h"


/* a subscription as the gate and the meter need it */
typedef struct {
    ngx_uint_t                  state;    /* NGX_BILLING_SUB_*; NONE: unknown */
    ngx_str_t                   invoice;     /* the first invoice */
    ngx_str_t                   pay_url;     /* its hosted_invoice_url */
    ngx_msec_t                  fetched;     /* when Redis said so */
    uint64_t                    version;     /* of the subscription */

    /* the first period's start (activation), 0 when unknown */
    time_t                      anchor;
    ngx_billing_period_t        period;      /* kind 0: unknown */

    /*
     * The metering period of "now", [cur_start, cur_end): computed once
     * and again only when time passes cur_end (0: not yet computed).
     */
    time_t                      cur_start;
    time_t                      cur_end;
} ngx_http_billing_entry_t;


struct ngx_http_billing_cache_s {
    ngx_shm_zone_t             *shm_zone;
    ngx_msec_t                  ttl;
    ngx_msec_t                  negative_ttl;
    ngx_msec_t                  stale;
};


/*
 * The hash of a marketplace's subscription, the cache's key; the meter
 * keys its counts by it too (with the period), so that a gated request
 * hashes its id once.
 */
#define ngx_http_billing_key_hash(market, id)                                \
    (ngx_murmur_hash2((id)->data, (id)->len)                                 \
     ^ ((market)->len ? ngx_murmur_hash2((market)->data, (market)->len) : 0))


/*
 * An order of two strings of the same length, for the trees, which
 * need one, not memcmp()'s: eight bytes at a time as numbers, the last
 * eight overlapping, inline; cheaper than a call for ids.
 */

static ngx_inline ngx_int_t
ngx_http_billing_key_cmp(const u_char *a, const u_char *b, size_t n)
{
    size_t    i;
    uint64_t  x, y;

    if (n < 8) {
        for (i = 0; i < n; i++) {
            if (a[i] != b[i]) {
                return (a[i] < b[i]) ? -1 : 1;
            }
        }

        return 0;
    }

    for (i = 0; i + 8 < n; i += 8) {
        ngx_memcpy(&x, a + i, 8);
        ngx_memcpy(&y, b + i, 8);

        if (x != y) {
            return (x < y) ? -1 : 1;
        }
    }

    ngx_memcpy(&x, a + n - 8, 8);
    ngx_memcpy(&y, b + n - 8, 8);

    return (x == y) ? 0 : ((x < y) ? -1 : 1);
}


/*
 * The zones' mutex on every gated request (the cache's, the meter's):
 * ngx_shmtx_trylock() and ngx_shmtx_unlock() inline, without their
 * debug line and calls; the same atomics, the same wakeup of a waiter
 * (ngx_shmtx_wakeup(), which nginx does not export).
 */

static ngx_inline void
ngx_http_billing_shmtx_lock(ngx_shmtx_t *mtx)
{
#if (NGX_HAVE_ATOMIC_OPS)
    if (*mtx->lock == 0 && ngx_atomic_cmp_set(mtx->lock, 0, ngx_pid)) {
        return;
    }
#endif

    ngx_shmtx_lock(mtx);
}


static ngx_inline void
ngx_http_billing_shmtx_unlock(ngx_shmtx_t *mtx)
{
#if (NGX_HAVE_ATOMIC_OPS)
#if (NGX_HAVE_POSIX_SEM)
    ngx_atomic_uint_t  wait;
#endif

    if (!ngx_atomic_cmp_set(mtx->lock, ngx_pid, 0)) {
        return;
    }

#if (NGX_HAVE_POSIX_SEM)
    if (!mtx->semaphore) {
        return;
    }

    for ( ;; ) {
        wait = *mtx->wait;

        if ((ngx_atomic_int_t) wait <= 0) {
            return;
        }

        if (ngx_atomic_cmp_set(mtx->wait, wait, wait - 1)) {
            break;
        }
    }

    if (sem_post(&mtx->sem) == -1) {
        ngx_log_error(NGX_LOG_ALERT, ngx_cycle->log, ngx_errno,
                      "sem_post() failed while wake shmtx");
    }
#endif

#else
    ngx_shmtx_unlock(mtx);
#endif
}


/* billing_cache */
char *ngx_http_billing_cache_conf(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);

/*
 * Entries are of a marketplace (its name) and a subscription id, hash
 * their ngx_http_billing_key_hash().
 * NGX_OK and the entry, or NGX_DECLINED.  The strings, in pool, are
 * there unless the subscription is active: no answer to it shows them.
 */
ngx_int_t ngx_http_billing_cache_get(ngx_http_billing_cache_t *cache,
    ngx_str_t *market, ngx_str_t *id, uint32_t hash,
    ngx_http_billing_entry_t *entry, ngx_pool_t *pool);

/*
 * Stores what Redis said, entry->fetched being when it was asked, unless
 * a newer version than entry->version is known; makes room by evicting
 * when the zone is full.
 */
void ngx_http_billing_cache_put(ngx_http_billing_cache_t *cache,
    ngx_str_t *market, ngx_str_t *id, uint32_t hash,
    ngx_http_billing_entry_t *entry, ngx_log_t *log);

/*
 * The metering period that time now falls in, into cur_start and
 * cur_end.  Without an anchor or a period (data older than 0.4) it is
 * period start 0, for ever: the scheduler bills that on the next invoice.
 */
void ngx_http_billing_entry_period(ngx_http_billing_entry_t *entry,
    time_t now);

/*
 * A change, to version (0: unknown, from a node before 0.5): drops the
 * entry unless it is as new, and keeps the version, so that no answer
 * older than the change is stored afterwards.
 */
void ngx_http_billing_cache_changed(ngx_http_billing_cache_t *cache,
    ngx_str_t *market, ngx_str_t *id, uint64_t version, ngx_log_t *log);


#endif /* _NGX_HTTP_BILLING_CACHE_H_INCLUDED_ */
