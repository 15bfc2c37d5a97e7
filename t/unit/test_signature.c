
/*
 * Unit tests of the Stripe-Signature parser and verifier.
 *
 * The expected signatures are computed here with OpenSSL's one-shot
 * HMAC(), independently of ngx_billing_sig_hmac().
 */


#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "ngx_billing_signature.h"
#include "tap.h"


#define SECRET_A  "whsec_test_secret_a_0123456789abcdef"
#define SECRET_B  "whsec_test_secret_b_fedcba9876543210"
#define SECRET_C  "whsec_not_configured"
#define T         "1700000000"
#define T_VAL     INT64_C(1700000000)
#define BODY      "{\"id\":\"evt_1\",\"object\":\"event\"}"

/* printf '%s' '1700000000.{"a":1}' | openssl dgst -sha256 -hmac whsec_test */
#define KNOWN_HEX                                                            \
    "38877139021993b830af32feea6e18a8da83eb2f6e49ee50bd9e4cf4ca4d3789"

#define S(s)      (const unsigned char *) (s), sizeof(s) - 1

/* bearer tokens of billing_api_token_file, as long as a typical one */
#define TOKEN                                                                \
    "api-token-0123456789abcdefghijklmnopqrstuvwxyz-ABCDEFGHIJKLMNOP"
#define OTHER_TOKEN                                                          \
    "api-token-0123456789abcdefghijklmnopqrstuvwxyz-ABCDEFGHIJKLMNOQ"


static const ngx_billing_secret_t  secret_a[] = {
    { (const unsigned char *) SECRET_A, sizeof(SECRET_A) - 1, NULL }
};

static const ngx_billing_secret_t  secret_b[] = {
    { (const unsigned char *) SECRET_B, sizeof(SECRET_B) - 1, NULL }
};

static const ngx_billing_secret_t  secret_c[] = {
    { (const unsigned char *) SECRET_C, sizeof(SECRET_C) - 1, NULL }
};

static const ngx_billing_secret_t  secrets_ab[] = {
    { (const unsigned char *) SECRET_A, sizeof(SECRET_A) - 1, NULL },
    { (const unsigned char *) SECRET_B, sizeof(SECRET_B) - 1, NULL }
};

static const ngx_billing_secret_t  secrets_cb[] = {
    { (const unsigned char *) SECRET_C, sizeof(SECRET_C) - 1, NULL },
    { (const unsigned char *) SECRET_B, sizeof(SECRET_B) - 1, NULL }
};


static void
to_hex(const unsigned char *in, size_t len, char *out)
{
    size_t             i;
    static const char  hex[] = "0123456789abcdef";

    for (i = 0; i < len; i++) {
        out[2 * i] = hex[in[i] >> 4];
        out[2 * i + 1] = hex[in[i] & 0x0f];
    }

    out[2 * len] = '\0';
}


/* HMAC-SHA256("<t>.<body>") with OpenSSL's one-shot HMAC() */

static void
sign_raw(const char *secret, const char *t, const void *body, size_t len,
    unsigned char *md)
{
    size_t         tlen;
    unsigned int   md_len;
    unsigned char  *msg;

    tlen = strlen(t);

    msg = malloc(tlen + 1 + len + 1);
    if (msg == NULL) {
        abort();
    }

    memcpy(msg, t, tlen);
    msg[tlen] = '.';
    memcpy(msg + tlen + 1, body, len);

    md_len = 0;

    if (HMAC(EVP_sha256(), secret, (int) strlen(secret), msg, tlen + 1 + len,
             md, &md_len)
        == NULL || md_len != NGX_BILLING_SIG_LEN)
    {
        abort();
    }

    free(msg);
}


static void
sign_hex(const char *secret, const char *t, const void *body, size_t len,
    char *hex)
{
    unsigned char  md[NGX_BILLING_SIG_LEN];

    sign_raw(secret, t, body, len, md);
    to_hex(md, sizeof(md), hex);
}


static int
parse_str(ngx_billing_sig_t *sig, const char *header)
{
    return ngx_billing_sig_parse(sig, (const unsigned char *) header,
                                 strlen(header));
}


static int
check_str(const char *header, const char *body,
    const ngx_billing_secret_t *secrets, size_t n, int64_t now,
    int64_t tolerance)
{
    return ngx_billing_sig_check((const unsigned char *) header,
                                 strlen(header), (const unsigned char *) body,
                                 strlen(body), secrets, n, now, tolerance);
}


static void
test_known_vector(void)
{
    char               hex[2 * NGX_BILLING_SIG_LEN + 1];
    unsigned char      md[NGX_BILLING_SIG_LEN];
    ngx_billing_sig_t  sig;
    ngx_billing_secret_t  secret = { S("whsec_test"), NULL };

    sign_hex("whsec_test", "1700000000", "{\"a\":1}", 7, hex);
    is_str(hex, KNOWN_HEX, "HMAC() agrees with openssl dgst -hmac");

    is_int(ngx_billing_sig_hmac(S("whsec_test"), S("1700000000"),
                                S("{\"a\":1}"), md),
           NGX_BILLING_SIG_OK, "ngx_billing_sig_hmac: OK");
    to_hex(md, sizeof(md), hex);
    is_str(hex, KNOWN_HEX, "ngx_billing_sig_hmac: known vector");

    is_int(parse_str(&sig, "t=1700000000,v1=" KNOWN_HEX), NGX_BILLING_SIG_OK,
           "known vector: parses");
    is_int(ngx_billing_sig_verify(&sig, S("{\"a\":1}"), &secret, 1),
           NGX_BILLING_SIG_OK, "known vector: verifies");
    is_int(ngx_billing_sig_check(S("t=1700000000,v1=" KNOWN_HEX),
                                 S("{\"a\":1}"), &secret, 1,
                                 INT64_C(1700000000), 300),
           NGX_BILLING_SIG_OK, "known vector: whole check");
    is_int(ngx_billing_sig_check(S("t=1700000000,v1=" KNOWN_HEX),
                                 S("{\"a\":2}"), &secret, 1,
                                 INT64_C(1700000000), 300),
           NGX_BILLING_SIG_MISMATCH, "known vector: other body");
    is_int(ngx_billing_sig_check(S("t=1700000001,v1=" KNOWN_HEX),
                                 S("{\"a\":1}"), &secret, 1,
                                 INT64_C(1700000000), 300),
           NGX_BILLING_SIG_MISMATCH, "known vector: other timestamp");
}


