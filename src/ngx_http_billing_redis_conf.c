
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


char *
ngx_http_billing_redis_conf(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_billing_main_conf_t  *bmcf = conf;

    u_char                         *p;
    char                           *rv;
    ngx_int_t                       n;
    ngx_str_t                      *value, s;
    ngx_msec_t                     *timeout;
    ngx_uint_t                      i;
    ngx_http_billing_redis_conf_t  *rcf;

    if (bmcf->redis_conf) {
        return "is duplicate";
    }

    rcf = ngx_pcalloc(cf->pool, sizeof(ngx_http_billing_redis_conf_t));
    if (rcf == NULL) {
        return NGX_CONF_ERROR;
    }

    value = cf->args->elts;

    rcf->url.url = value[1];
    rcf->url.default_port = 6379;

    if (ngx_parse_url(cf->pool, &rcf->url) != NGX_OK) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid Redis address \"%V\" in \"%V\" "
                           "directive%s%s", &value[1], &cmd->name,
                           rcf->url.err ? ": " : "",
                           rcf->url.err ? rcf->url.err : "");
        return NGX_CONF_ERROR;
    }

    if (rcf->url.naddrs == 0 || rcf->url.uri.len) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid Redis address \"%V\" in \"%V\" "
                           "directive", &value[1], &cmd->name);
        return NGX_CONF_ERROR;
    }

    ngx_str_set(&rcf->prefix, "billing:");
    rcf->connect_timeout = 1000;
    rcf->timeout = 1000;

    for (i = 2; i < cf->args->nelts; i++) {

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

        if (ngx_http_billing_param(&value[i], "prefix=", &s)) {

            if (s.len == 0 || s.len > NGX_HTTP_BILLING_PREFIX_MAX) {
                goto invalid;
            }

            for (p = s.data; p < s.data + s.len; p++) {
                if (*p <= ' ' || *p >= 0x7f) {
                    goto invalid;
                }
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

    bmcf->redis_conf = rcf;

    return NGX_CONF_OK;

invalid:

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "invalid parameter \"%V\" in \"%V\" directive",
                       &value[i], &cmd->name);
    return NGX_CONF_ERROR;
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
