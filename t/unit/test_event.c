
/*
 * Unit tests of the Stripe event parser.
 */


#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "ngx_billing_event.h"
#include "ngx_billing_state.h"
#include "tap.h"


#define ERR_JSON      "body is not valid JSON"
#define ERR_OBJECT    "event is not a JSON object"
#define ERR_ID        "event has no valid \"id\""
#define ERR_TYPE      "event has no valid \"type\""
#define ERR_CREATED   "event has no valid \"created\""
#define ERR_DATA      "event has no \"data.object\""
#define ERR_INVOICE   "invoice event whose data.object is not an invoice"
#define ERR_INV_ID    "invoice has no valid \"id\""

#define CS(s)         (s), sizeof(s) - 1

#define is_evstr(s, expected, ...)                                           \
    is_mem((s).data, (s).len, (expected), strlen(expected), __VA_ARGS__)


/*
 * An invoice.paid event as Stripe sends it: the envelope of Stripe's
 * example "event" object around its example "invoice" object (from the
 * OpenAPI fixtures), paid, with the metadata this module sets.
 */

static const char  invoice_paid[] =
    "{\n"
    "  \"api_version\": \"2024-06-20\",\n"
    "  \"created\": 1721954101,\n"
    "  \"data\": {\n"
    "    \"object\": {\n"
    "      \"account_country\": \"US\",\n"
    "      \"account_name\": null,\n"
    "      \"account_tax_ids\": null,\n"
    "      \"amount_due\": 1000,\n"
    "      \"amount_paid\": 1000,\n"
    "      \"amount_remaining\": 0,\n"
    "      \"amount_shipping\": 0,\n"
    "      \"application\": null,\n"
    "      \"attempt_count\": 0,\n"
    "      \"attempted\": false,\n"
    "      \"auto_advance\": false,\n"
    "      \"automatic_tax\": {\n"
    "        \"enabled\": false,\n"
    "        \"liability\": {\n"
    "          \"type\": \"account\"\n"
    "        },\n"
    "        \"status\": null,\n"
    "        \"disabled_reason\": null,\n"
    "        \"provider\": null\n"
    "      },\n"
    "      \"billing_reason\": \"manual\",\n"
    "      \"collection_method\": \"charge_automatically\",\n"
    "      \"created\": 1234567890,\n"
    "      \"currency\": \"usd\",\n"
    "      \"custom_fields\": null,\n"
    "      \"customer\": \"cus_QXg1o8vcGmoR32\",\n"
    "      \"customer_address\": {\n"
    "        \"city\": null,\n"
    "        \"country\": null,\n"
    "        \"line1\": null,\n"
    "        \"line2\": null,\n"
    "        \"postal_code\": null,\n"
    "        \"state\": null\n"
    "      },\n"
    "      \"customer_email\": null,\n"
    "      \"customer_name\": null,\n"
    "      \"customer_phone\": null,\n"
    "      \"customer_shipping\": {},\n"
    "      \"customer_tax_exempt\": \"none\",\n"
    "      \"customer_tax_ids\": [],\n"
    "      \"default_payment_method\": null,\n"
    "      \"default_source\": null,\n"
    "      \"default_tax_rates\": [],\n"
    "      \"description\": null,\n"
    "      \"discounts\": [],\n"
    "      \"due_date\": 1234567890,\n"
    "      \"effective_at\": 1234567890,\n"
    "      \"ending_balance\": null,\n"
    "      \"footer\": null,\n"
    "      \"from_invoice\": {\n"
    "        \"action\": \"action\",\n"
    "        \"invoice\": \"invoice\"\n"
    "      },\n"
    "      \"hosted_invoice_url\": \"https://invoice.stripe.com/i/acct_1Pgc5u"
    "B7WZ01zgkW/test_YWNjdF8xUGdjNXVCN1daMDF6Z2tXLF9RWGcxSFhqTkNzVjdBaVdwaUFE"
    "bzBLaXNyQmdwTE9rLDExMjQ5NDg1NQ0200qFTHMaTp?s=ap\",\n"
    "      \"id\": \"in_1Pgc6tB7WZ01zgkWu9fdqL6I\",\n"
    "      \"invoice_pdf\": \"https://pay.stripe.com/invoice/acct_1Pgc5uB7WZ0"
    "1zgkW/test_YWNjdF8xUGdj/pdf?s=ap\",\n"
    "      \"issuer\": {\n"
    "        \"type\": \"self\"\n"
    "      },\n"
    "      \"last_finalization_error\": {\n"
    "        \"type\": \"idempotency_error\"\n"
    "      },\n"
    "      \"latest_revision\": null,\n"
    "      \"lines\": {\n"
    "        \"data\": [\n"
    "          {\n"
    "            \"amount\": 1000,\n"
    "            \"currency\": \"usd\",\n"
    "            \"description\": \"My First Invoice Item (created for API do"
    "cs)\",\n"
    "            \"discount_amounts\": [],\n"
    "            \"discountable\": true,\n"
    "            \"discounts\": [],\n"
    "            \"id\": \"il_1Pgc6sB7WZ01zgkWFnxLrLCq\",\n"
    "            \"invoice\": \"in_1Pgc6tB7WZ01zgkWu9fdqL6I\",\n"
    "            \"livemode\": false,\n"
    "            \"metadata\": {},\n"
    "            \"object\": \"line_item\",\n"
    "            \"period\": {\n"
    "              \"end\": 1721954054,\n"
    "              \"start\": 1721954054\n"
    "            },\n"
    "            \"quantity\": 1,\n"
    "            \"subscription\": null,\n"
    "            \"pretax_credit_amounts\": null,\n"
    "            \"taxes\": null,\n"
    "            \"parent\": {\n"
    "              \"invoice_item_details\": {\n"
    "                \"invoice_item\": \"invoice_item\",\n"
    "                \"proration\": true,\n"
    "                \"proration_details\": {\n"
    "                  \"credited_items\": {\n"
    "                    \"invoice\": \"invoice\",\n"
    "                    \"invoice_line_items\": [\n"
    "                      \"invoice_line_items\"\n"
    "                    ]\n"
    "                  }\n"
    "                },\n"
    "                \"subscription\": null\n"
    "              },\n"
    "              \"subscription_item_details\": {\n"
    "                \"invoice_item\": null,\n"
    "                \"proration\": true,\n"
    "                \"proration_details\": {\n"
    "                  \"credited_items\": {\n"
    "                    \"invoice\": \"invoice\",\n"
    "                    \"invoice_line_items\": [\n"
    "                      \"invoice_line_items\"\n"
    "                    ]\n"
    "                  }\n"
    "                },\n"
    "                \"subscription\": \"subscription\",\n"
    "                \"subscription_item\": \"subscription_item\"\n"
    "              },\n"
    "              \"type\": \"invoice_item_details\"\n"
    "            },\n"
    "            \"pricing\": {\n"
    "              \"type\": \"price_details\",\n"
    "              \"unit_amount_decimal\": null\n"
    "            },\n"
    "            \"subtotal\": 2060319484,\n"
    "            \"quantity_decimal\": null\n"
    "          }\n"
    "        ],\n"
    "        \"has_more\": false,\n"
    "        \"object\": \"list\",\n"
    "        \"url\": \"/v1/invoices/in_1Pgc6tB7WZ01zgkWu9fdqL6I/lines\"\n"
    "      },\n"
    "      \"livemode\": false,\n"
    "      \"metadata\": {\n"
    "        \"billing_subscription\": \"sub-7f3a9c.2024_06\",\n"
    "        \"billing_kind\": \"initial\"\n"
    "      },\n"
    "      \"next_payment_attempt\": 1234567890,\n"
    "      \"number\": \"A1B2C3D4-0001\",\n"
    "      \"object\": \"invoice\",\n"
    "      \"on_behalf_of\": null,\n"
    "      \"payment_settings\": {\n"
    "        \"default_mandate\": null,\n"
    "        \"payment_method_options\": {\n"
    "          \"acss_debit\": {},\n"
    "          \"bancontact\": {\n"
    "            \"preferred_language\": \"fr\"\n"
    "          },\n"
    "          \"card\": {\n"
    "            \"request_three_d_secure\": null\n"
    "          },\n"
    "          \"customer_balance\": {\n"
    "            \"funding_type\": null\n"
    "          },\n"
    "          \"konbini\": {},\n"
    "          \"sepa_debit\": {},\n"
    "          \"us_bank_account\": {},\n"
    "          \"payto\": {},\n"
    "          \"pix\": {\n"
    "            \"amount_includes_iof\": null\n"
    "          },\n"
    "          \"upi\": {}\n"
    "        },\n"
    "        \"payment_method_types\": null\n"
    "      },\n"
    "      \"period_end\": 1234567890,\n"
    "      \"period_start\": 1234567890,\n"
    "      \"post_payment_credit_notes_amount\": 0,\n"
    "      \"pre_payment_credit_notes_amount\": 0,\n"
    "      \"receipt_number\": null,\n"
    "      \"rendering\": {\n"
    "        \"amount_tax_display\": null,\n"
    "        \"pdf\": {\n"
    "          \"page_size\": null\n"
    "        },\n"
    "        \"template\": null,\n"
    "        \"template_version\": null\n"
    "      },\n"
    "      \"shipping_cost\": {\n"
    "        \"amount_subtotal\": 1555417355,\n"
    "        \"amount_tax\": 1424534716,\n"
    "        \"amount_total\": 1117121693,\n"
    "        \"shipping_rate\": null\n"
    "      },\n"
    "      \"shipping_details\": {},\n"
    "      \"starting_balance\": 0,\n"
    "      \"statement_descriptor\": null,\n"
    "      \"status\": \"paid\",\n"
    "      \"status_transitions\": {\n"
    "        \"finalized_at\": 1721954060,\n"
    "        \"marked_uncollectible_at\": null,\n"
    "        \"paid_at\": 1721954100,\n"
    "        \"voided_at\": null\n"
    "      },\n"
    "      \"subscription\": null,\n"
    "      \"subtotal\": 1000,\n"
    "      \"subtotal_excluding_tax\": 1000,\n"
    "      \"test_clock\": null,\n"
    "      \"total\": 1000,\n"
    "      \"total_discount_amounts\": [],\n"
    "      \"total_excluding_tax\": 1000,\n"
    "      \"webhooks_delivered_at\": 1234567890,\n"
    "      \"automatically_finalizes_at\": null,\n"
    "      \"total_pretax_credit_amounts\": null,\n"
    "      \"total_taxes\": null,\n"
    "      \"amount_overpaid\": 149300825,\n"
    "      \"parent\": {\n"
    "        \"quote_details\": {\n"
    "          \"quote\": \"quote\"\n"
    "        },\n"
    "        \"subscription_details\": {\n"
    "          \"metadata\": null,\n"
    "          \"subscription\": \"subscription\"\n"
    "        },\n"
    "        \"type\": \"quote_details\"\n"
    "      },\n"
    "      \"customer_account\": null\n"
    "    }\n"
    "  },\n"
    "  \"id\": \"evt_1Pgc7XB7WZ01zgkWq2LXc7Xs\",\n"
    "  \"livemode\": false,\n"
    "  \"object\": \"event\",\n"
    "  \"pending_webhooks\": 1,\n"
    "  \"request\": {\n"
    "    \"id\": null,\n"
    "    \"idempotency_key\": null\n"
    "  },\n"
    "  \"type\": \"invoice.paid\"\n"
    "}\n";


