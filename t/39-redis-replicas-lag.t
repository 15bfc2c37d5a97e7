# billing_redis replicas=1 when the replica stops answering: a primary and
# its replica (real redis-server processes, no Sentinel), one worker.
#
# - Redis holds the connection inside WAIT: with the replica stopped
#   (SIGSTOP), a burst of concurrent webhooks is answered 503 within
#   about the timeout, each of them (not one WAIT after another), and the
#   gate's lookups, cached or not, are answered meanwhile: they write
#   nothing and wait for no replica.
# - While the replica lags, writes fail at once (logged at most once a
#   second); one probe at a time finds it back, and webhooks are 200
#   again.
#
# Timing checks have generous bounds (3x the timeout); none is tight.

use strict;
use warnings;

use Test::More;
use BillingTest qw(:all);
use BillingSentinel;
use HTTP::Tiny;
use POSIX ();
use Time::HiRes qw(time sleep);

my $SECRET = 'whsec_' . random_id('', 32);
my $TIMEOUT = 1;

my $t = BillingTest->new;
$t->write_file('whsec', "$SECRET\n");
$t->secrets($SECRET);

my $s = BillingSentinel->new($t);
$s->start_redis('a');
$s->start_redis('b', replicaof => 'a');

ok(wait_until(sub { $s->replicas_up('a') == 1 }, 20), 'the replica in sync');

$t->start_nginx(<<'EOF', workers => 1, A => $s->port('a'));
    billing_redis 127.0.0.1:%%A%% replicas=1 connect_timeout=500ms
                  timeout=1s;
    billing_stripe_webhook_secret_file %%DIR%%/whsec;
    billing_portal_url https://billing.stripe.com/p/login/test_123;
    billing_cache zone=billing:1m ttl=1h stale=1h;
    billing_scheduler off;
    billing_meter_flush 1h;

    server {
        listen 127.0.0.1:%%PORT%%;

        location = /stripe/webhook {
            billing_webhook;
        }

        location /gated/ {
            billing_gate $http_x_subscription_id;
            billing_meter off;
            return 200 "gated\n";
        }
    }
EOF

for my $id ('warm', map { "cold$_" } 1 .. 6) {
    $s->cmd('a', 'HSET', "billing:sub:$id", 'state', 'active', 'version', 1);
}

sub gate {
    my ($id) = @_;
    return $t->http('GET', '/gated/x',
        headers => { 'X-Subscription-Id' => $id })->{status};
}

sub hook {
    my ($inv, %o) = @_;
    return $t->webhook(invoice_event(type => 'invoice.finalized',
        invoice_id => $inv), %o)->{status};
}

is(gate('warm'), 200, 'the gate: warm 200 (now cached)');
is(hook('in_before'), 200, 'a webhook: 200');
is($s->cmd('b', 'HGET', 'billing:invoice:in_before', 'status'), 'open',
    'on the replica too');

# $n requests at once, each in a child of its own: [ what, status, secs ]
sub burst {
    my (@reqs) = @_;
    my $go = time + 0.5;
    my @kids;
    for my $i (0 .. $#reqs) {
        my $out = $t->path("burst-$i.out");
        unlink $out;
        my $pid = fork;
        die "fork: $!" unless defined $pid;
        if ($pid == 0) {
            my ($kind, $arg) = @{ $reqs[$i] };
            my $ua = HTTP::Tiny->new(timeout => 20);
            my ($url, %opt) = ("http://127.0.0.1:" . $t->port);
            if ($kind eq 'hook') {
                my $body = invoice_event(type => 'invoice.finalized',
                    invoice_id => $arg);
                $url .= '/stripe/webhook';
                %opt = (content => $body, headers => {
                    'Content-Type' => 'application/json',
                    'Stripe-Signature' => stripe_signature_header(
                        secrets => [$SECRET], body => $body) });
            } else {
                $url .= '/gated/x';
                %opt = (headers => { 'X-Subscription-Id' => $arg });
            }
            sleep($go - time) if $go > time;
            my $start = time;
            my $res = $kind eq 'hook' ? $ua->post($url, \%opt)
                                      : $ua->get($url, \%opt);
            open my $fh, '>', $out or POSIX::_exit(1);
            printf $fh "%s %s %d %.3f\n", $kind, $arg, $res->{status},
                time - $start;
            close $fh;
            POSIX::_exit(0);
        }
        push @kids, [ $pid, $out ];
    }
    my @r;
    for my $k (@kids) {
        waitpid($k->[0], 0);
        my $l = $t->read_file($k->[1]) // '';
        push @r, [ split ' ', $l ];
    }
    return @r;
}

