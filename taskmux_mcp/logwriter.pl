#!/usr/bin/perl
# taskmux log writer: the twin of logwriter.py (same arguments, same on-disk format; see there).
# Usage: logwriter.pl LOG RUN PID MAX_BYTES MAX_FILES [resume]   (raw pane output on stdin)
use strict;
use warnings;
use Time::HiRes ();

my ($path, $run, $pid, $max_bytes, $max_files, $resume) = @ARGV;
die "usage: logwriter.pl LOG RUN PID MAX_BYTES MAX_FILES [resume]\n"
  unless (@ARGV == 5 || (@ARGV == 6 && $resume eq 'resume'))
  && $max_bytes =~ /^\d+$/ && $max_files =~ /^\d+$/;
$max_bytes = 1 if $max_bytes < 1;
$max_files = 1 if $max_files < 1;
$SIG{HUP} = 'IGNORE';    # drain the pipe to EOF even if tmux hangs up
# SIGUSR1 asks us to finish once the pipe is empty: tmux has handed it every byte of a dead pane.
my $draining = 0;
$SIG{USR1} = sub { $draining = 1 };
umask 077;

my $cap = int($max_bytes / 4);
$cap = 1024 * 1024 if $cap > 1024 * 1024;
$cap = 1024 if $cap < 1024;

sub stamp {
    my $now  = Time::HiRes::time();
    my $secs = int($now);
    my @g    = gmtime($secs);
    return sprintf('%04d-%02d-%02dT%02d:%02d:%02d.%06dZ',
        $g[5] + 1900, $g[4] + 1, $g[3], $g[2], $g[1], $g[0], int(($now - $secs) * 1e6));
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
    my $deadline = Time::HiRes::time() + 2;
    until (flock($lock, 2 | 4)) {
        last if Time::HiRes::time() >= $deadline;
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
    my ($data) = @_;
    my $len = length $data;
    return unless $out && $len;
    my $off = 0;
    while ($off < $len) {
        my $n = syswrite($out, $data, $len - $off, $off);
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
binmode(STDIN);
my $rin = '';
vec($rin, fileno(STDIN), 1) = 1;
while (1) {
    my $rout;
    # 2 s: a drain request that lands just before select is seen anyway; 0 once draining.
    my $n = select($rout = $rin, undef, undef, $draining ? 0 : 2.0);
    if ($n <= 0) {
        last if $draining && $n == 0;    # nothing left in the pipe: everything is written
        next;
    }
    my $buf;
    my $got = sysread(STDIN, $buf, 65536);
    if (!defined $got) {
        next if $!{EINTR};
        last;
    }
    last if $got == 0;
    if ($held_cr) {
        $buf     = "\r" . $buf;
        $held_cr = 0;
    }
    if (substr($buf, -1) eq "\r") {    # may be the first half of a "\r\n"
        chop $buf;
        $held_cr = 1;
    }
    $buf =~ s/\r\n/\n/g;
    next if $buf eq '';
    my $ts = stamp();
    my $o  = '';
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
}
if ($held_cr) {
    put(($at_bol ? stamp() . "\t" : '') . "\r");
    $at_bol = 0;
}
put("\n") unless $at_bol;
close($lock) if $lock;
exit 0;