static char  buf[16384];


static int
parse(ngx_billing_event_t *ev, const char *json, const char **err)
{
    *err = NULL;

    return ngx_billing_event_parse(ev, (const unsigned char *) json,
                                   strlen(json), err);
}


/* parses json, expects failure with err, releases */

static void rejects(const char *json, const char *err, const char *fmt, ...)
    TAP_PRINTF(3, 4);

static void
rejects(const char *json, const char *err, const char *fmt, ...)
{
    int                   rc;
    char                  name[256];
    va_list               args;
    const char           *e;
    ngx_billing_event_t   ev;

    va_start(args, fmt);
    vsnprintf(name, sizeof(name), fmt, args);
    va_end(args);

    rc = parse(&ev, json, &e);

    if (!ok(rc == -1 && e != NULL && strcmp(e, err) == 0,
            "rejected: %s", name))
    {
        diag("rc %d, err '%s', expected '%s'", rc, e ? e : "NULL", err);
    }

    ngx_billing_event_free(&ev);
}


/* parses json, expects success, leaves ev to the caller */

static int accepts(ngx_billing_event_t *ev, const char *json,
    const char *fmt, ...) TAP_PRINTF(3, 4);

static int
accepts(ngx_billing_event_t *ev, const char *json, const char *fmt, ...)
{
    int          rc;
    char         name[256];
    va_list      args;
    const char  *e;

    va_start(args, fmt);
    vsnprintf(name, sizeof(name), fmt, args);
    va_end(args);

    rc = parse(ev, json, &e);

    if (!ok(rc == 0, "accepted: %s", name)) {
        diag("err '%s'", e ? e : "NULL");
        return 0;
    }

    return 1;
}


/*
 * every string is non-NULL and readable to its length (in the body, not
 * NUL terminated, when the scan answered; in jansson's values otherwise)
 */

static int
strings_sane(const ngx_billing_event_t *ev)
{
    size_t                    i;
    const ngx_billing_str_t  *s[8];

    s[0] = &ev->id;
    s[1] = &ev->type;
    s[2] = &ev->invoice;
    s[3] = &ev->customer;
    s[4] = &ev->subscription;
    s[5] = &ev->kind;
    s[6] = &ev->hosted_invoice_url;
    s[7] = &ev->currency;

    for (i = 0; i < 8; i++) {
        if (s[i]->data == NULL
            || (s[i]->len && memchr(s[i]->data, 0, s[i]->len) != NULL))
        {
            diag("string %zu is not sane", i);
            return 0;
        }
    }

    return 1;
}


/* an event of type around data.object */

static const char *
event(const char *type, const char *object)
{
    snprintf(buf, sizeof(buf),
             "{\"id\":\"evt_1Pgc7XB7WZ01zgkWq2LXc7Xs\",\"object\":\"event\","
             "\"type\":\"%s\",\"created\":1721954101,"
             "\"data\":{\"object\":%s}}", type, object);

    return buf;
}


/* an invoice.paid event whose invoice has the fields given */

static const char *
paid(const char *fields)
{
    static char  object[8192];

    snprintf(object, sizeof(object),
             "{\"id\":\"in_1\",\"object\":\"invoice\"%s%s}",
             fields[0] ? "," : "", fields);

    return event("invoice.paid", object);
}


/* an event whose top-level members are the ones given */

static const char *
envelope(const char *members)
{
    snprintf(buf, sizeof(buf), "{%s}", members);

    return buf;
}


/* the example event with another type */

static const char *
fixture_of_type(const char *type)
{
    const char  *p;
    size_t       n;

    p = strstr(invoice_paid, "\"invoice.paid\"");
    if (p == NULL) {
        abort();
    }

    n = p - invoice_paid;

    snprintf(buf, sizeof(buf), "%.*s\"%s\"%s", (int) n, invoice_paid, type,
             p + sizeof("\"invoice.paid\"") - 1);

    return buf;
}


static char *
repeat(char c, size_t n)
{
    char  *s;

    s = malloc(n + 1);
    if (s == NULL) {
        abort();
    }

    memset(s, c, n);
    s[n] = '\0';

    return s;
}


static void
test_fixture(void)
{
    const char           *err;
    ngx_billing_event_t   ev;

    err = NULL;

    is_int(ngx_billing_event_parse(&ev, (const unsigned char *) invoice_paid,
                                   sizeof(invoice_paid) - 1, &err),
           0, "fixture: parses");
    ok(err == NULL, "fixture: no error");
    ok(ev.json == NULL, "fixture: read by the scan, no document built");
    ok(ev.id.data > invoice_paid && ev.id.data < invoice_paid
       + sizeof(invoice_paid), "fixture: the id where it is in the body");

    is_evstr(ev.id, "evt_1Pgc7XB7WZ01zgkWq2LXc7Xs", "fixture: id");
    is_evstr(ev.type, "invoice.paid", "fixture: type");
    is_int(ev.created, 1721954101, "fixture: created");
    is_int(ev.status, NGX_BILLING_INVOICE_PAID, "fixture: status paid");
    is_evstr(ev.invoice, "in_1Pgc6tB7WZ01zgkWu9fdqL6I", "fixture: invoice");
    is_evstr(ev.customer, "cus_QXg1o8vcGmoR32", "fixture: customer");
    is_evstr(ev.subscription, "sub-7f3a9c.2024_06", "fixture: subscription");
    is_evstr(ev.kind, "initial", "fixture: kind");
    is_evstr(ev.hosted_invoice_url,
             "https://invoice.stripe.com/i/acct_1Pgc5uB7WZ01zgkW/test_"
             "YWNjdF8xUGdjNXVCN1daMDF6Z2tXLF9RWGcxSFhqTkNzVjdBaVdwaUFEbzBLaXN"
             "yQmdwTE9rLDExMjQ5NDg1NQ0200qFTHMaTp?s=ap",
             "fixture: hosted_invoice_url");
    is_evstr(ev.currency, "usd", "fixture: currency");
    is_int(ev.amount_due, 1000, "fixture: amount_due");
    is_int(ev.bad_metadata, 0, "fixture: metadata trusted");
    ok(strings_sane(&ev), "fixture: strings sane");

    ngx_billing_event_free(&ev);

    is_int(ngx_billing_event_parse_json(&ev,
                                        (const unsigned char *) invoice_paid,
                                        sizeof(invoice_paid) - 1, &err),
           0, "fixture, jansson: parses");
    ok(ev.json != NULL, "fixture, jansson: document kept");
    is_evstr(ev.id, "evt_1Pgc7XB7WZ01zgkWq2LXc7Xs", "fixture, jansson: id");

    ngx_billing_event_free(&ev);
    ok(ev.json == NULL, "free: document released");
    ngx_billing_event_free(&ev);
    ok(ev.json == NULL, "free twice: harmless");

    /* the same without its last byte, or cut in the middle */

    is_int(ngx_billing_event_parse(&ev, (const unsigned char *) invoice_paid,
                                   sizeof(invoice_paid) - 3, &err),
           -1, "fixture cut short: rejected");
    is_str(err, ERR_JSON, "fixture cut short: not JSON");
    ngx_billing_event_free(&ev);

    is_int(ngx_billing_event_parse(&ev, (const unsigned char *) invoice_paid,
                                   sizeof(invoice_paid) / 2, &err),
           -1, "fixture cut in half: rejected");
    ngx_billing_event_free(&ev);
}


