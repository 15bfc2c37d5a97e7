
/*
 * Unit tests of the invoice and subscription state rules.
 */


#include <stdio.h>
#include <string.h>

#include "ngx_billing_state.h"
#include "tap.h"


#define NONE    NGX_BILLING_INVOICE_NONE
#define OPEN    NGX_BILLING_INVOICE_OPEN
#define PAID    NGX_BILLING_INVOICE_PAID
#define VOID    NGX_BILLING_INVOICE_VOID
#define UNCOLL  NGX_BILLING_INVOICE_UNCOLLECTIBLE

#define S_NONE       NGX_BILLING_SUB_NONE
#define S_PENDING    NGX_BILLING_SUB_PENDING
#define S_ACTIVE     NGX_BILLING_SUB_ACTIVE
#define S_FAILED     NGX_BILLING_SUB_PAYMENT_FAILED
#define S_CANCELLED  NGX_BILLING_SUB_CANCELLED
#define S_PAST_DUE   NGX_BILLING_SUB_PAST_DUE


typedef struct {
    int          from;
    int          to;
    int          ok;
} transition_t;


/* every pair, spelled out: the contract's rules, not the code's table */

static const transition_t  invoice_moves[] = {
    { NONE, NONE, 0 },
    { NONE, OPEN, 1 },
    { NONE, PAID, 1 },
    { NONE, VOID, 1 },
    { NONE, UNCOLL, 1 },

    { OPEN, NONE, 0 },
    { OPEN, OPEN, 0 },
    { OPEN, PAID, 1 },
    { OPEN, VOID, 1 },
    { OPEN, UNCOLL, 1 },

    /* paid is final */
    { PAID, NONE, 0 },
    { PAID, OPEN, 0 },
    { PAID, PAID, 0 },
    { PAID, VOID, 0 },
    { PAID, UNCOLL, 0 },

    /* void is final */
    { VOID, NONE, 0 },
    { VOID, OPEN, 0 },
    { VOID, PAID, 0 },
    { VOID, VOID, 0 },
    { VOID, UNCOLL, 0 },

    /* uncollectible can still be paid or voided, never reopened */
    { UNCOLL, NONE, 0 },
    { UNCOLL, OPEN, 0 },
    { UNCOLL, PAID, 1 },
    { UNCOLL, VOID, 1 },
    { UNCOLL, UNCOLL, 0 },
};


static const transition_t  sub_moves[] = {
    { S_NONE, S_NONE, 0 },
    { S_NONE, S_PENDING, 1 },
    { S_NONE, S_ACTIVE, 0 },
    { S_NONE, S_FAILED, 0 },
    { S_NONE, S_CANCELLED, 0 },
    { S_NONE, S_PAST_DUE, 0 },

    { S_PENDING, S_NONE, 0 },
    { S_PENDING, S_PENDING, 0 },
    { S_PENDING, S_ACTIVE, 1 },
    { S_PENDING, S_FAILED, 1 },
    { S_PENDING, S_CANCELLED, 1 },
    { S_PENDING, S_PAST_DUE, 0 },

    { S_ACTIVE, S_NONE, 0 },
    { S_ACTIVE, S_PENDING, 0 },
    { S_ACTIVE, S_ACTIVE, 0 },
    { S_ACTIVE, S_FAILED, 0 },
    { S_ACTIVE, S_CANCELLED, 1 },
    { S_ACTIVE, S_PAST_DUE, 1 },

    /* the first invoice, uncollectible, may still be paid */
    { S_FAILED, S_NONE, 0 },
    { S_FAILED, S_PENDING, 0 },
    { S_FAILED, S_ACTIVE, 1 },
    { S_FAILED, S_FAILED, 0 },
    { S_FAILED, S_CANCELLED, 1 },
    { S_FAILED, S_PAST_DUE, 0 },

    /* cancelled is final */
    { S_CANCELLED, S_NONE, 0 },
    { S_CANCELLED, S_PENDING, 0 },
    { S_CANCELLED, S_ACTIVE, 0 },
    { S_CANCELLED, S_FAILED, 0 },
    { S_CANCELLED, S_CANCELLED, 0 },
    { S_CANCELLED, S_PAST_DUE, 0 },

    /* past_due: active again only by paying its overdue invoice */
    { S_PAST_DUE, S_NONE, 0 },
    { S_PAST_DUE, S_PENDING, 0 },
    { S_PAST_DUE, S_ACTIVE, 0 },
    { S_PAST_DUE, S_FAILED, 0 },
    { S_PAST_DUE, S_CANCELLED, 1 },
    { S_PAST_DUE, S_PAST_DUE, 0 },
};


