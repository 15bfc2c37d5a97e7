# billing_meter when Redis cannot answer (billing_redis timeout=200ms),
# under load on one node of two workers: Redis frozen (SIGSTOP) past
# the timeout, so that flushes written meanwhile are executed after the
# thaw with nobody reading their replies, and resent with the same flush
# id; then Redis stopped and started again (its AOF keeps the data).
# Every unit a client was served is counted, once. Then a graceful stop
# while Redis is down: the worker gives up at its deadline and says
# what is lost; and a reload while Redis is down: the old workers leave
# their counts in the zone, which the new ones send.

use strict;
use warnings;

use Test::More;
use BillingTest qw(:all);
use Time::HiRes qw(time sleep);

my $t = BillingTest->new;
$t->start_redis(args => [ '--appendonly', 'yes', '--appendfsync', 'always' ]);

my $HTTP = <<'EOF';
    billing_redis 127.0.0.1:%%REDIS_PORT%% timeout=200ms;
    billing_cache zone=billing:1m ttl=30s stale=120s;
    billing_meter_flush %%FLUSH%%;

    server {
        listen 127.0.0.1:%%PORT%%;

        location /on/ {
            billing_gate $http_x_subscription_id;
            return 200 "ok\n";
        }
    }
EOF

my $T0 = int(time) - 1;
my @SUBS = map { random_id("sub-r$_-", 8) } 1 .. 3;
$t->redis('HSET', "billing:sub:$_", state => 'active', period_start => $T0,
    period => 'month') for @SUBS;

$t->start_nginx($HTTP, workers => 2, FLUSH => '300ms');

sub total {
    my $n = 0;
    for my $sub (@_) {
        my $u = $t->redis_hash("billing:usage:$sub");
        $n += $_ for values %$u;
    }
    return $n;
}

my $load = $t->load_start('/on/x', clients => 3, subs => \@SUBS,
    pause => 0.005);

ok wait_until(sub { total(@SUBS) > 0 }, 10), 'counts reach Redis';

# frozen: the flushes written meanwhile run after the thaw, unanswered
my $mon = $t->redis_monitor;
$t->monitor_lines($mon);
$t->freeze_redis;
sleep 1.5;
$t->thaw_redis;

ok wait_until(sub {
    my $n = () = $t->error_log =~ /billing meter: Redis answers again/g;
    $n >= 2;
}, 10), 'both workers sent again after the thaw';

# each batch is named by its worker's flush id and its number, the
# script's last two arguments
my %sets;
$sets{$_}++ for map { /"billing:meter:flushed" .* "([^"]+)" "(\d+)"\s*$/
                      ? "$1 $2" : () }
    $t->monitor_lines($mon, qr/"(?i:evalsha|eval)" .*"billing:meter:flushed"/);
$mon->close;
my @again = grep { $sets{$_} > 1 } keys %sets;
ok @again, 'a flush Redis ran during the freeze was sent again ('
    . scalar(@again) . ' batches)';

# stopped, then back with its data
sleep 1;
$t->stop_redis;
sleep 1.5;
$t->restart_redis;
sleep 1.5;

my $answers = $t->load_stop($load);
my @bad = grep { $_->{status} != 200 } @$answers;
is scalar(@bad), 0, 'the gate kept answering 200 from its cache'
    or diag explain [ @bad[0 .. ($#bad > 5 ? 5 : $#bad)] ];

my %served;
$served{ $_->{sub} }++ for grep { $_->{status} < 400 } @$answers;
my $served = 0;
$served += $_ for values %served;
cmp_ok $served, '>', 100, "$served answers";

ok wait_until(sub { total(@SUBS) == $served }, 15),
    'every unit reached Redis';
sleep 1;
is total($_), $served{$_} || 0, "$_: $served{$_} units, none twice"
    for @SUBS;

$t->stop_nginx;
is total(@SUBS), $served, 'the graceful stop added nothing';
unlike $t->error_log, qr/billing meter: .* lost/, 'nothing lost';

# a graceful stop while Redis is down: lost, and said so
$t->start_nginx($HTTP, workers => 2, FLUSH => '1h');
my $SUB = $SUBS[0];
is $t->http('GET', '/on/x', headers => { 'X-Subscription-Id' => $SUB })
    ->{status}, 200, "request $_" for 1 .. 3;
$t->stop_redis;
my $start = time;
$t->stop_nginx;
# Whether the worker saw Redis's close before it sent its last batch
# is a race: either way the loss is logged, with what the worker knew.
my $DEADLINE = qr/Redis (?:could not be reached|did not answer) before the deadline/;
$t->error_log_like(qr/\[error\].*billing meter: $DEADLINE, 3 units of 1 subscriptions are lost/,
    'the units lost are logged at [error]');
$t->restart_redis;
is total($SUB), $served{$SUB}, 'and were not counted';

# a reload while Redis is down: the old workers give what they could
# not send back to the zone, for the new ones
my $SUB2 = $SUBS[1];
$t->start_nginx($HTTP, workers => 2, FLUSH => '1h');
is $t->http('GET', '/on/x', headers => { 'X-Subscription-Id' => $SUB2 })
    ->{status}, 200, "request $_ before the reload" for 1 .. 4;
$t->stop_redis;
$t->reload_nginx;
ok wait_until(sub {
    $t->error_log =~ /billing meter: $DEADLINE, 4 units of \d+ counts are left in the shared zone for the other workers/
}, 10), 'the old workers left the counts in the zone'
    or diag join "\n", $t->error_log =~ /^(.*billing meter: .*)$/mg;
$t->restart_redis;

# the new workers reconnect (after their backoff) before they stop
ok wait_until(sub {
    ($t->redis('INFO', 'clients') =~ /connected_clients:(\d+)/)[0] >= 5
}, 15), 'the new workers are connected again';
$t->stop_nginx;
is total($SUB2), $served{$SUB2} + 4, 'the new workers sent them';
my @lost = $t->error_log =~ /(billing meter: .* are lost)/g;
is scalar(@lost), 1, 'one loss in all: the stop while Redis was down'
    or diag join "\n", @lost;

$t->done;
done_testing;