static void
test_types(void)
{
    size_t                i;
    ngx_billing_event_t   ev;

    static const struct {
        const char  *type;
        int          status;
    } types[] = {
        { "invoice.finalized", NGX_BILLING_INVOICE_OPEN },
        { "invoice.paid", NGX_BILLING_INVOICE_PAID },
        { "invoice.voided", NGX_BILLING_INVOICE_VOID },
        { "invoice.marked_uncollectible", NGX_BILLING_INVOICE_UNCOLLECTIBLE },
        { "invoice.created", NGX_BILLING_INVOICE_NONE },
        { "invoice.updated", NGX_BILLING_INVOICE_NONE },
        { "invoice.payment_succeeded", NGX_BILLING_INVOICE_NONE },
        { "invoice.payment_failed", NGX_BILLING_INVOICE_NONE },
        { "invoice.paid.v2", NGX_BILLING_INVOICE_NONE },
        { "Invoice.paid", NGX_BILLING_INVOICE_NONE },
        { "customer.subscription.updated", NGX_BILLING_INVOICE_NONE },
    };

    for (i = 0; i < sizeof(types) / sizeof(types[0]); i++) {

        if (accepts(&ev, fixture_of_type(types[i].type), "%s",
                    types[i].type))
        {
            is_evstr(ev.type, types[i].type, "%s: type", types[i].type);
            is_int(ev.status, types[i].status, "%s: status %s",
                   types[i].type,
                   ngx_billing_invoice_status_name(types[i].status));

            if (types[i].status != NGX_BILLING_INVOICE_NONE) {
                is_evstr(ev.invoice, "in_1Pgc6tB7WZ01zgkWu9fdqL6I",
                         "%s: invoice", types[i].type);

            } else {
                is_int(ev.invoice.len, 0, "%s: invoice not looked at",
                       types[i].type);
            }

            ok(strings_sane(&ev), "%s: strings sane", types[i].type);
        }

        ngx_billing_event_free(&ev);
    }

    /* the minimal form of each handled type */

    for (i = 0; i < 4; i++) {
        if (accepts(&ev, event(types[i].type,
                               "{\"id\":\"in_1\",\"object\":\"invoice\"}"),
                    "minimal %s", types[i].type))
        {
            is_int(ev.status, types[i].status, "minimal %s: status",
                   types[i].type);
            is_evstr(ev.invoice, "in_1", "minimal %s: invoice",
                     types[i].type);
            is_int(ev.customer.len, 0, "minimal %s: no customer",
                   types[i].type);
            is_int(ev.subscription.len, 0, "minimal %s: no subscription",
                   types[i].type);
            is_int(ev.kind.len, 0, "minimal %s: no kind", types[i].type);
            is_int(ev.hosted_invoice_url.len, 0, "minimal %s: no url",
                   types[i].type);
            is_int(ev.currency.len, 0, "minimal %s: no currency",
                   types[i].type);
            is_int(ev.amount_due, -1, "minimal %s: no amount_due",
                   types[i].type);
            is_int(ev.bad_metadata, 0, "minimal %s: no bad metadata",
                   types[i].type);
            ok(strings_sane(&ev), "minimal %s: strings sane", types[i].type);
        }

        ngx_billing_event_free(&ev);
    }
}


static void
test_unhandled(void)
{
    ngx_billing_event_t  ev;

    if (accepts(&ev, event("charge.succeeded",
                           "{\"id\":\"ch_1\",\"object\":\"charge\","
                           "\"customer\":\"cus_1\",\"currency\":\"usd\","
                           "\"metadata\":{\"billing_subscription\":\"a b\"}}"),
                "unhandled charge.succeeded"))
    {
        is_int(ev.status, NGX_BILLING_INVOICE_NONE, "unhandled: status NONE");
        is_evstr(ev.type, "charge.succeeded", "unhandled: type");
        is_int(ev.created, 1721954101, "unhandled: created");
        is_int(ev.invoice.len, 0, "unhandled: no invoice");
        is_int(ev.customer.len, 0, "unhandled: customer not looked at");
        is_int(ev.currency.len, 0, "unhandled: currency not looked at");
        is_int(ev.amount_due, -1, "unhandled: amount_due -1");
        is_int(ev.bad_metadata, 0, "unhandled: metadata not looked at");
        ok(strings_sane(&ev), "unhandled: strings sane, none NULL");
    }

    ngx_billing_event_free(&ev);

    /* an unhandled type's data.object may be anything of an object */

    if (accepts(&ev, event("invoice.created", "{}"),
                "unhandled type, empty data.object"))
    {
        is_int(ev.status, NGX_BILLING_INVOICE_NONE,
               "unhandled type, empty data.object: NONE");
    }

    ngx_billing_event_free(&ev);

    if (accepts(&ev, event("invoice.created",
                           "{\"id\":\"bad id\",\"object\":\"charge\"}"),
                "unhandled type, data.object no invoice"))
    {
        is_int(ev.status, NGX_BILLING_INVOICE_NONE,
               "unhandled type, data.object no invoice: NONE");
    }

    ngx_billing_event_free(&ev);
}


static void
test_envelope(void)
{
    char                 *s, *json;
    ngx_billing_event_t   ev;

#define OBJ  "\"data\":{\"object\":{\"id\":\"in_1\",\"object\":\"invoice\"}}"
#define TYPE "\"type\":\"invoice.paid\""
#define ID   "\"id\":\"evt_1\""
#define CR   "\"created\":1721954101"

    if (accepts(&ev, envelope(ID "," TYPE "," CR "," OBJ), "envelope: all")) {
        is_evstr(ev.id, "evt_1", "envelope: id");
        is_int(ev.status, NGX_BILLING_INVOICE_PAID, "envelope: paid");
    }

    ngx_billing_event_free(&ev);

    /* id */

    rejects(envelope(TYPE "," CR "," OBJ), ERR_ID, "id missing");
    rejects(envelope("\"id\":null," TYPE "," CR "," OBJ), ERR_ID, "id null");
    rejects(envelope("\"id\":1," TYPE "," CR "," OBJ), ERR_ID, "id number");
    rejects(envelope("\"id\":[\"evt_1\"]," TYPE "," CR "," OBJ), ERR_ID,
            "id array");
    rejects(envelope("\"id\":\"\"," TYPE "," CR "," OBJ), ERR_ID, "id empty");
    rejects(envelope("\"id\":\"evt-1\"," TYPE "," CR "," OBJ), ERR_ID,
            "id with '-'");
    rejects(envelope("\"id\":\"evt 1\"," TYPE "," CR "," OBJ), ERR_ID,
            "id with a space");
    rejects(envelope("\"id\":\"evt_1\\n\"," TYPE "," CR "," OBJ), ERR_ID,
            "id with a newline");
    rejects(envelope("\"id\":\"evt_\\u00e9\"," TYPE "," CR "," OBJ), ERR_ID,
            "id with a non-ASCII letter");

    if (accepts(&ev, envelope("\"id\":\"evt_\\u0041\"," TYPE "," CR "," OBJ),
                "id with an escaped ASCII letter"))
    {
        is_evstr(ev.id, "evt_A", "id with an escaped ASCII letter: unescaped");
    }

    ngx_billing_event_free(&ev);

    s = repeat('a', NGX_BILLING_STRIPE_ID_MAX);
    json = malloc(2 * NGX_BILLING_STRIPE_ID_MAX + 256);
    if (json == NULL) {
        abort();
    }

    sprintf(json, "{\"id\":\"%s\"," TYPE "," CR "," OBJ "}", s);

    if (accepts(&ev, json, "id of 255")) {
        is_int(ev.id.len, 255, "id of 255: length");
    }

    ngx_billing_event_free(&ev);

    sprintf(json, "{\"id\":\"%sb\"," TYPE "," CR "," OBJ "}", s);
    rejects(json, ERR_ID, "id of 256");

    free(s);

    /* type */

    rejects(envelope(ID "," CR "," OBJ), ERR_TYPE, "type missing");
    rejects(envelope(ID ",\"type\":null," CR "," OBJ), ERR_TYPE, "type null");
    rejects(envelope(ID ",\"type\":7," CR "," OBJ), ERR_TYPE, "type number");
    rejects(envelope(ID ",\"type\":\"\"," CR "," OBJ), ERR_TYPE, "type empty");

    s = repeat('x', 128);

    sprintf(json, "{" ID ",\"type\":\"%s\"," CR "," OBJ "}", s);

    if (accepts(&ev, json, "type of 128")) {
        is_int(ev.status, NGX_BILLING_INVOICE_NONE, "type of 128: NONE");
    }

    ngx_billing_event_free(&ev);

    sprintf(json, "{" ID ",\"type\":\"%sx\"," CR "," OBJ "}", s);
    rejects(json, ERR_TYPE, "type of 129");

    free(s);
    free(json);

    /* created */

    rejects(envelope(ID "," TYPE "," OBJ), ERR_CREATED, "created missing");
    rejects(envelope(ID "," TYPE ",\"created\":-1," OBJ), ERR_CREATED,
            "created negative");
    rejects(envelope(ID "," TYPE ",\"created\":\"1721954101\"," OBJ),
            ERR_CREATED, "created string");
    rejects(envelope(ID "," TYPE ",\"created\":1721954101.5," OBJ),
            ERR_CREATED, "created real");
    rejects(envelope(ID "," TYPE ",\"created\":1.7e9," OBJ),
            ERR_CREATED, "created in exponent form");
    rejects(envelope(ID "," TYPE ",\"created\":null," OBJ), ERR_CREATED,
            "created null");
    rejects(envelope(ID "," TYPE ",\"created\":true," OBJ), ERR_CREATED,
            "created true");
    rejects(envelope(ID "," TYPE ",\"created\":9223372036854775808," OBJ),
            ERR_JSON, "created over INT64_MAX");

    if (accepts(&ev, envelope(ID "," TYPE ",\"created\":0," OBJ),
                "created 0"))
    {
        is_int(ev.created, 0, "created 0: value");
    }

    ngx_billing_event_free(&ev);

    if (accepts(&ev, envelope(ID "," TYPE
                              ",\"created\":9223372036854775807," OBJ),
                "created INT64_MAX"))
    {
        ok(ev.created == INT64_MAX, "created INT64_MAX: value");
    }

    ngx_billing_event_free(&ev);

    /* data.object */

    rejects(envelope(ID "," TYPE "," CR), ERR_DATA, "data missing");
    rejects(envelope(ID "," TYPE "," CR ",\"data\":null"), ERR_DATA,
            "data null");
    rejects(envelope(ID "," TYPE "," CR ",\"data\":[]"), ERR_DATA,
            "data array");
    rejects(envelope(ID "," TYPE "," CR ",\"data\":\"x\""), ERR_DATA,
            "data string");
    rejects(envelope(ID "," TYPE "," CR ",\"data\":{}"), ERR_DATA,
            "data.object missing");
    rejects(envelope(ID "," TYPE "," CR ",\"data\":{\"object\":null}"),
            ERR_DATA, "data.object null");
    rejects(envelope(ID "," TYPE "," CR ",\"data\":{\"object\":[{}]}"),
            ERR_DATA, "data.object array");
    rejects(envelope(ID "," TYPE "," CR ",\"data\":{\"object\":\"in_1\"}"),
            ERR_DATA, "data.object string");
    rejects(envelope(ID ",\"type\":\"charge.failed\"," CR ",\"data\":{}"),
            ERR_DATA, "data.object missing, unhandled type");
    rejects(envelope(ID "," TYPE "," CR ",\"object\":{\"id\":\"in_1\","
                     "\"object\":\"invoice\"}"),
            ERR_DATA, "object at the top level");

    /* the first failing check gives the message */

    rejects(envelope("\"id\":\"\",\"type\":\"\""), ERR_ID,
            "nothing right: the id first");
    rejects(envelope(ID ",\"type\":\"\""), ERR_TYPE,
            "only id right: the type");

#undef OBJ
#undef TYPE
#undef ID
#undef CR
}


