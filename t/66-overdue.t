# billing_overdue (2s here), with 4-second periods and days_until_due 0:
# a period invoice still unpaid billing_overdue after its own due date
# (Stripe's due_date) makes its subscription past_due, and the gate
# answers 402 payment_overdue with that invoice, its pay_url and the
# portal; paying it (a webhook, or reconciliation) makes it active
# again; one marked uncollectible makes it past_due at once; a later
# unpaid invoice of another subscription of the same org changes nothing
# for this one; a past_due subscription can be cancelled; a node with
# billing_overdue off (the default) never makes one past_due.

use strict;
use warnings;

use Test::More;
use BillingTest qw(:all);
use StripeMock;
use Time::HiRes qw(time sleep);

my $t = BillingTest->new;
my $f = $t->billing_files;
my $s = StripeMock->start(dir => $t->dir, key => $f->{key});

my $CONF = <<'EOF';
    billing_redis 127.0.0.1:%%REDIS_PORT%% timeout=1s;
    billing_stripe_webhook_secret_file %%DIR%%/whsec;
    billing_stripe_key_file %%DIR%%/stripe.key;
    billing_api_token_file %%DIR%%/api.token;
    billing_portal_url https://billing.stripe.com/p/login/test_123;
    billing_cache zone=billing:1m ttl=30s;
    billing_stripe_timeout 2s;
    billing_invoice_delay 1s;
    billing_reconcile %%RECONCILE%%;
    billing_overdue %%OVERDUE%%;

    server {
        listen 127.0.0.1:%%PORT%% reuseport;

        location = /stripe/webhook { billing_webhook; }
        location /billing/ { billing_api; }

        location /_billing_stripe/ {
            internal;
            proxy_pass http://127.0.0.1:%%STRIPE_PORT%%/;
            proxy_read_timeout 1s;
        }

        location /api/ {
            billing_gate $http_x_subscription_id;
            return 200 "api\n";
        }
    }
EOF

$t->start_redis;
$t->start_nginx($CONF, STRIPE_PORT => $s->port, workers => 2,
    OVERDUE => '2s', RECONCILE => 'off');

my $P = 4;

sub gate {
    my ($id) = @_;
    return $t->http('GET', '/api/x', headers => { 'X-Subscription-Id' => $id });
}

sub state { $t->redis('HGET', "billing:sub:$_[0]", 'state') }

