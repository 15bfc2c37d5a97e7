
/*
 * Stripe event parsing.
 */


#include <string.h>

#include <jansson.h>

#include "ngx_billing_event.h"
#include "ngx_billing_state.h"


static int ngx_billing_event_string(json_t *obj, const char *key,
    ngx_billing_str_t *out);
static int ngx_billing_url_valid(const char *s, size_t len);
static int ngx_billing_currency_valid(const char *s, size_t len);


static const ngx_billing_str_t  ngx_billing_empty = { "", 0 };


/* 1: JSON's whitespace, as jansson's lexer skips it; 2: "{}[]:,"; 4: "\"\\" */
static const unsigned char  ngx_billing_json_class[256] = {
    ['\t'] = 1, ['\n'] = 1, ['\r'] = 1, [' '] = 1,
    ['{'] = 2, ['}'] = 2, ['['] = 2, [']'] = 2, [':'] = 2, [','] = 2,
    ['"'] = 4, ['\\'] = 4
};


int
ngx_billing_event_parse(ngx_billing_event_t *ev, const unsigned char *buf,
    size_t len, const char **err)
{
    json_t        *root, *created, *data, *object, *value, *metadata;
    json_error_t   error;

    memset(ev, 0, sizeof(ngx_billing_event_t));
    ev->amount_due = -1;

    /* never NULL, whatever the outcome: "" when absent or dropped */

    ev->id = ngx_billing_empty;
    ev->type = ngx_billing_empty;
    ev->invoice = ngx_billing_empty;
    ev->customer = ngx_billing_empty;
    ev->subscription = ngx_billing_empty;
    ev->kind = ngx_billing_empty;
    ev->marketplace = ngx_billing_empty;
    ev->hosted_invoice_url = ngx_billing_empty;
    ev->currency = ngx_billing_empty;

    root = json_loadb((const char *) buf, len, JSON_REJECT_DUPLICATES, &error);
    if (root == NULL) {
        *err = "body is not valid JSON";
        return -1;
    }

    ev->json = root;

    if (!json_is_object(root)) {
        *err = "event is not a JSON object";
        return -1;
    }

    if (ngx_billing_event_string(root, "id", &ev->id) != 0
        || !ngx_billing_stripe_id_valid(ev->id.data, ev->id.len))
    {
        *err = "event has no valid \"id\"";
        return -1;
    }

    if (ngx_billing_event_string(root, "type", &ev->type) != 0
        || ev->type.len == 0 || ev->type.len > 128
        || memchr(ev->type.data, '\0', ev->type.len) != NULL)
    {
        *err = "event has no valid \"type\"";
        return -1;
    }

    created = json_object_get(root, "created");
    if (!json_is_integer(created) || json_integer_value(created) < 0) {
        *err = "event has no valid \"created\"";
        return -1;
    }

    ev->created = json_integer_value(created);

    data = json_object_get(root, "data");
    object = json_is_object(data) ? json_object_get(data, "object") : NULL;

    if (!json_is_object(object)) {
        *err = "event has no \"data.object\"";
        return -1;
    }

    ev->status = ngx_billing_invoice_status_of_event(ev->type.data,
                                                     ev->type.len);

    if (ev->status == NGX_BILLING_INVOICE_NONE) {
        /* a verified event of a type we do not handle */
        return 0;
    }

    value = json_object_get(object, "object");
    if (!json_is_string(value) || strcmp(json_string_value(value), "invoice"))
    {
        *err = "invoice event whose data.object is not an invoice";
        return -1;
    }

    if (ngx_billing_event_string(object, "id", &ev->invoice) != 0
        || !ngx_billing_stripe_id_valid(ev->invoice.data, ev->invoice.len))
    {
        *err = "invoice has no valid \"id\"";
        return -1;
    }

    /* the rest is descriptive: kept when well formed, dropped otherwise */

    if (ngx_billing_event_string(object, "customer", &ev->customer) != 0
        || !ngx_billing_stripe_id_valid(ev->customer.data, ev->customer.len))
    {
        ev->customer = ngx_billing_empty;
    }

    if (ngx_billing_event_string(object, "hosted_invoice_url",
                                 &ev->hosted_invoice_url) != 0
        || !ngx_billing_url_valid(ev->hosted_invoice_url.data,
                                  ev->hosted_invoice_url.len))
    {
        ev->hosted_invoice_url = ngx_billing_empty;
    }

    if (ngx_billing_event_string(object, "currency", &ev->currency) != 0
        || !ngx_billing_currency_valid(ev->currency.data, ev->currency.len))
    {
        ev->currency = ngx_billing_empty;
    }

    value = json_object_get(object, "due_date");
    if (json_is_integer(value) && json_integer_value(value) > 0) {
        ev->due_date = json_integer_value(value);
    }

    value = json_object_get(object, "amount_due");
    if (json_is_integer(value) && json_integer_value(value) >= 0) {
        ev->amount_due = json_integer_value(value);
    }

    metadata = json_object_get(object, "metadata");
    if (!json_is_object(metadata)) {
        return 0;
    }

    if (ngx_billing_event_string(metadata, "billing_subscription",
                                 &ev->subscription) == 0
        && !ngx_billing_sub_id_valid(ev->subscription.data,
                                     ev->subscription.len))
    {
        ev->subscription = ngx_billing_empty;
        ev->bad_metadata = 1;
    }

    /* "" (absent): the default marketplace's, as before 0.6 */
    (void) ngx_billing_event_string(metadata, "billing_marketplace",
                                    &ev->marketplace);

    if (ngx_billing_event_string(metadata, "billing_kind", &ev->kind) == 0
        && !(ev->kind.len == 7 && memcmp(ev->kind.data, "initial", 7) == 0)
        && !(ev->kind.len == 6 && memcmp(ev->kind.data, "period", 6) == 0)
        && !(ev->kind.len == 5 && memcmp(ev->kind.data, "final", 5) == 0))
    {
        ev->kind = ngx_billing_empty;
        ev->bad_metadata = 1;
    }

    return 0;
}


