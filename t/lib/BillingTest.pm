package BillingTest;

# Test harness for ngx_http_billing_module, core Perl only.
#
# Every test file gets its own temporary directory, redis-server and
# nginx on free loopback ports; everything is stopped at the end, also
# when the test dies. See the POD at the end of this file.

use strict;
use warnings;

use Carp qw(croak);
use Config;
use Cwd qw(abs_path);
use Digest::SHA qw(hmac_sha256_hex);
use Exporter qw(import);
use File::Basename qw(dirname);
use File::Spec;
use File::Temp qw(tempdir);
use HTTP::Tiny;
use IO::Select;
use IO::Socket::INET;
use JSON::PP;
use POSIX qw(:sys_wait_h);
use Scalar::Util qw(weaken);
use Test::More ();
use Time::HiRes qw(time sleep);

our @EXPORT_OK = qw(stripe_sign stripe_signature_header invoice_event
    stripe_event stripe_fixture invoice_object json_encode json_decode
    wait_until random_id subscription_request answers_text
    raw_json_post);
our %EXPORT_TAGS = (all => \@EXPORT_OK);

my $REPO = abs_path(dirname(__FILE__) . '/../..');
my $NGINX = $ENV{BILLING_NGINX} || '/usr/sbin/nginx';
my $REDIS = $ENV{BILLING_REDIS_SERVER} || 'redis-server';

my $JSON = JSON::PP->new->canonical->allow_nonref;

my @LIVE;           # every harness object not yet cleaned up (weak)

# a signal should still run the END block that stops the children
for my $sig (qw(INT TERM HUP)) {
    $SIG{$sig} = sub { die "caught SIG$sig\n" } unless $SIG{$sig};
}


# ---------------------------------------------------------------------
# construction, files

sub new {
    my ($class, %opts) = @_;

    my $dir = tempdir('billing-test-XXXXXX', TMPDIR => 1,
        CLEANUP => !$ENV{BILLING_KEEP});
    chmod 0755, $dir;

    my $self = bless {
        dir          => $dir,
        port         => free_port(),
        redis_port   => free_port(),
        ignore       => [],
        module       => $ENV{BILLING_MODULE}
                        || "$REPO/build/ngx_http_billing_module.so",
        asan         => $ENV{BILLING_ASAN} ? 1 : 0,
        static       => $ENV{BILLING_STATIC} ? 1 : 0,
        %opts,
    }, $class;

    push @LIVE, $self;
    weaken($LIVE[-1]);

    Test::More::diag("BILLING_KEEP: files kept in $dir") if $ENV{BILLING_KEEP};

    return $self;
}

sub dir        { $_[0]{dir} }
sub port       { $_[0]{port} }
sub redis_port { $_[0]{redis_port} }
sub module     { $_[0]{module} }
sub repo       { $REPO }

sub path {
    my ($self, $name) = @_;
    return "$self->{dir}/$name";
}

sub write_file {
    my ($self, $name, $content) = @_;
    my $path = $name =~ m{^/} ? $name : "$self->{dir}/$name";
    open my $fh, '>', $path or croak "write $path: $!";
    binmode $fh;
    print $fh $content;
    close $fh or croak "close $path: $!";
    return $path;
}

sub read_file {
    my ($self, $name) = @_;
    my $path = $name =~ m{^/} ? $name : "$self->{dir}/$name";
    open my $fh, '<', $path or return undef;
    binmode $fh;
    local $/;
    my $content = <$fh>;
    return defined $content ? $content : '';
}

# a port nothing listens on right now
sub free_port {
    my $s = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0,
        Proto => 'tcp', Listen => 1, ReuseAddr => 1)
        or croak "free_port: $!";
    my $port = $s->sockport;
    close $s;
    return $port;
}

# polls $code until it returns true or $timeout seconds have passed;
# returns the last value of $code
sub wait_until {
    my ($code, $timeout, $interval) = @_;
    $timeout //= 10;
    $interval //= 0.05;
    my $deadline = time + $timeout;
    while (1) {
        my $v = $code->();
        return $v if $v || time >= $deadline;
        sleep $interval;
    }
}


# ---------------------------------------------------------------------
# child processes

my $PRCTL = $Config{archname} =~ /^x86_64-linux/ ? 157
          : $Config{archname} =~ /^aarch64-linux/ ? 167 : undef;

# fork + exec with stdout/stderr appended to $log; the child gets
# SIGTERM when this process dies, even by SIGKILL
sub _spawn {
    my ($self, $log, $env, @cmd) = @_;

    my $pid = fork;
    croak "fork: $!" unless defined $pid;

    if ($pid == 0) {
        eval {
            open STDIN, '<', '/dev/null';
            open STDOUT, '>>', $log or die "open $log: $!";
            open STDERR, '>&', \*STDOUT or die "dup: $!";
            $ENV{$_} = $env->{$_} for keys %{ $env || {} };
            syscall($PRCTL, 1, 15) if $PRCTL;        # PR_SET_PDEATHSIG
            exec { $cmd[0] } @cmd or die "exec $cmd[0]: $!";
        };
        print STDERR $@;
        POSIX::_exit(127);
    }

    return $pid;
}

# waits up to $timeout seconds for $pid to exit; returns its status or
# undef if it is still running
sub _reap {
    my ($pid, $timeout) = @_;
    my $deadline = time + $timeout;
    while (1) {
        my $r = waitpid($pid, WNOHANG);
        return $? if $r == $pid;
        return 0 if $r == -1;               # not our child any more
        return undef if time >= $deadline;
        sleep 0.02;
    }
}

sub _stop_pid {
    my ($pid, $first_signal, $timeout) = @_;
    kill 'CONT', $pid;
    kill $first_signal, $pid;
    return if defined _reap($pid, $timeout);
    kill 'TERM', $pid;
    return if defined _reap($pid, 3);
    kill 'KILL', $pid;
    _reap($pid, 3);
}

sub _port_open {
    my ($port) = @_;
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port,
        Proto => 'tcp', Timeout => 1);
    return 0 unless $s;
    close $s;
    return 1;
}

