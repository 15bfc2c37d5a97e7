# billing_gate with nginx's other access checks: "satisfy all" with
# "deny all", "satisfy any" with allow/deny, auth_request under both,
# an operator's error_page 402 taking precedence over the JSON, and a
# request granted by "allow" whose own content answers 403.

use strict;
use warnings;

use Test::More;
use BillingTest qw(:all);

my $SECRET = 'whsec_' . join '', map { ('a'..'z', 0..9)[rand 36] } 1 .. 32;

my $t = BillingTest->new;
$t->write_file('whsec', "$SECRET\n");
$t->secrets($SECRET);

my $FILE = "the resource\n";
for my $d (qw(www www/all-deny www/any-allow www/any-allow/emptydir
              www/any-deny www/authed www/any-auth www/ep www/ep-any www/ep403)) {
    mkdir $t->path($d);
}
$t->write_file("www/$_/f.txt", $FILE)
    for qw(all-deny any-allow any-deny authed any-auth ep ep-any ep403);
$t->write_file('www/pay.html', "<html>please pay</html>\n");
$t->write_file('www/forbidden.html', "<html>not for you</html>\n");

my $PORT2 = BillingTest::free_port();

$t->start_redis;
$t->start_nginx(<<'EOF', PORT2 => $PORT2);
    billing_redis 127.0.0.1:%%REDIS_PORT%% timeout=1s;
    billing_stripe_webhook_secret_file %%DIR%%/whsec;
    billing_portal_url https://billing.stripe.com/p/login/test_123;
    billing_cache zone=billing:1m ttl=10s;

    server {
        listen 127.0.0.1:%%PORT%%;
        root %%DIR%%/www;

        # satisfy all (the default): every check must pass
        location /all-deny/ {
            billing_gate $http_x_subscription_id;
            deny all;
        }

        # satisfy any: "allow" grants whatever the gate says
        location /any-allow/ {
            satisfy any;
            allow 127.0.0.1;
            deny all;
            billing_gate $http_x_subscription_id;
        }

        location /any-allow-proxy/ {
            satisfy any;
            allow 127.0.0.1;
            deny all;
            billing_gate $http_x_subscription_id;
            proxy_pass http://127.0.0.1:%%PORT2%%/;
        }

        # satisfy any, nothing else grants: the gate's own answer
        location /any-deny/ {
            satisfy any;
            deny all;
            billing_gate $http_x_subscription_id;
        }

        location /authed/ {
            billing_gate $http_x_subscription_id;
            auth_request /auth;
        }

        location /any-auth/ {
            satisfy any;
            billing_gate $http_x_subscription_id;
            auth_request /auth;
        }

        # an auth subrequest of another kind (t/26 has the gate there)
        location = /auth {
            internal;
            if ($http_x_auth = "ok") {
                return 200;
            }
            return 401;
        }

        location /ep/ {
            billing_gate $http_x_subscription_id;
            error_page 402 /pay.html;
        }

        location /ep-any/ {
            satisfy any;
            deny all;
            billing_gate $http_x_subscription_id;
            error_page 402 /pay.html;
        }

        location /ep403/ {
            billing_gate $http_x_subscription_id;
            error_page 403 /forbidden.html;
        }

        location = /pay.html {
        }

        location = /forbidden.html {
        }
    }

    server {
        listen 127.0.0.1:%%PORT2%%;

        location /forbidden {
            return 403 "upstream says no\n";
        }

        location / {
            return 200 "upstream ok\n";
        }
    }
EOF

$t->redis('HSET', 'billing:sub:active', state => 'active');
$t->redis('HSET', 'billing:sub:pending', state => 'pending',
    initial_invoice => 'in_p');
$t->redis('HSET', 'billing:invoice:in_p', hosted_invoice_url => 'https://pay/in_p');
$t->redis('HSET', 'billing:sub:cancelled', state => 'cancelled');

sub req {
    my ($path, $id, %h) = @_;
    $h{'X-Subscription-Id'} = $id if defined $id;
    return $t->http("GET", $path, headers => \%h);
}

sub code_of { my ($r) = @_; ref $r->{json} eq 'HASH' ? $r->{json}{error}{code} : undef }

