
/*
 * Unit tests of the subscription request (README, "POST subscriptions"),
 * the metering periods and their calendar arithmetic.
 *
 * The canonical strings are written out by hand and their SHA-256 taken
 * with sha256sum; the period ends are those of date -u -d ... +%s, and
 * for every day from 1970 to 2100 those of libc's timegm().
 */


#define _DEFAULT_SOURCE             /* timegm() */

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>
#include <openssl/sha.h>

#include "ngx_billing_plan.h"
#include "tap.h"


#define CUSTOMER_JSON                                                        \
    "{\"email\":\"ops@acme.test\",\"name\":\"ACME\"}"

#define PLAN_JSON                                                            \
    "{\"currency\":\"usd\",\"base_price\":1500,\"unit_price\":\"0.25\","     \
    "\"unit\":\"request\",\"metering_period\":\"month\","                    \
    "\"days_until_due\":30}"

/* the example of README.md */
#define BASE                                                                 \
    "{\"id\":\"sub-42\",\"consumer_org\":\"org-7\","                         \
    "\"customer\":" CUSTOMER_JSON ",\"plan\":" PLAN_JSON "}"

#define BASE_PLAN                                                            \
    "{\"base_price\":1500,\"currency\":\"usd\",\"days_until_due\":30,"       \
    "\"metering_period\":\"month\",\"unit\":\"request\","                    \
    "\"unit_price\":\"0.25\"}"

#define BASE_CANONICAL                                                       \
    "{\"consumer_org\":\"org-7\","                                           \
    "\"customer\":{\"email\":\"ops@acme.test\",\"name\":\"ACME\"},"          \
    "\"id\":\"sub-42\",\"plan\":" BASE_PLAN "}"

/* printf '%s' "$BASE_CANONICAL" | sha256sum */
#define BASE_FINGERPRINT                                                     \
    "26318feaa6c95b4c0bde2c0e3412faa6bb2239331aaf7aba1b18e552ab83525b"

/* the least: defaults, an upper case currency, seconds as a number */
#define SMALL                                                                \
    "{ \"plan\": {\"unit_price\": \"0.000000000001\", "                      \
    "\"metering_period\": 3600, \"currency\": \"EUR\", \"base_price\": 0},"  \
    "\n  \"customer\": {\"email\": \"a@b.co\"}, \"consumer_org\": \"o\", "   \
    "\"id\": \"s\" }"

#define SMALL_CANONICAL                                                      \
    "{\"consumer_org\":\"o\",\"customer\":{\"email\":\"a@b.co\","            \
    "\"name\":\"\"},\"id\":\"s\",\"plan\":{\"base_price\":0,"                \
    "\"currency\":\"eur\",\"days_until_due\":30,"                            \
    "\"metering_period\":\"3600\",\"unit\":\"unit\","                        \
    "\"unit_price\":\"0.000000000001\"}}"

#define SMALL_FINGERPRINT                                                    \
    "11854523a79b84c31f9681b90bf8e3d5a228b2bac4214bac822f956606b9eac7"

/* the fields as the error messages name them */
#define F_ID      "\"id\""
#define F_ORG     "\"consumer_org\""
#define F_CUS     "\"customer\""
#define F_EMAIL   "\"customer.email\""
#define F_NAME    "\"customer.name\""
#define F_PLAN    "\"plan\""
#define F_CUR     "\"plan.currency\""
#define F_BASE    "\"plan.base_price\""
#define F_PRICE   "\"plan.unit_price\""
#define F_UNIT    "\"plan.unit\""
#define F_PERIOD  "\"plan.metering_period\""
#define F_DUE     "\"plan.days_until_due\""

#define ACCEPTED  NULL
#define REMOVED   NULL

#define MONTH     NGX_BILLING_PERIOD_MONTH
#define YEAR      NGX_BILLING_PERIOD_YEAR
#define SECONDS   NGX_BILLING_PERIOD_SECONDS


typedef struct {
    const char  *obj;       /* NULL: the request itself */
    const char  *key;
    const char  *value;     /* JSON text; REMOVED: the field taken out */
    const char  *field;     /* the error names it; ACCEPTED: no error */
} rule_case_t;


