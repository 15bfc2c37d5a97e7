
/*
 * The billing engine: one invoice of a subscription, issued at Stripe.
 *
 * A job owns its pool and its log and needs no client request: the
 * subscription API starts one for the first invoice and waits for its
 * end, or not (a client that goes away does not stop it); timers start
 * them for period-end and final invoices.  Its Stripe calls go through
 * billing_stripe_location of the server it was started for, each as a
 * subrequest of a request of its own (ngx_http_billing_stripe.c), so
 * that the operator's proxy_pass and TLS settings govern them all.
 *
 * The steps: the consumer org's customer (when it has none), the
 * invoice, its items one by one, its finalization.  Each object is
 * recorded in Redis as soon as Stripe made it, and a job starts by
 * reading how far an earlier one got: a sequence cut short (a worker
 * gone, Stripe or Redis down) is resumed by the next job for the same
 * invoice, skipping what is done.  The idempotency keys, derived from
 * the subscription and the step, make a step retried after a lost
 * answer return what Stripe created the first time; two jobs racing
 * for one invoice end with the one that Redis recorded first.
 *
 * A job ends from the event loop (a posted event): its handler is
 * called, then its pool is destroyed, cancelling what still runs.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_billing_invoice.h"
#include "ngx_http_billing_invoice_int.h"
#include "ngx_http_billing_store.h"
#include "ngx_http_billing_stripe.h"
#include "ngx_billing_event.h"
#include "ngx_billing_form.h"
#include "ngx_billing_state.h"


static ngx_int_t ngx_http_billing_invoice_copy(
    ngx_http_billing_invoice_job_t *job,
    ngx_http_billing_invoice_spec_t *spec);
static void ngx_http_billing_invoice_resumed(void *data, redisReply *reply);
static void ngx_http_billing_invoice_done(ngx_event_t *ev);
static u_char *ngx_http_billing_invoice_log_handler(ngx_log_t *log,
    u_char *buf, size_t len);


ngx_http_billing_invoice_job_t *
ngx_http_billing_invoice_issue(ngx_http_billing_invoice_spec_t *spec,
    ngx_http_billing_owner_t *from, ngx_log_t *log)
{
    ngx_pool_t                      *pool;
    ngx_http_billing_invoice_job_t  *job;

    if (spec->nitems == 0 || spec->nitems > NGX_HTTP_BILLING_STORE_ITEMS) {
        return NULL;
    }

    pool = ngx_create_pool(4096, log);
    if (pool == NULL) {
        return NULL;
    }

    job = ngx_pcalloc(pool, sizeof(ngx_http_billing_invoice_job_t));
    if (job == NULL) {
        ngx_destroy_pool(pool);
        return NULL;
    }

    job->pool = pool;

    job->log = *log;
    job->log.handler = ngx_http_billing_invoice_log_handler;
    job->log.data = job;
    job->log.action = NULL;
    pool->log = &job->log;

    if (ngx_http_billing_invoice_copy(job, spec) != NGX_OK) {
        ngx_destroy_pool(pool);
        return NULL;
    }

    job->owner.pool = pool;
    job->owner.log = &job->log;
    job->owner.bmcf = from->bmcf;
    job->owner.market = from->market;
    job->owner.conf_ctx = from->conf_ctx;

    job->call.owner = job->owner;
    job->call.data = job;

    job->done.handler = ngx_http_billing_invoice_done;
    job->done.data = job;
    job->done.log = &job->log;

    ngx_log_error(NGX_LOG_INFO, &job->log, 0, "billing invoice: started");

    ngx_http_billing_invoice_resume(job);

    return job;
}


void
ngx_http_billing_invoice_detach(ngx_http_billing_invoice_job_t *job)
{
    job->detached = 1;
}


static ngx_int_t
ngx_http_billing_invoice_copy(ngx_http_billing_invoice_job_t *job,
    ngx_http_billing_invoice_spec_t *spec)
{
    ngx_uint_t                        i;
    ngx_pool_t                       *pool;
    ngx_http_billing_invoice_item_t  *item, *from;
    ngx_http_billing_invoice_meta_t  *meta;

    pool = job->pool;

    job->spec = *spec;

    if (ngx_http_billing_invoice_dup(pool, &job->spec.subscription,
                                     &spec->subscription) != NGX_OK
        || ngx_http_billing_invoice_dup(pool, &job->spec.kind, &spec->kind)
           != NGX_OK
        || ngx_http_billing_invoice_dup(pool, &job->spec.field,
                                        &spec->field) != NGX_OK
        || ngx_http_billing_invoice_dup(pool, &job->spec.key, &spec->key)
           != NGX_OK
        || ngx_http_billing_invoice_dup(pool, &job->spec.consumer_org,
                                        &spec->consumer_org) != NGX_OK
        || ngx_http_billing_invoice_dup(pool, &job->spec.email,
                                        &spec->email) != NGX_OK
        || ngx_http_billing_invoice_dup(pool, &job->spec.name, &spec->name)
           != NGX_OK
        || ngx_http_billing_invoice_dup(pool, &job->spec.currency,
                                        &spec->currency) != NGX_OK)
    {
        return NGX_ERROR;
    }

    item = ngx_palloc(pool, spec->nitems
                            * sizeof(ngx_http_billing_invoice_item_t));
    if (item == NULL) {
        return NGX_ERROR;
    }

    for (i = 0; i < spec->nitems; i++) {
        from = &spec->items[i];
        item[i] = *from;

        if (ngx_http_billing_invoice_dup(pool, &item[i].name, &from->name)
            != NGX_OK
            || ngx_http_billing_invoice_dup(pool, &item[i].description,
                                            &from->description)
               != NGX_OK
            || ngx_http_billing_invoice_dup(pool, &item[i].unit_amount_decimal,
                                            &from->unit_amount_decimal)
               != NGX_OK)
        {
            return NGX_ERROR;
        }

        job->names[i] = item[i].name;
    }

    job->spec.items = item;

    if (spec->nmetadata == 0) {
        job->spec.metadata = NULL;
        return NGX_OK;
    }

    meta = ngx_palloc(pool, spec->nmetadata
                            * sizeof(ngx_http_billing_invoice_meta_t));
    if (meta == NULL) {
        return NGX_ERROR;
    }

    for (i = 0; i < spec->nmetadata; i++) {
        if (ngx_http_billing_invoice_dup(pool, &meta[i].key,
                                         &spec->metadata[i].key) != NGX_OK
            || ngx_http_billing_invoice_dup(pool, &meta[i].value,
                                            &spec->metadata[i].value)
               != NGX_OK)
        {
            return NGX_ERROR;
        }
    }

    job->spec.metadata = meta;

    return NGX_OK;
}


/* a copy ending with '\0', as form keys and log lines want */

