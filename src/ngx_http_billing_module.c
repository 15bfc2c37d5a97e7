
/*
 * ngx_http_billing_module: directives, configuration, process life.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include <jansson.h>

#include "ngx_http_billing_module.h"
#include "ngx_http_billing_redis.h"
#include "ngx_http_billing_store.h"
#include "ngx_http_billing_stripe.h"


#define NGX_HTTP_BILLING_FILE_MAX      65536
#define NGX_HTTP_BILLING_SECRETS_MAX   16
#define NGX_HTTP_BILLING_PREFIX_MAX    64


/* returns NULL, or what is wrong with the line (never the line itself) */
typedef char *(*ngx_http_billing_line_pt)(ngx_conf_t *cf, void *data,
    ngx_str_t *line);


static void *ngx_http_billing_create_main_conf(ngx_conf_t *cf);
static char *ngx_http_billing_init_main_conf(ngx_conf_t *cf, void *conf);
static void *ngx_http_billing_create_loc_conf(ngx_conf_t *cf);
static char *ngx_http_billing_merge_loc_conf(ngx_conf_t *cf, void *parent,
    void *child);
static ngx_int_t ngx_http_billing_postconfiguration(ngx_conf_t *cf);
static ngx_int_t ngx_http_billing_init_process(ngx_cycle_t *cycle);
static void ngx_http_billing_exit_process(ngx_cycle_t *cycle);

