
/*
 * Money: decimal unit prices and amounts in minor units.
 */


#include <string.h>

#include "ngx_billing_money.h"


int
ngx_billing_decimal_parse(ngx_billing_decimal_t *d, const char *s, size_t len)
{
    size_t    i, digits;
    int       point;
    unsigned  scale;
    uint64_t  m;

    d->mantissa = 0;
    d->scale = 0;

    if (len == 0 || len > NGX_BILLING_DECIMAL_LEN_MAX) {
        return -1;
    }

    m = 0;
    point = 0;
    digits = 0;
    scale = 0;

    for (i = 0; i < len; i++) {

        if (s[i] == '.') {
            if (point || digits == 0 || i == len - 1) {
                return -1;
            }

            point = 1;
            continue;
        }

        if (s[i] < '0' || s[i] > '9') {
            return -1;
        }

        /* 19 significant digits always fit in a uint64_t */

        if (m > (UINT64_MAX - 9) / 10) {
            return -1;
        }

        m = m * 10 + (s[i] - '0');
        digits++;

        if (point && ++scale > NGX_BILLING_DECIMAL_SCALE_MAX) {
            return -1;
        }
    }

    /* "007" is not a price anyone wrote on purpose */

    if (s[0] == '0' && len > 1 && s[1] != '.') {
        return -1;
    }

    d->mantissa = m;
    d->scale = scale;

    return 0;
}


/*
 * q, r = a * b / d, a * b % d, in 64-bit arithmetic only (32-bit
 * targets have no 128-bit type); -1 when q needs more than 64 bits.
 */

static int
ngx_billing_mul_div(uint64_t a, uint64_t b, uint64_t d, uint64_t *q,
    uint64_t *r)
{
    int       i;
    uint64_t  hi, lo, mid, p00, p01, p10, p11, rem, quo, top;

    /* the 128-bit product, from 32-bit halves */

    p00 = (a & 0xffffffff) * (b & 0xffffffff);
    p01 = (a & 0xffffffff) * (b >> 32);
    p10 = (a >> 32) * (b & 0xffffffff);
    p11 = (a >> 32) * (b >> 32);

    mid = (p00 >> 32) + (p01 & 0xffffffff) + (p10 & 0xffffffff);
    lo = (p00 & 0xffffffff) | (mid << 32);
    hi = p11 + (p01 >> 32) + (p10 >> 32) + (mid >> 32);

    if (hi >= d) {
        return -1;
    }

    /* long division, a bit at a time: rem < d throughout */

    rem = hi;
    quo = 0;

    for (i = 63; i >= 0; i--) {
        top = rem >> 63;
        rem = (rem << 1) | ((lo >> i) & 1);
        quo <<= 1;

        /* with the top bit out, the true value is above 2^64 > d */

        if (top || rem >= d) {
            rem -= d;
            quo |= 1;
        }
    }

    *q = quo;
    *r = rem;

    return 0;
}


int64_t
ngx_billing_amount(uint64_t units, const ngx_billing_decimal_t *price)
{
    unsigned  i;
    uint64_t  divisor, q, r;

    divisor = 1;

    for (i = 0; i < price->scale; i++) {
        divisor *= 10;
    }

    if (ngx_billing_mul_div(units, price->mantissa, divisor, &q, &r) != 0) {
        return -1;
    }

    /* half up */

    if (divisor > 1 && r >= divisor - r) {
        q++;
    }

    if (q > (uint64_t) NGX_BILLING_AMOUNT_MAX) {
        return -1;
    }

    return (int64_t) q;
}


size_t
ngx_billing_decimal_print(const ngx_billing_decimal_t *d, char *buf,
    size_t size)
{
    char      digits[24], *p;
    size_t    n, len, i, scale;
    uint64_t  m;

    m = d->mantissa;
    scale = d->scale;

    /* digits[] holds 20 digits and a scale that parsing lets through */

    if (scale > NGX_BILLING_DECIMAL_SCALE_MAX) {
        return 0;
    }

    /* trailing zeros of the fraction say nothing */

    while (scale && m % 10 == 0) {
        m /= 10;
        scale--;
    }

    n = 0;

    do {
        digits[n++] = (char) ('0' + m % 10);
        m /= 10;
    } while (m);

    while (n <= scale) {
        digits[n++] = '0';
    }

    len = n + (scale ? 1 : 0);

    if (len + 1 > size) {
        return 0;
    }

    /* digits[] is least significant first; i counts those still due */

    p = buf;

    for (i = n; i > 0; i--) {
        if (i == scale) {
            *p++ = '.';
        }

        *p++ = digits[i - 1];
    }

    *p = '\0';

    return len;
}
