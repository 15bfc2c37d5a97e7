
/*
 * Money: decimal unit prices and amounts in a currency's minor unit.
 *
 * Plain C; integers only, never floating point.
 */


#ifndef _NGX_BILLING_MONEY_H_INCLUDED_
#define _NGX_BILLING_MONEY_H_INCLUDED_


#include <stddef.h>
#include <stdint.h>


/* Stripe's unit_amount_decimal takes at most 12 decimal places */
#define NGX_BILLING_DECIMAL_SCALE_MAX  12
#define NGX_BILLING_DECIMAL_LEN_MAX    32

/* Stripe's largest amount: 99,999,999 minor units ($999,999.99) */
#define NGX_BILLING_AMOUNT_MAX         99999999LL


typedef struct {
    uint64_t   mantissa;      /* the digits, without the point */
    unsigned   scale;         /* how many of them are decimals */
} ngx_billing_decimal_t;


/*
 * "0", "12", "0.25", "1.000000000001": digits, at most one point with
 * digits on both sides, at most 12 decimals, no sign, no exponent.
 * Returns 0 or -1.
 */
int ngx_billing_decimal_parse(ngx_billing_decimal_t *d, const char *s,
    size_t len);

/*
 * units * price, rounded half up to a whole minor unit, as Stripe does
 * for quantity * unit_amount_decimal.  Returns -1 above
 * NGX_BILLING_AMOUNT_MAX.
 */
int64_t ngx_billing_amount(uint64_t units, const ngx_billing_decimal_t *price);

/* prints the shortest form ("0.25", "3"); returns length, 0 if small */
size_t ngx_billing_decimal_print(const ngx_billing_decimal_t *d, char *buf,
    size_t size);


#endif /* _NGX_BILLING_MONEY_H_INCLUDED_ */
