"""Task log files: the pipe that writes them, and reading them back (tail, since, grep, follow).

Files and their format are described in logwriter.py. Readers never load whole files: tail
finds where the last lines begin by reading backwards from the end (or a cursor), then streams
them forwards; grep streams forwards in blocks and only cleans the lines a cheap byte-level
prefilter cannot rule out. Text given to readers is cleaned: ANSI escape
sequences removed and carriage-return / backspace redraws resolved as a terminal shows them.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import importlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from heapq import merge
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import anyio

from .errors import InvalidArgument
from .health import PROBE_AGENT
from .locks import is_locked
from .logwriter import MARKER_TAG, OUTPUT_SEP, TS_LEN
from .models import GrepMatch, GrepResult, LogLine, LogsResult
from .processes import until_exit
from .terminal import ESC_BYTES as _ESC
from .terminal import LINE_CHARS, clean_text, cut_line

MAX_LINES = 5000
MAX_CONTEXT = 50
MAX_MATCHES = 10_000
MAX_CURSOR = 64 * 1024
WRITERS = ("perl", "python")
WRITER_MALLOC = "MALLOC_MMAP_THRESHOLD_=65536"

_TAIL_BLOCK = 64 * 1024
_COUNT_BLOCK = 1024 * 1024
_COUNT_BUDGET = 4 * 1024 * 1024  # bytes scanned past the tail to count omitted lines exactly
_GREP_BLOCK = 4 * 1024 * 1024
_PROBE_PAGE = 500
_PROBE_SCAN = 20_000  # lines of a run looked through for a verdict's own lines
_HTTP_METHODS = "GET|HEAD|POST|PUT|PATCH|DELETE|OPTIONS"
_PARTIAL_SETTLE = 0.5  # follow: a line without newline is shown once unchanged this long

_OUTPUT, _MARKER, _RAW = 0, 1, 2
_Z, _T, _NL = ord("Z"), ord("T"), ord("\n")
_MARKER_RE = re.compile(rb"run=(\S*) pid=(\S*)")
MAX_PATTERN = 2000
_DURATION = re.compile(r"(?:\d+(?:\.\d+)?\s*[smhd]\s*)+", re.IGNORECASE)
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd])", re.IGNORECASE)
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_ICASE_UNSAFE = frozenset("iksIKS")  # ASCII letters with non-ASCII case-insensitive twins
_SINCE_FORMS = (
    "'start' (since the task's last start), 'all' (every run kept), a duration such as 30s, "
    "5m, 2h, 1d or 1h30m, or an ISO 8601 time such as 2026-11-26T14:05:00 (local) or "
    "2026-11-26T13:05:00Z"
)

Since = datetime | Literal["start"] | None
Pos = tuple[int, int]  # (index of a file in a _Files snapshot, offset of a line start in it)


def parse_since(value: str, now: datetime) -> Since:
    """Parse a `since` argument: "start", "all" (None), a duration back from `now`, or an ISO
    8601 time."""
    text = value.strip()
    if text.lower() == "start":
        return "start"
    if text.lower() == "all":
        return None
    if now.tzinfo is None:
        now = now.astimezone()
    try:
        if _DURATION.fullmatch(text):
            seconds = sum(
                float(n) * _UNIT_SECONDS[unit.lower()] for n, unit in _DURATION_PART.findall(text)
            )
            return now - timedelta(seconds=seconds)
        moment = datetime.fromisoformat(text)
        moment = moment.astimezone() if moment.tzinfo is None else moment
        moment.astimezone(UTC)  # a time that cannot be placed in UTC is of no use either
    except (ValueError, OverflowError):
        raise InvalidArgument(f"invalid since {value!r}: use {_SINCE_FORMS}") from None
    return moment


def probe_line(health_url: str | None) -> Callable[[str], bool]:
    """Whether a log line is taskmux's own health probe: it names the probe's user agent, or
    it is an access-log line (method, path, HTTP version or status) for health_url's path."""
    forms = [re.escape(PROBE_AGENT)]
    try:
        path = (urlsplit(health_url).path or "/") if health_url else None
    except ValueError:
        path = None
    if path is not None:
        forms.append(
            rf"\b(?:{_HTTP_METHODS}) {re.escape(path)}(?:\?\S*)?"
            r"(?:\s+HTTP/\d(?:\.\d)?\b|\"?\s+[1-5]\d\d\b)"
        )
    rx = re.compile("|".join(forms))
    return lambda text: rx.search(text) is not None


def _since(since: str | None) -> Since:
    return None if since is None else parse_since(since, datetime.now(UTC))


def _split(line: bytes) -> tuple[int, bytes, bytes]:
    """(kind, timestamp key, body) of one stored record."""
    if len(line) > TS_LEN and line[26] == _Z and line[10] == _T:
        sep = line[TS_LEN : TS_LEN + 1]
        if sep == OUTPUT_SEP:
            return _OUTPUT, line[:TS_LEN], line[TS_LEN + 1 :]
        if line.startswith(MARKER_TAG, TS_LEN):
            return _MARKER, line[:TS_LEN], line[TS_LEN + len(MARKER_TAG) :]
    return _RAW, b"", line


def _is_marker_at(buf: bytes | bytearray, start: int) -> bool:
    """Whether a marker record starts at `start` (which must be a line start)."""
    return (
        buf[start + 26 : start + 27] == b"Z"
        and buf[start + 10 : start + 11] == b"T"
        and buf.startswith(MARKER_TAG, start + TS_LEN)
    )


def _is_key(key: bytes) -> bool:
    return len(key) == TS_LEN and key[26] == _Z and key[10] == _T


def _last_key(fd: int, size: int) -> bytes | None:
    """Timestamp of the last record of a file, if it is a proper record."""
    block = next(_blocks_back(fd, size, 4096), (0, b""))[1].rstrip(b"\n")
    key = block[block.rfind(b"\n") + 1 :][:TS_LEN]
    return key if _is_key(key) else None


