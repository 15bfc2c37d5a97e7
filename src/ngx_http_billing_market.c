
/*
 * Several marketplaces on one gateway.  The http level's Stripe key,
 * webhook secrets, API token, portal URL, Stripe location and
 * billing_overdue make the default marketplace, whose Redis keys are
 * the prefix's own; a server with "billing_marketplace NAME" is a
 * marketplace of its own, with its settings merged from the http level
 * as nginx merges its own, and its keys under "<prefix>mp:NAME:".  Every
 * server naming one marketplace must have the same settings: they are
 * one Stripe account.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_billing_module.h"
#include "ngx_http_billing_market.h"
#include "ngx_http_billing_secret.h"
#include "ngx_billing_signature.h"


#define ngx_http_billing_same(a, b)                                          \
    ((a)->len == (b)->len                                                     \
     && ((a)->len == 0 || ngx_memcmp((a)->data, (b)->data, (a)->len) == 0))


static ngx_int_t ngx_http_billing_market_new(ngx_conf_t *cf,
    ngx_http_billing_main_conf_t *bmcf, ngx_http_billing_srv_conf_t *m);
static const char *ngx_http_billing_market_differs(
    ngx_http_billing_srv_conf_t *one, ngx_http_billing_srv_conf_t *two);
static const char *ngx_http_billing_market_own(
    ngx_http_billing_srv_conf_t *conf);
static ngx_uint_t ngx_http_billing_secrets_equal(ngx_array_t *one,
    ngx_array_t *two);
static ngx_uint_t ngx_http_billing_secrets_within(ngx_array_t *one,
    ngx_array_t *two);
static ngx_uint_t ngx_http_billing_secrets_common(ngx_array_t *one,
    ngx_array_t *two);
static void ngx_http_billing_market_accounts(ngx_conf_t *cf,
    ngx_http_billing_main_conf_t *bmcf);
static ngx_int_t ngx_http_billing_market_needs(ngx_conf_t *cf,
    ngx_http_billing_main_conf_t *bmcf, ngx_http_billing_srv_conf_t *bscf);


char *
ngx_http_billing_marketplace(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_billing_srv_conf_t  *bscf = conf;

    u_char     *p;
    ngx_str_t  *value;

    if (bscf->name.len) {
        return "is duplicate";
    }

    value = cf->args->elts;

    /* the name is in Redis keys and metric labels: kept plain */

    if (value[1].len == 0 || value[1].len > NGX_HTTP_BILLING_MARKET_NAME_MAX) {
        return "has an invalid name: 1 to 32 of a-z, 0-9, \"_\" and \"-\"";
    }

    for (p = value[1].data; p < value[1].data + value[1].len; p++) {
        if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9')
              || *p == '_' || *p == '-'))
        {
            return "has an invalid name: 1 to 32 of a-z, 0-9, \"_\" and "
                   "\"-\"";
        }
    }

    if (value[1].len == sizeof("default") - 1
        && ngx_strncmp(value[1].data, "default", value[1].len) == 0)
    {
        return "cannot be \"default\": that is the http level's marketplace";
    }

    bscf->name = value[1];
    bscf->name_file = cf->conf_file->file.name;
    bscf->name_line = cf->conf_file->line;

    return NGX_CONF_OK;
}


void *
ngx_http_billing_create_srv_conf(ngx_conf_t *cf)
{
    ngx_http_billing_srv_conf_t  *bscf;

    bscf = ngx_pcalloc(cf->pool, sizeof(ngx_http_billing_srv_conf_t));
    if (bscf == NULL) {
        return NULL;
    }

    /*
     * set by ngx_pcalloc():
     *
     *     bscf->name = { 0, NULL };
     *     bscf->webhook_secrets = NULL;
     *     bscf->stripe_key = { 0, NULL };
     *     bscf->market = NULL;
     *     bscf->timer_ctx = NULL;
     */

    bscf->overdue = NGX_CONF_UNSET_MSEC;

    return bscf;
}


ngx_int_t
ngx_http_billing_market_init(ngx_conf_t *cf,
    ngx_http_billing_main_conf_t *bmcf)
{
    ngx_http_billing_srv_conf_t  *m;

    m = ngx_http_conf_get_module_srv_conf(cf, ngx_http_billing_module);

    ngx_conf_init_msec_value(m->overdue, 0);

    if (m->stripe_api_version.data == NULL) {
        ngx_str_set(&m->stripe_api_version, "2022-11-15");
    }

    if (m->stripe_location.data == NULL) {
        ngx_str_set(&m->stripe_location, "/_billing_stripe");
    }

    if (ngx_http_billing_secret_init(cf, m) != NGX_OK) {
        return NGX_ERROR;
    }

    return ngx_http_billing_market_new(cf, bmcf, m);
}


