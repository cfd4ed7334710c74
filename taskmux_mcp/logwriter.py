"""The log writer behind a task's pipe, and the on-disk format it shares with the readers.

Run as ``python -I -S logwriter.py LOG RUN PID MAX_BYTES MAX_FILES [resume]`` with the raw
pane output on stdin (``resume``: it replaces a writer that died during the run, so it notes the
gap instead of writing a start marker); ``logwriter.pl`` (same arguments, same output) is the
lighter twin used when perl is installed. Format of LOG, one record per line::

    2026-11-26T04:02:36.123456Z\\t<raw output bytes>\\n      output (UTC time of its first byte)
    2026-11-26T04:02:36.123456Z @taskmux start run=3 pid=1234\\n   start marker, first of a run

The pty's ``\\r\\n`` is stored as ``\\n``; every other byte is kept (ANSI escapes, ``\\r``). A
partial line is written as it arrives (the file's last record may lack its newline); lines
longer than ``line_cap(max_bytes)`` are split. The file rotates by size at a line boundary:
LOG -> LOG.1 -> ... -> LOG.<MAX_FILES-1>. A writer holds ``LOG.lock`` (its pid and run written
inside) for its whole life, and a new one waits up to ``LOCK_WAIT`` seconds for the previous writer
of the same log to drain.
SIGUSR1 asks a writer to finish: once its pane is dead tmux has handed the pipe every byte, so
the writer writes what is left in the pipe and exits, letting go of the lock (a flush barrier).
A full pipe (a socket holds only a few hundred small writes) leaves the rest with tmux, which
hands it on as the writer reads: a drain ends once nothing was read for SETTLE.
This module imports only the standard library so it runs without the package's environment.
"""

from __future__ import annotations

import fcntl
import os
import select
import signal
import sys
import time

TS_LEN = 27
OUTPUT_SEP = b"\t"
MARKER_TAG = b" @taskmux start "
READ_SIZE = 65536
LOCK_WAIT = 2.0
SETTLE = 0.1  # seconds without a read that end a drain
IDLE_WAIT = 2.0  # a drain request is seen within this long even if its wake-up is missed
USAGE = "usage: logwriter.py LOG RUN PID MAX_BYTES MAX_FILES [resume]"
RESUMED = b"[taskmux] the log writer was replaced; output written just before may be missing"