static void
test_invoice_object(void)
{
    char  *s, *obj;

    rejects(event("invoice.paid", "{\"id\":\"ch_1\",\"object\":\"charge\"}"),
            ERR_INVOICE, "handled type, data.object a charge");
    rejects(event("invoice.voided", "{\"id\":\"in_1\"}"),
            ERR_INVOICE, "handled type, data.object without \"object\"");
    rejects(event("invoice.finalized", "{\"id\":\"in_1\",\"object\":null}"),
            ERR_INVOICE, "handled type, \"object\" null");
    rejects(event("invoice.paid", "{\"id\":\"in_1\",\"object\":1}"),
            ERR_INVOICE, "handled type, \"object\" number");
    rejects(event("invoice.paid", "{\"id\":\"in_1\",\"object\":\"Invoice\"}"),
            ERR_INVOICE, "handled type, \"object\" Invoice");
    rejects(event("invoice.paid", "{\"id\":\"in_1\",\"object\":\"invoice \"}"),
            ERR_INVOICE, "handled type, \"object\" with a trailing space");
    rejects(event("invoice.paid",
                  "{\"id\":\"in_1\",\"object\":\"invoiceitem\"}"),
            ERR_INVOICE, "handled type, \"object\" invoiceitem");
    rejects(event("invoice.marked_uncollectible", "{}"),
            ERR_INVOICE, "handled type, empty data.object");

    rejects(event("invoice.paid", "{\"object\":\"invoice\"}"),
            ERR_INV_ID, "invoice id missing");
    rejects(event("invoice.paid", "{\"id\":null,\"object\":\"invoice\"}"),
            ERR_INV_ID, "invoice id null");
    rejects(event("invoice.paid", "{\"id\":12,\"object\":\"invoice\"}"),
            ERR_INV_ID, "invoice id number");
    rejects(event("invoice.paid", "{\"id\":\"\",\"object\":\"invoice\"}"),
            ERR_INV_ID, "invoice id empty");
    rejects(event("invoice.paid", "{\"id\":\"in-1\",\"object\":\"invoice\"}"),
            ERR_INV_ID, "invoice id with '-'");
    rejects(event("invoice.paid", "{\"id\":\"in_1 \",\"object\":\"invoice\"}"),
            ERR_INV_ID, "invoice id with a space");
    rejects(event("invoice.paid",
                  "{\"id\":\"in_1\\\"x\",\"object\":\"invoice\"}"),
            ERR_INV_ID, "invoice id with a quote");
    rejects(event("invoice.paid", "{\"id\":\"in/1\",\"object\":\"invoice\"}"),
            ERR_INV_ID, "invoice id with a slash");
    rejects(event("invoice.paid",
                  "{\"id\":\"in_1:x\",\"object\":\"invoice\"}"),
            ERR_INV_ID, "invoice id with a colon (Redis key separator)");

    s = repeat('i', 256);
    obj = malloc(512);
    if (obj == NULL) {
        abort();
    }

    sprintf(obj, "{\"id\":\"%s\",\"object\":\"invoice\"}", s);
    rejects(event("invoice.paid", obj), ERR_INV_ID, "invoice id of 256");

    free(s);
    free(obj);
}


static void
test_bad_json(void)
{
    size_t                i;
    char                 *deep;
    const char           *err;
    ngx_billing_event_t   ev;

    static const char  *bad[] = {
        "", " ", "not json", "{", "}", "{\"id\":", "{\"id\":\"evt_1\"",
        "{'id':'evt_1'}", "{id:1}", "\"evt_1\"", "42", "null", "true",
        "{\"a\":1,}", "{\"a\":1} x", "{\"a\":1}{\"b\":2}", "{\"a\":01}",
        "{\"a\":NaN}", "{\"a\":\"\\x41\"}", "{\"a\":\"\xff\"}",
        "{\"a\":\"\xc3\"}", "{\"a\":\"\xed\xa0\x80\"}", "{\"a\":\"\\ud800\"}",
        "\xef\xbb\xbf{\"a\":1}", "{\"a\":\"\t\"}",
    };

    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        rejects(bad[i], ERR_JSON, "not JSON, case %zu", i);
    }

    rejects("[]", ERR_OBJECT, "JSON empty array");
    rejects("[{\"id\":\"evt_1\"}]", ERR_OBJECT, "JSON array");

    err = NULL;
    is_int(ngx_billing_event_parse(&ev, (const unsigned char *) "[1]", 3,
                                   &err),
           -1, "array: rejected");
    ok(ev.json != NULL, "array: the document is kept until freed");
    ok(strings_sane(&ev), "array: strings sane");
    ngx_billing_event_free(&ev);
    ok(ev.json == NULL, "array: freed");

    err = NULL;
    is_int(ngx_billing_event_parse(&ev, (const unsigned char *) "", 0, &err),
           -1, "no bytes at all: rejected");
    is_str(err, ERR_JSON, "no bytes at all: not JSON");
    ok(ev.json == NULL && strings_sane(&ev), "no bytes at all: empty event");
    ngx_billing_event_free(&ev);

    /* the length bounds the parse, not a NUL */

    err = NULL;
    is_int(ngx_billing_event_parse(&ev, (const unsigned char *) "{}", 1, &err),
           -1, "length 1 of \"{}\": rejected");
    ngx_billing_event_free(&ev);

    /* a raw NUL byte inside the body */

    {
        static const char  nul[] = "{\"id\":\"evt_1\0\",\"type\":\"x\"}";

        is_int(ngx_billing_event_parse(&ev, (const unsigned char *) nul,
                                       sizeof(nul) - 1, &err),
               -1, "raw NUL inside a string: rejected");
        is_str(err, ERR_JSON, "raw NUL inside a string: not JSON");
        ngx_billing_event_free(&ev);

        is_int(ngx_billing_event_parse(&ev,
                                       (const unsigned char *) invoice_paid,
                                       sizeof(invoice_paid), &err),
               -1, "fixture followed by a NUL byte: rejected");
        ngx_billing_event_free(&ev);
    }

    /* nesting deep enough to exhaust a naive recursive parser */

    deep = malloc(200001);
    if (deep == NULL) {
        abort();
    }

    memset(deep, '[', 100000);
    memset(deep + 100000, ']', 100000);
    deep[200000] = '\0';
    rejects(deep, ERR_JSON, "100000 nested arrays");

    memcpy(deep, "{\"a\":", 5);
    rejects(deep, ERR_JSON, "100000 nested arrays in an object");

    free(deep);
}


static void
test_duplicates(void)
{
    rejects("{\"id\":\"evt_1\",\"id\":\"evt_2\",\"type\":\"invoice.paid\","
            "\"created\":1,\"data\":{\"object\":{\"id\":\"in_1\","
            "\"object\":\"invoice\"}}}",
            ERR_JSON, "duplicate event id");
    rejects("{\"id\":\"evt_1\",\"type\":\"invoice.paid\","
            "\"type\":\"invoice.voided\",\"created\":1,"
            "\"data\":{\"object\":{\"id\":\"in_1\",\"object\":\"invoice\"}}}",
            ERR_JSON, "duplicate type");
    rejects(event("invoice.paid", "{\"id\":\"in_1\",\"id\":\"in_2\","
                                  "\"object\":\"invoice\"}"),
            ERR_JSON, "duplicate invoice id");
    rejects(event("invoice.paid", "{\"id\":\"in_1\",\"object\":\"invoice\","
                                  "\"metadata\":{\"billing_subscription\":"
                                  "\"s1\",\"billing_subscription\":\"s2\"}}"),
            ERR_JSON, "duplicate metadata key");
    rejects(event("invoice.paid", "{\"id\":\"in_1\",\"object\":\"invoice\","
                                  "\"lines\":{\"data\":[{\"a\":1,\"a\":2}]}}"),
            ERR_JSON, "duplicate key deep in an ignored member");
    rejects("{\"id\":\"evt_1\",\"type\":\"invoice.paid\",\"created\":1,"
            "\"data\":{\"object\":{\"id\":\"in_1\",\"object\":\"invoice\"}},"
            "\"data\":{\"object\":{\"id\":\"in_2\",\"object\":\"invoice\"}}}",
            ERR_JSON, "duplicate data");
}


