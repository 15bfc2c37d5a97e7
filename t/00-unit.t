#!/usr/bin/perl

# The unit tests of the plain C parts (signature, event, state, money, form,
# plan), built by "make unit" into $BILLING_BUILD/unit/ (default build/unit):
# each binary runs as a subtest whose TAP is relayed test by test.

use strict;
use warnings;

use File::Spec;
use FindBin;
use Test::More;

my @TESTS = qw(test_signature test_event test_state test_money test_form
               test_plan);
my $TIMEOUT = 60;

my $build = $ENV{BILLING_BUILD} // 'build';

# a relative build directory is the repository's, wherever prove runs
$build = File::Spec->catdir("$FindBin::Bin/..", $build)
    unless File::Spec->file_name_is_absolute($build);

my $dir = File::Spec->catdir($build, 'unit');

for my $name (@TESTS) {
    subtest $name => sub { relay(File::Spec->catfile($dir, $name)) };
}

done_testing();


sub relay {
    my ($bin) = @_;
    my $name = (File::Spec->splitpath($bin))[2];

    unless (-f $bin && -x _) {
        fail("$bin exists");
        diag("$bin is missing or not executable: run \"make unit\" first");
        done_testing();
        return;
    }

    # stderr (the diagnostics) into the same pipe, to keep the order

    my $pid = open(my $fh, '-|');
    die "fork: $!" unless defined $pid;

    if ($pid == 0) {
        open(STDERR, '>&', \*STDOUT) or die "dup: $!";
        exec { $bin } $bin or do {
            print "# exec $bin: $!\n";
            exit 127;
        };
    }

    my ($plan, $count, $failed, @stray) = (undef, 0, 0);

    local $SIG{ALRM} = sub {
        kill 'KILL', $pid;
        die "timeout\n";
    };

    my $ok = eval {
        alarm $TIMEOUT;

        while (my $line = <$fh>) {
            chomp $line;

            if ($line =~ /^1\.\.(\d+)\s*$/) {
                push @stray, "second plan: $line" if defined $plan;
                $plan = $1;

            } elsif ($line =~ /^(not )?ok\b\s*(\d*)\s*(?:-\s*)?(.*)$/) {
                my ($not, $num, $desc) = ($1, $2, $3);

                $count++;
                push @stray, "test $count numbered $num"
                    if length $num && $num != $count;

                # no TODO/SKIP from these binaries: a directive is a name
                $failed++ if $not;
                ok(!$not, $desc);

            } elsif ($line =~ /^#\s?(.*)$/) {
                # diagnostics follow a failure; the rest is commentary
                $failed ? diag($1) : note($1);

            } elsif ($line =~ /\S/) {
                push @stray, $line;
            }
        }

        alarm 0;
        1;
    };

    alarm 0;

    unless ($ok) {
        fail("$name finished within ${TIMEOUT}s");
        close($fh);
        done_testing();
        return;
    }

    close($fh);

    my $status = $?;

    ok($status == 0, "$name exited with status 0")
        or diag(describe_status($status));

    ok(defined $plan && $plan == $count,
       "$name ran as many tests as its plan")
        or diag('plan ' . ($plan // 'missing') . ", ran $count");

    ok($count > 0, "$name ran tests");

    ok(!@stray, "$name printed only TAP")
        or diag(join("\n", 'unexpected output:', @stray));

    done_testing();
}


sub describe_status {
    my ($status) = @_;

    return "exec failed: $!" if $status == -1;
    return 'killed by signal ' . ($status & 127) if $status & 127;
    return 'exit status ' . ($status >> 8);
}