def _key(moment: datetime) -> bytes:
    """The stored timestamp form of a time, comparable bytewise with record keys."""
    utc = moment.astimezone(UTC).replace(tzinfo=None)
    return (utc.isoformat(timespec="microseconds") + "Z").encode()


def _time(key: bytes) -> datetime | None:
    if not key:
        return None
    try:
        return datetime.fromisoformat(key.decode())
    except ValueError:
        return None


def _marker_text(body: bytes) -> str:
    m = _MARKER_RE.search(body)
    run, pid = (
        (m.group(1).decode(errors="replace"), m.group(2).decode(errors="replace"))
        if m
        else ("?", "?")
    )
    return f"--- taskmux: run {run} started (pid {pid}) ---"


def _log_line(
    task: str, kind: int, key: bytes, body: bytes, line_chars: int | None = None
) -> LogLine:
    if kind == _MARKER:
        text = _marker_text(body)
    elif line_chars is not None and len(body) > 4 * line_chars:
        keep = 4 * line_chars  # a line far too long to show is not cleaned whole
        text = cut_line(clean_text(body[:keep]), line_chars, more_bytes=len(body) - keep)
    else:
        text = clean_text(body)
        if line_chars is not None:
            text = cut_line(text, line_chars)
    return LogLine(task=task, time=_time(key), text=text)


@functools.cache
def _perl() -> str | None:
    """Absolute path of a perl that has Time::HiRes, if any."""
    perl = shutil.which("perl")
    if perl is None:
        return None
    try:
        subprocess.run(
            [perl, "-MTime::HiRes", "-e", "1"], check=True, capture_output=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return os.path.abspath(perl)


def writer_argv(kind: str | None = None) -> list[str]:
    """The interpreter and script of the log writer: perl if usable (lighter), else Python."""
    here = Path(__file__).resolve().parent
    if kind not in (None, *WRITERS):
        raise InvalidArgument(f"unknown log writer {kind!r}; use one of {', '.join(WRITERS)}")
    perl = _perl() if kind in (None, "perl") else None
    if perl is not None:
        return [perl, str(here / "logwriter.pl")]
    if kind == "perl":
        raise InvalidArgument("the perl log writer needs perl with Time::HiRes on PATH")
    # The base interpreter outlives a deleted venv; the writer needs only the stdlib.
    python = os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)
    return [python, "-I", "-S", str(here / "logwriter.py")]


class _Files:
    """Read handles on a task's log files, oldest first, each with its size when opened."""

    def __init__(self, base: Path) -> None:
        self.fds: list[int] = []
        self.sizes: list[int] = []
        self.inodes: list[int] = []
        last = 0
        with contextlib.suppress(OSError):
            for entry in os.scandir(base.parent):
                suffix = entry.name[len(base.name) + 1 :]
                if entry.name.startswith(base.name + ".") and suffix.isascii() and suffix.isdigit():
                    last = max(last, min(int(suffix), 1000))
        seen: set[tuple[int, int]] = set()
        # Newest first and every index in turn (gaps included): a file that a rotation moves
        # while we open is then met twice (and skipped), never missed.
        for path in [base, *(base.with_name(f"{base.name}.{i}") for i in range(1, last + 1))]:
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError:
                continue
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) in seen:
                os.close(fd)
                continue
            seen.add((st.st_dev, st.st_ino))
            self.fds.insert(0, fd)
            self.sizes.insert(0, st.st_size)
            self.inodes.insert(0, st.st_ino)

    @property
    def end(self) -> Pos | None:
        """Where the newest file ended when it was opened (None: the task has no log)."""
        return (len(self.fds) - 1, self.sizes[-1]) if self.fds else None

    def __enter__(self) -> _Files:
        return self

    def __exit__(self, *exc: object) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds.clear()


def _blocks_back(fd: int, end: int, size: int) -> Iterator[tuple[int, bytes]]:
    """(offset, whole lines) blocks from `end` back to the start of the file, newest first."""
    pos = end
    carry: deque[bytes] = deque()
    while pos > 0:
        n = min(size, pos)
        pos -= n
        data = os.pread(fd, n, pos)
        if len(data) < n:  # the file shrank under us
            data = data.ljust(n, b"\n")
        if pos == 0:
            carry.appendleft(data)
            break
        nl = data.find(b"\n")
        if nl < 0:
            carry.appendleft(data)
            continue
        carry.appendleft(data[nl + 1 :])
        block = b"".join(carry)
        carry.clear()
        carry.append(data[: nl + 1])
        if block:
            yield pos + nl + 1, block
    block = b"".join(carry)
    if block:
        yield 0, block


