# Reconciliation (billing_reconcile 2s here) on two nodes of two workers
# sharing one Redis: an open first invoice that the Stripe stand-in marks
# paid without any webhook opens the gate within about the interval, and
# billing_status counts a reconciled invoice; one marked void there makes
# the subscription payment_failed; Stripe failing during rounds keeps the
# gate closed and the invoice watched, and it is reconciled once Stripe
# answers again; an invoice a webhook settled is asked about no more; an
# invoice left open is asked about once a round by one node only; the
# Stripe key goes to the stand-in only. POST subscriptions/{id}/refresh
# asks at once and answers with the subscription.

use strict;
use warnings;

use Test::More;
use BillingTest qw(:all);
use StripeMock;
use Time::HiRes qw(time sleep);

my $na = BillingTest->new;
my $f = $na->billing_files;
my $s = StripeMock->start(dir => $na->dir, key => $f->{key});

my $HTTP = <<'EOF';
    billing_redis 127.0.0.1:%%REDIS_PORT%% timeout=1s;
    billing_stripe_webhook_secret_file %%DIR%%/whsec;
    billing_stripe_key_file %%DIR%%/stripe.key;
    billing_api_token_file %%DIR%%/api.token;
    billing_portal_url https://billing.stripe.com/p/login/test_123;
    billing_cache zone=billing:1m ttl=10s;
    billing_stripe_timeout 3s;
    billing_reconcile 2s;

    server {
        listen 127.0.0.1:%%PORT%%;

        location = /stripe/webhook { billing_webhook; }
        location /billing/ { billing_api; }
        location = /metrics { billing_status; }

        location /_billing_stripe/ {
            internal;
            proxy_pass http://127.0.0.1:%%STRIPE_PORT%%/;
            proxy_read_timeout 2s;
        }

        location /api/ {
            billing_gate $http_x_subscription_id;
            return 200 "api\n";
        }
    }
EOF

$na->start_redis;
$na->start_nginx($HTTP, workers => 2, STRIPE_PORT => $s->port);

my $nb = BillingTest->new(redis_port => $na->redis_port);
$nb->billing_files(token => $f->{token}, key => $f->{key},
    secret => $f->{secret});
$nb->start_nginx($HTTP, workers => 2, STRIPE_PORT => $s->port);

sub create {
    my ($id) = @_;
    my $r = $na->api('POST', 'subscriptions',
        subscription_request($id, "org-$id"));
    is $r->{status}, 201, "$id created" or diag $r->{content};
    return $r->{json}{invoice}{id};
}

sub gate {
    my ($node, $id) = @_;
    return $node->http('GET', '/api/x',
        headers => { 'X-Subscription-Id' => $id })->{status};
}

sub metric {
    my ($node, $name) = @_;
    my $text = $node->http('GET', '/metrics')->{content} // '';
    return $text =~ /^\Q$name\E (\S+)$/m ? $1 : 0;
}

sub reconciled {
    metric($na, $_[0]) + metric($nb, $_[0]);
}

sub gets_of {
    my ($inv) = @_;
    return grep { $_->{method} eq 'GET' && $_->{path} eq "/v1/invoices/$inv" }
           @{ $s->requests };
}

my $CHANGED = 'billing_reconcile_invoices_total{marketplace="default",result="changed",source="round"}';
my $FAILED = 'billing_reconcile_invoices_total{marketplace="default",result="failed",source="round"}';
my $REFRESHED = 'billing_reconcile_invoices_total{marketplace="default",result="changed",source="refresh"}';

# ---------------------------------------------------------------------
# paid at Stripe, no webhook: the gate opens within about the interval

