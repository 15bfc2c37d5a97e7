
/*
 * Redis under Sentinel (billing_redis ... sentinel=NAME).
 *
 * Every (re)connection of a client starts by asking a Sentinel for the
 * address of NAME's primary (ngx_http_billing_redis_ask.c); the client
 * then connects there, and its handshake checks ROLE.
 *
 * Each worker also keeps one connection to a Sentinel subscribed to
 * +switch-master (a client of ngx_http_billing_redis.c, rotating over the
 * Sentinels): when NAME's primary moves, every client of the worker that
 * is elsewhere reconnects at once.  Each time that subscription is made,
 * a switch may have been missed meanwhile: the Sentinels are asked once
 * and the clients compared.  Whichever client of the worker learns that
 * the primary moved (a READONLY answer, a new answer of the Sentinels),
 * the others follow.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_event.h>
#include <ngx_event_connect.h>

#include "ngx_http_billing_redis_int.h"
#include "ngx_http_billing_status.h"


static ngx_http_billing_sentinel_t *ngx_http_billing_sentinel_create(
    ngx_cycle_t *cycle, ngx_http_billing_redis_conf_t *conf);
static ngx_int_t ngx_http_billing_sentinel_request(ngx_cycle_t *cycle,
    ngx_http_billing_sentinel_t *w);
static void ngx_http_billing_sentinel_wipe(void *data);
static void ngx_http_billing_sentinel_message(void *data,
    ngx_str_t *channel, ngx_str_t *message);
static void ngx_http_billing_sentinel_state(void *data, ngx_uint_t up);
static void ngx_http_billing_sentinel_checked(void *data,
    ngx_http_billing_sentinel_ask_t *ask, ngx_int_t rc);
static void ngx_http_billing_sentinel_follow(ngx_http_billing_sentinel_t *w,
    struct sockaddr *sa, socklen_t socklen, ngx_uint_t switched);


ngx_int_t
ngx_http_billing_sentinel_watch(ngx_cycle_t *cycle,
    ngx_http_billing_redis_t *rd)
{
    ngx_http_billing_sentinel_t  *w;

    /* the conf is the worker's own copy after fork: so is the watch */

    w = rd->conf->watch;

    if (w == NULL) {
        w = ngx_http_billing_sentinel_create(cycle, rd->conf);
        if (w == NULL) {
            return NGX_ERROR;
        }

        rd->conf->watch = w;
    }

    ngx_queue_insert_tail(&w->clients, &rd->watched);

    rd->ask.watch = w;
    rd->ask.log = rd->log;

    return NGX_OK;
}


void
ngx_http_billing_sentinel_unwatch(ngx_http_billing_redis_t *rd)
{
    ngx_http_billing_sentinel_t  *w;

    w = rd->ask.watch;

    if (w == NULL) {
        return;
    }

    ngx_http_billing_sentinel_abort(&rd->ask);
    ngx_queue_remove(&rd->watched);
    rd->ask.watch = NULL;

    if (!ngx_queue_empty(&w->clients)) {
        return;
    }

    /* the last client gone: nothing to watch for */

    ngx_http_billing_sentinel_abort(&w->check);

    if (w->rd) {
        ngx_http_billing_redis_destroy(w->rd);
        w->rd = NULL;
    }

    w->primary->watch = NULL;
}


