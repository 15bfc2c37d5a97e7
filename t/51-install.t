# make install, for those who do not use packages: the module, its
# load_module snippet and the docs under $(DESTDIR)$(PREFIX), the snippet
# naming the module by its path without DESTDIR; make uninstall takes
# them away. Then a make install into a prefix of the test's, and nginx
# loading the module through the installed snippet answers a webhook.

use strict;
use warnings;

use Test::More;
use BillingTest qw(:all);
use File::Compare qw(compare);
use File::Find qw(find);

plan skip_all => 'make install is tested by make test, not against an '
    . 'AddressSanitizer or static build'
    if $ENV{BILLING_ASAN} || $ENV{BILLING_STATIC};

my $t = BillingTest->new;
my $repo = BillingTest->repo;
my $dir = $t->dir;
my $module = "$repo/build/ngx_http_billing_module.so";

# make, on its own (not the jobserver of a make test running this)
sub make {
    my (@args) = @_;
    local @ENV{qw(MAKEFLAGS MFLAGS MAKELEVEL)};
    delete @ENV{qw(MAKEFLAGS MFLAGS MAKELEVEL)};
    my $pid = open(my $fh, '-|') // die "fork: $!";
    if ($pid == 0) {
        open(STDERR, '>&', \*STDOUT) or die "dup: $!";
        exec 'make', '--no-print-directory', '-C', $repo, @args
            or do { print "exec make: $!\n"; exit 127 };
    }
    my $out = do { local $/; <$fh> } // '';
    close $fh;
    return ($? >> 8, $out);
}

# every file and link under $root, relative to it
sub tree {
    my ($root) = @_;
    my @files;
    return () unless -d $root;
    find({ no_chdir => 1, wanted => sub {
        push @files, substr($_, length($root) + 1) if -f $_ || -l $_;
    } }, $root);
    return sort @files;
}

my @examples = map { (split m{/})[-1] } glob "$repo/conf-examples/*.conf";
ok @examples, 'conf-examples/ has configurations';

# DESTDIR and PREFIX

my $dest = "$dir/dest";
my ($rc, $out) = make('install', "DESTDIR=$dest", 'PREFIX=/opt/billing');
is $rc, 0, 'make install DESTDIR=... PREFIX=/opt/billing' or diag $out;

my $root = "$dest/opt/billing";
is_deeply [ tree($dest) ], [ sort
    'opt/billing/lib/nginx/modules/ngx_http_billing_module.so',
    'opt/billing/share/nginx/modules-available/mod-http-billing.conf',
    'opt/billing/share/doc/ngx_http_billing_module/README.md',
    map { "opt/billing/share/doc/ngx_http_billing_module/conf-examples/$_" }
        @examples,
], 'the module, its snippet and the docs, under DESTDIR/PREFIX';

my $so = "$root/lib/nginx/modules/ngx_http_billing_module.so";
is compare($so, $module), 0, 'the module installed is the one make built';
is sprintf('%04o', (stat $so)[2] & 07777), '0644', '... mode 0644';
is $t->read_file("$root/share/nginx/modules-available/mod-http-billing.conf"),
    "load_module /opt/billing/lib/nginx/modules/ngx_http_billing_module.so;\n",
    'the snippet loads the module by its path under PREFIX, not DESTDIR';
is compare("$root/share/doc/ngx_http_billing_module/README.md",
    "$repo/README.md"), 0, 'the README';

($rc, $out) = make('uninstall', "DESTDIR=$dest", 'PREFIX=/opt/billing');
is $rc, 0, 'make uninstall DESTDIR=... PREFIX=/opt/billing' or diag $out;
is_deeply [ tree($dest) ], [], 'make uninstall leaves no file';
ok !-e "$root/share/doc/ngx_http_billing_module", '... nor the doc directory';

# a prefix nginx loads the module from

my $prefix = "$dir/usr";
($rc, $out) = make('install', "PREFIX=$prefix");
is $rc, 0, 'make install PREFIX=<test directory>' or diag $out;

my $SECRET = 'whsec_' . join '', map { ('a'..'z', 0..9)[rand 36] } 1 .. 32;
$t->write_file('whsec', "$SECRET\n");
$t->secrets($SECRET);
$t->start_redis;
$t->start_nginx(<<'EOF', no_module => 1,
    billing_redis 127.0.0.1:%%REDIS_PORT%% timeout=1s;
    billing_stripe_webhook_secret_file %%DIR%%/whsec;

    server {
        listen 127.0.0.1:%%PORT%%;
        location = /stripe/webhook { billing_webhook; }
    }
EOF
    main => "include $prefix/share/nginx/modules-available/mod-http-billing.conf;");

my $event = invoice_event(type => 'invoice.paid');
my $r = $t->webhook($event);
is $r->{status}, 200, 'nginx with the installed module: a webhook is recorded'
    or diag explain $r;
my $id = json_decode($event)->{data}{object}{id};
is $t->redis('HGET', "billing:invoice:$id", 'status'), 'paid',
    '... in Redis';

$t->done;
done_testing();
