
/*
 * The scheduler: period-end and final invoices, from timers.
 *
 * Every worker of every node with "billing_scheduler on" looks, each
 * second, at the subscriptions whose next piece of work is due (the
 * "due" sorted set, scored by when), takes a lease on a few of them
 * and works each one through: the periods that ended (oldest first,
 * however many ended while no node ran), then, for a cancelled
 * subscription, its final invoice.
 *
 * Exactly once does not rest on the lease, which only saves work:
 * before the first Stripe call of an invoice, its parameters (the units
 * not billed yet, the periods) are frozen in a record named by the
 * subscription and the period, in the same script that marks those
 * units billed.  Whoever issues that invoice, now or after a crash,
 * reads the record and sends the same parameters under the same
 * idempotency keys, and the billing engine records each object as
 * Stripe makes it, so that nothing is made twice even after Stripe has
 * forgotten the keys.  A subscription's count of invoiced periods moves
 * only when its invoice is finalized.
 *
 * A run, from its subscription loaded to its lease given back:
 * ngx_http_billing_scheduler_run.c; the invoice it freezes and issues:
 * ngx_http_billing_scheduler_issue.c.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_billing_status.h"
#include "ngx_http_billing_scheduler_int.h"
#include "ngx_http_billing_store.h"
#include "ngx_http_billing_stripe.h"


/* subscriptions worked on at once by one worker */
#define NGX_HTTP_BILLING_SCHED_RUNS         4

#define NGX_HTTP_BILLING_SCHED_TICK         1000


typedef struct {
    ngx_http_billing_scheduler_t       *sched;
    ngx_http_billing_owner_t            owner;
    ngx_str_t                           id;
    ngx_str_t                           token;
} ngx_http_billing_lease_t;


static void ngx_http_billing_scheduler_tick(ngx_event_t *ev);
static void ngx_http_billing_scheduler_taken(void *data, redisReply *reply);
static void ngx_http_billing_scheduler_leased(void *data, redisReply *reply);
static ngx_int_t ngx_http_billing_scheduler_token(
    ngx_http_billing_scheduler_t *sched, ngx_pool_t *pool, ngx_str_t *token);


/*
 * KEYS[1] the due set
 * ARGV[1] now, ARGV[2] how many, ARGV[3] the lease key prefix,
 * ARGV[4] this worker, ARGV[5] the lease in milliseconds
 *
 * What is taken is due again when its lease runs out (its worker died),
 * and meanwhile out of the way of the others.  The reply: how many are
 * still due (the backlog), then the ids taken.
 */

static const char  ngx_http_billing_take_lua[] =
    "local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1],"
    " 'LIMIT', 0, tonumber(ARGV[2]) * 4)\n"
    "local got = {}\n"
    "for _, id in ipairs(ids) do\n"
    "  if redis.call('SET', ARGV[3] .. id, ARGV[4], 'NX', 'PX', ARGV[5])"
    " then\n"
    "    redis.call('ZADD', KEYS[1], 'XX',"
    " tonumber(ARGV[1]) + math.ceil(tonumber(ARGV[5]) / 1000), id)\n"
    "    got[#got + 1] = id\n"
    "    if #got >= tonumber(ARGV[2]) then break end\n"
    "  end\n"
    "end\n"
    "table.insert(got, 1, redis.call('ZCOUNT', KEYS[1], '-inf', ARGV[1]))\n"
    "return got\n";


static ngx_http_billing_redis_script_t  ngx_http_billing_take_script;


ngx_int_t
ngx_http_billing_scheduler_init(ngx_conf_t *cf)
{
    ngx_http_billing_redis_script_init(&ngx_http_billing_take_script,
                                       ngx_http_billing_take_lua);
    ngx_http_billing_scheduler_run_init();
    ngx_http_billing_scheduler_issue_init();

    return NGX_OK;
}


