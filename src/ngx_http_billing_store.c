
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


#define NGX_HTTP_BILLING_INVOICE_ARGS  15


/*
 * ARGV[1] the event, packed (MessagePack, each a string): the key prefix,
 * the invoice id, its status, event id, event created, subscription id
 * (""), kind (""), customer, hosted_invoice_url, amount_due, currency,
 * now, when reconciliation first asks Stripe about it ("": off), its due
 * date (""), billing_overdue in seconds ("": off).  One argument, not
 * fifteen: Redis makes a string of each argument on every call, used
 * or not, and most are used only when something changes (the first four
 * are unpacked first, the others only then).  The keys are made here
 * from the prefix (no Redis Cluster), and the ordering rules
 * (ngx_billing_state.c) are written into the script's text at start-up,
 * between its parts below.
 *
 * An event recorded to the end (recorded_event, written last: a run that
 * failed half-way, which Redis does not undo, is not), sent again, is
 * answered at once: it changed all it could change then (the reply's
 * state is then "").  Otherwise one HSET writes the new status and the
 * fields that came with it, or, the status unchanged, the fields still
 * missing (a second HMGET tells which); one HMGET reads the
 * subscription.
 *
 * A period invoice open past its due date by billing_overdue is in the
 * overdue set (a timer makes its subscription past_due); one marked
 * uncollectible makes it past_due at once; paying or voiding the
 * invoice a subscription is past_due for makes it active again, unless
 * another of its period invoices is overdue or uncollectible: it is then
 * past_due for that one.
 *
 * An open (or uncollectible) invoice of a subscription is watched by
 * reconciliation until it is paid or void; a paid or void one leaves the
 * reconciliation and overdue sets at every event that says so (its
 * change may have come without the subscription or kind).
 *
 * A subscription that becomes active starts its first metering period
 * now, and the scheduler is told to look at it.  One claimed before 0.4
 * (no "period") had its period start set at the claim: it starts now.
 *
 * Only a change the gate sees (the subscription's state, its first
 * invoice's status or its first hosted_invoice_url) is published: a
 * repeated or stale event, or one of a period invoice that moves no
 * state, drops no cache entry anywhere.  The reply's fourth element is
 * the subscription's new version, 0 when nothing was published.
 */

static const char  ngx_http_billing_invoice_lua_head[] =
    "local o, P, id, st, ev = cmsgpack.unpack_limit(ARGV[1], 4)\n"
    "local ik = P .. 'invoice:' .. id\n"
    "local h = redis.call('HMGET', ik, 'status', 'recorded_event')\n"
    "local cur = h[1] or 'none'\n"
    "if cur == st and h[2] == ev and ev ~= '' and ev ~= 'reconciliation'"
    " then\n"
    "  return { cur, 0, '', 0 }\n"
    "end\n"
    "local _, evc, sid, kind, cust, url, amt, ccy, now, rat, due, od ="
    " cmsgpack.unpack_limit(ARGV[1], 11, o)\n"
    "local changed = 0\n"
    "local w = false\n"
    "local g = false\n"
    "if cur ~= st and (";

/* here: whether cur may move to st (ngx_http_billing_store_lua_moves) */

static const char  ngx_http_billing_invoice_lua_fields[] =
    ") then\n"
    "  w = { 'status', st, 'event', ev, 'event_created', evc,"
    " 'updated_at', now }\n"
    "  cur = st\n"
    "  changed = 1\n"
    "else\n"
    "  g = redis.call('HMGET', ik, 'subscription', 'kind', 'customer',"
    " 'hosted_invoice_url', 'amount_due', 'currency', 'due_date')\n"
    "end\n"
    "local v = { sid, kind, cust, url, amt, ccy }\n"
    "local f = { 'subscription', 'kind', 'customer', 'hosted_invoice_url',"
    " 'amount_due', 'currency' }\n"
    "local urlnew = false\n"
    "for i = 1, 6 do\n"
    "  if v[i] ~= '' and (changed == 1 or not g[i]) then\n"
    "    w = w or {}\n"
    "    w[#w + 1] = f[i]\n"
    "    w[#w + 1] = v[i]\n"
    "    if i == 4 and changed == 0 then urlnew = true end\n"
    "  end\n"
    "end\n"
    "if sid ~= '' and due ~= '' and (changed == 1 or g[7] ~= due) then\n"
    "  w = w or {}\n"
    "  w[#w + 1] = 'due_date'\n"
    "  w[#w + 1] = due\n"
    "end\n"
    "if w then redis.call('HSET', ik, unpack(w)) end\n"
    "local state = ''\n"
    "local moved = 0\n"
    "local first = false\n"
    "local sk = P .. 'sub:' .. sid\n"
    "if sid ~= '' then\n"
    "  local s = redis.call('HMGET', sk, 'state', 'initial_invoice')\n"
    "  if cur == st and s[1] then\n"
    "    state = s[1]\n"
    "    first = (s[2] == id) or (not s[2] and kind == 'initial')\n"
    "    local to = ";