static void
test_hmac_matches_openssl(void)
{
    size_t         i;
    char           body[300];
    unsigned char  md[NGX_BILLING_SIG_LEN], got[NGX_BILLING_SIG_LEN];
    int            same;

    /* bodies of every length up to 300, with NUL and high bytes */

    for (i = 0; i < sizeof(body); i++) {
        body[i] = (char) (i * 37 + 11);
    }

    same = 1;

    for (i = 0; i <= sizeof(body); i++) {
        sign_raw(SECRET_A, T, body, i, md);

        if (ngx_billing_sig_hmac(S(SECRET_A), S(T),
                                 (const unsigned char *) body, i, got)
            != NGX_BILLING_SIG_OK
            || memcmp(md, got, sizeof(md)) != 0)
        {
            same = 0;
            diag("body length %zu differs", i);
            break;
        }
    }

    ok(same, "ngx_billing_sig_hmac == HMAC() for bodies of 0..300 bytes");

    /* a key longer than the SHA-256 block, and an empty key */

    {
        char  key[200];

        memset(key, 'k', sizeof(key) - 1);
        key[sizeof(key) - 1] = '\0';

        sign_raw(key, T, BODY, sizeof(BODY) - 1, md);
        is_int(ngx_billing_sig_hmac((const unsigned char *) key, strlen(key),
                                    S(T), S(BODY), got),
               NGX_BILLING_SIG_OK, "hmac: long key OK");
        ok(memcmp(md, got, sizeof(md)) == 0, "hmac: long key matches");

        sign_raw("", T, BODY, sizeof(BODY) - 1, md);
        is_int(ngx_billing_sig_hmac((const unsigned char *) "", 0, S(T),
                                    S(BODY), got),
               NGX_BILLING_SIG_OK, "hmac: empty key OK");
        ok(memcmp(md, got, sizeof(md)) == 0, "hmac: empty key matches");
    }
}


static void
test_valid(void)
{
    int                rc;
    char               hex[65], header[256];
    unsigned char      md[NGX_BILLING_SIG_LEN];
    ngx_billing_sig_t  sig;

    sign_raw(SECRET_A, T, BODY, sizeof(BODY) - 1, md);
    to_hex(md, sizeof(md), hex);
    snprintf(header, sizeof(header), "t=" T ",v1=%s", hex);

    rc = parse_str(&sig, header);
    is_int(rc, NGX_BILLING_SIG_OK, "one v1: parses");
    is_int(sig.timestamp, T_VAL, "one v1: timestamp");
    is_mem(sig.t, sig.t_len, T, sizeof(T) - 1, "one v1: t digits kept");
    is_int(sig.nv1, 1, "one v1: nv1");
    ok(memcmp(sig.v1[0], md, NGX_BILLING_SIG_LEN) == 0,
       "one v1: decoded bytes");

    is_int(ngx_billing_sig_verify(&sig, S(BODY), secret_a, 1),
           NGX_BILLING_SIG_OK, "one v1: verifies");
    is_int(ngx_billing_sig_verify(&sig, S(BODY), secrets_ab, 2),
           NGX_BILLING_SIG_OK, "one v1: verifies among two secrets");
    is_int(ngx_billing_sig_verify(&sig, S(BODY), secret_a, 0),
           NGX_BILLING_SIG_MISMATCH, "one v1: no secret, no match");
    is_int(check_str(header, BODY, secret_a, 1, T_VAL, 300),
           NGX_BILLING_SIG_OK, "one v1: whole check");

    /* order of the parts does not matter */

    snprintf(header, sizeof(header), "v1=%s,t=" T, hex);
    is_int(check_str(header, BODY, secret_a, 1, T_VAL, 300),
           NGX_BILLING_SIG_OK, "v1 before t: whole check");

    /* an empty body is a body */

    sign_hex(SECRET_A, T, "", 0, hex);
    snprintf(header, sizeof(header), "t=" T ",v1=%s", hex);
    is_int(check_str(header, "", secret_a, 1, T_VAL, 300),
           NGX_BILLING_SIG_OK, "empty body: whole check");
    is_int(check_str(header, " ", secret_a, 1, T_VAL, 300),
           NGX_BILLING_SIG_MISMATCH, "empty body signature, one space body");

    /* t=0 is a timestamp */

    sign_hex(SECRET_A, "0", BODY, sizeof(BODY) - 1, hex);
    snprintf(header, sizeof(header), "t=0,v1=%s", hex);
    is_int(parse_str(&sig, header), NGX_BILLING_SIG_OK, "t=0: parses");
    is_int(sig.timestamp, 0, "t=0: timestamp");
    is_int(check_str(header, BODY, secret_a, 1, 0, 0), NGX_BILLING_SIG_OK,
           "t=0: whole check");
}


static void
test_binary_body(void)
{
    char                  hex[65], header[256];
    unsigned char         body[] = { 'a', 0, 'b', 0xff, 0x80, '\n', 0 };
    ngx_billing_sig_t     sig;

    sign_hex(SECRET_A, T, body, sizeof(body), hex);
    snprintf(header, sizeof(header), "t=" T ",v1=%s", hex);

    is_int(parse_str(&sig, header), NGX_BILLING_SIG_OK, "binary body: parses");
    is_int(ngx_billing_sig_verify(&sig, body, sizeof(body), secret_a, 1),
           NGX_BILLING_SIG_OK, "binary body with NULs: verifies");
    is_int(ngx_billing_sig_verify(&sig, body, sizeof(body) - 1, secret_a, 1),
           NGX_BILLING_SIG_MISMATCH, "binary body: one byte short");
    is_int(ngx_billing_sig_verify(&sig, body, 1, secret_a, 1),
           NGX_BILLING_SIG_MISMATCH, "binary body: cut at the first NUL");
}


static void
test_rotation(void)
{
    char               hex_a[65], hex_b[65], hex_c[65], header[512];
    ngx_billing_sig_t  sig;

    sign_hex(SECRET_A, T, BODY, sizeof(BODY) - 1, hex_a);
    sign_hex(SECRET_B, T, BODY, sizeof(BODY) - 1, hex_b);
    sign_hex(SECRET_C, T, BODY, sizeof(BODY) - 1, hex_c);

    /* Stripe signs with both secrets while an old one is expiring */

    snprintf(header, sizeof(header), "t=" T ",v1=%s,v1=%s", hex_a, hex_b);

    is_int(parse_str(&sig, header), NGX_BILLING_SIG_OK, "two v1: parses");
    is_int(sig.nv1, 2, "two v1: nv1");

    is_int(ngx_billing_sig_verify(&sig, S(BODY), secrets_ab, 2),
           NGX_BILLING_SIG_OK, "two v1, two secrets: OK");
    is_int(ngx_billing_sig_verify(&sig, S(BODY), secret_a, 1),
           NGX_BILLING_SIG_OK, "two v1, first secret only: OK");
    is_int(ngx_billing_sig_verify(&sig, S(BODY), secret_b, 1),
           NGX_BILLING_SIG_OK, "two v1, second secret only: OK");
    is_int(ngx_billing_sig_verify(&sig, S(BODY), secret_c, 1),
           NGX_BILLING_SIG_MISMATCH, "two v1, other secret: MISMATCH");
    is_int(ngx_billing_sig_verify(&sig, S(BODY "x"), secrets_ab, 2),
           NGX_BILLING_SIG_MISMATCH, "two v1, two secrets, tampered body");
    is_int(check_str(header, BODY, secrets_ab, 2, T_VAL, 300),
           NGX_BILLING_SIG_OK, "two v1, two secrets: whole check");

    /* only the second configured secret matches */

    snprintf(header, sizeof(header), "t=" T ",v1=%s", hex_b);

    is_int(check_str(header, BODY, secrets_ab, 2, T_VAL, 300),
           NGX_BILLING_SIG_OK, "v1 of the second secret: OK");
    is_int(check_str(header, BODY, secrets_cb, 2, T_VAL, 300),
           NGX_BILLING_SIG_OK, "v1 of the second secret, first unknown: OK");
    is_int(check_str(header, BODY, secret_a, 1, T_VAL, 300),
           NGX_BILLING_SIG_MISMATCH, "v1 of the second secret, first only");

    /* only the second v1 matches */

    snprintf(header, sizeof(header), "t=" T ",v1=%s,v1=%s", hex_c, hex_a);
    is_int(check_str(header, BODY, secret_a, 1, T_VAL, 300),
           NGX_BILLING_SIG_OK, "second v1 matches: OK");

    /* a v0 beside a v1 is ignored */

    snprintf(header, sizeof(header), "t=" T ",v1=%s,v0=%s", hex_a, hex_c);
    is_int(check_str(header, BODY, secret_a, 1, T_VAL, 300),
           NGX_BILLING_SIG_OK, "v1 and v0: OK");

    /* a v0 carrying the right signature does not count */

    snprintf(header, sizeof(header), "t=" T ",v0=%s,v1=%s", hex_a, hex_c);
    is_int(check_str(header, BODY, secret_a, 1, T_VAL, 300),
           NGX_BILLING_SIG_MISMATCH, "right v0, wrong v1: MISMATCH");
}


