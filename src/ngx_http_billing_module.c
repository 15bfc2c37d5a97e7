
/*
 * ngx_http_billing_module: directives, configuration, process life.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_billing_module.h"
#include "ngx_http_billing_secret.h"
#include "ngx_http_billing_redis.h"
#include "ngx_http_billing_store.h"
#include "ngx_http_billing_cache.h"
#include "ngx_http_billing_webhook.h"
#include "ngx_http_billing_api.h"
#include "ngx_http_billing_gate.h"
#include "ngx_http_billing_meter.h"
#include "ngx_http_billing_scheduler.h"
#include "ngx_http_billing_stripe.h"
#include "ngx_http_billing_status.h"
#include "ngx_http_billing_reconcile.h"
#include "ngx_http_billing_market.h"


static void *ngx_http_billing_create_main_conf(ngx_conf_t *cf);
static char *ngx_http_billing_init_main_conf(ngx_conf_t *cf, void *conf);
static void *ngx_http_billing_create_loc_conf(ngx_conf_t *cf);
static char *ngx_http_billing_merge_loc_conf(ngx_conf_t *cf, void *parent,
    void *child);
static ngx_int_t ngx_http_billing_postconfiguration(ngx_conf_t *cf);
static ngx_int_t ngx_http_billing_init_process(ngx_cycle_t *cycle);
static void ngx_http_billing_exit_process(ngx_cycle_t *cycle);

static char *ngx_http_billing_api_version(ngx_conf_t *cf, void *post,
    void *data);
static char *ngx_http_billing_location(ngx_conf_t *cf, void *post,
    void *data);
static char *ngx_http_billing_portal_url(ngx_conf_t *cf, void *post,
    void *data);


static ngx_conf_post_handler_pt  ngx_http_billing_api_version_p =
    ngx_http_billing_api_version;
static ngx_conf_post_handler_pt  ngx_http_billing_location_p =
    ngx_http_billing_location;
static ngx_conf_post_handler_pt  ngx_http_billing_portal_url_p =
    ngx_http_billing_portal_url;


static ngx_conf_enum_t  ngx_http_billing_unavailable[] = {
    { ngx_string("deny"), 0 },
    { ngx_string("allow"), 1 },
    { ngx_null_string, 0 }
};


static ngx_command_t  ngx_http_billing_commands[] = {

    { ngx_string("billing_redis"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_1MORE,
      ngx_http_billing_redis_conf,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("billing_stripe_webhook_secret_file"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_CONF_TAKE1,
      ngx_http_billing_webhook_secret_file,
      NGX_HTTP_SRV_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("billing_webhook_tolerance"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_sec_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_billing_main_conf_t, webhook_tolerance),
      NULL },

    { ngx_string("billing_stripe_key_file"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_CONF_TAKE1,
      ngx_http_billing_stripe_key_file,
      NGX_HTTP_SRV_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("billing_stripe_api_version"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_SRV_CONF_OFFSET,
      offsetof(ngx_http_billing_srv_conf_t, stripe_api_version),
      &ngx_http_billing_api_version_p },

    { ngx_string("billing_stripe_location"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_SRV_CONF_OFFSET,
      offsetof(ngx_http_billing_srv_conf_t, stripe_location),
      &ngx_http_billing_location_p },

    { ngx_string("billing_stripe_timeout"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_billing_main_conf_t, stripe_timeout),
      NULL },

    { ngx_string("billing_portal_url"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_SRV_CONF_OFFSET,
      offsetof(ngx_http_billing_srv_conf_t, portal_url),
      &ngx_http_billing_portal_url_p },

    { ngx_string("billing_api_token_file"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_CONF_TAKE1,
      ngx_http_billing_api_token_file,
      NGX_HTTP_SRV_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("billing_marketplace"),
      NGX_HTTP_SRV_CONF|NGX_CONF_TAKE1,
      ngx_http_billing_marketplace,
      NGX_HTTP_SRV_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("billing_api"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_http_billing_api,
      NGX_HTTP_SRV_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("billing_cache"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_1MORE,
      ngx_http_billing_cache_conf,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("billing_gate"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_billing_gate_conf,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("billing_webhook"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_http_billing_webhook,
      NGX_HTTP_SRV_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("billing_status"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_http_billing_status_conf,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("billing_unavailable"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_enum_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_billing_loc_conf_t, unavailable),
      &ngx_http_billing_unavailable },

    { ngx_string("billing_meter"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_billing_meter_conf,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("billing_meter_flush"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_billing_main_conf_t, meter_flush),
      NULL },

    { ngx_string("billing_meter_zone"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_size_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_billing_main_conf_t, meter_zone_size),
      NULL },

    { ngx_string("billing_reconcile"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_http_billing_reconcile_conf,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_billing_main_conf_t, reconcile),
      NULL },

    { ngx_string("billing_overdue"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_CONF_TAKE1,
      ngx_http_billing_reconcile_conf,
      NGX_HTTP_SRV_CONF_OFFSET,
      offsetof(ngx_http_billing_srv_conf_t, overdue),
      NULL },

    { ngx_string("billing_invoice_delay"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_sec_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_billing_main_conf_t, invoice_delay),
      NULL },

    { ngx_string("billing_scheduler"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_billing_main_conf_t, scheduler),
      NULL },

      ngx_null_command
};


static ngx_http_module_t  ngx_http_billing_module_ctx = {
    ngx_http_billing_variables_add,        /* preconfiguration */
    ngx_http_billing_postconfiguration,    /* postconfiguration */

    ngx_http_billing_create_main_conf,     /* create main configuration */
    ngx_http_billing_init_main_conf,       /* init main configuration */

    ngx_http_billing_create_srv_conf,      /* create server configuration */
    ngx_http_billing_merge_srv_conf,       /* merge server configuration */

    ngx_http_billing_create_loc_conf,      /* create location configuration */
    ngx_http_billing_merge_loc_conf        /* merge location configuration */
};