char *
ngx_http_billing_merge_srv_conf(ngx_conf_t *cf, void *parent, void *child)
{
    ngx_http_billing_srv_conf_t  *prev = parent;
    ngx_http_billing_srv_conf_t  *conf = child;

    const char                    *what;
    ngx_http_core_srv_conf_t      *cscf;
    ngx_http_billing_srv_conf_t   *m;
    ngx_http_billing_main_conf_t  *bmcf;

    bmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_billing_module);
    cscf = ngx_http_conf_get_module_srv_conf(cf, ngx_http_core_module);

    if (conf->name.len == 0) {

        /*
         * One Stripe account per marketplace: a server of the default
         * one has the http level's settings, none of its own.
         */

        what = ngx_http_billing_market_own(conf);

        if (what) {
            ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                          "\"%s\" in the server of %s:%ui needs "
                          "\"billing_marketplace\" in that server; the "
                          "default marketplace's settings are at the http "
                          "level", what, cscf->file_name, cscf->line);
            return NGX_CONF_ERROR;
        }

        conf->market = prev;

    } else {

        if (conf->stripe_key.data == NULL) {
            conf->stripe_key = prev->stripe_key;
            conf->stripe_authorization = prev->stripe_authorization;

        } else if (ngx_http_billing_secret_init(cf, conf) != NGX_OK) {
            return NGX_CONF_ERROR;
        }

        if (conf->webhook_secrets == NULL) {
            conf->webhook_secrets = prev->webhook_secrets;
        }

        ngx_conf_merge_str_value(conf->stripe_api_version,
                                 prev->stripe_api_version, "2022-11-15");
        ngx_conf_merge_str_value(conf->stripe_location,
                                 prev->stripe_location, "/_billing_stripe");
        ngx_conf_merge_str_value(conf->portal_url, prev->portal_url, "");
        ngx_conf_merge_str_value(conf->api_token, prev->api_token, "");
        ngx_conf_merge_msec_value(conf->overdue, prev->overdue, 0);

        m = ngx_http_billing_market_find(bmcf, &conf->name);

        if (m == NULL) {
            if (ngx_http_billing_market_new(cf, bmcf, conf) != NGX_OK) {
                return NGX_CONF_ERROR;
            }

            m = conf;

        } else {
            what = ngx_http_billing_market_differs(m, conf);

            if (what) {
                ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                              "\"billing_marketplace %V\" in %V:%ui has "
                              "another \"%s\" than in %V:%ui: the servers "
                              "of one marketplace are one Stripe account",
                              &conf->name, &conf->name_file, conf->name_line,
                              what, &m->name_file, m->name_line);
                return NGX_CONF_ERROR;
            }
        }

        conf->market = m;
    }

    /* the timers' Stripe calls go where its API's go, else its first */

    m = conf->market;

    if (m->timer_ctx == NULL || (conf->api_file.len && !m->timer_api)) {
        m->timer_ctx = cscf->ctx;
        m->timer_api = conf->api_file.len ? 1 : 0;
    }

    return NGX_CONF_OK;
}


/* a marketplace: its index, label, keys' prefix and pub/sub channel */

static ngx_int_t
ngx_http_billing_market_new(ngx_conf_t *cf,
    ngx_http_billing_main_conf_t *bmcf, ngx_http_billing_srv_conf_t *m)
{
    u_char                        *p;
    ngx_str_t                      prefix;
    ngx_http_billing_srv_conf_t  **slot;

    if (bmcf->markets.nelts == NGX_HTTP_BILLING_MARKETS_MAX) {
        ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                      "\"billing_marketplace %V\" in %V:%ui: more than %d "
                      "marketplaces", &m->name, &m->name_file, m->name_line,
                      NGX_HTTP_BILLING_MARKETS_MAX - 1);
        return NGX_ERROR;
    }

    if (bmcf->redis_conf) {
        prefix = bmcf->redis_conf->prefix;

    } else {
        ngx_str_set(&prefix, "billing:");
    }

    m->market = m;
    m->index = bmcf->markets.nelts;

    if (m->name.len == 0) {
        /* "", not NULL: the name is copied and compared as any other */
        ngx_str_set(&m->name, "");
        ngx_str_set(&m->label, "default");
        m->prefix = prefix;

    } else {
        m->label = m->name;

        p = ngx_pnalloc(cf->pool, prefix.len + sizeof("mp::") - 1
                                  + m->name.len);
        if (p == NULL) {
            return NGX_ERROR;
        }

        m->prefix.data = p;
        m->prefix.len = ngx_sprintf(p, "%Vmp:%V:", &prefix, &m->name) - p;
    }

    p = ngx_pnalloc(cf->pool, m->prefix.len + sizeof("events") - 1);
    if (p == NULL) {
        return NGX_ERROR;
    }

    m->events.data = p;
    m->events.len = ngx_sprintf(p, "%Vevents", &m->prefix) - p;

    slot = ngx_array_push(&bmcf->markets);
    if (slot == NULL) {
        return NGX_ERROR;
    }

    *slot = m;

    return NGX_OK;
}


