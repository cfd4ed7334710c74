"""Supervisor figures (issue 2) beside taskmux 0.3.0: status cost, a dependency chain, stop.

Run: .venv/bin/python bench/bench_supervisor.py   (about two minutes). Every tmux server, task,
state folder and 0.3.0's HOME lives in one temp folder, removed (and its processes ended) at
the end. taskmux 0.3.0 is installed once into a cached venv (see baseline_taskmux).

Also the sandbox helpers bench_monitor.py uses.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

import psutil

BASELINE = "taskmux==0.3.0"
STATUS_SIZES = (1, 10, 30)
STATUS_RUNS = 5
Row = tuple[str, ...]
HEADER: Row = ("figure", "taskmux-mcp", "0.3.0", "ratio", "goal", "verdict")


# ------------------------------------------------------------------ helpers shared by benches


def cache_root() -> Path:
    """Where the baseline's venv is kept between runs."""
    configured = os.environ.get("TASKMUX_BENCH_CACHE")
    return Path(configured) if configured else Path(tempfile.gettempdir()) / "taskmux-bench-cache"


def cached_install(
    folder: str, product: Path, steps: Sequence[Sequence[str]]
) -> tuple[Path | None, str]:
    """`product` once `steps` have installed it into cache_root()/folder (kept between runs),
    or why not. steps may name the folder as {dir}."""
    where = cache_root() / folder
    marker = where / ".installed"
    where.parent.mkdir(parents=True, exist_ok=True)
    with open(where.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if marker.exists() and product.exists():
            return product, "cached"
        shutil.rmtree(where, ignore_errors=True)
        for step in steps:
            argv = [arg.replace("{dir}", str(where)) for arg in step]
            try:
                done = subprocess.run(
                    argv, capture_output=True, text=True, timeout=300, check=False
                )
            except (OSError, subprocess.TimeoutExpired) as exc:
                return None, f"{Path(argv[0]).name}: {exc}"
            if done.returncode != 0:
                lines = (done.stderr or done.stdout).strip().splitlines()
                return None, lines[-1] if lines else f"{argv[:3]} exited {done.returncode}"
        if not product.exists():
            return None, f"{product} missing after install"
        marker.write_text(" ".join(" ".join(step) for step in steps) + "\n")
        return product, "installed now"


def python_venv_steps(requirement: str, check: str) -> list[list[str]]:
    """Steps that make a venv in {dir}, pip-install requirement, and run `python -c check`."""
    python = shutil.which("python3") or sys.executable
    return [
        [python, "-m", "venv", "{dir}"],
        ["{dir}/bin/pip", "install", "--quiet", "--disable-pip-version-check", requirement],
        ["{dir}/bin/python", "-c", check],
    ]


def baseline_taskmux() -> tuple[Path | None, str]:
    """The `taskmux` script of 0.3.0 in a cached venv (installed on first use), or why not."""
    folder = "taskmux-0.3.0"
    steps = python_venv_steps(BASELINE, "import taskmux.tmux_manager, taskmux.daemon")
    return cached_install(folder, cache_root() / folder / "bin" / "taskmux", steps)


def byte_compile_ours() -> None:
    """Compile our modules ahead, as installing a wheel does: this machine sets
    PYTHONDONTWRITEBYTECODE=1, so an editable checkout would compile each at every CLI call."""
    package = Path(__file__).resolve().parent.parent / "taskmux_mcp"
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(package)], check=False)


def ours_cli() -> list[str]:
    """The `taskmux` console script of this checkout's venv."""
    script = Path(sys.executable).with_name("taskmux")
    return [str(script)] if script.exists() else [sys.executable, "-m", "taskmux_mcp"]


