# The Stripe location as operators write their servers: an error_page,
# a limit_req and proxy_buffering off at server level that the internal
# location inherits,
# an internal redirect of Stripe's answer, the location closing the
# connection (return 444) or failing inside nginx. The subrequests of the
# module's own requests never reach a client connection: the API answers
# 502 stripe_error (or completes), and no worker dies.

use strict;
use warnings;

use JSON::PP;
use Test::More;
use Time::HiRes qw(time sleep);

use BillingTest qw(:all);
use StripeMock;

my $t = BillingTest->new;

my $TOKEN = 'api-' . random_id('', 32);
my $KEY   = 'sk_test_' . random_id('', 40);

$t->write_file('api.token', "$TOKEN\n");
$t->write_file('stripe.key', "$KEY\n");

mkdir $t->dir . '/html' or die "mkdir: $!";

# a page larger than postpone_output and a socket buffer's first send
$t->write_file('html/50x.html', ('<p>Stripe is unreachable</p>' x 200) . "\n");

my $s = StripeMock->start(dir => $t->dir, key => $KEY);

# a port where nothing listens: Stripe unreachable
my $DEAD = BillingTest::free_port();

# a server block each, on a port of its own
my %PORT = (down => $t->port, map { $_ => BillingTest::free_port() }
    qw(slow close redirect unbuffered));

$t->start_redis;
$t->start_nginx(<<'EOF', STRIPE_PORT => $s->port, DEAD_PORT => $DEAD,
    billing_redis 127.0.0.1:%%REDIS_PORT%% timeout=1s;
    billing_stripe_key_file %%DIR%%/stripe.key;
    billing_api_token_file %%DIR%%/api.token;
    billing_stripe_timeout 2s;

    limit_req_zone $binary_remote_addr zone=slow:1m rate=2r/s;

    # Stripe unreachable, with a server-level error page
    server {
        listen 127.0.0.1:%%PORT%% reuseport;

        error_page 502 504 /50x.html;
        location = /50x.html { root %%DIR%%/html; }

        location /billing/ { billing_api; }

        location /_billing_stripe/ {
            internal;
            proxy_pass http://127.0.0.1:%%DEAD_PORT%%/;
            proxy_connect_timeout 1s;
        }
    }

    # a limit_req without nodelay, inherited by the Stripe location
    server {
        listen 127.0.0.1:%%SLOW_PORT%% reuseport;

        limit_req zone=slow burst=20;

        location /billing/ { billing_api; }

        location /_billing_stripe/ {
            internal;
            proxy_pass http://127.0.0.1:%%STRIPE_PORT%%/;
        }
    }

    # the Stripe location closes the connection
    server {
        listen 127.0.0.1:%%CLOSE_PORT%% reuseport;

        location /billing/ { billing_api; }

        location /_billing_stripe/ {
            internal;
            return 444;
            proxy_pass http://127.0.0.1:%%STRIPE_PORT%%/;
        }
    }

    # Stripe's answer redirected inside nginx (an error page of the
    # location's own, for every status the stand-in is told to answer)
    server {
        listen 127.0.0.1:%%REDIRECT_PORT%% reuseport;

        location /billing/ { billing_api; }

        location /_billing_stripe/ {
            internal;
            proxy_pass http://127.0.0.1:%%STRIPE_PORT%%/;
            proxy_intercept_errors on;
            error_page 400 500 = /50x.html;
        }

        location = /50x.html { root %%DIR%%/html; }
    }

    # answers passed on as they come (and TCP_NODELAY asked for)
    server {
        listen 127.0.0.1:%%UNBUFFERED_PORT%% reuseport;

        proxy_buffering off;

        location /billing/ { billing_api; }

        location /_billing_stripe/ {
            internal;
            proxy_pass http://127.0.0.1:%%STRIPE_PORT%%/;
        }
    }
EOF
    SLOW_PORT => $PORT{slow}, CLOSE_PORT => $PORT{close},
    REDIRECT_PORT => $PORT{redirect}, UNBUFFERED_PORT => $PORT{unbuffered},
    workers => 2);


my $JSON = JSON::PP->new->utf8->canonical;


sub post_sub {
    my ($host, $req) = @_;
    return $t->http('POST', '/billing/subscriptions',
        headers => { Authorization => "Bearer $TOKEN",
                     'Content-Type' => 'application/json' },
        body => $JSON->encode($req), timeout => 30, port => $PORT{$host});
}

sub no_worker_died {
    my ($name) = @_;
    unlike $t->error_log, qr/worker process \d+ exited on signal/,
        "$name: no worker died";
}


# Stripe unreachable, a large server-level error page

for my $i (1 .. 3) {
    my $r = post_sub('down', subscription_request("sub-down$i", "org-down$i"));
    is $r->{status}, 502, "unreachable $i: 502";
    is $r->{json} && $r->{json}{error}{code}, 'stripe_error',
        "unreachable $i: stripe_error";
    unlike $r->{content} // '', qr/unreachable/,
        "unreachable $i: nothing of the error page";
}
no_worker_died('unreachable');

# the Stripe location closes the connection

{
    my $r = post_sub('close', subscription_request('sub-close', 'org-close'));
    is $r->{status}, 502, 'return 444: 502';
    is $r->{json} && $r->{json}{error}{code}, 'stripe_error',
        'return 444: stripe_error';
    unlike $t->error_log, qr/connection already closed/,
        'return 444: nginx did not close the module\'s own connection';
    no_worker_died('return 444');
}

# a delaying limit_req: the calls wait, then go on

{
    my $at = time;
    my @r = map { post_sub('slow', subscription_request("sub-slow$_", "org-slow$_")) } 1 .. 2;
    is $_->{status}, 201, 'limit_req delay: 201' for @r;
    like $t->error_log, qr/delaying request/, 'limit_req delay: the calls were delayed';
    note sprintf 'limit_req: two creations in %.1f s', time - $at;
    no_worker_died('limit_req');
}

# Stripe's refusal redirected to a page: still Stripe's status, no page

{
    $s->fail(method => 'POST', path => '^/v1/customers$', status => 400,
        body => { error => { type => 'invalid_request_error',
                             message => 'refused by the stand-in' } });
    my $r = post_sub('redirect', subscription_request('sub-redir', 'org-redir'));
    is $r->{status}, 502, 'redirected refusal: 502';
    is $r->{json} && $r->{json}{error}{code}, 'stripe_error',
        'redirected refusal: stripe_error';
    is $r->{json} && $r->{json}{error}{stripe_status}, 400,
        'redirected refusal: Stripe\'s status';
    unlike $r->{content} // '', qr/unreachable/,
        'redirected refusal: nothing of the error page';
    $s->clear_rules;
    no_worker_died('redirect');
}

# proxy_buffering off: nothing to set on a connection without a socket

{
    my $r = post_sub('unbuffered', subscription_request('sub-unbuf', 'org-unbuf'));
    is $r->{status}, 201, 'proxy_buffering off: 201';
    is $r->{json} && $r->{json}{invoice}{status}, 'open',
        'proxy_buffering off: the invoice finalized';
    unlike $t->error_log, qr/setsockopt/, 'proxy_buffering off: no setsockopt';
}

# the API is not held up by any of it

{
    my $r = post_sub('slow', subscription_request('sub-after', 'org-after'));
    is $r->{status}, 201, 'afterwards: 201';
}

$t->done;
done_testing;
