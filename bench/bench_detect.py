"""Crash detection (issue 15): kill -9 of a task -> the monitor's `exited` event, against the
kernel's own notice (a pidfd of the same kind of process, in this process) and the 0.25 s pid
polling the monitor used before, both measured in the same run.

Run: .venv/bin/python bench/bench_detect.py [ROUNDS]   (default 30; about a minute). A private
tmux server and state folder in one temp folder, removed at the end.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

from bench_monitor import (
    event_time,
    first_event,
    has_event,
    leased_to,
    start_monitor,
    start_ours,
)
from bench_supervisor import Sandbox, median, ours_cli, report_goal, verdict, wait_until

TASKS = 10
OLD_POLL_S = 0.25
CONFIG = 'name = "detect"\n' + "".join(
    f'[tasks.d{i}]\ncommand = "exec sleep 100000"\nrestart_backoff = 0\n' for i in range(TASKS)
)


def p90(values: list[float]) -> float:
    """The 90th percentile."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]


def kernel_notice() -> float:
    """Seconds from SIGKILL to a pidfd saying so: what no supervisor can beat."""
    child = subprocess.Popen(["sleep", "100000"])
    fd = os.pidfd_open(child.pid)
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    killed = time.perf_counter()
    os.kill(child.pid, signal.SIGKILL)
    poller.poll()
    took = time.perf_counter() - killed
    os.close(fd)
    child.wait()
    return took


def old_polling(phase: float) -> float:
    """Seconds from SIGKILL to the next tick of a 0.25 s pid poll (the monitor before pidfds)."""
    child = subprocess.Popen(["sleep", "100000"])
    ticks = time.perf_counter()
    time.sleep(phase)  # where in the poll period the crash falls
    killed = time.perf_counter()
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    time.sleep(max(0.0, ticks + OLD_POLL_S - time.perf_counter()))
    return time.perf_counter() - killed


def task_pid(project: str, task: str, env: dict[str, str]) -> int:
    """The pane pid of a task, from `taskmux status --json`."""
    out = subprocess.run(
        [*ours_cli(), "--project", project, "--json", "status"],
        capture_output=True, text=True, env=env, check=True,
    ).stdout  # fmt: skip
    return int(next(t["pid"] for t in json.loads(out)["tasks"] if t["name"] == task))


async def notification_latencies(project: str, env: dict[str, str], rounds: int) -> list[float]:
    """Seconds from SIGKILL to a stdio MCP client receiving the `exited` notification."""
    from mcp import Client
    from mcp.client.stdio import StdioServerParameters

    heard: list[tuple[float, dict[str, object]]] = []

    async def on_log(params: object) -> None:
        data = getattr(params, "data", None)
        if isinstance(data, dict):
            heard.append((time.time(), data))

    server = StdioServerParameters(
        command=str(Path(sys.executable).with_name("taskmux-mcp")), args=["--project", project],
        env=env, cwd=project,
    )  # fmt: skip
    latencies = []
    async with Client(server, mode="legacy", logging_callback=on_log) as client:
        for n in range(rounds):
            task = f"d{n % TASKS}"
            pid = None
            while pid is None:
                found = await client.call_tool("status", {"tasks": [task]})
                assert found.structured_content is not None
                pid = found.structured_content["tasks"][0]["pid"]
                await asyncio.sleep(0.3)  # a settled run
            killed = time.time()
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                times = [t for t, d in heard if d.get("event") == "exited" and d.get("task") == task
                         and t >= killed]  # fmt: skip
                if times:
                    latencies.append(times[0] - killed)
                    break
                await asyncio.sleep(0.002)
            else:
                raise RuntimeError(f"no exited notification for {task}")
    return latencies


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 30
    with Sandbox("detect") as sb:
        project, env, folder = start_ours(sb, "detect", CONFIG, "detect")
        monitor = start_monitor(sb, project, env, "detect")
        if not wait_until(functools.partial(leased_to, folder, monitor.pid), 20):
            raise RuntimeError("the monitor did not lead")
        ours, kernel, polled = [], [], []
        for n in range(rounds):
            task = f"d{n % TASKS}"
            pid = task_pid(str(project), task, env)
            time.sleep(0.3)  # a settled run
            killed = time.time()
            os.kill(pid, signal.SIGKILL)
            if not wait_until(functools.partial(has_event, folder, "exited", task, killed), 10):
                raise RuntimeError(f"no exited event for {task}")
            event = first_event(folder, "exited", task, killed)
            assert event is not None
            ours.append(event_time(event) - killed)
            wait_until(functools.partial(has_event, folder, "restarted", task, killed), 10)
            kernel.append(kernel_notice())
            polled.append(old_polling((n * 0.37) % OLD_POLL_S))
        told = asyncio.run(notification_latencies(str(project), env, rounds))
        monitor.terminate()
    base = median(kernel)
    print(f"crash -> monitor knows (`exited` event), {rounds} kills of {TASKS} tasks, 2 cores")
    print(f"{'':34}{'median':>10}{'p90':>10}{'max':>10}")
    for label, values in (
        ("taskmux monitor (pidfd + epoll)", ours),
        ("-> stdio MCP client notified", told),
        ("kernel notice (baseline)", kernel),
        ("0.25 s pid polling (before)", polled),
    ):
        print(
            f"{label:34}{median(values) * 1000:>8.1f}ms{p90(values) * 1000:>8.1f}ms"
            f"{max(values) * 1000:>8.1f}ms"
        )
    print(f"ratio taskmux / kernel (median): {median(ours) / base:.0f}x; goal: <= 20 ms median")
    print(f"ratio before / taskmux (median): {median(polled) / median(ours):.1f}x faster now")
    print(f"MCP notification (median): {median(told) * 1000:.1f} ms; goal: <= 50 ms")
    baseline = (f"kernel notice {base * 1000:.1f} ms; 0.25 s polling "
                f"{median(polled) * 1000:.0f} ms")  # fmt: skip
    report_goal("detect", f"{median(ours) * 1000:.1f} ms", baseline, verdict(median(ours) <= 0.02))
    report_goal("notify", f"{median(told) * 1000:.1f} ms", baseline, verdict(median(told) <= 0.05))


if __name__ == "__main__":
    main()
