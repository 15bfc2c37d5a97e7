
/*
 * application/x-www-form-urlencoded bodies for the Stripe API, with its
 * bracket nesting ("metadata[billing_subscription]=sub-42").
 *
 * Plain C: the caller hands in the buffer, the builder never allocates.
 */


#ifndef _NGX_BILLING_FORM_H_INCLUDED_
#define _NGX_BILLING_FORM_H_INCLUDED_


#include <stddef.h>
#include <stdint.h>


typedef struct {
    char      *data;
    size_t     len;
    size_t     size;
    int        overflow;    /* a field did not fit: the form is unusable */
} ngx_billing_form_t;


/* the most a field can take: "&" key "=" and every value byte as %XX */
#define ngx_billing_form_field_max(key_len, value_len)                        \
    (1 + 3 * (key_len) + 1 + 3 * (value_len))


void ngx_billing_form_init(ngx_billing_form_t *form, char *buf, size_t size);

/* keys are ASCII names with brackets, kept as they are; values encoded */
int ngx_billing_form_add(ngx_billing_form_t *form, const char *key,
    const char *value, size_t len);
int ngx_billing_form_add_int(ngx_billing_form_t *form, const char *key,
    int64_t value);

/* percent-encodes src into dst (3 * len bytes at most); returns length */
size_t ngx_billing_form_encode(char *dst, const char *src, size_t len);


#endif /* _NGX_BILLING_FORM_H_INCLUDED_ */