sub _tail {
    my ($text, $n) = @_;
    return '' unless defined $text;
    my @l = split /\n/, $text;
    @l = @l[-$n .. -1] if @l > $n;
    return join("\n", @l) . "\n";
}


# ---------------------------------------------------------------------
# redis

sub start_redis {
    my ($self, %opts) = @_;

    croak "redis already running" if $self->{redis_pid};

    $self->{redis_opts} = { %opts };
    $self->{redis_password} = $opts{requirepass};
    delete $self->{redis_client};

    my @cmd = ($REDIS, '--port', $self->{redis_port},
        '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no',
        '--daemonize', 'no', '--dir', $self->{dir});
    push @cmd, '--requirepass', $opts{requirepass} if defined $opts{requirepass};
    push @cmd, @{ $opts{args} } if $opts{args};

    $self->{redis_pid} = $self->_spawn("$self->{dir}/redis.log", undef, @cmd);

    my $ok = wait_until(sub {
        croak "redis-server exited:\n" . _tail($self->read_file('redis.log'), 20)
            if defined _reap($self->{redis_pid}, 0);
        my $c = eval { BillingTest::Redis->new(port => $self->{redis_port},
            password => $opts{requirepass}, timeout => 1) };
        return 0 unless $c;
        my $pong = eval { $c->cmd('PING') };
        return defined $pong && $pong eq 'PONG';
    }, 10);

    croak "redis-server did not answer PING:\n"
        . _tail($self->read_file('redis.log'), 20) unless $ok;

    return $self;
}

sub stop_redis {
    my ($self) = @_;
    my $pid = delete $self->{redis_pid} or return;
    delete $self->{redis_client};
    _stop_pid($pid, 'TERM', 5);
    $self->{redis_frozen} = 0;
}

sub restart_redis {
    my ($self) = @_;
    my %opts = %{ $self->{redis_opts} || {} };
    $self->stop_redis;
    $self->start_redis(%opts);
}

sub freeze_redis {
    my ($self) = @_;
    croak "redis is not running" unless $self->{redis_pid};
    kill 'STOP', $self->{redis_pid};
    $self->{redis_frozen} = 1;
}

sub thaw_redis {
    my ($self) = @_;
    croak "redis is not running" unless $self->{redis_pid};
    kill 'CONT', $self->{redis_pid};
    $self->{redis_frozen} = 0;
}

# a new client; options: db, password (default: the requirepass redis
# was started with), timeout (seconds, default 5), port
sub redis_client {
    my ($self, %opts) = @_;
    return BillingTest::Redis->new(port => $self->{redis_port},
        password => $self->{redis_password}, %opts);
}

# one command on a cached connection to db 0; reconnects once if the
# connection broke (redis restarted). Dies on error replies.
sub redis {
    my ($self, @cmd) = @_;
    for my $try (1, 2) {
        $self->{redis_client} ||= $self->redis_client;
        my $r = eval { [ $self->{redis_client}->cmd(@cmd) ] };
        return wantarray ? @$r : $r->[0] if $r;
        my $err = $@;
        die $err if ref $err || $try == 2;  # an error reply or a second failure
        delete $self->{redis_client};
    }
}

# HGETALL as a hash reference ({} when the key does not exist)
sub redis_hash {
    my ($self, $key) = @_;
    my $r = $self->redis('HGETALL', $key);
    return { @{ $r || [] } };
}


# ---------------------------------------------------------------------
# nginx

sub _asan_env {
    my ($self) = @_;
    return {} unless $self->{asan};
    my @libs;
    for my $lib (qw(libasan.so libubsan.so)) {
        chomp(my $p = `gcc -print-file-name=$lib 2>/dev/null`);
        push @libs, $p if $p && $p =~ m{/};
    }
    return {
        LD_PRELOAD     => join(' ', @libs),
        ASAN_OPTIONS   => "detect_leaks=0:log_path=$self->{dir}/asan",
        UBSAN_OPTIONS  => "print_stacktrace=1:log_path=$self->{dir}/ubsan",
    };
}

sub _conf {
    my ($self, $http, %opts) = @_;

    my $dir = $self->{dir};
    my $error_log = $opts{error_log} || "$dir/error.log";
    my $workers = $opts{workers} || 1;

    my $conf = '';
    # an nginx built with the module in has nothing to load, whatever a
    # test asks (no_module => 0)
    $conf .= "load_module $self->{module};\n"
        unless $opts{no_module} || $self->{static};
    $conf .= "user root;\n" if $> == 0;
    $conf .= <<"EOF";
daemon off;
master_process on;
worker_processes $workers;
error_log $error_log debug;
pid $dir/nginx.pid;
EOF
    $conf .= "$opts{main}\n" if defined $opts{main};
    $conf .= <<"EOF";
events {
    worker_connections 1024;
}

http {
    access_log $dir/access.log;
    client_body_temp_path $dir/client_body_temp;
    proxy_temp_path $dir/proxy_temp;
    fastcgi_temp_path $dir/fastcgi_temp;
    uwsgi_temp_path $dir/uwsgi_temp;
    scgi_temp_path $dir/scgi_temp;

$http
}
EOF

    my %vars = (
        PORT       => $self->{port},
        REDIS_PORT => $self->{redis_port},
        DIR        => $dir,
        MODULE     => $self->{module},
        (map { $_ => $opts{$_} } grep { /^[A-Z][A-Z0-9_]*$/ } keys %opts),
        %{ $opts{vars} || {} },
    );
    $conf =~ s/%%([A-Z][A-Z0-9_]*)%%/
        defined $vars{$1} ? $vars{$1} : croak "no value for %%$1%%"/ge;

    return $conf;
}

