
/*
 * billing_meter: the flush of the counts to Redis, by every worker.
 *
 * Every billing_meter_flush each worker takes up to a batch of counts
 * out of the zone and its overflow into its own memory and sends them
 * in one script, which applies them only if the batch's number is above
 * the last one Redis applied for this worker: a batch whose reply was
 * lost is resent with the same number and not counted twice.  One
 * batch is under way per worker; until it is acknowledged, new counts
 * wait in the zone.  The script
 * also records the worker's mark, the wall-clock time the batch was
 * taken: every count of the node that ended before it and that this
 * worker took is in Redis (the scheduler's final invoices wait for the
 * marks of all live workers).
 *
 * A graceful stop (nginx -s quit, and old workers at a reload) is seen
 * through an idle fake connection, which nginx closes as the shutdown
 * starts (as lua-nginx-module watches it).  The worker then sends what
 * is left, its batch, its overflow and the zone, held alive by a timer
 * that is not cancelable, until done or the deadline; its last script
 * removes its mark.
 *
 * What can be lost, at most:
 *
 *   - a node killed (kill -9, power): the zone's counts, up to one
 *     billing_meter_flush of its requests (more while Redis is
 *     unreachable: all that waits), plus each worker's overflow and
 *     batch not yet acknowledged;
 *   - a worker crash: its batch and its overflow (the zone stays, the
 *     master starts a new worker that sends it);
 *   - a graceful stop while Redis cannot be reached: what the deadline
 *     (3 x billing_redis timeout) left unsent, logged at [error] with
 *     its units and subscriptions; the client does not reconnect while
 *     the worker exits, so a connection lost then is not retried;
 *   - a reload while Redis cannot be reached: nothing, the old workers
 *     put back in the zone what Redis never saw, for the new ones;
 *   - nginx -s stop (SIGTERM) and a single process: no final send, the
 *     zone goes with the master; the worker logs what it held.
 *
 * Nothing is ever counted twice: the flush id is unique to the batch
 * (host, pid, the worker's start in ms, a sequence number).
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_billing_status.h"
#include "ngx_http_billing_meter_int.h"
#include "ngx_http_billing_redis.h"
#include "ngx_billing_event.h"


/* entries a script carries at most: its size does not grow with load */
#define NGX_HTTP_BILLING_METER_BATCH      2048

/* "<marketplace>/<id> <period start> <units>\n" */
#define NGX_HTTP_BILLING_METER_LINE                                          \
    (NGX_HTTP_BILLING_METER_KEY_MAX + 1 + NGX_INT64_LEN + 1                   \
     + NGX_INT64_LEN + 1)

/* a send at exit that failed is tried again after this */
#define NGX_HTTP_BILLING_METER_RETRY      100


static ngx_uint_t ngx_http_billing_meter_others(
    ngx_http_billing_meter_t *meter);
static void ngx_http_billing_meter_register(ngx_http_billing_meter_t *meter,
    ngx_uint_t on);
static void ngx_http_billing_meter_take(ngx_http_billing_meter_t *meter);
static u_char *ngx_http_billing_meter_take_from(
    ngx_http_billing_meter_t *meter, ngx_http_billing_counts_t *counts,
    u_char *p, ngx_uint_t shared);
static void ngx_http_billing_meter_send(ngx_http_billing_meter_t *meter);
static void ngx_http_billing_meter_sent(void *data, redisReply *reply);
static void ngx_http_billing_meter_tick(ngx_event_t *ev);
static void ngx_http_billing_meter_kick(ngx_event_t *ev);
static void ngx_http_billing_meter_watch(ngx_event_t *ev);
static void ngx_http_billing_meter_exit_step(ngx_http_billing_meter_t *meter);
static void ngx_http_billing_meter_deadline(ngx_event_t *ev);
static ngx_uint_t ngx_http_billing_meter_left(ngx_http_billing_meter_t *meter);
static void ngx_http_billing_meter_free_watcher(
    ngx_http_billing_meter_t *meter);


