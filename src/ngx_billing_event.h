
/*
 * Stripe event parsing: the fields of an invoice event the module acts on.
 *
 * Plain C with jansson, so that it can be unit tested and fuzzed alone.
 */


#ifndef _NGX_BILLING_EVENT_H_INCLUDED_
#define _NGX_BILLING_EVENT_H_INCLUDED_


#include <stddef.h>
#include <stdint.h>


#define NGX_BILLING_STRIPE_ID_MAX   255
#define NGX_BILLING_SUB_ID_MAX      64
#define NGX_BILLING_URL_MAX         2048


typedef struct {
    const char           *data;
    size_t                len;
} ngx_billing_str_t;


typedef struct {
    void                 *json;         /* the parsed document, owned */

    ngx_billing_str_t     id;
    ngx_billing_str_t     type;
    int64_t               created;

    /* the invoice status a handled event reports, NONE otherwise */
    int                   status;

    /* of data.object, for handled events; empty strings when absent */
    ngx_billing_str_t     invoice;
    ngx_billing_str_t     customer;
    ngx_billing_str_t     subscription; /* metadata[billing_subscription] */
    ngx_billing_str_t     kind;         /* metadata[billing_kind] */
    ngx_billing_str_t     marketplace;  /* metadata[billing_marketplace] */
    ngx_billing_str_t     hosted_invoice_url;
    ngx_billing_str_t     currency;
    int64_t               amount_due;   /* -1 when absent */
    int64_t               due_date;     /* unix seconds, 0 when none */

    /* metadata present but not ours to trust: not a valid id or kind */
    unsigned              bad_metadata:1;
} ngx_billing_event_t;


/*
 * Returns 0 and fills ev, or -1 with *err set to a static message.
 * ev must be released with ngx_billing_event_free() in both cases.
 */
int ngx_billing_event_parse(ngx_billing_event_t *ev, const unsigned char *buf,
    size_t len, const char **err);
void ngx_billing_event_free(ngx_billing_event_t *ev);

/*
 * Copies the len bytes of src to dst (len bytes at least) less the
 * whitespace that jansson skips next to "{}[]:," and at either end, and
 * returns the length copied: the same document, the same errors, fewer
 * bytes for jansson's lexer (Stripe pretty-prints its events).  Strings
 * are copied as they are; whitespace between two other tokens (an
 * error) stays, as one space.
 */
size_t ngx_billing_json_compact(unsigned char *dst, const unsigned char *src,
    size_t len);

/* Stripe ids: [A-Za-z0-9_], 1 to NGX_BILLING_STRIPE_ID_MAX */
int ngx_billing_stripe_id_valid(const char *s, size_t len);

/*
 * our subscription ids: [A-Za-z0-9_.-], 1 to NGX_BILLING_SUB_ID_MAX, not
 * "." or ".." (which no URI could name)
 */
int ngx_billing_sub_id_valid(const char *s, size_t len);


#endif /* _NGX_BILLING_EVENT_H_INCLUDED_ */
