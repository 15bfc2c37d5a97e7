
/*
 * The gate's set-up: billing_gate's VALUE compiled when the
 * configuration loads (noting the variable alone, the usual case, that
 * the gate reads without nginx's script), and each worker's subscription
 * to the marketplaces' changes, which drop this node's cache entries.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_billing_module.h"
#include "ngx_http_billing_gate.h"
#include "ngx_http_billing_gate_int.h"
#include "ngx_http_billing_cache.h"
#include "ngx_http_billing_redis.h"


static void ngx_http_billing_gate_subscribed(void *data, ngx_uint_t up);
static void ngx_http_billing_gate_message(void *data, ngx_str_t *channel,
    ngx_str_t *message);


/* when this worker's subscription came up; 0 while it is down */
ngx_msec_t  ngx_http_billing_gate_since;


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


ngx_int_t
ngx_http_billing_gate_init_worker(ngx_cycle_t *cycle,
    ngx_http_billing_main_conf_t *bmcf)
{
    ngx_uint_t                     i;
    ngx_str_t                     *events;
    ngx_http_billing_srv_conf_t  **markets;

    if (bmcf->cache == NULL) {
        return NGX_OK;
    }

    /* changes made on any node drop this node's cached entries */

    bmcf->subscriber = ngx_http_billing_redis_create(cycle, bmcf->redis_conf);
    if (bmcf->subscriber == NULL) {
        return NGX_ERROR;
    }

    /* each marketplace's changes on its own channel */

    events = ngx_palloc(cycle->pool, bmcf->markets.nelts * sizeof(ngx_str_t));
    if (events == NULL) {
        return NGX_ERROR;
    }

    markets = bmcf->markets.elts;

    for (i = 0; i < bmcf->markets.nelts; i++) {
        events[i] = markets[i]->events;
    }

    ngx_http_billing_redis_subscribe(bmcf->subscriber, events,
                                     bmcf->markets.nelts,
                                     ngx_http_billing_gate_message,
                                     ngx_http_billing_gate_subscribed,
                                     bmcf);

    return NGX_OK;
}


void
ngx_http_billing_gate_exit_worker(ngx_http_billing_main_conf_t *bmcf)
{
    if (bmcf->subscriber) {
        ngx_http_billing_redis_destroy(bmcf->subscriber);
        bmcf->subscriber = NULL;
    }
}


static void
ngx_http_billing_gate_subscribed(void *data, ngx_uint_t up)
{
    /* never 0 while up, so that 0 can mean down */

    ngx_http_billing_gate_since = up ? ngx_current_msec | 1 : 0;
}


static void
ngx_http_billing_gate_message(void *data, ngx_str_t *channel,
    ngx_str_t *message)
{
    ngx_http_billing_main_conf_t  *bmcf = data;

    u_char                        *p;
    off_t                          version;
    ngx_str_t                      id;
    ngx_uint_t                     i;
    ngx_http_billing_srv_conf_t  **markets;

    /* the channel says whose subscription it is */

    markets = bmcf->markets.elts;

    for (i = 0; i < bmcf->markets.nelts; i++) {
        if (markets[i]->events.len == channel->len
            && ngx_strncmp(markets[i]->events.data, channel->data,
                           channel->len)
               == 0)
        {
            break;
        }
    }

    if (i == bmcf->markets.nelts) {
        return;
    }

    /* "VERSION ID"; a node before 0.5 publishes the bare id */

    p = ngx_strlchr(message->data, message->data + message->len, ' ');

    version = (p == NULL) ? NGX_ERROR
                          : ngx_atoof(message->data, p - message->data);

    if (version > 0) {
        id.data = p + 1;
        id.len = message->data + message->len - id.data;

    } else {
        version = 0;
        id = *message;
    }

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, ngx_cycle->log, 0,
                   "billing gate: \"%V\" changed, version %O",
                   &id, version);

    ngx_http_billing_cache_changed(bmcf->cache, &markets[i]->name, &id,
                                   (uint64_t) version, ngx_cycle->log);
}