static void
test_invoice_transitions(void)
{
    int     from, to, once;
    int     seen[NGX_BILLING_INVOICE_NSTATES][NGX_BILLING_INVOICE_NSTATES];
    size_t  i;

    is_int(sizeof(invoice_moves) / sizeof(invoice_moves[0]),
           NGX_BILLING_INVOICE_NSTATES * NGX_BILLING_INVOICE_NSTATES,
           "invoice: the table has a row per pair");

    memset(seen, 0, sizeof(seen));

    for (i = 0; i < sizeof(invoice_moves) / sizeof(invoice_moves[0]); i++) {
        from = invoice_moves[i].from;
        to = invoice_moves[i].to;
        seen[from][to]++;

        is_int(ngx_billing_invoice_transition_ok(from, to),
               invoice_moves[i].ok, "invoice %s -> %s: %s",
               ngx_billing_invoice_status_name(from),
               ngx_billing_invoice_status_name(to),
               invoice_moves[i].ok ? "allowed" : "refused");
    }

    once = 1;

    for (from = 0; from < NGX_BILLING_INVOICE_NSTATES; from++) {
        for (to = 0; to < NGX_BILLING_INVOICE_NSTATES; to++) {
            if (seen[from][to] != 1) {
                diag("pair %d -> %d listed %d times", from, to,
                     seen[from][to]);
                once = 0;
            }
        }
    }

    ok(once, "invoice: the table lists every pair once");

    for (from = -1; from <= NGX_BILLING_INVOICE_NSTATES; from++) {
        is_int(ngx_billing_invoice_transition_ok(from, -1), 0,
               "invoice %d -> -1: out of range", from);
        is_int(ngx_billing_invoice_transition_ok(from,
                                                 NGX_BILLING_INVOICE_NSTATES),
               0, "invoice %d -> NSTATES: out of range", from);
        is_int(ngx_billing_invoice_transition_ok(-1, from), 0,
               "invoice -1 -> %d: out of range", from);
        is_int(ngx_billing_invoice_transition_ok(NGX_BILLING_INVOICE_NSTATES,
                                                 from),
               0, "invoice NSTATES -> %d: out of range", from);
    }

    is_int(ngx_billing_invoice_transition_ok(0x7fffffff, PAID), 0,
           "invoice INT_MAX -> paid: out of range");
    is_int(ngx_billing_invoice_transition_ok(OPEN, -0x7fffffff - 1), 0,
           "invoice open -> INT_MIN: out of range");
}


static void
test_sub_transitions(void)
{
    int     from, to;
    size_t  i;

    is_int(sizeof(sub_moves) / sizeof(sub_moves[0]),
           NGX_BILLING_SUB_NSTATES * NGX_BILLING_SUB_NSTATES,
           "subscription: the table covers every pair");

    for (i = 0; i < sizeof(sub_moves) / sizeof(sub_moves[0]); i++) {
        from = sub_moves[i].from;
        to = sub_moves[i].to;

        is_int(ngx_billing_sub_transition_ok(from, to), sub_moves[i].ok,
               "subscription %s -> %s: %s",
               ngx_billing_sub_state_name(from),
               ngx_billing_sub_state_name(to),
               sub_moves[i].ok ? "allowed" : "refused");
    }

    for (from = -1; from <= NGX_BILLING_SUB_NSTATES; from++) {
        is_int(ngx_billing_sub_transition_ok(from, -1), 0,
               "subscription %d -> -1: out of range", from);
        is_int(ngx_billing_sub_transition_ok(from, NGX_BILLING_SUB_NSTATES),
               0, "subscription %d -> NSTATES: out of range", from);
        is_int(ngx_billing_sub_transition_ok(-1, from), 0,
               "subscription -1 -> %d: out of range", from);
        is_int(ngx_billing_sub_transition_ok(NGX_BILLING_SUB_NSTATES, from),
               0, "subscription NSTATES -> %d: out of range", from);
    }
}


