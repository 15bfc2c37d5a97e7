# Period-end invoices: issued by the module itself from timers, one per
# period, with the base price of the period that starts and the usage of
# the one that ended; late units on the next invoice; Stripe failing at
# each step and rate-limiting; every node down over two period ends,
# then catch-up, oldest first; GET's current_period.
#
# Units are written to Redis as the meter's flush would (t/6x test the
# meter itself), so that each invoice's quantity is known exactly.

use strict;
use warnings;

use JSON::PP;
use Test::More;
use Time::HiRes qw(time sleep);

use BillingTest qw(:all);
use StripeMock;

my $t = BillingTest->new;
my $f = $t->billing_files;
my $s = StripeMock->start(dir => $t->dir, key => $f->{key});

my $CONF = <<'EOF';
    billing_redis 127.0.0.1:%%REDIS_PORT%% timeout=1s;
    billing_stripe_webhook_secret_file %%DIR%%/whsec;
    billing_stripe_key_file %%DIR%%/stripe.key;
    billing_api_token_file %%DIR%%/api.token;
    billing_stripe_timeout 2s;
    billing_invoice_delay 1s;

    server {
        listen 127.0.0.1:%%PORT%% reuseport;

        location = /stripe/webhook { billing_webhook; }
        location /billing/ { billing_api; }

        location /_billing_stripe/ {
            internal;
            proxy_pass http://127.0.0.1:%%STRIPE_PORT%%/;
            proxy_read_timeout 1s;
        }
    }
EOF

$t->start_redis;
$t->start_nginx($CONF, STRIPE_PORT => $s->port, workers => 2);

my $P = 4;      # seconds per period

sub api { $t->api(@_) }

# a subscription made active: created through the API, its first
# invoice paid by a webhook; returns its period start
sub active_sub {
    my ($id, %plan) = @_;
    my $r = api('POST', 'subscriptions',
        subscription_request($id, "org-$id", metering_period => "$P", %plan));
    is $r->{status}, 201, "$id: created" or diag $r->{content};
    my $inv = $r->{json}{invoice}{id};
    my $w = $t->webhook(invoice_event(type => 'invoice.paid',
        invoice_id => $inv, subscription => $id, kind => 'initial',
        invoice => { amount_due => 1500, currency => 'usd' }));
    is $w->{status}, 200, "$id: paid" or diag $w->{content};
    my $start = $t->redis('HGET', "billing:sub:$id", 'period_start');
    ok $start && abs($start - time) < 5, "$id: its first period starts "
        . "at activation";
    return $start;
}

