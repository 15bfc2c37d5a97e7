
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

/*
 * Works on the subscription in this worker now if it can (a lease is
 * taken first); else the scheduler of some node takes it from the due
 * set within a second.  NGX_DECLINED: not here.
 */
ngx_int_t ngx_http_billing_scheduler_kick(ngx_http_billing_srv_conf_t *market,
    ngx_str_t *id);

/* how long a final invoice waits for every node's counts, at most */
ngx_msec_t ngx_http_billing_scheduler_final_wait(
    ngx_http_billing_main_conf_t *bmcf);


#endif /* _NGX_HTTP_BILLING_SCHEDULER_H_INCLUDED_ */
