
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
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include <jansson.h>

#include "ngx_http_billing_scheduler.h"
#include "ngx_http_billing_invoice.h"
#include "ngx_http_billing_store.h"
#include "ngx_http_billing_stripe.h"
#include "ngx_billing_plan.h"


/* subscriptions worked on at once by one worker */
#define NGX_HTTP_BILLING_SCHED_RUNS         4

#define NGX_HTTP_BILLING_SCHED_TICK         1000

/* invoices one run issues before it lets the others go first */
#define NGX_HTTP_BILLING_SCHED_STEPS        32

/* a failed invoice is tried again after 1s, 2s, 4s... 5 minutes */
#define NGX_HTTP_BILLING_SCHED_RETRY_MAX    300

/* after a 429, the worker takes no new work for this, doubled each time */
#define NGX_HTTP_BILLING_SCHED_PAUSE        1000
#define NGX_HTTP_BILLING_SCHED_PAUSE_MAX    60000

#define NGX_HTTP_BILLING_SCHED_WAIT_POLL    200


struct ngx_http_billing_scheduler_s {
    ngx_http_billing_main_conf_t       *bmcf;
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
    ngx_str_t                           marketplace;
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


typedef struct {
    ngx_http_billing_scheduler_t       *sched;
    ngx_http_billing_owner_t            owner;
    ngx_str_t                           id;
    ngx_str_t                           token;
} ngx_http_billing_lease_t;


static ngx_msec_t ngx_http_billing_scheduler_lease(
    ngx_http_billing_main_conf_t *bmcf);
static void ngx_http_billing_scheduler_tick(ngx_event_t *ev);
static void ngx_http_billing_scheduler_taken(void *data, redisReply *reply);
static void ngx_http_billing_scheduler_leased(void *data, redisReply *reply);
static void ngx_http_billing_run_start(ngx_http_billing_scheduler_t *sched,
    ngx_str_t *id, ngx_str_t *token);
static ngx_int_t ngx_http_billing_scheduler_token(
    ngx_http_billing_scheduler_t *sched, ngx_pool_t *pool, ngx_str_t *token);
static void ngx_http_billing_run_load(ngx_http_billing_run_t *run);
static void ngx_http_billing_run_wait(ngx_event_t *ev);
static void ngx_http_billing_run_loaded(void *data, redisReply *reply);
static ngx_int_t ngx_http_billing_run_parse(ngx_http_billing_run_t *run,
    redisReply *sub, redisReply *nodes);
static void ngx_http_billing_run_decide(ngx_http_billing_run_t *run);
static void ngx_http_billing_run_freeze(ngx_http_billing_run_t *run,
    const char *kind, int64_t seq, int64_t bound, int64_t ps, int64_t pe,
    int64_t bs, int64_t be, ngx_uint_t extra);
static void ngx_http_billing_run_frozen(void *data, redisReply *reply);
static void ngx_http_billing_run_issue(ngx_http_billing_run_t *run);
static void ngx_http_billing_run_issued(void *data,
    ngx_http_billing_invoice_result_t *result);
static void ngx_http_billing_run_recorded(void *data, redisReply *reply);
static void ngx_http_billing_run_park(ngx_http_billing_run_t *run,
    int64_t when, ngx_uint_t failed);
static void ngx_http_billing_run_parked(void *data, redisReply *reply);
static void ngx_http_billing_run_end(ngx_http_billing_run_t *run);
static ngx_int_t ngx_http_billing_run_keys(ngx_http_billing_run_t *run,
    ngx_str_t *argv, const char *record);
static ngx_int_t ngx_http_billing_run_str(ngx_http_billing_run_t *run,
    ngx_str_t *dst, redisReply *hash, const char *field);
static int64_t ngx_http_billing_run_int(redisReply *hash, const char *field);
static ngx_http_conf_ctx_t *ngx_http_billing_scheduler_server(
    ngx_http_billing_main_conf_t *bmcf, ngx_str_t *marketplace);
static ngx_msec_t ngx_http_billing_scheduler_wait_max(
    ngx_http_billing_main_conf_t *bmcf);
static int64_t ngx_http_billing_now_ms(void);
static u_char *ngx_http_billing_run_log_handler(ngx_log_t *log, u_char *buf,
    size_t len);


/*
 * KEYS[1] the due set
 * ARGV[1] now, ARGV[2] how many, ARGV[3] the lease key prefix,
 * ARGV[4] this worker, ARGV[5] the lease in milliseconds
 *
 * What is taken is due again when its lease runs out (its worker died),
 * and meanwhile out of the way of the others.
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
    "return got\n";


/*
 * KEYS[1] the subscription, KEYS[2] the meter's marks, KEYS[3] the
 * lease, KEYS[4] the due set
 *
 * ARGV[1] the run's lease token, ARGV[2] the lease in milliseconds,
 * ARGV[3] now, ARGV[4] the id
 *
 * Each step renews the lease, so that a long run keeps it; a run that
 * lost it (it ran out, another took it) stops: "lost".
 */

static const char  ngx_http_billing_load_lua[] =
    "if redis.call('GET', KEYS[3]) ~= ARGV[1] then return 'lost' end\n"
    "redis.call('PEXPIRE', KEYS[3], ARGV[2])\n"
    "redis.call('ZADD', KEYS[4], 'XX',"
    " tonumber(ARGV[3]) + math.ceil(tonumber(ARGV[2]) / 1000), ARGV[4])\n"
    "local s = redis.call('HGETALL', KEYS[1])\n"
    "if #s == 0 then return false end\n"
    "return { s, redis.call('HGETALL', KEYS[2]) }\n";


/*
 * Freezes an invoice's parameters, once: the units of the periods that
 * started before ARGV[3] and are not billed yet are recorded with it,
 * and leave the usage (a unit that comes later for such a period starts
 * its field again, unbilled).  The subscription names the record until
 * the invoice is finalized: until then it is never dropped from "due".
 *
 * KEYS[1] the subscription, KEYS[2] the invoice's record, KEYS[3] the
 * usage (period start -> units), KEYS[4] what of it is billed
 *
 * ARGV[1] kind, ARGV[2] its sequence number (the period's, the final
 * invoice's), ARGV[3] the bound ("inf": all), ARGV[4], ARGV[5] the
 * period, ARGV[6], ARGV[7] the base price's period, ARGV[8] now,
 * ARGV[9] "1" when nothing is to be issued without units
 *
 * The reply: "done" (issued already), "nothing", or the record.
 */

static const char  ngx_http_billing_freeze_lua[] =
    "local f = 'billed_through'\n"
    "if ARGV[1] == 'final' then f = 'finals' end\n"
    "if tonumber(redis.call('HGET', KEYS[1], f) or '0')"
    " >= tonumber(ARGV[2]) then\n"
    "  return 'done'\n"
    "end\n"
    "local r = redis.call('HGETALL', KEYS[2])\n"
    "if #r > 0 then return r end\n"
    "local bound = math.huge\n"
    "if ARGV[3] ~= 'inf' then bound = tonumber(ARGV[3]) end\n"
    "local q = 0\n"
    "local u = redis.call('HGETALL', KEYS[3])\n"
    "for i = 1, #u, 2 do\n"
    "  local s = tonumber(u[i])\n"
    "  if s and s < bound then\n"
    "    local n = tonumber(u[i + 1]) or 0\n"
    "    local b = tonumber(redis.call('HGET', KEYS[4], u[i]) or '0')\n"
    "    if n > b then\n"
    "      q = q + n - b\n"
    "    end\n"
    "    if n >= b then\n"
    "      redis.call('HDEL', KEYS[3], u[i])\n"
    "      redis.call('HDEL', KEYS[4], u[i])\n"
    "    end\n"
    "  end\n"
    "end\n"
    "if ARGV[9] == '1' and q == 0 then return 'nothing' end\n"
    "redis.call('HSET', KEYS[1], 'frozen', KEYS[2])\n"
    "redis.call('HSET', KEYS[2], 'kind', ARGV[1], 'seq', ARGV[2],"
    " 'units', string.format('%.0f', q), 'period_start', ARGV[4],"
    " 'period_end', ARGV[5], 'base_start', ARGV[6], 'base_end', ARGV[7],"
    " 'frozen_at', ARGV[8])\n"
    "return redis.call('HGETALL', KEYS[2])\n";


/*
 * The invoice is finalized: the subscription counts it, its record goes.
 * KEYS[1] the subscription, KEYS[2] the record; ARGV[1] kind, ARGV[2] seq
 */

static const char  ngx_http_billing_issued_lua[] =
    "local f = 'billed_through'\n"
    "if ARGV[1] == 'final' then f = 'finals' end\n"
    "if tonumber(redis.call('HGET', KEYS[1], f) or '0')"
    " < tonumber(ARGV[2]) then\n"
    "  redis.call('HSET', KEYS[1], f, ARGV[2])\n"
    "end\n"
    "redis.call('HDEL', KEYS[1], 'retries', 'frozen')\n"
    "redis.call('DEL', KEYS[2])\n"
    "return 1\n";


/*
 * Until when the subscription rests, and the lease given back.
 *
 * KEYS[1] the due set, KEYS[2] the lease, KEYS[3] the subscription,
 * KEYS[4] its usage, KEYS[5] what of it is billed
 *
 * ARGV[1] when ("": no more work, unless units are still to be billed,
 * which then wait ARGV[5] seconds), ARGV[2] the id, ARGV[3] the run's
 * lease token, ARGV[4] "1" after a failure, ARGV[6] now, ARGV[7] the
 * state the run decided on
 *
 * A subscription whose state changed since (a cancellation) is due now;
 * one with an invoice frozen and not finalized is never dropped.
 */

static const char  ngx_http_billing_park_lua[] =
    "if ARGV[4] == '1' then\n"
    "  redis.call('HINCRBY', KEYS[3], 'retries', 1)\n"
    "end\n"
    "local state = redis.call('HGET', KEYS[3], 'state')\n"
    "if state and state ~= ARGV[7] then\n"
    "  redis.call('ZADD', KEYS[1], ARGV[6], ARGV[2])\n"
    "elseif ARGV[1] == '' and"
    " redis.call('HEXISTS', KEYS[3], 'frozen') == 1 then\n"
    "  redis.call('ZADD', KEYS[1], tonumber(ARGV[6]) + 60, ARGV[2])\n"
    "elseif ARGV[1] ~= '' then\n"
    "  redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])\n"
    "else\n"
    "  local left = false\n"
    "  local u = redis.call('HGETALL', KEYS[4])\n"
    "  for i = 1, #u, 2 do\n"
    "    if (tonumber(u[i + 1]) or 0)"
    " > tonumber(redis.call('HGET', KEYS[5], u[i]) or '0') then\n"
    "      left = true\n"
    "      break\n"
    "    end\n"
    "  end\n"
    "  if left and redis.call('HGET', KEYS[3], 'state') == 'cancelled'"
    " and redis.call('HGET', KEYS[3], 'period_start') then\n"
    "    redis.call('ZADD', KEYS[1], tonumber(ARGV[6]) + tonumber(ARGV[5]),"
    " ARGV[2])\n"
    "  else\n"
    "    redis.call('ZREM', KEYS[1], ARGV[2])\n"
    "  end\n"
    "end\n"
    "if redis.call('GET', KEYS[2]) == ARGV[3] then\n"
    "  redis.call('DEL', KEYS[2])\n"
    "end\n"
    "return 1\n";


static ngx_http_billing_redis_script_t  ngx_http_billing_take_script;
static ngx_http_billing_redis_script_t  ngx_http_billing_load_script;
static ngx_http_billing_redis_script_t  ngx_http_billing_freeze_script;
static ngx_http_billing_redis_script_t  ngx_http_billing_issued_script;
static ngx_http_billing_redis_script_t  ngx_http_billing_park_script;


ngx_int_t
ngx_http_billing_scheduler_init(ngx_conf_t *cf)
{
    ngx_http_core_srv_conf_t      **cscfp;
    ngx_http_core_main_conf_t      *cmcf;
    ngx_http_billing_main_conf_t   *bmcf;

    ngx_http_billing_redis_script_init(&ngx_http_billing_take_script,
                                       ngx_http_billing_take_lua);
    ngx_http_billing_redis_script_init(&ngx_http_billing_load_script,
                                       ngx_http_billing_load_lua);
    ngx_http_billing_redis_script_init(&ngx_http_billing_freeze_script,
                                       ngx_http_billing_freeze_lua);
    ngx_http_billing_redis_script_init(&ngx_http_billing_issued_script,
                                       ngx_http_billing_issued_lua);
    ngx_http_billing_redis_script_init(&ngx_http_billing_park_script,
                                       ngx_http_billing_park_lua);

    bmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_billing_module);

