# billing_cache with 2 workers: a decision fetched by one worker serves
# the other (one Redis lookup for 40 requests spread over both); unknown
# ids cached negatively (one lookup for 50 requests) until negative_ttl
# or until their id is published on billing:events; a webhook dropping
# the shared entry for both workers.
#
# No check races the clock: the ttls are an hour where an entry must
# still be fresh, so that a slow machine sees the same as a fast one,
# and nginx is started again with negative_ttl=2s to see an entry
# expire, where waiting longer only makes the answer surer.

use strict;
use warnings;

use Test::More;
use BillingTest qw(:all);
use Time::HiRes qw(time sleep);

my $SECRET = 'whsec_' . join '', map { ('a'..'z', 0..9)[rand 36] } 1 .. 32;

my $HTTP = <<'EOF';
    billing_redis 127.0.0.1:%%REDIS_PORT%% timeout=1s;
    billing_stripe_webhook_secret_file %%DIR%%/whsec;
    billing_portal_url https://billing.stripe.com/p/login/test_123;
    billing_cache zone=billing:1m ttl=1h negative_ttl=%%NEGATIVE_TTL%%;

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

my $t = BillingTest->new;
$t->write_file('whsec', "$SECRET\n");
$t->secrets($SECRET);
$t->start_redis;

# Starts nginx with 2 workers and waits until both hold their
# subscription to billing:events: until a worker has it, it trusts no
# cached entry older than a second (README, billing_cache), which would
# make the counts of lookups below depend on the machine's speed.
sub start {
    my ($negative_ttl) = @_;

    # a worker logs this line once its SUBSCRIBE is answered
    my $re = qr/billing redis \S+: connected, subscribed/;
    my $before = () = $t->error_log =~ /$re/g;

    $t->start_nginx($HTTP, workers => 2, NEGATIVE_TTL => $negative_ttl);

    ok(wait_until(sub {
        my $n = () = $t->error_log =~ /$re/g;
        $n >= $before + 2;
    }, 10), "negative_ttl=$negative_ttl: both workers subscribed");

    ok(wait_until(sub {
        my $r = $t->redis('PUBSUB', 'NUMSUB', 'billing:events');
        ($r->[1] // 0) == 2;
    }, 10), "negative_ttl=$negative_ttl: Redis counts both subscriptions");
}

start('1h');

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
# negative cache, negative_ttl=1h: unknown ids stay unknown until their
# id is published

{
    $t->gate_lookups($mon);

    my @st;
    for (1 .. 50) {
        push @st, gate('neg_pub')->{status};
        push @st, gate('neg_other')->{status};
    }
    is(scalar(grep { $_ == 403 } @st), 100, 'unknown ids, 50 requests each: all 403');
    my $n = $t->gate_lookups($mon);
    is($n->{neg_pub} // 0, 1, 'neg_pub: one Redis lookup for 50 requests');
    is($n->{neg_other} // 0, 1, 'neg_other: one Redis lookup for 50 requests');
    cmp_ok(scalar(keys %{ served_by('neg_pub') }), '>=', 2,
        'neg_pub: served by both workers');

    # the subscriptions come to exist, without notice
    $t->redis('HSET', "billing:sub:$_", state => 'active') for qw(neg_pub neg_other);

    is(gate('neg_pub')->{status}, 403, 'neg_pub created without notice: still 403');
    is(gate('neg_other')->{status}, 403, 'neg_other created without notice: still 403');

    # a PUBLISH drops the entry, on both workers: with an hour of
    # negative_ttl left, nothing else can explain a 200 (how soon is not
    # checked: a timing assertion has no place in make test)
    $t->redis('PUBLISH', 'billing:events', 'neg_pub');
    my $t0 = time;
    ok(wait_until(sub { gate('neg_pub')->{status} == 200 }, 10, 0.02),
        'neg_pub published: 200');
    note(sprintf 'neg_pub: 200 %.3f s after the PUBLISH', time - $t0);
    @st = map { gate('neg_pub')->{status} } 1 .. 10;
    is_deeply(\@st, [ (200) x 10 ], 'neg_pub: 200 on both workers from then on');
    is(gate('neg_other')->{status}, 403,
        'neg_other, not published: still 403 (only the published id dropped)');
    is($t->gate_lookups($mon)->{neg_other} // 0, 0,
        'neg_other: still no second lookup');
}

# ---------------------------------------------------------------------
# negative cache, negative_ttl=2s: an unknown id is asked again once
# negative_ttl has passed, not before

$t->stop_nginx;
start('2s');

{
    $t->gate_lookups($mon);

    # the entry is made after $before: it cannot expire before
    # $before + 2 s, however slow the machine (a 50 ms margin for the
    # clocks: nginx counts in milliseconds of its own)
    my $before = time;
    is(gate('neg_ttl')->{status}, 403, 'neg_ttl unknown: 403');

    # the subscription comes to exist, without notice
    $t->redis('HSET', 'billing:sub:neg_ttl', state => 'active');

    my @st;
    ok(wait_until(sub {
        push @st, gate('neg_ttl')->{status};
        $st[-1] == 200;
    }, 20, 0.05), 'neg_ttl: 200 once negative_ttl has passed');
    my $seen = time - $before;
    cmp_ok($seen, '>=', 1.95, 'neg_ttl: not before negative_ttl (2 s)')
        or diag("after $seen s");
    is_deeply([ grep { $_ != 403 } @st[0 .. $#st - 1] ], [],
        'neg_ttl: 403 until then');
    is($t->gate_lookups($mon)->{neg_ttl} // 0, 2,
        'neg_ttl: two lookups, the second once the first expired');
}

$t->done;
done_testing;
