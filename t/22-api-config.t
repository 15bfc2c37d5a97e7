# Configuration of billing_api and its Stripe client: what nginx -t
# refuses (naming the directive, never printing a secret), then two
# running configurations: another billing_stripe_location, API version
# and API prefix; and a Stripe that cannot be reached.

use strict;
use warnings;

use JSON::PP;
use Test::More;
use Time::HiRes qw(time);

use BillingTest qw(:all);
use StripeMock;

my $t = BillingTest->new;


my $TOKEN  = 'tok-' . random_id('', 28);
my $SHORT  = 'short-' . random_id('', 9);             # 15 characters
my $KEY    = 'sk_test_' . random_id('', 40);
my $SECRET = 'whsec_' . random_id('', 32);

$t->write_file('api.token', "$TOKEN\n");
$t->write_file('api16.token', 'x' . random_id('', 15) . "\n");
$t->write_file('short.token', "$SHORT\n");
$t->write_file('empty.token', '');
$t->write_file('space.token', "tok with spaces " . random_id('', 16) . "\n");
$t->write_file('two.token', "$TOKEN\n" . random_id('', 20) . "\n");
$t->write_file('stripe.key', "$KEY\n");
$t->write_file('whsec', "$SECRET\n");

# %%STRIPE%%: the Stripe part of the http block; %%API%%: billing_api's
# directives; %%LOCATION%%: the location it goes in
my $HEAD = <<'EOF';
    billing_redis 127.0.0.1:%%REDIS_PORT%% timeout=1s;
    billing_stripe_webhook_secret_file %%DIR%%/whsec;
EOF

my %BASE = (
    key      => "billing_stripe_key_file %%DIR%%/stripe.key;\n",
    token    => "billing_api_token_file %%DIR%%/api.token;\n",
    portal   => "billing_portal_url https://billing.stripe.com/p/login/test_123;\n",
    timeout  => "billing_stripe_timeout 3s;\n",
    location => '',
    server   => '',
    api      => "billing_api;",
);

sub conf {
    my (%o) = @_;
    my %c = (%BASE, %o);
    return $HEAD . join('', map { "    $_" } grep { length }
            @c{qw(key token portal timeout location)}) . <<"EOF";
    server {
        listen 127.0.0.1:%%PORT%%;
        $c{server}
        location = /stripe/webhook { billing_webhook; }
        location /billing/ { $c{api} }
        location /_billing_stripe/ {
            internal;
            proxy_pass http://127.0.0.1:9/;
        }
    }
EOF
}

sub nginx_t { $t->start_nginx($_[0], nginx_test => 1) }

sub no_secret {
    my ($out, $name) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    ok index($out, $KEY) < 0 && index($out, $TOKEN) < 0
        && index($out, $SECRET) < 0 && index($out, $SHORT) < 0,
        "$name: no secret in the output" or diag $out;
}


# ---------------------------------------------------------------------
# accepted

for my $c (
    [ 'full configuration' ],
    [ 'a token of 16 characters', token => "billing_api_token_file %%DIR%%/api16.token;\n" ],
    [ 'another billing_stripe_location',
      location => "billing_stripe_location /stripe-api;\n",
      server => "location /stripe-api/ { internal; proxy_pass http://127.0.0.1:9/; }" ],
    [ 'a nested billing_stripe_location',
      location => "billing_stripe_location /internal/stripe;\n",
      server => "location /internal/ { internal; location /internal/stripe/ "
                . "{ proxy_pass http://127.0.0.1:9/; } }" ],
    [ 'billing_stripe_location in a regex location',
      location => "billing_stripe_location /rx;\n",
      server => 'location ~ ^/rx/v1/ { internal; proxy_pass http://127.0.0.1:9; }' ],
    [ 'billing_stripe_timeout 500ms', timeout => "billing_stripe_timeout 500ms;\n" ],
    [ 'no billing_portal_url', portal => '' ],
    [ 'no billing_stripe_timeout', timeout => '' ],
)
{
    my ($name, %o) = @$c;
    my ($rc, $out) = nginx_t(conf(%o));
    is $rc, 0, "$name: nginx -t passes" or diag $out;
    no_secret($out, $name);
}


# ---------------------------------------------------------------------
# refused, naming the directive