    /* a node with the gate only still issues invoices: the first server */

    if (bmcf->timer_ctx == NULL) {
        cmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_core_module);

        if (cmcf->servers.nelts) {
            cscfp = cmcf->servers.elts;
            bmcf->timer_ctx = cscfp[0]->ctx;
        }
    }

    return NGX_OK;
}


ngx_int_t
ngx_http_billing_scheduler_init_worker(ngx_cycle_t *cycle,
    ngx_http_billing_main_conf_t *bmcf)
{
    u_char                        *p;
    ngx_http_billing_scheduler_t  *sched;

    if (!bmcf->scheduler || bmcf->timer_ctx == NULL
        || bmcf->stripe_key.len == 0 || bmcf->redis == NULL)
    {
        return NGX_OK;
    }

    sched = ngx_pcalloc(cycle->pool, sizeof(ngx_http_billing_scheduler_t));
    if (sched == NULL) {
        return NGX_ERROR;
    }

    p = ngx_pnalloc(cycle->pool, cycle->hostname.len + 1 + NGX_INT64_LEN);
    if (p == NULL) {
        return NGX_ERROR;
    }

    sched->worker.data = p;
    sched->worker.len = ngx_sprintf(p, "%V:%P", &cycle->hostname, ngx_pid)
                        - p;

    sched->bmcf = bmcf;
    sched->log = cycle->log;

    sched->tick.handler = ngx_http_billing_scheduler_tick;
    sched->tick.data = sched;
    sched->tick.log = cycle->log;
    sched->tick.cancelable = 1;

    bmcf->sched = sched;

    /* workers of a node tick apart */
    ngx_add_timer(&sched->tick, NGX_HTTP_BILLING_SCHED_TICK / 2
                                + ngx_random() % NGX_HTTP_BILLING_SCHED_TICK);

    return NGX_OK;
}


