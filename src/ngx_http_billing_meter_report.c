
/*
 * What the meter says of its flushes: the units Redis accepted, to
 * billing_status by marketplace, and the counts a worker could not send
 * before it went, to the error log.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_billing_module.h"
#include "ngx_http_billing_status.h"
#include "ngx_http_billing_meter_int.h"


static int ngx_libc_cdecl ngx_http_billing_meter_cmp(const void *one,
    const void *two);


/*
 * The batch's units to their marketplaces, each line being
 * "<name>/<id> <period start> <units>\n".  A name no longer configured
 * (a count the zone kept across a reload that removed its marketplace)
 * counts nothing: the metrics started again from zero at that reload,
 * and counting it as the default's would show there more sent than
 * counted.
 */

void
ngx_http_billing_meter_sent_units(ngx_http_billing_meter_t *meter)
{
    u_char                       *p, *last, *nl, *sl, *sp;
    off_t                         n;
    int64_t                       units[NGX_HTTP_BILLING_MARKETS_MAX];
    ngx_str_t                     name;
    ngx_uint_t                    i;
    ngx_http_billing_srv_conf_t  *m, **markets;

    ngx_memzero(units, sizeof(units));

    markets = meter->bmcf->markets.elts;
    m = NULL;

    p = meter->buf;
    last = meter->buf + meter->len;

    for ( /* void */ ; p < last; p = nl + 1) {
        nl = ngx_strlchr(p, last, '\n');

        if (nl == NULL) {
            break;
        }

        sl = ngx_strlchr(p, nl, '/');
        sp = nl;

        while (sp > p && sp[-1] != ' ') {
            sp--;
        }

        if (sl == NULL || sp == p) {
            continue;
        }

        name.data = p;
        name.len = sl - p;

        /* a lookup per run of one marketplace's lines: most are one */

        if (m == NULL
            || m->name.len != name.len
            || (name.len
                && ngx_strncmp(m->name.data, name.data, name.len) != 0))
        {
            m = name.len ? ngx_http_billing_market_find(meter->bmcf, &name)
                         : markets[0];
        }

        n = ngx_atoof(sp, nl - sp);

        if (m && n > 0) {
            units[m->index] += n;
        }
    }

    for (i = 0; i < meter->bmcf->markets.nelts; i++) {
        if (units[i]) {
            ngx_http_billing_stat_add(NGX_HTTP_BILLING_M_METER_SENT, i, 0, 0,
                                      units[i]);
        }
    }
}


void
ngx_http_billing_meter_lost(ngx_http_billing_meter_t *meter, const char *why,
    ngx_uint_t others)
{
    u_char                    *p, *last, *sp;
    int64_t                    units, zone_units;
    ngx_str_t                 *ids, *id;
    ngx_uint_t                 n, i, subs, zone_entries;
    ngx_queue_t               *q;
    ngx_http_billing_count_t  *c;

    /* what this worker holds: its batch and its overflow */

    n = (meter->pending ? meter->entries : 0) + meter->overflow.entries;
    units = (meter->pending ? meter->units : 0) + meter->overflow.units;

    ids = (n > 0) ? ngx_alloc(n * sizeof(ngx_str_t), meter->log) : NULL;
    i = 0;

    if (ids && meter->pending) {
        p = meter->buf;
        last = meter->buf + meter->len;

        while (p < last && i < n) {
            sp = ngx_strlchr(p, last, ' ');

            if (sp == NULL) {
                break;
            }

            ids[i].data = p;
            ids[i].len = sp - p;
            i++;

            p = ngx_strlchr(sp, last, '\n');

            if (p == NULL) {
                break;
            }

            p++;
        }
    }

    for (q = ngx_queue_head(&meter->overflow.queue);
         ids && i < n && q != ngx_queue_sentinel(&meter->overflow.queue);
         q = ngx_queue_next(q))
    {
        c = ngx_queue_data(q, ngx_http_billing_count_t, queue);
        ids[i].data = c->id;
        ids[i].len = c->len;
        i++;
    }

    subs = i;

    if (ids && i > 1) {
        ngx_qsort(ids, i, sizeof(ngx_str_t), ngx_http_billing_meter_cmp);

        subs = 1;

        for (id = &ids[1]; id < &ids[i]; id++) {
            if (ngx_http_billing_meter_cmp(id, id - 1) != 0) {
                subs++;
            }
        }
    }

    if (ids) {
        ngx_free(ids);
    }

    if (units) {
        ngx_log_error(NGX_LOG_ERR, meter->log, 0,
                      "billing meter: %s, %L units of %ui subscriptions "
                      "are lost%s", why, units, subs,
                      (meter->pending && meter->queued)
                      ? " (unless Redis ran a send it did not answer)" : "");
    }

    zone_entries = 0;

    ngx_shmtx_lock(&meter->shpool->mutex);

    zone_units = meter->sh->units;

    for (q = ngx_queue_head(&meter->sh->queue);
         zone_units && q != ngx_queue_sentinel(&meter->sh->queue);
         q = ngx_queue_next(q))
    {
        c = ngx_queue_data(q, ngx_http_billing_count_t, queue);
        zone_entries += (c->units != 0);
    }

    ngx_shmtx_unlock(&meter->shpool->mutex);

    if (zone_units == 0) {
        return;
    }

    if (others) {
        ngx_log_error(NGX_LOG_NOTICE, meter->log, 0,
                      "billing meter: %s, %L units of %ui counts are left "
                      "in the shared zone for the other workers",
                      why, zone_units, zone_entries);
        return;
    }

    ngx_log_error(NGX_LOG_ERR, meter->log, 0,
                  "billing meter: %s, %L units of %ui counts in the shared "
                  "zone are lost: no running worker is left to send them",
                  why, zone_units, zone_entries);
}


static int ngx_libc_cdecl
ngx_http_billing_meter_cmp(const void *one, const void *two)
{
    const ngx_str_t  *a = one;
    const ngx_str_t  *b = two;

    return (int) ngx_memn2cmp(a->data, b->data, a->len, b->len);
}