static char *ngx_http_billing_redis(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_billing_webhook_secret_file(ngx_conf_t *cf,
    ngx_command_t *cmd, void *conf);
static char *ngx_http_billing_webhook_secret(ngx_conf_t *cf, void *data,
    ngx_str_t *line);
static char *ngx_http_billing_stripe_key_file(ngx_conf_t *cf,
    ngx_command_t *cmd, void *conf);
static char *ngx_http_billing_stripe_key(ngx_conf_t *cf, void *data,
    ngx_str_t *line);
static char *ngx_http_billing_redis_password(ngx_conf_t *cf, void *data,
    ngx_str_t *line);
static char *ngx_http_billing_api_version(ngx_conf_t *cf, void *post,
    void *data);
static char *ngx_http_billing_location(ngx_conf_t *cf, void *post,
    void *data);
static char *ngx_http_billing_portal_url(ngx_conf_t *cf, void *post,
    void *data);
static char *ngx_http_billing_api_token_file(ngx_conf_t *cf,
    ngx_command_t *cmd, void *conf);
static char *ngx_http_billing_api_token(ngx_conf_t *cf, void *data,
    ngx_str_t *line);

static char *ngx_http_billing_read_lines(ngx_conf_t *cf, ngx_command_t *cmd,
    ngx_str_t *name, ngx_http_billing_line_pt handler, void *data);
static void ngx_http_billing_zero(void *data);
static ngx_int_t ngx_http_billing_error_header_filter(ngx_http_request_t *r);
static ngx_int_t ngx_http_billing_error_body_filter(ngx_http_request_t *r,
    ngx_chain_t *in);
static void ngx_http_billing_error_code(ngx_uint_t status, const char **code,
    const char **message);


static ngx_http_output_header_filter_pt  ngx_http_next_header_filter;
static ngx_http_output_body_filter_pt    ngx_http_next_body_filter;


static ngx_conf_post_handler_pt  ngx_http_billing_api_version_p =
    ngx_http_billing_api_version;
static ngx_conf_post_handler_pt  ngx_http_billing_location_p =
    ngx_http_billing_location;
static ngx_conf_post_handler_pt  ngx_http_billing_portal_url_p =
    ngx_http_billing_portal_url;


static ngx_command_t  ngx_http_billing_commands[] = {

    { ngx_string("billing_redis"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_1MORE,
      ngx_http_billing_redis,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("billing_stripe_webhook_secret_file"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_http_billing_webhook_secret_file,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("billing_webhook_tolerance"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_sec_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_billing_main_conf_t, webhook_tolerance),
      NULL },

    { ngx_string("billing_stripe_key_file"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_http_billing_stripe_key_file,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("billing_stripe_api_version"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_billing_main_conf_t, stripe_api_version),
      &ngx_http_billing_api_version_p },

    { ngx_string("billing_stripe_location"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_billing_main_conf_t, stripe_location),
      &ngx_http_billing_location_p },

    { ngx_string("billing_stripe_timeout"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_billing_main_conf_t, stripe_timeout),
      NULL },

    { ngx_string("billing_portal_url"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_billing_main_conf_t, portal_url),
      &ngx_http_billing_portal_url_p },

    { ngx_string("billing_api_token_file"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_http_billing_api_token_file,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("billing_api"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_http_billing_api,
      NGX_HTTP_MAIN_CONF_OFFSET,
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
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

      ngx_null_command
};


static ngx_http_module_t  ngx_http_billing_module_ctx = {
    NULL,                                  /* preconfiguration */
    ngx_http_billing_postconfiguration,    /* postconfiguration */

    ngx_http_billing_create_main_conf,     /* create main configuration */
    ngx_http_billing_init_main_conf,       /* init main configuration */

    NULL,                                  /* create server configuration */
    NULL,                                  /* merge server configuration */

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
     *     bmcf->webhook_secrets = NULL;
     *     bmcf->stripe_key = { 0, NULL };
     *     bmcf->stripe_api_version = { 0, NULL };
     *     bmcf->webhook_file = { 0, NULL };
     *     bmcf->redis = NULL;
     */

    bmcf->webhook_tolerance = NGX_CONF_UNSET;
    bmcf->stripe_timeout = NGX_CONF_UNSET_MSEC;

    return bmcf;
}


static char *
ngx_http_billing_init_main_conf(ngx_conf_t *cf, void *conf)
{
    ngx_http_billing_main_conf_t  *bmcf = conf;

    u_char              *p;
    ngx_pool_cleanup_t  *cln;

    ngx_conf_init_value(bmcf->webhook_tolerance, 300);

    ngx_conf_init_msec_value(bmcf->stripe_timeout, 30000);

    if (bmcf->stripe_api_version.data == NULL) {
        ngx_str_set(&bmcf->stripe_api_version, "2022-11-15");
    }

    if (bmcf->stripe_location.data == NULL) {
        ngx_str_set(&bmcf->stripe_location, "/_billing_stripe");
    }

    /* built once: "Bearer <key>", the key itself never printed */

    if (bmcf->stripe_key.len) {
        p = ngx_pnalloc(cf->pool, sizeof("Bearer ") - 1 + bmcf->stripe_key.len);
        if (p == NULL) {
            return NGX_CONF_ERROR;
        }

        bmcf->stripe_authorization.data = p;
        p = ngx_cpymem(p, "Bearer ", sizeof("Bearer ") - 1);
        p = ngx_cpymem(p, bmcf->stripe_key.data, bmcf->stripe_key.len);
        bmcf->stripe_authorization.len = p - bmcf->stripe_authorization.data;

        cln = ngx_pool_cleanup_add(cf->pool, sizeof(ngx_str_t));
        if (cln == NULL) {
            return NGX_CONF_ERROR;
        }

        cln->handler = ngx_http_billing_zero;
        *(ngx_str_t *) cln->data = bmcf->stripe_authorization;
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

    return blcf;
}


static char *
ngx_http_billing_merge_loc_conf(ngx_conf_t *cf, void *parent, void *child)
{
    ngx_http_billing_loc_conf_t *prev = parent;
    ngx_http_billing_loc_conf_t *conf = child;

    ngx_conf_merge_ptr_value(conf->gate, prev->gate, NULL);

    /* only where the module itself answers: not inherited */
    ngx_conf_init_value(conf->json_errors, 0);

    return NGX_CONF_OK;
}


static ngx_int_t
ngx_http_billing_postconfiguration(ngx_conf_t *cf)
{
    ngx_http_billing_main_conf_t  *bmcf;

    bmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_billing_module);

    ngx_http_billing_store_init();

    /* checked here: http-level directives may follow the locations */

    if (bmcf->webhook_file.len) {

        if (bmcf->redis_conf == NULL) {
            ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                          "\"billing_webhook\" in %V:%ui needs "
                          "\"billing_redis\" at the http level",
                          &bmcf->webhook_file, bmcf->webhook_line);
            return NGX_ERROR;
        }

        if (bmcf->webhook_secrets == NULL) {
            ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                          "\"billing_webhook\" in %V:%ui needs "
                          "\"billing_stripe_webhook_secret_file\" "
                          "at the http level",
                          &bmcf->webhook_file, bmcf->webhook_line);
            return NGX_ERROR;
        }
    }

    if (bmcf->api_file.len) {

        if (bmcf->api_token.len == 0 || bmcf->redis_conf == NULL
            || bmcf->stripe_key.len == 0)
        {
            ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                          "\"billing_api\" in %V:%ui needs \"%s\" "
                          "at the http level",
                          &bmcf->api_file, bmcf->api_line,
                          bmcf->api_token.len == 0
                          ? "billing_api_token_file"
                          : bmcf->redis_conf == NULL
                            ? "billing_redis" : "billing_stripe_key_file");
            return NGX_ERROR;
        }
    }

    if (bmcf->gate_file.len && bmcf->redis_conf == NULL) {
        ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                      "\"billing_gate\" in %V:%ui needs \"billing_redis\" "
                      "at the http level",
                      &bmcf->gate_file, bmcf->gate_line);
        return NGX_ERROR;
    }

    if (ngx_http_billing_stripe_init(cf) != NGX_OK
        || ngx_http_billing_gate_init(cf) != NGX_OK)
    {
        return NGX_ERROR;
    }

    ngx_http_next_header_filter = ngx_http_top_header_filter;
    ngx_http_top_header_filter = ngx_http_billing_error_header_filter;

    ngx_http_next_body_filter = ngx_http_top_body_filter;
    ngx_http_top_body_filter = ngx_http_billing_error_body_filter;

    return NGX_OK;
}


static ngx_int_t
ngx_http_billing_init_process(ngx_cycle_t *cycle)
{
    u_char                        *channel;
    ngx_str_t                      events;
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

    bmcf->redis = ngx_http_billing_redis_create(cycle, bmcf->redis_conf);
    if (bmcf->redis == NULL) {
        return NGX_ERROR;
    }

    if (bmcf->cache == NULL) {
        return NGX_OK;
    }

    /* changes made on any node drop this node's cached entries */

    bmcf->subscriber = ngx_http_billing_redis_create(cycle, bmcf->redis_conf);
    if (bmcf->subscriber == NULL) {
        return NGX_ERROR;
    }

    channel = ngx_pnalloc(cycle->pool, bmcf->redis_conf->prefix.len
                                       + sizeof("events") - 1);
    if (channel == NULL) {
        return NGX_ERROR;
    }

    events.data = channel;
    events.len = ngx_cpymem(ngx_cpymem(channel, bmcf->redis_conf->prefix.data,
                                       bmcf->redis_conf->prefix.len),
                            "events", sizeof("events") - 1)
                 - channel;

    ngx_http_billing_redis_subscribe(bmcf->subscriber, &events,
                                     ngx_http_billing_gate_message,
                                     ngx_http_billing_gate_subscribed,
                                     bmcf->cache);

    return NGX_OK;
}


static void
ngx_http_billing_exit_process(ngx_cycle_t *cycle)
{
    ngx_http_billing_main_conf_t  *bmcf;

    bmcf = ngx_http_cycle_get_module_main_conf(cycle, ngx_http_billing_module);

    if (bmcf && bmcf->redis) {
        ngx_http_billing_redis_destroy(bmcf->redis);
        bmcf->redis = NULL;
    }

    if (bmcf && bmcf->subscriber) {
        ngx_http_billing_redis_destroy(bmcf->subscriber);
        bmcf->subscriber = NULL;
    }
}


static char *
ngx_http_billing_redis(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_billing_main_conf_t  *bmcf = conf;

    u_char                         *p;
    char                           *rv;
    ngx_int_t                       n;
    ngx_str_t                      *value, s;
    ngx_msec_t                     *timeout;
    ngx_uint_t                      i;
    ngx_http_billing_redis_conf_t  *rcf;

    if (bmcf->redis_conf) {
        return "is duplicate";
    }

    rcf = ngx_pcalloc(cf->pool, sizeof(ngx_http_billing_redis_conf_t));
    if (rcf == NULL) {
        return NGX_CONF_ERROR;
    }

    value = cf->args->elts;

    rcf->url.url = value[1];
    rcf->url.default_port = 6379;

    if (ngx_parse_url(cf->pool, &rcf->url) != NGX_OK) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid Redis address \"%V\" in \"%V\" "
                           "directive%s%s", &value[1], &cmd->name,
                           rcf->url.err ? ": " : "",
                           rcf->url.err ? rcf->url.err : "");
        return NGX_CONF_ERROR;
    }

    if (rcf->url.naddrs == 0 || rcf->url.uri.len) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid Redis address \"%V\" in \"%V\" "
                           "directive", &value[1], &cmd->name);
        return NGX_CONF_ERROR;
    }

    ngx_str_set(&rcf->prefix, "billing:");
    rcf->connect_timeout = 1000;
    rcf->timeout = 1000;

    for (i = 2; i < cf->args->nelts; i++) {

        if (ngx_http_billing_param(&value[i], "db=", &s)) {
            n = ngx_atoi(s.data, s.len);
            if (n == NGX_ERROR || n > 65535) {
                goto invalid;
            }

            rcf->db = n;
            continue;
        }

        if (ngx_http_billing_param(&value[i], "password_file=", &s)) {
            rv = ngx_http_billing_read_lines(cf, cmd, &s,
                                        ngx_http_billing_redis_password,
                                        &rcf->password);
            if (rv != NGX_CONF_OK) {
                return rv;
            }

            continue;
        }

        if (ngx_http_billing_param(&value[i], "prefix=", &s)) {

            if (s.len == 0 || s.len > NGX_HTTP_BILLING_PREFIX_MAX) {
                goto invalid;
            }

            for (p = s.data; p < s.data + s.len; p++) {
                if (*p <= ' ' || *p >= 0x7f) {
                    goto invalid;
                }
            }

            rcf->prefix = s;
            continue;
        }

        if (ngx_http_billing_param(&value[i], "connect_timeout=", &s)) {
            timeout = &rcf->connect_timeout;

        } else if (ngx_http_billing_param(&value[i], "timeout=", &s)) {
            timeout = &rcf->timeout;

        } else {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "unknown parameter \"%V\" in \"%V\" "
                               "directive", &value[i], &cmd->name);
            return NGX_CONF_ERROR;
        }

        n = ngx_parse_time(&s, 0);
        if (n == NGX_ERROR || n == 0) {
            goto invalid;
        }

        *timeout = n;
    }

    bmcf->redis_conf = rcf;

    return NGX_CONF_OK;