void
ngx_http_billing_scheduler_exit_worker(ngx_http_billing_main_conf_t *bmcf)
{
    /* runs under way are resumed by whoever takes them next */
    bmcf->sched = NULL;
}


ngx_int_t
ngx_http_billing_scheduler_kick(ngx_http_billing_main_conf_t *bmcf,
    ngx_str_t *id)
{
    ngx_str_t                      argv[6];
    ngx_pool_t                    *pool;
    ngx_http_billing_lease_t      *lease;
    ngx_http_billing_scheduler_t  *sched;

    sched = bmcf->sched;

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
    lease->owner.bmcf = bmcf;
    lease->owner.conf_ctx = bmcf->timer_ctx;

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
                                      ngx_http_billing_scheduler_lease(bmcf))
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


static ngx_msec_t
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

    /* Stripe limited a call of this worker's within the last second */

    if (ngx_http_billing_stripe_limited
        && ngx_current_msec - ngx_http_billing_stripe_limited
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
    o.conf_ctx = bmcf->timer_ctx;

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


static void
ngx_http_billing_run_start(ngx_http_billing_scheduler_t *sched, ngx_str_t *id,
    ngx_str_t *token)
{
    ngx_pool_t              *pool;
    ngx_http_billing_run_t  *run;

    pool = ngx_create_pool(4096, sched->log);
    if (pool == NULL) {
        return;
    }

    run = ngx_pcalloc(pool, sizeof(ngx_http_billing_run_t));
    if (run == NULL) {
        ngx_destroy_pool(pool);
        return;
    }

    run->pool = pool;
    run->sched = sched;

    run->log = *sched->log;
    run->log.handler = ngx_http_billing_run_log_handler;
    run->log.data = run;
    run->log.action = NULL;
    pool->log = &run->log;

    run->id.data = ngx_pstrdup(pool, id);
    if (run->id.data == NULL) {
        ngx_destroy_pool(pool);
        return;
    }

    run->id.len = id->len;

    run->token.data = ngx_pstrdup(pool, token);
    if (run->token.data == NULL) {
        ngx_destroy_pool(pool);
        return;
    }

    run->token.len = token->len;

    run->owner.pool = pool;
    run->owner.log = &run->log;
    run->owner.bmcf = sched->bmcf;
    run->owner.conf_ctx = sched->bmcf->timer_ctx;

    run->wait.handler = ngx_http_billing_run_wait;
    run->wait.data = run;
    run->wait.log = &run->log;

    sched->running++;

    ngx_log_debug0(NGX_LOG_DEBUG_HTTP, &run->log, 0,
                   "billing scheduler: run started");

    ngx_http_billing_run_load(run);
}


static void
ngx_http_billing_run_load(ngx_http_billing_run_t *run)
{
    ngx_str_t  argv[8];

    if (ngx_exiting) {
        /* the lease given back: another worker goes on at once */
        ngx_http_billing_run_park(run, ngx_time(), 0);
        return;
    }

    argv[4] = run->token;
    argv[7] = run->id;

    if (ngx_http_billing_store_key(&run->owner, &argv[0], "sub:", &run->id,
                                   NULL)
        != NGX_OK
        || ngx_http_billing_store_key(&run->owner, &argv[1], "meter:nodes",
                                      NULL, NULL)
           != NGX_OK
        || ngx_http_billing_store_key(&run->owner, &argv[2], "lease:",
                                      &run->id, NULL)
           != NGX_OK
        || ngx_http_billing_store_key(&run->owner, &argv[3], "due", NULL,
                                      NULL)
           != NGX_OK
        || ngx_http_billing_store_num(&run->owner, &argv[5],
                           ngx_http_billing_scheduler_lease(run->owner.bmcf))
           != NGX_OK
        || ngx_http_billing_store_num(&run->owner, &argv[6], ngx_time())
           != NGX_OK
        || ngx_http_billing_store_run(&run->owner,
                                      &ngx_http_billing_load_script, 4, 8,
                                      argv, ngx_http_billing_run_loaded, run)
           != NGX_OK)
    {
        /* Redis is down: the lease runs out, the work waits in "due" */
        ngx_http_billing_run_end(run);
    }
}


static void
ngx_http_billing_run_wait(ngx_event_t *ev)
{
    ngx_http_billing_run_t  *run = ev->data;

    ngx_http_billing_run_load(run);
}


static void
ngx_http_billing_run_loaded(void *data, redisReply *reply)
{
    ngx_http_billing_run_t  *run = data;

    if (reply == NULL || reply->type == REDIS_REPLY_ERROR) {
        ngx_http_billing_run_end(run);
        return;
    }

    if (reply->type == REDIS_REPLY_STATUS || reply->type == REDIS_REPLY_STRING)
    {
        /* the lease ran out and another run has the subscription */
        ngx_log_error(NGX_LOG_WARN, &run->log, 0,
                      "billing scheduler: the lease was lost, stopped");
        ngx_http_billing_run_end(run);
        return;
    }

    if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 2) {
        /* gone */
        ngx_str_set(&run->state, "");
        ngx_http_billing_run_park(run, -1, 0);
        return;
    }

    if (ngx_http_billing_run_parse(run, reply->element[0], reply->element[1])
        != NGX_OK)
    {
        /* looked at again later: a later version may know what to do */
        ngx_http_billing_run_park(run, ngx_time()
                                       + NGX_HTTP_BILLING_SCHED_RETRY_MAX, 1);
        return;
    }

    ngx_http_billing_run_decide(run);
}