sub is_json {
    my ($r, $status, $code, $name) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    is($r->{status}, $status, "$name: $status") or diag($r->{content});
    is(code_of($r), $code, "$name: JSON code $code");
    like($r->{headers}{'content-type'} // '', qr{^application/json}, "$name: JSON type");
}

sub is_file {
    my ($r, $name) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    is($r->{status}, 200, "$name: 200") or diag($r->{content});
    is($r->{content}, $FILE, "$name: the file");
}

# ---------------------------------------------------------------------
# satisfy all + deny all

{
    my $r = req('/all-deny/f.txt', 'active');
    is($r->{status}, 403, 'satisfy all, deny all, active: 403 (deny still applies)');
    is(code_of($r), undef, 'satisfy all, deny all, active: nginx\'s own 403, not JSON');
    like($r->{content} // '', qr/403 Forbidden/, 'satisfy all, deny all: nginx\'s page');

    is_json(req('/all-deny/f.txt', 'pending'), 402, 'payment_required',
        'satisfy all, deny all, pending');
    is_json(req('/all-deny/f.txt', undef), 401, 'subscription_required',
        'satisfy all, deny all, no id');
}

# ---------------------------------------------------------------------
# satisfy any + allow 127.0.0.1: granted whatever the gate says

for my $id ('nosuch_any', 'nosuch_any', 'pending', 'cancelled', 'active', undef) {
    my $name = 'satisfy any, allow, ' . ($id // 'no id');
    is_file(req('/any-allow/f.txt', $id), $name);
    my $p = req('/any-allow-proxy/x', $id);
    is($p->{status}, 200, "$name, proxied: 200");
    is($p->{content}, "upstream ok\n", "$name, proxied: the upstream's answer");
}

# granted by "allow", the content's own 403 is not the gate's

{
    my $r = req('/any-allow-proxy/forbidden', 'pending');
    is($r->{status}, 403,
        'satisfy any, allow, pending, the upstream answers 403: 403');
    is($r->{content}, "upstream says no\n",
        'satisfy any, allow, pending: the upstream\'s 403 body, not the gate\'s JSON');

    $r = req('/any-allow-proxy/forbidden', 'nosuch_any');
    is($r->{status}, 403, 'satisfy any, allow, unknown, upstream 403: 403');
    is($r->{content}, "upstream says no\n",
        'satisfy any, allow, unknown: the upstream\'s 403 body');

    $r = req('/any-allow-proxy/forbidden', 'active');
    is($r->{content}, "upstream says no\n",
        'satisfy any, allow, active, upstream 403: its body');

    $r = req('/any-allow/emptydir/', 'pending');
    is($r->{status}, 403, 'satisfy any, allow, pending, a directory without index: 403');
    like($r->{content} // '', qr/403 Forbidden/,
        'satisfy any, allow, pending: nginx\'s own "directory index is forbidden" page');
}

# ---------------------------------------------------------------------
# satisfy any + deny all: the gate's real answer

{
    is_file(req('/any-deny/f.txt', 'active'), 'satisfy any, deny all, active (the gate grants)');

    my $r = req('/any-deny/f.txt', 'pending');
    is_json($r, 402, 'payment_required', 'satisfy any, deny all, pending');
    is($r->{json} && $r->{json}{invoice}, 'in_p', 'satisfy any, pending: invoice');
    is($r->{json} && $r->{json}{pay_url}, 'https://pay/in_p', 'satisfy any, pending: pay_url');
    is($r->{json} && $r->{json}{portal_url},
        'https://billing.stripe.com/p/login/test_123', 'satisfy any, pending: portal_url');
    like($r->{headers}{'cache-control'} // '', qr/no-store/,
        'satisfy any, pending: Cache-Control no-store');

    is_json(req('/any-deny/f.txt', 'cancelled'), 403, 'subscription_cancelled',
        'satisfy any, deny all, cancelled');
    is_json(req('/any-deny/f.txt', 'nosuch_deny'), 403, 'unknown_subscription',
        'satisfy any, deny all, unknown');
    is_json(req('/any-deny/f.txt', undef), 401, 'subscription_required',
        'satisfy any, deny all, no id');

    my $h = $t->raw_http("HEAD /any-deny/f.txt HTTP/1.1\r\nHost: x\r\n"
        . "X-Subscription-Id: pending\r\nConnection: close\r\n\r\n");
    is($h->{status}, 402, 'satisfy any, HEAD pending: 402');
    like($h->{headers}{'content-type'} // '', qr{^application/json},
        'satisfy any, HEAD pending: JSON type');
    is($h->{content}, '', 'satisfy any, HEAD pending: no body');
}

# ---------------------------------------------------------------------
# auth_request under satisfy all: both must pass

{
    is_file(req('/authed/f.txt', 'active', 'X-Auth' => 'ok'),
        'auth_request + gate, both pass');

    my $r = req('/authed/f.txt', 'active', 'X-Auth' => 'no');
    is($r->{status}, 401, 'auth_request denies, gate passes: 401');
    is(code_of($r), undef, 'auth_request\'s 401 is nginx\'s, not the gate\'s JSON');

    is_json(req('/authed/f.txt', 'pending', 'X-Auth' => 'ok'), 402,
        'payment_required', 'auth_request passes, gate denies');
    is_json(req('/authed/f.txt', 'nosuch_auth', 'X-Auth' => 'ok'), 403,
        'unknown_subscription', 'auth_request passes, unknown id');

    $r = req('/authed/f.txt', 'pending', 'X-Auth' => 'no');
    ok($r->{status} == 402 || $r->{status} == 401,
        'both deny: denied (402 or 401)') or diag("got $r->{status}");
    isnt($r->{content}, $FILE, 'both deny: not the file');
}

# auth_request under satisfy any: either grants

{
    is_file(req('/any-auth/f.txt', 'active', 'X-Auth' => 'no'),
        'satisfy any: the gate grants, auth_request denies');
    is_file(req('/any-auth/f.txt', 'pending', 'X-Auth' => 'ok'),
        'satisfy any: auth_request grants, the gate denies');
    my $r = req('/any-auth/f.txt', 'pending', 'X-Auth' => 'no');
    ok($r->{status} == 401 || $r->{status} == 402,
        'satisfy any: both deny: 401 or 402') or diag("got $r->{status}");
    isnt($r->{content}, $FILE, 'satisfy any: both deny: not the file');
}

# ---------------------------------------------------------------------
# error_page 402 wins over the JSON

{
    my $r = req('/ep/f.txt', 'pending');
    is($r->{status}, 402, 'error_page 402: status 402');
    is($r->{content}, "<html>please pay</html>\n", 'error_page 402: the operator\'s page');
    like($r->{headers}{'content-type'} // '', qr{^text/html},
        'error_page 402: its content type');

    is_json(req('/ep/f.txt', 'cancelled'), 403, 'subscription_cancelled',
        'error_page 402 only: a 403 is still JSON');
    is_file(req('/ep/f.txt', 'active'), 'error_page 402, active');

    $r = req('/ep-any/f.txt', 'pending');
    is($r->{status}, 402, 'satisfy any + error_page 402: status 402');
    is($r->{content}, "<html>please pay</html>\n",
        'satisfy any + error_page 402: the operator\'s page');

    is_json(req('/ep-any/f.txt', 'cancelled'), 403, 'subscription_cancelled',
        'satisfy any + error_page 402, cancelled: JSON');
}

# the access log's $status is what the client got

{
    my $r = req('/any-deny/f.txt?logcheck-any', 'pending');
    is($r->{status}, 402, 'satisfy any, pending (log check): 402');
    $r = req('/all-deny/f.txt?logcheck-all', 'pending');
    is($r->{status}, 402, 'satisfy all, pending (log check): 402');

    my $status_of = sub {
        my ($q) = @_;
        my ($l) = grep { /\?\Q$q\E / } split /\n/, ($t->read_file('access.log') // '');
        return $l && $l =~ /" (\d{3}) / ? $1 : undef;
    };
    wait_until(sub { $status_of->('logcheck-any') && $status_of->('logcheck-all') }, 3);
    is($status_of->('logcheck-all'), 402, 'satisfy all: access log $status 402');
    is($status_of->('logcheck-any'), 402, 'satisfy any: access log $status 402');
}

# the operator's error_page for 403 as well
{
    my $r = req('/ep403/f.txt', 'cancelled');
    is($r->{status}, 403, 'error_page 403, cancelled: 403');
    is($r->{content}, "<html>not for you</html>\n", 'error_page 403: the operator\'s page');
    is_json(req('/ep403/f.txt', 'pending'), 402, 'payment_required',
        'error_page 403 only, pending: 402 JSON');
    is_file(req('/ep403/f.txt', 'active'), 'error_page 403, active');
}

$t->done;
done_testing;
