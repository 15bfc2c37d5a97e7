
/*
 * Stripe-Signature parsing and verification.
 */


#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/opensslv.h>

#if (OPENSSL_VERSION_NUMBER >= 0x30000000L)
#include <openssl/core_names.h>
#include <openssl/params.h>
#else
#include <openssl/hmac.h>
#endif

#include "ngx_billing_signature.h"


static int ngx_billing_sig_hex(unsigned char c);
static void *ngx_billing_sig_ctx(void);
static int ngx_billing_sig_init(void *ctx, const unsigned char *key,
    size_t key_len);
static int ngx_billing_sig_run(void *ctx, const unsigned char *t,
    size_t t_len, const unsigned char *body, size_t len,
    unsigned char out[NGX_BILLING_SIG_LEN]);


int
ngx_billing_sig_parse(ngx_billing_sig_t *sig, const unsigned char *header,
    size_t len)
{
    int                   seen_t;
    size_t                i, klen, vlen;
    int64_t               t;
    const unsigned char  *p, *end, *key, *val;

    memset(sig, 0, sizeof(ngx_billing_sig_t));

    if (len == 0 || len > NGX_BILLING_SIG_MAX_HEADER) {
        return NGX_BILLING_SIG_MALFORMED;
    }

    seen_t = 0;
    p = header;
    end = header + len;

    for ( ;; ) {

        /* key: [a-z0-9]+ */

        key = p;
        while (p < end
               && ((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9')))
        {
            p++;
        }

        klen = p - key;

        if (klen == 0 || klen > 16 || p == end || *p != '=') {
            return NGX_BILLING_SIG_MALFORMED;
        }

        p++;

        /* value: printable, up to the next comma */

        val = p;
        while (p < end && *p != ',') {
            if (*p <= ' ' || *p >= 0x7f) {
                return NGX_BILLING_SIG_MALFORMED;
            }
            p++;
        }

        vlen = p - val;

        if (vlen == 0) {
            return NGX_BILLING_SIG_MALFORMED;
        }

        if (klen == 1 && key[0] == 't') {

            if (seen_t || vlen > NGX_BILLING_SIG_MAX_T
                || (val[0] == '0' && vlen > 1))
            {
                return NGX_BILLING_SIG_MALFORMED;
            }

            t = 0;

            for (i = 0; i < vlen; i++) {
                if (val[i] < '0' || val[i] > '9') {
                    return NGX_BILLING_SIG_MALFORMED;
                }

                if (t > (INT64_MAX - (val[i] - '0')) / 10) {
                    return NGX_BILLING_SIG_MALFORMED;
                }

                t = t * 10 + (val[i] - '0');
            }

            seen_t = 1;
            sig->timestamp = t;
            memcpy(sig->t, val, vlen);
            sig->t_len = vlen;

        } else if (klen == 2 && key[0] == 'v' && key[1] == '1') {

            if (vlen != 2 * NGX_BILLING_SIG_LEN
                || sig->nv1 == NGX_BILLING_SIG_MAX_V1)
            {
                return NGX_BILLING_SIG_MALFORMED;
            }

            for (i = 0; i < NGX_BILLING_SIG_LEN; i++) {
                int  hi, lo;

                hi = ngx_billing_sig_hex(val[2 * i]);
                lo = ngx_billing_sig_hex(val[2 * i + 1]);

                if (hi < 0 || lo < 0) {
                    return NGX_BILLING_SIG_MALFORMED;
                }

                sig->v1[sig->nv1][i] = (unsigned char) (hi << 4 | lo);
            }

            sig->nv1++;
        }

        /* v0 and unknown schemes are ignored, as Stripe's libraries do */

        if (p == end) {
            break;
        }

        /* skip the comma and an optional space after it */

        p++;

        if (p < end && *p == ' ') {
            p++;
        }

        if (p == end) {
            return NGX_BILLING_SIG_MALFORMED;
        }
    }

    if (!seen_t) {
        return NGX_BILLING_SIG_MALFORMED;
    }

    if (sig->nv1 == 0) {
        return NGX_BILLING_SIG_NO_V1;
    }

    return NGX_BILLING_SIG_OK;
}


static int
ngx_billing_sig_hex(unsigned char c)
{
    /* Stripe signs in lowercase hex; anything else is not its header */

    if (c >= '0' && c <= '9') {
        return c - '0';
    }

    if (c >= 'a' && c <= 'f') {
        return c - 'a' + 10;
    }

    return -1;
}


/* a new HMAC context, not keyed; NULL on failure */

static void *
ngx_billing_sig_ctx(void)
{
#if (OPENSSL_VERSION_NUMBER >= 0x30000000L)

    /* fetched once per process; a worker is single threaded */
    static EVP_MAC  *mac;

    if (mac == NULL) {
        mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
        if (mac == NULL) {
            return NULL;
        }
    }

    return EVP_MAC_CTX_new(mac);

#else

    return HMAC_CTX_new();

#endif
}


/*
 * Keys ctx, or with a NULL key re-initializes it with the key it has:
 * its inner and outer pads were hashed when it was keyed, so that a
 * keyed secret's check hashes only the payload.
 */

static int
ngx_billing_sig_init(void *ctx, const unsigned char *key, size_t key_len)
{
#if (OPENSSL_VERSION_NUMBER >= 0x30000000L)

    OSSL_PARAM  params[2];

    if (key == NULL) {
        return EVP_MAC_init(ctx, NULL, 0, NULL);
    }

    params[0] = OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST,
                                                 (char *) "SHA256", 0);
    params[1] = OSSL_PARAM_construct_end();

    return EVP_MAC_init(ctx, key, key_len, params);

#else

    if (key == NULL) {
        return HMAC_Init_ex(ctx, NULL, 0, NULL, NULL);
    }

    return HMAC_Init_ex(ctx, key, (int) key_len, EVP_sha256(), NULL);

#endif
}


/* the HMAC of "<t>.<body>" with an initialized ctx */

static int
ngx_billing_sig_run(void *ctx, const unsigned char *t, size_t t_len,
    const unsigned char *body, size_t len,
    unsigned char out[NGX_BILLING_SIG_LEN])
{
#if (OPENSSL_VERSION_NUMBER >= 0x30000000L)

    size_t  out_len;

    return EVP_MAC_update(ctx, t, t_len)
           && EVP_MAC_update(ctx, (const unsigned char *) ".", 1)
           && EVP_MAC_update(ctx, body, len)
           && EVP_MAC_final(ctx, out, &out_len, NGX_BILLING_SIG_LEN)
           && out_len == NGX_BILLING_SIG_LEN;

#else

    unsigned int  out_len;

    return HMAC_Update(ctx, t, t_len)
           && HMAC_Update(ctx, (const unsigned char *) ".", 1)
           && HMAC_Update(ctx, body, len)
           && HMAC_Final(ctx, out, &out_len)
           && out_len == NGX_BILLING_SIG_LEN;

#endif
}


int
ngx_billing_sig_hmac(const unsigned char *key, size_t key_len,
    const unsigned char *t, size_t t_len,
    const unsigned char *body, size_t len,
    unsigned char out[NGX_BILLING_SIG_LEN])
{
    int    ok;
    void  *ctx;

    ctx = ngx_billing_sig_ctx();

    if (ctx == NULL) {
        return NGX_BILLING_SIG_INTERNAL;
    }

    /* a NULL key fails here, as it did: a fresh ctx has none to reuse */

    ok = ngx_billing_sig_init(ctx, key, key_len)
         && ngx_billing_sig_run(ctx, t, t_len, body, len, out);

    ngx_billing_sig_key_free(ctx);

    return ok ? NGX_BILLING_SIG_OK : NGX_BILLING_SIG_INTERNAL;
}


int
ngx_billing_sig_key(ngx_billing_secret_t *secret)
{
    void  *ctx;

    secret->mac = NULL;

    ctx = ngx_billing_sig_ctx();

    if (ctx == NULL) {
        return NGX_BILLING_SIG_INTERNAL;
    }

    if (!ngx_billing_sig_init(ctx, secret->data, secret->len)) {
        ngx_billing_sig_key_free(ctx);
        return NGX_BILLING_SIG_INTERNAL;
    }

    secret->mac = ctx;

    return NGX_BILLING_SIG_OK;
}


void
ngx_billing_sig_key_free(void *mac)
{
    /* both take NULL, and wipe the pads as they free them */

#if (OPENSSL_VERSION_NUMBER >= 0x30000000L)
    EVP_MAC_CTX_free(mac);
#else
    HMAC_CTX_free(mac);
#endif
}


int
ngx_billing_sig_verify(const ngx_billing_sig_t *sig,
    const unsigned char *body, size_t len,
    const ngx_billing_secret_t *secrets, size_t nsecrets)
{
    int            rc, match;
    size_t         s, i;
    unsigned char  expected[NGX_BILLING_SIG_LEN];

    match = 0;

    for (s = 0; s < nsecrets; s++) {

        if (secrets[s].mac) {
            rc = (ngx_billing_sig_init(secrets[s].mac, NULL, 0)
                  && ngx_billing_sig_run(secrets[s].mac, sig->t, sig->t_len,
                                         body, len, expected))
                 ? NGX_BILLING_SIG_OK : NGX_BILLING_SIG_INTERNAL;

        } else {
            rc = ngx_billing_sig_hmac(secrets[s].data, secrets[s].len,
                                      sig->t, sig->t_len, body, len,
                                      expected);
        }

        if (rc != NGX_BILLING_SIG_OK) {
            OPENSSL_cleanse(expected, sizeof(expected));
            return NGX_BILLING_SIG_INTERNAL;
        }

        /* no early exit: every comparison costs the same */

        for (i = 0; i < sig->nv1; i++) {
            match |= (CRYPTO_memcmp(expected, sig->v1[i],
                                    NGX_BILLING_SIG_LEN) == 0);
        }
    }

    OPENSSL_cleanse(expected, sizeof(expected));

    return match ? NGX_BILLING_SIG_OK : NGX_BILLING_SIG_MISMATCH;
}


int
ngx_billing_sig_check_time(const ngx_billing_sig_t *sig, int64_t now,
    int64_t tolerance)
{
    uint64_t  d;

    if (tolerance < 0) {
        return NGX_BILLING_SIG_TOLERANCE;
    }

    /* the distance of two int64_t always fits in a uint64_t */

    if (now >= sig->timestamp) {
        d = (uint64_t) now - (uint64_t) sig->timestamp;

    } else {
        d = (uint64_t) sig->timestamp - (uint64_t) now;
    }

    return (d <= (uint64_t) tolerance) ? NGX_BILLING_SIG_OK
                                       : NGX_BILLING_SIG_TOLERANCE;
}


int
ngx_billing_sig_check(const unsigned char *header, size_t header_len,
    const unsigned char *body, size_t len,
    const ngx_billing_secret_t *secrets, size_t nsecrets,
    int64_t now, int64_t tolerance)
{
    int                rc;
    ngx_billing_sig_t  sig;

    rc = ngx_billing_sig_parse(&sig, header, header_len);
    if (rc != NGX_BILLING_SIG_OK) {
        return rc;
    }

    /*
     * The signature first, as Stripe's libraries do: only a holder of
     * the secret learns that a timestamp was out of tolerance.
     */

    rc = ngx_billing_sig_verify(&sig, body, len, secrets, nsecrets);
    if (rc != NGX_BILLING_SIG_OK) {
        return rc;
    }

    return ngx_billing_sig_check_time(&sig, now, tolerance);
}


const char *
ngx_billing_sig_strerror(int rc)
{
    switch (rc) {

    case NGX_BILLING_SIG_OK:
        return "signature verified";

    case NGX_BILLING_SIG_MALFORMED:
        return "malformed Stripe-Signature header";

    case NGX_BILLING_SIG_NO_V1:
        return "no v1 signature in Stripe-Signature header";

    case NGX_BILLING_SIG_MISMATCH:
        return "no signature matches the payload";

    case NGX_BILLING_SIG_TOLERANCE:
        return "timestamp outside the tolerance zone";

    default:
        return "signature verification failed";
    }
}


int
ngx_billing_secure_equal(const unsigned char *a, size_t a_len,
    const unsigned char *b, size_t b_len)
{
    int            equal;
    unsigned char  da[EVP_MAX_MD_SIZE], db[EVP_MAX_MD_SIZE];

    if (!EVP_Digest(a, a_len, da, NULL, EVP_sha256(), NULL)
        || !EVP_Digest(b, b_len, db, NULL, EVP_sha256(), NULL))
    {
        return 0;
    }

    equal = (CRYPTO_memcmp(da, db, 32) == 0) & (a_len == b_len);

    OPENSSL_cleanse(da, sizeof(da));
    OPENSSL_cleanse(db, sizeof(db));

    return equal;
}