static ngx_int_t
ngx_http_billing_run_parse(ngx_http_billing_run_t *run, redisReply *sub,
    redisReply *nodes)
{
    size_t         i;
    json_t        *plan, *v;
    int64_t        now, mark, horizon;
    ngx_str_t      period, s;
    json_error_t   error;

    if (ngx_http_billing_run_str(run, &run->marketplace, sub, "marketplace")
        != NGX_OK
        || ngx_http_billing_run_str(run, &run->state, sub, "state") != NGX_OK
        || ngx_http_billing_run_str(run, &run->cancelled_from, sub,
                                    "cancelled_from") != NGX_OK
        || ngx_http_billing_run_str(run, &run->created, sub, "created_at")
           != NGX_OK
        || ngx_http_billing_run_str(run, &run->org, sub, "consumer_org")
           != NGX_OK
        || ngx_http_billing_run_str(run, &run->email, sub, "email") != NGX_OK
        || ngx_http_billing_run_str(run, &run->name, sub, "name") != NGX_OK
        || ngx_http_billing_run_str(run, &period, sub, "period") != NGX_OK
        || ngx_http_billing_run_str(run, &s, sub, "plan") != NGX_OK)
    {
        return NGX_ERROR;
    }

    /* its invoices go with its marketplace's Stripe settings */

    run->owner.conf_ctx = ngx_http_billing_scheduler_server(run->owner.bmcf,
                                                          &run->marketplace);
    if (run->owner.conf_ctx == NULL) {
        ngx_log_error(NGX_LOG_ERR, &run->log, 0,
                      "billing scheduler: no server for the marketplace "
                      "\"%V\" of the subscription", &run->marketplace);
        return NGX_ERROR;
    }

    run->start = ngx_http_billing_run_int(sub, "period_start");
    run->billed = ngx_http_billing_run_int(sub, "billed_through");
    run->finals = ngx_http_billing_run_int(sub, "finals");
    run->cancelled_at = ngx_http_billing_run_int(sub, "cancelled_at");
    run->cancelled_ms = ngx_http_billing_run_int(sub, "cancelled_at_ms");
    run->retries = ngx_http_billing_run_int(sub, "retries");

    plan = json_loadb((char *) s.data, s.len, 0, &error);

    if (plan == NULL) {
        ngx_log_error(NGX_LOG_ERR, &run->log, 0,
                      "billing scheduler: the subscription has no plan");
        return NGX_ERROR;
    }

    v = json_object_get(plan, "currency");
    run->currency.len = json_is_string(v) ? json_string_length(v) : 0;
    run->currency.data = ngx_pnalloc(run->pool, run->currency.len + 1);

    if (run->currency.data && run->currency.len) {
        ngx_memcpy(run->currency.data, json_string_value(v),
                   run->currency.len);
    }

    v = json_object_get(plan, "unit_price");
    run->unit_price.len = json_is_string(v) ? json_string_length(v) : 0;
    run->unit_price.data = ngx_pnalloc(run->pool, run->unit_price.len + 1);

    if (run->unit_price.data && run->unit_price.len) {
        ngx_memcpy(run->unit_price.data, json_string_value(v),
                   run->unit_price.len);
    }

    v = json_object_get(plan, "unit");
    run->unit.len = json_is_string(v) ? json_string_length(v) : 0;
    run->unit.data = ngx_pnalloc(run->pool, run->unit.len + 1);

    if (run->unit.data && run->unit.len) {
        ngx_memcpy(run->unit.data, json_string_value(v), run->unit.len);
    }

    v = json_object_get(plan, "base_price");
    run->base_price = json_is_integer(v) ? json_integer_value(v) : -1;

    v = json_object_get(plan, "days_until_due");
    run->days_until_due = json_is_integer(v) ? json_integer_value(v) : 30;

    if (period.len == 0) {
        v = json_object_get(plan, "metering_period");

        if (json_is_string(v)) {
            period.len = json_string_length(v);
            period.data = ngx_pnalloc(run->pool, period.len + 1);

            if (period.data) {
                ngx_memcpy(period.data, json_string_value(v), period.len);
            }
        }
    }

    json_decref(plan);

    if (run->currency.data == NULL || run->unit_price.data == NULL
        || run->unit.data == NULL || period.data == NULL)
    {
        return NGX_ERROR;
    }

    if (run->currency.len == 0 || run->unit_price.len == 0
        || run->base_price < 0
        || ngx_billing_period_parse(&run->period, (char *) period.data,
                                    period.len) != 0)
    {
        ngx_log_error(NGX_LOG_ERR, &run->log, 0,
                      "billing scheduler: the subscription's plan is "
                      "not usable");
        return NGX_ERROR;
    }

    /*
     * Every worker that flushed counts lately (a live one) must have
     * flushed past the cancellation before its final invoice.
     */

    run->marks_ok = 1;

    if (run->cancelled_ms > 0 && nodes->type == REDIS_REPLY_ARRAY) {
        now = ngx_http_billing_now_ms();
        horizon = 3 * (int64_t) run->owner.bmcf->meter_flush
                  + 2 * (int64_t) run->owner.bmcf->redis_conf->timeout + 2000;

        for (i = 0; i + 1 < nodes->elements; i += 2) {
            mark = 0;

            if (nodes->element[i + 1]->type == REDIS_REPLY_STRING) {
                mark = ngx_atoi((u_char *) nodes->element[i + 1]->str,
                                nodes->element[i + 1]->len);
            }

            if (mark >= now - horizon && mark < run->cancelled_ms) {
                run->marks_ok = 0;
                break;
            }
        }
    }

    return NGX_OK;
}


