# billing_meter with two nodes of two workers each on one Redis, under
# load, with 4-second metering periods and a reload of one node in the
# middle: every answer below 400 that a client got is billed once (the
# sum of the usage fields is the number of such answers, per
# subscription), each on the period its request ended in (compared with
# the period of the time the answer came, allowing for the requests
# that ended right after a boundary), the units spread over several
# periods; the marks of all live workers in meter:nodes; and graceful
# stops of both nodes adding nothing and removing the marks.

use strict;
use warnings;

use Test::More;
use BillingTest qw(:all);
use POSIX qw(floor);
use Time::HiRes qw(time sleep);

my $HTTP = <<'EOF';
    billing_redis 127.0.0.1:%%REDIS_PORT%% timeout=1s;
    billing_cache zone=billing:1m ttl=10s;
    billing_meter_flush 300ms;

    server {
        listen 127.0.0.1:%%PORT%%;

        location /on/ {
            billing_gate $http_x_subscription_id;
            return 200 "ok\n";
        }
    }
EOF

my $t1 = BillingTest->new;
$t1->start_redis;
my $t2 = BillingTest->new(redis_port => $t1->redis_port);

my $PERIOD = 4;
my $T0 = int(time) - 1;
my @SUBS = map { random_id("sub-n$_-", 8) } 1 .. 3;

$t1->redis('HSET', "billing:sub:$_", state => 'active', period_start => $T0,
    period => $PERIOD) for @SUBS;

$t1->start_nginx($HTTP, workers => 2);
$t2->start_nginx($HTTP, workers => 2);

my $load = $t1->load_start('/on/x', clients => 4,
    ports => [ $t1->port, $t2->port ], subs => \@SUBS, pause => 0.003);

# both nodes' workers mark their flushes
my $marks = wait_until(sub {
    my $m = $t1->redis_hash('billing:meter:nodes');
    keys %$m >= 4 ? $m : undef;
}, 10);
is scalar(keys %{ $marks || {} }), 4, 'four workers have a mark';

sleep 3.5;
$t1->reload_nginx;
pass 'node 1 reloaded under load';
sleep 5;

my $answers = $t1->load_stop($load);
my @bad = grep { $_->{status} != 200 } @$answers;
is scalar(@bad), 0, 'every request was answered 200'
    or diag explain [ @bad[0 .. ($#bad > 5 ? 5 : $#bad)] ];
cmp_ok scalar(@$answers), '>', 200, scalar(@$answers) . ' answers';

my %served;
$served{ $_->{sub} }++ for grep { $_->{status} < 400 } @$answers;

sub total {
    my ($sub) = @_;
    my $u = $t1->redis_hash("billing:usage:$sub");
    my $n = 0;
    $n += $_ for values %$u;
    return $n;
}

ok wait_until(sub { !grep { total($_) != ($served{$_} || 0) } @SUBS }, 15),
    'every unit reached Redis';
sleep 1;
is total($_), $served{$_} || 0, "$_: $served{$_} units, once each" for @SUBS;

# the period of each answer, from the time it came; a request that
# ended just before a boundary may be answered just after it
my $FUZZ = 0.6;
my $fields = 0;

for my $sub (@SUBS) {
    my (%sure, %either);
    for my $a (grep { $_->{sub} eq $sub && $_->{status} < 400 } @$answers) {
        my $off = $a->{time} - $T0;
        my $k = floor($off / $PERIOD);
        my $start = $T0 + $k * $PERIOD;
        if ($off - $k * $PERIOD < $FUZZ && $k > 0) {
            $either{$start}++;          # this period or the one before
        } else {
            $sure{$start}++;
        }
    }

    my $u = $t1->redis_hash("billing:usage:$sub");
    $fields += grep { $u->{$_} } keys %$u;

    my %starts = map { $_ => 1 } keys %sure, keys %either, keys %$u;
    my @wrong;
    for my $s (sort { $a <=> $b } keys %starts) {
        my $got = $u->{$s} || 0;
        my $min = $sure{$s} || 0;
        my $max = $min + ($either{$s} || 0) + ($either{$s + $PERIOD} || 0);
        push @wrong, "$s: $got not in [$min, $max]"
            if $got < $min || $got > $max
               || ($s - $T0) % $PERIOD != 0;
    }
    ok !@wrong, "$sub: each unit on the period its request ended in"
        or diag join "\n", @wrong;
}
cmp_ok $fields, '>=', 2 * @SUBS, 'the units span several periods';

# graceful stops send nothing more, and remove the marks
$t2->stop_nginx;
$t1->stop_nginx;
is total($_), $served{$_} || 0, "$_: still $served{$_} after the stops"
    for @SUBS;
is_deeply $t1->redis_hash('billing:meter:nodes'), {},
    'the stopped workers removed their marks';
unlike $t1->error_log . $t2->error_log, qr/billing meter: .* lost/,
    'nothing lost';

$t2->done;
$t1->done;
done_testing;
