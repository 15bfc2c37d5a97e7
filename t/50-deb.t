# The Debian package, as an operator installs it: "make deb" builds it,
# "apt-get install ./...deb" installs it into this system's nginx, and
# then the stock nginx.conf loads it (modules-enabled); with a
# billing_webhook server added (a conf.d snippet of a temporary copy of
# nginx.conf, with its secret file, in a temporary directory) "nginx -t"
# passes. "apt-get remove" disables it, "apt-get purge" leaves nothing:
# no file of the package, no modules-enabled link, dpkg "not-installed".
#
# Root only (skipped otherwise): it changes the system, and puts it back
# as it found it, also when it fails (the END block purges the package).
# It refuses to run where the package, or a module of that name, is
# already there. Set BILLING_DEB to a .deb to test it instead of running
# "make deb". nginx -t is given -e, a log in the temporary directory:
# the system's logs are opened but not written to.

use strict;
use warnings;

use Test::More;
use BillingTest ();     # the repository; INT/TERM run the END block
use File::Temp qw(tempdir);
use Time::HiRes qw(time);

my $PKG = 'libnginx-mod-http-billing';
my $SO = '/usr/lib/nginx/modules/ngx_http_billing_module.so';
my $AVAILABLE = '/usr/share/nginx/modules-available/mod-http-billing.conf';
my $ENABLED = '/etc/nginx/modules-enabled/50-mod-http-billing.conf';
my $DOC = "/usr/share/doc/$PKG";
my $NGINX = '/usr/sbin/nginx';
my $STOCK = '/etc/nginx/nginx.conf';

plan skip_all => 'needs root: installs the package into this system\'s '
    . 'nginx with apt-get and purges it (run make test as root)'
    if $> != 0;
plan skip_all => 'the package is tested by make test, not against an '
    . 'AddressSanitizer or static build'
    if $ENV{BILLING_ASAN} || $ENV{BILLING_STATIC};

for my $need ('/usr/bin/apt-get', '/usr/bin/dpkg-deb', '/usr/bin/dpkg-query',
              $NGINX, $STOCK)
{
    plan skip_all => "no $need here: not a Debian system with its nginx"
        unless -e $need;
}

my $was = status();
plan skip_all => "$PKG is on this system already ($was): "
    . 'this test would remove it'
    if $was ne 'not-installed';

for my $path ($SO, $AVAILABLE, $ENABLED, "$ENABLED.removed") {
    plan skip_all => "$path is there already, not from this test's package"
        if -e $path || -l $path;
}

my $repo = BillingTest->repo;
my $dir = tempdir('billing-deb-XXXXXX', TMPDIR => 1,
    CLEANUP => !$ENV{BILLING_KEEP});
diag("BILLING_KEEP: files kept in $dir") if $ENV{BILLING_KEEP};

my %timing;
my $installed;          # set once apt-get may have installed something
my $ending;             # in the END block: signals are ignored

# prove gone (its end of the pipe closed) must not kill the test before
# it has purged: a handler, not IGNORE, which apt-get would inherit
$SIG{PIPE} = sub { };

# whatever happens, the system is left as it was found (a signal waits
# for the command under way, see run(), then ends the test here)
END {
    my $rc = $?;
    $ending = 1;
    local @SIG{qw(INT TERM HUP)} = ('IGNORE') x 3;
    if ($installed && status() ne 'not-installed') {
        diag("END: purging $PKG");
        my ($prc, $out) = run(apt_get('purge', $PKG));
        ($prc, $out) = run('dpkg', '--purge', $PKG) if $prc != 0;
        diag("END: could not purge $PKG:\n$out") if $prc != 0;
    }
    $? = $rc;
}


# --- the package --------------------------------------------------------

my $version = module_version();
like $version, qr/^[0-9][A-Za-z0-9.+~]*$/,
    "the module's version ($version), from src/ngx_http_billing_module.h";