/* here: the state a first invoice in st gives (..._store_lua_to) */

static const char  ngx_http_billing_invoice_lua_sub[] =
    "\n"
    "    if first and to ~= '' and state ~= to and (";

/* here: whether state may move to to (..._store_lua_moves) */

static const char  ngx_http_billing_invoice_lua_tail[] =
    ") then\n"
    "      redis.call('HSET', sk, 'state', to, 'updated_at', now)\n"
    "      if to == 'active' then\n"
    "        if redis.call('HEXISTS', sk, 'period') == 0 then\n"
    "          local ok, plan = pcall(cjson.decode,"
    " redis.call('HGET', sk, 'plan') or '')\n"
    "          if ok and type(plan) == 'table' and plan.metering_period"
    " then\n"
    "            redis.call('HSET', sk, 'period_start', now,"
    " 'period', tostring(plan.metering_period))\n"
    "          end\n"
    "        else\n"
    "          redis.call('HSETNX', sk, 'period_start', now)\n"
    "        end\n"
    "        redis.call('ZADD', P .. 'due', 'NX', now, sid)\n"
    "      end\n"
    "      state = to\n"
    "      s[1] = to\n"
    "      moved = 1\n"
    "    end\n"
    "  end\n"
    "  if rat ~= '' then\n"
    "    local watch = cur == 'open' or cur == 'uncollectible'\n"
    "    if watch and (s[1] or redis.call('EXISTS', sk) == 1) then\n"
    "      redis.call('ZADD', P .. 'reconcile', 'NX', rat, id)\n"
    "    else\n"
    "      redis.call('ZREM', P .. 'reconcile', id)\n"
    "    end\n"
    "    if ev == 'reconciliation' then\n"
    "      redis.call('HDEL', ik, 'reconcile_failures')\n"
    "    end\n"
    "  end\n"
    "  local k = kind\n"
    "  if k == '' then\n"
    "    k = (g and g[2]) or redis.call('HGET', ik, 'kind') or ''\n"
    "  end\n"
    "  if k == 'period' then\n"
    "    if cur == 'paid' or cur == 'void' then\n"
    "      redis.call('ZREM', P .. 'overdue', id)\n"
    "      if s[1] == 'past_due'"
    " and redis.call('HGET', sk, 'overdue_invoice') == id then\n"
    "        local other = false\n"
    "        for _, i in ipairs(redis.call('ZREVRANGE', sk .. ':invoices',"
    " 0, 63)) do\n"
    "          local o = redis.call('HMGET', P .. 'invoice:' .. i, 'status',"
    " 'kind', 'due_date')\n"
    "          if i ~= id and o[2] == 'period'"
    " and (o[1] == 'uncollectible' or (o[1] == 'open' and od ~= ''"
    " and tonumber(o[3] or '') and tonumber(o[3]) + tonumber(od)"
    " <= tonumber(now))) then\n"
    "            other = i\n"
    "            break\n"
    "          end\n"
    "        end\n"
    "        if other then\n"
    "          redis.call('HSET', sk, 'overdue_invoice', other,"
    " 'updated_at', now)\n"
    "          state = 'past_due'\n"
    "        else\n"
    "          redis.call('HSET', sk, 'state', 'active', 'updated_at', now)\n"
    "          redis.call('HDEL', sk, 'overdue_invoice')\n"
    "          state = 'active'\n"
    "        end\n"
    "        moved = 1\n"
    "      end\n"
    "    elseif od ~= '' and cur == 'uncollectible' then\n"
    "      redis.call('ZREM', P .. 'overdue', id)\n"
    "      if s[1] == 'active' then\n"
    "        redis.call('HSET', sk, 'state', 'past_due',"
    " 'overdue_invoice', id, 'updated_at', now)\n"
    "        state = 'past_due'\n"
    "        moved = 1\n"
    "      end\n"
    "    elseif od ~= '' and cur == 'open' then\n"
    "      local d = due\n"
    "      if d == '' then\n"
    "        d = redis.call('HGET', ik, 'due_date') or ''\n"
    "      end\n"
    "      d = tonumber(d)\n"
    "      if d then\n"
    "        redis.call('ZADD', P .. 'overdue', 'NX', d + tonumber(od), id)\n"
    "      end\n"
    "    end\n"
    "  end\n"
    "end\n"
    "local ver = 0\n"
    "if moved == 1 or ((changed == 1 or urlnew) and first) then\n"
    "  ver = redis.call('HINCRBY', sk, 'version', 1)\n"
    "  redis.call('PUBLISH', P .. 'events', ver .. ' ' .. sid)\n"
    "end\n"
    "if cur == st and ev ~= '' and ev ~= 'reconciliation' then\n"
    "  redis.call('HSET', ik, 'recorded_event', ev)\n"
    "end\n"
    "return { cur, changed, state, ver }\n";