static void
ngx_http_billing_run_decide(ngx_http_billing_run_t *run)
{
    int64_t                        end, next, now, ps, k;
    ngx_http_billing_main_conf_t  *bmcf;

    bmcf = run->owner.bmcf;
    now = ngx_time();

    if (++run->steps > NGX_HTTP_BILLING_SCHED_STEPS) {
        /* more to do: the others first */
        ngx_http_billing_run_park(run, now, 0);
        return;
    }

    if (run->start <= 0) {
        ngx_http_billing_run_park(run, -1, 0);
        return;
    }

    end = ngx_billing_period_bound(&run->period, run->start,
                                   (uint64_t) run->billed + 1);

    if (end < 0) {
        ngx_log_error(NGX_LOG_ERR, &run->log, 0,
                      "billing scheduler: periods out of range");
        ngx_http_billing_run_park(run, -1, 0);
        return;
    }

    ps = ngx_billing_period_bound(&run->period, run->start,
                                  (uint64_t) run->billed);

    if ((run->state.len == sizeof("active") - 1
         && ngx_strncmp(run->state.data, "active", run->state.len) == 0)
        || (run->state.len == sizeof("past_due") - 1
            && ngx_strncmp(run->state.data, "past_due", run->state.len) == 0))
    {
        if (end + bmcf->invoice_delay > now) {
            ngx_http_billing_run_park(run, end + bmcf->invoice_delay, 0);
            return;
        }

        next = ngx_billing_period_bound(&run->period, run->start,
                                        (uint64_t) run->billed + 2);

        ngx_http_billing_run_freeze(run, "period", run->billed + 1, end, ps,
                                    end, end, next, 0);
        return;
    }

    if (run->state.len != sizeof("cancelled") - 1
        || ngx_strncmp(run->state.data, "cancelled", run->state.len) != 0
        || run->cancelled_at <= 0)
    {
        ngx_http_billing_run_park(run, -1, 0);
        return;
    }

    /* cancelled: what every node counted must be in Redis first */

    if (!run->marks_ok
        && ngx_http_billing_now_ms()
           < run->cancelled_ms
             + (int64_t) ngx_http_billing_scheduler_wait_max(bmcf))
    {
        run->steps--;
        ngx_add_timer(&run->wait, NGX_HTTP_BILLING_SCHED_WAIT_POLL);
        return;
    }

    if (end <= run->cancelled_at) {
        /* the period before the cancellation was not invoiced yet */

        next = ngx_billing_period_bound(&run->period, run->start,
                                        (uint64_t) run->billed + 2);

        ngx_http_billing_run_freeze(run, "period", run->billed + 1, end, ps,
                                    end, end, next, 0);
        return;
    }

    k = ngx_billing_period_index(&run->period, run->start, run->cancelled_at);
    ps = (k >= 1) ? ngx_billing_period_bound(&run->period, run->start,
                                             (uint64_t) k - 1)
                  : run->start;

    if (run->finals == 0) {
        ngx_http_billing_run_freeze(run, "final", 1, -1, ps,
                                    run->cancelled_at, 0, 0, 0);
        return;
    }

    /* units that came after the final invoice: one more, later */

    if (run->cancelled_at + bmcf->invoice_delay > now) {
        ngx_http_billing_run_park(run, run->cancelled_at + bmcf->invoice_delay,
                                  0);
        return;
    }

    ngx_http_billing_run_freeze(run, "final", run->finals + 1, -1, ps,
                                run->cancelled_at, 0, 0, 1);
}