sub active_sub {
    my ($id, $org, $period) = @_;
    my $r = $t->api('POST', 'subscriptions',
        subscription_request($id, $org // "org-$id",
            metering_period => $period // "$P", days_until_due => 0));
    is $r->{status}, 201, "$id: created" or diag $r->{content};
    my $w = $t->webhook(invoice_event(type => 'invoice.paid',
        invoice_id => $r->{json}{invoice}{id}, subscription => $id,
        kind => 'initial'));
    is $w->{status}, 200, "$id: first invoice paid";
    is state($id), 'active', "$id: active";
}

# a period invoice open at Stripe, other than those of @not
sub period_invoice {
    my ($id, @not) = @_;
    my %not = map { $_ => 1 } @not;
    my $inv;
    wait_until(sub {
        ($inv) = grep { ($_->{metadata}{billing_kind} // '') eq 'period'
                        && $_->{status} eq 'open' && !$not{ $_->{id} } }
                 @{ $s->invoices_of($id) };
        $inv;
    }, 20);
    return $inv;
}

# ---------------------------------------------------------------------
# unpaid past its due date: past_due, 402 payment_overdue; paid: active

{
    active_sub('sub-o1', 'org-o');

    # the same org, periods of an hour: no period invoice in this test
    active_sub('sub-o2', 'org-o', '3600');
    is gate('sub-o1')->{status}, 200, 'sub-o1 active: 200';

    my $inv = period_invoice('sub-o1');
    ok $inv, 'sub-o1: a period invoice, open';
    ok $inv->{due_date}, '... with a due date (days_until_due 0)';
    is $t->redis('HGET', "billing:invoice:$inv->{id}", 'due_date'),
        $inv->{due_date}, '... recorded with the invoice';

    ok wait_until(sub { state('sub-o1') eq 'past_due' }, 15),
        'unpaid billing_overdue after its due date: past_due';
    cmp_ok time, '>=', $inv->{due_date} + 2, '... not before due date + 2 s';
    is $t->redis('HGET', 'billing:sub:sub-o1', 'overdue_invoice'), $inv->{id},
        '... for that invoice';

    my $r;
    ok wait_until(sub { ($r = gate('sub-o1'))->{status} == 402 }, 3),
        'the gate: 402 (cache dropped by the change)';
    is $r->{json}{error}{code}, 'payment_overdue', '... payment_overdue';
    is $r->{json}{invoice}, $inv->{id}, '... the overdue invoice';
    is $r->{json}{pay_url}, $inv->{hosted_invoice_url}, '... its pay_url';
    is $r->{json}{portal_url}, 'https://billing.stripe.com/p/login/test_123',
        '... the portal';

    # the org's other subscription: unaffected by sub-o1's invoice
    is state('sub-o2'), 'active', 'sub-o2 of the same org: still active';
    is gate('sub-o2')->{status}, 200, 'sub-o2: 200 meanwhile';

    my $w = $t->webhook(invoice_event(type => 'invoice.paid',
        invoice_id => $inv->{id}, subscription => 'sub-o1', kind => 'period'));
    is $w->{status}, 200, 'the overdue invoice paid: 200';
    is state('sub-o1'), 'active', 'sub-o1 active again';
    is $t->redis('HGET', 'billing:sub:sub-o1', 'overdue_invoice'), undef,
        '... no overdue invoice';
    ok wait_until(sub { gate('sub-o1')->{status} == 200 }, 3), 'the gate: 200';
}

# ---------------------------------------------------------------------
# marked uncollectible: past_due at once; voided: active

{
    active_sub('sub-o3');
    my $inv = period_invoice('sub-o3');
    my $w = $t->webhook(invoice_event(type => 'invoice.marked_uncollectible',
        invoice_id => $inv->{id}, subscription => 'sub-o3', kind => 'period'));
    is $w->{status}, 200, 'marked uncollectible: 200';
    is state('sub-o3'), 'past_due', 'uncollectible: past_due at once';
    is gate('sub-o3')->{json}{error}{code}, 'payment_overdue',
        '... 402 payment_overdue';
    $w = $t->webhook(invoice_event(type => 'invoice.voided',
        invoice_id => $inv->{id}, subscription => 'sub-o3', kind => 'period'));
    is state('sub-o3'), 'active', 'voided: active again';

    # past_due can be cancelled
    my $inv2 = period_invoice('sub-o3', $inv->{id});
    $t->webhook(invoice_event(type => 'invoice.marked_uncollectible',
        invoice_id => $inv2->{id}, subscription => 'sub-o3', kind => 'period'));
    is state('sub-o3'), 'past_due', 'past_due again';
    my $r = $t->api('DELETE', 'subscriptions/sub-o3');
    ok $r->{status} == 200 || $r->{status} == 202,
        "a past_due subscription cancelled: $r->{status}";
    is state('sub-o3'), 'cancelled', '... cancelled';
}

# ---------------------------------------------------------------------
# two overdue invoices: paying one leaves it past_due for the other

{
    active_sub('sub-o6');
    my $a = period_invoice('sub-o6');
    my $b = period_invoice('sub-o6', $a->{id});
    ok $a && $b, 'sub-o6: two period invoices';
    for my $inv ($a, $b) {
        is $t->webhook(invoice_event(type => 'invoice.marked_uncollectible',
            invoice_id => $inv->{id}, subscription => 'sub-o6',
            kind => 'period'))->{status}, 200, "$inv->{id} uncollectible";
    }
    is state('sub-o6'), 'past_due', 'past_due';
    my $first = $t->redis('HGET', 'billing:sub:sub-o6', 'overdue_invoice');
    my ($other) = grep { $_ ne $first } $a->{id}, $b->{id};
    $t->webhook(invoice_event(type => 'invoice.paid', invoice_id => $first,
        subscription => 'sub-o6', kind => 'period'));
    is state('sub-o6'), 'past_due', 'one paid: still past_due';
    is $t->redis('HGET', 'billing:sub:sub-o6', 'overdue_invoice'), $other,
        '... for the other one';
    my $r = gate('sub-o6');
    is $r->{json}{invoice}, $other, '... and the gate names it';
    $t->webhook(invoice_event(type => 'invoice.paid', invoice_id => $other,
        subscription => 'sub-o6', kind => 'period'));
    # a third period invoice may be overdue by now: past_due for that one
    my $now = state('sub-o6');
    my $for = $t->redis('HGET', 'billing:sub:sub-o6', 'overdue_invoice') // '';
    ok $now eq 'active'
        || ($now eq 'past_due' && $for ne $a->{id} && $for ne $b->{id}),
        "both paid: active, or past_due for a later one ($now)";
}

# ---------------------------------------------------------------------
# paid at Stripe, no webhook: reconciliation makes it active

{
    $t->reload_nginx(undef);
    $t->stop_nginx;
    $t->start_nginx($CONF, STRIPE_PORT => $s->port, workers => 2,
        OVERDUE => '2s', RECONCILE => '2s');

    active_sub('sub-o4');
    my $inv = period_invoice('sub-o4');
    ok wait_until(sub { state('sub-o4') eq 'past_due' }, 15), 'sub-o4 past_due';
    $s->set_invoice_status($inv->{id}, 'paid');
    ok wait_until(sub { state('sub-o4') eq 'active' }, 15),
        'paid at Stripe, reconciled: active';
}

# ---------------------------------------------------------------------
# billing_overdue off (the default): never past_due

{
    $t->stop_nginx;
    $t->start_nginx($CONF, STRIPE_PORT => $s->port, workers => 2,
        OVERDUE => 'off', RECONCILE => 'off');

    active_sub('sub-o5');
    my $inv = period_invoice('sub-o5');
    sleep 4;
    is state('sub-o5'), 'active', 'off: an unpaid period invoice past its '
        . 'due date changes nothing';
    $t->webhook(invoice_event(type => 'invoice.marked_uncollectible',
        invoice_id => $inv->{id}, subscription => 'sub-o5', kind => 'period'));
    is state('sub-o5'), 'active', 'off: not even uncollectible';
    is gate('sub-o5')->{status}, 200, 'off: 200';

    # one left past_due from before: its overdue invoice closes no gate
    ok wait_until(sub { $t->redis('HGET', 'billing:sub:sub-o4', 'state') }, 1),
        'sub-o4 is there';
    $t->redis('HSET', 'billing:sub:sub-o4', state => 'past_due',
        overdue_invoice => $inv->{id});
    $t->redis('PUBLISH', 'billing:events', 'sub-o4');
    ok wait_until(sub { gate('sub-o4')->{status} == 200 }, 3),
        'off: a past_due subscription is let through';
}

$t->ignore_log(qr/billing stripe/);
$s->stop;
$t->done;
done_testing;