ngx_module_t  ngx_http_billing_module = {
    NGX_MODULE_V1,
    &ngx_http_billing_module_ctx,          /* module context */
    ngx_http_billing_commands,             /* module directives */
    NGX_HTTP_MODULE,                       /* module type */
    NULL,                                  /* init master */
    NULL,                                  /* init module */
    ngx_http_billing_init_process,         /* init process */
    NULL,                                  /* init thread */
    NULL,                                  /* exit thread */
    ngx_http_billing_exit_process,         /* exit process */
    NULL,                                  /* exit master */
    NGX_MODULE_V1_PADDING
};


static void *
ngx_http_billing_create_main_conf(ngx_conf_t *cf)
{
    ngx_http_billing_main_conf_t  *bmcf;

    bmcf = ngx_pcalloc(cf->pool, sizeof(ngx_http_billing_main_conf_t));
    if (bmcf == NULL) {
        return NULL;
    }

    /*
     * set by ngx_pcalloc():
     *
     *     bmcf->redis_conf = NULL;
     *     bmcf->cache = NULL;
     *     bmcf->redis = NULL;
     */

    if (ngx_array_init(&bmcf->markets, cf->pool, 2,
                       sizeof(ngx_http_billing_srv_conf_t *))
        != NGX_OK)
    {
        return NULL;
    }

    bmcf->webhook_tolerance = NGX_CONF_UNSET;
    bmcf->stripe_timeout = NGX_CONF_UNSET_MSEC;
    bmcf->meter_zone_size = NGX_CONF_UNSET_SIZE;
    bmcf->meter_flush = NGX_CONF_UNSET_MSEC;
    bmcf->invoice_delay = NGX_CONF_UNSET;
    bmcf->reconcile = NGX_CONF_UNSET_MSEC;
    bmcf->scheduler = NGX_CONF_UNSET;

    return bmcf;
}