static void
ngx_http_billing_run_freeze(ngx_http_billing_run_t *run, const char *kind,
    int64_t seq, int64_t bound, int64_t ps, int64_t pe, int64_t bs,
    int64_t be, ngx_uint_t extra)
{
    ngx_str_t  argv[13];

    run->kind.data = (u_char *) kind;
    run->kind.len = ngx_strlen(kind);
    run->seq = seq;

    if (ngx_http_billing_run_keys(run, argv, "run") != NGX_OK) {
        ngx_http_billing_run_end(run);
        return;
    }

    argv[4] = run->kind;

    if (bound < 0) {
        ngx_str_set(&argv[6], "inf");

    } else if (ngx_http_billing_store_num(&run->owner, &argv[6], bound)
               != NGX_OK)
    {
        ngx_http_billing_run_end(run);
        return;
    }

    if (extra) {
        ngx_str_set(&argv[12], "1");

    } else {
        ngx_str_set(&argv[12], "0");
    }

    if (ngx_http_billing_store_num(&run->owner, &argv[5], seq) != NGX_OK
        || ngx_http_billing_store_num(&run->owner, &argv[7], ps) != NGX_OK
        || ngx_http_billing_store_num(&run->owner, &argv[8], pe) != NGX_OK
        || ngx_http_billing_store_num(&run->owner, &argv[9], bs) != NGX_OK
        || ngx_http_billing_store_num(&run->owner, &argv[10], be) != NGX_OK
        || ngx_http_billing_store_num(&run->owner, &argv[11], ngx_time())
           != NGX_OK
        || ngx_http_billing_store_run(&run->owner,
                                      &ngx_http_billing_freeze_script, 4, 13,
                                      argv, ngx_http_billing_run_frozen, run)
           != NGX_OK)
    {
        ngx_http_billing_run_end(run);
    }
}


static void
ngx_http_billing_run_frozen(void *data, redisReply *reply)
{
    ngx_http_billing_run_t  *run = data;

    if (reply == NULL || reply->type == REDIS_REPLY_ERROR) {
        if (reply) {
            ngx_log_error(NGX_LOG_ERR, &run->log, 0,
                          "billing scheduler: Redis refused: \"%*s\"",
                          (size_t) ngx_min(reply->len, 200), reply->str);
        }

        ngx_http_billing_run_end(run);
        return;
    }

    if (reply->type == REDIS_REPLY_STATUS || reply->type == REDIS_REPLY_STRING)
    {
        if (reply->len == 4 && ngx_strncmp(reply->str, "done", 4) == 0) {
            /* another run issued it meanwhile */
            ngx_http_billing_run_load(run);
            return;
        }

        ngx_http_billing_run_park(run, -1, 0);
        return;
    }

    if (reply->type != REDIS_REPLY_ARRAY) {
        ngx_http_billing_run_end(run);
        return;
    }

    run->units = ngx_http_billing_run_int(reply, "units");
    run->period_start = ngx_http_billing_run_int(reply, "period_start");
    run->period_end = ngx_http_billing_run_int(reply, "period_end");
    run->base_start = ngx_http_billing_run_int(reply, "base_start");
    run->base_end = ngx_http_billing_run_int(reply, "base_end");

    if (run->units < 0 || run->period_start < 0 || run->period_end < 0) {
        ngx_log_error(NGX_LOG_ERR, &run->log, 0,
                      "billing scheduler: the %V invoice's record is "
                      "damaged", &run->kind);
        ngx_http_billing_run_park(run, ngx_time() + 60, 1);
        return;
    }

    ngx_http_billing_run_issue(run);
}