for my $c (
    [ 'billing_api without billing_api_token_file', qr/billing_api_token_file/,
      token => '' ],
    [ 'billing_api without billing_stripe_key_file', qr/billing_stripe_key_file/,
      key => '' ],
    [ 'billing_api without billing_redis', qr/billing_redis/,
      key => '', token => '', portal => '', timeout => '',
      api => '' ],          # see below: built by hand
    [ 'a token of 15 characters', qr/billing_api_token_file.*16|16.*billing_api_token_file/,
      token => "billing_api_token_file %%DIR%%/short.token;\n" ],
    [ 'an empty token file', qr/billing_api_token_file/,
      token => "billing_api_token_file %%DIR%%/empty.token;\n" ],
    [ 'a token with spaces', qr/billing_api_token_file/,
      token => "billing_api_token_file %%DIR%%/space.token;\n" ],
    [ 'two tokens', qr/billing_api_token_file/,
      token => "billing_api_token_file %%DIR%%/two.token;\n" ],
    [ 'a missing token file', qr/billing_api_token_file|no-such\.token/,
      token => "billing_api_token_file %%DIR%%/no-such.token;\n" ],
    [ 'billing_api_token_file twice', qr/billing_api_token_file/,
      token => "billing_api_token_file %%DIR%%/api.token;\n"
             . "    billing_api_token_file %%DIR%%/api16.token;\n" ],
    [ 'billing_stripe_location without a leading slash', qr/billing_stripe_location/,
      location => "billing_stripe_location _billing_stripe;\n" ],
    [ 'billing_stripe_location with a trailing slash', qr/billing_stripe_location/,
      location => "billing_stripe_location /_billing_stripe/;\n" ],
    [ 'billing_stripe_location "/"', qr/billing_stripe_location/,
      location => "billing_stripe_location /;\n" ],
    [ 'billing_stripe_location with a query', qr/billing_stripe_location/,
      location => "billing_stripe_location /_billing_stripe?x=1;\n" ],
    [ 'billing_portal_url with http://', qr/billing_portal_url/,
      portal => "billing_portal_url http://billing.stripe.com/p/login/test_123;\n" ],
    [ 'billing_portal_url "https://"', qr/billing_portal_url/,
      portal => "billing_portal_url https://;\n" ],
    [ 'billing_portal_url not a URL', qr/billing_portal_url/,
      portal => "billing_portal_url billing.stripe.com;\n" ],
    [ 'billing_stripe_timeout negative', qr/billing_stripe_timeout/,
      timeout => "billing_stripe_timeout -1s;\n" ],
    [ 'billing_stripe_timeout not a time', qr/billing_stripe_timeout/,
      timeout => "billing_stripe_timeout soon;\n" ],
    [ 'billing_api with an argument', qr/billing_api/,
      api => 'billing_api on;' ],
    [ 'billing_api twice in a location', qr/billing_api/,
      api => 'billing_api; billing_api;' ],
    [ 'billing_api_token_file in a server', qr/billing_api_token_file/,
      token => '', server => 'billing_api_token_file %%DIR%%/api.token;' ],
    [ 'billing_stripe_timeout in a server', qr/billing_stripe_timeout/,
      server => 'billing_stripe_timeout 3s;' ],
)
{
    my ($name, $re, %o) = @$c;
    my $conf = conf(%o);
    if ($name eq 'billing_api without billing_redis') {
        $conf = <<'EOF';
    billing_stripe_key_file %%DIR%%/stripe.key;
    billing_api_token_file %%DIR%%/api.token;
    server {
        listen 127.0.0.1:%%PORT%%;
        location /billing/ { billing_api; }
    }
EOF
    }
    my ($rc, $out) = nginx_t($conf);
    isnt $rc, 0, "$name: nginx -t fails";
    like $out, qr/\[emerg\]/, "$name: [emerg]";
    like $out, $re, "$name: names it" or diag $out;
    no_secret($out, $name);
}

{
    my ($rc, $out) = nginx_t($HEAD . $BASE{key} . $BASE{token} . <<'EOF');
    billing_api;
    server { listen 127.0.0.1:%%PORT%%; }
EOF
    isnt $rc, 0, 'billing_api at the http level: refused';
    like $out, qr/"billing_api" directive is not allowed here/, '... not allowed here'
        or diag $out;
}


# ---------------------------------------------------------------------
# running: another Stripe location, API version and API prefix

my $JSON = JSON::PP->new->utf8->canonical;

my $s = StripeMock->start(dir => $t->dir, key => $KEY, api_version => '2023-10-16');

sub sub_req {
    my ($id) = @_;
    return $JSON->encode({ id => $id, consumer_org => "org-$id",
        customer => { email => 'ops@acme.test', name => 'ACME' },
        plan => { currency => 'eur', base_price => 900, unit_price => '0.5',
                  metering_period => 'month' } });
}

sub post {
    my ($path, $id) = @_;
    return $t->http('POST', $path, body => sub_req($id), timeout => 10,
        headers => { Authorization => "Bearer $TOKEN",
                     'Content-Type' => 'application/json' });
}

