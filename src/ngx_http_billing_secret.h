
/*
 * Secrets read from files when the configuration loads.
 */


#ifndef _NGX_HTTP_BILLING_SECRET_H_INCLUDED_
#define _NGX_HTTP_BILLING_SECRET_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_billing_module.h"


/* returns NULL, or what is wrong with the line (never the line itself) */
typedef char *(*ngx_http_billing_line_pt)(ngx_conf_t *cf, void *data,
    ngx_str_t *line);


char *ngx_http_billing_webhook_secret_file(ngx_conf_t *cf,
    ngx_command_t *cmd, void *conf);
char *ngx_http_billing_stripe_key_file(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
char *ngx_http_billing_api_token_file(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);

/* a line handler for billing_redis password_file=: data is an ngx_str_t */
char *ngx_http_billing_redis_password(ngx_conf_t *cf, void *data,
    ngx_str_t *line);

/* calls handler for each line of the file that is not blank or a comment */
char *ngx_http_billing_read_lines(ngx_conf_t *cf, ngx_command_t *cmd,
    ngx_str_t *name, ngx_http_billing_line_pt handler, void *data);

/* "Bearer <key>" for the Stripe calls, wiped with the configuration */
ngx_int_t ngx_http_billing_secret_init(ngx_conf_t *cf,
    ngx_http_billing_srv_conf_t *bscf);


#endif /* _NGX_HTTP_BILLING_SECRET_H_INCLUDED_ */