static void
ngx_http_billing_run_issue(ngx_http_billing_run_t *run)
{
    u_char                           *p;
    ngx_str_t                        *prefix;
    ngx_uint_t                        n;
    ngx_http_billing_invoice_item_t   items[2];
    ngx_http_billing_invoice_meta_t   meta[2];
    ngx_http_billing_invoice_spec_t   spec;

    ngx_memzero(&spec, sizeof(ngx_http_billing_invoice_spec_t));
    ngx_memzero(items, sizeof(items));

    prefix = &run->owner.bmcf->redis_conf->prefix;

    /* named by the period's start: "period:1700000000", "final:1" */

    p = ngx_pnalloc(run->pool, sizeof("period:") + NGX_INT64_LEN);
    if (p == NULL) {
        ngx_http_billing_run_end(run);
        return;
    }

    spec.field.data = p;
    spec.field.len = ngx_sprintf(p, "%V:%L", &run->kind,
                                 run->kind.data[0] == 'p' ? run->period_start
                                                          : run->seq)
                     - p;

    /* as the initial invoice's keys: prefix, subscription, its creation */

    spec.key.len = prefix->len + sizeof("sub:::") - 1 + run->id.len
                   + run->created.len + spec.field.len;
    spec.key.data = ngx_pnalloc(run->pool, spec.key.len);
    if (spec.key.data == NULL) {
        ngx_http_billing_run_end(run);
        return;
    }

    ngx_sprintf(spec.key.data, "%Vsub:%V:%V:%V", prefix, &run->id,
                &run->created, &spec.field);

    spec.subscription = run->id;
    spec.kind = run->kind;
    spec.consumer_org = run->org;
    spec.email = run->email;
    spec.name = run->name;
    spec.currency = run->currency;
    spec.days_until_due = run->days_until_due;
    spec.period_start = run->period_start;
    spec.period_end = run->period_end;
    spec.units = run->units;

    n = 0;

    if (run->kind.data[0] == 'p') {
        ngx_str_set(&items[n].name, "base");
        ngx_str_set(&items[n].description, "Base price");
        items[n].amount = run->base_price;
        items[n].period_start = run->base_start;
        items[n].period_end = run->base_end;
        n++;
    }

    ngx_str_set(&items[n].name, "usage");

    p = ngx_pnalloc(run->pool, sizeof("Usage: ") - 1 + run->unit.len);
    if (p == NULL) {
        ngx_http_billing_run_end(run);
        return;
    }

    items[n].description.data = p;
    items[n].description.len = ngx_sprintf(p, "Usage: %V", &run->unit) - p;
    items[n].amount = -1;
    items[n].quantity = run->units;
    items[n].unit_amount_decimal = run->unit_price;
    items[n].period_start = run->period_start;
    items[n].period_end = ngx_max(run->period_end, run->period_start + 1);
    n++;

    spec.items = items;
    spec.nitems = n;

    ngx_str_set(&meta[0].key, "billing_period_start");
    ngx_str_set(&meta[1].key, "billing_period_end");

    if (ngx_http_billing_store_num(&run->owner, &meta[0].value,
                                   run->period_start) != NGX_OK
        || ngx_http_billing_store_num(&run->owner, &meta[1].value,
                                      run->period_end) != NGX_OK)
    {
        ngx_http_billing_run_end(run);
        return;
    }

    spec.metadata = meta;
    spec.nmetadata = 2;

    spec.handler = ngx_http_billing_run_issued;
    spec.data = run;

    ngx_log_error(NGX_LOG_INFO, &run->log, 0,
                  "billing scheduler: issuing the %V invoice for %L - %L, "
                  "%L units", &run->kind, run->period_start, run->period_end,
                  run->units);

    run->job = ngx_http_billing_invoice_issue(&spec, run->owner.bmcf,
                                              run->owner.conf_ctx,
                                              &run->log);
    if (run->job == NULL) {
        ngx_http_billing_run_end(run);
    }
}


static void
ngx_http_billing_run_issued(void *data,
    ngx_http_billing_invoice_result_t *result)
{
    ngx_http_billing_run_t  *run = data;

    ngx_str_t                      keys[4], argv[4];
    ngx_msec_t                     pause;
    ngx_http_billing_scheduler_t  *sched;

    run->job = NULL;
    sched = run->sched;

    if (result->rc != NGX_OK) {

        if (result->stripe_status == NGX_HTTP_TOO_MANY_REQUESTS) {
            /* Stripe's rate limit: this worker takes nothing for a while */
            pause = sched->pause ? ngx_min(2 * sched->pause,
                                           NGX_HTTP_BILLING_SCHED_PAUSE_MAX)
                                 : NGX_HTTP_BILLING_SCHED_PAUSE;
            sched->pause = pause;
            sched->paused_until = ngx_current_msec + pause;

            ngx_log_error(NGX_LOG_WARN, &run->log, 0,
                          "billing scheduler: Stripe limits the rate, "
                          "pausing for %Mms", pause);
        }

        ngx_http_billing_run_park(run, ngx_time()
                                  + ngx_min((int64_t) 1
                                            << ngx_min(ngx_max(run->retries,
                                                               0), 9),
                                            NGX_HTTP_BILLING_SCHED_RETRY_MAX),
                                  1);
        return;
    }

    sched->pause = 0;

    if (ngx_http_billing_run_keys(run, keys, "run") != NGX_OK
        || ngx_http_billing_store_num(&run->owner, &argv[3], run->seq)
           != NGX_OK)
    {
        ngx_http_billing_run_end(run);
        return;
    }

    argv[0] = keys[0];
    argv[1] = keys[1];
    argv[2] = run->kind;

    if (ngx_http_billing_store_run(&run->owner,
                                   &ngx_http_billing_issued_script, 2, 4,
                                   argv, ngx_http_billing_run_recorded, run)
        != NGX_OK)
    {
        ngx_http_billing_run_end(run);
    }
}


static void
ngx_http_billing_run_recorded(void *data, redisReply *reply)
{
    ngx_http_billing_run_t  *run = data;

    if (reply == NULL || reply->type == REDIS_REPLY_ERROR) {
        ngx_http_billing_run_end(run);
        return;
    }

    /* on to what else is due */
    ngx_http_billing_run_load(run);
}


/* when < 0: no more work unless units are left to bill */

