
/*
 * The module's data in Redis.
 *
 * A change of what the gate caches of a subscription increments its
 * "version" and publishes "VERSION ID" on the events channel, so that
 * every cache keeps the newest and never an answer older than a change.
 *
 * Every change that touches several keys is one Lua script, so that a
 * worker or node dying halfway leaves nothing half done.  The keys of
 * a subscription are not hash-tagged: Redis Cluster is not supported.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_billing_store.h"
#include "ngx_billing_state.h"


/*
 * KEYS[1] the subscription, KEYS[2] its consumer org
 *
 * ARGV[1] fingerprint, ARGV[2] id, ARGV[3] consumer org, ARGV[4] email,
 * ARGV[5] name, ARGV[6] plan, ARGV[7] now, ARGV[8] metering period,
 * ARGV[9] the invoice key prefix, ARGV[10] the notification channel
 *
 * Periods start at activation (the invoice script), not here.
 */

static const char  ngx_http_billing_claim_lua[] =
    "local s = redis.call('HMGET', KEYS[1], 'fingerprint', 'state',"
    " 'customer_id', 'initial_invoice', 'initial_item', 'created_at')\n"
    "if s[1] then\n"
    "  if s[1] ~= ARGV[1] then return { 'conflict' } end\n"
    "  local cust = s[3] or redis.call('HGET', KEYS[2], 'customer_id')"
    " or ''\n"
    "  local inv = s[4] or ''\n"
    "  local st = ''\n"
    "  if inv ~= '' then\n"
    "    st = redis.call('HGET', ARGV[9] .. inv, 'status') or ''\n"
    "  end\n"
    "  return { 'exists', s[2], cust, inv, s[5] or '', s[6], st }\n"
    "end\n"
    "local cust = redis.call('HGET', KEYS[2], 'customer_id') or ''\n"
    "redis.call('HSET', KEYS[1], 'id', ARGV[2], 'fingerprint', ARGV[1],"
    " 'state', 'pending', 'consumer_org', ARGV[3], 'email', ARGV[4],"
    " 'name', ARGV[5], 'plan', ARGV[6], 'created_at', ARGV[7],"
    " 'period', ARGV[8])\n"
    "if cust ~= '' then\n"
    "  redis.call('HSET', KEYS[1], 'customer_id', cust)\n"
    "end\n"
    "local ver = redis.call('HINCRBY', KEYS[1], 'version', 1)\n"
    "redis.call('PUBLISH', ARGV[10], ver .. ' ' .. ARGV[2])\n"
    "return { 'new', 'pending', cust, '', '', ARGV[7], '' }\n";


/* KEYS[1] the consumer org, KEYS[2] the subscription; ARGV[1] customer */

static const char  ngx_http_billing_customer_lua[] =
    "local c = redis.call('HGET', KEYS[1], 'customer_id')\n"
    "if not c then\n"
    "  c = ARGV[1]\n"
    "  redis.call('HSET', KEYS[1], 'customer_id', c)\n"
    "end\n"
    "redis.call('HSET', KEYS[2], 'customer_id', c)\n"
    "return c\n";


/*
 * KEYS[1] the subscription, KEYS[2] the invoice, KEYS[3] the
 * subscription's invoices
 *
 * ARGV[1] field, ARGV[2] invoice id, ARGV[3] subscription id,
 * ARGV[4] kind, ARGV[5] currency, ARGV[6] period start, ARGV[7] period
 * end, ARGV[8] units, ARGV[9] customer, ARGV[10] now
 */

static const char  ngx_http_billing_attach_lua[] =
    "local cur = redis.call('HGET', KEYS[1], ARGV[1])\n"
    "if cur and cur ~= ARGV[2] then return cur end\n"
    "redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])\n"
    "local f = { 'subscription', ARGV[3], 'kind', ARGV[4],"
    " 'currency', ARGV[5], 'period_start', ARGV[6], 'period_end', ARGV[7],"
    " 'units', ARGV[8], 'customer', ARGV[9], 'created_at', ARGV[10] }\n"
    "for i = 1, #f, 2 do\n"
    "  redis.call('HSETNX', KEYS[2], f[i], f[i + 1])\n"
    "end\n"
    "redis.call('ZADD', KEYS[3], 'NX', ARGV[10], ARGV[2])\n"
    "return ARGV[2]\n";


