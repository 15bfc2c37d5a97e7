
/*
 * libFuzzer target: subscription requests.
 *
 * The input is the body of POST subscriptions.  A request accepted must
 * hold the invariants below (a violation aborts), and its canonical form
 * must be accepted again as itself; a request refused must say why in
 * UTF-8 without control characters, as the message goes into a JSON
 * answer and the error log.  The same bytes go to the decimal and period
 * parsers on their own.
 */


#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "ngx_billing_money.h"
#include "ngx_billing_plan.h"


#define fuzz_assert(cond)                                                    \
    do {                                                                     \
        if (!(cond)) {                                                       \
            fprintf(stderr, "%s:%d: invariant failed: %s\n", __FILE__,       \
                    __LINE__, #cond);                                        \
            abort();                                                         \
        }                                                                    \
    } while (0)


/* 2023-11-14 22:13:20 UTC, and the last second of 9999 */
#define FUZZ_NOW   INT64_C(1700000000)
#define FUZZ_LAST  INT64_C(253402300799)


int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);


static void
fuzz_check_period(const ngx_billing_period_t *p)
{
    int64_t  end;

    fuzz_assert(p->kind == NGX_BILLING_PERIOD_MONTH
                || p->kind == NGX_BILLING_PERIOD_YEAR
                || p->kind == NGX_BILLING_PERIOD_SECONDS);

    if (p->kind == NGX_BILLING_PERIOD_SECONDS) {
        fuzz_assert(p->seconds >= 1
                    && p->seconds <= NGX_BILLING_PERIOD_SECONDS_MAX);

    } else {
        fuzz_assert(p->seconds == 0);
    }

    /* a month is 28 to 31 days, a year 365 or 366, the time kept */

    end = ngx_billing_period_end(p, FUZZ_NOW);
    fuzz_assert(end > FUZZ_NOW);

    switch (p->kind) {

    case NGX_BILLING_PERIOD_MONTH:
        fuzz_assert(end - FUZZ_NOW >= 28 * 86400
                    && end - FUZZ_NOW <= 31 * 86400
                    && (end - FUZZ_NOW) % 86400 == 0);
        break;

    case NGX_BILLING_PERIOD_YEAR:
        fuzz_assert(end - FUZZ_NOW == 365 * 86400
                    || end - FUZZ_NOW == 366 * 86400);
        break;

    default:
        fuzz_assert(end == FUZZ_NOW + p->seconds);
    }

    fuzz_assert(ngx_billing_period_end(p, 0) > 0);
    fuzz_assert(ngx_billing_period_end(p, FUZZ_LAST) > FUZZ_LAST);
    fuzz_assert(ngx_billing_period_end(p, -1) == -1);
    fuzz_assert(ngx_billing_period_end(p, FUZZ_LAST + 1) == -1);
}


static int
fuzz_utf8(const char *s)
{
    json_t  *j;

    j = json_string(s);
    json_decref(j);

    return j != NULL;
}


static int
fuzz_lower(const char *s, size_t len)
{
    size_t  i;

    for (i = 0; i < len; i++) {
        if (s[i] < 'a' || s[i] > 'z') {
            return 0;
        }
    }

    return 1;
}


static void
fuzz_check_request(const ngx_billing_sub_request_t *r)
{
    size_t                     i;
    json_t                    *json;
    json_error_t               error;
    ngx_billing_sub_request_t  r2;

    fuzz_assert(r->json != NULL);
    fuzz_assert(r->error[0] == '\0');

    fuzz_assert(ngx_billing_sub_id_valid(r->id.data, r->id.len));
    fuzz_assert(r->id.data[r->id.len] == '\0');
    fuzz_assert(ngx_billing_sub_id_valid(r->consumer_org.data,
                                         r->consumer_org.len));
    fuzz_assert(r->consumer_org.len <= NGX_BILLING_ORG_ID_MAX);
    fuzz_assert(ngx_billing_email_valid(r->email.data, r->email.len));
    fuzz_assert(r->name.data != NULL
                && r->name.len <= NGX_BILLING_NAME_MAX
                && memchr(r->name.data, '\0', r->name.len) == NULL);

    for (i = 0; i < r->name.len; i++) {
        fuzz_assert((unsigned char) r->name.data[i] >= ' '
                    && r->name.data[i] != 0x7f);
    }

    fuzz_assert(r->unit.len >= 1 && r->unit.len <= NGX_BILLING_UNIT_MAX);

    fuzz_assert(r->currency[3] == '\0' && fuzz_lower(r->currency, 3));

    fuzz_assert(r->base_price >= 0
                && r->base_price <= NGX_BILLING_AMOUNT_MAX);
    fuzz_assert(r->days_until_due >= 0
                && r->days_until_due <= NGX_BILLING_DAYS_DUE_MAX);

    fuzz_assert(r->price.scale <= NGX_BILLING_DECIMAL_SCALE_MAX);
    fuzz_assert(ngx_billing_amount(0, &r->price) == 0);

    fuzz_check_period(&r->period);

    fuzz_assert(r->plan != NULL && r->canonical != NULL);
    fuzz_assert(strlen(r->fingerprint) == 64
                && strspn(r->fingerprint, "0123456789abcdef") == 64);

    /* the plan is JSON, and the canonical request too */

    json = json_loads(r->plan, JSON_REJECT_DUPLICATES, &error);
    fuzz_assert(json_is_object(json) && json_object_size(json) == 6);
    json_decref(json);

    json = json_loads(r->canonical, JSON_REJECT_DUPLICATES, &error);
    fuzz_assert(json_is_object(json) && json_object_size(json) == 4);
    json_decref(json);

    /* which is accepted as itself */

    fuzz_assert(ngx_billing_sub_request_parse(&r2,
                    (const unsigned char *) r->canonical,
                    strlen(r->canonical))
                == 0);

    fuzz_assert(strcmp(r2.canonical, r->canonical) == 0);
    fuzz_assert(strcmp(r2.plan, r->plan) == 0);
    fuzz_assert(strcmp(r2.fingerprint, r->fingerprint) == 0);
    fuzz_assert(r2.period.kind == r->period.kind
                && r2.period.seconds == r->period.seconds
                && r2.price.mantissa == r->price.mantissa
                && r2.price.scale == r->price.scale
                && r2.base_price == r->base_price
                && r2.days_until_due == r->days_until_due
                && memcmp(r2.currency, r->currency, 4) == 0);

    ngx_billing_sub_request_free(&r2);
}


