
/*
 * Reconciliation: webhooks get lost (Stripe gives up after three days,
 * endpoints get disabled, secrets get rotated wrong), so open invoices
 * are asked about.
 *
 * The invoice script puts every open or uncollectible invoice of a
 * subscription into "P reconcile", scored by when to ask about it: one
 * billing_reconcile after it was recorded, again every billing_reconcile
 * while it stays open, and it leaves once paid or void.  Every worker
 * ticks each second and takes what is due, a few at a time: the script
 * that takes an invoice also moves it one interval on, atomically, so
 * exactly one node asks about it in a round.  Stripe's answer is
 * recorded by the invoice script, as a webhook would be, so the order
 * rules make it harmless if a webhook came meanwhile.  A failed ask is
 * tried again sooner, backing off; a 429 of any call of the worker stops
 * new asks for a second.
 *
 * The same tick makes subscriptions past_due (billing_overdue): the
 * invoice script puts an open period invoice into "P overdue", scored by
 * its due date plus billing_overdue, and a script takes what is due.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include <jansson.h>

#include "ngx_http_billing_module.h"
#include "ngx_http_billing_reconcile.h"
#include "ngx_http_billing_redis.h"
#include "ngx_http_billing_store.h"
#include "ngx_http_billing_stripe.h"
#include "ngx_http_billing_invoice.h"
#include "ngx_http_billing_status.h"
#include "ngx_http_billing_cache.h"
#include "ngx_billing_state.h"


#define NGX_HTTP_BILLING_RECONCILE_TICK     1000

/* asks under way in a worker */
#define NGX_HTTP_BILLING_RECONCILE_RUNS     4

/* a failed ask is tried again after this, doubling, at most an interval */
#define NGX_HTTP_BILLING_RECONCILE_RETRY    2


/* a worker's reconciler of one marketplace */
typedef struct {
    ngx_http_billing_main_conf_t      *bmcf;
    ngx_http_billing_srv_conf_t       *market;
    ngx_log_t                         *log;
    ngx_event_t                        tick;
    ngx_pool_t                        *taking;
    ngx_pool_t                        *marking;
    ngx_uint_t                         running;
    unsigned                           asks:1;     /* reconciliation on */
} ngx_http_billing_reconciler_t;


typedef struct {
    ngx_http_billing_owner_t           owner;
    ngx_str_t                          invoice;
    ngx_str_t                          subscription;
    ngx_str_t                          kind;
    ngx_str_t                          status;
    ngx_http_billing_stripe_call_t     call;
    ngx_uint_t                         source;
    ngx_http_billing_reconcile_pt      done;
    void                              *data;
    unsigned                           gone:1;
} ngx_http_billing_check_t;


/* a worker's ask of its own round */
typedef struct {
    ngx_pool_t                        *pool;
    ngx_http_billing_reconciler_t     *rec;
} ngx_http_billing_round_t;


static void ngx_http_billing_reconcile_tick(ngx_event_t *ev);
static void ngx_http_billing_reconcile_overdue(
    ngx_http_billing_reconciler_t *rec);
static void ngx_http_billing_reconcile_marked(void *data, redisReply *reply);
static void ngx_http_billing_reconcile_taken(void *data, redisReply *reply);
static void ngx_http_billing_reconcile_asked(void *data, ngx_uint_t result);
static void ngx_http_billing_reconcile_answered(
    ngx_http_billing_stripe_call_t *call);
static void ngx_http_billing_reconcile_recorded(void *data,
    redisReply *reply);
static void ngx_http_billing_reconcile_finish(ngx_http_billing_check_t *chk,
    ngx_uint_t result);
static ngx_int_t ngx_http_billing_reconcile_later(
    ngx_http_billing_check_t *chk, ngx_uint_t gone);
static void ngx_http_billing_reconcile_ignore(void *data, redisReply *reply);
static ngx_uint_t ngx_http_billing_reconcile_missing(
    ngx_http_billing_stripe_call_t *call);


/*
 * KEYS[1] the set
 * ARGV[1] now, ARGV[2] how many, ARGV[3] the interval in seconds,
 * ARGV[4] the invoice key prefix
 *
 * The reply: how many the set holds, then id, subscription and kind of
 * each invoice taken.
 */

