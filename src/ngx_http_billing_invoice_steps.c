
/*
 * The billing engine's steps at Stripe: the request each step sends
 * (its form, its idempotency key), and what each answer does: the
 * object recorded in Redis, then the next step.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include <ngx_md5.h>

#include "ngx_http_billing_status.h"
#include "ngx_http_billing_invoice_int.h"
#include "ngx_billing_event.h"
#include "ngx_billing_state.h"


static ngx_int_t ngx_http_billing_invoice_created(
    ngx_http_billing_invoice_job_t *job, ngx_str_t *id);
static void ngx_http_billing_invoice_customer_stored(void *data,
    redisReply *reply);
static void ngx_http_billing_invoice_attached(void *data, redisReply *reply);
static void ngx_http_billing_invoice_item_stored(void *data,
    redisReply *reply);
static void ngx_http_billing_invoice_recorded(void *data, redisReply *reply);


ngx_int_t
ngx_http_billing_invoice_form(ngx_http_billing_invoice_job_t *job,
    ngx_billing_form_t *form)
{
    u_char                           *key;
    size_t                            len;
    ngx_uint_t                        i;
    ngx_http_billing_invoice_meta_t  *meta;

    ngx_billing_form_add(form, "customer", (char *) job->customer.data,
                         job->customer.len);
    ngx_billing_form_add(form, "collection_method", "send_invoice",
                         sizeof("send_invoice") - 1);

    /* else Stripe takes the customer's, and the items' may clash */
    ngx_billing_form_add(form, "currency", (char *) job->spec.currency.data,
                         job->spec.currency.len);
    ngx_billing_form_add_int(form, "days_until_due", job->spec.days_until_due);
    ngx_billing_form_add(form, "pending_invoice_items_behavior", "exclude",
                         sizeof("exclude") - 1);
    ngx_billing_form_add(form, "metadata[billing_subscription]",
                         (char *) job->spec.subscription.data,
                         job->spec.subscription.len);
    ngx_billing_form_add(form, "metadata[billing_kind]",
                         (char *) job->spec.kind.data, job->spec.kind.len);

    /*
     * Whose it is, should two marketplaces share a Stripe account: each
     * endpoint then gets the other's events too (the default's: none).
     */

    if (job->owner.market->name.len) {
        ngx_billing_form_add(form, "metadata[billing_marketplace]",
                             (char *) job->owner.market->name.data,
                             job->owner.market->name.len);
    }

    for (i = 0; i < job->spec.nmetadata; i++) {
        meta = &job->spec.metadata[i];

        len = sizeof("metadata[]") + meta->key.len;

        key = ngx_pnalloc(job->pool, len);
        if (key == NULL) {
            return NGX_ERROR;
        }

        ngx_sprintf(key, "metadata[%V]%Z", &meta->key);

        ngx_billing_form_add(form, (char *) key, (char *) meta->value.data,
                             meta->value.len);
    }

    return NGX_OK;
}


/*
 * The idempotency key names what is created: the consumer org's
 * customer with these details (a key reused with other parameters is
 * an error at Stripe for a day), or a step of this invoice.
 */

ngx_int_t
ngx_http_billing_invoice_stripe(ngx_http_billing_invoice_job_t *job,
    ngx_billing_form_t *form, ngx_str_t *path, const char *step,
    ngx_str_t *name)
{
    u_char                          *p, digest[16];
    size_t                           len;
    ngx_md5_t                        md5;
    ngx_http_billing_stripe_call_t  *call;

    if (form->overflow) {
        ngx_log_error(NGX_LOG_ALERT, &job->log, 0,
                      "billing invoice: the form for %V is too large",
                      path);
        return NGX_ERROR;
    }

    call = &job->call;

    len = job->owner.market->prefix.len
          + sizeof("customer::") - 1 + job->spec.consumer_org.len + 32
          + job->spec.key.len + 1 + (step ? ngx_strlen(step) : 0)
          + (name ? name->len : 0);

    p = ngx_pnalloc(job->pool, len);
    if (p == NULL) {
        return NGX_ERROR;
    }

    call->idempotency_key.data = p;

    if (step && ngx_strcmp(step, "customer") == 0) {
        ngx_md5_init(&md5);
        ngx_md5_update(&md5, job->spec.email.data, job->spec.email.len);
        ngx_md5_update(&md5, "\n", 1);
        ngx_md5_update(&md5, job->spec.name.data, job->spec.name.len);
        ngx_md5_final(digest, &md5);

        p = ngx_cpymem(p, job->owner.market->prefix.data,
                       job->owner.market->prefix.len);
        p = ngx_sprintf(p, "customer:%V:", &job->spec.consumer_org);
        p = ngx_hex_dump(p, digest, sizeof(digest));

    } else if (step) {
        p = ngx_sprintf(p, "%V:%s", &job->spec.key, step);

    } else {
        p = ngx_sprintf(p, "%V:%V", &job->spec.key, name);
    }

    call->idempotency_key.len = p - call->idempotency_key.data;

    call->method = NGX_HTTP_POST;
    call->path = *path;
    call->body.data = (u_char *) form->data;
    call->body.len = form->len;

    return ngx_http_billing_stripe_call(call);
}


