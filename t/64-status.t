# billing_status: this node's counters in Prometheus text exposition,
# summed over its workers (two here) and kept across a reload; checked
# with `promtool check metrics` and scraped by a real Prometheus server
# (queried through its HTTP API after a webhook). Counted: webhook
# events by type and outcome, signature rejections by reason, gate
# decisions and cache results, Stripe calls by endpoint and class with
# retries and a latency histogram, invoices issued, metering units
# counted and sent. The handler answers GET and HEAD only, is never
# gated by an inherited billing_gate, and shows no subscription id.
# The Prometheus parts skip with a message where the `prometheus`
# package is missing.

use strict;
use warnings;

use Test::More;
use BillingTest qw(:all);
use StripeMock;
use File::Temp qw(tempfile);
use IO::Socket::INET;
use Time::HiRes qw(time sleep);

my $t = BillingTest->new;
my $f = $t->billing_files;
my $s = StripeMock->start(dir => $t->dir, key => $f->{key});

my $HTTP = <<'EOF';
    billing_redis 127.0.0.1:%%REDIS_PORT%% timeout=1s;
    billing_stripe_webhook_secret_file %%DIR%%/whsec;
    billing_stripe_key_file %%DIR%%/stripe.key;
    billing_api_token_file %%DIR%%/api.token;
    billing_portal_url https://billing.stripe.com/p/login/test_123;
    billing_cache zone=billing:1m ttl=10s;
    billing_meter_flush 200ms;
    billing_stripe_timeout 5s;

    server {
        listen 127.0.0.1:%%PORT%%;

        # everything behind the gate: the module's own locations are not
        billing_gate $http_x_subscription_id;

        location = /stripe/webhook { billing_webhook; }
        location /billing/ { billing_api; }
        location = /metrics { billing_status; }

        location /_billing_stripe/ {
            internal;
            proxy_pass http://127.0.0.1:%%STRIPE_PORT%%/;
        }

        location /api/ {
            return 200 "api\n";
        }

        # decided again after the rewrite: still one decision
        location /again/ {
            rewrite ^ /api/again last;
        }
    }
EOF

$t->start_redis;
$t->start_nginx($HTTP, workers => 2, STRIPE_PORT => $s->port);

