"""Output rate and log writer memory (issue 15).

Rate: `seq 1 3000000` as a plain file write, through a pipe to `cat` (how supervisord and pm2
read a child), in a bare tmux window (pty + tmux, nothing piped), in a bare window piped to
`cat` (the floor of any tmux-based tool), through our pipe command (pty -> tmux -> pipe-pane ->
the log writer that stamps and rotates), and as a taskmux one-shot task (`Project.start`: the
launch, the run, the flush barrier). Rounds are interleaved; each figure is the median, until
the last line is on disk. CPU, all: every process of the pipeline (seq and its shell, tmux,
the pipe), which the machine's load does not change as it changes wall times; `every line`:
rounds whose file held all lines (tmux itself sometimes drops the end of a process's output:
README, Known limitations).

Memory: 30 windows running `sleep` with our pipe command (idle, then after a 2 MB burst each),
against the same 30 windows piped to `cat` (what a relay per task into one shared writer would
still cost) in the same run: PSS and private memory summed over the 30 processes.

Run: .venv/bin/python bench/bench_output.py [ROUNDS] [LINES]   (default 3 rounds of 3,000,000
lines, about 2 minutes; private tmux servers, a temp folder). BENCH_OLD_WRITER=path/to/a.pl
adds rows for another perl writer script (e.g. a previous version) in the same run.
"""

from __future__ import annotations

import contextlib
import os
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench_logs import memory  # noqa: E402

from taskmux_mcp.logs import LogStore, writer_argv  # noqa: E402
from taskmux_mcp.project import Project  # noqa: E402

TASKS = 30
BURST = 2 * 1024 * 1024
MAX_LOG = 1 << 30  # keep every line: completeness is checked


def tmux(socket: str, *args: str) -> str:
    """One tmux command on a private server."""
    done = subprocess.run(["tmux", "-L", socket, "-f", "/dev/null", *args], capture_output=True,
                          text=True, check=True)  # fmt: skip
    return done.stdout.strip()


@contextlib.contextmanager
def tmux_server() -> Iterator[tuple[str, int]]:
    """A private tmux server (its socket name and pid), killed at the end."""
    socket = f"bench-out-{uuid.uuid4().hex[:8]}"
    tmux(socket, "new-session", "-d", "-s", "base", "-x", "80", "-y", "24", "sleep 100000")
    try:
        yield socket, int(tmux(socket, "display", "-p", "#{pid}"))
    finally:
        subprocess.run(["tmux", "-L", socket, "kill-server"], capture_output=True, check=False)


def cpu(pid: int) -> float:
    """User + system CPU seconds of a live process (0 when it is gone)."""
    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return 0.0
    return times.user + times.system


