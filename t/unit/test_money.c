
/*
 * Unit tests of the money helpers: decimal unit prices, amounts in minor
 * units rounded half up, printing.
 *
 * The expected amounts are worked out by hand in the comments.
 */


#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "ngx_billing_money.h"
#include "tap.h"


#define MAX  NGX_BILLING_AMOUNT_MAX


typedef struct {
    const char  *s;
    uint64_t     mantissa;
    unsigned     scale;
} decimal_case_t;


static const decimal_case_t  valid[] = {
    { "0", 0, 0 },
    { "1", 1, 0 },
    { "12", 12, 0 },
    { "10", 10, 0 },
    { "100", 100, 0 },
    { "0.25", 25, 2 },
    { "0.0", 0, 1 },
    { "1.50", 150, 2 },
    { "0.250", 250, 3 },
    { "999999.99", 99999999, 2 },
    { "1.000000000001", UINT64_C(1000000000001), 12 },
    { "0.000000000001", 1, 12 },
    { "0.000000000000", 0, 12 },
    { "123.456789012345", UINT64_C(123456789012345), 12 },
    { "1234567890123456789", UINT64_C(1234567890123456789), 0 },
    { "9999999999999999999", UINT64_C(9999999999999999999), 0 },
    { "10000000000000000000", UINT64_C(10000000000000000000), 0 },
    { "1000000.000000000000", UINT64_C(1000000000000000000), 12 },
    { "1234567890123456789.1", UINT64_C(12345678901234567891), 1 },
    { "18446744073709551609", UINT64_C(18446744073709551609), 0 }
};


static const char  *invalid[] = {
    "00",
    "007",
    "01",
    "00.5",
    "01.5",
    ".5",
    ".",
    "..",
    "5.",
    "1..2",
    "1.2.3",
    "-1",
    "-0.5",
    "+1",
    "1e3",
    "1E3",
    "1.5e-3",
    " 1",
    "1 ",
    "1 .5",
    "1. 5",
    "\t1",
    "1,5",
    "1_000",
    "0x10",
    "NaN",
    "inf",
    "abc",
    "\xd9\xa1",                             /* ARABIC-INDIC DIGIT ONE */
    "1.0000000000001",                      /* 13 decimals */
    "0.0000000000000",
    "0.0000000000001",
    "99999999999999999999",                 /* 20 digits, > 2^64 */
    "18446744073709551616",                 /* 2^64 */
    "184467440737095516160",
    "123456789012345678901234567890",
    "12345678901234567890.1",               /* 21 digits in all */
    "100000000000000000000000000000000"     /* 33 characters */
};


static int
parse_str(ngx_billing_decimal_t *d, const char *s)
{
    return ngx_billing_decimal_parse(d, s, strlen(s));
}


static void
test_parse_valid(void)
{
    size_t                  i;
    ngx_billing_decimal_t   d;

    for (i = 0; i < sizeof(valid) / sizeof(valid[0]); i++) {
        d.mantissa = 77;
        d.scale = 77;

        if (!is_int(parse_str(&d, valid[i].s), 0, "\"%s\" parses",
                    valid[i].s))
        {
            continue;
        }

        ok(d.mantissa == valid[i].mantissa && d.scale == valid[i].scale,
           "\"%s\": mantissa %llu, scale %u", valid[i].s,
           (unsigned long long) valid[i].mantissa, valid[i].scale);
    }
}


static void
test_parse_invalid(void)
{
    size_t                  i;
    ngx_billing_decimal_t   d;

    for (i = 0; i < sizeof(invalid) / sizeof(invalid[0]); i++) {
        d.mantissa = 77;
        d.scale = 77;

        is_int(parse_str(&d, invalid[i]), -1, "\"%s\" is refused",
               invalid[i]);
        ok(d.mantissa == 0 && d.scale == 0, "\"%s\": left zero",
           invalid[i]);
    }

    is_int(ngx_billing_decimal_parse(&d, "", 0), -1, "empty is refused");
    is_int(ngx_billing_decimal_parse(&d, "12", 0), -1,
           "length 0 is refused, whatever the pointer");

    /* the length is the caller's: what follows it is not looked at */

    is_int(ngx_billing_decimal_parse(&d, "12x", 2), 0, "\"12\" of \"12x\"");
    is_int(d.mantissa, 12, "\"12\" of \"12x\": 12");
    is_int(ngx_billing_decimal_parse(&d, "0.25", 2), -1,
           "\"0.\" of \"0.25\" is refused");
    is_int(ngx_billing_decimal_parse(&d, "1\0", 2), -1,
           "a NUL inside the length is refused");

    /* 32 characters at most */

    is_int(parse_str(&d, "0.000000000001"), 0, "14 characters");
    is_int(ngx_billing_decimal_parse(&d, "1000000000000000000000000000000000",
                                     32),
           -1, "32 digits: too big");
    is_int(ngx_billing_decimal_parse(&d, "1000000000000000000000000000000000",
                                     33),
           -1, "33 characters: too long");
}


