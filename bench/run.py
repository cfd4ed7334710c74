"""Run every bench/bench_*.py (or those named) one after another and print their tables.

Run: .venv/bin/python bench/run.py [NAME...]   (`make bench`; NAME is e.g. `monitor` or
`bench_monitor.py`). Each bench is a separate process; none asserts on timings. Exit status 1
when a bench crashed or timed out.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TIMEOUT_S = 15 * 60


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


def main(argv: list[str]) -> int:
    failed = []
    began = time.monotonic()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
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
    print(
        f"{len(failed)} of the benches failed: {', '.join(failed)}" if failed else "all ran", end=""
    )
    print(f" ({total:.0f} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
