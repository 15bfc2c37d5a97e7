
/*
 * A main request with no client, to be the parent of subrequests that
 * no client request can carry.
 */


#ifndef _NGX_HTTP_BILLING_FAKE_H_INCLUDED_
#define _NGX_HTTP_BILLING_FAKE_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>


/*
 * A request of the server conf_ctx, logging to a copy of log, whose
 * connection has no socket.  Its subrequests run once its posted
 * requests are run: ngx_http_billing_fake_run().
 */
ngx_http_request_t *ngx_http_billing_fake_create(ngx_http_conf_ctx_t *conf_ctx,
    ngx_log_t *log);

/* runs its posted requests, from the event loop (never synchronously) */
void ngx_http_billing_fake_run(ngx_http_request_t *r);

/* what it logs no longer names the owner, who may be gone */
void ngx_http_billing_fake_detach_log(ngx_http_request_t *r);

/*
 * Frees the request, its subrequests (whatever they still do: an
 * upstream connection is closed) and its connection, from the event
 * loop, as it may be called from within the request's own handlers.
 */
void ngx_http_billing_fake_close(ngx_http_request_t *r);


#endif /* _NGX_HTTP_BILLING_FAKE_H_INCLUDED_ */
