
/*
 * billing_meter: units counted in the log phase, held in a shared zone
 * that never evicts a count, sent to Redis by every node.
 */


#ifndef _NGX_HTTP_BILLING_METER_H_INCLUDED_
#define _NGX_HTTP_BILLING_METER_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_billing_module.h"


/* billing_meter on | off | VALUE */
char *ngx_http_billing_meter_conf(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);

/* the log phase handler and the shared zone */
ngx_int_t ngx_http_billing_meter_init(ngx_conf_t *cf);

/* this worker's flush timer; the exit sends what is left */
ngx_int_t ngx_http_billing_meter_init_worker(ngx_cycle_t *cycle,
    ngx_http_billing_main_conf_t *bmcf);
void ngx_http_billing_meter_exit_worker(ngx_http_billing_main_conf_t *bmcf);


#endif /* _NGX_HTTP_BILLING_METER_H_INCLUDED_ */
