#!/usr/bin/perl
# taskmux log writer: the twin of logwriter.py (same arguments, same on-disk format; see there).
# Usage: logwriter.pl LOG RUN PID MAX_BYTES MAX_FILES [resume]   (raw pane output on stdin)
#
# One runs per task, so every module it loads is paid once per task: no `use strict` or
# `use warnings` at run time (warnings.pm alone is ~350 KB of private memory), and the time comes
# from the gettimeofday syscall where its number is known (Time::HiRes costs ~320 KB more). The
# tests run it under `perl -Mstrict -Mwarnings` and fail on any warning.
# A read's lines are stamped with one C-level substitution; the line loop runs only for a read
# that may hold an over-long line or reach the rotation size.

my ($path, $run, $pid, $max_bytes, $max_files, $resume) = @ARGV;
die "usage: logwriter.pl LOG RUN PID MAX_BYTES MAX_FILES [resume]\n"
  unless (@ARGV == 5 || (@ARGV == 6 && $resume eq 'resume'))
  && $max_bytes =~ /^\d+$/ && $max_files =~ /^\d+$/;
$max_bytes = 1 if $max_bytes < 1;
$max_files = 1 if $max_files < 1;
$SIG{HUP} = 'IGNORE';    # drain the pipe to EOF even if tmux hangs up
# SIGUSR1 asks us to finish once the pipe is empty: tmux has handed it every byte of a dead pane,
# unless the pipe was full (a socket holds only a few hundred small writes): then tmux keeps the
# rest and hands it on as we read, so a drain ends once nothing was read for $SETTLE.
my $draining  = 0;
my $last_read = 0;
my $SETTLE    = 0.1;
$SIG{USR1} = sub { $draining = 1 };
umask 077;

my $cap = int($max_bytes / 4);
$cap = 1024 * 1024 if $cap > 1024 * 1024;
$cap = 1024 if $cap < 1024;
my $READ = 65536;

# gettimeofday's number on 64-bit Linux (x86_64; the generic table of aarch64 and riscv64),
# trusted only if the kernel's arch says so and its answer agrees with time().
my $tv = "\0" x 16;
my $gtod = 0;
if ($^O eq 'linux' && length(pack('p', 'x')) == 8 && open(my $arch, '<', '/proc/sys/kernel/arch')) {
    my $name = <$arch>;
    close($arch);
    $name = '' unless defined $name;
    chomp $name;
    my $nr = $name eq 'x86_64' ? 96 : ($name eq 'aarch64' || $name eq 'riscv64') ? 169 : 0;
    if ($nr && syscall($nr, $tv, 0) == 0 && abs(unpack('q', $tv) - time()) <= 2) {
        $gtod = $nr;
    }
}
require Time::HiRes unless $gtod;

sub now {
    if ($gtod) {
        syscall($gtod, $tv, 0);
        return unpack('q2', $tv);
    }
    my $t    = Time::HiRes::time();
    my $secs = int($t);
    return ($secs, int(($t - $secs) * 1e6));
}

sub since_read {    # a clock set back counts as quiet
    my $since = seconds() - $last_read;
    return $since < 0 ? $SETTLE : $since;
}

sub seconds {
    my ($secs, $micros) = now();
    return $secs + $micros / 1e6;
}

sub stamp {
    my ($secs, $micros) = now();
    my @g = gmtime($secs);
    return sprintf('%04d-%02d-%02dT%02d:%02d:%02d.%06dZ',
        $g[5] + 1900, $g[4] + 1, $g[3], $g[2], $g[1], $g[0], $micros);
}

sub mkpath {
    my ($dir) = @_;
    return if $dir eq '' || -d $dir;
    (my $parent = $dir) =~ s{/+[^/]*$}{};
    mkpath($parent) if $parent ne $dir;
    mkdir $dir, 0700;
}

(my $dir = $path) =~ s{/+[^/]*$}{};
mkpath($dir) if $dir ne $path;

# Hold LOG.lock for life; wait up to 2 s for the previous writer (LOCK_EX=2, LOCK_NB=4).
my $lock;
if (open($lock, '>>', "$path.lock")) {
    my $deadline = seconds() + 2;
    until (flock($lock, 2 | 4)) {
        last if seconds() >= $deadline;
        select(undef, undef, undef, 0.02);
    }
    truncate($lock, 0);
    syswrite($lock, "$$ $run");
}

my ($out, $size);

sub reopen {
    close($out) if $out;
    if (open($out, '>>:raw', $path)) {
        $size = -s $out || 0;
    } else {
        undef $out;
        $size = 0;
    }
}

sub put {
    my $len = length $_[0];
    return unless $out && $len;
    my $off = 0;
    while ($off < $len) {
        my $n = syswrite($out, $_[0], $len - $off, $off);
        last unless $n;    # disk full or file gone: drop this output, keep draining the pane
        $off += $n;
    }
    $size += $len;
}