invalid:

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "invalid parameter \"%V\" in \"%V\" directive",
                       &value[i], &cmd->name);
    return NGX_CONF_ERROR;
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


static char *
ngx_http_billing_redis_password(ngx_conf_t *cf, void *data, ngx_str_t *line)
{
    ngx_str_t  *password = data;

    if (password->len) {
        return "only one password is allowed";
    }

    *password = *line;

    return NULL;
}


static char *
ngx_http_billing_webhook_secret_file(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ngx_http_billing_main_conf_t  *bmcf = conf;

    ngx_str_t  *value;

    if (bmcf->webhook_secrets) {
        return "is duplicate";
    }

    bmcf->webhook_secrets = ngx_array_create(cf->pool, 2,
                                             sizeof(ngx_billing_secret_t));
    if (bmcf->webhook_secrets == NULL) {
        return NGX_CONF_ERROR;
    }

    value = cf->args->elts;

    return ngx_http_billing_read_lines(cf, cmd, &value[1],
                                       ngx_http_billing_webhook_secret,
                                       bmcf->webhook_secrets);
}


static char *
ngx_http_billing_webhook_secret(ngx_conf_t *cf, void *data, ngx_str_t *line)
{
    ngx_array_t  *secrets = data;

    u_char                *p;
    ngx_billing_secret_t  *secret;

    if (line->len <= 6 || ngx_strncmp(line->data, "whsec_", 6) != 0) {
        return "not a webhook signing secret (\"whsec_...\")";
    }

    for (p = line->data; p < line->data + line->len; p++) {
        if (*p <= ' ' || *p >= 0x7f) {
            return "a webhook signing secret has no spaces or control "
                   "characters";
        }
    }

    if (secrets->nelts == NGX_HTTP_BILLING_SECRETS_MAX) {
        return "too many webhook secrets";
    }

    secret = ngx_array_push(secrets);
    if (secret == NULL) {
        return "out of memory";
    }

    secret->data = line->data;
    secret->len = line->len;

    return NULL;
}


