
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


int64_t
ngx_billing_amount(uint64_t units, const ngx_billing_decimal_t *price)
{
    unsigned            i;
    unsigned __int128   product, divisor, q, r;

    divisor = 1;

    for (i = 0; i < price->scale; i++) {
        divisor *= 10;
    }

    /* both below 2^64: the product fits in 128 bits */

    product = (unsigned __int128) units * price->mantissa;

    q = product / divisor;
    r = product % divisor;

    if (r * 2 >= divisor && divisor > 1) {
        q++;
    }

    if (q > (unsigned __int128) NGX_BILLING_AMOUNT_MAX) {
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
