# The Redis client itself: commands of concurrent requests pipelined on
# one connection per worker, EVALSHA falling back to EVAL after a script
# flush, the heartbeat timer finding a frozen Redis with no request in
# flight, Redis closing idle clients not counted as an outage, and a
# READONLY answer (a demoted primary) giving the connection up.

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

    server {
        listen 127.0.0.1:%%PORT%%;

        location = /stripe/webhook {
            billing_webhook;
        }

        location = /other {
            return 200 "ok\n";
        }
    }
EOF

my $n = 0;

sub event {
    $n++;
    return invoice_event(type => 'invoice.finalized',
        id => "evt_client$n", invoice_id => "in_client$n");
}

sub raw_webhook {
    my ($body) = @_;
    my $sig = stripe_signature_header(secrets => [$SECRET], body => $body);
    return "POST /stripe/webhook HTTP/1.1\r\nHost: localhost\r\n"
        . "Connection: close\r\nStripe-Signature: $sig\r\n"
        . "Content-Type: application/json\r\n"
        . 'Content-Length: ' . length($body) . "\r\n\r\n$body";
}

sub nginx_clients {
    my @lines = grep { length } split /\n/, $t->redis('CLIENT', 'LIST');
    return scalar grep { !/cmd=client/ } @lines;
}

# every worker connects when it starts, before any request

ok(wait_until(sub { nginx_clients() == 2 }, 5),
    'each of the 2 workers holds one connection from the start');

# 60 requests under way at once: all recorded, still one connection each

{
    my @bodies = map { event() } 1 .. 60;
    my @h = map { $t->raw_http_send(raw_webhook($_)) } @bodies;
    my @r = map { $t->raw_http_read($_) } @h;

    is(scalar(grep { ($_->{status} // 0) == 200 } @r), 60,
        '60 concurrent webhooks answered 200');
    is(scalar(grep { defined $t->redis('HGET', "billing:invoice:in_client$_",
        'status') } 1 .. 60), 60, '60 invoices recorded');
    is(nginx_clients(), 2, 'still one connection per worker');
}

# the script cache flushed under the module's feet: EVAL takes over

{
    $t->redis('SCRIPT', 'FLUSH');
    my $body = event();
    my $r = $t->webhook($body);
    is($r->{status}, 200, 'after SCRIPT FLUSH: 200');
    is($t->redis('HGET', "billing:invoice:in_client$n", 'status'), 'open',
        'after SCRIPT FLUSH: recorded');
}

# Redis closing idle clients is no outage: the next request is served

{
    $t->redis('CONFIG', 'SET', 'timeout', '1');
    ok(wait_until(sub { $t->error_log =~ /billing redis \S+: connection closed/ },
        5), 'Redis closed the idle connections');
    my $r = $t->webhook(event());
    is($r->{status}, 200, 'the request after an idle close: 200');
    $t->redis('CONFIG', 'SET', 'timeout', '0');
}

# the heartbeat: with no request in flight, a frozen Redis is found by a
# PING from a timer, and the connection is made anew once Redis thaws,
# so that the next request does not pay for it

{
    my $before = () = $t->error_log =~ /no reply within timeout/g;
    $t->freeze_redis;
    my $found = wait_until(sub {
        my $now = () = $t->error_log =~ /no reply within timeout/g;
        $now > $before;
    }, 9);
    $t->thaw_redis;
    ok($found, 'the heartbeat found the frozen Redis with no request');

    # each worker whose heartbeat timed out has connected again since
    my $reconnected = sub {
        my (%failed, %back);
        for (split /\n/, $t->error_log) {
            my ($pid) = /\[\w+\] (\d+)#/ or next;
            if (/no reply within timeout/) { $failed{$pid} = 1; delete $back{$pid} }
            elsif (/billing redis \S+: connected/) { $back{$pid} = 1 }
        }
        return %failed && !grep { !$back{$_} } keys %failed;
    };
    ok(wait_until(sub { $reconnected->() && nginx_clients() == 2 }, 8),
        'the workers reconnected by themselves');

    my $r = $t->webhook(event());
    is($r->{status}, 200, 'the next request: 200');
    cmp_ok($r->{elapsed}, '<', 0.5, 'and fast');
}

# a primary demoted (made a replica, here of nothing) answers READONLY:
# the command fails, and the connection is made anew; a primary again,
# the next request is served

{
    $t->redis('REPLICAOF', '127.0.0.1', BillingTest::free_port());
    my $r = $t->webhook(event());
    is($r->{status}, 503, 'READONLY: 503');
    like($t->error_log,
        qr/\[warn\].*billing redis \S+: READONLY, a replica now, 1 commands failed/,
        'READONLY: the connection given up, logged');
    $t->redis('REPLICAOF', 'NO', 'ONE');
    ok(wait_until(sub { $t->webhook(event())->{status} == 200 }, 10, 0.1),
        'a primary again: 200');
}

# a graceful stop with a connection open leaves no socket behind
# ("open socket left" would be an [alert], which done() checks)

$t->done;
done_testing;
