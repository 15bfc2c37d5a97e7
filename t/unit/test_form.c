
/*
 * Unit tests of the x-www-form-urlencoded builder.
 *
 * The expected encoding of every byte is worked out here with
 * snprintf("%%%02X"), independently of ngx_billing_form_encode().
 */


#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "ngx_billing_form.h"
#include "tap.h"


#define CANARY  0x5a


typedef struct {
    const char  *value;
    size_t       len;
    const char  *encoded;
} encode_case_t;


static const encode_case_t  cases[] = {
    { "", 0, "" },
    { "abcxyz", 6, "abcxyz" },
    { "ABCXYZ", 6, "ABCXYZ" },
    { "0123456789", 10, "0123456789" },
    { "-._~", 4, "-._~" },
    { "sub-42", 6, "sub-42" },
    { " ", 1, "%20" },
    { "a b", 3, "a%20b" },
    { "+", 1, "%2B" },
    { "&", 1, "%26" },
    { "=", 1, "%3D" },
    { "%", 1, "%25" },
    { "%20", 3, "%2520" },
    { "a&b=c", 5, "a%26b%3Dc" },
    { "ops+tag@acme.test", 17, "ops%2Btag%40acme.test" },
    { "/?#[]:", 6, "%2F%3F%23%5B%5D%3A" },
    { "!$'()*,;", 8, "%21%24%27%28%29%2A%2C%3B" },
    { "\"<>\\^`{|}", 9, "%22%3C%3E%5C%5E%60%7B%7C%7D" },
    { "\r\n\t", 3, "%0D%0A%09" },
    { "\x7f", 1, "%7F" },
    { "\xff", 1, "%FF" },
    { "a\0b", 3, "a%00b" },
    { "Zo\xc3\xab", 4, "Zo%C3%AB" },                     /* Zoe, diaeresis */
    { "\xe2\x82\xac" "5", 4, "%E2%82%AC5" },             /* euro sign */
    { "\xf0\x9f\x98\x80", 4, "%F0%9F%98%80" }            /* an emoji */
};


static int
unreserved(unsigned c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
           || (c >= '0' && c <= '9') || c == '-' || c == '.' || c == '_'
           || c == '~';
}


static void
test_encode(void)
{
    size_t    i, n, exp_len;
    char      src[256], dst[3 * 256 + 1], exp[3 * 256 + 1];
    unsigned  c;
    int       same;

    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        memset(dst, CANARY, sizeof(dst));
        n = ngx_billing_form_encode(dst, cases[i].value, cases[i].len);
        is_mem(dst, n, cases[i].encoded, strlen(cases[i].encoded),
               "encode: case %zu, \"%s\"", i, cases[i].encoded);
        ok((unsigned char) dst[n] == CANARY,
           "encode: case %zu: nothing written past it", i);
    }

    /* every byte, alone */

    same = 1;

    for (c = 0; c < 256; c++) {
        src[0] = (char) c;

        if (unreserved(c)) {
            exp[0] = (char) c;
            exp_len = 1;

        } else {
            snprintf(exp, sizeof(exp), "%%%02X", c);
            exp_len = 3;
        }

        n = ngx_billing_form_encode(dst, src, 1);

        if (n != exp_len || memcmp(dst, exp, n) != 0) {
            diag("byte 0x%02x encoded as '%.*s'", c, (int) n, dst);
            same = 0;
        }
    }

    ok(same, "encode: every byte alone, unreserved kept, others %%XX");

    /* every byte, together: 66 unreserved, 190 of 3 */

    exp_len = 0;

    for (c = 0; c < 256; c++) {
        src[c] = (char) c;

        if (unreserved(c)) {
            exp[exp_len++] = (char) c;

        } else {
            snprintf(exp + exp_len, 4, "%%%02X", c);
            exp_len += 3;
        }
    }

    n = ngx_billing_form_encode(dst, src, 256);
    is_int(n, 66 + 3 * 190, "encode: every byte: length");
    is_mem(dst, n, exp, exp_len, "encode: every byte: content");

    /* within the length only */

    n = ngx_billing_form_encode(dst, "ab&cd", 2);
    is_mem(dst, n, "ab", 2, "encode: the length is the caller's");
}