/* the first setting of a server that "one" and "two" do not share */

static const char *
ngx_http_billing_market_differs(ngx_http_billing_srv_conf_t *one,
    ngx_http_billing_srv_conf_t *two)
{
    if (!ngx_http_billing_same(&one->stripe_key, &two->stripe_key)) {
        return "billing_stripe_key_file";
    }

    if (!ngx_http_billing_secrets_equal(one->webhook_secrets,
                                        two->webhook_secrets))
    {
        return "billing_stripe_webhook_secret_file";
    }

    if (!ngx_http_billing_same(&one->api_token, &two->api_token)) {
        return "billing_api_token_file";
    }

    if (!ngx_http_billing_same(&one->stripe_api_version,
                               &two->stripe_api_version))
    {
        return "billing_stripe_api_version";
    }

    if (!ngx_http_billing_same(&one->stripe_location,
                               &two->stripe_location))
    {
        return "billing_stripe_location";
    }

    if (!ngx_http_billing_same(&one->portal_url, &two->portal_url)) {
        return "billing_portal_url";
    }

    if (one->overdue != two->overdue) {
        return "billing_overdue";
    }

    return NULL;
}


/* the first marketplace setting a server has of its own, NULL if none */

static const char *
ngx_http_billing_market_own(ngx_http_billing_srv_conf_t *conf)
{
    if (conf->stripe_key.data) {
        return "billing_stripe_key_file";
    }

    if (conf->webhook_secrets) {
        return "billing_stripe_webhook_secret_file";
    }

    if (conf->api_token.data) {
        return "billing_api_token_file";
    }

    if (conf->stripe_api_version.data) {
        return "billing_stripe_api_version";
    }

    if (conf->stripe_location.data) {
        return "billing_stripe_location";
    }

    if (conf->portal_url.data) {
        return "billing_portal_url";
    }

    if (conf->overdue != NGX_CONF_UNSET_MSEC) {
        return "billing_overdue";
    }

    return NULL;
}


/* the same secrets, in any order */

static ngx_uint_t
ngx_http_billing_secrets_equal(ngx_array_t *one, ngx_array_t *two)
{
    if (one == NULL || two == NULL) {
        return one == two;
    }

    return ngx_http_billing_secrets_within(one, two)
           && ngx_http_billing_secrets_within(two, one);
}


/* every one of "one" is among "two" (any: at least one of them is) */

static ngx_uint_t
ngx_http_billing_secrets_within(ngx_array_t *one, ngx_array_t *two)
{
    return ngx_http_billing_secrets_common(one, two) == one->nelts;
}


static ngx_uint_t
ngx_http_billing_secrets_common(ngx_array_t *one, ngx_array_t *two)
{
    ngx_uint_t             i, j, n;
    ngx_billing_secret_t  *a, *b;

    a = one->elts;
    b = two->elts;
    n = 0;

    for (i = 0; i < one->nelts; i++) {
        for (j = 0; j < two->nelts; j++) {
            if (a[i].len == b[j].len
                && ngx_memcmp(a[i].data, b[j].data, a[i].len) == 0)
            {
                n++;
                break;
            }
        }
    }

    return n;
}


ngx_http_billing_srv_conf_t *
ngx_http_billing_market_find(ngx_http_billing_main_conf_t *bmcf,
    ngx_str_t *name)
{
    ngx_uint_t                     i;
    ngx_http_billing_srv_conf_t  **markets;

    markets = bmcf->markets.elts;

    for (i = 0; i < bmcf->markets.nelts; i++) {
        if (markets[i]->name.len == name->len
            && ngx_strncmp(markets[i]->name.data, name->data, name->len) == 0)
        {
            return markets[i];
        }
    }

    return NULL;
}