/*
 * KEYS[1] the last batch applied of each worker, KEYS[2] the workers'
 * marks
 *
 * ARGV[1] the key prefix, ARGV[2] this worker, ARGV[3] its mark ("":
 * unchanged), ARGV[4] "1": the worker's last batch, ARGV[5] now,
 * ARGV[6] the counts, "<marketplace>/<id> <period start> <units>\n"
 * each (a marketplace's keys are under "<prefix>mp:<name>:", the
 * default one's, named "", under the prefix), ARGV[7] the worker's flush
 * id (host:pid:start), ARGV[8] the batch's number
 *
 * A worker sends its batches one at a time, in order, each until it is
 * answered: a batch is new when its number is above the last applied,
 * and one field per worker is all the de-duplication needs (a key per
 * batch would keep 86,400 keys a day per busy worker).
 *
 * Units of a cancelled subscription put it in the scheduler's due set,
 * for one more final invoice.  The reply: 1 if the counts were applied
 * now, 0 if they were before (or there were none).
 */

static const char  ngx_http_billing_meter_lua[] =
    "local applied = 0\n"
    "if ARGV[6] ~= '' and tonumber(redis.call('HGET', KEYS[1], ARGV[7])"
    " or '0') < tonumber(ARGV[8]) then\n"
    "  redis.call('HSET', KEYS[1], ARGV[7], ARGV[8])\n"
    "  applied = 1\n"
    "  local seen = {}\n"
    "  for m, id, s, n in string.gmatch(ARGV[6],"
    " '([^/%s]*)/(%S+) (%d+) (%d+)\\n') do\n"
    "    local p = ARGV[1]\n"
    "    if m ~= '' then p = p .. 'mp:' .. m .. ':' end\n"
    "    redis.call('HINCRBY', p .. 'usage:' .. id, s, n)\n"
    "    if not seen[m .. '/' .. id] then\n"
    "      seen[m .. '/' .. id] = true\n"
    "      if redis.call('HGET', p .. 'sub:' .. id, 'state')"
    " == 'cancelled' then\n"
    "        redis.call('ZADD', p .. 'due', 'NX', ARGV[5], id)\n"
    "      end\n"
    "    end\n"
    "  end\n"
    "end\n"
    "if ARGV[4] == '1' then\n"
    "  redis.call('HDEL', KEYS[2], ARGV[2])\n"
    "  redis.call('HDEL', KEYS[1], ARGV[7])\n"
    "elseif ARGV[3] ~= '' then\n"
    "  redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])\n"
    "end\n"
    "return applied\n";


static ngx_http_billing_redis_script_t  ngx_http_billing_meter_script;


void
ngx_http_billing_meter_script_init(void)
{
    ngx_http_billing_redis_script_init(&ngx_http_billing_meter_script,
                                       ngx_http_billing_meter_lua);
}


/* the workers of this node that run and do not exit, this one aside */

static ngx_uint_t
ngx_http_billing_meter_others(ngx_http_billing_meter_t *meter)
{
    ngx_uint_t  i, n;
    ngx_pid_t  *pids;

    n = 0;
    pids = meter->sh->pids;

    ngx_shmtx_lock(&meter->shpool->mutex);

    for (i = 0; i < NGX_HTTP_BILLING_METER_PIDS; i++) {
        if (pids[i] && pids[i] != ngx_pid
            && (kill(pids[i], 0) == 0 || ngx_errno == NGX_EPERM))
        {
            n++;
        }
    }

    ngx_shmtx_unlock(&meter->shpool->mutex);

    return n;
}


static void
ngx_http_billing_meter_register(ngx_http_billing_meter_t *meter,
    ngx_uint_t on)
{
    ngx_uint_t  i, free;
    ngx_pid_t  *pids;

    pids = meter->sh->pids;
    free = NGX_HTTP_BILLING_METER_PIDS;

    ngx_shmtx_lock(&meter->shpool->mutex);

    for (i = 0; i < NGX_HTTP_BILLING_METER_PIDS; i++) {

        if (pids[i] == ngx_pid) {
            pids[i] = 0;
        }

        /* a slot of a worker that is gone (crashed) is free again */

        if (free == NGX_HTTP_BILLING_METER_PIDS
            && (pids[i] == 0
                || (kill(pids[i], 0) == -1 && ngx_errno == NGX_ESRCH)))
        {
            free = i;
        }
    }

    if (on && free < NGX_HTTP_BILLING_METER_PIDS) {
        pids[free] = ngx_pid;
    }

    ngx_shmtx_unlock(&meter->shpool->mutex);
}