static void
test_names(void)
{
    int     i;
    size_t  k;

    static const char  *invoice[] = {
        "none", "open", "paid", "void", "uncollectible"
    };

    static const char  *sub[] = {
        "none", "pending", "active", "payment_failed", "cancelled",
        "past_due"
    };

    static const char  *not_invoice[] = {
        "", "Paid", "PAID", "pai", "paidx", "paid ", " paid", "opened",
        "draft", "uncollectable", "voided",
    };

    static const char  *not_sub[] = {
        "", "Active", "activ", "actives", "canceled", "payment-failed",
        "payment_failed ", "past-due", "trialing",
    };

    for (i = 0; i < NGX_BILLING_INVOICE_NSTATES; i++) {
        is_str(ngx_billing_invoice_status_name(i), invoice[i],
               "invoice name of %d", i);
        is_int(ngx_billing_invoice_status_parse(invoice[i],
                                                strlen(invoice[i])),
               i, "invoice parse '%s'", invoice[i]);
        is_int(ngx_billing_invoice_status_parse(
                   ngx_billing_invoice_status_name(i),
                   strlen(ngx_billing_invoice_status_name(i))),
               i, "invoice round trip %d", i);
    }

    is_str(ngx_billing_invoice_status_name(-1), "none", "invoice name of -1");
    is_str(ngx_billing_invoice_status_name(NGX_BILLING_INVOICE_NSTATES),
           "none", "invoice name of NSTATES");
    is_str(ngx_billing_invoice_status_name(1000), "none",
           "invoice name of 1000");

    for (k = 0; k < sizeof(not_invoice) / sizeof(not_invoice[0]); k++) {
        is_int(ngx_billing_invoice_status_parse(not_invoice[k],
                                                strlen(not_invoice[k])),
               NONE, "invoice parse '%s': none", not_invoice[k]);
    }

    /* the length decides, not a NUL */

    is_int(ngx_billing_invoice_status_parse("paid", 3), NONE,
           "invoice parse 'pai' of 'paid'");
    is_int(ngx_billing_invoice_status_parse("paidx", 4), PAID,
           "invoice parse 'paid' of 'paidx'");
    is_int(ngx_billing_invoice_status_parse("paid\0", 5), NONE,
           "invoice parse 'paid\\0'");
    is_int(ngx_billing_invoice_status_parse("void\n", 5), NONE,
           "invoice parse 'void\\n'");
    is_int(ngx_billing_invoice_status_parse("", 0), NONE,
           "invoice parse of nothing");

    for (i = 0; i < NGX_BILLING_SUB_NSTATES; i++) {
        is_str(ngx_billing_sub_state_name(i), sub[i],
               "subscription name of %d", i);
        is_int(ngx_billing_sub_state_parse(sub[i], strlen(sub[i])), i,
               "subscription parse '%s'", sub[i]);
        is_int(ngx_billing_sub_state_parse(
                   ngx_billing_sub_state_name(i),
                   strlen(ngx_billing_sub_state_name(i))),
               i, "subscription round trip %d", i);
    }

    is_str(ngx_billing_sub_state_name(-1), "none", "subscription name of -1");
    is_str(ngx_billing_sub_state_name(NGX_BILLING_SUB_NSTATES), "none",
           "subscription name of NSTATES");

    for (k = 0; k < sizeof(not_sub) / sizeof(not_sub[0]); k++) {
        is_int(ngx_billing_sub_state_parse(not_sub[k], strlen(not_sub[k])),
               S_NONE, "subscription parse '%s': none", not_sub[k]);
    }

    is_int(ngx_billing_sub_state_parse("active", 6), S_ACTIVE,
           "subscription parse 'active' by length");
    is_int(ngx_billing_sub_state_parse("active\0", 7), S_NONE,
           "subscription parse 'active\\0'");
}