static void
ngx_http_billing_run_park(ngx_http_billing_run_t *run, int64_t when,
    ngx_uint_t failed)
{
    ngx_str_t                      argv[12];
    ngx_http_billing_main_conf_t  *bmcf;

    bmcf = run->owner.bmcf;

    if (when < 0) {
        ngx_str_set(&argv[5], "");

    } else if (ngx_http_billing_store_num(&run->owner, &argv[5], when)
               != NGX_OK)
    {
        ngx_http_billing_run_end(run);
        return;
    }

    argv[6] = run->id;
    argv[7] = run->token;
    argv[11] = run->state;

    if (failed) {
        ngx_str_set(&argv[8], "1");

    } else {
        ngx_str_set(&argv[8], "0");
    }

    if (ngx_http_billing_store_key(&run->owner, &argv[0], "due", NULL, NULL)
        != NGX_OK
        || ngx_http_billing_store_key(&run->owner, &argv[1], "lease:",
                                      &run->id, NULL) != NGX_OK
        || ngx_http_billing_store_key(&run->owner, &argv[2], "sub:",
                                      &run->id, NULL) != NGX_OK
        || ngx_http_billing_store_key(&run->owner, &argv[3], "usage:",
                                      &run->id, NULL) != NGX_OK
        || ngx_http_billing_store_key(&run->owner, &argv[4], "billed:",
                                      &run->id, NULL) != NGX_OK
        || ngx_http_billing_store_num(&run->owner, &argv[9],
                                      bmcf->invoice_delay) != NGX_OK
        || ngx_http_billing_store_num(&run->owner, &argv[10], ngx_time())
           != NGX_OK
        || ngx_http_billing_store_run(&run->owner,
                                      &ngx_http_billing_park_script, 5, 12,
                                      argv, ngx_http_billing_run_parked, run)
           != NGX_OK)
    {
        ngx_http_billing_run_end(run);
    }
}


static void
ngx_http_billing_run_parked(void *data, redisReply *reply)
{
    ngx_http_billing_run_end(data);
}


static void
ngx_http_billing_run_end(ngx_http_billing_run_t *run)
{
    if (run->wait.timer_set) {
        ngx_del_timer(&run->wait);
    }

    if (run->job) {
        ngx_http_billing_invoice_detach(run->job);
        run->job = NULL;
    }

    run->sched->running--;

    ngx_log_debug0(NGX_LOG_DEBUG_HTTP, &run->log, 0,
                   "billing scheduler: run ended");

    ngx_destroy_pool(run->pool);
}


/* argv[0] the subscription, argv[1] the record of the invoice under way */

static ngx_int_t
ngx_http_billing_run_keys(ngx_http_billing_run_t *run, ngx_str_t *argv,
    const char *record)
{
    u_char  *p;
    size_t   len;

    if (ngx_http_billing_store_key(&run->owner, &argv[0], "sub:", &run->id,
                                   NULL)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    len = argv[0].len + sizeof(":run::") + run->kind.len + NGX_INT64_LEN;

    p = ngx_pnalloc(run->pool, len);
    if (p == NULL) {
        return NGX_ERROR;
    }

    argv[1].data = p;
    argv[1].len = ngx_sprintf(p, "%V:%s:%V:%L", &argv[0], record, &run->kind,
                              run->seq)
                  - p;

    if (ngx_http_billing_store_key(&run->owner, &argv[2], "usage:", &run->id,
                                   NULL)
        != NGX_OK
        || ngx_http_billing_store_key(&run->owner, &argv[3], "billed:",
                                      &run->id, NULL) != NGX_OK)
    {
        return NGX_ERROR;
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_billing_run_str(ngx_http_billing_run_t *run, ngx_str_t *dst,
    redisReply *hash, const char *field)
{
    redisReply  *v;

    v = ngx_http_billing_store_field(hash, field);

    if (v == NULL || v->type != REDIS_REPLY_STRING) {
        ngx_str_set(dst, "");
        return NGX_OK;
    }

    dst->data = ngx_pnalloc(run->pool, v->len + 1);
    if (dst->data == NULL) {
        return NGX_ERROR;
    }

    ngx_memcpy(dst->data, v->str, v->len);
    dst->data[v->len] = '\0';
    dst->len = v->len;

    return NGX_OK;
}


/* a non-negative integer field; 0 when absent, -1 when not a number */

static int64_t
ngx_http_billing_run_int(redisReply *hash, const char *field)
{
    redisReply  *v;

    if (hash == NULL) {
        return 0;
    }

    v = ngx_http_billing_store_field(hash, field);

    if (v == NULL || v->type != REDIS_REPLY_STRING || v->len == 0) {
        return 0;
    }

    return ngx_atoof((u_char *) v->str, v->len);
}


/*
 * The server whose Stripe settings and location a subscription's
 * invoices use, by the marketplace recorded on it; every subscription
 * belongs to the http-level one ("") in this version.
 */

static ngx_http_conf_ctx_t *
ngx_http_billing_scheduler_server(ngx_http_billing_main_conf_t *bmcf,
    ngx_str_t *marketplace)
{
    if (marketplace->len) {
        return NULL;
    }

    return bmcf->timer_ctx;
}


/* how long a final invoice waits for every node's counts, at most */

static ngx_msec_t
ngx_http_billing_scheduler_wait_max(ngx_http_billing_main_conf_t *bmcf)
{
    return ngx_min(2 * bmcf->meter_flush + bmcf->redis_conf->timeout
                   + 1000, 10000);
}


ngx_msec_t
ngx_http_billing_scheduler_final_wait(ngx_http_billing_main_conf_t *bmcf)
{
    return ngx_http_billing_scheduler_wait_max(bmcf);
}


static int64_t
ngx_http_billing_now_ms(void)
{
    ngx_time_t  *tp;

    tp = ngx_timeofday();

    return (int64_t) tp->sec * 1000 + tp->msec;
}


static u_char *
ngx_http_billing_run_log_handler(ngx_log_t *log, u_char *buf, size_t len)
{
    u_char                  *p;
    ngx_http_billing_run_t  *run;

    p = buf;

    if (log->action) {
        p = ngx_snprintf(buf, len, " while %s", log->action);
        len -= p - buf;
        buf = p;
    }

    run = log->data;

    return ngx_snprintf(buf, len, ", billing scheduler: subscription \"%V\"",
                        &run->id);
}