ngx_int_t
ngx_http_billing_scheduler_init_worker(ngx_cycle_t *cycle,
    ngx_http_billing_main_conf_t *bmcf)
{
    u_char                         *p;
    ngx_str_t                       worker;
    ngx_uint_t                      i;
    ngx_http_billing_srv_conf_t   **markets;
    ngx_http_billing_scheduler_t   *sched;

    if (!bmcf->scheduler || bmcf->redis == NULL) {
        return NGX_OK;
    }

    p = ngx_pnalloc(cycle->pool, cycle->hostname.len + 1 + NGX_INT64_LEN);
    if (p == NULL) {
        return NGX_ERROR;
    }

    worker.data = p;
    worker.len = ngx_sprintf(p, "%V:%P", &cycle->hostname, ngx_pid) - p;

    /* one a marketplace: each has its own due set and Stripe account */

    markets = bmcf->markets.elts;

    for (i = 0; i < bmcf->markets.nelts; i++) {

        if (markets[i]->timer_ctx == NULL
            || markets[i]->stripe_key.len == 0)
        {
            continue;
        }

        sched = ngx_pcalloc(cycle->pool,
                            sizeof(ngx_http_billing_scheduler_t));
        if (sched == NULL) {
            return NGX_ERROR;
        }

        sched->worker = worker;
        sched->bmcf = bmcf;
        sched->market = markets[i];
        sched->log = cycle->log;

        sched->tick.handler = ngx_http_billing_scheduler_tick;
        sched->tick.data = sched;
        sched->tick.log = cycle->log;
        sched->tick.cancelable = 1;

        markets[i]->sched = sched;

        /* workers of a node tick apart */
        ngx_add_timer(&sched->tick,
                      NGX_HTTP_BILLING_SCHED_TICK / 2
                      + ngx_random() % NGX_HTTP_BILLING_SCHED_TICK);
    }

    return NGX_OK;
}


void
ngx_http_billing_scheduler_exit_worker(ngx_http_billing_main_conf_t *bmcf)
{
    ngx_uint_t                     i;
    ngx_http_billing_srv_conf_t  **markets;

    /* runs under way are resumed by whoever takes them next */

    markets = bmcf->markets.elts;

    for (i = 0; i < bmcf->markets.nelts; i++) {
        markets[i]->sched = NULL;
    }
}


ngx_int_t
ngx_http_billing_scheduler_kick(ngx_http_billing_srv_conf_t *market,
    ngx_str_t *id)
{
    ngx_str_t                      argv[6];
    ngx_pool_t                    *pool;
    ngx_http_billing_lease_t      *lease;
    ngx_http_billing_scheduler_t  *sched;

    sched = market->sched;

    if (sched == NULL || sched->running >= NGX_HTTP_BILLING_SCHED_RUNS
        || ngx_exiting
        || (ngx_msec_int_t) (sched->paused_until - ngx_current_msec) > 0)
    {
        /* another worker or node takes it from the due set */
        return NGX_DECLINED;
    }

    pool = ngx_create_pool(1024, sched->log);
    if (pool == NULL) {
        return NGX_ERROR;
    }

    lease = ngx_palloc(pool, sizeof(ngx_http_billing_lease_t));
    if (lease == NULL) {
        ngx_destroy_pool(pool);
        return NGX_ERROR;
    }

    lease->sched = sched;
    lease->owner.pool = pool;
    lease->owner.log = sched->log;
    lease->owner.bmcf = sched->bmcf;
    lease->owner.market = market;
    lease->owner.conf_ctx = market->timer_ctx;

    lease->id.data = ngx_pstrdup(pool, id);
    lease->id.len = id->len;

    if (ngx_http_billing_scheduler_token(sched, pool, &lease->token)
        != NGX_OK)
    {
        ngx_destroy_pool(pool);
        return NGX_ERROR;
    }

    ngx_str_set(&argv[0], "SET");
    argv[2] = lease->token;
    ngx_str_set(&argv[3], "NX");
    ngx_str_set(&argv[4], "PX");

    if (lease->id.data == NULL
        || ngx_http_billing_store_key(&lease->owner, &argv[1], "lease:", id,
                                      NULL)
           != NGX_OK
        || ngx_http_billing_store_num(&lease->owner, &argv[5],
                                  ngx_http_billing_scheduler_lease(sched->bmcf))
           != NGX_OK
        || ngx_http_billing_store_run(&lease->owner, NULL, 0, 6, argv,
                                      ngx_http_billing_scheduler_leased,
                                      lease)
           != NGX_OK)
    {
        ngx_destroy_pool(pool);
        return NGX_ERROR;
    }

    sched->running++;

    return NGX_OK;
}


static void
ngx_http_billing_scheduler_leased(void *data, redisReply *reply)
{
    ngx_http_billing_lease_t  *lease = data;

    ngx_http_billing_scheduler_t  *sched;

    sched = lease->sched;
    sched->running--;

    if (reply && reply->type == REDIS_REPLY_STATUS && !ngx_exiting) {
        ngx_http_billing_run_start(sched, &lease->id, &lease->token);
    }

    ngx_destroy_pool(lease->owner.pool);
}


/* host:pid:n, new for each take: a run gives back only its own lease */