def report_goal(key: str, ours: str, baseline: str, verdict: str) -> None:
    """Hand one row of issue 15's goals table to bench/run.py, which names the file in
    $TASKMUX_BENCH_GOALS and prints the rows at the end (nothing when a bench runs alone)."""
    path = os.environ.get("TASKMUX_BENCH_GOALS")
    if path:
        line = {"key": key, "ours": ours, "baseline": baseline, "verdict": verdict}
        with open(path, "a") as out:
            out.write(json.dumps(line) + "\n")


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.02) -> bool:
    """Poll predicate until it holds or timeout seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def median(values: Sequence[float]) -> float:
    """The median (nan for no values)."""
    return statistics.median(values) if values else float("nan")


def secs(value: float | None, digits: int = 2) -> str:
    """Seconds as text."""
    return "-" if value is None else f"{value:.{digits}f} s"


def ratio(theirs: float | None, ours: float | None) -> str:
    """How many times ours is smaller than theirs."""
    if theirs is None or ours is None or ours <= 0:
        return "-"
    return f"{theirs / ours:.1f}x"


def verdict(met: bool | None) -> str:
    """Goal met or not."""
    return "-" if met is None else ("met" if met else "MISSED")


def machine_line() -> str:
    """What ran the bench."""
    tmux = subprocess.run(["tmux", "-V"], capture_output=True, text=True, check=False).stdout
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"({stamp}; {os.cpu_count()} cpus, load {load} at the end; python "
        f"{sys.version.split()[0]}, {tmux.strip()}; shared machine: other jobs may run)"
    )


def print_table(rows: Sequence[Row]) -> None:
    """Left-aligned columns."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    sys.stdout.flush()


