
/*
 * ngx_http_billing_filter_module: the module's header and body filters.
 */


#ifndef _NGX_HTTP_BILLING_FILTER_H_INCLUDED_
#define _NGX_HTTP_BILLING_FILTER_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>


extern ngx_module_t  ngx_http_billing_filter_module;


#endif /* _NGX_HTTP_BILLING_FILTER_H_INCLUDED_ */
