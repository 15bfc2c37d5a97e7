
/*
 * libFuzzer target: Stripe-Signature parsing and verification.
 *
 * The input is
 *
 *     <header>\n<secret>\n<secret>...\n\n<body>
 *
 * the header on the first line, up to four secrets on the next ones, the
 * body after the first empty line (no empty line: an empty body; no
 * secret line: one built-in secret).  Each part is copied to a buffer of
 * its own size, so that a read past it is caught.
 *
 * Besides not crashing, the invariants below must hold; a violation
 * aborts.
 */


#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "ngx_billing_signature.h"


#define FUZZ_MAX_SECRETS  4

#define fuzz_assert(cond)                                                    \
    do {                                                                     \
        if (!(cond)) {                                                       \
            fprintf(stderr, "%s:%d: invariant failed: %s\n", __FILE__,       \
                    __LINE__, #cond);                                        \
            abort();                                                         \
        }                                                                    \
    } while (0)


int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);


static unsigned char *
fuzz_copy(const uint8_t *p, size_t n)
{
    unsigned char  *c;

    /* never NULL, even for 0 bytes */

    c = malloc(n ? n : 1);
    if (c == NULL) {
        abort();
    }

    if (n) {
        memcpy(c, p, n);
    }

    return c;
}


static const uint8_t *
fuzz_find(const uint8_t *p, const uint8_t *end, const char *s, size_t n)
{
    for ( ; p + n <= end; p++) {
        if (memcmp(p, s, n) == 0) {
            return p;
        }
    }

    return NULL;
}


static void
fuzz_hex(const unsigned char *in, size_t len, char *out)
{
    size_t             i;
    static const char  hex[] = "0123456789abcdef";

    for (i = 0; i < len; i++) {
        out[2 * i] = hex[in[i] >> 4];
        out[2 * i + 1] = hex[in[i] & 0x0f];
    }

    out[2 * len] = '\0';
}


static void
fuzz_check_parsed(const ngx_billing_sig_t *sig, int rc)
{
    size_t   i;
    int64_t  t;

    fuzz_assert(rc == NGX_BILLING_SIG_OK || rc == NGX_BILLING_SIG_MALFORMED
                || rc == NGX_BILLING_SIG_NO_V1);

    if (rc == NGX_BILLING_SIG_MALFORMED) {
        return;
    }

    /* t: 1 to 19 digits, no leading zero, the value of timestamp */

    fuzz_assert(sig->t_len >= 1 && sig->t_len <= NGX_BILLING_SIG_MAX_T);
    fuzz_assert(sig->t[0] != '0' || sig->t_len == 1);

    t = 0;

    for (i = 0; i < sig->t_len; i++) {
        fuzz_assert(sig->t[i] >= '0' && sig->t[i] <= '9');
        fuzz_assert(t <= (INT64_MAX - (sig->t[i] - '0')) / 10);
        t = t * 10 + (sig->t[i] - '0');
    }

    fuzz_assert(t == sig->timestamp);
    fuzz_assert(sig->timestamp >= 0);

    if (rc == NGX_BILLING_SIG_NO_V1) {
        fuzz_assert(sig->nv1 == 0);

    } else {
        fuzz_assert(sig->nv1 >= 1 && sig->nv1 <= NGX_BILLING_SIG_MAX_V1);
    }
}


static void
fuzz_check_time(const ngx_billing_sig_t *sig)
{
    int64_t  ts;

    ts = sig->timestamp;

    fuzz_assert(ngx_billing_sig_check_time(sig, ts, 0) == NGX_BILLING_SIG_OK);
    fuzz_assert(ngx_billing_sig_check_time(sig, ts, -1)
                == NGX_BILLING_SIG_TOLERANCE);
    fuzz_assert(ngx_billing_sig_check_time(sig, ts, INT64_MAX)
                == NGX_BILLING_SIG_OK);

    if (ts < INT64_MAX) {
        fuzz_assert(ngx_billing_sig_check_time(sig, ts + 1, 0)
                    == NGX_BILLING_SIG_TOLERANCE);
        fuzz_assert(ngx_billing_sig_check_time(sig, ts + 1, 1)
                    == NGX_BILLING_SIG_OK);
    }

    if (ts > INT64_MIN + 300) {
        fuzz_assert(ngx_billing_sig_check_time(sig, ts - 300, 300)
                    == NGX_BILLING_SIG_OK);
        fuzz_assert(ngx_billing_sig_check_time(sig, ts - 300, 299)
                    == NGX_BILLING_SIG_TOLERANCE);
    }

    /* no overflow at the extremes: just run */

    (void) ngx_billing_sig_check_time(sig, INT64_MIN, INT64_MAX);
    (void) ngx_billing_sig_check_time(sig, INT64_MAX, INT64_MAX);
    (void) ngx_billing_sig_check_time(sig, INT64_MIN, 0);
}


/*
 * Signs body with secret at t the way Stripe does, checks that the
 * result verifies, also with the fuzzed header appended, and that
 * nothing else does.
 */

