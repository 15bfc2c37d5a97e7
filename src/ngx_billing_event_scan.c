
/*
 * The webhook's reader of Stripe events, for the common case.
 *
 * jansson's lexer costs about 170 instructions a byte (a call and a
 * copy per byte, a value built for every field of the invoice, most of
 * which the module never reads).  This reader makes one pass over the
 * document, checks every byte as json_loadb(JSON_REJECT_DUPLICATES)
 * checks it (whitespace, grammar, escapes, UTF-8, numbers, literals,
 * duplicate keys), notes where the values ngx_billing_event_fill()
 * reads are, and builds nothing.
 *
 * It answers only for documents it could check to the last byte; for
 * anything else (an error, an escape in a key or in a value it reads, a
 * number jansson could find too big, a deep document) it asks jansson,
 * whose answer and error message are then the ones given.  It therefore
 * never accepts a document jansson refuses; fuzz/fuzz_event.c checks
 * that both always agree.
 */


#include <stdint.h>
#include <string.h>

#include "ngx_billing_event.h"


#define NGX_BILLING_SCAN_ASK      -1

/* jansson's own depth limit is 2048; events are a few levels deep */
#define NGX_BILLING_SCAN_DEPTH    32

/* the keys of the objects open at once, for the duplicate check */
#define NGX_BILLING_SCAN_KEYS     256

/* any integer of at most 18 digits fits an int64_t, as jansson's does */
#define NGX_BILLING_SCAN_DIGITS   18


typedef struct {
    const unsigned char        *data;
    size_t                      len;
    uint32_t                    hash;
} ngx_billing_scan_key_t;


typedef struct {
    const unsigned char        *p;
    const unsigned char        *end;
    ngx_billing_event_field_t  *f;
    unsigned                    nkeys;
    ngx_billing_scan_key_t      keys[NGX_BILLING_SCAN_KEYS];
} ngx_billing_scan_t;


static int ngx_billing_scan_object(ngx_billing_scan_t *s, unsigned depth,
    unsigned ctx);
static int ngx_billing_scan_array(ngx_billing_scan_t *s, unsigned depth);
static int ngx_billing_scan_open(ngx_billing_scan_t *s, unsigned depth,
    unsigned char close);
static int ngx_billing_scan_next(ngx_billing_scan_t *s, unsigned char close);
static int ngx_billing_scan_value(ngx_billing_scan_t *s, unsigned depth,
    unsigned ctx, ngx_billing_event_field_t *f);
static int ngx_billing_scan_string(ngx_billing_scan_t *s, unsigned *escaped);
static int ngx_billing_scan_hex4(const unsigned char *p, unsigned *value);
static int ngx_billing_scan_number(ngx_billing_scan_t *s,
    ngx_billing_event_field_t *f);
static int ngx_billing_scan_literal(ngx_billing_scan_t *s, const char *word,
    size_t len, ngx_billing_event_field_t *f);


/*
 * The bytes of a string: as they are, '"', '\\', a control character
 * (an error), the first of a UTF-8 sequence of 2, 3, 4 bytes, a byte no
 * UTF-8 character starts with (an error), as jansson's
 * utf8_check_first() sorts them.
 */

#define NGX_BILLING_SCAN_PLAIN    0
#define NGX_BILLING_SCAN_QUOTE    1
#define NGX_BILLING_SCAN_ESCAPE   2
#define NGX_BILLING_SCAN_CONTROL  3
#define NGX_BILLING_SCAN_UTF8_2   4
#define NGX_BILLING_SCAN_UTF8_3   5
#define NGX_BILLING_SCAN_UTF8_4   6
#define NGX_BILLING_SCAN_INVALID  7

static const unsigned char  ngx_billing_scan_class[256] = {
    3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3,   /* 00 */
    3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3,   /* 10 */
    0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,   /* 20 */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,   /* 30 */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,   /* 40 */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0,   /* 50 */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,   /* 60 */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,   /* 70 */
    7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,   /* 80 */
    7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,   /* 90 */
    7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,   /* a0 */
    7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,   /* b0 */
    7, 7, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4,   /* c0 */
    4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4,   /* d0 */
    5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5,   /* e0 */
    6, 6, 6, 6, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,   /* f0 */
};


/* the whitespace jansson's lexer skips */

static const unsigned char  ngx_billing_scan_ws[256] = {
    ['\t'] = 1, ['\n'] = 1, ['\r'] = 1, [' '] = 1
};


#define ngx_billing_scan_skip(s)                                             \
    while ((s)->p < (s)->end && ngx_billing_scan_ws[*(s)->p]) {              \
        (s)->p++;                                                            \
    }


