
/*
 * billing_gate in the target location of auth_request.
 *
 *     location /api/ { auth_request /_check; proxy_pass ...; }
 *     location = /_check { internal; billing_gate ...; return 204; }
 *
 * The gate runs in the subrequest but decides for the main request.
 * auth_request passes on a 401 or a 403 of its subrequest and makes a
 * 500 of anything else, so the subrequest says 401 or 403 and the
 * decision (status, JSON, the subscription and its period) goes to the
 * main request's context: the filter turns the main request's 401 or
 * 403 into the gate's answer, and the meter counts the main request as
 * the target location's billing_meter says.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_billing_module.h"
#include "ngx_http_billing_json.h"
#include "ngx_http_billing_gate_int.h"


static ngx_http_billing_gate_ctx_t *ngx_http_billing_gate_main_ctx(
    ngx_http_request_t *r);


/*
 * Made by the main request's access phase, waited for, its answer's
 * header only: what auth_request makes.  The module's own subrequests
 * (to Stripe) are none of these.  Only a gate set in the target location
 * itself counts: one inherited from the server must not make every
 * auth_request target (an OAuth check, say) a billing gate.
 */

ngx_uint_t
ngx_http_billing_gate_auth_subrequest(ngx_http_request_t *r)
{
    ngx_http_core_srv_conf_t     *cscf;
    ngx_http_billing_loc_conf_t  *blcf, *slcf, *mlcf;

    if (r == r->main || r->parent != r->main || !r->waited
        || !r->header_only)
    {
        return 0;
    }

    blcf = ngx_http_get_module_loc_conf(r, ngx_http_billing_module);
    cscf = ngx_http_get_module_srv_conf(r, ngx_http_core_module);
    slcf = cscf->ctx->loc_conf[ngx_http_billing_module.ctx_index];

    if (blcf == slcf || blcf->gate == slcf->gate) {
        return 0;
    }

    /* the module's own handlers are never gated, this way neither */

    mlcf = ngx_http_get_module_loc_conf(r->main, ngx_http_billing_module);

    return !mlcf->json_errors;
}


ngx_int_t
ngx_http_billing_gate_auth_allow(ngx_http_request_t *r,
    ngx_http_billing_gate_ctx_t *ctx)
{
    ngx_http_billing_loc_conf_t  *mlcf;
    ngx_http_billing_gate_ctx_t  *mctx;

    mctx = ngx_http_billing_gate_main_ctx(r);

    if (mctx == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    /*
     * A gate of the main request's own location decided, and meters;
     * one it left by "rewrite ... last" does not.
     */

    mlcf = ngx_http_get_module_loc_conf(r->main, ngx_http_billing_module);

    if (!mctx->auth && mlcf->gate) {
        return NGX_OK;
    }

    mctx->auth = 1;
    mctx->market = ctx->market;
    mctx->id = ctx->id;
    mctx->entry = ctx->entry;
    mctx->status = ctx->status;
    mctx->has_stale = ctx->has_stale;
    mctx->allowed = 1;
    mctx->deny = 0;
    mctx->meter_conf = ngx_http_get_module_loc_conf(r,
                                                    ngx_http_billing_module);

    return NGX_OK;
}


ngx_int_t
ngx_http_billing_gate_auth_deny(ngx_http_request_t *r,
    ngx_http_billing_gate_ctx_t *ctx, json_t *json)
{
    ngx_http_core_loc_conf_t     *clcf;
    ngx_http_billing_gate_ctx_t  *mctx;

    mctx = ngx_http_billing_gate_main_ctx(r);

    if (mctx == NULL) {
        return NGX_ERROR;
    }

    mctx->allowed = 0;
    mctx->deny = ctx->deny;
    mctx->code = ctx->code;
    mctx->message = ctx->message;
    mctx->market = ctx->market;
    mctx->id = ctx->id;
    mctx->entry = ctx->entry;
    mctx->status = ctx->status;
    mctx->has_stale = ctx->has_stale;
    mctx->returned = ctx->returned;
    mctx->subrequest = r;

    /*
     * Under "satisfy any" another module may still let the main request
     * in: its last access handler makes the answer when none did.
     */

    clcf = ngx_http_get_module_loc_conf(r->main, ngx_http_core_module);

    if (clcf->satisfy == NGX_HTTP_SATISFY_ANY) {
        return NGX_OK;
    }

    return ngx_http_billing_error_replace(r->main, &mctx->base,
                                          ctx->returned, ctx->deny, json);
}


/*
 * The header of a subrequest: one whose denial was taken for the main
 * request may yet answer otherwise (an error_page of its location that
 * leads to a 204, say), and auth_request then lets the main request in:
 * the gate's answer must not replace the backend's.
 */

void
ngx_http_billing_gate_auth_header(ngx_http_request_t *r)
{
    ngx_http_billing_gate_ctx_t  *mctx;

    mctx = ngx_http_get_module_ctx(r->main, ngx_http_billing_module);

    if (mctx == NULL || mctx->base.kind != NGX_HTTP_BILLING_CTX_GATE
        || mctx->subrequest != r)
    {
        return;
    }

    mctx->subrequest = NULL;

    if (r->headers_out.status == (ngx_uint_t) mctx->returned) {
        return;
    }

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "billing gate: the auth subrequest answered %ui, "
                   "its denial did not stand", r->headers_out.status);

    mctx->deny = 0;
    mctx->base.error_body = NULL;
    mctx->base.error_match = 0;
}


/* the main request's gate context, made when it has none */

static ngx_http_billing_gate_ctx_t *
ngx_http_billing_gate_main_ctx(ngx_http_request_t *r)
{
    ngx_http_billing_gate_ctx_t  *mctx;

    mctx = ngx_http_get_module_ctx(r->main, ngx_http_billing_module);

    if (mctx) {
        return (mctx->base.kind == NGX_HTTP_BILLING_CTX_GATE) ? mctx : NULL;
    }

    mctx = ngx_pcalloc(r->main->pool, sizeof(ngx_http_billing_gate_ctx_t));
    if (mctx == NULL) {
        return NULL;
    }

    mctx->base.kind = NGX_HTTP_BILLING_CTX_GATE;
    mctx->auth = 1;
    mctx->market = ngx_http_billing_market(r);

    ngx_http_set_ctx(r->main, mctx, ngx_http_billing_module);

    return mctx;
}
