
/*
 * Stripe-Signature parsing and verification.
 *
 * Plain C (no nginx), so that it can be unit tested and fuzzed alone.
 */


#ifndef _NGX_BILLING_SIGNATURE_H_INCLUDED_
#define _NGX_BILLING_SIGNATURE_H_INCLUDED_


#include <stddef.h>
#include <stdint.h>


#define NGX_BILLING_SIG_MAX_HEADER  4096
#define NGX_BILLING_SIG_MAX_V1      8
#define NGX_BILLING_SIG_MAX_T       19
#define NGX_BILLING_SIG_LEN         32


typedef enum {
    NGX_BILLING_SIG_OK = 0,
    NGX_BILLING_SIG_MALFORMED,
    NGX_BILLING_SIG_NO_V1,
    NGX_BILLING_SIG_MISMATCH,
    NGX_BILLING_SIG_TOLERANCE,
    NGX_BILLING_SIG_INTERNAL
} ngx_billing_sig_rc_e;


typedef struct {
    const unsigned char  *data;
    size_t                len;

    /* keyed once by ngx_billing_sig_key(); NULL: keyed on every check */
    void                 *mac;
} ngx_billing_secret_t;


typedef struct {
    int64_t               timestamp;

    /* the timestamp's digits as sent: they are part of the signed payload */
    unsigned char         t[NGX_BILLING_SIG_MAX_T];
    size_t                t_len;

    size_t                nv1;
    unsigned char         v1[NGX_BILLING_SIG_MAX_V1][NGX_BILLING_SIG_LEN];
} ngx_billing_sig_t;


/*
 * Parses "t=<digits>,v1=<64 lowercase hex>[,v1=...][,<scheme>=<value>...]".
 * Returns NGX_BILLING_SIG_OK, NGX_BILLING_SIG_MALFORMED or
 * NGX_BILLING_SIG_NO_V1.
 */
int ngx_billing_sig_parse(ngx_billing_sig_t *sig, const unsigned char *header,
    size_t len);

/*
 * Checks every v1 of sig against HMAC-SHA256("<t>.<body>") under every
 * secret, comparing in constant time.  Returns NGX_BILLING_SIG_OK,
 * NGX_BILLING_SIG_MISMATCH or NGX_BILLING_SIG_INTERNAL.
 */
int ngx_billing_sig_verify(const ngx_billing_sig_t *sig,
    const unsigned char *body, size_t len,
    const ngx_billing_secret_t *secrets, size_t nsecrets);

/* |now - t| <= tolerance: NGX_BILLING_SIG_OK or NGX_BILLING_SIG_TOLERANCE */
int ngx_billing_sig_check_time(const ngx_billing_sig_t *sig, int64_t now,
    int64_t tolerance);

/* the whole check in Stripe's order: parse, signature, then time */
int ngx_billing_sig_check(const unsigned char *header, size_t header_len,
    const unsigned char *body, size_t len,
    const ngx_billing_secret_t *secrets, size_t nsecrets,
    int64_t now, int64_t tolerance);

/*
 * Keys secret->mac with the secret, once, so that a check only hashes
 * the payload: NGX_BILLING_SIG_OK or NGX_BILLING_SIG_INTERNAL.  A keyed
 * secret is for one thread at a time; ngx_billing_sig_key_free() wipes
 * and frees the key (NULL is allowed).
 */
int ngx_billing_sig_key(ngx_billing_secret_t *secret);
void ngx_billing_sig_key_free(void *mac);

/* HMAC-SHA256 of "<t>.<body>", for tests and tools */
int ngx_billing_sig_hmac(const unsigned char *key, size_t key_len,
    const unsigned char *t, size_t t_len,
    const unsigned char *body, size_t len,
    unsigned char out[NGX_BILLING_SIG_LEN]);

const char *ngx_billing_sig_strerror(int rc);

/*
 * 1 if a and b are the same secret; the time taken depends on neither
 * their content nor their lengths (both are hashed first).
 */
int ngx_billing_secure_equal(const unsigned char *a, size_t a_len,
    const unsigned char *b, size_t b_len);


#endif /* _NGX_BILLING_SIGNATURE_H_INCLUDED_ */