/*
 * KEYS[1] the subscription, KEYS[2] its invoices, KEYS[3] its usage;
 * ARGV[1] invoice prefix
 */

static const char  ngx_http_billing_get_lua[] =
    "local s = redis.call('HGETALL', KEYS[1])\n"
    "if #s == 0 then return false end\n"
    "local all = {}\n"
    "for i, id in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do\n"
    "  local h = redis.call('HGETALL', ARGV[1] .. id)\n"
    "  table.insert(h, 'id')\n"
    "  table.insert(h, id)\n"
    "  all[i] = h\n"
    "end\n"
    "return { s, all, redis.call('HGETALL', KEYS[3]) }\n";


/*
 * KEYS[1] the subscription; ARGV[1] the invoice key prefix
 *
 * Subscriptions made before 0.4 have their metering period only in
 * the plan.  A past_due one's invoice is the overdue one.
 */

static const char  ngx_http_billing_gate_lua[] =
    "local s = redis.call('HMGET', KEYS[1], 'state', 'initial_invoice',"
    " 'period_start', 'period', 'plan', 'version', 'overdue_invoice')\n"
    "if not s[1] then return false end\n"
    "if s[1] == 'past_due' and s[7] then s[2] = s[7] end\n"
    "local url = ''\n"
    "if s[2] then\n"
    "  url = redis.call('HGET', ARGV[1] .. s[2], 'hosted_invoice_url')"
    " or ''\n"
    "end\n"
    "local period = s[4]\n"
    "if not period and s[5] then\n"
    "  local ok, plan = pcall(cjson.decode, s[5])\n"
    "  if ok and type(plan) == 'table' and plan.metering_period then\n"
    "    period = tostring(plan.metering_period)\n"
    "  end\n"
    "end\n"
    "return { s[1], s[2] or '', url, s[3] or '', period or '',"
    " s[6] or '0' }\n";


/*
 * KEYS[1] the subscription, KEYS[2] its consumer org
 *
 * ARGV[1] the subscription's field that names the invoice, ARGV[2] the
 * invoice key prefix, ARGV[3...] the names of the invoice's items.
 * The initial invoice's item was once recorded on the subscription.
 */

static const char  ngx_http_billing_resume_lua[] =
    "local s = redis.call('HMGET', KEYS[1], 'customer_id', ARGV[1],"
    " 'initial_item')\n"
    "local cust = s[1] or redis.call('HGET', KEYS[2], 'customer_id')"
    " or ''\n"
    "local inv = s[2] or ''\n"
    "local r = { cust, inv, '' }\n"
    "if inv ~= '' then\n"
    "  r[3] = redis.call('HGET', ARGV[2] .. inv, 'status') or ''\n"
    "end\n"
    "for i = 3, #ARGV do\n"
    "  local item = ''\n"
    "  if inv ~= '' then\n"
    "    item = redis.call('HGET', ARGV[2] .. inv, 'item:' .. ARGV[i])"
    " or ''\n"
    "    if item == '' and ARGV[1] == 'initial_invoice'"
    " and ARGV[i] == 'item' then\n"
    "      item = s[3] or ''\n"
    "    end\n"
    "  end\n"
    "  r[#r + 1] = item\n"
    "end\n"
    "return r\n";


/*
 * KEYS[1] the subscription, KEYS[2] the scheduler's set
 *
 * ARGV[1] now, ARGV[2] now in milliseconds, ARGV[3] id, ARGV[4] the
 * notification channel, ARGV[5] the invoice key prefix, ARGV[6] "1"
 * once a pending subscription's first invoice is void
 *
 * The reply: nil (unknown), { "pending", first invoice, its status,
 * created at } (to be voided first), or { "cancelled", "now" or
 * "already", the state it was cancelled from }.  The notification
 * closes every node's gate.
 */

