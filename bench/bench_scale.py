"""Scale figures (issue 7): status and monitor cost as one project grows to 100 tasks, and one
project's status with 9 others on the same tmux server, against one raw tmux call.

Run: .venv/bin/python bench/bench_scale.py   (about two minutes: three 20 s monitor windows).
Everything lives in one temp folder, removed (and its processes ended) at the end.
"""

from __future__ import annotations

import functools
import subprocess
import sys
import time
from pathlib import Path

import psutil
from bench_monitor import cpu_seconds, leased_to, settled, state_dir
from bench_supervisor import (
    Row,
    Sandbox,
    machine_line,
    ours_cli,
    print_table,
    run_timed,
    sleep_tasks,
    verdict,
    wait_until,
)

SIZES = (10, 30, 100)
STATUS_RUNS = 15
MONITOR_WINDOW_S = 20.0
PROJECTS = 10
PROJECT_TASKS = 10
SOCKET = "bench-scale"
HEADER: Row = ("figure", "taskmux-mcp", "floor", "x floor", "per task", "verdict")

# status_sync and the floor (one raw `tmux list-panes -a` with the format status asks for, spawned
# the same way), in one interpreter, alternating, after one warm-up call of each.
STATUS_AND_FLOOR = """
import os, subprocess, shutil, sys, time
from taskmux_mcp.project import Project
from taskmux_mcp.tmux import _FORMAT
socket = os.environ["TASKMUX_TMUX_SOCKET"]
sup = Project.open(project=sys.argv[1], socket_name=socket, hosted_monitor=False)
argv = [shutil.which("tmux"), "-L", socket, "list-panes", "-a", "-F", _FORMAT]
def floor():
    done = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    return len(done.stdout.splitlines())
sup.status_sync(); floor()
ours, raw = [], []
for _ in range(int(sys.argv[2])):
    t = time.perf_counter(); result = sup.status_sync(); ours.append(time.perf_counter() - t)
    t = time.perf_counter(); panes = floor(); raw.append(time.perf_counter() - t)
mid = lambda xs: sorted(xs)[len(xs) // 2]
running = sum(1 for task in result.tasks if task.state.value == "running")
print(mid(ours), mid(raw), running, len(result.tasks), panes)
"""


class Status:
    """One status measurement: medians of ours and of the floor, what it saw."""

    def __init__(self, line: str) -> None:
        ours, floor, running, tasks, panes = line.split()
        self.ours, self.floor = float(ours), float(floor)
        self.running, self.tasks, self.panes = int(running), int(tasks), int(panes)


def measure_status(project: Path, env: dict[str, str]) -> Status:
    """Median in-process status_sync time and raw list-panes time, in a fresh interpreter."""
    argv = [sys.executable, "-c", STATUS_AND_FLOOR, str(project), str(STATUS_RUNS)]
    done = subprocess.run(
        argv, env=env, cwd=project, capture_output=True, text=True, timeout=300, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"status measurement failed: {done.stderr.strip()[-300:]}")
    return Status(done.stdout.strip().splitlines()[-1])


def start(project: Path, env: dict[str, str]) -> None:
    """`taskmux start` (starts the tasks not running yet), which must succeed."""
    argv = [*ours_cli(), "--project", str(project), "start", "--timeout", "120"]
    _, done = run_timed(argv, env=env, cwd=project, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"start of {project.name} failed: {done.stderr.strip()[-300:]}")


def monitor_cpu(sb: Sandbox, project: Path, env: dict[str, str], name: str, n: int) -> float:
    """CPU seconds per minute of an acting `taskmux monitor` (with its reaped children)."""
    argv = [*ours_cli(), "--project", str(project), "monitor"]
    proc = sb.popen(argv, env=env, cwd=project, output=sb.root / f"monitor-{n}.out")
    monitor = psutil.Process(proc.pid)
    folder = state_dir(sb, name)
    if not wait_until(functools.partial(leased_to, folder, proc.pid), 30):
        raise RuntimeError("the monitor did not take the lock")
    wait_until(functools.partial(settled, monitor), 20, 0.0)
    time.sleep(2.5)  # past its first full sweep
    before = cpu_seconds(monitor)
    began = time.monotonic()
    time.sleep(MONITOR_WINDOW_S)
    used = (cpu_seconds(monitor) - before) / (time.monotonic() - began) * 60
    proc.terminate()
    proc.wait(timeout=10)
    return used