class Sandbox:
    """A temp folder holding tmux servers (one TMUX_TMPDIR each), projects, HOME and state."""

    def __init__(self, label: str) -> None:
        self.root = Path(tempfile.mkdtemp(prefix=f"taskmux-bench-{label}-"))
        self.home = self.root / "home"
        self.state = self.root / "state"
        self.bin = self.root / "bin"
        for folder in (self.home, self.state, self.bin):
            folder.mkdir()
        real = shutil.which("tmux")
        if real is None:
            raise SystemExit("tmux is not on PATH")
        self.real_tmux = real
        wrapper = self.bin / "tmux"
        wrapper.write_text(
            "#!/bin/sh\n"
            'printf "%s\\n" "$*" >> "${TASKMUX_BENCH_SPAWN_LOG:-/dev/null}"\n'
            f'exec "{real}" "$@"\n'
        )
        wrapper.chmod(0o755)
        self.tmux_dirs: list[Path] = []
        self.procs: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def tmux_dir(self, label: str) -> Path:
        """A fresh TMUX_TMPDIR: its own default tmux server."""
        path = self.root / f"tmux-{label}"
        path.mkdir()
        self.tmux_dirs.append(path)
        return path

    def project(self, label: str, toml: str) -> Path:
        """A project folder with that taskmux.toml."""
        path = self.root / f"proj-{label}"
        path.mkdir()
        (path / "taskmux.toml").write_text(toml)
        return path

    def env(
        self,
        tmux_dir: Path,
        *,
        hosted: bool = False,
        spawn_log: Path | None = None,
    ) -> dict[str, str]:
        """Environment for either implementation, on tmux_dir's server, isolated from the user."""
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("TMUX", "TMUX_PANE") and not k.startswith("TASKMUX_")
        }
        env.update(
            HOME=str(self.home),
            TMUX_TMPDIR=str(tmux_dir),
            TASKMUX_STATE_DIR=str(self.state),
            SHELL="/bin/bash" if os.path.exists("/bin/bash") else "/bin/sh",
            TASKMUX_HOSTED_MONITOR="1" if hosted else "0",
        )
        if spawn_log is not None:
            env["PATH"] = f"{self.bin}{os.pathsep}{env.get('PATH', '')}"
            env["TASKMUX_BENCH_SPAWN_LOG"] = str(spawn_log)
        return env

    def tmux(self, tmux_dir: Path, *args: str) -> str:
        """Run the real tmux against tmux_dir's server; its stdout ('' on failure)."""
        done = subprocess.run(
            [self.real_tmux, *args],
            env=self.env(tmux_dir),
            capture_output=True,
            text=True,
            check=False,
        )
        return done.stdout if done.returncode == 0 else ""

    def popen(
        self, argv: Sequence[str], *, env: dict[str, str], cwd: Path, output: Path
    ) -> subprocess.Popen[bytes]:
        """A background process, ended at close()."""
        with open(output, "wb") as out:
            proc = subprocess.Popen(
                list(argv), env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT
            )
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        """End every process started here, kill the tmux servers, remove the folder."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for tmux_dir in self.tmux_dirs:
            self.tmux(tmux_dir, "kill-server")
        self.reap()
        shutil.rmtree(self.root, ignore_errors=True)

    def reap(self) -> None:
        """SIGKILL leftovers: any process whose environment points into this sandbox."""
        marker = str(self.root)
        mine = {os.getpid(), *(p.pid for p in psutil.Process().parents())}
        for proc in psutil.process_iter(["pid"]):
            if proc.pid in mine:
                continue
            with contextlib.suppress(psutil.Error, OSError):
                if any(marker in value for value in proc.environ().values()):
                    proc.send_signal(signal.SIGKILL)


def run_timed(
    argv: Sequence[str], *, env: dict[str, str], cwd: Path, timeout: float = 120
) -> tuple[float, subprocess.CompletedProcess[str]]:
    """Wall time of one command, and its result."""
    started = time.perf_counter()
    done = subprocess.run(
        list(argv), env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )
    return time.perf_counter() - started, done


def count_lines(path: Path) -> int:
    """Lines in a file (0 when missing)."""
    try:
        return len(path.read_text().splitlines())
    except FileNotFoundError:
        return 0


def pane_commands(sb: Sandbox, tmux_dir: Path) -> list[str]:
    """pane_current_command of every pane on the server."""
    return sb.tmux(tmux_dir, "list-panes", "-a", "-F", "#{pane_current_command}").split()


def sleeping(sb: Sandbox, tmux_dir: Path, count: int) -> bool:
    """Whether `count` panes run sleep (0.3.0 types commands into a shell: they lag its start)."""
    return pane_commands(sb, tmux_dir).count("sleep") == count


def sleep_tasks(name: str, count: int, extra: str = "") -> str:
    """A taskmux.toml of `count` tasks running sleep."""
    parts = [f'name = "{name}"\n']
    for i in range(count):
        parts.append(f'\n[tasks.t{i}]\ncommand = "sleep 1000"\n{extra}')
    return "".join(parts)


class Vanish:
    """Notes when a pid disappears (polled in a thread every 5 ms)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.at: float | None = None
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        deadline = time.perf_counter() + 60
        while time.perf_counter() < deadline:
            if not psutil.pid_exists(self.pid) or _zombie(self.pid):
                self.at = time.perf_counter()
                return
            time.sleep(0.005)

    def join(self) -> float | None:
        """When it vanished (perf_counter), waiting up to 60 s."""
        self._thread.join()
        return self.at