static void
test_nul_escapes(void)
{
    rejects(envelope("\"id\":\"evt_1\\u0000x\",\"type\":\"invoice.paid\","
                     "\"created\":1,\"data\":{\"object\":{\"id\":\"in_1\","
                     "\"object\":\"invoice\"}}"),
            ERR_JSON, "\\u0000 in the event id");
    rejects(envelope("\"id\":\"evt_1\",\"type\":\"invoice.paid\\u0000x\","
                     "\"created\":1,\"data\":{\"object\":{\"id\":\"in_1\","
                     "\"object\":\"invoice\"}}"),
            ERR_JSON, "\\u0000 in the type");
    rejects(envelope("\"id\":\"evt_1\",\"type\":\"invoice.paid\","
                     "\"created\":1,\"data\":{\"object\":{"
                     "\"id\":\"in_1\\u0000\",\"object\":\"invoice\"}}"),
            ERR_JSON, "\\u0000 in the invoice id");
    rejects(paid("\"customer\":\"cus_1\\u0000cus_2\""),
            ERR_JSON, "\\u0000 in the customer");
    rejects(paid("\"metadata\":{\"billing_subscription\":\"s\\u0000x\"}"),
            ERR_JSON, "\\u0000 in metadata");
    rejects(paid("\"metadata\":{\"billing_\\u0000kind\":\"initial\"}"),
            ERR_JSON, "\\u0000 in a metadata key");
    rejects(paid("\"description\":\"\\u0000\""),
            ERR_JSON, "\\u0000 in an ignored member");
}


static void
test_metadata(void)
{
    size_t                i;
    char                 *s, fields[256];
    ngx_billing_event_t   ev;

    static const char  *good_sub[] = {
        "sub_1", "a", "A-b.c_9", "sub-7f3a9c.2024_06", "...", "-",
    };

    static const char  *bad_sub[] = {
        "", "sub 1", "sub/1", "sub:1", "sub*", "sub\\n", "sub\\t",
        "sub\\u00e9", "sub\\\"", "sub{1}", " sub", "sub\\\\",
    };

    static const char  *good_kind[] = { "initial", "period", "final" };

    static const char  *bad_kind[] = {
        "", "Initial", "INITIAL", "periodic", "fina", "finals", "initial ",
        " period", "initial\\n", "first", "initia",
    };

    for (i = 0; i < sizeof(good_sub) / sizeof(good_sub[0]); i++) {
        snprintf(fields, sizeof(fields),
                 "\"metadata\":{\"billing_subscription\":\"%s\"}",
                 good_sub[i]);

        if (accepts(&ev, paid(fields), "subscription '%s'", good_sub[i])) {
            is_evstr(ev.subscription, good_sub[i], "subscription '%s': kept",
                     good_sub[i]);
            is_int(ev.bad_metadata, 0, "subscription '%s': trusted",
                   good_sub[i]);
        }

        ngx_billing_event_free(&ev);
    }

    for (i = 0; i < sizeof(bad_sub) / sizeof(bad_sub[0]); i++) {
        snprintf(fields, sizeof(fields),
                 "\"metadata\":{\"billing_subscription\":\"%s\","
                 "\"billing_kind\":\"period\"}", bad_sub[i]);

        if (accepts(&ev, paid(fields), "bad subscription '%s'", bad_sub[i])) {
            is_int(ev.subscription.len, 0, "bad subscription '%s': dropped",
                   bad_sub[i]);
            is_int(ev.bad_metadata, 1, "bad subscription '%s': bad_metadata",
                   bad_sub[i]);
            is_evstr(ev.kind, "period", "bad subscription '%s': kind kept",
                     bad_sub[i]);
            is_evstr(ev.invoice, "in_1", "bad subscription '%s': invoice",
                     bad_sub[i]);
            ok(strings_sane(&ev), "bad subscription '%s': strings sane",
               bad_sub[i]);
        }

        ngx_billing_event_free(&ev);
    }

    /* the length limit */

    s = repeat('s', NGX_BILLING_SUB_ID_MAX + 1);

    snprintf(fields, sizeof(fields),
             "\"metadata\":{\"billing_subscription\":\"%.64s\"}", s);

    if (accepts(&ev, paid(fields), "subscription of 64")) {
        is_int(ev.subscription.len, 64, "subscription of 64: kept");
        is_int(ev.bad_metadata, 0, "subscription of 64: trusted");
    }

    ngx_billing_event_free(&ev);

    snprintf(fields, sizeof(fields),
             "\"metadata\":{\"billing_subscription\":\"%s\"}", s);

    if (accepts(&ev, paid(fields), "subscription of 65")) {
        is_int(ev.subscription.len, 0, "subscription of 65: dropped");
        is_int(ev.bad_metadata, 1, "subscription of 65: bad_metadata");
    }

    ngx_billing_event_free(&ev);
    free(s);

    /* kinds */

    for (i = 0; i < sizeof(good_kind) / sizeof(good_kind[0]); i++) {
        snprintf(fields, sizeof(fields),
                 "\"metadata\":{\"billing_subscription\":\"sub_1\","
                 "\"billing_kind\":\"%s\"}", good_kind[i]);

        if (accepts(&ev, paid(fields), "kind '%s'", good_kind[i])) {
            is_evstr(ev.kind, good_kind[i], "kind '%s': kept", good_kind[i]);
            is_evstr(ev.subscription, "sub_1", "kind '%s': subscription",
                     good_kind[i]);
            is_int(ev.bad_metadata, 0, "kind '%s': trusted", good_kind[i]);
        }

        ngx_billing_event_free(&ev);
    }

    for (i = 0; i < sizeof(bad_kind) / sizeof(bad_kind[0]); i++) {
        snprintf(fields, sizeof(fields),
                 "\"metadata\":{\"billing_subscription\":\"sub_1\","
                 "\"billing_kind\":\"%s\"}", bad_kind[i]);

        if (accepts(&ev, paid(fields), "bad kind '%s'", bad_kind[i])) {
            is_int(ev.kind.len, 0, "bad kind '%s': dropped", bad_kind[i]);
            is_int(ev.bad_metadata, 1, "bad kind '%s': bad_metadata",
                   bad_kind[i]);
            is_evstr(ev.subscription, "sub_1",
                     "bad kind '%s': subscription kept", bad_kind[i]);
            ok(strings_sane(&ev), "bad kind '%s': strings sane",
               bad_kind[i]);
        }

        ngx_billing_event_free(&ev);
    }

    /* absent metadata, or not ours */

    if (accepts(&ev, paid("\"metadata\":{}"), "metadata empty")) {
        ok(ev.subscription.len == 0 && ev.kind.len == 0 && !ev.bad_metadata,
           "metadata empty: nothing, nothing bad");
    }

    ngx_billing_event_free(&ev);

    if (accepts(&ev, paid("\"metadata\":null"), "metadata null")) {
        ok(ev.subscription.len == 0 && ev.kind.len == 0 && !ev.bad_metadata,
           "metadata null: nothing, nothing bad");
    }

    ngx_billing_event_free(&ev);

    if (accepts(&ev, paid("\"metadata\":[\"billing_subscription\"]"),
                "metadata array"))
    {
        ok(ev.subscription.len == 0 && ev.kind.len == 0 && !ev.bad_metadata,
           "metadata array: ignored");
    }

    ngx_billing_event_free(&ev);

    if (accepts(&ev, paid("\"metadata\":{\"order\":\"42\","
                          "\"Billing_subscription\":\"x y\"}"),
                "metadata of others"))
    {
        ok(ev.subscription.len == 0 && ev.kind.len == 0 && !ev.bad_metadata,
           "metadata of others: ignored");
    }

    ngx_billing_event_free(&ev);

    if (accepts(&ev, paid("\"metadata\":{\"billing_subscription\":42,"
                          "\"billing_kind\":null}"),
                "metadata values not strings"))
    {
        ok(ev.subscription.len == 0 && ev.kind.len == 0,
           "metadata values not strings: not taken");
    }

    ngx_billing_event_free(&ev);

    /* whose marketplace: its name, "" when absent or not a string */

    if (accepts(&ev, paid("\"metadata\":{\"billing_subscription\":\"s-1\","
                          "\"billing_marketplace\":\"acme\"}"),
                "a marketplace's invoice"))
    {
        ok(ev.marketplace.len == 4
           && memcmp(ev.marketplace.data, "acme", 4) == 0,
           "a marketplace's invoice: its name");
    }

    ngx_billing_event_free(&ev);

    if (accepts(&ev, paid("\"metadata\":{\"billing_subscription\":\"s-1\"}"),
                "the default marketplace's invoice"))
    {
        ok(ev.marketplace.len == 0 && ev.marketplace.data != NULL,
           "the default marketplace's invoice: \"\"");
    }

    ngx_billing_event_free(&ev);

    if (accepts(&ev, paid("\"metadata\":{\"billing_marketplace\":7}"),
                "a marketplace not a string"))
    {
        is_int(ev.marketplace.len, 0, "a marketplace not a string: \"\"");
    }

    ngx_billing_event_free(&ev);

    /* the subscription's own metadata, elsewhere, is not the invoice's */

    if (accepts(&ev, paid("\"parent\":{\"subscription_details\":{"
                          "\"metadata\":{\"billing_subscription\":\"x\"}}}"),
                "metadata of the parent"))
    {
        is_int(ev.subscription.len, 0, "metadata of the parent: not taken");
    }

    ngx_billing_event_free(&ev);
}


