# Configuration checks with nginx -t: what the billing directives refuse,
# that the refusal names the directive, and that a full configuration
# passes. Secrets never appear in the output.

use strict;
use warnings;

use Test::More;
use BillingTest qw(:all);

my $t = BillingTest->new;

my $SECRET = 'whsec_' . join '', map { ('a'..'z', 'A'..'Z', 0..9)[rand 62] } 1 .. 32;
my $KEY = 'sk_test_' . join '', map { ('a'..'z', 'A'..'Z', 0..9)[rand 62] } 1 .. 40;
my $PASSWORD = 'pw-' . join '', map { ('a'..'z', 0..9)[rand 36] } 1 .. 20;

$t->write_file('whsec', "# signing secrets\n$SECRET\n\n");
$t->write_file('whsec-empty', '');
$t->write_file('whsec-comments', "# nothing yet\n\n# still nothing\n");
$t->write_file('whsec-bad', "$SECRET\nwhsek_typo0secret0value\n");
$t->write_file('stripe.key', "$KEY\n");
$t->write_file('stripe-rk.key', "rk_live_51Hx9Qx2eZvKYlo2C0123456789\n");
$t->write_file('stripe-pk.key', "pk_test_TYooMQauvdEDq54NiTphI7jx\n");
$t->write_file('stripe-empty.key', '');
$t->write_file('redis.pass', "$PASSWORD\n");