static void
test_status_of_event(void)
{
    size_t  i;

    static const struct {
        const char  *type;
        int          status;
    } events[] = {
        { "invoice.finalized", OPEN },
        { "invoice.paid", PAID },
        { "invoice.voided", VOID },
        { "invoice.marked_uncollectible", UNCOLL },
        { "invoice.created", NONE },
        { "invoice.updated", NONE },
        { "invoice.deleted", NONE },
        { "invoice.sent", NONE },
        { "invoice.payment_succeeded", NONE },
        { "invoice.payment_failed", NONE },
        { "invoice.finalization_failed", NONE },
        { "invoice.overdue", NONE },
        { "invoice.will_be_due", NONE },
        { "invoice.void", NONE },
        { "invoice.uncollectible", NONE },
        { "invoice.pai", NONE },
        { "invoice.paidx", NONE },
        { "invoice.paid ", NONE },
        { " invoice.paid", NONE },
        { "INVOICE.PAID", NONE },
        { "invoice_paid", NONE },
        { "paid", NONE },
        { "customer.subscription.deleted", NONE },
        { "charge.succeeded", NONE },
        { "", NONE },
    };

    for (i = 0; i < sizeof(events) / sizeof(events[0]); i++) {
        is_int(ngx_billing_invoice_status_of_event(events[i].type,
                                                   strlen(events[i].type)),
               events[i].status, "event '%s': %s", events[i].type,
               ngx_billing_invoice_status_name(events[i].status));
    }

    is_int(ngx_billing_invoice_status_of_event("invoice.paid\0", 13), NONE,
           "event 'invoice.paid\\0': none");
    is_int(ngx_billing_invoice_status_of_event("invoice.paidx", 12), PAID,
           "event of length 12 of 'invoice.paidx': paid");
    is_int(ngx_billing_invoice_status_of_event("invoice.voided", 13), NONE,
           "event of length 13 of 'invoice.voided': none");
}


static void
test_after_first_invoice(void)
{
    is_int(ngx_billing_sub_state_after_first_invoice(PAID), S_ACTIVE,
           "first invoice paid: active");
    is_int(ngx_billing_sub_state_after_first_invoice(VOID), S_FAILED,
           "first invoice void: payment_failed");
    is_int(ngx_billing_sub_state_after_first_invoice(UNCOLL), S_FAILED,
           "first invoice uncollectible: payment_failed");
    is_int(ngx_billing_sub_state_after_first_invoice(OPEN), S_NONE,
           "first invoice open: no change");
    is_int(ngx_billing_sub_state_after_first_invoice(NONE), S_NONE,
           "first invoice none: no change");
    is_int(ngx_billing_sub_state_after_first_invoice(-1), S_NONE,
           "first invoice -1: no change");
    is_int(ngx_billing_sub_state_after_first_invoice(99), S_NONE,
           "first invoice 99: no change");

    /* what the first invoice makes is reachable from pending */

    ok(ngx_billing_sub_transition_ok(S_PENDING,
           ngx_billing_sub_state_after_first_invoice(PAID)),
       "pending -> state after a paid first invoice");
    ok(ngx_billing_sub_transition_ok(S_PENDING,
           ngx_billing_sub_state_after_first_invoice(VOID)),
       "pending -> state after a void first invoice");
    ok(ngx_billing_sub_transition_ok(S_PENDING,
           ngx_billing_sub_state_after_first_invoice(UNCOLL)),
       "pending -> state after an uncollectible first invoice");

    /* uncollectible then paid: payment_failed -> active */

    ok(ngx_billing_invoice_transition_ok(UNCOLL, PAID)
       && ngx_billing_sub_transition_ok(
              ngx_billing_sub_state_after_first_invoice(UNCOLL),
              ngx_billing_sub_state_after_first_invoice(PAID)),
       "first invoice uncollectible then paid: the subscription follows");
}