static void
test_url(void)
{
    size_t                i, n;
    char                 *url, *fields;
    ngx_billing_event_t   ev;

    static const char  *good[] = {
        "https://invoice.stripe.com/i/acct_1/test_2?s=ap",
        "https://a", "http://a", "https://invoice.stripe.com/i/%41~!$&'()*+",
    };

    static const char  *bad[] = {
        "", "https://", "http://", "https:/x", "ftp://invoice.stripe.com/i",
        "javascript:alert(1)", "data:text/html,x", "//invoice.stripe.com/i",
        "invoice.stripe.com/i", "HTTPS://INVOICE.STRIPE.COM/I",
        "https://a b", "https://a\\tb", "https://a\\nb", "https://a\\r\\nX: y",
        "https://\\u00e9", "https://a\\u007f", " https://a", "https://a ",
    };

    for (i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        char  f[256];

        snprintf(f, sizeof(f), "\"hosted_invoice_url\":\"%s\"", good[i]);

        if (accepts(&ev, paid(f), "url '%s'", good[i])) {
            is_evstr(ev.hosted_invoice_url, good[i], "url '%s': kept",
                     good[i]);
        }

        ngx_billing_event_free(&ev);
    }

    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char  f[256];

        snprintf(f, sizeof(f), "\"hosted_invoice_url\":\"%s\"", bad[i]);

        if (accepts(&ev, paid(f), "bad url '%s'", bad[i])) {
            is_int(ev.hosted_invoice_url.len, 0, "bad url '%s': dropped",
                   bad[i]);
            is_int(ev.bad_metadata, 0, "bad url '%s': not metadata", bad[i]);
            ok(strings_sane(&ev), "bad url '%s': strings sane", bad[i]);
        }

        ngx_billing_event_free(&ev);
    }

    if (accepts(&ev, paid("\"hosted_invoice_url\":null"), "url null")) {
        is_int(ev.hosted_invoice_url.len, 0, "url null: none");
    }

    ngx_billing_event_free(&ev);

    if (accepts(&ev, paid("\"hosted_invoice_url\":[\"https://a\"]"),
                "url array"))
    {
        is_int(ev.hosted_invoice_url.len, 0, "url array: none");
    }

    ngx_billing_event_free(&ev);

    /* the length limit */

    url = malloc(NGX_BILLING_URL_MAX + 2);
    fields = malloc(NGX_BILLING_URL_MAX + 64);
    if (url == NULL || fields == NULL) {
        abort();
    }

    for (n = NGX_BILLING_URL_MAX; n <= NGX_BILLING_URL_MAX + 1; n++) {
        memcpy(url, "https://", 8);
        memset(url + 8, 'u', n - 8);
        url[n] = '\0';

        snprintf(fields, NGX_BILLING_URL_MAX + 64,
                 "\"hosted_invoice_url\":\"%s\"", url);

        if (accepts(&ev, paid(fields), "url of %zu", n)) {
            is_int(ev.hosted_invoice_url.len,
                   n <= NGX_BILLING_URL_MAX ? n : 0,
                   "url of %zu: %s", n,
                   n <= NGX_BILLING_URL_MAX ? "kept" : "dropped");
        }

        ngx_billing_event_free(&ev);
    }

    free(url);
    free(fields);
}


static void
test_currency_amount_customer(void)
{
    size_t                i;
    char                  f[256];
    ngx_billing_event_t   ev;

    static const char  *good_cur[] = { "usd", "eur", "jpy", "zzz" };

    static const char  *bad_cur[] = {
        "", "USD", "Usd", "us", "usdd", "u1d", "us ", "\\u00e9ur", "u-d",
    };

    static const struct {
        const char  *json;
        int64_t      value;
    } amounts[] = {
        { "1000", 1000 },
        { "0", 0 },
        { "9223372036854775807", INT64_MAX },
        { "-1", -1 },
        { "-1000", -1 },
        { "10.5", -1 },
        { "1e3", -1 },
        { "\"1000\"", -1 },
        { "null", -1 },
        { "true", -1 },
        { "{}", -1 },
    };

    static const struct {
        const char  *json;
        const char  *value;
    } customers[] = {
        { "\"cus_QXg1o8vcGmoR32\"", "cus_QXg1o8vcGmoR32" },
        { "\"cus_1\"", "cus_1" },
        { "null", "" },
        { "\"\"", "" },
        { "\"cus-1\"", "" },
        { "\"cus_1 \"", "" },
        { "42", "" },
        { "{\"id\":\"cus_1\",\"object\":\"customer\"}", "" },
    };

    for (i = 0; i < sizeof(good_cur) / sizeof(good_cur[0]); i++) {
        snprintf(f, sizeof(f), "\"currency\":\"%s\"", good_cur[i]);

        if (accepts(&ev, paid(f), "currency '%s'", good_cur[i])) {
            is_evstr(ev.currency, good_cur[i], "currency '%s': kept",
                     good_cur[i]);
        }

        ngx_billing_event_free(&ev);
    }

    for (i = 0; i < sizeof(bad_cur) / sizeof(bad_cur[0]); i++) {
        snprintf(f, sizeof(f), "\"currency\":\"%s\"", bad_cur[i]);

        if (accepts(&ev, paid(f), "bad currency '%s'", bad_cur[i])) {
            is_int(ev.currency.len, 0, "bad currency '%s': dropped",
                   bad_cur[i]);
            ok(strings_sane(&ev), "bad currency '%s': strings sane",
               bad_cur[i]);
        }

        ngx_billing_event_free(&ev);
    }

    if (accepts(&ev, paid("\"currency\":840"), "currency number")) {
        is_int(ev.currency.len, 0, "currency number: none");
    }

    ngx_billing_event_free(&ev);

    for (i = 0; i < sizeof(amounts) / sizeof(amounts[0]); i++) {
        snprintf(f, sizeof(f), "\"amount_due\":%s", amounts[i].json);

        if (accepts(&ev, paid(f), "amount_due %s", amounts[i].json)) {
            is_int(ev.amount_due, amounts[i].value, "amount_due %s: %lld",
                   amounts[i].json, (long long) amounts[i].value);
        }

        ngx_billing_event_free(&ev);
    }

    {
        static const struct {
            const char  *json;
            int64_t      value;
        } dues[] = {
            { "1767225600", 1767225600 }, { "null", 0 }, { "0", 0 },
            { "-5", 0 }, { "\"1767225600\"", 0 }, { "1.5", 0 },
        };

        for (i = 0; i < sizeof(dues) / sizeof(dues[0]); i++) {
            snprintf(f, sizeof(f), "\"due_date\":%s", dues[i].json);

            if (accepts(&ev, paid(f), "due_date %s", dues[i].json)) {
                is_int(ev.due_date, dues[i].value, "due_date %s: %lld",
                       dues[i].json, (long long) dues[i].value);
            }

            ngx_billing_event_free(&ev);
        }
    }

    for (i = 0; i < sizeof(customers) / sizeof(customers[0]); i++) {
        snprintf(f, sizeof(f), "\"customer\":%s", customers[i].json);

        if (accepts(&ev, paid(f), "customer %s", customers[i].json)) {
            is_evstr(ev.customer, customers[i].value, "customer %s: '%s'",
                     customers[i].json, customers[i].value);
            ok(strings_sane(&ev), "customer %s: strings sane",
               customers[i].json);
        }

        ngx_billing_event_free(&ev);
    }
}


static void
test_validators(void)
{
    char  *s;

    ok(ngx_billing_stripe_id_valid("in_1", 4), "stripe id: in_1");
    ok(ngx_billing_stripe_id_valid("AZaz09_", 7), "stripe id: all classes");
    ok(!ngx_billing_stripe_id_valid("", 0), "stripe id: empty");
    ok(!ngx_billing_stripe_id_valid("in_1", 0), "stripe id: length 0");
    ok(!ngx_billing_stripe_id_valid("in-1", 4), "stripe id: '-'");
    ok(!ngx_billing_stripe_id_valid("in.1", 4), "stripe id: '.'");
    ok(!ngx_billing_stripe_id_valid("in_1\0", 5), "stripe id: NUL");
    ok(!ngx_billing_stripe_id_valid("in_\xc3\xa9", 5), "stripe id: 8 bit");
    ok(ngx_billing_stripe_id_valid("in_1 tail", 4),
       "stripe id: only len bytes are looked at");

    ok(ngx_billing_sub_id_valid("a.b-c_D9", 8), "sub id: all classes");
    ok(!ngx_billing_sub_id_valid("", 0), "sub id: empty");
    ok(!ngx_billing_sub_id_valid("a b", 3), "sub id: space");
    ok(!ngx_billing_sub_id_valid("a:b", 3), "sub id: ':'");
    ok(!ngx_billing_sub_id_valid("a/b", 3), "sub id: '/'");
    ok(!ngx_billing_sub_id_valid(".", 1), "sub id: '.'");
    ok(!ngx_billing_sub_id_valid("..", 2), "sub id: '..'");
    ok(ngx_billing_sub_id_valid("...", 3), "sub id: '...' is one");
    ok(ngx_billing_sub_id_valid(".a", 2), "sub id: '.a' is one");
    ok(!ngx_billing_sub_id_valid("a\0b", 3), "sub id: NUL");
    ok(!ngx_billing_sub_id_valid("a\xff", 2), "sub id: 0xff");

    s = repeat('x', NGX_BILLING_STRIPE_ID_MAX + 1);
    ok(ngx_billing_stripe_id_valid(s, NGX_BILLING_STRIPE_ID_MAX),
       "stripe id: 255");
    ok(!ngx_billing_stripe_id_valid(s, NGX_BILLING_STRIPE_ID_MAX + 1),
       "stripe id: 256");
    ok(ngx_billing_sub_id_valid(s, NGX_BILLING_SUB_ID_MAX), "sub id: 64");
    ok(!ngx_billing_sub_id_valid(s, NGX_BILLING_SUB_ID_MAX + 1),
       "sub id: 65");
    free(s);
}


/* ngx_billing_json_compact(): what it leaves, and that jansson agrees */

static void
compacts(const char *in, size_t len, const char *out, size_t out_len,
    const char *name)
{
    size_t          n;
    unsigned char  *buf;

    buf = malloc(len ? len : 1);
    if (buf == NULL) {
        abort();
    }

    n = ngx_billing_json_compact(buf, (const unsigned char *) in, len);
    is_mem(buf, n, out, out_len, "compact: %s", name);

    free(buf);
}


/* jansson's answer from the body and from its compacted copy */

