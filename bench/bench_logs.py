"""Log figures: grep vs `grep -c`, tail cost vs file size, writer memory, lines kept vs scrollback.

Run: .venv/bin/python bench/bench_logs.py   (about a minute; everything in a temp folder)
"""

from __future__ import annotations

import contextlib
import functools
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from taskmux_mcp.logs import LogStore, writer_argv
from taskmux_mcp.logwriter import stamp

MB = 1024 * 1024
Row = tuple[str, str, str, str, str]
NEEDLE = "needle-7f3a"
WORDS = ["GET", "POST", "/api/items", "/health", "200", "404", "ok", "user=42", "took", "cache"]


def make_chunk(rng: random.Random, size: int, colour: bool, t0: float) -> bytes:
    """About `size` bytes of realistic task output in the on-disk format."""
    lines = []
    total = 0
    i = 0
    while total < size:
        words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12)))
        level = "INFO"
        if colour:
            level = "\x1b[32mINFO\x1b[0m" if i % 7 else "\x1b[1;33mWARN\x1b[0m"
        line = stamp(t0 + i * 0.001) + b"\t" + f"{level} req {i} {words} {i % 997}ms".encode()
        lines.append(line)
        total += len(line) + 1
        i += 1
    return b"\n".join(lines) + b"\n"