static void
test_mismatch(void)
{
    char               hex[65], header[256], body[sizeof(BODY)];
    unsigned char      md[NGX_BILLING_SIG_LEN];
    ngx_billing_sig_t  sig;

    sign_raw(SECRET_A, T, BODY, sizeof(BODY) - 1, md);
    to_hex(md, sizeof(md), hex);
    snprintf(header, sizeof(header), "t=" T ",v1=%s", hex);

    is_int(parse_str(&sig, header), NGX_BILLING_SIG_OK, "mismatch: parses");

    memcpy(body, BODY, sizeof(BODY));
    body[7] ^= 1;
    is_int(ngx_billing_sig_verify(&sig, (unsigned char *) body,
                                  sizeof(BODY) - 1, secret_a, 1),
           NGX_BILLING_SIG_MISMATCH, "tampered body: one bit");
    is_int(ngx_billing_sig_verify(&sig, S(BODY " "), secret_a, 1),
           NGX_BILLING_SIG_MISMATCH, "tampered body: one more byte");
    is_int(ngx_billing_sig_verify(&sig, (const unsigned char *) BODY,
                                  sizeof(BODY) - 2, secret_a, 1),
           NGX_BILLING_SIG_MISMATCH, "tampered body: one byte less");
    is_int(ngx_billing_sig_verify(&sig, S(BODY), secret_b, 1),
           NGX_BILLING_SIG_MISMATCH, "wrong secret");

    {
        ngx_billing_secret_t  prefix = {
            (const unsigned char *) SECRET_A, sizeof(SECRET_A) - 2, NULL
        };

        is_int(ngx_billing_sig_verify(&sig, S(BODY), &prefix, 1),
               NGX_BILLING_SIG_MISMATCH, "secret one byte short");
    }

    /* the timestamp is part of the signed payload */

    snprintf(header, sizeof(header), "t=1700000001,v1=%s", hex);
    is_int(check_str(header, BODY, secret_a, 1, T_VAL, 300),
           NGX_BILLING_SIG_MISMATCH, "other timestamp, same v1");

    /* every bit of the signature counts */

    {
        int     i, all;
        size_t  k;

        all = 1;

        for (k = 0; k < NGX_BILLING_SIG_LEN; k++) {
            for (i = 0; i < 8; i++) {
                sig.v1[0][k] ^= (unsigned char) (1 << i);

                if (ngx_billing_sig_verify(&sig, S(BODY), secret_a, 1)
                    != NGX_BILLING_SIG_MISMATCH)
                {
                    all = 0;
                }

                sig.v1[0][k] ^= (unsigned char) (1 << i);
            }
        }

        ok(all, "each of the 256 one-bit flips of v1: MISMATCH");
        is_int(ngx_billing_sig_verify(&sig, S(BODY), secret_a, 1),
               NGX_BILLING_SIG_OK, "flipped back: OK");
    }
}


static void
test_malformed_t(void)
{
    char               hex[65], header[256];
    ngx_billing_sig_t  sig;
    size_t             i;

    static const struct {
        const char  *t;
        const char  *name;
    } bad[] = {
        { "12a4", "t non-numeric" },
        { "abc", "t alphabetic" },
        { "-1700000000", "t negative" },
        { "+1700000000", "t with a plus sign" },
        { "1700000000.5", "t with a fraction" },
        { "1e9", "t in exponent form" },
        { "0x10", "t in hex" },
        { "01700000000", "t with a leading zero" },
        { "00", "t of two zeros" },
        { "10000000000000000000", "t of 20 digits" },
        { "99999999999999999999999", "t of 23 digits" },
        { "9223372036854775808", "t of INT64_MAX + 1" },
        { "9999999999999999999", "t of 19 nines" },
    };

    sign_hex(SECRET_A, T, BODY, sizeof(BODY) - 1, hex);

    snprintf(header, sizeof(header), "v1=%s", hex);
    is_int(parse_str(&sig, header), NGX_BILLING_SIG_MALFORMED, "t missing");
    is_int(check_str(header, BODY, secret_a, 1, T_VAL, 300),
           NGX_BILLING_SIG_MALFORMED, "t missing: whole check");

    snprintf(header, sizeof(header), "t=,v1=%s", hex);
    is_int(parse_str(&sig, header), NGX_BILLING_SIG_MALFORMED, "t empty");

    snprintf(header, sizeof(header), "t,v1=%s", hex);
    is_int(parse_str(&sig, header), NGX_BILLING_SIG_MALFORMED, "t without =");

    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        snprintf(header, sizeof(header), "t=%s,v1=%s", bad[i].t, hex);
        is_int(parse_str(&sig, header), NGX_BILLING_SIG_MALFORMED, "%s",
               bad[i].name);
    }

    snprintf(header, sizeof(header), "t=" T ",t=" T ",v1=%s", hex);
    is_int(parse_str(&sig, header), NGX_BILLING_SIG_MALFORMED,
           "duplicate t, same value");

    snprintf(header, sizeof(header), "t=" T ",v1=%s,t=1700000001", hex);
    is_int(parse_str(&sig, header), NGX_BILLING_SIG_MALFORMED,
           "duplicate t, other value after v1");

    /* the largest timestamp is accepted and kept exactly */

    snprintf(header, sizeof(header), "t=9223372036854775807,v1=%s", hex);
    is_int(parse_str(&sig, header), NGX_BILLING_SIG_OK, "t of INT64_MAX");
    ok(sig.timestamp == INT64_MAX, "t of INT64_MAX: value");
    is_int(sig.t_len, 19, "t of INT64_MAX: 19 digits");

    snprintf(header, sizeof(header), "t=9223372036854775799,v1=%s", hex);
    is_int(parse_str(&sig, header), NGX_BILLING_SIG_OK, "t of INT64_MAX - 8");
    ok(sig.timestamp == INT64_MAX - 8, "t of INT64_MAX - 8: value");
}