def lines_backward(path: Path) -> Iterator[bytes]:
    """The lines of a file, newest first, read backwards in blocks (nothing if it is missing)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        for _, block in _blocks_back(fd, os.fstat(fd).st_size, _TAIL_BLOCK):
            yield from reversed(block.rstrip(b"\n").split(b"\n"))
    finally:
        os.close(fd)


def _blocks_forward(fd: int, start: int, end: int, size: int) -> Iterator[tuple[bytearray, int]]:
    """(buffer, length) of whole-line blocks from `start` to `end`; the buffer is reused."""
    buf = bytearray(size)
    have, pos = 0, start
    while pos < end:
        want = min(len(buf) - have, end - pos)
        if want == 0:
            buf.extend(bytes(len(buf)))  # a line longer than the buffer
            continue
        with memoryview(buf) as view:
            n = os.preadv(fd, [view[have : have + want]], pos)
        if n <= 0:
            break
        pos += n
        have += n
        if pos >= end:
            break
        nl = buf.rfind(b"\n", 0, have)
        if nl < 0:
            continue
        yield buf, nl + 1
        rest = have - nl - 1
        buf[0:rest] = buf[nl + 1 : have]
        have = rest
    if have:
        yield buf, have


def _marker_end(block: bytes) -> int | None:
    """Offset just after the newest start-marker line of a block of whole lines, if any."""
    p = len(block)
    while (p := block.rfind(MARKER_TAG, 0, p)) >= 0:
        ls = p - TS_LEN
        if ls >= 0 and (ls == 0 or block[ls - 1] == _NL) and _is_marker_at(block, ls):
            nl = block.find(b"\n", p)
            return len(block) if nl < 0 else nl + 1
    return None


def _older_end(block: bytes, since_key: bytes) -> int | None:
    """Offset just after the newest line of a block that is older than since_key, if any."""
    first = block[:TS_LEN]
    if _is_key(first) and first >= since_key:
        return None
    e = len(block) - 1 if block.endswith(b"\n") else len(block)
    while True:
        s = block.rfind(b"\n", 0, e) + 1
        key = block[s : s + TS_LEN]
        if _is_key(key) and key < since_key:
            return min(e + 1, len(block))
        if s == 0:
            return None
        e = s - 1


def _start_of_last(block: bytes, k: int) -> int:
    """Offset where the last k lines of a block of whole lines begin."""
    e = len(block) - 1 if block.endswith(b"\n") else len(block)
    s = len(block)
    for _ in range(k):
        s = block.rfind(b"\n", 0, e) + 1
        e = s - 1
    return s


def _last_marker(files: _Files) -> Pos | None:
    """(file index, offset just after) of the newest start marker."""
    for fi in range(len(files.fds) - 1, -1, -1):
        for start, block in _blocks_back(files.fds[fi], files.sizes[fi], _COUNT_BLOCK):
            end = _marker_end(block)
            if end is not None:
                return fi, start + end
    return None


def _walk_back(
    files: _Files,
    end: Pos,
    when: Since,
    limit: int | None = None,
    *,
    block: int = _TAIL_BLOCK,
    budget: int | None = None,
) -> tuple[Pos, int, bool]:
    """Walk back from `end` over at most `limit` lines that `when` admits: (where the earliest
    of them starts, how many, whether no admitted line is left before it)."""
    since_key = _key(when) if isinstance(when, datetime) else None
    pos, count, scanned = end, 0, 0
    for fi in range(end[0], -1, -1):
        stop = end[1] if fi == end[0] else files.sizes[fi]
        for start, data in _blocks_back(files.fds[fi], stop, block):
            if budget is not None and scanned >= budget:
                return pos, count, False
            scanned += len(data)
            if when == "start":
                bound = _marker_end(data)
            else:
                bound = None if since_key is None else _older_end(data, since_key)
            first = bound or 0
            n = 0 if first >= len(data) else data.count(b"\n", first) + (data[-1] != _NL)
            if limit is not None and count + n > limit:
                return (fi, start + _start_of_last(data, limit - count)), limit, False
            count += n
            pos = (fi, start + first)
            if bound is not None:
                return pos, count, True
    return pos, count, True


def _key_before(files: _Files, pos: Pos) -> bytes:
    """The time of the newest record before `pos` that has one (b"" if none does)."""
    for fi in range(pos[0], -1, -1):
        stop = pos[1] if fi == pos[0] else files.sizes[fi]
        for _, block in _blocks_back(files.fds[fi], stop, _TAIL_BLOCK):
            for line in reversed(block.rstrip(b"\n").split(b"\n")):
                key = _split(line)[1]
                if key:
                    return key
    return b""


def _records(files: _Files, start: Pos, end: Pos) -> Iterator[tuple[Pos, bytes]]:
    """(position, record) of every line from `start` to `end`, oldest first."""
    for fi in range(start[0], end[0] + 1):
        pos = start[1] if fi == start[0] else 0
        stop = end[1] if fi == end[0] else files.sizes[fi]
        for buf, length in _blocks_forward(files.fds[fi], pos, stop, _TAIL_BLOCK):
            parts = bytes(buf[:length]).split(b"\n")
            if not parts[-1]:
                parts.pop()
            for part in parts:
                yield (fi, pos), part
                pos += len(part) + 1


_NOT_A_CURSOR = "before must be the `cursor` of an earlier logs result (of the same tasks)"
Mark = tuple[int, int, str]  # inode of a log file, offset of a line start, key of the line before


def _encode_cursor(shown: int, marks: dict[str, Mark]) -> str:
    data = [shown, [[task, *mark] for task, mark in marks.items()]]
    text = json.dumps(data, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(text).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[int, dict[str, Mark]]:
    try:
        shown, entries = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        marks = {task: (inode, offset, check) for task, inode, offset, check in entries}
    except (ValueError, TypeError):
        raise InvalidArgument(_NOT_A_CURSOR) from None
    numbers = [shown, *(n for inode, offset, _ in marks.values() for n in (inode, offset))]
    texts = [*marks, *(check for _, _, check in marks.values())]
    if not all(type(n) is int and n >= 0 for n in numbers) or not all(
        isinstance(t, str) for t in texts
    ):
        raise InvalidArgument(_NOT_A_CURSOR)
    return shown, marks


def cursor_without(cursor: str, oldest: int) -> str:
    """The cursor of a logs result whose `oldest` first lines were then left out."""
    shown, marks = _decode_cursor(cursor)
    return _encode_cursor(max(0, shown - oldest), marks)


def _mark(files: _Files, pos: Pos) -> Mark:
    fi, offset = pos
    return files.inodes[fi], offset, (_last_key(files.fds[fi], offset) or b"").decode("latin-1")


def _resolve(files: _Files, mark: Mark | None) -> Pos | None:
    """Where a mark of a cursor is in this snapshot (None: its file was rotated away)."""
    if mark is None or mark[0] not in files.inodes:
        return None
    fi = files.inodes.index(mark[0])
    pos = (fi, mark[1])
    return pos if mark[1] <= files.sizes[fi] and _mark(files, pos) == mark else None


@dataclass
class _Span:
    """The lines of one task's log that a read covers."""

    task: str
    files: _Files
    start: Pos
    end: Pos
    count: int
    older: int  # lines `since` admits before `start`
    after: Pos | None = None  # where the lines after the ones shown begin
    skipped: int = 0  # lines after the ones shown


