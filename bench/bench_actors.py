"""Many actors on one project (issue 10): 4 MCP clients and 2 CLIs starting, stopping and restarting
the same tasks at random for a while, with every monitor running (each MCP server's and the hosted
one), counting what must never happen.

Run: .venv/bin/python bench/bench_actors.py [SECONDS]   (default 60; about a minute more to set
up and settle). Private tmux server and state folder; nothing of the user's is touched.

Counted (0 is the only good figure for each):
- duplicate process trees: a sample (every 0.1 s) in which a task has more than one process tree
  (a tree's root is a process carrying the task's marker whose parent does not carry it);
- spurious exits: `exited` events (the monitor saw a run end that no actor stopped) and policy
  restarts (`restart_scheduled`, `restarted`): these tasks never end on their own;
- lost manual stops: a task found running 5 s after every actor stopped it for the last time,
  and any launch caused by the policy (a revived stop would be one).
Also printed: actions done, their failures by reason, and the slowest action.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
TASKS = ("tough", "plain", "web")
CONFIG = """
name = "actors"
[tasks.tough]
command = "trap '' HUP INT; sleep 100000 & exec sleep 100001"
stop_grace_period = 0.5
restart_backoff = 0
[tasks.plain]
command = "sleep 100000"
restart_policy = "always"
restart_backoff = 0
[tasks.web]
command = "sleep 100000"
depends_on = ["plain"]
restart_backoff = 0
"""


def tree_counts(key: str) -> dict[str, int]:
    """Process trees per task: processes with the task's marker whose parent lacks it."""
    markers: dict[int, str] = {}
    parents: dict[int, int] = {}
    for proc in psutil.process_iter(["pid", "ppid"]):
        try:
            marker = proc.environ().get("TASKMUX_TASK_ID", "")
            if marker.startswith(key + "/") and proc.status() != psutil.STATUS_ZOMBIE:
                markers[proc.pid] = marker
                parents[proc.pid] = proc.info["ppid"]
        except (psutil.Error, OSError):
            continue
    counts: dict[str, int] = collections.Counter()
    for pid, marker in markers.items():
        if markers.get(parents[pid]) != marker:
            counts[marker.split("/", 1)[1]] += 1
    return counts


async def mcp_actor(env: dict[str, str], root: Path, until: float, seed: int, log: list) -> None:
    """One agent: a real stdio MCP client calling start/stop/restart at random."""
    from mcp import Client
    from mcp.client.stdio import StdioServerParameters

    rng = random.Random(seed)
    params = StdioServerParameters(
        command=str(BIN / "taskmux-mcp"), args=["--project", str(root)], env=env, cwd=str(root)
    )
    async with Client(params, mode="legacy") as client:
        while time.monotonic() < until:
            action = rng.choice(["start", "stop", "restart", "start", "stop"])
            task = rng.choice(TASKS)
            began = time.monotonic()
            args: dict[str, Any] = {"tasks": [task]}
            if action != "stop":
                args["timeout"] = 30
            result = await client.call_tool(action, args)
            text = result.content[0].text if result.content else ""
            ok = not result.is_error and json.loads(text).get("ok", False)
            log.append(("mcp", action, task, ok, time.monotonic() - began, "" if ok else text))
            await asyncio.sleep(rng.uniform(0, 0.3))


async def cli_actor(env: dict[str, str], root: Path, until: float, seed: int, log: list) -> None:
    """One human at a terminal: the CLI, a process per action."""
    rng = random.Random(seed)
    while time.monotonic() < until:
        action = rng.choice(["start", "stop", "restart"])
        task = rng.choice(TASKS)
        began = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            str(BIN / "taskmux"), "--project", str(root), "--json", action, task,
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        _, err = await proc.communicate()
        ok = proc.returncode == 0
        log.append(("cli", action, task, ok, time.monotonic() - began, "" if ok else err.decode()))
        await asyncio.sleep(rng.uniform(0, 0.3))


async def sampler(key: str, until: float, bad: list) -> None:
    """Look for duplicate process trees every 0.1 s."""
    while time.monotonic() < until:
        counts = await asyncio.to_thread(tree_counts, key)
        for task in TASKS:
            if counts.get(task, 0) > 1:
                bad.append((round(time.monotonic(), 2), task, counts[task]))
        await asyncio.sleep(0.1)


