# DELETE subscriptions/{id}: every row of the contract's cancellation
# table. active: the gate closes at once, the final invoice has the
# usage of the current period only (and the period before, still
# unbilled, is invoiced too); 202 when Stripe cannot be reached in
# time, then the scheduler issues the final invoice once. pending: the
# unpaid first invoice is voided. payment_failed: nothing at Stripe.
# A repeat answers as the first time; an unknown id is 404.

use strict;
use warnings;

use HTTP::Tiny;
use JSON::PP;
use POSIX ();
use Test::More;
use Time::HiRes qw(time sleep);

use BillingTest qw(:all);
use StripeMock;

my $t = BillingTest->new;
my $f = $t->billing_files;
my $KEY = $f->{key};
my $s = StripeMock->start(dir => $t->dir, key => $KEY);

# periods end, but are not invoiced by themselves during this test
$t->start_redis;
$t->start_nginx(<<'EOF', STRIPE_PORT => $s->port, workers => 2);
    billing_redis 127.0.0.1:%%REDIS_PORT%% timeout=1s;
    billing_stripe_webhook_secret_file %%DIR%%/whsec;
    billing_stripe_key_file %%DIR%%/stripe.key;
    billing_api_token_file %%DIR%%/api.token;
    billing_stripe_timeout 2s;
    billing_invoice_delay 300s;

    server {
        listen 127.0.0.1:%%PORT%% reuseport;

        location = /stripe/webhook { billing_webhook; }
        location /billing/ { billing_api; }

        location /api/ {
            billing_gate $http_x_subscription_id;
            billing_meter off;
            return 200 "served\n";
        }

        location /_billing_stripe/ {
            internal;
            proxy_pass http://127.0.0.1:%%STRIPE_PORT%%/;
            proxy_read_timeout 1s;
        }
    }
EOF

my $P = 4;

sub api { $t->api(@_) }

sub create_sub {
    my ($id) = @_;
    my $r = api('POST', 'subscriptions',
        subscription_request($id, "org-$id", metering_period => "$P"));
    is $r->{status}, 201, "$id: created" or diag $r->{content};
    return $r->{json}{invoice}{id};
}

sub active_sub {
    my ($id) = @_;
    my $inv = create_sub($id);
    my $w = $t->webhook(invoice_event(type => 'invoice.paid',
        invoice_id => $inv, subscription => $id, kind => 'initial',
        invoice => { amount_due => 1500, currency => 'usd' }));
    is $w->{status}, 200, "$id: paid" or diag $w->{content};
    return $t->redis('HGET', "billing:sub:$id", 'period_start');
}

sub gate {
    my ($id) = @_;
    return $t->http('GET', '/api/x', headers => { 'X-Subscription-Id' => $id });
}