sub period_invoices {
    my ($id) = @_;
    return [ grep { ($_->{metadata}{billing_kind} // '') eq 'period' }
        @{ $s->invoices_of($id) } ];
}

sub usage_item {
    my ($inv) = @_;
    return grep { $_->{description} =~ /^Usage/ } @{ items_of_invoice($inv) };
}

sub items_of_invoice {
    my ($inv) = @_;
    return [ grep { $_->{invoice} eq $inv->{id} }
        @{ $s->objects('invoiceitem') } ];
}

# the units the meter would have sent for the period starting at $ps
sub add_units {
    my ($id, $ps, $n) = @_;
    $t->redis('HINCRBY', "billing:usage:$id", $ps, $n);
}

# every period invoice of $id: one per period, finalized, with its items
sub check_invoices {
    my ($id, $start, $what) = @_;
    my $invs = period_invoices($id);
    my %seen;
    for my $inv (@$invs) {
        my $ps = $inv->{metadata}{billing_period_start};
        ok !$seen{$ps}++, "$what: one invoice for the period at $ps";
    }
    return $invs;
}


# ---------------------------------------------------------------------
# periods end; each is invoiced once, base + usage

my $start = active_sub('sub-p1');
add_units('sub-p1', $start, 7);

ok wait_until(sub { @{ period_invoices('sub-p1') } >= 1 }, 15),
    'the first period is invoiced without any request';
my $inv = period_invoices('sub-p1')->[0];
is $inv->{metadata}{billing_period_start}, $start, '... its period start';
is $inv->{metadata}{billing_period_end}, $start + $P, '... its period end';
is $inv->{metadata}{billing_subscription}, 'sub-p1', '... the subscription';
is $inv->{collection_method}, 'send_invoice', '... sent, not charged';
ok wait_until(sub {
    my ($i) = grep { $_->{id} eq $inv->{id} } @{ $s->objects('invoice') };
    $i->{status} ne 'draft' }, 10), '... finalized';
ok time >= $start + $P + 1, '... not before the period end and the delay';

my @items = @{ items_of_invoice($inv) };
is scalar @items, 2, '... two items';
my ($base) = grep { $_->{description} eq 'Base price' } @items;
my ($usage) = usage_item($inv);
ok $base, '... a base price item';
is $base && $base->{amount}, 1500, '... base price';
is $base && $base->{period}{start}, $start + $P, '... for the period that starts';
is $base && $base->{period}{end}, $start + 2 * $P, '... until its end';
ok $usage, '... a usage item';
is $usage && $usage->{quantity}, 7, '... quantity = the units of the period';
is $usage && $usage->{unit_amount_decimal}, '0.25', '... at the unit price';
is $usage && $usage->{period}{start}, $start, '... for the period that ended';
is $usage && $usage->{period}{end}, $start + $P, '... until its end';

# the request that made it, exactly as the contract says
my ($req) = grep { $_->{method} eq 'POST' && $_->{path} eq '/v1/invoices'
    && ($_->{params}{'metadata[billing_kind]'} // '') eq 'period' }
    @{ $s->requests };
is $req->{params}{pending_invoice_items_behavior}, 'exclude',
    'invoice: pending items excluded';
like $req->{headers}{'idempotency-key'}, qr/sub-p1:\d+:period:$start:invoice$/,
    '... the idempotency key names subscription and period';

# ... and the second one: nothing used (quantity 0), late units of the
# first period (after its invoice) are on it
add_units('sub-p1', $start, 3);
ok wait_until(sub { @{ period_invoices('sub-p1') } >= 2 }, 15),
    'the second period is invoiced';
my $inv2 = period_invoices('sub-p1')->[1];
is $inv2->{metadata}{billing_period_start}, $start + $P,
    '... the next period';
($usage) = usage_item($inv2);
is $usage && $usage->{quantity}, 3, '... units that came late for the '
    . 'first period are billed on the next invoice, once';

# what is billed leaves the usage hash: it does not grow with the periods
{
    my $u = $t->redis_hash('billing:usage:sub-p1');
    ok !grep({ $_ < $start + $P } keys %$u),
        'the usage of invoiced periods is gone from Redis' or diag explain $u;
}

# GET: the invoices, the current period
my $g = api('GET', 'subscriptions/sub-p1');
is $g->{status}, 200, 'GET: 200';
my $cp = $g->{json}{current_period};
ok $cp && $cp->{start} <= time && time < $cp->{end} + 1,
    '... current_period now' or diag explain $cp;
ok $cp && ($cp->{start} - $start) % $P == 0, '... on the period bounds';
add_units('sub-p1', $cp->{start}, 5) if $cp;
$g = api('GET', 'subscriptions/sub-p1');
is $g->{json}{current_period}{units}, 5,
    '... with the units that reached Redis'
    if $g->{json}{current_period}
       && $g->{json}{current_period}{start} == $cp->{start};
my @pinv = grep { $_->{kind} eq 'period' } @{ $g->{json}{invoices} };
ok @pinv >= 2, '... period invoices listed';
is $pinv[0]{period_start}, $start, '... with their period';
is $pinv[0]{units}, 7, '... and units';
is $pinv[0]{status}, 'open', '... finalized (open)';

# nothing twice, whatever the number of workers
check_invoices('sub-p1', $start, 'sub-p1');


# ---------------------------------------------------------------------
# Stripe failing: each step refused once (not retryable), then it works

for my $step (['POST', '^/v1/invoices$'], ['POST', '^/v1/invoiceitems$'],
              ['POST', '/finalize$'])
{
    my $id = 'sub-f' . ($step->[1] =~ /items/ ? 'i' : $step->[1] =~ /final/
        ? 'f' : 'n');
    my $st = active_sub($id);
    $s->fail(method => $step->[0], path => $step->[1], status => 400,
        times => 2, body => { error => { type => 'invalid_request_error',
                                         message => 'try later' } });
    ok wait_until(sub {
        my $i = period_invoices($id)->[0] or return 0;
        my ($o) = grep { $_->{id} eq $i->{id} } @{ $s->objects('invoice') };
        $o->{status} ne 'draft' }, 30),
        "$id: Stripe refusing $step->[1] twice: the invoice is issued later";
    my $first = period_invoices($id)->[0];
    is scalar(grep { $_->{metadata}{billing_period_start} == $st }
        @{ period_invoices($id) }), 1, '... once';
    is scalar @{ items_of_invoice($first) }, 2, '... with its two items';
    $s->clear_rules;
}


# ---------------------------------------------------------------------
# a 429 storm: backing off, then done

{
    my $st = active_sub('sub-429');
    $s->fail(method => 'POST', status => 429, times => 12);
    ok wait_until(sub {
        my $i = period_invoices('sub-429')->[0] or return 0;
        my ($o) = grep { $_->{id} eq $i->{id} } @{ $s->objects('invoice') };
        $o->{status} ne 'draft' }, 40), '429 storm: the invoice is issued';
    is scalar(grep { $_->{metadata}{billing_period_start} == $st }
        @{ period_invoices('sub-429') }), 1, '... once';
    $s->clear_rules;
}


# ---------------------------------------------------------------------
# every node down over two period ends: each invoiced, oldest first

{
    my $st = active_sub('sub-down');
    # wait for the first invoice, then stop
    ok wait_until(sub { @{ period_invoices('sub-down') } >= 1 }, 15),
        'sub-down: first period invoiced';
    $t->stop_nginx;
    my $n = @{ period_invoices('sub-down') };
    my $billed = $t->redis('HGET', 'billing:sub:sub-down', 'billed_through');
    add_units('sub-down', $st + $billed * $P, 2);
    add_units('sub-down', $st + ($billed + 1) * $P, 4);
    sleep 2 * $P + 1;
    $t->start_nginx($CONF, STRIPE_PORT => $s->port, workers => 2);
    ok wait_until(sub { @{ period_invoices('sub-down') } >= $n + 2 }, 20),
        'nodes back: the periods that ended meanwhile are invoiced';
    my @new = @{ period_invoices('sub-down') }[$n .. $n + 1];
    ok $new[0]{metadata}{billing_period_start}
        < $new[1]{metadata}{billing_period_start}, '... oldest first';
    my @q = map { my ($u) = usage_item($_); $u->{quantity} } @new;
    is "@q", '2 4', '... each with its own units';
    check_invoices('sub-down', $st, 'sub-down');
}

# a subscription claimed before 0.4 (its period start set at the claim,
# no "period"): activated, its periods start then, and it is scheduled
{
    my $plan = '{"base_price":1500,"currency":"usd","days_until_due":30,'
        . '"metering_period":"4","unit":"request","unit_price":"0.25"}';
    $t->redis('HSET', 'billing:sub:sub-old', id => 'sub-old',
        state => 'pending', consumer_org => 'org-old',
        email => 'ops@old.test', name => 'Old', plan => $plan,
        created_at => time - 86400, period_start => time - 86400,
        period_end => time + 86400, initial_invoice => 'in_oldoldold');
    my $w = $t->webhook(invoice_event(type => 'invoice.paid',
        invoice_id => 'in_oldoldold', subscription => 'sub-old',
        kind => 'initial'));
    is $w->{status}, 200, 'a subscription of 0.3: paid';
    my $h = $t->redis_hash('billing:sub:sub-old');
    is $h->{state}, 'active', '... active';
    ok abs($h->{period_start} - time) < 3, '... its periods start now';
    is $h->{period}, '4', '... its period from the plan';
    ok wait_until(sub { @{ period_invoices('sub-old') } >= 1 }, 20),
        '... and its first period is invoiced';
}

# every period of every subscription so far: once
check_invoices($_, 0, $_) for qw(sub-p1 sub-fi sub-ff sub-fn sub-429);

$s->stop;
$t->done;
done_testing;
