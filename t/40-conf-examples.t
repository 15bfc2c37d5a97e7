# The configurations in conf-examples/ are ready to use: each passes
# "nginx -t" with the module just built, once its paths point at files
# that exist here (secrets, a TLS certificate) and its hosts resolve
# offline.

use strict;
use warnings;

use Test::More;
use BillingTest qw(:all);

my $t = BillingTest->new;
my $repo = BillingTest->repo;
my $dir = $t->dir;

sub slurp {
    my ($path) = @_;
    open my $fh, '<', $path or die "$path: $!";
    local $/;
    return <$fh>;
}

sub nginx_t {
    my ($conf, $prefix) = @_;

    # an AddressSanitizer build loads only with the harness' environment
    local %ENV = (%ENV, %{ $t->_asan_env });

    my $out = `/usr/sbin/nginx -t -p $prefix -c $conf 2>&1`;
    return ($? >> 8, $out);
}

# quickstart.conf, laid out as tools/quickstart lays it out

{
    my $run = "$dir/run";
    mkdir $_ for $run, "$run/conf", "$run/logs", "$run/tmp", "$run/modules";
    symlink $t->module, "$run/modules/ngx_http_billing_module.so"
        or die "symlink: $!";
    $t->write_file('run/conf/nginx.conf',
        slurp("$repo/conf-examples/quickstart.conf"));
    $t->write_file('run/conf/whsec', "whsec_quickstarttest0123456789\n");
    $t->write_file('run/conf/stripe.key', "sk_test_quickstart0123456789\n");
    $t->write_file('run/conf/api.token', "quickstart-api-token-0123456789\n");

    my ($rc, $out) = nginx_t('conf/nginx.conf', "$run/");
    is $rc, 0, 'quickstart.conf: nginx -t passes' or diag $out;
}

# production.conf, with its files made here

{
    my $conf = slurp("$repo/conf-examples/production.conf");

    my %files = (
        'redis.pass' => "redis-password-for-tests\n",
        'whsec'      => "whsec_productiontest0123456789\n",
        'stripe.key' => "rk_live_productiontest0123456789\n",
        'api.token'  => "api-token-for-the-tests-0123456789\n",
    );

    mkdir "$dir/billing";
    for my $name (keys %files) {
        $t->write_file("billing/$name", $files{$name});
    }

    system("openssl req -x509 -newkey rsa:2048 -nodes -days 1"
        . " -subj /CN=api.marketplace.example"
        . " -keyout $dir/tls.key -out $dir/tls.pem 2>/dev/null") == 0
        or BAIL_OUT('openssl could not make a test certificate');

    my $module = $t->module;

    like $conf, qr{^load_module modules/ngx_http_billing_module\.so;}m,
        'production.conf loads the module from the modules directory';

    $conf =~ s{^load_module .*$}{load_module $module;}m;
    $conf =~ s{/etc/nginx/billing/}{$dir/billing/}g;
    $conf =~ s{/etc/nginx/tls/api\.marketplace\.example\.pem}{$dir/tls.pem};
    $conf =~ s{/etc/nginx/tls/api\.marketplace\.example\.key}{$dir/tls.key};

    # no DNS here: api.stripe.com stands for an address that resolves
    $conf =~ s{server api\.stripe\.com:443;}{server 127.0.0.1:443;};
    $conf =~ s{listen 443 ssl http2;}{listen 127.0.0.1:${\ $t->port} ssl http2;};
    $conf =~ s{^user www-data;$}{}m;

    like $conf, qr{billing_api_token_file $dir/billing/api\.token;},
        'production.conf names every secret file';

    $t->write_file('production.conf',
        "error_log $dir/production-error.log;\n"
        . "pid $dir/production.pid;\n" . $conf);

    my ($rc, $out) = nginx_t("$dir/production.conf", "$dir/");
    is $rc, 0, 'production.conf: nginx -t passes' or diag $out;
    unlike $out, qr/whsec_|rk_live_|redis-password|api-token/,
        'production.conf: no secret in the output of nginx -t';
}

$t->done;
done_testing;
