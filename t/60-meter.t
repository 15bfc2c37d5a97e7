# billing_meter on one node of two workers: the configuration's checks
# (billing_meter_zone too small, a billing_cache zone with the meter's
# name, billing_meter twice); a unit per request answered
# below 400 with "on"; VALUE's units with $sent_http_ and
# $upstream_http_ headers (empty, 0: nothing; not a number: nothing
# and a warning); nothing for 4xx and 5xx answers, denied requests,
# "billing_meter off", internal redirects to ungated locations and
# subrequests; a subscription with no period counted under period 0;
# every worker's mark in meter:nodes; a graceful stop (nginx -s quit)
# and a reload sending what a long billing_meter_flush still held, the
# stop removing the marks, a request still under way at the stop
# counted as it ends; and a zone too small for all the counts,
# the rest kept and sent by the workers.

use strict;
use warnings;

use Test::More;
use BillingTest qw(:all);

my $t = BillingTest->new;
my $PORT2 = BillingTest::free_port();

mkdir $t->path('www');
mkdir $t->path('www/mirror');
$t->write_file('www/mirror/f.txt', "mirrored\n");
mkdir $t->path('www/slow');
$t->write_file('www/slow/f.bin', 'x' x 60000);

my $HTTP = <<'EOF';
    billing_redis 127.0.0.1:%%REDIS_PORT%% timeout=1s;
    billing_cache zone=billing:1m ttl=10s;
    billing_meter_flush %%FLUSH%%;

    server {
        listen 127.0.0.1:%%PORT%%;
        root %%DIR%%/www;

        billing_gate $http_x_subscription_id;

        location /on/ {
            return 200 "ok\n";
        }

        location /three/ {
            billing_meter $sent_http_x_units;
            add_header X-Units 3;
            return 200 "three\n";
        }

        location /units/ {
            billing_meter $sent_http_x_units;
            add_header X-Units $arg_u;
            return 200 "units\n";
        }

        location /up/ {
            billing_meter $upstream_http_x_billing_units;
            proxy_pass http://127.0.0.1:%%PORT2%%/;
        }

        location /off/ {
            billing_meter off;
            return 200 "off\n";
        }

        location /s404/ {
            return 404;
        }

        location /s500/ {
            return 500;
        }

        location /s302/ {
            return 302 /on/;
        }

        location /named/ {
            try_files /nonexistent @ungated;
        }

        location @ungated {
            billing_gate off;
            return 200 "ungated\n";
        }

        location /named-gated/ {
            try_files /nonexistent @gated;
        }

        location @gated {
            return 200 "gated\n";
        }

        location /rewrite/ {
            rewrite ^ /open/ last;
        }

        location /open/ {
            billing_gate off;
            return 200 "open\n";
        }

        location /mirror/ {
            mirror /on/;
        }

        # about 3 s to send
        location /slow/ {
            limit_rate 20k;
        }
    }

    server {
        listen 127.0.0.1:%%PORT2%%;

        location / {
            add_header X-Billing-Units $arg_u;
            return 200 "backend\n";
        }
    }
EOF

# the configuration's checks
my ($rc, $out) = $t->start_nginx($HTTP . "\n    billing_meter_zone 16k;\n",
    nginx_test => 1, PORT2 => $PORT2, FLUSH => '1s');
isnt $rc, 0, 'nginx -t: billing_meter_zone too small';
like $out, qr/"billing_meter_zone" of 16384 bytes is too small/,
    '... and says so';
($rc, $out) = $t->start_nginx($HTTP =~ s/zone=billing:1m/zone=billing_meter:16m/r,
    nginx_test => 1, PORT2 => $PORT2, FLUSH => '1s');
isnt $rc, 0, 'nginx -t: a billing_cache zone named billing_meter';
like $out, qr/zone "billing_meter" is the meter's/, '... and says so';
($rc, $out) = $t->start_nginx($HTTP =~ s/billing_meter off;/billing_meter off; billing_meter on;/r,
    nginx_test => 1, PORT2 => $PORT2, FLUSH => '1s');