static void
test_malformed_v1(void)
{
    char               hex[65], upper[65], header[512];
    size_t             i;
    ngx_billing_sig_t  sig;

    sign_hex(SECRET_A, T, BODY, sizeof(BODY) - 1, hex);

    is_int(parse_str(&sig, "t=" T ",v1="), NGX_BILLING_SIG_MALFORMED,
           "empty v1");

    snprintf(header, sizeof(header), "t=" T ",v1=%.63s", hex);
    is_int(parse_str(&sig, header), NGX_BILLING_SIG_MALFORMED,
           "v1 of 63 hex digits");

    snprintf(header, sizeof(header), "t=" T ",v1=%s0", hex);
    is_int(parse_str(&sig, header), NGX_BILLING_SIG_MALFORMED,
           "v1 of 65 hex digits");

    snprintf(header, sizeof(header), "t=" T ",v1=%s%s", hex, hex);
    is_int(parse_str(&sig, header), NGX_BILLING_SIG_MALFORMED,
           "v1 of 128 hex digits");

    is_int(parse_str(&sig, "t=" T ",v1=00"), NGX_BILLING_SIG_MALFORMED,
           "v1 of 2 hex digits");

    /* Stripe sends lowercase hex: anything else is not its header */

    for (i = 0; i < 64; i++) {
        upper[i] = (hex[i] >= 'a' && hex[i] <= 'f') ? hex[i] - 'a' + 'A'
                                                    : hex[i];
    }

    upper[64] = '\0';

    ok(strcmp(upper, hex) != 0, "the uppercase signature differs");

    snprintf(header, sizeof(header), "t=" T ",v1=%s", upper);
    is_int(parse_str(&sig, header), NGX_BILLING_SIG_MALFORMED,
           "uppercase hex v1");

    snprintf(header, sizeof(header), "t=" T ",v1=%s", hex);

    for (i = 0; i < strlen(header); i++) {
        if (header[i] >= 'a' && header[i] <= 'f' && i > 5) {
            header[i] = (char) (header[i] - 'a' + 'A');
            break;
        }
    }

    is_int(parse_str(&sig, header), NGX_BILLING_SIG_MALFORMED,
           "a single uppercase hex digit in v1");

    snprintf(header, sizeof(header), "t=" T ",v1=%.63sg", hex);
    is_int(parse_str(&sig, header), NGX_BILLING_SIG_MALFORMED,
           "v1 with a non-hex letter");

    snprintf(header, sizeof(header), "t=" T ",v1=%.63s:", hex);
    is_int(parse_str(&sig, header), NGX_BILLING_SIG_MALFORMED,
           "v1 with ':'");

    /* an unusable v1 beside a good one still spoils the header */

    snprintf(header, sizeof(header), "t=" T ",v1=%s,v1=%.63s", hex, hex);
    is_int(parse_str(&sig, header), NGX_BILLING_SIG_MALFORMED,
           "good v1 then short v1");
}


static void
test_no_v1(void)
{
    char               hex[65], header[256];
    ngx_billing_sig_t  sig;

    sign_hex(SECRET_A, T, BODY, sizeof(BODY) - 1, hex);

    snprintf(header, sizeof(header), "t=" T ",v0=%s", hex);
    is_int(parse_str(&sig, header), NGX_BILLING_SIG_NO_V1, "only v0: NO_V1");
    is_int(check_str(header, BODY, secret_a, 1, T_VAL, 300),
           NGX_BILLING_SIG_NO_V1, "only v0: whole check NO_V1");

    is_int(parse_str(&sig, "t=" T), NGX_BILLING_SIG_NO_V1, "only t: NO_V1");

    is_int(parse_str(&sig, "t=" T ",v2=abc,scheme=x"), NGX_BILLING_SIG_NO_V1,
           "t and unknown schemes: NO_V1");

    snprintf(header, sizeof(header), "t=" T ",v10=%s", hex);
    is_int(parse_str(&sig, header), NGX_BILLING_SIG_NO_V1, "v10 is not v1");

    snprintf(header, sizeof(header), "t=" T ",vv1=%s", hex);
    is_int(parse_str(&sig, header), NGX_BILLING_SIG_NO_V1, "vv1 is not v1");

    /* no t wins over no v1 */

    snprintf(header, sizeof(header), "v0=%s", hex);
    is_int(parse_str(&sig, header), NGX_BILLING_SIG_MALFORMED,
           "only v0, no t: MALFORMED");
}


static void
test_syntax(void)
{
    char               hex[65], header[512];
    ngx_billing_sig_t  sig;

    sign_hex(SECRET_A, T, BODY, sizeof(BODY) - 1, hex);

    /* unknown schemes are ignored, whatever their printable value */

    snprintf(header, sizeof(header),
             "t=" T ",v1=%s,v9=xyz,foo=bar=baz,x1=\"q\";<>!", hex);
    is_int(parse_str(&sig, header), NGX_BILLING_SIG_OK,
           "unknown schemes ignored: parses");
    is_int(sig.nv1, 1, "unknown schemes ignored: nv1");
    is_int(check_str(header, BODY, secret_a, 1, T_VAL, 300),
           NGX_BILLING_SIG_OK, "unknown schemes ignored: whole check");

    snprintf(header, sizeof(header), "scheme=1,t=" T ",v1=%s", hex);
    is_int(check_str(header, BODY, secret_a, 1, T_VAL, 300),
           NGX_BILLING_SIG_OK, "unknown scheme first: OK");

    /* a key of 16 characters is the longest */

    snprintf(header, sizeof(header), "t=" T ",v1=%s,abcdefghijklmnop=1", hex);
    is_int(parse_str(&sig, header), NGX_BILLING_SIG_OK, "key of 16: OK");

    snprintf(header, sizeof(header), "t=" T ",v1=%s,abcdefghijklmnopq=1", hex);
    is_int(parse_str(&sig, header), NGX_BILLING_SIG_MALFORMED,
           "key of 17: MALFORMED");

    /* a space after a comma, as some proxies rewrite it */

    snprintf(header, sizeof(header), "t=" T ", v1=%s", hex);
    is_int(check_str(header, BODY, secret_a, 1, T_VAL, 300),
           NGX_BILLING_SIG_OK, "\", \" after a comma: OK");

    snprintf(header, sizeof(header), "t=" T ", v1=%s, v0=%s", hex, hex);
    is_int(check_str(header, BODY, secret_a, 1, T_VAL, 300),
           NGX_BILLING_SIG_OK, "\", \" after each comma: OK");

    snprintf(header, sizeof(header), "t=" T ",  v1=%s", hex);
    is_int(parse_str(&sig, header), NGX_BILLING_SIG_MALFORMED,
           "two spaces after a comma");

    snprintf(header, sizeof(header), "t=" T " ,v1=%s", hex);
    is_int(parse_str(&sig, header), NGX_BILLING_SIG_MALFORMED,
           "space before a comma");

    snprintf(header, sizeof(header), " t=" T ",v1=%s", hex);
    is_int(parse_str(&sig, header), NGX_BILLING_SIG_MALFORMED,
           "leading space");

    snprintf(header, sizeof(header), "t=" T ",v1=%s ", hex);
    is_int(parse_str(&sig, header), NGX_BILLING_SIG_MALFORMED,
           "trailing space");

    snprintf(header, sizeof(header), "t = " T ",v1=%s", hex);
    is_int(parse_str(&sig, header), NGX_BILLING_SIG_MALFORMED,
           "spaces around =");

    snprintf(header, sizeof(header), "t=" T ";v1=%s", hex);
    is_int(parse_str(&sig, header), NGX_BILLING_SIG_MALFORMED,
           "semicolon for a comma");

    /* commas */

    snprintf(header, sizeof(header), "t=" T ",v1=%s,", hex);
    is_int(parse_str(&sig, header), NGX_BILLING_SIG_MALFORMED,
           "trailing comma");

    snprintf(header, sizeof(header), "t=" T ",v1=%s, ", hex);
    is_int(parse_str(&sig, header), NGX_BILLING_SIG_MALFORMED,
           "trailing comma and space");

    snprintf(header, sizeof(header), ",t=" T ",v1=%s", hex);
    is_int(parse_str(&sig, header), NGX_BILLING_SIG_MALFORMED,
           "leading comma");

    snprintf(header, sizeof(header), "t=" T ",,v1=%s", hex);
    is_int(parse_str(&sig, header), NGX_BILLING_SIG_MALFORMED,
           "two commas");

    /* keys are lowercase */

    snprintf(header, sizeof(header), "T=" T ",v1=%s", hex);
    is_int(parse_str(&sig, header), NGX_BILLING_SIG_MALFORMED,
           "key T uppercase");

    snprintf(header, sizeof(header), "t=" T ",V1=%s", hex);
    is_int(parse_str(&sig, header), NGX_BILLING_SIG_MALFORMED,
           "key V1 uppercase");

    snprintf(header, sizeof(header), "t=" T ",v1=%s,Foo=bar", hex);
    is_int(parse_str(&sig, header), NGX_BILLING_SIG_MALFORMED,
           "unknown key with uppercase");

    snprintf(header, sizeof(header), "t=" T ",v1=%s,foo_bar=1", hex);
    is_int(parse_str(&sig, header), NGX_BILLING_SIG_MALFORMED,
           "key with an underscore");

    snprintf(header, sizeof(header), "t=" T ",v1=%s,=1", hex);
    is_int(parse_str(&sig, header), NGX_BILLING_SIG_MALFORMED, "empty key");

    snprintf(header, sizeof(header), "t=" T ",v1=%s,foo", hex);
    is_int(parse_str(&sig, header), NGX_BILLING_SIG_MALFORMED, "key alone");

    snprintf(header, sizeof(header), "t=" T ",v1=%s,foo=", hex);
    is_int(parse_str(&sig, header), NGX_BILLING_SIG_MALFORMED,
           "unknown key with an empty value");
}