static const rule_case_t  rules[] = {

    /* id: 1 to 64 of A-Z a-z 0-9 _ . - */

    { NULL, "id", "\"s\"", ACCEPTED },
    { NULL, "id", "\"Sub_1.a-Z9\"", ACCEPTED },
    { NULL, "id", REMOVED, F_ID },
    { NULL, "id", "\"\"", F_ID },
    { NULL, "id", "\"a b\"", F_ID },
    { NULL, "id", "\"a/b\"", F_ID },
    { NULL, "id", "\"a:b\"", F_ID },
    { NULL, "id", "\"a*\"", F_ID },
    { NULL, "id", "\"a\\nb\"", F_ID },
    { NULL, "id", "\"\\u00e9\"", F_ID },
    { NULL, "id", "42", F_ID },
    { NULL, "id", "null", F_ID },
    { NULL, "id", "true", F_ID },
    { NULL, "id", "[\"a\"]", F_ID },
    { NULL, "id", "{}", F_ID },

    /* consumer_org: the same */

    { NULL, "consumer_org", "\"o\"", ACCEPTED },
    { NULL, "consumer_org", "\"Org_1.a-Z9\"", ACCEPTED },
    { NULL, "consumer_org", REMOVED, F_ORG },
    { NULL, "consumer_org", "\"\"", F_ORG },
    { NULL, "consumer_org", "\"org 7\"", F_ORG },
    { NULL, "consumer_org", "\"org:7\"", F_ORG },
    { NULL, "consumer_org", "\"org\\u00e9\"", F_ORG },
    { NULL, "consumer_org", "7", F_ORG },
    { NULL, "consumer_org", "null", F_ORG },

    /* customer */

    { NULL, "customer", REMOVED, F_CUS },
    { NULL, "customer", "\"ops@acme.test\"", F_CUS },
    { NULL, "customer", "[]", F_CUS },
    { NULL, "customer", "null", F_CUS },
    { NULL, "customer", "1", F_CUS },

    /* customer.email: required, an email address */

    { "customer", "email", "\"a@b.co\"", ACCEPTED },
    { "customer", "email", "\"First.Last+tag@sub.example.co.uk\"",
      ACCEPTED },
    { "customer", "email", REMOVED, F_EMAIL },
    { "customer", "email", "\"\"", F_EMAIL },
    { "customer", "email", "\"ops\"", F_EMAIL },
    { "customer", "email", "\"ops@acme\"", F_EMAIL },
    { "customer", "email", "\"@acme.test\"", F_EMAIL },
    { "customer", "email", "\"ops@acme.test \"", F_EMAIL },
    { "customer", "email", "\"ops@@acme.test\"", F_EMAIL },
    { "customer", "email", "\"\\u00e9@acme.test\"", F_EMAIL },
    { "customer", "email", "1", F_EMAIL },
    { "customer", "email", "null", F_EMAIL },
    { "customer", "email", "[\"ops@acme.test\"]", F_EMAIL },

    /*
     * customer.name: optional, at most 256 characters, no C0 or C1
     * control characters, no line or paragraph separators
     */

    { "customer", "name", REMOVED, ACCEPTED },
    { "customer", "name", "\"\"", ACCEPTED },
    { "customer", "name", "\"Zo\\u00eb & Co. <ops> \\\"q\\\" \\\\ /\"",
      ACCEPTED },
    { "customer", "name", "\"ACME\\u00a0Inc \\ud83d\\ude00\"", ACCEPTED },
    { "customer", "name", "\"ACME\\nInc\"", F_NAME },
    { "customer", "name", "\"ACME\\r\"", F_NAME },
    { "customer", "name", "\"\\tACME\"", F_NAME },
    { "customer", "name", "\"ACME\\u0001\"", F_NAME },
    { "customer", "name", "\"ACME\\u001f\"", F_NAME },
    { "customer", "name", "\"ACME\\u007f\"", F_NAME },
    { "customer", "name", "\"ACME\\u0085\"", F_NAME },
    { "customer", "name", "\"ACME\\u009f\"", F_NAME },
    { "customer", "name", "\"ACME\\u2028Inc\"", F_NAME },
    { "customer", "name", "\"ACME\\u2029\"", F_NAME },
    { "customer", "name", "\"ACME\\u00a0\\u2027\\u202a\"", ACCEPTED },
    { "customer", "name", "5", F_NAME },
    { "customer", "name", "null", F_NAME },
    { "customer", "name", "{}", F_NAME },

    /* plan */

    { NULL, "plan", REMOVED, F_PLAN },
    { NULL, "plan", "\"month\"", F_PLAN },
    { NULL, "plan", "[]", F_PLAN },
    { NULL, "plan", "null", F_PLAN },

    /* plan.currency: three letters */

    { "plan", "currency", "\"usd\"", ACCEPTED },
    { "plan", "currency", "\"USD\"", ACCEPTED },
    { "plan", "currency", "\"eUr\"", ACCEPTED },
    { "plan", "currency", REMOVED, F_CUR },
    { "plan", "currency", "\"\"", F_CUR },
    { "plan", "currency", "\"us\"", F_CUR },
    { "plan", "currency", "\"usdd\"", F_CUR },
    { "plan", "currency", "\"us1\"", F_CUR },
    { "plan", "currency", "\"u d\"", F_CUR },
    { "plan", "currency", "\"us-\"", F_CUR },
    { "plan", "currency", "\"us@\"", F_CUR },
    { "plan", "currency", "\"us[\"", F_CUR },
    { "plan", "currency", "\"\\u00fcs\"", F_CUR },  /* 3 bytes */
    { "plan", "currency", "\"\\u00dcSD\"", F_CUR },
    { "plan", "currency", "840", F_CUR },
    { "plan", "currency", "null", F_CUR },

    /* plan.base_price: integer from 0 to 99999999 */

    { "plan", "base_price", "0", ACCEPTED },
    { "plan", "base_price", "1", ACCEPTED },
    { "plan", "base_price", "99999999", ACCEPTED },
    { "plan", "base_price", REMOVED, F_BASE },
    { "plan", "base_price", "-1", F_BASE },
    { "plan", "base_price", "100000000", F_BASE },
    { "plan", "base_price", "9223372036854775807", F_BASE },
    { "plan", "base_price", "-9223372036854775808", F_BASE },
    { "plan", "base_price", "1500.0", F_BASE },
    { "plan", "base_price", "1.5e3", F_BASE },
    { "plan", "base_price", "\"1500\"", F_BASE },
    { "plan", "base_price", "null", F_BASE },
    { "plan", "base_price", "true", F_BASE },

    /* plan.unit_price: a decimal string, at most 12 decimals */

    { "plan", "unit_price", "\"0\"", ACCEPTED },
    { "plan", "unit_price", "\"12\"", ACCEPTED },
    { "plan", "unit_price", "\"999999.99\"", ACCEPTED },
    { "plan", "unit_price", "\"1.000000000001\"", ACCEPTED },
    { "plan", "unit_price", REMOVED, F_PRICE },
    { "plan", "unit_price", "\"\"", F_PRICE },
    { "plan", "unit_price", "\"1.0000000000001\"", F_PRICE },
    { "plan", "unit_price", "\".5\"", F_PRICE },
    { "plan", "unit_price", "\"5.\"", F_PRICE },
    { "plan", "unit_price", "\"007\"", F_PRICE },
    { "plan", "unit_price", "\"-1\"", F_PRICE },
    { "plan", "unit_price", "\"+1\"", F_PRICE },
    { "plan", "unit_price", "\"1e3\"", F_PRICE },
    { "plan", "unit_price", "\" 1\"", F_PRICE },
    { "plan", "unit_price", "\"99999999999999999999\"", F_PRICE },
    { "plan", "unit_price", "0.25", F_PRICE },
    { "plan", "unit_price", "1", F_PRICE },
    { "plan", "unit_price", "null", F_PRICE },

    /* plan.unit: optional, 1 to 32 of A-Z a-z 0-9 _ - and space */

    { "plan", "unit", REMOVED, ACCEPTED },
    { "plan", "unit", "\"request\"", ACCEPTED },
    { "plan", "unit", "\"API call_v2-x\"", ACCEPTED },
    { "plan", "unit", "\"\"", F_UNIT },
    { "plan", "unit", "\"a.b\"", F_UNIT },
    { "plan", "unit", "\"a/b\"", F_UNIT },
    { "plan", "unit", "\"a\\tb\"", F_UNIT },
    { "plan", "unit", "\"\\u00e9\"", F_UNIT },
    { "plan", "unit", "5", F_UNIT },
    { "plan", "unit", "null", F_UNIT },

    /* plan.metering_period: "month", "year" or seconds */

    { "plan", "metering_period", "\"month\"", ACCEPTED },
    { "plan", "metering_period", "\"year\"", ACCEPTED },
    { "plan", "metering_period", "\"3600\"", ACCEPTED },
    { "plan", "metering_period", "3600", ACCEPTED },
    { "plan", "metering_period", "1", ACCEPTED },
    { "plan", "metering_period", "\"1\"", ACCEPTED },
    { "plan", "metering_period", "316224000", ACCEPTED },
    { "plan", "metering_period", "\"316224000\"", ACCEPTED },
    { "plan", "metering_period", REMOVED, F_PERIOD },
    { "plan", "metering_period", "\"Month\"", F_PERIOD },
    { "plan", "metering_period", "\"YEAR\"", F_PERIOD },
    { "plan", "metering_period", "\"week\"", F_PERIOD },
    { "plan", "metering_period", "\"monthly\"", F_PERIOD },
    { "plan", "metering_period", "0", F_PERIOD },
    { "plan", "metering_period", "\"0\"", F_PERIOD },
    { "plan", "metering_period", "\"03600\"", F_PERIOD },
    { "plan", "metering_period", "-1", F_PERIOD },
    { "plan", "metering_period", "\"-1\"", F_PERIOD },
    { "plan", "metering_period", "316224001", F_PERIOD },
    { "plan", "metering_period", "\"316224001\"", F_PERIOD },
    { "plan", "metering_period", "9223372036854775807", F_PERIOD },
    { "plan", "metering_period", "-9223372036854775808", F_PERIOD },
    { "plan", "metering_period", "3600.0", F_PERIOD },
    { "plan", "metering_period", "1e3", F_PERIOD },
    { "plan", "metering_period", "\"1e3\"", F_PERIOD },
    { "plan", "metering_period", "\"3600 \"", F_PERIOD },
    { "plan", "metering_period", "\" 3600\"", F_PERIOD },
    { "plan", "metering_period", "\"+3600\"", F_PERIOD },
    { "plan", "metering_period", "\"3600s\"", F_PERIOD },
    { "plan", "metering_period", "\"\"", F_PERIOD },
    { "plan", "metering_period", "\"999999999999999999999999999\"",
      F_PERIOD },
    { "plan", "metering_period", "null", F_PERIOD },
    { "plan", "metering_period", "true", F_PERIOD },
    { "plan", "metering_period", "[3600]", F_PERIOD },
    { "plan", "metering_period", "{}", F_PERIOD },

    /* plan.days_until_due: optional, integer from 0 to 365 */

    { "plan", "days_until_due", REMOVED, ACCEPTED },
    { "plan", "days_until_due", "0", ACCEPTED },
    { "plan", "days_until_due", "365", ACCEPTED },
    { "plan", "days_until_due", "-1", F_DUE },
    { "plan", "days_until_due", "366", F_DUE },
    { "plan", "days_until_due", "30.0", F_DUE },
    { "plan", "days_until_due", "\"30\"", F_DUE },
    { "plan", "days_until_due", "null", F_DUE },
    { "plan", "days_until_due", "true", F_DUE },

    /* unknown fields, at each level */

    { NULL, "ids", "\"sub-42\"", "\"ids\"" },
    { NULL, "email", "\"ops@acme.test\"", "\"email\"" },
    { NULL, "currency", "\"usd\"", "\"currency\"" },
    { NULL, "", "1", "\"\"" },
    { "customer", "phone", "\"+1 555\"", "\"phone\"" },
    { "customer", "Email", "\"ops@acme.test\"", "\"Email\"" },
    { "customer", "id", "\"sub-42\"", "\"id\"" },
    { "plan", "interval", "\"month\"", "\"interval\"" },
    { "plan", "name", "\"Gold\"", "\"name\"" },
    { "plan", "unit_amount_decimal", "\"0.25\"", "\"unit_amount_decimal\"" },
    { "plan", "days_until_due ", "30", "\"days_until_due \"" }
};