static ngx_http_billing_sentinel_t *
ngx_http_billing_sentinel_create(ngx_cycle_t *cycle,
    ngx_http_billing_redis_conf_t *conf)
{
    u_char                       *p;
    ngx_uint_t                    i;
    ngx_addr_t                   *addr;
    ngx_http_billing_sentinel_t  *w;

    static ngx_str_t  channel = ngx_string("+switch-master");

    w = ngx_pcalloc(cycle->pool, sizeof(ngx_http_billing_sentinel_t));
    if (w == NULL) {
        return NULL;
    }

    w->primary = conf;
    ngx_queue_init(&w->clients);

    w->conf = *conf;
    w->conf.password = conf->sentinel_password;
    w->conf.db = 0;
    w->conf.replicas = 0;
    ngx_str_null(&w->conf.sentinel);
    ngx_str_null(&w->conf.sentinel_password);
    w->conf.watch = NULL;

    /* the logs tell a Sentinel from Redis */

    addr = ngx_palloc(cycle->pool, conf->naddrs * sizeof(ngx_addr_t));
    if (addr == NULL) {
        return NULL;
    }

    for (i = 0; i < conf->naddrs; i++) {
        addr[i] = conf->addrs[i];

        p = ngx_pnalloc(cycle->pool,
                        sizeof("sentinel ") - 1 + conf->addrs[i].name.len);
        if (p == NULL) {
            return NULL;
        }

        addr[i].name.data = p;
        p = ngx_cpymem(p, "sentinel ", sizeof("sentinel ") - 1);
        p = ngx_cpymem(p, conf->addrs[i].name.data, conf->addrs[i].name.len);
        addr[i].name.len = p - addr[i].name.data;
    }

    w->conf.addrs = addr;

    if (ngx_http_billing_sentinel_request(cycle, w) != NGX_OK) {
        return NULL;
    }

    w->check.watch = w;
    w->check.log = cycle->log;

    w->rd = ngx_http_billing_redis_create(cycle, &w->conf);
    if (w->rd == NULL) {
        return NULL;
    }

    ngx_http_billing_redis_subscribe(w->rd, &channel, 1,
                                     ngx_http_billing_sentinel_message,
                                     ngx_http_billing_sentinel_state, w);

    /* a Sentinel's: not one of the connections billing_status counts */
    w->rd->stat = NGX_HTTP_BILLING_CONN_N;

    return w;
}


static ngx_int_t
ngx_http_billing_sentinel_request(ngx_cycle_t *cycle,
    ngx_http_billing_sentinel_t *w)
{
    int                  len[2];
    char                *buf[2];
    size_t               lens[3];
    ngx_uint_t           n, i;
    const char          *args[3];
    ngx_pool_cleanup_t  *cln;

    n = 0;

    if (w->conf.password.len) {
        args[0] = "AUTH";
        lens[0] = sizeof("AUTH") - 1;
        args[1] = (const char *) w->conf.password.data;
        lens[1] = w->conf.password.len;

        len[n] = redisFormatCommandArgv(&buf[n], 2, args, lens);
        if (len[n] < 0) {
            return NGX_ERROR;
        }

        n++;
    }

    args[0] = "SENTINEL";
    lens[0] = sizeof("SENTINEL") - 1;
    args[1] = "get-master-addr-by-name";
    lens[1] = sizeof("get-master-addr-by-name") - 1;
    args[2] = (const char *) w->primary->sentinel.data;
    lens[2] = w->primary->sentinel.len;

    len[n] = redisFormatCommandArgv(&buf[n], 3, args, lens);
    if (len[n] < 0) {
        goto failed;
    }

    n++;

    w->request_len = 0;

    for (i = 0; i < n; i++) {
        w->request_len += len[i];
    }

    w->request = ngx_pnalloc(cycle->pool, w->request_len);
    if (w->request == NULL) {
        goto failed;
    }

    /* it holds the Sentinels' password: wiped with the cycle */

    cln = ngx_pool_cleanup_add(cycle->pool, 0);
    if (cln == NULL) {
        goto failed;
    }

    cln->handler = ngx_http_billing_sentinel_wipe;
    cln->data = w;

    w->request_len = 0;

    for (i = 0; i < n; i++) {
        ngx_memcpy(w->request + w->request_len, buf[i], len[i]);
        w->request_len += len[i];

        ngx_explicit_memzero(buf[i], len[i]);
        redisFreeCommand(buf[i]);
    }

    w->replies = n;

    return NGX_OK;

failed:

    while (n) {
        n--;
        ngx_explicit_memzero(buf[n], len[n]);
        redisFreeCommand(buf[n]);
    }

    return NGX_ERROR;
}


static void
ngx_http_billing_sentinel_wipe(void *data)
{
    ngx_http_billing_sentinel_t  *w = data;

    ngx_explicit_memzero(w->request, w->request_len);
}


