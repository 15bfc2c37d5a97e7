
/*
 * billing_gate: access to product resources, by subscription state.
 */


#ifndef _NGX_HTTP_BILLING_GATE_H_INCLUDED_
#define _NGX_HTTP_BILLING_GATE_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_billing_module.h"


char *ngx_http_billing_gate_conf(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);

/* the phase handlers */
ngx_int_t ngx_http_billing_gate_init(ngx_conf_t *cf);

/* what the meter needs of a request the gate let through */
typedef struct {
    ngx_str_t                     id;
    time_t                        period_start;  /* 0: no period known */

    /* whose billing_meter counts: the final location's or the target's */
    ngx_http_billing_loc_conf_t  *meter_conf;

    /* the gate's marketplace, ngx_http_billing_key_hash() of it and id */
    ngx_http_billing_srv_conf_t  *market;
    uint32_t                      hash;

    /* $billing_units: what the meter counted adds here */
    int64_t                      *units;
} ngx_http_billing_metered_t;


/*
 * For the meter, in the log phase: NGX_OK only when the gate let this
 * main request through as active; then the subscription id, the start
 * of the metering period that now falls in (0 when the subscription's
 * data has no period) and the configuration whose billing_meter counts
 * (the final location's, or the auth_request target's that decided).
 */
ngx_int_t ngx_http_billing_gate_metered(ngx_http_request_t *r,
    ngx_http_billing_metered_t *mt);

/* a subrequest's header, for a denial in an auth_request target */
void ngx_http_billing_gate_auth_header(ngx_http_request_t *r);

/* $billing_subscription, $billing_state, $billing_decision, $billing_units */
ngx_int_t ngx_http_billing_variables_add(ngx_conf_t *cf);

/* the pub/sub connection that keeps billing_cache fresh */
ngx_int_t ngx_http_billing_gate_init_worker(ngx_cycle_t *cycle,
    ngx_http_billing_main_conf_t *bmcf);
void ngx_http_billing_gate_exit_worker(ngx_http_billing_main_conf_t *bmcf);


#endif /* _NGX_HTTP_BILLING_GATE_H_INCLUDED_ */