static char *
ngx_http_billing_stripe_key_file(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ngx_http_billing_main_conf_t  *bmcf = conf;

    ngx_str_t  *value;

    if (bmcf->stripe_key.data) {
        return "is duplicate";
    }

    value = cf->args->elts;

    return ngx_http_billing_read_lines(cf, cmd, &value[1],
                                       ngx_http_billing_stripe_key,
                                       &bmcf->stripe_key);
}


static char *
ngx_http_billing_stripe_key(ngx_conf_t *cf, void *data, ngx_str_t *line)
{
    ngx_str_t  *key = data;

    u_char  *p;

    if (key->len) {
        return "only one Stripe key is allowed";
    }

    if (line->len <= 3
        || (ngx_strncmp(line->data, "sk_", 3) != 0
            && ngx_strncmp(line->data, "rk_", 3) != 0))
    {
        return "not a Stripe secret or restricted key (\"sk_...\" or "
               "\"rk_...\")";
    }

    for (p = line->data; p < line->data + line->len; p++) {
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z')
              || (*p >= '0' && *p <= '9') || *p == '_'))
        {
            return "a Stripe key has only letters, digits and \"_\"";
        }
    }

    *key = *line;

    return NULL;
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


static char *
ngx_http_billing_api_token_file(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ngx_http_billing_main_conf_t  *bmcf = conf;

    ngx_str_t  *value;

    if (bmcf->api_token.data) {
        return "is duplicate";
    }

    value = cf->args->elts;

    return ngx_http_billing_read_lines(cf, cmd, &value[1],
                                       ngx_http_billing_api_token,
                                       &bmcf->api_token);
}