static void
test_bad_bytes(void)
{
    int                all;
    char               hex[65], header[256];
    size_t             len, i, pos;
    ngx_billing_sig_t  sig;

    static const unsigned char  bad[] = {
        ' ', '\t', '\r', '\n', 0x00, 0x01, 0x1f, 0x7f, 0x80, 0xc3, 0xff
    };

    sign_hex(SECRET_A, T, BODY, sizeof(BODY) - 1, hex);

    is_int(parse_str(&sig, "t=" T ",v1=a b"), NGX_BILLING_SIG_MALFORMED,
           "value with a space");

    snprintf(header, sizeof(header), "t=" T ",v1=%s,foo=a b", hex);
    is_int(parse_str(&sig, header), NGX_BILLING_SIG_MALFORMED,
           "unknown scheme's value with a space");

    snprintf(header, sizeof(header), "t=" T ",v1=%s,foo=a\tb", hex);
    is_int(parse_str(&sig, header), NGX_BILLING_SIG_MALFORMED,
           "unknown scheme's value with a tab");

    /* each bad byte in the value of an unknown scheme, of t, of v1 */

    len = (size_t) snprintf(header, sizeof(header), "t=" T ",v1=%s,foo=abc",
                            hex);

    for (pos = 0; pos < 3; pos++) {
        all = 1;

        for (i = 0; i < sizeof(bad); i++) {
            char    copy[256];
            size_t  at;

            at = (pos == 0) ? 4 : (pos == 1) ? 16 : len - 2;

            memcpy(copy, header, len);
            copy[at] = (char) bad[i];

            if (ngx_billing_sig_parse(&sig, (unsigned char *) copy, len)
                != NGX_BILLING_SIG_MALFORMED)
            {
                diag("byte 0x%02x at %zu accepted", bad[i], at);
                all = 0;
            }
        }

        ok(all, "control, space, DEL and 8-bit bytes in the %s value",
           pos == 0 ? "t" : pos == 1 ? "v1" : "unknown scheme's");
    }

    /* a NUL ends nothing: the length does */

    {
        char  copy[256];

        memcpy(copy, header, len);
        copy[len] = '\0';

        is_int(ngx_billing_sig_parse(&sig, (unsigned char *) copy, len + 1),
               NGX_BILLING_SIG_MALFORMED, "trailing NUL inside the length");
    }
}


static void
test_garbage(void)
{
    size_t             i;
    ngx_billing_sig_t  sig;

    static const char  *garbage[] = {
        "hello", "t", "=", "t=", ",", ", ", " ", "==", "t==1", "v1", "v1=",
        "t=1=", "t=1,", "Bearer abc", "t=1700000000 v1=00",
        "\xef\xbb\xbft=1700000000",
    };

    for (i = 0; i < sizeof(garbage) / sizeof(garbage[0]); i++) {
        is_int(parse_str(&sig, garbage[i]), NGX_BILLING_SIG_MALFORMED,
               "garbage %zu: MALFORMED", i);
    }

    is_int(ngx_billing_sig_parse(&sig, (const unsigned char *) "", 0),
           NGX_BILLING_SIG_MALFORMED, "empty header");
    is_int(check_str("", BODY, secret_a, 1, T_VAL, 300),
           NGX_BILLING_SIG_MALFORMED, "empty header: whole check");

    {
        unsigned char  sixteen[16];

        memset(sixteen, 0, sizeof(sixteen));
        is_int(ngx_billing_sig_parse(&sig, sixteen, sizeof(sixteen)),
               NGX_BILLING_SIG_MALFORMED, "sixteen NULs");

        memset(sixteen, 0xff, sizeof(sixteen));
        is_int(ngx_billing_sig_parse(&sig, sixteen, sizeof(sixteen)),
               NGX_BILLING_SIG_MALFORMED, "sixteen 0xff");
    }
}


