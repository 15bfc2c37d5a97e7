# $billing_subscription, $billing_state, $billing_decision and
# $billing_units in a log_format: "-" where no gate decided; the
# decision ("allow" or the denial's code) and the state the gate saw;
# the units the meter counted ("on": 1, VALUE: its units, 0 for a
# denial or an answer of 400 and above), also for a main request gated
# in an auth_request target; Redis unavailable under billing_unavailable
# allow: "allow" with no state.

use strict;
use warnings;

use Test::More;
use BillingTest qw(:all);
use Time::HiRes qw(sleep);

my $t = BillingTest->new;

my $HTTP = <<'EOF';
    billing_redis 127.0.0.1:%%REDIS_PORT%% timeout=1s;
    billing_cache zone=billing:1m ttl=10s stale=0s;
    billing_meter_flush 200ms;

    log_format billing '$uri sub=$billing_subscription '
                       'state=$billing_state decision=$billing_decision '
                       'units=$billing_units status=$status';

    server {
        listen 127.0.0.1:%%PORT%%;
        access_log %%DIR%%/billing.log billing;

        location /open/ {
            return 200 "open\n";
        }

        location /on/ {
            billing_gate $http_x_subscription_id;
            return 200 "on\n";
        }

        location /three/ {
            billing_gate $http_x_subscription_id;
            billing_meter $sent_http_x_units;
            add_header X-Units 3;
            return 200 "three\n";
        }

        location /missing/ {
            billing_gate $http_x_subscription_id;
            return 404;
        }

        location /allow/ {
            billing_gate $http_x_subscription_id;
            billing_unavailable allow;
            return 200 "allow\n";
        }

        # "return" would answer before auth_request runs
        location /authed/ {
            auth_request /_check;
            alias %%DIR%%/www/;
        }

        location = /_check {
            internal;
            billing_gate $http_x_subscription_id;
            return 204;
        }
    }
EOF

mkdir $t->path('www');
$t->write_file("www/$_", "file $_\n") for 1, 2;

$t->start_redis;
$t->start_nginx($HTTP);

my $START = int(time) - 5;
$t->redis('HSET', 'billing:sub:act', state => 'active',
    period_start => $START, period => 'month');
$t->redis('HSET', 'billing:sub:pend', state => 'pending',
    initial_invoice => 'in_p');
$t->redis('HSET', 'billing:sub:gone', state => 'cancelled');

sub get {
    my ($path, $sub) = @_;
    return $t->http('GET', $path,
        headers => defined $sub ? { 'X-Subscription-Id' => $sub } : {})
        ->{status};
}

# the log line of the last request for $uri
sub line {
    my ($uri) = @_;
    my $line;
    wait_until(sub {
        my $log = $t->read_file('billing.log') // '';
        ($line) = grep { /^\Q$uri\E / } reverse split /\n/, $log;
        defined $line;
    }, 5);
    return $line // '';
}

my @cases = (
    [ '/open/1', undef, 200,
      'sub=- state=- decision=- units=- status=200', 'ungated' ],
    [ '/on/1', 'act', 200,
      'sub=act state=active decision=allow units=1 status=200', 'active, on' ],
    [ '/three/1', 'act', 200,
      'sub=act state=active decision=allow units=3 status=200', 'active, VALUE 3' ],
    [ '/missing/1', 'act', 404,
      'sub=act state=active decision=allow units=0 status=404',
      'active, a 404 counts nothing' ],
    [ '/on/2', 'pend', 402,
      'sub=pend state=pending decision=payment_required units=0 status=402',
      'pending' ],
    [ '/on/3', 'gone', 403,
      'sub=gone state=cancelled decision=subscription_cancelled units=0 '
      . 'status=403', 'cancelled' ],
    [ '/on/4', 'nobody', 403,
      'sub=nobody state=unknown decision=unknown_subscription units=0 '
      . 'status=403', 'unknown' ],
    [ '/on/5', undef, 401,
      'sub=- state=- decision=subscription_required units=0 status=401',
      'no id' ],
    [ '/authed/1', 'act', 200,
      'sub=act state=active decision=allow units=1 status=200',
      'auth_request target, active' ],
    [ '/authed/2', 'pend', 402,
      'sub=pend state=pending decision=payment_required units=0 status=402',
      'auth_request target, pending' ],
);

for my $c (@cases) {
    my ($uri, $sub, $status, $want, $name) = @$c;
    is get($uri, $sub), $status, "$name: $status";
    is line($uri), "$uri $want", "$name: logged as such";
}

# Redis stopped: billing_unavailable allow lets a cold id through
$t->stop_redis;
is get('/allow/1', 'cold'), 200, 'Redis stopped, allow: 200';
is line('/allow/1'),
    '/allow/1 sub=cold state=- decision=allow units=1 status=200',
    'Redis stopped, allow: decided without a state, counted';
is get('/on/6', 'cold'), 503, 'Redis stopped, deny: 503';
is line('/on/6'),
    '/on/6 sub=cold state=- decision=billing_unavailable units=0 status=503',
    'Redis stopped, deny: billing_unavailable';
$t->start_redis;

$t->ignore_log(qr/billing redis/);
$t->done;
done_testing;