static const char  ngx_http_billing_rtake_lua[] =
    "local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1],"
    " 'LIMIT', 0, tonumber(ARGV[2]))\n"
    "local got = {}\n"
    "for _, id in ipairs(ids) do\n"
    "  local h = redis.call('HMGET', ARGV[4] .. id, 'status',"
    " 'subscription', 'kind')\n"
    "  if h[1] ~= 'open' and h[1] ~= 'uncollectible' then\n"
    "    redis.call('ZREM', KEYS[1], id)\n"
    "  else\n"
    "    redis.call('ZADD', KEYS[1], 'XX',"
    " tonumber(ARGV[1]) + tonumber(ARGV[3]), id)\n"
    "    got[#got + 1] = id\n"
    "    got[#got + 1] = h[2] or ''\n"
    "    got[#got + 1] = h[3] or ''\n"
    "  end\n"
    "end\n"
    "table.insert(got, 1, redis.call('ZCARD', KEYS[1]))\n"
    "return got\n";


/*
 * KEYS[1] the set, KEYS[2] the invoice; ARGV[1] the invoice id, ARGV[2]
 * now, ARGV[3] the interval in seconds, ARGV[4] "gone" when Stripe has
 * no such invoice
 */

static const char  ngx_http_billing_rlater_lua[] =
    "if ARGV[4] == 'gone' then\n"
    "  redis.call('ZREM', KEYS[1], ARGV[1])\n"
    "  return 0\n"
    "end\n"
    "local n = redis.call('HINCRBY', KEYS[2], 'reconcile_failures', 1)\n"
    "local wait = math.min(tonumber(ARGV[3]),"
    " " ngx_value(NGX_HTTP_BILLING_RECONCILE_RETRY)
    " * 2 ^ math.min(n - 1, 16))\n"
    "redis.call('ZADD', KEYS[1], 'XX', tonumber(ARGV[2]) + wait, ARGV[1])\n"
    "return n\n";


/*
 * KEYS[1] the overdue set
 * ARGV[1] now, ARGV[2] the invoice key prefix, ARGV[3] the subscription
 * key prefix, ARGV[4] the notification channel
 *
 * An invoice still open makes its active subscription past_due; one of
 * a subscription past_due for another invoice is found by the invoice
 * script when that one is paid.
 */

static const char  ngx_http_billing_overdue_lua[] =
    "local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1],"
    " 'LIMIT', 0, 32)\n"
    "local n = 0\n"
    "for _, id in ipairs(ids) do\n"
    "  local h = redis.call('HMGET', ARGV[2] .. id, 'status',"
    " 'subscription')\n"
    "  local st = false\n"
    "  if h[1] == 'open' and h[2] then\n"
    "    st = redis.call('HGET', ARGV[3] .. h[2], 'state')\n"
    "  end\n"
    "  redis.call('ZREM', KEYS[1], id)\n"
    "  if st == 'active' then\n"
    "    local k = ARGV[3] .. h[2]\n"
    "    redis.call('HSET', k, 'state', 'past_due', 'overdue_invoice', id,"
    " 'updated_at', ARGV[1])\n"
    "    local v = redis.call('HINCRBY', k, 'version', 1)\n"
    "    redis.call('PUBLISH', ARGV[4], v .. ' ' .. h[2])\n"
    "    n = n + 1\n"
    "  end\n"
    "end\n"
    "return n\n";


static ngx_http_billing_redis_script_t  ngx_http_billing_overdue_script;
static ngx_http_billing_redis_script_t  ngx_http_billing_rtake_script;
static ngx_http_billing_redis_script_t  ngx_http_billing_rlater_script;


/* billing_reconcile and billing_overdue: TIME in whole seconds, or off */

char *
ngx_http_billing_reconcile_conf(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    char  *p = conf;

    ngx_int_t    n;
    ngx_str_t   *value;
    ngx_msec_t  *time;

    time = (ngx_msec_t *) (p + cmd->offset);

    if (*time != NGX_CONF_UNSET_MSEC) {
        return "is duplicate";
    }

    value = cf->args->elts;

    if (ngx_strcmp(value[1].data, "off") == 0) {
        *time = 0;
        return NGX_CONF_OK;
    }

    /* whole seconds: the sets are scored in seconds */

    n = ngx_parse_time(&value[1], 1);

    if (n == NGX_ERROR || n == 0) {
        return "has an invalid value: a time of a second or more, or "
               "\"off\"";
    }

    *time = (ngx_msec_t) n * 1000;

    return NGX_CONF_OK;
}