ngx_int_t
ngx_http_billing_invoice_dup(ngx_pool_t *pool, ngx_str_t *dst, ngx_str_t *src)
{
    u_char  *p;

    p = ngx_pnalloc(pool, src->len + 1);
    if (p == NULL) {
        return NGX_ERROR;
    }

    if (src->len) {
        ngx_memcpy(p, src->data, src->len);
    }

    p[src->len] = '\0';

    dst->data = p;
    dst->len = src->len;

    return NGX_OK;
}


void
ngx_http_billing_invoice_resume(ngx_http_billing_invoice_job_t *job)
{
    if (ngx_http_billing_store_resume(&job->owner, &job->spec.subscription,
                                      &job->spec.consumer_org,
                                      &job->spec.field, job->names,
                                      job->spec.nitems,
                                      ngx_http_billing_invoice_resumed, job)
        != NGX_OK)
    {
        ngx_http_billing_invoice_unavailable(job);
    }
}


static void
ngx_http_billing_invoice_resumed(void *data, redisReply *reply)
{
    ngx_http_billing_invoice_job_t  *job = data;

    ngx_uint_t  i;

    if (reply == NULL || reply->type != REDIS_REPLY_ARRAY
        || reply->elements != 3 + job->spec.nitems)
    {
        ngx_http_billing_invoice_unavailable(job);
        return;
    }

    if (ngx_http_billing_store_copy(job->pool, &job->customer,
                                        reply->element[0]) != NGX_OK
        || ngx_http_billing_store_copy(job->pool, &job->invoice,
                                           reply->element[1]) != NGX_OK
        || ngx_http_billing_store_copy(job->pool, &job->status,
                                           reply->element[2]) != NGX_OK)
    {
        ngx_http_billing_invoice_unavailable(job);
        return;
    }

    for (i = 0; i < job->spec.nitems; i++) {
        if (ngx_http_billing_store_copy(job->pool, &job->ids[i],
                                            reply->element[3 + i])
            != NGX_OK)
        {
            ngx_http_billing_invoice_unavailable(job);
            return;
        }
    }

    ngx_log_debug3(NGX_LOG_DEBUG_HTTP, &job->log, 0,
                   "billing invoice: customer \"%V\", invoice \"%V\", "
                   "status \"%V\"", &job->customer, &job->invoice,
                   &job->status);

    ngx_http_billing_invoice_next(job);
}


