
/*
 * billing_meter (placeholder, being written).
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_billing_meter.h"


char *
ngx_http_billing_meter_conf(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_billing_loc_conf_t  *blcf = conf;

    ngx_str_t  *value;

    value = cf->args->elts;

    if (ngx_strcmp(value[1].data, "off") == 0) {
        blcf->meter = NGX_HTTP_BILLING_METER_OFF;
    } else {
        blcf->meter = NGX_HTTP_BILLING_METER_ON;
    }

    return NGX_CONF_OK;
}


ngx_int_t
ngx_http_billing_meter_init(ngx_conf_t *cf)
{
    return NGX_OK;
}


ngx_int_t
ngx_http_billing_meter_init_worker(ngx_cycle_t *cycle,
    ngx_http_billing_main_conf_t *bmcf)
{
    return NGX_OK;
}


void
ngx_http_billing_meter_exit_worker(ngx_http_billing_main_conf_t *bmcf)
{
}