isnt $rc, 0, 'nginx -t: billing_meter twice';
like $out, qr/"billing_meter" directive is duplicate/, '... and says so';

$t->start_redis;
$t->start_nginx($HTTP, workers => 2, PORT2 => $PORT2, FLUSH => '200ms');

my $now = time;
my $START = int($now) - 5;

sub active {
    my ($id, %f) = @_;
    $t->redis('HSET', "billing:sub:$id", state => 'active',
        period_start => $START, period => 'month', %f);
}

active($_) for qw(a b c d e f g h slow);
$t->redis('HSET', 'billing:sub:legacy', state => 'active');
$t->redis('HSET', 'billing:sub:pending', state => 'pending',
    initial_invoice => 'in_p');
$t->redis('HSET', 'billing:sub:cancelled', state => 'cancelled',
    period_start => $START, period => 'month');

sub get {
    my ($path, $sub) = @_;
    return $t->http('GET', $path,
        headers => defined $sub ? { 'X-Subscription-Id' => $sub } : {});
}

sub usage {
    my ($sub) = @_;
    return $t->redis_hash("billing:usage:$sub");
}

# waits until the usage of $sub is %want (and stays so a while: a
# count arriving later would be one too many)
sub usage_is {
    my ($sub, $want, $name) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    my $key = join ',', map { "$_=$want->{$_}" } sort keys %$want;
    my $got = wait_until(sub {
        my $u = usage($sub);
        join(',', map { "$_=$u->{$_}" } sort keys %$u) eq $key;
    }, 10);
    # two flush intervals more: nothing else comes
    select undef, undef, undef, 0.5;
    is_deeply usage($sub), $want, $name;
}

# --- on: one unit per answer below 400

for (1 .. 5) {
    is get('/on/x', 'a')->{status}, 200, 'an active subscription passes';
}
is get('/s302/x', 'a')->{status}, 302, 'a redirect answer';
usage_is('a', { $START => 6 }, '"on": a unit per request, 3xx too, '
    . 'under the period that started at activation');

# --- VALUE

is get('/three/x', 'b')->{status}, 200, 'X-Units 3';
is get('/three/y', 'b')->{status}, 200, 'X-Units 3 again';
is get("/units/x?u=$_", 'b')->{status}, 200, "X-Units '$_'" for ('', '0', '4');
usage_is('b', { $START => 10 }, '$sent_http_x_units: 3 + 3 + 4, '
    . 'nothing for empty and 0');

is get('/up/x?u=7', 'c')->{status}, 200, 'a proxied answer with units';
is get('/up/x', 'c')->{status}, 200, 'a proxied answer without';
usage_is('c', { $START => 7 }, '$upstream_http_x_billing_units');

is get('/units/x?u=abc', 'd')->{status}, 200, 'X-Units abc';
is get('/units/x?u=-2', 'd')->{status}, 200, 'X-Units -2';
is get('/units/x?u=2', 'd')->{status}, 200, 'X-Units 2';
usage_is('d', { $START => 2 }, 'not a number: nothing counted');
$t->error_log_like(qr/\[warn\].*billing meter: "abc" is not a number of units, nothing counted for subscription "d"/,
    'a warning for "abc"');
$t->error_log_like(qr/\[warn\].*billing meter: "-2" is not a number/,
    'a warning for "-2"');

# --- what counts nothing

is get('/s404/x', 'e')->{status}, 404, 'a 404 answer';
is get('/s500/x', 'e')->{status}, 500, 'a 500 answer';
is get('/off/x', 'e')->{status}, 200, 'billing_meter off';
is get('/named/x', 'e')->{status}, 200, 'try_files to an ungated location';
is get('/rewrite/x', 'e')->{status}, 200, 'rewrite to an ungated location';
is get('/on/x', 'pending')->{status}, 402, 'pending: 402';
is get('/on/x', 'cancelled')->{status}, 403, 'cancelled: 403';
is get('/on/x', 'nobody')->{status}, 403, 'unknown: 403';
is get('/on/x')->{status}, 401, 'no subscription: 401';
is get('/on/x', 'e')->{status}, 200, 'and one that counts';
usage_is('e', { $START => 1 }, 'errors, denials, ungated and metering off '
    . 'count nothing');