static int64_t
amount(uint64_t units, const char *price)
{
    ngx_billing_decimal_t  d;

    if (parse_str(&d, price) != 0) {
        diag("\"%s\" does not parse", price);
        return -2;
    }

    return ngx_billing_amount(units, &d);
}


static void
test_amount(void)
{
    ngx_billing_decimal_t  d;

    /* exact */

    is_int(amount(0, "0.25"), 0, "0 x 0.25 = 0");
    is_int(amount(4, "0.25"), 1, "4 x 0.25 = 1");
    is_int(amount(1000, "0.25"), 250, "1000 x 0.25 = 250");
    is_int(amount(1500, "1"), 1500, "1500 x 1 = 1500");
    is_int(amount(3, "12"), 36, "3 x 12 = 36");
    is_int(amount(1, "1.000000000000"), 1, "1 x 1.000000000000 = 1");

    /* rounded half up */

    is_int(amount(3, "0.25"), 1, "3 x 0.25 = 0.75 -> 1");
    is_int(amount(2, "0.25"), 1, "2 x 0.25 = 0.5 -> 1");
    is_int(amount(1, "0.25"), 0, "1 x 0.25 = 0.25 -> 0");
    is_int(amount(1, "0.49"), 0, "1 x 0.49 -> 0");
    is_int(amount(1, "0.5"), 1, "1 x 0.5 -> 1");
    is_int(amount(1, "0.499999999999"), 0, "1 x 0.499999999999 -> 0");
    is_int(amount(1, "0.500000000000"), 1, "1 x 0.500000000000 -> 1");
    is_int(amount(6, "0.25"), 2, "6 x 0.25 = 1.5 -> 2");
    is_int(amount(10, "0.25"), 3, "10 x 0.25 = 2.5 -> 3");
    is_int(amount(7, "0.142857142857"), 1,
           "7 x 0.142857142857 = 0.999999999999 -> 1");
    is_int(amount(1, "0.000000000001"), 0, "1 x 1e-12 -> 0");
    is_int(amount(UINT64_C(499999999999), "0.000000000001"), 0,
           "499999999999 x 1e-12 = 0.499999999999 -> 0");
    is_int(amount(UINT64_C(500000000000), "0.000000000001"), 1,
           "500000000000 x 1e-12 = 0.5 -> 1");
    is_int(amount(UINT64_C(1500000000000), "0.000000000001"), 2,
           "1500000000000 x 1e-12 = 1.5 -> 2");
    is_int(amount(333, "0.015"), 5, "333 x 0.015 = 4.995 -> 5");
    is_int(amount(UINT64_C(9223372036854775808), "0.000000000001"),
           9223372, "2^63 x 1e-12 = 9223372.036854775808 -> 9223372");

    /* zero price: any number of units */

    is_int(amount(UINT64_MAX, "0"), 0, "UINT64_MAX x 0 = 0");
    is_int(amount(UINT64_MAX, "0.000000000000"), 0,
           "UINT64_MAX x 0.000000000000 = 0");
    is_int(amount(UINT64_MAX, "0.0"), 0, "UINT64_MAX x 0.0 = 0");

    /* the largest amount and beyond */

    is_int(amount(MAX, "1"), MAX, "99999999 x 1 = the largest amount");
    is_int(amount(1, "99999999"), MAX, "1 x 99999999");
    is_int(amount(MAX + 1, "1"), -1, "100000000 x 1: too much");
    is_int(amount(1, "100000000"), -1, "1 x 100000000: too much");
    is_int(amount(1, "99999999.49"), MAX, "1 x 99999999.49 -> 99999999");
    is_int(amount(1, "99999999.4999999999"), MAX,
           "1 x 99999999.4999999999 -> 99999999");
    is_int(parse_str(&d, "99999999.499999999999"), -1,
           "99999999.499999999999: 20 digits, beyond 64 bits");
    is_int(amount(1, "99999999.5"), -1,
           "1 x 99999999.5 rounds to 100000000: too much");
    is_int(amount(199999998, "0.5"), MAX, "199999998 x 0.5 = 99999999");
    is_int(amount(199999999, "0.5"), -1,
           "199999999 x 0.5 = 99999999.5 -> 100000000: too much");
    is_int(amount(UINT64_C(99999999000000), "0.000001"), MAX,
           "99999999000000 x 0.000001 = 99999999");
    is_int(amount(UINT64_C(99999999500000), "0.000001"), -1,
           "99999999500000 x 0.000001 = 99999999.5: too much");
    is_int(amount(UINT64_MAX, "1"), -1, "UINT64_MAX x 1: too much");
    is_int(amount(UINT64_MAX, "0.000000000001"), 18446744,
           "UINT64_MAX x 1e-12 = 18446744.073709551615 -> 18446744");
    is_int(amount(UINT64_MAX, "0.000000000006"), -1,
           "UINT64_MAX x 6e-12 = 110680464.4...: too much");

    /* the product beyond 64 bits */

    is_int(amount(UINT64_MAX, "18446744073709551609"), -1,
           "UINT64_MAX x 18446744073709551609: too much");
    is_int(amount(UINT64_MAX, "1000000.000000000000"), -1,
           "UINT64_MAX x 1000000.000000000000: too much");
    is_int(amount(UINT64_C(4294967296), "4294967296"), -1,
           "2^32 x 2^32: too much, not wrapped to 0");

    d.mantissa = UINT64_MAX;
    d.scale = 12;
    is_int(ngx_billing_amount(UINT64_MAX, &d), -1,
           "UINT64_MAX x UINT64_MAX e-12: too much");

    d.mantissa = 25;
    d.scale = 2;
    is_int(ngx_billing_amount(3, &d), 1, "a decimal made by hand");
}