def ms(value: float) -> str:
    """Seconds as milliseconds."""
    return f"{value * 1000:.2f} ms"


def growth(first: float, last: float, tasks_factor: float) -> str:
    """How the cost grew against how the tasks grew."""
    return f"{last / first:.1f}x cost for {tasks_factor:.0f}x tasks"


def bench_one_project(sb: Sandbox) -> list[Row]:
    tmux_dir = sb.tmux_dir("one")
    project = sb.root / "proj-big"
    project.mkdir()
    env = {**sb.env(tmux_dir), "TASKMUX_TMUX_SOCKET": SOCKET}
    statuses: dict[int, Status] = {}
    cpu: dict[int, float] = {}
    for n in SIZES:
        (project / "taskmux.toml").write_text(sleep_tasks("big", n))
        start(project, env)
        statuses[n] = measure_status(project, env)
        cpu[n] = monitor_cpu(sb, project, env, "big", n)
    rows: list[Row] = []
    for n, s in statuses.items():
        rows.append(
            (f"status in-process, {n} tasks (median of {STATUS_RUNS})", ms(s.ours),
             f"list-panes {ms(s.floor)}", f"{s.ours / s.floor:.2f}x", ms(s.ours / n),
             f"{s.running}/{n} running; {s.panes} panes listed"),
        )  # fmt: skip
    lo, hi = statuses[SIZES[0]], statuses[SIZES[-1]]
    factor = SIZES[-1] / SIZES[0]
    rows.append(
        (f"  status growth {SIZES[0]} -> {SIZES[-1]} tasks", growth(lo.ours, hi.ours, factor),
         growth(lo.floor, hi.floor, factor), "", "",
         "linear or better: " + verdict(hi.ours / lo.ours <= factor)),
    )  # fmt: skip
    for n, used in cpu.items():
        rows.append(
            (f"monitor CPU, {n} tasks ({MONITOR_WINDOW_S:.0f} s window, incl. children)",
             f"{used:.2f} s/min", "-", "-", f"{used / n * 1000:.1f} ms/min",
             f"{used / 60 * 100:.2f} % of a core"),
        )  # fmt: skip
    first, last = cpu[SIZES[0]], cpu[SIZES[-1]]
    rows.append(
        (f"  monitor growth {SIZES[0]} -> {SIZES[-1]} tasks", growth(first, last, factor), "", "",
         "", "linear or better: " + verdict(last / first <= factor)),
    )  # fmt: skip
    sb.tmux(tmux_dir, "-L", SOCKET, "kill-server")
    return rows


def bench_many_projects(sb: Sandbox) -> list[Row]:
    tmux_dir = sb.tmux_dir("many")
    env = {**sb.env(tmux_dir), "TASKMUX_TMUX_SOCKET": SOCKET}
    projects = [sb.project(f"p{i}", sleep_tasks(f"p{i}", PROJECT_TASKS)) for i in range(PROJECTS)]
    start(projects[0], env)
    alone = measure_status(projects[0], env)
    for project in projects[1:]:
        start(project, env)
    crowded = measure_status(projects[0], env)
    sb.tmux(tmux_dir, "-L", SOCKET, "kill-server")
    others = PROJECTS - 1
    grew = crowded.ours / alone.ours
    return [
        (f"status of 1 project ({PROJECT_TASKS} tasks), alone on its tmux server", ms(alone.ours),
         f"list-panes {ms(alone.floor)}", f"{alone.ours / alone.floor:.2f}x",
         ms(alone.ours / PROJECT_TASKS),
         f"{alone.running}/{PROJECT_TASKS} running; {alone.panes} panes listed"),
        (f"  the same, {others} other projects ({others * PROJECT_TASKS} tasks) on the server",
         ms(crowded.ours), f"list-panes {ms(crowded.floor)}",
         f"{crowded.ours / crowded.floor:.2f}x", ms(crowded.ours / PROJECT_TASKS),
         f"{crowded.running}/{PROJECT_TASKS} running; {crowded.panes} panes listed; "
         f"{grew:.2f}x the time alone (floor {crowded.floor / alone.floor:.2f}x)"),
    ]  # fmt: skip


def main() -> int:
    rows: list[Row] = [HEADER]
    with Sandbox("scale") as sb:
        rows += bench_one_project(sb)
        rows += bench_many_projects(sb)
    print_table(rows)
    print(
        "floor = one raw `tmux list-panes -a` (same format, spawned the same way, same run); "
        "x floor = ours / floor"
    )
    print(machine_line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