/* the invoice script: its parts, and the ordering rules in Lua */
static u_char  ngx_http_billing_invoice_lua[
    sizeof(ngx_http_billing_invoice_lua_head)
    + sizeof(ngx_http_billing_invoice_lua_fields)
    + sizeof(ngx_http_billing_invoice_lua_sub)
    + sizeof(ngx_http_billing_invoice_lua_tail) + 4096];


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
static ngx_http_billing_redis_script_t  ngx_http_billing_invoice_script;
static ngx_http_billing_redis_script_t  ngx_http_billing_resume_script;
static ngx_http_billing_redis_script_t  ngx_http_billing_gate_script;
static ngx_http_billing_redis_script_t  ngx_http_billing_claim_script;
static ngx_http_billing_redis_script_t  ngx_http_billing_customer_script;
static ngx_http_billing_redis_script_t  ngx_http_billing_attach_script;
static ngx_http_billing_redis_script_t  ngx_http_billing_get_script;


static u_char *ngx_http_billing_store_lua_moves(u_char *p, u_char *last,
    const char *to, const char *from, int n, int (*ok)(int from, int to),
    const char *(*name)(int state));
static u_char *ngx_http_billing_store_lua_to(u_char *p, u_char *last);
static size_t ngx_http_billing_store_pack_len(ngx_str_t *v, ngx_uint_t n);
static u_char *ngx_http_billing_store_pack(u_char *p, ngx_str_t *v,
    ngx_uint_t n);


void
ngx_http_billing_store_init(void)
{
    u_char  *p, *last;

    p = ngx_http_billing_invoice_lua;
    last = p + sizeof(ngx_http_billing_invoice_lua) - 1;

    p = ngx_slprintf(p, last, "%s", ngx_http_billing_invoice_lua_head);
    p = ngx_http_billing_store_lua_moves(p, last, "st", "cur",
                                         NGX_BILLING_INVOICE_NSTATES,
                                         ngx_billing_invoice_transition_ok,
                                         ngx_billing_invoice_status_name);
    p = ngx_slprintf(p, last, "%s", ngx_http_billing_invoice_lua_fields);
    p = ngx_http_billing_store_lua_to(p, last);
    p = ngx_slprintf(p, last, "%s", ngx_http_billing_invoice_lua_sub);
    p = ngx_http_billing_store_lua_moves(p, last, "to", "state",
                                         NGX_BILLING_SUB_NSTATES,
                                         ngx_billing_sub_transition_ok,
                                         ngx_billing_sub_state_name);
    p = ngx_slprintf(p, last, "%s", ngx_http_billing_invoice_lua_tail);
    *p = '\0';

    ngx_http_billing_redis_script_init(&ngx_http_billing_invoice_script,
                                       (char *) ngx_http_billing_invoice_lua);
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
}


/*
 * A Lua expression of whether the state named by the variable "from"
 * may move to the one named by "to": the table of ngx_billing_state.c,
 * as comparisons of constants, which make no string when the script
 * runs.
 */

static u_char *
ngx_http_billing_store_lua_moves(u_char *p, u_char *last, const char *to,
    const char *from, int n, int (*ok)(int from, int to),
    const char *(*name)(int state))
{
    int         t, f;
    ngx_uint_t  any, k;

    any = 0;

    for (t = 1; t < n; t++) {
        k = 0;

        for (f = 0; f < n; f++) {
            if (!ok(f, t)) {
                continue;
            }

            if (k++ == 0) {
                p = ngx_slprintf(p, last, "%s(%s == '%s' and (%s == '%s'",
                                 any ? " or " : "", to, name(t), from,
                                 name(f));
                any = 1;

            } else {
                p = ngx_slprintf(p, last, " or %s == '%s'", from, name(f));
            }
        }

        if (k) {
            p = ngx_slprintf(p, last, "))");
        }
    }

    if (!any) {
        p = ngx_slprintf(p, last, "false");
    }

    return p;
}