/* BASE with obj.key set to value (JSON text) or removed; malloc()ed */

static char *
build(const char *obj, const char *key, const char *value)
{
    char          *s;
    json_t        *root, *o, *v;
    json_error_t   error;

    root = json_loads(BASE, 0, &error);
    if (root == NULL) {
        diag("BASE: %s", error.text);
        abort();
    }

    o = obj ? json_object_get(root, obj) : root;
    if (o == NULL) {
        abort();
    }

    if (value == NULL) {
        json_object_del(o, key);

    } else {
        v = json_loads(value, JSON_DECODE_ANY, &error);
        if (v == NULL) {
            diag("%s: %s", value, error.text);
            abort();
        }

        json_object_set_new(o, key, v);
    }

    s = json_dumps(root, JSON_COMPACT);
    json_decref(root);

    if (s == NULL) {
        abort();
    }

    return s;
}


static int
parse_str(ngx_billing_sub_request_t *r, const char *s)
{
    return ngx_billing_sub_request_parse(r, (const unsigned char *) s,
                                         strlen(s));
}


static int
parse_mod(ngx_billing_sub_request_t *r, const char *obj, const char *key,
    const char *value)
{
    int    rc;
    char  *s;

    s = build(obj, key, value);
    rc = parse_str(r, s);
    free(s);

    return rc;
}


/* the message goes into a JSON answer: jansson takes it as UTF-8 */

static int
utf8_valid(const char *s)
{
    json_t  *j;

    j = json_string(s);
    json_decref(j);

    return j != NULL;
}


static const char *
fingerprint_of(const char *obj, const char *key, const char *value,
    char *out)
{
    ngx_billing_sub_request_t  r;

    out[0] = '\0';

    if (parse_mod(&r, obj, key, value) == 0) {
        strcpy(out, r.fingerprint);

    } else {
        diag("%s.%s = %s: %s", obj ? obj : "", key, value ? value : "-",
             r.error);
    }

    ngx_billing_sub_request_free(&r);

    return out;
}


static void
test_known(void)
{
    char                       hex[65];
    unsigned int               i;
    unsigned char              md[SHA256_DIGEST_LENGTH];
    ngx_billing_sub_request_t  r, copy;

    if (!is_int(parse_str(&r, BASE), 0, "README example: parses")) {
        diag("%s", r.error);
        ngx_billing_sub_request_free(&r);
        return;
    }

    is_str(r.error, "", "no error");
    is_mem(r.id.data, r.id.len, "sub-42", 6, "id");
    is_mem(r.consumer_org.data, r.consumer_org.len, "org-7", 5,
           "consumer_org");
    is_mem(r.email.data, r.email.len, "ops@acme.test", 13, "email");
    is_mem(r.name.data, r.name.len, "ACME", 4, "name");
    is_mem(r.unit.data, r.unit.len, "request", 7, "unit");
    is_mem(r.unit_price.data, r.unit_price.len, "0.25", 4, "unit_price");
    is_str(r.currency, "usd", "currency");
    is_int(r.base_price, 1500, "base_price");
    is_int(r.days_until_due, 30, "days_until_due");
    ok(r.price.mantissa == 25 && r.price.scale == 2, "price 25e-2");
    is_int(r.period.kind, MONTH, "period: a month");
    is_str(r.plan, BASE_PLAN, "plan: normalized, sorted");
    is_str(r.canonical, BASE_CANONICAL, "canonical: normalized, sorted");
    is_str(r.fingerprint, BASE_FINGERPRINT, "fingerprint: sha256sum's");

    SHA256((const unsigned char *) r.canonical, strlen(r.canonical), md);

    for (i = 0; i < SHA256_DIGEST_LENGTH; i++) {
        snprintf(hex + 2 * i, 3, "%02x", md[i]);
    }

    is_str(r.fingerprint, hex, "fingerprint: SHA256() of canonical");

    ngx_billing_sub_request_free(&r);
    ok(r.json == NULL && r.plan == NULL && r.canonical == NULL,
       "free: all released");

    /*
     * A second free must be harmless: it finds the pointers the first
     * one cleared, releases nothing again, and leaves the request as it
     * was, ready to be parsed into again (as below).
     */

    memcpy(&copy, &r, sizeof(r));
    ngx_billing_sub_request_free(&r);
    ok(memcmp(&copy, &r, sizeof(r)) == 0
       && r.json == NULL && r.plan == NULL && r.canonical == NULL,
       "free twice: the released request left as it was");

    if (!is_int(parse_str(&r, SMALL), 0, "the least request: parses")) {
        diag("%s", r.error);
        ngx_billing_sub_request_free(&r);
        return;
    }

    is_str(r.currency, "eur", "EUR stored as eur");
    is_mem(r.unit.data, r.unit.len, "unit", 4, "unit: \"unit\" by default");
    is_int(r.days_until_due, 30, "days_until_due: 30 by default");
    ok(r.name.data != NULL && r.name.len == 0, "name: empty, not NULL");
    ok(r.period.kind == SECONDS && r.period.seconds == 3600,
       "period: 3600 seconds");
    ok(r.price.mantissa == 1 && r.price.scale == 12, "price 1e-12");
    is_str(r.canonical, SMALL_CANONICAL, "canonical of the least request");
    is_str(r.fingerprint, SMALL_FINGERPRINT,
           "fingerprint of the least request");

    ngx_billing_sub_request_free(&r);
}