sub rotate {
    if ($max_files > 1) {
        for (my $i = $max_files - 1; $i >= 2; $i--) {
            my $older = "$path." . ($i - 1);
            rename($older, "$path.$i") if -e $older;
        }
        rename($path, "$path.1");
    } else {
        unlink($path);
    }
    reopen();
}

reopen();
if ($size > 0 && open(my $in, '<:raw', $path)) {
    my $last = '';
    sysseek($in, -1, 2);
    sysread($in, $last, 1);
    close($in);
    put("\n") if $last ne "\n";
}
if (defined $resume) {
    put(stamp() . "\t[taskmux] the log writer was replaced; output written just before may be missing\n");
} else {
    put(stamp() . " \@taskmux start run=$run pid=$pid\n");
}

my ($at_bol, $line_len, $held_cr) = (1, 0, 0);

# The records of one read, line by line: splits lines longer than the cap, rotates at a line end.
sub lines_one_by_one {
    my ($buf, $ts) = @_;
    my $o = '';
    my ($pos, $end) = (0, length $buf);
    while ($pos < $end) {
        if ($at_bol) {
            $o .= $ts . "\t";
            ($at_bol, $line_len) = (0, 0);
        }
        my $nl      = index($buf, "\n", $pos);
        my $content = ($nl < 0 ? $end : $nl) - $pos;
        if ($line_len + $content > $cap) {
            my $take = $cap - $line_len;
            $o .= substr($buf, $pos, $take) . "\n";
            $pos += $take;
            $at_bol = 1;
        } else {
            my $stop = $nl < 0 ? $end : $nl + 1;
            $o .= substr($buf, $pos, $stop - $pos);
            $line_len += $content;
            $pos    = $stop;
            $at_bol = $nl >= 0 ? 1 : 0;
        }
        if ($at_bol && $size + length($o) >= $max_bytes) {
            put($o);
            $o = '';
            rotate();
        }
    }
    put($o);
    undef $o;
    undef $buf;
}

binmode(STDIN);
my $rin = '';
vec($rin, fileno(STDIN), 1) = 1;
my $buf = '';
while (1) {
    my $rout;
    # 2 s: a drain request that lands just before select is seen anyway.
    my $quiet = $draining ? $SETTLE - since_read() : 2.0;
    my $n = select($rout = $rin, undef, undef, $quiet > 0 ? $quiet : 0);
    if ($n <= 0) {
        # nothing left in the pipe, nor coming: everything is written
        last if $draining && $n == 0 && since_read() >= $SETTLE;
        next;
    }
    my $got = sysread(STDIN, $buf, $READ);
    if (!defined $got) {
        next if $! == 4;    # EINTR (%! would load Errno, and Errno Config: ~400 KB a writer)
        last;
    }
    last if $got == 0;
    $last_read = seconds();
    if ($held_cr) {
        substr($buf, 0, 0) = "\r";
        $held_cr = 0;
    }
    if (substr($buf, -1) eq "\r") {    # may be the first half of a "\r\n"
        chop $buf;
        $held_cr = 1;
    }
    next if $buf eq '';
    my $ts    = stamp();
    my $lines = ($buf =~ tr/\n//);
    # Records are at most the read plus a stamp a line: if that cannot reach the cap or the
    # rotation size, no line is split and no rotation falls inside this read.
    if ($line_len + length($buf) > $cap || $size + length($buf) + ($lines + 1) * 28 >= $max_bytes) {
        $buf =~ s/\r\n/\n/g;
        lines_one_by_one($buf, $ts);
        next;
    }
    my $tail = $lines ? length($buf) - rindex($buf, "\n") - 1 : -1;    # bytes after the last "\n"
    my $o = $buf;
    if ($lines && ($o =~ s/\r\n/\n$ts\t/g) != $lines) {    # some lines end in a bare "\n"
        ($o = $buf) =~ s/\r\n/\n/g;
        $o =~ s/\n/\n$ts\t/g;
    }
    substr($o, -length($ts) - 1) = '' if $tail == 0;    # the next line's stamp comes with it
    substr($o, 0, 0) = "$ts\t" if $at_bol;
    put($o);
    undef $o;
    if ($tail < 0) {
        $line_len = $at_bol ? length($buf) : $line_len + length($buf);
        $at_bol   = 0;
    } else {
        ($at_bol, $line_len) = $tail ? (0, $tail) : (1, 0);
    }
} continue {
    undef $buf;    # sysread sizes it for a whole read: keep none of that while waiting
}
if ($held_cr) {
    put(($at_bol ? stamp() . "\t" : '') . "\r");
    $at_bol = 0;
}
put("\n") unless $at_bol;
close($lock) if $lock;
exit 0;