static const char  ngx_http_billing_cancel_lua[] =
    "local s = redis.call('HMGET', KEYS[1], 'state', 'initial_invoice',"
    " 'created_at', 'cancelled_from')\n"
    "if not s[1] then return false end\n"
    "if s[1] == 'cancelled' then\n"
    "  return { 'cancelled', 'already', s[4] or '' }\n"
    "end\n"
    "if s[1] == 'pending' and ARGV[6] ~= '1' then\n"
    "  local st = ''\n"
    "  if s[2] then\n"
    "    st = redis.call('HGET', ARGV[5] .. s[2], 'status') or ''\n"
    "  end\n"
    "  return { 'pending', s[2] or '', st, s[3] or '' }\n"
    "end\n"
    "redis.call('HSET', KEYS[1], 'state', 'cancelled', 'cancelled_at',"
    " ARGV[1], 'cancelled_at_ms', ARGV[2], 'cancelled_from', s[1],"
    " 'updated_at', ARGV[1])\n"
    "if s[1] == 'active' or s[1] == 'past_due' then\n"
    "  redis.call('ZADD', KEYS[2], ARGV[1], ARGV[3])\n"
    "end\n"
    "local ver = redis.call('HINCRBY', KEYS[1], 'version', 1)\n"
    "redis.call('PUBLISH', ARGV[4], ver .. ' ' .. ARGV[3])\n"
    "return { 'cancelled', 'now', s[1] }\n";


static ngx_http_billing_redis_script_t  ngx_http_billing_cancel_script;
static ngx_http_billing_redis_script_t  ngx_http_billing_resume_script;
static ngx_http_billing_redis_script_t  ngx_http_billing_gate_script;
static ngx_http_billing_redis_script_t  ngx_http_billing_claim_script;
static ngx_http_billing_redis_script_t  ngx_http_billing_customer_script;
static ngx_http_billing_redis_script_t  ngx_http_billing_attach_script;
static ngx_http_billing_redis_script_t  ngx_http_billing_get_script;




ngx_int_t
ngx_http_billing_store_init(void)
{
    if (ngx_http_billing_store_invoice_init() != NGX_OK) {
        return NGX_ERROR;
    }

    ngx_http_billing_redis_script_init(&ngx_http_billing_claim_script,
                                       ngx_http_billing_claim_lua);
    ngx_http_billing_redis_script_init(&ngx_http_billing_customer_script,
                                       ngx_http_billing_customer_lua);
    ngx_http_billing_redis_script_init(&ngx_http_billing_attach_script,
                                       ngx_http_billing_attach_lua);
    ngx_http_billing_redis_script_init(&ngx_http_billing_get_script,
                                       ngx_http_billing_get_lua);
    ngx_http_billing_redis_script_init(&ngx_http_billing_gate_script,
                                       ngx_http_billing_gate_lua);
    ngx_http_billing_redis_script_init(&ngx_http_billing_resume_script,
                                       ngx_http_billing_resume_lua);
    ngx_http_billing_redis_script_init(&ngx_http_billing_cancel_script,
                                       ngx_http_billing_cancel_lua);

    /* lookups: with replicas=, no WAIT holds them up */
    ngx_http_billing_get_script.readonly = 1;
    ngx_http_billing_gate_script.readonly = 1;
    ngx_http_billing_resume_script.readonly = 1;

    return NGX_OK;
}