size_t
ngx_billing_json_compact(unsigned char *dst, const unsigned char *src,
    size_t len)
{
    unsigned char         c, *d;
    const unsigned char  *p, *end;

    d = dst;
    p = src;
    end = src + len;

    while (p < end) {
        c = *p++;

        if (c == '"') {

            /* a string, byte for byte, to its closing quote or the end */

            *d++ = c;

            while (p < end) {
                c = *p++;
                *d++ = c;

                if (ngx_billing_json_class[c] != 4) {
                    continue;
                }

                if (c == '"') {
                    break;
                }

                if (p < end) {
                    *d++ = *p++;
                }
            }

            continue;
        }

        if (ngx_billing_json_class[c] != 1) {
            *d++ = c;
            continue;
        }

        while (p < end && ngx_billing_json_class[*p] == 1) {
            p++;
        }

        /*
         * Next to "{}[]:," or an end, whitespace separates nothing.
         * Between two other tokens it is an error, which a space keeps:
         * "1 2" must not become "12".
         */

        if (d > dst && ngx_billing_json_class[d[-1]] != 2
            && p < end && ngx_billing_json_class[*p] != 2)
        {
            *d++ = ' ';
        }
    }

    return d - dst;
}


void
ngx_billing_event_free(ngx_billing_event_t *ev)
{
    if (ev->json) {
        json_decref((json_t *) ev->json);
        ev->json = NULL;
    }
}


static int
ngx_billing_event_string(json_t *obj, const char *key, ngx_billing_str_t *out)
{
    json_t  *value;

    value = json_object_get(obj, key);

    if (!json_is_string(value)) {
        out->data = "";
        out->len = 0;
        return -1;
    }

    out->data = json_string_value(value);
    out->len = json_string_length(value);

    return 0;
}


int
ngx_billing_stripe_id_valid(const char *s, size_t len)
{
    size_t  i;

    if (len == 0 || len > NGX_BILLING_STRIPE_ID_MAX) {
        return 0;
    }

    for (i = 0; i < len; i++) {
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z')
              || (s[i] >= '0' && s[i] <= '9') || s[i] == '_'))
        {
            return 0;
        }
    }

    return 1;
}


int
ngx_billing_sub_id_valid(const char *s, size_t len)
{
    size_t  i;

    if (len == 0 || len > NGX_BILLING_SUB_ID_MAX) {
        return 0;
    }

    /* a path segment nginx would resolve: /subscriptions/.. is not it */

    if ((len == 1 && s[0] == '.') || (len == 2 && s[0] == '.' && s[1] == '.'))
    {
        return 0;
    }

    for (i = 0; i < len; i++) {
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z')
              || (s[i] >= '0' && s[i] <= '9')
              || s[i] == '_' || s[i] == '-' || s[i] == '.'))
        {
            return 0;
        }
    }

    return 1;
}


static int
ngx_billing_url_valid(const char *s, size_t len)
{
    size_t  i;

    if (len == 0 || len > NGX_BILLING_URL_MAX) {
        return 0;
    }

    if (!(len > 8 && memcmp(s, "https://", 8) == 0)
        && !(len > 7 && memcmp(s, "http://", 7) == 0))
    {
        return 0;
    }

    for (i = 0; i < len; i++) {
        if ((unsigned char) s[i] <= ' ' || (unsigned char) s[i] >= 0x7f) {
            return 0;
        }
    }

    return 1;
}


static int
ngx_billing_currency_valid(const char *s, size_t len)
{
    size_t  i;

    if (len != 3) {
        return 0;
    }

    for (i = 0; i < len; i++) {
        if (s[i] < 'a' || s[i] > 'z') {
            return 0;
        }
    }

    return 1;
}
