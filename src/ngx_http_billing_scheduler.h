
/*
 * The scheduler: period-end and final invoices, issued from timers by
 * whichever node gets there first, each exactly once.
 */


#ifndef _NGX_HTTP_BILLING_SCHEDULER_H_INCLUDED_
#define _NGX_HTTP_BILLING_SCHEDULER_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_billing_module.h"


ngx_int_t ngx_http_billing_scheduler_init(ngx_conf_t *cf);

ngx_int_t ngx_http_billing_scheduler_init_worker(ngx_cycle_t *cycle,
    ngx_http_billing_main_conf_t *bmcf);
void ngx_http_billing_scheduler_exit_worker(
    ngx_http_billing_main_conf_t *bmcf);


#endif /* _NGX_HTTP_BILLING_SCHEDULER_H_INCLUDED_ */
