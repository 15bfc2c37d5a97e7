
/*
 * The scheduler (placeholder, being written).
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_billing_scheduler.h"


ngx_int_t
ngx_http_billing_scheduler_init(ngx_conf_t *cf)
{
    return NGX_OK;
}


ngx_int_t
ngx_http_billing_scheduler_init_worker(ngx_cycle_t *cycle,
    ngx_http_billing_main_conf_t *bmcf)
{
    return NGX_OK;
}


void
ngx_http_billing_scheduler_exit_worker(ngx_http_billing_main_conf_t *bmcf)
{
}
