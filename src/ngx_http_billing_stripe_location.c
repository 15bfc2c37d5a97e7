
/*
 * billing_stripe_location, checked: the Stripe key and the customers'
 * details go nowhere but there.
 *
 * nginx -t looks, in every server that makes Stripe calls (those with
 * billing_api, and the one the timers' calls go through), where a
 * call to billing_stripe_location would land, as nginx's own location
 * search does (exact and prefix locations, nested ones, then regular
 * expressions), and refuses the configuration unless it is an internal
 * location with a content handler.  That location is marked; at run
 * time a rewrite phase handler refuses a call that landed anywhere else
 * (a rewrite, an error_page) before its content handler sends anything.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_billing_module.h"
#include "ngx_http_billing_stripe.h"


static ngx_int_t ngx_http_billing_stripe_check(ngx_conf_t *cf,
    ngx_http_billing_srv_conf_t *m, ngx_http_core_srv_conf_t *cscf,
    ngx_str_t *file, ngx_uint_t line);
static ngx_http_core_loc_conf_t *ngx_http_billing_stripe_find(
    ngx_http_core_loc_conf_t *pclcf, ngx_str_t *uri, ngx_uint_t *stop);
static ngx_int_t ngx_http_billing_stripe_guard(ngx_http_request_t *r);


ngx_int_t
ngx_http_billing_stripe_init(ngx_conf_t *cf)
{
    ngx_uint_t                      i, keys;
    ngx_http_handler_pt            *h;
    ngx_http_billing_server_t      *srv;
    ngx_http_core_srv_conf_t       *cscf;
    ngx_http_core_main_conf_t      *cmcf;
    ngx_http_billing_srv_conf_t   **markets, *m;
    ngx_http_billing_main_conf_t   *bmcf;

    bmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_billing_module);
    cmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_core_module);

    /* each API's server, with its marketplace's key and location */

    if (bmcf->api_servers) {
        srv = bmcf->api_servers->elts;

        for (i = 0; i < bmcf->api_servers->nelts; i++) {
            m = ((ngx_http_billing_srv_conf_t *) srv[i].cscf->ctx->srv_conf[
                     ngx_http_billing_module.ctx_index])->market;

            if (m->stripe_key.len
                && ngx_http_billing_stripe_check(cf, m, srv[i].cscf,
                                                 &srv[i].file, srv[i].line)
                   != NGX_OK)
            {
                return NGX_ERROR;
            }
        }
    }

    markets = bmcf->markets.elts;
    keys = 0;

    for (i = 0; i < bmcf->markets.nelts; i++) {
        m = markets[i];

        if (m->stripe_key.len == 0) {
            continue;
        }

        keys++;

        if (m->timer_api || m->timer_ctx == NULL
            || !(bmcf->scheduler || bmcf->reconcile)
            || bmcf->redis_conf == NULL)
        {
            continue;
        }

        /*
         * No API in this marketplace: the calls of its timers (the
         * scheduler's, reconciliation's) go through its first server.
         */

        cscf = m->timer_ctx->srv_conf[ngx_http_core_module.ctx_index];

        if (ngx_http_billing_stripe_check(cf, m, cscf, NULL, 0) != NGX_OK) {
            return NGX_ERROR;
        }
    }

    if (keys == 0) {
        return NGX_OK;
    }

    h = ngx_array_push(&cmcf->phases[NGX_HTTP_REWRITE_PHASE].handlers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    *h = ngx_http_billing_stripe_guard;

    return NGX_OK;
}