void
ngx_http_billing_invoice_next(ngx_http_billing_invoice_job_t *job)
{
    u_char                           *buf;
    ngx_int_t                         rc;
    ngx_str_t                         path, *name, argv[3];
    ngx_uint_t                        i;
    ngx_billing_form_t                form;
    ngx_http_billing_invoice_item_t  *item;

    /* a status is set once Stripe finalized the invoice */

    if (job->status.len) {
        ngx_http_billing_invoice_finish(job, NGX_OK);
        return;
    }

    buf = ngx_pnalloc(job->pool, NGX_HTTP_BILLING_INVOICE_FORM);
    if (buf == NULL) {
        ngx_http_billing_invoice_finish(job, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    ngx_billing_form_init(&form, (char *) buf, NGX_HTTP_BILLING_INVOICE_FORM);

    if (job->customer.len == 0) {
        ngx_billing_form_add(&form, "email", (char *) job->spec.email.data,
                             job->spec.email.len);

        if (job->spec.name.len) {
            ngx_billing_form_add(&form, "name", (char *) job->spec.name.data,
                                 job->spec.name.len);
        }

        ngx_billing_form_add(&form, "metadata[consumer_org]",
                             (char *) job->spec.consumer_org.data,
                             job->spec.consumer_org.len);

        ngx_str_set(&path, "/v1/customers");
        job->call.handler = ngx_http_billing_invoice_customer;

        rc = ngx_http_billing_invoice_stripe(job, &form, &path, "customer",
                                             NULL);

    } else if (job->invoice.len == 0) {
        rc = ngx_http_billing_invoice_form(job, &form);

        ngx_str_set(&path, "/v1/invoices");
        job->call.handler = ngx_http_billing_invoice_created_invoice;

        if (rc == NGX_OK) {
            rc = ngx_http_billing_invoice_stripe(job, &form, &path, "invoice",
                                                 NULL);
        }

    } else {
        for (i = 0; i < job->spec.nitems; i++) {
            if (job->ids[i].len == 0) {
                break;
            }
        }

        if (i < job->spec.nitems) {
            item = &job->spec.items[i];
            name = &item->name;
            job->item = i;

            ngx_billing_form_add(&form, "customer",
                                 (char *) job->customer.data,
                                 job->customer.len);
            ngx_billing_form_add(&form, "invoice", (char *) job->invoice.data,
                                 job->invoice.len);
            ngx_billing_form_add(&form, "currency",
                                 (char *) job->spec.currency.data,
                                 job->spec.currency.len);

            if (item->amount >= 0) {
                ngx_billing_form_add_int(&form, "amount", item->amount);

            } else {
                ngx_billing_form_add_int(&form, "quantity", item->quantity);
                ngx_billing_form_add(&form, "unit_amount_decimal",
                                (char *) item->unit_amount_decimal.data,
                                item->unit_amount_decimal.len);
            }

            ngx_billing_form_add(&form, "description",
                                 (char *) item->description.data,
                                 item->description.len);

            if (item->period_end) {
                ngx_billing_form_add_int(&form, "period[start]",
                                         item->period_start);
                ngx_billing_form_add_int(&form, "period[end]",
                                         item->period_end);
            }

            ngx_str_set(&path, "/v1/invoiceitems");
            job->call.handler = ngx_http_billing_invoice_item;

            rc = ngx_http_billing_invoice_stripe(job, &form, &path, NULL,
                                                 name);

        } else if (!job->checked && job->spec.kind.len == 7
                   && ngx_strncmp(job->spec.kind.data, "initial", 7) == 0)
        {
            /*
             * A first invoice is finalized (and so sent to be paid) only
             * if its subscription was not cancelled while it was made.
             */

            ngx_str_set(&argv[0], "HGET");
            ngx_str_set(&argv[2], "state");

            rc = ngx_http_billing_store_key(&job->owner, &argv[1], "sub:",
                                            &job->spec.subscription, NULL);
            if (rc == NGX_OK) {
                rc = ngx_http_billing_store_run(&job->owner, NULL, 0, 3, argv,
                                            ngx_http_billing_invoice_checked,
                                            job);
            }

            if (rc != NGX_OK) {
                ngx_http_billing_invoice_unavailable(job);
                return;
            }

        } else {
            path.len = sizeof("/v1/invoices//finalize") - 1
                       + job->invoice.len;
            path.data = ngx_pnalloc(job->pool, path.len);

            if (path.data == NULL) {
                rc = NGX_ERROR;

            } else {
                ngx_sprintf(path.data, "/v1/invoices/%V/finalize",
                            &job->invoice);
                job->call.handler = ngx_http_billing_invoice_finalized;

                rc = ngx_http_billing_invoice_stripe(job, &form, &path,
                                                     "finalize", NULL);
            }
        }
    }

    if (rc != NGX_OK) {
        ngx_http_billing_invoice_finish(job, NGX_HTTP_INTERNAL_SERVER_ERROR);
    }
}


void
ngx_http_billing_invoice_stripe_failed(ngx_http_billing_invoice_job_t *job)
{
    ngx_str_t  message;

    if (job->call.internal) {
        ngx_http_billing_invoice_finish(job, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    /* Stripe's own message, for the marketplace backend to act on */

    message = job->call.error;

    if (message.len == 0) {
        ngx_str_set(&message, "unexpected answer from Stripe");
    }

    if (ngx_http_billing_invoice_dup(job->pool, &job->result.message,
                                     &message)
        != NGX_OK)
    {
        ngx_str_set(&job->result.message, "unexpected answer from Stripe");
    }

    job->result.stripe_status = job->call.status;

    ngx_http_billing_invoice_finish(job, NGX_HTTP_BAD_GATEWAY);
}


void
ngx_http_billing_invoice_unavailable(ngx_http_billing_invoice_job_t *job)
{
    ngx_log_error(NGX_LOG_ERR, &job->log, 0,
                  "billing invoice: Redis is not available, stopped");

    ngx_http_billing_invoice_finish(job, NGX_HTTP_SERVICE_UNAVAILABLE);
}


void
ngx_http_billing_invoice_finish(ngx_http_billing_invoice_job_t *job,
    ngx_int_t rc)
{
    if (job->done.posted) {
        return;
    }

    job->result.rc = rc;
    job->result.invoice = job->invoice;

    if (rc == NGX_OK) {
        ngx_log_error(NGX_LOG_INFO, &job->log, 0,
                      "billing invoice: %V is finalized", &job->invoice);

    } else if (rc == NGX_HTTP_BAD_GATEWAY) {
        ngx_log_error(NGX_LOG_ERR, &job->log, 0,
                      "billing invoice: Stripe refused or failed, stopped");
    }

    ngx_post_event(&job->done, &ngx_posted_events);
}


static void
ngx_http_billing_invoice_done(ngx_event_t *ev)
{
    ngx_http_billing_invoice_job_t  *job = ev->data;

    if (!job->detached) {
        job->spec.handler(job->spec.data, &job->result);
    }

    /* what still runs (a Stripe call, a Redis command) is cancelled */

    ngx_destroy_pool(job->pool);
}


static u_char *
ngx_http_billing_invoice_log_handler(ngx_log_t *log, u_char *buf, size_t len)
{
    u_char                          *p;
    ngx_http_billing_invoice_job_t  *job;

    p = buf;

    if (log->action) {
        p = ngx_snprintf(buf, len, " while %s", log->action);
        len -= p - buf;
        buf = p;
    }

    job = log->data;

    if (job == NULL) {
        return p;
    }

    return ngx_snprintf(buf, len, ", billing: %V invoice of subscription "
                        "\"%V\"", &job->spec.kind, &job->spec.subscription);
}