class LogRead:
    """What one logs call shows: the last `lines` lines of some tasks, interleaved by time,
    within `since` and before a cursor, read forward while it goes (nothing held in memory).

    A cursor names, per task, a position that stays put while the log grows or rotates, plus
    how many of the newest lines before those positions were shown; the lines before a cursor
    are the ones just before those shown.
    """

    def __init__(
        self,
        opened: Sequence[tuple[str, _Files]],
        lines: int,
        since: str | None = None,
        *,
        before: str | None = None,
        line_chars: int | None = None,
    ) -> None:
        if lines < 1:
            raise InvalidArgument(f"lines must be at least 1 (got {lines})")
        when = _since(since)
        skip, marks = (0, None) if before is None else _decode_cursor(before)
        self._line_chars = line_chars
        self._spans: list[_Span] = []
        for task, files in opened:
            end = files.end if marks is None else _resolve(files, marks.get(task))
            if end is None:
                continue
            start, count, complete = _walk_back(files, end, when, skip + lines)
            older = 0
            if not complete:
                older = _walk_back(files, start, when, block=_COUNT_BLOCK, budget=_COUNT_BUDGET)[1]
            self._spans.append(_Span(task, files, start, end, count, older))
        total = sum(span.count for span in self._spans)
        self._first = max(0, total - skip - lines)
        self.shown = min(lines, max(0, total - skip))
        self.omitted = self._first + sum(span.older for span in self._spans)
        self.truncated = self.omitted > 0

    def lines(self) -> Iterator[LogLine]:
        """The lines shown, oldest first (read them all before asking for the cursor)."""
        streams = [self._keyed(i, span) for i, span in enumerate(self._spans)]
        for n, (_, i, pos, record) in enumerate(merge(*streams, key=lambda item: item[0])):
            span = self._spans[i]
            if self._first <= n < self._first + self.shown:
                kind, key, body = _split(record)
                yield _log_line(span.task, kind, key, body, self._line_chars)
            elif n >= self._first:
                span.after = span.after or pos
                span.skipped += 1

    @staticmethod
    def _keyed(i: int, span: _Span) -> Iterator[tuple[bytes, int, Pos, bytes]]:
        """The span's records with the time they sort by (a line without one takes the time
        of the line before it, even before the span: every read sorts it the same way)."""
        last: bytes | None = None
        for pos, record in _records(span.files, span.start, span.end):
            key = _split(record)[1]
            if not key and last is None:
                key = _key_before(span.files, pos)
            last = key or last
            yield last or b"", i, pos, record

    def result(self, lines: list[LogLine]) -> LogsResult:
        """The result of the read with these of its lines (read them all first)."""
        return LogsResult(
            lines=lines, truncated=self.truncated, omitted=self.omitted, cursor=self.cursor()
        )

    def cursor(self) -> str | None:
        """Where the lines shown begin, as `before` takes it (None: nothing shown or left)."""
        marks = {
            span.task: _mark(span.files, span.after or span.end)
            for span in self._spans
            if span.count - span.skipped + span.older
        }
        return _encode_cursor(self.shown, marks) if marks else None


@dataclass
class _Match:
    task: str
    key: bytes
    line: str
    before: list[str]
    continues: bool
    after: list[str] = field(default_factory=list)

    def model(self) -> GrepMatch:
        return GrepMatch(
            task=self.task,
            time=_time(self.key),
            line=self.line,
            before=self.before,
            after=self.after,
            continues=self.continues,
        )


class _Block:
    """One block of whole lines, with the escape-stripped view the prefilter searches."""

    def __init__(self, raw: bytearray, length: int) -> None:
        self.raw = raw
        self.length = length
        self.esc = raw.find(b"\x1b", 0, length) >= 0
        self.s: bytes | bytearray = _ESC.sub(b"", memoryview(raw)[:length]) if self.esc else raw
        self.end = len(self.s) if self.esc else length
        self._raw_lines: dict[int, tuple[int, int]] | None = None
        self._cursor = (0, 0)

    def lines_between(self, start: int, stop: int, cap: int) -> int:
        """How many output lines (markers not counted) start in [start, stop), up to cap."""
        n, ls = 0, start
        while n < cap and ls < stop:
            n += not _is_marker_at(self.s, ls)
            ls = self.line_end(ls) + 1
        return n

    def line_end(self, ls: int) -> int:
        e = self.s.find(b"\n", ls, self.end)
        return self.end if e < 0 else e

    def prev_start(self, ls: int) -> int:
        return self.s.rfind(b"\n", 0, ls - 1) + 1

    def last_start(self) -> int:
        end = self.end - 1 if self.s[self.end - 1] == _NL else self.end
        return self.s.rfind(b"\n", 0, end) + 1

    def record(self, ls: int, le: int) -> tuple[int, bytes, str | None]:
        """(kind, key, cleaned text or None for a marker) of the line at [ls, le)."""
        kind, key, body = _split(bytes(self.s[ls:le]))
        if kind == _MARKER:
            return kind, key, None
        if self.esc and (b"\r" in body or b"\x08" in body):
            kind, key, body = _split(self._raw_line(ls))  # redraws need the erase sequences
        return kind, key, clean_text(body)

    def _raw_line(self, ls: int) -> bytes:
        pos, lineno = self._cursor if ls >= self._cursor[0] else (0, 0)
        lineno += self.s.count(b"\n", pos, ls)
        self._cursor = (ls, lineno)
        if self._raw_lines is None:
            self._raw_lines = {}
            starts = set()
            for ch in (b"\r", b"\x08"):
                p = self.raw.find(ch, 0, self.length)
                while p >= 0:
                    starts.add(self.raw.rfind(b"\n", 0, p) + 1)
                    p = self.raw.find(ch, p + 1, self.length)
            at, n = 0, 0
            for start in sorted(starts):
                n += self.raw.count(b"\n", at, start)
                at = start
                e = self.raw.find(b"\n", start, self.length)
                self._raw_lines[n] = (start, self.length if e < 0 else e)
        start, end = self._raw_lines.get(lineno, (0, 0))
        return bytes(self.raw[start:end])

    def candidates(self, needles: Sequence[bytes], lower: bool) -> list[int]:
        """Starts of lines that may match: a needle occurs, or the line redraws (\\r, \\b)."""
        hay = self.s[: self.end].lower() if lower else self.s
        starts: set[int] = set()
        for needle, where in [*((n, hay) for n in needles), (b"\r", self.s), (b"\x08", self.s)]:
            p = where.find(needle, 0, self.end)
            while p >= 0:
                starts.add(where.rfind(b"\n", 0, p) + 1)
                e = where.find(b"\n", p, self.end)
                if e < 0:
                    break
                p = where.find(needle, e + 1, self.end)
        return sorted(starts)

    def all_starts(self) -> Iterator[int]:
        ls = 0
        while ls < self.end:
            yield ls
            ls = self.line_end(ls) + 1