{
    my $inv = create('sub-r1');
    is gate($na, 'sub-r1'), 402, 'sub-r1 pending: 402';
    is gate($nb, 'sub-r1'), 402, 'sub-r1 pending on B: 402';
    ok $na->redis('ZSCORE', 'billing:reconcile', $inv),
        'its open invoice is watched by reconciliation';

    my $changed = reconciled($CHANGED);
    $s->set_invoice_status($inv, 'paid');
    my $t0 = time;
    ok wait_until(sub { gate($na, 'sub-r1') == 200 && gate($nb, 'sub-r1') == 200 }, 15),
        'paid at Stripe, no webhook: both nodes answer 200';
    diag sprintf 'reconciled after %.1f s (interval 2 s)', time - $t0;
    is $na->redis('HGET', 'billing:sub:sub-r1', 'state'), 'active',
        'sub-r1 active in Redis';
    is $na->redis('HGET', "billing:invoice:$inv", 'status'), 'paid',
        'the invoice paid in Redis';
    is $na->redis('ZSCORE', 'billing:reconcile', $inv), undef,
        'a paid invoice is no longer watched';
    is reconciled($CHANGED), $changed + 1,
        'billing_status: one invoice reconciled (a missed webhook)';
    like $na->error_log . $nb->error_log,
        qr/billing reconcile: invoice \Q$inv\E of subscription "sub-r1" is paid at Stripe, no webhook said so/,
        'a notice says so';
}

# ---------------------------------------------------------------------
# void at Stripe: payment_failed

{
    my $inv = create('sub-r2');
    $s->set_invoice_status($inv, 'void');
    ok wait_until(sub { gate($na, 'sub-r2') == 403 }, 15),
        'void at Stripe, no webhook: 403';
    is $na->redis('HGET', 'billing:sub:sub-r2', 'state'), 'payment_failed',
        'sub-r2 payment_failed';
    is $na->redis('ZSCORE', 'billing:reconcile', $inv), undef,
        'a void invoice is no longer watched';
}

# ---------------------------------------------------------------------
# Stripe failing during rounds

{
    my $inv = create('sub-r3');
    my $failed = reconciled($FAILED);
    $s->fail(method => 'GET', path => "^/v1/invoices/$inv\$", status => 500,
        times => 0);
    $s->set_invoice_status($inv, 'paid');
    ok wait_until(sub { reconciled($FAILED) > $failed }, 20),
        'Stripe failing: billing_status counts a failed ask';
    is gate($na, 'sub-r3'), 402, 'Stripe failing: the gate stays closed';
    ok $na->redis('ZSCORE', 'billing:reconcile', $inv),
        'the invoice is still watched';
    $s->clear_rules;
    ok wait_until(sub { gate($na, 'sub-r3') == 200 }, 20),
        'Stripe back: reconciled, 200';

    # Stripe not answering at all (the connection held): the same
    my $inv9 = create('sub-r9');
    $failed = reconciled($FAILED);
    $s->fail(method => 'GET', path => "^/v1/invoices/$inv9\$", stall => 1,
        times => 0);
    $s->set_invoice_status($inv9, 'paid');
    ok wait_until(sub { reconciled($FAILED) > $failed }, 30),
        'Stripe silent: a failed ask, after the timeouts';
    is gate($na, 'sub-r9'), 402, 'Stripe silent: the gate stays closed';
    $s->clear_rules;
    ok wait_until(sub { gate($na, 'sub-r9') == 200 }, 30),
        'Stripe answering again: reconciled, 200';
}

# ---------------------------------------------------------------------
# Stripe unreachable during rounds: watched still; and a 404 of another
# kind (not Stripe's "No such invoice") is a failure, not a gone invoice

{
    my $inv = create('sub-r8');
    $s->fail(method => 'GET', path => "^/v1/invoices/$inv\$", status => 404,
        body => { error => { type => 'invalid_request_error',
                             message => 'Unrecognized request URL' } },
        times => 0);
    my $failed = reconciled($FAILED);
    ok wait_until(sub { reconciled($FAILED) > $failed }, 20),
        'a 404 that is not "No such invoice": a failed ask';
    ok $na->redis('ZSCORE', 'billing:reconcile', $inv),
        '... and the invoice still watched';
    $s->clear_rules;
    $s->fail(method => 'GET', path => "^/v1/invoices/$inv\$", status => 404,
        body => { error => { type => 'invalid_request_error',
                             code => 'resource_missing', param => 'id',
                             message => "No such invoice: '$inv'" } },
        times => 0);
    ok wait_until(sub { !defined $na->redis('ZSCORE', 'billing:reconcile', $inv) }, 20),
        'Stripe\'s "No such invoice": no longer watched';
    $s->clear_rules;
}

