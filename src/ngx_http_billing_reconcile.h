
/*
 * Reconciliation: open invoices asked about at Stripe, so that a webhook
 * that never came does not keep a paying consumer gated.
 */


#ifndef _NGX_HTTP_BILLING_RECONCILE_H_INCLUDED_
#define _NGX_HTTP_BILLING_RECONCILE_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_billing_module.h"


/* result: NGX_HTTP_BILLING_REC_* (ngx_http_billing_status.h) */
typedef void (*ngx_http_billing_reconcile_pt)(void *data, ngx_uint_t result);


/* billing_reconcile TIME | off */
char *ngx_http_billing_reconcile_conf(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);

/* this worker's rounds, on a timer */
ngx_int_t ngx_http_billing_reconcile_init_worker(ngx_cycle_t *cycle,
    ngx_http_billing_main_conf_t *bmcf);
void ngx_http_billing_reconcile_exit_worker(
    ngx_http_billing_main_conf_t *bmcf);

/*
 * Asks Stripe about one invoice of a subscription and records its status
 * as a webhook would (never going back); done is called once, from the
 * event loop, unless the owner's pool goes first.  source: who asks
 * (NGX_HTTP_BILLING_REC_ROUND, _REFRESH), for billing_status.
 */
ngx_int_t ngx_http_billing_reconcile_invoice(ngx_http_billing_owner_t *owner,
    ngx_str_t *invoice, ngx_str_t *subscription, ngx_str_t *kind,
    ngx_uint_t source, ngx_http_billing_reconcile_pt done, void *data);


#endif /* _NGX_HTTP_BILLING_RECONCILE_H_INCLUDED_ */
