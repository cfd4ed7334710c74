"""Many tasks (issue 15): start and stop of 100 and 500 tasks through the CLI, and a `status`
tool call of 500 over stdio MCP, each against the same work done by bare tmux in the same run.

Run: .venv/bin/python bench/bench_many.py [ROUNDS]   (ROUNDS = 3 by default: about 2 minutes)

Ours: a project of N tasks running `exec sleep 1000`, hosted monitor on (as by default), on a
private tmux server; `taskmux start` (it returns once every task has run 1 s: the "stays up"
rule), then `taskmux stop`. The floor: the same N windows made by bare tmux in command
sequences of the size taskmux sends, each with `remain-on-exit` and a `pipe-pane` to `cat`
(what a task needs at least: a window, its exit status kept, its output piped out), timed
until every pane runs; then C-c typed into every pane in sequences, timed until tmux reports
every pane dead. Rounds alternate floor and ours, size by size, so both see the same load.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import psutil
from bench_mcp import RawSession, median_ms
from bench_monitor import state_dir
from bench_supervisor import (
    Row,
    Sandbox,
    machine_line,
    median,
    ours_cli,
    print_table,
    run_timed,
    secs,
    verdict,
    wait_until,
)

SIZES = (100, 500)
ROUNDS = 3
STATUS_RUNS = 10
BATCH_CHARS = 12_000  # what taskmux puts in one tmux call
GOALS = {  # (start, stop) in seconds, from the issue
    100: (2.5, None),
    500: (8.0, 5.0),
}
STATUS_GOAL_S = 0.3
CALM = {"started", "stopped", "monitor_started"}  # anything else is the monitor acting
HEADER: Row = ("figure", "taskmux-mcp", "floor (bare tmux)", "x floor", "goal", "verdict")


def sleep_project(sb: Sandbox, label: str, n: int) -> Path:
    """A project of n tasks that exec sleep."""
    tasks = "".join(f'\n[tasks.t{i}]\ncommand = "exec sleep 1000"\n' for i in range(n))
    return sb.project(label, f'name = "{label}"\n{tasks}')


def in_calls(commands: list[list[str]]) -> list[list[str]]:
    """Command sequences of at most BATCH_CHARS each."""
    calls: list[list[str]] = []
    words: list[str] = []
    size = 0
    for command in commands:
        more = sum(len(w) + 1 for w in command) + 2
        if words and size + more > BATCH_CHARS:
            calls.append(words[:-1])
            words, size = [], 0
        words += [*command, ";"]
        size += more
    return [*calls, words[:-1]] if words else calls


def panes(sb: Sandbox, tmux_dir: Path) -> list[tuple[str, bool]]:
    """(window name, alive) of every pane on the server."""
    out = sb.tmux(tmux_dir, "list-panes", "-a", "-F", "#{window_name} #{pane_dead}")
    return [(name, dead == "0") for name, dead in (line.split() for line in out.splitlines())]


def floor(sb: Sandbox, n: int, label: str) -> tuple[float, float]:
    """Bare tmux: n windows made (until all run), then C-c typed into each (until all dead)."""
    tmux_dir = sb.tmux_dir(label)
    logs = sb.root / f"{label}-logs"
    logs.mkdir()
    argv = ["/bin/sh", "-c", "exec sleep 1000"]
    made = []
    for i in range(n):
        target = f"=floor:=w{i}"
        create = (
            ["new-session", "-d", "-s", "floor", "-n", f"w{i}", "-x", "220", "-y", "50", "--"]
            if i == 0
            else ["new-window", "-d", "-t", "=floor:", "-n", f"w{i}", "--"]
        )
        pipe = f"exec cat >> {shlex.quote(str(logs / f'w{i}.log'))}"
        made += [
            [*create, *argv],
            ["set-option", "-w", "-t", target, "remain-on-exit", "on"],
            ["pipe-pane", "-t", target, pipe],
        ]
    began = time.perf_counter()
    for words in in_calls(made):
        sb.tmux(tmux_dir, *words)
    wait_until(lambda: sum(alive for _, alive in panes(sb, tmux_dir)) == n, 120, 0.01)
    started = time.perf_counter() - began
    began = time.perf_counter()
    for words in in_calls([["send-keys", "-t", f"=floor:=w{i}", "C-c"] for i in range(n)]):
        sb.tmux(tmux_dir, *words)
    wait_until(lambda: not any(alive for _, alive in panes(sb, tmux_dir)), 120, 0.01)
    stopped = time.perf_counter() - began
    sb.tmux(tmux_dir, "kill-server")
    return started, stopped


class Ours:
    """One run of ours at one size: what it took and what it left."""

    def __init__(self) -> None:
        self.start = self.stop = float("nan")
        self.running = self.stopped = self.left = 0
        self.acted: list[str] = []
        self.status: list[float] = []
        self.raw: list[float] = []


def task_processes(project: Path) -> int:
    """Live processes that belong to a task of this checkout (its marker in their env)."""
    count = 0
    for proc in psutil.process_iter(["pid"]):
        try:
            env = proc.environ()
        except (psutil.Error, OSError):
            continue
        if "TASKMUX_TASK_ID" in env and env.get("TASKMUX_CHECKOUT") == str(project):
            count += 1
    return count


def ours(sb: Sandbox, n: int, label: str, *, status: bool) -> Ours:
    """`taskmux start` of n tasks, (an MCP status of them,) then `taskmux stop`."""
    tmux_dir = sb.tmux_dir(label)
    project = sleep_project(sb, label, n)
    env = sb.env(tmux_dir, hosted=True)
    cli = [*ours_cli(), "--project", str(project), "--json"]
    got = Ours()
    start = [*cli, "start", "--timeout", "300"]
    got.start, done = run_timed(start, env=env, cwd=project, timeout=400)
    if done.returncode != 0:
        raise RuntimeError(f"start of {n} failed: {(done.stderr or done.stdout)[-500:]}")
    tasks = json.loads(done.stdout)["tasks"]
    got.running = sum(1 for t in tasks if t["ok"] and t["state"] == "running")
    if status:
        got.status, got.raw = mcp_status(sb, project, env, tmux_dir)
    else:
        time.sleep(2.5)  # past a monitor sweep (every 2 s), which would act on any mistake
    events = state_dir(sb, label) / "events.jsonl"
    got.acted = [e["type"] for e in map(json.loads, events.read_text().splitlines())
                 if e["type"] not in CALM]  # fmt: skip
    got.stop, done = run_timed([*cli, "stop"], env=env, cwd=project, timeout=400)
    if done.returncode != 0:
        raise RuntimeError(f"stop of {n} failed: {(done.stderr or done.stdout)[-500:]}")
    got.stopped = sum(1 for t in json.loads(done.stdout)["tasks"] if t["state"] == "stopped")
    got.left = task_processes(project)
    sb.tmux(tmux_dir, "kill-server")
    return got


def mcp_status(
    sb: Sandbox, project: Path, env: dict[str, str], tmux_dir: Path
) -> tuple[list[float], list[float]]:
    """`status` tool calls over stdio, alternating with the raw `tmux list-panes -a` they make."""
    from taskmux_mcp.tmux import _FORMAT

    entry = Path(sys.executable).with_name("taskmux-mcp")
    session = RawSession([str(entry), "--project", str(project)], env, project)
    ours_s: list[float] = []
    raw: list[float] = []
    try:
        session.initialize()
        for _ in range(STATUS_RUNS + 1):  # the first call of each is a warm-up
            began = time.perf_counter()
            reply = session.request("tools/call", {"name": "status", "arguments": {}})
            ours_s.append(time.perf_counter() - began)
            running = [t for t in reply["result"]["structuredContent"]["tasks"]
                       if t["state"] == "running"]  # fmt: skip
            if not running:
                raise RuntimeError(f"status saw no running task: {str(reply)[:300]}")
            began = time.perf_counter()
            subprocess.run(
                [sb.real_tmux, "list-panes", "-a", "-F", _FORMAT],
                env=sb.env(tmux_dir), capture_output=True, check=True,
            )  # fmt: skip
            raw.append(time.perf_counter() - began)
    finally:
        session.close()
    return ours_s[1:], raw[1:]


def spread(values: list[float]) -> str:
    """min-max of a list of seconds."""
    return f"{min(values):.2f}-{max(values):.2f} s"


def rows_for(n: int, runs: list[Ours], floors: list[tuple[float, float]]) -> list[Row]:
    """The start, stop (and status) rows of one size."""
    start_goal, stop_goal = GOALS[n]
    start, stop = median([r.start for r in runs]), median([r.stop for r in runs])
    floor_start, floor_stop = median([f[0] for f in floors]), median([f[1] for f in floors])
    running = min(r.running for r in runs)
    acted = sorted({kind for r in runs for kind in r.acted})
    stopped, left = min(r.stopped for r in runs), max(r.left for r in runs)
    started_ok = running == n and not acted
    rows: list[Row] = [
        (f"start {n} tasks, CLI, until all running (median of {len(runs)})", secs(start),
         secs(floor_start), f"{start / floor_start:.1f}x", f"<= {start_goal:g} s",
         f"{verdict(start <= start_goal and started_ok)}; {running}/{n} running; "
         f"policy actions: {', '.join(acted) or 'none'}; ours {spread([r.start for r in runs])} "
         "(incl. the 1 s stays-up rule)"),
        (f"stop {n} tasks, CLI (median of {len(runs)})", secs(stop), secs(floor_stop),
         f"{stop / floor_stop:.1f}x", f"<= {stop_goal:g} s" if stop_goal else "-",
         f"{verdict(stop <= stop_goal and left == 0) if stop_goal else '-'}; {stopped}/{n} "
         f"stopped; {left} task processes left; ours {spread([r.stop for r in runs])}"),
    ]  # fmt: skip
    calls = [s for r in runs for s in r.status]
    if calls:
        ours_ms = median_ms(calls)
        raw_ms = median_ms([s for r in runs for s in r.raw])
        rows.append(
            (f"status of {n} tasks, stdio MCP tool call (median of {len(calls)})",
             f"{ours_ms:.0f} ms", f"list-panes {raw_ms:.0f} ms", f"{ours_ms / raw_ms:.1f}x",
             f"<= {STATUS_GOAL_S * 1000:.0f} ms",
             f"{verdict(ours_ms <= STATUS_GOAL_S * 1000)}; max {max(calls) * 1000:.0f} ms"),
        )  # fmt: skip
    return rows


def main(argv: list[str]) -> int:
    rounds = int(argv[0]) if argv else ROUNDS
    runs: dict[int, list[Ours]] = {n: [] for n in SIZES}
    floors: dict[int, list[tuple[float, float]]] = {n: [] for n in SIZES}
    with Sandbox("many") as sb:
        for r in range(rounds):
            for n in SIZES:
                floors[n].append(floor(sb, n, f"floor{n}r{r}"))
                runs[n].append(ours(sb, n, f"many{n}r{r}", status=n == SIZES[-1]))
                print(f"  round {r + 1}, {n} tasks: start {runs[n][-1].start:.2f} s "
                      f"(floor {floors[n][-1][0]:.2f} s), stop {runs[n][-1].stop:.2f} s "
                      f"(floor {floors[n][-1][1]:.2f} s)", flush=True)  # fmt: skip
    rows = [HEADER]
    for n in SIZES:
        rows += rows_for(n, runs[n], floors[n])
    print_table(rows)
    print(
        "floor: bare tmux, the same windows (remain-on-exit, pipe-pane to cat) made in command "
        "sequences until all run / C-c typed into each until all dead; same run, same load"
    )
    print(machine_line())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