static void
test_length(void)
{
    char               hex[65], *header;
    size_t             len, n;
    ngx_billing_sig_t  sig;

    sign_hex(SECRET_A, T, BODY, sizeof(BODY) - 1, hex);

    header = malloc(NGX_BILLING_SIG_MAX_HEADER + 2);
    if (header == NULL) {
        abort();
    }

    /* pad with an unknown scheme up to exactly the limit */

    n = (size_t) snprintf(header, NGX_BILLING_SIG_MAX_HEADER,
                          "t=" T ",v1=%s,pad=", hex);
    memset(header + n, 'x', NGX_BILLING_SIG_MAX_HEADER - n);
    len = NGX_BILLING_SIG_MAX_HEADER;

    is_int(ngx_billing_sig_parse(&sig, (unsigned char *) header, len),
           NGX_BILLING_SIG_OK, "header of exactly 4096 bytes: OK");
    is_int(ngx_billing_sig_check((unsigned char *) header, len, S(BODY),
                                 secret_a, 1, T_VAL, 300),
           NGX_BILLING_SIG_OK, "header of exactly 4096 bytes: whole check");

    header[len] = 'x';
    is_int(ngx_billing_sig_parse(&sig, (unsigned char *) header, len + 1),
           NGX_BILLING_SIG_MALFORMED, "header of 4097 bytes: MALFORMED");
    is_int(ngx_billing_sig_check((unsigned char *) header, len + 1, S(BODY),
                                 secret_a, 1, T_VAL, 300),
           NGX_BILLING_SIG_MALFORMED, "header of 4097 bytes: whole check");

    free(header);

    /* many v1: up to NGX_BILLING_SIG_MAX_V1 */

    {
        char    buf[1024], other[65];
        size_t  i, at;

        sign_hex(SECRET_C, T, BODY, sizeof(BODY) - 1, other);

        at = (size_t) snprintf(buf, sizeof(buf), "t=" T);

        for (i = 0; i < NGX_BILLING_SIG_MAX_V1 - 1; i++) {
            at += (size_t) snprintf(buf + at, sizeof(buf) - at, ",v1=%s",
                                    other);
        }

        at += (size_t) snprintf(buf + at, sizeof(buf) - at, ",v1=%s", hex);

        is_int(parse_str(&sig, buf), NGX_BILLING_SIG_OK, "8 v1: parses");
        is_int(sig.nv1, NGX_BILLING_SIG_MAX_V1, "8 v1: nv1");
        is_int(check_str(buf, BODY, secret_a, 1, T_VAL, 300),
               NGX_BILLING_SIG_OK, "8 v1, the last matches: OK");
        is_int(check_str(buf, BODY, secret_b, 1, T_VAL, 300),
               NGX_BILLING_SIG_MISMATCH, "8 v1, none matches: MISMATCH");

        snprintf(buf + at, sizeof(buf) - at, ",v1=%s", hex);
        is_int(parse_str(&sig, buf), NGX_BILLING_SIG_MALFORMED,
               "9 v1: MALFORMED");

        /* v0 do not count toward the limit */

        at += (size_t) snprintf(buf + at, sizeof(buf) - at, ",v0=%s", hex);
        at += (size_t) snprintf(buf + at, sizeof(buf) - at, ",v0=%s", hex);
        is_int(parse_str(&sig, buf), NGX_BILLING_SIG_OK, "8 v1 and 2 v0: OK");
    }
}


static void
test_time(void)
{
    ngx_billing_sig_t  sig;

    memset(&sig, 0, sizeof(sig));
    sig.timestamp = T_VAL;

    is_int(ngx_billing_sig_check_time(&sig, T_VAL, 300), NGX_BILLING_SIG_OK,
           "time: now == t");
    is_int(ngx_billing_sig_check_time(&sig, T_VAL + 300, 300),
           NGX_BILLING_SIG_OK, "time: t exactly tolerance in the past");
    is_int(ngx_billing_sig_check_time(&sig, T_VAL + 301, 300),
           NGX_BILLING_SIG_TOLERANCE, "time: t one second too old");
    is_int(ngx_billing_sig_check_time(&sig, T_VAL - 300, 300),
           NGX_BILLING_SIG_OK, "time: t exactly tolerance in the future");
    is_int(ngx_billing_sig_check_time(&sig, T_VAL - 301, 300),
           NGX_BILLING_SIG_TOLERANCE, "time: t one second too far ahead");
    is_int(ngx_billing_sig_check_time(&sig, T_VAL + 86400, 300),
           NGX_BILLING_SIG_TOLERANCE, "time: a day old");
    is_int(ngx_billing_sig_check_time(&sig, 0, 300),
           NGX_BILLING_SIG_TOLERANCE, "time: now is the epoch");

    is_int(ngx_billing_sig_check_time(&sig, T_VAL, 0), NGX_BILLING_SIG_OK,
           "time: tolerance 0, same second");
    is_int(ngx_billing_sig_check_time(&sig, T_VAL + 1, 0),
           NGX_BILLING_SIG_TOLERANCE, "time: tolerance 0, one second late");
    is_int(ngx_billing_sig_check_time(&sig, T_VAL - 1, 0),
           NGX_BILLING_SIG_TOLERANCE, "time: tolerance 0, one second early");

    is_int(ngx_billing_sig_check_time(&sig, T_VAL, -1),
           NGX_BILLING_SIG_TOLERANCE, "time: negative tolerance, now == t");
    is_int(ngx_billing_sig_check_time(&sig, T_VAL, INT64_MIN),
           NGX_BILLING_SIG_TOLERANCE, "time: tolerance INT64_MIN");

    /* extremes: no overflow */

    is_int(ngx_billing_sig_check_time(&sig, INT64_MAX, INT64_MAX),
           NGX_BILLING_SIG_OK, "time: now INT64_MAX, tolerance INT64_MAX");
    is_int(ngx_billing_sig_check_time(&sig, INT64_MIN, INT64_MAX),
           NGX_BILLING_SIG_TOLERANCE,
           "time: now INT64_MIN, tolerance INT64_MAX: distance over 2^63");
    is_int(ngx_billing_sig_check_time(&sig, INT64_MIN, 300),
           NGX_BILLING_SIG_TOLERANCE, "time: now INT64_MIN");

    sig.timestamp = INT64_MAX;
    is_int(ngx_billing_sig_check_time(&sig, INT64_MIN, INT64_MAX),
           NGX_BILLING_SIG_TOLERANCE,
           "time: t INT64_MAX, now INT64_MIN: distance 2^64 - 1");
    is_int(ngx_billing_sig_check_time(&sig, INT64_MAX, 0),
           NGX_BILLING_SIG_OK, "time: t and now INT64_MAX");
    is_int(ngx_billing_sig_check_time(&sig, -1, INT64_MAX),
           NGX_BILLING_SIG_TOLERANCE, "time: distance 2^63");
    is_int(ngx_billing_sig_check_time(&sig, 0, INT64_MAX),
           NGX_BILLING_SIG_OK, "time: distance 2^63 - 1");

    sig.timestamp = 0;
    is_int(ngx_billing_sig_check_time(&sig, INT64_MIN, INT64_MAX),
           NGX_BILLING_SIG_TOLERANCE, "time: t 0, now INT64_MIN");
    is_int(ngx_billing_sig_check_time(&sig, INT64_MIN + 1, INT64_MAX),
           NGX_BILLING_SIG_OK, "time: t 0, now INT64_MIN + 1");
}


