# POST subscriptions when the marketplace backend goes away in the middle
# of the Stripe sequence (1. POST /v1/customers, 2. POST /v1/invoices,
# 3. POST /v1/invoiceitems, 4. POST /v1/invoices/{id}/finalize).
#
# Stripe is slow at one step; the backend closes its connection while
# that step's call is at Stripe (proxy_ignore_client_abort is left at its
# default, off). The sequence must still complete on its own, at every
# step: Stripe ends up with one customer, one finalized invoice with one
# item, finalized once; Redis, GET subscriptions/{id} and the gate (402
# with a pay_url) show it; the same request sent again answers 200 with
# the same invoice and sends nothing to Stripe. Before the fix the
# sequence stopped where the client left: a draft (or no) invoice at
# Stripe, a subscription without an invoice, and the gate answering 402
# with "pay_url": null until the request was sent again.
#
# Run twice: one worker, the client closing with a FIN; two workers with
# billing_cache, the client closing with a RST, and the gate asked while
# the sequence is still under way (its cached answer must not outlive the
# completion). Plus, each time, a client that waits (201) as control,
# and (two workers) a client that goes away and sends the request again
# at once, racing the completion.

use strict;
use warnings;

use IO::Select;
use JSON::PP;
use Socket qw(SOL_SOCKET SO_LINGER);
use Test::More;
use Time::HiRes qw(time sleep);

use BillingTest qw(:all);
use StripeMock;

my $DELAY = 1.5;        # how long Stripe takes at the step under test
my $DONE_WITHIN = 15;   # how long the sequence may take to complete alone
my $PORTAL = 'https://billing.stripe.com/p/login/test_123';

my %STEP = (
    customer => '^/v1/customers$',
    invoice  => '^/v1/invoices$',
    item     => '^/v1/invoiceitems$',
    finalize => '^/v1/invoices/[^/]+/finalize$',
);
my @STEPS = qw(customer invoice item finalize);

my $JSON = JSON::PP->new->utf8->canonical;

# the suite under way
my ($t, $s, $TOKEN, $KEY, $RUN, @ANSWERS, $ABORTS);
my $N = 0;


# ---------------------------------------------------------------------
# helpers