static void
test_fields(void)
{
    char                buf[512];
    ngx_billing_form_t  form;

    ngx_billing_form_init(&form, buf, sizeof(buf));
    ok(form.data == buf && form.len == 0 && form.size == sizeof(buf)
       && form.overflow == 0, "init");

    is_int(ngx_billing_form_add(&form, "email", "ops@acme.test", 13), 0,
           "add email");
    is_mem(form.data, form.len, "email=ops%40acme.test", 21,
           "one field, no separator");

    is_int(ngx_billing_form_add(&form, "name", "ACME Inc.", 9), 0,
           "add name");
    is_mem(form.data, form.len, "email=ops%40acme.test&name=ACME%20Inc.",
           38, "two fields, one &");

    is_int(ngx_billing_form_add(&form, "metadata[consumer_org]", "org-7", 5),
           0, "add metadata[consumer_org]");
    is_mem(form.data, form.len,
           "email=ops%40acme.test&name=ACME%20Inc."
           "&metadata[consumer_org]=org-7", 38 + 29,
           "brackets in keys kept");
    ok(!form.overflow, "no overflow");

    ngx_billing_form_init(&form, buf, sizeof(buf));

    ngx_billing_form_add(&form, "a[b][c]", "x y", 3);
    ngx_billing_form_add(&form, "empty", "", 0);
    ngx_billing_form_add(&form, "k", "a+b&c=d%e", 9);
    ngx_billing_form_add(&form, "cut", "abcdef", 3);
    ngx_billing_form_add(&form, "nul", "a\0b", 3);
    is_mem(form.data, form.len,
           "a[b][c]=x%20y&empty=&k=a%2Bb%26c%3Dd%25e&cut=abc&nul=a%00b",
           58, "nested key, empty value, reserved bytes, a length, NUL");

    ngx_billing_form_init(&form, buf, sizeof(buf));
    ngx_billing_form_add(&form, "first", "", 0);
    is_mem(form.data, form.len, "first=", 6, "an empty first value");
    ngx_billing_form_add(&form, "second", "", 0);
    is_mem(form.data, form.len, "first=&second=", 14,
           "an empty second value");
}


static void
test_add_int(void)
{
    int                 n;
    size_t              i;
    char                buf[512], exp[64];
    ngx_billing_form_t  form;

    static const struct {
        int64_t      value;
        const char  *text;
    } ints[] = {
        { 0, "0" },
        { 1, "1" },
        { 30, "30" },
        { 1500, "1500" },
        { 99999999, "99999999" },
        { -1, "-1" },
        { -1500, "-1500" },
        { INT64_MAX, "9223372036854775807" },
        { INT64_MIN, "-9223372036854775808" },
        { INT64_MIN + 1, "-9223372036854775807" }
    };

    for (i = 0; i < sizeof(ints) / sizeof(ints[0]); i++) {
        ngx_billing_form_init(&form, buf, sizeof(buf));

        is_int(ngx_billing_form_add_int(&form, "amount", ints[i].value), 0,
               "add_int %s", ints[i].text);

        n = snprintf(exp, sizeof(exp), "amount=%s", ints[i].text);
        is_mem(form.data, form.len, exp, (size_t) n, "add_int %s: \"%s\"",
               ints[i].text, exp);
    }

    ngx_billing_form_init(&form, buf, sizeof(buf));
    ngx_billing_form_add(&form, "currency", "usd", 3);
    ngx_billing_form_add_int(&form, "days_until_due", 30);
    ngx_billing_form_add_int(&form, "amount", -5);
    is_mem(form.data, form.len, "currency=usd&days_until_due=30&amount=-5",
           40, "add_int after add, separated");
}