ngx_int_t
ngx_http_billing_meter_init_worker(ngx_cycle_t *cycle,
    ngx_http_billing_main_conf_t *bmcf)
{
    u_char                    *p;
    ngx_connection_t          *c;
    ngx_http_billing_meter_t  *meter;

    meter = bmcf->meter;

    if (meter == NULL || bmcf->redis == NULL) {
        return NGX_OK;
    }

    meter->bmcf = bmcf;
    meter->log = cycle->log;

    meter->buf = ngx_alloc(NGX_HTTP_BILLING_METER_BATCH
                           * NGX_HTTP_BILLING_METER_LINE, cycle->log);
    if (meter->buf == NULL) {
        return NGX_ERROR;
    }

    /*
     * host:pid, and the batch's name "<prefix>flush:host:pid:start:seq":
     * the flush id host:pid:start and the number in the script, the
     * whole in log lines
     */

    p = ngx_pnalloc(cycle->pool, cycle->hostname.len + NGX_INT64_LEN + 1);
    if (p == NULL) {
        return NGX_ERROR;
    }

    meter->worker.data = p;
    meter->worker.len = ngx_sprintf(p, "%V:%P", &cycle->hostname, ngx_pid)
                        - p;

    p = ngx_pnalloc(cycle->pool, bmcf->redis_conf->prefix.len
                                 + sizeof("flush:") + meter->worker.len
                                 + 2 * NGX_INT64_LEN + 2);
    if (p == NULL) {
        return NGX_ERROR;
    }

    meter->flush_key.data = p;
    meter->flush_prefix = ngx_sprintf(p, "%Vflush:%V:%M:",
                                      &bmcf->redis_conf->prefix,
                                      &meter->worker,
                                      (ngx_msec_t) ngx_http_billing_now_ms())
                          - p;

    meter->tick.handler = ngx_http_billing_meter_tick;
    meter->tick.data = meter;
    meter->tick.log = cycle->log;

    /* idle, the meter does not hold up a graceful stop by itself */
    meter->tick.cancelable = 1;

    meter->hold.handler = ngx_http_billing_meter_deadline;
    meter->hold.data = meter;
    meter->hold.log = cycle->log;

    meter->kick.handler = ngx_http_billing_meter_kick;
    meter->kick.data = meter;
    meter->kick.log = cycle->log;

    /*
     * nginx closes idle connections when a graceful stop starts, before
     * it looks whether timers are left: that is when to send what is left
     */

    c = ngx_get_connection(0, cycle->log);
    if (c == NULL) {
        return NGX_ERROR;
    }

    c->fd = (ngx_socket_t) -2;
    c->idle = 1;
    c->data = meter;
    c->read->handler = ngx_http_billing_meter_watch;
    c->read->log = cycle->log;
    c->write->log = cycle->log;

    meter->watcher = c;

    ngx_http_billing_meter_register(meter, 1);

    ngx_add_timer(&meter->tick, bmcf->meter_flush);

    return NGX_OK;
}


void
ngx_http_billing_meter_exit_worker(ngx_http_billing_main_conf_t *bmcf)
{
    ngx_uint_t                 others;
    ngx_queue_t               *q;
    ngx_http_billing_count_t  *c;
    ngx_http_billing_meter_t  *meter;

    meter = bmcf->meter;

    if (meter == NULL || meter->buf == NULL) {
        return;
    }

    /* nginx -s stop, or a stop that found nothing to wait for */

    ngx_http_billing_meter_register(meter, 0);

    if (!meter->gave_up
        && (meter->pending || meter->overflow.entries))
    {
        others = ngx_http_billing_meter_others(meter);

        if (others) {
            ngx_http_billing_meter_give_back(meter);
        }

        ngx_http_billing_meter_lost(meter, "the worker exits", others);
    }

    ngx_http_billing_meter_free_watcher(meter);

    if (meter->pool) {
        /* cancels the send under way */
        ngx_destroy_pool(meter->pool);
        meter->pool = NULL;
    }

    if (meter->kick.posted) {
        ngx_delete_posted_event(&meter->kick);
    }

    while (!ngx_queue_empty(&meter->overflow.queue)) {
        q = ngx_queue_head(&meter->overflow.queue);
        ngx_queue_remove(q);
        c = ngx_queue_data(q, ngx_http_billing_count_t, queue);
        ngx_free(c);
    }

    ngx_free(meter->buf);
    meter->buf = NULL;
}