sub invoices_kind {
    my ($id, $kind) = @_;
    return [ grep { ($_->{metadata}{billing_kind} // '') eq $kind }
        @{ $s->invoices_of($id) } ];
}

sub items_of_invoice {
    my ($inv) = @_;
    return [ grep { $_->{invoice} eq $inv->{id} }
        @{ $s->objects('invoiceitem') } ];
}

sub stripe_status {
    my ($id) = @_;
    my ($o) = grep { $_->{id} eq $id } @{ $s->objects('invoice') };
    return $o && $o->{status};
}


# ---------------------------------------------------------------------
# unknown, wrong method

{
    my $r = api('DELETE', 'subscriptions/sub-nobody');
    is $r->{status}, 404, 'unknown: 404';
    is $r->{json}{error}{code}, 'not_found', '... not_found';

    $r = api('PUT', 'subscriptions/sub-nobody');
    is $r->{status}, 405, 'PUT: 405';
    like $r->{headers}{allow} // '', qr/DELETE/, '... Allow names DELETE';
}


# ---------------------------------------------------------------------
# active: the previous period still unbilled, usage in both

my $start = active_sub('sub-a');
is gate('sub-a')->{status}, 200, 'sub-a: the gate lets it through';

# into the second period
ok wait_until(sub { time >= $start + $P + 0.2 }, 10), 'a period ended';
my $cur = $start + $P * int((time - $start) / $P);
$t->redis('HINCRBY', 'billing:usage:sub-a', $start, 4);
$t->redis('HINCRBY', 'billing:usage:sub-a', $cur, 6) if $cur != $start;
my $n0 = @{ $s->requests };

my $r = api('DELETE', 'subscriptions/sub-a');
my $at = time;
is $r->{status}, 200, 'active: 200' or diag $r->{content};
is $r->{json}{state}, 'cancelled', '... cancelled';
is $r->{json}{id}, 'sub-a', '... the subscription';
is $r->{json}{invoice}{kind}, 'final', '... with its final invoice';
ok $r->{json}{invoice}{id}, '... an invoice id';
isnt $r->{json}{invoice}{status}, 'draft', '... finalized';

my $g = gate('sub-a');
is $g->{status}, 403, 'the gate refuses at once';
is $g->{json}{error}{code}, 'subscription_cancelled',
    '... subscription_cancelled';

my $finals = invoices_kind('sub-a', 'final');
is scalar @$finals, 1, 'one final invoice at Stripe';
my $final = $finals->[0];
is $final->{id}, $r->{json}{invoice}{id}, '... the one answered';
my @fi = @{ items_of_invoice($final) };
is scalar @fi, 1, '... one item: no base price';
is $fi[0]{quantity}, ($cur != $start ? 6 : 10),
    '... the usage of the current period only';
is $fi[0]{unit_amount_decimal}, '0.25', '... at the unit price';
is $final->{metadata}{billing_period_start}, $cur,
    '... from the current period start';
ok $final->{metadata}{billing_period_end} >= $cur
    && $final->{metadata}{billing_period_end} <= $at + 1,
    '... to the cancellation';

my $periods = invoices_kind('sub-a', 'period');
is scalar @$periods, 1, 'the previous period, still unbilled, is invoiced too';
my ($pu) = grep { $_->{description} =~ /^Usage/ }
    @{ items_of_invoice($periods->[0]) };
is $pu && $pu->{quantity}, 4, '... with its own usage';
is $periods->[0]{metadata}{billing_period_start}, $start, '... its period';

# repeat: as the first time, nothing new
my $n1 = @{ $s->requests };
my $r2 = api('DELETE', 'subscriptions/sub-a');
is $r2->{status}, 200, 'repeat: 200';
is $r2->{json}{invoice}{id}, $r->{json}{invoice}{id}, '... the same invoice';
is $r2->{json}{state}, 'cancelled', '... cancelled';
sleep 1.5;
is scalar @{ $s->requests }, $n1, '... nothing new at Stripe';

# GET lists them
my $get = api('GET', 'subscriptions/sub-a');
is $get->{json}{state}, 'cancelled', 'GET: cancelled';
is $get->{json}{current_period}, undef, '... no current period';
my @kinds = sort map { $_->{kind} } @{ $get->{json}{invoices} };
is "@kinds", 'final initial period', '... all three invoices';


# ---------------------------------------------------------------------
# active, Stripe unreachable: 202, then the final invoice once

{
    active_sub('sub-b');
    $t->redis('HINCRBY', 'billing:usage:sub-b',
        $t->redis('HGET', 'billing:sub:sub-b', 'period_start'), 3);
    $s->fail(method => 'POST', status => 503, times => 0);
    my $r = api('DELETE', 'subscriptions/sub-b');
    is $r->{status}, 202, 'Stripe down: 202' or diag $r->{content};
    is $r->{json}{state}, 'cancelled', '... cancelled';
    is $r->{json}{invoice}, undef, '... no invoice yet';
    is gate('sub-b')->{status}, 403, '... the gate refuses';
    $s->clear_rules;
    ok wait_until(sub {
        my $f = invoices_kind('sub-b', 'final')->[0];
        $f && stripe_status($f->{id}) ne 'draft' }, 30),
        'Stripe back: the scheduler issues the final invoice';
    sleep 1.5;
    is scalar @{ invoices_kind('sub-b', 'final') }, 1, '... once';
    my ($u) = @{ items_of_invoice(invoices_kind('sub-b', 'final')->[0]) };
    is $u->{quantity}, 3, '... with the units';
    my $again = api('DELETE', 'subscriptions/sub-b');
    is $again->{status}, 200, '... a repeat now answers 200';
    is $again->{json}{invoice}{kind}, 'final', '... with the final invoice';
}


# ---------------------------------------------------------------------
# pending: the first invoice is voided

{
    my $inv = create_sub('sub-p');
    is gate('sub-p')->{status}, 402, 'pending: 402 at the gate';

    # Stripe refusing the void: 502, nothing changed
    $s->fail(method => 'POST', path => '/void$', status => 400, times => 1,
        body => { error => { type => 'invalid_request_error',
                             message => 'cannot void' } });
    my $f = api('DELETE', 'subscriptions/sub-p');
    is $f->{status}, 502, 'void refused: 502' or diag $f->{content};
    is $f->{json}{error}{code}, 'stripe_error', '... stripe_error';
    is $t->redis('HGET', 'billing:sub:sub-p', 'state'), 'pending',
        '... still pending';

    my $r = api('DELETE', 'subscriptions/sub-p');
    is $r->{status}, 200, 'pending: 200' or diag $r->{content};
    is $r->{json}{state}, 'cancelled', '... cancelled';
    is $r->{json}{invoice}, undef, '... no final invoice';
    my @void = grep { $_->{path} eq "/v1/invoices/$inv/void" && $_->{executed} }
        @{ $s->requests };
    is scalar @void, 1, '... the first invoice voided at Stripe';
    like $void[0]{headers}{'idempotency-key'} // '', qr/sub-p:\d+:void$/,
        '... with an idempotency key';
    is stripe_status($inv), 'void', '... void there';
    my ($i) = grep { $_->{kind} eq 'initial' } @{ $r->{json}{invoices} };
    is $i->{status}, 'void', '... and here';
    is scalar @{ invoices_kind('sub-p', 'final') }, 0, '... no final invoice';
    my $g = gate('sub-p');
    is $g->{json}{error}{code}, 'subscription_cancelled', '... the gate: cancelled';

    my $n = @{ $s->requests };
    my $again = api('DELETE', 'subscriptions/sub-p');
    is $again->{status}, 200, 'repeat: 200';
    is scalar @{ $s->requests }, $n, '... nothing at Stripe';
}


# ---------------------------------------------------------------------
# pending, its first invoice voided at Stripe already (the Dashboard):
# Stripe refuses the void, its invoice says void, the cancellation goes on

{
    my $inv = create_sub('sub-pv');
    my $v = HTTP::Tiny->new->post($s->url . "/v1/invoices/$inv/void",
        { headers => { Authorization => "Bearer $KEY",
                       'Stripe-Version' => '2022-11-15' } });
    ok $v->{success}, 'voided at Stripe by hand' or diag $v->{content};
    my $r = api('DELETE', 'subscriptions/sub-pv');
    is $r->{status}, 200, 'DELETE: 200 all the same' or diag $r->{content};
    is $r->{json}{state}, 'cancelled', '... cancelled';
    my ($i) = grep { $_->{kind} eq 'initial' } @{ $r->{json}{invoices} };
    is $i->{status}, 'void', '... the first invoice void';
    ok scalar(grep { $_->{method} eq 'GET' && $_->{path} eq "/v1/invoices/$inv" }
        @{ $s->requests }), '... as Stripe said when asked';
}


# ---------------------------------------------------------------------
# pending, cancelled while its first invoice is being made: that
# invoice is never finalized (nothing to pay for a cancelled one)

{
    $s->fail(method => 'POST', path => '^/v1/invoiceitems$', delay => 0.8,
        times => 1);
    my $pid = fork // die "fork: $!";
    if ($pid == 0) {
        my $r = api('POST', 'subscriptions',
            subscription_request('sub-race', 'org-race',
                                 metering_period => "$P"));
        $t->write_file('race.status', $r->{status} . ' '
            . ($r->{json}{state} // ''));
        POSIX::_exit(0);
    }
    ok wait_until(sub {
        grep { $_->{path} eq '/v1/invoiceitems'
            && ($_->{params}{'metadata[billing_subscription]'} // '') eq ''
            && defined $_->{time} } @{ $s->requests };
        $t->redis('HGET', 'billing:sub:sub-race', 'initial_invoice') }, 10),
        'a first invoice is being made';
    my $d = api('DELETE', 'subscriptions/sub-race');
    is $d->{status}, 200, 'DELETE meanwhile: 200' or diag $d->{content};
    is $d->{json}{state}, 'cancelled', '... cancelled';
    waitpid $pid, 0;
    like $t->read_file('race.status'), qr/^20[01] cancelled$/,
        '... the POST answers with the cancelled subscription';
    my $inv = $t->redis('HGET', 'billing:sub:sub-race', 'initial_invoice');
    ok !grep({ $_->{path} eq "/v1/invoices/$inv/finalize" } @{ $s->requests }),
        '... its first invoice was not finalized';
    is stripe_status($inv), 'draft', '... it stays a draft';
    $s->clear_rules;
}


# ---------------------------------------------------------------------
# payment_failed: nothing at Stripe

{
    my $inv = create_sub('sub-pf');
    my $w = $t->webhook(invoice_event(type => 'invoice.voided',
        invoice_id => $inv, subscription => 'sub-pf', kind => 'initial'));
    is $w->{status}, 200, 'sub-pf: voided';
    is $t->redis('HGET', 'billing:sub:sub-pf', 'state'), 'payment_failed',
        '... payment_failed';
    my $n = @{ $s->requests };
    my $v = $t->redis('HGET', 'billing:sub:sub-pf', 'version') // 0;
    my $r = api('DELETE', 'subscriptions/sub-pf');
    is $r->{status}, 200, 'payment_failed: 200';
    is $t->redis('HGET', 'billing:sub:sub-pf', 'version'), $v + 1,
        '... the cancellation incremented its version';
    is $r->{json}{state}, 'cancelled', '... cancelled';
    is $r->{json}{invoice}, undef, '... no invoice';
    is scalar @{ $s->requests }, $n, '... nothing at Stripe';
}

$s->stop;
$t->done;
done_testing;