static void
test_rules(void)
{
    int                        rc;
    size_t                     i;
    const char                *name;
    ngx_billing_sub_request_t  r;

    for (i = 0; i < sizeof(rules) / sizeof(rules[0]); i++) {
        rc = parse_mod(&r, rules[i].obj, rules[i].key, rules[i].value);

        name = rules[i].obj ? rules[i].obj : "";

        if (rules[i].field == ACCEPTED) {
            if (!is_int(rc, 0, "%s%s%s = %.40s: accepted", name,
                        *name ? "." : "", rules[i].key,
                        rules[i].value ? rules[i].value : "(removed)"))
            {
                diag("%s", r.error);
            }

        } else if (is_int(rc, -1, "%s%s%s = %.40s: refused", name,
                          *name ? "." : "", rules[i].key,
                          rules[i].value ? rules[i].value : "(removed)"))
        {
            ok(strstr(r.error, rules[i].field) != NULL,
               "... \"%s\" names %s", r.error, rules[i].field);
            ok(r.plan == NULL && r.canonical == NULL,
               "... no plan, no canonical");
        }

        ngx_billing_sub_request_free(&r);
    }
}


static char *
repeat(char *buf, const char *prefix, char c, size_t n, const char *suffix)
{
    size_t  len;

    len = strlen(prefix);

    memcpy(buf, prefix, len);
    memset(buf + len, c, n);
    strcpy(buf + len + n, suffix);

    return buf;
}


static void
test_lengths(void)
{
    size_t                     i;
    char                       v[2048];
    ngx_billing_sub_request_t  r;

    static const struct {
        const char  *obj;
        const char  *key;
        const char  *prefix;
        const char  *suffix;
        size_t       max;
        const char  *field;
    } lens[] = {
        { NULL, "id", "\"", "\"", 64, F_ID },
        { NULL, "consumer_org", "\"", "\"", 64, F_ORG },
        { "customer", "email", "\"", "@acme.test\"", 254 - 10, F_EMAIL },
        { "customer", "name", "\"", "\"", 256, F_NAME },
        { "plan", "unit", "\"", "\"", 32, F_UNIT }
    };

    for (i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
        repeat(v, lens[i].prefix, 'x', lens[i].max, lens[i].suffix);
        is_int(parse_mod(&r, lens[i].obj, lens[i].key, v), 0,
               "%s: the longest accepted", lens[i].key);
        ngx_billing_sub_request_free(&r);

        repeat(v, lens[i].prefix, 'x', lens[i].max + 1, lens[i].suffix);
        is_int(parse_mod(&r, lens[i].obj, lens[i].key, v), -1,
               "%s: one more refused", lens[i].key);
        ok(strstr(r.error, lens[i].field) != NULL, "... names %s",
           lens[i].field);
        ngx_billing_sub_request_free(&r);
    }

    /*
     * The name is limited in characters, not bytes: 256 two-byte ones
     * fit, 257 do not.
     */

    strcpy(v, "\"");

    for (i = 0; i < 256; i++) {
        strcat(v, "\\u00e9");
    }

    strcat(v, "\"");
    is_int(parse_mod(&r, "customer", "name", v), 0,
           "name: 256 x U+00E9, 512 bytes, accepted");
    is_int(r.name.len, 512, "... 512 bytes");
    ngx_billing_sub_request_free(&r);

    v[strlen(v) - 1] = '\0';
    strcat(v, "\\u00e9\"");
    is_int(parse_mod(&r, "customer", "name", v), -1,
           "name: 257 x U+00E9 refused");
    ngx_billing_sub_request_free(&r);
}


static void
test_bodies(void)
{
    size_t                     i;
    char                       body[sizeof(BASE) + 8];
    ngx_billing_sub_request_t  r;

    static const struct {
        const char  *body;
        const char  *error;
    } bodies[] = {
        { "", "not valid JSON" },
        { "{", "not valid JSON" },
        { "{}x", "not valid JSON" },
        { BASE " x", "not valid JSON" },
        { BASE BASE, "not valid JSON" },
        { "\"sub-42\"", "not valid JSON" },
        { "1", "not valid JSON" },
        { "null", "not valid JSON" },
        { "{\"id\":\"a\xff\"}", "not valid JSON" },
        { "{'id':'a'}", "not valid JSON" },
        { "[]", "not a JSON object" },
        { "[" BASE "]", "not a JSON object" },
        { "{}", F_ID },
        { "{\"id\":\"s\"}", F_ORG },

        /* NUL is refused by jansson: the message cannot name a field */
        { "{\"id\":\"s\\u0000\"}", "not valid JSON" },

        /* duplicate keys, at each level */
        { "{\"id\":\"sub-42\",\"id\":\"sub-42\",\"consumer_org\":\"org-7\","
          "\"customer\":" CUSTOMER_JSON ",\"plan\":" PLAN_JSON "}",
          "duplicate" },
        { "{\"id\":\"sub-42\",\"consumer_org\":\"org-7\","
          "\"customer\":{\"email\":\"a@b.co\",\"email\":\"c@d.co\"},"
          "\"plan\":" PLAN_JSON "}", "duplicate" },
        { "{\"id\":\"sub-42\",\"consumer_org\":\"org-7\","
          "\"customer\":" CUSTOMER_JSON ",\"plan\":{\"currency\":\"usd\","
          "\"currency\":\"usd\",\"base_price\":1500,\"unit_price\":\"0.25\","
          "\"metering_period\":\"month\"}}", "duplicate" },
        { "{\"id\":\"sub-42\",\"consumer_org\":\"org-7\","
          "\"customer\":" CUSTOMER_JSON ",\"plan\":" PLAN_JSON
          ",\"plan\":" PLAN_JSON "}", "duplicate" }
    };

    for (i = 0; i < sizeof(bodies) / sizeof(bodies[0]); i++) {
        is_int(parse_str(&r, bodies[i].body), -1, "body %zu: refused", i);
        ok(strstr(r.error, bodies[i].error) != NULL,
           "body %zu: \"%s\" says %s", i, r.error, bodies[i].error);
        ngx_billing_sub_request_free(&r);
    }

    /* the length is the caller's */

    memcpy(body, BASE, sizeof(BASE));

    is_int(ngx_billing_sub_request_parse(&r, (const unsigned char *) body,
                                         sizeof(BASE) - 1),
           0, "BASE, by its length");
    ngx_billing_sub_request_free(&r);

    is_int(ngx_billing_sub_request_parse(&r, (const unsigned char *) body,
                                         sizeof(BASE)),
           -1, "BASE and its NUL: refused");
    ngx_billing_sub_request_free(&r);

    is_int(ngx_billing_sub_request_parse(&r, (const unsigned char *) body,
                                         sizeof(BASE) - 2),
           -1, "BASE but its last byte: refused");
    ngx_billing_sub_request_free(&r);
}


