# billing_gate freshness with a long ttl (60 s): a decision stays cached
# (a change written to Redis behind the module's back is not seen), but
# a payment recorded by a webhook on this node is seen by the very next
# request, and one recorded on another node sharing the Redis is seen
# within a second, through the "billing:events" channel; a PUBLISH by
# hand does the same.

use strict;
use warnings;

use Test::More;
use BillingTest qw(:all);
use Time::HiRes qw(time sleep);

my $SECRET = 'whsec_' . join '', map { ('a'..'z', 0..9)[rand 36] } 1 .. 32;

my $CONF = <<'EOF';
    billing_redis 127.0.0.1:%%REDIS_PORT%% timeout=1s;
    billing_stripe_webhook_secret_file %%DIR%%/whsec;
    billing_portal_url https://billing.stripe.com/p/login/test_123;
    billing_cache zone=billing:1m ttl=60s;

    server {
        listen 127.0.0.1:%%PORT%%;

        location = /stripe/webhook {
            billing_webhook;
        }

        location /gated/ {
            billing_gate $http_x_subscription_id;
            return 200 "gated\n";
        }
    }
EOF

# node A with its Redis, node B on the same Redis
my $na = BillingTest->new;
$na->write_file('whsec', "$SECRET\n");
$na->secrets($SECRET);
$na->start_redis;
$na->start_nginx($CONF);

my $nb = BillingTest->new(redis_port => $na->redis_port);
$nb->write_file('whsec', "$SECRET\n");
$nb->secrets($SECRET);
$nb->start_nginx($CONF);

ok(wait_until(sub {
    my $r = $na->redis('PUBSUB', 'NUMSUB', 'billing:events');
    ($r->[1] // 0) >= 2;
}, 5), 'both nodes subscribed to billing:events');

sub gate {
    my ($node, $id) = @_;
    return $node->http('GET', '/gated/x', headers => { 'X-Subscription-Id' => $id });
}

sub pending {
    my ($id) = @_;
    $na->redis('HSET', "billing:sub:$id", state => 'pending',
        initial_invoice => "in_$id");
    $na->redis('HSET', "billing:invoice:in_$id",
        hosted_invoice_url => "https://invoice.stripe.com/i/test_$id",
        status => 'open', subscription => $id, kind => 'initial');
}

sub paid_event {
    my ($id) = @_;
    return invoice_event(type => 'invoice.paid', invoice_id => "in_$id",
        subscription => $id, kind => 'initial');
}

my @subs = qw(sub_local sub_remote sub_publish);
pending($_) for @subs;

# warm both nodes
for my $id (@subs) {
    is(gate($na, $id)->{status}, 402, "A: $id pending: 402");
    is(gate($nb, $id)->{status}, 402, "B: $id pending: 402");
}

# both nodes answer from their cache, beyond the one second an entry
# is trusted without the pub/sub subscription: a change written behind
# the module's back (no PUBLISH) is not seen

$na->redis('HSET', "billing:sub:$_", state => 'active') for @subs;
sleep 1.3;
for my $id (@subs) {
    is(gate($na, $id)->{status}, 402, "A: $id changed without notice: still 402 (cached)");
    is(gate($nb, $id)->{status}, 402, "B: $id changed without notice: still 402 (cached)");
}
$na->redis('HSET', "billing:sub:$_", state => 'pending') for @subs;

# ---------------------------------------------------------------------
# a webhook on this node: the very next request sees it

{
    my $r = $na->webhook(paid_event('sub_local'));
    is($r->{status}, 200, 'webhook invoice.paid for sub_local on A: 200');
    is($na->redis('HGET', 'billing:sub:sub_local', 'state'), 'active',
        'sub_local is active in Redis');

    $r = gate($na, 'sub_local');
    is($r->{status}, 200, 'A: the very next request for sub_local: 200');
    is($r->{content}, "gated\n", 'A: the content');
}

# ---------------------------------------------------------------------
# a webhook on node A: node B honours it within a second

{
    my $r = $na->webhook(paid_event('sub_remote'));
    my $t0 = time;
    is($r->{status}, 200, 'webhook invoice.paid for sub_remote on A: 200');

    my $last;
    while (time - $t0 < 3) {
        $last = gate($nb, 'sub_remote')->{status};
        last if $last == 200;
        sleep 0.02;
    }
    my $took = time - $t0;
    is($last, 200, 'B: sub_remote answered 200');
    cmp_ok($took, '<', 1.0, 'B: within 1 second of the webhook')
        or diag(sprintf "took %.3f s", $took);
    is(gate($na, 'sub_remote')->{status}, 200, 'A: sub_remote 200 too');

    # the other entries are untouched
    is(gate($nb, 'sub_local')->{status}, 200, 'B: sub_local (changed on A) 200 as well');
}

# ---------------------------------------------------------------------
# a PUBLISH by hand, as another node would

{
    $na->redis('HSET', 'billing:sub:sub_publish', state => 'active');
    is(gate($na, 'sub_publish')->{status}, 402, 'A: sub_publish active without notice: 402');
    is(gate($nb, 'sub_publish')->{status}, 402, 'B: sub_publish active without notice: 402');

    my $n = $na->redis('PUBLISH', 'billing:events', 'sub_publish');
    is($n, 2, 'PUBLISH reached both nodes\' workers');
    my $t0 = time;

    my %took;
    for my $node ([A => $na], [B => $nb]) {
        my ($name, $t) = @$node;
        while (time - $t0 < 3) {
            if (gate($t, 'sub_publish')->{status} == 200) {
                $took{$name} = time - $t0;
                last;
            }
            sleep 0.02;
        }
    }
    ok(defined $took{A} && $took{A} < 1.0, 'A: sub_publish 200 within 1 s of the PUBLISH')
        or diag(explain \%took);
    ok(defined $took{B} && $took{B} < 1.0, 'B: sub_publish 200 within 1 s of the PUBLISH')
        or diag(explain \%took);

    # and the other way: active to cancelled.  The lookup that followed
    # the change is cached at once (t/14 has the versions)
    is(gate($nb, 'sub_publish')->{status}, 200, 'B: sub_publish 200, cached again');
    $na->redis('HSET', 'billing:sub:sub_publish', state => 'cancelled');
    is(gate($nb, 'sub_publish')->{status}, 200, 'B: cancelled without notice: still 200 (cached)');
    $na->redis('PUBLISH', 'billing:events', 'sub_publish');
    $t0 = time;
    my $st;
    while (time - $t0 < 3) {
        $st = gate($nb, 'sub_publish')->{status};
        last if $st == 403;
        sleep 0.02;
    }
    is($st, 403, 'B: cancelled after the PUBLISH: 403');
    cmp_ok(time - $t0, '<', 1.0, 'B: within 1 s');
}

$nb->done;
$na->done;
done_testing;