static char *
ngx_http_billing_init_main_conf(ngx_conf_t *cf, void *conf)
{
    ngx_http_billing_main_conf_t  *bmcf = conf;

    ngx_conf_init_value(bmcf->webhook_tolerance, 300);

    ngx_conf_init_msec_value(bmcf->stripe_timeout, 30000);
    ngx_conf_init_size_value(bmcf->meter_zone_size, 16 * 1024 * 1024);
    ngx_conf_init_msec_value(bmcf->meter_flush, 1000);
    ngx_conf_init_value(bmcf->invoice_delay, 60);
    ngx_conf_init_msec_value(bmcf->reconcile, 600000);
    ngx_conf_init_value(bmcf->scheduler, 1);

    if (bmcf->meter_flush == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"billing_meter_flush\" must not be 0");
        return NGX_CONF_ERROR;
    }

    /* the http level's settings: the default marketplace */

    if (ngx_http_billing_market_init(cf, bmcf) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


static void *
ngx_http_billing_create_loc_conf(ngx_conf_t *cf)
{
    ngx_http_billing_loc_conf_t  *blcf;

    blcf = ngx_palloc(cf->pool, sizeof(ngx_http_billing_loc_conf_t));
    if (blcf == NULL) {
        return NULL;
    }

    blcf->gate = NGX_CONF_UNSET_PTR;
    blcf->json_errors = NGX_CONF_UNSET;
    blcf->stripe_ok = 0;
    blcf->unavailable = NGX_CONF_UNSET_UINT;
    blcf->meter = NGX_CONF_UNSET;
    blcf->meter_value = NGX_CONF_UNSET_PTR;

    return blcf;
}


static char *
ngx_http_billing_merge_loc_conf(ngx_conf_t *cf, void *parent, void *child)
{
    ngx_http_billing_loc_conf_t  *prev = parent;
    ngx_http_billing_loc_conf_t  *conf = child;

    ngx_conf_merge_ptr_value(conf->gate, prev->gate, NULL);
    ngx_conf_merge_uint_value(conf->unavailable, prev->unavailable, 0);

    /* on where billing_gate is: the meter counts only what the gate let by */
    ngx_conf_merge_value(conf->meter, prev->meter, NGX_HTTP_BILLING_METER_ON);
    ngx_conf_merge_ptr_value(conf->meter_value, prev->meter_value, NULL);

    /* only where the module itself answers: not inherited */
    ngx_conf_init_value(conf->json_errors, 0);

    /*
     * The module's own handlers (Stripe's webhooks, the API) are never
     * gated nor metered, whatever billing_gate the server or http level
     * has: Stripe would retry a refused webhook and then disable the
     * endpoint.
     */

    if (conf->json_errors) {
        conf->gate = NULL;
        conf->meter = NGX_HTTP_BILLING_METER_OFF;
    }

    return NGX_CONF_OK;
}


static ngx_int_t
ngx_http_billing_postconfiguration(ngx_conf_t *cf)
{
    ngx_http_billing_main_conf_t  *bmcf;

    bmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_billing_module);

    if (ngx_http_billing_store_init() != NGX_OK) {
        return NGX_ERROR;
    }

    /* checked here: http-level directives may follow the locations */

    if (ngx_http_billing_market_check(cf, bmcf) != NGX_OK) {
        return NGX_ERROR;
    }

    if (bmcf->gate_file.len && bmcf->redis_conf == NULL) {
        ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                      "\"billing_gate\" in %V:%ui needs \"billing_redis\" "
                      "at the http level",
                      &bmcf->gate_file, bmcf->gate_line);
        return NGX_ERROR;
    }

    if (ngx_http_billing_status_init(cf) != NGX_OK
        || ngx_http_billing_gate_init(cf) != NGX_OK
        || ngx_http_billing_meter_init(cf) != NGX_OK
        || ngx_http_billing_scheduler_init(cf) != NGX_OK
        || ngx_http_billing_stripe_init(cf) != NGX_OK)
    {
        return NGX_ERROR;
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_billing_init_process(ngx_cycle_t *cycle)
{
    ngx_http_billing_main_conf_t  *bmcf;

    /* cache managers and loaders have no use for Redis */

    if (ngx_process != NGX_PROCESS_WORKER
        && ngx_process != NGX_PROCESS_SINGLE)
    {
        return NGX_OK;
    }

    bmcf = ngx_http_cycle_get_module_main_conf(cycle, ngx_http_billing_module);

    if (bmcf == NULL || bmcf->redis_conf == NULL) {
        return NGX_OK;
    }

    if (ngx_http_billing_redis_init_worker(cycle, bmcf) != NGX_OK
        || ngx_http_billing_gate_init_worker(cycle, bmcf) != NGX_OK
        || ngx_http_billing_meter_init_worker(cycle, bmcf) != NGX_OK
        || ngx_http_billing_scheduler_init_worker(cycle, bmcf) != NGX_OK
        || ngx_http_billing_reconcile_init_worker(cycle, bmcf) != NGX_OK)
    {
        return NGX_ERROR;
    }

    return NGX_OK;
}


static void
ngx_http_billing_exit_process(ngx_cycle_t *cycle)
{
    ngx_http_billing_main_conf_t  *bmcf;

    bmcf = ngx_http_cycle_get_module_main_conf(cycle, ngx_http_billing_module);

    if (bmcf == NULL) {
        return;
    }

    ngx_http_billing_reconcile_exit_worker(bmcf);
    ngx_http_billing_scheduler_exit_worker(bmcf);
    ngx_http_billing_meter_exit_worker(bmcf);
    ngx_http_billing_gate_exit_worker(bmcf);
    ngx_http_billing_redis_exit_worker(bmcf);
}


static char *
ngx_http_billing_api_version(ngx_conf_t *cf, void *post, void *data)
{
    ngx_str_t  *version = data;

    u_char  *p;

    if (version->len == 0 || version->len > 64) {
        return "has an invalid value";
    }

    for (p = version->data; p < version->data + version->len; p++) {
        if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9')
              || *p == '-' || *p == '.' || *p == '_'))
        {
            return "has an invalid value";
        }
    }

    return NGX_CONF_OK;
}


