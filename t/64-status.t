# billing_status: this node's counters in Prometheus text exposition,
# summed over its workers (two here) and kept across a reload; checked
# with `promtool check metrics` and scraped by a real Prometheus server
# (queried through its HTTP API after a webhook). Counted: webhook
# events by type and outcome, signature rejections by reason, gate
# decisions and cache results, Stripe calls by endpoint and class with
# retries and a latency histogram, invoices issued, metering units
# counted and sent. Each of these has a marketplace label, written
# first: a second server with billing_marketplace b (its own webhook
# secret and location, a gate) counts under marketplace="b", the http
# level's under "default"; the Redis metrics are the node's, without
# it. A reload that changes the marketplaces (one added before b)
# starts every counter again from zero instead of showing b's under
# another name. The handler answers GET and HEAD only, is never
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

# marketplaces b and c: a webhook secret of their own each
my %secret = map { $_ => 'whsec_' . random_id('', 32) } qw(b c);
$t->write_file("$_.whsec", "$secret{$_}\n") for qw(b c);
my %port = map { $_ => BillingTest::free_port() } qw(b c);

my $HEAD = <<'EOF';
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

my %SERVER = map { my $n = $_; $n => <<"EOF" } qw(b c);

    server {
        listen 127.0.0.1:%%PORT_\U$n\E%%;
        billing_marketplace $n;
        billing_stripe_webhook_secret_file %%DIR%%/$n.whsec;

        location = /hooks/$n { billing_webhook; }
        location /api/ {
            billing_gate \$http_x_subscription_id;
            return 200 "$n\n";
        }

        # the http level's Stripe key: its timers' calls go here
        location /_billing_stripe/ {
            internal;
            proxy_pass http://127.0.0.1:%%STRIPE_PORT%%/;
        }
    }
EOF

my $HTTP = $HEAD . $SERVER{b};

$t->start_redis;
$t->start_nginx($HTTP, workers => 2, STRIPE_PORT => $s->port,
    PORT_B => $port{b}, PORT_C => $port{c});

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

# a reload, then until the old workers are gone: until they close their
# sockets they may still answer, with their own configuration
sub reload_settled {
    my (@args) = @_;
    my $exited = () = $t->error_log =~ /worker process \d+ exited/g;
    $t->reload_nginx(@args);
    ok wait_until(sub {
        my $n = () = $t->error_log =~ /worker process \d+ exited/g;
        $n >= $exited + 2;
    }, 15), 'reloaded, the old workers gone';
}