def make_logs(folder: Path, colour: bool, tasks: int = 4, per_file: int = 8 * MB) -> list[str]:
    """~100 MB: `tasks` tasks x 3 files (current + 2 rotated), a few rare matches inside."""
    rng = random.Random(1)
    chunk = make_chunk(rng, MB, colour, time.time() - 3600)
    names = []
    for t in range(tasks):
        name = f"task{t}"
        names.append(name)
        for suffix in (".2", ".1", ""):
            with open(folder / f"{name}.log{suffix}", "wb") as f:
                for k in range(per_file // MB):
                    f.write(chunk)
                    if k == 3 and suffix == ".1":
                        f.write(stamp(time.time()) + f"\tERROR {NEEDLE} in {name}\n".encode())
    return names


def best(fn: Callable[[], object], runs: int = 3) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def grep_c(files: list[Path], pattern: str, *flags: str) -> None:
    # Output to a pipe: GNU grep stops at the first match when stdout is /dev/null.
    argv = ["grep", "-c", *flags, pattern, *map(str, files)]
    subprocess.run(argv, capture_output=True, check=False)


def bench_grep(root: Path) -> list[Row]:
    rows = []
    for colour in (False, True):
        folder = root / ("colour" if colour else "plain")
        folder.mkdir()
        tasks = make_logs(folder, colour)
        store = LogStore(folder)
        files = sorted(folder.iterdir())
        size = sum(f.stat().st_size for f in files) / MB
        cases = [
            (NEEDLE, False, (), NEEDLE),
            (NEEDLE.upper(), True, ("-i",), NEEDLE.upper()),
            ("fatal|panic", False, ("-E",), "fatal|panic"),
            (r"req \d+ POST /health", False, ("-E",), "req [0-9]+ POST /health"),
        ]
        for pattern, icase, flags, gnu in cases:
            found = store.grep(pattern, tasks, ignore_case=icase, context=2)
            ours = best(functools.partial(store.grep, pattern, tasks, ignore_case=icase))
            theirs = best(functools.partial(grep_c, files, gnu, *flags))
            label = f"grep {pattern!r}{' -i' if icase else ''}, {size:.0f} MB"
            label += ", coloured" if colour else ""
            note = f"{len(found.matches)} matches"
            rows.append(
                (
                    label,
                    f"{ours * 1000:.0f} ms",
                    f"{theirs * 1000:.0f} ms",
                    f"{ours / theirs:.1f}x",
                    note,
                )
            )
    return rows


def bench_tail(root: Path) -> list[Row]:
    folder = root / "tail"
    folder.mkdir()
    chunk = make_chunk(random.Random(2), MB, True, time.time() - 60)
    (folder / "small.log").write_bytes(chunk)
    for name, size in (("mid", 10), ("big", 100)):
        with open(folder / f"{name}.log", "wb") as f:
            for _ in range(size):
                f.write(chunk)
    store = LogStore(folder)
    small = best(lambda: store.tail(["small"], lines=100), runs=20)
    mid = best(lambda: store.tail(["mid"], lines=100), runs=20)
    big = best(lambda: store.tail(["big"], lines=100), runs=20)
    since = best(lambda: store.tail(["big"], lines=100, since="start"), runs=5)
    note = "vs 1 MB (omitted lines counted up to 4 MB back)"
    return [
        ("tail 100 lines, 1 MB log", f"{small * 1000:.1f} ms", "", "", ""),
        ("tail 100 lines, 10 MB log", f"{mid * 1000:.1f} ms", "", f"{mid / small:.1f}x", note),
        ("tail 100 lines, 100 MB log", f"{big * 1000:.1f} ms", "", f"{big / small:.1f}x", note),
        ("tail 100 lines since=start, 100 MB, no marker", f"{since * 1000:.1f} ms", "", "", ""),
    ]


def memory(pid: int) -> tuple[int, int, int]:
    """RSS, PSS and private memory (kB) of a process."""
    fields: dict[str, int] = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                fields[parts[0].rstrip(":")] = int(parts[1])
    private = fields["Private_Clean"] + fields["Private_Dirty"]
    return fields["Rss"], fields["Pss"], private


def bench_writer(root: Path) -> list[Row]:
    rows = []
    payload = make_chunk(random.Random(3), MB, True, time.time())
    payload = b"\r\n".join(line[28:] for line in payload.split(b"\n"))
    kinds = ["python"] + (["perl"] if shutil.which("perl") else [])
    for kind in kinds:
        store = LogStore(root / f"writer-{kind}", writer=kind)
        command = store.pipe_command("t", 1).replace("#{pane_pid}", "1").replace("##", "#")
        procs = [
            subprocess.Popen(
                ["/bin/sh", "-c", command.replace("/t.log", f"/t{i}.log")], stdin=subprocess.PIPE
            )
            for i in range(5)
        ]

        def feed(proc: subprocess.Popen[bytes]) -> None:
            assert proc.stdin is not None
            for _ in range(20):
                proc.stdin.write(payload)
            proc.stdin.close()

        started = time.perf_counter()
        feeders = [threading.Thread(target=feed, args=(p,)) for p in procs]
        for t in feeders:
            t.start()
        peak = [(0, 0, 0)] * len(procs)
        while any(t.is_alive() for t in feeders):
            for i, proc in enumerate(procs):
                with contextlib.suppress(OSError, KeyError):
                    peak[i] = max(peak[i], memory(proc.pid))
            time.sleep(0.02)
        for proc in procs:
            proc.wait()
        elapsed = time.perf_counter() - started
        rss, pss, private = (sum(m[k] for m in peak) / len(peak) / 1024 for k in range(3))
        rows.append(
            (
                f"writer memory ({kind}), peak while writing 20 MB",
                f"RSS {rss:.1f} MB",
                f"PSS {pss:.1f} MB",
                f"private {private:.1f} MB",
                f"5 writers at once: {100 * len(payload) / MB / elapsed:.0f} MB/s",
            )
        )
    argv = writer_argv()
    rows.append(
        ("writer chosen by default", f"{Path(argv[0]).name} {Path(argv[-1]).name}", "", "", "")
    )
    return rows


def bench_scrollback(root: Path) -> list[Row]:
    if shutil.which("tmux") is None:
        return [("scrollback comparison", "skipped: no tmux", "", "", "")]
    store = LogStore(root / "tmux")
    socket = f"bench-{uuid.uuid4().hex[:8]}"
    tmux = ["tmux", "-L", socket, "-f", "/dev/null"]
    try:
        command = "seq 1 100000; echo done; sleep 60"
        subprocess.run(
            [*tmux, "new-session", "-d", "-x", "80", "-y", "24", command,
             ";", "set-option", "-w", "remain-on-exit", "on",
             ";", "pipe-pane", store.pipe_command("seq", 1)],
            check=True,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            tail = store.tail(["seq"], lines=1).lines
            if tail and tail[-1].text == "done":
                break
            time.sleep(0.05)
        ours = store.tail(["seq"], lines=1, since="start")
        kept = ours.omitted + len(ours.lines) - 1  # minus "done"
        screen = subprocess.run(
            [*tmux, "capture-pane", "-p", "-S", "-", "-t", ":0"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        numeric = sum(1 for word in screen if word.isdigit())
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True, check=False)
    return [
        ("lines of 100,000 kept: taskmux log", f"{kept}", "", "", ""),
        (
            "lines of 100,000 kept: tmux scrollback (history-limit 2000)",
            f"{numeric}",
            "",
            "",
            "what 0.3.x read",
        ),
    ]


def main() -> int:
    root = Path(tempfile.mkdtemp(prefix="taskmux-bench-"))
    try:
        rows: list[Row] = [("measure", "taskmux", "baseline", "ratio", "note")]
        rows += bench_grep(root)
        rows += bench_tail(root)
        rows += bench_writer(root)
        rows += bench_scrollback(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    print(
        f"(python {sys.version.split()[0]}, {os.cpu_count()} cpus; files in page cache, best of 3)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