def line_cap(max_bytes: int) -> int:
    """Longest line kept in one record; longer lines are split."""
    return max(1024, min(1024 * 1024, max_bytes // 4))


def stamp(now: float) -> bytes:
    """The fixed-width UTC timestamp of a record."""
    secs = int(now)
    g = time.gmtime(secs)
    micros = int((now - secs) * 1_000_000)
    text = (
        f"{g.tm_year:04d}-{g.tm_mon:02d}-{g.tm_mday:02d}T"
        f"{g.tm_hour:02d}:{g.tm_min:02d}:{g.tm_sec:02d}.{micros:06d}Z"
    )
    return text.encode("ascii")


def marker(now: float, run: str, pid: str) -> bytes:
    """The start-marker record of a run."""
    return stamp(now) + MARKER_TAG + f"run={run} pid={pid}\n".encode()


class _Log:
    """An append-only, size-rotated log file."""

    def __init__(self, path: str, max_bytes: int, max_files: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.max_files = max_files
        self.fd = -1
        self.size = 0
        self.reopen()

    def reopen(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
        try:
            self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            self.size = os.fstat(self.fd).st_size
        except OSError:
            self.fd, self.size = -1, 0

    def ends_mid_line(self) -> bool:
        if self.size == 0:
            return False
        try:
            with open(self.path, "rb") as f:
                f.seek(-1, os.SEEK_END)
                return f.read(1) != b"\n"
        except OSError:
            return False

    def put(self, data: bytes) -> None:
        if self.fd < 0 or not data:
            return
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self.fd, view) :]
        except OSError:
            pass  # disk full or file gone: drop this output, keep draining the pane
        self.size += len(data)

    def rotate(self) -> None:
        try:
            if self.max_files > 1:
                for i in range(self.max_files - 1, 1, -1):
                    if os.path.exists(f"{self.path}.{i - 1}"):
                        os.replace(f"{self.path}.{i - 1}", f"{self.path}.{i}")
                os.replace(self.path, f"{self.path}.1")
            else:
                os.unlink(self.path)
        except OSError:
            pass
        self.reopen()


class _Lines:
    """Turns reads of raw output into records: a stamp on each line, over-long lines split,
    rotation at a line end."""

    def __init__(self, log: _Log, cap: int) -> None:
        self.log = log
        self.cap = cap
        self.at_bol = True
        self.line_len = 0

    def write(self, buf: bytes, ts: bytes) -> None:
        """Write one read (its "\\r\\n" already made "\\n"), stamped with the time it came."""
        lines = buf.count(b"\n")
        # Records are at most the read plus a stamp a line: if that cannot reach the cap or
        # the rotation size, no line is split and no rotation falls inside this read.
        if (
            self.line_len + len(buf) > self.cap
            or self.log.size + len(buf) + (lines + 1) * (TS_LEN + 1) >= self.log.max_bytes
        ):
            self._one_by_one(buf, ts)
            return
        out = buf.replace(b"\n", b"\n" + ts + OUTPUT_SEP) if lines else buf
        tail = len(buf) - buf.rfind(b"\n") - 1 if lines else -1  # bytes after the last "\n"
        if tail == 0:
            out = out[: -TS_LEN - 1]  # the next line's stamp comes with it
        if self.at_bol:
            out = ts + OUTPUT_SEP + out
        self.log.put(out)
        if tail < 0:
            self.line_len = len(buf) if self.at_bol else self.line_len + len(buf)
            self.at_bol = False
        else:
            self.at_bol, self.line_len = tail == 0, tail

    def _one_by_one(self, buf: bytes, ts: bytes) -> None:
        log, cap = self.log, self.cap
        out = bytearray()
        pos, end = 0, len(buf)
        while pos < end:
            if self.at_bol:
                out += ts + OUTPUT_SEP
                self.at_bol, self.line_len = False, 0
            nl = buf.find(b"\n", pos)
            content = (end if nl < 0 else nl) - pos
            if self.line_len + content > cap:
                take = cap - self.line_len
                out += buf[pos : pos + take] + b"\n"
                pos += take
                self.at_bol = True
            else:
                stop = end if nl < 0 else nl + 1
                out += buf[pos:stop]
                self.line_len += content
                pos = stop
                self.at_bol = nl >= 0
            if self.at_bol and log.size + len(out) >= log.max_bytes:
                log.put(bytes(out))
                out.clear()
                log.rotate()
        log.put(bytes(out))


def _lock(path: str, run_no: str) -> int:
    """Take the writer lock of a log, waiting up to LOCK_WAIT for the previous writer."""
    try:
        fd = os.open(path + ".lock", os.O_WRONLY | os.O_CREAT, 0o600)
    except OSError:
        return -1
    deadline = time.monotonic() + LOCK_WAIT
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            try:
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()} {run_no}".encode())
            except OSError:
                pass
            return fd
        except OSError:
            if time.monotonic() >= deadline:
                return fd  # the previous writer is stuck: write anyway rather than lose output
            time.sleep(0.02)


def run(
    path: str,
    run_no: str,
    pid: str,
    max_bytes: int,
    max_files: int,
    *,
    source: int = 0,
    resume: bool = False,
) -> None:
    """Copy the raw output read from fd `source` into the log at `path` until EOF."""
    os.umask(0o077)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    lock_fd = _lock(path, run_no)
    log = _Log(path, max_bytes, max_files)
    if log.ends_mid_line():
        log.put(b"\n")
    if resume:
        log.put(stamp(time.time()) + OUTPUT_SEP + RESUMED + b"\n")
    else:
        log.put(marker(time.time(), run_no, pid))
    lines = _Lines(log, line_cap(max_bytes))
    held_cr = False
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGUSR1, lambda *_: None)
    draining, last_read = False, 0.0
    while True:
        wait = max(0.0, SETTLE - (time.monotonic() - last_read)) if draining else IDLE_WAIT
        try:
            ready = select.select([source, wake_r], [], [], wait)[0]
        except InterruptedError:
            continue
        if wake_r in ready:
            os.read(wake_r, 64)
            draining = True
        if source not in ready:
            if draining and time.monotonic() - last_read >= SETTLE:
                break  # nothing left in the pipe, nor coming: everything tmux gave is written
            continue
        try:
            buf = os.read(source, READ_SIZE)
        except InterruptedError:
            continue
        except OSError:
            break
        if not buf:
            break
        last_read = time.monotonic()
        if held_cr:
            buf, held_cr = b"\r" + buf, False
        if buf.endswith(b"\r"):
            buf, held_cr = buf[:-1], True  # may be the first half of a "\r\n"
        if buf:
            lines.write(buf.replace(b"\r\n", b"\n"), stamp(time.time()))
    at_bol = lines.at_bol
    if held_cr:
        log.put((stamp(time.time()) + OUTPUT_SEP if at_bol else b"") + b"\r")
        at_bol = False
    if not at_bol:
        log.put(b"\n")
    if lock_fd >= 0:
        os.close(lock_fd)


def main(argv: list[str]) -> int:
    """Entry point: ``logwriter.py LOG RUN PID MAX_BYTES MAX_FILES``."""
    if len(argv) not in (5, 6) or (len(argv) == 6 and argv[5] != "resume"):
        print(USAGE, file=sys.stderr)
        return 2
    path, run_no, pid, max_bytes, max_files = argv[:5]
    try:
        limits = int(max_bytes), int(max_files)
    except ValueError:
        print(USAGE, file=sys.stderr)
        return 2
    try:
        run(path, run_no, pid, max(1, limits[0]), max(1, limits[1]), resume=len(argv) == 6)
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