static char *
ngx_http_billing_location(ngx_conf_t *cf, void *post, void *data)
{
    ngx_str_t  *uri = data;

    if (uri->len < 2 || uri->data[0] != '/' || uri->data[uri->len - 1] == '/'
        || ngx_strlchr(uri->data, uri->data + uri->len, '?') != NULL)
    {
        return "must be a location URI such as \"/_billing_stripe\", "
               "without a trailing slash";
    }

    return NGX_CONF_OK;
}


static char *
ngx_http_billing_portal_url(ngx_conf_t *cf, void *post, void *data)
{
    ngx_str_t  *url = data;

    u_char  *p;

    if (url->len <= 8 || ngx_strncmp(url->data, "https://", 8) != 0) {
        return "must be an https:// URL";
    }

    for (p = url->data; p < url->data + url->len; p++) {
        if (*p <= ' ' || *p >= 0x7f || *p == '"' || *p == '\\') {
            return "has an invalid character";
        }
    }

    return NGX_CONF_OK;
}


void
ngx_http_billing_owner_request(ngx_http_billing_owner_t *owner,
    ngx_http_request_t *r)
{
    ngx_http_core_srv_conf_t  *cscf;

    cscf = ngx_http_get_module_srv_conf(r, ngx_http_core_module);

    owner->pool = r->pool;
    owner->log = r->connection->log;
    owner->bmcf = ngx_http_get_module_main_conf(r, ngx_http_billing_module);
    owner->market = ngx_http_billing_market(r);
    owner->conf_ctx = cscf->ctx;
}


ngx_uint_t
ngx_http_billing_param(ngx_str_t *value, const char *name, ngx_str_t *rest)
{
    size_t  len;

    len = ngx_strlen(name);

    if (value->len < len || ngx_strncmp(value->data, name, len) != 0) {
        return 0;
    }

    rest->data = value->data + len;
    rest->len = value->len - len;

    return 1;
}


