# billing_redis under Sentinel, with real Redis processes: a primary, two
# replicas (c never promoted) and a Sentinel (redis-server --sentinel),
# passwords on both, replicas=1, listed first a Sentinel that accepts
# connections but never answers and one that refuses them, 2 workers.
#
# - The mute Sentinel costs a timeout once: the one that answered is
#   asked first from then on, by every question of the worker.
# - replicas=1: a webhook answered 200 is on a replica too; with both
#   replicas frozen, 503.
# - nginx -t refuses what cannot work (several addresses without
#   sentinel=, a bad name, sentinel_password_file missing or alone,
#   replicas=0) with a message saying so.
# - The primary killed (-9) under webhook load: 200 again within seconds
#   of the failover (the other replica follows the new primary; c is
#   stopped after this phase), every
#   webhook answered 200 is on the new primary, those answered 503 succeed when sent
#   again, the gate serves its cached decision throughout, and both
#   connections of every worker are on the new primary (the cache
#   invalidation arrives through it).
# - SENTINEL FAILOVER with the old primary alive: +switch-master moves
#   every connection.
# - A switch the workers could not hear (the Sentinel refuses their
#   subscription): the subscription back, a switch missed meanwhile is
#   found by asking once; the old primary demoted answers READONLY to
#   the next write, and all connections follow.
# - A name the Sentinels do not know, a wrong Sentinel password: 503, and
#   the log says why; no password is ever logged.
#
# Skipped, with a message, where redis-server --sentinel cannot start.
# Checks wait for conditions; none measures time.

use strict;
use warnings;

use Test::More;
use BillingTest qw(:all);
use BillingSentinel;
use HTTP::Tiny;
use IO::Socket::INET;
use POSIX ();
use Time::HiRes qw(time sleep);

my $SECRET = 'whsec_' . random_id('', 32);
my $PASSWORD = 'redis-' . random_id('', 20);
my $SPASSWORD = 'sentinel-' . random_id('', 20);

my $t = BillingTest->new;
$t->write_file('whsec', "$SECRET\n");
$t->write_file('redis.pass', "$PASSWORD\n");
$t->write_file('sentinel.pass', "$SPASSWORD\n");
$t->write_file('wrong.pass', "not-the-password\n");
$t->secrets($SECRET);

my $SERVER = <<'EOF';
    server {
        listen 127.0.0.1:%%PORT%% reuseport;

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


# ---------------------------------------------------------------------
# nginx -t

{
    my @bad = (
        [ 'two addresses without sentinel=',
          qr/"billing_redis" directive has 2 addresses but no "sentinel="/,
          'billing_redis 127.0.0.1:6379 127.0.0.1:6380;' ],
        [ 'an empty name',
          qr/invalid primary name "" in "billing_redis" directive/,
          'billing_redis 127.0.0.1:26379 sentinel=;' ],
        [ 'a name with a space',
          qr/invalid primary name "bill ing" in "billing_redis"/,
          'billing_redis 127.0.0.1:26379 "sentinel=bill ing";' ],
        [ 'sentinel_password_file missing',
          qr/"billing_redis" directive: open\(\) "[^"]*no-such\.pass" failed/,
          'billing_redis 127.0.0.1:26379 sentinel=billing '
          . 'sentinel_password_file=%%DIR%%/no-such.pass;' ],
        [ 'sentinel_password_file without sentinel=',
          qr/"sentinel_password_file" in "billing_redis" directive needs "sentinel="/,
          'billing_redis 127.0.0.1:6379 '
          . 'sentinel_password_file=%%DIR%%/sentinel.pass;' ],
        [ 'replicas=0',
          qr/invalid parameter "replicas=0" in "billing_redis" directive/,
          'billing_redis 127.0.0.1:6379 replicas=0;' ],
        [ 'no address',
          qr/no Redis address in "billing_redis" directive/,
          'billing_redis sentinel=billing;' ],
        [ 'an address after the parameters',
          qr/unknown parameter "127\.0\.0\.1:26380" in "billing_redis"/,
          'billing_redis 127.0.0.1:26379 sentinel=billing 127.0.0.1:26380;' ],
    );

    for my $case (@bad) {
        my ($name, $re, $directive) = @$case;
        my ($rc, $out) = $t->start_nginx("    $directive\n"
            . "    billing_stripe_webhook_secret_file %%DIR%%/whsec;\n"
            . $SERVER, nginx_test => 1);
        isnt($rc, 0, "nginx -t: $name: refused");
        like($out, qr/\[emerg\].*$re/, "nginx -t: $name: the message")
            or diag($out);
    }

    my ($rc, $out) = $t->start_nginx(<<'EOF' . $SERVER, nginx_test => '-T');
    billing_redis 127.0.0.1:26379 localhost:26380 sentinel=billing
                  password_file=%%DIR%%/redis.pass
                  sentinel_password_file=%%DIR%%/sentinel.pass replicas=1;
    billing_stripe_webhook_secret_file %%DIR%%/whsec;
EOF
    is($rc, 0, 'nginx -T: Sentinels, passwords, replicas=1 pass') or diag($out);
    ok(index($out, $PASSWORD) < 0 && index($out, $SPASSWORD) < 0,
        'nginx -T: no password in the output');
}