ngx_int_t
ngx_http_billing_reconcile_init_worker(ngx_cycle_t *cycle,
    ngx_http_billing_main_conf_t *bmcf)
{
    ngx_uint_t                      i, asks;
    ngx_http_billing_srv_conf_t   **markets, *m;
    ngx_http_billing_reconciler_t  *rec;

    ngx_http_billing_redis_script_init(&ngx_http_billing_rtake_script,
                                       ngx_http_billing_rtake_lua);
    ngx_http_billing_redis_script_init(&ngx_http_billing_rlater_script,
                                       ngx_http_billing_rlater_lua);
    ngx_http_billing_redis_script_init(&ngx_http_billing_overdue_script,
                                       ngx_http_billing_overdue_lua);

    if (bmcf->redis == NULL) {
        return NGX_OK;
    }

    /* one a marketplace: each has its own sets and Stripe account */

    markets = bmcf->markets.elts;

    for (i = 0; i < bmcf->markets.nelts; i++) {
        m = markets[i];

        asks = (bmcf->reconcile && m->timer_ctx && m->stripe_key.len);

        if (!asks && m->overdue == 0) {
            continue;
        }

        rec = ngx_pcalloc(cycle->pool, sizeof(ngx_http_billing_reconciler_t));
        if (rec == NULL) {
            return NGX_ERROR;
        }

        rec->asks = asks;
        rec->bmcf = bmcf;
        rec->market = m;
        rec->log = cycle->log;

        rec->tick.handler = ngx_http_billing_reconcile_tick;
        rec->tick.data = rec;
        rec->tick.log = cycle->log;
        rec->tick.cancelable = 1;

        /* workers spread their rounds over the second */

        ngx_add_timer(&rec->tick, NGX_HTTP_BILLING_RECONCILE_TICK
                                  + (ngx_random() % 1000));
    }

    return NGX_OK;
}


void
ngx_http_billing_reconcile_exit_worker(ngx_http_billing_main_conf_t *bmcf)
{
    /* asks under way end with the worker: the next round asks again */
}


static void
ngx_http_billing_reconcile_tick(ngx_event_t *ev)
{
    ngx_http_billing_reconciler_t  *rec = ev->data;

    ngx_str_t                      argv[5];
    ngx_pool_t                    *pool;
    ngx_http_billing_owner_t       o;
    ngx_http_billing_main_conf_t  *bmcf;

    if (ngx_exiting || ngx_terminate || ngx_quit) {
        return;
    }

    ngx_add_timer(ev, NGX_HTTP_BILLING_RECONCILE_TICK);

    if (rec->market->overdue && rec->marking == NULL) {
        ngx_http_billing_reconcile_overdue(rec);
    }

    if (!rec->asks || rec->taking
        || rec->running >= NGX_HTTP_BILLING_RECONCILE_RUNS)
    {
        return;
    }

    /* Stripe limited a call to this account within the last second */

    if (*rec->market->limited
        && ngx_current_msec - *rec->market->limited
           < NGX_HTTP_BILLING_RECONCILE_TICK)
    {
        return;
    }

    bmcf = rec->bmcf;

    pool = ngx_create_pool(1024, rec->log);
    if (pool == NULL) {
        return;
    }

    o.pool = pool;
    o.log = rec->log;
    o.bmcf = bmcf;
    o.market = rec->market;
    o.conf_ctx = rec->market->timer_ctx;

    if (ngx_http_billing_store_key(&o, &argv[0], "reconcile", NULL, NULL)
        != NGX_OK
        || ngx_http_billing_store_num(&o, &argv[1], ngx_time()) != NGX_OK
        || ngx_http_billing_store_num(&o, &argv[2],
                                      NGX_HTTP_BILLING_RECONCILE_RUNS
                                      - rec->running)
           != NGX_OK
        || ngx_http_billing_store_num(&o, &argv[3], bmcf->reconcile / 1000)
           != NGX_OK
        || ngx_http_billing_store_key(&o, &argv[4], "invoice:", NULL, NULL)
           != NGX_OK
        || ngx_http_billing_store_run(&o, &ngx_http_billing_rtake_script, 1,
                                      5, argv,
                                      ngx_http_billing_reconcile_taken, rec)
           != NGX_OK)
    {
        /* Redis is down: the next tick tries again */
        ngx_destroy_pool(pool);
        return;
    }

    rec->taking = pool;
}