# Starts nginx with $http inside its http block and waits until it
# accepts connections. Options: workers, main (extra main-context
# text), no_module, nginx_test, NAME => value for %%NAME%%, vars => {}.
# With nginx_test => 1 runs `nginx -t` instead and returns
# ($exit_code, $output); nginx_test => '-T' runs `nginx -T`.
sub start_nginx {
    my ($self, $http, %opts) = @_;

    my $dir = $self->{dir};

    if ($opts{nginx_test}) {
        my $conf = $self->write_file('nginx-t.conf',
            $self->_conf($http, %opts, error_log => "$dir/nginx-t.log"));
        my $out = "$dir/nginx-t.out";
        unlink $out;
        my $flag = $opts{nginx_test} eq '-T' ? '-T' : '-t';
        my $pid = $self->_spawn($out, $self->_asan_env, $NGINX,
            $flag, '-p', "$dir/", '-c', $conf, '-e', "$dir/nginx-t.log");
        my $status = _reap($pid, 30);
        unless (defined $status) {
            _stop_pid($pid, 'KILL', 1);
            croak "nginx -t did not finish";
        }
        return ($status >> 8 || ($status & 127 ? 128 + ($status & 127) : 0),
            $self->read_file($out));
    }

    croak "nginx already running" if $self->{nginx_pid};

    my $conf = $self->write_file('nginx.conf', $self->_conf($http, %opts));
    $self->{nginx_opts} = { %opts };

    my $pid = $self->_spawn("$dir/nginx.stderr", $self->_asan_env, $NGINX,
        '-p', "$dir/", '-c', $conf, '-e', "$dir/error.log");
    $self->{nginx_pid} = $pid;

    my $timeout = $opts{start_timeout} || 10;
    my $deadline = time + $timeout;
    while (1) {
        my $status = _reap($pid, 0);
        if (defined $status) {
            delete $self->{nginx_pid};
            croak "nginx exited (status $status) while starting:\n"
                . _tail($self->read_file('nginx.stderr'), 20)
                . _tail($self->error_log, 20);
        }
        last if _port_open($self->{port});
        if (time >= $deadline) {
            $self->stop_nginx;
            croak "nginx did not listen on $self->{port} within ${timeout}s:\n"
                . _tail($self->error_log, 20);
        }
        sleep 0.02;
    }

    # the port is the master's: wait for the workers too
    my $workers = $opts{workers} || 1;
    wait_until(sub {
        my @started = ($self->error_log =~ /start worker process/g);
        @started >= $workers;
    }, 5);

    return $self;
}

sub nginx_pid { $_[0]{nginx_pid} }

sub stop_nginx {
    my ($self) = @_;
    my $pid = delete $self->{nginx_pid} or return;
    _stop_pid($pid, 'QUIT', 10);
}

# HUP, then waits until the new workers are started and the old
# ones gone (the error log says so)
sub reload_nginx {
    my ($self, $http, %opts) = @_;
    croak "nginx is not running" unless $self->{nginx_pid};
    if (defined $http) {
        %opts = (%{ $self->{nginx_opts} }, %opts);
        $self->write_file('nginx.conf', $self->_conf($http, %opts));
        $self->{nginx_opts} = { %opts };
    }
    my $workers = $self->{nginx_opts}{workers} || 1;
    my $before = () = $self->error_log =~ /start worker process/g;
    kill 'HUP', $self->{nginx_pid};
    wait_until(sub {
        my $n = () = $self->error_log =~ /start worker process/g;
        $n >= $before + $workers;
    }, 10) or croak "nginx reload did not start new workers:\n"
        . _tail($self->error_log, 20);
    return $self;
}


# ---------------------------------------------------------------------
# HTTP

# $t->http($method, $path, headers => {}, body => '', timeout => 5,
# port => $t->port). Returns {status, reason, headers (lowercase names,
# array refs for repeated ones), content, json (decoded or undef),
# elapsed (seconds)}. Status 599 means HTTP::Tiny's own failure.
sub http {
    my ($self, $method, $path, %opts) = @_;

    my $ua = HTTP::Tiny->new(
        timeout     => $opts{timeout} || 5,
        keep_alive  => 0,
        max_redirect => 0,
        proxy       => undef,
        http_proxy  => undef,
        https_proxy => undef,
        agent       => 'billing-test/1',
    );

    my $port = $opts{port} || $self->{port};
    my %args = (headers => $opts{headers} || {});
    $args{content} = $opts{body} if defined $opts{body};

    my $start = time;
    my $res = $ua->request($method, "http://127.0.0.1:$port$path", \%args);
    my $elapsed = time - $start;

    return {
        status  => $res->{status},
        reason  => $res->{reason},
        headers => $res->{headers} || {},
        content => $res->{content},
        json    => _try_json($res->{content}),
        elapsed => $elapsed,
    };
}

sub _try_json {
    my ($text) = @_;
    return undef unless defined $text && length $text;
    my $v = eval { JSON::PP->new->allow_nonref->decode($text) };
    return $v;
}

# Sends $bytes as they are over a new connection and reads until the
# server closes it (or timeout, default 5 s). Returns {status, headers,
# content, json, raw, elapsed}; status is undef when nothing parseable
# came back.
sub raw_http {
    my ($self, $bytes, %opts) = @_;
    return $self->raw_http_read($self->raw_http_send($bytes, %opts), %opts);
}

# the first half of raw_http: connects and writes, returns a handle for
# raw_http_read (to have several requests under way at once)
sub raw_http_send {
    my ($self, $bytes, %opts) = @_;

    my $start = time;
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
        PeerPort => $opts{port} || $self->{port}, Proto => 'tcp',
        Timeout => $opts{timeout} || 5) or croak "raw_http connect: $!";
    $s->autoflush(1);

    my $off = 0;
    while ($off < length $bytes) {
        my $n = syswrite($s, $bytes, 65536, $off);
        last unless defined $n;             # the server closed early
        $off += $n;
    }
    return { sock => $s, start => $start };
}

