# The Stripe key goes nowhere but billing_stripe_location: nginx -t
# refuses a configuration where, in a server that makes Stripe calls,
# the location a call would land in is not an internal location with a
# content handler (a typo and a catch-all proxy_pass, no internal, no
# handler, a regular expression that takes the calls), naming the
# directive and the server; and a call that lands elsewhere at run time
# (a rewrite) fails with 502 stripe_error, sending nothing.

use strict;
use warnings;

use Test::More;

use BillingTest qw(:all);
use StripeMock;

my $t = BillingTest->new;
my $f = $t->billing_files;
my $s = StripeMock->start(dir => $t->dir, key => $f->{key});

# the product backend: a second stand-in, which must see nothing
my $backend = StripeMock->start(key => $f->{key});

my $HEAD = <<'EOF';
    billing_redis 127.0.0.1:%%REDIS_PORT%% timeout=1s;
    billing_stripe_webhook_secret_file %%DIR%%/whsec;
    billing_stripe_key_file %%DIR%%/stripe.key;
    billing_api_token_file %%DIR%%/api.token;
    billing_stripe_timeout 2s;
EOF

sub nginx_t {
    my ($server, $extra) = @_;
    return $t->start_nginx($HEAD . ($extra // '') . <<"EOF",
    server {
        listen 127.0.0.1:%%PORT%%;
        server_name shop.example;
$server
    }
EOF
        nginx_test => 1, STRIPE_PORT => $s->port,
        BACKEND_PORT => $backend->port);
}

my $API = "        location /billing/ { billing_api; }\n";

for my $c (
    [ 'a typo and a catch-all proxy_pass (the leak)', $API . <<'EOF',
        location /_billing_strip/ {
            internal;
            proxy_pass http://127.0.0.1:%%STRIPE_PORT%%/;
        }
        location / { proxy_pass http://127.0.0.1:%%BACKEND_PORT%%; }
EOF
      qr/"billing_stripe_location" "\/_billing_stripe" leads to location "\/", not to an internal location with a content handler \(proxy_pass\), in the server "shop\.example" of "billing_api" in \S+:\d+/ ],
    [ 'no location at all', $API,
      qr/"billing_stripe_location" "\/_billing_stripe" leads to no location/ ],
    [ 'not internal', $API . <<'EOF',
        location /_billing_stripe/ {
            proxy_pass http://127.0.0.1:%%STRIPE_PORT%%/;
        }
EOF
      qr/leads to location "\/_billing_stripe\/", not to an internal location/ ],
    [ 'internal, but no content handler', $API . <<'EOF',
        location /_billing_stripe/ { internal; }
EOF
      qr/leads to location "\/_billing_stripe\/", not to an internal/ ],
    [ 'a regular expression takes the calls', $API . <<'EOF',
        location /_billing_stripe/ {
            internal;
            proxy_pass http://127.0.0.1:%%STRIPE_PORT%%/;
        }
        location ~ /v1/ { proxy_pass http://127.0.0.1:%%BACKEND_PORT%%; }
EOF
      qr/leads to location "\/v1\/", not to an internal/ ],
    [ 'no API, the scheduler on, nothing in the first server', <<'EOF',
        location / { proxy_pass http://127.0.0.1:%%BACKEND_PORT%%; }
EOF
      qr/in the server "shop\.example", where the scheduler's and reconciliation's calls go/ ],
    [ 'no API, the scheduler off, reconciliation on', <<'EOF',
        location / { proxy_pass http://127.0.0.1:%%BACKEND_PORT%%; }
EOF
      qr/in the server "shop\.example", where the scheduler's and reconciliation's calls go/,
      "    billing_scheduler off;\n" ],
) {
    my ($name, $server, $re, $extra) = @$c;
    my ($rc, $out) = nginx_t($server, $extra);
    isnt $rc, 0, "nginx -t refuses: $name";
    like $out, $re, '... naming the directive and the server' or diag $out;
    ok index($out, $f->{key}) < 0, '... and no key';
}

for my $c (
    [ '^~ keeps the regular expressions away', $API . <<'EOF' ],
        location ^~ /_billing_stripe/ {
            internal;
            proxy_pass http://127.0.0.1:%%STRIPE_PORT%%/;
        }
        location ~ /v1/ { proxy_pass http://127.0.0.1:%%BACKEND_PORT%%; }
EOF
    [ 'no timers, no API: nothing to check', <<'EOF', "    billing_scheduler off;\n    billing_reconcile off;\n" ],
        location / { proxy_pass http://127.0.0.1:%%BACKEND_PORT%%; }
EOF
) {
    my ($name, $server, $extra) = @$c;
    my ($rc, $out) = nginx_t($server, $extra);
    is $rc, 0, "nginx -t passes: $name" or diag $out;
}

# run time: a rewrite sends the call elsewhere
$t->start_redis;
$t->start_nginx($HEAD . <<'EOF', STRIPE_PORT => $s->port,
    server {
        listen 127.0.0.1:%%PORT%%;
        location /billing/ { billing_api; }
        location /_billing_stripe/ {
            internal;
            rewrite ^/_billing_stripe/(.*)$ /leak/$1 last;
            proxy_pass http://127.0.0.1:%%STRIPE_PORT%%/;
        }
        location /leak/ { proxy_pass http://127.0.0.1:%%BACKEND_PORT%%/; }
    }
EOF
    BACKEND_PORT => $backend->port);

my $r = $t->api('POST', 'subscriptions', subscription_request('sub-leak', 'org-l'));
is $r->{status}, 502, 'a call rewritten elsewhere: 502' or diag $r->{content};
is $r->{json}{error}{code}, 'stripe_error', '... stripe_error';
like $r->{json}{error}{message}, qr/did not reach billing_stripe_location/,
    '... saying so';
is scalar @{ $backend->requests }, 0, '... nothing reached the backend';
is scalar @{ $s->requests }, 0, '... nor Stripe';
like $t->error_log,
    qr/\[error\].*failed with 502 after 1 attempts: "the call did not reach/,
    '... an [error] line, after one attempt: not tried again';

$backend->stop;
$s->stop;
$t->done;
done_testing;
