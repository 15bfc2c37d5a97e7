# billing_webhook against Redis that needs a password, another db and
# another prefix; Redis stopped, restarted and frozen; a unix socket;
# secrets never logged.

use strict;
use warnings;

use Test::More;
use BillingTest qw(:all);
use Time::HiRes qw(time sleep);


my $SECRET    = 'whsec_' . random_id('', 32);
my $PASSWORD  = 'redis-' . random_id('', 24);
my $STRIPE_KEY = 'rk_test_' . random_id('', 40);

my $t = BillingTest->new;

$t->write_file('whsec', "$SECRET\n");
$t->write_file('redis.pass', "$PASSWORD\n");
$t->write_file('stripe.key', "$STRIPE_KEY\n");
$t->secrets($SECRET);

$t->start_redis(requirepass => $PASSWORD);
$t->start_nginx(<<'EOF');
    billing_redis 127.0.0.1:%%REDIS_PORT%% db=2 password_file=%%DIR%%/redis.pass
                  prefix=custom: connect_timeout=1s timeout=1s;
    billing_stripe_webhook_secret_file %%DIR%%/whsec;
    billing_stripe_key_file %%DIR%%/stripe.key;
    billing_stripe_api_version 2022-11-15;
    billing_scheduler off;
    billing_reconcile off;

    server {
        listen 127.0.0.1:%%PORT%%;

        location = /stripe/webhook {
            billing_webhook;
            client_max_body_size 64k;
        }

        location = /other {
            return 200 "ok\n";
        }
    }
EOF

my $db2 = $t->redis_client(db => 2);
my @answers;        # every answer body, to look for secrets in them

sub hook {
    my $r = $t->webhook(@_);
    push @answers, $r->{content} // '';
    return $r;
}

