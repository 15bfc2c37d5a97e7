
/*
 * libFuzzer target: Stripe event parsing.
 *
 * The input is the webhook body.  Every string the parser returns is read
 * byte by byte within its length, the invariants below are checked (a
 * violation aborts), and the event is released.
 */


#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "ngx_billing_event.h"
#include "ngx_billing_state.h"


#define fuzz_assert(cond)                                                    \
    do {                                                                     \
        if (!(cond)) {                                                       \
            fprintf(stderr, "%s:%d: invariant failed: %s\n", __FILE__,       \
                    __LINE__, #cond);                                        \
            abort();                                                         \
        }                                                                    \
    } while (0)


int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);


static volatile unsigned  fuzz_sink;


static void
fuzz_touch(const ngx_billing_str_t *s)
{
    size_t    i;
    unsigned  sum;

    /*
     * never NULL, read to the last byte (in the body when the scan
     * answered, so that a read past it is caught; in jansson's values
     * otherwise)
     */

    fuzz_assert(s->data != NULL);

    sum = 0;

    for (i = 0; i < s->len; i++) {
        sum += (unsigned char) s->data[i];
    }

    fuzz_sink += sum;
}


static void
fuzz_touch_event(const ngx_billing_event_t *ev)
{
    fuzz_touch(&ev->id);
    fuzz_touch(&ev->type);
    fuzz_touch(&ev->invoice);
    fuzz_touch(&ev->customer);
    fuzz_touch(&ev->subscription);
    fuzz_touch(&ev->kind);
    fuzz_touch(&ev->marketplace);
    fuzz_touch(&ev->hosted_invoice_url);
    fuzz_touch(&ev->currency);
}


static int
fuzz_str_eq(const ngx_billing_str_t *s, const char *c)
{
    return s->len == strlen(c) && memcmp(s->data, c, s->len) == 0;
}


static int
fuzz_same_str(const ngx_billing_str_t *a, const ngx_billing_str_t *b)
{
    return a->len == b->len
           && (a->len == 0 || memcmp(a->data, b->data, a->len) == 0);
}


/* every field the module reads, the same from both parsers */

static void
fuzz_same_event(const ngx_billing_event_t *a, const ngx_billing_event_t *b)
{
    fuzz_assert(fuzz_same_str(&a->id, &b->id));
    fuzz_assert(fuzz_same_str(&a->type, &b->type));
    fuzz_assert(a->created == b->created);
    fuzz_assert(a->status == b->status);
    fuzz_assert(fuzz_same_str(&a->invoice, &b->invoice));
    fuzz_assert(fuzz_same_str(&a->customer, &b->customer));
    fuzz_assert(fuzz_same_str(&a->subscription, &b->subscription));
    fuzz_assert(fuzz_same_str(&a->kind, &b->kind));
    fuzz_assert(fuzz_same_str(&a->marketplace, &b->marketplace));
    fuzz_assert(fuzz_same_str(&a->hosted_invoice_url,
                              &b->hosted_invoice_url));
    fuzz_assert(fuzz_same_str(&a->currency, &b->currency));
    fuzz_assert(a->amount_due == b->amount_due);
    fuzz_assert(a->due_date == b->due_date);
    fuzz_assert(a->bad_metadata == b->bad_metadata);
}