def _zombie(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return True


# ------------------------------------------------------------------ status

OURS_STATUS_INPROC = """
import sys, time, anyio
from taskmux_mcp.project import Project
sup = Project.open(project=sys.argv[1], hosted_monitor=False)
async def main():
    times = []
    for _ in range(int(sys.argv[2])):
        t = time.perf_counter()
        result = await sup.status()
        times.append(time.perf_counter() - t)
    running = sum(1 for task in result.tasks if task.state.value == "running")
    print(sorted(times)[len(times) // 2], running)
anyio.run(main)
"""

BASE_STATUS_INPROC = """
import contextlib, io, sys, time
from taskmux.cli import TaskmuxCLI
cli = TaskmuxCLI()
times = []
for _ in range(int(sys.argv[1])):
    buf = io.StringIO()
    t = time.perf_counter()
    with contextlib.redirect_stdout(buf):
        cli.tmux.list_tasks()
    times.append(time.perf_counter() - t)
print(sorted(times)[len(times) // 2], buf.getvalue().count("Healthy "))
"""


def _status_figures(
    sb: Sandbox, argv: list[str], inproc: list[str], env: dict[str, str], cwd: Path, label: str
) -> tuple[float, int, float, int, str]:
    """Median CLI wall time, tmux spawns of one call, in-process median, tasks seen running."""
    walls = []
    for _ in range(STATUS_RUNS):
        wall, done = run_timed(argv, env=env, cwd=cwd)
        if done.returncode != 0:
            raise RuntimeError(f"{label} status failed: {done.stderr.strip()[-300:]}")
        walls.append(wall)
    log = sb.root / f"spawns-{label}.log"
    run_timed(argv, env=sb.env(Path(env["TMUX_TMPDIR"]), spawn_log=log), cwd=cwd)
    spawned = log.read_text().splitlines() if log.exists() else []
    kinds: dict[str, int] = {}
    for line in spawned:
        words = [w for w in line.split() if not w.startswith("-")]
        word = words[0] if words else "(none)"
        kinds[word] = kinds.get(word, 0) + 1
    what = ", ".join(f"{k} {v}" for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])[:3])
    done = subprocess.run(
        inproc, env=env, cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )
    fields = done.stdout.split()
    if done.returncode != 0 or len(fields) != 2:
        raise RuntimeError(f"{label} in-process status failed: {done.stderr.strip()[-300:]}")
    return median(walls), len(spawned), float(fields[0]), int(fields[1]), what


def import_floor(python: str, module: str) -> float:
    """Median wall time of starting the interpreter and importing a CLI module."""
    walls = []
    for _ in range(STATUS_RUNS):
        wall, _ = run_timed(
            [python, "-c", f"import {module}"], env=dict(os.environ), cwd=Path.cwd()
        )
        walls.append(wall)
    return median(walls)


def bench_status(sb: Sandbox, base: Path | None) -> list[Row]:
    ours_floor = import_floor(sys.executable, "taskmux_mcp.cli")
    base_floor = import_floor(str(base.with_name("python")), "taskmux.cli") if base else None
    rows: list[Row] = [
        ("CLI floor: interpreter start + CLI imports, no command", secs(ours_floor, 3),
         secs(base_floor, 3), ratio(base_floor, ours_floor), "", "part of every CLI call"),
    ]  # fmt: skip
    for n in STATUS_SIZES:
        tmux_dir = sb.tmux_dir(f"status-ours-{n}")
        project = sb.project(f"status-ours-{n}", sleep_tasks(f"st{n}", n))
        env = sb.env(tmux_dir)
        _, done = run_timed([*ours_cli(), "--project", str(project), "start"], env=env, cwd=project)
        if done.returncode != 0:
            raise RuntimeError(f"our start of {n} tasks failed: {done.stderr.strip()[-300:]}")
        argv = [*ours_cli(), "--project", str(project), "status"]
        inproc = [sys.executable, "-c", OURS_STATUS_INPROC, str(project), str(STATUS_RUNS)]
        ours = _status_figures(sb, argv, inproc, env, project, f"ours-{n}")
        sb.tmux(tmux_dir, "kill-server")
        theirs: tuple[float, int, float, int, str] | None = None
        if base is not None:
            tmux_dir = sb.tmux_dir(f"status-base-{n}")
            project = sb.project(f"status-base-{n}", sleep_tasks(f"st{n}", n))
            env = sb.env(tmux_dir)
            run_timed([str(base), "start"], env=env, cwd=project)
            if not wait_until(functools.partial(sleeping, sb, tmux_dir, n), 30, 0.1):
                raise RuntimeError(f"0.3.0 did not get {n} tasks running")
            python = str(base.with_name("python"))
            inproc = [python, "-c", BASE_STATUS_INPROC, str(STATUS_RUNS)]
            theirs = _status_figures(sb, [str(base), "status"], inproc, env, project, f"base-{n}")
            sb.tmux(tmux_dir, "kill-server")
        t = theirs
        goal_wall = goal_spawns = ""
        met_wall = met_spawns = met_inproc = None
        if n == 30:
            goal_wall, goal_spawns = ">= 6x faster", "<= 2"
            met_wall = t[0] / ours[0] >= 6 if t else None
            met_inproc = t[2] / ours[2] >= 6 if t else None
            met_spawns = ours[1] <= 2
        seen = f"{ours[3]}/{n} running" + (f", 0.3.0 {t[3]}/{n} healthy" if t else "")
        if met_inproc is not None:
            seen = f"{verdict(met_inproc)}; {seen}"
        rows += [
            (f"status, {n} tasks: CLI wall (median of {STATUS_RUNS})", secs(ours[0], 3),
             secs(t[0], 3) if t else "-", ratio(t[0] if t else None, ours[0]), goal_wall,
             verdict(met_wall)),
            (f"status, {n} tasks: tmux spawns per call", str(ours[1]), str(t[1]) if t else "-",
             ratio(t[1] if t else None, ours[1]), goal_spawns, verdict(met_spawns)),
            (f"status, {n} tasks: in-process (no interpreter start)", secs(ours[2], 4),
             secs(t[2], 4) if t else "-", ratio(t[2] if t else None, ours[2]), goal_wall,
             seen),
        ]  # fmt: skip
        if n == STATUS_SIZES[-1]:
            rows.append((f"  (what spawned, {n} tasks)", ours[4], t[4] if t else "-", "", "", ""))
    return rows