static void
test_messages(void)
{
    char                       key[128], exp[128];
    ngx_billing_sub_request_t  r;

    is_int(parse_mod(&r, NULL, "ids", "1"), -1, "unknown field");
    is_str(r.error, "unknown field \"ids\" in the request",
           "... in the request");
    ngx_billing_sub_request_free(&r);

    parse_mod(&r, "customer", "phone", "1");
    is_str(r.error, "unknown field \"phone\" in \"customer\"",
           "... in \"customer\"");
    ngx_billing_sub_request_free(&r);

    parse_mod(&r, "plan", "interval", "1");
    is_str(r.error, "unknown field \"interval\" in \"plan\"",
           "... in \"plan\"");
    ngx_billing_sub_request_free(&r);

    /* a long unknown key: its first 40 bytes */

    repeat(key, "", 'k', 50, "");
    parse_mod(&r, NULL, key, "1");
    repeat(exp, "unknown field \"", 'k', 40, "\" in the request");
    is_str(r.error, exp, "a key of 50 bytes: 40 of them");
    ngx_billing_sub_request_free(&r);

    /* never cut inside a character: the message must be UTF-8 */

    repeat(key, "", 'a', 39, "\xc3\xa9");
    parse_mod(&r, NULL, key, "1");
    repeat(exp, "unknown field \"", 'a', 39, "\" in the request");
    is_str(r.error, exp, "39 a and U+00E9: the a only");
    ok(utf8_valid(r.error), "... UTF-8");
    ngx_billing_sub_request_free(&r);

    repeat(key, "", 'a', 38, "\xc3\xa9");
    parse_mod(&r, NULL, key, "1");
    repeat(exp, "unknown field \"", 'a', 38, "\xc3\xa9\" in the request");
    is_str(r.error, exp, "38 a and U+00E9: all 40 bytes");
    ngx_billing_sub_request_free(&r);

    repeat(key, "", 'a', 38, "\xe2\x82\xac");
    parse_mod(&r, NULL, key, "1");
    repeat(exp, "unknown field \"", 'a', 38, "\" in the request");
    is_str(r.error, exp, "38 a and U+20AC: the a only");
    ok(utf8_valid(r.error), "... UTF-8");
    ngx_billing_sub_request_free(&r);

    repeat(key, "", 'a', 36, "\xf0\x9f\x98\x80\xf0\x9f\x98\x80");
    parse_mod(&r, "plan", key, "1");
    repeat(exp, "unknown field \"", 'a', 36,
           "\xf0\x9f\x98\x80\" in \"plan\"");
    is_str(r.error, exp, "36 a and two U+1F600: one of them");
    ok(utf8_valid(r.error), "... UTF-8");
    ngx_billing_sub_request_free(&r);

    /* control characters: not into the log */

    parse_mod(&r, "customer", "a\nb\tc\x7f", "1");
    is_str(r.error, "unknown field \"a?b?c?\" in \"customer\"",
           "control characters in a key as ?");
    ngx_billing_sub_request_free(&r);

    /* jansson quotes the input byte by byte: here, half of U+052E */

    is_int(parse_str(&r, "{\"x \\\xd4\xae\"}"), -1,
           "an escape of a non-ASCII character: refused");
    is_str(r.error, "body is not valid JSON: invalid escape near '\"x \\?'",
           "... the half character as ?");
    ok(utf8_valid(r.error), "... UTF-8");
    ngx_billing_sub_request_free(&r);

    is_int(parse_str(&r, "{\"a\":\"\\\xf0\x9f\x98\x80\"}"), -1,
           "an escape of an emoji: refused");
    ok(utf8_valid(r.error) && strstr(r.error, "invalid escape") != NULL,
       "... \"%s\", UTF-8", r.error);
    ngx_billing_sub_request_free(&r);

    /* messages as they are */

    parse_mod(&r, NULL, "id", "\"\"");
    is_str(r.error, "\"id\" must be 1 to 64 characters of A-Z a-z 0-9 _ . -, "
           "not \".\" or \"..\"",
           "the id message");
    ngx_billing_sub_request_free(&r);

    parse_mod(&r, "customer", "email", "1");
    is_str(r.error, "\"customer.email\" must be a string",
           "a field of the wrong type");
    ngx_billing_sub_request_free(&r);

    parse_mod(&r, "plan", "metering_period", "0");
    is_str(r.error, "\"plan.metering_period\" must be \"month\", \"year\" or "
           "a number of seconds from 1 to 316224000", "the period message");
    ngx_billing_sub_request_free(&r);
}


static void
test_normalized(void)
{
    ngx_billing_sub_request_t  r;

    is_int(parse_mod(&r, "plan", "currency", "\"USD\""), 0, "USD");
    is_str(r.currency, "usd", "USD: stored as usd");
    ok(strstr(r.plan, "\"currency\":\"usd\"") != NULL, "USD: plan has usd");
    ngx_billing_sub_request_free(&r);

    is_int(parse_mod(&r, "plan", "metering_period", "\"3600\""), 0,
           "\"3600\"");
    ok(r.period.kind == SECONDS && r.period.seconds == 3600,
       "\"3600\": 3600 seconds");
    ok(strstr(r.plan, "\"metering_period\":\"3600\"") != NULL,
       "\"3600\": plan has \"3600\"");
    ngx_billing_sub_request_free(&r);

    is_int(parse_mod(&r, "plan", "metering_period", "3600"), 0,
           "metering_period 3600");
    ok(r.period.kind == SECONDS && r.period.seconds == 3600,
       "3600: 3600 seconds");
    ok(strstr(r.plan, "\"metering_period\":\"3600\"") != NULL,
       "3600: plan has \"3600\", a string");
    ngx_billing_sub_request_free(&r);

    is_int(parse_mod(&r, "plan", "metering_period", "\"year\""), 0, "year");
    is_int(r.period.kind, YEAR, "year: a year");
    ok(strstr(r.plan, "\"metering_period\":\"year\"") != NULL,
       "year: plan has \"year\"");
    ngx_billing_sub_request_free(&r);

    is_int(parse_mod(&r, "plan", "unit", REMOVED), 0, "no unit");
    is_mem(r.unit.data, r.unit.len, "unit", 4, "no unit: \"unit\"");
    ok(strstr(r.plan, "\"unit\":\"unit\"") != NULL, "no unit: in the plan");
    ngx_billing_sub_request_free(&r);

    is_int(parse_mod(&r, "plan", "days_until_due", REMOVED), 0,
           "no days_until_due");
    is_int(r.days_until_due, 30, "no days_until_due: 30");
    ok(strstr(r.plan, "\"days_until_due\":30") != NULL,
       "no days_until_due: 30 in the plan");
    ngx_billing_sub_request_free(&r);

    is_int(parse_mod(&r, "customer", "name", REMOVED), 0, "no name");
    ok(r.name.data != NULL && r.name.len == 0, "no name: empty");
    ok(strstr(r.canonical, "\"name\":\"\"") != NULL,
       "no name: \"\" in the canonical request");
    ngx_billing_sub_request_free(&r);

    /* escaped and non-ASCII characters: jansson's escapes, raw UTF-8 */

    is_int(parse_mod(&r, "customer", "name",
                     "\"A \\\"B\\\" \\\\ Zo\\u00eb/\\u00a0\""), 0,
           "a name to escape");
    ok(strstr(r.canonical,
              "\"name\":\"A \\\"B\\\" \\\\ Zo\xc3\xab/\xc2\xa0\"") != NULL,
       "... escaped in the canonical request");
    ngx_billing_sub_request_free(&r);
}