static void
test_print(void)
{
    size_t                  i, n;
    char                    buf[64];
    ngx_billing_decimal_t   d, d2;

    static const char  *round_trip[] = {
        "0", "1", "12", "10", "100", "0.25", "0.5", "999999.99",
        "1.000000000001", "0.000000000001", "123.456789012345",
        "1234567890123456789", "10000000000000000000",
        "18446744073709551609"
    };

    static const struct {
        const char  *in;
        const char  *out;
    } trimmed[] = {
        { "1.50", "1.5" },
        { "0.250", "0.25" },
        { "0.0", "0" },
        { "2.000000000000", "2" },
        { "10.10", "10.1" },
        { "100.000", "100" },
        { "0.000000000000", "0" },
        { "1000000.000000000000", "1000000" },
        { "0.100000000000", "0.1" }
    };

    for (i = 0; i < sizeof(round_trip) / sizeof(round_trip[0]); i++) {
        if (parse_str(&d, round_trip[i]) != 0) {
            ok(0, "\"%s\" parses", round_trip[i]);
            continue;
        }

        n = ngx_billing_decimal_print(&d, buf, sizeof(buf));
        is_str(buf, round_trip[i], "\"%s\" prints back", round_trip[i]);
        is_int(n, strlen(round_trip[i]), "\"%s\": its length",
               round_trip[i]);

        ok(parse_str(&d2, buf) == 0
           && d2.mantissa == d.mantissa && d2.scale == d.scale,
           "\"%s\": the print parses to the same decimal", round_trip[i]);
    }

    for (i = 0; i < sizeof(trimmed) / sizeof(trimmed[0]); i++) {
        if (parse_str(&d, trimmed[i].in) != 0) {
            ok(0, "\"%s\" parses", trimmed[i].in);
            continue;
        }

        n = ngx_billing_decimal_print(&d, buf, sizeof(buf));
        is_str(buf, trimmed[i].out, "\"%s\" prints as \"%s\"", trimmed[i].in,
               trimmed[i].out);
        is_int(n, strlen(trimmed[i].out), "\"%s\": its length",
               trimmed[i].in);
    }

    /* decimals made by hand */

    d.mantissa = 5;
    d.scale = 12;
    ngx_billing_decimal_print(&d, buf, sizeof(buf));
    is_str(buf, "0.000000000005", "5e-12 with its leading zeros");

    d.mantissa = UINT64_MAX;
    d.scale = 12;
    ngx_billing_decimal_print(&d, buf, sizeof(buf));
    is_str(buf, "18446744.073709551615", "UINT64_MAX e-12");

    d.mantissa = UINT64_MAX;
    d.scale = 0;
    n = ngx_billing_decimal_print(&d, buf, sizeof(buf));
    is_str(buf, "18446744073709551615", "UINT64_MAX");
    is_int(n, 20, "UINT64_MAX: 20 digits");

    d.mantissa = 1;
    d.scale = NGX_BILLING_DECIMAL_SCALE_MAX + 1;
    memset(buf, 'x', sizeof(buf));
    is_int(ngx_billing_decimal_print(&d, buf, sizeof(buf)), 0,
           "a scale above %d is not printed", NGX_BILLING_DECIMAL_SCALE_MAX);
    ok(buf[0] == 'x', "... and the buffer is left alone");

    d.mantissa = 1;
    d.scale = 1000;
    is_int(ngx_billing_decimal_print(&d, buf, sizeof(buf)), 0,
           "a scale of 1000 is not printed");

    /* the buffer: the digits and a NUL */

    parse_str(&d, "0.25");

    memset(buf, 'x', sizeof(buf));
    is_int(ngx_billing_decimal_print(&d, buf, 5), 4, "\"0.25\" in 5 bytes");
    is_mem(buf, 6, "0.25\0x", 6, "\"0.25\" in 5 bytes: NUL, nothing more");

    memset(buf, 'x', sizeof(buf));
    is_int(ngx_billing_decimal_print(&d, buf, 4), 0, "\"0.25\" in 4 bytes");
    ok(buf[0] == 'x', "\"0.25\" in 4 bytes: nothing written");

    is_int(ngx_billing_decimal_print(&d, buf, 0), 0, "\"0.25\" in 0 bytes");

    parse_str(&d, "0");
    is_int(ngx_billing_decimal_print(&d, buf, 2), 1, "\"0\" in 2 bytes");
    is_str(buf, "0", "\"0\" in 2 bytes: printed");
    is_int(ngx_billing_decimal_print(&d, buf, 1), 0, "\"0\" in 1 byte");

    parse_str(&d, "1.50");
    is_int(ngx_billing_decimal_print(&d, buf, 4), 3,
           "\"1.50\" in 4 bytes, as \"1.5\"");
}