# ------------------------------------------------------------------ dependency chain

CHAIN = """name = "chain"

[tasks.a]
command = "sleep 1; touch ready_a; sleep 1000"
health_check = "test -f ready_a"

[tasks.b]
command = "sleep 1; touch ready_b; sleep 1000"
health_check = "test -f ready_b"
depends_on = ["a"]

[tasks.c]
command = "sleep 1; touch ready_c; sleep 1000"
health_check = "test -f ready_c"
depends_on = ["b"]
"""


def chain_phases(sb: Sandbox, project: Path, called: float, returned: float) -> str:
    """Where a chain's time over the ideal went, from the `started` events (written as each
    window is launched) and the ready files' times: the first launch after the call, each
    ready file -> the next task launched, the last ready file -> the CLI's return."""
    launched = {}
    for path in sb.state.glob("chain-*/events.jsonl"):
        for line in path.read_text().splitlines():
            event = json.loads(line)
            if event.get("type") == "started":
                launched[event["task"]] = datetime.fromisoformat(event["time"]).timestamp()
    at = {t: (project / f"ready_{t}").stat().st_mtime for t in "abc"}
    if set(launched) < set("abc"):
        return "phases: started events missing"
    steps = "/".join(f"{(launched[n] - at[t]) * 1000:.0f}" for t, n in ("ab", "bc"))
    return (
        f"a launched at +{launched['a'] - called:.2f} s; ready -> next launched {steps} ms; "
        f"ready_c -> returned {(returned - at['c']) * 1000:.0f} ms"
    )


def bench_chain(sb: Sandbox, base: Path | None) -> list[Row]:
    tmux_dir = sb.tmux_dir("chain-ours")
    project = sb.project("chain-ours", CHAIN)
    env = sb.env(tmux_dir, hosted=True)
    called = time.time()
    ours, done = run_timed([*ours_cli(), "--project", str(project), "start"], env=env, cwd=project)
    ready = all((project / f"ready_{t}").exists() for t in "abc")
    note = "all healthy at return" if done.returncode == 0 and ready else "NOT all healthy"
    note += f"; +{ours - 3.0:.2f} s over ideal (CLI floor included)"
    if ready:
        note += "; " + chain_phases(sb, project, called, called + ours)
    sb.tmux(tmux_dir, "kill-server")
    returned = healthy = None
    if base is not None:
        tmux_dir = sb.tmux_dir("chain-base")
        project = sb.project("chain-base", CHAIN)
        env = sb.env(tmux_dir)
        started = time.perf_counter()
        run_timed([str(base), "start"], env=env, cwd=project)
        returned = time.perf_counter() - started
        if wait_until((project / "ready_c").exists, 30, 0.01):
            healthy = time.perf_counter() - started
        sb.tmux(tmux_dir, "kill-server")
        note += f"; 0.3.0 returned at {secs(returned, 1)}, before c was healthy"
    shown = f"0.3.0 {secs(healthy)}" if healthy is not None else "0.3.0 not measured"
    report_goal("chain", secs(ours), f"ideal 3.0 s; {shown}", verdict(ours <= 3.2))
    return [
        ("3-task chain (healthy 1 s after start): start -> all healthy", secs(ours),
         secs(healthy), ratio(healthy, ours), "ideal 3.0 s", note),
    ]  # fmt: skip


