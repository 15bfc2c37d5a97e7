# The scheduler on two nodes of two workers each, sharing one Redis:
# a hundred subscriptions whose periods end at the same second are each
# invoiced once per period while Stripe rate-limits (429), and the API
# is still served meanwhile; units that reach Redis after a final
# invoice go on one more final invoice; a node with "billing_scheduler
# off" issues nothing.

use strict;
use warnings;

use JSON::PP;
use Test::More;
use Time::HiRes qw(time sleep);

use BillingTest qw(:all);
use StripeMock;

my $t1 = BillingTest->new;
my $t2 = BillingTest->new;
my $t3 = BillingTest->new;

my $f = $t1->billing_files;
$_->billing_files(%$f) for $t2, $t3;
my $s = StripeMock->start(dir => $t1->dir, key => $f->{key});

my $CONF = <<'EOF';
    billing_redis 127.0.0.1:%%REDIS_PORT%% timeout=1s;
    billing_stripe_webhook_secret_file %%DIR%%/whsec;
    billing_stripe_key_file %%DIR%%/stripe.key;
    billing_api_token_file %%DIR%%/api.token;
    billing_stripe_timeout 3s;
    billing_invoice_delay 1s;
    billing_scheduler %%SCHEDULER%%;

    server {
        listen 127.0.0.1:%%PORT%% reuseport;

        location = /stripe/webhook { billing_webhook; }
        location /billing/ { billing_api; }

        location /_billing_stripe/ {
            internal;
            proxy_pass http://127.0.0.1:%%STRIPE_PORT%%/;
            proxy_read_timeout 2s;
        }
    }
EOF

$t1->start_redis;

my $P = 4;
my $N = 100;
my $plan = '{"base_price":1500,"currency":"usd","days_until_due":30,'
    . '"metering_period":"4","unit":"request","unit_price":"0.25"}';

# a node that takes no part: it must issue nothing
$t3->start_nginx($CONF, REDIS_PORT => $t1->redis_port,
    STRIPE_PORT => $s->port, SCHEDULER => 'off', workers => 1);

# a hundred active subscriptions, all started at the same second, as
# if their first invoices were paid together
my $start = int(time) + 1;
for my $i (1 .. $N) {
    my $id = "sub-m$i";
    $t1->redis('HSET', "billing:sub:$id", id => $id, state => 'active',
        consumer_org => "org-m$i", email => "ops\@m$i.test",
        name => "M $i", plan => $plan, created_at => $start - 10,
        period => $P, period_start => $start);
    $t1->redis('HINCRBY', "billing:usage:$id", $start, $i);
    $t1->redis('ZADD', 'billing:due', $start, $id);
}

$t1->start_nginx($CONF, STRIPE_PORT => $s->port, SCHEDULER => 'on',
    workers => 2);
$t2->start_nginx($CONF, REDIS_PORT => $t1->redis_port,
    STRIPE_PORT => $s->port, SCHEDULER => 'on', workers => 2);

