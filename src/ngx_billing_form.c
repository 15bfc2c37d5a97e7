
/*
 * application/x-www-form-urlencoded bodies for the Stripe API.
 */


#include <stdio.h>
#include <string.h>

#include "ngx_billing_form.h"


void
ngx_billing_form_init(ngx_billing_form_t *form, char *buf, size_t size)
{
    form->data = buf;
    form->len = 0;
    form->size = size;
    form->overflow = 0;
}


int
ngx_billing_form_add(ngx_billing_form_t *form, const char *key,
    const char *value, size_t len)
{
    char    *p;
    size_t   klen;

    klen = strlen(key);

    if (form->overflow
        || form->size - form->len < ngx_billing_form_field_max(klen, len))
    {
        form->overflow = 1;
        return -1;
    }

    p = form->data + form->len;

    if (form->len) {
        *p++ = '&';
    }

    /* brackets are left as they are: Stripe reads both forms */

    memcpy(p, key, klen);
    p += klen;
    *p++ = '=';

    p += ngx_billing_form_encode(p, value, len);

    form->len = p - form->data;

    return 0;
}


int
ngx_billing_form_add_int(ngx_billing_form_t *form, const char *key,
    int64_t value)
{
    int   n;
    char  buf[24];

    n = snprintf(buf, sizeof(buf), "%lld", (long long) value);

    return ngx_billing_form_add(form, key, buf, (size_t) n);
}


size_t
ngx_billing_form_encode(char *dst, const char *src, size_t len)
{
    size_t          i;
    char           *p;
    unsigned char   c;

    static const char  hex[] = "0123456789ABCDEF";

    p = dst;

    for (i = 0; i < len; i++) {
        c = (unsigned char) src[i];

        /* RFC 3986 unreserved characters go as they are */

        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
            || (c >= '0' && c <= '9')
            || c == '-' || c == '.' || c == '_' || c == '~')
        {
            *p++ = (char) c;
            continue;
        }

        *p++ = '%';
        *p++ = hex[c >> 4];
        *p++ = hex[c & 0xf];
    }

    return p - dst;
}