# ---------------------------------------------------------------------
# the Redis processes

my $s = BillingSentinel->new($t, name => 'billing', password => $PASSWORD,
    sentinel_password => $SPASSWORD);

$s->start_redis('a');
$s->start_redis('b', replicaof => 'a');
$s->start_redis('c', replicaof => 'a', args => ['--replica-priority', '0']);

my $up = eval { $s->start_sentinel('s1', 'a'); 1 };

unless ($up) {
    my $why = $@;
    $s->stop_all;
    $t->done;
    diag("redis-server --sentinel cannot start here, the Sentinel tests "
        . "are skipped:\n$why");
    SKIP: { skip('redis-server --sentinel cannot start', 1) }
    done_testing;
    exit 0;
}

# the Sentinel knows the replicas, and the replicas are in sync
ok(wait_until(sub {
    my $r = eval { $s->cmd('s1', 'SENTINEL', 'replicas', 'billing') };
    ref $r eq 'ARRAY' && @$r == 2 && $s->replicas_up('a') == 2;
}, 20), 'Sentinel sees the replicas in sync');

my $DEAD = BillingTest::free_port();

# a Sentinel that accepts connections (the kernel does) and never answers
my $mute = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0,
    Listen => 1024, ReuseAddr => 1) or die "listen: $!";
my $MUTE = $mute->sockport;

my $HTTP = <<'EOF' . $SERVER;
    billing_redis 127.0.0.1:%%MUTE%% 127.0.0.1:%%DEAD%% 127.0.0.1:%%S1%%
                  sentinel=%%NAME%%
                  password_file=%%DIR%%/redis.pass
                  sentinel_password_file=%%DIR%%/%%SPASS%%
                  replicas=1 connect_timeout=500ms timeout=1s;
    billing_stripe_webhook_secret_file %%DIR%%/whsec;
    billing_portal_url https://billing.stripe.com/p/login/test_123;
    billing_cache zone=billing:1m ttl=1h stale=1h;
    billing_scheduler off;

    # nothing written in the background: the first write after a
    # demotion is the test's (and no WAIT is blocked at that moment)
    billing_meter_flush 1h;
EOF

$t->start_nginx($HTTP, workers => 2, MUTE => $MUTE, DEAD => $DEAD,
    S1 => $s->port('s1'), NAME => 'billing', SPASS => 'sentinel.pass');

# each worker: a connection for commands and one subscribed
sub settled_on {
    my ($who) = @_;
    my @l = $s->nginx_clients($who);
    return @l == 4 && (grep { /\bsub=1\b/ } @l) == 2;
}

ok(wait_until(sub { settled_on('a') }, 10),
    'both connections of both workers on the primary')
    or diag(join "\n", $s->nginx_clients('a'));
ok(wait_until(sub { sentinel_subscribers() == 2 }, 10),
    'each worker subscribed to +switch-master');
like($t->error_log, qr/connect\(\) to sentinel 127\.0\.0\.1:$DEAD failed/,
    'the dead Sentinel was tried');