ngx_int_t
ngx_http_billing_request_body(ngx_http_request_t *r, ngx_str_t *body)
{
    u_char       *p;
    off_t         len;
    ssize_t       n;
    ngx_buf_t    *b;
    ngx_chain_t  *cl;

    ngx_str_set(body, "");

    if (r->request_body == NULL || r->request_body->bufs == NULL) {
        return NGX_OK;
    }

    len = 0;

    for (cl = r->request_body->bufs; cl; cl = cl->next) {
        len += ngx_buf_size(cl->buf);
    }

    if (len == 0) {
        return NGX_OK;
    }

    b = r->request_body->bufs->buf;

    if (r->request_body->bufs->next == NULL && ngx_buf_in_memory(b)) {
        body->data = b->pos;
        body->len = b->last - b->pos;
        return NGX_OK;
    }

    /* several buffers, or a temporary file: one contiguous copy */

    p = ngx_pnalloc(r->pool, (size_t) len);
    if (p == NULL) {
        return NGX_ERROR;
    }

    body->data = p;

    for (cl = r->request_body->bufs; cl; cl = cl->next) {
        b = cl->buf;

        if (ngx_buf_in_memory(b)) {
            p = ngx_cpymem(p, b->pos, b->last - b->pos);
            continue;
        }

        if (!b->in_file) {
            /* a special buffer, as the one ending a chunked body */
            continue;
        }

        n = ngx_read_file(b->file, p, (size_t) (b->file_last - b->file_pos),
                          b->file_pos);

        if (n != b->file_last - b->file_pos) {
            ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                          "billing: could not read the request body "
                          "from \"%V\"", &b->file->name);
            return NGX_ERROR;
        }

        p += n;
    }

    body->len = p - body->data;

    return NGX_OK;
}


ngx_table_elt_t *
ngx_http_billing_find_header(ngx_list_t *headers, const char *name,
    ngx_uint_t *n)
{
    size_t            len;
    ngx_uint_t        i;
    ngx_list_part_t  *part;
    ngx_table_elt_t  *h, *found;

    len = ngx_strlen(name);
    found = NULL;
    *n = 0;

    part = &headers->part;
    h = part->elts;

    for (i = 0; /* void */; i++) {

        if (i >= part->nelts) {
            if (part->next == NULL) {
                break;
            }

            part = part->next;
            h = part->elts;
            i = 0;
        }

        if (h[i].hash == 0 || h[i].key.len != len
            || ngx_strncasecmp(h[i].key.data, (u_char *) name, len) != 0)
        {
            continue;
        }

        if (found == NULL) {
            found = &h[i];
        }

        (*n)++;
    }

    return found;
}


char *
ngx_http_billing_content(ngx_conf_t *cf, ngx_http_handler_pt h,
    ngx_str_t *file, ngx_uint_t *line)
{
    ngx_http_core_loc_conf_t     *clcf;
    ngx_http_billing_loc_conf_t  *blcf;

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);

    if (clcf->handler == h) {
        return "is duplicate";
    }

    blcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_billing_module);

    if (blcf->gate != NGX_CONF_UNSET_PTR && blcf->gate != NULL) {
        return "cannot be in a location with \"billing_gate\": the "
               "module's own handlers are not gated";
    }

    clcf->handler = h;
    blcf->json_errors = 1;

    if (file->len == 0) {
        *file = cf->conf_file->file.name;
        *line = cf->conf_file->line;
    }

    return NGX_CONF_OK;
}


/*
 * A string a client sent, as a log line may show it: bytes outside
 * printable ASCII, quotes and backslashes as \xHH, and no more than
 * NGX_HTTP_BILLING_LOG_MAX of them ("..." says it was cut), so that a
 * 7 KB header does not write 7 KB a request.  Always succeeds: without
 * memory, the string is "...".
 */

void
ngx_http_billing_log_safe(ngx_pool_t *pool, ngx_str_t *in, ngx_str_t *out)
{
    u_char      *p, c;
    size_t       n;
    ngx_uint_t   i;

    static u_char  hex[] = "0123456789abcdef";

    n = ngx_min(in->len, NGX_HTTP_BILLING_LOG_MAX);

    p = ngx_pnalloc(pool, 4 * n + sizeof("...") - 1);
    if (p == NULL) {
        ngx_str_set(out, "...");
        return;
    }

    out->data = p;

    for (i = 0; i < n; i++) {
        c = in->data[i];

        if (c < 0x20 || c >= 0x7f || c == '"' || c == '\\') {
            *p++ = '\\';
            *p++ = 'x';
            *p++ = hex[c >> 4];
            *p++ = hex[c & 0xf];
            continue;
        }

        *p++ = c;
    }

    if (n < in->len) {
        p = ngx_cpymem(p, "...", sizeof("...") - 1);
    }

    out->len = p - out->data;
}


int64_t
ngx_http_billing_now_ms(void)
{
    ngx_time_t  *tp;

    tp = ngx_timeofday();

    return (int64_t) tp->sec * 1000 + tp->msec;
}