static void
ngx_http_billing_meter_take(ngx_http_billing_meter_t *meter)
{
    u_char      *p;
    ngx_uint_t   whole;

    meter->entries = 0;
    meter->units = 0;

    /* the worker's overflow first: it is the oldest */

    p = ngx_http_billing_meter_take_from(meter, &meter->overflow, meter->buf,
                                         0);

    ngx_shmtx_lock(&meter->shpool->mutex);
    p = ngx_http_billing_meter_take_from(meter, meter->sh, p, 1);
    whole = (meter->sh->units == 0);
    ngx_shmtx_unlock(&meter->shpool->mutex);

    whole = whole && meter->overflow.units == 0;

    meter->len = p - meter->buf;

    /*
     * The mark says every count that ended before it was taken: not so
     * when some are left for the next batch.
     */

    if (whole) {
        meter->mark = ngx_http_billing_now_ms();
        meter->last_mark = meter->mark;

    } else {
        meter->mark = meter->last_mark;
    }

    meter->flush_key.len = ngx_sprintf(meter->flush_key.data
                                       + meter->flush_prefix, "%uL",
                                       ++meter->seq)
                           - meter->flush_key.data;

    meter->pending = 1;
    meter->queued = 0;
}


static u_char *
ngx_http_billing_meter_take_from(ngx_http_billing_meter_t *meter,
    ngx_http_billing_counts_t *counts, u_char *p, ngx_uint_t shared)
{
    ngx_uint_t                 n;
    ngx_queue_t               *q;
    ngx_http_billing_count_t  *c;

    /*
     * A count of the zone that was taken stays, empty, for one more
     * flush, at the queue's tail: a subscription that keeps being used
     * finds it again, which spares the request an allocation.  One that
     * stayed empty a whole flush goes.  The overflow's counts go at once.
     */

    for (n = counts->entries; n; n--) {
        q = ngx_queue_head(&counts->queue);
        c = ngx_queue_data(q, ngx_http_billing_count_t, queue);

        if (c->units == 0) {
            counts->entries--;

            ngx_queue_remove(q);
            ngx_rbtree_delete(&counts->rbtree, &c->node);

            if (shared) {
                ngx_slab_free_locked(meter->shpool, c);

            } else {
                ngx_free(c);
            }

            continue;
        }

        if (meter->entries >= NGX_HTTP_BILLING_METER_BATCH) {
            break;
        }

        p = ngx_sprintf(p, "%*s %T %L\n", (size_t) c->len, c->id, c->start,
                        c->units);

        meter->entries++;
        meter->units += c->units;

        counts->units -= c->units;
        c->units = 0;

        if (shared) {
            ngx_queue_remove(q);
            ngx_queue_insert_tail(&counts->queue, q);
            continue;
        }

        counts->entries--;

        ngx_queue_remove(q);
        ngx_rbtree_delete(&counts->rbtree, &c->node);
        ngx_free(c);
    }

    return p;
}