ngx_int_t
ngx_http_billing_market_check(ngx_conf_t *cf,
    ngx_http_billing_main_conf_t *bmcf)
{
    ngx_uint_t                    s;
    ngx_http_core_srv_conf_t    **cscfp;
    ngx_http_core_main_conf_t    *cmcf;
    ngx_http_billing_srv_conf_t  *bscf, *m;

    cmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_core_module);
    cscfp = cmcf->servers.elts;

    /*
     * Every server named a marketplace: the default one has no server
     * for its timers' calls, and its key is not sent through another's.
     */

    m = ((ngx_http_billing_srv_conf_t **) bmcf->markets.elts)[0];

    if (m->timer_ctx == NULL && m->stripe_key.len && bmcf->redis_conf) {
        ngx_log_error(NGX_LOG_WARN, cf->log, 0,
                      "the http level's \"billing_stripe_key_file\" has "
                      "no server without \"billing_marketplace\": the "
                      "default marketplace's period-end invoices and "
                      "reconciliation do not run on this node");
    }

    ngx_http_billing_market_accounts(cf, bmcf);

    for (s = 0; s < cmcf->servers.nelts; s++) {
        bscf = cscfp[s]->ctx->srv_conf[ngx_http_billing_module.ctx_index];

        if (ngx_http_billing_market_needs(cf, bmcf, bscf) != NGX_OK) {
            return NGX_ERROR;
        }
    }

    return NGX_OK;
}


/*
 * Marketplaces on one Stripe account (the same key) share when it last
 * limited the rate; the same key or secret under two names is allowed,
 * but each endpoint then gets the other's events, told apart by their
 * metadata only: said once.
 */

static void
ngx_http_billing_market_accounts(ngx_conf_t *cf,
    ngx_http_billing_main_conf_t *bmcf)
{
    ngx_uint_t                     i, j;
    ngx_http_billing_srv_conf_t  **markets, *a, *b;

    markets = bmcf->markets.elts;

    for (i = 0; i < bmcf->markets.nelts; i++) {
        a = markets[i];
        a->limited = &a->stripe_limited;

        for (j = 0; j < i; j++) {
            b = markets[j];

            if (a->stripe_key.len
                && ngx_http_billing_same(&a->stripe_key, &b->stripe_key))
            {
                if (a->limited == &a->stripe_limited) {
                    a->limited = b->limited;

                    ngx_log_error(NGX_LOG_WARN, cf->log, 0,
                                  "the marketplaces \"%V\" and \"%V\" "
                                  "have the same Stripe key: one account, "
                                  "whose invoices they tell apart by their "
                                  "metadata", &b->label, &a->label);
                }
            }

            if (a->webhook_secrets && b->webhook_secrets
                && a->webhook_secrets != b->webhook_secrets
                && ngx_http_billing_secrets_common(a->webhook_secrets,
                                                   b->webhook_secrets))
            {
                ngx_log_error(NGX_LOG_WARN, cf->log, 0,
                              "the marketplaces \"%V\" and \"%V\" share a "
                              "webhook secret: each endpoint accepts the "
                              "other's signatures", &b->label, &a->label);
            }
        }
    }
}


static ngx_int_t
ngx_http_billing_market_needs(ngx_conf_t *cf,
    ngx_http_billing_main_conf_t *bmcf, ngx_http_billing_srv_conf_t *bscf)
{
    const char                   *need, *where;
    ngx_http_billing_srv_conf_t  *m;

    m = bscf->market;

    where = m->index ? "in its server or at the http level"
                     : "at the http level";

    if (bscf->webhook_file.len) {

        if (bmcf->redis_conf == NULL) {
            need = "billing_redis";
            where = "at the http level";

        } else if (m->webhook_secrets == NULL) {
            need = "billing_stripe_webhook_secret_file";

        } else {
            need = NULL;
        }

        if (need) {
            ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                          "\"billing_webhook\" in %V:%ui needs \"%s\" %s",
                          &bscf->webhook_file, bscf->webhook_line, need,
                          where);
            return NGX_ERROR;
        }
    }

    if (bscf->api_file.len) {

        if (m->api_token.len == 0) {
            need = "billing_api_token_file";

        } else if (bmcf->redis_conf == NULL) {
            need = "billing_redis";
            where = "at the http level";

        } else if (m->stripe_key.len == 0) {
            need = "billing_stripe_key_file";

        } else {
            need = NULL;
        }

        if (need) {
            ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                          "\"billing_api\" in %V:%ui needs \"%s\" %s",
                          &bscf->api_file, bscf->api_line, need, where);
            return NGX_ERROR;
        }
    }

    return NGX_OK;
}