$t->start_redis;
$t->start_nginx(<<'EOF', STRIPE_PORT => $s->port);
    billing_redis 127.0.0.1:%%REDIS_PORT%% timeout=1s prefix=shop:;
    billing_stripe_key_file %%DIR%%/stripe.key;
    billing_api_token_file %%DIR%%/api.token;
    billing_stripe_location /internal/stripe;
    billing_stripe_api_version 2023-10-16;
    billing_stripe_timeout 2s;

    server {
        listen 127.0.0.1:%%PORT%%;

        location /v2/billing/ { billing_api; }

        location /internal/stripe/ {
            internal;
            proxy_pass http://127.0.0.1:%%STRIPE_PORT%%/;
            proxy_read_timeout 1s;
        }

        location /_billing_stripe/ {
            return 500;
        }
    }
EOF

{
    my $r = post('/v2/billing/subscriptions', 'sub-v2');
    is $r->{status}, 201, 'through /internal/stripe: 201' or diag $r->{content};
    is $r->{json}{invoice}{currency}, 'eur', '... the invoice';
    is $r->{json}{portal_url}, undef, '... no portal_url without billing_portal_url';
    my $reqs = $s->requests;
    is scalar @$reqs, 4, '... four Stripe calls';
    is_deeply [ map { $_->{headers}{'stripe-version'} } @$reqs ],
        [ ('2023-10-16') x 4 ], '... with billing_stripe_api_version';
    like $reqs->[0]{headers}{'idempotency-key'},
        qr/^shop:customer:org-sub-v2:[0-9a-f]{32}$/,
        '... Idempotency-Key with the Redis prefix';
    like $reqs->[1]{headers}{'idempotency-key'}, qr/^shop:sub:sub-v2:\d+:initial:invoice$/,
        '... for the invoice too';
    is $t->redis('HGET', 'shop:sub:sub-v2', 'state'), 'pending', '... stored under shop:';

    my $g = $t->http('GET', '/v2/billing/subscriptions/sub-v2',
        headers => { Authorization => "Bearer $TOKEN" });
    is $g->{status}, 200, 'GET under /v2/billing/: 200';
    is $g->{json}{invoices}[0]{id}, $r->{json}{invoice}{id}, '... the invoice';

    my $i = $t->http('POST', '/internal/stripe/v1/customers',
        headers => { Authorization => "Bearer $TOKEN" }, body => 'email=a%40b.test');
    is $i->{status}, 404, 'the internal location is not reachable from outside';
    is scalar @{ $s->requests }, 4, '... and nothing reached Stripe';
}


# ---------------------------------------------------------------------
# Stripe unreachable: nginx's own 502 is retried, then 502 stripe_error

$t->stop_nginx;
my $closed = BillingTest::free_port();
$t->start_nginx(<<'EOF', CLOSED_PORT => $closed);
    billing_redis 127.0.0.1:%%REDIS_PORT%% timeout=1s;
    billing_stripe_key_file %%DIR%%/stripe.key;
    billing_api_token_file %%DIR%%/api.token;
    billing_stripe_timeout 1s;

    server {
        listen 127.0.0.1:%%PORT%%;
        location /billing/ { billing_api; }
        location /_billing_stripe/ {
            internal;
            proxy_pass http://127.0.0.1:%%CLOSED_PORT%%/;
        }
    }
EOF

{
    my $r = post('/billing/subscriptions', 'sub-unreachable');
    is $r->{status}, 502, 'Stripe unreachable: 502' or diag $r->{content};
    is $r->{json} && $r->{json}{error}{code}, 'stripe_error', '... stripe_error';
    ok $r->{json} && length($r->{json}{error}{message} // ''), '... with a message';
    cmp_ok $r->{elapsed}, '<', 1 + 0.75, '... within billing_stripe_timeout 1s';
    my @attempts = $t->error_log =~ m{billing stripe: POST /v1/customers, attempt (\d+)}g;
    cmp_ok scalar @attempts, '>=', 2, '... after retries' or diag "@attempts";
    is $t->redis('HGET', 'billing:sub:sub-unreachable', 'state'), 'pending',
        '... the subscription claimed, pending';
}

# a worker that died says so only at [notice] (an exit code), and a
# sanitizer build writes its reports to the error log
$t->stop_nginx;
unlike $t->error_log, qr/worker process \d+ exited (?:with code [1-9]|on signal)/,
    'no worker process died';
unlike $t->error_log, qr/runtime error:|AddressSanitizer|LeakSanitizer/,
    'no sanitizer report in error.log';

$t->done;
done_testing;