static void
ngx_http_billing_meter_send(ngx_http_billing_meter_t *meter)
{
    u_char                        *p;
    ngx_uint_t                     level;
    size_t                         off;
    ngx_str_t                      argv[10];
    ngx_pool_t                    *pool;
    ngx_http_billing_redis_cmd_t  *cmd;
    ngx_http_billing_main_conf_t  *bmcf;

    bmcf = meter->bmcf;

    pool = ngx_create_pool(512, meter->log);
    if (pool == NULL) {
        return;
    }

    p = ngx_pnalloc(pool, 2 * bmcf->redis_conf->prefix.len
                          + sizeof("meter:nodes") + sizeof("meter:flushed")
                          + 2 * NGX_INT64_LEN);
    if (p == NULL) {
        ngx_destroy_pool(pool);
        return;
    }

    argv[0].data = p;
    p = ngx_sprintf(p, "%Vmeter:flushed", &bmcf->redis_conf->prefix);
    argv[0].len = p - argv[0].data;

    argv[1].data = p;
    p = ngx_sprintf(p, "%Vmeter:nodes", &bmcf->redis_conf->prefix);
    argv[1].len = p - argv[1].data;

    /* "<prefix>flush:" <flush id> ":" <number> */

    off = bmcf->redis_conf->prefix.len + sizeof("flush:") - 1;

    argv[8].data = meter->flush_key.data + off;
    argv[8].len = meter->flush_prefix - off - 1;
    argv[9].data = meter->flush_key.data + meter->flush_prefix;
    argv[9].len = meter->flush_key.len - meter->flush_prefix;

    argv[2] = bmcf->redis_conf->prefix;
    argv[3] = meter->worker;

    argv[4].data = p;

    if (meter->mark) {
        p = ngx_sprintf(p, "%L", meter->mark);
    }

    argv[4].len = p - argv[4].data;

    if (meter->exiting) {
        ngx_str_set(&argv[5], "1");

    } else {
        ngx_str_set(&argv[5], "0");
    }

    argv[6].data = p;
    p = ngx_sprintf(p, "%T", ngx_time());
    argv[6].len = p - argv[6].data;

    argv[7].data = meter->buf;
    argv[7].len = meter->len;

    cmd = ngx_http_billing_redis_eval(bmcf->redis,
                                      &ngx_http_billing_meter_script, 2, 10,
                                      argv, ngx_http_billing_meter_sent,
                                      meter);

    if (cmd == NULL || ngx_http_billing_redis_bind(cmd, pool) != NGX_OK) {
        if (cmd) {
            ngx_http_billing_redis_cancel(cmd);
        }

        ngx_destroy_pool(pool);

        if (!meter->failing) {
            meter->failing = 1;

            level = meter->entries ? NGX_LOG_WARN : NGX_LOG_INFO;

            ngx_log_error(level, meter->log, 0,
                          "billing meter: Redis unavailable, %L units of "
                          "%ui counts wait in memory",
                          meter->units, meter->entries);
        }

        return;
    }

    ngx_log_debug4(NGX_LOG_DEBUG_HTTP, meter->log, 0,
                   "billing meter: sending %V, %ui counts, %L units, "
                   "mark %L", &meter->flush_key, meter->entries,
                   meter->units, meter->mark);

    meter->pool = pool;
    meter->queued = 1;
}


static void
ngx_http_billing_meter_sent(void *data, redisReply *reply)
{
    ngx_http_billing_meter_t  *meter = data;

    ngx_uint_t  level;

    ngx_destroy_pool(meter->pool);
    meter->pool = NULL;

    if (reply == NULL || reply->type != REDIS_REPLY_INTEGER) {

        /* kept: sent again with the same flush id, applied at most once */

        if (reply && reply->type == REDIS_REPLY_ERROR) {
            ngx_log_error(NGX_LOG_ERR, meter->log, 0,
                          "billing meter: Redis refused the counts: \"%*s\"",
                          reply->len, reply->str);

        } else if (!meter->failing) {
            level = meter->entries ? NGX_LOG_WARN : NGX_LOG_INFO;

            ngx_log_error(level, meter->log, 0,
                          "billing meter: no answer from Redis, %L units of "
                          "%ui counts wait in memory",
                          meter->units, meter->entries);
        }

        meter->failing = 1;

        if (meter->exiting && !meter->gave_up && !meter->tick.timer_set) {
            ngx_add_timer(&meter->tick, NGX_HTTP_BILLING_METER_RETRY);
        }

        return;
    }

    if (meter->failing) {
        meter->failing = 0;

        ngx_log_error(NGX_LOG_NOTICE, meter->log, 0,
                      "billing meter: Redis answers again, counts sent");
    }

    ngx_log_debug3(NGX_LOG_DEBUG_HTTP, meter->log, 0,
                   "billing meter: %V %s, %L units",
                   &meter->flush_key,
                   reply->integer ? "applied"
                   : meter->entries ? "was applied before" : "had no counts",
                   meter->units);

    /* applied now or by an attempt whose answer was lost: sent once */

    if (meter->entries) {
        ngx_http_billing_meter_sent_units(meter);
    }

    meter->pending = 0;

    if (meter->exiting) {
        meter->final_sent = 1;

        if (!meter->gave_up) {
            ngx_http_billing_meter_exit_step(meter);
        }
    }
}


static void
ngx_http_billing_meter_tick(ngx_event_t *ev)
{
    ngx_http_billing_meter_t  *meter = ev->data;

    if (meter->exiting) {
        if (!meter->gave_up) {
            ngx_http_billing_meter_exit_step(meter);
        }

        return;
    }

    ngx_add_timer(ev, meter->bmcf->meter_flush);

    /* only one batch under way: new counts wait in the zone */

    if (meter->pool) {
        return;
    }

    if (!meter->pending) {
        ngx_http_billing_meter_take(meter);
    }

    ngx_http_billing_meter_send(meter);
}