@dataclass(frozen=True)
class _Prefilter:
    """Byte strings one of which occurs in every line the pattern can match."""

    needles: tuple[bytes, ...]
    lower: bool


def _required(seq: Any, c: Any) -> list[str] | None:
    """Alternatives, one of which occurs in every match of a parsed regex sequence."""
    best: list[str] | None = None

    def consider(alts: list[str] | None) -> None:
        nonlocal best
        if alts and all(alts) and (best is None or min(map(len, alts)) > min(map(len, best))):
            best = alts

    run: list[str] = []
    for op, av in seq:
        if op is c.LITERAL:
            run.append(chr(av))
            continue
        consider(["".join(run)] if run else None)
        run = []
        if op is c.SUBPATTERN and not av[1] and not av[2]:
            consider(_required(av[3], c))
        elif op in (c.MAX_REPEAT, c.MIN_REPEAT, c.POSSESSIVE_REPEAT) and av[0] >= 1:
            consider(_required(av[2], c))
        elif op is c.ATOMIC_GROUP:
            consider(_required(av, c))
        elif op is c.BRANCH:
            branches = [_required(b, c) for b in av[1]]
            if all(branches):
                alts = [a for b in branches if b for a in b]
                if len(alts) <= 8:
                    consider(alts)
    consider(["".join(run)] if run else None)
    return best


def _longest_piece(text: str, bad: Callable[[str], bool]) -> str:
    pieces = re.split(
        "|".join(map(re.escape, sorted({ch for ch in text if bad(ch)}))) or "(?!)", text
    )
    return max(pieces, key=len)


def _prefilter(rx: re.Pattern[str]) -> _Prefilter | None:
    """A sound byte-level prefilter for a compiled pattern, when one can be derived."""
    try:
        parser = importlib.import_module("re._parser")
        consts = importlib.import_module("re._constants")
        tree = parser.parse(rx.pattern, rx.flags)
        alts = _required(tree, consts)
        icase = bool(tree.state.flags & re.IGNORECASE)
    except Exception:
        return None
    if not alts:
        return None
    needles: list[bytes] = []
    for alt in alts:
        if icase:
            piece = _longest_piece(alt, lambda ch: ord(ch) > 127 or ch in _ICASE_UNSAFE).lower()
        else:
            piece = _longest_piece(alt, lambda ch: ch == "\ufffd" or 0xD800 <= ord(ch) < 0xE000)
        if not piece:
            return None
        needles.append(piece.encode("utf-8"))
    return _Prefilter(tuple(needles), icase)


