
/*
 * Several marketplaces: billing_marketplace, the settings a server may
 * have of its own, and what each marketplace keeps apart in Redis.
 */


#ifndef _NGX_HTTP_BILLING_MARKET_H_INCLUDED_
#define _NGX_HTTP_BILLING_MARKET_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_billing_module.h"


/* billing_marketplace */
char *ngx_http_billing_marketplace(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);

void *ngx_http_billing_create_srv_conf(ngx_conf_t *cf);
char *ngx_http_billing_merge_srv_conf(ngx_conf_t *cf, void *parent,
    void *child);

/* the http level's settings made the default marketplace */
ngx_int_t ngx_http_billing_market_init(ngx_conf_t *cf,
    ngx_http_billing_main_conf_t *bmcf);

/* each server's billing_webhook and billing_api have what they need */
ngx_int_t ngx_http_billing_market_check(ngx_conf_t *cf,
    ngx_http_billing_main_conf_t *bmcf);


#endif /* _NGX_HTTP_BILLING_MARKET_H_INCLUDED_ */
