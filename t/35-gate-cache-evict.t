# billing_cache in a zone of the minimum size (32k) filled far beyond
# what it holds: 3000 subscriptions, each asked for once, all answered
# right, no error logged; the least recently used are gone (asked again,
# they are looked up in Redis) and the most recent still cached; entries
# too large for the zone are answered right all the same.

use strict;
use warnings;

use Test::More;
use BillingTest qw(:all);
use IO::Select;
use IO::Socket::INET;
use Time::HiRes qw(time);

my $SECRET = 'whsec_' . join '', map { ('a'..'z', 0..9)[rand 36] } 1 .. 32;
my $N = 3000;

my $t = BillingTest->new;
$t->write_file('whsec', "$SECRET\n");
$t->secrets($SECRET);
$t->start_redis;
$t->start_nginx(<<'EOF');
    billing_redis 127.0.0.1:%%REDIS_PORT%% timeout=1s;
    billing_stripe_webhook_secret_file %%DIR%%/whsec;
    billing_portal_url https://billing.stripe.com/p/login/test_123;
    billing_cache zone=small:32k ttl=60s negative_ttl=60s;

    server {
        listen 127.0.0.1:%%PORT%%;
        keepalive_requests 100000;

        location /gated/ {
            billing_gate $http_x_subscription_id;
            return 200 "gated\n";
        }
    }
EOF