class _GrepScan:
    """Streaming grep over one task's blocks, with context carried across blocks and files."""

    def __init__(
        self,
        task: str,
        rx: re.Pattern[str],
        pre: _Prefilter | None,
        *,
        context: int,
        since_key: bytes | None,
        limit: int,
    ) -> None:
        self.task = task
        self.rx = rx
        self.pre = pre
        self.context = context
        self.since_key = since_key
        self.limit = limit
        self.matches: list[_Match] = []
        self.pending: _Match | None = None  # the last match, while it lacks after-context
        self.tail: deque[str] = deque(maxlen=context)
        self.far = 2 * context + 1  # lines between two matches that keep their context apart
        self.gap = self.far  # lines since the last match, up to `far`, where this block starts
        self.searching = True
        self.truncated = False

    @property
    def finished(self) -> bool:
        return not self.searching and self.pending is None

    def feed(self, raw: bytearray, length: int) -> None:
        block = _Block(raw, length)
        if self.pending is not None:
            self._serve_pending(block)
        last: int | None = None  # the start of this block's last match
        if self.searching and not self._older(block):
            starts: Iterator[int] | list[int]
            if self.pre is None:
                starts = block.all_starts()
            else:
                starts = block.candidates(self.pre.needles, self.pre.lower)
            for ls in starts:
                le = block.line_end(ls)
                _, key, text = block.record(ls, le)
                if text is None or (self.since_key and key and key < self.since_key):
                    continue
                if not self.rx.search(text):
                    continue
                if len(self.matches) >= self.limit:
                    self.truncated = True
                    self.searching = False
                    break
                if last is None:
                    gap = min(self.far, self.gap + block.lines_between(0, ls, self.far))
                else:
                    gap = block.lines_between(block.line_end(last) + 1, ls, self.far)
                last = ls
                wanted, continues = self._room_before(gap)
                match = _Match(self.task, key, text, self._before(block, ls, wanted), continues)
                match.after, _ = self._lines_from(block, le + 1, self.context)
                self.matches.append(match)
                self.pending = match if len(match.after) < self.context else None
        if last is None:
            self.gap = min(self.far, self.gap + block.lines_between(0, block.end, self.far))
        else:
            self.gap = block.lines_between(block.line_end(last) + 1, block.end, self.far)
        if self.context:
            self._remember(block)

    def _room_before(self, gap: int) -> tuple[int, bool]:
        """Cut the previous match's after-context short of a match `gap` lines after it: how
        many lines of before-context the new match has room for, and whether none lies between
        what the two give."""
        if not self.matches:
            return self.context, False
        previous = self.matches[-1]
        del previous.after[gap:]
        self.pending = None
        between = gap - len(previous.after)
        return min(self.context, between), between <= self.context

    def _older(self, block: _Block) -> bool:
        if self.since_key is None or block.end == 0:
            return False
        key = bytes(block.s[block.last_start() :][:TS_LEN])
        return _is_key(key) and key < self.since_key

    def _before(self, block: _Block, ls: int, wanted: int) -> list[str]:
        out: list[str] = []
        while len(out) < wanted and ls > 0:
            ls = block.prev_start(ls)
            text = block.record(ls, block.line_end(ls))[2]
            if text is not None:
                out.append(text)
        need = wanted - len(out)
        carried = list(self.tail)[-need:] if need and self.tail else []
        return carried + out[::-1]

    def _lines_from(self, block: _Block, ls: int, n: int) -> tuple[list[str], int]:
        out: list[str] = []
        while len(out) < n and ls < block.end:
            le = block.line_end(ls)
            text = block.record(ls, le)[2]
            if text is not None:
                out.append(text)
            ls = le + 1
        return out, ls

    def _serve_pending(self, block: _Block) -> None:
        match = self.pending
        assert match is not None
        lines, _ = self._lines_from(block, 0, self.context - len(match.after))
        match.after.extend(lines)
        if len(match.after) >= self.context:
            self.pending = None

    def _remember(self, block: _Block) -> None:
        out: list[str] = []
        ls = block.last_start() if block.end else 0
        while len(out) < self.context:
            text = block.record(ls, block.line_end(ls))[2]
            if text is not None:
                out.append(text)
            if ls == 0:
                break
            ls = block.prev_start(ls)
        self.tail.extend(reversed(out))