/* "+switch-master": "NAME old-ip old-port new-ip new-port" */

static void
ngx_http_billing_sentinel_message(void *data, ngx_str_t *channel,
    ngx_str_t *message)
{
    ngx_http_billing_sentinel_t  *w = data;

    u_char          *p, *last, *word[5];
    size_t           len[5];
    socklen_t        socklen;
    ngx_uint_t       n;
    ngx_sockaddr_t   sa;

    p = message->data;
    last = p + message->len;

    for (n = 0; n < 5 && p < last; n++) {
        word[n] = p;

        while (p < last && *p != ' ') {
            p++;
        }

        len[n] = p - word[n];

        if (p < last) {
            p++;
        }
    }

    if (n < 5) {
        ngx_log_error(NGX_LOG_WARN, w->rd->log, 0,
                      "billing redis %V: invalid +switch-master \"%V\"",
                      w->rd->peer.name, message);
        return;
    }

    if (len[0] != w->primary->sentinel.len
        || ngx_strncmp(word[0], w->primary->sentinel.data, len[0]) != 0)
    {
        /* another primary of the same Sentinels */
        return;
    }

    ngx_log_error(NGX_LOG_NOTICE, w->rd->log, 0,
                  "billing redis %V: +switch-master \"%V\"",
                  w->rd->peer.name, message);

    if (ngx_http_billing_sentinel_addr(word[3], len[3], word[4], len[4],
                                       &sa, &socklen)
        != NGX_OK)
    {
        /* no address to compare with: every client asks again */
        ngx_http_billing_sentinel_follow(w, NULL, 0, 1);
        return;
    }

    ngx_http_billing_sentinel_follow(w, &sa.sockaddr, socklen, 1);
}


static void
ngx_http_billing_sentinel_state(void *data, ngx_uint_t up)
{
    ngx_http_billing_sentinel_t  *w = data;

    if (!up) {
        ngx_http_billing_sentinel_abort(&w->check);
        return;
    }

    ngx_http_billing_sentinel_ask(&w->check,
                                  ngx_http_billing_sentinel_checked, w);
}


static void
ngx_http_billing_sentinel_checked(void *data,
    ngx_http_billing_sentinel_ask_t *ask, ngx_int_t rc)
{
    ngx_http_billing_sentinel_t  *w = data;

    if (rc != NGX_OK) {
        /* the clients ask anyway whenever they reconnect */
        return;
    }

    ngx_http_billing_sentinel_follow(w, &ask->sockaddr.sockaddr,
                                     ask->socklen, 0);
}


/*
 * The primary is at sa (NULL: unknown), as a switch (switched) or the
 * check after a subscription says: each client elsewhere reconnects now.
 * After a switch, a client still asking asks again (the answer may be
 * from before); one waiting for its backoff goes at once after a switch
 * or when its last address is not sa.
 */

static void
ngx_http_billing_sentinel_follow(ngx_http_billing_sentinel_t *w,
    struct sockaddr *sa, socklen_t socklen, ngx_uint_t switched)
{
    ngx_queue_t               *q, *next;
    ngx_http_billing_redis_t  *rd;

    for (q = ngx_queue_head(&w->clients);
         q != ngx_queue_sentinel(&w->clients);
         q = next)
    {
        next = ngx_queue_next(q);
        rd = ngx_queue_data(q, ngx_http_billing_redis_t, watched);

        switch (rd->state) {

        case NGX_HTTP_BILLING_REDIS_DISCONNECTED:

            /* in its backoff: no need to wait when the address is new */

            if (rd->down
                && (switched || sa == NULL || !rd->resolved
                    || ngx_cmp_sockaddr(&rd->primary.sockaddr,
                                        rd->peer.socklen, sa, socklen, 1)
                       != NGX_OK))
            {
                ngx_http_billing_redis_restart(rd, NGX_LOG_NOTICE,
                                               "the primary moved");
            }

            break;

        case NGX_HTTP_BILLING_REDIS_RESOLVING:
            if (switched) {
                ngx_http_billing_sentinel_ask(&rd->ask,
                                              ngx_http_billing_redis_resolved,
                                              rd);
            }

            break;

        default:
            if (sa == NULL
                || ngx_cmp_sockaddr(rd->peer.sockaddr, rd->peer.socklen,
                                    sa, socklen, 1)
                   != NGX_OK)
            {
                ngx_http_billing_redis_restart(rd, NGX_LOG_NOTICE,
                                               "the primary moved");
            }
        }
    }
}


