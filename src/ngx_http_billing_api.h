
/*
 * billing_api: the subscription API for the marketplace backend.
 */


#ifndef _NGX_HTTP_BILLING_API_H_INCLUDED_
#define _NGX_HTTP_BILLING_API_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>


char *ngx_http_billing_api(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);


#endif /* _NGX_HTTP_BILLING_API_H_INCLUDED_ */
