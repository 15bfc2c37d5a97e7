
/*
 * A subscription request of the API, validated, normalized and
 * fingerprinted; metering periods and their calendar arithmetic.
 *
 * Plain C with jansson and OpenSSL, so that it can be tested and fuzzed.
 */


#ifndef _NGX_BILLING_PLAN_H_INCLUDED_
#define _NGX_BILLING_PLAN_H_INCLUDED_


#include <stddef.h>
#include <stdint.h>

#include "ngx_billing_event.h"
#include "ngx_billing_money.h"


#define NGX_BILLING_ORG_ID_MAX          64
#define NGX_BILLING_EMAIL_MAX           254
#define NGX_BILLING_NAME_MAX            256
#define NGX_BILLING_UNIT_MAX            32
#define NGX_BILLING_DAYS_DUE_MAX        365
#define NGX_BILLING_PERIOD_SECONDS_MAX  (10LL * 366 * 86400)


typedef enum {
    NGX_BILLING_PERIOD_MONTH = 1,
    NGX_BILLING_PERIOD_YEAR,
    NGX_BILLING_PERIOD_SECONDS
} ngx_billing_period_kind_e;


typedef struct {
    int                    kind;
    int64_t                seconds;     /* for NGX_BILLING_PERIOD_SECONDS */
} ngx_billing_period_t;


typedef struct {
    void                  *json;        /* the request, owned */

    ngx_billing_str_t      id;
    ngx_billing_str_t      consumer_org;
    ngx_billing_str_t      email;
    ngx_billing_str_t      name;        /* may be empty */
    ngx_billing_str_t      unit;
    ngx_billing_str_t      unit_price;  /* as sent, validated */
    char                   currency[4]; /* lowercased */

    int64_t                base_price;
    int64_t                days_until_due;
    ngx_billing_decimal_t  price;
    ngx_billing_period_t   period;
    char                   period_name[24];   /* "month", "year", "3600" */

    /* the normalized plan and request, JSON with sorted keys; owned */
    char                  *plan;
    char                  *canonical;

    /* SHA-256 of canonical: the same request twice has the same one */
    char                   fingerprint[65];

    char                   error[160];
} ngx_billing_sub_request_t;


/*
 * Returns 0, or -1 with r->error saying what is wrong and where.
 * r must be released with ngx_billing_sub_request_free() in both cases.
 */
int ngx_billing_sub_request_parse(ngx_billing_sub_request_t *r,
    const unsigned char *buf, size_t len);
void ngx_billing_sub_request_free(ngx_billing_sub_request_t *r);

/* "month", "year" or a number of seconds, as a string or an integer */
int ngx_billing_period_parse(ngx_billing_period_t *p, const char *s,
    size_t len);

/* 9999-12-31T23:59:59Z: starts past it are refused */
#define NGX_BILLING_TIME_MAX     253402300799LL
#define NGX_BILLING_PERIODS_MAX  (1ULL << 32)

/*
 * The end of the period that starts at start (unix seconds, UTC): a
 * calendar month or year later, the day clamped to the month's last
 * (January 31 + a month = February 28 or 29).  -1 on overflow.
 */
int64_t ngx_billing_period_end(const ngx_billing_period_t *p, int64_t start);

/*
 * The end of period k (k >= 1) of periods that started at start: start
 * plus k months, years or seconds, each computed from start itself, so
 * that periods started on the 31st end on the last day of shorter months
 * and on the 31st again after them.  -1 when out of range.
 */
int64_t ngx_billing_period_bound(const ngx_billing_period_t *p,
    int64_t start, uint64_t k);

/*
 * Which period t falls in: k >= 1 such that bound(k - 1) <= t <
 * bound(k), bound(0) being start; 0 before start, -1 when out of range.
 */
int64_t ngx_billing_period_index(const ngx_billing_period_t *p,
    int64_t start, int64_t t);

int ngx_billing_email_valid(const char *s, size_t len);


#endif /* _NGX_BILLING_PLAN_H_INCLUDED_ */
