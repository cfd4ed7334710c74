"""Memory of taskmux's own processes with 30 tasks beside supervisord's and pm2's daemons (issue
15), and where ours goes: PSS of the tmux server, the log writers, the hosted monitor and one
stdio MCP server (taskmux-mcp), each split into private and shared memory.

Two fleets, one after the other, the same under each tool: bench_peers' 30 quiet tasks (each
stamps its birth, then sleeps), and 30 tasks that first print 5,000 lines of 80 bytes (so that
tmux's scrollback is full), then sleep.

Run: .venv/bin/python bench/bench_memory.py   (about a minute; peers installed as bench_peers
does it, cached).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import psutil
from bench_peers import (
    FLEET,
    STAMPED,
    TOOLS,
    Peers,
    Task,
    load,
    prepared_peers,
    pss_mib,
    running_fleets,
)
from bench_supervisor import Sandbox, print_table

CHATTY = "sh -c 'seq -f %079g 1 5000; exec sleep 1000'"
FIELDS = ("Pss", "Private_Clean", "Private_Dirty", "Shared_Clean", "Shared_Dirty")


def rollup(pid: int) -> dict[str, int]:
    """A process's smaps_rollup fields in KiB (empty when it is gone)."""
    out: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in FIELDS:
                out[key] = int(rest.split()[0])
    return out


def kind(pid: int) -> str:
    """What one of our processes is: tmux server, log writer, monitor, MCP server."""
    with contextlib.suppress(psutil.Error):
        proc = psutil.Process(pid)
        cmd = " ".join(proc.cmdline())
        if proc.name().startswith("tmux"):
            return "tmux server"
        if "logwriter" in cmd:
            return "log writers"
        if "--hosted" in cmd:
            return "hosted monitor"
        if "taskmux-mcp" in cmd:
            return "MCP server"
        return f"other: {cmd[:50]}"
    return "gone"


def breakdown(pids: Sequence[int]) -> dict[str, tuple[int, dict[str, int]]]:
    """Per kind of process: how many, and their summed smaps_rollup fields."""
    out: dict[str, tuple[int, dict[str, int]]] = {}
    for pid in pids:
        what = kind(pid)
        count, sums = out.get(what, (0, dict.fromkeys(FIELDS, 0)))
        for key, kb in rollup(pid).items():
            sums[key] += kb
        out[what] = (count + 1, sums)
    return out


def mib(kb: int) -> str:
    """KiB as MiB, one decimal."""
    return f"{kb / 1024:.1f}"


def fleet_of(command: str) -> list[Task]:
    """30 tasks running a command (formatted with the task's name)."""
    return [Task(f"t{i}", command.format(name=f"t{i}")) for i in range(FLEET)]


def measure(sb: Sandbox, peers: Peers, label: str, command: str) -> dict[str, float]:
    """Start 30 tasks under each tool, wait until they sleep (the chatty ones have printed),
    then sum each tool's PSS and list ours by kind of process."""
    fleets, ours = running_fleets(sb, peers, label, fleet_of(command), timeout=60)
    ours.mcp_tool("status", {})  # the server has answered a call, as an agent's would
    time.sleep(3)  # past start-up work (the MCP server's and the hosted monitor's)
    totals: dict[str, float] = {}
    for tool, fleet in fleets.items():
        pids = fleet.own_pids()
        totals[tool] = pss_mib(pids)
        if tool == "taskmux":
            rows = [("process", "n", *(f"{f} MiB" for f in FIELDS))]
            for what, (count, sums) in sorted(breakdown(pids).items()):
                rows.append((what, str(count), *(mib(sums[f]) for f in FIELDS)))
            print(f"\n{label}: taskmux's own processes")
            print_table(rows)
    for fleet in fleets.values():
        fleet.close()
    return totals


def main() -> int:
    peers = prepared_peers()
    before = load()
    began = time.monotonic()
    results: list[tuple[str, dict[str, float]]] = []
    with Sandbox("memory") as sb:
        for label, command in (("quiet", STAMPED), ("chatty", CHATTY)):
            results.append((label, measure(sb, peers, label, command)))
    rows = [("30 tasks, PSS MiB", *TOOLS, "ours / pm2", "ours / supervisord")]
    for label, totals in results:
        ours, sv, pm2 = (totals.get(t) for t in TOOLS)
        rows.append((
            label, *(f"{v:.1f}" if v is not None else "-" for v in (ours, sv, pm2)),
            f"{ours / pm2:.2f}x" if ours and pm2 else "-",
            f"{ours / sv:.2f}x" if ours and sv else "-",
        ))  # fmt: skip
    print()
    print_table(rows)
    print(
        f"load before {before}, after {load()} (1/5/15 min); {os.cpu_count()} cpus; "
        f"{time.monotonic() - began:.0f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
