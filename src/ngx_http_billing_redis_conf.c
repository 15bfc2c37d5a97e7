
/*
 * billing_redis: where Redis is and how to talk to it.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_billing_module.h"
#include "ngx_http_billing_redis.h"
#include "ngx_http_billing_secret.h"


#define NGX_HTTP_BILLING_PREFIX_MAX    64
#define NGX_HTTP_BILLING_SENTINEL_MAX  128
#define NGX_HTTP_BILLING_REPLICAS_MAX  64


static ngx_uint_t ngx_http_billing_redis_is_param(ngx_str_t *value);
static char *ngx_http_billing_redis_addrs(ngx_conf_t *cf, ngx_command_t *cmd,
    ngx_http_billing_redis_conf_t *rcf, ngx_str_t *value, ngx_uint_t n);
static ngx_uint_t ngx_http_billing_redis_printable(ngx_str_t *s);


char *
ngx_http_billing_redis_conf(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_billing_main_conf_t  *bmcf = conf;

    char                           *rv;
    ngx_int_t                       n;
    ngx_str_t                      *value, s;
    ngx_msec_t                     *timeout;
    ngx_uint_t                      i, naddrs, sentinel_password;
    ngx_http_billing_redis_conf_t  *rcf;

    if (bmcf->redis_conf) {
        return "is duplicate";
    }

    rcf = ngx_pcalloc(cf->pool, sizeof(ngx_http_billing_redis_conf_t));
    if (rcf == NULL) {
        return NGX_CONF_ERROR;
    }

    value = cf->args->elts;

    /* the ADDRESSes come first, the "name=value" parameters after them */

    for (naddrs = 0; naddrs + 1 < cf->args->nelts; naddrs++) {
        if (ngx_http_billing_redis_is_param(&value[naddrs + 1])) {
            break;
        }
    }

    if (naddrs == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "no Redis address in \"%V\" directive",
                           &cmd->name);
        return NGX_CONF_ERROR;
    }

    ngx_str_set(&rcf->prefix, "billing:");
    rcf->connect_timeout = 1000;
    rcf->timeout = 1000;
    sentinel_password = 0;

    for (i = naddrs + 1; i < cf->args->nelts; i++) {

        if (ngx_http_billing_param(&value[i], "db=", &s)) {
            n = ngx_atoi(s.data, s.len);
            if (n == NGX_ERROR || n > 65535) {
                goto invalid;
            }

            rcf->db = n;
            continue;
        }

        if (ngx_http_billing_param(&value[i], "password_file=", &s)) {
            rv = ngx_http_billing_read_lines(cf, cmd, &s,
                                        ngx_http_billing_redis_password,
                                        &rcf->password);
            if (rv != NGX_CONF_OK) {
                return rv;
            }

            continue;
        }

        if (ngx_http_billing_param(&value[i], "sentinel_password_file=", &s))
        {
            rv = ngx_http_billing_read_lines(cf, cmd, &s,
                                        ngx_http_billing_redis_password,
                                        &rcf->sentinel_password);
            if (rv != NGX_CONF_OK) {
                return rv;
            }

            sentinel_password = i;
            continue;
        }

        if (ngx_http_billing_param(&value[i], "sentinel=", &s)) {

            /* +switch-master names it among words split by spaces */

            if (s.len == 0 || s.len > NGX_HTTP_BILLING_SENTINEL_MAX
                || !ngx_http_billing_redis_printable(&s))
            {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "invalid primary name \"%V\" in \"%V\" "
                                   "directive: a Sentinel's name of a "
                                   "primary, printable, without spaces",
                                   &s, &cmd->name);
                return NGX_CONF_ERROR;
            }

            rcf->sentinel = s;
            continue;
        }

        if (ngx_http_billing_param(&value[i], "replicas=", &s)) {
            n = ngx_atoi(s.data, s.len);
            if (n == NGX_ERROR || n == 0 || n > NGX_HTTP_BILLING_REPLICAS_MAX)
            {
                goto invalid;
            }

            rcf->replicas = n;
            continue;
        }

        if (ngx_http_billing_param(&value[i], "prefix=", &s)) {

            if (s.len == 0 || s.len > NGX_HTTP_BILLING_PREFIX_MAX
                || !ngx_http_billing_redis_printable(&s))
            {
                goto invalid;
            }

            rcf->prefix = s;
            continue;
        }

        if (ngx_http_billing_param(&value[i], "connect_timeout=", &s)) {
            timeout = &rcf->connect_timeout;

        } else if (ngx_http_billing_param(&value[i], "timeout=", &s)) {
            timeout = &rcf->timeout;

        } else {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "unknown parameter \"%V\" in \"%V\" "
                               "directive", &value[i], &cmd->name);
            return NGX_CONF_ERROR;
        }

        n = ngx_parse_time(&s, 0);
        if (n == NGX_ERROR || n == 0) {
            goto invalid;
        }

        *timeout = n;
    }

    if (rcf->sentinel.len == 0) {

        if (naddrs > 1) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "\"%V\" directive has %ui addresses but no "
                               "\"sentinel=\": several addresses are "
                               "Sentinels, and need the name of the primary",
                               &cmd->name, naddrs);
            return NGX_CONF_ERROR;
        }

        if (sentinel_password) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "\"sentinel_password_file\" in \"%V\" "
                               "directive needs \"sentinel=\"", &cmd->name);
            return NGX_CONF_ERROR;
        }
    }

    rv = ngx_http_billing_redis_addrs(cf, cmd, rcf, &value[1], naddrs);
    if (rv != NGX_CONF_OK) {
        return rv;
    }

    bmcf->redis_conf = rcf;

    return NGX_CONF_OK;

