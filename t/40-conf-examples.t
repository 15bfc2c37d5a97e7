# The configurations in conf-examples/ are ready to use: each passes
# "nginx -t" with the module just built, once its paths point at files
# that exist here (secrets, a TLS certificate) and its hosts resolve
# offline, and nginx -t says nothing at [alert], [crit] or [emerg].
#
# nginx -t writes to its output (stderr), to the log given with -e
# (everything said before the configuration's own error_log is open:
# here the test directory's error.log, which $t->done checks too) and
# to the error_log files the configuration names; all are checked.

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

# nginx -t -p $prefix -c $conf -e $elog: its exit code and its output
sub nginx_t {
    my ($conf, $prefix, $elog) = @_;

    # an AddressSanitizer build loads only with the harness' environment
    local %ENV = (%ENV, %{ $t->_asan_env });

    my $pid = open(my $fh, '-|') // die "fork: $!";

    if ($pid == 0) {
        open(STDERR, '>&', \*STDOUT) or die "dup: $!";
        exec { '/usr/sbin/nginx' } '/usr/sbin/nginx', '-t', '-p', $prefix,
            '-c', $conf, '-e', $elog
            or do { print "exec /usr/sbin/nginx: $!\n"; exit 127 };
    }

    my $out = do { local $/; <$fh> } // '';
    close $fh;

    return ($? >> 8, $out);
}

# the error_log files $conf_text names, as paths (relative ones are
# relative to the prefix)
sub error_logs {
    my ($conf_text, $prefix) = @_;
    my @logs;
    for my $path ($conf_text =~ /^\s*error_log\s+([^\s;]+)/mg) {
        next if $path eq 'stderr' || $path =~ /^(?:syslog|memory):/;
        push @logs, $path =~ m{^/} ? $path : "$prefix/$path";
    }
    return @logs;
}