static void
test_check_order(void)
{
    char  hex[65], bad[65], header[256];

    sign_hex(SECRET_A, T, BODY, sizeof(BODY) - 1, hex);
    sign_hex(SECRET_C, T, BODY, sizeof(BODY) - 1, bad);

    snprintf(header, sizeof(header), "t=" T ",v1=%s", hex);

    is_int(check_str(header, BODY, secret_a, 1, T_VAL + 300, 300),
           NGX_BILLING_SIG_OK, "check: good signature, at tolerance");
    is_int(check_str(header, BODY, secret_a, 1, T_VAL + 301, 300),
           NGX_BILLING_SIG_TOLERANCE, "check: good signature, too old");
    is_int(check_str(header, BODY, secret_a, 1, T_VAL - 301, 300),
           NGX_BILLING_SIG_TOLERANCE, "check: good signature, too new");
    is_int(check_str(header, BODY, secret_a, 1, T_VAL, -1),
           NGX_BILLING_SIG_TOLERANCE,
           "check: good signature, negative tolerance");
    is_int(check_str(header, BODY, secret_a, 0, T_VAL, 300),
           NGX_BILLING_SIG_MISMATCH, "check: no secrets");

    /* the signature is checked before the time */

    snprintf(header, sizeof(header), "t=" T ",v1=%s", bad);

    is_int(check_str(header, BODY, secret_a, 1, T_VAL + 100000, 300),
           NGX_BILLING_SIG_MISMATCH,
           "check: bad signature and bad time: MISMATCH, not TOLERANCE");
    is_int(check_str(header, BODY, secret_a, 1, T_VAL, -5),
           NGX_BILLING_SIG_MISMATCH,
           "check: bad signature and negative tolerance: MISMATCH");
    is_int(check_str(header, BODY, secret_a, 1, T_VAL, 300),
           NGX_BILLING_SIG_MISMATCH, "check: bad signature, good time");

    /* the parse before both */

    is_int(check_str("t=" T ",v1=zz", BODY, secret_a, 1, T_VAL + 100000, 300),
           NGX_BILLING_SIG_MALFORMED,
           "check: malformed header and bad time: MALFORMED");

    snprintf(header, sizeof(header), "t=" T ",v0=%s", hex);
    is_int(check_str(header, BODY, secret_a, 1, T_VAL + 100000, 300),
           NGX_BILLING_SIG_NO_V1, "check: no v1 and bad time: NO_V1");
}


static void
test_strerror(void)
{
    int          i, j, distinct;
    const char  *s[NGX_BILLING_SIG_INTERNAL + 1];

    for (i = 0; i <= NGX_BILLING_SIG_INTERNAL; i++) {
        s[i] = ngx_billing_sig_strerror(i);
    }

    distinct = 1;

    for (i = 0; i <= NGX_BILLING_SIG_INTERNAL; i++) {
        if (s[i] == NULL || s[i][0] == '\0') {
            distinct = 0;
            continue;
        }

        for (j = 0; j < i; j++) {
            if (s[j] != NULL && strcmp(s[i], s[j]) == 0) {
                distinct = 0;
            }
        }
    }

    ok(distinct, "strerror: a distinct message for every code");
    ok(ngx_billing_sig_strerror(-1) != NULL
       && ngx_billing_sig_strerror(1000) != NULL,
       "strerror: unknown codes have a message");
    is_str(ngx_billing_sig_strerror(NGX_BILLING_SIG_TOLERANCE),
           "timestamp outside the tolerance zone", "strerror: TOLERANCE");
}


/*
 * ngx_billing_secure_equal(): the comparison of the API's bearer token.
 * Only the answers are checked here; its time is not (a timing
 * assertion has no place in a unit test), but every input shape it
 * may be given is.
 */

static int
secure_eq(const void *a, size_t a_len, const void *b, size_t b_len)
{
    int  ab, ba;

    ab = ngx_billing_secure_equal(a, a_len, b, b_len);
    ba = ngx_billing_secure_equal(b, b_len, a, a_len);

    if (ab != ba) {
        diag("secure_equal not symmetric: %d one way, %d the other", ab, ba);
        return -1;
    }

    return ab;
}


static void
test_secure_equal(void)
{
    int            all;
    size_t         i, len, m;
    unsigned char  a[64], b[64], *big, *big2;

    static const unsigned char  masks[] = { 0x01, 0x80, 0xff };

    /* equal: the same bytes in two buffers, and one buffer with itself */

    memcpy(a, TOKEN, sizeof(TOKEN) - 1);
    memcpy(b, TOKEN, sizeof(TOKEN) - 1);

    is_int(secure_eq(a, sizeof(TOKEN) - 1, b, sizeof(TOKEN) - 1), 1,
           "secure_equal: equal tokens in two buffers: 1");
    is_int(secure_eq(a, sizeof(TOKEN) - 1, a, sizeof(TOKEN) - 1), 1,
           "secure_equal: a token and itself: 1");
    is_int(secure_eq("x", 1, "x", 1), 1, "secure_equal: one equal byte: 1");

    /* different content, same length */

    is_int(secure_eq(S(TOKEN), S(OTHER_TOKEN)), 0,
           "secure_equal: another token of the same length: 0");
    is_int(secure_eq("x", 1, "y", 1), 0, "secure_equal: one byte, other: 0");

    /* different lengths */

    is_int(secure_eq(S(TOKEN), S(TOKEN "x")), 0,
           "secure_equal: one byte longer: 0");
    is_int(secure_eq(S(TOKEN), S("x" TOKEN)), 0,
           "secure_equal: one byte more in front: 0");
    is_int(secure_eq(S("abc"), S("abcabc")), 0,
           "secure_equal: the token twice: 0");

    /* every proper prefix, the empty one included */

    all = 1;

    for (len = 0; len < sizeof(TOKEN) - 1; len++) {
        if (secure_eq(TOKEN, len, S(TOKEN)) != 0) {
            diag("the prefix of %zu bytes compares equal", len);
            all = 0;
        }
    }

    ok(all, "secure_equal: every prefix of the token (0 to %zu bytes): 0",
       sizeof(TOKEN) - 2);

    /* empty */

    is_int(secure_eq("", 0, "", 0), 1, "secure_equal: empty and empty: 1");
    is_int(secure_eq("", 0, "x", 1), 0, "secure_equal: empty and a byte: 0");
    is_int(secure_eq("", 0, S(TOKEN)), 0,
           "secure_equal: empty and a token: 0");

    /* an unset ngx_str_t is { 0, NULL }: no dereference, no crash */

    is_int(secure_eq(NULL, 0, NULL, 0), 1,
           "secure_equal: NULL, 0 and NULL, 0: 1");
    is_int(secure_eq(NULL, 0, "", 0), 1, "secure_equal: NULL, 0 and \"\": 1");
    is_int(secure_eq(NULL, 0, S(TOKEN)), 0,
           "secure_equal: NULL, 0 and a token: 0");

    /* the length counts, not a NUL */

    is_int(secure_eq("a\0b", 3, "a\0c", 3), 0,
           "secure_equal: a difference after a NUL: 0");
    is_int(secure_eq("a\0b", 3, "a\0b", 3), 1,
           "secure_equal: equal across a NUL: 1");
    is_int(secure_eq("a\0", 2, "a", 1), 0,
           "secure_equal: a trailing NUL makes a difference: 0");

    /* one byte differing, at each position, by one bit, the top bit, all */

    for (i = 0; i < sizeof(a); i++) {
        a[i] = (unsigned char) ('!' + (i * 5) % 90);
    }

    for (m = 0; m < sizeof(masks); m++) {
        all = 1;

        for (i = 0; i < sizeof(a); i++) {
            memcpy(b, a, sizeof(a));
            b[i] ^= masks[m];

            if (secure_eq(a, sizeof(a), b, sizeof(b)) != 0) {
                diag("byte %zu ^ 0x%02x compares equal", i, masks[m]);
                all = 0;
            }
        }

        ok(all, "secure_equal: 64 bytes, byte i ^ 0x%02x, each i: 0",
           masks[m]);
    }

    /* and in short inputs, where every byte is a first or last one */

    all = 1;

    for (len = 1; len <= 8; len++) {
        for (i = 0; i < len; i++) {
            memcpy(b, a, len);
            b[i] ^= 0x20;

            if (secure_eq(a, len, b, len) != 0
                || secure_eq(a, len, a, len) != 1)
            {
                diag("length %zu, byte %zu: wrong answer", len, i);
                all = 0;
            }
        }
    }

    ok(all, "secure_equal: lengths 1 to 8, each byte differing: 0, "
       "unchanged: 1");

    /* longer than a digest and than a hash block: the whole is compared */

    big = malloc(100000);
    big2 = malloc(100000);
    if (big == NULL || big2 == NULL) {
        abort();
    }

    for (i = 0; i < 100000; i++) {
        big[i] = (unsigned char) (i * 7 + 3);
    }

    memcpy(big2, big, 100000);

    is_int(secure_eq(big, 100000, big2, 100000), 1,
           "secure_equal: 100000 equal bytes: 1");

    big2[99999] ^= 1;
    is_int(secure_eq(big, 100000, big2, 100000), 0,
           "secure_equal: 100000 bytes, the last differing: 0");

    big2[99999] ^= 1;
    big2[0] ^= 1;
    is_int(secure_eq(big, 100000, big2, 100000), 0,
           "secure_equal: 100000 bytes, the first differing: 0");

    is_int(secure_eq(big, 100000, big, 99999), 0,
           "secure_equal: 100000 bytes and their first 99999: 0");
    is_int(secure_eq(big, 33, big, 32), 0,
           "secure_equal: 33 bytes and their first 32: 0");

    free(big);
    free(big2);
}


