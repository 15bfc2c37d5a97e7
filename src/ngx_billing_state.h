
/*
 * Invoice and subscription states and their allowed transitions.
 *
 * Plain C: the rules live here, tested alone; Redis applies them
 * atomically through a script that is handed the "allowed from" lists
 * built below, so there is one definition of them.
 */


#ifndef _NGX_BILLING_STATE_H_INCLUDED_
#define _NGX_BILLING_STATE_H_INCLUDED_


#include <stddef.h>


typedef enum {
    NGX_BILLING_INVOICE_NONE = 0,
    NGX_BILLING_INVOICE_OPEN,
    NGX_BILLING_INVOICE_PAID,
    NGX_BILLING_INVOICE_VOID,
    NGX_BILLING_INVOICE_UNCOLLECTIBLE,
    NGX_BILLING_INVOICE_NSTATES
} ngx_billing_invoice_status_e;


typedef enum {
    NGX_BILLING_SUB_NONE = 0,
    NGX_BILLING_SUB_PENDING,
    NGX_BILLING_SUB_ACTIVE,
    NGX_BILLING_SUB_PAYMENT_FAILED,
    NGX_BILLING_SUB_CANCELLED,
    NGX_BILLING_SUB_PAST_DUE,       /* billing_overdue: a period invoice */
    NGX_BILLING_SUB_NSTATES
} ngx_billing_sub_state_e;


/* "open", "paid", "void", "uncollectible"; "none" for NONE */
const char *ngx_billing_invoice_status_name(int status);
int ngx_billing_invoice_status_parse(const char *name, size_t len);

/* 1 if an invoice may move from -> to; never for from == to */
int ngx_billing_invoice_transition_ok(int from, int to);

/* the status an invoice event reports, NONE for other event types */
int ngx_billing_invoice_status_of_event(const char *type, size_t len);

/*
 * "pending", "active", "payment_failed", "cancelled", "past_due"; "none"
 * for NONE
 */
const char *ngx_billing_sub_state_name(int state);
int ngx_billing_sub_state_parse(const char *name, size_t len);
int ngx_billing_sub_transition_ok(int from, int to);

/* what the first invoice reaching a status makes of its subscription */
int ngx_billing_sub_state_after_first_invoice(int status);

/*
 * Writes " name name ... " of every state allowed to move to "to" into
 * buf (NUL terminated); returns its length, 0 if buf is too small.
 */
size_t ngx_billing_invoice_allowed_from(int to, char *buf, size_t size);
size_t ngx_billing_sub_allowed_from(int to, char *buf, size_t size);


#endif /* _NGX_BILLING_STATE_H_INCLUDED_ */
