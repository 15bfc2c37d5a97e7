# Several marketplaces on one gateway and one Redis: two server blocks
# with billing_marketplace (alpha, beta), each with its own Stripe key,
# webhook secret, API token, portal and Stripe stand-in (each stand-in
# refuses any key but its own), and a server of the default marketplace
# (the http level's secret). The same subscription id in alpha and beta:
# creation, gating, the cache and its invalidation, metering, period
# invoices and cancellation stay apart; a webhook signed with another
# marketplace's secret is 400; no key reaches another's stand-in; the
# keys in Redis are each marketplace's own. Then nginx -t on the
# inconsistencies.

use strict;
use warnings;

use Test::More;
use Time::HiRes qw(time sleep);

use BillingTest qw(:all);
use StripeMock;

my $t = BillingTest->new;

# the default marketplace: only a webhook secret at the http level
my $f = $t->billing_files;

my %m;
for my $name (qw(alpha beta)) {
    my %v = (key    => 'rk_test_' . random_id('', 40),
             secret => 'whsec_' . random_id('', 32),
             token  => "tok-$name-" . random_id('', 24),
             port   => BillingTest::free_port());
    $t->write_file("$name.key", "$v{key}\n");
    $t->write_file("$name.whsec", "$v{secret}\n");
    $t->write_file("$name.token", "$v{token}\n");
    $v{stripe} = StripeMock->start(dir => $t->dir, key => $v{key});
    $m{$name} = \%v;
}
my ($A, $B) = @m{qw(alpha beta)};

my $P = 10;     # seconds per metering period

my $CONF = <<'EOF';
    billing_redis 127.0.0.1:%%REDIS_PORT%% timeout=1s;
    billing_cache zone=billing:1m ttl=30s;
    billing_stripe_webhook_secret_file %%DIR%%/whsec;
    billing_stripe_timeout 2s;
    billing_invoice_delay 1s;
    billing_reconcile 2s;

    server {
        listen 127.0.0.1:%%PORT%%;

        location = /stripe/webhook { billing_webhook; }
        location /api/ {
            billing_gate $http_x_subscription_id;
            return 200 "default\n";
        }
    }

    server {
        listen 127.0.0.1:%%PORT_A%%;
        billing_marketplace alpha;
        billing_stripe_key_file %%DIR%%/alpha.key;
        billing_stripe_webhook_secret_file %%DIR%%/alpha.whsec;
        billing_api_token_file %%DIR%%/alpha.token;
        billing_portal_url https://billing.stripe.com/p/login/alpha;

        location = /stripe/webhook { billing_webhook; }
        location /billing/ { billing_api; }
        location /api/ {
            billing_gate $http_x_subscription_id;
            return 200 "alpha\n";
        }
        location /_billing_stripe/ {
            internal;
            proxy_pass http://127.0.0.1:%%STRIPE_A%%/;
            proxy_read_timeout 2s;
        }
    }

    server {
        listen 127.0.0.1:%%PORT_B%%;
        billing_marketplace beta;
        billing_stripe_key_file %%DIR%%/beta.key;
        billing_stripe_webhook_secret_file %%DIR%%/beta.whsec;
        billing_api_token_file %%DIR%%/beta.token;
        billing_portal_url https://billing.stripe.com/p/login/beta;
        billing_stripe_location /_stripe_beta;

        location = /hooks/stripe { billing_webhook; }
        location /billing/ { billing_api; }
        location /api/ {
            billing_gate $http_x_subscription_id;
            return 200 "beta\n";
        }
        location /_stripe_beta/ {
            internal;
            proxy_pass http://127.0.0.1:%%STRIPE_B%%/;
            proxy_read_timeout 2s;
        }
    }
EOF

$t->start_redis;
$t->start_nginx($CONF, workers => 2,
    PORT_A => $A->{port}, PORT_B => $B->{port},
    STRIPE_A => $A->{stripe}->port, STRIPE_B => $B->{stripe}->port);

sub api {
    my ($mk, $method, $path, $body, %o) = @_;
    my $token = delete $o{token} // $mk->{token};
    return $t->http($method, "/billing/$path",
        port => $mk->{port},
        headers => { Authorization => "Bearer $token",
                     'Content-Type' => 'application/json' },
        defined $body ? (body => json_encode($body)) : (),
        timeout => 30);
}

# the requests each server let through: what its meter counts
my %served;

