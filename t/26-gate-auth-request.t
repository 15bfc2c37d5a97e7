# billing_gate in the target location of auth_request, the usual nginx
# pattern:
#
#     location /api/ { auth_request /_check; proxy_pass ...; }
#     location = /_check { internal; billing_gate $http_x_subscription_id;
#                          return 204; }
#
# gates the main request: 401/403/402/503 with the gate's own status and
# JSON (auth_request alone would make a 402 a 500), 200 from the backend
# when active, and the main request is metered (once: not the
# subrequest) as the target location's billing_meter says ("on", VALUE
# from the backend's header, "off"); nothing reaches the backend when
# denied; with "satisfy any" an allow rule may still let a request in,
# and the gate's answer comes when nothing did; the decision is cached
# (Redis stopped: cached decisions still served); an auth_request in
# front of the module's own API location does not gate it; a server-level
# billing_gate and an auth_request together both apply.

use strict;
use warnings;

use Test::More;
use BillingTest qw(:all);
use IO::Socket::INET;
use Time::HiRes qw(time sleep);

my $t = BillingTest->new;
my $BACKEND = BillingTest::free_port();
my $files = $t->billing_files;

my $HTTP = <<'EOF';
    billing_redis 127.0.0.1:%%REDIS_PORT%% timeout=1s;
    billing_cache zone=billing:1m ttl=10s stale=60s;
    billing_meter_flush 200ms;
    billing_portal_url https://billing.stripe.com/p/login/test_123;
    billing_api_token_file %%DIR%%/api.token;
    billing_stripe_key_file %%DIR%%/stripe.key;

    server {
        listen 127.0.0.1:%%BACKEND%%;

        location /ep/ {
            return 403 "backend says no\n";
        }

        location / {
            add_header X-Billing-Units 4;
            return 200 "backend $uri\n";
        }
    }

    server {
        listen 127.0.0.1:%%PORT%%;

        # a subrequest counted would show here
        log_subrequest on;

        location /api/ {
            auth_request /_check;
            proxy_pass http://127.0.0.1:%%BACKEND%%;
        }

        location = /_check {
            internal;
            billing_gate $http_x_subscription_id;
            return 204;
        }

        location /units/ {
            auth_request /_check_units;
            proxy_pass http://127.0.0.1:%%BACKEND%%;
        }

        location = /_check_units {
            internal;
            billing_gate $http_x_subscription_id;
            billing_meter $upstream_http_x_billing_units;
            return 204;
        }

        location /free/ {
            auth_request /_check_free;
            proxy_pass http://127.0.0.1:%%BACKEND%%;
        }

        location = /_check_free {
            internal;
            billing_gate $http_x_subscription_id;
            billing_meter off;
            return 204;
        }

        # the target's own error_page overrules the gate's denial: the
        # backend's answer (a 403 of its own) is the client's
        location /ep/ {
            auth_request /_check_ep;
            proxy_pass http://127.0.0.1:%%BACKEND%%;
        }

        location = /_check_ep {
            internal;
            billing_gate $http_x_subscription_id;
            error_page 403 = @let_in;
        }

        location @let_in {
            return 204;
        }

        location /any/ {
            satisfy any;
            allow 127.0.0.2;
            deny all;
            auth_request /_check;
            proxy_pass http://127.0.0.1:%%BACKEND%%;
        }

        location /billing/ {
            billing_api;
            auth_request /_check;
        }

        location /_billing_stripe/ {
            internal;
            proxy_pass http://127.0.0.1:%%BACKEND%%/;
        }
    }

    server {
        listen 127.0.0.1:%%PORT2%%;

        billing_gate $http_x_subscription_id;

        location /api/ {
            auth_request /_check;
            proxy_pass http://127.0.0.1:%%BACKEND%%;
        }

        location = /_check {
            internal;
            billing_gate $http_x_other;
            return 204;
        }

        # an auth_request target of another kind inherits the server's
        # gate: it is not a billing gate
        location /public/ {
            billing_gate off;
            auth_request /_oauth;
            proxy_pass http://127.0.0.1:%%BACKEND%%;
        }

        location = /_oauth {
            internal;
            proxy_pass http://127.0.0.1:%%BACKEND%%/oauth;
        }
    }
EOF

my $PORT2 = BillingTest::free_port();
$t->start_redis;
$t->start_nginx($HTTP, workers => 2, BACKEND => $BACKEND, PORT2 => $PORT2);

my $START = int(time) - 5;

sub state {
    my ($id, $state, %f) = @_;
    $t->redis('HSET', "billing:sub:$id", state => $state,
        period_start => $START, period => 'month', %f);
}