{
    kill 'STOP', $s->pid('b');

    my @r = burst((map { [ 'hook', "in_lag_$_" ] } 1 .. 12),
                  [ 'gate', 'warm' ], [ 'gate', 'warm' ],
                  (map { [ 'gate', "cold$_" ] } 1 .. 6));

    my @hooks = grep { $_->[0] eq 'hook' } @r;
    my @gates = grep { $_->[0] eq 'gate' } @r;
    note(join "\n", map { "@$_" } @r);

    is(scalar @hooks, 12, 'lagging: 12 webhooks answered');
    is(scalar(grep { $_->[2] == 503 } @hooks), 12,
        'lagging: every webhook 503');
    my @slow = grep { $_->[3] > 3 * $TIMEOUT } @hooks;
    is(scalar @slow, 0, 'lagging: every webhook answered within 3x timeout')
        or diag(join ' ', map { $_->[3] } @hooks);

    is(scalar @gates, 8, 'lagging: 8 gate lookups answered');
    is(scalar(grep { $_->[2] == 200 } @gates), 8,
        'lagging: the gate answers 200, cached or not');
    @slow = grep { $_->[3] > 3 * $TIMEOUT } @gates;
    is(scalar @slow, 0, 'lagging: every gate lookup within 3x timeout')
        or diag(join ' ', map { $_->[3] } @gates);

    # a lookup now waits for no WAIT at all
    my $start = time;
    is(gate('cold1'), 200, 'lagging: a gate lookup afterwards: 200');
    cmp_ok(time - $start, '<', $TIMEOUT, 'lagging: ... without waiting');

    # writes fail at once while the replica lags (the probe aside)
    my (@fast, $i);
    my $until = time + 2.5;
    while (time < $until) {
        my $st = time;
        my $status = hook('in_fast_' . ++$i);
        push @fast, [ $status, time - $st ];
        sleep 0.05;
    }
    is(scalar(grep { $_->[0] != 503 } @fast), 0,
        'lagging: later webhooks 503 too');
    is(scalar(grep { $_->[1] > 3 * $TIMEOUT } @fast), 0,
        'lagging: within 3x timeout')
        or diag(join ' ', map { $_->[1] } @fast);

    like($t->error_log, qr/\[error\].*billing redis 127\.0\.0\.1:\d+: 0 of 1 replicas acknowledged a command in time: failed/,
        'lagging: the failed WAIT logged');
    like($t->error_log, qr/\[error\].*fewer than 1 replicas acknowledge, writes fail at once for now/,
        'lagging: the fast failures logged');

    my @lines = $t->error_log =~ /^(\S+ \S+) \[error\].*writes fail at once/mg;
    my %per_second;
    $per_second{$_}++ for @lines;
    is(scalar(grep { $_ > 1 } values %per_second), 0,
        'lagging: the fast failures logged at most once a second');

    kill 'CONT', $s->pid('b');

    ok(wait_until(sub { hook('in_back') == 200 }, 15, 0.2),
        'the replica back: a webhook 200');
    is($s->cmd('b', 'HGET', 'billing:invoice:in_back', 'status'), 'open',
        'the replica back: on the replica');
    like($t->error_log, qr/\[notice\].*1 replicas acknowledge again/,
        'the replica back: logged');
}

$t->stop_nginx;
$s->stop_all;
$t->done;
done_testing;