like($t->error_log,
    qr/billing redis sentinel 127\.0\.0\.1:$MUTE: no reply within timeout/,
    'the mute Sentinel was tried');
like($t->error_log,
    qr/billing redis: sentinel 127\.0\.0\.1:\d+ names 127\.0\.0\.1:${\ $s->port('a')} the primary of "billing"/,
    'the log names the Sentinel and the primary');

$s->cmd('a', 'HSET', 'billing:sub:warm', 'state', 'active', 'version', 1);
is($t->http('GET', '/gated/x', headers => { 'X-Subscription-Id' => 'warm' })
    ->{status}, 200, 'the gate: warm 200');

{
    my $r = $t->webhook(invoice_event(type => 'invoice.finalized',
        invoice_id => 'in_first'));
    is($r->{status}, 200, 'a webhook: 200');
    is($s->cmd('b', 'HGET', 'billing:invoice:in_first', 'status'), 'open',
        'acknowledged: on the replica too (replicas=1)');

    # the replicas frozen: the write is made, but not acknowledged
    kill 'STOP', $s->pid('b'), $s->pid('c');
    $r = $t->webhook(invoice_event(type => 'invoice.finalized',
        invoice_id => 'in_frozen'));
    kill 'CONT', $s->pid('b'), $s->pid('c');
    is($r->{status}, 503, 'replicas frozen: 503');
    like($t->error_log,
        qr/\[error\].*billing redis 127\.0\.0\.1:\d+: 0 of 1 replicas acknowledged a command in time: failed/,
        'replicas frozen: logged');
    ok(wait_until(sub {
        $t->webhook(invoice_event(type => 'invoice.finalized',
            invoice_id => 'in_thawed'))->{status} == 200 }, 10, 0.2),
        'replicas thawed: 200');
}


# ---------------------------------------------------------------------
# webhook load: child processes posting invoice.finalized events, each
# line of their output "status invoice-id"

my $load_seq = 0;

sub hooks_start {
    my ($tag) = @_;
    $load_seq++;
    my $stop = $t->path("hooks-$load_seq.stop");
    my @kids;
    for my $i (1 .. 2) {
        my $out = $t->path("hooks-$load_seq-$i.out");
        my $pid = fork;
        die "fork: $!" unless defined $pid;
        if ($pid == 0) {
            open my $fh, '>', $out or POSIX::_exit(1);
            $fh->autoflush(1);
            my $ua = HTTP::Tiny->new(keep_alive => 1, timeout => 10);
            my $n = 0;
            until (-e $stop) {
                $n++;
                my $inv = "in_${tag}_${i}_$n";
                my $body = invoice_event(type => 'invoice.finalized',
                    id => "evt_${tag}_${i}_$n", invoice_id => $inv);
                my $res = $ua->post("http://127.0.0.1:" . $t->port
                    . "/stripe/webhook", { content => $body, headers => {
                        'Content-Type' => 'application/json',
                        'Stripe-Signature' => stripe_signature_header(
                            secrets => [$SECRET], body => $body) } });
                print $fh "$res->{status} $inv\n";
                my $bodyfile = $t->path("body-$inv");
                if ($res->{status} != 200) {
                    open my $b, '>', $bodyfile or next;
                    print $b $body;
                    close $b;
                }
                sleep 0.01;
            }
            close $fh;
            POSIX::_exit(0);
        }
        push @kids, { pid => $pid, out => $out };
    }
    return { stop => $stop, kids => \@kids };
}

sub hooks_answers {
    my ($load) = @_;
    my @a;
    for my $kid (@{ $load->{kids} }) {
        open my $fh, '<', $kid->{out} or next;
        while (my $l = <$fh>) {
            push @a, [ split ' ', $l ] if $l =~ /\n\z/;
        }
    }
    return @a;
}

sub hooks_stop {
    my ($load) = @_;
    open my $fh, '>', $load->{stop} or die;
    close $fh;
    waitpid($_->{pid}, 0) for @{ $load->{kids} };
    return hooks_answers($load);
}

