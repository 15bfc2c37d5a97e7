# billing_gate: every row of the contract's table with its JSON body,
# content type and Cache-Control; the id's syntax; HEAD; inheritance and
# "billing_gate off"; a POST with a body to a denied location answered
# with the JSON on a connection that stays usable (keep-alive), from a
# Redis lookup and from the cache.

use strict;
use warnings;

use Test::More;
use BillingTest qw(:all);
use IO::Select;
use IO::Socket::INET;
use Time::HiRes qw(time);

my $SECRET = 'whsec_' . join '', map { ('a'..'z', 0..9)[rand 36] } 1 .. 32;
my $PORTAL = 'https://billing.stripe.com/p/login/test_123';

my $t = BillingTest->new;
$t->write_file('whsec', "$SECRET\n");
$t->secrets($SECRET);
$t->start_redis;
$t->start_nginx(<<'EOF');
    billing_redis 127.0.0.1:%%REDIS_PORT%% timeout=1s;
    billing_stripe_webhook_secret_file %%DIR%%/whsec;
    billing_portal_url https://billing.stripe.com/p/login/test_123;
    billing_cache zone=billing:1m ttl=10s;

    server {
        listen 127.0.0.1:%%PORT%%;

        location = /stripe/webhook {
            billing_webhook;
        }

        location /gated/ {
            billing_gate $http_x_subscription_id;
            return 200 "gated\n";

            location /gated/inherit/ {
                return 200 "inherited\n";
            }

            location /gated/off/ {
                billing_gate off;
                return 200 "off\n";
            }
        }

        location /open/ {
            return 200 "open\n";
        }
    }
EOF

sub sub_state {
    my ($id, %f) = @_;
    $t->redis('HSET', "billing:sub:$id", %f);
}

my $ID64 = 'A' x 60 . '_.-9';                   # 64 characters, all allowed
my $ID65 = 'B' x 65;

sub_state('sub_active', state => 'active', initial_invoice => 'in_active1');
sub_state('sub_pending', state => 'pending', initial_invoice => 'in_pend1');
$t->redis('HSET', 'billing:invoice:in_pend1',
    hosted_invoice_url => 'https://invoice.stripe.com/i/acct_1/test_pend1?s=ap',
    status => 'open');
sub_state('sub_pending_nourl', state => 'pending',
    initial_invoice => 'in_nourl1');            # no invoice hash at all
sub_state('sub_failed', state => 'payment_failed', initial_invoice => 'in_f1');
sub_state('sub_cancelled', state => 'cancelled', initial_invoice => 'in_c1');
sub_state($ID64, state => 'active');
sub_state($ID65, state => 'active');            # exists, but not a valid id
sub_state('a:b', state => 'active');            # a ':' would reach other keys
sub_state('a b', state => 'active');

sub gated {
    my ($id, %o) = @_;
    my $path = $o{path} || '/gated/x';
    my %h = defined $id ? ('X-Subscription-Id' => $id) : ();
    return $t->http($o{method} || 'GET', $path, headers => \%h,
        $o{body} ? (body => $o{body}) : ());
}

sub hval {
    my ($r, $name) = @_;
    my $v = $r->{headers}{lc $name};
    return ref $v ? join(', ', @$v) : $v;
}