static void
test_allowed_from(void)
{
    int     to;
    char    buf[128];
    size_t  n;

    static const char  *invoice[] = {
        " ",
        " none ",
        " none open uncollectible ",
        " none open uncollectible ",
        " none open ",
    };

    static const char  *sub[] = {
        " ",
        " none ",
        " pending payment_failed ",
        " pending ",
        " pending active payment_failed past_due ",
        " active ",
    };

    for (to = 0; to < NGX_BILLING_INVOICE_NSTATES; to++) {
        memset(buf, 'X', sizeof(buf));
        n = ngx_billing_invoice_allowed_from(to, buf, sizeof(buf));

        is_str(buf, invoice[to], "invoice allowed to %s",
               ngx_billing_invoice_status_name(to));
        is_int(n, strlen(invoice[to]), "invoice allowed to %s: length",
               ngx_billing_invoice_status_name(to));
    }

    for (to = 0; to < NGX_BILLING_SUB_NSTATES; to++) {
        memset(buf, 'X', sizeof(buf));
        n = ngx_billing_sub_allowed_from(to, buf, sizeof(buf));

        is_str(buf, sub[to], "subscription allowed to %s",
               ngx_billing_sub_state_name(to));
        is_int(n, strlen(sub[to]), "subscription allowed to %s: length",
               ngx_billing_sub_state_name(to));
    }

    /* out of range: nobody */

    n = ngx_billing_invoice_allowed_from(-1, buf, sizeof(buf));
    ok(n == 1 && strcmp(buf, " ") == 0, "invoice allowed to -1: nobody");
    n = ngx_billing_invoice_allowed_from(NGX_BILLING_INVOICE_NSTATES, buf,
                                         sizeof(buf));
    ok(n == 1 && strcmp(buf, " ") == 0, "invoice allowed to NSTATES: nobody");
    n = ngx_billing_sub_allowed_from(42, buf, sizeof(buf));
    ok(n == 1 && strcmp(buf, " ") == 0, "subscription allowed to 42: nobody");

    /* the buffer: exactly enough for the string and its NUL, or 0 */

    memset(buf, 'X', sizeof(buf));
    is_int(ngx_billing_invoice_allowed_from(PAID, buf, 26), 25,
           "invoice allowed to paid, buffer of 26: fits");
    is_str(buf, " none open uncollectible ",
           "invoice allowed to paid, buffer of 26: string");

    memset(buf, 'X', sizeof(buf));
    is_int(ngx_billing_invoice_allowed_from(PAID, buf, 25), 0,
           "invoice allowed to paid, buffer of 25: 0");
    ok(buf[25] == 'X', "buffer of 25: nothing written past it");

    is_int(ngx_billing_invoice_allowed_from(PAID, buf, 12), 0,
           "invoice allowed to paid, buffer of 12: 0");
    is_int(ngx_billing_invoice_allowed_from(PAID, buf, 2), 0,
           "invoice allowed to paid, buffer of 2: 0");
    is_int(ngx_billing_invoice_allowed_from(PAID, buf, 1), 0,
           "invoice allowed to paid, buffer of 1: 0");
    is_int(ngx_billing_invoice_allowed_from(PAID, buf, 0), 0,
           "invoice allowed to paid, buffer of 0: 0");
    is_int(ngx_billing_invoice_allowed_from(PAID, NULL, 0), 0,
           "invoice allowed to paid, no buffer: 0");

    is_int(ngx_billing_invoice_allowed_from(OPEN, buf, 7), 6,
           "invoice allowed to open, buffer of 7: fits");
    is_int(ngx_billing_invoice_allowed_from(OPEN, buf, 6), 0,
           "invoice allowed to open, buffer of 6: 0");

    is_int(ngx_billing_invoice_allowed_from(NONE, buf, 2), 1,
           "invoice allowed to none, buffer of 2: fits");
    is_str(buf, " ", "invoice allowed to none, buffer of 2: string");
    is_int(ngx_billing_invoice_allowed_from(NONE, buf, 1), 0,
           "invoice allowed to none, buffer of 1: 0");

    memset(buf, 'X', sizeof(buf));
    is_int(ngx_billing_sub_allowed_from(S_CANCELLED, buf, 41), 40,
           "subscription allowed to cancelled, buffer of 41: fits");
    memset(buf, 'X', sizeof(buf));
    is_int(ngx_billing_sub_allowed_from(S_CANCELLED, buf, 40), 0,
           "subscription allowed to cancelled, buffer of 40: 0");
    ok(buf[40] == 'X', "buffer of 40: nothing written past it");
    is_int(ngx_billing_sub_allowed_from(S_CANCELLED, buf, 0), 0,
           "subscription allowed to cancelled, buffer of 0: 0");

    /* each size from 0 to 50: 0 below the need, the length from it on */

    {
        int  all;

        all = 1;

        for (n = 0; n <= 50; n++) {
            char    small[50];
            size_t  got;

            memset(small, 'X', sizeof(small));
            got = ngx_billing_sub_allowed_from(S_CANCELLED, small,
                                               n < sizeof(small)
                                               ? n : sizeof(small));

            if ((n < 41 && got != 0) || (n >= 41 && got != 40)) {
                diag("size %zu gave %zu", n, got);
                all = 0;
            }

            if (n < sizeof(small) && small[n] != 'X') {
                diag("size %zu: written past the buffer", n);
                all = 0;
            }
        }

        ok(all, "allowed_from: every buffer size");
    }
}


