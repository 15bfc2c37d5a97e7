
/*
 * Subscription requests, metering periods.
 */


#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <jansson.h>
#include <openssl/evp.h>

#include "ngx_billing_plan.h"


static int ngx_billing_fail(ngx_billing_sub_request_t *r, const char *fmt,
    ...);
static int ngx_billing_only(ngx_billing_sub_request_t *r, json_t *obj,
    const char *where, const char **keys);
static int ngx_billing_string(ngx_billing_sub_request_t *r, json_t *obj,
    const char *key, const char *where, int required, ngx_billing_str_t *out);
static size_t ngx_billing_utf8_prefix(const char *s, size_t len);
static void ngx_billing_message_fix(char *s);
static long ngx_billing_text_chars(const char *s, size_t len);
static int ngx_billing_unit_valid(const char *s, size_t len);
static int64_t ngx_billing_days_from_civil(int64_t y, unsigned m, unsigned d);
static void ngx_billing_civil_from_days(int64_t z, int64_t *y, unsigned *m,
    unsigned *d);
static int ngx_billing_fingerprint(ngx_billing_sub_request_t *r);


static const char  *ngx_billing_request_keys[] = {
    "id", "consumer_org", "customer", "plan", NULL
};

static const char  *ngx_billing_customer_keys[] = {
    "email", "name", NULL
};

static const char  *ngx_billing_plan_keys[] = {
    "currency", "base_price", "unit_price", "unit", "metering_period",
    "days_until_due", NULL
};


