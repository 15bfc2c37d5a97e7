# billing_unavailable: when Redis cannot answer and nothing usable is
# cached, "deny" (the default) answers 503 billing_unavailable, "allow"
# lets the request through with a warning (once a second, not once a
# request) and meters it: its units reach Redis once Redis is back, on
# the subscription's next invoice (period start 0). A hostile id from a
# header is logged escaped and cut short.

use strict;
use warnings;

use Test::More;
use Time::HiRes qw(time sleep);

use BillingTest qw(:all);

my $t = BillingTest->new;

my ($rc, $out) = $t->start_nginx(<<'EOF', nginx_test => 1);
    billing_redis 127.0.0.1:%%REDIS_PORT%%;
    billing_unavailable maybe;
    server { listen 127.0.0.1:%%PORT%%; }
EOF
isnt $rc, 0, 'billing_unavailable maybe: refused';
like $out, qr/invalid value "maybe"/, '... an invalid value';

$t->start_redis;
$t->start_nginx(<<'EOF');
    billing_redis 127.0.0.1:%%REDIS_PORT%% timeout=300ms connect_timeout=300ms;
    billing_meter_flush 200ms;

    server {
        listen 127.0.0.1:%%PORT%%;
        billing_gate $http_x_subscription_id;

        location /deny/ { return 200 "ok\n"; }

        location /allow/ {
            billing_unavailable allow;
            return 200 "ok\n";
        }
    }
EOF

my %H = (headers => { 'X-Subscription-Id' => 'sub-u' });

is $t->http('GET', '/allow/x', %H)->{status}, 403,
    'Redis up: an unknown subscription is refused, allow or not';

$t->redis('HSET', 'billing:sub:sub-u', 'state', 'active', 'period',
    '3600', 'period_start', int(time) - 10);
is $t->http('GET', '/deny/x', %H)->{status}, 200, 'active: 200';

$t->stop_redis;

my $d = $t->http('GET', '/deny/x', %H);
is $d->{status}, 503, 'Redis down, deny: 503';
is $d->{json}{error}{code}, 'billing_unavailable', '... billing_unavailable';

my $n = 0;
for (1 .. 5) {
    my $a = $t->http('GET', '/allow/x', %H);
    $n++ if $a->{status} == 200;
}
is $n, 5, 'Redis down, allow: the requests go through';
my @warn = $t->error_log =~ /let through \(billing_unavailable allow\)/g;
ok @warn >= 1 && @warn <= 3, '... with a warning, not one per request ('
    . scalar(@warn) . ')';
is $t->http('GET', '/allow/x')->{status}, 401,
    '... but no subscription at all is still 401';

$t->restart_redis;
$t->redis('HSET', 'billing:sub:sub-u', 'state', 'active', 'period',
    '3600', 'period_start', int(time) - 10) unless
    $t->redis('HGET', 'billing:sub:sub-u', 'state');

ok wait_until(sub { ($t->redis('HGET', 'billing:usage:sub-u', '0') // 0) >= 5 },
    15), 'Redis back: the units let through reach it, for the next invoice';

# a hostile subscription header reaches error.log escaped and cut short
{
    my $evil = "sub-\e[31mred\e[0m\x01" . ('A' x 7000);
    my $r = $t->raw_http("GET /deny/x HTTP/1.0\r\nHost: localhost\r\n"
        . "X-Subscription-Id: $evil\r\n\r\n");
    like $r->{raw} // '', qr/^HTTP\/1\.1 403/, 'a hostile id: 403';
    my ($line) = grep { /unknown_subscription for subscription/
                         && /HTTP\/1\.0/ } split /\n/, $t->error_log;
    ok $line, '... logged';
    ok $line !~ /[\x00-\x08\x0e-\x1f\x7f]/, '... with no raw control byte';
    like $line, qr/sub-\\x1b\[31mred/, '... escaped';
    cmp_ok length($line), '<', 1000, '... and cut short';
}

$t->done;
done_testing;
