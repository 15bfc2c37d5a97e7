
/*
 * The scheduler's invoices: a run freezes an invoice's parameters in
 * Redis, hands them to the billing engine, and counts the invoice once
 * it is finalized.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_billing_scheduler_int.h"


/* after a 429, the worker takes no new work for this, doubled each time */
#define NGX_HTTP_BILLING_SCHED_PAUSE        1000
#define NGX_HTTP_BILLING_SCHED_PAUSE_MAX    60000


static void ngx_http_billing_run_frozen(void *data, redisReply *reply);
static void ngx_http_billing_run_issue(ngx_http_billing_run_t *run);
static void ngx_http_billing_run_issued(void *data,
    ngx_http_billing_invoice_result_t *result);
static void ngx_http_billing_run_recorded(void *data, redisReply *reply);


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


static ngx_http_billing_redis_script_t  ngx_http_billing_freeze_script;
static ngx_http_billing_redis_script_t  ngx_http_billing_issued_script;


void
ngx_http_billing_scheduler_issue_init(void)
{
    ngx_http_billing_redis_script_init(&ngx_http_billing_freeze_script,
                                       ngx_http_billing_freeze_lua);
    ngx_http_billing_redis_script_init(&ngx_http_billing_issued_script,
                                       ngx_http_billing_issued_lua);
}


void
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

    prefix = &run->owner.market->prefix;

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

    run->job = ngx_http_billing_invoice_issue(&spec, &run->owner,
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