int
ngx_billing_sub_request_parse(ngx_billing_sub_request_t *r,
    const unsigned char *buf, size_t len)
{
    long           n;
    size_t         i;
    json_t        *root, *customer, *plan, *value, *norm;
    json_error_t   error;
    char           period[24];

    memset(r, 0, sizeof(ngx_billing_sub_request_t));

    root = json_loadb((const char *) buf, len, JSON_REJECT_DUPLICATES, &error);
    if (root == NULL) {
        return ngx_billing_fail(r, "body is not valid JSON: %s", error.text);
    }

    r->json = root;

    if (!json_is_object(root)) {
        return ngx_billing_fail(r, "body is not a JSON object");
    }

    if (ngx_billing_only(r, root, "the request", ngx_billing_request_keys)
        != 0)
    {
        return -1;
    }

    /* id and consumer_org */

    if (ngx_billing_string(r, root, "id", "", 1, &r->id) != 0) {
        return -1;
    }

    if (!ngx_billing_sub_id_valid(r->id.data, r->id.len)) {
        return ngx_billing_fail(r, "\"id\" must be 1 to %d characters of "
                                "A-Z a-z 0-9 _ . -, not \".\" or \"..\"",
                                NGX_BILLING_SUB_ID_MAX);
    }

    if (ngx_billing_string(r, root, "consumer_org", "", 1, &r->consumer_org)
        != 0)
    {
        return -1;
    }

    if (!ngx_billing_sub_id_valid(r->consumer_org.data, r->consumer_org.len))
    {
        return ngx_billing_fail(r, "\"consumer_org\" must be 1 to %d "
                                "characters of A-Z a-z 0-9 _ . -, not \".\" "
                                "or \"..\"", NGX_BILLING_ORG_ID_MAX);
    }

    /* customer */

    customer = json_object_get(root, "customer");
    if (!json_is_object(customer)) {
        return ngx_billing_fail(r, "\"customer\" must be an object");
    }

    if (ngx_billing_only(r, customer, "\"customer\"",
                         ngx_billing_customer_keys)
        != 0)
    {
        return -1;
    }

    if (ngx_billing_string(r, customer, "email", "customer.", 1, &r->email)
        != 0)
    {
        return -1;
    }

    if (!ngx_billing_email_valid(r->email.data, r->email.len)) {
        return ngx_billing_fail(r, "\"customer.email\" is not an email "
                                "address");
    }

    if (ngx_billing_string(r, customer, "name", "customer.", 0, &r->name)
        != 0)
    {
        return -1;
    }

    n = ngx_billing_text_chars(r->name.data, r->name.len);

    if (n < 0 || n > NGX_BILLING_NAME_MAX) {
        return ngx_billing_fail(r, "\"customer.name\" must be at most %d "
                                "characters, none of them control "
                                "characters or line and paragraph "
                                "separators", NGX_BILLING_NAME_MAX);
    }

    /* plan */

    plan = json_object_get(root, "plan");
    if (!json_is_object(plan)) {
        return ngx_billing_fail(r, "\"plan\" must be an object");
    }

    if (ngx_billing_only(r, plan, "\"plan\"", ngx_billing_plan_keys) != 0) {
        return -1;
    }

    value = json_object_get(plan, "currency");
    if (!json_is_string(value) || json_string_length(value) != 3) {
        return ngx_billing_fail(r, "\"plan.currency\" must be a three-letter "
                                "ISO currency code");
    }

    for (i = 0; i < 3; i++) {
        char  c = json_string_value(value)[i];

        if (c >= 'A' && c <= 'Z') {
            c = (char) (c - 'A' + 'a');
        }

        if (c < 'a' || c > 'z') {
            return ngx_billing_fail(r, "\"plan.currency\" must be a "
                                    "three-letter ISO currency code");
        }

        r->currency[i] = c;
    }

    value = json_object_get(plan, "base_price");
    if (!json_is_integer(value) || json_integer_value(value) < 0
        || json_integer_value(value) > NGX_BILLING_AMOUNT_MAX)
    {
        return ngx_billing_fail(r, "\"plan.base_price\" must be an integer "
                                "from 0 to %lld, in the currency's minor "
                                "unit", (long long) NGX_BILLING_AMOUNT_MAX);
    }

    r->base_price = json_integer_value(value);

    if (ngx_billing_string(r, plan, "unit_price", "plan.", 1, &r->unit_price)
        != 0)
    {
        return -1;
    }

    if (ngx_billing_decimal_parse(&r->price, r->unit_price.data,
                                  r->unit_price.len)
        != 0)
    {
        return ngx_billing_fail(r, "\"plan.unit_price\" must be a decimal "
                                "string such as \"0.25\", at most %d "
                                "decimals, in minor units per unit",
                                NGX_BILLING_DECIMAL_SCALE_MAX);
    }

    if (json_object_get(plan, "unit") == NULL) {
        r->unit.data = "unit";
        r->unit.len = 4;

    } else if (ngx_billing_string(r, plan, "unit", "plan.", 1, &r->unit) != 0)
    {
        return -1;
    }

    if (!ngx_billing_unit_valid(r->unit.data, r->unit.len)) {
        return ngx_billing_fail(r, "\"plan.unit\" must be 1 to %d "
                                "characters of A-Z a-z 0-9 _ - and space",
                                NGX_BILLING_UNIT_MAX);
    }

    value = json_object_get(plan, "metering_period");

    if (json_is_integer(value)) {
        snprintf(period, sizeof(period), "%lld",
                 (long long) json_integer_value(value));

    } else if (json_is_string(value)
               && json_string_length(value) < sizeof(period))
    {
        memcpy(period, json_string_value(value), json_string_length(value));
        period[json_string_length(value)] = '\0';

    } else {
        period[0] = '\0';
    }

    if (ngx_billing_period_parse(&r->period, period, strlen(period)) != 0) {
        return ngx_billing_fail(r, "\"plan.metering_period\" must be "
                                "\"month\", \"year\" or a number of seconds "
                                "from 1 to %lld",
                                (long long) NGX_BILLING_PERIOD_SECONDS_MAX);
    }

    value = json_object_get(plan, "days_until_due");

    if (value == NULL) {
        r->days_until_due = 30;

    } else if (json_is_integer(value) && json_integer_value(value) >= 0
               && json_integer_value(value) <= NGX_BILLING_DAYS_DUE_MAX)
    {
        r->days_until_due = json_integer_value(value);

    } else {
        return ngx_billing_fail(r, "\"plan.days_until_due\" must be an "
                                "integer from 0 to %d",
                                NGX_BILLING_DAYS_DUE_MAX);
    }

    /* the normalized forms */

    if (r->period.kind == NGX_BILLING_PERIOD_SECONDS) {
        snprintf(period, sizeof(period), "%lld",
                 (long long) r->period.seconds);

    } else {
        snprintf(period, sizeof(period), "%s",
                 r->period.kind == NGX_BILLING_PERIOD_MONTH ? "month" : "year");
    }

    memcpy(r->period_name, period, sizeof(r->period_name));
    r->period_name[sizeof(r->period_name) - 1] = '\0';

    norm = json_pack("{s:s#,s:I,s:s#,s:s#,s:s,s:I}",
                     "currency", r->currency, (int) 3,
                     "base_price", (json_int_t) r->base_price,
                     "unit_price", r->unit_price.data, (int) r->unit_price.len,
                     "unit", r->unit.data, (int) r->unit.len,
                     "metering_period", period,
                     "days_until_due", (json_int_t) r->days_until_due);
    if (norm == NULL) {
        return ngx_billing_fail(r, "out of memory");
    }

    r->plan = json_dumps(norm, JSON_COMPACT | JSON_SORT_KEYS);

    value = json_pack("{s:s#,s:s#,s:{s:s#,s:s#},s:O}",
                      "id", r->id.data, (int) r->id.len,
                      "consumer_org", r->consumer_org.data,
                      (int) r->consumer_org.len,
                      "customer",
                      "email", r->email.data, (int) r->email.len,
                      "name", r->name.data, (int) r->name.len,
                      "plan", norm);

    json_decref(norm);

    if (value == NULL) {
        return ngx_billing_fail(r, "out of memory");
    }

    r->canonical = json_dumps(value, JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(value);

    if (r->plan == NULL || r->canonical == NULL
        || ngx_billing_fingerprint(r) != 0)
    {
        return ngx_billing_fail(r, "out of memory");
    }

    return 0;
}


void
ngx_billing_sub_request_free(ngx_billing_sub_request_t *r)
{
    if (r->json) {
        json_decref((json_t *) r->json);
        r->json = NULL;
    }

    free(r->plan);
    free(r->canonical);

    r->plan = NULL;
    r->canonical = NULL;
}


static int
ngx_billing_fail(ngx_billing_sub_request_t *r, const char *fmt, ...)
{
    va_list  args;

    va_start(args, fmt);
    vsnprintf(r->error, sizeof(r->error), fmt, args);
    va_end(args);

    /*
     * The message goes into a JSON answer, which must be UTF-8, and into
     * the error log: jansson quotes the input byte by byte and may stop
     * inside a character, vsnprintf() may cut one, and a key may hold
     * control characters.
     */

    ngx_billing_message_fix(r->error);

    return -1;
}


/* a control character, or a byte not of a whole UTF-8 one, becomes "?" */

static void
ngx_billing_message_fix(char *s)
{
    size_t          i, n;
    uint32_t        cp;
    unsigned char  *p;

    p = (unsigned char *) s;

    while (*p) {

        if (*p < ' ' || *p == 0x7f) {
            *p++ = '?';
            continue;
        }

        if (*p < 0x80) {
            p++;
            continue;
        }

        if (*p >= 0xc2 && *p <= 0xdf) {
            n = 1;
            cp = *p & 0x1f;

        } else if (*p >= 0xe0 && *p <= 0xef) {
            n = 2;
            cp = *p & 0x0f;

        } else if (*p >= 0xf0 && *p <= 0xf4) {
            n = 3;
            cp = *p & 0x07;

        } else {
            *p++ = '?';
            continue;
        }

        /* the NUL is no continuation byte: never read past it */

        for (i = 1; i <= n; i++) {
            if ((p[i] & 0xc0) != 0x80) {
                break;
            }

            cp = (cp << 6) | (p[i] & 0x3f);
        }

        if (i <= n
            || (n == 2 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff)))
            || (n == 3 && (cp < 0x10000 || cp > 0x10ffff)))
        {
            *p++ = '?';
            continue;
        }

        p += n + 1;
    }
}