/*
 * rd's server answered READONLY: the worker's other clients there leave
 * it too, the subscriber above all, which writes nothing and would never
 * be told.
 */

void
ngx_http_billing_sentinel_demoted(ngx_http_billing_redis_t *rd)
{
    ngx_queue_t                  *q, *next;
    ngx_http_billing_redis_t     *other;
    ngx_http_billing_sentinel_t  *w;

    w = rd->ask.watch;

    if (w == NULL) {
        return;
    }

    for (q = ngx_queue_head(&w->clients);
         q != ngx_queue_sentinel(&w->clients);
         q = next)
    {
        next = ngx_queue_next(q);
        other = ngx_queue_data(q, ngx_http_billing_redis_t, watched);

        if (other == rd
            || other->state < NGX_HTTP_BILLING_REDIS_CONNECTING
            || ngx_cmp_sockaddr(other->peer.sockaddr, other->peer.socklen,
                                rd->peer.sockaddr, rd->peer.socklen, 1)
               != NGX_OK)
        {
            continue;
        }

        ngx_http_billing_redis_restart(other, NGX_LOG_WARN,
                                       "READONLY on another connection");
    }
}


/* a client's question answered: connect there */

void
ngx_http_billing_redis_resolved(void *data,
    ngx_http_billing_sentinel_ask_t *ask, ngx_int_t rc)
{
    ngx_http_billing_redis_t  *rd = data;

    u_char      text[NGX_SOCKADDR_STRLEN];
    ngx_str_t   was;
    ngx_uint_t  level, moved;

    if (rc != NGX_OK) {
        ngx_http_billing_redis_failed(rd, NGX_LOG_ERR,
                                      "no Sentinel named the primary");
        return;
    }

    moved = 0;

    if (!rd->resolved
        || ngx_cmp_sockaddr(&rd->primary.sockaddr, rd->peer.socklen,
                            &ask->sockaddr.sockaddr, ask->socklen, 1)
           != NGX_OK)
    {
        moved = rd->resolved;

        was.data = text;
        was.len = 0;

        if (rd->resolved) {
            was.len = ngx_min(rd->primary_name.len, sizeof(text));
            ngx_memcpy(text, rd->primary_name.data, was.len);
        }

        ngx_memcpy(&rd->primary, &ask->sockaddr, ask->socklen);
        rd->peer.socklen = ask->socklen;

        rd->primary_name.data = rd->primary_text;
        rd->primary_name.len = ngx_sock_ntop(&rd->primary.sockaddr,
                                             rd->peer.socklen,
                                             rd->primary_text,
                                             NGX_SOCKADDR_STRLEN, 1);

        /* a change is worth a notice, the first answer is not */
        level = rd->resolved ? NGX_LOG_NOTICE : NGX_LOG_INFO;

        ngx_log_error(level, rd->log, 0,
                      "billing redis: %V names %V the primary of \"%V\"%s%V",
                      ask->sentinel, &rd->primary_name, &rd->conf->sentinel,
                      rd->resolved ? ", was " : "", &was);

        rd->resolved = 1;
    }

    rd->peer.sockaddr = &rd->primary.sockaddr;
    rd->peer.name = &rd->primary_name;

    if (moved) {
        /*
         * However this client learnt it (its connection closed by a
         * demoted primary, say), the worker's others follow at once.
         */
        ngx_http_billing_sentinel_follow(rd->ask.watch, rd->peer.sockaddr,
                                         rd->peer.socklen, 0);
    }

    ngx_http_billing_redis_open(rd);
}