/* a Lua expression of the state a first invoice in status st gives */

static u_char *
ngx_http_billing_store_lua_to(u_char *p, u_char *last)
{
    int  st, to;

    for (st = 1; st < NGX_BILLING_INVOICE_NSTATES; st++) {
        to = ngx_billing_sub_state_after_first_invoice(st);

        if (to != NGX_BILLING_SUB_NONE) {
            p = ngx_slprintf(p, last, "(st == '%s' and '%s') or ",
                             ngx_billing_invoice_status_name(st),
                             ngx_billing_sub_state_name(to));
        }
    }

    return ngx_slprintf(p, last, "''");
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
ngx_http_billing_store_invoice(ngx_http_billing_owner_t *o,
    ngx_http_billing_invoice_t *inv, ngx_http_billing_redis_handler_pt handler,
    void *data)
{
    u_char     *p;
    time_t      now;
    ngx_str_t   v[NGX_HTTP_BILLING_INVOICE_ARGS], arg;

    now = ngx_time();

    /* in the order the script unpacks them */

    v[0] = o->market->prefix;
    v[1] = inv->id;
    v[2].data = (u_char *) ngx_billing_invoice_status_name(inv->status);
    v[2].len = ngx_strlen(v[2].data);
    v[3] = inv->event;
    v[5] = inv->subscription;
    v[6] = inv->kind;
    v[7] = inv->customer;
    v[8] = inv->hosted_invoice_url;
    v[10] = inv->currency;

    ngx_str_set(&v[9], "");
    ngx_str_set(&v[12], "");
    ngx_str_set(&v[13], "");
    ngx_str_set(&v[14], "");

    if (ngx_http_billing_store_num(o, &v[4], inv->created) != NGX_OK
        || ngx_http_billing_store_num(o, &v[11], now) != NGX_OK
        || (inv->amount_due >= 0
            && ngx_http_billing_store_num(o, &v[9], inv->amount_due)
               != NGX_OK)
        || (o->bmcf->reconcile
            && ngx_http_billing_store_num(o, &v[12],
                                          now + (time_t) (o->bmcf->reconcile
                                                          / 1000))
               != NGX_OK)
        || (inv->due_date > 0
            && ngx_http_billing_store_num(o, &v[13], inv->due_date)
               != NGX_OK)
        || (o->market->overdue
            && ngx_http_billing_store_num(o, &v[14],
                                          (int64_t) o->market->overdue / 1000)
               != NGX_OK))
    {
        return NGX_ERROR;
    }

    arg.len = ngx_http_billing_store_pack_len(v, NGX_HTTP_BILLING_INVOICE_ARGS);

    arg.data = ngx_pnalloc(o->pool, arg.len);
    if (arg.data == NULL) {
        return NGX_ERROR;
    }

    p = ngx_http_billing_store_pack(arg.data, v,
                                    NGX_HTTP_BILLING_INVOICE_ARGS);

    arg.len = p - arg.data;

    return ngx_http_billing_store_run(o, &ngx_http_billing_invoice_script,
                                      0, 1, &arg, handler, data);
}


/*
 * Strings in MessagePack (str 8, 16 or 32, or fixstr), one after the
 * other: cmsgpack.unpack() gives them to a script as that many values.
 */

static size_t
ngx_http_billing_store_pack_len(ngx_str_t *v, ngx_uint_t n)
{
    size_t      len;
    ngx_uint_t  i;

    len = 0;

    for (i = 0; i < n; i++) {
        len += v[i].len + (v[i].len < 32 ? 1 : v[i].len < 256 ? 2
                           : v[i].len < 65536 ? 3 : 5);
    }

    return len;
}


static u_char *
ngx_http_billing_store_pack(u_char *p, ngx_str_t *v, ngx_uint_t n)
{
    size_t      len;
    ngx_uint_t  i;

    for (i = 0; i < n; i++) {
        len = v[i].len;

        if (len < 32) {
            *p++ = (u_char) (0xa0 | len);

        } else if (len < 256) {
            *p++ = 0xd9;
            *p++ = (u_char) len;

        } else if (len < 65536) {
            *p++ = 0xda;
            *p++ = (u_char) (len >> 8);
            *p++ = (u_char) len;

        } else {
            *p++ = 0xdb;
            *p++ = (u_char) (len >> 24);
            *p++ = (u_char) (len >> 16);
            *p++ = (u_char) (len >> 8);
            *p++ = (u_char) len;
        }

        if (len) {
            p = ngx_cpymem(p, v[i].data, len);
        }
    }

    return p;
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