static void
ngx_http_billing_reconcile_overdue(ngx_http_billing_reconciler_t *rec)
{
    ngx_str_t                 argv[5];
    ngx_pool_t               *pool;
    ngx_http_billing_owner_t  o;

    pool = ngx_create_pool(1024, rec->log);
    if (pool == NULL) {
        return;
    }

    o.pool = pool;
    o.log = rec->log;
    o.bmcf = rec->bmcf;
    o.market = rec->market;
    o.conf_ctx = rec->market->timer_ctx;

    if (ngx_http_billing_store_key(&o, &argv[0], "overdue", NULL, NULL)
        != NGX_OK
        || ngx_http_billing_store_num(&o, &argv[1], ngx_time()) != NGX_OK
        || ngx_http_billing_store_key(&o, &argv[2], "invoice:", NULL, NULL)
           != NGX_OK
        || ngx_http_billing_store_key(&o, &argv[3], "sub:", NULL, NULL)
           != NGX_OK
        || ngx_http_billing_store_key(&o, &argv[4], "events", NULL, NULL)
           != NGX_OK
        || ngx_http_billing_store_run(&o, &ngx_http_billing_overdue_script,
                                      1, 5, argv,
                                      ngx_http_billing_reconcile_marked, rec)
           != NGX_OK)
    {
        ngx_destroy_pool(pool);
        return;
    }

    rec->marking = pool;
}


static void
ngx_http_billing_reconcile_marked(void *data, redisReply *reply)
{
    ngx_http_billing_reconciler_t  *rec = data;

    if (reply && reply->type == REDIS_REPLY_INTEGER && reply->integer > 0) {
        ngx_log_error(NGX_LOG_NOTICE, rec->log, 0,
                      "billing overdue: %L subscription(s) past_due, "
                      "a period invoice unpaid past its due date",
                      (int64_t) reply->integer);
    }

    ngx_destroy_pool(rec->marking);
    rec->marking = NULL;
}


static void
ngx_http_billing_reconcile_taken(void *data, redisReply *reply)
{
    ngx_http_billing_reconciler_t  *rec = data;

    size_t                     i;
    ngx_str_t                  id[3];
    ngx_uint_t                 k;
    ngx_pool_t                *pool;
    ngx_http_billing_owner_t   o;
    ngx_http_billing_round_t  *round;

    if (reply && reply->type == REDIS_REPLY_ARRAY && reply->elements
        && reply->element[0]->type == REDIS_REPLY_INTEGER)
    {
        ngx_http_billing_stat_set(NGX_HTTP_BILLING_M_RECONCILE_OPEN,
                                  rec->market->index,
                                  (ngx_atomic_int_t)
                                  reply->element[0]->integer);

        for (i = 1; i + 2 < reply->elements && !ngx_exiting; i += 3) {

            for (k = 0; k < 3; k++) {
                if (reply->element[i + k]->type != REDIS_REPLY_STRING) {
                    break;
                }

                id[k].data = (u_char *) reply->element[i + k]->str;
                id[k].len = reply->element[i + k]->len;
            }

            if (k < 3 || id[0].len == 0) {
                continue;
            }

            pool = ngx_create_pool(4096, rec->log);
            if (pool == NULL) {
                break;
            }

            round = ngx_palloc(pool, sizeof(ngx_http_billing_round_t));
            if (round == NULL) {
                ngx_destroy_pool(pool);
                break;
            }

            round->pool = pool;
            round->rec = rec;

            o.pool = pool;
            o.log = rec->log;
            o.bmcf = rec->bmcf;
            o.market = rec->market;
            o.conf_ctx = rec->market->timer_ctx;

            rec->running++;

            if (ngx_http_billing_reconcile_invoice(&o, &id[0], &id[1], &id[2],
                                             NGX_HTTP_BILLING_REC_ROUND,
                                             ngx_http_billing_reconcile_asked,
                                             round)
                != NGX_OK)
            {
                rec->running--;
                ngx_destroy_pool(pool);
            }
        }

    } else if (reply && reply->type == REDIS_REPLY_ERROR) {
        ngx_log_error(NGX_LOG_ERR, rec->log, 0,
                      "billing reconcile: Redis refused: \"%*s\"",
                      (size_t) ngx_min(reply->len, 200), reply->str);
    }

    ngx_destroy_pool(rec->taking);
    rec->taking = NULL;
}


static void
ngx_http_billing_reconcile_asked(void *data, ngx_uint_t result)
{
    ngx_http_billing_round_t  *round = data;

    round->rec->running--;
    ngx_destroy_pool(round->pool);
}