def wait(predicate: Callable[[], bool], timeout: float = 120.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def ends_with(path: Path, tail: bytes) -> Callable[[], bool]:
    def check() -> bool:
        try:
            with path.open("rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - len(tail)))
                return f.read() == tail
        except OSError:
            return False

    return check


def line_count(path: Path) -> int:
    with path.open("rb") as f:
        return sum(block.count(b"\n") for block in iter(lambda: f.read(1 << 20), b""))


@dataclass
class Sample:
    wall: float
    ok: bool
    cpu: float | None = None  # every process of the pipeline: seq, its shell, tmux, the pipe
    tmux_cpu: float | None = None
    writer_cpu: float | None = None


def server_cpu(server: int) -> tuple[float, float]:
    """CPU seconds of the tmux server itself, and of the children it has reaped (the panes)."""
    times = psutil.Process(server).cpu_times()
    return times.user + times.system, times.children_user + times.children_system


def plain(folder: Path, lines: int, piped: bool) -> Sample:
    out = folder / "plain.txt"
    out.unlink(missing_ok=True)
    command = f"seq 1 {lines} | cat > {out}" if piped else f"seq 1 {lines} > {out}"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(["/bin/sh", "-c", command], check=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    used = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return Sample(wall, line_count(out) == lines, cpu=used)


def in_tmux(
    socket: str, server: int, folder: Path, lines: int, pipe: str | None, tail: bytes
) -> Sample:
    """seq in a new window of the server, piped by `pipe` to the file folder/logs/out.log."""
    out = folder / "logs" / "out.log"
    done = folder / "seq.done"
    for stale in out.parent.glob("out.log*"):
        stale.unlink()
    done.unlink(missing_ok=True)
    window = f"w{uuid.uuid4().hex[:6]}"
    command = f"seq 1 {lines}; : > {shlex.quote(str(done))}"
    words = ["new-window", "-d", "-n", window, command,
             ";", "set-option", "-w", "-t", f":{window}", "remain-on-exit", "on"]  # fmt: skip
    if pipe is not None:
        words += [";", "pipe-pane", "-t", f":{window}", pipe]
    own, reaped = server_cpu(server)
    started = time.perf_counter()
    tmux(socket, *words)
    ok = wait(done.exists) and (pipe is None or wait(ends_with(out, tail)))
    wall = time.perf_counter() - started
    wait(lambda: tmux(socket, "display", "-p", "-t", f":{window}", "#{pane_dead}") == "1")
    own_after, reaped_after = server_cpu(server)
    panes = {int(pid) for pid in tmux(socket, "list-panes", "-a", "-F", "#{pane_pid}").split()}
    pipes = [p.pid for p in psutil.Process(server).children() if p.pid not in panes]
    writer_cpu = sum(cpu(pid) for pid in pipes)
    tmux(socket, "kill-window", "-t", f":{window}")
    if pipe is not None and ok:
        ok = line_count(out) >= lines
    tmux_cpu = own_after - own
    total = tmux_cpu + reaped_after - reaped + writer_cpu
    return Sample(wall, ok, cpu=total, tmux_cpu=tmux_cpu, writer_cpu=writer_cpu)


def through_taskmux(folder: Path, socket: str, lines: int) -> Sample:
    """A one-shot task `seq 1 LINES`: start (launch, run, flush barrier) until its verdict."""
    project_dir = folder / "project"
    shutil.rmtree(project_dir, ignore_errors=True)
    project_dir.mkdir()
    (project_dir / "taskmux.toml").write_text(
        f'name = "out"\n[logs]\nmax_bytes = {MAX_LOG}\n'
        f'[tasks.count]\ncommand = "seq 1 {lines}"\noneshot = true\n'
    )
    env = {**os.environ, "TASKMUX_STATE_DIR": str(folder / "state"), "TASKMUX_HOSTED_MONITOR": "0"}
    project = Project(project_dir / "taskmux.toml", socket_name=socket, environ=env)
    project.logs.remove("count")
    started = time.perf_counter()
    verdict = anyio.run(lambda: project.start(["count"], timeout=300))
    wall = time.perf_counter() - started
    last = project.logs_sync(["count"], lines=1, since="start").lines
    ok = verdict.ok and [line.text for line in last] == [str(lines)]
    return Sample(wall, ok and line_count(project.logs.path("count")) == lines + 1)


def rate_rows(folder: Path, rounds: int, lines: int, old: Path | None) -> list[list[str]]:
    perl = LogStore(folder / "logs", max_bytes=MAX_LOG, writer="perl")
    python = LogStore(folder / "logs", max_bytes=MAX_LOG, writer="python")
    out = folder / "logs" / "out.log"
    last = str(lines).encode()
    pipes: dict[str, tuple[str | None, bytes]] = {
        "tmux window, nothing piped (pty + tmux)": (None, b""),
        "tmux pipe-pane to cat (the floor)": (f"exec cat > {out}", last + b"\r\n"),
        "ours: pipe-pane -> perl writer": (perl.pipe_command("out", 1), b"\t" + last + b"\n"),
        "ours: pipe-pane -> python writer": (python.pipe_command("out", 1), b"\t" + last + b"\n"),
    }
    if old is not None:
        command = perl.pipe_command("out", 1).replace(
            shlex.quote(writer_argv("perl")[1]), shlex.quote(str(old))
        )
        pipes["old perl writer (BENCH_OLD_WRITER)"] = (command, b"\t" + last + b"\n")
    samples: dict[str, list[Sample]] = {name: [] for name in ["file", "pipe", *pipes, "taskmux"]}
    with tmux_server() as (socket, server):
        for _ in range(rounds):
            samples["file"].append(plain(folder, lines, piped=False))
            samples["pipe"].append(plain(folder, lines, piped=True))
            for name, (pipe, tail) in pipes.items():
                samples[name].append(in_tmux(socket, server, folder, lines, pipe, tail))
            samples["taskmux"].append(through_taskmux(folder, socket, lines))

    def median(name: str, field: str) -> float | None:
        values = [getattr(sample, field) for sample in samples[name]]
        return None if None in values else statistics.median(values)

    floor_name = "tmux pipe-pane to cat (the floor)"
    base, floor = median("file", "wall") or 1.0, median(floor_name, "wall") or 1.0
    floor_cpu = median(floor_name, "cpu") or 1.0
    labels = {
        "file": f"seq 1 {lines} > file",
        "pipe": "seq | cat > file (a reader on a pipe, as supervisord, pm2)",
        "taskmux": "taskmux one-shot task: start -> verdict (flush barrier incl.)",
    }
    rows = [["figure", "wall (median)", "x file", "x floor", "CPU, all", "x floor CPU", "tmux CPU",
             "writer CPU", "every line"]]  # fmt: skip
    for name, taken in samples.items():
        wall = median(name, "wall") or 0.0
        used, tmux_cpu, writer_cpu = (median(name, f) for f in ("cpu", "tmux_cpu", "writer_cpu"))
        rows.append(
            [
                labels.get(name, name),
                f"{wall:.2f} s",
                f"{wall / base:.1f}x",
                f"{wall / floor:.2f}x",
                "" if used is None else f"{used:.2f} s",
                "" if used is None else f"{used / floor_cpu:.2f}x",
                "" if tmux_cpu is None else f"{tmux_cpu:.2f} s",
                "" if writer_cpu is None else f"{writer_cpu:.2f} s",
                f"{sum(sample.ok for sample in taken)}/{len(taken)}",
            ]
        )
    return rows


def pipe_memory(folder: Path, label: str, pipe: Callable[[int], str]) -> list[list[str]]:
    """TASKS windows piped by pipe(i): the pipes' memory idle, then after a burst each."""
    rows = []
    go = folder / f"{uuid.uuid4().hex}.go"
    with tmux_server() as (socket, server):
        for i in range(TASKS):
            command = f"while [ ! -e {go} ]; do sleep 0.05; done; head -c {BURST} /dev/zero | " \
                      f"tr '\\0' x | fold -w 100; : > {go}.{i}; exec sleep 100000"  # fmt: skip
            tmux(socket, "new-window", "-d", "-n", f"t{i}", command,
                 ";", "pipe-pane", "-t", f":t{i}", pipe(i))  # fmt: skip
        wait(lambda: len(psutil.Process(server).children()) >= 2 * TASKS + 1, timeout=30)
        time.sleep(1.0)  # the pipes have started and settled

        panes = {int(pid) for pid in tmux(socket, "list-panes", "-a", "-F", "#{pane_pid}").split()}

        def pipes() -> list[int]:
            return [p.pid for p in psutil.Process(server).children() if p.pid not in panes]

        def summed(when: str) -> None:
            found = pipes()
            sizes = [memory(pid) for pid in found]
            pss, private = (sum(s[k] for s in sizes) / 1024 for k in (1, 2))
            server_pss = memory(server)[1] / 1024
            rows.append([f"{label}, {len(found)} pipes, {when}", f"{pss:.1f} MiB",
                         f"{private:.1f} MiB", f"{pss * 1024 / max(1, len(found)):.0f} KiB",
                         f"{server_pss:.1f} MiB"])  # fmt: skip

        summed("idle")
        go.touch()
        wait(lambda: all(Path(f"{go}.{i}").exists() for i in range(TASKS)), timeout=60)
        time.sleep(2.5)  # the writers have written the burst and gone idle
        summed(f"after {BURST >> 20} MB each")
    return rows


def memory_rows(folder: Path, old: Path | None) -> list[list[str]]:
    rows = [["figure", "PSS", "private", "PSS per pipe", "tmux server PSS"]]
    kinds: list[tuple[str, Callable[[int], str]]] = []
    for writer in ("perl", "python"):
        store = LogStore(folder / f"mem-{writer}", writer=writer)
        kinds.append((f"{writer} writers", lambda i, s=store: s.pipe_command(f"t{i}", 1)))
    if old is not None:
        store = LogStore(folder / "mem-old", writer="perl")
        new = shlex.quote(writer_argv("perl")[1])
        kinds.append(
            (
                "old perl writers",
                lambda i, s=store: s.pipe_command(f"t{i}", 1).replace(new, shlex.quote(str(old))),
            )
        )
    kinds.append(("cat relays (a process per task, no more)", lambda i: "exec cat > /dev/null"))
    for label, pipe in kinds:
        rows += pipe_memory(folder, label, pipe)
    return rows


def table(rows: list[list[str]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def main() -> int:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    lines = int(sys.argv[2]) if len(sys.argv) > 2 else 3_000_000
    old_env = os.environ.get("BENCH_OLD_WRITER")
    old = Path(old_env).resolve() if old_env else None
    if shutil.which("tmux") is None or shutil.which("perl") is None:
        print("needs tmux and perl on PATH")
        return 1
    folder = Path(tempfile.mkdtemp(prefix="bench-output-"))
    os.environ["TMUX_TMPDIR"] = str(folder)  # its tmux servers' sockets go with the folder
    load = os.getloadavg()
    try:
        table(rate_rows(folder, rounds, lines, old))
        print()
        table(memory_rows(folder, old))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    after = os.getloadavg()
    print(f"({os.cpu_count()} cpus; load average {load[0]:.1f} before, {after[0]:.1f} after; "
          f"{rounds} rounds of {lines:,} lines)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