static void
ngx_http_billing_meter_kick(ngx_event_t *ev)
{
    ngx_http_billing_meter_t  *meter = ev->data;

    if (meter->gave_up || meter->pool) {
        return;
    }

    /* a count made while exiting, after the worker had sent everything */

    if (!meter->hold.timer_set) {
        ngx_add_timer(&meter->hold, 3 * meter->bmcf->redis_conf->timeout);
    }

    ngx_http_billing_meter_exit_step(meter);
}


static void
ngx_http_billing_meter_watch(ngx_event_t *ev)
{
    ngx_connection_t          *c;
    ngx_http_billing_meter_t  *meter;

    c = ev->data;
    meter = c->data;

    if (!c->close) {
        return;
    }

    ngx_http_billing_meter_free_watcher(meter);

    if (meter->exiting) {
        return;
    }

    meter->exiting = 1;

    ngx_http_billing_meter_register(meter, 0);

    ngx_log_debug0(NGX_LOG_DEBUG_HTTP, meter->log, 0,
                   "billing meter: exiting, sending what is left");

    if (meter->tick.timer_set) {
        ngx_del_timer(&meter->tick);
    }

    /* not cancelable: the worker waits for it, or for the send */

    ngx_add_timer(&meter->hold, 3 * meter->bmcf->redis_conf->timeout);

    ngx_http_billing_meter_exit_step(meter);

    /*
     * Called from outside the event loop's processing: the Redis write
     * posted meanwhile waits for the loop to wake up, so wake it soon.
     */

    if (!meter->tick.timer_set) {
        ngx_add_timer(&meter->tick, 1);
    }
}


static void
ngx_http_billing_meter_exit_step(ngx_http_billing_meter_t *meter)
{
    if (meter->pool) {
        /* its reply comes back here */
        return;
    }

    if (!meter->pending) {

        if (meter->final_sent && !ngx_http_billing_meter_left(meter)) {

            /* all sent: nothing holds the worker any more */

            if (meter->hold.timer_set) {
                ngx_del_timer(&meter->hold);
            }

            if (meter->tick.timer_set) {
                ngx_del_timer(&meter->tick);
            }

            return;
        }

        /* what is left, or nothing: the last batch removes the mark */

        ngx_http_billing_meter_take(meter);
    }

    ngx_http_billing_meter_send(meter);

    if (meter->pool == NULL && !meter->tick.timer_set) {
        /* could not be sent: again soon, until the deadline */
        ngx_add_timer(&meter->tick, NGX_HTTP_BILLING_METER_RETRY);
    }
}


static ngx_uint_t
ngx_http_billing_meter_left(ngx_http_billing_meter_t *meter)
{
    ngx_uint_t  left;

    if (meter->pending || meter->overflow.units) {
        return 1;
    }

    ngx_shmtx_lock(&meter->shpool->mutex);
    left = (meter->sh->units != 0);
    ngx_shmtx_unlock(&meter->shpool->mutex);

    return left;
}


static void
ngx_http_billing_meter_deadline(ngx_event_t *ev)
{
    ngx_http_billing_meter_t  *meter = ev->data;

    ngx_uint_t  others;

    if (!meter->pending && meter->pool == NULL
        && !ngx_http_billing_meter_left(meter))
    {
        return;
    }

    meter->gave_up = 1;

    if (meter->tick.timer_set) {
        ngx_del_timer(&meter->tick);
    }

    if (meter->pool) {
        ngx_destroy_pool(meter->pool);
        meter->pool = NULL;
    }

    others = ngx_http_billing_meter_others(meter);

    if (others) {
        ngx_http_billing_meter_give_back(meter);
    }

    ngx_http_billing_meter_lost(meter, meter->queued
                                ? "Redis did not answer before the deadline"
                                : "Redis could not be reached before the "
                                  "deadline", others);
}


static void
ngx_http_billing_meter_free_watcher(ngx_http_billing_meter_t *meter)
{
    ngx_connection_t  *c, *saved;

    c = meter->watcher;

    if (c == NULL) {
        return;
    }

    meter->watcher = NULL;

    /* a valid fd for ngx_free_connection(), which looks it up in files */

    saved = ngx_cycle->files ? ngx_cycle->files[0] : NULL;

    c->fd = 0;
    ngx_free_connection(c);
    c->fd = (ngx_socket_t) -1;

    if (ngx_cycle->files) {
        ngx_cycle->files[0] = saved;
    }
}
