"""Log writer, tail, since, grep and follow, against real files, real writers and a real tmux."""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import random
import re
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from taskmux_mcp import logs
from taskmux_mcp.errors import InvalidArgument
from taskmux_mcp.logs import MAX_CONTEXT, MAX_LINES, LogStore, clean_text, parse_since
from taskmux_mcp.logwriter import MARKER_TAG, line_cap, marker, stamp

NO_PERL = logs._perl() is None and not os.environ.get("CI")  # in CI a missing perl fails
WRITERS = [
    pytest.param("perl", marks=pytest.mark.skipif(NO_PERL, reason="no perl with Time::HiRes")),
    "python",
]


def wait_for(
    predicate: Callable[[], object], timeout: float = 5.0, what: str = "condition"
) -> None:
    """Poll until predicate() is truthy, failing after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def expand(command: str, pid: int) -> str:
    """What tmux makes of a pipe-pane command: formats expanded, '##' -> '#'."""
    return command.replace("#{pane_pid}", str(pid)).replace("##", "#")


class Writer:
    """A log writer process fed through a pipe, as tmux would run it."""

    def __init__(self, store: LogStore, task: str, run: int = 1, env: dict[str, str] | None = None):
        command = expand(store.pipe_command(task, run), 4242)
        self.proc = subprocess.Popen(["/bin/sh", "-c", command], stdin=subprocess.PIPE, env=env)
        assert self.proc.stdin is not None
        self.stdin = self.proc.stdin

    def send(self, data: bytes) -> None:
        self.stdin.write(data)
        self.stdin.flush()

    def close(self) -> int:
        self.stdin.close()
        return self.proc.wait(timeout=10)


def feed(store: LogStore, task: str, data: bytes, run: int = 1) -> None:
    """Run one writer over `data` to EOF."""
    writer = Writer(store, task, run)
    writer.send(data)
    assert writer.close() == 0


def content(path: Path) -> bytes:
    """The bytes of a file, or nothing while it does not exist yet."""
    return path.read_bytes() if path.exists() else b""


def records(path: Path) -> list[bytes]:
    return path.read_bytes().split(b"\n")[:-1]


def write_records(path: Path, items: list[tuple[datetime, str | None]]) -> None:
    """A log in the on-disk format with chosen times; text None writes a start marker."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("ab") as f:
        for run, (moment, text) in enumerate(items, 1):
            if text is None:
                f.write(marker(moment.timestamp(), str(run), "1"))
            else:
                f.write(stamp(moment.timestamp()) + b"\t" + text.encode() + b"\n")


@pytest.fixture(params=WRITERS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> LogStore:
    return LogStore(tmp_path / "logs", writer=request.param)


def test_a_drain_that_reads_anything_waits_for_what_tmux_still_holds(store: LogStore) -> None:
    """A pipe that filled up while the writer lagged leaves output with tmux, which hands it on
    as the writer reads: a drain that read something ends only after a quiet moment."""
    writer = Writer(store, "api")
    writer.send(b"first\r\n")
    log = store.path("api")
    wait_for(lambda: b"first" in content(log), what="the first line written")
    pid = int(Path(f"{log}.lock").read_text().split()[0])
    os.kill(pid, signal.SIGSTOP)
    try:
        writer.send(b"second\r\n")  # waiting in the pipe when the drain begins
        os.kill(pid, signal.SIGUSR1)
    finally:
        os.kill(pid, signal.SIGCONT)
    deadline = time.monotonic() + 5
    while b"second" not in content(log) and time.monotonic() < deadline:
        time.sleep(0.001)  # the drain has read: tmux now hands on the rest (within 0.1 s)
    with contextlib.suppress(BrokenPipeError):
        writer.send(b"third\r\n")
    assert writer.proc.wait(timeout=10) == 0
    assert [r.split(b"\t", 1)[1] for r in records(log)[1:]] == [b"first", b"second", b"third"]


# --- parsing and cleaning ---------------------------------------------------------------


def test_parse_since_accepts_start_durations_and_iso_times() -> None:
    now = datetime(2026, 11, 26, 12, 0, 0, tzinfo=UTC)
    assert parse_since("start", now) == "start"
    assert parse_since(" START ", now) == "start"
    assert parse_since("30s", now) == now - timedelta(seconds=30)
    assert parse_since("5m", now) == now - timedelta(minutes=5)
    assert parse_since("2h", now) == now - timedelta(hours=2)
    assert parse_since("1d", now) == now - timedelta(days=1)
    assert parse_since("1h30m", now) == now - timedelta(minutes=90)
    assert parse_since("2026-11-26T10:00:00Z", now) == datetime(2026, 11, 26, 10, tzinfo=UTC)
    local = parse_since("2026-11-26T10:00:00", now)
    assert isinstance(local, datetime)
    assert local == datetime(2026, 11, 26, 10).astimezone()


@pytest.mark.parametrize("bad", ["yesterday", "5", "10ms", "", "2026-13-01", "-5m"])
def test_parse_since_rejects_other_forms_naming_the_accepted_ones(bad: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        parse_since(bad, datetime.now(UTC))
    assert "start" in str(info.value)
    assert "30s" in str(info.value)
    assert "ISO 8601" in str(info.value)


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        (b"\x1b[1;31mERROR\x1b[0m: disk", "ERROR: disk"),
        (b"a\rb", "b"),
        (b"10%\r50%\r100%", "100%"),
        (b"downloading 100%\r\x1b[Kdone", "done"),
        (b"downloading\r\x1b[2Kok", "ok"),
        (b"abc\x08\x08X", "aXc"),
        (b"\x1b]0;window title\x07prompt$ ", "prompt$ "),
        (b"\x1b(Bplain\x1b[?25l", "plain"),
        (b"caf\xc3\xa9 \xff", "caf\u00e9 \ufffd"),
        (b"tab\there", "tab\there"),
        (b"line\r", "line"),
    ],
)
def test_clean_text_shows_what_a_terminal_shows(raw: bytes, shown: str) -> None:
    assert clean_text(raw) == shown