static char *
ngx_http_billing_api_token(ngx_conf_t *cf, void *data, ngx_str_t *line)
{
    ngx_str_t  *token = data;

    u_char  *p;

    if (token->len) {
        return "only one API token is allowed";
    }

    /* a bearer token is what RFC 6750 allows, and long enough to guess */

    if (line->len < 16) {
        return "an API token needs at least 16 characters";
    }

    for (p = line->data; p < line->data + line->len; p++) {
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z')
              || (*p >= '0' && *p <= '9') || *p == '-' || *p == '.'
              || *p == '_' || *p == '~' || *p == '+' || *p == '/'
              || *p == '='))
        {
            return "an API token has only letters, digits and "
                   "\"-._~+/=\"";
        }
    }

    *token = *line;

    return NULL;
}


/*
 * Reads a small file of secrets, calling handler for each line that is
 * neither blank nor a "#" comment, trimmed; at least one such line is
 * required.  The copy stays in memory for the life of the configuration
 * and is wiped when it goes; nothing of the content ever reaches a log.
 */

static char *
ngx_http_billing_read_lines(ngx_conf_t *cf, ngx_command_t *cmd,
    ngx_str_t *name, ngx_http_billing_line_pt handler, void *data)
{
    char                *err;
    u_char              *buf, *p, *last, *end;
    size_t               size;
    ssize_t              n;
    ngx_fd_t             fd;
    ngx_str_t            line, path;
    ngx_uint_t           lineno, lines;
    ngx_file_t           file;
    ngx_file_info_t      fi;
    ngx_pool_cleanup_t  *cln;

    path = *name;

    if (path.len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "empty file name in \"%V\" directive",
                           &cmd->name);
        return NGX_CONF_ERROR;
    }

    if (ngx_conf_full_name(cf->cycle, &path, 1) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    fd = ngx_open_file(path.data, NGX_FILE_RDONLY, NGX_FILE_OPEN, 0);
    if (fd == NGX_INVALID_FILE) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, ngx_errno,
                           "\"%V\" directive: " ngx_open_file_n
                           " \"%V\" failed", &cmd->name, &path);
        return NGX_CONF_ERROR;
    }

    ngx_memzero(&file, sizeof(ngx_file_t));
    file.fd = fd;
    file.name = path;
    file.log = cf->log;

    err = NULL;

    if (ngx_fd_info(fd, &fi) == NGX_FILE_ERROR) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, ngx_errno,
                           "\"%V\" directive: " ngx_fd_info_n
                           " \"%V\" failed", &cmd->name, &path);
        goto failed;
    }

    size = (size_t) ngx_file_size(&fi);

    if (size == 0 || size > NGX_HTTP_BILLING_FILE_MAX) {
        err = size ? "is too large" : "is empty";
        goto failed;
    }

    buf = ngx_pnalloc(cf->pool, size);
    if (buf == NULL) {
        goto failed;
    }

    cln = ngx_pool_cleanup_add(cf->pool, sizeof(ngx_str_t));
    if (cln == NULL) {
        goto failed;
    }

    cln->handler = ngx_http_billing_zero;
    ((ngx_str_t *) cln->data)->data = buf;
    ((ngx_str_t *) cln->data)->len = size;

    n = ngx_read_file(&file, buf, size, 0);

    if (n == NGX_ERROR) {
        goto failed;
    }

    if ((size_t) n != size) {
        err = "could not be read whole";
        goto failed;
    }

    if (ngx_close_file(fd) == NGX_FILE_ERROR) {
        ngx_log_error(NGX_LOG_ALERT, cf->log, ngx_errno,
                      ngx_close_file_n " \"%V\" failed", &path);
    }

    end = buf + size;
    lineno = 0;
    lines = 0;

    for (p = buf; p < end; p = last + 1) {
        lineno++;

        last = ngx_strlchr(p, end, '\n');
        if (last == NULL) {
            last = end;
        }

        line.data = p;
        line.len = last - p;

        while (line.len && (line.data[0] == ' ' || line.data[0] == '\t')) {
            line.data++;
            line.len--;
        }

        while (line.len && (line.data[line.len - 1] == ' '
                            || line.data[line.len - 1] == '\t'
                            || line.data[line.len - 1] == '\r'))
        {
            line.len--;
        }

        if (line.len == 0 || line.data[0] == '#') {
            continue;
        }

        err = handler(cf, data, &line);

        if (err) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "\"%V\" directive: line %ui of \"%V\": %s",
                               &cmd->name, lineno, &path, err);
            return NGX_CONF_ERROR;
        }

        lines++;
    }

    if (lines == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"%V\" directive: \"%V\" holds nothing but "
                           "blank lines and comments", &cmd->name, &path);
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;