# status, code, JSON content type, no-store, a message
sub is_denial {
    my ($r, $status, $code, $name) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    is($r->{status}, $status, "$name: status $status")
        or diag(explain $r);
    like(hval($r, 'Content-Type') // '', qr{^application/json\s*(;|$)},
        "$name: Content-Type application/json");
    like(hval($r, 'Cache-Control') // '', qr/\bno-store\b/,
        "$name: Cache-Control no-store");
    is(ref $r->{json}, 'HASH', "$name: the body is a JSON object")
        or return diag("body: " . ($r->{content} // ''));
    is($r->{json}{error}{code}, $code, "$name: code $code");
    ok(defined $r->{json}{error}{message} && !ref $r->{json}{error}{message}
        && length $r->{json}{error}{message}, "$name: a message");
    is(hval($r, 'Content-Length'), length($r->{content}),
        "$name: Content-Length matches the body")
        if defined hval($r, 'Content-Length');
}

# ---------------------------------------------------------------------
# the table

{
    my $r = gated('sub_active');
    is($r->{status}, 200, 'active: 200');
    is($r->{content}, "gated\n", 'active: the location\'s content');

    $r = gated('sub_active', path => '/gated/inherit/y');
    is($r->{status}, 200, 'active, nested location: 200');
    is($r->{content}, "inherited\n", 'nested location\'s content');
}

{
    my $r = gated('sub_pending');
    is_denial($r, 402, 'payment_required', 'pending');
    is($r->{json}{invoice}, 'in_pend1', 'pending: invoice is the initial invoice');
    is($r->{json}{pay_url}, 'https://invoice.stripe.com/i/acct_1/test_pend1?s=ap',
        'pending: pay_url is its hosted_invoice_url');
    is($r->{json}{portal_url}, $PORTAL, 'pending: portal_url');
    is($r->{reason}, 'Payment Required', 'pending: reason phrase');

    # from the cache this time: the same answer
    my $r2 = gated('sub_pending');
    is($r2->{status}, 402, 'pending again (cached): 402');
    is_deeply($r2->{json}, $r->{json}, 'pending again: the same body');
}

{
    my $r = gated('sub_pending_nourl');
    is_denial($r, 402, 'payment_required', 'pending, invoice without URL');
    is($r->{json}{invoice}, 'in_nourl1', 'pending without URL: invoice');
    ok(exists $r->{json}{pay_url} && !defined $r->{json}{pay_url},
        'pending without URL: pay_url is null');
    is($r->{json}{portal_url}, $PORTAL, 'pending without URL: portal_url');
}

is_denial(gated('sub_failed'), 403, 'payment_failed', 'payment_failed');
is_denial(gated('sub_cancelled'), 403, 'subscription_cancelled', 'cancelled');
is_denial(gated('sub_nosuch'), 403, 'unknown_subscription', 'unknown id');
is_denial(gated('sub_nosuch'), 403, 'unknown_subscription', 'unknown id again');
is_denial(gated(undef), 401, 'subscription_required', 'no header');
is_denial(gated(''), 401, 'subscription_required', 'empty header');

{
    my $r = gated($ID64);
    is($r->{status}, 200, '64-character id: 200');
    is_denial(gated($ID65), 403, 'unknown_subscription',
        '65-character id (its hash exists)');
    is_denial(gated('a:b'), 403, 'unknown_subscription',
        'id with ":" (its hash exists)');
    is_denial(gated('a b'), 403, 'unknown_subscription',
        'id with a space (its hash exists)');
}

# inheritance stops at "billing_gate off"; /open/ has no gate

{
    my $r = gated(undef, path => '/gated/off/z');
    is($r->{status}, 200, 'billing_gate off in a nested location: 200');
    is($r->{content}, "off\n", 'its content');

    $r = gated('sub_pending', path => '/gated/inherit/z');
    is($r->{status}, 402, 'the gate is inherited by a nested location');

    $r = $t->http('GET', '/open/');
    is($r->{status}, 200, 'an ungated location: 200');
}

# ---------------------------------------------------------------------
# HEAD

{
    my $get = gated('sub_pending');
    my $r = $t->raw_http("HEAD /gated/h HTTP/1.1\r\nHost: localhost\r\n"
        . "X-Subscription-Id: sub_pending\r\nConnection: close\r\n\r\n");
    is($r->{status}, 402, 'HEAD, pending: 402');
    like($r->{headers}{'content-type'} // '', qr{^application/json},
        'HEAD: Content-Type application/json');
    like($r->{headers}{'cache-control'} // '', qr/no-store/,
        'HEAD: Cache-Control no-store');
    is($r->{headers}{'content-length'}, length($get->{content}),
        'HEAD: Content-Length of the GET body');
    is($r->{content}, '', 'HEAD: no body');

    $r = $t->raw_http("HEAD /gated/h HTTP/1.1\r\nHost: localhost\r\n"
        . "X-Subscription-Id: sub_cancelled\r\nConnection: close\r\n\r\n");
    is($r->{status}, 403, 'HEAD, cancelled: 403');
    like($r->{headers}{'content-type'} // '', qr{^application/json},
        'HEAD, cancelled: JSON content type');
    is($r->{content}, '', 'HEAD, cancelled: no body');

    $r = $t->raw_http("HEAD /gated/h HTTP/1.1\r\nHost: localhost\r\n"
        . "X-Subscription-Id: sub_active\r\nConnection: close\r\n\r\n");
    is($r->{status}, 200, 'HEAD, active: 200');
    is($r->{content}, '', 'HEAD, active: no body');
}

# ---------------------------------------------------------------------
# a POST with a body to a denied location; the connection goes on

sub ka_open {
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
        PeerPort => $t->port, Proto => 'tcp', Timeout => 5)
        or die "connect: $!";
    $s->autoflush(1);
    return { sock => $s, buf => '' };
}

sub ka_fill {
    my ($c, $deadline) = @_;
    my $left = $deadline - time;
    return 0 if $left <= 0;
    return 0 unless IO::Select->new($c->{sock})->can_read($left);
    my $n = sysread($c->{sock}, my $buf, 65536);
    return 0 unless $n;
    $c->{buf} .= $buf;
    return 1;
}

sub ka_write {
    my ($c, $bytes) = @_;
    my $off = 0;
    while ($off < length $bytes) {
        my $n = syswrite($c->{sock}, $bytes, length($bytes) - $off, $off);
        return 0 unless defined $n;
        $off += $n;
    }
    return 1;
}

# one response off a persistent connection; undef when it closed
sub ka_read {
    my ($c, %o) = @_;
    my $deadline = time + ($o{timeout} || 5);
    while ($c->{buf} !~ /\r\n\r\n/) {
        ka_fill($c, $deadline) or return undef;
    }
    $c->{buf} =~ s/\A(HTTP\/1\.\d (\d{3})[^\r\n]*)\r\n(.*?)\r\n\r\n//s
        or return undef;
    my %r = (status => $2, headers => {});
    for my $line (split /\r\n/, $3) {
        my ($k, $v) = $line =~ /^([^:]+):\s*(.*)$/ or next;
        $r{headers}{lc $k} = $v;
    }
    my $body = '';
    if (!$o{head} && defined $r{headers}{'content-length'}) {
        my $len = $r{headers}{'content-length'};
        while (length $c->{buf} < $len) {
            ka_fill($c, $deadline) or return undef;
        }
        $body = substr($c->{buf}, 0, $len, '');
    } elsif (!$o{head} && ($r{headers}{'transfer-encoding'} // '') =~ /chunked/) {
        while (1) {
            while ($c->{buf} !~ /\r\n/) { ka_fill($c, $deadline) or return undef }
            $c->{buf} =~ s/\A([0-9a-fA-F]+)[^\r\n]*\r\n// or return undef;
            my $len = hex $1;
            while (length $c->{buf} < $len + 2) {
                ka_fill($c, $deadline) or return undef;
            }
            $body .= substr($c->{buf}, 0, $len);
            substr($c->{buf}, 0, $len + 2) = '';
            last if $len == 0;
        }
    }
    $r{content} = $body;
    $r{json} = eval { json_decode($body) };
    return \%r;
}

sub post_bytes {
    my ($id, $body, %o) = @_;
    my $req = "POST /gated/post HTTP/1.1\r\nHost: localhost\r\n"
        . "X-Subscription-Id: $id\r\nContent-Type: application/octet-stream\r\n";
    if ($o{chunked}) {
        $req .= "Transfer-Encoding: chunked\r\n\r\n";
        for (my $i = 0; $i < length $body; $i += 4000) {
            my $part = substr($body, $i, 4000);
            $req .= sprintf("%x\r\n%s\r\n", length $part, $part);
        }
        $req .= "0\r\n\r\n";
    } else {
        $req .= 'Content-Length: ' . length($body) . "\r\n\r\n$body";
    }
    return $req;
}

my $GET_OPEN = "GET /open/ HTTP/1.1\r\nHost: localhost\r\n\r\n";

# the id is looked up in Redis (cold), then the cache answers
for my $case (
    [ 'sub_pending_ka', 'cold (Redis lookup)', 'small body', 'x' x 100 ],
    [ 'sub_pending_ka', 'cached', 'small body', 'y' x 100 ],
    [ 'sub_pending_ka', 'cached', '200 KB body', 'z' x 200_000 ],
    [ 'sub_pending_ka2', 'cold (Redis lookup)', '200 KB body', 'w' x 200_000 ],
    [ 'sub_pending_ka', 'cached', 'chunked 50 KB body', 'c' x 50_000, 1 ],
    [ 'sub_nosuch_ka', 'cold (Redis lookup)', '20 KB body', 'u' x 20_000 ],
    [ 'sub_nosuch_ka', 'cached', '20 KB body', 'u' x 20_000 ],
) {
    my ($id, $how, $what, $body, $chunked) = @$case;
    sub_state($id, state => 'pending', initial_invoice => 'in_ka')
        if $id =~ /pending/;
    my $name = "POST $what, $how";

    my $c = ka_open();
    ka_write($c, post_bytes($id, $body, chunked => $chunked));
    my $r = ka_read($c);
    ok($r, "$name: an answer") or next;
    my $want = $id =~ /pending/ ? 402 : 403;
    is($r->{status}, $want, "$name: $want");
    like($r->{headers}{'content-type'} // '', qr{^application/json},
        "$name: JSON");
    is(ref $r->{json} && $r->{json}{error}{code},
        $id =~ /pending/ ? 'payment_required' : 'unknown_subscription',
        "$name: its code");
    unlike($r->{headers}{connection} // '', qr/close/i,
        "$name: no Connection: close");

    ok(ka_write($c, $GET_OPEN), "$name: a second request written");
    my $r2 = ka_read($c);
    ok($r2 && $r2->{status} == 200 && $r2->{content} eq "open\n",
        "$name: the same connection answers the next request")
        or diag(explain $r2);

    # and a third, gated, on it
    ka_write($c, "GET /gated/again HTTP/1.1\r\nHost: localhost\r\n"
        . "X-Subscription-Id: sub_active\r\n\r\n");
    my $r3 = ka_read($c);
    ok($r3 && $r3->{status} == 200 && $r3->{content} eq "gated\n",
        "$name: then a gated request for an active subscription: 200")
        or diag(explain $r3);
    close $c->{sock};
}

# several requests pipelined on one connection, mixed answers

{
    my $c = ka_open();
    my @ids = qw(sub_active sub_pending sub_cancelled sub_active sub_nosuch);
    ka_write($c, join '', map {
        "GET /gated/p HTTP/1.1\r\nHost: localhost\r\nX-Subscription-Id: $_\r\n\r\n"
    } @ids);
    my @st = map { my $r = ka_read($c); $r ? $r->{status} : 'none' } @ids;
    is_deeply(\@st, [200, 402, 403, 200, 403],
        'pipelined requests: each gets its own answer');
    close $c->{sock};

    # the first ones wait for Redis while the next are in the buffer
    sub_state('pipe_cold1', state => 'active');
    sub_state('pipe_cold3', state => 'pending', initial_invoice => 'in_pc3');
    @ids = qw(pipe_cold1 pipe_cold2 sub_active pipe_cold3 pipe_cold1);
    $c = ka_open();
    ka_write($c, join '', map {
        "GET /gated/p HTTP/1.1\r\nHost: localhost\r\nX-Subscription-Id: $_\r\n\r\n"
    } @ids);
    my @r = map { ka_read($c) } @ids;
    is_deeply([ map { $_ ? $_->{status} : 'none' } @r ], [200, 403, 200, 402, 200],
        'pipelined requests looked up in Redis: each gets its own answer');
    is($r[3] && $r[3]{json} && $r[3]{json}{invoice}, 'in_pc3',
        'pipelined: the 402 carries its own invoice');
    close $c->{sock};
}

# a HEAD on a keep-alive connection: nothing after the headers

{
    my $c = ka_open();
    ka_write($c, "HEAD /gated/h HTTP/1.1\r\nHost: localhost\r\n"
        . "X-Subscription-Id: sub_pending\r\n\r\n");
    my $r = ka_read($c, head => 1);
    is($r && $r->{status}, 402, 'HEAD on keep-alive: 402');
    ka_write($c, $GET_OPEN);
    my $r2 = ka_read($c);
    ok($r2 && $r2->{status} == 200 && $r2->{content} eq "open\n",
        'HEAD on keep-alive: no body bytes left before the next answer')
        or diag(explain $r2);
    close $c->{sock};
}

$t->done;
done_testing;