invalid:

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "invalid parameter \"%V\" in \"%V\" directive",
                       &value[i], &cmd->name);
    return NGX_CONF_ERROR;
}


static ngx_uint_t
ngx_http_billing_redis_is_param(ngx_str_t *value)
{
    u_char  *p;

    /* "name=...": an address starts with a host, "[", or "unix:" */

    for (p = value->data; p < value->data + value->len; p++) {

        if (*p == '=') {
            return p != value->data;
        }

        if (!((*p >= 'a' && *p <= 'z') || *p == '_')) {
            return 0;
        }
    }

    return 0;
}


static ngx_uint_t
ngx_http_billing_redis_printable(ngx_str_t *s)
{
    u_char  *p;

    for (p = s->data; p < s->data + s->len; p++) {
        if (*p <= ' ' || *p >= 0x7f) {
            return 0;
        }
    }

    return 1;
}


static char *
ngx_http_billing_redis_addrs(ngx_conf_t *cf, ngx_command_t *cmd,
    ngx_http_billing_redis_conf_t *rcf, ngx_str_t *value, ngx_uint_t n)
{
    ngx_url_t     u;
    ngx_uint_t    i;
    ngx_array_t   addrs;
    ngx_addr_t   *addr;

    if (ngx_array_init(&addrs, cf->pool, n, sizeof(ngx_addr_t)) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    for (i = 0; i < n; i++) {

        ngx_memzero(&u, sizeof(ngx_url_t));

        u.url = value[i];
        u.default_port = rcf->sentinel.len ? 26379 : 6379;

        if (ngx_parse_url(cf->pool, &u) != NGX_OK) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid %s address \"%V\" in \"%V\" "
                               "directive%s%s",
                               rcf->sentinel.len ? "Sentinel" : "Redis",
                               &value[i], &cmd->name,
                               u.err ? ": " : "", u.err ? u.err : "");
            return NGX_CONF_ERROR;
        }

        if (u.naddrs == 0 || u.uri.len) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid %s address \"%V\" in \"%V\" "
                               "directive",
                               rcf->sentinel.len ? "Sentinel" : "Redis",
                               &value[i], &cmd->name);
            return NGX_CONF_ERROR;
        }

        /*
         * One Redis: the first address of its name.  Sentinels: every
         * address of every name, all asked in turn.
         */

        addr = ngx_array_push_n(&addrs, rcf->sentinel.len ? u.naddrs : 1);
        if (addr == NULL) {
            return NGX_CONF_ERROR;
        }

        ngx_memcpy(addr, u.addrs,
                   (rcf->sentinel.len ? u.naddrs : 1) * sizeof(ngx_addr_t));
    }

    rcf->addrs = addrs.elts;
    rcf->naddrs = addrs.nelts;

    return NGX_CONF_OK;
}


ngx_int_t
ngx_http_billing_redis_init_worker(ngx_cycle_t *cycle,
    ngx_http_billing_main_conf_t *bmcf)
{
    bmcf->redis = ngx_http_billing_redis_create(cycle, bmcf->redis_conf);

    return bmcf->redis ? NGX_OK : NGX_ERROR;
}


void
ngx_http_billing_redis_exit_worker(ngx_http_billing_main_conf_t *bmcf)
{
    if (bmcf->redis) {
        ngx_http_billing_redis_destroy(bmcf->redis);
        bmcf->redis = NULL;
    }
}
