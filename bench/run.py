"""Run every bench/bench_*.py (or those named) one after another and print their tables.

Run: .venv/bin/python bench/run.py [NAME...]   (`make bench`; NAME is e.g. `monitor` or
`bench_monitor.py`). Each bench is a separate process; none asserts on timings. Exit status 1
when a bench crashed or timed out.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_supervisor import byte_compile_ours, print_table

HERE = Path(__file__).resolve().parent
TIMEOUT_S = 15 * 60
# Issue 15's goals, in its order: key (as benches report it), figure, goal, which bench measures.
GOALS = (
    ("detect", "crash -> monitor knows (kill -9), median", "<= 20 ms", "detect"),
    ("notify", "crash -> MCP notification sent, median", "<= 50 ms", "detect"),
    ("start100", "start 100 independent tasks, CLI, until all running", "<= 2.5 s", "peers"),
    ("start500", "start 500 independent tasks", "<= 8 s, no policy action", "peers"),
    ("stop500", "stop of 500", "<= 5 s", "peers"),
    ("status500", "status of 500 via MCP", "<= 0.3 s", "peers"),
    ("status30", "CLI status, 30 tasks", "faster than supervisorctl", "peers"),
    ("memory", "memory of tmux, writers, hosted monitor, 30 tasks (PSS)", "<= pm2's", "peers"),
    ("restart", "first crash -> new process (1 s first delay)", "<= 1.05 s", "peers"),
    ("chain", "3-task chain, each healthy 1 s after start", "<= 3.2 s", "supervisor"),
    ("idle_cpu", "idle CPU of tmux, writers, hosted monitor, 30 tasks", "<= 0.1 %", "peers"),
    ("stop1", "stop of one task that obeys SIGINT, CLI", "<= supervisorctl stop", "peers"),
    ("output", "output rate of seq 1 3000000 vs supervisord", "<= 5x", "peers"),
    ("suite", "test suite on this machine", "<= 4 min", ""),
)


def selected(names: list[str]) -> list[Path]:
    """The bench scripts to run, in name order."""
    scripts = sorted(HERE.glob("bench_*.py"))
    if not names:
        return scripts
    wanted = {n.removesuffix(".py").removeprefix("bench_") for n in names}
    unknown = wanted - {s.stem.removeprefix("bench_") for s in scripts}
    if unknown:
        known = ", ".join(s.stem.removeprefix("bench_") for s in scripts)
        raise SystemExit(f"no bench named {', '.join(sorted(unknown))} (have: {known})")
    return [s for s in scripts if s.stem.removeprefix("bench_") in wanted]


def goals_table(reported: Path) -> list[tuple[str, ...]]:
    """Issue 15's goals with what the benches of this run reported for each."""
    got: dict[str, dict[str, str]] = {}
    if reported.exists():
        for line in reported.read_text().splitlines():
            row = json.loads(line)
            got[row["key"]] = row
    rows = [("goal (issue 15)", "taskmux", "baseline, same run", "goal", "verdict")]
    for key, figure, goal, bench in GOALS:
        if key in got:
            row = got[key]
            rows.append((figure, row["ours"], row["baseline"], goal, row["verdict"]))
        else:
            why = f"bench_{bench}.py not run" if bench else "not a bench: time `make test`"
            rows.append((figure, "-", why, goal, "-"))
    return rows


def main(argv: list[str]) -> int:
    failed = []
    began = time.monotonic()
    byte_compile_ours()
    reported = Path(tempfile.mkstemp(prefix="taskmux-bench-goals-", suffix=".jsonl")[1])
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TASKMUX_BENCH_GOALS": str(reported)}
    for script in selected(argv):
        print(f"== {script.name}", flush=True)
        started = time.monotonic()
        proc = subprocess.Popen([sys.executable, str(script)], cwd=HERE.parent, env=env)
        try:
            code = proc.wait(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            print(f"{script.name}: timed out after {TIMEOUT_S} s", flush=True)
            proc.send_signal(signal.SIGINT)  # its sandbox cleans up on KeyboardInterrupt
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            code = -1
        took = time.monotonic() - started
        print(f"-- {script.name}: {'ok' if code == 0 else f'FAILED ({code})'}, {took:.0f} s\n")
        if code != 0:
            failed.append(script.name)
    total = time.monotonic() - began
    print(f"== goals of issue 15 (load {' '.join(f'{x:.2f}' for x in os.getloadavg())})")
    print_table(goals_table(reported))
    reported.unlink(missing_ok=True)
    print()
    print(
        f"{len(failed)} of the benches failed: {', '.join(failed)}" if failed else "all ran", end=""
    )
    print(f" ({total:.0f} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