class LogStore:
    """The log files of one project's tasks: pipe commands for tmux, and every way to read them."""

    def __init__(
        self,
        log_dir: Path,
        *,
        max_bytes: int = 10 * 1024 * 1024,
        max_files: int = 3,
        writer: str | None = None,
    ) -> None:
        if max_bytes < 1 or max_files < 1:
            raise InvalidArgument("logs need max_bytes >= 1 and max_files >= 1")
        self.log_dir = Path(log_dir)
        self.max_bytes = max_bytes
        self.max_files = max_files
        self.writer = writer

    def path(self, task: str) -> Path:
        """The current log file of a task."""
        if not task or task in (".", "..") or "/" in task or "\0" in task:
            raise InvalidArgument(f"invalid task name for a log file: {task!r}")
        return self.log_dir / f"{task}.log"

    def pipe_command(
        self,
        task: str,
        run: int,
        *,
        resume: bool = False,
        max_bytes: int | None = None,
        max_files: int | None = None,
    ) -> str:
        """The shell command for tmux pipe-pane ('#' escaped; creates the log folder).

        resume: a writer replacing one that died mid-run (it notes the gap, no start marker).
        max_bytes, max_files: the task's own rotation, when it has one.
        """
        path = self.path(task)
        with contextlib.suppress(OSError):
            self.log_dir.mkdir(parents=True, exist_ok=True)
        argv = [*writer_argv(self.writer), str(path), str(run)]
        quoted = [shlex.quote(a).replace("#", "##") for a in argv]
        rotation = [str(max_bytes or self.max_bytes), str(max_files or self.max_files)]
        # glibc keeps a burst's freed buffers unless big blocks are mapped apart: a writer per
        # task would hold about 1 MB more after a burst without this.
        words = [WRITER_MALLOC, "exec", *quoted, "#{pane_pid}", *rotation]
        return " ".join([*words, "resume"] if resume else words)

    def remove(self, task: str) -> None:
        """Delete every log file of a task."""
        base = self.path(task)
        with contextlib.suppress(OSError):
            for entry in os.scandir(self.log_dir):
                suffix = entry.name[len(base.name) + 1 :]
                if entry.name == base.name or (
                    entry.name.startswith(base.name + ".")
                    and ((suffix.isascii() and suffix.isdigit()) or suffix == "lock")
                ):
                    with contextlib.suppress(OSError):
                        os.unlink(entry.path)

    @contextlib.contextmanager
    def reading(
        self,
        tasks: Sequence[str],
        lines: int = 100,
        since: str | None = None,
        *,
        before: str | None = None,
        line_chars: int | None = None,
    ) -> Iterator[LogRead]:
        """The last `lines` lines of tasks (before a cursor), to stream while the files stay
        open (a `taskmux logs -n 200000` holds no more than a block of each log)."""
        with contextlib.ExitStack() as stack:
            opened = [
                (task, stack.enter_context(_Files(self.path(task))))
                for task in dict.fromkeys(tasks)
            ]
            yield LogRead(opened, lines, since, before=before, line_chars=line_chars)

    def tail(
        self,
        tasks: Sequence[str],
        lines: int = 100,
        since: str | None = None,
        *,
        before: str | None = None,
        line_chars: int | None = None,
    ) -> LogsResult:
        """The last `lines` lines (at most MAX_LINES) of tasks, interleaved by time, before a
        cursor when given, cleaned (and cut past line_chars characters, when given)."""
        limit = min(lines, MAX_LINES)
        with self.reading(tasks, limit, since, before=before, line_chars=line_chars) as read:
            return read.result(list(read.lines()))

    def last_run_lines(self, task: str, n: int = 20) -> list[str]:
        """Cleaned last `n` lines of the task's current run (for failure reports), cut."""
        tail = self.tail([task], lines=max(1, n), since="start", line_chars=LINE_CHARS)
        return [line.text for line in tail.lines]

    def writer_run(self, task: str) -> int:
        """The run that the task's log writer was last started for (0: none yet)."""
        return self._writer(task)[2]

    def verdict_tail(self, task: str, n: int, health_url: str | None) -> list[str]:
        """Like last_run_lines, but the `n` lines leave out taskmux's own health probes: lines
        naming its user agent, and access-log lines of a request for health_url's path."""
        probe = probe_line(health_url)
        kept: list[str] = []
        before = None
        for _ in range(_PROBE_SCAN // _PROBE_PAGE):
            page = self.tail(
                [task], _PROBE_PAGE, since="start", before=before, line_chars=LINE_CHARS
            )
            kept[:0] = [line.text for line in page.lines if not probe(line.text)]
            if len(kept) >= n or not page.truncated:
                break
            before = page.cursor
        return kept[-n:] if n > 0 else []

    def writer_pid(self, task: str, run: int) -> int | None:
        """The pid of the log writer that last took run `run`'s log (None when another run's
        or none did); read from its lock file, without testing the lock."""
        pid, written = self._last_writer(task)
        return pid if written == run and pid > 1 else None

    def _writer(self, task: str) -> tuple[bool | None, int, int]:
        """Whether the log's writer lock is held, and the pid and run its last holder wrote."""
        return (is_locked(self._writer_lock(task)), *self._last_writer(task))

    def _writer_lock(self, task: str) -> Path:
        """The file whose lock the log's writer holds for life."""
        return Path(str(self.path(task)) + ".lock")

    def _last_writer(self, task: str) -> tuple[int, int]:
        """The pid and run the log's last writer wrote into its lock file ((0, 0) if none)."""
        try:
            pid, run = self._writer_lock(task).read_bytes()[:64].split()
            return int(pid), int(run)
        except (OSError, ValueError):
            return 0, 0

    async def drain_writer(self, task: str, run: int, *, timeout: float) -> bool:
        """Once run's pane is dead: wait until its log writer has started, been asked to finish
        (tmux has handed it every byte), written them all and let go of the log."""
        deadline = time.monotonic() + timeout
        asked: set[int] = set()
        while True:
            held, pid, written_by = self._writer(task)
            if not held and written_by >= run:
                return True
            if held and pid > 1 and pid != os.getpid() and pid not in asked:
                asked.add(pid)  # never a process group (0, -1), never us
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGUSR1)
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            # The writer lets go of the lock as it exits: wait for that rather than poll (a
            # stop of 500 tasks has 500 drains at once).
            if not (pid in asked and await until_exit(pid, min(left, 0.25))):
                await anyio.sleep(0.005)

    def grep(
        self,
        pattern: str,
        tasks: Sequence[str],
        *,
        context: int = 2,
        ignore_case: bool = False,
        since: str | None = None,
        max_matches: int = 100,
    ) -> GrepResult:
        """Lines matching a Python regex in tasks' logs (rotated files too), oldest first."""
        if len(pattern) > MAX_PATTERN:
            raise InvalidArgument(f"the pattern is longer than {MAX_PATTERN} characters")
        try:
            rx = re.compile(pattern, re.IGNORECASE if ignore_case else 0)
        except re.error as exc:
            raise InvalidArgument(f"invalid regular expression {pattern!r}: {exc}") from None
        except (RecursionError, OverflowError, ValueError) as exc:
            problem = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
            raise InvalidArgument(f"regular expression not usable: {problem}") from None
        if context < 0 or max_matches < 1:
            raise InvalidArgument("context must be >= 0 and max_matches >= 1")
        context = min(context, MAX_CONTEXT)
        limit = min(max_matches, MAX_MATCHES)
        when = _since(since)
        since_key = _key(when) if isinstance(when, datetime) else None
        pre = _prefilter(rx)
        found: list[list[_Match]] = []
        truncated, searched = False, 0
        for task in dict.fromkeys(tasks):
            scan = _GrepScan(task, rx, pre, context=context, since_key=since_key, limit=limit)
            with _Files(self.path(task)) as files:
                searched += self._grep_files(scan, files, when)
            found.append(scan.matches)
            truncated |= scan.truncated
        merged = list(merge(*found, key=lambda m: m.key))
        if len(merged) > limit:
            truncated = True
            merged = merged[:limit]
        return GrepResult(
            matches=[m.model() for m in merged], truncated=truncated, files_searched=searched
        )

    def _grep_files(self, scan: _GrepScan, files: _Files, when: Since) -> int:
        first, offset = 0, 0
        if when == "start":
            first, offset = _last_marker(files) or (0, 0)
        searched = 0
        for fi in range(first, len(files.fds)):
            fd, size = files.fds[fi], files.sizes[fi]
            if scan.since_key is not None and fi < len(files.fds) - 1 and scan.pending is None:
                last = _last_key(fd, size)
                if last is not None and last < scan.since_key:
                    continue  # this whole rotated file is older than `since`
            searched += 1
            for buf, length in _blocks_forward(fd, offset if fi == first else 0, size, _GREP_BLOCK):
                scan.feed(buf, length)
                if scan.finished:
                    return searched
        return searched

    def follow(
        self,
        tasks: Sequence[str],
        *,
        since: str | None = None,
        lines: int = 10,
        poll: float = 0.2,
        stop: Callable[[], bool] | None = None,
    ) -> Iterator[LogLine]:
        """Yield the last `lines` lines, then new lines as they are written (follows rotation)."""
        followers = [_Follower(task, self.path(task)) for task in dict.fromkeys(tasks)]
        try:
            with contextlib.ExitStack() as stack:
                opened = []
                for follower in followers:
                    files = stack.enter_context(_Files(follower.path))
                    follower.attach(files)
                    if follower.fd >= 0:
                        files.sizes[-1] = follower.offset
                    opened.append((follower.task, files))
                if lines > 0:
                    yield from LogRead(opened, lines, since).lines()
            while not (stop and stop()):
                fresh = [item for f in followers for item in f.poll()]
                for _, line in sorted(fresh, key=lambda item: item[0]):
                    yield line
                if not fresh:
                    time.sleep(poll)
        finally:
            for follower in followers:
                follower.close()


