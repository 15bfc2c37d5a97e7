
/*
 * billing_gate's VALUE: compiled when the configuration loads, and read
 * on each gated request, without nginx's script where a variable alone
 * names the subscription (the usual case).
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_billing_module.h"
#include "ngx_http_billing_gate.h"
#include "ngx_http_billing_gate_int.h"
#include "ngx_http_billing_cache.h"


static ngx_uint_t ngx_http_billing_gate_direct(ngx_http_request_t *r,
    ngx_http_billing_gate_value_t *gv);
static ngx_int_t ngx_http_billing_gate_variable(ngx_http_request_t *r,
    ngx_int_t index, ngx_str_t *id);


char *
ngx_http_billing_gate_conf(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_billing_loc_conf_t  *blcf = conf;

    u_char                             ch;
    ngx_str_t                         *value, name;
    ngx_uint_t                         i;
    ngx_http_billing_main_conf_t      *bmcf;
    ngx_http_billing_gate_value_t     *gv;
    ngx_http_compile_complex_value_t   ccv;

    if (blcf->gate != NGX_CONF_UNSET_PTR) {
        return "is duplicate";
    }

    value = cf->args->elts;

    if (ngx_strcmp(value[1].data, "off") == 0) {
        blcf->gate = NULL;
        return NGX_CONF_OK;
    }

    if (blcf->json_errors == 1) {
        return "cannot be in a billing_webhook or billing_api location: "
               "the module's own handlers are not gated";
    }

    bmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_billing_module);

    if (bmcf->gate_file.len == 0) {
        bmcf->gate_file = cf->conf_file->file.name;
        bmcf->gate_line = cf->conf_file->line;
    }

    gv = ngx_pcalloc(cf->pool, sizeof(ngx_http_billing_gate_value_t));
    if (gv == NULL) {
        return NGX_CONF_ERROR;
    }

    blcf->gate = &gv->cv;
    gv->index = NGX_ERROR;
    gv->direct = NGX_CONF_UNSET_UINT;

    ngx_memzero(&ccv, sizeof(ngx_http_compile_complex_value_t));

    ccv.cf = cf;
    ccv.value = &value[1];
    ccv.complex_value = &gv->cv;

    if (ngx_http_compile_complex_value(&ccv) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    /* a variable alone, the usual case, is read without the script */

    name = value[1];

    if (name.len > 1 && name.data[0] == '$') {
        name.data++;
        name.len--;

        if (name.len > 2 && name.data[0] == '{'
            && name.data[name.len - 1] == '}')
        {
            name.data++;
            name.len -= 2;
        }

        for (i = 0; i < name.len; i++) {
            ch = name.data[i];

            if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z')
                  || (ch >= '0' && ch <= '9') || ch == '_'))
            {
                break;
            }
        }

        /* "$1" is a capture, not a variable */

        if (i == name.len && !(name.data[0] >= '0' && name.data[0] <= '9')) {
            gv->index = ngx_http_get_variable_index(cf, &name);

            if (gv->index == NGX_ERROR) {
                return NGX_CONF_ERROR;
            }

            /* $http_NAME: the header's name as the parser lowercases it */

            if (name.len > 5 && ngx_strncmp(name.data, "http_", 5) == 0) {
                gv->header.len = name.len - 5;
                gv->header.data = ngx_pnalloc(cf->pool, gv->header.len);
                if (gv->header.data == NULL) {
                    return NGX_CONF_ERROR;
                }

                for (i = 0; i < gv->header.len; i++) {
                    ch = ngx_tolower(name.data[5 + i]);
                    gv->header.data[i] = (ch == '_') ? '-' : ch;
                }
            }
        }
    }

    return NGX_CONF_OK;
}


/*
 * The subscription id.  A variable alone is read as the script would
 * read it, without the script; $http_NAME, when nginx's own header
 * lookup stands behind it, straight from the request's headers, the
 * header's lowercased name compared whole rather than byte by byte.
 */

ngx_int_t
ngx_http_billing_gate_id(ngx_http_request_t *r, ngx_http_complex_value_t *cv,
    ngx_str_t *id)
{
    ngx_uint_t                      i;
    ngx_list_part_t                *part;
    ngx_table_elt_t                *h, *found;
    ngx_http_billing_gate_value_t  *gv;

    gv = (ngx_http_billing_gate_value_t *) cv;

    if (gv->index == NGX_ERROR) {
        return ngx_http_complex_value(r, cv, id);
    }

    if (gv->direct == NGX_CONF_UNSET_UINT) {
        gv->direct = ngx_http_billing_gate_direct(r, gv);
    }

    /* known already, or "set" (satisfy any runs after the rewrite phase) */

    if (!gv->direct || r->variables[gv->index].valid
        || r->variables[gv->index].not_found)
    {
        return ngx_http_billing_gate_variable(r, gv->index, id);
    }

    found = NULL;

    part = &r->headers_in.headers.part;
    h = part->elts;

    for (i = 0; /* void */ ; i++) {

        if (i >= part->nelts) {
            if (part->next == NULL) {
                break;
            }

            part = part->next;
            h = part->elts;
            i = 0;
        }

        if (h[i].hash == 0 || h[i].key.len != gv->header.len) {
            continue;
        }

        /*
         * "_" for "-" in the name, a header added without its lowercase
         * key, or (nginx 1.23 joins them) a second one: nginx decides.
         */

        if (found || h[i].lowcase_key == NULL
            || ngx_http_billing_key_cmp(h[i].lowcase_key, gv->header.data,
                                        gv->header.len)
               != 0)
        {
            return ngx_http_billing_gate_variable(r, gv->index, id);
        }

        found = &h[i];

#if (nginx_version < 1023000)
        /* before 1.23, the first one */
        break;
#endif
    }

    if (found == NULL) {
        ngx_str_null(id);
        return NGX_OK;
    }

    *id = found->value;

    return NGX_OK;
}


/* whether $http_NAME is nginx's header lookup (not a "set" variable) */

static ngx_uint_t
ngx_http_billing_gate_direct(ngx_http_request_t *r,
    ngx_http_billing_gate_value_t *gv)
{
    ngx_uint_t                  i;
    ngx_http_variable_t        *v, *pv;
    ngx_http_core_main_conf_t  *cmcf;

    if (gv->header.len == 0) {
        return 0;
    }

    cmcf = ngx_http_get_module_main_conf(r, ngx_http_core_module);

    v = cmcf->variables.elts;
    pv = cmcf->prefix_variables.elts;

    for (i = 0; i < cmcf->prefix_variables.nelts; i++) {
        if (pv[i].name.len == 5
            && ngx_strncmp(pv[i].name.data, "http_", 5) == 0)
        {
            return v[gv->index].get_handler == pv[i].get_handler;
        }
    }

    return 0;
}


static ngx_int_t
ngx_http_billing_gate_variable(ngx_http_request_t *r, ngx_int_t index,
    ngx_str_t *id)
{
    ngx_http_variable_value_t  *vv;

    vv = ngx_http_get_flushed_variable(r, index);

    if (vv == NULL) {
        return NGX_ERROR;
    }

    if (vv->not_found) {
        ngx_str_null(id);
        return NGX_OK;
    }

    id->data = vv->data;
    id->len = vv->len;

    return NGX_OK;
}