int
ngx_billing_event_scan(ngx_billing_event_t *ev, const unsigned char *buf,
    size_t len, const char **err)
{
    ngx_billing_scan_t         s;
    ngx_billing_event_field_t  f[NGX_BILLING_EV_NFIELDS];

    ngx_billing_event_init(ev);
    memset(f, 0, sizeof(f));

    s.p = buf;
    s.end = buf + len;
    s.f = f;
    s.nkeys = 0;

    ngx_billing_scan_skip(&s);

    /* an event is an object: anything else, jansson says what is wrong */

    if (s.p == s.end || *s.p != '{'
        || ngx_billing_scan_object(&s, 1, NGX_BILLING_EV_CTX_ROOT) != 0)
    {
        return NGX_BILLING_EVENT_ASK_JANSSON;
    }

    ngx_billing_scan_skip(&s);

    if (s.p != s.end) {
        return NGX_BILLING_EVENT_ASK_JANSSON;
    }

    return ngx_billing_event_fill(ev, f, err);
}


static int
ngx_billing_scan_object(ngx_billing_scan_t *s, unsigned depth, unsigned ctx)
{
    int                              rc;
    size_t                           len;
    unsigned                         i, base, child, escaped;
    uint32_t                         hash;
    uint64_t                         bloom[4], bit;
    const unsigned char             *key, *k;
    ngx_billing_scan_key_t          *keys;
    ngx_billing_event_field_t       *f;
    const ngx_billing_event_name_t  *name;

    rc = ngx_billing_scan_open(s, depth, '}');

    if (rc != 1) {
        return rc;
    }

    keys = s->keys;
    base = s->nkeys;
    bloom[0] = bloom[1] = bloom[2] = bloom[3] = 0;

    for ( ;; ) {

        if (s->p == s->end || *s->p != '"') {
            return NGX_BILLING_SCAN_ASK;
        }

        /* a key with an escape would need decoding to be compared */

        key = ++s->p;
        escaped = 0;

        if (ngx_billing_scan_string(s, &escaped) != 0 || escaped) {
            return NGX_BILLING_SCAN_ASK;
        }

        len = s->p - 1 - key;

        /* JSON_REJECT_DUPLICATES: a filter of 256 bits, then the keys */

        hash = 2166136261u;

        for (k = key; k < key + len; k++) {
            hash = (hash ^ *k) * 16777619u;
        }

        hash ^= hash >> 16;
        bit = (uint64_t) 1 << (hash & 63);

        if (bloom[(hash >> 6) & 3] & bit) {
            for (i = base; i < s->nkeys; i++) {
                if (keys[i].hash == hash && keys[i].len == len
                    && memcmp(keys[i].data, key, len) == 0)
                {
                    return NGX_BILLING_SCAN_ASK;
                }
            }
        }

        bloom[(hash >> 6) & 3] |= bit;

        if (s->nkeys == NGX_BILLING_SCAN_KEYS) {
            return NGX_BILLING_SCAN_ASK;
        }

        keys[s->nkeys].data = key;
        keys[s->nkeys].len = len;
        keys[s->nkeys].hash = hash;
        s->nkeys++;

        ngx_billing_scan_skip(s);

        if (s->p == s->end || *s->p != ':') {
            return NGX_BILLING_SCAN_ASK;
        }

        s->p++;

        ngx_billing_scan_skip(s);

        /* a value the module reads, or one only checked */

        f = NULL;
        child = NGX_BILLING_EV_CTX_NONE;

        if (ctx != NGX_BILLING_EV_CTX_NONE) {
            for (name = ngx_billing_event_names[ctx]; name->name; name++) {
                if (name->len == len && memcmp(name->name, key, len) == 0) {
                    f = &s->f[name->field];
                    child = name->child;
                    break;
                }
            }
        }

        if (ngx_billing_scan_value(s, depth, child, f) != 0) {
            return NGX_BILLING_SCAN_ASK;
        }

        rc = ngx_billing_scan_next(s, '}');

        if (rc != 1) {
            /* its keys go with it */
            s->nkeys = base;
            return rc;
        }
    }
}


static int
ngx_billing_scan_array(ngx_billing_scan_t *s, unsigned depth)
{
    int  rc;

    rc = ngx_billing_scan_open(s, depth, ']');

    if (rc != 1) {
        return rc;
    }

    for ( ;; ) {

        if (ngx_billing_scan_value(s, depth, NGX_BILLING_EV_CTX_NONE, NULL)
            != 0)
        {
            return NGX_BILLING_SCAN_ASK;
        }

        rc = ngx_billing_scan_next(s, ']');

        if (rc != 1) {
            return rc;
        }
    }
}


