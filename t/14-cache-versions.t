# A decision served is a decision kept: every change of a subscription
# increments its version in Redis and is published as "VERSION ID"; the
# cache keeps the highest version seen per id and stores a lookup answer
# unless a newer version is known.
#
# - the lookups that follow a change are cached at once, on the node of
#   the webhook and on another node: Redis dying right after, both keep
#   serving the decision they just served (before versions: 503);
# - a lookup asked after a change announced is stored whatever version
#   Redis answers (one lower means Redis went back: a failover, a
#   restore), and then kept until the next change;
# - an older or repeated announcement drops nothing, a newer one drops;
# - a repeated webhook drops nothing anywhere (t/20 and t/71 check the
#   versions of the API's creation and cancellation).

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
    billing_cache zone=billing:1m ttl=30s stale=60s;

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

my $na = BillingTest->new;
$na->write_file('whsec', "$SECRET\n");
$na->secrets($SECRET);
$na->start_redis;
$na->start_nginx($CONF, workers => 2);

my $nb = BillingTest->new(redis_port => $na->redis_port);
$nb->write_file('whsec', "$SECRET\n");
$nb->secrets($SECRET);
$nb->start_nginx($CONF, workers => 2);

$_->ignore_log(qr/billing redis/) for $na, $nb;

sub subscribed {
    my ($n) = @_;
    return wait_until(sub {
        my $r = eval { $na->redis('PUBSUB', 'NUMSUB', 'billing:events') };
        $r && ($r->[1] // 0) >= $n;
    }, 10);
}

ok subscribed(4), 'every worker of both nodes subscribed';

sub gate {
    my ($node, $id) = @_;
    return $node->http('GET', '/gated/x',
        headers => { 'X-Subscription-Id' => $id })->{status};
}

# several requests, so that both workers of a node answer
sub gate_all {
    my ($node, $id, $n) = @_;
    my %st;
    $st{ gate($node, $id) }++ for 1 .. ($n || 6);
    return join ',', sort keys %st;
}

sub pending {
    my ($id) = @_;
    $na->redis('HSET', "billing:sub:$id", state => 'pending',
        initial_invoice => "in_$id", consumer_org => 'org-1');
    $na->redis('HSET', "billing:invoice:in_$id",
        hosted_invoice_url => "https://invoice.stripe.com/i/test_$id",
        status => 'open', subscription => $id, kind => 'initial');
}

sub paid_event {
    my ($id, %o) = @_;
    return invoice_event(type => 'invoice.paid', invoice_id => "in_$id",
        subscription => $id, kind => 'initial', %o);
}

my $mon = $na->redis_monitor;

# the gate's lookups per id since the last call (the webhook's script
# reads the subscription too: its HMGET is not counted)
sub lookups {
    my %n;
    for ($na->monitor_lines($mon,
            qr/\[\d+ lua\] "HMGET" "billing:sub:[^"]*" "state" "initial_invoice" "period_start"/))
    {
        $n{$1}++ if /"billing:sub:([^"]*)"/;
    }
    return \%n;
}

# ---------------------------------------------------------------------
# versions in Redis and on the channel

my $events = $na->redis_client;
$events->cmd('SUBSCRIBE', 'billing:events');

sub announced {
    my ($id, $timeout) = @_;
    my $deadline = time + $timeout;
    while (my $m = $events->next_message($deadline - time)) {
        return $1 if $m->[1] =~ /^([1-9][0-9]*) \Q$id\E$/;
        last if time >= $deadline;
    }
    return 0;
}

# ---------------------------------------------------------------------
# the answer that follows a change is kept

pending('sub_kept');
is gate_all($na, 'sub_kept'), '402', 'A: pending: 402';
is gate_all($nb, 'sub_kept'), '402', 'B: pending: 402';

{
    my $ev = paid_event('sub_kept');
    my $r = $na->webhook($ev);
    is $r->{status}, 200, 'invoice.paid on A: 200';
    my $v = announced('sub_kept', 3);
    ok $v, "the change is announced with version $v";
    is $na->redis('HGET', 'billing:sub:sub_kept', 'version'), $v,
        'the subscription holds that version';

    is gate_all($na, 'sub_kept'), '200', 'A: the next requests: 200';
    ok wait_until(sub { gate($nb, 'sub_kept') == 200 }, 3),
        'B: 200 once the change is announced';
    is gate_all($nb, 'sub_kept'), '200', 'B: 200 on both workers';

    # within the second after the change: no quiet time any more
    $na->stop_redis;
    is gate_all($na, 'sub_kept', 10), '200',
        'A: Redis stopped right after: the decision served is kept (200)';
    is gate_all($nb, 'sub_kept', 10), '200',
        'B: Redis stopped right after: the decision served is kept (200)';
    sleep 1.2;
    is gate_all($na, 'sub_kept'), '200', 'A: and a second later (200)';
    is gate_all($nb, 'sub_kept'), '200', 'B: and a second later (200)';
    is gate_all($na, 'sub_cold'), '503', 'A: a cold id meanwhile: 503';
    $na->start_redis;
    ok subscribed(4), 'Redis back: every worker subscribed again';
    $mon = $na->redis_monitor;
    $events = $na->redis_client;
    $events->cmd('SUBSCRIBE', 'billing:events');
}