/* the length of s without an incomplete UTF-8 sequence at its end */

static size_t
ngx_billing_utf8_prefix(const char *s, size_t len)
{
    size_t          i, need;
    unsigned char   c;

    i = len;

    while (i > 0 && ((unsigned char) s[i - 1] & 0xc0) == 0x80) {
        i--;
    }

    if (i == 0) {
        return len;
    }

    c = (unsigned char) s[i - 1];

    if (c < 0xc0) {
        return len;
    }

    need = (c >= 0xf0) ? 4 : (c >= 0xe0) ? 3 : 2;

    return (len - (i - 1) < need) ? i - 1 : len;
}


static int
ngx_billing_only(ngx_billing_sub_request_t *r, json_t *obj, const char *where,
    const char **keys)
{
    size_t       i, n;
    json_t      *value;
    const char  *key;

    /* a field we do not know is a typo: better refused than ignored */

    json_object_foreach(obj, key, value) {
        for (i = 0; keys[i]; i++) {
            if (strcmp(key, keys[i]) == 0) {
                break;
            }
        }

        if (keys[i] == NULL) {
            /* at most 40 bytes of it, not cut inside a character */

            n = ngx_billing_utf8_prefix(key, strnlen(key, 40));

            return ngx_billing_fail(r, "unknown field \"%.*s\" in %s",
                                    (int) n, key, where);
        }
    }

    return 0;
}