static int
same_parse(const char *in, size_t len)
{
    int                   rc, rc2, same;
    size_t                n;
    const char           *err, *err2;
    unsigned char        *buf;
    ngx_billing_event_t   ev, ev2;

    buf = malloc(len ? len : 1);
    if (buf == NULL) {
        abort();
    }

    n = ngx_billing_json_compact(buf, (const unsigned char *) in, len);

    err = NULL;
    err2 = NULL;
    rc = ngx_billing_event_parse_json(&ev, (const unsigned char *) in, len,
                                      &err);
    rc2 = ngx_billing_event_parse_json(&ev2, buf, n, &err2);

    same = rc == rc2 && err == err2
           && (ev.json == NULL) == (ev2.json == NULL)
           && (ev.json == NULL || json_equal(ev.json, ev2.json))
           && ev.status == ev2.status && ev.created == ev2.created
           && ev.subscription.len == ev2.subscription.len
           && ev.hosted_invoice_url.len == ev2.hosted_invoice_url.len;

    ngx_billing_event_free(&ev);
    ngx_billing_event_free(&ev2);
    free(buf);

    return same;
}


static void
test_compact(void)
{
    size_t   i;

    static const char  *cases[] = {
        "", " ", "not json", "{", "}", "{\"id\":", "[1 2]", "[1\n\t 2]",
        "[- 1]", "[1. ]", "[tru e]", "[\"a\" \"b\"]", "{\"a\" 1}",
        "{\"a\":1} x", " {} ", "\f{}", "{\"a\":\"\t\"}", "{\"a\":\"x\\\" \"}",
        "{\"a\":\"\\", "{\"a\":\"\\u00 1\"}", "{\"a\": \xc3 \xa9}",
        "{\"a\":\"\xc3\xa9 \"}", "{\"a\" : 1 , \"a\" : 2}",
        "[ 1 , 2 , { \"b\" : [ ] } ]\r\n",
        "{ \"id\" : \"evt_1\" , \"type\" : \"invoice.paid\" , "
            "\"created\" : 1 , \"data\" : { \"object\" : { \"object\" : "
            "\"invoice\" , \"id\" : \"in_1\" } } }",
    };

    compacts(CS("{ \"a\" : 1 , \"b\" : [ 1 , 2 ] }"),
             CS("{\"a\":1,\"b\":[1,2]}"), "around every structural character");
    compacts(CS(" \n\t\r{}\n "), CS("{}"), "at both ends");
    compacts(CS("[1 \n\t 2]"), CS("[1 2]"), "between two numbers: one space");
    compacts(CS("[\"a\"  \"b\"]"), CS("[\"a\" \"b\"]"),
             "between two strings: one space");
    compacts(CS("{\"a b\" : \" x \\\" y \"}"), CS("{\"a b\":\" x \\\" y \"}"),
             "strings as they are, escaped quote included");
    compacts(CS("{\"a\":\"\\\\\" }"), CS("{\"a\":\"\\\\\"}"),
             "an escaped backslash ends before the quote");
    compacts(CS("[\"abc  "), CS("[\"abc  "), "an unterminated string");
    compacts(CS("{} x"), CS("{}x"), "after the document");
    compacts(CS("\f {} \f"), CS("\f{}\f"), "a form feed is not whitespace");
    compacts(CS("[1, \0 2]"), CS("[1,\0 2]"), "a NUL byte");

    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        ok(same_parse(cases[i], strlen(cases[i])),
           "compact: the same parse, case %zu", i);
    }

    ok(same_parse(invoice_paid, sizeof(invoice_paid) - 1),
       "compact: the same parse, the fixture");
    ok(same_parse(invoice_paid, sizeof(invoice_paid)),
       "compact: the same parse, the fixture and a NUL");
}

/*
 * ngx_billing_event_scan(): where it answers, jansson's answer; where it
 * cannot, it asks jansson (and ngx_billing_event_parse() gives jansson's)
 */

static int
str_eq(const ngx_billing_str_t *a, const ngx_billing_str_t *b)
{
    return a->len == b->len
           && (a->len == 0 || memcmp(a->data, b->data, a->len) == 0);
}


static int
same_event(const ngx_billing_event_t *a, const ngx_billing_event_t *b)
{
    return str_eq(&a->id, &b->id) && str_eq(&a->type, &b->type)
           && a->created == b->created && a->status == b->status
           && str_eq(&a->invoice, &b->invoice)
           && str_eq(&a->customer, &b->customer)
           && str_eq(&a->subscription, &b->subscription)
           && str_eq(&a->kind, &b->kind)
           && str_eq(&a->marketplace, &b->marketplace)
           && str_eq(&a->hosted_invoice_url, &b->hosted_invoice_url)
           && str_eq(&a->currency, &b->currency)
           && a->amount_due == b->amount_due && a->due_date == b->due_date
           && a->bad_metadata == b->bad_metadata;
}


#define SCAN_DECIDES  0
#define SCAN_ASKS     1

static void
scans(const char *in, size_t len, int expect, const char *name)
{
    int                   rc, ref, whole;
    const char           *err, *ref_err, *whole_err;
    ngx_billing_event_t   ev, ref_ev, whole_ev;

    err = ref_err = whole_err = NULL;

    ref = ngx_billing_event_parse_json(&ref_ev, (const unsigned char *) in,
                                       len, &ref_err);
    rc = ngx_billing_event_scan(&ev, (const unsigned char *) in, len, &err);
    whole = ngx_billing_event_parse(&whole_ev, (const unsigned char *) in,
                                    len, &whole_err);

    if (expect == SCAN_ASKS) {
        ok(rc == NGX_BILLING_EVENT_ASK_JANSSON, "scan asks jansson: %s",
           name);

    } else if (!ok(rc != NGX_BILLING_EVENT_ASK_JANSSON,
                   "scan answers: %s", name))
    {
        diag("jansson: rc %d, err '%s'", ref, ref_err ? ref_err : "NULL");
    }

    if (rc != NGX_BILLING_EVENT_ASK_JANSSON) {
        if (!ok(rc == ref && (rc == 0 || err == ref_err)
                && (rc != 0 || same_event(&ev, &ref_ev)),
                "scan: jansson's answer: %s", name))
        {
            diag("scan rc %d err '%s', jansson rc %d err '%s'", rc,
                 err ? err : "", ref, ref_err ? ref_err : "");
        }

        ok(ref_ev.json != NULL && json_is_object((json_t *) ref_ev.json),
           "scan: answers only for a document jansson takes: %s", name);
    }

    ok(whole == ref && (whole == 0 || whole_err == ref_err)
       && (whole != 0 || same_event(&whole_ev, &ref_ev)),
       "parse: jansson's answer: %s", name);

    ngx_billing_event_free(&ev);
    ngx_billing_event_free(&ref_ev);
    ngx_billing_event_free(&whole_ev);
}


#define SCAN_EVENT(obj)                                                      \
    "{\"id\":\"evt_1\",\"type\":\"invoice.paid\",\"created\":1700000000,"    \
    "\"data\":{\"object\":{\"object\":\"invoice\",\"id\":\"in_1\","          \
    "\"customer\":\"cus_1\",\"amount_due\":1500,\"currency\":\"usd\","       \
    "\"metadata\":{\"billing_subscription\":\"sub-1\","                      \
    "\"billing_kind\":\"initial\"}" obj "}}}"

