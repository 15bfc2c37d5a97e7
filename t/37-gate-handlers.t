# The module's own content handlers are never gated nor metered, even
# under a server-level billing_gate: Stripe's signed webhooks are
# accepted, the API answers, and neither counts a unit. billing_gate in
# the same location as billing_webhook or billing_api is refused by
# nginx -t, in either order.

use strict;
use warnings;

use Test::More;
use Time::HiRes qw(time sleep);

use BillingTest qw(:all);
use StripeMock;

my $t = BillingTest->new;
my $f = $t->billing_files;
my $s = StripeMock->start(dir => $t->dir, key => $f->{key});

my $COMMON = <<'EOF';
    billing_redis 127.0.0.1:%%REDIS_PORT%% timeout=1s;
    billing_stripe_webhook_secret_file %%DIR%%/whsec;
    billing_stripe_key_file %%DIR%%/stripe.key;
    billing_api_token_file %%DIR%%/api.token;
    billing_meter_flush 200ms;
EOF

for my $case (
    [ 'billing_gate before billing_api',
      "location /billing/ { billing_gate \$http_x_sub; billing_api; }",
      qr/"billing_api" directive cannot be in a location with "billing_gate"/ ],
    [ 'billing_gate after billing_webhook',
      "location /wh { billing_webhook; billing_gate \$http_x_sub; }",
      qr/"billing_gate" directive cannot be in a billing_webhook or billing_api location/ ],
) {
    my ($name, $loc, $re) = @$case;
    my ($rc, $out) = $t->start_nginx($COMMON . <<"EOF", nginx_test => 1);
    server {
        listen 127.0.0.1:%%PORT%%;
        $loc
    }
EOF
    isnt $rc, 0, "nginx -t refuses $name";
    like $out, $re, '... saying why';
}

$t->start_redis;
$t->start_nginx($COMMON . <<'EOF', STRIPE_PORT => $s->port, workers => 2);
    server {
        listen 127.0.0.1:%%PORT%%;

        # everything here is a paid product...
        billing_gate $http_x_subscription_id;

        # ...but what the module answers itself
        location = /stripe/webhook { billing_webhook; }
        location /billing/ { billing_api; }

        location /product/ { return 200 "ok\n"; }

        location /_billing_stripe/ {
            internal;
            proxy_pass http://127.0.0.1:%%STRIPE_PORT%%/;
        }
    }
EOF

my $r = $t->http('GET', '/product/x');
is $r->{status}, 401, 'the server-level gate applies to the product';

my $w = $t->webhook(invoice_event(type => 'invoice.paid',
    subscription => 'sub-h', kind => 'initial'));
is $w->{status}, 200, 'a signed webhook is accepted under a server-level gate'
    or diag $w->{content};

my $c = $t->api('POST', 'subscriptions', subscription_request('sub-h', 'org-h',
    metering_period => '3600'));
is $c->{status}, 201, 'the API answers under a server-level gate'
    or diag $c->{content};
my $g = $t->api('GET', 'subscriptions/sub-h');
is $g->{status}, 200, '... GET too';

# nothing of that is metered, even with a subscription id sent along
$t->redis('HSET', 'billing:sub:sub-h', 'state', 'active', 'period_start',
    int(time) - 10);
for (1 .. 3) {
    $t->http('GET', '/billing/subscriptions/sub-h',
        headers => { Authorization => "Bearer $f->{token}",
                     'X-Subscription-Id' => 'sub-h' });
}
is $t->http('GET', '/product/x',
    headers => { 'X-Subscription-Id' => 'sub-h' })->{status}, 200,
    'the product, for an active subscription: 200';
ok wait_until(sub {
    my $u = $t->redis_hash('billing:usage:sub-h');
    my $n = 0;
    $n += $_ for values %$u;
    $n == 1 }, 10), 'one unit: the product request, not the API requests';
sleep 0.5;
my $u = $t->redis_hash('billing:usage:sub-h');
my $n = 0;
$n += $_ for values %$u;
is $n, 1, '... and no more';

$s->stop;
$t->done;
done_testing;
