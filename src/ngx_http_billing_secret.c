
/*
 * The directives that read secrets from files: the Stripe key, the
 * webhook signing secrets, the API token, and the Redis password for
 * billing_redis.  Only the files' paths are in the configuration, so
 * "nginx -T" shows no secret; no message here ever quotes a line.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_billing_module.h"
#include "ngx_http_billing_secret.h"
#include "ngx_billing_signature.h"


#define NGX_HTTP_BILLING_FILE_MAX      65536
#define NGX_HTTP_BILLING_SECRETS_MAX   16


static char *ngx_http_billing_webhook_secret(ngx_conf_t *cf, void *data,
    ngx_str_t *line);
static char *ngx_http_billing_stripe_key(ngx_conf_t *cf, void *data,
    ngx_str_t *line);
static char *ngx_http_billing_api_token(ngx_conf_t *cf, void *data,
    ngx_str_t *line);
static void ngx_http_billing_zero(void *data);
static void ngx_http_billing_unkey(void *data);


ngx_int_t
ngx_http_billing_secret_init(ngx_conf_t *cf,
    ngx_http_billing_srv_conf_t *bscf)
{
    u_char              *p;
    ngx_pool_cleanup_t  *cln;

    /* built once: "Bearer <key>", the key itself never printed */

    if (bscf->stripe_key.len == 0) {
        return NGX_OK;
    }

    p = ngx_pnalloc(cf->pool, sizeof("Bearer ") - 1 + bscf->stripe_key.len);
    if (p == NULL) {
        return NGX_ERROR;
    }

    bscf->stripe_authorization.data = p;
    p = ngx_cpymem(p, "Bearer ", sizeof("Bearer ") - 1);
    p = ngx_cpymem(p, bscf->stripe_key.data, bscf->stripe_key.len);
    bscf->stripe_authorization.len = p - bscf->stripe_authorization.data;

    cln = ngx_pool_cleanup_add(cf->pool, sizeof(ngx_str_t));
    if (cln == NULL) {
        return NGX_ERROR;
    }

    cln->handler = ngx_http_billing_zero;
    *(ngx_str_t *) cln->data = bscf->stripe_authorization;

    return NGX_OK;
}


char *
ngx_http_billing_redis_password(ngx_conf_t *cf, void *data, ngx_str_t *line)
{
    ngx_str_t  *password = data;

    if (password->len) {
        return "only one password is allowed";
    }

    *password = *line;

    return NULL;
}


char *
ngx_http_billing_webhook_secret_file(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ngx_http_billing_srv_conf_t  *bscf = conf;

    ngx_str_t  *value;

    if (bscf->webhook_secrets) {
        return "is duplicate";
    }

    bscf->webhook_secrets = ngx_array_create(cf->pool, 2,
                                             sizeof(ngx_billing_secret_t));
    if (bscf->webhook_secrets == NULL) {
        return NGX_CONF_ERROR;
    }

    value = cf->args->elts;

    return ngx_http_billing_read_lines(cf, cmd, &value[1],
                                       ngx_http_billing_webhook_secret,
                                       bscf->webhook_secrets);
}


static char *
ngx_http_billing_webhook_secret(ngx_conf_t *cf, void *data, ngx_str_t *line)
{
    ngx_array_t  *secrets = data;

    u_char                *p;
    ngx_pool_cleanup_t    *cln;
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

    /*
     * Keyed once, here: a webhook then hashes only "<t>.<body>".  The
     * workers inherit the keyed context; it goes with the configuration.
     */

    cln = ngx_pool_cleanup_add(cf->pool, 0);
    if (cln == NULL) {
        return "out of memory";
    }

    if (ngx_billing_sig_key(secret) != NGX_BILLING_SIG_OK) {
        return "the HMAC of a webhook signing secret could not be keyed";
    }

    /* the context's address: the array may move as it grows */

    cln->handler = ngx_http_billing_unkey;
    cln->data = secret->mac;

    return NULL;
}


char *
ngx_http_billing_stripe_key_file(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ngx_http_billing_srv_conf_t  *bscf = conf;

    ngx_str_t  *value;

    if (bscf->stripe_key.data) {
        return "is duplicate";
    }

    value = cf->args->elts;

    return ngx_http_billing_read_lines(cf, cmd, &value[1],
                                       ngx_http_billing_stripe_key,
                                       &bscf->stripe_key);
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


char *
ngx_http_billing_api_token_file(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ngx_http_billing_srv_conf_t  *bscf = conf;

    ngx_str_t  *value;

    if (bscf->api_token.data) {
        return "is duplicate";
    }

    value = cf->args->elts;

    return ngx_http_billing_read_lines(cf, cmd, &value[1],
                                       ngx_http_billing_api_token,
                                       &bscf->api_token);
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

char *
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


static void
ngx_http_billing_unkey(void *data)
{
    ngx_billing_sig_key_free(data);
}