ngx_int_t
ngx_http_billing_reconcile_invoice(ngx_http_billing_owner_t *owner,
    ngx_str_t *invoice, ngx_str_t *subscription, ngx_str_t *kind,
    ngx_uint_t source, ngx_http_billing_reconcile_pt done, void *data)
{
    u_char                    *p;
    ngx_http_billing_check_t  *chk;

    chk = ngx_pcalloc(owner->pool, sizeof(ngx_http_billing_check_t));
    if (chk == NULL) {
        return NGX_ERROR;
    }

    chk->owner = *owner;
    chk->source = source;
    chk->done = done;
    chk->data = data;

    chk->invoice.data = ngx_pstrdup(owner->pool, invoice);
    chk->subscription.data = ngx_pstrdup(owner->pool, subscription);
    chk->kind.data = ngx_pstrdup(owner->pool, kind);

    p = ngx_pnalloc(owner->pool, sizeof("/v1/invoices/") - 1 + invoice->len);

    if (p == NULL || chk->invoice.data == NULL
        || (chk->subscription.data == NULL && subscription->len)
        || (chk->kind.data == NULL && kind->len))
    {
        return NGX_ERROR;
    }

    chk->invoice.len = invoice->len;
    chk->subscription.len = subscription->len;
    chk->kind.len = kind->len;

    chk->call.path.data = p;
    chk->call.path.len = ngx_sprintf(p, "/v1/invoices/%V", invoice) - p;

    chk->call.owner = *owner;
    chk->call.handler = ngx_http_billing_reconcile_answered;
    chk->call.data = chk;
    chk->call.method = NGX_HTTP_GET;
    ngx_str_set(&chk->call.body, "");

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, owner->log, 0,
                   "billing reconcile: asking about invoice %V", invoice);

    return ngx_http_billing_stripe_call(&chk->call);
}


static void
ngx_http_billing_reconcile_answered(ngx_http_billing_stripe_call_t *call)
{
    ngx_http_billing_check_t  *chk = call->data;

    ngx_http_billing_invoice_t   inv;

    if (call->status == NGX_HTTP_NOT_FOUND
        && ngx_http_billing_reconcile_missing(call))
    {
        ngx_log_error(NGX_LOG_WARN, chk->owner.log, 0,
                      "billing reconcile: Stripe has no invoice %V, "
                      "no longer asked about", &chk->invoice);

        if (ngx_http_billing_reconcile_later(chk, 1) != NGX_OK) {
            ngx_http_billing_reconcile_finish(chk, NGX_HTTP_BILLING_REC_GONE);
        }

        return;
    }

    if (call->json == NULL || call->status < 200 || call->status >= 300
        || ngx_http_billing_stripe_string(call, "status", &chk->status)
           != NGX_OK)
    {
        ngx_log_error(NGX_LOG_WARN, chk->owner.log, 0,
                      "billing reconcile: invoice %V could not be asked "
                      "about (%ui), again later", &chk->invoice,
                      call->status);

        if (ngx_http_billing_reconcile_later(chk, 0) != NGX_OK) {
            ngx_http_billing_reconcile_finish(chk,
                                              NGX_HTTP_BILLING_REC_FAILED);
        }

        return;
    }

    ngx_memzero(&inv, sizeof(ngx_http_billing_invoice_t));

    inv.status = ngx_billing_invoice_status_parse((char *) chk->status.data,
                                                  chk->status.len);

    if (inv.status == NGX_BILLING_INVOICE_NONE) {
        /* a draft again, or a status of Stripe's this module ignores */
        ngx_http_billing_reconcile_finish(chk, NGX_HTTP_BILLING_REC_UNCHANGED);
        return;
    }

    inv.id = chk->invoice;
    ngx_str_set(&inv.event, "reconciliation");
    inv.created = ngx_time();
    inv.subscription = chk->subscription;
    inv.kind = chk->kind;

    ngx_http_billing_invoice_from_stripe(call, &inv);

    if (ngx_http_billing_store_invoice(&chk->owner, &inv,
                                       ngx_http_billing_reconcile_recorded,
                                       chk)
        != NGX_OK)
    {
        ngx_http_billing_reconcile_finish(chk, NGX_HTTP_BILLING_REC_FAILED);
    }
}


