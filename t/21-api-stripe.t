# billing_api when Stripe misbehaves: refusals at every step, retries
# (5xx, 429, 409, timeouts, answers lost after Stripe did the work,
# Stripe-Should-Retry), billing_stripe_timeout, resuming a sequence cut
# short, and two identical requests racing on two workers. Whatever
# happens, Stripe holds one customer, one invoice and one item.

use strict;
use warnings;

use JSON::PP;
use Test::More;
use Time::HiRes qw(time sleep);

use BillingTest qw(:all);
use StripeMock;

my $t = BillingTest->new;


my $TOKEN  = 'api-' . random_id('', 32);
my $KEY    = 'sk_test_' . random_id('', 40);
my $SECRET = 'whsec_' . random_id('', 32);

$t->write_file('api.token', "$TOKEN\n");
$t->write_file('stripe.key', "$KEY\n");
$t->write_file('whsec', "$SECRET\n");
$t->secrets($SECRET);

my $s = StripeMock->start(dir => $t->dir, key => $KEY);

$t->start_redis;
$t->start_nginx(<<'EOF', STRIPE_PORT => $s->port, workers => 2);
    billing_redis 127.0.0.1:%%REDIS_PORT%% timeout=1s;
    billing_stripe_webhook_secret_file %%DIR%%/whsec;
    billing_stripe_key_file %%DIR%%/stripe.key;
    billing_api_token_file %%DIR%%/api.token;
    billing_portal_url https://billing.stripe.com/p/login/test_123;
    billing_stripe_timeout 3s;

    server {
        listen 127.0.0.1:%%PORT%% reuseport;

        location = /stripe/webhook { billing_webhook; }
        location /billing/ { billing_api; }

        location /_billing_stripe/ {
            internal;
            proxy_pass http://127.0.0.1:%%STRIPE_PORT%%/;
            proxy_read_timeout 1s;
        }
    }
EOF


# ---------------------------------------------------------------------
# helpers

my $JSON = JSON::PP->new->utf8->canonical;
my @ANSWERS;


sub post_sub {
    my ($req, %o) = @_;
    my $r = $t->http('POST', '/billing/subscriptions',
        headers => { Authorization => "Bearer $TOKEN",
                     'Content-Type' => 'application/json' },
        body => $JSON->encode($req), timeout => $o{timeout} || 15);
    push @ANSWERS, $r;
    return $r;
}

sub get_sub {
    my ($id) = @_;
    my $r = $t->http('GET', "/billing/subscriptions/$id",
        headers => { Authorization => "Bearer $TOKEN" });
    push @ANSWERS, $r;
    return $r;
}

sub stripe_count { scalar @{ $s->requests } }