static void
test_overflow(void)
{
    size_t              size;
    char                buf[256];
    ngx_billing_form_t  form;

    is_int(ngx_billing_form_field_max(0, 0), 2, "field_max(0, 0)");
    is_int(ngx_billing_form_field_max(3, 5), 26, "field_max(3, 5)");

    /* a field too big: nothing written, the flag set, for good */

    memset(buf, CANARY, sizeof(buf));
    ngx_billing_form_init(&form, buf, 10);

    is_int(ngx_billing_form_add(&form, "key", "value", 5), -1,
           "26 bytes at most into 10: refused");
    ok(form.overflow, "... overflow set");
    is_int(form.len, 0, "... nothing added");
    ok((unsigned char) buf[0] == CANARY, "... nothing written");

    is_int(ngx_billing_form_add(&form, "a", "", 0), -1,
           "a field that would fit, after an overflow: refused");
    is_int(ngx_billing_form_add_int(&form, "a", 1), -1,
           "add_int after an overflow: refused");
    ok(form.overflow && form.len == 0, "... still overflowed, still empty");

    /* the flag after fields that did fit: those are left as they are */

    memset(buf, CANARY, sizeof(buf));
    ngx_billing_form_init(&form, buf, 20);

    is_int(ngx_billing_form_add(&form, "a", "b", 1), 0, "a=b into 20");
    is_int(ngx_billing_form_add(&form, "c", "defgh", 5), -1,
           "c=defgh (at most 20 more) into the 17 left: refused");
    ok(form.overflow, "... overflow set");
    is_mem(form.data, form.len, "a=b", 3, "... the first field kept");
    is_int(ngx_billing_form_add(&form, "c", "d", 1), -1,
           "c=d, which would fit: refused after the overflow");
    is_mem(form.data, form.len, "a=b", 3, "... the first field still");
    ok((unsigned char) buf[3] == CANARY, "... nothing written after it");

    /*
     * The room reserved is the most a field can take, the key counted as
     * if encoded too: a buffer of exactly ngx_billing_form_field_max()
     * takes the field, one byte less does not, even if the field as
     * encoded would fit.
     */

    size = ngx_billing_form_field_max(1, 3);

    memset(buf, CANARY, sizeof(buf));
    ngx_billing_form_init(&form, buf, size);
    is_int(ngx_billing_form_add(&form, "k", "& =", 3), 0,
           "k=\"& =\" into exactly field_max(1, 3) = %zu bytes", size);
    is_mem(form.data, form.len, "k=%26%20%3D", 11, "... encoded");
    ok(!form.overflow, "... no overflow");
    ok((unsigned char) buf[size] == CANARY, "... nothing written past it");

    memset(buf, CANARY, sizeof(buf));
    ngx_billing_form_init(&form, buf, size - 1);
    is_int(ngx_billing_form_add(&form, "k", "& =", 3), -1,
           "k=\"& =\" into field_max(1, 3) - 1 bytes: refused");
    ok(form.overflow && form.len == 0, "... overflow, empty");

    /* two fields sized exactly, a third refused */

    size = 2 * ngx_billing_form_field_max(1, 2);

    memset(buf, CANARY, sizeof(buf));
    ngx_billing_form_init(&form, buf, size);

    ok(ngx_billing_form_add(&form, "a", "\xff\xff", 2) == 0
       && ngx_billing_form_add(&form, "b", "\xfe\xfe", 2) == 0,
       "two fields into 2 x field_max(1, 2) = %zu bytes", size);
    is_mem(form.data, form.len, "a=%FF%FF&b=%FE%FE", 17, "... both there");
    ok((unsigned char) buf[size] == CANARY, "... nothing written past it");
    is_int(ngx_billing_form_add(&form, "c", "x", 1), -1,
           "a third, at most 8 more into the 5 left: refused");
    ok(form.overflow, "... overflow");

    /* a zero-sized buffer */

    ngx_billing_form_init(&form, NULL, 0);
    is_int(ngx_billing_form_add(&form, "", "", 0), -1,
           "an empty field into 0 bytes: refused");
    ok(form.overflow, "... overflow");

    /* add_int: an INT64_MIN reserves 1 + 18 + 1 + 60 bytes */

    ngx_billing_form_init(&form, buf, 80);
    is_int(ngx_billing_form_add_int(&form, "amount", INT64_MIN), 0,
           "add_int INT64_MIN into exactly 80 bytes");

    ngx_billing_form_init(&form, buf, 79);
    is_int(ngx_billing_form_add_int(&form, "amount", INT64_MIN), -1,
           "add_int INT64_MIN into 79 bytes: refused");
    ok(form.overflow, "... overflow");
}


int
main(void)
{
    test_encode();
    test_fields();
    test_add_int();
    test_overflow();

    return done_testing();
}