static void
fuzz_sign(const unsigned char *t, size_t t_len, int64_t ts,
    const ngx_billing_secret_t *secret, const ngx_billing_secret_t *secrets,
    size_t nsecrets, const unsigned char *header, size_t header_len,
    const unsigned char *body, size_t len)
{
    int                rc, rc2;
    char               hex[2 * NGX_BILLING_SIG_LEN + 1];
    size_t             n, m;
    unsigned int       md_len;
    unsigned char      mac[NGX_BILLING_SIG_LEN], md[NGX_BILLING_SIG_LEN];
    unsigned char     *msg, *h, *other;
    ngx_billing_sig_t  sig;

    fuzz_assert(ngx_billing_sig_hmac(secret->data, secret->len, t, t_len,
                                     body, len, mac)
                == NGX_BILLING_SIG_OK);

    /* the same as OpenSSL's one-shot HMAC() of "<t>.<body>" */

    msg = malloc(t_len + 1 + len);
    if (msg == NULL) {
        abort();
    }

    memcpy(msg, t, t_len);
    msg[t_len] = '.';

    if (len) {
        memcpy(msg + t_len + 1, body, len);
    }

    md_len = 0;
    fuzz_assert(HMAC(EVP_sha256(), secret->data, (int) secret->len, msg,
                     t_len + 1 + len, md, &md_len)
                != NULL);
    fuzz_assert(md_len == NGX_BILLING_SIG_LEN);
    fuzz_assert(memcmp(md, mac, NGX_BILLING_SIG_LEN) == 0);

    free(msg);

    fuzz_hex(mac, sizeof(mac), hex);

    /* "t=<t>,v1=<hex>" and, after a comma, the fuzzed header */

    n = 2 + t_len + 4 + 2 * NGX_BILLING_SIG_LEN;

    h = malloc(n + 1 + header_len);
    if (h == NULL) {
        abort();
    }

    memcpy(h, "t=", 2);
    memcpy(h + 2, t, t_len);
    memcpy(h + 2 + t_len, ",v1=", 4);
    memcpy(h + 2 + t_len + 4, hex, 2 * NGX_BILLING_SIG_LEN);

    rc = ngx_billing_sig_parse(&sig, h, n);
    fuzz_assert(rc == NGX_BILLING_SIG_OK);
    fuzz_assert(sig.timestamp == ts && sig.nv1 == 1);

    fuzz_assert(ngx_billing_sig_verify(&sig, body, len, secret, 1)
                == NGX_BILLING_SIG_OK);
    fuzz_assert(ngx_billing_sig_verify(&sig, body, len, secrets, nsecrets)
                == NGX_BILLING_SIG_OK);
    fuzz_assert(ngx_billing_sig_verify(&sig, body, len, secrets, 0)
                == NGX_BILLING_SIG_MISMATCH);
    fuzz_assert(ngx_billing_sig_check(h, n, body, len, secrets, nsecrets,
                                      ts, 0)
                == NGX_BILLING_SIG_OK);

    if (ts < INT64_MAX) {
        fuzz_assert(ngx_billing_sig_check(h, n, body, len, secrets,
                                          nsecrets, ts + 1, 0)
                    == NGX_BILLING_SIG_TOLERANCE);
    }

    /* one more byte of body, or one less: no match */

    other = malloc(len + 1);
    if (other == NULL) {
        abort();
    }

    if (len) {
        memcpy(other, body, len);
    }

    other[len] = 'x';

    fuzz_assert(ngx_billing_sig_verify(&sig, other, len + 1, secrets,
                                       nsecrets)
                == NGX_BILLING_SIG_MISMATCH);

    if (len) {
        fuzz_assert(ngx_billing_sig_verify(&sig, other, len - 1, secrets,
                                           nsecrets)
                    == NGX_BILLING_SIG_MISMATCH);

        other[len - 1] ^= 0x01;
        fuzz_assert(ngx_billing_sig_verify(&sig, other, len, secrets,
                                           nsecrets)
                    == NGX_BILLING_SIG_MISMATCH);
    }

    free(other);

    /* our good v1 followed by whatever the header holds */

    if (header_len) {
        h[n] = ',';
        memcpy(h + n + 1, header, header_len);
        m = n + 1 + header_len;

        rc = ngx_billing_sig_parse(&sig, h, m);
        fuzz_check_parsed(&sig, rc);

        /* it has a v1 already: malformed or OK, never NO_V1 */

        fuzz_assert(rc != NGX_BILLING_SIG_NO_V1);

        rc2 = ngx_billing_sig_check(h, m, body, len, secrets, nsecrets,
                                    ts, 0);

        if (rc == NGX_BILLING_SIG_OK) {
            fuzz_assert(sig.timestamp == ts);
            fuzz_assert(ngx_billing_sig_verify(&sig, body, len, secret, 1)
                        == NGX_BILLING_SIG_OK);
            fuzz_assert(rc2 == NGX_BILLING_SIG_OK);

        } else {
            fuzz_assert(rc2 == rc);
        }
    }

    free(h);
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int                    rc, vrc, crc, trc;
    size_t                 i, nsecrets, header_len, body_len;
    unsigned char         *header, *body, *copies[FUZZ_MAX_SECRETS];
    const uint8_t         *end, *head_end, *p, *nl;
    ngx_billing_sig_t      sig;
    ngx_billing_secret_t   secrets[FUZZ_MAX_SECRETS];
    ngx_billing_secret_t   keyed[FUZZ_MAX_SECRETS];

    static const unsigned char  default_secret[] = "whsec_fuzz";
    static const unsigned char  default_t[] = "1700000000";

    end = data + size;

    /* the body after the first empty line */

    head_end = fuzz_find(data, end, "\n\n", 2);

    if (head_end != NULL) {
        body_len = end - (head_end + 2);
        body = fuzz_copy(head_end + 2, body_len);

    } else {
        head_end = end;
        body_len = 0;
        body = fuzz_copy(data, 0);
    }

    /* the header line, then the secret lines */

    nl = fuzz_find(data, head_end, "\n", 1);
    header_len = (nl ? nl : head_end) - data;
    header = fuzz_copy(data, header_len);

    nsecrets = 0;
    p = nl ? nl + 1 : head_end;

    while (p < head_end && nsecrets < FUZZ_MAX_SECRETS) {
        nl = fuzz_find(p, head_end, "\n", 1);
        if (nl == NULL) {
            nl = head_end;
        }

        copies[nsecrets] = fuzz_copy(p, nl - p);
        secrets[nsecrets].data = copies[nsecrets];
        secrets[nsecrets].len = nl - p;
        secrets[nsecrets].mac = NULL;
        nsecrets++;

        p = nl + 1;
    }

    if (nsecrets == 0) {
        copies[0] = fuzz_copy(default_secret, sizeof(default_secret) - 1);
        secrets[0].data = copies[0];
        secrets[0].len = sizeof(default_secret) - 1;
        secrets[0].mac = NULL;
        nsecrets = 1;
    }

    /* the same secrets keyed once, as the module has them */

    for (i = 0; i < nsecrets; i++) {
        keyed[i] = secrets[i];
        fuzz_assert(ngx_billing_sig_key(&keyed[i]) == NGX_BILLING_SIG_OK);
    }

    /* the header as it came */

    rc = ngx_billing_sig_parse(&sig, header, header_len);
    fuzz_check_parsed(&sig, rc);

    if (header_len == 0 || header_len > NGX_BILLING_SIG_MAX_HEADER) {
        fuzz_assert(rc == NGX_BILLING_SIG_MALFORMED);
    }

    crc = ngx_billing_sig_check(header, header_len, body, body_len, secrets,
                                nsecrets, 1700000000, 300);

    /* twice: a keyed context is re-initialized for every check */

    fuzz_assert(ngx_billing_sig_check(header, header_len, body, body_len,
                                      keyed, nsecrets, 1700000000, 300)
                == crc);
    fuzz_assert(ngx_billing_sig_check(header, header_len, body, body_len,
                                      keyed, nsecrets, 1700000000, 300)
                == crc);

    if (rc != NGX_BILLING_SIG_OK) {
        fuzz_assert(crc == rc);

    } else {
        vrc = ngx_billing_sig_verify(&sig, body, body_len, secrets,
                                     nsecrets);
        fuzz_assert(vrc == NGX_BILLING_SIG_OK
                    || vrc == NGX_BILLING_SIG_MISMATCH);

        trc = ngx_billing_sig_check_time(&sig, 1700000000, 300);
        fuzz_assert(trc == NGX_BILLING_SIG_OK
                    || trc == NGX_BILLING_SIG_TOLERANCE);

        /* the signature first, then the time */

        fuzz_assert(crc == (vrc != NGX_BILLING_SIG_OK ? vrc : trc));

        fuzz_assert(ngx_billing_sig_verify(&sig, body, body_len, secrets, 0)
                    == NGX_BILLING_SIG_MISMATCH);

        fuzz_check_time(&sig);
    }

    if (rc != NGX_BILLING_SIG_MALFORMED) {
        fuzz_check_time(&sig);
    }

    /* sign the body at the header's t, or at a fixed one */

    for (i = 0; i < nsecrets; i++) {
        if (rc != NGX_BILLING_SIG_MALFORMED) {
            fuzz_sign(sig.t, sig.t_len, sig.timestamp, &secrets[i], secrets,
                      nsecrets, header, header_len, body, body_len);
            fuzz_sign(sig.t, sig.t_len, sig.timestamp, &keyed[i], keyed,
                      nsecrets, header, header_len, body, body_len);

        } else {
            fuzz_sign(default_t, sizeof(default_t) - 1, 1700000000,
                      &secrets[i], secrets, nsecrets, header, header_len,
                      body, body_len);
        }
    }

    (void) ngx_billing_sig_strerror(rc);

    for (i = 0; i < nsecrets; i++) {
        ngx_billing_sig_key_free(keyed[i].mac);
        free(copies[i]);
    }

    free(header);
    free(body);

    return 0;
}