static ngx_int_t
ngx_http_billing_scheduler_token(ngx_http_billing_scheduler_t *sched,
    ngx_pool_t *pool, ngx_str_t *token)
{
    u_char  *p;

    p = ngx_pnalloc(pool, sched->worker.len + 1 + NGX_INT_T_LEN);
    if (p == NULL) {
        return NGX_ERROR;
    }

    token->data = p;
    token->len = ngx_sprintf(p, "%V:%ui", &sched->worker, ++sched->serial)
                 - p;

    return NGX_OK;
}


ngx_msec_t
ngx_http_billing_scheduler_lease(ngx_http_billing_main_conf_t *bmcf)
{
    /* a node that died holding it delays the work by this at most */
    return 2 * bmcf->stripe_timeout + 10000;
}


static void
ngx_http_billing_scheduler_tick(ngx_event_t *ev)
{
    ngx_http_billing_scheduler_t  *sched = ev->data;

    ngx_str_t                      argv[6];
    ngx_pool_t                    *pool;
    ngx_http_billing_owner_t       o;
    ngx_http_billing_main_conf_t  *bmcf;

    if (ngx_exiting || ngx_terminate || ngx_quit) {
        return;
    }

    ngx_add_timer(ev, NGX_HTTP_BILLING_SCHED_TICK);

    bmcf = sched->bmcf;

    if (sched->taking || sched->running >= NGX_HTTP_BILLING_SCHED_RUNS
        || (ngx_msec_int_t) (sched->paused_until - ngx_current_msec) > 0)
    {
        return;
    }

    /* Stripe limited a call to this account within the last second */

    if (*sched->market->limited
        && ngx_current_msec - *sched->market->limited
           < NGX_HTTP_BILLING_SCHED_TICK)
    {
        ngx_log_debug0(NGX_LOG_DEBUG_HTTP, sched->log, 0,
                       "billing scheduler: Stripe limits the rate, "
                       "no new work");
        return;
    }

    pool = ngx_create_pool(1024, sched->log);
    if (pool == NULL) {
        return;
    }

    o.pool = pool;
    o.log = sched->log;
    o.bmcf = bmcf;
    o.market = sched->market;
    o.conf_ctx = sched->market->timer_ctx;

    if (ngx_http_billing_scheduler_token(sched, pool, &sched->token)
        != NGX_OK)
    {
        ngx_destroy_pool(pool);
        return;
    }

    argv[4] = sched->token;

    if (ngx_http_billing_store_key(&o, &argv[0], "due", NULL, NULL) != NGX_OK
        || ngx_http_billing_store_num(&o, &argv[1], ngx_time()) != NGX_OK
        || ngx_http_billing_store_num(&o, &argv[2],
                                      NGX_HTTP_BILLING_SCHED_RUNS
                                      - sched->running)
           != NGX_OK
        || ngx_http_billing_store_key(&o, &argv[3], "lease:", NULL, NULL)
           != NGX_OK
        || ngx_http_billing_store_num(&o, &argv[5],
                                      ngx_http_billing_scheduler_lease(bmcf))
           != NGX_OK
        || ngx_http_billing_store_run(&o, &ngx_http_billing_take_script, 1,
                                      6, argv,
                                      ngx_http_billing_scheduler_taken,
                                      sched)
           != NGX_OK)
    {
        /* Redis is down: the next tick tries again */
        ngx_destroy_pool(pool);
        return;
    }

    sched->taking = pool;
}


static void
ngx_http_billing_scheduler_taken(void *data, redisReply *reply)
{
    ngx_http_billing_scheduler_t  *sched = data;

    size_t       i;
    ngx_str_t    id;
    redisReply  *e;

    if (reply && reply->type == REDIS_REPLY_ARRAY) {

        if (reply->elements && reply->element[0]->type == REDIS_REPLY_INTEGER)
        {
            ngx_http_billing_stat_set(NGX_HTTP_BILLING_M_SCHEDULER_BACKLOG,
                                      sched->market->index,
                                      (ngx_atomic_int_t)
                                      reply->element[0]->integer);
        }

        for (i = 0; i < reply->elements; i++) {
            e = reply->element[i];

            if (e->type != REDIS_REPLY_STRING || e->len == 0) {
                continue;
            }

            id.data = (u_char *) e->str;
            id.len = e->len;

            if (ngx_exiting) {
                /* the leases run out; others take them then */
                break;
            }

            ngx_http_billing_run_start(sched, &id, &sched->token);
        }

    } else if (reply && reply->type == REDIS_REPLY_ERROR) {
        ngx_log_error(NGX_LOG_ERR, sched->log, 0,
                      "billing scheduler: Redis refused: \"%*s\"",
                      (size_t) ngx_min(reply->len, 200), reply->str);
    }

    ngx_destroy_pool(sched->taking);
    sched->taking = NULL;
}