/* the object Stripe made, or the answer is a failure to report */

static ngx_int_t
ngx_http_billing_invoice_created(ngx_http_billing_invoice_job_t *job,
    ngx_str_t *id)
{
    ngx_str_t  s;

    if (job->call.json == NULL
        || job->call.status < 200 || job->call.status >= 300
        || ngx_http_billing_stripe_string(&job->call, "id", &s) != NGX_OK
        || !ngx_billing_stripe_id_valid((char *) s.data, s.len))
    {
        ngx_http_billing_invoice_stripe_failed(job);
        return NGX_ERROR;
    }

    /* Stripe's answer goes with the next call: the id must outlive it */

    if (ngx_http_billing_invoice_dup(job->pool, id, &s) != NGX_OK) {
        ngx_http_billing_invoice_finish(job, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return NGX_ERROR;
    }

    return NGX_OK;
}


void
ngx_http_billing_invoice_customer(ngx_http_billing_stripe_call_t *call)
{
    ngx_http_billing_invoice_job_t  *job = call->data;

    ngx_str_t                          id;
    ngx_http_billing_redis_handler_pt  stored;

    if (ngx_http_billing_invoice_created(job, &id) != NGX_OK) {
        return;
    }

    /* the first customer recorded for the org is the org's */

    stored = ngx_http_billing_invoice_customer_stored;

    if (ngx_http_billing_store_customer(&job->owner, &job->spec.subscription,
                                        &job->spec.consumer_org, &id, stored,
                                        job)
        != NGX_OK)
    {
        ngx_http_billing_invoice_unavailable(job);
    }
}


static void
ngx_http_billing_invoice_customer_stored(void *data, redisReply *reply)
{
    ngx_http_billing_invoice_job_t  *job = data;

    if (ngx_http_billing_store_copy(job->pool, &job->customer, reply)
        != NGX_OK
        || job->customer.len == 0)
    {
        ngx_http_billing_invoice_unavailable(job);
        return;
    }

    ngx_http_billing_invoice_next(job);
}


void
ngx_http_billing_invoice_created_invoice(ngx_http_billing_stripe_call_t *call)
{
    ngx_http_billing_invoice_job_t  *job = call->data;

    ngx_str_t                   id;
    ngx_http_billing_invoice_t  inv;

    if (ngx_http_billing_invoice_created(job, &id) != NGX_OK) {
        return;
    }

    ngx_memzero(&inv, sizeof(ngx_http_billing_invoice_t));

    inv.id = id;
    inv.kind = job->spec.kind;
    inv.currency = job->spec.currency;
    inv.customer = job->customer;

    job->invoice = id;

    if (ngx_http_billing_store_attach(&job->owner, &job->spec.subscription,
                                      &job->spec.field, &inv,
                                      job->spec.period_start,
                                      job->spec.period_end, job->spec.units,
                                      ngx_http_billing_invoice_attached, job)
        != NGX_OK)
    {
        ngx_http_billing_invoice_unavailable(job);
    }
}


static void
ngx_http_billing_invoice_attached(void *data, redisReply *reply)
{
    ngx_http_billing_invoice_job_t  *job = data;

    ngx_str_t  id;

    if (ngx_http_billing_store_copy(job->pool, &id, reply) != NGX_OK
        || id.len == 0)
    {
        ngx_http_billing_invoice_unavailable(job);
        return;
    }

    if (id.len == job->invoice.len
        && ngx_strncmp(id.data, job->invoice.data, id.len) == 0)
    {
        ngx_http_billing_invoice_next(job);
        return;
    }

    /*
     * Another job's invoice was recorded first: it is the one, and how
     * far that job got is read again.  Ours stays a draft at Stripe.
     */

    ngx_log_error(NGX_LOG_WARN, &job->log, 0,
                  "billing invoice: %V was made, but %V was recorded "
                  "first and is kept", &job->invoice, &id);

    if (++job->restarts > NGX_HTTP_BILLING_INVOICE_RESTARTS) {
        ngx_http_billing_invoice_unavailable(job);
        return;
    }

    ngx_http_billing_invoice_resume(job);
}


void
ngx_http_billing_invoice_item(ngx_http_billing_stripe_call_t *call)
{
    ngx_http_billing_invoice_job_t  *job = call->data;

    ngx_str_t  id;

    if (ngx_http_billing_invoice_created(job, &id) != NGX_OK) {
        return;
    }

    job->ids[job->item] = id;

    if (ngx_http_billing_store_item(&job->owner, &job->invoice,
                                    &job->names[job->item], &id,
                                    ngx_http_billing_invoice_item_stored, job)
        != NGX_OK)
    {
        ngx_http_billing_invoice_unavailable(job);
    }
}


static void
ngx_http_billing_invoice_item_stored(void *data, redisReply *reply)
{
    ngx_http_billing_invoice_job_t  *job = data;

    if (reply == NULL || reply->type == REDIS_REPLY_ERROR) {
        ngx_http_billing_invoice_unavailable(job);
        return;
    }

    ngx_http_billing_invoice_next(job);
}


void
ngx_http_billing_invoice_from_stripe(ngx_http_billing_stripe_call_t *call,
    ngx_http_billing_invoice_t *inv)
{
    json_t  *v;

    if (inv->customer.len == 0) {
        (void) ngx_http_billing_stripe_string(call, "customer",
                                              &inv->customer);
    }

    (void) ngx_http_billing_stripe_string(call, "hosted_invoice_url",
                                          &inv->hosted_invoice_url);
    (void) ngx_http_billing_stripe_string(call, "currency", &inv->currency);

    v = json_object_get(call->json, "amount_due");
    inv->amount_due = json_is_integer(v) ? json_integer_value(v) : -1;

    v = json_object_get(call->json, "due_date");
    inv->due_date = json_is_integer(v) ? json_integer_value(v) : 0;
}


void
ngx_http_billing_invoice_finalized(ngx_http_billing_stripe_call_t *call)
{
    ngx_http_billing_invoice_job_t  *job = call->data;

    ngx_str_t                    status;
    ngx_http_billing_invoice_t   inv;

    if (call->json == NULL
        || call->status < 200 || call->status >= 300
        || ngx_http_billing_stripe_string(call, "status", &status) != NGX_OK)
    {
        ngx_http_billing_invoice_stripe_failed(job);
        return;
    }

    ngx_memzero(&inv, sizeof(ngx_http_billing_invoice_t));

    inv.id = job->invoice;

    /* a zero total finalizes as "paid": that activates at once */

    inv.status = ngx_billing_invoice_status_parse((char *) status.data,
                                                  status.len);
    if (inv.status == NGX_BILLING_INVOICE_NONE) {
        ngx_http_billing_invoice_stripe_failed(job);
        return;
    }

    ngx_str_set(&inv.event, "");
    inv.created = ngx_time();
    inv.subscription = job->spec.subscription;
    inv.kind = job->spec.kind;
    inv.customer = job->customer;

    ngx_http_billing_invoice_from_stripe(call, &inv);

    if (ngx_http_billing_store_invoice(&job->owner, &inv,
                                       ngx_http_billing_invoice_recorded, job)
        != NGX_OK)
    {
        ngx_http_billing_invoice_unavailable(job);
    }
}


static void
ngx_http_billing_invoice_recorded(void *data, redisReply *reply)
{
    ngx_http_billing_invoice_job_t  *job = data;

    if (reply == NULL || reply->type != REDIS_REPLY_ARRAY
        || reply->elements != 4)
    {
        ngx_http_billing_invoice_unavailable(job);
        return;
    }

    /* once a job: a finalize made again after a failure is the same */

    if (!job->counted) {
        job->counted = 1;
        ngx_http_billing_stat_inc(NGX_HTTP_BILLING_M_INVOICES_ISSUED,
                                  job->owner.market->index,
                                  ngx_http_billing_stat_kind(&job->spec.kind),
                                  0);
    }

    ngx_http_billing_invoice_finish(job, NGX_OK);
}


void
ngx_http_billing_invoice_checked(void *data, redisReply *reply)
{
    ngx_http_billing_invoice_job_t  *job = data;

    if (reply == NULL || reply->type == REDIS_REPLY_ERROR) {
        ngx_http_billing_invoice_unavailable(job);
        return;
    }

    if (reply->type == REDIS_REPLY_STRING && reply->len == 9
        && ngx_strncmp(reply->str, "cancelled", 9) == 0)
    {
        ngx_log_error(NGX_LOG_INFO, &job->log, 0,
                      "billing invoice: the subscription was cancelled, "
                      "%V stays a draft", &job->invoice);
        ngx_http_billing_invoice_finish(job, NGX_HTTP_CONFLICT);
        return;
    }

    job->checked = 1;

    ngx_http_billing_invoice_next(job);
}