static void
test_scan(void)
{
    size_t  i;

    static const struct {
        const char  *json;
        int          expect;
        const char  *name;
    } cases[] = {
        { SCAN_EVENT(""), SCAN_DECIDES, "an invoice event" },
        { "{\"id\":\"evt_bench\",\"object\":\"event\","
          "\"type\":\"invoice.paid\",\"created\":1,"
          "\"data\":{\"object\":{\"id\":\"in_bench\","
          "\"object\":\"invoice\",\"status\":\"paid\",\"customer\":"
          "\"cus_bench\",\"amount_due\":1500,\"currency\":\"usd\","
          "\"metadata\":{}}}}", SCAN_DECIDES, "bench/run's event" },
        { " \r\n\t{ \"id\" : \"evt_1\" , \"type\" : \"customer.created\" ,"
          " \"created\" : 0 , \"data\" : { \"object\" : { } } } \n",
          SCAN_DECIDES, "whitespace everywhere jansson skips it" },
        { "{\"id\":\"evt_1\",\"type\":\"invoice.paid\",\"created\":1}",
          SCAN_DECIDES, "valid JSON, no data: the same error" },
        { "{\"type\":\"invoice.paid\"}", SCAN_DECIDES, "no id" },
        { "{\"id\":\"evt 1\"}", SCAN_DECIDES, "an id that is no Stripe id" },
        { "{\"id\":\"evt_1\",\"type\":\"invoice.paid\",\"created\":1.5}",
          SCAN_DECIDES, "a real created" },
        { "{\"id\":\"evt_1\",\"type\":\"invoice.paid\",\"created\":-0,"
          "\"data\":{\"object\":{}}}", SCAN_DECIDES, "created -0" },
        { "{\"id\":\"evt_1\",\"type\":\"invoice.paid\",\"created\":-1}",
          SCAN_DECIDES, "a negative created" },
        { "{\"id\":\"evt_1\",\"type\":\"invoice.paid\","
          "\"created\":999999999999999999,\"data\":{\"object\":{}}}",
          SCAN_DECIDES, "18 digits" },
        { "{\"id\":\"evt_1\",\"type\":\"invoice.paid\",\"created\":1,"
          "\"data\":[]}", SCAN_DECIDES, "data an array" },
        { "{\"id\":\"evt_1\",\"type\":\"invoice.paid\",\"created\":1,"
          "\"data\":{\"object\":\"x\"}}", SCAN_DECIDES,
          "data.object a string" },
        { "{\"id\":\"evt_1\",\"type\":\"invoice.paid\",\"created\":1,"
          "\"data\":{\"object\":{\"object\":\"invoice\",\"id\":\"in_1\","
          "\"amount_due\":10.25,\"due_date\":true,\"currency\":null,"
          "\"metadata\":[]}}}", SCAN_DECIDES, "values of other kinds" },
        { SCAN_EVENT(",\"description\":\"a\\\"b\\\\c\\/d\\b\\f\\n\\r\\t"
                     "\\u00e9\\uD83D\\uDE00\\uffff\""),
          SCAN_DECIDES, "every escape, in a value not read" },
        { SCAN_EVENT(",\"d\":\"\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80 "
                     "\xf4\x8f\xbf\xbf \xef\xbf\xbf \xee\x80\x80 \x7f\""),
          SCAN_DECIDES, "UTF-8 at its bounds" },
        { SCAN_EVENT(",\"n\":[0,-0,1,-1,0.5,-12.25,123456789012345678,"
                     "true,false,null,[],{},[[{}]],{\"a\":{\"b\":[]}}]"),
          SCAN_DECIDES, "every kind of value" },
        { SCAN_EVENT(",\"lines\":{\"data\":[{\"id\":\"il_1\",\"id2\":1},"
                     "{\"id\":\"il_2\"}],\"object\":\"list\"}"),
          SCAN_DECIDES, "a key again, in other objects" },
        { SCAN_EVENT(",\"\":1"), SCAN_DECIDES, "an empty key" },

        { "", SCAN_ASKS, "nothing" },
        { "   ", SCAN_ASKS, "whitespace only" },
        { "[]", SCAN_ASKS, "an array" },
        { "\"x\"", SCAN_ASKS, "a string" },
        { "\xef\xbb\xbf{}", SCAN_ASKS, "a byte order mark" },
        { "{", SCAN_ASKS, "an open object" },
        { "{}x", SCAN_ASKS, "after the document" },
        { "{}{}", SCAN_ASKS, "two documents" },
        { "{\"a\":1,}", SCAN_ASKS, "a trailing comma" },
        { "{\"a\":[1,]}", SCAN_ASKS, "a trailing comma in an array" },
        { "{\"a\":[,1]}", SCAN_ASKS, "a leading comma" },
        { "{\"a\" 1}", SCAN_ASKS, "no colon" },
        { "{\"a\":}", SCAN_ASKS, "no value" },
        { "{\"a\":1 \"b\":2}", SCAN_ASKS, "no comma" },
        { "{'a':1}", SCAN_ASKS, "single quotes" },
        { "{a:1}", SCAN_ASKS, "a bare key" },
        { "{\"a\":\"\\x\"}", SCAN_ASKS, "an unknown escape" },
        { "{\"a\":\"\\u12G4\"}", SCAN_ASKS, "a bad \\u escape" },
        { "{\"a\":\"\\u123\"}", SCAN_ASKS, "a short \\u escape" },
        { "{\"a\":\"\\u0000\"}", SCAN_ASKS, "\\u0000" },
        { "{\"a\":\"\\ud800\"}", SCAN_ASKS, "a lone high surrogate" },
        { "{\"a\":\"\\udc00\"}", SCAN_ASKS, "a lone low surrogate" },
        { "{\"a\":\"\\ud800\\u0041\"}", SCAN_ASKS, "a broken pair" },
        { "{\"a\":\"\\ud800\\ud800\"}", SCAN_ASKS, "two high halves" },
        { "{\"a\":\"\t\"}", SCAN_ASKS, "a raw tab in a string" },
        { "{\"a\":\"\n\"}", SCAN_ASKS, "a raw newline in a string" },
        { "{\"a\":\"\x1f\"}", SCAN_ASKS, "a control character" },
        { "{\"a\":\"\xc0\x80\"}", SCAN_ASKS, "overlong NUL" },
        { "{\"a\":\"\xc1\xbf\"}", SCAN_ASKS, "overlong 2 bytes" },
        { "{\"a\":\"\x80\"}", SCAN_ASKS, "a lone continuation byte" },
        { "{\"a\":\"\xc3\"}", SCAN_ASKS, "a cut sequence" },
        { "{\"a\":\"\xc3\x28\"}", SCAN_ASKS, "a bad continuation" },
        { "{\"a\":\"\xe0\x80\x80\"}", SCAN_ASKS, "overlong 3 bytes" },
        { "{\"a\":\"\xed\xa0\x80\"}", SCAN_ASKS, "an encoded surrogate" },
        { "{\"a\":\"\xe2\x82\"}", SCAN_ASKS, "a cut 3-byte sequence" },
        { "{\"a\":\"\xf0\x80\x80\x80\"}", SCAN_ASKS, "overlong 4 bytes" },
        { "{\"a\":\"\xf4\x90\x80\x80\"}", SCAN_ASKS, "past U+10FFFF" },
        { "{\"a\":\"\xf5\x80\x80\x80\"}", SCAN_ASKS, "F5" },
        { "{\"a\":\"\xff\"}", SCAN_ASKS, "FF" },
        { "{\"a\":\"x", SCAN_ASKS, "an open string" },
        { "{\"a\":01}", SCAN_ASKS, "a leading zero" },
        { "{\"a\":1.}", SCAN_ASKS, "no fraction" },
        { "{\"a\":.5}", SCAN_ASKS, "no integer part" },
        { "{\"a\":-}", SCAN_ASKS, "a minus alone" },
        { "{\"a\":+1}", SCAN_ASKS, "a plus" },
        { "{\"a\":1e5}", SCAN_ASKS, "an exponent" },
        { "{\"a\":1.5E-3}", SCAN_ASKS, "an exponent after a fraction" },
        { "{\"a\":1234567890123456789}", SCAN_ASKS, "19 digits" },
        { "{\"a\":99999999999999999999}", SCAN_ASKS, "too big an integer" },
        { "{\"a\":1x}", SCAN_ASKS, "a number and a letter" },
        { "{\"a\":truex}", SCAN_ASKS, "truex" },
        { "{\"a\":True}", SCAN_ASKS, "True" },
        { "{\"a\":nul}", SCAN_ASKS, "nul" },
        { "{\"a\":1,\"a\":2}", SCAN_ASKS, "a duplicate key" },
        { "{\"a\":{\"b\":1,\"c\":2,\"b\":3}}", SCAN_ASKS,
          "a duplicate key, nested" },
        { "{\"a\":[{\"b\":1},{\"b\":1,\"b\":1}]}", SCAN_ASKS,
          "a duplicate key in an array's object" },
        { "{\"id\":\"evt_1\",\"\\u0069d\":\"evt_2\"}", SCAN_ASKS,
          "a key with an escape (the same key)" },
        { "{\"a\\\"b\":1}", SCAN_ASKS, "a key with an escape" },
        { "{\"id\":\"evt\\u005f1\",\"type\":\"invoice.paid\",\"created\":1,"
          "\"data\":{\"object\":{}}}", SCAN_ASKS,
          "an escape in a value read" },
        { SCAN_EVENT(",\"a\":\"\\u0000\""), SCAN_ASKS,
          "an event with \\u0000 in a value not read" },
    };

    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        scans(cases[i].json, strlen(cases[i].json), cases[i].expect,
              cases[i].name);
    }

    scans(invoice_paid, sizeof(invoice_paid) - 1, SCAN_DECIDES,
          "the fixture, pretty-printed");
    scans(invoice_paid, sizeof(invoice_paid), SCAN_ASKS,
          "the fixture and a NUL");
    scans("{\"a\":\"\0\"}", 8, SCAN_ASKS, "a NUL in a string");
    scans("{\"a\":1}\0", 8, SCAN_ASKS, "a NUL after the document");
}


static void
test_scan_limits(void)
{
    size_t  i, n;

    /* 32 levels are read, 33 are jansson's to judge */

    n = 0;
    n += sprintf(buf + n, "{\"a\":");

    for (i = 0; i < 30; i++) {
        n += sprintf(buf + n, "[");
    }

    n += sprintf(buf + n, "{}");

    for (i = 0; i < 30; i++) {
        n += sprintf(buf + n, "]");
    }

    n += sprintf(buf + n, "}");
    scans(buf, n, SCAN_DECIDES, "32 levels");

    n = 0;
    n += sprintf(buf + n, "{\"a\":");

    for (i = 0; i < 32; i++) {
        n += sprintf(buf + n, "[");
    }

    for (i = 0; i < 32; i++) {
        n += sprintf(buf + n, "]");
    }

    n += sprintf(buf + n, "}");
    scans(buf, n, SCAN_ASKS, "33 levels");

    /* 256 keys open at once are checked, one more is jansson's */

    n = sprintf(buf, "{");

    for (i = 0; i < 256; i++) {
        n += sprintf(buf + n, "%s\"k%zu\":1", i ? "," : "", i);
    }

    n += sprintf(buf + n, "}");
    scans(buf, n, SCAN_DECIDES, "256 keys");

    n = sprintf(buf, "{\"a\":{");

    for (i = 0; i < 256; i++) {
        n += sprintf(buf + n, "%s\"k%zu\":1", i ? "," : "", i);
    }

    n += sprintf(buf + n, "}}");
    scans(buf, n, SCAN_ASKS, "257 keys open at once");

    /* and every pair of 256 keys compared: the last a copy of each */

    for (i = 0; i < 200; i += 37) {
        size_t  j;

        n = sprintf(buf, "{");

        for (j = 0; j < 200; j++) {
            n += sprintf(buf + n, "%s\"key_%zu\":1", j ? "," : "", j);
        }

        n += sprintf(buf + n, ",\"key_%zu\":2}", i);
        scans(buf, n, SCAN_ASKS, "a duplicate among 200 keys");
    }
}


int
main(void)
{
    test_fixture();
    test_types();
    test_unhandled();
    test_envelope();
    test_invoice_object();
    test_bad_json();
    test_duplicates();
    test_nul_escapes();
    test_metadata();
    test_url();
    test_currency_amount_customer();
    test_validators();
    test_compact();
    test_scan();
    test_scan_limits();

    return done_testing();
}