static void
test_consistency(void)
{
    int     from, to, all;
    char    buf[128], word[64];

    /* allowed_from lists exactly what transition_ok allows */

    all = 1;

    for (to = 0; to < NGX_BILLING_INVOICE_NSTATES; to++) {
        ngx_billing_invoice_allowed_from(to, buf, sizeof(buf));

        for (from = 0; from < NGX_BILLING_INVOICE_NSTATES; from++) {
            snprintf(word, sizeof(word), " %s ",
                     ngx_billing_invoice_status_name(from));

            if ((strstr(buf, word) != NULL)
                != ngx_billing_invoice_transition_ok(from, to))
            {
                all = 0;
            }
        }
    }

    ok(all, "invoice allowed_from agrees with transition_ok");

    all = 1;

    for (to = 0; to < NGX_BILLING_SUB_NSTATES; to++) {
        ngx_billing_sub_allowed_from(to, buf, sizeof(buf));

        for (from = 0; from < NGX_BILLING_SUB_NSTATES; from++) {
            snprintf(word, sizeof(word), " %s ",
                     ngx_billing_sub_state_name(from));

            if ((strstr(buf, word) != NULL)
                != ngx_billing_sub_transition_ok(from, to))
            {
                all = 0;
            }
        }
    }

    ok(all, "subscription allowed_from agrees with transition_ok");

    /* no state moves to itself: a repeated event changes nothing */

    all = 1;

    for (from = 0; from < NGX_BILLING_INVOICE_NSTATES; from++) {
        all &= !ngx_billing_invoice_transition_ok(from, from);
    }

    ok(all, "invoice: no state moves to itself");

    all = 1;

    for (from = 0; from < NGX_BILLING_SUB_NSTATES; from++) {
        all &= !ngx_billing_sub_transition_ok(from, from);
    }

    ok(all, "subscription: no state moves to itself");

    /* no cycle: an older event never undoes a newer state */

    all = 1;

    for (from = 0; from < NGX_BILLING_INVOICE_NSTATES; from++) {
        for (to = 0; to < NGX_BILLING_INVOICE_NSTATES; to++) {
            if (ngx_billing_invoice_transition_ok(from, to)
                && ngx_billing_invoice_transition_ok(to, from))
            {
                all = 0;
            }
        }
    }

    ok(all, "invoice: no two states move to each other");

    all = 1;

    for (from = 0; from < NGX_BILLING_SUB_NSTATES; from++) {
        for (to = 0; to < NGX_BILLING_SUB_NSTATES; to++) {
            if (ngx_billing_sub_transition_ok(from, to)
                && ngx_billing_sub_transition_ok(to, from))
            {
                all = 0;
            }
        }
    }

    ok(all, "subscription: no two states move to each other");

    /* nothing goes back to none */

    all = 1;

    for (from = 0; from < NGX_BILLING_INVOICE_NSTATES; from++) {
        all &= !ngx_billing_invoice_transition_ok(from, NONE);
    }

    for (from = 0; from < NGX_BILLING_SUB_NSTATES; from++) {
        all &= !ngx_billing_sub_transition_ok(from, S_NONE);
    }

    ok(all, "nothing moves back to none");
}


int
main(void)
{
    test_invoice_transitions();
    test_sub_transitions();
    test_names();
    test_status_of_event();
    test_after_first_invoice();
    test_allowed_from();
    test_consistency();

    return done_testing();
}