ngx_int_t
ngx_http_billing_store_cancel(ngx_http_billing_owner_t *o, ngx_str_t *sub,
    ngx_uint_t voided, ngx_http_billing_redis_handler_pt handler, void *data)
{
    ngx_str_t    argv[8];
    ngx_time_t  *tp;

    tp = ngx_timeofday();

    if (ngx_http_billing_store_key(o, &argv[0], "sub:", sub, NULL) != NGX_OK
        || ngx_http_billing_store_key(o, &argv[1], "due", NULL, NULL)
           != NGX_OK
        || ngx_http_billing_store_num(o, &argv[2], tp->sec) != NGX_OK
        || ngx_http_billing_store_num(o, &argv[3], ngx_http_billing_now_ms())
           != NGX_OK
        || ngx_http_billing_store_key(o, &argv[5], "events", NULL, NULL)
           != NGX_OK
        || ngx_http_billing_store_key(o, &argv[6], "invoice:", NULL, NULL)
           != NGX_OK)
    {
        return NGX_ERROR;
    }

    argv[4] = *sub;

    if (voided) {
        ngx_str_set(&argv[7], "1");

    } else {
        ngx_str_set(&argv[7], "0");
    }

    return ngx_http_billing_store_run(o, &ngx_http_billing_cancel_script,
                                      2, 8, argv, handler, data);
}


ngx_int_t
ngx_http_billing_store_claim(ngx_http_billing_owner_t *o,
    ngx_http_billing_claim_t *claim, ngx_http_billing_redis_handler_pt handler,
    void *data)
{
    ngx_str_t  argv[12];

    if (ngx_http_billing_store_key(o, &argv[0], "sub:", &claim->id, NULL)
        != NGX_OK
        || ngx_http_billing_store_key(o, &argv[1], "org:",
                                      &claim->consumer_org, NULL)
           != NGX_OK
        || ngx_http_billing_store_num(o, &argv[8], ngx_time()) != NGX_OK
        || ngx_http_billing_store_key(o, &argv[10], "invoice:", NULL, NULL)
           != NGX_OK
        || ngx_http_billing_store_key(o, &argv[11], "events", NULL, NULL)
           != NGX_OK)
    {
        return NGX_ERROR;
    }

    argv[2] = claim->fingerprint;
    argv[3] = claim->id;
    argv[4] = claim->consumer_org;
    argv[5] = claim->email;
    argv[6] = claim->name;
    argv[7] = claim->plan;
    argv[9] = claim->period;

    return ngx_http_billing_store_run(o, &ngx_http_billing_claim_script,
                                      2, 12, argv, handler, data);
}


ngx_int_t
ngx_http_billing_store_customer(ngx_http_billing_owner_t *o, ngx_str_t *sub,
    ngx_str_t *org, ngx_str_t *customer,
    ngx_http_billing_redis_handler_pt handler, void *data)
{
    ngx_str_t  argv[3];

    if (ngx_http_billing_store_key(o, &argv[0], "org:", org, NULL) != NGX_OK
        || ngx_http_billing_store_key(o, &argv[1], "sub:", sub, NULL)
           != NGX_OK)
    {
        return NGX_ERROR;
    }

    argv[2] = *customer;

    return ngx_http_billing_store_run(o, &ngx_http_billing_customer_script,
                                      2, 3, argv, handler, data);
}


ngx_int_t
ngx_http_billing_store_attach(ngx_http_billing_owner_t *o, ngx_str_t *sub,
    ngx_str_t *field, ngx_http_billing_invoice_t *inv, time_t period_start,
    time_t period_end, int64_t units,
    ngx_http_billing_redis_handler_pt handler, void *data)
{
    ngx_str_t  argv[13], *a;

    if (ngx_http_billing_store_key(o, &argv[0], "sub:", sub, NULL) != NGX_OK
        || ngx_http_billing_store_key(o, &argv[1], "invoice:", &inv->id, NULL)
           != NGX_OK
        || ngx_http_billing_store_key(o, &argv[2], "sub:", sub, ":invoices")
           != NGX_OK)
    {
        return NGX_ERROR;
    }

    a = &argv[3];

    a[0] = *field;
    a[1] = inv->id;
    a[2] = *sub;
    a[3] = inv->kind;
    a[4] = inv->currency;
    a[8] = inv->customer;

    if (ngx_http_billing_store_num(o, &a[5], period_start) != NGX_OK
        || ngx_http_billing_store_num(o, &a[6], period_end) != NGX_OK
        || ngx_http_billing_store_num(o, &a[7], units) != NGX_OK
        || ngx_http_billing_store_num(o, &a[9], ngx_time()) != NGX_OK)
    {
        return NGX_ERROR;
    }

    return ngx_http_billing_store_run(o, &ngx_http_billing_attach_script,
                                      3, 13, argv, handler, data);
}