sub fresh {
    my ($org) = @_;
    $N++;
    return ("sub-ab$N", $org // "org-ab$N");
}


sub raw_post { raw_json_post('/billing/subscriptions', $TOKEN, $_[0]) }

sub post_sub {
    my ($req) = @_;
    my $r = $t->http('POST', '/billing/subscriptions',
        headers => { Authorization => "Bearer $TOKEN",
                     'Content-Type' => 'application/json' },
        body => $JSON->encode($req), timeout => 20);
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

sub gate {
    my ($id) = @_;
    my $r = $t->http('GET', '/product/resource',
        headers => { 'X-Subscription-Id' => $id });
    push @ANSWERS, $r;
    return $r;
}

sub posts_at_stripe { scalar grep { $_->{method} eq 'POST' } @{ $s->requests } }

sub objects_count {
    return join ' ', map { scalar @{ $s->objects($_) } }
        qw(customer invoice invoiceitem);
}


# the requests Stripe received for a step of a subscription's sequence
sub step_requests {
    my ($step, $id, $org) = @_;
    my @posts = grep { $_->{method} eq 'POST' } @{ $s->requests };
    if ($step eq 'customer') {
        return [ grep { $_->{path} eq '/v1/customers'
            && ($_->{params}{'metadata[consumer_org]'} // '') eq $org } @posts ];
    }
    if ($step eq 'invoice') {
        return [ grep { $_->{path} eq '/v1/invoices'
            && ($_->{params}{'metadata[billing_subscription]'} // '') eq $id } @posts ];
    }
    my $inv = $s->invoices_of($id)->[0] or return [];
    if ($step eq 'item') {
        return [ grep { $_->{path} eq '/v1/invoiceitems'
            && ($_->{params}{invoice} // '') eq $inv->{id} } @posts ];
    }
    return [ grep { $_->{path} eq "/v1/invoices/$inv->{id}/finalize" } @posts ];
}

# what is missing for the sequence to be complete, '' when nothing is
sub missing {
    my ($id) = @_;
    my $inv = $s->invoices_of($id)->[0] or return 'no invoice at Stripe';
    return "the invoice is $inv->{status} at Stripe" unless $inv->{status} eq 'open';
    return 'no finalize answered 200 at Stripe'
        unless grep { ($_->{status} // 0) == 200 } @{ step_requests(finalize => $id) };
    my $sub = $t->redis_hash("billing:sub:$id");
    return 'no initial_invoice in Redis'
        unless ($sub->{initial_invoice} // '') eq $inv->{id};
    my $h = $t->redis_hash("billing:invoice:$inv->{id}");
    return 'the invoice is ' . ($h->{status} // 'missing') . ' in Redis'
        unless ($h->{status} // '') eq 'open';
    return 'no hosted_invoice_url in Redis' unless $h->{hosted_invoice_url};
    return '';
}

# everything a complete sequence leaves behind, and nothing twice
sub is_complete {
    my ($id, $org, $name) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;

    # Stripe
    my $cus = $s->customers_of($org);
    is scalar @$cus, 1, "$name: one customer at Stripe for $org";
    is $cus->[0] && $cus->[0]{email}, "ops\@$org.test", "$name: ... with the org's details";
    my $invs = $s->invoices_of($id);
    is scalar @$invs, 1, "$name: one invoice at Stripe";
    my $inv = $invs->[0] || {};
    is $inv->{status}, 'open', "$name: ... finalized (open)";
    is $inv->{customer}, $cus->[0] && $cus->[0]{id}, "$name: ... of the org's customer";
    my $items = $s->items_of($id);
    is scalar @$items, 1, "$name: one invoice item on it";
    is $items->[0] && $items->[0]{amount}, 1500, "$name: ... of the base price";
    my $fin = step_requests(finalize => $id);
    is scalar(grep { $_->{executed} && ($_->{status} // 0) == 200 } @$fin), 1,
        "$name: finalized once at Stripe";
    my %keys = map { ($_->{headers}{'idempotency-key'} // '') => 1 } @$fin;
    ok @$fin && keys %keys == 1 && !$keys{''},
        "$name: every finalize call with one Idempotency-Key";

    # Redis
    my $sub = $t->redis_hash("billing:sub:$id");
    is $sub->{state}, 'pending', "$name: Redis: pending";
    is $sub->{initial_invoice}, $inv->{id}, "$name: Redis: initial_invoice";
    is $sub->{customer_id}, $inv->{customer}, "$name: Redis: customer_id";
    my $h = $t->redis_hash("billing:invoice:" . ($inv->{id} // 'none'));
    is $h->{status}, 'open', "$name: Redis: the invoice open";
    ok $h->{hosted_invoice_url}
        && $h->{hosted_invoice_url} eq ($inv->{hosted_invoice_url} // ''),
        "$name: Redis: Stripe's hosted_invoice_url";
    is_deeply [ $t->redis('ZRANGE', "billing:sub:$id:invoices", 0, -1) ],
        [ [ $inv->{id} // 'none' ] ], "$name: Redis: one invoice of the subscription";

    # GET subscriptions/{id}
    my $g = get_sub($id);
    is $g->{status}, 200, "$name: GET 200";
    my $gi = $g->{json} && ref $g->{json}{invoices} eq 'ARRAY' ? $g->{json}{invoices} : [];
    is scalar @$gi, 1, "$name: GET shows one invoice";
    is $gi->[0] && $gi->[0]{id}, $inv->{id}, "$name: GET: Stripe's invoice";
    is $gi->[0] && $gi->[0]{status}, 'open', "$name: GET: open";
    is $gi->[0] && $gi->[0]{hosted_invoice_url}, $inv->{hosted_invoice_url},
        "$name: GET: hosted_invoice_url";

    # the gate (a change made in Redis reaches every cache within 1 s)
    my $r = wait_until(sub {
        my $r = gate($id);
        return $r->{json} && $r->{json}{pay_url} ? $r : undef;
    }, 3, 0.1) || gate($id);
    is $r->{status}, 402, "$name: gate 402";
    my $j = ref $r->{json} eq 'HASH' ? $r->{json} : {};
    is $j->{error} && $j->{error}{code}, 'payment_required', "$name: gate: payment_required";
    is $j->{invoice}, $inv->{id}, "$name: gate: the invoice";
    ok defined $j->{pay_url} && $j->{pay_url} eq ($inv->{hosted_invoice_url} // ''),
        "$name: gate: pay_url is the hosted_invoice_url"
        or diag 'gate: ' . ($r->{content} // '');
    is $j->{portal_url}, $PORTAL, "$name: gate: portal_url";

    return $inv;
}

# the same request again: 200, the same invoice, nothing new at Stripe
sub is_resent {
    my ($id, $org, $inv, $name) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    my ($posts, $objects) = (posts_at_stripe(), objects_count());
    my $r = post_sub(subscription_request($id, $org));
    is $r->{status}, 200, "$name, sent again: 200" or diag $r->{content};
    my $ri = $r->{json} && ref $r->{json}{invoice} eq 'HASH' ? $r->{json}{invoice} : {};
    is $ri->{id}, $inv->{id}, "$name, sent again: the same invoice";
    is $ri->{status}, 'open', "$name, sent again: open";
    is $ri->{hosted_invoice_url}, $inv->{hosted_invoice_url},
        "$name, sent again: hosted_invoice_url";
    is posts_at_stripe(), $posts, "$name, sent again: nothing sent to Stripe";
    is objects_count(), $objects, "$name, sent again: nothing new at Stripe";
}

sub close_client {
    my ($sock, $rst) = @_;
    setsockopt($sock, SOL_SOCKET, SO_LINGER, pack('ii', 1, 0)) if $rst;
    close $sock;
}

sub control_case {
    my $name = "$RUN: client waits";
    my ($id, $org) = fresh();
    my $r = post_sub(subscription_request($id, $org));
    is $r->{status}, 201, "$name: 201" or diag $r->{content};
    my $inv = is_complete($id, $org, $name);
    is $r->{json} && $r->{json}{invoice}{id}, $inv->{id}, "$name: the answer's invoice";
    is_resent($id, $org, $inv, $name);
    return $org;
}

# the client leaves while Stripe works on $step; resend: send the same
# request again at once instead of waiting for the completion
sub abort_case {
    my ($step, %o) = @_;
    my $name = "$RUN: client gone at $step" . ($o{resend} ? ', sent again at once' : '');
    my ($id, $org) = fresh($step eq 'customer' ? undef : $o{org});

    $s->fail(method => 'POST', path => $STEP{$step}, delay => $DELAY);
    my $h = $t->raw_http_send(raw_post(subscription_request($id, $org)));
    my $at_stripe = wait_until(sub { @{ step_requests($step, $id, $org) } }, 10);
    ok $at_stripe, "$name: the $step call reached Stripe";
    ok !IO::Select->new($h->{sock})->can_read(0),
        "$name: nothing answered before the client left";
    close_client($h->{sock}, $o{rst});
    $ABORTS++;
    my $left = time;
    $s->clear_rules;

    # the gate while the sequence is under way (with billing_cache its
    # answer is cached; the completion must drop it)
    my $early = gate($id);
    note "$name: gate meanwhile: $early->{status} " . ($early->{content} // '');

    my $r;
    if ($o{resend}) {
        $r = post_sub(subscription_request($id, $org));
        ok $r->{status} == 200 || $r->{status} == 201,
            "$name: the request sent again answers 200 or 201"
            or diag "$r->{status} " . ($r->{content} // '');
    }

    my $done = wait_until(sub { missing($id) eq '' }, $DONE_WITHIN, 0.1);
    ok $done, "$name: the sequence completed on its own" or diag missing($id);
    my $took = time - $left;

    my $calls = step_requests($step, $id, $org);
    note sprintf '%s: complete %.2f s after the client left; %d %s call(s): %s',
        $name, $took, scalar @$calls, $step, join ', ', map {
            ($_->{status} // 'none') . ($_->{executed} ? ' executed' : '')
            . ($_->{replayed} ? ' replayed' : '') . ($_->{dropped} ? ' dropped' : '')
        } @$calls;

    my $inv = is_complete($id, $org, $name);
    is $r->{json} && $r->{json}{invoice}{id}, $inv->{id},
        "$name: the answer to the request sent again has the invoice" if $r;
    is_resent($id, $org, $inv, $name);
}

sub secrets_checks {
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    $t->stop_nginx;
    my $log = $t->error_log;
    like $log, qr/\[debug\]/, "$RUN: error.log is at debug level";
    my $answers = answers_text(@ANSWERS);
    for my $secret ([ 'Stripe key', $KEY ],
                    [ 'Stripe key without prefix', substr($KEY, 8) ]) {
        ok index($log, $secret->[1]) < 0, "$RUN: $secret->[0] not in error.log";
        ok index($answers, $secret->[1]) < 0, "$RUN: $secret->[0] not in any answer";
    }
    ok index($answers, $TOKEN) < 0, "$RUN: API token not in any answer";
    my @token = grep { index($_, $TOKEN) >= 0 } split /\n/, $log;
    my @other = grep {
        !/\[debug\] \d+#\d+: \*\d+ http header: "Authorization: Bearer \Q$TOKEN\E"$/
    } @token;
    ok !@other, "$RUN: the API token only in nginx core's \"http header:\" lines"
        or diag join "\n", @other[0 .. ($#other > 10 ? 10 : $#other)];
    unlike $log, qr/worker process \d+ exited (?:with code [1-9]|on signal)/,
        "$RUN: no worker process died";
    my $gone = () = ($t->read_file('access.log') // '') =~ m{"POST /billing/subscriptions [^"]*" 499 }g;
    # the client's request ends when it goes (the job goes on without it)
    is $gone, $ABORTS, "$RUN: each request whose client left is logged 499";
}


# ---------------------------------------------------------------------
# the suites

sub suite {
    my (%o) = @_;
    ($RUN, @ANSWERS) = ($o{name});
    $ABORTS = 0;

    $t = BillingTest->new;
    $TOKEN = 'api-' . random_id('', 32);
    $KEY = 'sk_test_' . random_id('', 40);
    $t->write_file('api.token', "$TOKEN\n");
    $t->write_file('stripe.key', "$KEY\n");
    $s = StripeMock->start(dir => $t->dir, key => $KEY);

    $t->start_redis;
    $t->start_nginx(<<'EOF', STRIPE_PORT => $s->port, workers => $o{workers},
    billing_redis 127.0.0.1:%%REDIS_PORT%% timeout=1s;
    billing_stripe_key_file %%DIR%%/stripe.key;
    billing_api_token_file %%DIR%%/api.token;
    billing_portal_url https://billing.stripe.com/p/login/test_123;
    %%CACHE%%

    server {
        listen 127.0.0.1:%%PORT%% reuseport;

        location /billing/ { billing_api; }

        location /product/ {
            billing_gate $http_x_subscription_id;
            return 200 "product\n";
        }

        location /_billing_stripe/ {
            internal;
            proxy_pass http://127.0.0.1:%%STRIPE_PORT%%/;
            proxy_read_timeout 5s;
            # proxy_ignore_client_abort: left at its default, off
        }
    }
EOF
        CACHE => $o{cache} ? 'billing_cache zone=billing:1m ttl=60s;' : '');

    my $org = control_case();

    # after the first step, the subscriptions of an org that has its
    # customer already (one worker) or of new orgs (two workers: every
    # step runs each time)
    for my $step (@STEPS) {
        abort_case($step, rst => $o{rst}, org => $o{known_org} ? $org : undef);
    }
    abort_case($_, rst => $o{rst}, resend => 1) for @{ $o{resend} || [] };

    is scalar @{ $s->customers_of($org) }, 1, "$RUN: still one customer for $org";

    secrets_checks();
    $t->done;
    $s->stop;
}

suite(name => '1 worker', workers => 1, known_org => 1);
suite(name => '2 workers, cache, RST', workers => 2, cache => 1, rst => 1,
    resend => [ qw(invoice finalize) ]);

done_testing;