failed:

    if (err) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"%V\" directive: \"%V\" %s",
                           &cmd->name, &path, err);
    }

    if (ngx_close_file(fd) == NGX_FILE_ERROR) {
        ngx_log_error(NGX_LOG_ALERT, cf->log, ngx_errno,
                      ngx_close_file_n " \"%V\" failed", &path);
    }

    return NGX_CONF_ERROR;
}


static void
ngx_http_billing_zero(void *data)
{
    ngx_str_t  *s = data;

    ngx_explicit_memzero(s->data, s->len);
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


ngx_int_t
ngx_http_billing_send_json(ngx_http_request_t *r, ngx_uint_t status,
    void *json)
{
    size_t        len;
    ngx_int_t     rc;
    ngx_buf_t    *b;
    ngx_chain_t   out;

    len = json_dumpb(json, NULL, 0, JSON_COMPACT);
    if (len == 0) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    b = ngx_create_temp_buf(r->pool, len + 1);
    if (b == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (json_dumpb(json, (char *) b->last, len, JSON_COMPACT) != len) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    b->last += len;
    *b->last++ = '\n';

    r->headers_out.status = status;
    r->headers_out.content_length_n = len + 1;

    ngx_str_set(&r->headers_out.content_type, "application/json");
    r->headers_out.content_type_len = r->headers_out.content_type.len;
    r->headers_out.content_type_lowcase = NULL;

    /* answers about money and access are never to be cached on the way */

    if (ngx_http_billing_add_header(r, "Cache-Control", "no-store")
        != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    b->last_buf = (r == r->main) ? 1 : 0;
    b->last_in_chain = 1;

    out.buf = b;
    out.next = NULL;

    return ngx_http_output_filter(r, &out);
}


ngx_int_t
ngx_http_billing_send_error(ngx_http_request_t *r, ngx_uint_t status,
    const char *code, const char *message)
{
    json_t     *json;
    ngx_int_t   rc;

    json = json_pack("{s:{s:s,s:s}}", "error", "code", code,
                     "message", message);
    if (json == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    rc = ngx_http_billing_send_json(r, status, json);

    json_decref(json);

    return rc;
}


ngx_int_t
ngx_http_billing_add_header(ngx_http_request_t *r, const char *name,
    const char *value)
{
    ngx_table_elt_t  *h;

    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    h->hash = 1;
#if (nginx_version >= 1023000)
    h->next = NULL;
#endif
    h->key.data = (u_char *) name;
    h->key.len = ngx_strlen(name);
    h->value.data = (u_char *) value;
    h->value.len = ngx_strlen(value);

    return NGX_OK;
}


ngx_int_t
ngx_http_billing_error_replace(ngx_http_request_t *r,
    ngx_http_billing_ctx_t *ctx, ngx_int_t match, ngx_uint_t status,
    void *json)
{
    size_t      len;
    ngx_buf_t  *b;

    len = json_dumpb(json, NULL, 0, JSON_COMPACT);

    b = ngx_create_temp_buf(r->pool, len + 1);
    if (b == NULL) {
        return NGX_ERROR;
    }

    if (json_dumpb(json, (char *) b->last, len, JSON_COMPACT) != len) {
        return NGX_ERROR;
    }

    b->last += len;
    *b->last++ = '\n';

    ctx->error_match = match;
    ctx->error_status = status;
    ctx->error_body = b;

    return NGX_OK;
}


static ngx_int_t
ngx_http_billing_error_header_filter(ngx_http_request_t *r)
{
    json_t                       *json;
    ngx_int_t                     rc;
    const char                   *code, *message;
    ngx_http_billing_ctx_t       *ctx;
    ngx_http_billing_loc_conf_t  *blcf;

    if (r != r->main || r->headers_out.status < NGX_HTTP_BAD_REQUEST) {
        return ngx_http_next_header_filter(r);
    }

    ctx = ngx_http_get_module_ctx(r, ngx_http_billing_module);

    if (ctx == NULL || ctx->error_body == NULL) {

        /*
         * Where the module answers, nginx's own errors (a body over
         * client_max_body_size, a malformed request) are made JSON too;
         * the module's own answers are JSON already.
         */

        blcf = ngx_http_get_module_loc_conf(r, ngx_http_billing_module);

        if (!blcf->json_errors
            || (r->headers_out.content_type.len == sizeof("application/json")
                                                   - 1
                && ngx_strncmp(r->headers_out.content_type.data,
                               "application/json",
                               sizeof("application/json") - 1)
                   == 0))
        {
            return ngx_http_next_header_filter(r);
        }

        if (ctx == NULL) {
            ctx = ngx_pcalloc(r->pool, sizeof(ngx_http_billing_ctx_t));
            if (ctx == NULL) {
                return NGX_ERROR;
            }

            ctx->kind = NGX_HTTP_BILLING_CTX_ERROR;
            ngx_http_set_ctx(r, ctx, ngx_http_billing_module);
        }

        ngx_http_billing_error_code(r->headers_out.status, &code, &message);

        json = json_pack("{s:{s:s,s:s}}", "error", "code", code,
                         "message", message);
        if (json == NULL) {
            return NGX_ERROR;
        }

        rc = ngx_http_billing_error_replace(r, ctx, r->headers_out.status,
                                            r->headers_out.status, json);
        json_decref(json);

        if (rc != NGX_OK) {
            return NGX_ERROR;
        }
    }

    if (r->headers_out.status != (ngx_uint_t) ctx->error_match
        || ctx->error_body->last_in_chain)
    {
        return ngx_http_next_header_filter(r);
    }

    r->headers_out.status = ctx->error_status;
    r->headers_out.status_line.len = 0;

    ngx_str_set(&r->headers_out.content_type, "application/json");
    r->headers_out.content_type_len = r->headers_out.content_type.len;
    r->headers_out.content_type_lowcase = NULL;
    r->headers_out.charset.len = 0;

    r->headers_out.content_length_n = ctx->error_body->last
                                      - ctx->error_body->pos;

    if (r->headers_out.content_length) {
        r->headers_out.content_length->hash = 0;
        r->headers_out.content_length = NULL;
    }

    ngx_http_clear_accept_ranges(r);
    ngx_http_clear_last_modified(r);
    ngx_http_clear_etag(r);

    /* marks the swap: the body filter sends ours */
    ctx->error_body->last_in_chain = 1;

    if (ngx_http_billing_add_header(r, "Cache-Control", "no-store")
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    return ngx_http_next_header_filter(r);
}


static ngx_int_t
ngx_http_billing_error_body_filter(ngx_http_request_t *r, ngx_chain_t *in)
{
    ngx_buf_t               *b;
    ngx_chain_t             *cl, out;
    ngx_http_billing_ctx_t  *ctx;

    ctx = (r == r->main) ? ngx_http_get_module_ctx(r, ngx_http_billing_module)
                         : NULL;

    if (ctx == NULL || ctx->error_body == NULL
        || !ctx->error_body->last_in_chain)
    {
        return ngx_http_next_body_filter(r, in);
    }

    /* nginx's page is dropped; ours goes once, with the first call */

    for (cl = in; cl; cl = cl->next) {
        b = cl->buf;

        if (ngx_buf_in_memory(b)) {
            b->pos = b->last;
        }

        if (b->in_file) {
            b->file_pos = b->file_last;
        }
    }

    /*
     * Once ours went, later calls only flush what is still buffered
     * (a full socket, an HTTP/2 window): they must go on, without data.
     */

    if (ctx->error_body->last_buf) {
        return ngx_http_next_body_filter(r, NULL);
    }

    ctx->error_body->last_buf = 1;

    out.buf = ctx->error_body;
    out.next = NULL;

    return ngx_http_next_body_filter(r, &out);
}


static void
ngx_http_billing_error_code(ngx_uint_t status, const char **code,
    const char **message)
{
    switch (status) {

    case NGX_HTTP_UNAUTHORIZED:
    case NGX_HTTP_FORBIDDEN:
        *code = "unauthorized";
        *message = "access denied";
        return;

    case NGX_HTTP_NOT_FOUND:
        *code = "not_found";
        *message = "no such resource";
        return;

    case NGX_HTTP_NOT_ALLOWED:
        *code = "method_not_allowed";
        *message = "method not allowed";
        return;

    case NGX_HTTP_REQUEST_ENTITY_TOO_LARGE:
        *code = "invalid_request";
        *message = "the request body is too large";
        return;

    default:
        if (status >= NGX_HTTP_INTERNAL_SERVER_ERROR) {
            *code = "billing_unavailable";
            *message = "the request could not be served, retry later";

        } else {
            *code = "invalid_request";
            *message = "the request is malformed";
        }
    }
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


ngx_int_t
ngx_http_billing_send_unavailable(ngx_http_request_t *r)
{
    return ngx_http_billing_send_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                                       "billing_unavailable",
                                       "billing storage is not available, "
                                       "retry later");
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

    clcf->handler = h;

    blcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_billing_module);
    blcf->json_errors = 1;

    if (file->len == 0) {
        *file = cf->conf_file->file.name;
        *line = cf->conf_file->line;
    }

    return NGX_CONF_OK;
}
