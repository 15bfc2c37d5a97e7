
/*
 * billing_webhook: Stripe webhook ingress.
 */


#ifndef _NGX_HTTP_BILLING_WEBHOOK_H_INCLUDED_
#define _NGX_HTTP_BILLING_WEBHOOK_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>


char *ngx_http_billing_webhook(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);


#endif /* _NGX_HTTP_BILLING_WEBHOOK_H_INCLUDED_ */