class _Follower:
    """Reads what is appended to one task's log, reopening it when it is rotated."""

    def __init__(self, task: str, path: Path) -> None:
        self.task = task
        self.path = path
        self.fd = -1
        self.ino: tuple[int, int] | None = None
        self.offset = 0
        self.pending = b""
        self.shown = 0  # bytes of `pending` already yielded as a partial line
        self.changed = time.monotonic()

    def attach(self, files: _Files) -> None:
        """Start at the last line start of the current file of an opened snapshot."""
        if not files.fds:
            return
        try:
            st = os.stat(self.path)
        except OSError:
            return
        fd, size = files.fds[-1], files.sizes[-1]
        if (st.st_dev, st.st_ino) != (os.fstat(fd).st_dev, os.fstat(fd).st_ino):
            return
        self.fd = os.dup(fd)
        self.ino = (st.st_dev, st.st_ino)
        head = next(_blocks_back(fd, size, _TAIL_BLOCK), None)
        self.offset = size if head is None else head[0] + head[1].rfind(b"\n") + 1

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def _drain(self) -> bytes:
        chunks = []
        while self.fd >= 0:
            data = os.pread(self.fd, 1024 * 1024, self.offset)
            if not data:
                break
            chunks.append(data)
            self.offset += len(data)
        return b"".join(chunks)

    def _catch_up(self) -> bytes:
        """After rotation: files written since ours (whole), then adopt the newest one."""
        data: list[bytes] = []
        for attempt in range(5):
            files = _Files(self.path)
            ids = [(st.st_dev, st.st_ino) for st in map(os.fstat, files.fds)]
            if self.ino in ids or attempt == 4:
                break
            # Either ours was deleted, or rotations moved files while we listed them: look again.
            files.__exit__()
            time.sleep(0.01)
        with files:
            newer = ids.index(self.ino) + 1 if self.ino in ids else 0
            for fd in files.fds[newer:-1]:
                offset = 0
                while chunk := os.pread(fd, 1024 * 1024, offset):
                    data.append(chunk)
                    offset += len(chunk)
            if newer < len(files.fds):
                self.close()
                self.fd, self.ino, self.offset = os.dup(files.fds[-1]), ids[-1], 0
                data.append(self._drain())
        return b"".join(data)

    def poll(self) -> list[tuple[bytes, LogLine]]:
        """New complete lines (and a settled partial line) since the last poll."""
        data = self._drain()
        try:
            st = os.stat(self.path)
            current = (st.st_dev, st.st_ino)
        except OSError:
            current = None
        if current is not None and current != self.ino:
            data += self._drain() + self._catch_up()
        elif current is not None and st.st_size < self.offset:
            self.offset = 0  # truncated by someone else
        out: list[tuple[bytes, LogLine]] = []
        if data:
            self.changed = time.monotonic()
            parts = (self.pending + data).split(b"\n")
            self.pending = parts.pop()
            for i, line in enumerate(parts):
                shown, self.shown = (self.shown, 0) if i == 0 else (0, 0)
                out.extend(self._line(line, shown))
        elif len(self.pending) > self.shown and time.monotonic() - self.changed >= _PARTIAL_SETTLE:
            out.extend(self._line(self.pending, self.shown))
            self.shown = len(self.pending)
        return out

    def _line(self, line: bytes, shown: int) -> list[tuple[bytes, LogLine]]:
        kind, key, body = _split(line)
        if shown:
            body = line[max(shown, len(line) - len(body)) :]
            if not body:
                return []
        return [(key, _log_line(self.task, kind, key, body))]


def run_line_matching(store: LogStore, task: str, run: int, rx: re.Pattern[str]) -> str | None:
    """The last line of run `run` of a task whose cleaned text matches `rx`, if any."""
    found: str | None = None
    with _Files(store.path(task)) as files:
        for fi in range(len(files.fds) - 1, -1, -1):
            for _, block in _blocks_back(files.fds[fi], files.sizes[fi], _TAIL_BLOCK):
                for line in reversed(block.rstrip(b"\n").split(b"\n")):
                    kind, _, body = _split(line)
                    if kind == _MARKER:
                        marked = _MARKER_RE.search(body)
                        return found if marked and marked[1] == str(run).encode() else None
                    if found is None and kind == _OUTPUT and rx.search(text := clean_text(body)):
                        found = text
    return found if store.writer_run(task) == run else None


class LineWatch:
    """The lines written to one task's log from now on (rotation followed)."""

    def __init__(self, store: LogStore, task: str) -> None:
        self._follower = _Follower(task, store.path(task))
        with _Files(self._follower.path) as files:
            self._follower.attach(files)

    def new_lines(self) -> list[LogLine]:
        """Complete lines (and a settled partial one) written since the last call."""
        return [line for _, line in self._follower.poll()]

    def close(self) -> None:
        """Let go of the log file."""
        self._follower.close()
