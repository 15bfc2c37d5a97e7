
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


/* the values of an event the module reads, as a parser found them */

enum {
    NGX_BILLING_EV_ID = 0,
    NGX_BILLING_EV_TYPE,
    NGX_BILLING_EV_CREATED,
    NGX_BILLING_EV_DATA,
    NGX_BILLING_EV_OBJECT,              /* data.object */
    NGX_BILLING_EV_OBJ_OBJECT,          /* data.object.object ... */
    NGX_BILLING_EV_OBJ_ID,
    NGX_BILLING_EV_CUSTOMER,
    NGX_BILLING_EV_URL,
    NGX_BILLING_EV_CURRENCY,
    NGX_BILLING_EV_DUE_DATE,
    NGX_BILLING_EV_AMOUNT_DUE,
    NGX_BILLING_EV_METADATA,
    NGX_BILLING_EV_SUBSCRIPTION,        /* data.object.metadata. ... */
    NGX_BILLING_EV_MARKETPLACE,
    NGX_BILLING_EV_KIND,
    NGX_BILLING_EV_NFIELDS
};

/*
 * Where the module reads them: the objects of an event (the event, its
 * "data", "data.object", its "metadata"), each with the names read in it
 * and, for a name whose object is read in turn, that object's context.
 * Both parsers read by this table.
 */

#define NGX_BILLING_EV_CTX_NONE     0
#define NGX_BILLING_EV_CTX_ROOT     1
#define NGX_BILLING_EV_CTX_DATA     2
#define NGX_BILLING_EV_CTX_OBJ      3
#define NGX_BILLING_EV_CTX_META     4


typedef struct {
    const char           *name;     /* NULL at the end of a context's */
    unsigned char         len;
    unsigned char         field;
    unsigned char         child;
} ngx_billing_event_name_t;


extern const ngx_billing_event_name_t  *const ngx_billing_event_names[];


#define NGX_BILLING_JSON_ABSENT     0
#define NGX_BILLING_JSON_STRING     1
#define NGX_BILLING_JSON_INTEGER    2
#define NGX_BILLING_JSON_OBJECT     3
#define NGX_BILLING_JSON_OTHER      4   /* array, real, true, false, null */


typedef struct {
    int                   kind;
    ngx_billing_str_t     str;          /* a string's bytes, decoded */
    int64_t               num;          /* an integer's value */
} ngx_billing_event_field_t;


/*
 * Returns 0 and fills ev, or -1 with *err set to a static message.
 * ev must be released with ngx_billing_event_free() in both cases.
 * Its strings are the document's bytes, within their lengths: in buf
 * itself (not NUL terminated) or in jansson's values.
 *
 * ngx_billing_event_parse() asks ngx_billing_event_scan() first, then
 * jansson (ngx_billing_event_parse_json()) if the scan could not answer.
 */
int ngx_billing_event_parse(ngx_billing_event_t *ev, const unsigned char *buf,
    size_t len, const char **err);
int ngx_billing_event_parse_json(ngx_billing_event_t *ev,
    const unsigned char *buf, size_t len, const char **err);
void ngx_billing_event_free(ngx_billing_event_t *ev);

/*
 * A strict reader of the common case, one pass and no value built: for
 * a document that json_loadb(JSON_REJECT_DUPLICATES) accepts and whose
 * every byte it could check the same way, the answer of
 * ngx_billing_event_parse_json(), with the same ev and *err, from the
 * bytes of buf; NGX_BILLING_EVENT_ASK_JANSSON for anything else (an
 * error, an escape in a key or in a value read, a number jansson could
 * find too big, a deep document).  ngx_billing_event_scan.c.
 */
#define NGX_BILLING_EVENT_ASK_JANSSON  1

int ngx_billing_event_scan(ngx_billing_event_t *ev, const unsigned char *buf,
    size_t len, const char **err);

/* internal: the checks of both parsers, on the values they found */
void ngx_billing_event_init(ngx_billing_event_t *ev);
int ngx_billing_event_fill(ngx_billing_event_t *ev,
    ngx_billing_event_field_t *f, const char **err);

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