static int
ngx_billing_string(ngx_billing_sub_request_t *r, json_t *obj, const char *key,
    const char *where, int required, ngx_billing_str_t *out)
{
    json_t  *value;

    value = json_object_get(obj, key);

    out->data = "";
    out->len = 0;

    if (value == NULL && !required) {
        return 0;
    }

    if (!json_is_string(value)) {
        return ngx_billing_fail(r, "\"%s%s\" must be a string", where, key);
    }

    out->data = json_string_value(value);
    out->len = json_string_length(value);

    return 0;
}


int
ngx_billing_email_valid(const char *s, size_t len)
{
    size_t       i, at;
    const char  *dot;

    if (len < 3 || len > NGX_BILLING_EMAIL_MAX) {
        return 0;
    }

    at = len;

    for (i = 0; i < len; i++) {
        unsigned char  c = (unsigned char) s[i];

        if (c <= ' ' || c >= 0x7f || c == '"' || c == '(' || c == ')'
            || c == ',' || c == ';' || c == '<' || c == '>' || c == '\\'
            || c == '[' || c == ']')
        {
            return 0;
        }

        if (c == '@') {
            if (at != len) {
                return 0;
            }

            at = i;
        }
    }

    /* a local part, and a domain with a dot neither first nor last */

    if (at == 0 || at >= len - 3) {
        return 0;
    }

    dot = memchr(s + at + 1, '.', len - at - 1);

    return dot != NULL && dot != s + at + 1 && s[len - 1] != '.';
}


/*
 * The characters of UTF-8 text (jansson's strings are valid UTF-8), or -1
 * for one that has no place in a name: C0 and C1 controls, DEL, U+2028
 * and U+2029 (line breaks to JavaScript and to some log readers).
 */

static long
ngx_billing_text_chars(const char *s, size_t len)
{
    long                  n;
    size_t                i;
    const unsigned char  *p;

    p = (const unsigned char *) s;
    n = 0;

    for (i = 0; i < len; i++) {
        if (p[i] < 0x20 || p[i] == 0x7f) {
            return -1;
        }

        if (p[i] == 0xc2 && i + 1 < len && p[i + 1] >= 0x80
            && p[i + 1] <= 0x9f)
        {
            return -1;
        }

        if (p[i] == 0xe2 && i + 2 < len && p[i + 1] == 0x80
            && (p[i + 2] == 0xa8 || p[i + 2] == 0xa9))
        {
            return -1;
        }

        /* a character starts at every byte but continuation bytes */

        if ((p[i] & 0xc0) != 0x80) {
            n++;
        }
    }

    return n;
}


static int
ngx_billing_unit_valid(const char *s, size_t len)
{
    size_t  i;

    if (len == 0 || len > NGX_BILLING_UNIT_MAX) {
        return 0;
    }

    for (i = 0; i < len; i++) {
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z')
              || (s[i] >= '0' && s[i] <= '9')
              || s[i] == '_' || s[i] == '-' || s[i] == ' '))
        {
            return 0;
        }
    }

    return 1;
}


int
ngx_billing_period_parse(ngx_billing_period_t *p, const char *s, size_t len)
{
    size_t   i;
    int64_t  n;

    p->kind = 0;
    p->seconds = 0;

    if (len == 5 && memcmp(s, "month", 5) == 0) {
        p->kind = NGX_BILLING_PERIOD_MONTH;
        return 0;
    }

    if (len == 4 && memcmp(s, "year", 4) == 0) {
        p->kind = NGX_BILLING_PERIOD_YEAR;
        return 0;
    }

    if (len == 0 || len > 12 || s[0] == '0') {
        return -1;
    }

    n = 0;

    for (i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9') {
            return -1;
        }

        n = n * 10 + (s[i] - '0');
    }

    if (n > NGX_BILLING_PERIOD_SECONDS_MAX) {
        return -1;
    }

    p->kind = NGX_BILLING_PERIOD_SECONDS;
    p->seconds = n;

    return 0;
}


int64_t
ngx_billing_period_end(const ngx_billing_period_t *p, int64_t start)
{
    return ngx_billing_period_bound(p, start, 1);
}


