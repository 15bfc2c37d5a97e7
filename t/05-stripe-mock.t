# The Stripe stand-in itself (t/lib/stripe-mock through StripeMock.pm):
# authentication and headers, the customer → invoice → items → finalize
# (→ void) sequence, unit prices, rounding, periods, metadata,
# parameter checks, idempotency, failure rules, the HTTP it
# speaks, request recording, reset, and that it never outlives its
# parent.

use strict;
use warnings;
use utf8;

use HTTP::Tiny;
use IO::Select;
use IO::Socket::INET;
use JSON::PP;
use POSIX qw(WNOHANG);
use Test::More;
use Time::HiRes qw(time sleep);

use StripeMock;

my $VERSION = '2022-11-15';
my $KEY = 'sk_test_' . join('', map { ('a' .. 'z', 0 .. 9)[rand 36] } 1 .. 20) . '4242';

my $s = StripeMock->start(key => $KEY, api_version => $VERSION);
my $HTTP = HTTP::Tiny->new(timeout => 5);


# ---------------------------------------------------------------------
# helpers

sub uri_escape {
    my ($text) = @_;
    utf8::encode($text);
    $text =~ s/([^A-Za-z0-9\-._~])/sprintf '%%%02X', ord $1/ge;
    return $text;
}

# ordered name => value pairs as a form body
sub form {
    my (@pairs) = @_;
    my @out;
    while (my ($name, $value) = splice @pairs, 0, 2) {
        push @out, uri_escape($name) . '=' . uri_escape($value);
    }
    return join '&', @out;
}

# An API request with the right credentials unless told otherwise.
# Options: params => [pairs], body => raw, key (undef: no Authorization),
# headers => {} (undef values remove one), timeout.
sub call {
    my ($method, $path, %o) = @_;
    my %headers = ('Stripe-Version' => $VERSION);
    my $key = exists $o{key} ? $o{key} : $KEY;
    $headers{Authorization} = "Bearer $key" if defined $key;
    $headers{'Content-Type'} = 'application/x-www-form-urlencoded' if $method eq 'POST';
    %headers = (%headers, %{ $o{headers} || {} });
    delete $headers{$_} for grep { !defined $headers{$_} } keys %headers;

    my $form = $o{body} // form(@{ $o{params} || [] });
    my $url = $s->url . $path;
    my %args = (headers => \%headers);
    if ($method eq 'POST') {
        $args{content} = $form;
    } elsif (length $form) {
        $url .= "?$form";
    }
    my $http = $o{timeout} ? HTTP::Tiny->new(timeout => $o{timeout}) : $HTTP;
    my $start = time;
    my $r = $http->request($method, $url, \%args);
    $r->{elapsed} = time - $start;
    $r->{json} = eval { decode_json($r->{content}) } // {};
    return $r;
}

