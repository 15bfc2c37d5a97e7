
/*
 * Invoice and subscription states and their allowed transitions.
 */


#include <string.h>

#include "ngx_billing_state.h"


typedef int (*ngx_billing_transition_pt)(int from, int to);


static size_t ngx_billing_allowed_from(int to, int nstates,
    ngx_billing_transition_pt ok, const char *(*name)(int), char *buf,
    size_t size);


static const char  *ngx_billing_invoice_names[] = {
    "none", "open", "paid", "void", "uncollectible"
};


static const char  *ngx_billing_sub_names[] = {
    "none", "pending", "active", "payment_failed", "cancelled", "past_due"
};


/*
 * Stripe delivers events at least once and in no particular order, so a
 * status never goes back: "paid" and "void" are final, "uncollectible"
 * can still be paid or voided, "open" can become anything else.
 */

static const unsigned char
    ngx_billing_invoice_moves[NGX_BILLING_INVOICE_NSTATES]
                             [NGX_BILLING_INVOICE_NSTATES] =
{
    /* to:            none open paid void uncoll */
    /* none */        { 0,   1,   1,   1,   1 },
    /* open */        { 0,   0,   1,   1,   1 },
    /* paid */        { 0,   0,   0,   0,   0 },
    /* void */        { 0,   0,   0,   0,   0 },
    /* uncollectible */ { 0, 0,   1,   1,   0 },
};


static const unsigned char  ngx_billing_sub_moves[NGX_BILLING_SUB_NSTATES]
    [NGX_BILLING_SUB_NSTATES] =
{
    /* to:             none pend active failed cancelled past_due */
    /* none */         { 0,   1,   0,     0,     0,        0 },
    /* pending */      { 0,   0,   1,     1,     1,        0 },
    /* active */       { 0,   0,   0,     0,     1,        1 },
    /* payment_failed: its first invoice, uncollectible, may still be paid */
                       { 0,   0,   1,     0,     1,        0 },
    /* cancelled */    { 0,   0,   0,     0,     0,        0 },

    /*
     * past_due: no first invoice's event moves it (this table is what
     * those may do); the invoice script moves active and past_due into
     * each other, by the period invoices
     */
                       { 0,   0,   0,     0,     1,        0 },
};


const char *
ngx_billing_invoice_status_name(int status)
{
    if (status < 0 || status >= NGX_BILLING_INVOICE_NSTATES) {
        return "none";
    }

    return ngx_billing_invoice_names[status];
}


int
ngx_billing_invoice_status_parse(const char *name, size_t len)
{
    int  i;

    for (i = 1; i < NGX_BILLING_INVOICE_NSTATES; i++) {
        if (strlen(ngx_billing_invoice_names[i]) == len
            && memcmp(ngx_billing_invoice_names[i], name, len) == 0)
        {
            return i;
        }
    }

    return NGX_BILLING_INVOICE_NONE;
}


int
ngx_billing_invoice_transition_ok(int from, int to)
{
    if (from < 0 || from >= NGX_BILLING_INVOICE_NSTATES
        || to < 0 || to >= NGX_BILLING_INVOICE_NSTATES)
    {
        return 0;
    }

    return ngx_billing_invoice_moves[from][to];
}


int
ngx_billing_invoice_status_of_event(const char *type, size_t len)
{
    static const struct {
        const char  *type;
        int          status;
    } events[] = {
        { "invoice.finalized", NGX_BILLING_INVOICE_OPEN },
        { "invoice.paid", NGX_BILLING_INVOICE_PAID },
        { "invoice.voided", NGX_BILLING_INVOICE_VOID },
        { "invoice.marked_uncollectible", NGX_BILLING_INVOICE_UNCOLLECTIBLE },
    };

    size_t  i;

    for (i = 0; i < sizeof(events) / sizeof(events[0]); i++) {
        if (strlen(events[i].type) == len
            && memcmp(events[i].type, type, len) == 0)
        {
            return events[i].status;
        }
    }

    return NGX_BILLING_INVOICE_NONE;
}


const char *
ngx_billing_sub_state_name(int state)
{
    if (state < 0 || state >= NGX_BILLING_SUB_NSTATES) {
        return "none";
    }

    return ngx_billing_sub_names[state];
}


int
ngx_billing_sub_state_parse(const char *name, size_t len)
{
    int  i;

    for (i = 1; i < NGX_BILLING_SUB_NSTATES; i++) {
        if (strlen(ngx_billing_sub_names[i]) == len
            && memcmp(ngx_billing_sub_names[i], name, len) == 0)
        {
            return i;
        }
    }

    return NGX_BILLING_SUB_NONE;
}


int
ngx_billing_sub_transition_ok(int from, int to)
{
    if (from < 0 || from >= NGX_BILLING_SUB_NSTATES
        || to < 0 || to >= NGX_BILLING_SUB_NSTATES)
    {
        return 0;
    }

    return ngx_billing_sub_moves[from][to];
}


int
ngx_billing_sub_state_after_first_invoice(int status)
{
    switch (status) {

    case NGX_BILLING_INVOICE_PAID:
        return NGX_BILLING_SUB_ACTIVE;

    case NGX_BILLING_INVOICE_VOID:
    case NGX_BILLING_INVOICE_UNCOLLECTIBLE:
        return NGX_BILLING_SUB_PAYMENT_FAILED;

    default:
        return NGX_BILLING_SUB_NONE;
    }
}


size_t
ngx_billing_invoice_allowed_from(int to, char *buf, size_t size)
{
    return ngx_billing_allowed_from(to, NGX_BILLING_INVOICE_NSTATES,
                                    ngx_billing_invoice_transition_ok,
                                    ngx_billing_invoice_status_name,
                                    buf, size);
}


size_t
ngx_billing_sub_allowed_from(int to, char *buf, size_t size)
{
    return ngx_billing_allowed_from(to, NGX_BILLING_SUB_NSTATES,
                                    ngx_billing_sub_transition_ok,
                                    ngx_billing_sub_state_name,
                                    buf, size);
}


static size_t
ngx_billing_allowed_from(int to, int nstates, ngx_billing_transition_pt ok,
    const char *(*name)(int), char *buf, size_t size)
{
    int          from;
    size_t       len, n;
    const char  *s;

    if (size < 2) {
        return 0;
    }

    buf[0] = ' ';
    len = 1;

    for (from = 0; from < nstates; from++) {

        if (!ok(from, to)) {
            continue;
        }

        s = name(from);
        n = strlen(s);

        if (len + n + 2 > size) {
            return 0;
        }

        memcpy(buf + len, s, n);
        len += n;
        buf[len++] = ' ';
    }

    buf[len] = '\0';

    return len;
}