state('active', 'active');
state('units', 'active');
state('free', 'active');
state('other', 'active');
state('both_main', 'active');
state('both_auth', 'active');
state('pending', 'pending', initial_invoice => 'in_pending');
$t->redis('HSET', 'billing:invoice:in_pending',
    hosted_invoice_url => 'https://invoice.stripe.com/i/test_pending',
    status => 'open');
state('failed', 'payment_failed');
state('cancelled', 'cancelled');

sub get {
    my ($path, $sub, %o) = @_;
    my %h = defined $sub ? ('X-Subscription-Id' => $sub) : ();
    %h = (%h, %{ $o{headers} }) if $o{headers};
    return $t->http('GET', $path, headers => \%h, port => $o{port});
}

sub usage { $t->redis_hash("billing:usage:$_[0]") }

sub usage_is {
    my ($sub, $want, $name) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    my $key = join ',', map { "$_=$want->{$_}" } sort keys %$want;
    wait_until(sub {
        my $u = usage($sub);
        join(',', map { "$_=$u->{$_}" } sort keys %$u) eq $key;
    }, 10);
    sleep 0.5;    # two flushes more: nothing else comes
    is_deeply usage($sub), $want, $name;
}

sub denied {
    my ($r, $status, $code, $name) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    is $r->{status}, $status, "$name: $status";
    like $r->{headers}{'content-type'} // '', qr{^application/json},
        "$name: JSON";
    is $r->{json} && $r->{json}{error}{code}, $code, "$name: $code";
    unlike $r->{content} // '', qr/backend/, "$name: the backend not reached";
}

# ---------------------------------------------------------------------
# the main request gets the gate's answers

{
    my $r = get('/api/x', 'active');
    is $r->{status}, 200, 'active: 200';
    is $r->{content}, "backend /api/x\n", 'active: the backend answered';

    $r = get('/api/x', 'pending');
    denied($r, 402, 'payment_required', 'pending');
    is $r->{json}{invoice}, 'in_pending', 'pending: the invoice';
    is $r->{json}{pay_url}, 'https://invoice.stripe.com/i/test_pending',
        'pending: its pay_url';
    is $r->{json}{portal_url}, 'https://billing.stripe.com/p/login/test_123',
        'pending: the portal';
    is $r->{headers}{'cache-control'}, 'no-store', 'pending: no-store';

    denied(get('/api/x', 'failed'), 403, 'payment_failed', 'payment_failed');
    denied(get('/api/x', 'cancelled'), 403, 'subscription_cancelled',
        'cancelled');
    denied(get('/api/x', 'nobody'), 403, 'unknown_subscription', 'unknown');
    denied(get('/api/x', 'bad id!'), 403, 'unknown_subscription',
        'an id never issued');
    denied(get('/api/x', undef), 401, 'subscription_required', 'no id');

    for my $i (1 .. 4) {
        is get('/api/x', 'pending')->{status}, 402,
            "pending again ($i): 402, whichever worker";
    }

    my $h = $t->http('HEAD', '/api/x',
        headers => { 'X-Subscription-Id' => 'pending' });
    is $h->{status}, 402, 'HEAD pending: 402';
    like $h->{headers}{'content-type'} // '', qr{^application/json},
        'HEAD pending: JSON type';
    is $h->{content} // '', '', 'HEAD pending: no body';

    # auth_request alone gives no 500 for any of them
    my $log = $t->error_log;
    unlike $log, qr/auth request unexpected status/,
        'auth_request never saw another status than 401 and 403';
}

# ---------------------------------------------------------------------
# metering: the main request, once, as the target location says

{
    is get('/api/x', 'active')->{status}, 200, "active: 200 ($_)" for 1 .. 4;
    usage_is('active', { $START => 5 },
        'billing_meter on in the target: one unit per main request '
        . '(5 in all), none for the subrequest');

    is get('/units/x', 'units')->{status}, 200, 'units: 200';
    is get('/units/y', 'units')->{status}, 200, 'units: 200 again';
    usage_is('units', { $START => 8 },
        'billing_meter $upstream_http_x_billing_units: the main request\'s '
        . 'upstream header, 4 + 4');

    is get('/free/x', 'free')->{status}, 200, 'free: 200';
    usage_is('free', {}, 'billing_meter off in the target: nothing counted');

    denied(get('/api/x', 'pending'), 402, 'payment_required',
        'pending, metering');
    usage_is('pending', {}, 'a denied main request counts nothing');
}