sub raw_http_read {
    my ($self, $h, %opts) = @_;

    my $timeout = $opts{timeout} || 5;
    my $s = $h->{sock};
    my $sel = IO::Select->new($s);
    my $deadline = time + $timeout;

    my $raw = '';
    while (time < $deadline) {
        last unless $sel->can_read($deadline - time);
        my $n = sysread($s, my $buf, 65536);
        last unless $n;
        $raw .= $buf;
    }
    close $s;

    my %res = (raw => $raw, headers => {}, elapsed => time - $h->{start});
    if ($raw =~ m{\AHTTP/\d\.\d (\d{3})[^\r\n]*\r\n(.*?)\r\n\r\n}s) {
        $res{status} = $1;
        my $head = $2;
        my $body = substr($raw, $+[0]);
        for my $line (split /\r\n/, $head) {
            my ($k, $v) = $line =~ /^([^:]+):\s*(.*)$/ or next;
            $k = lc $k;
            if (exists $res{headers}{$k}) {
                $res{headers}{$k} = [ ref $res{headers}{$k}
                    ? @{ $res{headers}{$k} } : $res{headers}{$k}, $v ];
            } else {
                $res{headers}{$k} = $v;
            }
        }
        if (($res{headers}{'transfer-encoding'} || '') =~ /chunked/i) {
            my $plain = '';
            while ($body =~ s/\A([0-9a-fA-F]+)[^\r\n]*\r\n//) {
                my $len = hex $1;
                last if $len == 0;
                $plain .= substr($body, 0, $len);
                substr($body, 0, $len + 2) = '';
            }
            $body = $plain;
        }
        $res{content} = $body;
        $res{json} = _try_json($body);
    }
    return \%res;
}


# ---------------------------------------------------------------------
# load: client processes sending requests until told to stop

# Starts clients (default 2) processes, each sending GET path in a loop
# until load_stop, over keep-alive connections. Options: ports => [...]
# (default [$t->port], taken in turn), subs => [...] (an
# X-Subscription-Id drawn at random for each request; none when empty),
# headers => {}, pause (seconds between requests of one client, default
# 0), header => 'x-units' (a response header to record), timeout
# (seconds, default 10). Returns a handle for load_stop.
sub load_start {
    my ($self, $path, %o) = @_;

    my $seq = ++$self->{load_seq};
    my $stop = "$self->{dir}/load-$seq.stop";
    unlink $stop;
    my @ports = @{ $o{ports} || [ $self->{port} ] };
    my @subs = @{ $o{subs} || [] };
    my $parent = $$;
    my @kids;

    for my $i (1 .. ($o{clients} || 2)) {
        my $out = "$self->{dir}/load-$seq-$i.out";
        my $pid = fork;
        croak "fork: $!" unless defined $pid;

        if ($pid == 0) {
            my $ok = eval {
                open my $fh, '>', $out or die "open $out: $!";
                $fh->autoflush(1);
                my $ua = HTTP::Tiny->new(keep_alive => 1,
                    timeout => $o{timeout} || 10, max_redirect => 0,
                    proxy => undef, http_proxy => undef,
                    https_proxy => undef, agent => 'billing-load/1');
                my $k = $i;
                until (-e $stop || getppid() != $parent) {
                    my $port = $ports[$k++ % @ports];
                    my %h = %{ $o{headers} || {} };
                    my $sub = @subs ? $subs[int rand @subs] : '-';
                    $h{'X-Subscription-Id'} = $sub if @subs;
                    my $res = $ua->get("http://127.0.0.1:$port$path",
                        { headers => \%h });
                    my $v = $o{header} ? $res->{headers}{lc $o{header}} : undef;
                    printf $fh "%d %s %.3f %d %s\n", $res->{status}, $sub,
                        time, $port, defined $v ? $v : '-';
                    sleep $o{pause} if $o{pause};
                }
                close $fh;
                1;
            };
            print STDERR $@ unless $ok;
            POSIX::_exit($ok ? 0 : 1);
        }

        push @kids, { pid => $pid, out => $out };
    }

    return { stop => $stop, kids => \@kids, started => time };
}

# the answers a load got so far (it goes on), as load_stop returns them
sub load_answers {
    my ($self, $load) = @_;
    my @answers;
    for my $kid (@{ $load->{kids} }) {
        open my $fh, '<', $kid->{out} or next;
        while (my $l = <$fh>) {
            next unless $l =~ /\n\z/;
            my ($status, $sub, $time, $port, $value) = split ' ', $l;
            push @answers, { status => $status, sub => $sub, time => $time,
                port => $port, value => $value eq '-' ? undef : $value };
        }
        close $fh;
    }
    return \@answers;
}

# stops the clients of load_start, waiting for each to finish its
# request; returns every answer: [{status, sub, time (when it came,
# epoch seconds), port, value (the recorded header)}]
sub load_stop {
    my ($self, $load) = @_;
    open my $fh, '>', $load->{stop} or croak "open $load->{stop}: $!";
    close $fh;
    for my $kid (@{ $load->{kids} }) {
        my $status = _reap($kid->{pid}, 30);
        unless (defined $status) {
            _stop_pid($kid->{pid}, 'KILL', 1);
            croak "load client $kid->{pid} did not stop";
        }
        croak "load client $kid->{pid} failed" if $status;
    }
    return $self->load_answers($load);
}


# ---------------------------------------------------------------------
# Stripe webhooks

# the secrets $t->webhook signs with by default
sub secrets {
    my ($self, @secrets) = @_;
    $self->{secrets} = [ @secrets ] if @secrets;
    return @{ $self->{secrets} || [] };
}

# Writes the secret files of a billing configuration (api.token,
# stripe.key, whsec, as %%DIR%%/<name>) and signs webhooks with that
# whsec; returns { token, key, secret }. Given (another instance's),
# they are shared.
sub billing_files {
    my ($self, %o) = @_;
    my %f = (token  => $o{token}  || 'api-' . random_id('', 32),
             key    => $o{key}    || 'sk_test_' . random_id('', 40),
             secret => $o{secret} || 'whsec_' . random_id('', 32));
    $self->write_file('api.token', "$f{token}\n");
    $self->write_file('stripe.key', "$f{key}\n");
    $self->write_file('whsec', "$f{secret}\n");
    $self->secrets($f{secret});
    $self->{api_token} = $f{token};
    return \%f;
}

# A request to billing_api at /billing/ (prefix => ...), with the bearer
# token billing_files wrote; $body (a Perl structure) is sent as JSON.
# Options as for http (port, timeout: default 30).
sub api {
    my ($self, $method, $path, $body, %o) = @_;
    my $prefix = delete $o{prefix} || '/billing/';
    return $self->http($method, "$prefix$path",
        headers => { Authorization => "Bearer $self->{api_token}",
                     'Content-Type' => 'application/json' },
        defined $body ? (body => JSON::PP->new->utf8->canonical->encode($body))
                      : (),
        timeout => 30, %o);
}