# ---------------------------------------------------------------------
# versions announced and answered

{
    $na->redis('HSET', 'billing:sub:sub_old', state => 'active',
        version => 3);
    lookups();
    is gate_all($na, 'sub_old'), '200', 'sub_old (version 3): 200';
    my $n = lookups()->{sub_old} // 0;
    ok $n >= 1 && $n <= 2, "cached after the first lookup per worker ($n)";

    # a change to version 9 announced, Redis still at 3 (gone back)
    $na->redis('PUBLISH', 'billing:events', '9 sub_old');
    sleep 0.2;
    lookups();
    is gate_all($na, 'sub_old', 6), '200', 'after "9 sub_old": still 200';
    $n = lookups()->{sub_old} // 0;
    ok $n >= 1 && $n <= 2,
        "asked after the announcement: stored though at version 3, once "
        . "per worker ($n)";

    # Redis at 9 and announced: stored at 9
    $na->redis('HSET', 'billing:sub:sub_old', version => 9);
    $na->redis('PUBLISH', 'billing:events', '9 sub_old');
    sleep 0.2;
    is gate_all($na, 'sub_old', 6), '200', 'Redis at 9, announced: 200';
    $n = lookups()->{sub_old} // 0;
    ok $n >= 1 && $n <= 2, "stored at 9, once per worker ($n)";

    # older and repeated announcements drop nothing
    $na->redis('PUBLISH', 'billing:events', '4 sub_old');
    $na->redis('PUBLISH', 'billing:events', '9 sub_old');
    sleep 0.2;
    lookups();
    is gate_all($na, 'sub_old', 6), '200', 'after "4" and "9" again: 200';
    is lookups()->{sub_old} // 0, 0,
        'an older or the same version drops nothing: no lookup';

    # a newer one drops
    $na->redis('HSET', 'billing:sub:sub_old', state => 'cancelled',
        version => 10);
    $na->redis('PUBLISH', 'billing:events', '10 sub_old');
    ok wait_until(sub { gate($na, 'sub_old') == 403 }, 3),
        'a newer version drops the entry: cancelled, 403';
    is gate_all($na, 'sub_old'), '403', '403 on both workers';
}

# ---------------------------------------------------------------------
# a repeated webhook drops nothing anywhere

{
    pending('sub_repeat');
    my $ev = paid_event('sub_repeat');
    is $na->webhook($ev)->{status}, 200, 'sub_repeat paid: 200';
    ok wait_until(sub { gate($nb, 'sub_repeat') == 200 }, 3),
        'B: sub_repeat 200';
    is gate_all($na, 'sub_repeat'), '200', 'A: sub_repeat 200';
    is gate_all($nb, 'sub_repeat'), '200', 'B: sub_repeat 200 on both workers';
    announced('sub_repeat', 0.3);

    lookups();
    is $na->webhook($ev)->{status}, 200, 'the same event again: 200';
    is $nb->webhook(paid_event('sub_repeat'))->{status}, 200,
        'another invoice.paid of the same invoice on B: 200';
    is announced('sub_repeat', 0.5), 0, 'nothing announced';
    is gate_all($na, 'sub_repeat'), '200', 'A: 200';
    is gate_all($nb, 'sub_repeat'), '200', 'B: 200';
    is lookups()->{sub_repeat} // 0, 0,
        'no node dropped its entry: no lookup';
}

# ---------------------------------------------------------------------
# an id never cached here: a change leaves its version all the same,
# and the lookups after it are stored

{
    $na->redis('HSET', 'billing:sub:sub_fresh', state => 'active',
        version => 2);
    $na->redis('PUBLISH', 'billing:events', '2 sub_fresh');
    sleep 0.2;
    lookups();
    is gate_all($na, 'sub_fresh', 6), '200', 'sub_fresh: 200';
    my $n = lookups()->{sub_fresh} // 0;
    ok $n >= 1 && $n <= 2, "stored, asked once per worker ($n)";
    $na->redis('PUBLISH', 'billing:events', '2 sub_fresh');
    sleep 0.2;
    is gate_all($na, 'sub_fresh', 6), '200', 'the same version again: 200';
    is lookups()->{sub_fresh} // 0, 0, '... and nothing dropped';
}

# ---------------------------------------------------------------------
# a node before 0.5 publishes the bare id: the entry is dropped

{
    $na->redis('HSET', 'billing:sub:sub_bare', state => 'active');
    is gate_all($na, 'sub_bare'), '200', 'sub_bare: 200 (cached)';
    $na->redis('HSET', 'billing:sub:sub_bare', state => 'cancelled');
    is gate_all($na, 'sub_bare'), '200', 'changed without notice: 200';
    $na->redis('PUBLISH', 'billing:events', 'sub_bare');
    ok wait_until(sub { gate($na, 'sub_bare') == 403 }, 3),
        'a bare id drops the entry: 403';
}

$nb->done;
$na->done;
done_testing;