sub gate {
    my ($port, $id) = @_;
    my $r = $t->http('GET', '/api/x', port => $port,
        headers => { 'X-Subscription-Id' => $id });
    $served{"$port $id"}++ if $r->{status} == 200;
    return $r;
}

sub hook {
    my ($mk, $event, $secret) = @_;
    return $t->webhook($event, port => $mk->{port},
        secrets => [ $secret // $mk->{secret} ],
        path => $mk == $B ? '/hooks/stripe' : '/stripe/webhook');
}

# an invoice of marketplace $name paid, as Stripe tells it: with the
# metadata the module set on it
sub paid {
    my ($id, $inv, $name) = @_;
    return invoice_event(type => 'invoice.paid', invoice_id => $inv,
        subscription => $id, kind => 'initial',
        metadata => { billing_marketplace => $name // 'alpha' },
        invoice => { amount_due => 1500, currency => 'usd' });
}

sub invoices_kind {
    my ($mk, $id, $kind) = @_;
    return [ grep { ($_->{metadata}{billing_kind} // '') eq $kind }
        @{ $mk->{stripe}->invoices_of($id) } ];
}

sub usage_of {
    my ($name, $id) = @_;
    my $h = $t->redis_hash("billing:mp:$name:usage:$id");
    my $n = 0;
    $n += $_ for values %$h;
    return $n;
}


# ---------------------------------------------------------------------
# creation: the same id in both, each at its own Stripe account

my %inv;
for my $name (qw(alpha beta)) {
    my $r = api($m{$name}, 'POST', 'subscriptions',
        subscription_request('sub-1', "org-$name",
                             metering_period => "$P"));
    is $r->{status}, 201, "$name: sub-1 created" or diag $r->{content};
    $inv{$name} = $r->{json}{invoice}{id};
    ok $inv{$name}, "$name: its first invoice";
    is $r->{json}{portal_url}, "https://billing.stripe.com/p/login/$name",
        "$name: its own portal";
    my $invs = $m{$name}{stripe}->invoices_of('sub-1');
    is scalar @$invs, 1, "$name: the invoice is at its own stand-in";
    is $invs->[0]{metadata}{billing_marketplace}, $name,
        '... marked as its own';
}
isnt $inv{alpha}, $inv{beta}, 'two invoices, one per account';

is $t->redis('EXISTS', 'billing:sub:sub-1'), 0,
    'nothing in the default marketplace\'s keys';
is $t->redis('EXISTS', 'billing:mp:alpha:sub:sub-1'), 1,
    'alpha\'s subscription under billing:mp:alpha:';
is $t->redis('EXISTS', 'billing:mp:beta:sub:sub-1'), 1,
    'beta\'s under billing:mp:beta:';
is $t->redis('HGET', 'billing:mp:alpha:sub:sub-1', 'consumer_org'),
    'org-alpha', '... each with its own data';
is $t->redis('HGET', 'billing:mp:beta:sub:sub-1', 'consumer_org'),
    'org-beta', '... and the other\'s';

{
    my $r = api($A, 'GET', 'subscriptions/sub-1', undef,
        token => $B->{token});
    is $r->{status}, 401, 'beta\'s token at alpha\'s API: 401';

    $r = api($A, 'GET', 'subscriptions/sub-1');
    is $r->{status}, 200, 'alpha\'s GET';
    is $r->{json}{consumer_org}, 'org-alpha', '... alpha\'s subscription';
    is $r->{json}{invoices}[0]{id}, $inv{alpha}, '... with its invoice';

    $r = api($B, 'GET', 'subscriptions/sub-1');
    is $r->{json}{consumer_org}, 'org-beta', 'beta\'s GET: beta\'s';

    # an existing id with another plan is a conflict in its own
    # marketplace only: alpha's sub-2 is free in beta
    $r = api($A, 'POST', 'subscriptions',
        subscription_request('sub-2', 'org-a2', metering_period => "$P"));
    is $r->{status}, 201, 'alpha: sub-2 created';
    is api($B, 'GET', 'subscriptions/sub-2')->{status}, 404,
        '... unknown in beta';

    $inv{sub2} = $r->{json}{invoice}{id};
}


# ---------------------------------------------------------------------
# gating, and webhooks with the wrong marketplace's secret

for my $name (qw(alpha beta)) {
    my $g = gate($m{$name}{port}, 'sub-1');
    is $g->{status}, 402, "$name: pending, 402";
    is $g->{json}{invoice}, $inv{$name}, "... its own invoice";
    is $g->{json}{portal_url}, "https://billing.stripe.com/p/login/$name",
        '... its own portal';
}
is gate($t->port, 'sub-1')->{status}, 403,
    'the default marketplace knows no sub-1';
is gate($t->port, 'sub-1')->{json}{error}{code}, 'unknown_subscription',
    '... unknown_subscription';

{
    my $ev = paid('sub-1', $inv{alpha});
    my $w = hook($A, $ev, $B->{secret});
    is $w->{status}, 400, 'alpha\'s event signed with beta\'s secret: 400';
    is $w->{json}{error}{code}, 'invalid_signature', '... invalid_signature';
    $w = hook($A, $ev, $f->{secret});
    is $w->{status}, 400, '... with the default\'s secret: 400';
    $w = $t->webhook($ev, secrets => [ $A->{secret} ]);
    is $w->{status}, 400, 'alpha\'s secret at the default endpoint: 400';

    # two marketplaces on one Stripe account get each other's events,
    # each signed for the endpoint: the metadata tells whose invoice it is
    $w = hook($A, paid('sub-1', $inv{alpha}, 'beta'));
    is $w->{status}, 200, 'an event of beta\'s invoice at alpha\'s endpoint, '
        . 'signed by alpha: 200';
    ok $w->{json}{ignored}, '... ignored';
    $w = hook($A, invoice_event(type => 'invoice.paid',
        invoice_id => $inv{alpha}, subscription => 'sub-1',
        kind => 'initial'));
    ok $w->{status} == 200 && $w->{json}{ignored},
        '... so is one of the default marketplace\'s (no metadata)';
    is gate($A->{port}, 'sub-1')->{status}, 402, '... alpha still pending';
    is $t->redis('HGET', 'billing:mp:alpha:sub:sub-1', 'state'), 'pending',
        '... nothing recorded';
}

# the gate's script reading a marketplace's sub-1 (the scheduler's and
# reconciliation's reads of the same space are not the cache's)
sub gate_read {
    my ($names) = @_;
    return qr/"HMGET" "billing:mp:(?:$names):sub:sub-1" "state" "initial_invoice" "period_start"/;
}

# beta's entry is cached; alpha's payment must not drop it
my $mon = $t->redis_monitor;
is gate($B->{port}, 'sub-1')->{status}, 402, 'beta: cached';
$t->monitor_lines($mon);

{
    my $w = hook($A, paid('sub-1', $inv{alpha}));
    is $w->{status}, 200, 'alpha\'s event with alpha\'s secret: 200'
        or diag $w->{content};
    ok wait_until(sub { gate($A->{port}, 'sub-1')->{status} == 200 }, 5),
        'alpha: active, through its gate';
    my $b = gate($B->{port}, 'sub-1');
    is $b->{status}, 402, 'beta\'s sub-1 still pending';
    is $b->{json}{invoice}, $inv{beta}, '... with its own invoice';
    my @looked = $t->monitor_lines($mon, gate_read('beta'));
    is scalar @looked, 0,
        '... served from the cache: alpha\'s change dropped no beta entry';

    # another node's change comes on the marketplace's own channel: a
    # message on beta's drops beta's sub-1 only
    is gate($A->{port}, 'sub-1')->{status}, 200, 'alpha: cached';
    $t->monitor_lines($mon);
    $t->redis('PUBLISH', 'billing:mp:beta:events', '999 sub-1');
    sleep 0.5;      # each worker drops it when its subscriber hears it
    ok wait_until(sub {
        gate($B->{port}, 'sub-1');
        scalar $t->monitor_lines($mon, gate_read('beta')) }, 5),
        'a change published on beta\'s channel: beta asks Redis again';
    gate($A->{port}, 'sub-1');
    is scalar $t->monitor_lines($mon, gate_read('alpha')),
        0, '... alpha\'s entry of the same id stays cached';
    $t->redis('PUBLISH', 'billing:events', '999 sub-1');
    sleep 0.5;
    gate($_->{port}, 'sub-1') for $A, $B;
    is scalar $t->monitor_lines($mon, gate_read('alpha|beta')), 0,
        '... and one on the default\'s channel drops neither';
}

{
    # beta's invoice paid, told to alpha's endpoint (as alpha's event):
    # alpha has no such invoice, beta's stays unpaid
    my $w = hook($A, paid('sub-1', $inv{beta}, 'alpha'));
    is $w->{status}, 200, 'beta\'s invoice id at alpha\'s endpoint: 200';
    is gate($B->{port}, 'sub-1')->{status}, 402, '... beta still pending';
    is $t->redis('EXISTS', "billing:mp:beta:invoice:$inv{beta}") &&
       $t->redis('HGET', "billing:mp:beta:invoice:$inv{beta}", 'status'),
       'open', '... its invoice still open in beta';
}

{
    my $w = hook($B, paid('sub-1', $inv{beta}, 'beta'));
    is $w->{status}, 200, 'beta\'s event at beta\'s endpoint: 200';
    ok wait_until(sub { gate($B->{port}, 'sub-1')->{status} == 200 }, 5),
        'beta: active';
    is gate($A->{port}, 'sub-1')->{status}, 200, 'alpha still active';
    is gate($t->port, 'sub-1')->{status}, 403, 'default: still unknown';
}


# ---------------------------------------------------------------------
# metering: each marketplace's units under its own key

my $startA = $t->redis('HGET', 'billing:mp:alpha:sub:sub-1', 'period_start');
my $startB = $t->redis('HGET', 'billing:mp:beta:sub:sub-1', 'period_start');

gate($A->{port}, 'sub-1') for 1 .. 3;
gate($B->{port}, 'sub-1') for 1 .. 5;

# what the flush sends: both marketplaces' units, each under its own key
ok wait_until(sub { usage_of('alpha', 'sub-1') && usage_of('beta', 'sub-1') },
              10),
    'both marketplaces\' units reached Redis';
is $t->redis('EXISTS', 'billing:usage:sub-1'), 0,
    '... none under the default marketplace';


# ---------------------------------------------------------------------
# period invoices: each at its own account, with its own usage

for my $name (qw(alpha beta)) {
    my $mk = $m{$name};
    ok wait_until(sub { @{ invoices_kind($mk, 'sub-1', 'period') } >= 1 },
                  20),
        "$name: a period invoice";
    my $inv = invoices_kind($mk, 'sub-1', 'period')->[0];
    my ($usage) = grep { $_->{invoice} eq $inv->{id}
                         && $_->{description} =~ /^Usage/ }
        @{ $mk->{stripe}->objects('invoiceitem') };
    is $inv->{metadata}{billing_period_start},
        $name eq 'alpha' ? $startA : $startB, "... of its own period";
    ok $usage, "... with a usage line";
    my $want = $served{"$mk->{port} sub-1"};
    is $usage && $usage->{quantity}, $want, "... of its own units ($want)";
}


# ---------------------------------------------------------------------
# cancellation in alpha leaves beta's sub-1 alone

{
    my $r = api($A, 'DELETE', 'subscriptions/sub-1');
    is $r->{status}, 200, 'alpha: cancelled' or diag $r->{content};
    is $r->{json}{invoice}{kind}, 'final', '... with its final invoice';
    is scalar @{ invoices_kind($A, 'sub-1', 'final') }, 1,
        '... at alpha\'s stand-in';
    is scalar @{ invoices_kind($B, 'sub-1', 'final') }, 0,
        '... none at beta\'s';
    is gate($A->{port}, 'sub-1')->{status}, 403, 'alpha\'s gate refuses';
    is gate($B->{port}, 'sub-1')->{status}, 200, 'beta\'s still lets it by';
    is $t->redis('HGET', 'billing:mp:beta:sub:sub-1', 'state'), 'active',
        '... beta\'s subscription still active';
}


# ---------------------------------------------------------------------
# reconciliation asks alpha's account about alpha's invoice
{
    # reconciliation asks alpha's account about alpha's invoice
    $A->{stripe}->set_invoice_status($inv{sub2}, 'paid');
    ok wait_until(sub { gate($A->{port}, 'sub-2')->{status} == 200 }, 15),
        'alpha: paid at Stripe without a webhook, reconciliation opens '
        . 'its gate';
    is gate($B->{port}, 'sub-2')->{status}, 403, '... beta knows no sub-2';
    ok((grep { $_->{method} eq 'GET'
               && $_->{path} eq "/v1/invoices/$inv{sub2}" }
        @{ $A->{stripe}->requests }),
       '... asked at alpha\'s stand-in');
    ok(!(grep { $_->{path} =~ /\Q$inv{sub2}\E/ }
         @{ $B->{stripe}->requests }),
       '... never at beta\'s');
}


# ---------------------------------------------------------------------
# every call with its own key, to its own stand-in

for my $name (qw(alpha beta)) {
    my $mk = $m{$name};
    my ($other, $oname) = $name eq 'alpha' ? ($B, 'beta') : ($A, 'alpha');
    my $reqs = $mk->{stripe}->requests;
    ok scalar @$reqs >= 6, "$name: its stand-in got its calls";
    my @wrong = grep { ($_->{headers}{authorization} // '')
                       ne "Bearer $mk->{key}" } @$reqs;
    is scalar @wrong, 0, "... each with $name\'s key";
    my $all = join "\n", map { json_encode($_) } @$reqs;
    unlike $all, qr/\Q$other->{key}\E/, '... never the other\'s key';
    unlike $all, qr/org-$oname/, '... nor the other\'s customers';
}

like join(' ', @{ $t->redis('KEYS', 'billing:mp:alpha:*') }),
    qr/billing:mp:alpha:invoice:/, 'alpha\'s invoices under its prefix';
is scalar @{ $t->redis('KEYS', 'billing:sub:*') }, 0,
    'no subscription in the default key space';

$t->stop_nginx;


# ---------------------------------------------------------------------
# nginx -t: what is inconsistent is named

sub conf_t {
    my ($servers, $http) = @_;
    return $t->start_nginx(($http // <<'EOF') . $servers, nginx_test => 1);
    billing_redis 127.0.0.1:%%REDIS_PORT%%;
EOF
}

my $LOC = <<'EOF';
        location /billing/ { billing_api; }
        location /_billing_stripe/ { internal; proxy_pass http://127.0.0.1:1/; }
EOF

my @bad = (
    [ 'one name, two keys',
      qr/"billing_marketplace alpha" in \S+:(\d+) has another "billing_stripe_key_file" than in \S+:\d+/,
      <<"EOF" ],
    server {
        listen 127.0.0.1:%%PORT%%;
        billing_marketplace alpha;
        billing_stripe_key_file %%DIR%%/alpha.key;
        billing_api_token_file %%DIR%%/alpha.token;
$LOC    }
    server {
        listen 127.0.0.1:%%PORT%%;
        server_name two;
        billing_marketplace alpha;
        billing_stripe_key_file %%DIR%%/beta.key;
        billing_api_token_file %%DIR%%/alpha.token;
$LOC    }
EOF
    [ 'one name, two webhook secrets',
      qr/"billing_marketplace alpha" .* another "billing_stripe_webhook_secret_file"/,
      <<'EOF' ],
    server {
        listen 127.0.0.1:%%PORT%%;
        billing_marketplace alpha;
        billing_stripe_webhook_secret_file %%DIR%%/alpha.whsec;
        location = /hook { billing_webhook; }
    }
    server {
        listen 127.0.0.1:%%PORT%%;
        server_name two;
        billing_marketplace alpha;
        billing_stripe_webhook_secret_file %%DIR%%/beta.whsec;
        location = /hook { billing_webhook; }
    }
EOF
    [ 'one name, two overdue policies',
      qr/"billing_marketplace alpha" .* another "billing_overdue"/,
      <<'EOF' ],
    server {
        listen 127.0.0.1:%%PORT%%;
        billing_marketplace alpha;
        billing_overdue 3d;
    }
    server {
        listen 127.0.0.1:%%PORT%%;
        server_name two;
        billing_marketplace alpha;
    }
EOF
    [ 'a key in a server of the default marketplace',
      qr/"billing_stripe_key_file" in the server of \S+:\d+ needs "billing_marketplace"/,
      <<'EOF' ],
    server {
        listen 127.0.0.1:%%PORT%%;
        billing_stripe_key_file %%DIR%%/alpha.key;
    }
EOF
    [ 'a portal in a server of the default marketplace',
      qr/"billing_portal_url" in the server of \S+:\d+ needs "billing_marketplace"/,
      <<'EOF' ],
    server {
        listen 127.0.0.1:%%PORT%%;
        billing_portal_url https://billing.stripe.com/p/x;
    }
EOF
    [ 'an API of a marketplace without a key',
      qr/"billing_api" in \S+:\d+ needs "billing_stripe_key_file" in its server or at the http level/,
      <<"EOF" ],
    server {
        listen 127.0.0.1:%%PORT%%;
        billing_marketplace alpha;
        billing_api_token_file %%DIR%%/alpha.token;
$LOC    }
EOF
    [ 'a webhook of a marketplace without a secret',
      qr/"billing_webhook" in \S+:\d+ needs "billing_stripe_webhook_secret_file" in its server or at the http level/,
      <<'EOF', "    billing_redis 127.0.0.1:%%REDIS_PORT%%;\n" ],
    server {
        listen 127.0.0.1:%%PORT%%;
        billing_marketplace alpha;
        location = /hook { billing_webhook; }
    }
EOF
    [ 'a name with a colon', qr/"billing_marketplace" directive has an invalid name/,
      <<'EOF' ],
    server {
        listen 127.0.0.1:%%PORT%%;
        billing_marketplace al:pha;
    }
EOF
    [ 'the name "default"', qr/cannot be "default"/, <<'EOF' ],
    server {
        listen 127.0.0.1:%%PORT%%;
        billing_marketplace default;
    }
EOF
    [ 'billing_marketplace twice', qr/"billing_marketplace" directive is duplicate/,
      <<'EOF' ],
    server {
        listen 127.0.0.1:%%PORT%%;
        billing_marketplace alpha;
        billing_marketplace beta;
    }
EOF
    [ 'billing_marketplace at the http level',
      qr/"billing_marketplace" directive is not allowed here/,
      "    server { listen 127.0.0.1:%%PORT%%; }\n",
      "    billing_redis 127.0.0.1:%%REDIS_PORT%%;\n"
      . "    billing_marketplace alpha;\n" ],
);

for my $case (@bad) {
    my ($name, $re, $servers, $http) = @$case;
    my ($rc, $out) = conf_t($servers, $http);
    isnt $rc, 0, "nginx -t: $name: refused";
    like $out, $re, '... the message names it' or diag $out;
    for my $secret (map { @$_{qw(key secret token)} } $A, $B) {
        unlike $out, qr/\Q$secret\E/, '... no secret shown';
    }
}

{
    # the servers of one marketplace, each inheriting the http level's
    # key, agree; so do two that repeat the same settings
    my ($rc, $out) = conf_t(<<"EOF", <<'EOF');
    server {
        listen 127.0.0.1:%%PORT%%;
        billing_marketplace alpha;
        billing_api_token_file %%DIR%%/alpha.token;
        billing_overdue 3d;
$LOC    }
    server {
        listen 127.0.0.1:%%PORT%%;
        server_name two;
        billing_marketplace alpha;
        billing_api_token_file %%DIR%%/alpha.token;
        billing_overdue 3d;
$LOC    }
    server {
        listen 127.0.0.1:%%PORT%%;
        server_name three;
        billing_marketplace beta;
        billing_stripe_key_file %%DIR%%/beta.key;
        billing_api_token_file %%DIR%%/beta.token;
$LOC    }
EOF
    billing_redis 127.0.0.1:%%REDIS_PORT%%;
    billing_stripe_key_file %%DIR%%/alpha.key;
EOF
    is $rc, 0, 'nginx -t: one marketplace in two servers, the http key '
        . 'inherited: accepted' or diag $out;
    like $out, qr/\[warn\].*the marketplaces "default" and "alpha" have the same Stripe key/,
        '... with a warning: alpha and the default are one account';
    like $out, qr/\[warn\].*has no server without "billing_marketplace"/,
        '... and one: the default marketplace has no server for its timers';
}

{
    # the same secrets in another order are the same; one in common
    # between two marketplaces is warned of
    my ($x, $y) = map { 'whsec_' . random_id('', 32) } 1 .. 2;
    $t->write_file('xy.whsec', "$x\n$y\n");
    $t->write_file('yx.whsec', "$y\n$x\n");
    $t->write_file('y.whsec', "$y\n");
    my ($rc, $out) = conf_t(<<'EOF');
    server {
        listen 127.0.0.1:%%PORT%%;
        billing_marketplace alpha;
        billing_stripe_webhook_secret_file %%DIR%%/xy.whsec;
        location = /hook { billing_webhook; }
    }
    server {
        listen 127.0.0.1:%%PORT%%;
        server_name two;
        billing_marketplace alpha;
        billing_stripe_webhook_secret_file %%DIR%%/yx.whsec;
        location = /hook { billing_webhook; }
    }
    server {
        listen 127.0.0.1:%%PORT%%;
        server_name three;
        billing_marketplace beta;
        billing_stripe_webhook_secret_file %%DIR%%/y.whsec;
        location = /hook { billing_webhook; }
    }
EOF
    is $rc, 0, 'nginx -t: the same secrets in another order: accepted'
        or diag $out;
    like $out, qr/\[warn\].*"alpha" and "beta" share a webhook secret/,
        '... a secret shared by two marketplaces: a warning';
    unlike $out, qr/\Q$y\E|\Q$x\E/, '... that names no secret';
}

$_->{stripe}->stop for $A, $B;
$t->done;
done_testing;