my ($rc, $arch) = run('dpkg', '--print-architecture');
chomp $arch;

my $deb = $ENV{BILLING_DEB};
unless ($deb) {
    $deb = "$repo/build/${PKG}_${version}_$arch.deb";

    # a make of its own: not the jobserver of a make test running this
    local $ENV{MAKEFLAGS};
    local $ENV{MFLAGS};
    local $ENV{MAKELEVEL};
    delete @ENV{qw(MAKEFLAGS MFLAGS MAKELEVEL)};

    my $t0 = time;
    my ($mrc, $out) = run('make', '--no-print-directory', '-C', $repo, 'deb');
    $timing{'make deb'} = time - $t0;
    is $mrc, 0, 'make deb (dpkg-buildpackage, lintian without error)'
        or do { diag(tail($out, 40)); done_testing(); exit 1 };
}

ok -f $deb, "the package is $deb"
    or do { done_testing(); exit 1 };

my %field = map { $_ => deb_field($deb, $_) }
    qw(Package Version Architecture Depends Recommends Section);

is $field{Package}, $PKG, "Package: $PKG";
like $field{Version}, qr/^\Q$version\E(?:\+b[0-9]+)?$/,
    "Version: the module's ($field{Version})";
is $field{Architecture}, $arch, "Architecture: $arch";
is $field{Section}, 'httpd', 'Section: httpd, as Debian\'s modules';