/* at "{" or "[": 1 a member or an element follows, 0 empty, or ASK */

static int
ngx_billing_scan_open(ngx_billing_scan_t *s, unsigned depth,
    unsigned char close)
{
    if (depth > NGX_BILLING_SCAN_DEPTH) {
        return NGX_BILLING_SCAN_ASK;
    }

    s->p++;

    ngx_billing_scan_skip(s);

    if (s->p < s->end && *s->p == close) {
        s->p++;
        return 0;
    }

    return 1;
}


/* after a member or an element: 1 another follows, 0 the end, or ASK */

static int
ngx_billing_scan_next(ngx_billing_scan_t *s, unsigned char close)
{
    ngx_billing_scan_skip(s);

    if (s->p == s->end) {
        return NGX_BILLING_SCAN_ASK;
    }

    if (*s->p == ',') {
        s->p++;
        ngx_billing_scan_skip(s);
        return 1;
    }

    if (*s->p != close) {
        return NGX_BILLING_SCAN_ASK;
    }

    s->p++;

    return 0;
}


/* a value, at s->p: its kind and where it is in f, if f */

static int
ngx_billing_scan_value(ngx_billing_scan_t *s, unsigned depth, unsigned ctx,
    ngx_billing_event_field_t *f)
{
    unsigned              escaped;
    const unsigned char  *start;

    if (s->p == s->end) {
        return NGX_BILLING_SCAN_ASK;
    }

    switch (*s->p) {

    case '{':
        if (f) {
            f->kind = NGX_BILLING_JSON_OBJECT;
        }

        return ngx_billing_scan_object(s, depth + 1, ctx);

    case '[':
        if (f) {
            f->kind = NGX_BILLING_JSON_OTHER;
        }

        return ngx_billing_scan_array(s, depth + 1);

    case '"':
        start = ++s->p;
        escaped = 0;

        if (ngx_billing_scan_string(s, &escaped) != 0) {
            return NGX_BILLING_SCAN_ASK;
        }

        if (f) {
            /* the bytes are the value only without an escape */

            if (escaped) {
                return NGX_BILLING_SCAN_ASK;
            }

            f->kind = NGX_BILLING_JSON_STRING;
            f->str.data = (const char *) start;
            f->str.len = s->p - 1 - start;
        }

        return 0;

    case 't':
        return ngx_billing_scan_literal(s, "true", 4, f);

    case 'f':
        return ngx_billing_scan_literal(s, "false", 5, f);

    case 'n':
        return ngx_billing_scan_literal(s, "null", 4, f);

    default:
        return ngx_billing_scan_number(s, f);
    }
}


/* a string's bytes after its opening quote, to after its closing one */

static int
ngx_billing_scan_string(ngx_billing_scan_t *s, unsigned *escaped)
{
    unsigned              v, v2;
    const unsigned char  *p, *end;

    p = s->p;
    end = s->end;

    for ( ;; ) {

        while (p < end && ngx_billing_scan_class[*p] == NGX_BILLING_SCAN_PLAIN)
        {
            p++;
        }

        if (p == end) {
            return NGX_BILLING_SCAN_ASK;
        }

        switch (ngx_billing_scan_class[*p]) {

        case NGX_BILLING_SCAN_QUOTE:
            s->p = p + 1;
            return 0;

        case NGX_BILLING_SCAN_ESCAPE:
            *escaped = 1;

            if (end - p < 2) {
                return NGX_BILLING_SCAN_ASK;
            }

            switch (p[1]) {

            case '"':
            case '\\':
            case '/':
            case 'b':
            case 'f':
            case 'n':
            case 'r':
            case 't':
                p += 2;
                continue;

            case 'u':
                if (end - p < 6 || ngx_billing_scan_hex4(p + 2, &v) != 0) {
                    return NGX_BILLING_SCAN_ASK;
                }

                /* jansson refuses a NUL and a lone half of a pair */

                if (v == 0 || (v >= 0xdc00 && v <= 0xdfff)) {
                    return NGX_BILLING_SCAN_ASK;
                }

                if (v >= 0xd800 && v <= 0xdbff) {
                    if (end - p < 12 || p[6] != '\\' || p[7] != 'u'
                        || ngx_billing_scan_hex4(p + 8, &v2) != 0
                        || v2 < 0xdc00 || v2 > 0xdfff)
                    {
                        return NGX_BILLING_SCAN_ASK;
                    }

                    p += 12;
                    continue;
                }

                p += 6;
                continue;

            default:
                return NGX_BILLING_SCAN_ASK;
            }

            /* every case of the escape continues or returns */

        /*
         * UTF-8 as utf8_check_full() takes it: continuation bytes, no
         * overlong form, no surrogate, nothing past U+10FFFF
         */

        case NGX_BILLING_SCAN_UTF8_2:
            if (end - p < 2 || (p[1] & 0xc0) != 0x80) {
                return NGX_BILLING_SCAN_ASK;
            }

            p += 2;
            continue;

        case NGX_BILLING_SCAN_UTF8_3:
            if (end - p < 3
                || (p[1] & 0xc0) != 0x80 || (p[2] & 0xc0) != 0x80
                || (p[0] == 0xe0 && p[1] < 0xa0)
                || (p[0] == 0xed && p[1] > 0x9f))
            {
                return NGX_BILLING_SCAN_ASK;
            }

            p += 3;
            continue;

        case NGX_BILLING_SCAN_UTF8_4:
            if (end - p < 4
                || (p[1] & 0xc0) != 0x80 || (p[2] & 0xc0) != 0x80
                || (p[3] & 0xc0) != 0x80
                || (p[0] == 0xf0 && p[1] < 0x90)
                || (p[0] == 0xf4 && p[1] > 0x8f))
            {
                return NGX_BILLING_SCAN_ASK;
            }

            p += 4;
            continue;

        default:
            return NGX_BILLING_SCAN_ASK;
        }
    }
}


