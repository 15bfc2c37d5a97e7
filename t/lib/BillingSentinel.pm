package BillingSentinel;

# Redis under Sentinel for the tests: Redis servers (a primary, its
# replicas) and Sentinels, each a redis-server process of its own with
# its files in a BillingTest's directory, on free loopback ports. Uses
# BillingTest's process helpers; nothing of the harness is changed.
# See the POD at the end.

use strict;
use warnings;

use Carp qw(croak);
use BillingTest qw(wait_until);
use Scalar::Util qw(weaken);

my $REDIS = $ENV{BILLING_REDIS_SERVER} || 'redis-server';

my @LIVE;

sub new {
    my ($class, $t, %o) = @_;
    my $self = bless {
        t                 => $t,
        name              => $o{name} || 'billing',
        password          => $o{password},
        sentinel_password => $o{sentinel_password},
        procs             => {},
        ports             => {},
    }, $class;
    push @LIVE, $self;
    weaken($LIVE[-1]);
    return $self;
}

sub name { $_[0]{name} }

# the port of a server or Sentinel (chosen once, kept across restarts)
sub port {
    my ($self, $who) = @_;
    return $self->{ports}{$who} //= BillingTest::free_port();
}

sub _wait_ping {
    my ($self, $who, $password, $log) = @_;
    my $t = $self->{t};
    my $pid = $self->{procs}{$who};
    return wait_until(sub {
        if (defined BillingTest::_reap($pid, 0)) {
            delete $self->{procs}{$who};
            die "$who exited:\n" . BillingTest::_tail($t->read_file($log), 20);
        }
        my $c = eval { BillingTest::Redis->new(port => $self->port($who),
            password => $password, timeout => 1) };
        return 0 unless $c;
        my $pong = eval { $c->cmd('PING') };
        return defined $pong && $pong eq 'PONG';
    }, 10) || die "$who did not answer PING:\n"
        . BillingTest::_tail($t->read_file($log), 20);
}

# A Redis server. Options: replicaof => $who (a replica of that one),
# args => [...]. With the password of new(), requirepass and masterauth.
sub start_redis {
    my ($self, $who, %o) = @_;
    my $t = $self->{t};
    croak "$who is running" if $self->{procs}{$who};
    my @cmd = ($REDIS, '--port', $self->port($who), '--bind', '127.0.0.1',
        '--save', '', '--appendonly', 'no', '--daemonize', 'no',
        '--dir', $t->dir, '--dbfilename', "$who.rdb",
        '--repl-diskless-sync-delay', 0);
    if (defined $self->{password}) {
        push @cmd, '--requirepass', $self->{password},
            '--masterauth', $self->{password};
    }
    push @cmd, '--replicaof', '127.0.0.1', $self->port($o{replicaof})
        if $o{replicaof};
    push @cmd, @{ $o{args} } if $o{args};
    $self->{procs}{$who} = $t->_spawn($t->path("$who.log"), undef, @cmd);
    $self->_wait_ping($who, $self->{password}, "$who.log");
    return $self;
}

# A Sentinel watching $primary (a start_redis name) as new()'s name, its
# configuration file in the directory (Sentinel rewrites it). Options:
# down_after (ms, default 3000: less makes a busy machine's Redis look
# down now and then), failover_timeout (ms, default 4000).
# Dies with the log's end when it does not come up.
sub start_sentinel {
    my ($self, $who, $primary, %o) = @_;
    my $t = $self->{t};
    croak "$who is running" if $self->{procs}{$who};
    my $name = $self->{name};
    my $conf = "port " . $self->port($who) . "\nbind 127.0.0.1\n"
        . "dir " . $t->dir . "\n"
        . "sentinel monitor $name 127.0.0.1 " . $self->port($primary) . " 1\n"
        . "sentinel down-after-milliseconds $name "
        . ($o{down_after} || 3000) . "\n"
        . "sentinel failover-timeout $name "
        . ($o{failover_timeout} || 4000) . "\n";
    $conf .= "sentinel auth-pass $name $self->{password}\n"
        if defined $self->{password};
    $conf .= "requirepass $self->{sentinel_password}\n"
        if defined $self->{sentinel_password};
    my $file = $t->write_file("$who.conf", $conf);
    $self->{procs}{$who} = $t->_spawn($t->path("$who.log"), undef,
        $REDIS, $file, '--sentinel');
    $self->{sentinels}{$who} = 1;
    $self->_wait_ping($who, $self->{sentinel_password}, "$who.log");
    return $self;
}

sub pid { $_[0]{procs}{$_[1]} }