/*
 * The amount is computed without a 128-bit type; on a target that has
 * one, it must agree with the obvious computation, across the range.
 */

static void
test_amount_wide(void)
{
#ifdef __SIZEOF_INT128__
    int                    i, bad;
    unsigned               k;
    int64_t                got, want;
    uint64_t               units, x;
    unsigned __int128      product, divisor, q;
    ngx_billing_decimal_t  d;

    bad = 0;
    x = 0x9e3779b97f4a7c15ULL;

    for (i = 0; i < 200000; i++) {

        /* xorshift: spread over every magnitude of both factors */

        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;

        units = x >> (x % 64);
        d.mantissa = (x * 0x2545f4914f6cdd1dULL) >> ((x >> 8) % 64);
        d.scale = (unsigned) ((x >> 16) % (NGX_BILLING_DECIMAL_SCALE_MAX + 1));

        divisor = 1;
        for (k = 0; k < d.scale; k++) {
            divisor *= 10;
        }

        product = (unsigned __int128) units * d.mantissa;
        q = product / divisor;

        if (divisor > 1 && (product % divisor) * 2 >= divisor) {
            q++;
        }

        want = (q > NGX_BILLING_AMOUNT_MAX) ? -1 : (int64_t) q;
        got = ngx_billing_amount(units, &d);

        if (got != want && bad++ < 5) {
            diag("units %llu, mantissa %llu, scale %u: %lld, not %lld",
                 (unsigned long long) units,
                 (unsigned long long) d.mantissa, d.scale,
                 (long long) got, (long long) want);
        }
    }

    is_int(bad, 0, "200000 amounts as 128-bit arithmetic computes them");
#else
    ok(1, "no 128-bit type here to compare with");
#endif
}


int
main(void)
{
    test_parse_valid();
    test_parse_invalid();
    test_amount();
    test_amount_wide();
    test_print();

    return done_testing();
}