static int
ngx_billing_scan_hex4(const unsigned char *p, unsigned *value)
{
    unsigned  i, c, v;

    v = 0;

    for (i = 0; i < 4; i++) {
        c = p[i];

        if (c >= '0' && c <= '9') {
            c -= '0';

        } else if ((c | 0x20) >= 'a' && (c | 0x20) <= 'f') {
            c = (c | 0x20) - 'a' + 10;

        } else {
            return NGX_BILLING_SCAN_ASK;
        }

        v = (v << 4) | c;
    }

    *value = v;

    return 0;
}


/*
 * JSON's number: an integer of at most 18 digits (jansson's strtoll()
 * cannot overflow), or a real without an exponent (nor its strtod()):
 * longer ones and exponents are jansson's to judge
 */

static int
ngx_billing_scan_number(ngx_billing_scan_t *s, ngx_billing_event_field_t *f)
{
    int64_t               n;
    unsigned              digits, neg, real;
    const unsigned char  *p, *end;

    p = s->p;
    end = s->end;

    n = 0;
    digits = 0;
    neg = 0;
    real = 0;

    if (*p == '-') {
        neg = 1;
        p++;
    }

    if (p == end) {
        return NGX_BILLING_SCAN_ASK;
    }

    if (*p == '0') {
        p++;

    } else if (*p >= '1' && *p <= '9') {

        while (p < end && *p >= '0' && *p <= '9') {
            if (++digits > NGX_BILLING_SCAN_DIGITS) {
                return NGX_BILLING_SCAN_ASK;
            }

            n = n * 10 + (*p++ - '0');
        }

    } else {
        return NGX_BILLING_SCAN_ASK;
    }

    if (p < end && *p == '.') {
        p++;

        if (p == end || *p < '0' || *p > '9') {
            return NGX_BILLING_SCAN_ASK;
        }

        while (p < end && *p >= '0' && *p <= '9') {
            p++;
        }

        real = 1;
    }

    /* "01", "1e5", "1x": an error or an exponent */

    if (p < end && ((*p >= '0' && *p <= '9') || *p == 'e' || *p == 'E')) {
        return NGX_BILLING_SCAN_ASK;
    }

    s->p = p;

    if (f) {
        if (real) {
            f->kind = NGX_BILLING_JSON_OTHER;

        } else {
            f->kind = NGX_BILLING_JSON_INTEGER;
            f->num = neg ? -n : n;
        }
    }

    return 0;
}


static int
ngx_billing_scan_literal(ngx_billing_scan_t *s, const char *word, size_t len,
    ngx_billing_event_field_t *f)
{
    unsigned char  c;

    if ((size_t) (s->end - s->p) < len || memcmp(s->p, word, len) != 0) {
        return NGX_BILLING_SCAN_ASK;
    }

    s->p += len;

    /* jansson reads a word to its last letter: "truer" is no literal */

    if (s->p < s->end) {
        c = *s->p | 0x20;

        if (c >= 'a' && c <= 'z') {
            return NGX_BILLING_SCAN_ASK;
        }
    }

    if (f) {
        f->kind = NGX_BILLING_JSON_OTHER;
    }

    return 0;
}