is_deeply usage($_), {}, "nothing for $_" for qw(pending cancelled nobody);

is get('/named-gated/x', 'f')->{status}, 200, 'try_files to a gated location';
is get('/mirror/f.txt', 'f')->{status}, 200, 'a mirrored request';
usage_is('f', { $START => 2 }, 'an internal redirect to a gated location '
    . 'counts once, a mirror subrequest nothing');

is get('/on/x', 'legacy')->{status}, 200, 'a subscription with no period';
usage_is('legacy', { 0 => 1 }, 'counted under period start 0');

# --- every worker's mark

my $marks = wait_until(sub {
    my $m = $t->redis_hash('billing:meter:nodes');
    keys %$m >= 2 ? $m : undef;
}, 10);
is scalar(keys %{ $marks || {} }), 2, 'a mark for each of the two workers';
for my $w (sort keys %{ $marks || {} }) {
    like $w, qr/^[^:]+:\d+$/, "worker $w is host:pid";
    ok abs($marks->{$w} / 1000 - time) < 30, "its mark $marks->{$w} is "
        . 'wall-clock milliseconds of about now';
}

# --- a long flush interval: a reload and a graceful stop send the rest

$t->stop_nginx;
my $before = $t->redis_hash('billing:meter:nodes');
is_deeply $before, {}, 'the stop removed the marks';

$t->start_nginx($HTTP, workers => 2, PORT2 => $PORT2, FLUSH => '1h');

is get('/on/x', 'g')->{status}, 200, "g $_" for 1 .. 4;
is get('/three/x', 'h')->{status}, 200, 'h 3 units';
select undef, undef, undef, 0.3;
is_deeply usage('g'), {}, 'nothing sent yet with billing_meter_flush 1h';

$t->reload_nginx;
usage_is('g', { $START => 4 }, 'the old workers sent their counts as they '
    . 'exited');
is get('/on/x', 'g')->{status}, 200, "g after the reload $_" for 1 .. 3;

# a request under way when the stop begins is counted as it ends
my $slow = $t->raw_http_send("GET /slow/f.bin HTTP/1.0\r\n"
    . "X-Subscription-Id: slow\r\n\r\n");
ok wait_until(sub { $t->error_log =~ m{http request line: "GET /slow/f.bin} },
    5), 'a slow request under way';
$t->stop_nginx;
my $res = $t->raw_http_read($slow);
is $res->{status}, 200, 'it was answered during the graceful stop';
is length($res->{content} // ''), 60000, '... all of it';
is_deeply usage('slow'), { $START => 1 }, '... and counted';
is_deeply usage('g'), { $START => 7 }, 'a graceful stop sent the rest';
is_deeply usage('h'), { $START => 3 }, 'of each subscription';
is_deeply $t->redis_hash('billing:meter:nodes'), {},
    'and the workers removed their marks';
unlike $t->error_log, qr/billing meter: .* lost/, 'nothing lost';

# --- a full zone: the workers keep the rest in their own memory

my @MANY = map { sprintf 'many-%04d', $_ } 1 .. 300;
$t->redis('HSET', "billing:sub:$_", state => 'active',
    period_start => $START, period => 'month') for @MANY;
$t->start_nginx($HTTP . "\n    billing_meter_zone 32k;\n", workers => 2,
    PORT2 => $PORT2, FLUSH => '1h');
my $ok = 0;
for my $sub (@MANY) {
    $ok++ if get('/on/x', $sub)->{status} == 200;
}
is $ok, scalar(@MANY), 'a request for each of 300 subscriptions';
$t->error_log_like(qr/\[warn\].*billing meter: the "billing_meter_zone" of 32768 bytes is full, counts wait in the worker's memory/,
    'the full zone is logged');
$t->stop_nginx;
my @wrong = grep { (usage($_)->{$START} // 0) != 1 } @MANY;
is scalar(@wrong), 0, 'every count was sent, from the zone or a worker'
    or diag "wrong: @wrong[0 .. ($#wrong > 9 ? 9 : $#wrong)]";

$t->done;
done_testing;