# a webhook to marketplace b or c, signed with its secret; its events'
# invoices are marked as that marketplace's, as the module marks them
sub hook {
    my ($mk, $event, %o) = @_;
    my $e = json_decode($event);
    if (my $md = $e->{data}{object}{metadata}) {
        $md->{billing_marketplace} = $mk;
        $event = json_encode($e);
    }
    return $t->webhook($event, port => $port{$mk}, path => "/hooks/$mk",
        secrets => [ $secret{$mk} ], %o);
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
    ok exists $m->{'billing_webhook_events_total{marketplace="default",type="invoice.paid",outcome="changed"}'},
        'events by type and outcome, zero included';
    unlike $r->{content}, qr/^billing_[^{ ]*[A-Z]/m, 'names in lower case';
    my @bad = grep { !/^billing_[a-z_]+(?:\{[a-z_]+="[^"]*"(?:,[a-z_]+="[^"]*")*\})? \d+(?:\.\d+)?$/ }
              grep { !/^#/ } split /\n/, $r->{content};
    is_deeply \@bad, [], 'every sample line well formed';

    # the marketplace label: first, on all but the node's Redis metrics
    my (%in, @misplaced);
    for (grep { !/^#/ } split /\n/, $r->{content}) {
        my ($name) = /^([a-z_]+)/;
        my $family = $name =~ s/_(?:bucket|sum|count)$//r;
        if (/marketplace=/) {
            push @misplaced, $_
                if $family =~ /^billing_redis_/ || !/^\Q$name\E\{marketplace="/;
            $in{$family}{$1} = 1 if /marketplace="([^"]*)"/;
        } elsif ($family !~ /^billing_redis_/) {
            push @misplaced, $_;
        }
    }
    is_deeply \@misplaced, [], 'marketplace label first, none on billing_redis_*';
    my @families = map { /^# TYPE (\S+)/ ? $1 : () } split /\n/, $r->{content};
    is scalar(grep { /^billing_redis_/ } @families), 4, 'four Redis metrics';
    my @partial = grep { !/^billing_redis_/
                         && join(',', sort keys %{ $in{$_} || {} }) ne 'b,default' }
                  @families;
    is_deeply \@partial, [], 'every other metric for default and b, zero included';

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

    is $d->('billing_gate_decisions_total{marketplace="default",decision="allow"}'), 4,
        'decisions: 4 allowed';
    is $t->http('GET', '/again/x', headers => { 'X-Subscription-Id' => 'act' })
        ->{status}, 200, 'gated, rewritten, gated again: 200';
    is $d->('billing_gate_decisions_total{marketplace="default",decision="allow"}'), 5,
        'decisions: the rewritten request counted once';
    is $d->('billing_gate_decisions_total{marketplace="default",decision="unknown_subscription"}'), 1,
        'decisions: 1 unknown';
    is $d->('billing_gate_decisions_total{marketplace="default",decision="subscription_required"}'), 1,
        'decisions: 1 without id';
    my $miss = $d->('billing_gate_cache_total{marketplace="default",result="miss"}');
    my $hit = $d->('billing_gate_cache_total{marketplace="default",result="hit"}');
    is $miss + $hit, 6, "cache: 6 lookups, the rewritten request once ($miss missed, $hit hit)";
    cmp_ok $miss, '<=', 3, 'cache: at most one miss per worker and id';

    # metering
    is wait_metric('billing_meter_units_counted_total{marketplace="default"}', 5), 5,
        'meter: 5 units counted';
    is wait_metric('billing_meter_units_sent_total{marketplace="default"}', 5), 5,
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

    is $d->('billing_webhook_rejected_total{marketplace="default",reason="no_header"}'), 1,
        'rejected: no header';
    is $d->('billing_webhook_rejected_total{marketplace="default",reason="mismatch"}'), 1,
        'rejected: mismatch';
    is $d->('billing_webhook_events_total{marketplace="default",type="other",outcome="ignored"}'), 1,
        'events: other, ignored';
    is $d->('billing_webhook_events_total{marketplace="default",type="invoice.finalized",outcome="changed"}'), 1,
        'events: finalized, changed';
    is $d->('billing_webhook_events_total{marketplace="default",type="invoice.finalized",outcome="unchanged"}'), 1,
        'events: finalized again, unchanged';

    # Stripe: a subscription created (customer, invoice, item, finalize),
    # the invoice failing once with 500 (retried)
    $s->fail(method => 'POST', path => '^/v1/invoices$', status => 500);
    $r = $t->api('POST', 'subscriptions',
        subscription_request('sub-m1', 'org-m1'));
    is $r->{status}, 201, 'POST subscriptions: 201' or diag $r->{content};
    is $d->('billing_stripe_calls_total{marketplace="default",endpoint="customers",class="2xx"}'), 1,
        'stripe: customers 2xx';
    is $d->('billing_stripe_calls_total{marketplace="default",endpoint="invoices",class="5xx"}'), 1,
        'stripe: invoices 5xx';
    is $d->('billing_stripe_calls_total{marketplace="default",endpoint="invoices",class="2xx"}'), 1,
        'stripe: invoices 2xx';
    is $d->('billing_stripe_retries_total{marketplace="default",endpoint="invoices"}'), 1,
        'stripe: one retry';
    is $d->('billing_stripe_calls_total{marketplace="default",endpoint="finalize",class="2xx"}'), 1,
        'stripe: finalize 2xx';
    is $d->('billing_stripe_call_duration_seconds_count{marketplace="default",endpoint="finalize"}'), 1,
        'stripe: latency observed';
    is $d->('billing_stripe_call_duration_seconds_bucket{marketplace="default",endpoint="finalize",le="+Inf"}'), 1,
        'stripe: +Inf bucket';
    is $d->('billing_invoices_issued_total{marketplace="default",kind="initial"}'), 1,
        'invoices issued: 1 initial';

    my (undef, $m) = metrics();
    my $text = $t->http('GET', '/metrics')->{content};
    unlike $text, qr/sub-m1|org-m1|\bact\b|nobody/,
        'no subscription or org id in the metrics';
}

# ---------------------------------------------------------------------
# two marketplaces: each counts under its own label

$t->redis('HSET', 'billing:mp:b:sub:actb', state => 'active',
    period_start => $START, period => 'month');

{
    my %before = %{ (metrics())[1] };
    my $d = sub { my ($k) = @_; metric($k) - ($before{$k} // 0) };
    my $paid = 'type="invoice.paid",outcome="changed"';

    my $ev = invoice_event(type => 'invoice.paid', invoice_id => 'in_mb1',
        subscription => 'actb', kind => 'period');
    is hook('b', $ev)->{status}, 200, 'b: invoice.paid: 200';
    $ev = invoice_event(type => 'invoice.paid', invoice_id => 'in_md1',
        subscription => 'act', kind => 'period');
    is $t->webhook($ev)->{status}, 200, 'default: invoice.paid: 200';
    $ev = invoice_event(type => 'invoice.paid', invoice_id => 'in_mb2',
        subscription => 'actb', kind => 'period');
    is hook('b', $ev)->{status}, 200, 'b: another invoice.paid: 200';
    is hook('b', $ev, secrets => [ $f->{secret} ])->{status}, 400,
        "b: signed with the default's secret: 400";

    is $d->(qq{billing_webhook_events_total{marketplace="b",$paid}}), 2,
        'events: 2 under marketplace="b"';
    is $d->(qq{billing_webhook_events_total{marketplace="default",$paid}}), 1,
        'events: 1 under marketplace="default"';
    is $d->('billing_webhook_rejected_total{marketplace="b",reason="mismatch"}'), 1,
        'rejected: the mismatch under b';
    is $d->('billing_webhook_rejected_total{marketplace="default",reason="mismatch"}'), 0,
        '... not under default';

    # b's gate and meter; the batches mix marketplaces
    for (1 .. 3) {
        is $t->http('GET', '/api/x', port => $port{b},
            headers => { 'X-Subscription-Id' => 'actb' })->{status}, 200,
            'b: gated, active';
        is $t->http('GET', '/api/x',
            headers => { 'X-Subscription-Id' => 'act' })->{status}, 200,
            'default: gated, active';
    }
    is $d->('billing_gate_decisions_total{marketplace="b",decision="allow"}'), 3,
        'decisions: 3 allowed in b';
    is $d->('billing_gate_decisions_total{marketplace="default",decision="allow"}'), 3,
        'decisions: 3 allowed in default';
    is wait_metric('billing_meter_units_sent_total{marketplace="b"}', 3), 3,
        'meter: 3 units sent for b';
    is $d->('billing_meter_units_counted_total{marketplace="b"}'), 3,
        'meter: 3 units counted for b';
    ok wait_until(sub {
        $d->('billing_meter_units_sent_total{marketplace="default"}') == 3
    }, 10), 'meter: 3 units sent for default';
    is $t->redis('HGET', 'billing:mp:b:usage:actb', $START), 3,
        "... b's in b's keys";
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

my $B_PAID = 'billing_webhook_events_total{marketplace="b",type="invoice.paid",outcome="changed"}';
my $C_PAID = $B_PAID =~ s/"b"/"c"/r;

{
    my $before = metric('billing_gate_decisions_total{marketplace="default",decision="allow"}');
    my $b = metric($B_PAID);
    $t->reload_nginx;
    is metric('billing_gate_decisions_total{marketplace="default",decision="allow"}'), $before,
        'after a reload: the same counts';
    is metric($B_PAID), $b, "... b's too";
}

# ---------------------------------------------------------------------
# a reload that changes the marketplaces: c comes before b, which takes
# another index; nothing is shown under a label it was not counted for

{
    cmp_ok metric($B_PAID), '>', 0, 'before: b has counts';
    reload_settled($HEAD . $SERVER{c} . $SERVER{b});
    my (undef, $m) = metrics();
    my @nonzero = grep { !/^billing_redis_/ && $m->{$_} != 0 } sort keys %$m;
    is_deeply \@nonzero, [], 'after: every marketplace counter from zero';
    ok exists $m->{$B_PAID}, '... b still shown';
    ok exists $m->{$C_PAID}, '... and c';
    ok wait_until(sub {
        metric('billing_redis_connections_up{connection="commands"}') == 2
    }, 10), "the new workers' Redis connections: 2 up";

    my $ev = invoice_event(type => 'invoice.paid', invoice_id => 'in_mb3',
        subscription => 'actb', kind => 'period');
    is hook('b', $ev)->{status}, 200, 'b: invoice.paid: 200';
    for my $inv (qw(in_mc1 in_mc2)) {
        $ev = invoice_event(type => 'invoice.paid', invoice_id => $inv,
            subscription => 'actc', kind => 'period');
        is hook('c', $ev)->{status}, 200, "c: invoice.paid $inv: 200";
    }
    is metric($B_PAID), 1, 'b counts on: 1';
    is metric($C_PAID), 2, 'c counts its own: 2';

    my $before = metric($B_PAID);
    reload_settled();
    is metric($B_PAID), $before, 'the same marketplaces again: the counts stay';
    is metric($C_PAID), 2, "... c's too";
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
    my $want = metric('billing_webhook_events_total{marketplace="default",type="invoice.paid",outcome="changed"}');

    my $q = 'billing_webhook_events_total%7Bmarketplace%3D%22default%22%2Ctype%3D%22invoice.paid%22%2Coutcome%3D%22changed%22%7D';
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