static void
test_fingerprints(void)
{
    size_t                     i;
    char                       base[65], fp[65];
    ngx_billing_sub_request_t  r;

    static const char  *reordered =
        "\n{ \"plan\" : {\"days_until_due\":30, \"metering_period\":"
        "\"month\",\"unit\":\"request\",\"unit_price\":\"0.25\","
        "\"base_price\":1500,\"currency\":\"usd\"},\t\"customer\": "
        "{\"name\":\"ACME\",\"email\":\"ops@acme.test\"},"
        "\"consumer_org\":\"org-7\",\"id\":\"sub-42\"}\r\n";

    static const struct {
        const char  *obj;
        const char  *key;
        const char  *value;
    } same[] = {
        { NULL, "id", "\"sub-42\"" },
        { NULL, "id", "\"\\u0073ub\\u002d42\"" },
        { "plan", "currency", "\"USD\"" },
        { "plan", "currency", "\"uSd\"" },
        { "plan", "metering_period", "\"month\"" },
        { "plan", "days_until_due", REMOVED },
        { "plan", "days_until_due", "30" },
        { "plan", "base_price", "1500" }
    }, other[] = {
        { NULL, "id", "\"sub-43\"" },
        { NULL, "id", "\"Sub-42\"" },
        { NULL, "consumer_org", "\"org-8\"" },
        { "customer", "email", "\"ops2@acme.test\"" },
        { "customer", "email", "\"OPS@acme.test\"" },
        { "customer", "name", "\"ACME Corp\"" },
        { "customer", "name", "\"acme\"" },
        { "customer", "name", REMOVED },
        { "customer", "name", "\"\"" },
        { "plan", "currency", "\"eur\"" },
        { "plan", "base_price", "1501" },
        { "plan", "base_price", "0" },
        { "plan", "unit_price", "\"0.26\"" },
        { "plan", "unit_price", "\"25\"" },

        /* the price as sent: "0.250" is not "0.25" */
        { "plan", "unit_price", "\"0.250\"" },

        { "plan", "unit", "\"call\"" },
        { "plan", "unit", REMOVED },
        { "plan", "metering_period", "\"year\"" },
        { "plan", "metering_period", "\"2592000\"" },
        { "plan", "metering_period", "2592000" },
        { "plan", "days_until_due", "31" },
        { "plan", "days_until_due", "0" }
    };

    fingerprint_of(NULL, "id", "\"sub-42\"", base);
    is_str(base, BASE_FINGERPRINT, "the README example's fingerprint");

    for (i = 0; i < sizeof(same) / sizeof(same[0]); i++) {
        is_str(fingerprint_of(same[i].obj, same[i].key, same[i].value, fp),
               base, "%s.%s = %s: the same fingerprint",
               same[i].obj ? same[i].obj : "", same[i].key,
               same[i].value ? same[i].value : "(removed)");
    }

    for (i = 0; i < sizeof(other) / sizeof(other[0]); i++) {
        fingerprint_of(other[i].obj, other[i].key, other[i].value, fp);
        ok(strlen(fp) == 64 && strcmp(fp, base) != 0,
           "%s.%s = %s: another fingerprint",
           other[i].obj ? other[i].obj : "", other[i].key,
           other[i].value ? other[i].value : "(removed)");
    }

    /* absent and empty name; absent and default unit; 3600 two ways */

    ok(strcmp(fingerprint_of("customer", "name", REMOVED, base),
              fingerprint_of("customer", "name", "\"\"", fp)) == 0
       && base[0], "no name and an empty name: the same");

    ok(strcmp(fingerprint_of("plan", "unit", REMOVED, base),
              fingerprint_of("plan", "unit", "\"unit\"", fp)) == 0
       && base[0], "no unit and \"unit\": the same");

    ok(strcmp(fingerprint_of("plan", "metering_period", "3600", base),
              fingerprint_of("plan", "metering_period", "\"3600\"", fp))
       == 0 && base[0], "3600 and \"3600\": the same");

    /* the text around: order and spaces */

    is_int(parse_str(&r, reordered), 0, "reordered, spaced: parses");
    is_str(r.canonical, BASE_CANONICAL, "... the same canonical");
    is_str(r.fingerprint, BASE_FINGERPRINT, "... the same fingerprint");
    ngx_billing_sub_request_free(&r);
}


static void
test_canonical_round_trip(void)
{
    size_t                     i;
    char                      *again;
    ngx_billing_sub_request_t  r, r2;

    /* the canonical request is a request, and its own canonical form */

    for (i = 0; i < sizeof(rules) / sizeof(rules[0]); i++) {
        if (rules[i].field != ACCEPTED) {
            continue;
        }

        if (parse_mod(&r, rules[i].obj, rules[i].key, rules[i].value) != 0) {
            ngx_billing_sub_request_free(&r);
            continue;
        }

        again = NULL;

        if (ngx_billing_sub_request_parse(&r2,
                                          (const unsigned char *) r.canonical,
                                          strlen(r.canonical))
            == 0)
        {
            again = r2.canonical;
        }

        ok(again && strcmp(again, r.canonical) == 0
           && strcmp(r2.fingerprint, r.fingerprint) == 0
           && strcmp(r2.plan, r.plan) == 0,
           "%s.%s = %.40s: the canonical request parses to itself",
           rules[i].obj ? rules[i].obj : "", rules[i].key,
           rules[i].value ? rules[i].value : "(removed)");

        ngx_billing_sub_request_free(&r2);
        ngx_billing_sub_request_free(&r);
    }
}


/* s for a test name: a byte other than printable ASCII as \xNN */

static const char *
printable(const char *s, char *buf, size_t size)
{
    char           *p;
    unsigned char   c;

    p = buf;

    for ( /* void */ ; *s && p + 5 < buf + size; s++) {
        c = (unsigned char) *s;

        if (c >= ' ' && c < 0x7f && c != '\\') {
            *p++ = (char) c;

        } else {
            p += snprintf(p, 5, "\\x%02x", c);
        }
    }

    *p = '\0';

    return buf;
}


static int
email(const char *s)
{
    return ngx_billing_email_valid(s, strlen(s));
}


static void
test_email(void)
{
    size_t  i;
    char    buf[300], name[128];

    static const char  *valid[] = {
        "a@b.c",
        "ops@acme.test",
        "First.Last+tag@sub.example.co.uk",
        "o'brien@example.ie",
        "x_y-z=1?{}|~!#$%&*/^`@example.com",
        "user@xn--bcher-kva.example"
    };

    static const char  *invalid[] = {
        "",
        "a",
        "ab",
        "@",
        "a@",
        "a@b",
        "a@b.",
        "a@bc",
        "@b.c",
        "@bc.de",
        "a@.bc",
        "a@.b.c",
        "a@b.c.",
        "a@bcde",
        "a@@b.c",
        "a@b@c.d",
        "a b@c.d",
        "a@b c.d",
        " a@b.c",
        "a@b.c ",
        "a\t@b.c",
        "a\n@b.c",
        "\"a\"@b.c",
        "a(b)@c.d",
        "a,b@c.d",
        "a;b@c.d",
        "a<b@c.d",
        "a>b@c.d",
        "a\\b@c.d",
        "a@[1.2.3.4]",
        "a@b.c]",
        "\xc3\xa9@b.c",
        "a@b\xc3\xa9.c",
        "a@b.c\x7f",
        "a@b.c\x01"
    };

    for (i = 0; i < sizeof(valid) / sizeof(valid[0]); i++) {
        ok(email(valid[i]), "email \"%s\": valid", valid[i]);
    }

    for (i = 0; i < sizeof(invalid) / sizeof(invalid[0]); i++) {
        ok(!email(invalid[i]), "email \"%s\": not valid",
           printable(invalid[i], name, sizeof(name)));
    }

    ok(!ngx_billing_email_valid("a\0@b.c", 6), "email with a NUL: not valid");
    ok(ngx_billing_email_valid("a@b.cx", 5), "email: within the length");
    ok(!ngx_billing_email_valid("a@b.c", 4), "email: \"a@b.\" of \"a@b.c\"");

    /* 254 at most */

    repeat(buf, "", 'a', 254 - 6, "@b.com");
    ok(email(buf), "email of 254 characters: valid");
    repeat(buf, "", 'a', 255 - 6, "@b.com");
    ok(!email(buf), "email of 255 characters: not valid");
}