# ---------------------------------------------------------------------
# settled by a webhook: asked about no more

{
    my $inv = create('sub-r4');
    my $r = $na->webhook(invoice_event(type => 'invoice.paid',
        invoice_id => $inv, subscription => 'sub-r4', kind => 'initial'));
    is $r->{status}, 200, 'sub-r4 paid by webhook';
    is $na->redis('ZSCORE', 'billing:reconcile', $inv), undef,
        'no longer watched';
    my $n = gets_of($inv);
    sleep 4.5;
    is scalar(gets_of($inv)), $n, 'not asked about in two intervals';
}

# ---------------------------------------------------------------------
# left open: once a round, by one node

{
    my $inv = create('sub-r5');
    my $first;
    ok wait_until(sub { ($first) = gets_of($inv); $first }, 15),
        'asked about once the interval passed';
    sleep 8.5;
    my @gets = gets_of($inv);
    my $n = @gets;
    ok $n >= 3 && $n <= 6, "about one ask a round in 8.5 s ($n asks)";
    my @close = grep { $gets[$_]{time} - $gets[$_ - 1]{time} < 1.5 } 1 .. $#gets;
    is scalar @close, 0, 'never two asks in the same round (one node, one worker)'
        or diag explain [ map { $_->{time} } @gets ];
    is gate($na, 'sub-r5'), 402, 'still open at Stripe: still 402';
    my @keys = grep { ($_->{headers}{authorization} // '') ne "Bearer $f->{key}" } @gets;
    is scalar @keys, 0, 'every ask carries the key, to the stand-in';
}

# ---------------------------------------------------------------------
# POST subscriptions/{id}/refresh

{
    my $inv = create('sub-r6');
    is gate($na, 'sub-r6'), 402, 'sub-r6 pending: 402 (cached)';
    my $refreshed = reconciled($REFRESHED);
    $s->set_invoice_status($inv, 'paid');
    my $r = $na->api('POST', 'subscriptions/sub-r6/refresh');
    is $r->{status}, 200, 'refresh: 200' or diag $r->{content};
    is $r->{json}{state}, 'active', 'refresh: the subscription, active at once';
    is $r->{json}{id}, 'sub-r6', 'refresh: its id';
    is gate($na, 'sub-r6'), 200, 'refresh: the gate opened at once';
    is reconciled($REFRESHED), $refreshed + 1,
        'billing_status: counted as a refresh, not as a round';

    $r = $na->api('POST', 'subscriptions/nobody/refresh');
    is $r->{status}, 404, 'refresh of an unknown subscription: 404';
    is $r->{json}{error}{code}, 'not_found', '... not_found';

    $r = $na->api('GET', 'subscriptions/sub-r6/refresh');
    is $r->{status}, 405, 'GET refresh: 405';
    like $r->{headers}{allow} // '', qr/POST/, '... Allow: POST';

    my $inv7 = create('sub-r7');
    $s->fail(method => 'GET', path => "^/v1/invoices/$inv7\$", status => 500,
        times => 0);
    $r = $na->api('POST', 'subscriptions/sub-r7/refresh');
    is $r->{status}, 502, 'refresh with Stripe failing: 502';
    is $r->{json}{error}{code}, 'stripe_error', '... stripe_error';
    $s->clear_rules;

    $r = $na->api('POST', 'subscriptions/sub-r6/refresh');
    is $r->{status}, 200, 'refresh with nothing open: 200';
    is $r->{json}{state}, 'active', '... as it is';
}

$_->ignore_log(qr/billing stripe: .* failed/) for $na, $nb;
$s->stop;
$nb->done;
$na->done;
done_testing;