# the answers so far that came after the first $n
sub count_ok {
    my ($load, $after) = @_;
    my @a = hooks_answers($load);
    return scalar grep { $_->[0] == 200 } @a[($after // 0) .. $#a];
}

# what a load's answers say: every 200 on $who, every other answer a
# 503, which succeeds when sent again (and is then on $who)
sub check_answers {
    my ($name, $who, @answers) = @_;
    my @ok = grep { $_->[0] == 200 } @answers;
    my @failed = grep { $_->[0] != 200 } @answers;
    note("$name: " . @ok . ' webhooks answered 200, ' . @failed . ' not');
    cmp_ok(scalar @ok, '>', 20, "$name: webhooks answered 200");
    my @missing = grep {
        ($s->cmd($who, 'HGET', "billing:invoice:$_->[1]", 'status') // '')
        ne 'open' } @ok;
    is(scalar @missing, 0, "$name: every webhook answered 200 is on $who")
        or diag("missing: " . join ' ', map { $_->[1] } @missing[0 .. 9]);
    my @other = grep { $_->[0] != 503 } @failed;
    is(scalar @other, 0, "$name: the others were answered 503")
        or diag(join ' ', map { $_->[0] } @other);
    my @retry_failed;
    for my $f (@failed) {
        my $body = $t->read_file("body-$f->[1]");
        my $r;
        wait_until(sub {
            $r = $t->webhook($body, timeout => 5);
            $r->{status} == 200;
        }, 10, 0.1);
        push @retry_failed, $f->[1] unless $r->{status} == 200
            && ($s->cmd($who, 'HGET', "billing:invoice:$f->[1]", 'status')
                // '') eq 'open';
    }
    is(scalar @retry_failed, 0,
        "$name: the " . @failed . " others succeed when sent again, on $who")
        or diag("@retry_failed");
}

sub gate_all_200 {
    my ($name, $answers) = @_;
    my @bad = grep { $_->{status} != 200 } @$answers;
    cmp_ok(scalar @$answers, '>', 10, "$name: the gate was asked");
    is(scalar @bad, 0, "$name: the gate's cached decision served throughout")
        or diag(join ' ', map { $_->{status} } @bad[0 .. 9]);
}

# a change published on $who: the gate's cached answer changes at once,
# which only the subscription there can tell it (ttl=1h)
sub invalidation_through {
    my ($name, $who, $id) = @_;
    $s->cmd($who, 'HSET', "billing:sub:$id", 'state', 'cancelled',
        'version', 1);
    my $gate = sub {
        $t->http('GET', '/gated/x', headers => { 'X-Subscription-Id' => $id })
            ->{status};
    };
    # both workers' caches are one zone: once is enough
    is($gate->(), 403, "$name: cancelled, 403 (now cached)");
    $s->cmd($who, 'HSET', "billing:sub:$id", 'state', 'active', 'version', 2);
    $s->cmd($who, 'PUBLISH', 'billing:events', "2 $id");
    ok(wait_until(sub { $gate->() == 200 }, 5),
        "$name: activated and published on $who: 200");
}


# ---------------------------------------------------------------------
# the primary killed under load

{
    my $gate = $t->load_start('/gated/x', subs => ['warm'], clients => 1,
        pause => 0.02);
    my $hooks = hooks_start('kill');

    ok(wait_until(sub { count_ok($hooks) >= 20 }, 10),
        'kill: webhooks answered 200 before');

    $s->stop('a', 'KILL');
    my $before = () = hooks_answers($hooks);

    ok(wait_until(sub { ($s->primary('s1') // '') eq 'b' }, 30),
        'kill: the Sentinel made b the primary');

    # c follows b (Sentinel moves it): WAIT can be satisfied again
    ok(wait_until(sub { count_ok($hooks, $before) >= 5 }, 15),
        'kill: webhooks answered 200 again within seconds of the failover');

    # the old primary back, as a replica
    $s->start_redis('a', replicaof => 'b');
    ok(wait_until(sub { $s->replicas_up('b') == 2 }, 20),
        'kill: a is back as a replica of b');

    ok(wait_until(sub { count_ok($hooks, $before) >= 20 }, 20),
        'kill: webhooks answered 200 again');

    my @answers = hooks_stop($hooks);
    my $g = $t->load_stop($gate);

    check_answers('kill', 'b', @answers);
    gate_all_200('kill', $g);

    ok(wait_until(sub { settled_on('b') }, 10),
        'kill: both connections of both workers on the new primary')
        or diag(join "\n", $s->nginx_clients('b'));
    invalidation_through('kill', 'b', 'flip1');

    like($t->error_log,
        qr/\[notice\].*billing redis sentinel \S+: \+switch-master "billing 127\.0\.0\.1 ${\ $s->port('a')} 127\.0\.0\.1 ${\ $s->port('b')}"/,
        'kill: +switch-master logged');
    like($t->error_log,
        qr/\[notice\].*names 127\.0\.0\.1:${\ $s->port('b')} the primary of "billing", was 127\.0\.0\.1:${\ $s->port('a')}/,
        'kill: the new primary logged with the old');
}


# From here one replica: with two, a write the old primary takes in a
# failover (before it hears of it) may be acknowledged by the replica not
# promoted, which the checks below would count as lost.
$s->stop('c');


# ---------------------------------------------------------------------
# SENTINEL FAILOVER, the old primary alive: +switch-master moves all

sub failover {
    my ($to) = @_;
    # once: refused while the last one is still being completed, or
    # before the Sentinel deems the replica good
    wait_until(sub {
        eval { $s->cmd('s1', 'SENTINEL', 'FAILOVER', 'billing'); 1 };
    }, 30, 0.5) or return 0;
    return wait_until(sub { ($s->primary('s1') // '') eq $to }, 30);
}

{
    my $gate = $t->load_start('/gated/x', subs => ['warm'], clients => 1,
        pause => 0.02);
    my $hooks = hooks_start('manual');

    ok(wait_until(sub { count_ok($hooks) >= 20 }, 10),
        'manual: webhooks answered 200 before');

    ok(failover('a'), 'manual: SENTINEL FAILOVER made a the primary');
    my $before = () = hooks_answers($hooks);

    ok(wait_until(sub { settled_on('a') && $s->nginx_clients('b') == 0 },
        10), 'manual: every connection left b (still a primary) for a')
        or diag(join "\n", $s->nginx_clients('b'));

    # Sentinel makes b a replica of a in its own time; done at once here
    $s->cmd('b', 'REPLICAOF', '127.0.0.1', $s->port('a'));
    ok(wait_until(sub { $s->replicas_up('a') >= 1 }, 20),
        'manual: b is a replica of a');

    ok(wait_until(sub { count_ok($hooks, $before) >= 20 }, 20),
        'manual: webhooks answered 200 after');

    my @answers = hooks_stop($hooks);
    my $g = $t->load_stop($gate);

    check_answers('manual', 'a', @answers);
    gate_all_200('manual', $g);
    invalidation_through('manual', 'a', 'flip2');
}


# ---------------------------------------------------------------------
# the workers cannot hear the switch: their subscription refused

# nginx's subscriptions at the Sentinel: one a worker
sub sentinel_subscribers {
    my $list = eval { $s->cmd('s1', 'CLIENT', 'LIST') } // '';
    return scalar grep { /\bsub=1\b/ } split /\n/, $list;
}

sub refuse_subscription {
    my $n = () = $t->error_log =~ /handshake refused: "NOPERM/g;
    # the subscribed are dropped, and their SUBSCRIBE fails from now on
    $s->cmd('s1', 'ACL', 'SETUSER', 'default', 'resetchannels');
    return wait_until(sub {
        my $m = () = $t->error_log =~ /handshake refused: "NOPERM/g;
        $m > $n && sentinel_subscribers() == 0;
    }, 20);
}

sub allow_subscription {
    $s->cmd('s1', 'ACL', 'SETUSER', 'default', 'allchannels');
}

# a switch missed: found when the subscription is made again

{
    ok(refuse_subscription(), 'missed: both workers lost their subscription');

    ok(failover('b'), 'missed: SENTINEL FAILOVER made b the primary');
    ok(settled_on('a'), 'missed: the connections stay on a, unaware');

    allow_subscription();
    ok(wait_until(sub { settled_on('b') && $s->nginx_clients('a') == 0 },
        20), 'missed: subscribed again, asked, every connection on b')
        or diag(join "\n", $s->nginx_clients('a'));

    $s->cmd('a', 'REPLICAOF', '127.0.0.1', $s->port('b'));
    ok(wait_until(sub { $s->replicas_up('b') >= 1 }, 20),
        'missed: a is a replica of b');

    my $r;
    ok(wait_until(sub {
        $r = $t->webhook(invoice_event(type => 'invoice.finalized',
            invoice_id => 'in_missed'), timeout => 5);
        $r->{status} == 200;
    }, 10, 0.2), 'missed: a webhook: 200');
    is($s->cmd('b', 'HGET', 'billing:invoice:in_missed', 'status'), 'open',
        'missed: on b');
}

# a switch missed, the old primary demoted: READONLY moves them all

{
    ok(refuse_subscription(), 'readonly: both workers lost their subscription');

    ok(failover('a'), 'readonly: SENTINEL FAILOVER made a the primary');
    ok(settled_on('b'), 'readonly: the connections stay on b, unaware');

    # what Sentinel does to the old primary in its own time
    $s->cmd('b', 'REPLICAOF', '127.0.0.1', $s->port('a'));
    ok(wait_until(sub { $s->replicas_up('a') >= 1 }, 20),
        'readonly: b is a replica of a');

    my @r;
    ok(wait_until(sub {
        my $r = $t->webhook(invoice_event(type => 'invoice.finalized',
            invoice_id => 'in_readonly'), timeout => 5);
        push @r, $r->{status};
        $r->{status} == 200;
    }, 20, 0.2), 'readonly: a webhook succeeds in the end')
        or diag("@r");

    # the write finds the demotion (READONLY), unless the 5 s ROLE
    # heartbeat found it first
    my $port_b = $s->port('b');
    my $role = $t->error_log =~ /\[warn\].*billing redis 127\.0\.0\.1:$port_b: ROLE, a replica now/;
    ok($r[0] == 503 || $role,
        'readonly: the first attempt, on b: 503 (or the heartbeat was first)')
        or diag("@r");
    is($s->cmd('a', 'HGET', 'billing:invoice:in_readonly', 'status'), 'open',
        'readonly: on a');
    ok(wait_until(sub { settled_on('a') && $s->nginx_clients('b') == 0 },
        20), 'readonly: every connection on a, the subscriber too')
        or diag(join "\n", $s->nginx_clients('b'));
    like($t->error_log, qr/\[warn\].*billing redis 127\.0\.0\.1:$port_b: (?:READONLY|ROLE), a replica now/,
        'readonly: logged');
    like($t->error_log, qr/READONLY on another connection/,
        'readonly: the subscriber left too');

    allow_subscription();
    invalidation_through('readonly', 'a', 'flip3');
}


# every question went on to the Sentinel that answers, and stayed there
unlike($t->error_log, qr/no Sentinel named the primary/,
    'no "no Sentinel named the primary" with the mute Sentinel first');


# ---------------------------------------------------------------------
# what the Sentinels cannot answer

{
    $t->stop_nginx;

    for my $case ([ 'unknown name', 'nosuch', 'sentinel.pass',
                    qr/no primary named "nosuch" there/ ],
                  [ 'wrong Sentinel password', 'billing', 'wrong.pass',
                    qr/sentinel 127\.0\.0\.1:\d+: AUTH refused: "WRONGPASS/ ])
    {
        my ($name, $primary, $pass, $re) = @$case;
        $t->start_nginx($HTTP, workers => 1, MUTE => $MUTE, DEAD => $DEAD,
            S1 => $s->port('s1'), NAME => $primary, SPASS => $pass);
        my $r = $t->webhook(invoice_event(type => 'invoice.finalized'));
        is($r->{status}, 503, "$name: a webhook: 503");
        ok(wait_until(sub { $t->error_log =~ $re }, 5), "$name: logged")
            or diag(BillingTest::_tail($t->error_log, 10));
        like($t->error_log, qr/no Sentinel named the primary/,
            "$name: the client says so");
        $t->stop_nginx;
    }
}

my $log = $t->error_log;
ok(index($log, $PASSWORD) < 0 && index($log, $SPASSWORD) < 0,
    'no password in error.log');

$s->stop_all;
$t->done;
done_testing;
