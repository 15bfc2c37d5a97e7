# billing_api against the Stripe stand-in: bearer token, routing,
# validation of POST subscriptions, the Stripe sequence of a first
# invoice and what reaches Stripe, customer reuse, the same request
# again, conflicts, a zero base price, GET, webhooks changing what GET
# shows, Redis down, and no secret in any log line or answer.

use strict;
use warnings;

use JSON::PP;
use Test::More;
use Time::HiRes qw(time sleep);
use Time::Local qw(timegm);
use Digest::MD5 qw(md5_hex);
use Encode ();

use BillingTest qw(:all);
use StripeMock;

my $t = BillingTest->new;


my $TOKEN    = 'api-' . random_id('', 32) . '~+/=';
my $KEY      = 'sk_test_' . random_id('', 40);
my $SECRET   = 'whsec_' . random_id('', 32);
my $PASSWORD = 'pw-' . random_id('', 24);
my $PORTAL   = 'https://billing.stripe.com/p/login/test_123';

$t->write_file('api.token', "$TOKEN\n");
$t->write_file('stripe.key', "$KEY\n");
$t->write_file('whsec', "$SECRET\n");
$t->write_file('redis.pass', "$PASSWORD\n");
$t->secrets($SECRET);

my $s = StripeMock->start(dir => $t->dir, key => $KEY);