sub post { call(POST => $_[0], params => $_[1], @_[2 .. $#_]) }

sub idem { (headers => { 'Idempotency-Key' => $_[0] }) }

# checks a Stripe error answer; returns its error object
sub is_error {
    my ($r, $status, $expect, $name) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    is $r->{status}, $status, "$name: status $status";
    my $e = $r->{json}{error} || {};
    for my $field (sort keys %$expect) {
        if (ref $expect->{$field} eq 'Regexp') {
            like $e->{$field}, $expect->{$field}, "$name: $field";
        } else {
            is $e->{$field}, $expect->{$field}, "$name: $field";
        }
    }
    like $e->{request_log_url}, qr{^https://dashboard\.stripe\.com/test/logs/req_},
        "$name: request_log_url";
    return $e;
}

sub count { scalar @{ $s->objects($_[0]) } }

sub new_customer {
    my $r = post('/v1/customers', [ email => 'ops@acme.test', name => 'ACME' ]);
    return $r->{json}{id};
}

sub new_invoice {
    my ($customer, @more) = @_;
    my $r = post('/v1/invoices', [ customer => $customer,
        collection_method => 'send_invoice', days_until_due => 30, @more ]);
    return $r->{json}{id};
}

# a raw request on its own connection, answered and closed
sub raw_send {
    my ($bytes) = @_;
    my $sock = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
        PeerPort => $s->port, Proto => 'tcp', Timeout => 5)
        or die "connect: $!";
    syswrite $sock, $bytes;
    return $sock;
}

sub raw_read {
    my ($sock) = @_;
    my $select = IO::Select->new($sock);
    my $buf = '';
    while ($select->can_read(5)) {
        sysread($sock, $buf, 65536, length $buf) or last;
    }
    return $buf;
}

sub raw_request {
    my ($method, $path, %o) = @_;
    my $body = $o{body} // '';
    my $head = "$method $path " . ($o{http} // 'HTTP/1.1') . "\r\n"
        . "Host: 127.0.0.1\r\nAuthorization: Bearer $KEY\r\n"
        . "Stripe-Version: $VERSION\r\nConnection: close\r\n";
    $head .= "Content-Type: application/x-www-form-urlencoded\r\n"
        . "Content-Length: " . length($body) . "\r\n" if $method eq 'POST';
    $head .= "$_: $o{headers}{$_}\r\n" for sort keys %{ $o{headers} || {} };
    return "$head\r\n$body";
}

sub port_open {
    my ($port) = @_;
    my $sock = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port,
        Proto => 'tcp', Timeout => 1) or return 0;
    close $sock;
    return 1;
}

# running and not a zombie
sub alive {
    my ($pid) = @_;
    open my $fh, '<', "/proc/$pid/stat" or return 0;
    my ($state) = <$fh> =~ /\)\s+(\S)/;
    return $state ne 'Z';
}

sub wait_until {
    my ($code, $timeout) = @_;
    my $deadline = time + $timeout;
    until ($code->()) {
        return 0 if time > $deadline;
        sleep 0.05;
    }
    return 1;
}


# ---------------------------------------------------------------------

subtest 'start' => sub {
    like $s->url, qr{^http://127\.0\.0\.1:\d+$}, 'url';
    ok alive($s->pid), 'running';
    is $s->key, $KEY, 'key';
    is_deeply $s->requests, [], 'nothing recorded yet';
};

subtest 'authentication, Stripe-Version, Content-Type' => sub {
    my $r = call(GET => '/v1/customers/cus_x', key => undef);
    is_error($r, 401, { type => 'invalid_request_error',
        message => qr/^You did not provide an API key/ }, 'no key');
    is $r->{headers}{'stripe-should-retry'}, 'false', 'no key: not worth a retry';

    my $wrong = 'sk_test_' . 'w' x 20 . '9876';
    $r = call(GET => '/v1/customers/cus_x', key => $wrong);
    is_error($r, 401, { message => 'Invalid API Key provided: sk_test_'
        . '*' x 20 . '9876' }, 'wrong key');
    unlike $r->{content}, qr/w{5}/, 'the key sent is masked';
    unlike $r->{content}, qr/\Q$KEY\E|\Q${\ substr($KEY, 8, 12)}\E/,
        'the configured key is never shown';

    $r = call(GET => '/v1/customers/cus_x', headers => { 'Stripe-Version' => undef });
    is_error($r, 400, { message => qr/Stripe-Version/ }, 'no version');
    $r = call(GET => '/v1/customers/cus_x', headers => { 'Stripe-Version' => '2020-08-27' });
    is_error($r, 400, { message => qr/^Invalid Stripe API version: 2020-08-27/ },
        'other version');

    $r = call(POST => '/v1/customers', body => '{"email":"a@b.test"}',
        headers => { 'Content-Type' => 'application/json' });
    is_error($r, 400, { message => qr/unsupported Content-Type application\/json/ },
        'JSON body');
    is count('customer'), 0, 'nothing created';

    $r = call(POST => '/v1/customers', body => 'email=a%40b.test',
        headers => { 'Content-Type' => 'application/x-www-form-urlencoded; charset=utf-8' });
    is $r->{status}, 200, 'form with a charset';
    is $r->{json}{email}, 'a@b.test', 'form decoded';

    $r = call(GET => '/v1/charges');
    is_error($r, 404, { message => 'Unrecognized request URL (GET: /v1/charges). '
        . 'Please see https://stripe.com/docs or we can help at '
        . 'https://support.stripe.com/.' }, 'unknown path');
    $r = call(DELETE => '/v1/customers/cus_x');
    is $r->{status}, 404, 'unknown method on a known path';

    my $h = $r->{headers};
    is $h->{'content-type'}, 'application/json', 'Content-Type';
    like $h->{'request-id'}, qr/^req_[A-Za-z0-9]{14}$/, 'Request-Id';
    is $h->{'stripe-version'}, $VERSION, 'Stripe-Version';
    ok !exists $h->{'idempotency-key'}, 'no Idempotency-Key unless sent';
};

subtest 'customer, invoice, items, finalize' => sub {
    $s->reset;
    my $r = post('/v1/customers', [ email => 'ops@acme.test', name => 'ACME',
        'metadata[consumer_org]' => 'org-7' ]);
    is $r->{status}, 200, 'customer created';
    my $cus = $r->{json};
    like $cus->{id}, qr/^cus_[A-Za-z0-9]{24}$/, 'customer id';
    is $cus->{object}, 'customer', 'object';
    is $cus->{email}, 'ops@acme.test', 'email';
    is $cus->{name}, 'ACME', 'name';
    is_deeply $cus->{metadata}, { consumer_org => 'org-7' }, 'metadata';
    ok JSON::PP::is_bool($cus->{livemode}) && !$cus->{livemode}, 'livemode false';
    ok abs($cus->{created} - time) < 5, 'created now';
    is_deeply call(GET => "/v1/customers/$cus->{id}")->{json}, $cus, 'retrieved';

    $r = post('/v1/invoices', [ customer => $cus->{id},
        collection_method => 'send_invoice', days_until_due => 30,
        pending_invoice_items_behavior => 'exclude',
        'metadata[billing_subscription]' => 'sub-42',
        'metadata[billing_kind]' => 'initial' ]);
    is $r->{status}, 200, 'invoice created';
    my $inv = $r->{json};
    like $inv->{id}, qr/^in_[A-Za-z0-9]{24}$/, 'invoice id';
    is $inv->{object}, 'invoice', 'object';
    is $inv->{status}, 'draft', 'draft';
    is $inv->{customer}, $cus->{id}, 'customer';
    is $inv->{collection_method}, 'send_invoice', 'collection_method';
    is $inv->{days_until_due}, 30, 'days_until_due';
    is $inv->{currency}, 'usd', 'currency defaults to usd';
    is $inv->{amount_due}, 0, 'amount_due 0';
    is $inv->{hosted_invoice_url}, undef, 'no hosted page while draft';
    is_deeply [ @{ $inv->{lines} }{qw(object data)} ], [ 'list', [] ], 'no lines';
    is_deeply $inv->{metadata}, { billing_subscription => 'sub-42',
        billing_kind => 'initial' }, 'metadata';

    my @items = (
        [ 1500, amount => 1500, description => 'Base price' ],
        [ 2, quantity => 7, unit_amount_decimal => '0.25',
              description => '7 requests' ],              # 1.75
        [ 1, quantity => 2, unit_amount_decimal => '0.25' ],  # 0.5: half up
        [ 1, quantity => 3, unit_amount_decimal => '0.333333333333' ],
        [ 12346, quantity => 1000, unit_amount_decimal => '12.3456' ],
    );
    for my $item (@items) {
        my ($amount, @params) = @$item;
        $r = post('/v1/invoiceitems', [ customer => $cus->{id},
            invoice => $inv->{id}, currency => 'usd', @params ]);
        is $r->{status}, 200, "item @params[0, 1]: created";
        like $r->{json}{id}, qr/^ii_[A-Za-z0-9]{24}$/, 'item id';
        is $r->{json}{object}, 'invoiceitem', 'object';
        is $r->{json}{amount}, $amount, "amount $amount";
        is $r->{json}{invoice}, $inv->{id}, 'on the invoice';
    }
    is $r->{json}{quantity}, 1000, 'quantity';
    is $r->{json}{unit_amount_decimal}, '12.3456', 'unit_amount_decimal';

    $inv = call(GET => "/v1/invoices/$inv->{id}")->{json};
    is_deeply [ map { $_->{amount} } @{ $inv->{lines}{data} } ],
        [ map { $_->[0] } @items ], 'one line per item';
    is $inv->{lines}{data}[1]{description}, '7 requests', 'line description';
    is $inv->{total}, 13850, 'total';
    is $inv->{amount_due}, 13850, 'amount_due';

    $r = post("/v1/invoices/$inv->{id}/finalize", []);
    is $r->{status}, 200, 'finalized';
    my $fin = $r->{json};
    is $fin->{status}, 'open', 'open';
    is $fin->{amount_due}, 13850, 'amount_due';
    is $fin->{amount_remaining}, 13850, 'amount_remaining';
    ok !$fin->{paid}, 'not paid';
    like $fin->{number}, qr/^[A-Z0-9]+-0001$/, 'numbered';
    is $fin->{hosted_invoice_url}, "https://invoice.stripe.com/i/acct_test/$inv->{id}",
        'hosted_invoice_url';
    like $fin->{invoice_pdf}, qr{^https://pay\.stripe\.com/invoice/}, 'invoice_pdf';
    is $fin->{due_date}, $fin->{status_transitions}{finalized_at} + 30 * 86400,
        'due in 30 days';
    like $r->{content}, qr/"amount_due": 13850,/, 'amounts are JSON numbers';
    cmp_ok length $r->{content}, '>', 4096, 'as large as a real invoice';

    $r = post("/v1/invoices/$inv->{id}/finalize", []);
    is_error($r, 400, { code => 'invoice_not_editable',
        message => qr/already finalized/ }, 'finalized twice');
    $r = post('/v1/invoiceitems', [ customer => $cus->{id},
        invoice => $inv->{id}, currency => 'usd', amount => 5 ]);
    is_error($r, 400, { code => 'invoice_not_editable', param => 'invoice' },
        'item on an open invoice');

    is count('customer'), 1, 'one customer';
    is count('invoiceitem'), scalar @items, 'the items';
    is_deeply $s->objects('invoice'), [ $fin ], 'objects: the invoice as answered';
};

subtest 'a zero total is paid on finalization' => sub {
    my $cus = new_customer();
    my $first = new_invoice($cus);
    post("/v1/invoices/$first/finalize", []);
    my $id = new_invoice($cus);
    my $r = post("/v1/invoices/$id/finalize", []);
    is $r->{status}, 200, 'finalized';
    my $inv = $r->{json};
    is $inv->{status}, 'paid', 'paid';
    ok JSON::PP::is_bool($inv->{paid}) && $inv->{paid}, 'paid: true';
    is $inv->{amount_paid}, 0, 'amount_paid 0';
    is $inv->{amount_due}, 0, 'amount_due 0';
    ok $inv->{status_transitions}{paid_at}, 'paid_at';
    like $inv->{hosted_invoice_url}, qr/\Q$id\E$/, 'hosted page';
    like $inv->{number}, qr/-0002$/, "the customer's second number";
};

subtest 'parameter checks' => sub {
    my $cus = new_customer();
    my $inv = new_invoice($cus);
    my %before = map { $_ => count($_) } qw(customer invoice invoiceitem);

    my $r = post('/v1/customers', [ email => 'a@b.test', foo => 1 ]);
    is_error($r, 400, { type => 'invalid_request_error', code => 'parameter_unknown',
        param => 'foo', message => 'Received unknown parameter: foo',
        doc_url => 'https://stripe.com/docs/error-codes/parameter-unknown' },
        'unknown parameter');
    $r = post('/v1/invoices', [ customer => $cus, 'bogus[x]' => 1 ]);
    is_error($r, 400, { code => 'parameter_unknown', param => 'bogus' },
        'unknown nested parameter');
    $r = post("/v1/invoices/$inv/finalize", [ days_until_due => 3 ]);
    is_error($r, 400, { param => 'days_until_due' }, 'unknown on finalize');
    $r = call(GET => "/v1/invoices/$inv", params => [ limit => 3 ]);
    is_error($r, 400, { param => 'limit' }, 'unknown on retrieve');

    $r = post('/v1/customers', [ email => 'not-an-email' ]);
    is_error($r, 400, { code => 'email_invalid', param => 'email' }, 'bad email');
    $r = post('/v1/customers', [ 'metadata[k]' => 'x' x 501 ]);
    is_error($r, 400, { param => 'metadata[k]', message => qr/500 characters/ },
        'metadata value too long');

    $r = post('/v1/invoices', [ collection_method => 'send_invoice', days_until_due => 1 ]);
    is_error($r, 400, { code => 'parameter_missing', param => 'customer',
        message => 'Missing required param: customer.' }, 'no customer');
    $r = post('/v1/invoices', [ customer => 'cus_nope', collection_method => 'send_invoice',
        days_until_due => 1 ]);
    is_error($r, 400, { code => 'resource_missing', param => 'customer',
        message => "No such customer: 'cus_nope'" }, 'missing customer');
    $r = post('/v1/invoices', [ customer => $cus, collection_method => 'send_invoice' ]);
    is_error($r, 400, { param => 'days_until_due' }, 'send_invoice without a due date');
    $r = post('/v1/invoices', [ customer => $cus, collection_method => 'send_invoice',
        days_until_due => 'soon' ]);
    is_error($r, 400, { message => 'Invalid integer: soon' }, 'bad integer');
    $r = post('/v1/invoices', [ customer => $cus, collection_method => 'by_pigeon' ]);
    is_error($r, 400, { param => 'collection_method' }, 'bad collection_method');

    my @base = (customer => $cus, invoice => $inv);
    $r = post('/v1/invoiceitems', [ @base, amount => 100 ]);
    is_error($r, 400, { code => 'parameter_missing', param => 'currency' }, 'no currency');
    $r = post('/v1/invoiceitems', [ @base, currency => 'usd' ]);
    is_error($r, 400, { code => 'parameter_missing' }, 'no amount');
    $r = post('/v1/invoiceitems', [ @base, currency => 'usd', amount => 100,
        quantity => 2, unit_amount_decimal => '50' ]);
    is_error($r, 400, { message => qr/only specify one/ }, 'amount with unit amount');
    $r = post('/v1/invoiceitems', [ @base, currency => 'usd', quantity => 2,
        unit_amount_decimal => '0.1234567890123' ]);
    is_error($r, 400, { param => 'unit_amount_decimal',
        message => qr/^Invalid decimal/ }, '13 decimal places');
    $r = post('/v1/invoiceitems', [ @base, currency => 'usd', quantity => -1,
        unit_amount_decimal => '1' ]);
    is_error($r, 400, { param => 'quantity' }, 'negative quantity');
    $r = post('/v1/invoiceitems', [ @base, currency => 'eur', amount => 100 ]);
    is_error($r, 400, { param => 'currency' }, "not the invoice's currency");
    $r = post('/v1/invoiceitems', [ customer => $cus, invoice => 'in_nope',
        currency => 'usd', amount => 100 ]);
    is_error($r, 400, { code => 'resource_missing', param => 'invoice' }, 'missing invoice');
    my $other = new_customer();
    $r = post('/v1/invoiceitems', [ customer => $other, invoice => $inv,
        currency => 'usd', amount => 100 ]);
    is_error($r, 400, { param => 'invoice' }, "another customer's invoice");
    $before{customer}++;

    $r = post('/v1/invoices/in_nope/finalize', []);
    is_error($r, 404, { code => 'resource_missing', param => 'id',
        message => "No such invoice: 'in_nope'" }, 'finalize a missing invoice');
    $r = call(GET => '/v1/customers/cus_nope');
    is_error($r, 404, { code => 'resource_missing' }, 'retrieve a missing customer');

    is_deeply { map { $_ => count($_) } qw(customer invoice invoiceitem) }, \%before,
        'refused requests created nothing';

    $r = post('/v1/invoiceitems', [ customer => $cus, currency => 'usd', amount => -250,
        'metadata[anything_at_all]' => 'ok' ]);
    is $r->{status}, 200, 'a negative pending item, any metadata key';
    is $r->{json}{invoice}, undef, 'pending';
    my $with = post('/v1/invoices', [ customer => $cus,
        pending_invoice_items_behavior => 'include' ])->{json};
    is_deeply [ $with->{total}, $with->{amount_due} ], [ -250, 0 ],
        'included by an invoice; a credit is not due';
};

subtest 'invoice items: quantity x unit price' => sub {
    my $cus = new_customer();
    my $inv = new_invoice($cus);

    # quantity, unit price (unit_amount_decimal, or unit_amount as
    # [integer]), amount, unit_amount, unit_amount_decimal as answered
    my @cases = (
        [ 3, '0.333', 1, undef, '0.333' ],              # 0.999
        [ 7, '0.25', 2, undef, '0.25' ],                # 1.75 -> 2
        [ 0, '0.25', 0, undef, '0.25' ],                # nothing used
        [ 2, '0.25', 1, undef, '0.25' ],                # 0.5: half up
        [ 3, '0.5', 2, undef, '0.5' ],                  # 1.5: half up
        [ 1, '0.499999999999', 0, undef, '0.499999999999' ],
        [ 5, '2.000', 10, 2, '2' ],                     # Stripe's normal form
        [ 4, '0.250', 1, undef, '0.25' ],
        [ 1, '007', 7, 7, '7' ],
        [ 2, '.5', 1, undef, '0.5' ],
        [ 0, '0', 0, 0, '0' ],
        [ 3, [250], 750, 250, '250' ],                  # unit_amount
        [ 1_000_000_000_000_000, '0.000000000001', 1000, undef, '0.000000000001' ],
        [ 1_000_000_000_000, '0.123456789012', 123456789012, undef, '0.123456789012' ],
        [ 999_999_999_999, '0.5', 500_000_000_000, undef, '0.5' ],
        # beyond a double's 53 bits: exact integers, never floats
        [ 9_007_199_254_740_993, '1', 9_007_199_254_740_993, 1, '1' ],
        [ 9_223_372_036_854_775_807, '0', 0, 0, '0' ],
    );
    my ($total, @ids) = (0);
    for my $case (@cases) {
        my ($quantity, $unit, $amount, $unit_amount, $decimal) = @$case;
        my @price = ref $unit ? (unit_amount => $unit->[0])
                              : (unit_amount_decimal => $unit);
        my $name = "$quantity x " . (ref $unit ? "[$unit->[0]]" : "'$unit'");
        my $r = post('/v1/invoiceitems', [ customer => $cus, invoice => $inv,
            currency => 'usd', quantity => $quantity, @price ]);
        is $r->{status}, 200, "$name: created" or diag $r->{content};
        my $item = $r->{json};
        is $item->{amount}, $amount, "$name: amount $amount";
        is $item->{quantity}, $quantity, "$name: quantity";
        is $item->{unit_amount}, $unit_amount, "$name: unit_amount "
            . ($unit_amount // 'null');
        ok exists $item->{unit_amount}, "$name: unit_amount present";
        is $item->{unit_amount_decimal}, $decimal, "$name: unit_amount_decimal";
        is $item->{pricing}{unit_amount_decimal}, $decimal, "$name: pricing";
        like $r->{content}, qr/\n  "amount": \Q$amount\E,\n/, "$name: amount a JSON integer";
        like $r->{content}, qr/\n  "unit_amount_decimal": "\Q$decimal\E"\n/,
            "$name: unit_amount_decimal a JSON string";
        $total += $amount;
        push @ids, $item->{id};
    }

    my $r = post('/v1/invoiceitems', [ customer => $cus, invoice => $inv,
        currency => 'usd', unit_amount => 125 ]);
    is_deeply [ @{ $r->{json} }{qw(quantity amount unit_amount unit_amount_decimal)} ],
        [ 1, 125, 125, '125' ], 'unit_amount alone: quantity 1';
    $total += 125;
    $r = post('/v1/invoiceitems', [ customer => $cus, invoice => $inv,
        currency => 'usd', amount => 0 ]);
    is_deeply [ @{ $r->{json} }{qw(quantity amount unit_amount unit_amount_decimal)} ],
        [ 1, 0, 0, '0' ], 'amount 0';

    my $got = call(GET => "/v1/invoices/$inv");
    my $invoice = $got->{json};
    is_deeply [ map { $_->{amount} } @{ $invoice->{lines}{data} }[0 .. $#cases] ],
        [ map { $_->[2] } @cases ], 'the lines: the amounts';
    is_deeply [ map { $_->{quantity} } @{ $invoice->{lines}{data} }[0 .. $#cases] ],
        [ map { $_->[0] } @cases ], '... the quantities';
    is_deeply [ map { $_->{invoice_item} } @{ $invoice->{lines}{data} }[0 .. $#cases] ],
        \@ids, '... the items';
    is $invoice->{lines}{total_count}, @cases + 2, '... all of them';
    is_deeply { map { $_ => $invoice->{$_} } qw(subtotal total amount_due amount_remaining) },
        { map { $_ => $total } qw(subtotal total amount_due amount_remaining) },
        "totals: $total, exactly";
    like $got->{content}, qr/\n  "total": $total,\n/, '... a JSON integer';

    my $fin = post("/v1/invoices/$inv/finalize", [])->{json};
    is_deeply [ @$fin{qw(status amount_due amount_remaining)} ], [ 'open', $total, $total ],
        'finalized with that total';

    # the quantity-0 item alone: a zero invoice, paid on finalization
    my $zero = new_invoice($cus);
    $r = post('/v1/invoiceitems', [ customer => $cus, invoice => $zero,
        currency => 'usd', quantity => 0, unit_amount_decimal => '0.25' ]);
    is $r->{json}{amount}, 0, 'quantity 0: amount 0';
    $fin = post("/v1/invoices/$zero/finalize", [])->{json};
    is_deeply [ @$fin{qw(total amount_due status)} ], [ 0, 0, 'paid' ],
        '... a zero invoice, paid';
};

subtest 'invoice items: refused unit prices' => sub {
    my $cus = new_customer();
    my $inv = new_invoice($cus);
    post('/v1/invoiceitems', [ customer => $cus, invoice => $inv, currency => 'usd',
        amount => 300 ]);
    my $items = count('invoiceitem');
    my @base = (customer => $cus, invoice => $inv, currency => 'usd');

    my $exclusive = qr/^You may only specify one of these parameters: /;
    my @cases = (
        [ 'amount + unit_amount', [ amount => 100, unit_amount => 100 ],
          { param => 'unit_amount', message => $exclusive } ],
        [ 'amount + unit_amount_decimal', [ amount => 100, unit_amount_decimal => '1' ],
          { param => 'unit_amount_decimal', message => $exclusive } ],
        [ 'amount + quantity', [ amount => 100, quantity => 2 ],
          { param => 'quantity', message => $exclusive } ],
        [ 'unit_amount + unit_amount_decimal', [ quantity => 2, unit_amount => 1,
            unit_amount_decimal => '1' ],
          { param => 'unit_amount_decimal', message => 'You may only specify one '
            . 'of these parameters: unit_amount, unit_amount_decimal.' } ],
        [ 'quantity without a unit price', [ quantity => 2 ],
          { code => 'parameter_missing', param => 'unit_amount',
            message => qr/unit_amount or unit_amount_decimal/ } ],
        [ 'quantity 0 without a unit price', [ quantity => 0 ],
          { code => 'parameter_missing', param => 'unit_amount' } ],
        [ 'nothing', [ description => 'x' ],
          { code => 'parameter_missing', param => 'amount' } ],
        [ 'negative quantity', [ quantity => -1, unit_amount_decimal => '1' ],
          { param => 'quantity',
            message => 'This value must be greater than or equal to 0.' } ],
        [ 'fractional quantity', [ quantity => '1.5', unit_amount_decimal => '1' ],
          { param => 'quantity', message => 'Invalid integer: 1.5' } ],
        [ 'quantity not a number', [ quantity => 'lots', unit_amount_decimal => '1' ],
          { param => 'quantity', message => 'Invalid integer: lots' } ],
        [ 'quantity beyond 64 bits', [ quantity => '9223372036854775808',
            unit_amount_decimal => '0' ],
          { param => 'quantity', message => 'Invalid integer: 9223372036854775808' } ],
        [ 'amount beyond 64 bits', [ amount => '-9223372036854775809' ],
          { param => 'amount', message => qr/^Invalid integer/ } ],
        [ 'negative unit_amount_decimal', [ quantity => 1, unit_amount_decimal => '-0.25' ],
          { param => 'unit_amount_decimal',
            message => 'This value must be greater than or equal to 0.' } ],
        [ '13 decimal places', [ quantity => 1, unit_amount_decimal => '0.0000000000001' ],
          { param => 'unit_amount_decimal', message => qr/^Invalid decimal.*12 decimal/ } ],
        (map { [ "unit_amount_decimal '$_'", [ quantity => 1, unit_amount_decimal => $_ ],
                 { param => 'unit_amount_decimal', message => "Invalid decimal: $_" } ] }
             '1e3', '1.2.3', '1,5', '0x10', '+1', 'one', '1.', ' 1'),
        [ 'unit_amount not an integer', [ quantity => 1, unit_amount => '1.5' ],
          { param => 'unit_amount', message => 'Invalid integer: 1.5' } ],
        [ 'an amount beyond 64 bits', [ quantity => '9223372036854775807',
            unit_amount_decimal => '2' ],
          { code => 'amount_too_large', param => 'quantity' } ],
        [ 'half up beyond 64 bits', [ quantity => '9223372036854775807',
            unit_amount_decimal => '1.000000000001' ],
          { code => 'amount_too_large' } ],
    );
    for my $case (@cases) {
        my ($name, $params, $expect) = @$case;
        my $r = post('/v1/invoiceitems', [ @base, @$params ]);
        is_error($r, 400, { type => 'invalid_request_error', %$expect }, $name);
    }

    # one that fits, then one that would take the invoice past 64 bits
    my $r = post('/v1/invoiceitems', [ @base, quantity => '9223372036854775507',
        unit_amount_decimal => '1' ]);
    is $r->{status}, 200, 'an amount that makes the total the largest integer';
    is $r->{json}{amount}, 9223372036854775507, '... exactly';
    is_error(post('/v1/invoiceitems', [ @base, amount => 1 ]), 400,
        { code => 'amount_too_large', param => 'amount' }, 'an invoice total beyond 64 bits');
    $items++;

    is count('invoiceitem'), $items, 'none was created';
    my $got = call(GET => "/v1/invoices/$inv")->{json};
    is $got->{lines}{total_count}, 2, 'the invoice has the lines that were accepted';
    is_deeply [ map { $_->{amount} } @{ $got->{lines}{data} } ],
        [ 300, 9223372036854775507 ], '... their amounts';
    is $got->{total}, 9223372036854775807, '... the total';
};

subtest 'invoice items: period' => sub {
    my $cus = new_customer();
    my $inv = new_invoice($cus);
    my @base = (customer => $cus, invoice => $inv, currency => 'usd',
        quantity => 10, unit_amount_decimal => '0.5');
    my ($start, $end) = (1_700_000_000, 1_702_592_000);

    my $r = post('/v1/invoiceitems', [ @base, 'period[start]' => $start,
        'period[end]' => $end ]);
    is $r->{status}, 200, 'created';
    is_deeply $r->{json}{period}, { start => $start, end => $end }, 'period on the item';
    like $r->{content}, qr/"start": $start\n/, '... JSON integers';
    my $id = $r->{json}{id};
    is_deeply call(GET => "/v1/invoiceitems/$id")->{json}{period},
        { start => $start, end => $end }, '... retrieved';

    $r = post('/v1/invoiceitems', [ @base, 'period[end]' => $start,
        'period[start]' => $start ]);
    is_deeply $r->{json}{period}, { start => $start, end => $start }, 'end = start';

    $r = post('/v1/invoiceitems', [ @base ]);
    my $date = $r->{json}{date};
    is_deeply $r->{json}{period}, { start => $date, end => $date },
        'no period: the item date, as Stripe';

    my $lines = call(GET => "/v1/invoices/$inv")->{json}{lines}{data};
    is_deeply [ map { $_->{period} } @$lines ], [ { start => $start, end => $end },
        { start => $start, end => $start }, { start => $date, end => $date } ],
        'the periods on the lines';
    my $n = count('invoiceitem');

    my @cases = (
        [ 'start only', [ 'period[start]' => $start ],
          { code => 'parameter_missing', param => 'period[end]',
            message => 'Missing required param: period[end].' } ],
        [ 'end only', [ 'period[end]' => $end ],
          { code => 'parameter_missing', param => 'period[start]' } ],
        [ 'end empty', [ 'period[start]' => $start, 'period[end]' => '' ],
          { code => 'parameter_missing', param => 'period[end]' } ],
        [ 'end before start', [ 'period[start]' => $end, 'period[end]' => $start ],
          { param => 'period[end]', message => qr/greater than or equal to the period start/ } ],
        [ 'start not an integer', [ 'period[start]' => 'soon', 'period[end]' => $end ],
          { param => 'period[start]', message => 'Invalid integer: soon' } ],
        [ 'end a float', [ 'period[start]' => $start, 'period[end]' => "$end.5" ],
          { param => 'period[end]', message => "Invalid integer: $end.5" } ],
        [ 'negative start', [ 'period[start]' => -1, 'period[end]' => $end ],
          { param => 'period[start]', message => qr/greater than or equal to 0/ } ],
        [ 'beyond 64 bits', [ 'period[start]' => $start,
            'period[end]' => '99999999999999999999' ],
          { param => 'period[end]', message => qr/^Invalid integer/ } ],
        [ 'an unknown key', [ 'period[start]' => $start, 'period[end]' => $end,
            'period[length]' => 30 ],
          { code => 'parameter_unknown', param => 'period[length]',
            message => 'Received unknown parameter: period[length]' } ],
        [ 'not an object', [ period => $start ],
          { param => 'period', message => 'Invalid object' } ],
    );
    for my $case (@cases) {
        my ($name, $params, $expect) = @$case;
        is_error(post('/v1/invoiceitems', [ @base, @$params ]), 400,
            { type => 'invalid_request_error', %$expect }, $name);
    }
    is count('invoiceitem'), $n, 'none was created';
};

subtest 'void' => sub {
    my $cus = new_customer();
    my $draft = new_invoice($cus);
    post('/v1/invoiceitems', [ customer => $cus, invoice => $draft, currency => 'usd',
        quantity => 3, unit_amount_decimal => '150' ]);

    my $r = post("/v1/invoices/$draft/void", []);
    is_error($r, 400, { type => 'invalid_request_error',
        message => qr/^You can only pass in open invoices\. .*draft/ }, 'a draft');
    is call(GET => "/v1/invoices/$draft")->{json}{status}, 'draft', '... stays a draft';

    my $inv = $draft;
    my $open = post("/v1/invoices/$inv/finalize", [])->{json};
    is $open->{status}, 'open', 'finalized';

    $r = post("/v1/invoices/$inv/void", [ foo => 1 ]);
    is_error($r, 400, { code => 'parameter_unknown', param => 'foo' }, 'unknown parameter');
    is call(GET => "/v1/invoices/$inv")->{json}{status}, 'open', '... still open';

    $r = post("/v1/invoices/$inv/void", [], idem('V1'));
    is $r->{status}, 200, 'voided';
    my $void = $r->{json};
    is $void->{id}, $inv, 'the invoice';
    is $void->{status}, 'void', 'status void';
    ok abs($void->{status_transitions}{voided_at} - time) < 5, 'voided_at now';
    is $void->{status_transitions}{finalized_at}, $open->{status_transitions}{finalized_at},
        'finalized_at kept';
    is $void->{amount_remaining}, 0, 'amount_remaining 0';
    is $void->{amount_due}, 450, 'amount_due kept';
    is $void->{total}, 450, 'total kept';
    ok JSON::PP::is_bool($void->{paid}) && !$void->{paid}, 'not paid';
    is $void->{status_transitions}{paid_at}, undef, 'no paid_at';
    is $void->{number}, $open->{number}, 'number kept';
    is_deeply call(GET => "/v1/invoices/$inv")->{json}, $void, 'retrieved as answered';
    is_deeply((grep { $_->{id} eq $inv } @{ $s->objects('invoice') })[0], $void,
        'objects: void');

    my $again = post("/v1/invoices/$inv/void", [], idem('V1'));
    is $again->{status}, 200, 'the same key: 200';
    is $again->{headers}{'idempotent-replayed'}, 'true', '... replayed';
    is $again->{headers}{'original-request'}, $r->{headers}{'request-id'},
        '... Original-Request';
    is $again->{content}, $r->{content}, '... the same body';
    $again = post("/v1/invoices/$inv/void", [ 'expand[]' => 'customer' ], idem('V1'));
    is_error($again, 400, { type => 'idempotency_error' }, 'the same key, other parameters');
    $again = post("/v1/invoices/$draft/finalize", [], idem('V1'));
    is_error($again, 400, { type => 'idempotency_error', message => qr/same endpoint/ },
        'the same key, another endpoint');

    $r = post("/v1/invoices/$inv/void", []);
    is_error($r, 400, { message => qr/^You can only pass in open invoices\. .*already void/ },
        'void twice');
    $r = post("/v1/invoices/$inv/void", [], idem('V2'));
    is $r->{status}, 400, 'void twice, with a key';
    $r = post("/v1/invoices/$inv/void", [], idem('V2'));
    is $r->{headers}{'idempotent-replayed'}, 'true', '... that refusal is saved and replayed';

    $r = post("/v1/invoices/$inv/finalize", []);
    is_error($r, 400, { code => 'invoice_not_editable' }, 'finalize a void invoice');
    $r = post('/v1/invoiceitems', [ customer => $cus, invoice => $inv,
        currency => 'usd', amount => 5 ]);
    is_error($r, 400, { code => 'invoice_not_editable', param => 'invoice' },
        'an item on a void invoice');
    is call(GET => "/v1/invoices/$inv")->{json}{total}, 450, '... the total unchanged';

    my $paid = new_invoice($cus);
    is post("/v1/invoices/$paid/finalize", [])->{json}{status}, 'paid', 'a zero invoice: paid';
    $r = post("/v1/invoices/$paid/void", []);
    is_error($r, 400, { message => qr/^You can only pass in open invoices\. .*paid/ },
        'a paid invoice');
    is call(GET => "/v1/invoices/$paid")->{json}{status}, 'paid', '... stays paid';

    $r = post('/v1/invoices/in_nope/void', []);
    is_error($r, 404, { code => 'resource_missing', param => 'id',
        message => "No such invoice: 'in_nope'" }, 'a missing invoice');
    my $cus_path = "/v1/invoices/$cus/void";
    is_error(post($cus_path, []), 404, { code => 'resource_missing' }, 'not an invoice');
    is call(GET => "/v1/invoices/$inv/void")->{status}, 404, 'GET: unknown';

    my @recs = grep { $_->{path} =~ m{/void$} && $_->{method} eq 'POST' } @{ $s->requests };
    ok @recs >= 10, 'void requests recorded';
    my ($first) = grep { ($_->{headers}{'idempotency-key'} // '') eq 'V1' } @recs;
    is_deeply [ $first->{status}, $first->{executed} ? 1 : 0, $first->{replayed} ? 1 : 0 ],
        [ 200, 1, 0 ], '... the void: executed';
};

subtest 'invoice metadata' => sub {
    my $cus = new_customer();
    my %md = (billing_period_start => '1700000000', billing_period_end => '1702592000',
        billing_subscription => 'sub-42', billing_kind => 'period',
        'Mixed-Case.key_09' => 'Zoë & Co = 100%');
    my $r = post('/v1/invoices', [ customer => $cus, collection_method => 'send_invoice',
        days_until_due => 30, map { ("metadata[$_]" => $md{$_}) } sort keys %md ]);
    is $r->{status}, 200, 'created';
    my $inv = $r->{json}{id};
    is_deeply $r->{json}{metadata}, \%md, 'metadata as sent';
    like $r->{content}, qr/"billing_period_start": "1700000000"/, '... strings';
    is_deeply call(GET => "/v1/invoices/$inv")->{json}{metadata}, \%md, '... retrieved';

    my $rec = $s->requests->[-2];
    is $rec->{params}{'metadata[billing_period_start]'}, '1700000000',
        'request record: flat params';
    is_deeply $rec->{nested}{metadata}, \%md, 'request record: nested';

    $r = post('/v1/invoiceitems', [ customer => $cus, invoice => $inv, currency => 'usd',
        quantity => 4, unit_amount_decimal => '0.75',
        'metadata[billing_period_start]' => '1700000000',
        'metadata[billing_period_end]' => '1702592000' ]);
    my %item_md = (billing_period_start => '1700000000', billing_period_end => '1702592000');
    is_deeply $r->{json}{metadata}, \%item_md, 'item metadata';
    is_deeply call(GET => "/v1/invoices/$inv")->{json}{lines}{data}[0]{metadata},
        \%item_md, '... on its line';

    my $fin = post("/v1/invoices/$inv/finalize", [])->{json};
    is_deeply $fin->{metadata}, \%md, 'metadata kept on finalization';
    my $void = post("/v1/invoices/$inv/void", [])->{json};
    is_deeply $void->{metadata}, \%md, '... and voiding';

    # Stripe's limits: 50 keys, keys up to 40 characters, values up
    # to 500; an empty value sets nothing
    my @ok = (map { ("metadata[k$_]" => "v$_") } 1 .. 48);
    $r = post('/v1/invoices', [ customer => $cus, @ok, 'metadata[' . 'k' x 40 . ']' => 'x' x 500,
        'metadata[empty]' => '' ]);
    is $r->{status}, 200, '50 keys, a 40-character key, a 500-character value';
    is scalar keys %{ $r->{json}{metadata} }, 49, '... the empty value set nothing';
    ok !exists $r->{json}{metadata}{empty}, '... no empty key';
    my $n = count('invoice');
    is_error(post('/v1/invoices', [ customer => $cus, @ok, map { ("metadata[k$_]" => 1) }
        49 .. 51 ]), 400, { param => 'metadata', message => qr/50 keys/ },
        '51 keys');
    is_error(post('/v1/invoices', [ customer => $cus, 'metadata[' . 'k' x 41 . ']' => 1 ]),
        400, { param => 'metadata[' . 'k' x 41 . ']', message => qr/40 characters/ },
        'a 41-character key');
    is_error(post('/v1/invoices', [ customer => $cus, 'metadata[billing_period_end]' => 'x' x 501 ]),
        400, { param => 'metadata[billing_period_end]', message => qr/500 characters/ },
        'a 501-character value');
    is_error(post('/v1/invoices', [ customer => $cus, metadata => 'x' ]),
        400, { param => 'metadata', message => 'Invalid object' }, 'not an object');
    is count('invoice'), $n, 'none was created';
};

subtest 'idempotency' => sub {
    my @params = (email => 'idem@acme.test', name => 'Idem', 'metadata[a]' => 'b');
    my $r1 = post('/v1/customers', \@params, idem('K1'));
    is $r1->{status}, 200, 'created';
    is $r1->{headers}{'idempotency-key'}, 'K1', 'key echoed';
    ok !$r1->{headers}{'idempotent-replayed'}, 'not a replay';
    my $n = count('customer');

    my $r2 = post('/v1/customers', [ reverse_pairs(@params) ], idem('K1'));
    is $r2->{status}, 200, 'same key, same parameters in another order';
    is $r2->{headers}{'idempotent-replayed'}, 'true', 'Idempotent-Replayed';
    is $r2->{headers}{'original-request'}, $r1->{headers}{'request-id'}, 'Original-Request';
    isnt $r2->{headers}{'request-id'}, $r1->{headers}{'request-id'}, 'a new Request-Id';
    is $r2->{content}, $r1->{content}, 'the same body';
    is count('customer'), $n, 'no second customer';

    my $r = post('/v1/customers', [ email => 'other@acme.test' ], idem('K1'));
    is_error($r, 400, { type => 'idempotency_error', message =>
        'Keys for idempotent requests can only be used with the same parameters '
        . "they were first used with. Try using a key other than 'K1' if you "
        . 'meant to execute a different request.' }, 'same key, other parameters');
    is $r->{headers}{'stripe-should-retry'}, 'false', 'not worth a retry';
    $r = post('/v1/invoices', [ customer => $r1->{json}{id} ], idem('K1'));
    is_error($r, 400, { type => 'idempotency_error', message => qr/same endpoint/ },
        'same key, other endpoint');

    $r = post('/v1/customers', [ email => 'x@acme.test', foo => 1 ], idem('K2'));
    is $r->{status}, 400, 'refused by the parameter checks';
    $r = post('/v1/customers', [ email => 'x@acme.test' ], idem('K2'));
    is $r->{status}, 200, '... saved nothing: the corrected request runs';
    ok !$r->{headers}{'idempotent-replayed'}, '... not a replay';

    my @bad = (customer => 'cus_nope', collection_method => 'send_invoice',
        days_until_due => 1);
    $r = post('/v1/invoices', \@bad, idem('K3'));
    is $r->{status}, 400, 'failed while executing';
    $r = post('/v1/invoices', \@bad, idem('K3'));
    is $r->{status}, 400, '... and that answer is saved';
    is $r->{headers}{'idempotent-replayed'}, 'true', '... and replayed';

    $r = post('/v1/customers', [], idem('k' x 256));
    is_error($r, 400, { message => qr/255/ }, 'key too long');
};

sub reverse_pairs {
    my (@pairs) = @_;
    my @out;
    unshift @out, splice(@pairs, 0, 2) while @pairs;
    return @out;
}

subtest 'rules: errors' => sub {
    my $rule = $s->fail(method => 'POST', path => '^/v1/customers$', status => 500);
    ok $rule, 'rule added';
    my $r = post('/v1/customers', [ email => 'r@acme.test' ], idem('R1'));
    is_error($r, 500, { type => 'api_error' }, '500');
    is $r->{headers}{'stripe-should-retry'}, 'true', 'Stripe-Should-Retry: true';
    is $r->{headers}{'idempotency-key'}, 'R1', 'key echoed';
    my $n = count('customer');
    $r = post('/v1/customers', [ email => 'r@acme.test' ], idem('R1'));
    is $r->{status}, 200, 'once only: the retry succeeds';
    ok !$r->{headers}{'idempotent-replayed'}, 'the failure was not saved';
    is count('customer'), $n + 1, 'one customer';
    my $cus = $r->{json}{id};

    $s->fail(path => '^/v1/invoices', status => 429,
        headers => { 'Stripe-Should-Retry' => 'true' });
    $r = call(GET => '/v1/invoices/in_x');
    is_error($r, 429, { code => 'rate_limit' }, '429');
    is $r->{headers}{'stripe-should-retry'}, 'true', 'with the header asked for';
    $s->fail(status => 429);
    $r = call(GET => '/v1/invoices/in_x');
    ok !exists $r->{headers}{'stripe-should-retry'}, 'a 429 says nothing by default';

    $s->fail(status => 409);
    $r = post('/v1/customers', [], idem('R2'));
    is_error($r, 409, { type => 'idempotency_error', code => 'idempotency_key_in_use' }, '409');
    $s->fail(status => 402);
    is_error(call(GET => "/v1/customers/$cus"), 402, { type => 'card_error' }, '402');

    $s->fail(status => 503, body => { error => { type => 'api_error', message => 'Down' } },
        headers => { 'Stripe-Should-Retry' => undef, 'Retry-After' => 1 });
    $r = call(GET => "/v1/customers/$cus");
    is_error($r, 503, { message => 'Down' }, 'own body');
    ok !exists $r->{headers}{'stripe-should-retry'}, 'a default header removed';
    is $r->{headers}{'retry-after'}, 1, 'a header added';

    $s->fail(method => 'GET', status => 500, times => 2);
    is post('/v1/customers', [])->{status}, 200, 'method: other methods pass';
    is call(GET => "/v1/customers/$cus")->{status}, 500, 'times 2: first';
    is call(GET => "/v1/customers/$cus")->{status}, 500, 'times 2: second';
    is call(GET => "/v1/customers/$cus")->{status}, 200, 'times 2: then passes';

    $s->fail(path => '^/v1/customers/', status => 500, times => 0);
    is call(GET => "/v1/customers/$cus")->{status}, 500, 'times 0: fails' for 1 .. 3;
    $s->clear_rules;
    is call(GET => "/v1/customers/$cus")->{status}, 200, 'clear_rules';
};

subtest 'rules: delay, stall, after' => sub {
    my $cus = new_customer();

    $s->fail(path => '^/v1/customers/', delay => 0.4);
    my $r = call(GET => "/v1/customers/$cus");
    is $r->{status}, 200, 'delayed real answer';
    cmp_ok $r->{elapsed}, '>=', 0.4, '... after the delay';

    # while one request waits, others are served; its key is held
    $s->fail(method => 'POST', path => '^/v1/customers$', delay => 0.6);
    my $body = form(email => 'slow@acme.test');
    my $slow = raw_send(raw_request(POST => '/v1/customers', body => $body,
        headers => { 'Idempotency-Key' => 'D1' }));
    sleep 0.1;
    $r = call(GET => "/v1/customers/$cus");
    is $r->{status}, 200, 'another request is served meanwhile';
    cmp_ok $r->{elapsed}, '<', 0.4, '... at once';
    $r = call(POST => '/v1/customers', body => $body, idem('D1'));
    is_error($r, 409, { type => 'idempotency_error', code => 'idempotency_key_in_use',
        message => qr/another in-progress request .*: D1\./ }, 'same key meanwhile');
    is $r->{headers}{'stripe-should-retry'}, 'true', '... worth a retry';
    my $answer = raw_read($slow);
    like $answer, qr{^HTTP/1\.1 200 OK\r\n}, 'the slow request succeeds';
    my ($id) = $answer =~ /"id": "(cus_\w+)"/;
    $r = call(POST => '/v1/customers', body => $body, idem('D1'));
    is $r->{json}{id}, $id, 'then its key replays it';
    is $r->{headers}{'idempotent-replayed'}, 'true', '... as a replay';

    $s->fail(method => 'POST', path => '^/v1/invoices$', stall => 1);
    my $n = count('invoice');
    $r = post('/v1/invoices', [ customer => $cus ], timeout => 0.5);
    is $r->{status}, 599, 'stalled: the client times out';
    cmp_ok $r->{elapsed}, '<', 2, '... on its own timeout';
    is count('invoice'), $n, '... and nothing was done';
    is $s->requests->[-1]{status}, undef, '... and nothing answered';
    $r = post('/v1/invoices', [ customer => $cus ]);
    is $r->{status}, 200, 'the next request is served';
    my $inv = $r->{json}{id};

    $s->fail(method => 'POST', path => '^/v1/invoiceitems$', status => 500, after => 1);
    my @item = (customer => $cus, invoice => $inv, currency => 'usd', amount => 700);
    $r = post('/v1/invoiceitems', \@item, idem('A1'));
    is $r->{status}, 500, 'after: the answer is a 500';
    my $items = $s->objects('invoiceitem');
    is $items->[-1]{amount}, 700, '... but the item was created';
    is call(GET => "/v1/invoices/$inv")->{json}{amount_due}, 700, '... on the invoice';
    $r = post('/v1/invoiceitems', \@item, idem('A1'));
    is $r->{status}, 200, 'the retry succeeds';
    is $r->{headers}{'idempotent-replayed'}, 'true', '... replayed';
    is $r->{json}{id}, $items->[-1]{id}, '... the same item';
    is count('invoiceitem'), scalar @$items, '... no second one';

    $s->fail(path => '/finalize$', stall => 1, after => 1);
    $r = post("/v1/invoices/$inv/finalize", [], idem('A2'), timeout => 0.5);
    is $r->{status}, 599, 'after + stall: no answer';
    is call(GET => "/v1/invoices/$inv")->{json}{status}, 'open', '... but finalized';
    $r = post("/v1/invoices/$inv/finalize", [], idem('A2'));
    is $r->{status}, 200, 'the retry gets the finalized invoice';
    is $r->{json}{status}, 'open', '... open';
};

subtest 'HTTP' => sub {
    my $cus = new_customer();

    my $answer = raw_read(raw_send(raw_request(GET => "/v1/customers/$cus",
        http => 'HTTP/1.0')));
    like $answer, qr{^HTTP/1\.1 200 OK\r\n}, 'HTTP/1.0, as nginx proxies';
    like $answer, qr{\r\nConnection: close\r\n}i, '... and the connection closed';

    my $body = form(email => 'chunked@acme.test');
    my $req = raw_request(POST => '/v1/customers');
    $req =~ s/Content-Length: \d+\r\n/Transfer-Encoding: chunked\r\n/;
    $req .= sprintf("%x\r\n%s\r\n", 7, substr($body, 0, 7))
        . sprintf("%x\r\n%s\r\n", length($body) - 7, substr($body, 7)) . "0\r\n\r\n";
    $answer = raw_read(raw_send($req));
    like $answer, qr/"email": "chunked\@acme\.test"/, 'chunked body';

    my $keep = raw_request(GET => "/v1/customers/$cus") =~ s/Connection: close\r\n//r;
    $answer = raw_read(raw_send($keep . raw_request(GET => "/v1/customers/$cus")));
    my @answers = $answer =~ m{^HTTP/1\.1 200 OK}mg;
    is scalar @answers, 2, 'two pipelined requests on a kept-alive connection';

    $answer = raw_read(raw_send("NONSENSE\r\n\r\n"));
    like $answer, qr{^HTTP/1\.1 400 }, 'malformed request';
};

subtest 'requests' => sub {
    $s->reset;
    my $r = post('/v1/customers', [ name => 'Zoë & Co', email => 'z@acme.test',
        'metadata[billing_subscription]' => 'sub-42' ], idem('Q1'));
    my $cus = $r->{json}{id};
    is $r->{json}{name}, 'Zoë & Co', 'UTF-8 and escapes decoded';
    call(GET => "/v1/customers/$cus", params => [ 'expand[]' => 'tax' ]);
    $s->objects('customer');

    my $reqs = $s->requests;
    is scalar @$reqs, 2, 'two API requests; control requests are not recorded';
    my ($post, $get) = @$reqs;
    is $post->{method}, 'POST', 'method';
    is $post->{path}, '/v1/customers', 'path';
    is $post->{status}, 200, 'status';
    is $post->{request_id}, $r->{headers}{'request-id'}, 'request_id';
    ok abs($post->{time} - time) < 5 && $post->{time} =~ /\./, 'time (float)';
    is $post->{headers}{'idempotency-key'}, 'Q1', 'headers, lowercased';
    is $post->{headers}{authorization}, "Bearer $KEY", 'Authorization';
    is $post->{headers}{'stripe-version'}, $VERSION, 'Stripe-Version';
    like $post->{body}, qr/metadata%5Bbilling_subscription%5D=sub-42/, 'raw body';
    is_deeply $post->{params}, { name => 'Zoë & Co', email => 'z@acme.test',
        'metadata[billing_subscription]' => 'sub-42' }, 'flat params';
    is_deeply $post->{nested}, { name => 'Zoë & Co', email => 'z@acme.test',
        metadata => { billing_subscription => 'sub-42' } }, 'nested params';
    is $get->{query}, 'expand%5B%5D=tax', 'query';
    is_deeply $get->{nested}, { expand => ['tax'] }, 'arrays';
};

subtest 'requests: executed, replayed, dropped' => sub {
    $s->reset;
    my $flags = sub {
        my ($rec) = @_;
        return join ' ', $rec->{status} // 'none',
            map { JSON::PP::is_bool($rec->{$_}) ? ($rec->{$_} ? $_ : "!$_") : "$_?" }
            qw(executed replayed dropped);
    };

    my $r = post('/v1/customers', [ email => 'e@acme.test' ], idem('F1'));
    my $cus = $r->{json}{id};
    post('/v1/customers', [ email => 'e@acme.test' ], idem('F1'));
    post('/v1/customers', [ email => 'e@acme.test', foo => 1 ], idem('F2'));
    post('/v1/customers', [ email => 'other@acme.test' ], idem('F1'));
    $s->fail(method => 'POST', path => '^/v1/customers$', status => 500);
    post('/v1/customers', [ email => 'e@acme.test' ], idem('F3'));
    $s->fail(method => 'POST', path => '^/v1/customers$', status => 500, after => 1);
    post('/v1/customers', [ email => 'e@acme.test' ], idem('F4'));
    my $inv = new_invoice($cus);
    post("/v1/invoices/$inv/finalize", []);
    post("/v1/invoices/$inv/finalize", []);
    call(GET => "/v1/invoices/$inv");

    my @got = map { $flags->($_) } @{ $s->requests };
    is_deeply \@got, [
        '200 executed !replayed !dropped',      # created
        '200 !executed replayed !dropped',      # the same key again
        '400 !executed !replayed !dropped',     # refused by the checks
        '400 !executed !replayed !dropped',     # the key with other parameters
        '500 !executed !replayed !dropped',     # a failure rule
        '500 executed !replayed !dropped',      # ... with after
        '200 executed !replayed !dropped',      # the invoice
        '200 executed !replayed !dropped',      # finalized
        '400 executed !replayed !dropped',      # not a draft any more
        '200 executed !replayed !dropped',      # a GET
    ], 'executed, replayed, dropped' or diag explain \@got;

    # a client that leaves while its request is delayed: Stripe still
    # does it; the answer is dropped
    $s->reset;
    $s->fail(method => 'POST', path => '^/v1/customers$', delay => 0.5);
    my $body = form(email => 'gone@acme.test');
    my $sock = raw_send(raw_request(POST => '/v1/customers', body => $body,
        headers => { 'Idempotency-Key' => 'G1' }));
    ok wait_until(sub { @{ $s->requests } == 1 }, 3), 'the delayed request arrived';
    is $flags->($s->requests->[0]), 'none !executed !replayed !dropped',
        '... not processed yet: no status, every flag false';
    close $sock;
    ok wait_until(sub { defined $s->requests->[0]{status} }, 3), 'processed after its delay';
    is $flags->($s->requests->[0]), '200 executed !replayed dropped',
        '... executed, the answer dropped';
    is count('customer'), 1, '... the customer was created';
    $r = call(POST => '/v1/customers', body => $body, idem('G1'));
    is $r->{headers}{'idempotent-replayed'}, 'true', 'its key replays it';
    is $r->{json}{id}, $s->objects('customer')->[0]{id}, '... the same customer';
    is $flags->($s->requests->[1]), '200 !executed replayed !dropped', '... replayed';

    # a stalled request whose client leaves is never answered
    $s->fail(method => 'POST', path => '^/v1/customers$', stall => 1);
    $sock = raw_send(raw_request(POST => '/v1/customers', body => $body,
        headers => { 'Idempotency-Key' => 'G2' }));
    ok wait_until(sub { @{ $s->requests } == 3 }, 3), 'a stalled request arrived';
    close $sock;
    sleep 0.2;
    is $flags->($s->requests->[2]), 'none !executed !replayed !dropped',
        '... never processed, never answered';
};

subtest 'reset' => sub {
    my $cus = new_customer();
    post('/v1/customers', [ email => 'k@acme.test' ], idem('Z1'));
    $s->fail(path => '^/v1/invoices', status => 500, times => 0);
    $s->reset;
    is_deeply $s->requests, [], 'no requests';
    is_deeply [ map { count($_) } qw(customer invoice invoiceitem) ], [ 0, 0, 0 ],
        'no objects';
    is call(GET => '/v1/invoices/in_x')->{status}, 404, 'no rules';
    my $r = post('/v1/customers', [ email => 'other@acme.test' ], idem('Z1'));
    is $r->{status}, 200, 'no idempotency keys';
};

subtest 'stop' => sub {
    my $other = StripeMock->start;
    my ($pid, $port) = ($other->pid, $other->port);
    ok port_open($port), 'a second one listens';
    $other->stop;
    ok !alive($pid), 'stopped';
    ok !port_open($port), 'port closed';
    undef $other;
};

subtest 'exits when its parent dies' => sub {
    pipe(my $from, my $to) or die "pipe: $!";
    my $parent = fork // die "fork: $!";
    if ($parent == 0) {
        close $from;
        my $mock = eval { StripeMock->start(dir => $s->dir) };
        syswrite $to, $mock ? $mock->pid . ' ' . $mock->port . "\n" : "failed: $@\n";
        sleep 30;
        POSIX::_exit(0);
    }
    close $to;
    my $line = <$from> // '';
    my ($pid, $port) = $line =~ /^(\d+) (\d+)$/ or diag $line;
    ok $pid && port_open($port), 'started by a child process';

    kill 'KILL', $parent;
    waitpid $parent, 0;
    ok wait_until(sub { !alive($pid) && !port_open($port) }, 3),
        'gone soon after the parent was killed';
};

my $pid = $s->pid;
$s->stop;
ok !alive($pid), 'stopped';

done_testing;