# ---------------------------------------------------------------------
# an error_page of the target that lets the request in after all

{
    my $r = get('/ep/x', 'cancelled');
    is $r->{status}, 403, 'target\'s error_page lets in: the backend\'s 403';
    is $r->{content}, "backend says no\n", '... its own body, not the gate\'s';
    usage_is('cancelled', {}, '... not metered');
}

# ---------------------------------------------------------------------
# satisfy any: the gate's answer when nothing else let the request in

{
    my $r = get('/any/x', 'active');
    is $r->{status}, 200, 'satisfy any, active: 200';
    denied(get('/any/x', 'pending'), 402, 'payment_required',
        'satisfy any, pending (deny all)');
    denied(get('/any/x', 'cancelled'), 403, 'subscription_cancelled',
        'satisfy any, cancelled');
    denied(get('/any/x', undef), 401, 'subscription_required',
        'satisfy any, no id');

    # from 127.0.0.2 "allow" lets a pending subscription in: the backend
    # answers, and what the gate did not let in is not metered
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $t->port,
        LocalAddr => '127.0.0.2', Proto => 'tcp', Timeout => 5);
  SKIP: {
        skip 'cannot connect from 127.0.0.2', 3 unless $s;
        print $s "GET /any/allowed HTTP/1.0\r\nHost: x\r\n"
            . "X-Subscription-Id: pending\r\n\r\n";
        local $/;
        my $answer = <$s> // '';
        like $answer, qr{^HTTP/1\.1 200}, 'satisfy any, allowed address, '
            . 'pending: 200';
        like $answer, qr{backend /any/allowed}, '... from the backend';
        usage_is('pending', {}, '... and not metered');
    }
}

# ---------------------------------------------------------------------
# the module's own API behind an auth_request is not gated by it

{
    # no X-Subscription-Id: the gate would say 401
    my $r = $t->api('GET', 'subscriptions/nobody');
    is $r->{status}, 404, 'the API behind auth_request answers itself (404)'
        or diag $r->{content};
    is $r->{json} && $r->{json}{error}{code}, 'not_found',
        'the API\'s own error, not the gate\'s';
}

# ---------------------------------------------------------------------
# a server-level gate and an auth_request gate both apply

{
    is get('/api/x', 'active', port => $PORT2,
        headers => { 'X-Other' => 'other' })->{status}, 200,
        'both gates active: 200';
    denied(get('/api/x', 'active', port => $PORT2,
        headers => { 'X-Other' => 'cancelled' }), 403,
        'subscription_cancelled', 'the auth_request gate denies');
    denied(get('/api/x', 'pending', port => $PORT2,
        headers => { 'X-Other' => 'other' }), 402, 'payment_required',
        'the server-level gate denies');

    is get('/api/x', 'both_main', port => $PORT2,
        headers => { 'X-Other' => 'both_auth' })->{status}, 200,
        'both gates active again: 200';
    usage_is('both_main', { $START => 1 },
        'the main location\'s own gate meters, once');
    usage_is('both_auth', {}, 'the auth_request target\'s gate does not');

    # a server-level gate inherited by an auth_request target of
    # another kind does not make it a billing gate
    my $r = get('/public/x', undef, port => $PORT2);
    is $r->{status}, 200, 'billing_gate off, auth_request to a target '
        . 'that inherits the server\'s gate: 200 without an id';
    is $r->{content}, "backend /public/x\n", '... from the backend';
}

# ---------------------------------------------------------------------
# decisions are cached: Redis stopped, the cached ones still served

{
    is get('/api/x', 'active')->{status}, 200, 'warm: active';
    is get('/api/x', 'pending')->{status}, 402, 'warm: pending';
    my $mon = $t->redis_monitor;
    $t->gate_lookups($mon);
    is get('/api/x', 'active')->{status}, 200, "cached: active ($_)" for 1 .. 4;
    is get('/api/x', 'pending')->{status}, 402, "cached: pending ($_)" for 1 .. 4;
    is_deeply $t->gate_lookups($mon), {}, 'decided from the cache: no lookup';
    $mon->close;
    $t->stop_redis;
    is get('/api/x', 'active')->{status}, 200,
        'Redis stopped: active still 200 (cached)';
    is get('/api/x', 'pending')->{status}, 402,
        'Redis stopped: pending still 402 (cached)';
    denied(get('/api/x', 'cold'), 503, 'billing_unavailable',
        'Redis stopped: a cold id');
    $t->start_redis;
}

$t->ignore_log(qr/billing redis/);
$t->done;
done_testing;
