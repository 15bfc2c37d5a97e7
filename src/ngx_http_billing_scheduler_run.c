
/*
 * The scheduler's runs: one subscription loaded under its lease, what
 * is due decided (the oldest period not invoiced, else a cancelled
 * subscription's final invoice), and the subscription parked at its
 * next date with the lease given back.  The invoice a run freezes and
 * issues: ngx_http_billing_scheduler_issue.c.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include <jansson.h>

#include "ngx_http_billing_status.h"
#include "ngx_http_billing_scheduler_int.h"


/* invoices one run issues before it lets the others go first */
#define NGX_HTTP_BILLING_SCHED_STEPS        32

#define NGX_HTTP_BILLING_SCHED_WAIT_POLL    200


static void ngx_http_billing_run_wait(ngx_event_t *ev);
static void ngx_http_billing_run_loaded(void *data, redisReply *reply);
static ngx_int_t ngx_http_billing_run_parse(ngx_http_billing_run_t *run,
    redisReply *sub, redisReply *nodes);
static void ngx_http_billing_run_decide(ngx_http_billing_run_t *run);
static void ngx_http_billing_run_parked(void *data, redisReply *reply);
static ngx_int_t ngx_http_billing_run_str(ngx_http_billing_run_t *run,
    ngx_str_t *dst, redisReply *hash, const char *field);
static void ngx_http_billing_run_json(ngx_http_billing_run_t *run,
    json_t *plan, const char *name, ngx_str_t *dst);
static ngx_msec_t ngx_http_billing_scheduler_wait_max(
    ngx_http_billing_main_conf_t *bmcf);
static u_char *ngx_http_billing_run_log_handler(ngx_log_t *log, u_char *buf,
    size_t len);


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


static ngx_http_billing_redis_script_t  ngx_http_billing_load_script;
static ngx_http_billing_redis_script_t  ngx_http_billing_park_script;


void
ngx_http_billing_scheduler_run_init(void)
{
    ngx_http_billing_redis_script_init(&ngx_http_billing_load_script,
                                       ngx_http_billing_load_lua);
    ngx_http_billing_redis_script_init(&ngx_http_billing_park_script,
                                       ngx_http_billing_park_lua);
}


void
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
    run->owner.market = sched->market;
    run->owner.conf_ctx = sched->market->timer_ctx;

    run->wait.handler = ngx_http_billing_run_wait;
    run->wait.data = run;
    run->wait.log = &run->log;

    sched->running++;

    ngx_log_debug0(NGX_LOG_DEBUG_HTTP, &run->log, 0,
                   "billing scheduler: run started");

    ngx_http_billing_run_load(run);
}


void
ngx_http_billing_run_load(ngx_http_billing_run_t *run)
{
    ngx_str_t                  argv[8];
    ngx_http_billing_owner_t   node;

    if (ngx_exiting) {
        /* the lease given back: another worker goes on at once */
        ngx_http_billing_run_park(run, ngx_time(), 0);
        return;
    }

    argv[4] = run->token;
    argv[7] = run->id;

    /*
     * The meter's marks are the node's, whatever the marketplace: under
     * the prefix itself, where the default marketplace's keys are.
     */

    node = run->owner;
    node.market = ((ngx_http_billing_srv_conf_t **)
                   run->owner.bmcf->markets.elts)[0];

    if (ngx_http_billing_store_key(&run->owner, &argv[0], "sub:", &run->id,
                                   NULL)
        != NGX_OK
        || ngx_http_billing_store_key(&node, &argv[1], "meter:nodes",
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

    if (ngx_http_billing_run_str(run, &run->state, sub, "state") != NGX_OK
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

    ngx_http_billing_run_json(run, plan, "currency", &run->currency);
    ngx_http_billing_run_json(run, plan, "unit_price", &run->unit_price);
    ngx_http_billing_run_json(run, plan, "unit", &run->unit);

    v = json_object_get(plan, "base_price");
    run->base_price = json_is_integer(v) ? json_integer_value(v) : -1;

    v = json_object_get(plan, "days_until_due");
    run->days_until_due = json_is_integer(v) ? json_integer_value(v) : 30;

    if (period.len == 0) {
        ngx_http_billing_run_json(run, plan, "metering_period", &period);
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


/* when < 0: no more work unless units are left to bill */

void
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
        ngx_http_billing_stat_inc(NGX_HTTP_BILLING_M_SCHEDULER_FAILURES,
                                  run->owner.market->index, 0, 0);

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


void
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

ngx_int_t
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

    return ngx_http_billing_store_copy(run->pool, dst, v);
}


/* a string member of the plan, "" when none; data NULL: no memory */

static void
ngx_http_billing_run_json(ngx_http_billing_run_t *run, json_t *plan,
    const char *name, ngx_str_t *dst)
{
    json_t  *v;

    v = json_object_get(plan, name);

    dst->len = json_is_string(v) ? json_string_length(v) : 0;
    dst->data = ngx_pnalloc(run->pool, dst->len + 1);

    if (dst->data == NULL) {
        return;
    }

    if (dst->len) {
        ngx_memcpy(dst->data, json_string_value(v), dst->len);
    }

    dst->data[dst->len] = '\0';
}


/* a non-negative integer field; 0 when absent, -1 when not a number */

int64_t
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