sub period_invoices {
    my %by;
    for my $inv (@{ $s->objects('invoice') }) {
        next unless ($inv->{metadata}{billing_kind} // '') eq 'period';
        push @{ $by{ $inv->{metadata}{billing_subscription} }
            { $inv->{metadata}{billing_period_start} } }, $inv;
    }
    return \%by;
}

# the API is served while the scheduler works
ok wait_until(sub { time >= $start + $P + 1 }, 10), 'the periods ended';
my $r = $t2->api('POST', 'subscriptions',
    subscription_request('sub-new', 'org-new'));
is $r->{status}, 201, 'the API answers during the storm' or diag $r->{content};

ok wait_until(sub {
    my $by = period_invoices();
    my $n = grep { $by->{"sub-m$_"} && $by->{"sub-m$_"}{$start} } 1 .. $N;
    $n == $N }, 120), "all $N first periods invoiced"
    or diag scalar(keys %{ period_invoices() }) . ' subscriptions invoiced';

# Stripe's rate limit, on and off, through the second period ends
$s->fail(method => 'POST', status => 429, times => 80);

ok wait_until(sub {
    my $by = period_invoices();
    my $n = grep { $by->{"sub-m$_"} && $by->{"sub-m$_"}{$start + $P} } 1 .. $N;
    $n == $N }, 120), "all $N second periods invoiced, through 429s";

# finalized, each (the last calls may still be backing off)
# (later periods keep ending meanwhile: the first two are looked at)
ok wait_until(sub {
    my $by = period_invoices();
    !grep { $_->{status} eq 'draft' } map { @$_ } grep { defined }
        map { @{$_}{ $start, $start + $P } } values %$by }, 120),
    'every invoice of the first two periods finalized';

my $by = period_invoices();
my ($dups, $wrong, $open) = (0, 0, 0);
my %items;
push @{ $items{ $_->{invoice} } }, $_ for @{ $s->objects('invoiceitem') };
for my $i (1 .. $N) {
    $dups++ for grep { @$_ != 1 } values %{ $by->{"sub-m$i"} };
    for my $ps ($start, $start + $P) {
        my @invs = @{ $by->{"sub-m$i"}{$ps} || [ {} ] };
        my ($u) = grep { $_->{description} =~ /^Usage/ }
            @{ $items{ $invs[0]{id} // '' } || [] };
        my $want = $ps == $start ? $i : 0;
        $wrong++ unless $u && $u->{quantity} == $want
            && @{ $items{ $invs[0]{id} } } == 2;
        $open++ if ($invs[0]{status} // 'draft') eq 'draft';
    }
}
is $dups, 0, 'no period invoiced twice, with four workers on two nodes';
is $wrong, 0, 'each with its base price and its own units';
is $open, 0, 'each finalized';
ok scalar(grep { $_->{status} == 429 } @{ $s->requests }) > 0,
    'Stripe did rate-limit';
ok $t3->error_log !~ /billing scheduler: issuing/,
    'the node with billing_scheduler off issued nothing';

my %keys;
my $dupkeys = 0;
for my $q (@{ $s->requests }) {
    next unless $q->{method} eq 'POST' && $q->{executed} && !$q->{replayed};
    my $k = $q->{headers}{'idempotency-key'} // next;
    $dupkeys++ if $keys{$k}++;
}
is $dupkeys, 0, 'no Stripe object made twice (each key executed once)';


# ---------------------------------------------------------------------
# late units after the final invoice: one more final invoice

{
    my $c = $t1->api('DELETE', 'subscriptions/sub-m7');
    is $c->{status}, 200, 'sub-m7 cancelled' or diag $c->{content};
    is $c->{json}{invoice}{kind}, 'final', '... its final invoice';
    my $cur = $t1->redis('HGET', 'billing:sub:sub-m7', 'period_start');
    my $ps = $c->{json}{invoice}{period_start};
    # as the meter's flush does for a cancelled subscription
    $t1->redis('HINCRBY', 'billing:usage:sub-m7', $ps, 9);
    $t1->redis('ZADD', 'billing:due', 'NX', int(time), 'sub-m7');

    my $finals = sub {
        [ grep { ($_->{metadata}{billing_kind} // '') eq 'final' }
            @{ $s->invoices_of('sub-m7') } ] };
    ok wait_until(sub { @{ $finals->() } >= 2 }, 90),
        'units after the final invoice: one more final invoice';
    sleep 2;
    is scalar @{ $finals->() }, 2, '... one';
    my $last = $finals->()->[1];
    my ($u) = grep { $_->{invoice} eq $last->{id} } @{ $s->objects('invoiceitem') };
    is $u && $u->{quantity}, 9, '... with those units';
    is $t1->redis('ZSCORE', 'billing:due', 'sub-m7'), undef,
        '... and nothing more is due';
}

$s->stop;
$_->done for $t1, $t2, $t3;
done_testing;
