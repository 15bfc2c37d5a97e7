# End to end, on two nodes of two workers each sharing one Redis: a
# subscription created through the API and paid by webhook is metered
# under load over several 4-second periods, its period-end invoices are
# issued by the scheduler, and it is cancelled under load. Every answer
# below 400 that a client got is billed exactly once over all its
# invoices (period and final), requests answered after the cancellation
# are refused and bill nothing, and the final invoice waited for both
# nodes' counts.

use strict;
use warnings;

use JSON::PP;
use Test::More;
use Time::HiRes qw(time sleep);

use BillingTest qw(:all);
use StripeMock;

my $t1 = BillingTest->new;
$t1->start_redis;
my $t2 = BillingTest->new(redis_port => $t1->redis_port);

my $f = $t1->billing_files;
$t2->billing_files(%$f);
my $s = StripeMock->start(dir => $t1->dir, key => $f->{key});

my $CONF = <<'EOF';
    billing_redis 127.0.0.1:%%REDIS_PORT%% timeout=1s;
    billing_stripe_webhook_secret_file %%DIR%%/whsec;
    billing_stripe_key_file %%DIR%%/stripe.key;
    billing_api_token_file %%DIR%%/api.token;
    billing_cache zone=billing:1m ttl=10s;
    billing_stripe_timeout 5s;
    billing_meter_flush 300ms;
    billing_invoice_delay 2s;

    server {
        listen 127.0.0.1:%%PORT%%;

        location = /stripe/webhook { billing_webhook; }
        location /billing/ { billing_api; }

        location /product/ {
            billing_gate $http_x_subscription_id;
            return 200 "ok\n";
        }

        location /_billing_stripe/ {
            internal;
            proxy_pass http://127.0.0.1:%%STRIPE_PORT%%/;
            proxy_read_timeout 2s;
        }
    }
EOF

$t1->start_nginx($CONF, STRIPE_PORT => $s->port, workers => 2);
$t2->start_nginx($CONF, STRIPE_PORT => $s->port, workers => 2);

my $P = 4;
my $ID = 'sub-e2e';

my $r = $t1->api('POST', 'subscriptions',
    subscription_request($ID, 'org-e2e', metering_period => "$P"));
is $r->{status}, 201, 'created' or diag $r->{content};
my $w = $t2->webhook(invoice_event(type => 'invoice.paid',
    invoice_id => $r->{json}{invoice}{id}, subscription => $ID,
    kind => 'initial', invoice => { amount_due => 1500, currency => 'usd' }));
is $w->{status}, 200, 'paid';

my $load = $t1->load_start('/product/x', clients => 4,
    ports => [ $t1->port, $t2->port ], subs => [$ID], pause => 0.005);

# two periods end under load and are invoiced
ok wait_until(sub {
    (grep { ($_->{metadata}{billing_kind} // '') eq 'period' }
        @{ $s->invoices_of($ID) }) >= 2 }, 30),
    'two period-end invoices issued under load';

my $c = $t2->api('DELETE', "subscriptions/$ID");
is $c->{status}, 200, 'cancelled under load' or diag $c->{content};
is $c->{json}{invoice}{kind}, 'final', '... with the final invoice';

sleep 1.5;
my $answers = $t1->load_stop($load);

# both nodes' gates closed within a second of the cancellation
my $cancel = $t1->redis('HGET', "billing:sub:$ID", 'cancelled_at_ms') / 1000;
for my $port ($t1->port, $t2->port) {
    my @late = grep { $_->{port} == $port && $_->{status} == 200
        && $_->{time} > $cancel + 1 } @$answers;
    is scalar @late, 0, "node on $port: nothing served a second after the "
        . 'cancellation';
    ok scalar(grep { $_->{port} == $port && $_->{status} == 403 } @$answers),
        '... refused there';
}
my $served = grep { $_->{status} < 400 } @$answers;
my $refused = grep { $_->{status} == 403 } @$answers;
my @other = grep { $_->{status} >= 400 && $_->{status} != 403 } @$answers;
cmp_ok $served, '>', 100, "$served answers 200";
cmp_ok $refused, '>', 0, "$refused refused after the cancellation";
is scalar @other, 0, 'no other answer';

# every unit served billed once: on the period invoices and the finals
my $billed = sub {
    my %items;
    push @{ $items{ $_->{invoice} } }, $_ for @{ $s->objects('invoiceitem') };
    my $n = 0;
    for my $inv (@{ $s->invoices_of($ID) }) {
        next if ($inv->{metadata}{billing_kind} // '') eq 'initial';
        $n += $_->{quantity} for grep { $_->{description} =~ /^Usage/ }
            @{ $items{ $inv->{id} } || [] };
    }
    return $n;
};
ok wait_until(sub { $billed->() == $served }, 20),
    'every unit served is billed once' or diag $billed->() . " != $served";
sleep 3;
is $billed->(), $served, '... and stays so';

my @finals = grep { ($_->{metadata}{billing_kind} // '') eq 'final' }
    @{ $s->invoices_of($ID) };
ok @finals >= 1 && @finals <= 2, 'one final invoice (and one more at most '
    . 'for units that came after it)';
my %ps;
my $dup = grep { $ps{ $_->{metadata}{billing_period_start} }++ }
    grep { ($_->{metadata}{billing_kind} // '') eq 'period' }
    @{ $s->invoices_of($ID) };
is $dup, 0, 'no period invoiced twice';

my $g = $t1->api('GET', "subscriptions/$ID");
my $sum = 0;
$sum += $_->{units} // 0 for @{ $g->{json}{invoices} };
is $sum, $served, 'GET: the invoices\' units add up to what was served';

$s->stop;
$_->done for $t1, $t2;
done_testing;
