# billing_webhook: method, size, Stripe-Signature, tolerance, event
# parsing, invoice status transitions, first-invoice subscription
# effects, bodies in temporary files and chunked, secret rotation.

use strict;
use warnings;

use Test::More;
use BillingTest qw(:all);
use Time::HiRes qw(time);

my $t = BillingTest->new;

my $SECRET  = 'whsec_' . join '', map { ('a'..'z', 'A'..'Z', 0..9)[rand 62] } 1 .. 32;
my $SECRET2 = 'whsec_' . join '', map { ('a'..'z', 'A'..'Z', 0..9)[rand 62] } 1 .. 32;
my $WRONG   = 'whsec_' . join '', map { ('a'..'z', 'A'..'Z', 0..9)[rand 62] } 1 .. 32;

# rotation: the current secret and the next one, with the comments and
# blank lines the file format allows
$t->write_file('whsec', "# Stripe webhook signing secrets\n$SECRET\n\n"
    . "# rolled 2024-07-25\n$SECRET2\n");
$t->secrets($SECRET);

$t->start_redis;
$t->start_nginx(<<'EOF');
    billing_redis 127.0.0.1:%%REDIS_PORT%% timeout=1s;
    billing_stripe_webhook_secret_file %%DIR%%/whsec;
    billing_webhook_tolerance 300s;

    server {
        listen 127.0.0.1:%%PORT%%;

        location = /stripe/webhook {
            billing_webhook;
            client_max_body_size 64k;
        }

        location = /stripe/webhook-small-buffer {
            billing_webhook;
            client_max_body_size 64k;
            client_body_buffer_size 1k;
        }

        location = /other {
            return 200 "ok\n";
        }
    }
EOF

sub rid {
    my ($prefix) = @_;
    return $prefix . join '', map { ('A'..'Z', 'a'..'z', 0..9)[rand 62] } 1 .. 20;
}

sub inv_key { "billing:invoice:$_[0]" }