sub is_status {
    my ($r, $status, $code, $name) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    my $ok = is($r->{status}, $status, "$name: $status");
    if (defined $code) {
        $ok &= is(ref $r->{json} eq 'HASH' ? $r->{json}{error}{code} : undef,
            $code, "$name: code $code");
    }
    diag("answer: " . ($r->{content} // '')) unless $ok;
    return $ok;
}

# posts a freshly signed $body until it is answered 200 or $timeout
sub hook_until_ok {
    my ($body, $timeout) = @_;
    my $r;
    my $start = time;
    wait_until(sub {
        $r = hook($body, timeout => 3);
        $r->{status} == 200;
    }, $timeout, 0.2);
    $r->{waited} = time - $start;
    return $r;
}


# ---------------------------------------------------------------------
# password, db, prefix

{
    my $inv = random_id('in_', 20);
    my $sub = 'sub-' . random_id('', 8);
    $db2->cmd('HSET', "custom:sub:$sub", 'state', 'pending', 'initial_invoice', $inv);

    my $r = hook(invoice_event(type => 'invoice.paid', invoice_id => $inv,
        subscription => $sub, kind => 'initial'));
    is_status($r, 200, undef, 'paid with password, db 2, prefix custom:');

    is $db2->cmd('HGET', "custom:invoice:$inv", 'status'), 'paid',
        'invoice recorded in db 2 under custom:';
    is $db2->cmd('HGET', "custom:sub:$sub", 'state'), 'active',
        'subscription under custom: activated';
    is $t->redis('DBSIZE'), 0, 'nothing written to db 0';
    my @keys = @{ $db2->cmd('KEYS', '*') };
    is_deeply [ grep { !/^custom:/ } @keys ], [], 'every key in db 2 starts with custom:'
        or diag "@keys";
    is $db2->cmd('EXISTS', "billing:invoice:$inv"), 0, 'no billing: key';
}


# ---------------------------------------------------------------------
# Redis stopped, then back

{
    my $inv = random_id('in_', 20);
    my $b = invoice_event(type => 'invoice.finalized', invoice_id => $inv);

    $t->stop_redis;

    my $r = hook($b, timeout => 5);
    is_status($r, 503, 'billing_unavailable', 'Redis down');
    cmp_ok $r->{elapsed}, '<', 3, 'Redis down: answered within 3 s';
    like $r->{headers}{'content-type'} // '', qr{^application/json},
        'Redis down: JSON answer';

    my $o = $t->http('GET', '/other');
    is $o->{status}, 200, 'other locations work while Redis is down';

    # a second attempt while down is refused as well (no hang, no crash)
    $r = hook($b, timeout => 5);
    is_status($r, 503, 'billing_unavailable', 'Redis still down');

    $t->restart_redis;
    $db2 = $t->redis_client(db => 2);

    $r = hook_until_ok($b, 10);
    is $r->{status}, 200, 'same event accepted after Redis is back'
        or diag "last answer: $r->{status} " . ($r->{content} // '');
    diag sprintf 'recovered after %.1f s', $r->{waited};
    is $db2->cmd('HGET', "custom:invoice:$inv", 'status'), 'open',
        'recorded after reconnect (with AUTH and SELECT again)';
    is $t->redis('DBSIZE'), 0, 'after reconnect still nothing in db 0';
}


# ---------------------------------------------------------------------
# Redis frozen: the webhook times out, the worker does not block

{
    my $inv = random_id('in_', 20);
    my $b = invoice_event(type => 'invoice.paid', invoice_id => $inv);

    # make sure the connection is up before freezing
    my $warm = hook_until_ok(invoice_event(type => 'invoice.finalized',
        invoice_id => random_id('in_', 20)), 10);
    is $warm->{status}, 200, 'connection up before freezing';

    $t->freeze_redis;

    my $sig = stripe_signature_header(secrets => [ $SECRET ], body => $b);
    my $h = $t->raw_http_send("POST /stripe/webhook HTTP/1.1\r\n"
        . "Host: localhost\r\nStripe-Signature: $sig\r\n"
        . "Content-Type: application/json\r\nContent-Length: " . length($b)
        . "\r\nConnection: close\r\n\r\n$b");

    sleep 0.2;      # the webhook is now waiting for Redis
    my $o = $t->http('GET', '/other', timeout => 3);
    is $o->{status}, 200, 'other location answers while Redis is frozen';
    cmp_ok $o->{elapsed}, '<', 0.5, 'other location not delayed by the frozen Redis'
        or diag sprintf '%.3f s', $o->{elapsed};

    my $r = $t->raw_http_read($h, timeout => 6);
    push @answers, $r->{content} // '';
    is $r->{status}, 503, 'frozen Redis: 503' or diag $r->{raw};
    is $r->{json} && $r->{json}{error}{code}, 'billing_unavailable',
        'frozen Redis: billing_unavailable';
    diag sprintf 'frozen Redis: answered after %.2f s, /other after %.3f s',
        $r->{elapsed}, $o->{elapsed};
    cmp_ok $r->{elapsed}, '>=', 0.8, 'frozen Redis: waited about timeout=1s';
    cmp_ok $r->{elapsed}, '<', 3, 'frozen Redis: not much more than timeout=1s'
        or diag sprintf '%.3f s', $r->{elapsed};

    $t->thaw_redis;

    my $ok = hook_until_ok($b, 10);
    is $ok->{status}, 200, 'accepted again after thaw'
        or diag "last answer: $ok->{status} " . ($ok->{content} // '');
    diag sprintf 'recovered after %.1f s', $ok->{waited};
    is $db2->cmd('HGET', "custom:invoice:$inv", 'status'), 'paid',
        'recorded after thaw';
}


# ---------------------------------------------------------------------
# no secret in any log or answer

{
    # invalid attempts too: they must not echo what they compared
    hook(invoice_event(type => 'invoice.paid'), secrets => [ 'whsec_' . random_id('', 32) ]);
    hook(invoice_event(type => 'invoice.paid'), t => int(time) - 3600);
    hook('not json');

    $t->stop_nginx;
    my %logs = map { $_ => $t->read_file($_) // '' }
        qw(error.log nginx.stderr access.log);
    $logs{answers} = join "\n", @answers;
    ok length $logs{'error.log'} > 1000, 'there is a debug error.log to look at';

    for my $where (sort keys %logs) {
        for my $s ([ 'webhook secret', $SECRET ],
                   [ 'webhook secret without whsec_', substr($SECRET, 6) ],
                   [ 'Redis password', $PASSWORD ],
                   [ 'Stripe key', $STRIPE_KEY ],
                   [ 'Stripe key without rk_test_', substr($STRIPE_KEY, 8) ])
        {
            ok index($logs{$where}, $s->[1]) < 0, "$s->[0] not in $where";
        }
    }
}

$t->done;


# ---------------------------------------------------------------------
# unix socket

{
    my $u = BillingTest->new;
    $u->write_file('whsec', "$SECRET\n");
    $u->secrets($SECRET);
    my $sock = $u->path('redis.sock');
    $u->start_redis(args => [ '--unixsocket', $sock, '--unixsocketperm', '700' ]);
    $u->start_nginx(<<'EOF');
        billing_redis unix:%%DIR%%/redis.sock;
        billing_stripe_webhook_secret_file %%DIR%%/whsec;

        server {
            listen 127.0.0.1:%%PORT%%;
            location = /stripe/webhook { billing_webhook; }
        }
EOF
    my $inv = random_id('in_', 20);
    my $r = $u->webhook(invoice_event(type => 'invoice.voided', invoice_id => $inv));
    is $r->{status}, 200, 'unix socket: 200' or diag $r->{content};
    is $u->redis('HGET', "billing:invoice:$inv", 'status'), 'void',
        'unix socket: recorded under the default prefix';
    $u->done;
}

done_testing;