int64_t
ngx_billing_period_bound(const ngx_billing_period_t *p, int64_t start,
    uint64_t k)
{
    int64_t   days, secs, y;
    uint64_t  months;
    unsigned  m, d, last;

    static const unsigned char  mdays[] = {
        31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31
    };

    /* far beyond any real date: keeps the arithmetic below in range */

    if (start < 0 || start > NGX_BILLING_TIME_MAX
        || k > NGX_BILLING_PERIODS_MAX)
    {
        return -1;
    }

    if (p->kind == NGX_BILLING_PERIOD_SECONDS) {
        if (p->seconds <= 0
            || k > (uint64_t) (INT64_MAX - start) / (uint64_t) p->seconds)
        {
            return -1;
        }

        return start + (int64_t) k * p->seconds;
    }

    days = start / 86400;
    secs = start % 86400;

    ngx_billing_civil_from_days(days, &y, &m, &d);

    /* k periods from the start itself, never from the period before */

    if (p->kind == NGX_BILLING_PERIOD_YEAR) {
        y += (int64_t) k;

    } else if (p->kind == NGX_BILLING_PERIOD_MONTH) {
        months = (uint64_t) (m - 1) + k;
        y += (int64_t) (months / 12);
        m = (unsigned) (months % 12) + 1;

    } else {
        return -1;
    }

    last = mdays[m - 1];

    if (m == 2 && ((y % 4 == 0 && y % 100 != 0) || y % 400 == 0)) {
        last = 29;
    }

    if (d > last) {
        d = last;
    }

    return ngx_billing_days_from_civil(y, m, d) * 86400 + secs;
}


int64_t
ngx_billing_period_index(const ngx_billing_period_t *p, int64_t start,
    int64_t t)
{
    int64_t   ys, yt, k, bound;
    unsigned  ms, mt, ds, dt;

    if (start < 0 || start > NGX_BILLING_TIME_MAX
        || t > NGX_BILLING_TIME_MAX)
    {
        return -1;
    }

    if (t < start) {
        return 0;
    }

    if (p->kind == NGX_BILLING_PERIOD_SECONDS) {
        if (p->seconds <= 0) {
            return -1;
        }

        return (t - start) / p->seconds + 1;
    }

    /* a guess from the calendar, within one of the answer, then exact */

    ngx_billing_civil_from_days(start / 86400, &ys, &ms, &ds);
    ngx_billing_civil_from_days(t / 86400, &yt, &mt, &dt);

    if (p->kind == NGX_BILLING_PERIOD_YEAR) {
        k = yt - ys;

    } else if (p->kind == NGX_BILLING_PERIOD_MONTH) {
        k = (yt - ys) * 12 + (int64_t) mt - (int64_t) ms;

    } else {
        return -1;
    }

    if (k < 1) {
        k = 1;
    }

    while (k > 1) {
        bound = ngx_billing_period_bound(p, start, (uint64_t) k - 1);

        if (bound < 0) {
            return -1;
        }

        if (bound <= t) {
            break;
        }

        k--;
    }

    for ( ;; ) {
        bound = ngx_billing_period_bound(p, start, (uint64_t) k);

        if (bound < 0) {
            return -1;
        }

        if (bound > t) {
            return k;
        }

        k++;
    }
}


/*
 * Days since 1970-01-01 of a proleptic Gregorian date and back, after
 * Howard Hinnant's "chrono-compatible low-level date algorithms".
 */

static int64_t
ngx_billing_days_from_civil(int64_t y, unsigned m, unsigned d)
{
    int64_t   era;
    unsigned  yoe, doy, doe;

    y -= (m <= 2);
    era = (y >= 0 ? y : y - 399) / 400;
    yoe = (unsigned) (y - era * 400);
    doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
    doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;

    return era * 146097 + (int64_t) doe - 719468;
}


static void
ngx_billing_civil_from_days(int64_t z, int64_t *y, unsigned *m, unsigned *d)
{
    int64_t   era;
    unsigned  doe, yoe, doy, mp;

    z += 719468;
    era = (z >= 0 ? z : z - 146096) / 146097;
    doe = (unsigned) (z - era * 146097);
    yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    mp = (5 * doy + 2) / 153;

    *d = doy - (153 * mp + 2) / 5 + 1;
    *m = mp < 10 ? mp + 3 : mp - 9;
    *y = (int64_t) yoe + era * 400 + (*m <= 2);
}


static int
ngx_billing_fingerprint(ngx_billing_sub_request_t *r)
{
    unsigned int   n, i;
    unsigned char  md[EVP_MAX_MD_SIZE];

    static const char  hex[] = "0123456789abcdef";

    if (!EVP_Digest(r->canonical, strlen(r->canonical), md, &n,
                    EVP_sha256(), NULL))
    {
        return -1;
    }

    for (i = 0; i < n && i < 32; i++) {
        r->fingerprint[2 * i] = hex[md[i] >> 4];
        r->fingerprint[2 * i + 1] = hex[md[i] & 0xf];
    }

    r->fingerprint[2 * i] = '\0';

    return 0;
}