ok(wait_until(sub {
    my $r = $t->redis('PUBSUB', 'NUMSUB', 'billing:events');
    ($r->[1] // 0) == 1;
}, 5), 'the worker is subscribed to billing:events');

# ids of several lengths, states in turn; pending ones with an invoice
# and a pay URL, so that entries differ in size
my @ids = map { sprintf('sub_%s_%05d', 'x' x ($_ % 7), $_) } 1 .. $N;
my %want;

{
    my $c = $t->redis_client;
    my $sent = 0;
    for my $i (0 .. $#ids) {
        my $id = $ids[$i];
        my $k = $i % 4;
        if ($k == 0 || $k == 1) {
            $c->send('HSET', "billing:sub:$id", 'state', 'active');
            $want{$id} = 200;
        } elsif ($k == 2) {
            $c->send('HSET', "billing:sub:$id", 'state', 'pending',
                'initial_invoice', "in_$id");
            $c->send('HSET', "billing:invoice:in_$id", 'hosted_invoice_url',
                "https://invoice.stripe.com/i/acct_1/test_$id?s=ap");
            $sent++;
            $want{$id} = 402;
        } else {
            $c->send('HSET', "billing:sub:$id", 'state', 'cancelled');
            $want{$id} = 403;
        }
        $sent++;
    }
    $c->read_reply(10) for 1 .. $sent;
    $c->close;
}

my $mon = $t->redis_monitor;

# requests one after the other on one keep-alive connection
my $conn;

sub ka_get {
    my ($id) = @_;
    unless ($conn) {
        $conn = { sock => IO::Socket::INET->new(PeerAddr => '127.0.0.1',
            PeerPort => $t->port, Proto => 'tcp', Timeout => 5), buf => '' };
        die "connect: $!" unless $conn->{sock};
    }
    my $s = $conn->{sock};
    my $req = "GET /gated/x HTTP/1.1\r\nHost: x\r\nX-Subscription-Id: $id\r\n\r\n";
    syswrite($s, $req) == length $req or return { status => 'write failed' };
    my $deadline = time + 5;
    my $sel = IO::Select->new($s);
    my ($status, $len, $body);
    while (1) {
        if (!defined $status && $conn->{buf} =~ s/\AHTTP\/1\.1 (\d{3})[^\r\n]*\r\n(.*?)\r\n\r\n//s) {
            $status = $1;
            ($len) = $2 =~ /^content-length:\s*(\d+)/mi;
            $len //= 0;
        }
        if (defined $status && length $conn->{buf} >= $len) {
            $body = substr($conn->{buf}, 0, $len, '');
            last;
        }
        my $left = $deadline - time;
        if ($left <= 0 || !$sel->can_read($left)
            || !sysread($s, $conn->{buf}, 65536, length $conn->{buf}))
        {
            undef $conn;
            return { status => 'no answer' };
        }
    }
    return { status => $status, content => $body,
             json => scalar(eval { json_decode($body) }) };
}

# ---------------------------------------------------------------------
# every id once

{
    my $start = time;
    my (%bad, $n);
    for my $id (@ids) {
        my $r = ka_get($id);
        $n++;
        $bad{$id} = $r->{status} if $r->{status} ne $want{$id};
        if ($want{$id} == 402 && $r->{status} eq '402'
            && ($r->{json}{invoice} // '') ne "in_$id")
        {
            $bad{$id} = 'wrong invoice: ' . ($r->{json}{invoice} // 'none');
        }
    }
    is(scalar(keys %bad), 0, "$N ids, each once: every answer right")
        or diag(explain [ (sort keys %bad)[0 .. 9] ], explain \%bad);
    note(sprintf '%d requests in %.2f s', $n, time - $start);

    my $l = $t->gate_lookups($mon);
    is(scalar(grep { $l->{$_} } @ids), $N, 'each was looked up in Redis once');
    is(scalar(grep { ($l->{$_} // 0) > 1 } @ids), 0, 'none twice');
}

my @bad = grep { /\[(?:error|alert|crit|emerg)\]/ } split /\n/, $t->error_log;
is(scalar(@bad), 0, 'no error, alert, crit or emerg in error.log')
    or diag(join "\n", @bad[0 .. ($#bad > 10 ? 10 : $#bad)]);

# ---------------------------------------------------------------------
# the least recently used went, the most recent stay

{
    my @last = @ids[-5 .. -1];
    my %st = map { $_ => ka_get($_)->{status} } @last;
    is_deeply(\%st, { map { $_ => $want{$_} } @last }, 'the last 5 again: right');
    my $l = $t->gate_lookups($mon);
    is(scalar(grep { $l->{$_} } @last), 0, 'the last 5: answered from the cache');

    my @first = @ids[0 .. 49];
    %st = map { $_ => ka_get($_)->{status} } @first;
    is_deeply(\%st, { map { $_ => $want{$_} } @first }, 'the first 50 again: right');
    $l = $t->gate_lookups($mon);
    is(scalar(grep { $l->{$_} } @first), 50,
        'the first 50: no longer cached, each looked up in Redis');

    # and they are cached anew
    %st = map { $_ => ka_get($_)->{status} } @first[0 .. 9];
    $l = $t->gate_lookups($mon);
    is(scalar(grep { $l->{$_} } @first[0 .. 9]), 0,
        'the first 10, once more: cached again');
}

# ---------------------------------------------------------------------
# a second round in another order, with unknown ids mixed in

{
    my @order = reverse @ids[0 .. 999];
    my %bad;
    for my $i (0 .. $#order) {
        my $r = ka_get($order[$i]);
        $bad{$order[$i]} = $r->{status} if $r->{status} ne $want{$order[$i]};
        my $u = "unknown_$i";
        $r = ka_get($u);
        $bad{$u} = $r->{status} if $r->{status} ne '403';
    }
    is(scalar(keys %bad), 0, '1000 known and 1000 unknown ids interleaved: all right')
        or diag(explain \%bad);
}

# ---------------------------------------------------------------------
# entries larger than the zone or than the cache's length fields

for my $len (20_000, 70_000) {
    my $id = "sub_big_$len";
    my $url = 'https://invoice.stripe.com/i/' . ('u' x $len);
    $t->redis('HSET', "billing:sub:$id", state => 'pending',
        initial_invoice => "in_big_$len");
    $t->redis('HSET', "billing:invoice:in_big_$len", hosted_invoice_url => $url);
    for my $try (1, 2) {
        my $r = ka_get($id);
        is($r->{status}, 402, "pay_url of $len bytes, try $try: 402");
        ok(($r->{json}{pay_url} // '') eq $url, "pay_url of $len bytes, try $try: the URL whole");
    }
    my $r = ka_get($ids[1]);
    is($r->{status}, $want{$ids[1]}, "after the $len-byte entry: a small one still right");
}

@bad = grep { /\[(?:error|alert|crit|emerg)\]/ } split /\n/, $t->error_log;
is(scalar(@bad), 0, 'still no error, alert, crit or emerg in error.log')
    or diag(join "\n", @bad[0 .. ($#bad > 10 ? 10 : $#bad)]);

close $conn->{sock} if $conn;
$t->done;
done_testing;