static int
period(ngx_billing_period_t *p, const char *s)
{
    return ngx_billing_period_parse(p, s, strlen(s));
}


static void
test_period_parse(void)
{
    size_t                i;
    ngx_billing_period_t  p;

    static const char  *invalid[] = {
        "", "0", "00", "01", "03600", "-1", "+1", " 1", "1 ", "1e3", "1.0",
        "0x10", "Month", "MONTH", "Year", "months", "mont", "yearly",
        "month ", " year", "316224001", "999999999999", "1234567890123",
        "99999999999999999999999", "one"
    };

    ok(period(&p, "month") == 0 && p.kind == MONTH && p.seconds == 0,
       "\"month\"");
    ok(period(&p, "year") == 0 && p.kind == YEAR && p.seconds == 0,
       "\"year\"");
    ok(period(&p, "1") == 0 && p.kind == SECONDS && p.seconds == 1, "\"1\"");
    ok(period(&p, "3600") == 0 && p.kind == SECONDS && p.seconds == 3600,
       "\"3600\"");
    ok(period(&p, "2592000") == 0 && p.kind == SECONDS
       && p.seconds == 2592000, "\"2592000\"");
    ok(period(&p, "316224000") == 0 && p.kind == SECONDS
       && p.seconds == NGX_BILLING_PERIOD_SECONDS_MAX,
       "\"316224000\": the most, 10 x 366 days");

    for (i = 0; i < sizeof(invalid) / sizeof(invalid[0]); i++) {
        p.kind = 77;
        p.seconds = 77;
        ok(period(&p, invalid[i]) == -1 && p.kind == 0 && p.seconds == 0,
           "\"%s\": refused, left zero", invalid[i]);
    }

    ok(ngx_billing_period_parse(&p, "monthly", 5) == 0 && p.kind == MONTH,
       "\"month\" of \"monthly\", by the length");
    ok(ngx_billing_period_parse(&p, "36000", 4) == 0 && p.seconds == 3600,
       "\"3600\" of \"36000\", by the length");
    ok(ngx_billing_period_parse(&p, "1\0", 2) == -1,
       "a NUL inside the length: refused");
}


typedef struct {
    int64_t      start;
    int          kind;
    int64_t      seconds;
    int64_t      end;
    const char  *name;
} end_case_t;


/* date -u -d '<date>' +%s */

static const end_case_t  ends[] = {
    { 1706659200, MONTH, 0, 1709164800, "2024-01-31 + month = 2024-02-29" },
    { 1738281600, MONTH, 0, 1740700800, "2025-01-31 + month = 2025-02-28" },
    { 1801180800, MONTH, 0, 1803772800, "2027-01-29 + month = 2027-02-28" },
    { 1704026096, MONTH, 0, 1706704496,
      "2023-12-31 12:34:56 + month = 2024-01-31 12:34:56" },
    { 1709164800, MONTH, 0, 1711670400, "2024-02-29 + month = 2024-03-29" },
    { 1711843201, MONTH, 0, 1714435201,
      "2024-03-31 00:00:01 + month = 2024-04-30 00:00:01" },
    { 1717113600, MONTH, 0, 1719705600, "2024-05-31 + month = 2024-06-30" },
    { 1725098400, MONTH, 0, 1727690400,
      "2024-08-31 10:00 + month = 2024-09-30 10:00" },
    { 949363199, MONTH, 0, 951868799,
      "2000-01-31 23:59:59 + month = 2000-02-29 23:59:59" },
    { 4105058400LL, MONTH, 0, 4107477600LL,
      "2100-01-31 06:00 + month = 2100-02-28 06:00" },
    { 1700000000, MONTH, 0, 1702592000,
      "README: 1700000000 + month = 1702592000" },
    { 0, MONTH, 0, 2678400, "1970-01-01 + month = 1970-02-01" },
    { 31535999, MONTH, 0, 34214399,
      "1970-12-31 23:59:59 + month = 1971-01-31 23:59:59" },
    { 253399622400LL, MONTH, 0, 253399622400LL + 31 * 86400,
      "9999-12-01 + month = 10000-01-01" },
    { 253402300799LL, MONTH, 0, 253404979199LL,
      "9999-12-31 23:59:59 + month = 10000-01-31 23:59:59" },

    { 1709193600, YEAR, 0, 1740729600,
      "2024-02-29 08:00 + year = 2025-02-28 08:00" },
    { 1677542400, YEAR, 0, 1709078400, "2023-02-28 + year = 2024-02-28" },
    { 1706659200, YEAR, 0, 1738281600, "2024-01-31 + year = 2025-01-31" },
    { 1704026096, YEAR, 0, 1735648496,
      "2023-12-31 12:34:56 + year = 2024-12-31 12:34:56" },
    { 0, YEAR, 0, 31536000, "1970-01-01 + year = 1971-01-01" },
    { 31535999, YEAR, 0, 63071999,
      "1970-12-31 23:59:59 + year = 1971-12-31 23:59:59" },
    { 253402300799LL, YEAR, 0, 253433923199LL,
      "9999-12-31 23:59:59 + year = 10000-12-31 23:59:59" },

    { 1700000000, SECONDS, 3600, 1700003600, "1700000000 + 3600 s" },
    { 0, SECONDS, 1, 1, "0 + 1 s" },
    { 1706659200, SECONDS, 2592000, 1709251200,
      "2024-01-31 + 2592000 s = 2024-03-01" },
    { 253402300799LL, SECONDS, 316224000, 253718524799LL,
      "the last start + the longest period" },

    /* before 1970, after 9999: refused */

    { -1, MONTH, 0, -1, "-1 + month: -1" },
    { -1, YEAR, 0, -1, "-1 + year: -1" },
    { -1, SECONDS, 3600, -1, "-1 + 3600 s: -1" },
    { -86400 * 365LL, MONTH, 0, -1, "1969 + month: -1" },
    { INT64_MIN, MONTH, 0, -1, "INT64_MIN + month: -1" },
    { INT64_MIN, SECONDS, 3600, -1, "INT64_MIN + 3600 s: -1" },
    { 253402300800LL, MONTH, 0, -1, "10000-01-01 + month: -1" },
    { 253402300800LL, YEAR, 0, -1, "10000-01-01 + year: -1" },
    { 253402300800LL, SECONDS, 1, -1, "10000-01-01 + 1 s: -1" },
    { INT64_MAX, MONTH, 0, -1, "INT64_MAX + month: -1" },
    { INT64_MAX, YEAR, 0, -1, "INT64_MAX + year: -1" },
    { INT64_MAX, SECONDS, 1, -1, "INT64_MAX + 1 s: -1" },
    { INT64_MAX - 1, SECONDS, 316224000, -1, "INT64_MAX - 1 + 10 y: -1" },

    /* not a period */

    { 1700000000, 0, 0, -1, "kind 0: -1" },
    { 1700000000, 77, 0, -1, "kind 77: -1" }
};


static void
test_period_end(void)
{
    size_t                i;
    ngx_billing_period_t  p;

    for (i = 0; i < sizeof(ends) / sizeof(ends[0]); i++) {
        p.kind = ends[i].kind;
        p.seconds = ends[i].seconds;

        is_int(ngx_billing_period_end(&p, ends[i].start), ends[i].end,
               "%s", ends[i].name);
    }
}


