"""Does the end of a task's output reach its log? (issue 10, failure 10.)

Each round runs `seq 1 20000` as a one-shot task through taskmux (start waits for its exit and
builds the verdict after the log flush barrier) and checks that the log ends with 20000 and
holds every line; the baseline runs the same command in a bare tmux window with
`pipe-pane 'cat > FILE'` on the same server, in the same run. A loss in the baseline is tmux's
own (it drops what the pane wrote last when the process exits); a loss only in taskmux is ours.

Run: .venv/bin/python bench/bench_log_tail.py [ROUNDS]   (default 40; private tmux server).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import anyio

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from taskmux_mcp.project import Project  # noqa: E402

TOTAL = 20_000


def tmux(socket: str, *args: str) -> str:
    """One tmux command on the private server."""
    done = subprocess.run(["tmux", "-L", socket, *args], capture_output=True, text=True,
                          check=False)  # fmt: skip
    return done.stdout


def baseline_round(socket: str, folder: Path, index: int) -> bool:
    """seq in a bare window piped to cat: whether the file got every line."""
    out = folder / f"raw-{index}.txt"
    window = f"raw{index}"
    tmux(socket, "new-window", "-d", "-n", window, "sleep 0.3; exec seq 1 20000", ";",
         "set-option", "-w", "-t", f":{window}", "remain-on-exit", "on", ";",
         "pipe-pane", "-t", f":{window}", f"cat > {out}")  # fmt: skip
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if tmux(socket, "display", "-p", "-t", f":{window}", "#{pane_dead}").strip() == "1":
            break
        time.sleep(0.02)
    tmux(socket, "kill-window", "-t", f":{window}")  # closes the pipe: cat writes out and exits
    time.sleep(0.2)
    lines = out.read_text().split() if out.exists() else []
    return lines[-1:] == [str(TOTAL)] and len(lines) == TOTAL


def complete(project: Project) -> bool:
    """Whether the current run's log holds 1..TOTAL (its last lines, and three probes)."""
    tail = 5000  # the most one read returns
    lines = [line.text for line in project.logs_sync(["count"], lines=tail, since="start").lines]
    if lines != [str(n) for n in range(TOTAL - tail + 1, TOTAL + 1)]:
        return False
    found = project.grep_sync(r"^(1|10000|15000)$", ["count"], context=0, since="start")
    return [m.line for m in found.matches] == ["1", "10000", "15000"]


def main() -> int:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 40
    folder = Path(tempfile.mkdtemp(prefix="logtail"))
    socket = f"bench{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "TASKMUX_STATE_DIR": str(folder / "state"), "TASKMUX_HOSTED_MONITOR": "0"}
    (folder / "taskmux.toml").write_text(
        f'name = "tail"\n[tasks.count]\ncommand = "seq 1 {TOTAL}"\nrestart_policy = "no"\n'
    )
    project = Project(folder / "taskmux.toml", socket_name=socket, environ=env)
    tmux(socket, "new-session", "-d", "-s", "base", "sleep 100000")
    ours_lost = base_lost = 0
    try:
        for index in range(rounds):
            verdict = anyio.run(lambda: project.start(["count"]))
            if not (verdict.ok and complete(project)):
                ours_lost += 1
            if not baseline_round(socket, folder, index):
                base_lost += 1
    finally:
        tmux(socket, "kill-server")
    print(f"rounds: {rounds} of `seq 1 {TOTAL}`")
    print(f"  taskmux: tail lost in {ours_lost} ({ours_lost / rounds:.1%})")
    print(f"  bare tmux pipe-pane to cat (baseline): tail lost in {base_lost} "
          f"({base_lost / rounds:.1%})")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