# Checks what nginx -t said, in $out and in the logs, for [alert], [crit]
# and [emerg]; every log must exist (nginx -t opens them all, so a path
# that is not there is a path this test got wrong). Returns the lines
# found.
sub alarms {
    my ($name, $out, @logs) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;

    my $said = $out;
    for my $log (@logs) {
        ok(-f $log, "$name: nginx -t opened $log");
        $said .= "\n" . (slurp_if($log) // '');
    }

    return grep { /\[(?:alert|crit|emerg)\]/ } split /\n/, $said;
}

sub slurp_if {
    my ($path) = @_;
    return -f $path ? slurp($path) : undef;
}

# nginx's time ("10s", "500ms", "1m") in milliseconds
sub msec {
    my ($v) = @_;
    my %unit = (ms => 1, s => 1000, m => 60_000, h => 3_600_000);
    $v =~ /^(\d+)(ms|s|m|h)?$/ or die "not a time: $v";
    return $1 * $unit{ $2 // 's' };
}

# README, billing_stripe_timeout: the proxy_read_timeout of the Stripe
# location well below it (at most half), or one stalled attempt leaves
# no time for a retry
sub stripe_timeouts {
    my ($name, $conf) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;

    my ($call) = $conf =~ /^\s*billing_stripe_timeout\s+(\S+);/m;
    my ($loc) = $conf =~ m{^\s*location\s+/_billing_stripe/\s*\{(.*?)^\s*\}}ms;
    my ($read) = ($loc // '') =~ /^\s*proxy_read_timeout\s+(\S+);/m;

    ok(defined $call && defined $read,
        "$name: billing_stripe_timeout and the Stripe location's "
        . 'proxy_read_timeout are set')
        or return;
    cmp_ok(2 * msec($read), '<=', msec($call),
        "$name: proxy_read_timeout ($read) well below "
        . "billing_stripe_timeout ($call)");
}

# an example made to use this directory's files: with its own error log
# and pid, nginx -t passes, says nothing alarming and shows no secret;
# returns the configuration as written
sub passes {
    my ($name, $conf) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;

    $conf = "error_log $dir/$name-error.log;\n"
        . "pid $dir/$name.pid;\n" . $conf;
    $t->write_file("$name.conf", $conf);

    my @logs = error_logs($conf, $dir);

    my ($rc, $out) = nginx_t("$dir/$name.conf", "$dir/", "$dir/error.log");
    is $rc, 0, "$name.conf: nginx -t passes" or diag $out;

    my @bad = alarms("$name.conf", $out, "$dir/error.log", @logs);
    ok(!@bad, "$name.conf: no alert/crit/emerg from nginx -t")
        or diag(join "\n", @bad);

    my $said = join "\n", $out, map { slurp_if($_) // '' }
        "$dir/error.log", @logs;
    unlike $said, qr/whsec_|rk_live_|redis-password|api-token/,
        "$name.conf: no secret in what nginx -t says";

    return $conf;
}

# quickstart.conf, laid out as tools/quickstart lays it out

{
    my $run = "$dir/run";
    mkdir $_ for $run, "$run/conf", "$run/logs", "$run/tmp", "$run/modules";
    symlink $t->module, "$run/modules/ngx_http_billing_module.so"
        or die "symlink: $!";
    my $conf = slurp("$repo/conf-examples/quickstart.conf");
    $t->write_file('run/conf/nginx.conf', $conf);
    $t->write_file('run/conf/whsec', "whsec_quickstarttest0123456789\n");
    $t->write_file('run/conf/stripe.key', "sk_test_quickstart0123456789\n");
    $t->write_file('run/conf/api.token', "quickstart-api-token-0123456789\n");

    stripe_timeouts('quickstart.conf', $conf);

    my @logs = error_logs($conf, $run);
    ok(@logs, 'quickstart.conf names its error_log');

    my ($rc, $out) = nginx_t('conf/nginx.conf', "$run/", "$dir/error.log");
    is $rc, 0, 'quickstart.conf: nginx -t passes' or diag $out;

    my @bad = alarms('quickstart.conf', $out, "$dir/error.log", @logs);
    ok(!@bad, 'quickstart.conf: no alert/crit/emerg from nginx -t')
        or diag(join "\n", @bad);

    # the same check sees what a broken configuration makes nginx -t say
    # (in a log of its own: $t->done checks error.log)

    (my $broken = $conf)
        =~ s/^(\s*billing_redis\s+\S+)/$1 no_such_parameter=1/m
        or die 'quickstart.conf has no billing_redis line';
    $t->write_file('run/conf/broken.conf', $broken);

    ($rc, $out) = nginx_t('conf/broken.conf', "$run/", "$dir/broken.log");
    isnt $rc, 0, 'a broken quickstart.conf: nginx -t fails';

    @bad = alarms('a broken quickstart.conf', $out, "$dir/broken.log");
    ok(scalar(grep { /\[emerg\].*no_such_parameter/ } @bad),
        'a broken quickstart.conf: the check finds its [emerg]')
        or diag $out;
    like(slurp_if("$dir/broken.log") // '',
        qr/\[emerg\].*no_such_parameter/,
        'a broken quickstart.conf: the [emerg] is in the log given with -e');
}

# production.conf, with its files made here

{
    my $conf = slurp("$repo/conf-examples/production.conf");

    stripe_timeouts('production.conf', $conf);

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

    passes('production', $conf);
}

# marketplaces.conf: two marketplaces, each with its own files

{
    my $conf = slurp("$repo/conf-examples/marketplaces.conf");

    stripe_timeouts('marketplaces.conf', $conf);

    my %files = ('redis.pass' => "redis-password-for-tests\n");
    for my $m (qw(acme globex)) {
        $files{"$m/whsec"} = "whsec_${m}test0123456789abcdef\n";
        $files{"$m/stripe.key"} = "rk_live_${m}test0123456789abcdef\n";
        $files{"$m/api.token"} = "api-token-$m-for-the-tests-0123456789\n";
    }

    mkdir "$dir/mp";
    mkdir "$dir/mp/$_" for qw(acme globex);
    $t->write_file("mp/$_", $files{$_}) for keys %files;

    for my $host (qw(acme globex)) {
        system("openssl req -x509 -newkey rsa:2048 -nodes -days 1"
            . " -subj /CN=api.$host.example"
            . " -keyout $dir/$host.key -out $dir/$host.pem 2>/dev/null") == 0
            or BAIL_OUT('openssl could not make a test certificate');
    }

    my $module = $t->module;
    my $port = $t->port;
    my $metrics = BillingTest::free_port();

    $conf =~ s{^load_module .*$}{load_module $module;}m;
    $conf =~ s{/etc/nginx/billing/}{$dir/mp/}g;
    $conf =~ s{/etc/nginx/tls/api\.(\w+)\.example\.(pem|key)}{$dir/$1.$2}g;
    $conf =~ s{server api\.stripe\.com:443;}{server 127.0.0.1:443;};
    $conf =~ s{listen 443 ssl http2;}{listen 127.0.0.1:$port ssl http2;}g;
    $conf =~ s{listen 10\.0\.0\.2:9145;}{listen 127.0.0.1:$metrics;};
    $conf =~ s{^user www-data;$}{}m;

    like $conf, qr{billing_marketplace acme;.*billing_marketplace globex;}s,
        'marketplaces.conf has two marketplaces';

    $conf = passes('marketplaces', $conf);

    # one key for both, as a copy-paste would make it: nginx -t says so
    (my $same = $conf) =~ s{mp/globex/stripe\.key}{mp/acme/stripe.key}
        or die 'marketplaces.conf: no globex key file';
    $same =~ s{billing_marketplace globex;}{billing_marketplace acme;}
        or die;
    $t->write_file('marketplaces-same.conf', $same);
    my ($rc, $out) = nginx_t("$dir/marketplaces-same.conf", "$dir/",
        "$dir/same.log");
    isnt $rc, 0, 'one marketplace name for two accounts: nginx -t fails';
    like $out, qr/"billing_marketplace acme" in \S+:\d+ has another /,
        '... and says where' or diag $out;
}

$t->done;
done_testing;