@pytest.mark.parametrize("raw", [b"\r\x1b[99999999999999G!", b"a\r\x1b[" + b"9" * 5000 + b"Cb"])
def test_clean_text_bounds_cursor_jumps_to_the_line_length(raw: bytes) -> None:
    text = clean_text(raw)
    assert text.replace(" ", "") in ("!", "ab")
    assert len(text) <= len(raw) + 1


# --- the writer ---------------------------------------------------------------------------


def test_writer_keeps_every_byte_and_stamps_each_line(store: LogStore) -> None:
    rng = random.Random(7)
    alphabet = [b"a", b"b", b" ", b"\r", b"\n", b"\r\n", b"\x1b[31m", b"\x00", b"\xff", b"\xc3\xa9"]
    data = b"".join(rng.choice(alphabet) for _ in range(20000))
    writer = Writer(store, "t", run=5)
    pos = 0
    while pos < len(data):  # odd chunk sizes split "\r\n" pairs across reads
        step = rng.randint(1, 700)
        writer.send(data[pos : pos + step])
        pos += step
    assert writer.close() == 0
    lines = records(store.path("t"))
    assert lines[0][27:] == MARKER_TAG + b"run=5 pid=4242"
    for line in lines[1:]:
        assert re.fullmatch(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z\t", line[:28]), line
        datetime.fromisoformat(line[:27].decode())
    kept = b"".join(line[28:] + b"\n" for line in lines[1:])
    expected = data.replace(b"\r\n", b"\n")
    assert kept == (expected if expected.endswith(b"\n") else expected + b"\n")


def stamps_and_texts(paths: list[Path]) -> tuple[list[float], list[bytes]]:
    """The times and contents of the output records of log files, oldest file first."""
    times, kept = [], []
    for path in paths:
        for line in records(path):
            if line[27:28] == b"\t":
                times.append(datetime.fromisoformat(line[:27].decode()).timestamp())
                kept.append(line[28:])
    return times, kept


def test_a_burst_larger_than_any_buffer_arrives_whole_in_order_and_timed(store: LogStore) -> None:
    total = 400_000  # about 3 MB with the pty's line ends: many reads, many pipe fills
    data = b"".join(b"%d\r\n" % i for i in range(total))
    store = LogStore(store.log_dir, max_bytes=64 * 1024 * 1024, writer=store.writer)
    before = time.time()
    feed(store, "t", data[:1_000_003] + b"bare\n" + data[1_000_003:])  # one bare "\n" inside
    after = time.time()
    times, kept = stamps_and_texts([store.path("t")])
    expected = (data[:1_000_003] + b"bare\n" + data[1_000_003:]).replace(b"\r\n", b"\n")
    assert kept == expected.split(b"\n")[:-1]
    assert times == sorted(times)
    assert before - 0.001 <= times[0] and times[-1] <= after + 0.001


def test_rotation_in_the_middle_of_a_burst_loses_nothing(store: LogStore) -> None:
    small = LogStore(store.log_dir, max_bytes=100_000, max_files=60, writer=store.writer)
    total = 100_000  # about 3.4 MB on disk: 30 or more rotations inside reads
    feed(small, "t", b"".join(b"line %d\r\n" % i for i in range(total)))
    files = sorted(small.log_dir.glob("t.log.*[0-9]"), key=lambda p: -int(p.suffix[1:]))
    files.append(small.path("t"))
    assert len(files) > 30
    for path in files:
        raw = path.read_bytes()
        assert len(raw) < 100_000 + 64 and raw.endswith(b"\n")  # cut at a line end
    _, kept = stamps_and_texts(files)
    assert kept == [b"line %d" % i for i in range(total)]


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(
        st.sampled_from([b"a", b"bc", b"\r", b"\n", b"\r\n", b"x" * 700, b"\x1b[1m", b"\xff"]),
        max_size=300,
    ),
    st.lists(st.integers(1, 3000), min_size=1, max_size=20),
)
def test_twins_write_the_same_records_however_output_is_cut(
    tmp_path: Path, pieces: list[bytes], cuts: list[int]
) -> None:
    data = b"".join(pieces)
    results = []
    for kind in ["python"] + ([] if NO_PERL else ["perl"]):
        store = LogStore(tmp_path / uuid.uuid4().hex, max_bytes=4096, max_files=99, writer=kind)
        writer = Writer(store, "t")
        pos = 0
        for cut in cuts * (len(data) // sum(cuts) + 1):
            if pos >= len(data):
                break
            writer.send(data[pos : pos + cut])
            pos += cut
        assert writer.close() == 0
        rotated = sorted(store.log_dir.glob("t.log.*[0-9]"), key=lambda p: -int(p.suffix[1:]))
        files = [[line[28:] for line in records(path)] for path in [*rotated, store.path("t")]]
        assert files[0][0] == MARKER_TAG[1:] + b"run=1 pid=4242"
        files[0] = files[0][1:]
        results.append(files)
        expected = data.replace(b"\r\n", b"\n")
        lines = expected.split(b"\n")[: -1 if expected.endswith(b"\n") else None] if data else []
        cap = line_cap(4096)
        cut = [line[i : i + cap] for line in lines for i in range(0, len(line), cap) or [0]]
        assert [line for file in files for line in file] == cut
    assert all(result == results[0] for result in results)


def test_the_flush_barrier_returns_after_a_burst_in_the_pipe_is_on_disk(store: LogStore) -> None:
    writer = Writer(store, "t", run=3)
    wait_for(lambda: store.writer_run("t") == 3, what="the writer to take its lock")
    lines = [b"burst %d" % i for i in range(200_000)]
    writer.send(b"\r\n".join(lines) + b"\r\npartial")  # the pipe stays open, as tmux keeps it
    assert anyio.run(functools.partial(store.drain_writer, "t", 3, timeout=30))
    _, kept = stamps_and_texts([store.path("t")])
    assert kept == [*lines, b"partial"]
    assert writer.proc.wait(timeout=10) == 0
    writer.stdin.close()


@pytest.mark.parametrize("clock", ["gettimeofday syscall", "Time::HiRes"])
def test_perl_writer_is_clean_under_strict_and_warnings_and_stamps_now(
    tmp_path: Path, clock: str
) -> None:
    if NO_PERL:
        pytest.skip("no perl with Time::HiRes")
    assert logs._perl() is not None, "no perl with Time::HiRes"
    script = Path(logs.__file__).with_name("logwriter.pl")
    if clock == "Time::HiRes":  # as where the kernel does not name its arch
        source = script.read_text()
        assert "/proc/sys/kernel/arch" in source
        script = tmp_path / "logwriter.pl"
        script.write_text(source.replace("/proc/sys/kernel/arch", str(tmp_path / "none")))
    data = b"".join(b"%d\r\n" % i for i in range(50_000)) + b"x" * 5000 + b"\r"
    log = tmp_path / "logs" / "t.log"
    before = time.time()
    done = subprocess.run(
        ["perl", "-Mstrict", "-Mwarnings", str(script), str(log), "1", "1", "8192", "999"],
        input=data, capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    after = time.time()
    assert (done.returncode, done.stderr) == (0, b"")
    rotated = sorted(log.parent.glob("t.log.*[0-9]"), key=lambda p: -int(p.suffix[1:]))
    times, kept = stamps_and_texts([*rotated, log])
    assert kept[:50_000] == [b"%d" % i for i in range(50_000)]
    assert before - 0.001 <= times[0] <= times[-1] <= after + 0.001


def test_writers_run_with_big_buffers_mapped_apart(store: LogStore) -> None:
    writer = Writer(store, "t")
    wait_for(lambda: store.writer_run("t") == 1, what="the writer")
    try:
        environ = Path(f"/proc/{writer.proc.pid}/environ").read_bytes().split(b"\0")
        assert logs.WRITER_MALLOC.encode() in environ
    finally:
        writer.close()


def test_partial_line_is_on_disk_within_a_second_and_completes_in_place(store: LogStore) -> None:
    writer = Writer(store, "t")
    try:
        writer.send(b"first\nName? ")
        started = time.monotonic()
        wait_for(
            lambda: (
                [ln.text for ln in store.tail(["t"], since="start").lines] == ["first", "Name? "]
            ),
            timeout=1.0,
            what="the prompt without newline",
        )
        assert time.monotonic() - started < 1.0
        writer.send(b"Ada\nnext\n")
        wait_for(lambda: len(store.tail(["t"], since="start").lines) == 3, what="more lines")
        assert [ln.text for ln in store.tail(["t"], since="start").lines] == [
            "first",
            "Name? Ada",
            "next",
        ]
    finally:
        writer.close()


def test_a_new_writer_waits_for_the_previous_one_of_the_same_log(store: LogStore) -> None:
    old = Writer(store, "t", run=1)
    old.send(b"old 1\nold partial")
    wait_for(lambda: b"old partial" in content(store.path("t")), what="old output")
    new = Writer(store, "t", run=2)
    new.send(b"new 1\n")
    time.sleep(0.3)  # the new writer must still be waiting for the lock
    assert b"run=2" not in store.path("t").read_bytes()
    old.send(b" tail\n")
    assert old.close() == 0
    assert new.close() == 0
    texts = [ln.text for ln in store.tail(["t"]).lines]
    assert texts == [
        "--- taskmux: run 1 started (pid 4242) ---",
        "old 1",
        "old partial tail",
        "--- taskmux: run 2 started (pid 4242) ---",
        "new 1",
    ]


def test_writer_after_a_killed_writer_starts_on_a_fresh_line(store: LogStore) -> None:
    old = Writer(store, "t", run=1)
    old.send(b"cut off mid-li")
    wait_for(lambda: b"mid-li" in content(store.path("t")), what="partial line")
    old.proc.kill()  # the shell exec'd the writer: this is the writer itself
    old.proc.wait()
    feed(store, "t", b"second run\n", run=2)
    assert [ln.text for ln in store.tail(["t"], since="start").lines] == ["second run"]
    assert "cut off mid-li" in [ln.text for ln in store.tail(["t"]).lines]


def test_rotation_keeps_the_newest_files_and_grep_reads_them_in_order(store: LogStore) -> None:
    small = LogStore(store.log_dir, max_bytes=2000, max_files=3, writer=store.writer)
    feed(small, "t", b"".join(b"line %05d\n" % i for i in range(1000)))
    names = sorted(p.name for p in small.log_dir.iterdir())
    assert names == ["t.log", "t.log.1", "t.log.2", "t.log.lock"]
    for name in names[:3]:
        assert (small.log_dir / name).stat().st_size < 2000 + 64
    kept = [
        line[28:].decode()
        for name in ("t.log.2", "t.log.1", "t.log")
        for line in records(small.log_dir / name)
    ]
    numbers = [int(text.split()[1]) for text in kept]
    assert numbers == list(range(numbers[0], 1000))  # a contiguous, newest suffix
    oldest = numbers[0]
    found = small.grep(rf"line 0*({oldest}|{oldest + 1}|999)$", ["t"], context=1)
    assert [m.line for m in found.matches] == [
        f"line {oldest:05d}",
        f"line {oldest + 1:05d}",
        "line 00999",
    ]
    assert (found.matches[0].before, found.matches[0].after) == ([], [])
    assert found.matches[1].continues
    assert found.matches[1].after == [f"line {oldest + 2:05d}"]
    assert found.files_searched == 3
    whole = small.tail(["t"], lines=MAX_LINES)
    assert [ln.text for ln in whole.lines] == kept
    assert not whole.truncated


def test_overlong_lines_are_split_and_long_lines_kept_whole(store: LogStore) -> None:
    small = LogStore(store.log_dir, max_bytes=8192, writer=store.writer)
    cap = line_cap(8192)
    feed(small, "small", b"x" * (cap * 2 + 10) + b"\n")
    assert [len(ln.text) for ln in small.tail(["small"], since="start").lines] == [cap, cap, 10]
    long_line = "".join(chr(ord("a") + i % 26) for i in range(200_000))
    feed(store, "big", long_line.encode() + b"\n")
    assert [ln.text for ln in store.tail(["big"], since="start").lines] == [long_line]


def test_pipe_command_runs_without_path_or_venv(store: LogStore) -> None:
    writer = Writer(store, "t", env={})
    writer.send(b"hello from an empty environment\n")
    assert writer.close() == 0
    assert [ln.text for ln in store.tail(["t"], since="start").lines] == [
        "hello from an empty environment"
    ]


def test_pipe_command_escapes_hash_for_tmux(tmp_path: Path) -> None:
    store = LogStore(tmp_path / "a#b" / "logs")
    command = store.pipe_command("t", 3)
    assert "a##b" in command
    assert command.count("#{pane_pid}") == 1
    assert store.log_dir.is_dir()
    feed(store, "t", b"ok\n", run=3)
    assert [ln.text for ln in store.tail(["t"], since="start").lines] == ["ok"]


# --- a real tmux ----------------------------------------------------------------------------


class Tmux:
    """A private tmux server."""

    def __init__(self) -> None:
        self.socket = f"taskmux-logs-{uuid.uuid4().hex[:10]}"

    def run(self, *args: str) -> str:
        done = subprocess.run(
            ["tmux", "-L", self.socket, "-f", "/dev/null", *args],
            capture_output=True,
            text=True,
            check=True,
        )
        return done.stdout.strip()

    def spawn(self, command: str, pipe: str, name: str = "w") -> str:
        """Run `command` in a new window of width 80 with its output piped; returns the pane."""
        create = ["new-window", "-d", "-n", name] if self._alive() else ["new-session", "-d"]
        return self.run(
            *create, "-x", "80", "-y", "24", "-P", "-F", "#{pane_id}", command,
            ";", "set-option", "-w", "-t", f":{name}" if create[0] == "new-window" else ":0",
            "remain-on-exit", "on",
            ";", "pipe-pane", pipe,
        )  # fmt: skip

    def _alive(self) -> bool:
        return (
            subprocess.run(
                ["tmux", "-L", self.socket, "has-session"], capture_output=True, check=False
            ).returncode
            == 0
        )

    def kill(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True, check=False)


@pytest.fixture
def tmux() -> Iterator[Tmux]:
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed")
    server = Tmux()
    yield server
    server.kill()


def texts(store: LogStore, task: str, **kw: object) -> list[str]:
    return [ln.text for ln in store.tail([task], **kw).lines]  # type: ignore[arg-type]


def test_tmux_100k_lines_all_retrievable(tmux: Tmux, tmp_path: Path) -> None:
    store = LogStore(tmp_path / "logs")
    tmux.spawn("seq 1 100000; echo done", store.pipe_command("seq", 1))
    wait_for(lambda: texts(store, "seq", lines=1) == ["done"], timeout=30, what="100k lines")
    result = store.tail(["seq"], lines=10**9, since="start")
    assert len(result.lines) == MAX_LINES
    assert result.truncated
    assert result.omitted + len(result.lines) == 100_001
    assert [ln.text for ln in result.lines[:2]] == ["95002", "95003"]
    assert [m.line for m in store.grep(r"^1$", ["seq"]).matches] == ["1"]
    last = store.grep(r"^100000$", ["seq"], context=1).matches
    assert [(m.line, m.before, m.after) for m in last] == [("100000", ["99999"], ["done"])]
    everything = store.grep(r"^\d+$", ["seq"], max_matches=10**9, context=0)
    assert len(everything.matches) == 10_000
    assert everything.truncated


def test_tmux_long_lines_colours_progress_and_prompt(tmux: Tmux, tmp_path: Path) -> None:
    store = LogStore(tmp_path / "logs")
    script = tmp_path / "task.sh"
    script.write_text(
        "python3 -c \"print('L' * 3000)\"\n"
        "printf '\\033[32mgreen\\033[0m text\\n'\n"
        "printf 'fetch 10%%\\rfetch 55%%\\rfetch 100%%\\n'\n"
        "printf 'Continue? [y/N] '\n"
        "sleep 30\n"
    )
    tmux.spawn(f"sh {script}", store.pipe_command("t", 1))
    started = time.monotonic()
    wait_for(
        lambda: texts(store, "t", lines=1) == ["Continue? [y/N] "], timeout=5, what="the prompt"
    )
    assert time.monotonic() - started < 5
    assert texts(store, "t", since="start") == [
        "L" * 3000,
        "green text",
        "fetch 100%",
        "Continue? [y/N] ",
    ]
    raw = store.path("t").read_bytes()
    assert b"\x1b[32mgreen\x1b[0m" in raw
    assert b"fetch 10%\rfetch 55%\rfetch 100%\n" in raw
    assert store.grep("green text", ["t"]).matches[0].line == "green text"


def test_tmux_since_start_returns_only_the_current_run(tmux: Tmux, tmp_path: Path) -> None:
    store = LogStore(tmp_path / "logs")
    pane = tmux.spawn("echo first run; exit 3", store.pipe_command("t", 1))
    wait_for(lambda: "first run" in texts(store, "t"), what="first run")
    wait_for(lambda: tmux.run("display", "-p", "-t", pane, "#{pane_dead}") == "1", what="exit")
    tmux.run(
        "respawn-pane", "-k", "-t", pane, "echo second run; sleep 30",
        ";", "pipe-pane", "-t", pane, store.pipe_command("t", 2),
    )  # fmt: skip
    wait_for(lambda: texts(store, "t", since="start") == ["second run"], what="second run")
    pid = tmux.run("display", "-p", "-t", pane, "#{pane_pid}")
    markers = [line for line in records(store.path("t")) if MARKER_TAG in line]
    assert len(markers) == 2
    assert re.search(rb"run=1 pid=\d+$", markers[0])
    assert markers[1].endswith(f"run=2 pid={pid}".encode())
    everything = texts(store, "t")
    assert everything[1:] == [
        "first run",
        f"--- taskmux: run 2 started (pid {pid}) ---",
        "second run",
    ]
    assert everything[0].startswith("--- taskmux: run 1 started")
    assert store.last_run_lines("t") == ["second run"]


def test_tmux_logs_survive_the_server_being_killed(tmux: Tmux, tmp_path: Path) -> None:
    store = LogStore(tmp_path / "logs")
    tmux.spawn("seq 1 500; sleep 30", store.pipe_command("t", 1))
    wait_for(lambda: texts(store, "t", lines=1) == ["500"], what="output")
    tmux.kill()

    def writer_gone() -> bool:
        with open(str(store.path("t")) + ".lock", "a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return False
            return True

    wait_for(writer_gone, what="the writer to exit")
    assert texts(store, "t", since="start", lines=1000) == [str(i) for i in range(1, 501)]
    assert store.path("t").read_bytes().endswith(b"\t500\n")


# --- reading --------------------------------------------------------------------------------


def test_since_a_duration_cuts_by_time(tmp_path: Path) -> None:
    store = LogStore(tmp_path)
    now = datetime.now(UTC)
    write_records(
        store.path("t"),
        [(now - timedelta(seconds=10), None)]
        + [(now - timedelta(seconds=10 - i), f"line {i}") for i in range(10)],
    )
    assert texts(store, "t", since="2s") == ["line 9"]
    assert texts(store, "t", since="3.5s") == ["line 7", "line 8", "line 9"]
    cut = store.tail(["t"], lines=2, since="3.5s")
    assert (cut.truncated, cut.omitted) == (True, 1)
    iso = (now - timedelta(seconds=1.5)).isoformat()
    assert texts(store, "t", since=iso) == ["line 9"]
    found = store.grep("line", ["t"], since="2s", context=0)
    assert [m.line for m in found.matches] == ["line 9"]


def test_tail_interleaves_tasks_by_time(tmp_path: Path) -> None:
    store = LogStore(tmp_path)
    base = datetime.now(UTC) - timedelta(minutes=1)
    write_records(store.path("a"), [(base + timedelta(seconds=s), f"a{s}") for s in (1, 3, 5)])
    write_records(store.path("b"), [(base + timedelta(seconds=s), f"b{s}") for s in (2, 4, 6)])
    result = store.tail(["a", "b"], lines=4)
    assert [(ln.task, ln.text) for ln in result.lines] == [
        ("a", "a3"),
        ("b", "b4"),
        ("a", "a5"),
        ("b", "b6"),
    ]
    assert (result.truncated, result.omitted) == (True, 2)
    assert store.tail(["a", "missing"], lines=10).lines[-1].text == "a5"
    found = store.grep(r"\d", ["b", "a"], max_matches=3, context=0)
    assert [m.line for m in found.matches] == ["a1", "b2", "a3"]
    assert found.truncated


def test_huge_and_bad_requests_are_bounded_or_refused(tmp_path: Path) -> None:
    store = LogStore(tmp_path)
    now = datetime.now(UTC)
    write_records(store.path("t"), [(now, f"n{i}") for i in range(MAX_LINES + 7)])
    result = store.tail(["t"], lines=10**12)
    assert len(result.lines) == MAX_LINES
    assert (result.truncated, result.omitted) == (True, 7)
    with pytest.raises(InvalidArgument, match="lines"):
        store.tail(["t"], lines=0)
    with pytest.raises(InvalidArgument, match="since"):
        store.tail(["t"], since="last tuesday")
    with pytest.raises(InvalidArgument, match=r"invalid regular expression.*missing \)"):
        store.grep("error (unclosed", ["t"])
    with pytest.raises(InvalidArgument):
        store.grep("n", ["t"], context=-1)
    wide = store.grep("n100$", ["t"], context=10**9)
    assert len(wide.matches[0].before) == MAX_CONTEXT
    assert len(wide.matches[0].after) == MAX_CONTEXT
    with pytest.raises(InvalidArgument):
        store.path("../escape")


def test_grep_matches_cleaned_text_with_context_case_and_cap(tmp_path: Path) -> None:
    store = LogStore(tmp_path)
    now = datetime.now(UTC)
    write_records(
        store.path("t"),
        [
            (now, "boot"),
            (now, "\x1b[31mERR\x1b[0mOR: disk full"),
            (now, "progress 10%\rError: \x1b[Kretry"),
            (now, None),
            (now, "all good"),
            (now, "error again"),
        ],
    )
    found = store.grep("ERROR", ["t"], context=1)
    assert [(m.line, m.before, m.after) for m in found.matches] == [
        ("ERROR: disk full", ["boot"], ["Error: retry"]),
    ]
    found = store.grep("error", ["t"], ignore_case=True, context=2)
    assert [(m.line, m.before, m.after, m.continues) for m in found.matches] == [
        ("ERROR: disk full", ["boot"], [], False),
        ("Error: retry", [], ["all good"], True),
        ("error again", [], [], True),
    ]
    assert [m.line for m in store.grep("(?i)error", ["t"], since="start").matches] == [
        "error again"
    ]
    capped = store.grep("o", ["t"], max_matches=2, context=0)
    assert len(capped.matches) == 2
    assert capped.truncated
    assert not store.grep("taskmux", ["t"]).matches  # markers are not output


def reference_grep(
    lines: list[bytes], rx: re.Pattern[str], context: int
) -> list[tuple[str, list[str], list[str], bool]]:
    """What GNU grep -C shows, per match: its line, the context lines no earlier match gave,
    and whether its block joins the previous one."""
    texts = [clean_text(line[28:]) for line in lines if line[27:28] == b"\t"]
    hits = [i for i, t in enumerate(texts) if rx.search(t)]
    out = []
    given = -1
    for n, i in enumerate(hits):
        first = max(given + 1, i - context)
        after_end = min(i + 1 + context, hits[n + 1] if n + 1 < len(hits) else len(texts))
        out.append(
            (texts[i], texts[first:i], texts[i + 1 : after_end], n > 0 and first == given + 1)
        )
        given = after_end - 1
    return out


PIECES = ["ERROR", "error", "err", "or", "ok", " ", "\x1b[31m", "\x1b[0m", "\x1b[K", "\r", "\b"]
PIECES += ["é", "\u212a", "k", "K", "7", "\x1b]0;t\x07", "x" * 30]
PATTERNS = ["ERROR", "(?i)error", "err(or)?", "^ok", "ok$", "E.R", "é", r"\d", "ok|err", "(?i)k"]
PATTERNS += ["rr", "(?i)Kk", r"\bor\b", "x{40}", "(?s).*", "(?=ok)o", r"^\s"]


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    lines=st.lists(st.lists(st.sampled_from(PIECES), max_size=8).map("".join), max_size=40),
    markers=st.sets(st.integers(0, 40), max_size=3),
    pattern=st.sampled_from(PATTERNS),
    context=st.integers(0, 3),
    block=st.integers(30, 400),
)
def test_grep_agrees_with_cleaning_every_line(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    *,
    lines: list[str],
    markers: set[int],
    pattern: str,
    context: int,
    block: int,
) -> None:
    monkeypatch.setattr(logs, "_GREP_BLOCK", block)
    store = LogStore(tmp_path / uuid.uuid4().hex)
    now = datetime.now(UTC)
    items: list[tuple[datetime, str | None]] = []
    for i, text in enumerate(lines):
        if i in markers:
            items.append((now, None))
        items.append((now, text))
    write_records(store.path("t"), items)
    raw = records(store.path("t"))
    found = store.grep(pattern, ["t"], context=context, max_matches=1000)
    got = [(m.line, m.before, m.after, m.continues) for m in found.matches]
    assert got == reference_grep(raw, re.compile(pattern), context)


def numbered(lines: range) -> bytes:
    return b"".join(b"line %05d\n" % i for i in lines)


def test_pages_walk_back_through_rotated_files_while_the_log_grows(store: LogStore) -> None:
    small = LogStore(store.log_dir, max_bytes=4000, max_files=4, writer=store.writer)
    writer = Writer(small, "t")
    writer.send(numbered(range(300)))
    wait_for(lambda: texts(small, "t", lines=1) == ["line 00299"], what="300 lines")
    first = small.tail(["t"], lines=40)
    writer.send(numbered(range(300, 500)))  # rotates: the first page's file is now t.log.2
    wait_for(lambda: texts(small, "t", lines=1) == ["line 00499"], what="500 lines")
    pages = [first]
    while pages[0].truncated:
        assert pages[0].cursor is not None
        pages.insert(0, small.tail(["t"], lines=40, before=pages[0].cursor))
    numbers = [int(line.text.split()[1]) for page in pages for line in page.lines]
    assert numbers == list(range(numbers[0], 300))
    assert len(pages) > 2 and pages[0].omitted == 0
    assert first.cursor is not None
    writer.send(numbered(range(500, 1500)))  # and now every file it knew is gone
    wait_for(lambda: texts(small, "t", lines=1) == ["line 01499"], what="1500 lines")
    gone = small.tail(["t"], lines=40, before=first.cursor)
    assert (gone.lines, gone.truncated, gone.cursor) == ([], False, None)
    assert writer.close() == 0


@pytest.mark.parametrize("cursor", ["", "not a cursor", "WzEsMl0", "W1siYSIsMV1d"])
def test_a_cursor_that_no_logs_call_gave_is_refused(tmp_path: Path, cursor: str) -> None:
    store = LogStore(tmp_path)
    write_records(store.path("t"), [(datetime.now(UTC), "x")])
    with pytest.raises(InvalidArgument, match="`cursor` of an earlier logs result"):
        store.tail(["t"], before=cursor)


def test_verdict_tail_counts_only_lines_that_are_not_health_probes(tmp_path: Path) -> None:
    store = LogStore(tmp_path)
    now = datetime.now(UTC)
    uvicorn = '\x1b[32mINFO\x1b[0m:     127.0.0.1:5000 - "GET /health HTTP/1.1" \x1b[32m200\x1b[0m'
    stdlib = '127.0.0.1 - - [26/Nov/2026 10:00:00] "GET /health?deep=1 HTTP/1.0" 503 -'
    items: list[tuple[datetime, str | None]] = [(now, "old run's own line"), (now, None)]
    items += [(now, f"own line {i}") for i in range(3)]
    items += [(now, text) for _ in range(700) for text in (uvicorn, stdlib, "ua taskmux-health")]
    items += [(now, '"GET /healthz HTTP/1.1" 200'), (now, "GET /api/health 200")]
    write_records(store.path("t"), items)
    assert store.verdict_tail("t", 4, "http://127.0.0.1:5000/health?deep=1") == [
        "own line 1",
        "own line 2",
        '"GET /healthz HTTP/1.1" 200',
        "GET /api/health 200",
    ]
    assert store.verdict_tail("t", 3, None) == [
        stdlib,
        '"GET /healthz HTTP/1.1" 200',
        "GET /api/health 200",
    ]
    assert len(store.last_run_lines("t", 4)) == 4


def test_follow_streams_new_lines_across_rotations(store: LogStore) -> None:
    small = LogStore(store.log_dir, max_bytes=1000, max_files=40, writer=store.writer)
    feed(small, "t", b"old 1\nold 2\n")
    writer = Writer(small, "t", run=2)
    wait_for(lambda: b"run=2" in content(small.path("t")), what="the second writer")
    deadline = time.monotonic() + 10
    stream = small.follow(["t"], lines=2, poll=0.02, stop=lambda: time.monotonic() > deadline)
    seen = [next(stream).text, next(stream).text]
    # Several rotations happen before the reader looks again.
    writer.send(b"".join(b"new %d\n" % i for i in range(600)) + b"prompt> ")
    for line in stream:
        seen.append(line.text)
        if line.text == "prompt> ":
            break
    writer.close()
    assert seen[:2] == ["old 2", "--- taskmux: run 2 started (pid 4242) ---"]
    assert seen[2:] == [f"new {i}" for i in range(600)] + ["prompt> "]
    assert (small.log_dir / "t.log.5").exists()


def test_follow_goes_on_when_rotation_deletes_the_file(store: LogStore) -> None:
    single = LogStore(store.log_dir, max_bytes=1000, max_files=1, writer=store.writer)
    writer = Writer(single, "t")
    deadline = time.monotonic() + 10
    stream = single.follow(["t"], lines=0, poll=0.02, stop=lambda: time.monotonic() > deadline)
    writer.send(b"".join(b"filler %d\n" % i for i in range(300)))
    writer.send(b"the end\n")
    assert "the end" in (line.text for line in stream)
    writer.close()
    assert sorted(p.name for p in single.log_dir.iterdir()) == ["t.log", "t.log.lock"]


def test_follow_shows_a_settled_partial_line_then_its_rest(store: LogStore) -> None:
    writer = Writer(store, "t")
    wait_for(lambda: b"run=1" in content(store.path("t")), what="the writer")
    deadline = time.monotonic() + 10
    stream = store.follow(["t"], lines=0, poll=0.02, stop=lambda: time.monotonic() > deadline)
    writer.send(b"Password: ")
    assert next(stream).text == "Password: "
    writer.send(b"ok\n")
    assert next(stream).text == "ok"
    writer.close()


def test_remove_deletes_every_file_of_a_task(tmp_path: Path) -> None:
    store = LogStore(tmp_path, max_bytes=1000, max_files=3)
    feed(store, "t", b"x" * 50 + b"\n" * 100)
    feed(store, "keep", b"y\n")
    store.remove("t")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.log", "keep.log.lock"]
    assert store.tail(["t"]).lines == []
    assert store.grep("x", ["t"]).matches == []
