package StripeMock;

# Starts and drives t/lib/stripe-mock, the local stand-in for the Stripe
# API, from a test. Core Perl only. See the POD at the end of this file.

use strict;
use warnings;

use Carp qw(croak);
use Cwd qw(abs_path);
use File::Basename qw(dirname);
use File::Temp qw(tempdir);
use HTTP::Tiny;
use IO::Select;
use JSON::PP;
use POSIX qw(WNOHANG);
use Time::HiRes qw(time sleep);

my $SCRIPT = abs_path(dirname(__FILE__)) . '/stripe-mock';
my $JSON = JSON::PP->new->utf8->canonical->allow_nonref;

# how long start waits for the stand-in to listen
use constant START_TIMEOUT => 10;

sub start {
    my ($class, %opts) = @_;
    my $dir = $opts{dir}
        // tempdir('stripe-mock-XXXXXX', TMPDIR => 1, CLEANUP => 1);
    croak "StripeMock: no directory $dir" unless -d $dir;
    my $self = bless {
        dir         => $dir,
        key         => $opts{key} // 'sk_test_' . join('',
                           map { ('a' .. 'z', 'A' .. 'Z', 0 .. 9)[rand 62] } 1 .. 24),
        api_version => $opts{api_version} // '2022-11-15',
        log         => "$dir/stripe-mock.log",
        owner       => $$,
    }, $class;

    # the child writes "listening on HOST:PORT" into this pipe
    pipe(my $from_child, my $to_parent) or croak "pipe: $!";
    my $parent = $$;
    my $pid = fork // croak "fork: $!";
    if ($pid == 0) {
        eval {
            close $from_child;
            open STDIN, '<', '/dev/null' or die "stdin: $!";
            open STDOUT, '>&', $to_parent or die "stdout: $!";
            open STDERR, '>>', $self->{log} or die "open $self->{log}: $!";
            exec { $^X } $^X, $SCRIPT, '--key', $self->{key},
                '--api-version', $self->{api_version},
                '--port', $opts{port} // 0, '--parent', $parent
                or die "exec $SCRIPT: $!";
        };
        print STDERR $@;
        POSIX::_exit(127);
    }
    close $to_parent;
    $self->{pid} = $pid;

    my ($line, $deadline) = ('', time + START_TIMEOUT);
    my $select = IO::Select->new($from_child);
    while ($line !~ /\n/ && time < $deadline) {
        last unless $select->can_read($deadline - time);
        sysread($from_child, $line, 256, length $line) or last;
    }
    close $from_child;

    my ($port) = $line =~ /^listening on [\d.]+:(\d+)$/m;
    unless ($port) {
        $self->stop;
        croak "stripe-mock did not start:\n" . $self->log_text;
    }
    $self->{port} = $port;
    $self->{http} = HTTP::Tiny->new(timeout => 5);
    return $self;
}

sub port        { $_[0]{port} }
sub pid         { $_[0]{pid} }
sub key         { $_[0]{key} }
sub api_version { $_[0]{api_version} }
sub dir         { $_[0]{dir} }
sub log_file    { $_[0]{log} }
sub url         { "http://127.0.0.1:$_[0]{port}" }

sub log_text {
    my ($self) = @_;
    open my $fh, '<', $self->{log} or return '';
    local $/;
    return scalar <$fh>;
}

# one control request; dies unless it succeeds; returns the decoded answer
sub _control {
    my ($self, $method, $path, $body) = @_;
    croak 'stripe-mock is not running' unless $self->{pid};
    my $r = $self->{http}->request($method, $self->url . "/_mock/$path", {
        defined $body ? (content => $JSON->encode($body),
            headers => { 'Content-Type' => 'application/json' }) : () });
    croak "stripe-mock $method /_mock/$path: $r->{status} $r->{content}"
        unless $r->{success};
    return $JSON->decode($r->{content});
}

sub requests    { $_[0]->_control(GET => 'requests') }

# the invoice becomes $status at "Stripe", and no webhook says so
sub set_invoice_status {
    my ($self, $id, $status) = @_;
    return $self->_control(POST => "invoices/$id", { status => $status });
}
sub reset       { $_[0]->_control(POST => 'reset'); return }
sub clear_rules { $_[0]->_control(DELETE => 'rules'); return }