def main() -> int:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 60.0
    work = Path(tempfile.mkdtemp(prefix="taskmux-actors-"))
    root = work / "proj"
    root.mkdir()
    (root / "taskmux.toml").write_text(textwrap.dedent(CONFIG))
    tmpdir = work / "tmux"
    tmpdir.mkdir()
    socket = f"actors{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "TMUX_TMPDIR": str(tmpdir),
        "TASKMUX_STATE_DIR": str(work / "state"),
        "TASKMUX_TMUX_SOCKET": socket,
        "HOME": str(work),
        "TASKMUX_LOG_LEVEL": "WARNING",
    }
    env.pop("TMUX", None)
    os.environ.update({k: env[k] for k in ("TMUX_TMPDIR", "TASKMUX_STATE_DIR", "HOME")})
    sys.path.insert(0, str(REPO))
    from taskmux_mcp.project import Project

    project = Project.open(project=root, socket_name=socket, environ=env, hosted_monitor=False)
    log: list[tuple[Any, ...]] = []
    duplicates: list[tuple[Any, ...]] = []
    subprocess.run(
        [str(BIN / "taskmux"), "--project", str(root), "start"],
        env=env,
        check=True,
        capture_output=True,
    )  # fmt: skip  (this one also starts the hosted monitor)

    async def everyone() -> None:
        until = time.monotonic() + seconds
        await asyncio.gather(
            *(mcp_actor(env, root, until, seed, log) for seed in range(4)),
            *(cli_actor(env, root, until, 100 + seed, log) for seed in range(2)),
            sampler(project.key, until + 1, duplicates),
        )

    began = time.monotonic()
    try:
        asyncio.run(everyone())
        stop = subprocess.run([str(BIN / "taskmux"), "--project", str(root), "stop"],
                              env=env, check=False, capture_output=True, text=True)  # fmt: skip
        time.sleep(5)  # the figure itself: does anything come back within 5 s?
        status = project.status_sync()
        revived = [t.name for t in status.tasks if t.pid is not None]
        events = project.events_sync(limit=10_000).events
        kinds = collections.Counter(e.type for e in events)
        policy_launches = sum(
            1 for e in events if e.type in ("started", "restarted") and e.cause == "policy"
        )
        spurious = kinds["exited"] + kinds["restart_scheduled"] + kinds["restarted"]
        failures = collections.Counter(
            (face, action, reason.strip().splitlines()[0][:90] if reason else "not ok")
            for face, action, _task, ok, _s, reason in log
            if not ok
        )
        slowest = max(log, key=lambda row: row[4]) if log else None
        print(f"actors: 4 MCP clients (stdio) + 2 CLIs, {seconds:g} s, all monitors running")
        print(f"  actions done: {len(log)} ({sum(1 for r in log if r[3])} ok)")
        print(f"  duplicate process trees: {len(duplicates)} samples {duplicates[:5]}")
        print(f"  spurious exits: {spurious} (exited {kinds['exited']}, restart_scheduled "
              f"{kinds['restart_scheduled']}, restarted {kinds['restarted']})")  # fmt: skip
        print(f"  lost manual stops: {len(revived)} running after the final stop {revived}, "
              f"{policy_launches} launches by the policy")  # fmt: skip
        print(f"  final stop exit status: {stop.returncode}")
        if slowest:
            print(f"  slowest action: {slowest[0]} {slowest[1]} {slowest[2]} {slowest[4]:.2f}s")
        for (face, action, reason), n in failures.most_common(8):
            print(f"  not ok x{n}: {face} {action}: {reason}")
        print(f"  events: {dict(kinds)}")
        print(f"  wall time {time.monotonic() - began:.0f}s")
        bad = duplicates or spurious or revived or policy_launches
        return 1 if bad else 0
    finally:
        tmux = ["tmux", "-L", socket, "kill-server"]
        subprocess.run(tmux, env=env, capture_output=True, check=False)
        for proc in psutil.process_iter(["pid"]):
            try:
                if proc.environ().get("TASKMUX_TASK_ID", "").startswith(project.key + "/"):
                    proc.kill()
            except (psutil.Error, OSError):
                continue
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