sub is_error {
    my ($r, $status, $code, $name) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    my $ok = is($r->{status}, $status, "$name: status $status");
    $ok &= is(ref $r->{json} eq 'HASH' && ref $r->{json}{error} eq 'HASH'
        ? $r->{json}{error}{code} : undef, $code, "$name: code $code");
    diag("answer: " . ($r->{content} // '')) unless $ok;
    return $ok;
}

sub is_received {
    my ($r, $name) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    is($r->{status}, 200, "$name: 200")
        or diag("answer: " . ($r->{content} // ''));
    is_deeply($r->{json}, { received => JSON::PP::true }, "$name: {received:true}");
}

# all keys Redis holds, sorted
sub all_keys { [ sort @{ $t->redis('KEYS', '*') || [] } ] }


# ---------------------------------------------------------------------
# methods and sizes

is $t->http('GET', '/other')->{status}, 200, 'plain location works';

for my $m (qw(GET PUT DELETE PATCH)) {
    my $r = $t->http($m, '/stripe/webhook');
    is_error($r, 405, 'method_not_allowed', $m);
    is $r->{headers}{allow}, 'POST', "$m: Allow: POST";
    like $r->{headers}{'content-type'} // '', qr{^application/json},
        "$m: JSON content type";
    ok defined $r->{json}{error}{message} && length $r->{json}{error}{message},
        "$m: error has a message";
}

{
    my $r = $t->http('HEAD', '/stripe/webhook');
    is $r->{status}, 405, 'HEAD: 405';
}

{
    # a signed event padded beyond client_max_body_size 64k
    my $body = invoice_event(type => 'invoice.paid', invoice_id => rid('in_'),
        invoice => { description => 'x' x (70 * 1024) });
    my $r = $t->webhook($body);
    is $r->{status}, 413, 'body over client_max_body_size: 413';
}


# ---------------------------------------------------------------------
# Stripe-Signature

my $inv_sig = rid('in_');
my $body = invoice_event(type => 'invoice.paid', invoice_id => $inv_sig,
    id => rid('evt_'));
my $now = int time;
my $good = stripe_sign($SECRET, $now, $body);

my @bad_signatures = (
    [ 'missing header',        undef ],
    [ 'empty header',          '' ],
    [ 'garbage',               'garbage' ],
    [ 'only commas',           ',,,' ],
    [ 'no t',                  "v1=$good" ],
    [ 'non-numeric t',         "t=abc,v1=" . stripe_sign($SECRET, 'abc', $body) ],
    [ 't with trailing junk',  "t=${now}x,v1=" . stripe_sign($SECRET, "${now}x", $body) ],
    [ 'empty t',               "t=,v1=" . stripe_sign($SECRET, '', $body) ],
    [ 'empty v1',              "t=$now,v1=" ],
    [ 'no v1',                 "t=$now" ],
    [ 'v1 upper case hex',     "t=$now,v1=" . uc $good ],
    [ 'v1 63 hex digits',      "t=$now,v1=" . substr($good, 0, 63) ],
    [ 'v1 65 hex digits',      "t=$now,v1=${good}0" ],
    [ 'v1 not hex',            "t=$now,v1=" . ('z' x 64) ],
    [ 'only v0',               "t=$now,v0=$good" ],
    [ 'v1 of another t',       "t=$now,v1=" . stripe_sign($SECRET, $now - 1, $body) ],
    [ 'v1 of another body',    "t=$now,v1=" . stripe_sign($SECRET, $now, "$body ") ],
    [ 'wrong secret',          "t=$now,v1=" . stripe_sign($WRONG, $now, $body) ],
    [ 'secret without whsec_', "t=$now,v1=" . stripe_sign(substr($SECRET, 6), $now, $body) ],
    [ 'longer than 4096',      "t=$now,v1=$good,v0=" . ('a' x 4100) ],
    [ 'sent twice',            [ "t=$now,v1=$good", "t=$now,v1=$good" ] ],
);

for my $case (@bad_signatures) {
    my ($name, $sig) = @$case;
    my $r = $t->webhook($body, signature => $sig);
    is_error($r, 400, 'invalid_signature', "signature $name");
}

{
    # the body nginx got is not the one signed
    my $tampered = $body =~ s/"amount_due":1000/"amount_due":1/r;
    isnt $tampered, $body, 'tampered body differs';
    my $r = $t->webhook($tampered, signature => "t=$now,v1=$good");
    is_error($r, 400, 'invalid_signature', 'tampered body');
}

is_deeply all_keys(), [], 'rejected signatures leave Redis untouched';

# tolerance: 300 s both ways
for my $case ([ 'past', -400 ], [ 'future', 400 ], [ 'far past', -86400 * 365 ],
              [ 'epoch', undef ])
{
    my ($name, $delta) = @$case;
    my $ts = defined $delta ? int(time) + $delta : 1;
    my $r = $t->webhook($body, t => $ts);
    is_error($r, 400, 'timestamp_out_of_tolerance', "timestamp $name");
}
is_deeply all_keys(), [], 'events out of tolerance leave Redis untouched';

{
    my $r = $t->webhook($body, t => int(time) - 250);
    is_received($r, 'timestamp 250 s old, inside tolerance');
    is $t->redis('HGET', inv_key($inv_sig), 'status'), 'paid',
        'event within tolerance recorded';
}

# unknown schemes and v0 are ignored; any matching v1 passes
{
    my @ok = (
        [ 'v1 plus v0 and unknown scheme', sub {
            my ($b, $ts) = @_;
            "t=$ts,v1=" . stripe_sign($SECRET, $ts, $b) . ",v0=" . ('0' x 64)
                . ",v2=deadbeef,foo=bar" } ],
        [ 'v0 before v1', sub {
            my ($b, $ts) = @_;
            "t=$ts,v0=" . ('1' x 64) . ",v1=" . stripe_sign($SECRET, $ts, $b) } ],
        [ 'a wrong v1 then the right one', sub {
            my ($b, $ts) = @_;
            "t=$ts,v1=" . stripe_sign($WRONG, $ts, $b) . ",v1="
                . stripe_sign($SECRET, $ts, $b) } ],
        [ 'rotation: both secrets', sub {
            my ($b, $ts) = @_;
            stripe_signature_header(secrets => [ $SECRET, $SECRET2 ], t => $ts,
                body => $b) } ],
        [ 'rotation: second secret only', sub {
            my ($b, $ts) = @_;
            stripe_signature_header(secrets => [ $SECRET2 ], t => $ts, body => $b) } ],
        [ 'rotation: first secret only', sub {
            my ($b, $ts) = @_;
            stripe_signature_header(secrets => [ $SECRET ], t => $ts, body => $b) } ],
    );
    for my $case (@ok) {
        my ($name, $make) = @$case;
        my $inv = rid('in_');
        my $b = invoice_event(type => 'invoice.finalized', invoice_id => $inv);
        my $ts = int time;
        my $r = $t->webhook($b, signature => $make->($b, $ts));
        is_received($r, $name);
        is $t->redis('HGET', inv_key($inv), 'status'), 'open', "$name: recorded";
    }

    my $inv = rid('in_');
    my $b = invoice_event(type => 'invoice.finalized', invoice_id => $inv);
    my $r = $t->webhook($b, secrets => [ $WRONG ]);
    is_error($r, 400, 'invalid_signature', 'rotation: a third secret');
    is $t->redis('EXISTS', inv_key($inv)), 0, 'rotation: wrong secret not recorded';
}


# ---------------------------------------------------------------------
# events that are not Stripe events

{
    my $good_invoice = invoice_object(type => 'invoice.paid', invoice_id => rid('in_'));
    my %ev = (id => rid('evt_'), object => 'event', type => 'invoice.paid',
        created => int time, api_version => '2022-11-15',
        data => { object => $good_invoice });
    my $without = sub { my %e = %ev; delete $e{$_} for @_; json_encode(\%e) };
    my $with = sub { json_encode({ %ev, @_ }) };
    my $customer = stripe_fixture('customer') || { id => 'cus_QXg1o8vcGmoR32',
        object => 'customer' };

    my @malformed = (
        [ 'empty body',            '' ],
        [ 'not JSON',              'id=evt_1&type=invoice.paid' ],
        [ 'truncated JSON',        substr(json_encode(\%ev), 0, 40) ],
        [ 'JSON then garbage',     json_encode(\%ev) . ' trailing' ],
        [ 'JSON array',            '[' . json_encode(\%ev) . ']' ],
        [ 'JSON string',           '"evt_1"' ],
        [ 'empty object',          '{}' ],
        [ 'no id',                 $without->('id') ],
        [ 'no type',               $without->('type') ],
        [ 'no created',            $without->('created') ],
        [ 'no data',               $without->('data') ],
        [ 'no data.object',        $with->(data => {}) ],
        [ 'data.object null',      $with->(data => { object => undef }) ],
        [ 'id not a string',       $with->(id => 42) ],
        [ 'type not a string',     $with->(type => [ 'invoice.paid' ]) ],
        [ 'created not a number',  $with->(created => 'yesterday') ],
        [ 'invoice without id',    $with->(data => { object => { %$good_invoice,
                                       id => undef } }) ],
        [ 'invoice event of a customer',
                                   $with->(data => { object => $customer }) ],
        [ 'invoice id not a string',
                                   $with->(data => { object => { %$good_invoice,
                                       id => 12345 } }) ],
    );

    for my $case (@malformed) {
        my ($name, $b) = @$case;
        my $r = $t->webhook($b);
        is_error($r, 400, 'malformed_event', "malformed: $name");
    }
    is $t->redis('EXISTS', inv_key($good_invoice->{id})), 0,
        'malformed events not recorded';
}


# ---------------------------------------------------------------------
# the webhook's reader of the common case leaves an escape in a value it
# reads to jansson: the same values as written plainly, the same answer

{
    my $inv = rid('in_');
    my $b = invoice_event(type => 'invoice.finalized', invoice_id => $inv,
        subscription => 'sub-43', kind => 'initial',
        invoice => { amount_due => 700, currency => 'usd' });
    my $escaped = join '', map { sprintf '\\u%04x', ord } split //, $inv;
    (my $esc = $b) =~ s/"\Q$inv\E"/"$escaped"/g;
    $esc =~ s/"sub-43"/"sub\\u002d43"/;
    isnt $esc, $b, 'escaped: the event written with escapes';

    my $r = $t->webhook($esc);
    is_received($r, 'escaped values');
    my $h = $t->redis_hash(inv_key($inv));
    is $h->{status}, 'open', 'escaped: recorded under the invoice id';
    is $h->{subscription}, 'sub-43', 'escaped: the subscription, decoded';
    is $h->{amount_due}, 700, 'escaped: amount_due';

    # and an escape the reader checks without reading: a UTF-16 pair
    my $inv2 = rid('in_');
    my $b2 = invoice_event(type => 'invoice.finalized', invoice_id => $inv2,
        subscription => 'sub-44', kind => 'initial');
    $b2 =~ s/^\{/{"description":"caf\\u00e9 \\ud83d\\ude00",/;
    is_received($t->webhook($b2), 'an escaped pair in a value not read');
    is $t->redis('HGET', inv_key($inv2), 'subscription'), 'sub-44',
        'an escaped pair: recorded';
    is_error($t->webhook($b2 =~ s/\\ude00/\\u0041/r), 400, 'malformed_event',
        'a broken pair where nothing is read: jansson says no');
}


# ---------------------------------------------------------------------
# other event types are acknowledged and ignored

{
    my $before = all_keys();
    my $customer = stripe_fixture('customer') || { id => 'cus_QXg1o8vcGmoR32',
        object => 'customer' };
    my $inv = rid('in_');
    my @others = (
        [ 'customer.created', stripe_event(type => 'customer.created',
            object => $customer) ],
        [ 'invoice.created', invoice_event(type => 'invoice.created',
            invoice_id => $inv, subscription => 'sub-ignored', kind => 'initial') ],
        [ 'invoice.payment_failed', invoice_event(type => 'invoice.payment_failed',
            invoice_id => $inv, subscription => 'sub-ignored', kind => 'initial') ],
        [ 'invoice.updated', invoice_event(type => 'invoice.updated',
            invoice_id => $inv, invoice => { status => 'paid' }) ],
        [ 'plan.created', stripe_event(type => 'plan.created',
            object => stripe_fixture('plan') || { id => 'price_1', object => 'plan' }) ],
    );
    $t->redis('HSET', 'billing:sub:sub-ignored', 'state', 'pending',
        'initial_invoice', $inv);
    $before = all_keys();
    for my $case (@others) {
        my ($name, $b) = @$case;
        my $r = $t->webhook($b);
        is $r->{status}, 200, "$name: 200";
        is_deeply $r->{json}, { received => JSON::PP::true, ignored => JSON::PP::true },
            "$name: {received:true, ignored:true}";
    }
    is_deeply all_keys(), $before, 'ignored events add no key';
    is $t->redis('HGET', 'billing:sub:sub-ignored', 'state'), 'pending',
        'ignored events leave the subscription alone';
}


# ---------------------------------------------------------------------
# recording an invoice

{
    my $inv = rid('in_');
    my $evt = rid('evt_');
    my $created = int(time) - 7;
    my $b = invoice_event(type => 'invoice.finalized', id => $evt,
        created => $created, invoice_id => $inv, subscription => 'sub-42',
        kind => 'initial', customer => 'cus_QXg1o8vcGmoR32',
        invoice => { amount_due => 1500, currency => 'eur' });
    my $r = $t->webhook($b);
    is_received($r, 'invoice.finalized');
    like $r->{headers}{'content-type'} // '', qr{^application/json},
        'answer is JSON';

    my $h = $t->redis_hash(inv_key($inv));
    is $h->{status}, 'open', 'finalized: status open';
    is $h->{subscription}, 'sub-42', 'subscription from metadata';
    is $h->{kind}, 'initial', 'kind from metadata';
    is $h->{customer}, 'cus_QXg1o8vcGmoR32', 'customer';
    is $h->{hosted_invoice_url}, json_decode($b)->{data}{object}{hosted_invoice_url},
        'hosted_invoice_url';
    like $h->{hosted_invoice_url} // '', qr{^https://invoice\.stripe\.com/},
        'hosted_invoice_url looks like Stripe\'s';
    is $h->{amount_due}, 1500, 'amount_due';
    is $h->{currency}, 'eur', 'currency';
    is $h->{event}, $evt, 'event id';
    is $h->{event_created}, $created, 'event_created';

    # the very same delivery again
    $r = $t->webhook($b);
    is_received($r, 'duplicate delivery');
    is_deeply $t->redis_hash(inv_key($inv)), $h, 'duplicate changes nothing';

    my $evt2 = rid('evt_');
    $r = $t->webhook(invoice_event(type => 'invoice.paid', id => $evt2,
        invoice_id => $inv, subscription => 'sub-42', kind => 'initial',
        customer => 'cus_QXg1o8vcGmoR32',
        invoice => { amount_due => 1500, currency => 'eur' }));
    is_received($r, 'invoice.paid after finalized');
    $h = $t->redis_hash(inv_key($inv));
    is $h->{status}, 'paid', 'open -> paid';
    is $h->{event}, $evt2, 'event is the last applied one';
}

{
    # an invoice that is none of ours (no metadata) is still recorded
    my $inv = rid('in_');
    my $r = $t->webhook(invoice_event(type => 'invoice.paid', invoice_id => $inv));
    is_received($r, 'invoice without our metadata');
    is $t->redis('HGET', inv_key($inv), 'status'), 'paid',
        'invoice without metadata recorded';
}


# ---------------------------------------------------------------------
# transitions: no status goes back

my %TYPE = (open => 'invoice.finalized', paid => 'invoice.paid',
    void => 'invoice.voided', uncollectible => 'invoice.marked_uncollectible');

my %ALLOWED = (
    open          => { paid => 1, void => 1, uncollectible => 1 },
    paid          => {},
    void          => {},
    uncollectible => { paid => 1, void => 1 },
);

for my $from (qw(open paid void uncollectible)) {
    for my $to (qw(open paid void uncollectible)) {
        my $inv = rid('in_');
        my ($e1, $e2) = (rid('evt_'), rid('evt_'));
        my $r1 = $t->webhook(invoice_event(type => $TYPE{$from}, id => $e1,
            invoice_id => $inv, created => int(time) - 60));
        my $r2 = $t->webhook(invoice_event(type => $TYPE{$to}, id => $e2,
            invoice_id => $inv, created => int(time) - 30));
        my $expect = $ALLOWED{$from}{$to} ? $to : $from;
        my $name = "$TYPE{$from} then $TYPE{$to}";
        ok $r1->{status} == 200 && $r2->{status} == 200, "$name: both 200"
            or diag "$r1->{status} $r1->{content} / $r2->{status} $r2->{content}";
        my $h = $t->redis_hash(inv_key($inv));
        is $h->{status}, $expect, "$name: status $expect";
        is $h->{event}, $ALLOWED{$from}{$to} ? $e2 : $e1,
            "$name: event of the applied change";
    }
}

{
    # Stripe delivers out of order: paid arrives before finalized, with
    # the older created time
    my $inv = rid('in_');
    my $r = $t->webhook(invoice_event(type => 'invoice.paid', invoice_id => $inv,
        created => int(time) - 5));
    is_received($r, 'paid first');
    $r = $t->webhook(invoice_event(type => 'invoice.finalized', invoice_id => $inv,
        created => int(time) - 10));
    is_received($r, 'late finalized');
    is $t->redis('HGET', inv_key($inv), 'status'), 'paid', 'late finalized: stays paid';
}


# ---------------------------------------------------------------------
# subscriptions: the first invoice decides

my $subscriber = $t->redis_client;
$subscriber->cmd('SUBSCRIBE', 'billing:events');

sub sub_case {
    my (%o) = @_;
    my $sub = $o{sub} // rid('sub-');
    my $inv = $o{invoice} // rid('in_');
    if (defined $o{state}) {
        $t->redis('HSET', "billing:sub:$sub", 'state', $o{state},
            'consumer_org', 'org-7',
            exists $o{initial} ? (defined $o{initial}
                ? ('initial_invoice', $o{initial}) : ())
                : ('initial_invoice', $inv));
    }
    for my $type (@{ $o{events} }) {
        my $r = $t->webhook(invoice_event(type => $type, invoice_id => $inv,
            subscription => $sub, kind => $o{kind} // 'initial'));
        is_received($r, "$o{name}: $type");
    }
    return ($sub, $inv);
}

sub sub_state { $t->redis('HGET', "billing:sub:$_[0]", 'state') }

# drains announcements ("VERSION ID"), returns the version of the first
# for $sub within $timeout, 0 when none came
sub announced {
    my ($sub, $timeout) = @_;
    my $deadline = time + $timeout;
    while (my $m = $subscriber->next_message($deadline - time)) {
        return $1 if $m->[0] eq 'billing:events'
            && $m->[1] =~ /^([1-9][0-9]*) \Q$sub\E$/;
        last if time >= $deadline;
    }
    return 0;
}

{
    my ($sub) = sub_case(name => 'pending paid', state => 'pending',
        events => [ 'invoice.finalized', 'invoice.paid' ]);
    is sub_state($sub), 'active', 'first invoice paid: pending -> active';
    ok announced($sub, 3), 'activation published on billing:events';
}

{
    my ($sub) = sub_case(name => 'pending voided', state => 'pending',
        events => [ 'invoice.finalized', 'invoice.voided' ]);
    is sub_state($sub), 'payment_failed', 'first invoice voided: pending -> payment_failed';
    ok announced($sub, 3), 'payment_failed published';
}

{
    my ($sub) = sub_case(name => 'pending uncollectible', state => 'pending',
        events => [ 'invoice.marked_uncollectible' ]);
    is sub_state($sub), 'payment_failed',
        'first invoice uncollectible: pending -> payment_failed';
}

{
    my ($sub) = sub_case(name => 'uncollectible then paid', state => 'pending',
        events => [ 'invoice.marked_uncollectible', 'invoice.paid' ]);
    is sub_state($sub), 'active', 'payment_failed -> active when finally paid';
    ok announced($sub, 3), 'reactivation published';
}

# every change the gate sees increments the version it is published with;
# what changes nothing (a repeat, a stale event, a period invoice)
# publishes nothing
{
    my $sub = rid('sub-');
    my $inv = rid('in_');
    $t->redis('HSET', "billing:sub:$sub", 'state', 'pending',
        'consumer_org', 'org-7', 'initial_invoice', $inv);
    my $send = sub {
        my ($type, %o) = @_;
        my $r = $t->webhook(invoice_event(type => $type, invoice_id => $inv,
            subscription => $sub, kind => 'initial', %o));
        is_received($r, "versions: $type");
    };

    $send->('invoice.finalized');
    my $v1 = announced($sub, 3);
    ok $v1, "versions: finalized published with version $v1";
    $send->('invoice.finalized');
    is announced($sub, 0.5), 0, 'versions: a repeated finalized publishes nothing';
    $send->('invoice.paid');
    my $v2 = announced($sub, 3);
    cmp_ok $v2, '>', $v1, "versions: paid published with a newer version ($v2)";
    is $t->redis('HGET', "billing:sub:$sub", 'version'), $v2,
        'versions: the subscription holds the version published';
    $send->('invoice.paid');
    is announced($sub, 0.5), 0, 'versions: a repeated paid publishes nothing';
    $send->('invoice.finalized', created => int(time) - 60);
    is announced($sub, 0.5), 0, 'versions: a stale finalized publishes nothing';
    is $t->redis('HGET', "billing:sub:$sub", 'version'), $v2,
        'versions: nothing published, nothing incremented';

    # a period invoice of the same subscription: not what the gate sees
    my $pinv = rid('in_');
    my $r = $t->webhook(invoice_event(type => 'invoice.finalized',
        invoice_id => $pinv, subscription => $sub, kind => 'period'));
    is_received($r, 'versions: period invoice finalized');
    is announced($sub, 0.5), 0, 'versions: a period invoice publishes nothing';
    is $t->redis('HGET', inv_key($pinv), 'status'), 'open',
        'versions: the period invoice is recorded all the same';
}

{
    my ($sub) = sub_case(name => 'pending finalized', state => 'pending',
        events => [ 'invoice.finalized' ]);
    is sub_state($sub), 'pending', 'first invoice finalized: stays pending';
}

{
    my ($sub) = sub_case(name => 'cancelled paid', state => 'cancelled',
        events => [ 'invoice.paid' ]);
    is sub_state($sub), 'cancelled', 'cancelled never changes (paid)';
    ($sub) = sub_case(name => 'cancelled voided', state => 'cancelled',
        events => [ 'invoice.voided' ]);
    is sub_state($sub), 'cancelled', 'cancelled never changes (voided)';
}

{
    my ($sub) = sub_case(name => 'active voided', state => 'active',
        events => [ 'invoice.voided' ]);
    is sub_state($sub), 'active', 'active does not become payment_failed';
    ($sub) = sub_case(name => 'active uncollectible', state => 'active',
        events => [ 'invoice.marked_uncollectible' ]);
    is sub_state($sub), 'active', 'active does not become payment_failed (uncollectible)';
}

{
    # a later invoice of a pending subscription decides nothing
    my $first = rid('in_');
    my ($sub, $inv) = sub_case(name => 'other invoice paid', state => 'pending',
        initial => $first, kind => 'period', events => [ 'invoice.paid' ]);
    is sub_state($sub), 'pending', 'paying another invoice: stays pending';
    is $t->redis('HGET', inv_key($inv), 'status'), 'paid', 'that invoice is recorded';

    ($sub) = sub_case(name => 'other invoice voided', state => 'pending',
        initial => $first, kind => 'period', events => [ 'invoice.voided' ]);
    is sub_state($sub), 'pending', 'voiding another invoice: stays pending';

    # metadata says initial, but the subscription names another invoice
    ($sub) = sub_case(name => 'initial kind, not the initial invoice',
        state => 'pending', initial => $first, kind => 'initial',
        events => [ 'invoice.paid' ]);
    is sub_state($sub), 'pending', 'initial_invoice field wins over metadata';
}

{
    # no initial_invoice field: metadata billing_kind decides
    my ($sub) = sub_case(name => 'no initial_invoice, kind initial',
        state => 'pending', initial => undef, kind => 'initial',
        events => [ 'invoice.paid' ]);
    is sub_state($sub), 'active', 'no initial_invoice, kind=initial: active';

    ($sub) = sub_case(name => 'no initial_invoice, kind period',
        state => 'pending', initial => undef, kind => 'period',
        events => [ 'invoice.paid' ]);
    is sub_state($sub), 'pending', 'no initial_invoice, kind=period: stays pending';
}

{
    my $sub = rid('sub-ghost-');
    my (undef, $inv) = sub_case(name => 'unknown subscription', sub => $sub,
        events => [ 'invoice.paid' ]);
    is $t->redis('EXISTS', "billing:sub:$sub"), 0,
        'the webhook never creates a subscription';
    is $t->redis('HGET', inv_key($inv), 'status'), 'paid',
        'the invoice of an unknown subscription is recorded';
}

{
    # a paid first invoice, then a late voided for it: stays active
    my ($sub, $inv) = sub_case(name => 'paid then voided', state => 'pending',
        events => [ 'invoice.paid', 'invoice.voided' ]);
    is sub_state($sub), 'active', 'late voided after paid: stays active';
    is $t->redis('HGET', inv_key($inv), 'status'), 'paid', 'invoice stays paid';
}

$subscriber->close;


# ---------------------------------------------------------------------
# bodies in a temporary file, chunked bodies

{
    my $inv = rid('in_');
    my $b = invoice_event(type => 'invoice.paid', invoice_id => $inv,
        invoice => { description => 'Consumption: ' . ('request ' x 2500) });
    cmp_ok length $b, '>', 20000, 'event of more than 20 KB';
    my $r = $t->webhook($b, path => '/stripe/webhook-small-buffer');
    is_received($r, 'body in a temporary file');
    is $t->redis('HGET', inv_key($inv), 'status'), 'paid',
        'event from a temporary file recorded';
    $t->error_log_like(qr/a client request body is buffered to a temporary file/,
        'nginx did buffer it to a file');

    my $inv2 = rid('in_');
    my $b2 = $b =~ s/\Q$inv\E/$inv2/gr;
    my $sig = stripe_signature_header(secrets => [ $SECRET ], body => $b);
    $r = $t->webhook($b2, path => '/stripe/webhook-small-buffer', signature => $sig);
    is_error($r, 400, 'invalid_signature', 'tampered body in a temporary file');
    is $t->redis('EXISTS', inv_key($inv2)), 0, 'tampered file body not recorded';
}

{
    my $inv = rid('in_');
    my $b = invoice_event(type => 'invoice.paid', invoice_id => $inv);
    my $sig = stripe_signature_header(secrets => [ $SECRET ], body => $b);
    my $chunked = '';
    for (my $i = 0; $i < length $b; $i += 700) {
        my $c = substr($b, $i, 700);
        $chunked .= sprintf("%x\r\n%s\r\n", length $c, $c);
    }
    $chunked .= "0\r\n\r\n";
    my $r = $t->raw_http("POST /stripe/webhook HTTP/1.1\r\nHost: localhost\r\n"
        . "Stripe-Signature: $sig\r\nContent-Type: application/json\r\n"
        . "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n$chunked");
    is $r->{status}, 200, 'chunked body: 200' or diag $r->{raw};
    is $t->redis('HGET', inv_key($inv), 'status'), 'paid', 'chunked body recorded';
}


# ---------------------------------------------------------------------
# a recording that failed half-way (the invoice's status written, the
# subscription not moved: Redis undoes nothing of a script that fails):
# Stripe's retry of the same event finishes it, and only a retry of an
# event recorded to the end is answered without a second look

{
    my $sub = 'sub-half';
    my $inv = random_id('in_', 20);
    my $evid = random_id('evt_', 20);
    $t->redis('HSET', "billing:sub:$sub", 'id', $sub, 'state', 'pending',
              'initial_invoice', $inv, 'version', 1);
    $t->redis('HSET', "billing:invoice:$inv", 'status', 'paid',
              'event', $evid, 'subscription', $sub, 'kind', 'initial');
    my $ev = invoice_event(id => $evid, type => 'invoice.paid',
        invoice_id => $inv, subscription => $sub, kind => 'initial');
    my $r = $t->webhook($ev);
    is $r->{status}, 200, 'half-recorded event sent again: 200'
        or diag $r->{content};
    is $t->redis('HGET', "billing:sub:$sub", 'state'), 'active',
        '... the subscription moved this time';
    is $t->redis('HGET', "billing:invoice:$inv", 'recorded_event'), $evid,
        '... and the event is recorded to the end';
    my $v = $t->redis('HGET', "billing:sub:$sub", 'version');
    is $t->webhook($ev)->{status}, 200, 'the same event once more: 200';
    is $t->redis('HGET', "billing:sub:$sub", 'version'), $v,
        '... changing nothing';
}

# ---------------------------------------------------------------------
# the secrets are in no log and no answer

$t->stop_nginx;
for my $file (qw(error.log nginx.stderr access.log)) {
    my $log = $t->read_file($file) // '';
    for my $s ([ 'first secret', $SECRET ], [ 'second secret', $SECRET2 ]) {
        ok index($log, $s->[1]) < 0, "$s->[0] not in $file";
        ok index($log, substr($s->[1], 6)) < 0,
            "$s->[0] without its whsec_ not in $file";
    }
}

$t->done;
done_testing;