static void
fuzz_decimal(const uint8_t *data, size_t size)
{
    char                   buf[NGX_BILLING_DECIMAL_LEN_MAX + 2];
    char                   again[NGX_BILLING_DECIMAL_LEN_MAX + 2];
    size_t                 n;
    ngx_billing_decimal_t  d, d2;

    if (ngx_billing_decimal_parse(&d, (const char *) data, size) != 0) {
        fuzz_assert(d.mantissa == 0 && d.scale == 0);
        return;
    }

    fuzz_assert(size >= 1 && size <= NGX_BILLING_DECIMAL_LEN_MAX);
    fuzz_assert(d.scale <= NGX_BILLING_DECIMAL_SCALE_MAX);

    /* printed without trailing zeros; parsed back, printed the same */

    n = ngx_billing_decimal_print(&d, buf, sizeof(buf));
    fuzz_assert(n >= 1 && n <= size && n == strlen(buf));
    fuzz_assert(n == 1 || buf[n - 1] != '0' || strchr(buf, '.') == NULL);

    fuzz_assert(ngx_billing_decimal_parse(&d2, buf, n) == 0);
    fuzz_assert(ngx_billing_decimal_print(&d2, again, sizeof(again)) == n);
    fuzz_assert(memcmp(buf, again, n + 1) == 0);

    /* the same value: as many minor units for any number of units */

    fuzz_assert(ngx_billing_amount(1, &d) == ngx_billing_amount(1, &d2));
    fuzz_assert(ngx_billing_amount(7, &d) == ngx_billing_amount(7, &d2));
    fuzz_assert(ngx_billing_amount(1000003, &d)
                == ngx_billing_amount(1000003, &d2));
    fuzz_assert(ngx_billing_amount(0, &d) == 0);
}


static void
fuzz_period(const uint8_t *data, size_t size)
{
    ngx_billing_period_t  p;

    if (ngx_billing_period_parse(&p, (const char *) data, size) != 0) {
        fuzz_assert(p.kind == 0 && p.seconds == 0);
        return;
    }

    fuzz_check_period(&p);
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int                        rc, rc2;
    char                      *p;
    uint8_t                   *buf;
    ngx_billing_sub_request_t  r, r2;

    /* a buffer of the input's own size, so that a read past it is caught */

    buf = malloc(size ? size : 1);
    if (buf == NULL) {
        abort();
    }

    if (size) {
        memcpy(buf, data, size);
    }

    rc = ngx_billing_sub_request_parse(&r, buf, size);

    fuzz_assert(rc == 0 || rc == -1);
    fuzz_assert(memchr(r.error, '\0', sizeof(r.error)) != NULL);

    if (rc == 0) {
        fuzz_check_request(&r);

    } else {
        fuzz_assert(r.error[0] != '\0');
        fuzz_assert(fuzz_utf8(r.error));

        for (p = r.error; *p; p++) {
            fuzz_assert((unsigned char) *p >= ' ' && *p != 0x7f);
        }
    }

    /* the same bytes give the same answer */

    rc2 = ngx_billing_sub_request_parse(&r2, buf, size);

    fuzz_assert(rc2 == rc);
    fuzz_assert(strcmp(r2.error, r.error) == 0);
    fuzz_assert(rc != 0 || strcmp(r2.fingerprint, r.fingerprint) == 0);

    ngx_billing_sub_request_free(&r2);

    ngx_billing_sub_request_free(&r);
    fuzz_assert(r.json == NULL && r.plan == NULL && r.canonical == NULL);
    ngx_billing_sub_request_free(&r);

    fuzz_decimal(buf, size);
    fuzz_period(buf, size);

    free(buf);

    return 0;
}
