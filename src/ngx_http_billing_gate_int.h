
/*
 * Internals of billing_gate shared by the gate (ngx_http_billing_gate.c)
 * and its auth_request half (ngx_http_billing_gate_auth.c).
 */


#ifndef _NGX_HTTP_BILLING_GATE_INT_H_INCLUDED_
#define _NGX_HTTP_BILLING_GATE_INT_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include <jansson.h>

#include "ngx_http_billing_module.h"
#include "ngx_http_billing_cache.h"


typedef enum {
    NGX_HTTP_BILLING_GATE_LOOKUP = 0,
    NGX_HTTP_BILLING_GATE_KNOWN,
    NGX_HTTP_BILLING_GATE_NO_ID,
    NGX_HTTP_BILLING_GATE_UNAVAILABLE
} ngx_http_billing_gate_status_e;


/* billing_gate's value: the location's "gate" points to cv */
typedef struct {
    ngx_http_complex_value_t    cv;

    /* a variable alone: its index, NGX_ERROR otherwise */
    ngx_int_t                   index;

    /* $http_NAME: NAME lowercased, "-" for "_"; read directly or not */
    ngx_str_t                   header;
    ngx_uint_t                  direct;     /* NGX_CONF_UNSET_UINT: unknown */
} ngx_http_billing_gate_value_t;


typedef struct {
    ngx_http_billing_ctx_t      base;

    /* the gate decided on: a "rewrite ... last" may lead to another */
    ngx_http_complex_value_t   *gate;

    /* the subscription: of the server's marketplace, and its id */
    ngx_http_billing_srv_conf_t *market;
    ngx_str_t                   id;
    uint32_t                    hash;       /* ngx_http_billing_key_hash() */
    unsigned                    hashed:1;
    ngx_uint_t                  status;
    ngx_http_billing_entry_t    entry;

    /* what was cached but is too old, for when Redis cannot answer */
    ngx_http_billing_entry_t   *stale;
    unsigned                    has_stale:1;
    unsigned                    waiting:1;

    /* let through as active: the meter counts it */
    unsigned                    allowed:1;

    /* the decision is in billing_status */
    unsigned                    counted:1;

    /* what the meter counted, for $billing_units */
    int64_t                     units;

    /* decided by an auth_request subrequest, whose location meters */
    unsigned                    auth:1;

    /* the subrequest that denied, until its answer shows it stood */
    ngx_http_request_t         *subrequest;
    ngx_http_billing_loc_conf_t *meter_conf;

    /* when Redis was asked: what it says is as old as that */
    ngx_msec_t                  asked;

    /* the denial: its status, what the handler returned for it */
    ngx_uint_t                  deny;
    ngx_int_t                   returned;
    const char                 *code;
    const char                 *message;
} ngx_http_billing_gate_ctx_t;


/*
 * ngx_http_billing_gate_conf.c: when this worker's subscription to the
 * changes came up, 0 while it is down
 */
extern ngx_msec_t  ngx_http_billing_gate_since;

/* a subrequest of auth_request, whose gate gates the main request */
ngx_uint_t ngx_http_billing_gate_auth_subrequest(ngx_http_request_t *r);

/* such a subrequest let through: the main request is, and metered */
ngx_int_t ngx_http_billing_gate_auth_allow(ngx_http_request_t *r,
    ngx_http_billing_gate_ctx_t *ctx);

/* such a subrequest denied: the main request's answer, json its body */
ngx_int_t ngx_http_billing_gate_auth_deny(ngx_http_request_t *r,
    ngx_http_billing_gate_ctx_t *ctx, json_t *json);


#endif /* _NGX_HTTP_BILLING_GATE_INT_H_INCLUDED_ */