# POSTs $body to the webhook location (path, default /stripe/webhook)
# with a Stripe-Signature made with secrets (default $t->secrets) at
# time t (default now), to port (default the test's). signature => '...'
# sends that header instead; signature => undef sends none. headers => {}
# adds more.
sub webhook {
    my ($self, $body, %opts) = @_;
    my %headers = ('Content-Type' => 'application/json; charset=utf-8',
        'User-Agent' => 'Stripe/1.0 (+https://stripe.com/docs/webhooks)',
        %{ $opts{headers} || {} });
    if (exists $opts{signature}) {
        $headers{'Stripe-Signature'} = $opts{signature}
            if defined $opts{signature};
    } else {
        $headers{'Stripe-Signature'} = stripe_signature_header(
            secrets => $opts{secrets} || [ $self->secrets ],
            t => $opts{t} // time, body => $body);
    }
    return $self->http('POST', $opts{path} || '/stripe/webhook',
        headers => \%headers, body => $body,
        timeout => $opts{timeout}, port => $opts{port});
}

# hex HMAC-SHA256 of "$timestamp.$body" keyed with the whole secret
sub stripe_sign {
    my ($secret, $timestamp, $body) = @_;
    return hmac_sha256_hex("$timestamp.$body", $secret);
}

# "t=...,v1=...[,v1=...]" with one v1 per secret; extra => 'v0=...'
# appends raw text
sub stripe_signature_header {
    my (%o) = @_;
    my $t = int($o{t} // time);
    my $h = "t=$t";
    $h .= ',v1=' . stripe_sign($_, $t, $o{body} // '') for @{ $o{secrets} || [] };
    $h .= ",$o{extra}" if defined $o{extra};
    return $h;
}

my $FIXTURES;

# a resource object of Stripe's fixtures (a deep copy), undef if the
# file or the resource is missing
sub stripe_fixture {
    my ($name) = @_;
    unless (defined $FIXTURES) {
        $FIXTURES = {};
        for my $f ($ENV{BILLING_STRIPE_FIXTURES},
                   "$REPO/../shared/stripe/fixtures3.json",
                   '/work/shared/stripe/fixtures3.json') {
            next unless defined $f && -r $f;
            open my $fh, '<', $f or next;
            local $/;
            my $d = eval { decode_json(<$fh>) } or next;
            $FIXTURES = $d->{resources} || $d;
            last;
        }
    }
    my $obj = $FIXTURES->{$name} or return undef;
    return decode_json(encode_json($obj));
}

my %INVOICE_STATUS = (
    'invoice.finalized'            => 'open',
    'invoice.paid'                 => 'paid',
    'invoice.voided'               => 'void',
    'invoice.marked_uncollectible' => 'uncollectible',
    'invoice.payment_failed'       => 'open',
    'invoice.created'              => 'draft',
);

# the body of a POST subscriptions for $id of $org, the plan's fields
# overridable
sub subscription_request {
    my ($id, $org, %plan) = @_;
    return {
        id => $id, consumer_org => $org,
        customer => { email => "ops\@$org.test", name => "Org $org" },
        plan => { currency => 'usd', base_price => 1500, unit_price => '0.25',
                  unit => 'request', metering_period => 'month',
                  days_until_due => 30, %plan },
    };
}

# what a client saw of the answers given (bodies and headers), as one
# text to look for secrets in
sub answers_text {
    my (@answers) = @_;
    return join "\n", map {
        my $r = $_;
        ($r->{content} // ''),
        map { "$_: " . (ref $r->{headers}{$_} ? join(', ', @{ $r->{headers}{$_} })
                                               : $r->{headers}{$_}) }
            keys %{ $r->{headers} || {} }
    } @answers;
}

# the bytes of a POST of $json (a Perl structure) to $path with a
# bearer $token, for raw_http_send (one request, then close)
sub raw_json_post {
    my ($path, $token, $json) = @_;
    my $body = JSON::PP->new->utf8->canonical->encode($json);
    return "POST $path HTTP/1.1\r\nHost: localhost\r\n"
        . "Authorization: Bearer $token\r\nContent-Type: application/json\r\n"
        . "Content-Length: " . length($body) . "\r\nConnection: close\r\n\r\n$body";
}

# $prefix and $len (default 24) random letters and digits
sub random_id {
    my ($prefix, $len) = @_;
    my @c = ('A' .. 'Z', 'a' .. 'z', '0' .. '9');
    return $prefix . join('', map { $c[rand @c] } 1 .. ($len || 24));
}

sub _minimal_invoice {
    return {
        id => 'in_1Pgc6tB7WZ01zgkWu9fdqL6I', object => 'invoice',
        amount_due => 1000, amount_paid => 0, amount_remaining => 1000,
        billing_reason => 'manual', collection_method => 'send_invoice',
        created => 1721954054, currency => 'usd',
        customer => 'cus_QXg1o8vcGmoR32', description => undef,
        hosted_invoice_url => undef, livemode => JSON::PP::false,
        metadata => {}, status => 'draft', subscription => undef,
        total => 1000, lines => { object => 'list', data => [],
            has_more => JSON::PP::false,
            url => '/v1/invoices/in_1Pgc6tB7WZ01zgkWu9fdqL6I/lines' },
    };
}

# The invoice object of an invoice event, as a hash: Stripe's fixture
# with a fresh id, the status the event type implies, a hosted URL and
# our metadata. Options as for invoice_event.
sub invoice_object {
    my (%o) = @_;
    my $inv = stripe_fixture('invoice') || _minimal_invoice();
    my $type = $o{type} || 'invoice.paid';
    my $id = $o{invoice_id} || ($o{invoice} && $o{invoice}{id})
        || random_id('in_1Pt', 20);
    my $status = $INVOICE_STATUS{$type} // 'open';

    $inv->{id} = $id;
    $inv->{status} = $status;
    $inv->{collection_method} = 'send_invoice';
    $inv->{customer} = $o{customer} if $o{customer};
    $inv->{hosted_invoice_url} =
        "https://invoice.stripe.com/i/acct_1PgafTB7WZ01zgkW/test_"
        . substr($id, 3) . '?s=ap';
    $inv->{invoice_pdf} = "https://pay.stripe.com/invoice/acct_1PgafTB7WZ01zgkW/test_"
        . substr($id, 3) . '/pdf?s=ap';
    $inv->{lines}{url} = "/v1/invoices/$id/lines" if ref $inv->{lines};
    $_->{invoice} = $id for @{ ref $inv->{lines} ? $inv->{lines}{data} : [] };
    if ($status eq 'paid') {
        $inv->{amount_paid} = $inv->{amount_due};
        $inv->{amount_remaining} = 0;
        $inv->{paid} = JSON::PP::true;
    }

    my %md;
    $md{billing_subscription} = $o{subscription} if defined $o{subscription};
    $md{billing_kind} = $o{kind} if defined $o{kind};
    %md = (%md, %{ $o{metadata} }) if $o{metadata};
    $inv->{metadata} = \%md;

    if ($o{invoice}) {
        for my $k (keys %{ $o{invoice} }) {
            if (defined $o{invoice}{$k} || !$o{delete_undef}) {
                $inv->{$k} = $o{invoice}{$k};
            } else {
                delete $inv->{$k};
            }
        }
    }
    return $inv;
}

# A Stripe event as JSON text. Options: type (default invoice.paid),
# id (default a fresh evt_...), created (default now), object (the
# data.object; for invoice events default invoice_object(%o)),
# previous_attributes, event => {} (top-level overrides).
sub stripe_event {
    my (%o) = @_;
    my $type = $o{type} || 'invoice.paid';
    my $object = $o{object};
    $object = invoice_object(%o, type => $type)
        if !$object && $type =~ /^invoice\./;
    $object ||= {};
    my $ev = {
        id               => $o{id} || random_id('evt_1Pt', 20),
        object           => 'event',
        api_version      => '2022-11-15',
        created          => $o{created} // int(time),
        data             => { object => $object },
        livemode         => JSON::PP::false,
        pending_webhooks => 1,
        request          => { id => undef, idempotency_key => undef },
        type             => $type,
    };
    $ev->{data}{previous_attributes} = $o{previous_attributes}
        if $o{previous_attributes};
    %$ev = (%$ev, %{ $o{event} }) if $o{event};
    return $JSON->encode($ev);
}

# invoice_event(type => 'invoice.paid', id => 'evt_..', created => ...,
# invoice_id => 'in_...', subscription => 'sub-42', kind => 'initial',
# customer => 'cus_...', metadata => {...}, invoice => {...overrides})
sub invoice_event {
    my (%o) = @_;
    $o{type} ||= 'invoice.paid';
    croak "invoice_event: $o{type} is not an invoice event"
        unless $o{type} =~ /^invoice\./;
    return stripe_event(%o);
}

sub json_encode { $JSON->encode($_[0]) }
sub json_decode { JSON::PP->new->allow_nonref->decode($_[0]) }


# ---------------------------------------------------------------------
# logs and the end of a test

sub error_log {
    my ($self) = @_;
    my $l = $self->read_file('error.log');
    return defined $l ? $l : '';
}

sub error_log_like {
    my ($self, $re, $name) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    return Test::More::like($self->error_log, $re, $name || "error.log =~ $re");
}

# error.log lines at [alert]/[crit]/[emerg] that may be expected
sub ignore_log {
    my ($self, @re) = @_;
    push @{ $self->{ignore} }, @re;
}

sub _bad_log_lines {
    my ($self) = @_;
    my @bad;
    LINE: for my $line (split /\n/, $self->error_log) {

        # workers' stderr goes to error.log: sanitizer reports land here,
        # and a worker that exits with an error is only a [notice]
        next unless $line =~ /\[(?:alert|crit|emerg)\]/
            || $line =~ /runtime error:|AddressSanitizer|LeakSanitizer/
            || $line =~ /worker process \d+ exited with code [1-9]/;
        for my $re (@{ $self->{ignore} }) {
            next LINE if $line =~ $re;
        }
        push @bad, $line;
    }
    return @bad;
}

sub _sanitizer_reports {
    my ($self) = @_;
    my @reports;
    opendir my $dh, $self->{dir} or return;
    for my $f (sort readdir $dh) {
        next unless $f =~ /^(?:asan|ubsan)\./;
        push @reports, "$f:\n" . $self->read_file($f);
    }
    closedir $dh;
    my $stderr = $self->read_file('nginx.stderr') // '';
    push @reports, "nginx.stderr:\n$stderr"
        if $stderr =~ /runtime error:|AddressSanitizer|LeakSanitizer/;
    return @reports;
}

sub _cleanup {
    my ($self) = @_;
    $self->stop_nginx;
    $self->stop_redis;
}

# Stops nginx and Redis, then checks the logs (one test each).
sub done {
    my ($self) = @_;
    return if $self->{done}++;
    $self->_cleanup;

    local $Test::Builder::Level = $Test::Builder::Level + 1;

    my @bad = $self->_bad_log_lines;
    Test::More::ok(!@bad, 'no alert/crit/emerg in error.log')
        or Test::More::diag(join "\n", @bad[0 .. ($#bad > 40 ? 40 : $#bad)]);

    if ($self->{asan}) {
        my @rep = $self->_sanitizer_reports;
        Test::More::ok(!@rep, 'no sanitizer reports')
            or Test::More::diag(join "\n", @rep);
    }
}

sub DESTROY {
    my ($self) = @_;
    local ($., $@, $!, $^E, $?);
    $self->_cleanup;
}

END {
    my $status = $?;
    for my $t (grep { defined } @LIVE) {
        next if $t->{done};
        $t->_cleanup;
        my @bad = $t->_bad_log_lines;
        Test::More::diag("error.log alert/crit/emerg:\n" . join "\n", @bad) if @bad;
        if ($t->{asan}) {
            my @rep = $t->_sanitizer_reports;
            Test::More::diag(join "\n", @rep) if @rep;
        }
        Test::More::diag("test directory kept: $t->{dir}") if $ENV{BILLING_KEEP};
    }
    $? = $status;
}


# ---------------------------------------------------------------------
# watching what Redis is asked

# a new client in MONITOR mode, for monitor_lines
sub redis_monitor {
    my ($self) = @_;
    my $mon = $self->redis_client;
    $mon->cmd('MONITOR');
    return $mon;
}

# the commands $mon saw since the last call (MONITOR lines, in order),
# up to an ECHO sent now on another connection: none are left behind;
# with $re, only the lines matching it
sub monitor_lines {
    my ($self, $mon, $re) = @_;
    my $marker = 'billing-test-marker-' . int(rand 1e9);
    $self->redis('ECHO', $marker);
    my @lines;
    while (1) {
        my $l = $mon->read_reply(5);
        next unless defined $l && !ref $l;
        last if index($l, $marker) >= 0;
        push @lines, $l if !$re || $l =~ $re;
    }
    return @lines;
}

# how often the gate asked Redis about each subscription since the last
# call: its script's HMGET, seen once a run (not the EVALSHA/EVAL pair)
sub gate_lookups {
    my ($self, $mon) = @_;
    my %n;
    for ($self->monitor_lines($mon, qr/\[\d+ lua\] "HMGET" "billing:sub:/)) {
        $n{$1}++ if /"billing:sub:([^"]*)"/;
    }
    return \%n;
}


# ---------------------------------------------------------------------

package BillingTest::Redis;

# Minimal synchronous RESP2 client. Replies: simple strings and bulk
# strings as strings, integers as numbers, nil as undef, multi-bulk as
# array references. An error reply dies with a BillingTest::Redis::Error
# object (stringifies to the message); I/O errors and timeouts die with
# a plain string.

use strict;
use warnings;
use Carp qw(croak);
use IO::Select;
use IO::Socket::INET;
use Time::HiRes qw(time);

sub new {
    my ($class, %o) = @_;
    my $self = bless { host => '127.0.0.1', timeout => 5, buf => '', %o },
        $class;
    $self->{sock} = IO::Socket::INET->new(PeerAddr => $self->{host},
        PeerPort => $self->{port}, Proto => 'tcp',
        Timeout => $self->{timeout})
        or die "redis connect $self->{host}:$self->{port}: $!\n";
    $self->{sock}->autoflush(1);
    $self->cmd('AUTH', $self->{password}) if defined $self->{password};
    $self->cmd('SELECT', $self->{db}) if $self->{db};
    return $self;
}

sub send {
    my ($self, @args) = @_;
    my $out = '*' . @args . "\r\n";
    for my $arg (@args) {
        my $s = defined $arg ? "$arg" : '';
        utf8::encode($s) if utf8::is_utf8($s);
        $out .= '$' . length($s) . "\r\n$s\r\n";
    }
    my $off = 0;
    while ($off < length $out) {
        my $n = syswrite($self->{sock}, $out, length($out) - $off, $off);
        die "redis write: $!\n" unless defined $n;
        $off += $n;
    }
}

sub cmd {
    my ($self, @args) = @_;
    $self->send(@args);
    return $self->read_reply;
}

# reads more into the buffer; false on timeout
sub _fill {
    my ($self, $deadline) = @_;
    my $left = $deadline - time;
    return 0 if $left <= 0;
    return 0 unless IO::Select->new($self->{sock})->can_read($left);
    my $n = sysread($self->{sock}, my $buf, 65536);
    die "redis read: " . (defined $n ? 'connection closed' : $!) . "\n"
        unless $n;
    $self->{buf} .= $buf;
    return 1;
}

sub _line {
    my ($self, $deadline) = @_;
    while (1) {
        my $i = index $self->{buf}, "\r\n";
        return substr($self->{buf}, 0, $i + 2, '') =~ s/\r\n\z//r if $i >= 0;
        $self->_fill($deadline) or die "redis: timeout\n";
    }
}

sub _bytes {
    my ($self, $n, $deadline) = @_;
    while (length $self->{buf} < $n + 2) {
        $self->_fill($deadline) or die "redis: timeout\n";
    }
    my $s = substr($self->{buf}, 0, $n + 2, '');
    return substr($s, 0, $n);
}

sub _reply {
    my ($self, $deadline) = @_;
    my $line = $self->_line($deadline);
    my ($t, $rest) = (substr($line, 0, 1), substr($line, 1));
    return $rest if $t eq '+';
    return 0 + $rest if $t eq ':';
    if ($t eq '-') {
        return BillingTest::Redis::Error->new($rest);
    }
    if ($t eq '$') {
        return undef if $rest < 0;
        return $self->_bytes($rest, $deadline);
    }
    if ($t eq '*') {
        return undef if $rest < 0;
        return [ map { $self->_reply($deadline) } 1 .. $rest ];
    }
    die "redis: bad reply line '$line'\n";
}

# one reply; timeout in seconds (default the client's)
sub read_reply {
    my ($self, $timeout) = @_;
    my $r = $self->_reply(time + ($timeout // $self->{timeout}));
    die $r if ref $r eq 'BillingTest::Redis::Error';
    return $r;
}

# after SUBSCRIBE: the next [channel, message] of a "message" push,
# undef if none came within $timeout seconds
sub next_message {
    my ($self, $timeout) = @_;
    my $deadline = time + ($timeout // $self->{timeout});
    while (1) {
        my $r = eval { $self->_reply($deadline) };
        if (!defined $r) {
            return undef if $@ =~ /timeout/;
            die $@;
        }
        next unless ref $r eq 'ARRAY';
        return [ $r->[1], $r->[2] ] if $r->[0] eq 'message';
        return [ $r->[2], $r->[3] ] if $r->[0] eq 'pmessage';
    }
}

sub close {
    my ($self) = @_;
    close $self->{sock} if $self->{sock};
    delete $self->{sock};
}


package BillingTest::Redis::Error;

use overload '""' => sub { "redis error: $_[0]{message}\n" }, fallback => 1;

sub new { bless { message => $_[1] }, $_[0] }
sub message { $_[0]{message} }


1;

__END__

=head1 NAME

BillingTest - harness for the ngx_http_billing_module tests (core Perl only)

=head1 SYNOPSIS

    use Test::More;
    use BillingTest qw(:all);

    my $t = BillingTest->new;
    $t->write_file('whsec', "whsec_test_secret\n");
    $t->secrets('whsec_test_secret');
    $t->start_redis;
    $t->start_nginx(<<'EOF');
        billing_redis 127.0.0.1:%%REDIS_PORT%% timeout=1s;
        billing_stripe_webhook_secret_file %%DIR%%/whsec;
        server {
            listen 127.0.0.1:%%PORT%%;
            location = /stripe/webhook { billing_webhook; }
        }
    EOF

    my $r = $t->webhook(invoice_event(type => 'invoice.paid'));
    is $r->{status}, 200;
    is $t->redis('HGET', 'billing:invoice:in_...', 'status'), 'paid';

    $t->done;           # stops everything, checks error.log
    done_testing;

=head1 ENVIRONMENT

BILLING_MODULE (the .so; default <repo>/build/ngx_http_billing_module.so),
BILLING_KEEP (keep the temporary directory), BILLING_ASAN (preload
libasan/libubsan and fail on sanitizer reports), BILLING_NGINX (default
/usr/sbin/nginx), BILLING_STATIC (BILLING_NGINX has the module built in:
no configuration gets a load_module line, as if every start_nginx,
nginx -t included, had no_module), BILLING_REDIS_SERVER (default
redis-server), BILLING_STRIPE_FIXTURES (default
../shared/stripe/fixtures3.json from the repository).

=head1 METHODS

=over

=item new(%opts)

Temporary directory and two free ports (nginx, Redis). Options override
the fields (module, asan, static, port, redis_port).

=item dir, port, redis_port, path($name), write_file($name, $content), read_file($name)

write_file returns the absolute path; read_file returns undef if absent.

=item start_redis(requirepass => ..., args => [...]), stop_redis, restart_redis, freeze_redis, thaw_redis

restart_redis keeps port and options. freeze/thaw send SIGSTOP/SIGCONT.

=item redis(@cmd), redis_hash($key), redis_client(db => N, password => ..., timeout => S)

redis() uses a cached connection to db 0 (reconnecting once when Redis
was restarted). Replies: strings, numbers, undef for nil, array refs for
multi-bulk. An error reply dies with a BillingTest::Redis::Error (which
stringifies to "redis error: ..."). Clients have cmd(@args),
send(@args), read_reply($timeout), next_message($timeout) (after
SUBSCRIBE: [channel, message] or undef on timeout) and close.

=item start_nginx($http_block, %opts)

Writes nginx.conf (load_module, daemon off, master_process on,
worker_processes, error_log debug, pid, events, an http block with
access_log and temporary paths in the directory, then $http_block) and
starts nginx, waiting until it listens (10 s). Placeholders:
%%PORT%%, %%REDIS_PORT%%, %%DIR%%, %%MODULE%%, and %%NAME%% for any
option NAME in capitals or in vars => {}. Options: workers, main (text
for the main context), no_module (implied by BILLING_STATIC),
start_timeout, nginx_test => 1 (runs nginx -t with its own error log
instead and returns ($exit_code, $output); '-T' runs nginx -T).

=item stop_nginx, reload_nginx([$http_block, %opts]), nginx_pid

=item http($method, $path, headers => {}, body => $bytes, timeout => 5, port => N)

Returns {status, reason, headers, content, json, elapsed}.

=item raw_http($bytes, timeout => 5, port => N)

Writes the bytes as they are and reads until the server closes.
Returns {status, headers, content, json, raw, elapsed}.
raw_http_send($bytes) and raw_http_read($handle) are its two halves,
to keep a request under way while doing something else.

=item load_start($path, clients => 2, ports => [...], subs => [...], headers => {}, pause => 0, header => 'x-units'), load_answers($load), load_stop($load)

Client processes sending GET $path in a loop (keep-alive), each
request with an X-Subscription-Id drawn from subs, until load_stop,
which waits for every request under way to finish and returns all the
answers: [{status, sub, time, port, value}] (time: when the answer
came; value: the header named by "header"). Status 599 is HTTP::Tiny's
own failure.

=item Two instances on one Redis

C<< BillingTest->new(redis_port => $t1->redis_port) >> makes a second
harness (its own directory and nginx port) that uses the first one's
redis-server: do not call start_redis on it; freeze, stop and restart
Redis through the first. Pass C<< redis_password => ... >> too when
that Redis has a password.

=item billing_files(token => ..., key => ..., secret => ...), api($method, $path, $body, %http_opts)

The secret files a billing configuration reads, and requests to its
C<billing_api> at C</billing/>.

=item secrets(@whsec), webhook($body, secrets => [...], t => $time, signature => $header, headers => {}, path => ...)

Signed POST to /stripe/webhook.

=item redis_monitor, monitor_lines($mon, qr//)

redis_monitor is a client in MONITOR mode; monitor_lines($mon, $re)
returns the MONITOR lines (matching $re if given) seen since the last
call, all of them: it waits for an ECHO of a marker sent meanwhile.

=item error_log, error_log_like(qr//), ignore_log(qr//...), done

done stops nginx and Redis and adds the test "no alert/crit/emerg in
error.log" (plus "no sanitizer reports" under BILLING_ASAN). When a test
dies before done, the END block still stops everything and prints what
it would have complained about.

=back

=head1 FUNCTIONS (exported on request, :all)

stripe_sign($secret, $t, $body), stripe_signature_header(secrets =>
[...], t => ..., body => ..., extra => 'v0=...'), invoice_event(type =>,
id =>, created =>, invoice_id =>, subscription =>, kind =>, customer =>,
metadata => {}, invoice => {overrides}), stripe_event(type =>, object =>
{}, ...), stripe_fixture($resource), json_encode, json_decode,
wait_until($code, $timeout, $interval), invoice_object(%o) (the data.object of invoice_event as a hash).

=cut