static ngx_int_t
ngx_http_billing_stripe_check(ngx_conf_t *cf,
    ngx_http_billing_srv_conf_t *m, ngx_http_core_srv_conf_t *cscf,
    ngx_str_t *file, ngx_uint_t line)
{
    u_char                       *p;
    ngx_str_t                     uri, where, *name;
    ngx_uint_t                    stop;
    ngx_http_core_loc_conf_t     *clcf, *root;
    ngx_http_billing_loc_conf_t  *blcf;

    static ngx_str_t  unnamed = ngx_string("");

    /* a call as the client makes it: the location, then Stripe's path */

    uri.len = m->stripe_location.len + sizeof("/v1/invoices") - 1;
    uri.data = ngx_pnalloc(cf->pool, uri.len);
    if (uri.data == NULL) {
        return NGX_ERROR;
    }

    p = ngx_cpymem(uri.data, m->stripe_location.data,
                   m->stripe_location.len);
    ngx_memcpy(p, "/v1/invoices", sizeof("/v1/invoices") - 1);

    root = cscf->ctx->loc_conf[ngx_http_core_module.ctx_index];

    stop = 0;
    clcf = ngx_http_billing_stripe_find(root, &uri, &stop);

    if (clcf && clcf->internal && clcf->handler) {
        blcf = clcf->loc_conf[ngx_http_billing_module.ctx_index];
        blcf->stripe_ok = 1;
        return NGX_OK;
    }

    name = cscf->server_names.nelts
           ? &((ngx_http_server_name_t *) cscf->server_names.elts)[0].name
           : &unnamed;

    if (clcf == NULL || clcf == root) {
        ngx_str_set(&where, "to no location");

    } else {
        where.len = sizeof("to location \"\"") - 1 + clcf->name.len;
        where.data = ngx_pnalloc(cf->pool, where.len);
        if (where.data == NULL) {
            return NGX_ERROR;
        }

        ngx_sprintf(where.data, "to location \"%V\"", &clcf->name);
    }

    if (file) {
        ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                      "\"billing_stripe_location\" \"%V\" leads %V, not to "
                      "an internal location with a content handler "
                      "(proxy_pass), in the server \"%V\" of "
                      "\"billing_api\" in %V:%ui: the Stripe key is sent "
                      "nowhere else", &m->stripe_location, &where, name,
                      file, line);

    } else {
        ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                      "\"billing_stripe_location\" \"%V\" leads %V, not to "
                      "an internal location with a content handler "
                      "(proxy_pass), in the server \"%V\", where the "
                      "scheduler's and reconciliation's calls go: the "
                      "Stripe key is sent nowhere else",
                      &m->stripe_location, &where, name);
    }

    return NGX_ERROR;
}


/*
 * The location a request for uri gets in the locations of pclcf; NULL
 * for none.  *stop: an exact match or "^~", where no regular expression
 * is tried.
 */

static ngx_http_core_loc_conf_t *
ngx_http_billing_stripe_find(ngx_http_core_loc_conf_t *pclcf, ngx_str_t *uri,
    ngx_uint_t *stop)
{
    u_char                         *u;
    size_t                          len, n;
    ngx_int_t                       rc;
    ngx_uint_t                      exact;
    ngx_http_core_loc_conf_t       *found, *nested;
    ngx_http_location_tree_node_t  *node;
#if (NGX_PCRE)
    ngx_http_core_loc_conf_t      **clcfp;
#endif

    found = NULL;
    exact = 0;

    u = uri->data;
    len = uri->len;
    node = pclcf->static_locations;

    while (node) {
        n = ngx_min(len, (size_t) node->len);
        rc = ngx_filename_cmp(u, node->name, n);

        if (rc != 0) {
            node = (rc < 0) ? node->left : node->right;
            continue;
        }

        if (len > (size_t) node->len) {
            if (node->inclusive) {
                found = node->inclusive;
                node = node->tree;
                u += n;
                len -= n;
                continue;
            }

            node = node->right;
            continue;
        }

        if (len == (size_t) node->len) {
            found = node->exact ? node->exact : node->inclusive;
            exact = (node->exact != NULL);
            break;
        }

        node = node->left;
    }

    if (exact) {
        *stop = 1;
        return found;
    }

    if (found) {
        if (found->static_locations) {
            nested = ngx_http_billing_stripe_find(found, uri, stop);

            if (nested) {
                found = nested;

                if (*stop) {
                    return found;
                }
            }
        }

        if (found->noregex) {
            *stop = 1;
            return found;
        }
    }

#if (NGX_PCRE)

    if (pclcf->regex_locations) {
        for (clcfp = pclcf->regex_locations; *clcfp; clcfp++) {
            if (ngx_regex_exec((*clcfp)->regex->regex, uri, NULL, 0) >= 0) {
                return *clcfp;
            }
        }
    }

#endif

    return found;
}


static ngx_int_t
ngx_http_billing_stripe_guard(ngx_http_request_t *r)
{
    ngx_http_billing_loc_conf_t  *blcf;

    if (r == r->main || ngx_http_billing_stripe_attempt(r) == NULL) {
        return NGX_DECLINED;
    }

    blcf = ngx_http_get_module_loc_conf(r, ngx_http_billing_module);

    if (blcf->stripe_ok) {
        return NGX_DECLINED;
    }

    ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                  "billing stripe: a call landed in a location that is not "
                  "where \"billing_stripe_location\" leads (\"%V\"), "
                  "nothing was sent", &r->uri);

    ngx_http_billing_stripe_misrouted(r);

    return NGX_HTTP_BAD_GATEWAY;
}