/*
 * Secrets keyed once (ngx_billing_sig_key(), as the module does when it
 * loads them): every check re-initializes the same context, so the
 * results must stay HMAC()'s one check after another, whatever the
 * checks before them (other bodies, mismatches, other secrets).
 */

static void
test_keyed(void)
{
    int                    same;
    char                   hex_a[65], hex_b[65], header[512], long_key[200];
    size_t                 i;
    unsigned char          body[300];
    unsigned char          md[NGX_BILLING_SIG_LEN];
    ngx_billing_sig_t      sig;
    ngx_billing_secret_t   keyed[2], mixed[2], lk;

    keyed[0] = secrets_ab[0];
    keyed[1] = secrets_ab[1];

    is_int(ngx_billing_sig_key(&keyed[0]), NGX_BILLING_SIG_OK,
           "keyed: secret a keyed");
    is_int(ngx_billing_sig_key(&keyed[1]), NGX_BILLING_SIG_OK,
           "keyed: secret b keyed");
    ok(keyed[0].mac != NULL && keyed[1].mac != NULL, "keyed: contexts set");

    for (i = 0; i < sizeof(body); i++) {
        body[i] = (unsigned char) (i * 37 + 11);
    }

    /* bodies of 0..300 bytes in turn, each signed by a, then by b */

    same = 1;

    for (i = 0; i <= sizeof(body); i++) {
        sign_raw(SECRET_A, T, body, i, md);
        to_hex(md, sizeof(md), hex_a);
        snprintf(header, sizeof(header), "t=" T ",v1=%s", hex_a);

        if (parse_str(&sig, header) != NGX_BILLING_SIG_OK
            || ngx_billing_sig_verify(&sig, body, i, &keyed[0], 1)
               != NGX_BILLING_SIG_OK
            || ngx_billing_sig_verify(&sig, body, i, &keyed[1], 1)
               != NGX_BILLING_SIG_MISMATCH
            || ngx_billing_sig_verify(&sig, body, i, keyed, 2)
               != NGX_BILLING_SIG_OK)
        {
            same = 0;
            diag("signed by a, body length %zu", i);
            break;
        }

        sign_hex(SECRET_B, T, body, i, hex_b);
        snprintf(header, sizeof(header), "t=" T ",v1=%s", hex_b);

        if (parse_str(&sig, header) != NGX_BILLING_SIG_OK
            || ngx_billing_sig_verify(&sig, body, i, &keyed[0], 1)
               != NGX_BILLING_SIG_MISMATCH
            || ngx_billing_sig_verify(&sig, body, i, keyed, 2)
               != NGX_BILLING_SIG_OK
            || (i && ngx_billing_sig_verify(&sig, body, i - 1, keyed, 2)
                     != NGX_BILLING_SIG_MISMATCH))
        {
            same = 0;
            diag("signed by b, body length %zu", i);
            break;
        }
    }

    ok(same, "keyed: as HMAC() for bodies of 0..300 bytes, check after "
       "check");

    /* a keyed and an unkeyed secret together; the whole check */

    mixed[0] = secret_c[0];
    mixed[1] = keyed[0];

    sign_hex(SECRET_A, T, BODY, sizeof(BODY) - 1, hex_a);
    snprintf(header, sizeof(header), "t=" T ",v1=%s", hex_a);

    is_int(check_str(header, BODY, mixed, 2, T_VAL, 300), NGX_BILLING_SIG_OK,
           "keyed: beside an unkeyed secret, whole check");
    is_int(check_str(header, BODY "x", mixed, 2, T_VAL, 300),
           NGX_BILLING_SIG_MISMATCH, "keyed: tampered body");
    is_int(check_str(header, BODY, mixed, 2, T_VAL + 301, 300),
           NGX_BILLING_SIG_TOLERANCE, "keyed: out of tolerance");
    is_int(check_str(header, BODY, keyed, 2, T_VAL, 300), NGX_BILLING_SIG_OK,
           "keyed: again after those");

    /* a key longer than the SHA-256 block is hashed once, when keyed */

    memset(long_key, 'k', sizeof(long_key) - 1);
    long_key[sizeof(long_key) - 1] = '\0';

    lk.data = (const unsigned char *) long_key;
    lk.len = strlen(long_key);

    is_int(ngx_billing_sig_key(&lk), NGX_BILLING_SIG_OK, "keyed: long key");

    sign_hex(long_key, T, BODY, sizeof(BODY) - 1, hex_a);
    snprintf(header, sizeof(header), "t=" T ",v1=%s", hex_a);

    is_int(check_str(header, BODY, &lk, 1, T_VAL, 300), NGX_BILLING_SIG_OK,
           "keyed: long key, whole check");
    is_int(check_str(header, BODY, &lk, 1, T_VAL, 300), NGX_BILLING_SIG_OK,
           "keyed: long key, again");

    ngx_billing_sig_key_free(lk.mac);
    ngx_billing_sig_key_free(keyed[0].mac);
    ngx_billing_sig_key_free(keyed[1].mac);
    ngx_billing_sig_key_free(NULL);
}


int
main(void)
{
    test_known_vector();
    test_hmac_matches_openssl();
    test_valid();
    test_binary_body();
    test_rotation();
    test_keyed();
    test_mismatch();
    test_malformed_t();
    test_malformed_v1();
    test_no_v1();
    test_syntax();
    test_bad_bytes();
    test_garbage();
    test_length();
    test_time();
    test_check_order();
    test_strerror();
    test_secure_equal();

    return done_testing();
}