ngx_int_t
ngx_http_billing_store_resume(ngx_http_billing_owner_t *o, ngx_str_t *sub,
    ngx_str_t *org, ngx_str_t *field, ngx_str_t *items, ngx_uint_t nitems,
    ngx_http_billing_redis_handler_pt handler, void *data)
{
    ngx_str_t   argv[NGX_HTTP_BILLING_STORE_ITEMS + 4];
    ngx_uint_t  i;

    if (nitems > NGX_HTTP_BILLING_STORE_ITEMS) {
        return NGX_ERROR;
    }

    if (ngx_http_billing_store_key(o, &argv[0], "sub:", sub, NULL) != NGX_OK
        || ngx_http_billing_store_key(o, &argv[1], "org:", org, NULL)
           != NGX_OK
        || ngx_http_billing_store_key(o, &argv[3], "invoice:", NULL, NULL)
           != NGX_OK)
    {
        return NGX_ERROR;
    }

    argv[2] = *field;

    for (i = 0; i < nitems; i++) {
        argv[4 + i] = items[i];
    }

    return ngx_http_billing_store_run(o, &ngx_http_billing_resume_script,
                                      2, 4 + nitems, argv, handler, data);
}


ngx_int_t
ngx_http_billing_store_item(ngx_http_billing_owner_t *o, ngx_str_t *invoice,
    ngx_str_t *name, ngx_str_t *item,
    ngx_http_billing_redis_handler_pt handler, void *data)
{
    u_char     *p;
    ngx_str_t   argv[4];

    ngx_str_set(&argv[0], "HSET");

    if (ngx_http_billing_store_key(o, &argv[1], "invoice:", invoice, NULL)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    p = ngx_pnalloc(o->pool, sizeof("item:") - 1 + name->len);
    if (p == NULL) {
        return NGX_ERROR;
    }

    argv[2].data = p;
    p = ngx_cpymem(p, "item:", sizeof("item:") - 1);
    p = ngx_cpymem(p, name->data, name->len);
    argv[2].len = p - argv[2].data;

    argv[3] = *item;

    return ngx_http_billing_store_run(o, NULL, 0, 4, argv, handler, data);
}


ngx_int_t
ngx_http_billing_store_get(ngx_http_billing_owner_t *o, ngx_str_t *sub,
    ngx_http_billing_redis_handler_pt handler, void *data)
{
    ngx_str_t  argv[4];

    if (ngx_http_billing_store_key(o, &argv[0], "sub:", sub, NULL) != NGX_OK
        || ngx_http_billing_store_key(o, &argv[1], "sub:", sub, ":invoices")
           != NGX_OK
        || ngx_http_billing_store_key(o, &argv[2], "usage:", sub, NULL)
           != NGX_OK
        || ngx_http_billing_store_key(o, &argv[3], "invoice:", NULL, NULL)
           != NGX_OK)
    {
        return NGX_ERROR;
    }

    return ngx_http_billing_store_run(o, &ngx_http_billing_get_script,
                                      3, 4, argv, handler, data);
}


ngx_int_t
ngx_http_billing_store_gate(ngx_http_billing_owner_t *o, ngx_str_t *sub,
    ngx_http_billing_redis_handler_pt handler, void *data)
{
    ngx_str_t  argv[2];

    if (ngx_http_billing_store_key(o, &argv[0], "sub:", sub, NULL) != NGX_OK
        || ngx_http_billing_store_key(o, &argv[1], "invoice:", NULL, NULL)
           != NGX_OK)
    {
        return NGX_ERROR;
    }

    return ngx_http_billing_store_run(o, &ngx_http_billing_gate_script,
                                      1, 2, argv, handler, data);
}


ngx_int_t
ngx_http_billing_store_copy(ngx_pool_t *pool, ngx_str_t *dst,
    redisReply *reply)
{
    if (reply == NULL || reply->type != REDIS_REPLY_STRING) {
        return NGX_ERROR;
    }

    dst->len = reply->len;
    dst->data = ngx_pnalloc(pool, reply->len + 1);

    if (dst->data == NULL) {
        return NGX_ERROR;
    }

    ngx_memcpy(dst->data, reply->str, reply->len);
    dst->data[dst->len] = '\0';

    return NGX_OK;
}


redisReply *
ngx_http_billing_store_field(redisReply *hash, const char *field)
{
    size_t  i, len;

    if (hash == NULL || hash->type != REDIS_REPLY_ARRAY) {
        return NULL;
    }

    len = ngx_strlen(field);

    for (i = 0; i + 1 < hash->elements; i += 2) {
        if (hash->element[i]->type == REDIS_REPLY_STRING
            && hash->element[i]->len == len
            && ngx_strncmp(hash->element[i]->str, field, len) == 0)
        {
            return hash->element[i + 1];
        }
    }

    return NULL;
}


ngx_int_t
ngx_http_billing_store_run(ngx_http_billing_owner_t *o,
    ngx_http_billing_redis_script_t *script, ngx_uint_t nkeys,
    ngx_uint_t argc, ngx_str_t *argv,
    ngx_http_billing_redis_handler_pt handler, void *data)
{
    ngx_http_billing_redis_cmd_t  *cmd;
    ngx_http_billing_main_conf_t  *bmcf;

    bmcf = o->bmcf;

    if (bmcf->redis == NULL) {
        return NGX_ERROR;
    }

    if (script) {
        cmd = ngx_http_billing_redis_eval(bmcf->redis, script, nkeys, argc,
                                          argv, handler, data);

    } else {
        cmd = ngx_http_billing_redis_send(bmcf->redis, argc, argv, handler,
                                          data);
    }

    if (cmd == NULL) {
        return NGX_ERROR;
    }

    /* the owner may go first: then the reply must find nobody */

    if (ngx_http_billing_redis_bind(cmd, o->pool) != NGX_OK) {
        ngx_http_billing_redis_cancel(cmd);
        return NGX_ERROR;
    }

    return NGX_OK;
}


ngx_int_t
ngx_http_billing_store_key(ngx_http_billing_owner_t *o, ngx_str_t *key,
    const char *kind, ngx_str_t *id, const char *suffix)
{
    u_char                        *p;
    size_t                         klen, slen;
    ngx_str_t                     *prefix;

    prefix = &o->market->prefix;
    klen = ngx_strlen(kind);
    slen = suffix ? ngx_strlen(suffix) : 0;

    p = ngx_pnalloc(o->pool, prefix->len + klen + (id ? id->len : 0) + slen);
    if (p == NULL) {
        return NGX_ERROR;
    }

    key->data = p;

    p = ngx_cpymem(p, prefix->data, prefix->len);
    p = ngx_cpymem(p, kind, klen);

    if (id) {
        p = ngx_cpymem(p, id->data, id->len);
    }

    if (suffix) {
        p = ngx_cpymem(p, suffix, slen);
    }

    key->len = p - key->data;

    return NGX_OK;
}


ngx_int_t
ngx_http_billing_store_num(ngx_http_billing_owner_t *o, ngx_str_t *s, int64_t n)
{
    s->data = ngx_pnalloc(o->pool, NGX_INT64_LEN);
    if (s->data == NULL) {
        return NGX_ERROR;
    }

    s->len = ngx_sprintf(s->data, "%L", n) - s->data;

    return NGX_OK;
}