/* libc's answer: the same day and time a month or a year on, clamped */

static int64_t
libc_end(int64_t start, int kind)
{
    time_t     t;
    struct tm  tm, last;

    t = (time_t) start;
    gmtime_r(&t, &tm);

    if (kind == MONTH) {
        tm.tm_mon++;

    } else {
        tm.tm_year++;
    }

    /* day 0 of the month after: the last day of the month due */

    last = tm;
    last.tm_mon++;
    last.tm_mday = 0;
    last.tm_hour = 12;
    timegm(&last);

    if (tm.tm_mday > last.tm_mday) {
        tm.tm_mday = last.tm_mday;
    }

    return (int64_t) timegm(&tm);
}


static void
test_period_end_every_day(void)
{
    int                   kind, same;
    int64_t               day, start, got, exp;
    ngx_billing_period_t  p;

    /* every day of 1970 to 2100 (4102444800), at a time of day of its own */

    for (kind = MONTH; kind <= YEAR; kind++) {
        p.kind = kind;
        p.seconds = 0;
        same = 1;

        for (day = 0; day < 4102444800LL / 86400; day++) {
            start = day * 86400 + (day * 7919) % 86400;

            got = ngx_billing_period_end(&p, start);
            exp = libc_end(start, kind);

            if (got != exp || got % 86400 != start % 86400) {
                diag("start %lld: got %lld, timegm() %lld",
                     (long long) start, (long long) got, (long long) exp);
                same = 0;
                break;
            }
        }

        ok(same, "every day 1970-2099 + %s: as timegm(), time kept",
           kind == MONTH ? "month" : "year");
    }
}


/* UTC midnight of a date, through libc */

static int64_t
utc(int y, int m, int d)
{
    struct tm  tm;

    memset(&tm, 0, sizeof(tm));
    tm.tm_year = y - 1900;
    tm.tm_mon = m - 1;
    tm.tm_mday = d;

    return (int64_t) timegm(&tm);
}


static void
test_period_bound(void)
{
    int                   i, k, good;
    int64_t               start, b, prev;
    ngx_billing_period_t  p;

    static const struct {
        int  y, m, d;
    }  jan31[] = {
        { 2025, 2, 28 }, { 2025, 3, 31 }, { 2025, 4, 30 }, { 2025, 5, 31 },
        { 2025, 6, 30 }, { 2025, 7, 31 }, { 2025, 8, 31 }, { 2025, 9, 30 },
        { 2025, 10, 31 }, { 2025, 11, 30 }, { 2025, 12, 31 },
        { 2026, 1, 31 }, { 2026, 2, 28 }
    };

    p.kind = MONTH;
    p.seconds = 0;

    /* from January 31: the last day of shorter months, the 31st after */

    start = utc(2025, 1, 31) + 3600;
    good = 1;

    for (i = 0; i < (int) (sizeof(jan31) / sizeof(jan31[0])); i++) {
        b = ngx_billing_period_bound(&p, start, i + 1);

        if (b != utc(jan31[i].y, jan31[i].m, jan31[i].d) + 3600) {
            diag("period %d of Jan 31: %lld", i + 1, (long long) b);
            good = 0;
        }
    }

    ok(good, "periods of Jan 31, 2025: Feb 28, Mar 31, Apr 30, ... Feb 28");

    /* not chained: Feb 28 + a month would be Mar 28 */

    is_int(ngx_billing_period_bound(&p, start, 2),
           utc(2025, 3, 31) + 3600, "Jan 31 + 2 months: Mar 31, not Mar 28");

    /* a leap year, from January 30 and from February 29 */

    is_int(ngx_billing_period_bound(&p, utc(2024, 1, 30), 1),
           utc(2024, 2, 29), "Jan 30, 2024 + a month: Feb 29");
    is_int(ngx_billing_period_bound(&p, utc(2024, 2, 29), 12),
           utc(2025, 2, 28), "Feb 29, 2024 + 12 months: Feb 28, 2025");
    is_int(ngx_billing_period_bound(&p, utc(2024, 2, 29), 48),
           utc(2028, 2, 29), "Feb 29, 2024 + 48 months: Feb 29, 2028");

    /* December to January */

    is_int(ngx_billing_period_bound(&p, utc(2025, 12, 15), 1),
           utc(2026, 1, 15), "Dec 15 + a month: Jan 15 of the next year");
    is_int(ngx_billing_period_bound(&p, utc(2025, 12, 31), 2),
           utc(2026, 2, 28), "Dec 31 + 2 months: Feb 28");
    is_int(ngx_billing_period_bound(&p, utc(2025, 11, 30), 25),
           utc(2027, 12, 30), "Nov 30 + 25 months: Dec 30, two years on");

    p.kind = YEAR;

    is_int(ngx_billing_period_bound(&p, utc(2024, 2, 29), 1),
           utc(2025, 2, 28), "Feb 29 + a year: Feb 28");
    is_int(ngx_billing_period_bound(&p, utc(2024, 2, 29), 4),
           utc(2028, 2, 29), "Feb 29 + 4 years: Feb 29 again");

    p.kind = SECONDS;
    p.seconds = 4;

    is_int(ngx_billing_period_bound(&p, 1000, 3), 1012, "4 s periods: 3rd ends at +12");
    is_int(ngx_billing_period_bound(&p, 1000, 0), 1000, "period 0 ends at the start");
    is_int(ngx_billing_period_bound(&p, NGX_BILLING_TIME_MAX + 1, 1), -1,
           "a start past year 9999: -1");
    is_int(ngx_billing_period_bound(&p, 0, NGX_BILLING_PERIODS_MAX + 1), -1,
           "too many periods: -1");
    is_int(ngx_billing_period_bound(&p, -1, 1), -1, "a negative start: -1");

    p.kind = MONTH;
    p.seconds = 0;


    /* period 1 is period_end() */

    is_int(ngx_billing_period_bound(&p, start, 1),
           ngx_billing_period_end(&p, start), "bound(1) is period_end()");

    /* bounds only grow, and index() finds each period from inside */

    good = 1;

    for (p.kind = MONTH; p.kind <= SECONDS; p.kind++) {
        p.seconds = (p.kind == SECONDS) ? 3600 : 0;
        prev = start;

        for (k = 1; k <= 600; k++) {
            b = ngx_billing_period_bound(&p, start, k);

            if (b <= prev
                || ngx_billing_period_index(&p, start, prev) != k
                || ngx_billing_period_index(&p, start, b - 1) != k
                || ngx_billing_period_index(&p, start, (prev + b) / 2) != k
                || ngx_billing_period_index(&p, start, b) != k + 1)
            {
                diag("kind %d, period %d: [%lld, %lld)", p.kind, k,
                     (long long) prev, (long long) b);
                good = 0;
                break;
            }

            prev = b;
        }
    }

    ok(good, "600 periods of each kind: increasing, each found by index()");

    p.kind = MONTH;

    is_int(ngx_billing_period_index(&p, start, start - 1), 0,
           "before the start: 0");
    is_int(ngx_billing_period_index(&p, start, start), 1,
           "at the start: period 1");
}


int
main(void)
{
    test_known();
    test_rules();
    test_lengths();
    test_bodies();
    test_messages();
    test_normalized();
    test_fingerprints();
    test_canonical_round_trip();
    test_email();
    test_period_parse();
    test_period_end();
    test_period_end_every_day();
    test_period_bound();

    return done_testing();
}
