
/*
 * The module's variables, for log_format: what the gate and the meter
 * did with the (main) request.
 *
 *     $billing_subscription   the subscription the gate decided on
 *     $billing_state          its state as the gate saw it
 *     $billing_decision       "allow", or the code of the gate's denial
 *     $billing_units          the units the meter counted for it
 *
 * Not found ("-" in a log) where no gate decided.  The meter's handler
 * is the first of the log phase: access_log writes what it counted.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_billing_module.h"
#include "ngx_http_billing_gate.h"
#include "ngx_http_billing_gate_int.h"
#include "ngx_billing_state.h"


typedef enum {
    NGX_HTTP_BILLING_VAR_SUBSCRIPTION = 0,
    NGX_HTTP_BILLING_VAR_STATE,
    NGX_HTTP_BILLING_VAR_DECISION,
    NGX_HTTP_BILLING_VAR_UNITS
} ngx_http_billing_var_e;


static ngx_int_t ngx_http_billing_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
static ngx_http_billing_gate_ctx_t *ngx_http_billing_variable_ctx(
    ngx_http_request_t *r);


static ngx_http_variable_t  ngx_http_billing_vars[] = {

    { ngx_string("billing_subscription"), NULL, ngx_http_billing_variable,
      NGX_HTTP_BILLING_VAR_SUBSCRIPTION, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("billing_state"), NULL, ngx_http_billing_variable,
      NGX_HTTP_BILLING_VAR_STATE, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("billing_decision"), NULL, ngx_http_billing_variable,
      NGX_HTTP_BILLING_VAR_DECISION, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("billing_units"), NULL, ngx_http_billing_variable,
      NGX_HTTP_BILLING_VAR_UNITS, NGX_HTTP_VAR_NOCACHEABLE, 0 },

      ngx_http_null_variable
};


ngx_int_t
ngx_http_billing_variables_add(ngx_conf_t *cf)
{
    ngx_http_variable_t  *var, *v;

    for (v = ngx_http_billing_vars; v->name.len; v++) {
        var = ngx_http_add_variable(cf, &v->name, v->flags);
        if (var == NULL) {
            return NGX_ERROR;
        }

        var->get_handler = v->get_handler;
        var->data = v->data;
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_billing_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    u_char                       *p;
    const char                   *s;
    ngx_http_billing_gate_ctx_t  *ctx;

    ctx = ngx_http_billing_variable_ctx(r);

    if (ctx == NULL || (!ctx->allowed && !ctx->deny)) {
        v->not_found = 1;
        return NGX_OK;
    }

    s = NULL;

    switch (data) {

    case NGX_HTTP_BILLING_VAR_SUBSCRIPTION:
        if (ctx->id.len == 0) {
            v->not_found = 1;
            return NGX_OK;
        }

        v->data = ctx->id.data;
        v->len = ctx->id.len;
        goto found;

    case NGX_HTTP_BILLING_VAR_STATE:

        /* nothing was known: no id, or Redis could not answer */

        if (ctx->status == NGX_HTTP_BILLING_GATE_NO_ID
            || (ctx->status == NGX_HTTP_BILLING_GATE_UNAVAILABLE
                && !ctx->has_stale))
        {
            v->not_found = 1;
            return NGX_OK;
        }

        s = (ctx->entry.state == NGX_BILLING_SUB_NONE)
            ? "unknown" : ngx_billing_sub_state_name(ctx->entry.state);
        break;

    case NGX_HTTP_BILLING_VAR_DECISION:
        s = ctx->allowed ? "allow" : ctx->code;
        break;

    default: /* NGX_HTTP_BILLING_VAR_UNITS */
        p = ngx_pnalloc(r->pool, NGX_INT64_LEN);
        if (p == NULL) {
            return NGX_ERROR;
        }

        v->data = p;
        v->len = ngx_sprintf(p, "%L", ctx->units) - p;
        goto found;
    }

    if (s == NULL) {
        v->not_found = 1;
        return NGX_OK;
    }

    v->data = (u_char *) s;
    v->len = ngx_strlen(s);

found:

    v->valid = 1;
    v->no_cacheable = 1;
    v->not_found = 0;

    return NGX_OK;
}


static ngx_http_billing_gate_ctx_t *
ngx_http_billing_variable_ctx(ngx_http_request_t *r)
{
    ngx_http_billing_gate_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r->main, ngx_http_billing_module);

    if (ctx == NULL || ctx->base.kind != NGX_HTTP_BILLING_CTX_GATE) {
        return NULL;
    }

    return ctx;
}
