
/*
 * Stripe event parsing.
 */


#include <string.h>

#include <jansson.h>

#include "ngx_billing_event.h"
#include "ngx_billing_state.h"


static void ngx_billing_event_values(json_t *obj, unsigned ctx,
    ngx_billing_event_field_t *f);
static json_t *ngx_billing_event_value(json_t *obj,
    const ngx_billing_event_name_t *name, ngx_billing_event_field_t *f);
static int ngx_billing_event_string(ngx_billing_event_field_t *f,
    ngx_billing_str_t *out);
static int ngx_billing_url_valid(const char *s, size_t len);
static int ngx_billing_currency_valid(const char *s, size_t len);


static const ngx_billing_str_t  ngx_billing_empty = { "", 0 };


#define ngx_billing_event_name(s, field, child)                              \
    { s, sizeof(s) - 1, NGX_BILLING_EV_ ## field, NGX_BILLING_EV_CTX_ ## child }

static const ngx_billing_event_name_t  ngx_billing_event_root[] = {
    ngx_billing_event_name("id", ID, NONE),
    ngx_billing_event_name("type", TYPE, NONE),
    ngx_billing_event_name("created", CREATED, NONE),
    ngx_billing_event_name("data", DATA, DATA),
    { NULL, 0, 0, 0 }
};

static const ngx_billing_event_name_t  ngx_billing_event_data[] = {
    ngx_billing_event_name("object", OBJECT, OBJ),
    { NULL, 0, 0, 0 }
};

static const ngx_billing_event_name_t  ngx_billing_event_obj[] = {
    ngx_billing_event_name("id", OBJ_ID, NONE),
    ngx_billing_event_name("object", OBJ_OBJECT, NONE),
    ngx_billing_event_name("customer", CUSTOMER, NONE),
    ngx_billing_event_name("hosted_invoice_url", URL, NONE),
    ngx_billing_event_name("currency", CURRENCY, NONE),
    ngx_billing_event_name("due_date", DUE_DATE, NONE),
    ngx_billing_event_name("amount_due", AMOUNT_DUE, NONE),
    ngx_billing_event_name("metadata", METADATA, META),
    { NULL, 0, 0, 0 }
};

static const ngx_billing_event_name_t  ngx_billing_event_meta[] = {
    ngx_billing_event_name("billing_subscription", SUBSCRIPTION, NONE),
    ngx_billing_event_name("billing_marketplace", MARKETPLACE, NONE),
    ngx_billing_event_name("billing_kind", KIND, NONE),
    { NULL, 0, 0, 0 }
};

const ngx_billing_event_name_t  *const ngx_billing_event_names[] = {
    NULL,
    ngx_billing_event_root,
    ngx_billing_event_data,
    ngx_billing_event_obj,
    ngx_billing_event_meta
};


/* 1: JSON's whitespace, as jansson's lexer skips it; 2: "{}[]:,"; 4: "\"\\" */
static const unsigned char  ngx_billing_json_class[256] = {
    ['\t'] = 1, ['\n'] = 1, ['\r'] = 1, [' '] = 1,
    ['{'] = 2, ['}'] = 2, ['['] = 2, [']'] = 2, [':'] = 2, [','] = 2,
    ['"'] = 4, ['\\'] = 4
};


void
ngx_billing_event_init(ngx_billing_event_t *ev)
{
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
}


int
ngx_billing_event_parse(ngx_billing_event_t *ev, const unsigned char *buf,
    size_t len, const char **err)
{
    int  rc;

    rc = ngx_billing_event_scan(ev, buf, len, err);

    if (rc != NGX_BILLING_EVENT_ASK_JANSSON) {
        return rc;
    }

    return ngx_billing_event_parse_json(ev, buf, len, err);
}


int
ngx_billing_event_parse_json(ngx_billing_event_t *ev,
    const unsigned char *buf, size_t len, const char **err)
{
    json_t                     *root;
    json_error_t                error;
    ngx_billing_event_field_t   f[NGX_BILLING_EV_NFIELDS];

    ngx_billing_event_init(ev);

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

    memset(f, 0, sizeof(f));

    ngx_billing_event_values(root, NGX_BILLING_EV_CTX_ROOT, f);

    return ngx_billing_event_fill(ev, f, err);
}


static void
ngx_billing_event_values(json_t *obj, unsigned ctx,
    ngx_billing_event_field_t *f)
{
    json_t                          *value;
    const ngx_billing_event_name_t  *name;

    for (name = ngx_billing_event_names[ctx]; name->name; name++) {
        value = ngx_billing_event_value(obj, name, &f[name->field]);

        if (name->child != NGX_BILLING_EV_CTX_NONE && json_is_object(value)) {
            ngx_billing_event_values(value, name->child, f);
        }
    }
}


int
ngx_billing_event_fill(ngx_billing_event_t *ev, ngx_billing_event_field_t *f,
    const char **err)
{
    ngx_billing_event_field_t  *value;

    if (!ngx_billing_event_string(&f[NGX_BILLING_EV_ID], &ev->id)
        || !ngx_billing_stripe_id_valid(ev->id.data, ev->id.len))
    {
        *err = "event has no valid \"id\"";
        return -1;
    }

    if (!ngx_billing_event_string(&f[NGX_BILLING_EV_TYPE], &ev->type)
        || ev->type.len == 0 || ev->type.len > 128
        || memchr(ev->type.data, '\0', ev->type.len) != NULL)
    {
        *err = "event has no valid \"type\"";
        return -1;
    }

    value = &f[NGX_BILLING_EV_CREATED];

    if (value->kind != NGX_BILLING_JSON_INTEGER || value->num < 0) {
        *err = "event has no valid \"created\"";
        return -1;
    }

    ev->created = value->num;

    if (f[NGX_BILLING_EV_OBJECT].kind != NGX_BILLING_JSON_OBJECT) {
        *err = "event has no \"data.object\"";
        return -1;
    }

    ev->status = ngx_billing_invoice_status_of_event(ev->type.data,
                                                     ev->type.len);

    if (ev->status == NGX_BILLING_INVOICE_NONE) {
        /* a verified event of a type we do not handle */
        return 0;
    }

    value = &f[NGX_BILLING_EV_OBJ_OBJECT];

    if (value->kind != NGX_BILLING_JSON_STRING
        || value->str.len != 7 || memcmp(value->str.data, "invoice", 7) != 0)
    {
        *err = "invoice event whose data.object is not an invoice";
        return -1;
    }

    if (!ngx_billing_event_string(&f[NGX_BILLING_EV_OBJ_ID], &ev->invoice)
        || !ngx_billing_stripe_id_valid(ev->invoice.data, ev->invoice.len))
    {
        *err = "invoice has no valid \"id\"";
        return -1;
    }

    /* the rest is descriptive: kept when well formed, dropped otherwise */

    if (!ngx_billing_event_string(&f[NGX_BILLING_EV_CUSTOMER], &ev->customer)
        || !ngx_billing_stripe_id_valid(ev->customer.data, ev->customer.len))
    {
        ev->customer = ngx_billing_empty;
    }

    if (!ngx_billing_event_string(&f[NGX_BILLING_EV_URL],
                                  &ev->hosted_invoice_url)
        || !ngx_billing_url_valid(ev->hosted_invoice_url.data,
                                  ev->hosted_invoice_url.len))
    {
        ev->hosted_invoice_url = ngx_billing_empty;
    }

    if (!ngx_billing_event_string(&f[NGX_BILLING_EV_CURRENCY], &ev->currency)
        || !ngx_billing_currency_valid(ev->currency.data, ev->currency.len))
    {
        ev->currency = ngx_billing_empty;
    }

    value = &f[NGX_BILLING_EV_DUE_DATE];

    if (value->kind == NGX_BILLING_JSON_INTEGER && value->num > 0) {
        ev->due_date = value->num;
    }

    value = &f[NGX_BILLING_EV_AMOUNT_DUE];

    if (value->kind == NGX_BILLING_JSON_INTEGER && value->num >= 0) {
        ev->amount_due = value->num;
    }

    if (f[NGX_BILLING_EV_METADATA].kind != NGX_BILLING_JSON_OBJECT) {
        return 0;
    }

    if (ngx_billing_event_string(&f[NGX_BILLING_EV_SUBSCRIPTION],
                                 &ev->subscription)
        && !ngx_billing_sub_id_valid(ev->subscription.data,
                                     ev->subscription.len))
    {
        ev->subscription = ngx_billing_empty;
        ev->bad_metadata = 1;
    }

    /* "" (absent): the default marketplace's, as before 0.6 */
    (void) ngx_billing_event_string(&f[NGX_BILLING_EV_MARKETPLACE],
                                    &ev->marketplace);

    if (ngx_billing_event_string(&f[NGX_BILLING_EV_KIND], &ev->kind)
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


static json_t *
ngx_billing_event_value(json_t *obj, const ngx_billing_event_name_t *name,
    ngx_billing_event_field_t *f)
{
    json_t  *value;

    value = json_object_getn(obj, name->name, name->len);

    if (value == NULL) {
        return NULL;
    }

    switch (json_typeof(value)) {

    case JSON_STRING:
        f->kind = NGX_BILLING_JSON_STRING;
        f->str.data = json_string_value(value);
        f->str.len = json_string_length(value);
        break;

    case JSON_INTEGER:
        f->kind = NGX_BILLING_JSON_INTEGER;
        f->num = json_integer_value(value);
        break;

    case JSON_OBJECT:
        f->kind = NGX_BILLING_JSON_OBJECT;
        break;

    default:
        f->kind = NGX_BILLING_JSON_OTHER;
    }

    return value;
}


/* 1 and the string, or 0 and "" */

static int
ngx_billing_event_string(ngx_billing_event_field_t *f, ngx_billing_str_t *out)
{
    if (f->kind != NGX_BILLING_JSON_STRING) {
        *out = ngx_billing_empty;
        return 0;
    }

    *out = f->str;

    return 1;
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