# ------------------------------------------------------------------ stop

STOP = 'name = "stopper"\n\n[tasks.s]\ncommand = "sleep 1000"\n'
STOP_RUNS_OURS = 3
STOP_RUNS_BASE = 2


def bench_stop(sb: Sandbox, base: Path | None) -> list[Row]:
    tmux_dir = sb.tmux_dir("stop-ours")
    project = sb.project("stop-ours", STOP)
    env = sb.env(tmux_dir, hosted=True)
    cli = [*ours_cli(), "--project", str(project), "--json"]
    walls, gone_after, inside = [], [], []
    for _ in range(STOP_RUNS_OURS):
        _, done = run_timed([*cli, "start"], env=env, cwd=project)
        pid = json.loads(done.stdout)["tasks"][0]["pid"]
        gone = Vanish(pid)
        started = time.perf_counter()
        wall, done = run_timed([*cli, "stop", "s"], env=env, cwd=project)
        walls.append(wall)
        vanished = gone.join()
        gone_after.append((vanished - started) if vanished else float("nan"))
        inside.append(json.loads(done.stdout)["tasks"][0]["duration_s"])
    sb.tmux(tmux_dir, "kill-server")
    ours = median(walls)
    note = f"process gone {secs(median(gone_after))} after the call; stop itself {median(inside)} s"
    theirs = None
    if base is not None:
        tmux_dir = sb.tmux_dir("stop-base")
        project = sb.project("stop-base", STOP)
        env = sb.env(tmux_dir)
        base_walls, base_gone = [], []
        run_timed([str(base), "start"], env=env, cwd=project)
        for trial in range(STOP_RUNS_BASE):
            if trial:
                run_timed([str(base), "restart", "s"], env=env, cwd=project)
            if not wait_until(functools.partial(sleeping, sb, tmux_dir, 1), 10):
                raise RuntimeError("0.3.0 did not run the task")
            shell = int(sb.tmux(tmux_dir, "list-panes", "-a", "-F", "#{pane_pid}").split()[0])
            pid = psutil.Process(shell).children()[0].pid
            gone = Vanish(pid)
            started = time.perf_counter()
            wall, _ = run_timed([str(base), "stop", "s"], env=env, cwd=project)
            base_walls.append(wall)
            vanished = gone.join()
            base_gone.append((vanished - started) if vanished else float("nan"))
        sb.tmux(tmux_dir, "kill-server")
        theirs = median(base_walls)
        note += f"; 0.3.0's process gone after {secs(median(base_gone))}"
    return [
        (f"stop of `sleep 1000` (dies on SIGINT), CLI wall (median of {STOP_RUNS_OURS}/"
         f"{STOP_RUNS_BASE})", secs(ours), secs(theirs), ratio(theirs, ours), "well under 1 s",
         verdict(ours < 1.0) + "; " + note),
    ]  # fmt: skip


def main() -> int:
    base, why = baseline_taskmux()
    if base is None:
        print(f"taskmux 0.3.0 unavailable: {why}")
    rows: list[Row] = [HEADER]
    with Sandbox("supervisor") as sb:
        rows += bench_status(sb, base)
        rows += bench_chain(sb, base)
        rows += bench_stop(sb, base)
    print_table(rows)
    print("ratio = 0.3.0 / taskmux-mcp (higher is better for us)")
    print(machine_line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