sub requests_since {
    my ($n, $path_re) = @_;
    my $all = $s->requests;
    my @r = @{$all}[ $n .. $#$all ];
    @r = grep { $_->{path} =~ $path_re } @r if $path_re;
    return \@r;
}

sub calls { [ map { "$_->{method} $_->{path}" } @{ $_[0] } ] }

# Stripe's objects that belong to a subscription / an org


# one customer, one invoice (open) with one item of the base price
sub one_of_each {
    my ($id, $org, $name) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    is scalar @{ $s->customers_of($org) }, 1, "$name: one customer at Stripe";
    my $inv = $s->invoices_of($id);
    is scalar @$inv, 1, "$name: one invoice at Stripe";
    is $inv->[0]{status}, 'open', "$name: the invoice finalized, open";
    my $items = $s->items_of($id);
    is scalar @$items, 1, "$name: one item at Stripe";
    is $inv->[0]{amount_due}, 1500, "$name: amount_due of the base price";
}

sub is_created {
    my ($r, $id, $name) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    is($r->{status}, 201, "$name: 201") or diag $r->{content};
    is $r->{json} && $r->{json}{id}, $id, "$name: the subscription";
    is $r->{json} && $r->{json}{invoice}{status}, 'open', "$name: invoice open";
    is $r->{json} && $r->{json}{invoice}{id},
        ($s->invoices_of($id)->[0] || {})->{id}, "$name: Stripe's invoice";
}

sub is_stripe_error {
    my ($r, $stripe_status, $message, $name) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    my $ok = is($r->{status}, 502, "$name: 502");
    my $e = ref $r->{json} eq 'HASH' ? $r->{json}{error} || {} : {};
    $ok &= is($e->{code}, 'stripe_error', "$name: code stripe_error");
    $ok &= is($e->{stripe_status}, $stripe_status,
        "$name: stripe_status $stripe_status");
    if (ref $message) {
        $ok &= like($e->{message}, $message, "$name: message");
    } else {
        $ok &= is($e->{message}, $message, "$name: Stripe's message");
    }
    diag "answer: $r->{status} " . ($r->{content} // '') unless $ok;
}

# all requests the same Idempotency-Key and body
sub same_key {
    my ($reqs, $name) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    my %keys = map { ($_->{headers}{'idempotency-key'} // '') => 1 } @$reqs;
    my %bodies = map { ($_->{body} // '') => 1 } @$reqs;
    ok @$reqs && keys %keys == 1 && !exists $keys{''},
        "$name: one Idempotency-Key on every attempt"
        or diag join ', ', keys %keys;
    is scalar keys %bodies, 1, "$name: the same body on every attempt";
}

my %STEP = (
    customer => [ '^/v1/customers$', 'POST /v1/customers' ],
    invoice  => [ '^/v1/invoices$', 'POST /v1/invoices' ],
    item     => [ '^/v1/invoiceitems$', 'POST /v1/invoiceitems' ],
    finalize => [ '/finalize$', undef ],
);

my $N = 0;
sub fresh { $N++; return ("sub-s$N", "org-s$N") }


# ---------------------------------------------------------------------
# a 400 at each step: 502 with Stripe's message, no retry; the same
# request again resumes where the first stopped

for my $step (qw(customer invoice item finalize)) {
    my ($id, $org) = fresh();
    my $name = "400 at $step";
    my $message = "No such thing at $step (test)";

    $s->fail(method => 'POST', path => $STEP{$step}[0], status => 400,
        body => { error => { type => 'invalid_request_error',
            code => 'resource_missing', message => $message } });

    my $n = stripe_count();
    my $r = post_sub(subscription_request($id, $org));
    is_stripe_error($r, 400, $message, $name);
    is scalar @{ requests_since($n, qr/$STEP{$step}[0]/) }, 1,
        "$name: not retried";
    cmp_ok $r->{elapsed}, '<', 1, "$name: answered at once";
    $s->clear_rules;

    my $done = requests_since($n);
    my @steps = qw(customer invoice item finalize);
    my ($at) = grep { $steps[$_] eq $step } 0 .. $#steps;
    is scalar @$done, $at + 1, "$name: the steps before it, then it";

    my $sub = $t->redis_hash("billing:sub:$id");
    is $sub->{state}, 'pending', "$name: claimed, pending";

    my $g = get_sub($id);
    is $g->{status}, 200, "$name: GET 200";
    is $g->{json}{state}, 'pending', "$name: GET pending";
    if ($step eq 'item' || $step eq 'finalize') {
        is scalar @{ $g->{json}{invoices} || [] }, 1, "$name: the invoice recorded";
        is $g->{json}{invoices}[0]{status}, 'draft', "$name: shown as draft";
        is $g->{json}{invoices}[0]{id}, $s->invoices_of($id)->[0]{id},
            "$name: Stripe's invoice";
    } else {
        is_deeply $g->{json}{invoices}, [], "$name: no invoice yet";
    }
    if ($step eq 'finalize') {
        ok $sub->{initial_invoice}
            && $t->redis_hash("billing:invoice:$sub->{initial_invoice}")
                ->{'item:item'},
            "$name: invoice and item recorded in Redis";
        is $s->invoices_of($id)->[0]{status}, 'draft', "$name: a draft at Stripe";
    }

    # resume
    my $failed_key = $done->[-1]{headers}{'idempotency-key'};
    my $m = stripe_count();
    $r = post_sub(subscription_request($id, $org));
    is_created($r, $id, "$name, sent again");
    my $resumed = requests_since($m);
    is_deeply calls($resumed)->[0],
        $STEP{$step}[1] // "POST /v1/invoices/" . $s->invoices_of($id)->[0]{id}
        . '/finalize', "$name, sent again: resumed at $step";
    is scalar @$resumed, 4 - $at, "$name, sent again: the steps left only";
    is $resumed->[0]{headers}{'idempotency-key'}, $failed_key,
        "$name, sent again: the same Idempotency-Key";
    one_of_each($id, $org, "$name, sent again");

    # and once more: complete, 200, nothing sent
    $m = stripe_count();
    my $again = post_sub(subscription_request($id, $org));
    is $again->{status}, 200, "$name, third time: 200";
    is_deeply $again->{json}, $r->{json}, "$name, third time: the same answer";
    is stripe_count(), $m, "$name, third time: nothing sent to Stripe";
}


# ---------------------------------------------------------------------
# retried failures: one object in the end

{
    my ($id, $org) = fresh();
    $s->fail(method => 'POST', path => $STEP{invoice}[0], status => 500, times => 2);
    my $n = stripe_count();
    my $r = post_sub(subscription_request($id, $org));
    is_created($r, $id, '500 twice');
    my $reqs = requests_since($n, qr/$STEP{invoice}[0]/);
    is scalar @$reqs, 3, '500 twice: three attempts';
    same_key($reqs, '500 twice');
    one_of_each($id, $org, '500 twice');
    cmp_ok $r->{elapsed}, '>=', 0.7, '500 twice: with backoff (250 + 500 ms)';
    $s->clear_rules;
}

{
    my ($id, $org) = fresh();
    $s->fail(method => 'POST', path => $STEP{item}[0], stall => 1);
    my $n = stripe_count();
    my $r = post_sub(subscription_request($id, $org));
    is_created($r, $id, 'item stalled once');
    my $reqs = requests_since($n, qr/$STEP{item}[0]/);
    is scalar @$reqs, 2, 'item stalled once: two attempts';
    same_key($reqs, 'item stalled once');
    one_of_each($id, $org, 'item stalled once');
    cmp_ok $r->{elapsed}, '>=', 1, 'item stalled once: after proxy_read_timeout';
    cmp_ok $r->{elapsed}, '<', 3, 'item stalled once: not much later';
    $s->clear_rules;
}

{
    # Stripe makes the invoice after 1.5 s; nginx gave up after 1 s,
    # the retry finds the key in use (409), the next one its result
    my ($id, $org) = fresh();
    $s->fail(method => 'POST', path => $STEP{invoice}[0], delay => 1.5);
    my $n = stripe_count();
    my $r = post_sub(subscription_request($id, $org));
    is_created($r, $id, 'invoice answered too late');
    my $reqs = requests_since($n, qr/$STEP{invoice}[0]/);
    cmp_ok scalar @$reqs, '>=', 2, 'invoice answered too late: retried';
    same_key($reqs, 'invoice answered too late');
    one_of_each($id, $org, 'invoice answered too late');
    $s->clear_rules;
}

{
    my ($id, $org) = fresh();
    $s->fail(method => 'POST', path => $STEP{item}[0], status => 500, after => 1);
    my $n = stripe_count();
    my $r = post_sub(subscription_request($id, $org));
    is_created($r, $id, 'item made, answer lost (500)');
    my $reqs = requests_since($n, qr/$STEP{item}[0]/);
    is scalar @$reqs, 2, 'item made, answer lost: two attempts';
    same_key($reqs, 'item made, answer lost');
    one_of_each($id, $org, 'item made, answer lost');
    $s->clear_rules;
}

{
    my ($id, $org) = fresh();
    $s->fail(method => 'POST', path => $STEP{invoice}[0], stall => 1, after => 1);
    my $n = stripe_count();
    my $r = post_sub(subscription_request($id, $org));
    is_created($r, $id, 'invoice made, answer never came');
    my $reqs = requests_since($n, qr/$STEP{invoice}[0]/);
    is scalar @$reqs, 2, 'invoice made, answer never came: two attempts';
    same_key($reqs, 'invoice made, answer never came');
    one_of_each($id, $org, 'invoice made, answer never came');
    $s->clear_rules;
}

{
    my ($id, $org) = fresh();
    $s->fail(method => 'POST', path => $STEP{finalize}[0], status => 500, after => 1);
    my $n = stripe_count();
    my $r = post_sub(subscription_request($id, $org));
    is_created($r, $id, 'finalized, answer lost');
    my $reqs = requests_since($n, qr/$STEP{finalize}[0]/);
    is scalar @$reqs, 2, 'finalized, answer lost: two attempts';
    same_key($reqs, 'finalized, answer lost');
    one_of_each($id, $org, 'finalized, answer lost');
    $s->clear_rules;
}

for my $c (
    [ '429, Stripe-Should-Retry: true', customer => 429,
      { 'Stripe-Should-Retry' => 'true' } ],
    [ '429 without Stripe-Should-Retry', customer => 429,
      { 'Stripe-Should-Retry' => undef } ],
    [ '409 (key in use)', item => 409, undef ],
    [ '503 without Stripe-Should-Retry', invoice => 503,
      { 'Stripe-Should-Retry' => undef } ],
    [ '400, Stripe-Should-Retry: true', finalize => 400,
      { 'Stripe-Should-Retry' => 'true' } ],
)
{
    my ($name, $step, $status, $headers) = @$c;
    my ($id, $org) = fresh();
    $s->fail(method => 'POST', path => $STEP{$step}[0], status => $status,
        $headers ? (headers => $headers) : ());
    my $n = stripe_count();
    my $r = post_sub(subscription_request($id, $org));
    is_created($r, $id, $name);
    my $reqs = requests_since($n, qr/$STEP{$step}[0]/);
    is scalar @$reqs, 2, "$name: retried once";
    same_key($reqs, $name);
    one_of_each($id, $org, $name);
    $s->clear_rules;
}


# ---------------------------------------------------------------------
# not retried, or still failing: 502

{
    my ($id, $org) = fresh();
    $s->fail(method => 'POST', path => $STEP{invoice}[0], status => 500,
        headers => { 'Stripe-Should-Retry' => 'false' },
        body => { error => { type => 'api_error', message => 'Do not retry this' } });
    my $n = stripe_count();
    my $r = post_sub(subscription_request($id, $org));
    is_stripe_error($r, 500, 'Do not retry this', '500, Stripe-Should-Retry: false');
    is scalar @{ requests_since($n, qr/$STEP{invoice}[0]/) }, 1,
        '500, Stripe-Should-Retry: false: not retried';
    is scalar @{ $s->invoices_of($id) }, 0, '500, Stripe-Should-Retry: false: no invoice';
    $s->clear_rules;
}

{
    my ($id, $org) = fresh();
    $s->fail(method => 'POST', path => $STEP{invoice}[0], status => 500, times => 0,
        body => { error => { type => 'api_error', message => 'Stripe is down (test)' } });
    my $n = stripe_count();
    my $r = post_sub(subscription_request($id, $org));
    is_stripe_error($r, 500, 'Stripe is down (test)', '500 forever');
    my $reqs = requests_since($n, qr/$STEP{invoice}[0]/);
    cmp_ok scalar @$reqs, '>=', 3, '500 forever: several attempts';
    same_key($reqs, '500 forever');
    cmp_ok $r->{elapsed}, '<', 3 + 1, '500 forever: within billing_stripe_timeout'
        or diag "$r->{elapsed} s";
    diag sprintf '500 forever: %d attempts, answered after %.2f s',
        scalar @$reqs, $r->{elapsed};
    $s->clear_rules;

    my $ok = post_sub(subscription_request($id, $org));
    is_created($ok, $id, '500 forever, then Stripe is back');
    one_of_each($id, $org, '500 forever, then Stripe is back');
}

{
    my ($id, $org) = fresh();
    $s->fail(method => 'POST', path => $STEP{finalize}[0], stall => 1, times => 0);
    my $n = stripe_count();
    my $r = post_sub(subscription_request($id, $org));
    is_stripe_error($r, 504, qr/did not answer|time/i, 'finalize stalled forever');
    my $reqs = requests_since($n, qr/$STEP{finalize}[0]/);
    cmp_ok scalar @$reqs, '>=', 2, 'stalled forever: several attempts';
    same_key($reqs, 'stalled forever');
    cmp_ok $r->{elapsed}, '>=', 2.5, 'stalled forever: tried for billing_stripe_timeout';
    # the last attempt may start just before the deadline and wait its
    # proxy_read_timeout (1 s)
    cmp_ok $r->{elapsed}, '<', 3 + 1 + 0.75,
        'stalled forever: within billing_stripe_timeout + one proxy_read_timeout'
        or diag "$r->{elapsed} s";
    diag sprintf 'stalled forever: %d attempts, answered after %.2f s',
        scalar @$reqs, $r->{elapsed};
    $s->clear_rules;

    my $g = get_sub($id);
    is $g->{json}{invoices}[0]{status}, 'draft', 'stalled forever: GET shows a draft';

    my $ok = post_sub(subscription_request($id, $org));
    is_created($ok, $id, 'stalled forever, then Stripe is back');
    one_of_each($id, $org, 'stalled forever, then Stripe is back');
}


# ---------------------------------------------------------------------
# two identical requests racing on two workers

sub raw_post { raw_json_post('/billing/subscriptions', $TOKEN, $_[0]) }

# the worker (pid) that handled each request for a subscription
sub workers_of {
    my ($id) = @_;
    return [ $t->error_log =~ /\[info\] (\d+)#\d+: \*\d+ billing api: subscription \Q$id\E: /g ];
}

sub race {
    my ($name, $step, $delay) = @_;
    my ($id, $org) = fresh();

    # the first call of that step waits: the other request finds its
    # Idempotency-Key in use (409) and retries
    $s->fail(method => 'POST', path => $STEP{$step}[0], delay => $delay)
        if $step;

    my $bytes = raw_post(subscription_request($id, $org));
    my @h = map { $t->raw_http_send($bytes) } 1 .. 2;
    my @r = map { $t->raw_http_read($_, timeout => 10) } @h;
    push @ANSWERS, @r;
    $s->clear_rules;

    my @status = sort map { $_->{status} // 'none' } @r;
    ok +(grep { $_ eq '200' || $_ eq '201' } @status) == 2,
        "$name: both answered 200 or 201 (@status)"
        or diag join "\n", map { $_->{raw} } @r;
    ok +(grep { $_ eq '201' } @status) >= 1, "$name: one of them created it";
    my @inv = map { $_->{json} ? $_->{json}{invoice}{id} // '' : '' } @r;
    ok $inv[0] && $inv[0] eq $inv[1], "$name: the same invoice ($inv[0], $inv[1])";
    is $inv[0], ($s->invoices_of($id)->[0] || {})->{id}, "$name: Stripe's invoice";
    one_of_each($id, $org, $name);
    is_deeply [ $t->redis('ZRANGE', "billing:sub:$id:invoices", 0, -1) ],
        [ [ $inv[0] ] ], "$name: one invoice in Redis";
    is $t->redis('HGET', "billing:org:$org", 'customer_id'),
        $s->customers_of($org)->[0]{id}, "$name: the org's customer in Redis";

    my %w = map { $_ => 1 } @{ workers_of($id) };
    return scalar keys %w;
}

{
    # reuseport spreads connections over the workers by their ports:
    # race until a pair was handled by two workers (half of them are)
    my ($tries, $spread) = (0, 0);
    while ($tries < 12 && !$spread) {
        $tries++;
        $spread = race("race $tries") == 2;
    }
    ok $spread, "a race between two workers happened ($tries tries)";

    race('race, slow customer', customer => 0.4);
    race('race, slow invoice', invoice => 0.4);
    race('race, slow item', item => 0.4);
    race('race, slow finalize', finalize => 0.4);
}


# ---------------------------------------------------------------------
# two subscriptions of one new org, with other customer data, racing:
# both need the org's customer. The customer's Idempotency-Key names the
# org and a digest of the details sent, so neither gets Stripe's 400
# idempotency_error for a key reused with other parameters.

{
    # two subscriptions of one new org, with other details, racing

    my $org = 'org-shared';
    my @ids = ('sub-shared-a', 'sub-shared-b');
    $s->fail(method => 'POST', path => $STEP{customer}[0], delay => 0.4);
    my @h = map {
        my $req = subscription_request($_, $org);
        $req->{customer} = { email => "$_\@acme.test", name => "Team $_" };
        $t->raw_http_send(raw_post($req));
    } @ids;
    my @r = map { $t->raw_http_read($_, timeout => 10) } @h;
    push @ANSWERS, @r;
    $s->clear_rules;

    is_deeply [ map { $_->{status} // 'none' } @r ], [ 201, 201 ],
        'two subscriptions of a new org at once: both created'
        or diag join "\n", map { $_->{content} // '' } @r;

    # each may have made a customer at Stripe (their details differ);
    # the one recorded first is the org's, for both subscriptions
    my @cus = map { $_->{json} ? $_->{json}{customer_id} : undef } @r;
    ok defined $cus[0] && defined $cus[1] && $cus[0] eq $cus[1],
        'two subscriptions of a new org at once: one customer for both';
    is $t->redis('HGET', 'billing:org:org-shared', 'customer_id'), $cus[0],
        "two subscriptions of a new org at once: the org's customer";
}
cmp_ok scalar @{ $s->customers_of('org-shared') }, '<=', 2,
    'two subscriptions of a new org at once: at most one customer each';


# ---------------------------------------------------------------------
# the Stripe key never in error.log (debug) nor in an answer

{
    $t->stop_nginx;
    my $log = $t->error_log;
    like $log, qr/\[debug\]/, 'error.log is at debug level';
    like $log, qr/billing stripe: .* failed with/, 'the failures were logged';
    my $answers = answers_text(@ANSWERS);
    for my $secret ([ 'Stripe key', $KEY ], [ 'Stripe key without prefix', substr($KEY, 8) ],
                    [ 'webhook secret', substr($SECRET, 6) ])
    {
        ok index($log, $secret->[1]) < 0, "$secret->[0] not in error.log";
        ok index($answers, $secret->[1]) < 0, "$secret->[0] not in any answer";
    }
    my @token = grep { index($_, $TOKEN) >= 0 } split /\n/, $log;
    my @other = grep { !/\[debug\] \d+#\d+: \*\d+ http header: "Authorization: Bearer \Q$TOKEN\E"$/ } @token;
    ok @token && !@other, 'the API token only in nginx core\'s "http header:" lines'
        or diag join "\n", @other[0 .. ($#other > 10 ? 10 : $#other)];
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