static void
fuzz_check_event(const ngx_billing_event_t *ev)
{
    size_t  i;

    fuzz_assert(ngx_billing_stripe_id_valid(ev->id.data, ev->id.len));
    fuzz_assert(ev->type.len >= 1 && ev->type.len <= 128);
    fuzz_assert(memchr(ev->type.data, '\0', ev->type.len) == NULL);
    fuzz_assert(ev->created >= 0);

    fuzz_assert(ev->status
                == ngx_billing_invoice_status_of_event(ev->type.data,
                                                       ev->type.len));

    if (ev->status == NGX_BILLING_INVOICE_NONE) {
        fuzz_assert(ev->invoice.len == 0 && ev->customer.len == 0
                    && ev->subscription.len == 0 && ev->kind.len == 0
                    && ev->hosted_invoice_url.len == 0
                    && ev->currency.len == 0 && ev->amount_due == -1
                    && !ev->bad_metadata);
        return;
    }

    fuzz_assert(ev->status > NGX_BILLING_INVOICE_NONE
                && ev->status < NGX_BILLING_INVOICE_NSTATES);

    fuzz_assert(ngx_billing_stripe_id_valid(ev->invoice.data,
                                            ev->invoice.len));

    fuzz_assert(ev->customer.len == 0
                || ngx_billing_stripe_id_valid(ev->customer.data,
                                               ev->customer.len));

    fuzz_assert(ev->subscription.len == 0
                || ngx_billing_sub_id_valid(ev->subscription.data,
                                            ev->subscription.len));

    fuzz_assert(ev->kind.len == 0 || fuzz_str_eq(&ev->kind, "initial")
                || fuzz_str_eq(&ev->kind, "period")
                || fuzz_str_eq(&ev->kind, "final"));

    fuzz_assert(ev->currency.len == 0 || ev->currency.len == 3);

    for (i = 0; i < ev->currency.len; i++) {
        fuzz_assert(ev->currency.data[i] >= 'a'
                    && ev->currency.data[i] <= 'z');
    }

    fuzz_assert(ev->hosted_invoice_url.len <= NGX_BILLING_URL_MAX);

    if (ev->hosted_invoice_url.len) {
        fuzz_assert(ev->hosted_invoice_url.len > 7);
        fuzz_assert(memcmp(ev->hosted_invoice_url.data, "http://", 7) == 0
                    || memcmp(ev->hosted_invoice_url.data, "https://", 8)
                       == 0);

        for (i = 0; i < ev->hosted_invoice_url.len; i++) {
            fuzz_assert((unsigned char) ev->hosted_invoice_url.data[i] > ' '
                        && (unsigned char) ev->hosted_invoice_url.data[i]
                           < 0x7f);
        }
    }

    fuzz_assert(ev->amount_due >= -1);
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int                   rc, rc2;
    size_t                n, n2;
    uint8_t              *buf, *compact, *again;
    const char           *err, *err2;
    ngx_billing_event_t   ev, ev2;

    /* a buffer of the input's own size, so that a read past it is caught */

    buf = malloc(size ? size : 1);
    if (buf == NULL) {
        abort();
    }

    if (size) {
        memcpy(buf, data, size);
    }

    /* jansson's answer, the reference */

    err = NULL;
    rc = ngx_billing_event_parse_json(&ev, buf, size, &err);

    fuzz_assert(rc == 0 || rc == -1);

    fuzz_touch_event(&ev);

    if (rc == 0) {
        fuzz_assert(ev.json != NULL);
        fuzz_check_event(&ev);

    } else {
        fuzz_assert(err != NULL && err[0] != '\0');
    }

    /*
     * The scan: where it answers, jansson took the document as an
     * object and the answer is jansson's, field for field; the parse
     * the webhook makes (scan, then jansson) always is.
     */

    err2 = NULL;
    rc2 = ngx_billing_event_scan(&ev2, buf, size, &err2);

    if (rc2 != NGX_BILLING_EVENT_ASK_JANSSON) {
        fuzz_assert(ev.json != NULL && json_is_object((json_t *) ev.json));
        fuzz_assert(rc2 == rc && (rc == 0 || err2 == err));
        fuzz_assert(ev2.json == NULL);

        fuzz_touch_event(&ev2);

        if (rc == 0) {
            fuzz_check_event(&ev2);
            fuzz_same_event(&ev, &ev2);
        }
    }

    ngx_billing_event_free(&ev2);

    err2 = NULL;
    rc2 = ngx_billing_event_parse(&ev2, buf, size, &err2);

    fuzz_assert(rc2 == rc && (rc == 0 || err2 == err));

    if (rc == 0) {
        fuzz_same_event(&ev, &ev2);
    }

    ngx_billing_event_free(&ev2);

    /*
     * Compacted as the module compacts a body before parsing it: the
     * same answer, the same document, and compacting again changes
     * nothing.
     */

    compact = malloc(size ? size : 1);
    again = malloc(size ? size : 1);
    if (compact == NULL || again == NULL) {
        abort();
    }

    n = ngx_billing_json_compact(compact, buf, size);
    fuzz_assert(n <= size);

    n2 = ngx_billing_json_compact(again, compact, n);
    fuzz_assert(n2 == n && (n == 0 || memcmp(again, compact, n) == 0));

    err2 = NULL;
    rc2 = ngx_billing_event_parse_json(&ev2, compact, n, &err2);

    fuzz_assert(rc2 == rc && err2 == err);
    fuzz_assert((ev2.json == NULL) == (ev.json == NULL));
    fuzz_assert(ev.json == NULL || json_equal(ev.json, ev2.json));

    if (rc == 0) {
        fuzz_assert(ev2.status == ev.status && ev2.created == ev.created
                    && ev2.amount_due == ev.amount_due
                    && ev2.due_date == ev.due_date
                    && ev2.bad_metadata == ev.bad_metadata
                    && ev2.subscription.len == ev.subscription.len
                    && ev2.kind.len == ev.kind.len
                    && ev2.marketplace.len == ev.marketplace.len
                    && ev2.customer.len == ev.customer.len
                    && ev2.currency.len == ev.currency.len
                    && ev2.hosted_invoice_url.len
                       == ev.hosted_invoice_url.len);
    }

    ngx_billing_event_free(&ev2);
    free(again);
    free(compact);

    ngx_billing_event_free(&ev);
    fuzz_assert(ev.json == NULL);
    ngx_billing_event_free(&ev);

    free(buf);

    return 0;
}