my $SERVER = <<'EOF';
    server {
        listen 127.0.0.1:%%PORT%%;
        location = /stripe/webhook { billing_webhook; }
        location /_billing_stripe/ { internal; proxy_pass http://127.0.0.1:9/; }
    }
EOF

my $FULL = <<'EOF';
    billing_redis 127.0.0.1:%%REDIS_PORT%% db=3 password_file=%%DIR%%/redis.pass
                  prefix=shop: connect_timeout=500ms timeout=2s;
    billing_stripe_webhook_secret_file %%DIR%%/whsec;
    billing_stripe_key_file %%DIR%%/stripe.key;
    billing_stripe_api_version 2022-11-15;
    billing_webhook_tolerance 10m;
EOF

sub nginx_t {
    my ($http, %o) = @_;
    return $t->start_nginx($http, nginx_test => 1, %o);
}

sub no_secrets {
    my ($out, $name) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    ok index($out, $SECRET) < 0 && index($out, substr($SECRET, 6)) < 0
        && index($out, $KEY) < 0 && index($out, $PASSWORD) < 0,
        "$name: no secret in the output" or diag $out;
}


# ---------------------------------------------------------------------
# valid configurations

{
    my ($rc, $out) = nginx_t($FULL . $SERVER);
    is $rc, 0, 'full configuration passes nginx -t' or diag $out;
    no_secrets($out, 'full configuration');
}

{
    my ($rc, $out) = nginx_t(<<'EOF' . $SERVER);
    billing_redis 127.0.0.1:%%REDIS_PORT%%;
    billing_stripe_webhook_secret_file %%DIR%%/whsec;
EOF
    is $rc, 0, 'minimal configuration passes' or diag $out;
}

{
    my ($rc, $out) = nginx_t(<<'EOF' . $SERVER);
    billing_redis unix:%%DIR%%/redis.sock db=1;
    billing_stripe_webhook_secret_file %%DIR%%/whsec;
    billing_stripe_key_file %%DIR%%/stripe-rk.key;
    billing_webhook_tolerance 0s;
EOF
    is $rc, 0, 'unix socket, rk_ key, tolerance 0 pass' or diag $out;
}

{
    my ($rc, $out) = nginx_t(<<'EOF', no_module => 0);
    billing_redis localhost:6379;
    server {
        listen 127.0.0.1:%%PORT%%;
        location / { return 200; }
    }
EOF
    is $rc, 0, 'billing_redis alone, host name address, passes' or diag $out;
}

{
    my ($rc, $out) = nginx_t($FULL . $SERVER, nginx_test => '-T');
    is $rc, 0, 'nginx -T passes' or diag $out;
    like $out, qr{billing_stripe_webhook_secret_file \S+/whsec;},
        'nginx -T shows the secret file path';
    no_secrets($out, 'nginx -T');
}


# ---------------------------------------------------------------------
# refused configurations

my @bad = (
    [ 'unparsable billing_redis address', qr/billing_redis/, <<'EOF' . $SERVER ],
    billing_redis 127.0.0.1:notaport;
    billing_stripe_webhook_secret_file %%DIR%%/whsec;
EOF
    [ 'billing_redis port out of range', qr/billing_redis/, <<'EOF' . $SERVER ],
    billing_redis 127.0.0.1:99999;
    billing_stripe_webhook_secret_file %%DIR%%/whsec;
EOF
    [ 'unknown billing_redis parameter', qr/billing_redis/, <<'EOF' . $SERVER ],
    billing_redis 127.0.0.1:%%REDIS_PORT%% pool=10;
    billing_stripe_webhook_secret_file %%DIR%%/whsec;
EOF
    [ 'db=-1', qr/billing_redis/, <<'EOF' . $SERVER ],
    billing_redis 127.0.0.1:%%REDIS_PORT%% db=-1;
    billing_stripe_webhook_secret_file %%DIR%%/whsec;
EOF
    [ 'db=abc', qr/billing_redis/, <<'EOF' . $SERVER ],
    billing_redis 127.0.0.1:%%REDIS_PORT%% db=abc;
    billing_stripe_webhook_secret_file %%DIR%%/whsec;
EOF
    [ 'timeout=abc', qr/billing_redis/, <<'EOF' . $SERVER ],
    billing_redis 127.0.0.1:%%REDIS_PORT%% timeout=abc;
    billing_stripe_webhook_secret_file %%DIR%%/whsec;
EOF
    [ 'missing password_file', qr/billing_redis/, <<'EOF' . $SERVER ],
    billing_redis 127.0.0.1:%%REDIS_PORT%% password_file=%%DIR%%/no-such.pass;
    billing_stripe_webhook_secret_file %%DIR%%/whsec;
EOF
    [ 'duplicate billing_redis', qr/billing_redis/, <<'EOF' . $SERVER ],
    billing_redis 127.0.0.1:%%REDIS_PORT%%;
    billing_redis 127.0.0.1:%%REDIS_PORT%% db=1;
    billing_stripe_webhook_secret_file %%DIR%%/whsec;
EOF
    [ 'billing_reconcile 0', qr/"billing_reconcile" directive has an invalid value/, <<'EOF' . $SERVER ],
    billing_redis 127.0.0.1:%%REDIS_PORT%%;
    billing_stripe_webhook_secret_file %%DIR%%/whsec;
    billing_reconcile 0;
EOF
    [ 'billing_reconcile 500ms', qr/"billing_reconcile" directive has an invalid value/, <<'EOF' . $SERVER ],
    billing_redis 127.0.0.1:%%REDIS_PORT%%;
    billing_stripe_webhook_secret_file %%DIR%%/whsec;
    billing_reconcile 500ms;
EOF
    [ 'duplicate billing_overdue', qr/"billing_overdue" directive is duplicate/, <<'EOF' . $SERVER ],
    billing_redis 127.0.0.1:%%REDIS_PORT%%;
    billing_stripe_webhook_secret_file %%DIR%%/whsec;
    billing_overdue 3d;
    billing_overdue off;
EOF
    [ 'billing_overdue in a server without billing_marketplace',
      qr/"billing_overdue" in the server of \S+:\d+ needs "billing_marketplace"/,
      <<'EOF' ],
    billing_redis 127.0.0.1:%%REDIS_PORT%%;
    billing_stripe_webhook_secret_file %%DIR%%/whsec;
    server {
        listen 127.0.0.1:%%PORT%%;
        billing_overdue 3d;
    }
EOF
    [ 'billing_redis in a server', qr/billing_redis/, <<'EOF' ],
    billing_stripe_webhook_secret_file %%DIR%%/whsec;
    server {
        listen 127.0.0.1:%%PORT%%;
        billing_redis 127.0.0.1:%%REDIS_PORT%%;
    }
EOF
    [ 'missing webhook secret file', qr/billing_stripe_webhook_secret_file/,
      <<'EOF' . $SERVER ],
    billing_redis 127.0.0.1:%%REDIS_PORT%%;
    billing_stripe_webhook_secret_file %%DIR%%/no-such-whsec;
EOF
    [ 'empty webhook secret file', qr/billing_stripe_webhook_secret_file/,
      <<'EOF' . $SERVER ],
    billing_redis 127.0.0.1:%%REDIS_PORT%%;
    billing_stripe_webhook_secret_file %%DIR%%/whsec-empty;
EOF
    [ 'webhook secret file of comments only', qr/billing_stripe_webhook_secret_file/,
      <<'EOF' . $SERVER ],
    billing_redis 127.0.0.1:%%REDIS_PORT%%;
    billing_stripe_webhook_secret_file %%DIR%%/whsec-comments;
EOF
    [ 'a line not starting with whsec_', qr/billing_stripe_webhook_secret_file/,
      <<'EOF' . $SERVER ],
    billing_redis 127.0.0.1:%%REDIS_PORT%%;
    billing_stripe_webhook_secret_file %%DIR%%/whsec-bad;
EOF
    [ 'negative tolerance', qr/billing_webhook_tolerance/, <<'EOF' . $SERVER ],
    billing_redis 127.0.0.1:%%REDIS_PORT%%;
    billing_stripe_webhook_secret_file %%DIR%%/whsec;
    billing_webhook_tolerance -5s;
EOF
    [ 'tolerance not a time', qr/billing_webhook_tolerance/, <<'EOF' . $SERVER ],
    billing_redis 127.0.0.1:%%REDIS_PORT%%;
    billing_stripe_webhook_secret_file %%DIR%%/whsec;
    billing_webhook_tolerance soon;
EOF
    [ 'billing_webhook without billing_redis', qr/billing_(?:redis|webhook)/,
      <<'EOF' . $SERVER ],
    billing_stripe_webhook_secret_file %%DIR%%/whsec;
EOF
    [ 'billing_webhook without a secret file',
      qr/billing_(?:stripe_webhook_secret_file|webhook)/, <<'EOF' . $SERVER ],
    billing_redis 127.0.0.1:%%REDIS_PORT%%;
EOF
    [ 'billing_webhook with arguments', qr/billing_webhook/, <<'EOF' ],
    billing_redis 127.0.0.1:%%REDIS_PORT%%;
    billing_stripe_webhook_secret_file %%DIR%%/whsec;
    server {
        listen 127.0.0.1:%%PORT%%;
        location = /stripe/webhook { billing_webhook on; }
    }
EOF
    [ 'stripe key file with a publishable key', qr/billing_stripe_key_file/,
      <<'EOF' . $SERVER ],
    billing_redis 127.0.0.1:%%REDIS_PORT%%;
    billing_stripe_webhook_secret_file %%DIR%%/whsec;
    billing_stripe_key_file %%DIR%%/stripe-pk.key;
EOF
    [ 'empty stripe key file', qr/billing_stripe_key_file/, <<'EOF' . $SERVER ],
    billing_redis 127.0.0.1:%%REDIS_PORT%%;
    billing_stripe_webhook_secret_file %%DIR%%/whsec;
    billing_stripe_key_file %%DIR%%/stripe-empty.key;
EOF
    [ 'missing stripe key file', qr/billing_stripe_key_file/, <<'EOF' . $SERVER ],
    billing_redis 127.0.0.1:%%REDIS_PORT%%;
    billing_stripe_webhook_secret_file %%DIR%%/whsec;
    billing_stripe_key_file %%DIR%%/no-such.key;
EOF
);

for my $case (@bad) {
    my ($name, $names_directive, $http) = @$case;
    my ($rc, $out) = nginx_t($http);
    isnt $rc, 0, "$name: nginx -t fails";
    like $out, qr/\[emerg\]/, "$name: an emerg message";
    my $emerg = join "\n", $out =~ /^(.*\[emerg\].*)$/mg;
    like $emerg, $names_directive, "$name: the message names the directive"
        or diag $out;
    no_secrets($out, $name);
}

{
    # the bad line of a secret file may be a secret with a typo
    my ($rc, $out) = nginx_t(<<'EOF' . $SERVER);
    billing_redis 127.0.0.1:%%REDIS_PORT%%;
    billing_stripe_webhook_secret_file %%DIR%%/whsec-bad;
EOF
    unlike $out, qr/typo0secret0value/, 'a rejected secret line is not echoed';
}

$t->done;
done_testing;