sub objects {
    my ($self, $type) = @_;
    return $self->_control(GET => "objects/$type");
}

# the objects that belong to a consumer org / a subscription, by the
# metadata the module sets
sub customers_of {
    my ($self, $org) = @_;
    return [ grep { ($_->{metadata}{consumer_org} // '') eq $org }
        @{ $self->objects('customer') } ];
}

sub invoices_of {
    my ($self, $id) = @_;
    return [ grep { ($_->{metadata}{billing_subscription} // '') eq $id }
        @{ $self->objects('invoice') } ];
}

sub items_of {
    my ($self, $id) = @_;
    my %inv = map { $_->{id} => 1 } @{ $self->invoices_of($id) };
    return [ grep { $inv{ $_->{invoice} // '' } }
        @{ $self->objects('invoiceitem') } ];
}

sub fail {
    my ($self, %rule) = @_;
    # flags travel as JSON booleans whatever Perl value they were given
    for (qw(stall after)) {
        $rule{$_} = $rule{$_} ? JSON::PP::true : JSON::PP::false if exists $rule{$_};
    }
    return $self->_control(POST => 'rules', \%rule)->{id};
}

sub stop {
    my ($self) = @_;
    my $pid = delete $self->{pid} or return;
    local $?;                   # DESTROY must not change the exit status
    kill 'TERM', $pid;
    my $deadline = time + 5;
    while (waitpid($pid, WNOHANG) == 0) {
        if (time > $deadline) {
            kill 'KILL', $pid;
            waitpid($pid, 0);
            last;
        }
        sleep 0.02;
    }
}

# a forked child (a test's helper process) does not own the stand-in
sub DESTROY {
    my ($self) = @_;
    $self->stop if $self->{owner} == $$;
}

1;

__END__

=head1 NAME

StripeMock - a local stand-in for the Stripe API, for the tests

=head1 SYNOPSIS

    use StripeMock;

    my $s = StripeMock->start(dir => $t->dir, key => 'sk_test_123',
        api_version => '2022-11-15');
    # nginx: location /_billing_stripe { internal; proxy_pass <$s->url>; }

    $s->fail(method => 'POST', path => '^/v1/invoices$', status => 500);
    ...
    my @posts = grep { $_->{method} eq 'POST' } @{ $s->requests };
    is $posts[0]{params}{'metadata[billing_subscription]'}, 'sub-42';
    is scalar @{ $s->objects('invoice') }, 1;
    $s->stop;           # also done when $s goes away

=head1 DESCRIPTION

start() runs F<t/lib/stripe-mock> as a separate process on a free port of
127.0.0.1 and returns once it accepts connections. The process logs to
F<DIR/stripe-mock.log>, is stopped by stop() or when the object goes
away, and exits by itself when the process that started it dies.

It emulates, in memory, the part of Stripe's v1 API the module uses:

    POST /v1/customers                 GET /v1/customers/{id}
    POST /v1/invoices                  GET /v1/invoices/{id}
    POST /v1/invoiceitems              GET /v1/invoiceitems/{id}
    POST /v1/invoices/{id}/finalize    POST /v1/invoices/{id}/void

Objects are shaped like Stripe's (the fixtures' customer, invoice,
invoiceitem, plus the 2022-11-15 fields C<paid>, C<days_until_due>,
C<unit_amount>, C<unit_amount_decimal>). Every request must carry
C<Authorization: Bearer KEY> (401), C<Stripe-Version: VERSION> (400, where
Stripe would fall back to the account's version) and, for a POST with a
body, C<Content-Type: application/x-www-form-urlencoded> (400). Unknown
parameters, missing or malformed ones, missing customers and invoices,
non-draft invoices, currency mismatches get Stripe's errors. Integers
are 64-bit (beyond: C<Invalid integer>); metadata keeps any key within
Stripe's limits (50 keys, keys of 40 characters, values of 500; an empty
value sets nothing).

An invoice item has either C<amount> (quantity 1) or a unit price,
C<unit_amount> or C<unit_amount_decimal> (never both, neither with
C<amount>), times C<quantity> (a non-negative integer, default 1, not
with C<amount>, not without a unit price). C<unit_amount_decimal> is a
non-negative decimal string with at most 12 decimal places, answered in
Stripe's normal form (C<"0.250"> as C<"0.25">); C<unit_amount> is an
integer when the unit price is whole, else null. The item's C<amount> is
C<quantity * unit_amount_decimal> rounded half up to a minor unit, in
exact arithmetic; an amount or invoice total beyond 64 bits is
C<amount_too_large>. C<period[start]> and C<period[end]> (unix times,
both or neither, end >= start) become the item's and its line's
C<period>; without them the period is the item's C<date>. Items add
lines to their invoice and update its C<subtotal>, C<total>,
C<amount_due>, C<amount_remaining>.

Finalizing numbers the invoice, sets its C<hosted_invoice_url> and
C<invoice_pdf>; a zero total makes it C<paid> at once. Voiding takes an
C<open> invoice only (a draft, a paid or a void one get 400 "You can
only pass in open invoices. ..."), and sets C<status> C<void>,
C<status_transitions.voided_at> and C<amount_remaining> 0; the rest of
the invoice stays as it was.

Idempotency as Stripe's: the first POST with an C<Idempotency-Key> that
gets past the parameter checks saves its answer; the same key and
parameters replay it (C<Idempotent-Replayed: true>); other parameters or
another endpoint get 400 C<idempotency_error>; a key whose request is
still running (delayed) gets 409 C<idempotency_key_in_use>.

Every answer has C<Request-Id>, C<Stripe-Version>, the C<Idempotency-Key>
sent, and on errors C<Stripe-Should-Retry> (C<true> for 5xx and 409,
C<false> for other 4xx but 429).

=head1 METHODS

=over

=item start(dir => DIR, key => KEY, api_version => VERSION, port => N)

All optional: dir (default a temporary directory), key (default a random
C<sk_test_...>), api_version (default 2022-11-15), port (default free).

=item port, url, pid, key, api_version, dir, log_file, log_text

=item requests

Array ref of the API requests received, oldest first (control requests
are not recorded): C<< { method, path, query, headers => { lowercased
name => value }, body, params => { 'a[b]' => value }, nested => { a => {
b => value } }, time, request_id, status, executed, replayed, dropped }
>>. C<params> and C<nested> hold the form body of a POST, the query
string otherwise. C<status> is undef while no answer was sent (delayed,
stalled). Three flags (JSON booleans) are false until the request has
been processed (after its delay): C<executed> (the endpoint really ran, past its parameter checks,
so what a successful one asked for was done; a replay, a refusal by the
checks and a failure rule without C<after> did nothing), C<replayed>
(answered with the saved result of an earlier request with the same
C<Idempotency-Key>) and C<dropped> (the client had closed the connection
before the answer was ready: it was never sent).

=item fail(%rule)

Adds a rule; the first rule matching a request applies to it. Fields:
method; path (regex string on the path); status (answered instead of the
real answer); body (JSON structure; default Stripe's error for the
status: C<api_error> for 5xx, C<rate_limit> for 429,
C<idempotency_key_in_use> for 409, C<card_declined> for 402, ...);
headers (C<< { Name => value } >>, undef omits a default header); times
(default 1, 0 = forever); delay (seconds before answering); stall (never
answer; hold the connection until the client closes it); after (perform
the real request first, saving objects and the idempotency result, then
answer status or stall: "Stripe did it, the answer was lost"). A rule
without status or stall only delays the real answer or adds headers.
Like every error answer, a body C<< { error => {...} } >> gets a
C<request_log_url> unless it has one.

A failure without C<after> saves no idempotency result, so a retry with
the same key is processed afresh (a failure at Stripe's edge; see
BUGS for Stripe's saved 500s).

=item set_invoice_status(ID, STATUS)

The invoice becomes STATUS (C<paid>, C<void>, C<uncollectible>, ...) as
if done in the Dashboard, and no webhook tells anyone: what
reconciliation is for.

=item clear_rules, reset

reset forgets requests, objects, rules and idempotency keys.

=item objects(TYPE)

Array ref of the stored customer, invoice or invoiceitem objects, in
creation order.

=item stop

=back

=head1 BUGS

Stripe saves the answer of a request that failed with a 500 while its
endpoint executed, and replays that 500 to retries with the same key;
the stand-in's failure rules model failures before execution instead
(use C<after> for "done, answer lost"). Objects cannot be updated or
deleted (voiding aside); prices, subscriptions, payments, uncollectible
invoices and webhooks are not emulated.

=cut