# the value of one sample: name and labels as in the exposition
sub metrics {
    my $r = $t->http('GET', '/metrics');
    return ($r, { map { /^(\S+) (\S+)$/ ? ($1 => $2) : () }
                  grep { !/^#/ } split /\n/, $r->{content} // '' });
}

sub metric {
    my ($name) = @_;
    my (undef, $m) = metrics();
    return $m->{$name} // 0;
}

sub wait_metric {
    my ($name, $want) = @_;
    my $got;
    wait_until(sub { ($got = metric($name)) >= $want }, 10);
    return $got;
}

# ---------------------------------------------------------------------
# the exposition

{
    my ($r, $m) = metrics();
    is $r->{status}, 200, 'GET /metrics: 200';
    is $r->{headers}{'content-type'}, 'text/plain; version=0.0.4',
        'Prometheus text format 0.0.4';
    like $r->{content}, qr/^# HELP billing_webhook_events_total .+\n# TYPE billing_webhook_events_total counter$/m,
        'HELP and TYPE';
    like $r->{content}, qr/^# TYPE billing_stripe_call_duration_seconds histogram$/m,
        'a histogram of Stripe latency';
    like $r->{content}, qr/^# TYPE billing_redis_command_duration_seconds histogram$/m,
        'a histogram of Redis latency';
    ok exists $m->{'billing_webhook_events_total{type="invoice.paid",outcome="changed"}'},
        'events by type and outcome, zero included';
    unlike $r->{content}, qr/^billing_[^{ ]*[A-Z]/m, 'names in lower case';
    my @bad = grep { !/^billing_[a-z_]+(?:\{[a-z_]+="[^"]*"(?:,[a-z_]+="[^"]*")*\})? \d+(?:\.\d+)?$/ }
              grep { !/^#/ } split /\n/, $r->{content};
    is_deeply \@bad, [], 'every sample line well formed';

    $r = $t->http('POST', '/metrics', body => 'x');
    is $r->{status}, 405, 'POST /metrics: 405';
    like $r->{headers}{allow} // '', qr/GET/, '... Allow: GET, HEAD';

    $r = $t->http('HEAD', '/metrics');
    is $r->{status}, 200, 'HEAD /metrics: 200';
    is $r->{content} // '', '', '... no body';
}

# ---------------------------------------------------------------------
# what is counted

my $START = int(time) - 5;
$t->redis('HSET', 'billing:sub:act', state => 'active',
    period_start => $START, period => 'month');

{
    my %before = %{ (metrics())[1] };
    my $d = sub { my ($k) = @_; metric($k) - ($before{$k} // 0) };

    # the gate: a miss, then hits; a denial
    is $t->http('GET', '/api/x', headers => { 'X-Subscription-Id' => 'act' })
        ->{status}, 200, 'gated: active' for 1 .. 4;
    is $t->http('GET', '/api/x', headers => { 'X-Subscription-Id' => 'nobody' })
        ->{status}, 403, 'gated: unknown';
    is $t->http('GET', '/api/x')->{status}, 401, 'gated: no id';

    is $d->('billing_gate_decisions_total{decision="allow"}'), 4,
        'decisions: 4 allowed';
    is $t->http('GET', '/again/x', headers => { 'X-Subscription-Id' => 'act' })
        ->{status}, 200, 'gated, rewritten, gated again: 200';
    is $d->('billing_gate_decisions_total{decision="allow"}'), 5,
        'decisions: the rewritten request counted once';
    is $d->('billing_gate_decisions_total{decision="unknown_subscription"}'), 1,
        'decisions: 1 unknown';
    is $d->('billing_gate_decisions_total{decision="subscription_required"}'), 1,
        'decisions: 1 without id';
    my $miss = $d->('billing_gate_cache_total{result="miss"}');
    my $hit = $d->('billing_gate_cache_total{result="hit"}');
    is $miss + $hit, 6, "cache: 6 lookups, the rewritten request once ($miss missed, $hit hit)";
    cmp_ok $miss, '<=', 3, 'cache: at most one miss per worker and id';

    # metering
    is wait_metric('billing_meter_units_counted_total', 5), 5,
        'meter: 5 units counted';
    is wait_metric('billing_meter_units_sent_total', 5), 5,
        'meter: 5 units sent';

    # webhooks: rejected, ignored, changed, unchanged
    my $r = $t->http('POST', '/stripe/webhook', body => '{}');
    is $r->{status}, 400, 'webhook without a signature: 400';
    $r = $t->webhook(invoice_event(type => 'invoice.paid'), secrets => ['whsec_wrong']);
    is $r->{status}, 400, 'webhook signed with another secret: 400';
    $r = $t->webhook(stripe_event(type => 'customer.created',
        object => { id => 'cus_1', object => 'customer' }));
    is $r->{status}, 200, 'customer.created: 200 (ignored)';
    my $ev = invoice_event(type => 'invoice.finalized', invoice_id => 'in_m1',
        subscription => 'act', kind => 'period');
    is $t->webhook($ev)->{status}, 200, 'invoice.finalized: 200';
    is $t->webhook($ev)->{status}, 200, 'the same again: 200';

    is $d->('billing_webhook_rejected_total{reason="no_header"}'), 1,
        'rejected: no header';
    is $d->('billing_webhook_rejected_total{reason="mismatch"}'), 1,
        'rejected: mismatch';
    is $d->('billing_webhook_events_total{type="other",outcome="ignored"}'), 1,
        'events: other, ignored';
    is $d->('billing_webhook_events_total{type="invoice.finalized",outcome="changed"}'), 1,
        'events: finalized, changed';
    is $d->('billing_webhook_events_total{type="invoice.finalized",outcome="unchanged"}'), 1,
        'events: finalized again, unchanged';

    # Stripe: a subscription created (customer, invoice, item, finalize),
    # the invoice failing once with 500 (retried)
    $s->fail(method => 'POST', path => '^/v1/invoices$', status => 500);
    $r = $t->api('POST', 'subscriptions',
        subscription_request('sub-m1', 'org-m1'));
    is $r->{status}, 201, 'POST subscriptions: 201' or diag $r->{content};
    is $d->('billing_stripe_calls_total{endpoint="customers",class="2xx"}'), 1,
        'stripe: customers 2xx';
    is $d->('billing_stripe_calls_total{endpoint="invoices",class="5xx"}'), 1,
        'stripe: invoices 5xx';
    is $d->('billing_stripe_calls_total{endpoint="invoices",class="2xx"}'), 1,
        'stripe: invoices 2xx';
    is $d->('billing_stripe_retries_total{endpoint="invoices"}'), 1,
        'stripe: one retry';
    is $d->('billing_stripe_calls_total{endpoint="finalize",class="2xx"}'), 1,
        'stripe: finalize 2xx';
    is $d->('billing_stripe_call_duration_seconds_count{endpoint="finalize"}'), 1,
        'stripe: latency observed';
    is $d->('billing_stripe_call_duration_seconds_bucket{endpoint="finalize",le="+Inf"}'), 1,
        'stripe: +Inf bucket';
    is $d->('billing_invoices_issued_total{kind="initial"}'), 1,
        'invoices issued: 1 initial';

    my (undef, $m) = metrics();
    my $text = $t->http('GET', '/metrics')->{content};
    unlike $text, qr/sub-m1|org-m1|\bact\b|nobody/,
        'no subscription or org id in the metrics';
}

# ---------------------------------------------------------------------
# Redis: connections up, errors, reconnects, latency

{
    ok wait_until(sub {
        metric('billing_redis_connections_up{connection="commands"}') == 2
        && metric('billing_redis_connections_up{connection="subscriber"}') == 2
    }, 10), 'Redis: both workers\' two connections up';
    cmp_ok metric('billing_redis_command_duration_seconds_count'), '>', 0,
        'Redis: command latency observed';
    my $reconnects = metric('billing_redis_reconnects_total{connection="subscriber"}');
    my $errors = 0;
    $errors += metric("billing_redis_errors_total{kind=\"$_\"}")
        for qw(connect timeout closed protocol);

    $t->stop_redis;
    ok wait_until(sub {
        metric('billing_redis_connections_up{connection="subscriber"}') == 0
    }, 10), 'Redis stopped: no subscriber connection up';
    my $e = 0;
    $e += metric("billing_redis_errors_total{kind=\"$_\"}")
        for qw(connect timeout closed protocol);
    cmp_ok $e, '>', $errors, 'Redis stopped: errors counted';

    $t->start_redis;
    ok wait_until(sub {
        metric('billing_redis_connections_up{connection="subscriber"}') == 2
    }, 15), 'Redis back: both subscribers up again';
    cmp_ok metric('billing_redis_reconnects_total{connection="subscriber"}'),
        '>=', $reconnects + 2, 'Redis back: reconnects counted';
    $t->ignore_log(qr/billing redis/);
}

# ---------------------------------------------------------------------
# a reload keeps the counters

{
    my $before = metric('billing_gate_decisions_total{decision="allow"}');
    $t->reload_nginx;
    is metric('billing_gate_decisions_total{decision="allow"}'), $before,
        'after a reload: the same counts';
}

# ---------------------------------------------------------------------
# promtool and a real Prometheus

my $promtool = `command -v promtool 2>/dev/null`;
chomp $promtool;

SKIP: {
    skip 'promtool not installed (Debian package prometheus)', 1
        unless $promtool;
    my $text = $t->http('GET', '/metrics')->{content};
    my ($fh, $file) = tempfile(DIR => $t->dir);
    print $fh $text;
    close $fh;
    my $out = `$promtool check metrics < $file 2>&1`;
    is $?, 0, 'promtool check metrics: no problem' or diag $out;
}

# the shipped alert rules and scrape job: valid, and about metrics that
# exist
{
    my $repo = BillingTest->repo;
    my $rules = $t->read_file("$repo/conf-examples/prometheus/billing-alerts.yml");
    my $text = $t->http('GET', '/metrics')->{content};
    my %have = map { /^# TYPE (\S+)/ ? ($1 => 1) : () } split /\n/, $text;
    $rules =~ s/^\s*#.*\n//mg;
    my %used = map { $_ => 1 } $rules =~ /\b(billing_[a-z_]+)/g;
    my @unknown = grep { !$have{$_} } sort keys %used;
    is_deeply \@unknown, [], 'the alert rules use only metrics billing_status has';

  SKIP: {
        skip 'promtool not installed (Debian package prometheus)', 2
            unless $promtool;
        my $out = `$promtool check rules $repo/conf-examples/prometheus/billing-alerts.yml 2>&1`;
        is $?, 0, 'promtool check rules: the alert rules pass' or diag $out;
        $out = `cd $repo/conf-examples/prometheus && $promtool check config prometheus.yml 2>&1`;
        is $?, 0, 'promtool check config: the scrape job passes' or diag $out;
    }
}

my $prometheus = `command -v prometheus 2>/dev/null`;
chomp $prometheus;

SKIP: {
    skip 'prometheus not installed (Debian package prometheus)', 2
        unless $prometheus;

    my $pport = BillingTest::free_port();
    my $port = $t->port;
    $t->write_file('prometheus.yml', <<"EOF");
global:
  scrape_interval: 1s
scrape_configs:
  - job_name: billing
    metrics_path: /metrics
    static_configs:
      - targets: ['127.0.0.1:$port']
EOF
    mkdir $t->path('prometheus-data');
    my $pid = fork // die "fork: $!";
    if ($pid == 0) {
        open STDOUT, '>', $t->path('prometheus.log');
        open STDERR, '>&', \*STDOUT;
        exec $prometheus, '--config.file=' . $t->path('prometheus.yml'),
            '--storage.tsdb.path=' . $t->path('prometheus-data'),
            "--web.listen-address=127.0.0.1:$pport";
        exit 127;
    }

    my $ev = invoice_event(type => 'invoice.paid', invoice_id => 'in_p1',
        subscription => 'act', kind => 'period');
    is $t->webhook($ev)->{status}, 200, 'a webhook for Prometheus to see';
    my $want = metric('billing_webhook_events_total{type="invoice.paid",outcome="changed"}');

    my $q = 'billing_webhook_events_total%7Btype%3D%22invoice.paid%22%2Coutcome%3D%22changed%22%7D';
    my $seen;
    wait_until(sub {
        my $r = HTTP::Tiny->new(timeout => 2)
            ->get("http://127.0.0.1:$pport/api/v1/query?query=$q");
        return 0 unless $r->{success};
        my $j = eval { json_decode($r->{content}) } or return 0;
        my $v = $j->{data}{result}[0]{value}[1];
        $seen = $v;
        defined $v && $v == $want;
    }, 60);
    is $seen, $want, "Prometheus scraped the counter ($want)"
        or diag $t->read_file('prometheus.log');

    kill 'TERM', $pid;
    waitpid $pid, 0;
}

$s->stop;
$t->done;
done_testing;
