# billing_cache with 2 workers: a decision fetched by one worker serves
# the other (one Redis lookup for 40 requests spread over both); unknown
# ids cached negatively (one lookup for 50 requests) until negative_ttl
# or until their id is published on billing:events; a webhook dropping
# the shared entry for both workers.

use strict;
use warnings;

use Test::More;
use BillingTest qw(:all);
use Time::HiRes qw(time sleep);

my $SECRET = 'whsec_' . join '', map { ('a'..'z', 0..9)[rand 36] } 1 .. 32;

my $t = BillingTest->new;
$t->write_file('whsec', "$SECRET\n");
$t->secrets($SECRET);
$t->start_redis;
$t->start_nginx(<<'EOF', workers => 2);
    billing_redis 127.0.0.1:%%REDIS_PORT%% timeout=1s;
    billing_stripe_webhook_secret_file %%DIR%%/whsec;
    billing_portal_url https://billing.stripe.com/p/login/test_123;
    billing_cache zone=billing:1m ttl=10s negative_ttl=2s;

    log_format bypid '$pid $status $http_x_subscription_id';

    server {
        # reuseport: the kernel spreads new connections over the workers
        listen 127.0.0.1:%%PORT%% reuseport;

        access_log %%DIR%%/pid.log bypid;

        location = /stripe/webhook {
            billing_webhook;
        }

        location /gated/ {
            billing_gate $http_x_subscription_id;
            return 200 "gated\n";
        }
    }
EOF

ok(wait_until(sub {
    my $r = $t->redis('PUBSUB', 'NUMSUB', 'billing:events');
    ($r->[1] // 0) == 2;
}, 5), 'both workers subscribed to billing:events');

my $mon = $t->redis_monitor;

sub gate {
    my ($id) = @_;
    # http() opens a new connection every time
    return $t->http('GET', '/gated/x', headers => { 'X-Subscription-Id' => $id });
}

sub served_by {
    my ($id) = @_;
    my %pids;
    for (split /\n/, $t->read_file('pid.log') // '') {
        my ($pid, $status, $sub) = split / /;
        $pids{$pid}++ if defined $sub && $sub eq $id;
    }
    return \%pids;
}

# ---------------------------------------------------------------------
# one lookup serves both workers

{
    $t->redis('HSET', 'billing:sub:sub_shared', state => 'active');
    $t->gate_lookups($mon);                                      # none before

    my @st = map { gate('sub_shared')->{status} } 1 .. 40;
    is(scalar(grep { $_ == 200 } @st), 40, '40 requests on new connections: all 200');

    my $pids;
    wait_until(sub {
        $pids = served_by('sub_shared');
        my $n = 0;
        $n += $_ for values %$pids;
        $n >= 40;
    }, 5);
    cmp_ok(scalar(keys %$pids), '>=', 2, 'served by both workers')
        or diag(explain $pids);
    is($t->gate_lookups($mon)->{sub_shared} // 0, 1, 'Redis saw exactly one gate lookup for them');
}

# ---------------------------------------------------------------------
# a webhook on this node: the shared entry is dropped for both workers

{
    $t->redis('HSET', 'billing:sub:sub_hook', state => 'pending',
        initial_invoice => 'in_hook');
    $t->redis('HSET', 'billing:invoice:in_hook', status => 'open',
        subscription => 'sub_hook', kind => 'initial');
    my @st = map { gate('sub_hook')->{status} } 1 .. 10;
    is_deeply(\@st, [ (402) x 10 ], 'sub_hook pending: 402 on both workers');
    is($t->gate_lookups($mon)->{sub_hook} // 0, 1, 'sub_hook: one lookup');

    my $r = $t->webhook(invoice_event(type => 'invoice.paid',
        invoice_id => 'in_hook', subscription => 'sub_hook', kind => 'initial'));
    is($r->{status}, 200, 'webhook invoice.paid: 200');

    @st = map { gate('sub_hook')->{status} } 1 .. 10;
    is_deeply(\@st, [ (200) x 10 ],
        'sub_hook paid: the very next requests, on both workers, 200');
}

# ---------------------------------------------------------------------
# negative cache

{
    $t->gate_lookups($mon);

    my $first = time;
    my @st;
    for (1 .. 50) {
        push @st, gate('neg_pub')->{status};
        push @st, gate('neg_ttl')->{status};
    }
    my $spent = time - $first;
    is(scalar(grep { $_ == 403 } @st), 100, 'unknown ids, 50 requests each: all 403');
    cmp_ok($spent, '<', 1.5, 'they took less than negative_ttl (2 s)')
        or diag("took $spent s");
    my $n = $t->gate_lookups($mon);
    is($n->{neg_pub} // 0, 1, 'neg_pub: one Redis lookup for 50 requests');
    is($n->{neg_ttl} // 0, 1, 'neg_ttl: one Redis lookup for 50 requests');
    cmp_ok(scalar(keys %{ served_by('neg_pub') }), '>=', 2,
        'neg_pub: served by both workers');

    # the subscriptions come to exist, without notice
    $t->redis('HSET', "billing:sub:$_", state => 'active') for qw(neg_pub neg_ttl);

    SKIP: {
        skip 'too slow to see the negative entries still fresh', 2
            if time - $first > 1.7;
        is(gate('neg_pub')->{status}, 403, 'neg_pub created without notice: still 403');
        is(gate('neg_ttl')->{status}, 403, 'neg_ttl created without notice: still 403');
    }

    # a PUBLISH: seen within a second
    $t->redis('PUBLISH', 'billing:events', 'neg_pub');
    my $t0 = time;
    my $s;
    while (time - $t0 < 3) {
        $s = gate('neg_pub')->{status};
        last if $s == 200;
        sleep 0.02;
    }
    is($s, 200, 'neg_pub published: 200');
    cmp_ok(time - $t0, '<', 1.0, 'neg_pub: within 1 s of the PUBLISH');
    @st = map { gate('neg_pub')->{status} } 1 .. 10;
    is_deeply(\@st, [ (200) x 10 ], 'neg_pub: 200 on both workers from then on');

    # no PUBLISH: seen when negative_ttl has passed, not before
    my $seen;
    while (time - $first < 4) {
        if (gate('neg_ttl')->{status} == 200) {
            $seen = time - $first;
            last;
        }
        sleep 0.05;
    }
    ok(defined $seen, 'neg_ttl: 200 once negative_ttl has passed');
    cmp_ok($seen // 0, '>=', 1.9, 'neg_ttl: not before negative_ttl (2 s)')
        or diag("after $seen s");
    cmp_ok($seen // 99, '<', 3.0, 'neg_ttl: soon after it');
}

$t->done;
done_testing;