# signal => 'KILL' for a crash; waits until it is gone
sub stop {
    my ($self, $who, $signal) = @_;
    my $pid = delete $self->{procs}{$who} or return;
    delete $self->{clients}{$who};
    if (($signal || '') eq 'KILL') {
        kill 'KILL', $pid;
        BillingTest::_reap($pid, 5);
        return;
    }
    BillingTest::_stop_pid($pid, $signal || 'TERM', 5);
}

sub stop_all {
    my ($self) = @_;
    $self->stop($_) for keys %{ $self->{procs} };
}

# a new client of a server or Sentinel, named "test" in CLIENT LIST
sub client {
    my ($self, $who, %o) = @_;
    my $c = BillingTest::Redis->new(port => $self->port($who),
        password => $self->{sentinels}{$who} ? $self->{sentinel_password}
                                             : $self->{password},
        timeout => 5, %o);
    $c->cmd('CLIENT', 'SETNAME', 'test');
    return $c;
}

# one command on a cached client; undef (and $@) on failure
sub cmd {
    my ($self, $who, @cmd) = @_;
    for my $try (1, 2) {
        my $c = $self->{clients}{$who} ||= eval { $self->client($who) }
            or return undef;
        my $r = eval { [ $c->cmd(@cmd) ] };
        return wantarray ? @$r : $r->[0] if $r;
        die $@ if ref $@;              # an error reply
        delete $self->{clients}{$who};
    }
    return undef;
}

# which start_redis name the Sentinel $sentinel gives as the primary
sub primary {
    my ($self, $sentinel) = @_;
    my $r = $self->cmd($sentinel, 'SENTINEL', 'get-master-addr-by-name',
        $self->{name});
    return undef unless ref $r eq 'ARRAY';
    my ($who) = grep { $self->{ports}{$_} == $r->[1]
                       && !$self->{sentinels}{$_} } keys %{ $self->{ports} };
    return $who;
}

# "master" or "slave"
sub role {
    my ($self, $who) = @_;
    my $r = eval { $self->cmd($who, 'ROLE') };
    return ref $r eq 'ARRAY' ? $r->[0] : undef;
}

# the replicas $who has whose link is up (INFO replication)
sub replicas_up {
    my ($self, $who) = @_;
    my $info = eval { $self->cmd($who, 'INFO', 'replication') } // '';
    return scalar(() = $info =~ /^slave\d+:.*state=online/mg);
}

# the clients of $who that are neither the test's, a replica's link nor
# a Sentinel's: nginx's; in list context their CLIENT LIST lines
sub nginx_clients {
    my ($self, $who) = @_;
    my $list = eval { $self->cmd($who, 'CLIENT', 'LIST') } // '';
    my @l = grep { /\bname= / && !/\bflags=[^ ]*[SM]/ }
            grep { length } split /\n/, $list;
    return wantarray ? @l : scalar @l;
}

sub DESTROY {
    my ($self) = @_;
    local ($., $@, $!, $^E, $?);
    $self->stop_all;
}

END {
    my $status = $?;
    $_->stop_all for grep { defined } @LIVE;
    $? = $status;
}

1;

__END__

=head1 NAME

BillingSentinel - Redis primary, replicas and Sentinels for the tests

=head1 SYNOPSIS

    my $t = BillingTest->new;
    my $s = BillingSentinel->new($t, name => 'billing',
        password => $pw, sentinel_password => $spw);
    $s->start_redis('a');
    $s->start_redis('b', replicaof => 'a');
    $s->start_sentinel('s1', 'a');          # dies if it cannot start
    $s->port('s1');                         # for billing_redis
    $s->stop('a', 'KILL');
    wait_until(sub { ($s->primary('s1') // '') eq 'b' }, 20);
    $s->start_redis('a', replicaof => 'b');
    $s->cmd('b', 'HGET', ...);
    $s->stop_all;

=head1 METHODS

new($t, name =>, password =>, sentinel_password =>), port($who),
start_redis($who, replicaof => $who2, args => []),
start_sentinel($who, $primary, down_after =>, failover_timeout =>),
stop($who[, $signal]) ('KILL': kill -9), stop_all, pid($who),
client($who) (a new BillingTest::Redis client named "test"),
cmd($who, @cmd) (on a cached client; undef if unreachable; an error
reply dies), primary($sentinel) (the name of the server the Sentinel
gives as the primary), role($who), replicas_up($who),
nginx_clients($who) (count, or the CLIENT LIST lines in list context).

Everything is stopped when the object goes, and at exit.

=cut
