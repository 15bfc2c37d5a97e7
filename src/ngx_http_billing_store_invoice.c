
/*
 * The invoice script: an invoice's status, recorded by the ordering
 * rules of ngx_billing_state.c, and what it moves of its subscription.
 * Every webhook runs it, and reconciliation and the API with what
 * Stripe answered: the part of the module's Redis work that is on the
 * hot path, kept to as few calls and arguments as it can.
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


static ngx_http_billing_redis_script_t  ngx_http_billing_invoice_script;


static u_char *ngx_http_billing_store_lua_moves(u_char *p, u_char *last,
    const char *to, const char *from, int n, int (*ok)(int from, int to),
    const char *(*name)(int state));
static u_char *ngx_http_billing_store_lua_to(u_char *p, u_char *last);
static size_t ngx_http_billing_store_pack_len(ngx_str_t *v, ngx_uint_t n);
static u_char *ngx_http_billing_store_pack(u_char *p, ngx_str_t *v,
    ngx_uint_t n);


ngx_int_t
ngx_http_billing_store_invoice_init(void)
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

    /* a state table grown past the room above: said, not truncated */

    if (p == last) {
        ngx_log_error(NGX_LOG_EMERG, ngx_cycle->log, 0,
                      "billing: the invoice script does not fit in %uz "
                      "bytes", sizeof(ngx_http_billing_invoice_lua));
        return NGX_ERROR;
    }

    ngx_http_billing_redis_script_init(&ngx_http_billing_invoice_script,
                                       (char *) ngx_http_billing_invoice_lua);

    return NGX_OK;
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