static void
ngx_http_billing_reconcile_recorded(void *data, redisReply *reply)
{
    ngx_http_billing_check_t  *chk = data;

    ngx_http_billing_main_conf_t  *bmcf;

    if (reply == NULL || reply->type != REDIS_REPLY_ARRAY
        || reply->elements != 4
        || reply->element[1]->type != REDIS_REPLY_INTEGER
        || reply->element[3]->type != REDIS_REPLY_INTEGER)
    {
        ngx_log_error(NGX_LOG_ERR, chk->owner.log, 0,
                      "billing reconcile: Redis did not record invoice %V",
                      &chk->invoice);

        ngx_http_billing_reconcile_finish(chk, NGX_HTTP_BILLING_REC_FAILED);
        return;
    }

    if (reply->element[1]->integer == 0 && reply->element[3]->integer == 0) {
        ngx_http_billing_reconcile_finish(chk, NGX_HTTP_BILLING_REC_UNCHANGED);
        return;
    }

    /* this node's gate sees it at once, as after a webhook */

    bmcf = chk->owner.bmcf;

    if (bmcf->cache && chk->subscription.len
        && reply->element[3]->integer > 0)
    {
        ngx_http_billing_cache_changed(bmcf->cache,
                                       &chk->owner.market->name,
                                       &chk->subscription,
                                       (uint64_t) reply->element[3]->integer,
                                       chk->owner.log);
    }

    /* what a webhook should have said: worth a line */

    ngx_log_error(NGX_LOG_NOTICE, chk->owner.log, 0,
                  "billing reconcile: invoice %V of subscription \"%V\" "
                  "is %V at Stripe, no webhook said so", &chk->invoice,
                  &chk->subscription, &chk->status);

    ngx_http_billing_reconcile_finish(chk, NGX_HTTP_BILLING_REC_CHANGED);
}


/*
 * Stripe's own 404 for an invoice it has not, not one of a wrong
 * location or of a key of another account's: those are failures.
 */

static ngx_uint_t
ngx_http_billing_reconcile_missing(ngx_http_billing_stripe_call_t *call)
{
    json_t  *err, *code, *msg;

    if (call->json == NULL || call->internal) {
        return 0;
    }

    err = json_object_get(call->json, "error");
    code = json_is_object(err) ? json_object_get(err, "code") : NULL;

    msg = json_is_object(err) ? json_object_get(err, "message") : NULL;

    return json_is_string(code)
           && ngx_strcmp(json_string_value(code), "resource_missing") == 0
           && json_is_string(msg)
           && ngx_strncmp(json_string_value(msg), "No such invoice", 15)
              == 0;
}


/* the set says when to ask again: soon after a failure, never if gone */

static ngx_int_t
ngx_http_billing_reconcile_later(ngx_http_billing_check_t *chk,
    ngx_uint_t gone)
{
    ngx_str_t  argv[6];

    if (ngx_http_billing_store_key(&chk->owner, &argv[0], "reconcile", NULL,
                                   NULL)
        != NGX_OK
        || ngx_http_billing_store_key(&chk->owner, &argv[1], "invoice:",
                                      &chk->invoice, NULL)
           != NGX_OK
        || ngx_http_billing_store_num(&chk->owner, &argv[3], ngx_time())
           != NGX_OK
        || ngx_http_billing_store_num(&chk->owner, &argv[4],
                                      chk->owner.bmcf->reconcile / 1000)
           != NGX_OK)
    {
        return NGX_ERROR;
    }

    argv[2] = chk->invoice;

    if (gone) {
        ngx_str_set(&argv[5], "gone");

    } else {
        ngx_str_set(&argv[5], "");
    }

    if (chk->owner.bmcf->reconcile == 0) {
        /* an ask of the API, reconciliation off: nothing to move */
        ngx_http_billing_reconcile_finish(chk, gone
                                               ? NGX_HTTP_BILLING_REC_GONE
                                               : NGX_HTTP_BILLING_REC_FAILED);
        return NGX_OK;
    }

    chk->gone = gone;

    return ngx_http_billing_store_run(&chk->owner,
                                      &ngx_http_billing_rlater_script, 2, 6,
                                      argv, ngx_http_billing_reconcile_ignore,
                                      chk);
}


static void
ngx_http_billing_reconcile_ignore(void *data, redisReply *reply)
{
    ngx_http_billing_check_t  *chk = data;

    /* not moved: the interval the take gave it stands */

    ngx_http_billing_reconcile_finish(chk, chk->gone
                                           ? NGX_HTTP_BILLING_REC_GONE
                                           : NGX_HTTP_BILLING_REC_FAILED);
}


static void
ngx_http_billing_reconcile_finish(ngx_http_billing_check_t *chk,
    ngx_uint_t result)
{
    ngx_http_billing_stat_inc(NGX_HTTP_BILLING_M_RECONCILED,
                              chk->owner.market->index, result, chk->source);

    chk->done(chk->data, result);
}