$t->start_redis(requirepass => $PASSWORD);
$t->start_nginx(<<'EOF', STRIPE_PORT => $s->port);
    billing_redis 127.0.0.1:%%REDIS_PORT%% timeout=1s
                  password_file=%%DIR%%/redis.pass;
    billing_stripe_webhook_secret_file %%DIR%%/whsec;
    billing_stripe_key_file %%DIR%%/stripe.key;
    billing_api_token_file %%DIR%%/api.token;
    billing_portal_url https://billing.stripe.com/p/login/test_123;
    billing_stripe_timeout 3s;

    server {
        listen 127.0.0.1:%%PORT%%;

        location = /stripe/webhook { billing_webhook; }
        location /billing/ { billing_api; }

        location /small/ {
            billing_api;
            client_body_buffer_size 1k;
            client_max_body_size 32k;
        }

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
my @ANSWERS;        # every answer, for the secrets check at the end

# a request to the API; token => undef sends no Authorization,
# auth => '...' sends that header; json => {} or body => '...'
sub api {
    my ($method, $path, %o) = @_;
    my %h;
    if (exists $o{auth}) {
        $h{Authorization} = $o{auth} if defined $o{auth};
    } else {
        $h{Authorization} = "Bearer $TOKEN";
    }
    %h = (%h, %{ $o{headers} || {} });
    my $body = $o{json} ? $JSON->encode($o{json}) : $o{body};
    $h{'Content-Type'} //= 'application/json' if defined $body;
    my $r = $t->http($method, "/billing/$path", headers => \%h,
        body => $body, timeout => $o{timeout} || 10);
    push @ANSWERS, $r;
    return $r;
}

sub post_sub { api('POST', 'subscriptions', json => $_[0], @_[1 .. $#_]) }
sub get_sub  { api('GET', "subscriptions/$_[0]") }

# the README's example request, with changes
sub sub_req {
    my (%o) = @_;
    my $req = {
        id => 'sub-42', consumer_org => 'org-7',
        customer => { email => 'ops@acme.test', name => 'ACME' },
        plan => { currency => 'usd', base_price => 1500, unit_price => '0.25',
                  unit => 'request', metering_period => 'month',
                  days_until_due => 30 },
    };
    $req->{$_} = $o{$_} for grep { !/^(?:plan|customer)$/ } keys %o;
    %{ $req->{plan} } = (%{ $req->{plan} }, %{ $o{plan} }) if $o{plan};
    %{ $req->{customer} } = (%{ $req->{customer} }, %{ $o{customer} })
        if $o{customer};
    return $req;
}

sub is_error {
    my ($r, $status, $code, $name) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    my $ok = is($r->{status}, $status, "$name: status $status");
    $ok &= is(ref $r->{json} eq 'HASH' && ref $r->{json}{error} eq 'HASH'
        ? $r->{json}{error}{code} : undef, $code, "$name: code $code");
    $ok &= like($r->{headers}{'content-type'} // '', qr{^application/json},
        "$name: JSON answer");
    $ok &= ok(ref $r->{json} eq 'HASH' && ref $r->{json}{error} eq 'HASH'
        && defined $r->{json}{error}{message}
        && length $r->{json}{error}{message}, "$name: a message");
    diag("answer: $r->{status} " . ($r->{content} // '')) unless $ok;
    return $ok;
}

sub MIME_base64 {
    require MIME::Base64;
    return MIME::Base64::encode_base64($_[0], '');
}

# a value as a printable test name
sub shown {
    my ($v) = @_;
    $v =~ s/([^\x20-\x7e])/sprintf '\\x{%x}', ord $1/ge;
    return $v;
}

sub all_keys { [ sort @{ $t->redis('KEYS', '*') || [] } ] }

sub stripe_count { scalar @{ $s->requests } }

# the Stripe requests made since request number $n
sub requests_since {
    my ($n) = @_;
    my $all = $s->requests;
    return [ @{$all}[ $n .. $#$all ] ];
}

sub objects_count {
    return join ' ', map { scalar @{ $s->objects($_) } }
        qw(customer invoice invoiceitem);
}

# the end of a period of $months calendar months from $start (UTC),
# the day clamped to the last of the month
sub months_later {
    my ($start, $months) = @_;
    my ($sec, $min, $hour, $d, $m, $y) = gmtime $start;
    $y += 1900;
    $m += $months;
    $y += int($m / 12);
    $m %= 12;
    my $leap = ($y % 4 == 0 && $y % 100 != 0) || $y % 400 == 0;
    my $last = (31, $leap ? 29 : 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)[$m];
    $d = $last if $d > $last;
    return timegm($sec, $min, $hour, $d, $m, $y);
}


# ---------------------------------------------------------------------
# authentication: before anything else, nothing reaches Stripe or Redis

{
    my @bad = (
        [ 'no Authorization',   undef ],
        [ 'empty',              '' ],
        [ 'Bearer, no token',   'Bearer' ],
        [ 'Bearer and a space', 'Bearer ' ],
        [ 'wrong token',        'Bearer ' . 'x' x length $TOKEN ],
        [ 'token one char off', 'Bearer ' . substr($TOKEN, 0, -1)
                                . (substr($TOKEN, -1) eq 'A' ? 'B' : 'A') ],
        [ 'token prefix',       'Bearer ' . substr($TOKEN, 0, -1) ],
        [ 'token and more',     "Bearer ${TOKEN}x" ],
        [ 'token, no scheme',   $TOKEN ],
        [ 'Basic scheme',       'Basic ' . MIME_base64("backend:$TOKEN") ],
        [ 'Token scheme',       "Token $TOKEN" ],
        [ 'Bearer in a header of its own', undef,
          { 'X-Authorization' => "Bearer $TOKEN" } ],
    );

    my @targets = (
        [ 'POST', 'subscriptions', $JSON->encode(sub_req(id => 'sub-unauth')) ],
        [ 'GET', 'subscriptions/sub-42' ],
        [ 'DELETE', 'subscriptions/sub-42' ],
        [ 'PUT', 'subscriptions' ],
        [ 'GET', 'nowhere' ],
    );

    for my $b (@bad) {
        my ($name, $auth, $headers) = @$b;
        for my $target (@targets) {
            my ($method, $path, $body) = @$target;
            my $r = api($method, $path, auth => $auth, body => $body,
                headers => $headers);
            is_error($r, 401, 'unauthorized', "$name, $method $path");
            is $r->{headers}{'www-authenticate'}, 'Bearer',
                "$name, $method $path: WWW-Authenticate: Bearer";
        }
    }

    is stripe_count(), 0, 'unauthorized: nothing reached Stripe';
    is_deeply all_keys(), [], 'unauthorized: nothing in Redis';
}

# ---------------------------------------------------------------------
# routing

{
    for my $m (qw(GET PUT PATCH DELETE)) {
        my $r = api($m, 'subscriptions');
        is_error($r, 405, 'method_not_allowed', "$m subscriptions");
        is $r->{headers}{allow}, 'POST', "$m subscriptions: Allow: POST";
    }

    for my $m (qw(POST PUT PATCH)) {
        my $r = api($m, 'subscriptions/sub-42', body => '{}');
        is_error($r, 405, 'method_not_allowed', "$m subscriptions/{id}");
        is $r->{headers}{allow}, 'GET, DELETE',
            "$m subscriptions/{id}: Allow: GET, DELETE";
    }

    my $r = api('DELETE', 'subscriptions/sub-nobody');
    is_error($r, 404, 'not_found', 'DELETE subscriptions/{unknown id}');

    for my $path ('', 'foo', 'subscription', 'subscriptionsx',
                  'subscriptions/a/b', 'subscriptions/a/',
                  'subscriptions/sub%2042', 'subscriptions/sub:42',
                  'subscriptions/' . 'a' x 65, 'foo/subscriptions')
    {
        for my $m (qw(GET POST)) {
            my $r = api($m, $path, $m eq 'POST'
                ? (json => sub_req(id => 'sub-route')) : ());
            is_error($r, 404, 'not_found', "$m /billing/$path");
        }
    }

    $r = get_sub('sub-unknown');
    is_error($r, 404, 'not_found', 'GET an unknown subscription');
    $r = get_sub('a' x 64);
    is_error($r, 404, 'not_found', 'GET an unknown 64-character id');

    is stripe_count(), 0, 'routing: nothing reached Stripe';
    is_deeply all_keys(), [], 'routing: nothing written to Redis';
}


# ---------------------------------------------------------------------
# validation: 400 invalid_request naming the field; nothing reaches
# Stripe or Redis

{
    my @cases;      # [ name, body (text), the field the message names ]

    my $add = sub {
        my ($name, $field, %o) = @_;
        push @cases, [ $name, $JSON->encode(sub_req(%o)), $field ];
    };
    my $without = sub {
        my ($name, $field, $where, $key) = @_;
        my $req = sub_req();
        if ($where) { delete $req->{$where}{$key} } else { delete $req->{$key} }
        push @cases, [ $name, $JSON->encode($req), $field ];
    };

    push @cases,
        [ 'not JSON', 'id=sub-42&consumer_org=org-7', 'JSON' ],
        [ 'truncated JSON', substr($JSON->encode(sub_req()), 0, 40), 'JSON' ],
        [ 'empty body', '', 'JSON' ],
        [ 'an array', '[' . $JSON->encode(sub_req()) . ']', 'object' ],
        [ 'a string', '"sub-42"', undef ],
        [ 'null', 'null', undef ];

    $add->('unknown top-level field', 'cancel_at', cancel_at => 17);
    $add->('unknown customer field', 'phone', customer => { phone => '+1' });
    $add->('unknown plan field', 'interval', plan => { interval => 'month' });

    $without->('id missing', 'id', undef, 'id');
    $add->('id empty', 'id', id => '');
    $add->('id too long', 'id', id => 'a' x 65);
    $add->("id with $_->[0]", 'id', id => $_->[1])
        for [ 'a space', 'sub 42' ], [ 'a slash', 'sub/42' ],
            [ 'a colon', 'sub:42' ], [ 'non-ASCII', "sub-\x{e9}" ],
            [ 'a newline', "sub-42\n" ], [ 'only a dot', '.' ],
            [ 'only two dots', '..' ];
    $add->('id a number', 'id', id => 42);
    $add->('id null', 'id', id => undef);

    $without->('consumer_org missing', 'consumer_org', undef, 'consumer_org');
    $add->('consumer_org empty', 'consumer_org', consumer_org => '');
    $add->('consumer_org too long', 'consumer_org', consumer_org => 'o' x 65);
    $add->('consumer_org with a space', 'consumer_org', consumer_org => 'org 7');
    $add->('consumer_org with a colon', 'consumer_org', consumer_org => 'org:7');
    $add->('consumer_org an object', 'consumer_org', consumer_org => {});

    push @cases,
        [ 'customer a string',
          $JSON->encode({ %{ sub_req() }, customer => 'ops@acme.test' }),
          'customer' ],
        [ 'customer an array', $JSON->encode({ %{ sub_req() }, customer => [] }),
          'customer' ],
        [ 'customer null', $JSON->encode({ %{ sub_req() }, customer => undef }),
          'customer' ];
    $without->('customer missing', 'customer', undef, 'customer');

    $without->('email missing', 'email', 'customer', 'email');
    $add->('email "' . shown($_) . '"', 'email', customer => { email => $_ })
        for 'nope', 'a@b', '@acme.test', 'ops@', 'ops@acme.', 'ops@.test',
            'o ps@acme.test', 'ops@@acme.test', '';
    $add->('email a number', 'email', customer => { email => 7 });

    $add->('name of 257 characters', 'name', customer => { name => 'n' x 257 });
    $add->('name with a newline', 'name', customer => { name => "ACME\nInc" });
    $add->('name with a control character', 'name',
        customer => { name => "ACME\x01" });
    $add->('name with DEL', 'name', customer => { name => "ACME\x7f" });
    $add->('name a number', 'name', customer => { name => 5 });

    $without->('plan missing', 'plan', undef, 'plan');
    push @cases, [ 'plan a string',
        $JSON->encode({ %{ sub_req() }, plan => 'basic' }), 'plan' ];

    $without->('currency missing', 'currency', 'plan', 'currency');
    $add->('currency "' . shown($_) . '"', 'currency', plan => { currency => $_ })
        for 'us', 'usdd', 'u1d', 'us ', '', "\x{e9}ur";
    $add->('currency a number', 'currency', plan => { currency => 840 });

    $without->('base_price missing', 'base_price', 'plan', 'base_price');
    $add->('base_price negative', 'base_price', plan => { base_price => -1 });
    $add->('base_price a float', 'base_price', plan => { base_price => 15.5 });
    # (JSON::PP writes 1500.0 as 1500: the text itself)
    push @cases, [ 'base_price 1500.0',
        $JSON->encode(sub_req()) =~ s/"base_price":1500\b/"base_price":1500.0/r,
        'base_price' ],
        [ 'base_price 1.5e3',
        $JSON->encode(sub_req()) =~ s/"base_price":1500\b/"base_price":1.5e3/r,
        'base_price' ];
    $add->('base_price a string', 'base_price', plan => { base_price => '1500' });
    $add->('base_price too large', 'base_price',
        plan => { base_price => 100000000 });
    $add->('base_price null', 'base_price', plan => { base_price => undef });
    $add->('base_price true', 'base_price',
        plan => { base_price => JSON::PP::true });

    $without->('unit_price missing', 'unit_price', 'plan', 'unit_price');
    $add->("unit_price \"$_\"", 'unit_price', plan => { unit_price => $_ })
        for 'abc', '1.', '.5', '-1', '', '1e3', ' 1', '1,5', '0.1.2', '+1',
            '0.' . '1' x 13, '1/4';
    $add->('unit_price a JSON number', 'unit_price', plan => { unit_price => 0.25 });
    $add->('unit_price an integer', 'unit_price', plan => { unit_price => 1 });

    $add->('unit "' . shown($_) . '"', 'unit', plan => { unit => $_ })
        for '', 'u' x 33, 'req/s', "req\n", "r\x{e9}q";
    $add->('unit a number', 'unit', plan => { unit => 1 });
    $add->('unit null', 'unit', plan => { unit => undef });

    $without->('metering_period missing', 'metering_period', 'plan',
        'metering_period');
    $add->("metering_period \"$_\"", 'metering_period',
        plan => { metering_period => $_ })
        for '0', '-5', 'week', '', '3600s', 'Month', ' 3600', '1.5', '03600';
    $add->("metering_period $_->[0]", 'metering_period',
        plan => { metering_period => $_->[1] })
        for [ '0', 0 ], [ '-5', -5 ], [ '1.5', 1.5 ], [ 'null', undef ],
            [ 'true', JSON::PP::true ];

    $add->("days_until_due $_->[0]", 'days_until_due',
        plan => { days_until_due => $_->[1] })
        for [ '-1', -1 ], [ '366', 366 ], [ '"30"', '30' ], [ '1.5', 1.5 ],
            [ 'null', undef ];

    for my $c (@cases) {
        my ($name, $body, $field) = @$c;
        my $r = api('POST', 'subscriptions', body => $body);
        is_error($r, 400, 'invalid_request', $name) or next;
        like $r->{json}{error}{message}, qr/\Q$field\E/, "$name: names $field"
            if defined $field;
    }

    is stripe_count(), 0, 'invalid requests: nothing reached Stripe';
    is_deeply all_keys(), [], 'invalid requests: nothing written to Redis';
}


# ---------------------------------------------------------------------
# POST: the first subscription of an org, the whole Stripe sequence

my ($SUB42, $CUS7, $INV42);

{
    my $n = stripe_count();
    my $before = time;

    my $r = post_sub(sub_req(), headers => {
        'Cookie'          => 'session=cookie-secret-123',
        'X-Forwarded-For' => '203.0.113.9',
        'X-Secret'        => 'x-secret-value-456',
        'User-Agent'      => 'marketplace-backend/7.1',
    });
    is $r->{status}, 201, 'created: 201' or diag $r->{content};
    like $r->{headers}{'content-type'} // '', qr{^application/json},
        'created: JSON';

    my $j = $SUB42 = $r->{json} || {};
    is $j->{id}, 'sub-42', 'id';
    is $j->{state}, 'pending', 'state pending';
    is $j->{consumer_org}, 'org-7', 'consumer_org';
    like $j->{customer_id}, qr/^cus_\w+$/, 'customer_id';
    $CUS7 = $j->{customer_id};
    is_deeply $j->{plan}, { base_price => 1500, currency => 'usd',
        days_until_due => 30, metering_period => 'month', unit => 'request',
        unit_price => '0.25' }, 'plan, normalized';
    is $j->{current_period}, undef,
        'no current period: the first starts when it is paid';
    is $j->{portal_url}, $PORTAL, 'portal_url';

    is ref $j->{invoices}, 'ARRAY', 'invoices';
    is scalar @{ $j->{invoices} || [] }, 1, 'one invoice';
    my $inv = $j->{invoice} || {};
    $INV42 = $inv->{id};
    like $INV42, qr/^in_\w+$/, 'invoice id';
    is_deeply $j->{invoices}[0], $inv, 'invoice is the one of invoices';
    is $inv->{kind}, 'initial', 'invoice kind initial';
    is $inv->{status}, 'open', 'invoice open';
    is $inv->{amount_due}, 1500, 'amount_due = base price';
    is $inv->{currency}, 'usd', 'currency';
    is $inv->{period_start}, undef,
        'invoice period_start: none yet (the first period starts when paid)';
    is $inv->{period_end}, undef, 'invoice period_end: none yet';
    is $inv->{units}, 0, 'invoice units';
    is $inv->{hosted_invoice_url}, "https://invoice.stripe.com/i/acct_test/$INV42",
        "hosted_invoice_url: Stripe's";
    is_deeply [ sort keys %$inv ], [ sort qw(id kind status amount_due
        currency period_start period_end units hosted_invoice_url) ],
        'invoice fields';
    is_deeply [ sort keys %$j ], [ sort qw(id state consumer_org customer_id
        plan current_period invoices portal_url invoice) ],
        'subscription fields';

    # what Stripe got
    my $created = $t->redis('HGET', 'billing:sub:sub-42', 'created_at');
    like $created, qr/^\d+$/, 'claimed at: created_at in Redis';
    cmp_ok $t->redis('HGET', 'billing:sub:sub-42', 'version') // 0, '>=', 1,
        'the claim gave the subscription a version (for the gate caches)';
    my $reqs = requests_since($n);
    is_deeply [ map { "$_->{method} $_->{path}" } @$reqs ], [
        'POST /v1/customers', 'POST /v1/invoices', 'POST /v1/invoiceitems',
        "POST /v1/invoices/$INV42/finalize" ], 'Stripe sequence';
    is_deeply [ map { $_->{status} } @$reqs ], [ 200, 200, 200, 200 ],
        'every Stripe call succeeded';

    my ($cus, $invq, $item, $fin) = @$reqs;
    is_deeply $cus->{params}, { email => 'ops@acme.test', name => 'ACME',
        'metadata[consumer_org]' => 'org-7' }, 'customer: parameters';
    is_deeply $invq->{params}, { customer => $CUS7,
        collection_method => 'send_invoice', currency => 'usd',
        days_until_due => 30, pending_invoice_items_behavior => 'exclude',
        'metadata[billing_subscription]' => 'sub-42',
        'metadata[billing_kind]' => 'initial' }, 'invoice: parameters';
    is $item->{params}{customer}, $CUS7, 'item: customer';
    is $item->{params}{invoice}, $INV42, 'item: invoice';
    is $item->{params}{currency}, 'usd', 'item: currency';
    is $item->{params}{amount}, 1500, 'item: amount = base price';
    ok length($item->{params}{description} // ''), 'item: description';
    is_deeply [ sort keys %{ $item->{params} } ],
        [ qw(amount currency customer description invoice) ],
        'item: no other parameter';
    is_deeply $fin->{params}, {}, 'finalize: no parameters';

    my @keys = map { $_->{headers}{'idempotency-key'} } @$reqs;
    is_deeply \@keys, [ 'billing:customer:org-7:'
            . md5_hex("ops\@acme.test\nACME"),
        map { "billing:sub:sub-42:$created:initial:$_" } qw(invoice item finalize) ],
        'Idempotency-Keys';

    for my $q (@$reqs) {
        my $h = $q->{headers};
        my $what = "$q->{method} $q->{path}";
        is $h->{authorization}, "Bearer $KEY", "$what: the Stripe key";
        is $h->{'stripe-version'}, '2022-11-15', "$what: Stripe-Version";
        is $h->{'content-type'}, 'application/x-www-form-urlencoded',
            "$what: Content-Type";
        ok !exists $h->{cookie}, "$what: no Cookie";
        ok !exists $h->{'x-forwarded-for'}, "$what: no X-Forwarded-For";
        ok !exists $h->{'x-secret'}, "$what: no X-Secret";
        isnt $h->{'user-agent'} // '', 'marketplace-backend/7.1',
            "$what: not the client's User-Agent";
        my $all = join "\n", $q->{body} // '', map { "$_: $h->{$_}" } keys %$h;
        ok index($all, $TOKEN) < 0, "$what: the API token does not reach Stripe";
        unlike $all, qr/cookie-secret-123|x-secret-value-456|203\.0\.113\.9|marketplace-backend/,
            "$what: nothing of the client's headers";
    }

    # Stripe's objects
    my $customers = $s->objects('customer');
    is scalar @$customers, 1, 'one customer at Stripe';
    is $customers->[0]{id}, $CUS7, '... the one answered';
    is_deeply $customers->[0]{metadata}, { consumer_org => 'org-7' },
        '... with metadata[consumer_org]';
    my $invoices = $s->objects('invoice');
    is scalar @$invoices, 1, 'one invoice at Stripe';
    is $invoices->[0]{status}, 'open', '... open';
    is $invoices->[0]{amount_due}, 1500, '... 1500';
    is $invoices->[0]{days_until_due}, 30, '... due in 30 days';
    is scalar @{ $s->objects('invoiceitem') }, 1, 'one item at Stripe';

    # Redis
    my $sub = $t->redis_hash('billing:sub:sub-42');
    is $sub->{state}, 'pending', 'Redis: sub state';
    is $sub->{consumer_org}, 'org-7', 'Redis: consumer_org';
    is $sub->{customer_id}, $CUS7, 'Redis: customer_id';
    is $sub->{email}, 'ops@acme.test', 'Redis: email';
    is $sub->{name}, 'ACME', 'Redis: name';
    is_deeply json_decode($sub->{plan} // 'null'), $j->{plan}, 'Redis: plan';
    like $sub->{fingerprint} // '', qr/^[0-9a-f]{64}$/, 'Redis: fingerprint';
    is $sub->{period_start}, undef, 'Redis: no period_start while pending';
    is $sub->{period}, 'month', 'Redis: period';
    is $sub->{initial_invoice}, $INV42, 'Redis: initial_invoice';
    my $ih = $t->redis_hash("billing:invoice:$INV42");
    is $ih->{'item:item'}, $s->objects('invoiceitem')->[0]{id},
        'Redis: the invoice item, on the invoice';
    is $ih->{status}, 'open', 'Redis: invoice open';
    is $ih->{subscription}, 'sub-42', 'Redis: invoice subscription';
    is $ih->{kind}, 'initial', 'Redis: invoice kind';
    is $ih->{amount_due}, 1500, 'Redis: invoice amount_due';
    is $ih->{currency}, 'usd', 'Redis: invoice currency';
    is $ih->{customer}, $CUS7, 'Redis: invoice customer';
    is $t->redis('HGET', 'billing:org:org-7', 'customer_id'), $CUS7,
        'Redis: the org\'s customer';
    is_deeply [ $t->redis('ZRANGE', 'billing:sub:sub-42:invoices', 0, -1) ],
        [ [ $INV42 ] ], 'Redis: the subscription\'s invoices';

    # GET
    my $g = get_sub('sub-42');
    is $g->{status}, 200, 'GET: 200';
    my %expect = %$j;
    delete $expect{invoice};
    is_deeply $g->{json}, \%expect, 'GET: the subscription, without invoice';
}


# ---------------------------------------------------------------------
# the same request again; the same id with other content

{
    my $n = stripe_count();
    my $objects = objects_count();
    my $fingerprint = $t->redis('HGET', 'billing:sub:sub-42', 'fingerprint');

    my $r = post_sub(sub_req());
    is $r->{status}, 200, 'same request again: 200' or diag $r->{content};
    is_deeply $r->{json}, $SUB42, '... the same subscription and invoice';

    # the same request written otherwise
    my $text = '{ "plan": {"days_until_due": 30, "metering_period": "month",'
        . ' "unit": "request", "unit_price": "0.25", "base_price": 1500,'
        . ' "currency": "USD"},' . "\n"
        . '  "customer": {"name": "ACME", "email": "ops@acme.test"},'
        . ' "consumer_org": "org-7", "id": "sub-42" }';
    $r = api('POST', 'subscriptions', body => $text);
    is $r->{status}, 200, 'same request, other order, spacing, "USD": 200'
        or diag $r->{content};
    is $r->{json}{invoice}{id}, $INV42, '... the same invoice';

    is stripe_count(), $n, 'same request: nothing sent to Stripe';
    is objects_count(), $objects, 'same request: no new Stripe object';

    my @other = (
        [ 'other base_price', plan => { base_price => 1600 } ],
        [ 'other unit_price', plan => { unit_price => '0.26' } ],
        [ 'other currency', plan => { currency => 'eur' } ],
        [ 'other period', plan => { metering_period => 'year' } ],
        [ 'other days_until_due', plan => { days_until_due => 14 } ],
        [ 'other unit', plan => { unit => 'call' } ],
        [ 'other email', customer => { email => 'billing@acme.test' } ],
        [ 'other name', customer => { name => 'ACME Corp' } ],
        [ 'other consumer_org', consumer_org => 'org-8' ],
    );
    for my $o (@other) {
        my ($name, %change) = @$o;
        my $c = post_sub(sub_req(%change));
        is_error($c, 409, 'conflict', "same id, $name");
    }
    is stripe_count(), $n, 'conflicts: nothing sent to Stripe';
    is $t->redis('HGET', 'billing:sub:sub-42', 'fingerprint'), $fingerprint,
        'conflicts: the subscription unchanged';
    is_deeply get_sub('sub-42')->{json}{plan}, $SUB42->{plan},
        'conflicts: GET shows the first plan';
}


# ---------------------------------------------------------------------
# customer reuse: the org's second subscription

my $INV43;

{
    my $n = stripe_count();
    my $r = post_sub(sub_req(id => 'sub-43',
        customer => { email => 'team@acme.test', name => 'ACME Team' },
        plan => { base_price => 2500, currency => 'USD', unit_price => '1',
                  metering_period => '3600', days_until_due => 7 }));
    is $r->{status}, 201, 'second subscription of org-7: 201'
        or diag $r->{content};
    my $j = $r->{json} || {};
    is $j->{customer_id}, $CUS7, '... the same customer';
    is $j->{plan}{currency}, 'usd', '... currency stored lowercase';
    is $j->{plan}{metering_period}, '3600', '... metering_period in seconds';
    is $t->redis('HGET', 'billing:sub:sub-43', 'period'), '3600',
        '... its periods are 3600 s';
    $INV43 = $j->{invoice}{id};
    isnt $INV43, $INV42, '... a new invoice';
    is $j->{invoice}{amount_due}, 2500, '... of the base price';

    my $reqs = requests_since($n);
    is_deeply [ map { "$_->{method} $_->{path}" } @$reqs ], [
        'POST /v1/invoices', 'POST /v1/invoiceitems',
        "POST /v1/invoices/$INV43/finalize" ], '... no POST /v1/customers';
    is $reqs->[0]{params}{customer}, $CUS7, '... invoice for the same customer';
    is $reqs->[0]{params}{currency}, 'usd', '... invoice currency lowercase';
    is $reqs->[0]{params}{days_until_due}, 7, '... days_until_due';
    is $reqs->[1]{params}{amount}, 2500, '... item amount';
    is scalar @{ $s->objects('customer') }, 1, '... still one customer at Stripe';
}


# ---------------------------------------------------------------------
# other valid requests: boundaries, integer metering period, a year,
# no name, a zero base price

{
    my @ok = (
        [ 'integer metering_period', 'sub-int', 'org-int',
          plan => { metering_period => 3600 } ],
        [ 'a year', 'sub-year', 'org-year', plan => { metering_period => 'year' } ],
        [ 'boundaries', 'i' x 64, 'o' x 64,
          customer => { name => 'N' x 256 },
          plan => { base_price => 99999999, unit_price => '0.123456789012',
                    days_until_due => 365, unit => 'u' x 32 } ],
        [ 'days_until_due 0, unit with space, no unit_price decimals',
          'sub-zero-days', 'org-zd',
          plan => { days_until_due => 0, unit => 'API call', unit_price => '25' } ],
    );
    for my $c (@ok) {
        my ($name, $id, $org, %change) = @$c;
        my $r = post_sub(sub_req(id => $id, consumer_org => $org, %change));
        is $r->{status}, 201, "$name: 201" or diag $r->{content};
        my $j = $r->{json} || {};
        is $j->{id}, $id, "$name: id";
        if ($name eq 'integer metering_period') {
            is $j->{plan}{metering_period}, '3600', "$name: normalized \"3600\"";
            is $t->redis('HGET', "billing:sub:$id", 'period'), '3600',
                "$name: period of 3600 s";
        }
        if ($name eq 'a year') {
            is $t->redis('HGET', "billing:sub:$id", 'period'), 'year',
                "$name: periods of a calendar year";
        }
        if ($name eq 'boundaries') {
            is $j->{invoice}{amount_due}, 99999999, "$name: amount_due";
            is $j->{plan}{days_until_due}, 365, "$name: days_until_due";
            is $j->{plan}{unit_price}, '0.123456789012', "$name: unit_price";
        }
    }

    # no name: none sent to Stripe
    my $n = stripe_count();
    my $req = sub_req(id => 'sub-noname', consumer_org => 'org-noname');
    delete $req->{customer}{name};
    delete $req->{plan}{unit};
    delete $req->{plan}{days_until_due};
    my $r = post_sub($req);
    is $r->{status}, 201, 'no name, unit, days_until_due: 201' or diag $r->{content};
    is $r->{json}{plan}{unit}, 'unit', '... unit defaults to "unit"';
    is $r->{json}{plan}{days_until_due}, 30, '... days_until_due defaults to 30';
    my $cus = requests_since($n)->[0];
    is_deeply $cus->{params}, { email => 'ops@acme.test',
        'metadata[consumer_org]' => 'org-noname' }, '... customer without name';

    # a zero base price: paid at finalization, active at once
    $r = post_sub(sub_req(id => 'sub-free', consumer_org => 'org-9',
        plan => { base_price => 0 }));
    is $r->{status}, 201, 'zero base price: 201' or diag $r->{content};
    is $r->{json}{state}, 'active', '... active at once';
    is $r->{json}{invoice}{status}, 'paid', '... the invoice paid';
    is $r->{json}{invoice}{amount_due}, 0, '... amount_due 0';
    is $t->redis('HGET', 'billing:sub:sub-free', 'state'), 'active',
        '... active in Redis';
    my $g = get_sub('sub-free');
    is $g->{json}{state}, 'active', '... GET: active';
    is $g->{json}{invoices}[0]{status}, 'paid', '... GET: paid';
    $r = post_sub(sub_req(id => 'sub-free', consumer_org => 'org-9',
        plan => { base_price => 0 }));
    is $r->{status}, 200, '... again: 200';
    is $r->{json}{state}, 'active', '... still active';
}


# ---------------------------------------------------------------------
# what Stripe gets is form-encoded right; bodies in a temporary file,
# chunked, too large

{
    my $name = "Zo\x{eb} & Co. \"Q\" \\ a/b = 100% + ?#";
    my $n = stripe_count();
    my $r = post_sub(sub_req(id => 'sub-enc.1_x', consumer_org => 'org.enc_1-x',
        customer => { email => 'ops+billing@acme.test', name => $name }));
    is $r->{status}, 201, 'special characters: 201' or diag $r->{content};
    my $reqs = requests_since($n);
    is_deeply $reqs->[0]{params}, { email => 'ops+billing@acme.test',
        name => $name, 'metadata[consumer_org]' => 'org.enc_1-x' },
        '... the customer as sent (UTF-8, +, &, =, %, quotes)';
    is $reqs->[1]{params}{'metadata[billing_subscription]'}, 'sub-enc.1_x',
        '... the invoice metadata';
    is $reqs->[0]{headers}{'idempotency-key'},
        'billing:customer:org.enc_1-x:'
        . md5_hex(Encode::encode_utf8("ops+billing\@acme.test\n$name")),
        '... the customer Idempotency-Key';
    my $cus = $s->objects('customer')->[-1];
    is $cus->{name}, $name, '... the name at Stripe';
    my $stored = $t->redis('HGET', 'billing:sub:sub-enc.1_x', 'name');
    utf8::decode($stored);
    is $stored, $name, '... the name in Redis';
    is get_sub('sub-enc.1_x')->{json}{consumer_org}, 'org.enc_1-x', '... GET';

    # padded with spaces beyond client_body_buffer_size 1k: a temp file
    my $body = $JSON->encode(sub_req(id => 'sub-file', consumer_org => 'org-file'));
    $body =~ s/,/,\n@{[ ' ' x 2000 ]}/g;
    cmp_ok length $body, '>', 8192, 'a body of ' . length($body) . ' bytes';
    my $f = $t->http('POST', '/small/subscriptions', body => $body,
        headers => { Authorization => "Bearer $TOKEN",
                     'Content-Type' => 'application/json' });
    push @ANSWERS, $f;
    is $f->{status}, 201, 'body in a temporary file: 201' or diag $f->{content};
    is $f->{json}{invoice}{amount_due}, 1500, '... created';

    my $big = $JSON->encode(sub_req(id => 'sub-big', consumer_org => 'org-big'));
    $big =~ s/,/,@{[ ' ' x 40000 ]}/;
    my $b = $t->http('POST', '/small/subscriptions', body => $big,
        headers => { Authorization => "Bearer $TOKEN",
                     'Content-Type' => 'application/json' });
    push @ANSWERS, $b;
    is $b->{status}, 413, 'body over client_max_body_size: 413';
    is $t->redis('EXISTS', 'billing:sub:sub-big'), 0, '... nothing stored';

    my $chunked = $JSON->encode(sub_req(id => 'sub-chunked', consumer_org => 'org-ch'));
    my $half = int(length($chunked) / 2);
    my $c = $t->raw_http("POST /billing/subscriptions HTTP/1.1\r\nHost: localhost\r\n"
        . "Authorization: Bearer $TOKEN\r\nContent-Type: application/json\r\n"
        . "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        . sprintf("%x\r\n%s\r\n", $half, substr($chunked, 0, $half))
        . sprintf("%x\r\n%s\r\n", length($chunked) - $half, substr($chunked, $half))
        . "0\r\n\r\n");
    push @ANSWERS, $c;
    is $c->{status}, 201, 'chunked body: 201' or diag $c->{raw};
    is $c->{json} && $c->{json}{id}, 'sub-chunked', '... created';
}


# ---------------------------------------------------------------------
# webhooks: paid activates; voided fails

{
    my $url = "https://invoice.stripe.com/i/acct_test/$INV42";
    my $w = $t->webhook(invoice_event(type => 'invoice.paid', invoice_id => $INV42,
        subscription => 'sub-42', kind => 'initial', customer => $CUS7,
        invoice => { amount_due => 1500, currency => 'usd',
                     hosted_invoice_url => $url }));
    push @ANSWERS, $w;
    is $w->{status}, 200, 'invoice.paid webhook: 200' or diag $w->{content};

    my $paid_at = time;
    my $g = get_sub('sub-42');
    is $g->{status}, 200, 'GET after invoice.paid: 200';
    is $g->{json}{state}, 'active', '... state active';
    my $start = $g->{json}{current_period}{start};
    ok $start && abs($start - $paid_at) < 3,
        '... the first period starts at activation';
    is $g->{json}{current_period}{end}, months_later($start, 1),
        '... and ends a calendar month later';
    is $g->{json}{current_period}{units}, 0, '... no units yet';
    is $g->{json}{invoices}[0]{status}, 'paid', '... invoice paid';
    is $g->{json}{invoices}[0]{id}, $INV42, '... the same invoice';
    is $g->{json}{invoices}[0]{amount_due}, 1500, '... amount_due';
    is $g->{json}{invoices}[0]{hosted_invoice_url}, $url, '... hosted url';

    # the creation again after payment: 200, the paid state
    my $r = post_sub(sub_req());
    is $r->{status}, 200, 'same POST after payment: 200';
    is $r->{json}{state}, 'active', '... active';
    is $r->{json}{invoice}{status}, 'paid', '... invoice paid';

    $w = $t->webhook(invoice_event(type => 'invoice.voided', invoice_id => $INV43,
        subscription => 'sub-43', kind => 'initial', customer => $CUS7,
        invoice => { amount_due => 2500, currency => 'usd' }));
    push @ANSWERS, $w;
    is $w->{status}, 200, 'invoice.voided webhook: 200' or diag $w->{content};
    $g = get_sub('sub-43');
    is $g->{json}{state}, 'payment_failed', 'GET after invoice.voided: payment_failed';
    is $g->{json}{invoices}[0]{status}, 'void', '... invoice void';
}


# ---------------------------------------------------------------------
# Redis down: 503 for POST and GET, nothing sent to Stripe

{
    $t->stop_redis;
    my $n = stripe_count();

    my $r = post_sub(sub_req(id => 'sub-down', consumer_org => 'org-down'));
    is_error($r, 503, 'billing_unavailable', 'POST with Redis down');
    cmp_ok $r->{elapsed}, '<', 3, '... answered within 3 s';
    $r = get_sub('sub-42');
    is_error($r, 503, 'billing_unavailable', 'GET with Redis down');
    $r = post_sub(sub_req());
    is_error($r, 503, 'billing_unavailable', 'the same POST again with Redis down');
    is stripe_count(), $n, 'Redis down: nothing sent to Stripe';

    # authentication and validation need no Redis
    is_error(api('GET', 'subscriptions/sub-42', auth => undef), 401,
        'unauthorized', 'Redis down: still 401 without token');
    is_error(api('POST', 'subscriptions', body => '{'), 400,
        'invalid_request', 'Redis down: still 400 for invalid JSON');
}


# ---------------------------------------------------------------------
# secrets: never in error.log (debug level) nor in an answer; the API
# token only in nginx core's own "http header:" debug lines

{
    $t->stop_nginx;
    my $log = $t->error_log;
    like $log, qr/\[debug\]/, 'error.log is at debug level';

    my $answers = answers_text(@ANSWERS);

    for my $secret ([ 'Stripe key', $KEY ], [ 'Stripe key without prefix', substr($KEY, 8) ],
                    [ 'webhook secret', $SECRET ],
                    [ 'webhook secret without prefix', substr($SECRET, 6) ],
                    [ 'Redis password', $PASSWORD ])
    {
        my ($name, $value) = @$secret;
        ok index($log, $value) < 0, "$name not in error.log";
        ok index($answers, $value) < 0, "$name not in any answer";
        ok index($s->log_text, $value) < 0, "$name not in the stand-in's log"
            if $name =~ /webhook|Redis/;
    }
    ok index($answers, $TOKEN) < 0, 'API token not in any answer';

    my @token_lines = grep { index($_, $TOKEN) >= 0 } split /\n/, $log;
    ok @token_lines > 0, 'the API token is in nginx core\'s header debug lines';
    # (the wrong tokens sent above contain it too, in their own headers)
    my @other = grep {
        !m{^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d \[debug\] \d+#\d+: \*\d+ http header: "(?:X-)?Authorization: [^"]*"$}
    } @token_lines;
    ok scalar(grep { /http header: "Authorization: Bearer \Q$TOKEN\E"$/ } @token_lines),
        'the right token is among them';
    ok !@other, 'the API token is in no other error.log line'
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