my @depends = map { s/\s*\(.*\)//r } split /\s*,\s*/, $field{Depends};
my ($abi) = (nginx_provides() =~ /\b(nginx-abi-[^\s,]+)/);
ok $abi, "this nginx provides an ABI (" . ($abi // 'none') . ')';
ok((grep { $_ eq ($abi // '') } @depends),
    "Depends on the ABI of the nginx it was built against ($abi)")
    or diag("Depends: $field{Depends}");
for my $lib (qw(libhiredis libjansson libssl)) {
    ok((grep { /^\Q$lib\E/ } @depends), "Depends on $lib... (dh_shlibdeps)")
        or diag("Depends: $field{Depends}");
}

my @contents = deb_contents($deb);
my %in = map { $_ => 1 } @contents;
ok $in{$SO}, "it holds $SO";
ok $in{$AVAILABLE}, "it holds $AVAILABLE";
ok $in{"$DOC/copyright"}, 'it holds its copyright file';
ok $in{"$DOC/README.md.gz"} || $in{"$DOC/README.md"}, 'it holds the README';
for my $conf (glob "$repo/conf-examples/*") {
    my $name = (split m{/}, $conf)[-1];
    ok $in{"$DOC/conf-examples/$name"}, "it holds conf-examples/$name";
}
is_deeply [ grep { !m{^/usr(?:/|$)} } @contents ], [],
    'everything it ships is under /usr (the link is made on install)';

# every path of the package, as it is before the install: what the purge
# must give back (/usr/lib/nginx/modules, e.g., may not be there yet)
my %before = map { $_ => (-e $_ || -l $_) ? 1 : 0 } @contents;

# apt-get must bring the package and nothing else: its libraries are
# those the build needed, so they are here
($rc, my $sim) = run(apt_get('-s', 'install', $deb));
is $rc, 0, 'apt-get -s install ./...deb' or diag(tail($sim, 20));
my @acts = $sim =~ /^((?:Inst|Remv|Purg) \S+)/mg;
is_deeply \@acts, ["Inst $PKG"], 'installing it installs nothing else'
    or do { diag(tail($sim, 20)); done_testing(); exit 1 };


# --- installed ------------------------------------------------------------

my $t0 = time;
$installed = 1;
($rc, my $out) = run(apt_get('--no-install-recommends', 'install', $deb));
$timing{'apt-get install'} = time - $t0;
is $rc, 0, 'apt-get install ./...deb' or diag(tail($out, 20));
is status(), 'installed', 'dpkg: installed';

ok -f $SO, "$SO is there";
is slurp($AVAILABLE), "load_module modules/ngx_http_billing_module.so;\n",
    "$AVAILABLE loads the module";
ok -l $ENABLED, "$ENABLED is made";
is readlink($ENABLED), $AVAILABLE, "... a link to $AVAILABLE";

my ($trc, $tout) = nginx_t($STOCK, 'stock');
is $trc, 0, 'nginx -t passes with the stock nginx.conf, the module loaded'
    or diag($tout);

# the stock nginx.conf, read as it is, plus a conf.d of our own
my $conf = stock_plus_billing();
($trc, $tout) = nginx_t($conf, 'billing');
is $trc, 0, 'nginx -t passes with the stock nginx.conf plus a '
    . 'billing_webhook server' or diag($tout);
like $tout, qr/test is successful/, '... nginx says the test is successful';
unlike $tout, qr/\[(?:emerg|alert|crit)\]/, '... and nothing at emerg, alert, crit';


# --- removed, then purged ---------------------------------------------------

$t0 = time;
($rc, $out) = run(apt_get('remove', $PKG));
is $rc, 0, 'apt-get remove' or diag(tail($out, 20));
is status(), 'config-files', 'dpkg: config-files (removed, not purged)';
ok !-e $ENABLED && !-l $ENABLED, "$ENABLED is gone";
ok -l "$ENABLED.removed", "... kept as $ENABLED.removed, as Debian's modules do";
ok !-e $SO, "$SO is gone";
($trc, $tout) = nginx_t($STOCK, 'removed');
is $trc, 0, 'nginx -t passes with the stock nginx.conf once removed'
    or diag($tout);

($rc, $out) = run(apt_get('purge', $PKG));
$timing{'apt-get remove, purge'} = time - $t0;
is $rc, 0, 'apt-get purge' or diag(tail($out, 20));
is status(), 'not-installed', 'dpkg: not-installed';
ok !-e $ENABLED && !-l $ENABLED && !-l "$ENABLED.removed",
    'no modules-enabled link is left';

my @left = grep { ((-e $_ || -l $_) ? 1 : 0) != $before{$_} } @contents;
is_deeply \@left, [], 'every path of the package is as it was before the install'
    or diag(join "\n", map { "$_: " . ($before{$_} ? 'gone' : 'left') } @left);

($trc, $tout) = nginx_t($STOCK, 'purged');
is $trc, 0, 'nginx -t passes with the stock nginx.conf once purged'
    or diag($tout);
($trc, $tout) = nginx_t($conf, 'billing-purged');
isnt $trc, 0, 'the billing configuration fails nginx -t once purged';
like $tout, qr/unknown directive "billing_/, '... the module is gone';

$installed = 0;

note(sprintf '%s: %.1fs', $_, $timing{$_}) for sort keys %timing;

done_testing();


# --- helpers ----------------------------------------------------------------

# runs a command, stdin closed, stdout and stderr together: (exit, output).
# A signal meanwhile waits for it to finish (an apt-get stopped half-way
# would leave dpkg's database half-done), and then ends the test.
sub run {
    my (@cmd) = @_;

    local $ENV{DEBIAN_FRONTEND} = 'noninteractive';
    local $ENV{LC_ALL} = 'C';

    my $caught;
    local @SIG{qw(INT TERM HUP)} = (sub { $caught //= $_[0] }) x 3;

    my $pid = open(my $fh, '-|') // die "fork: $!";
    if ($pid == 0) {
        open(STDERR, '>&', \*STDOUT) or die "dup: $!";
        open(STDIN, '<', '/dev/null') or die "stdin: $!";
        exec { $cmd[0] } @cmd or do { print "exec $cmd[0]: $!\n"; exit 127 };
    }
    my $out = do { local $/; <$fh> } // '';
    close $fh;
    my $rc = $? == -1 ? 127 : $? >> 8;
    die "caught SIG$caught\n" if $caught && !$ending;
    return ($rc, $out);
}

# apt-get, unattended, waiting a while for a dpkg lock someone else holds
sub apt_get {
    return ('apt-get', '-y', '-o', 'DPkg::Lock::Timeout=120', @_);
}

# dpkg's word for the package: not-installed, config-files, installed, ...
sub status {
    my ($rc, $out) = run('dpkg-query', '-W', '-f=${db:Status-Status}', $PKG);
    return 'not-installed' if $rc != 0 || $out eq '';
    return $out;
}

sub nginx_provides {
    my ($rc, $out) = run('dpkg-query', '-W', '-f=${Provides}', 'nginx');
    return $rc == 0 ? $out : '';
}

sub module_version {
    my $h = slurp("$repo/src/ngx_http_billing_module.h");
    my ($v) = $h =~ /^#\s*define\s+NGX_HTTP_BILLING_VERSION\s+"([^"]*)"/m;
    return $v // '';
}

sub deb_field {
    my ($deb, $name) = @_;
    my ($rc, $out) = run('dpkg-deb', '-f', $deb, $name);
    chomp $out;
    return $rc == 0 ? $out : '';
}

# the paths the package ships, absolute, directories without their slash
sub deb_contents {
    my ($deb) = @_;
    my ($rc, $out) = run('dpkg-deb', '--fsys-tarfile', $deb);
    die "dpkg-deb --fsys-tarfile $deb failed\n" if $rc != 0;
    my $tar = "$dir/contents.tar";
    open my $fh, '>:raw', $tar or die "$tar: $!";
    print $fh $out;
    close $fh;
    ($rc, $out) = run('tar', '-tf', $tar);
    die "tar -tf $tar failed\n" if $rc != 0;
    return grep { $_ ne '' && $_ ne '/' }
        map { s{^\.}{}r =~ s{/$}{}r } split /\n/, $out;
}

# nginx -t, its first messages in a log of the test's: (exit, output)
sub nginx_t {
    my ($conf, $name) = @_;
    my ($rc, $out) = run($NGINX, '-t', '-c', $conf, '-e', "$dir/$name.log");
    return ($rc, $out);
}

# a copy of the stock nginx.conf with, in its http block, an include of a
# conf.d of the test's: billing_redis, the webhook secret and a
# billing_webhook server (nginx -t neither listens nor connects)
sub stock_plus_billing {
    my $stock = slurp($STOCK);
    my $include = "include $dir/conf.d/*.conf;";

    (my $conf = $stock) =~ s{^(\s*include\s+/etc/nginx/conf\.d/\*\.conf;)}
                              {$1\n\t$include}m
        or $conf =~ s{^(\s*http\s*\{)}{$1\n\t$include}m
        or die "$STOCK has no http block\n";

    mkdir "$dir/conf.d" or die "mkdir: $!";
    write_file("$dir/whsec", "whsec_debpackagetest0123456789\n", 0600);
    write_file("$dir/conf.d/billing.conf", <<"EOF", 0644);
billing_redis 127.0.0.1:6379 timeout=1s;
billing_stripe_webhook_secret_file $dir/whsec;

server {
    listen 127.0.0.1:8089;
    server_name billing-deb-test.invalid;

    location = /stripe/webhook {
        billing_webhook;
    }
}
EOF
    return write_file("$dir/nginx.conf", $conf, 0644);
}

sub write_file {
    my ($path, $content, $mode) = @_;
    open my $fh, '>', $path or die "$path: $!";
    print $fh $content;
    close $fh or die "$path: $!";
    chmod $mode, $path;
    return $path;
}

sub slurp {
    my ($path) = @_;
    open my $fh, '<', $path or return undef;
    local $/;
    return <$fh>;
}

sub tail {
    my ($text, $n) = @_;
    my @lines = split /\n/, $text // '';
    return join "\n", @lines > $n ? @lines[-$n .. -1] : @lines;
}
