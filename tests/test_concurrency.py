"""Several actors at once on real tmux (issue 10, failures 1-3): monitors, CLIs and an MCP server.

Failure 1, a false crash after a manual start, a CLI stop undone, a deaf standby monitor:
  test_stop_start_cycles_with_a_monitor_are_never_a_crash,
  test_a_cli_stop_is_not_undone_by_either_of_two_monitors,
  test_a_standby_monitor_ends_promptly_on_sigterm.
Failure 2, duplicate trees from concurrent starts:
  test_concurrent_starts_of_a_sighup_proof_task_leave_one_tree,
  test_concurrent_starts_of_a_plain_task_launch_it_once.
Failure 3, a frozen leader, removed lock folders, a suspended lock holder:
  test_a_frozen_leader_is_replaced_and_does_not_act_when_it_wakes,
  test_removing_the_lock_folders_under_two_monitors_gives_one_restart,
  test_a_lock_held_by_a_suspended_process_does_not_freeze_mcp,
  test_a_stop_refused_by_a_busy_record_lock_names_its_holder / _keeps_the_restart_policy.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import psutil
import pytest
from mcp import Client
from support import (
    Workspace,
    end_processes,
    events_of,
    marked,
    run_monitor,
    slot_for,
    status_of,
    wait_until,
)

from taskmux_mcp import records
from taskmux_mcp.lease import LEASE_TTL_S
from taskmux_mcp.locks import flock_holders, is_locked
from taskmux_mcp.mcp_server import build_server
from taskmux_mcp.models import TaskState
from taskmux_mcp.project import MONITOR_WINDOW
from taskmux_mcp.project import Project as Facade

BIN = Path(sys.executable).parent
CLIS = 8
SURVIVES_HUP = "trap '' HUP INT; sleep 100000 & exec sleep 100001"
CANARY = """
[tasks.canary]
command = "sleep 0.2; exit 1"
restart_backoff = 0
max_restarts = 0
auto_start = false
"""


@pytest.fixture
def procs(project: Workspace) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes (monitors, CLIs, lock holders) started by a test, ended afterwards (resumed
    first: a suspended process would not act on SIGTERM); no hosted monitor unless asked."""
    started: list[subprocess.Popen[bytes]] = []
    project.env["TASKMUX_HOSTED_MONITOR"] = "0"
    yield started
    for proc in started:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGCONT)
    end_processes(started)


def monitor_popen(project: Workspace, procs: list[subprocess.Popen[bytes]]) -> Path:
    """Start `taskmux monitor` with its stderr kept in a file; returns that file."""
    log = project.root.parent / f"monitor-{len(procs)}.log"
    with log.open("wb") as err:
        procs.append(
            subprocess.Popen(
                [str(BIN / "taskmux"), "--project", str(project.root), "monitor"],
                env=project.env,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        )
    return log


def handles_sigterm(pid: int) -> bool:
    """Whether the process has a handler installed for SIGTERM (it is past its startup)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    caught = next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:"))
    return bool(int(caught, 16) & (1 << (signal.SIGTERM - 1)))


def standby(project: Workspace, procs: list[subprocess.Popen[bytes]], sup: Facade) -> int:
    """Start a second monitor while another leads; wait until it is in its loop."""
    leader = sup.monitor_info().pid
    monitor_popen(project, procs)
    proc = procs[-1]
    wait_until(lambda: handles_sigterm(proc.pid), timeout=15)
    assert proc.poll() is None and sup.monitor_info().pid == leader
    return proc.pid


def clis(project: Workspace, procs: list[subprocess.Popen[bytes]], *args: str) -> list[int]:
    """Run CLIS `taskmux` processes with the same arguments at once; their exit statuses."""
    batch = [
        subprocess.Popen(
            [str(BIN / "taskmux"), "--project", str(project.root), *args],
            env=project.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(CLIS)
    ]
    procs.extend(batch)
    codes = []
    for proc in batch:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, (args, out, err)
        codes.append(proc.returncode)
    return codes


def canary_passes(sup: Facade, passes: int) -> None:
    """Wait until the acting monitor restarted the crash-looping canary `passes` more times
    (started here once): proof that it looked at every task again since this call."""
    base = sup.records.get("canary").run
    if base == 0:
        anyio.run(lambda: sup.start(["canary"], wait=False))
        base = 1
    wait_until(lambda: sup.records.get("canary").run >= base + passes, timeout=20)


def hosted_monitor_ready(sup: Facade) -> bool:
    """Whether the hosted monitor (the project's `_monitor` window) runs and is in its loop."""
    pane = sup.backend.snapshot_sync().alive(MONITOR_WINDOW)
    if pane is None or pane.pid is None:
        return False
    with contextlib.suppress(psutil.Error):
        tree = [pane.pid, *(p.pid for p in psutil.Process(pane.pid).children(recursive=True))]
        return any(handles_sigterm(pid) for pid in tree)
    return False


def policy_exits(sup: Facade, task: str) -> list[dict[str, object]]:
    """`exited` events the monitor recorded for a task (an exit it took for a crash)."""
    return [e for e in events_of(sup, "exited", task) if e["_cause"] == "policy"]


def cmdlines(pids: list[int]) -> list[str]:
    """What the processes run (for failure messages)."""
    found = []
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            found.append(" ".join(psutil.Process(pid).cmdline()))
    return found


def alive_pid(sup: Facade, task: str) -> int:
    """The pid status reports for a running task (which must be alive)."""
    status = status_of(sup, task)
    assert status.state is TaskState.RUNNING and status.pid is not None, status
    assert psutil.pid_exists(status.pid)
    return status.pid


def one_tree(sup: Facade, task: str) -> list[int]:
    """Assert the task runs as exactly one process tree, rooted at the pid status reports (a
    plain command is `sh -c` and its child); its pids."""
    pid = alive_pid(sup, task)
    tree = sorted([pid, *(p.pid for p in psutil.Process(pid).children(recursive=True))])
    pids = marked(sup, task)
    assert pids == tree, (cmdlines(pids), cmdlines(tree))
    return pids


# ------------------------------------------------------------------ 1: false crashes, undone stops


def test_stop_start_cycles_with_a_monitor_are_never_a_crash(
    project: Workspace, procs: list[subprocess.Popen[bytes]]
) -> None:
    project.write(
        """
        [tasks.api]
        command = "sleep 100000"
        restart_policy = "always"
        restart_backoff = 0
        stop_grace_period = 1
        """
        + CANARY
    )
    sup = project.open()
    run_monitor(project, procs, sup)
    cycles = 30
    assert anyio.run(lambda: sup.start(["api"], wait=False)).ok
    for _ in range(cycles):
        stopped = anyio.run(lambda: sup.stop(["api"]))
        assert stopped.ok and stopped.tasks[0].action == "stopped", stopped
        started = anyio.run(lambda: sup.start(["api"], wait=False))
        assert started.ok and started.tasks[0].action == "started", started
    canary_passes(sup, 1)
    assert policy_exits(sup, "api") == []
    assert events_of(sup, "restarted", "api") == []
    assert events_of(sup, "restart_scheduled", "api") == []
    assert len(events_of(sup, "started", "api")) == cycles + 1
    record = sup.records.get("api")
    assert record.restarts == 0 and record.total_restarts == 0
    assert record.run == cycles + 1
    one_tree(sup, "api")


def test_a_cli_stop_is_not_undone_by_either_of_two_monitors(
    project: Workspace, procs: list[subprocess.Popen[bytes]]
) -> None:
    project.write(
        """
        [tasks.api]
        command = "sleep 100000"
        restart_policy = "always"
        restart_backoff = 0
        stop_grace_period = 1
        """
        + CANARY
    )
    sup = project.open(hosted_monitor=True)
    foreground = run_monitor(project, procs, sup)
    starts = 0

    def start_then_stop_from_the_cli() -> None:
        nonlocal starts
        assert anyio.run(lambda: sup.start(["api"], wait=False)).ok
        starts += 1
        done = project.cli("stop", "api")
        assert done.returncode == 0, done.stderr
        assert status_of(sup, "api").state is TaskState.STOPPED

    start_then_stop_from_the_cli()
    # The hosted monitor (in the project's tmux session) stands by behind the foreground one.
    wait_until(lambda: hosted_monitor_ready(sup), timeout=15)
    assert sup.monitor_info().pid == foreground
    canary_passes(sup, 2)
    start_then_stop_from_the_cli()
    canary_passes(sup, 2)
    # Hand the lead to the hosted monitor; a new foreground one stands by.
    procs[0].send_signal(signal.SIGTERM)
    procs[0].wait(timeout=5)
    wait_until(lambda: sup.monitor_info().host == "tmux", timeout=10)
    standby(project, procs, sup)
    for _ in range(2):
        start_then_stop_from_the_cli()
        canary_passes(sup, 2)
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:  # a revival would show within a pass or two
        assert status_of(sup, "api").state is TaskState.STOPPED
        time.sleep(0.1)
    assert events_of(sup, "restarted", "api") == []
    assert policy_exits(sup, "api") == []
    assert sup.records.get("api").run == starts
    assert sup.records.get("api").manually_stopped


def test_a_standby_monitor_ends_promptly_on_sigterm(
    project: Workspace, procs: list[subprocess.Popen[bytes]]
) -> None:
    project.write(
        """
        [tasks.api]
        command = "sleep 100000"
        """
    )
    sup = project.open()
    leader = run_monitor(project, procs, sup)
    second = standby(project, procs, sup)
    os.kill(second, signal.SIGTERM)
    deadline = time.monotonic() + 2.0
    while procs[-1].poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert procs[-1].poll() == 0, "a standby monitor must exit (status 0) within 2 s of SIGTERM"
    assert sup.monitor_info().pid == leader
    os.kill(leader, signal.SIGTERM)
    procs[0].wait(timeout=2)
    assert procs[0].returncode == 0
    assert not sup.monitor_info().acting


# ------------------------------------------------------------------ 2: concurrent starts


def test_concurrent_starts_of_a_sighup_proof_task_leave_one_tree(
    project: Workspace, procs: list[subprocess.Popen[bytes]]
) -> None:
    project.write(
        f"""
        [tasks.api]
        command = "{SURVIVES_HUP}"
        restart_policy = "always"
        restart_backoff = 0
        stop_grace_period = 0.5
        """
    )
    sup = project.open()
    run_monitor(project, procs, sup)
    clis(project, procs, "start", "api")
    pids = marked(sup, "api")
    assert len(pids) == 2, cmdlines(pids)  # the background sleep and the exec'd one
    assert one_tree(sup, "api") == pids
    assert psutil.Process(alive_pid(sup, "api")).cmdline() == ["sleep", "100001"]
    assert sup.records.get("api").run == 1
    assert len(events_of(sup, "started", "api")) == 1

    clis(project, procs, "restart", "api")
    pids = marked(sup, "api")
    assert len(pids) == 2, cmdlines(pids)  # the background sleep and the exec'd one
    assert one_tree(sup, "api") == pids
    assert psutil.Process(alive_pid(sup, "api")).cmdline() == ["sleep", "100001"]
    assert policy_exits(sup, "api") == []
    assert events_of(sup, "restarted", "api") == []
    record = sup.records.get("api")
    assert record.restarts == 0
    launches = len(events_of(sup, "started", "api")) - 1
    # Restarts asked for while another one was under way count as done by it; the CLIs start
    # over about a second (interpreter start-up), so a few of them still restart on their own.
    print("restart launches:", launches)
    assert 1 <= launches <= CLIS // 2, launches
    assert record.run == 1 + launches
    assert len(events_of(sup, "stopped", "api")) == launches


def test_concurrent_starts_of_a_plain_task_launch_it_once(
    project: Workspace, procs: list[subprocess.Popen[bytes]]
) -> None:
    project.write(
        """
        [tasks.api]
        command = "sleep 100000"
        """
    )
    sup = project.open()
    clis(project, procs, "start", "api")
    one_tree(sup, "api")
    assert len(events_of(sup, "started", "api")) == 1
    assert events_of(sup, "stopped", "api") == [] and events_of(sup, "killed", "api") == []
    assert sup.records.get("api").run == 1


# ------------------------------------------------------------------ 3: frozen or robbed leaders


def frozen_holding_nothing(pid: int, locks: Path) -> bool:
    """SIGSTOP the process; True if it holds none of the project's locks, else resume it."""
    os.kill(pid, signal.SIGSTOP)
    for path in locks.glob("*.lock"):
        with contextlib.suppress(OSError):
            st = path.stat()
            if pid in (flock_holders(st.st_dev, st.st_ino) or []):
                os.kill(pid, signal.SIGCONT)  # frozen mid-action: the test would wait on it
                return False
    return True


def test_a_frozen_leader_is_replaced_and_does_not_act_when_it_wakes(
    project: Workspace, procs: list[subprocess.Popen[bytes]]
) -> None:
    project.write(
        """
        [tasks.api]
        command = "sleep 100000"
        restart_backoff = 0.5
        """
        + CANARY
    )
    sup = project.open()
    first_log = monitor_popen(project, procs)
    wait_until(lambda: sup.monitor_info().pid == procs[0].pid, timeout=15)
    second = standby(project, procs, sup)
    assert anyio.run(lambda: sup.start(["api"], wait=False)).ok
    old = alive_pid(sup, "api")
    leader = sup.monitor_info().pid
    assert leader == procs[0].pid
    wait_until(lambda: frozen_holding_nothing(leader, sup.paths.locks), timeout=10)
    try:
        os.kill(old, signal.SIGKILL)
        began = time.monotonic()
        # TTL for the standby to take over, then the first backoff (0.5 ** 0 = 1 s).
        wait_until(
            lambda: (
                sup.records.get("api").run == 2 and status_of(sup, "api").pid not in (None, old)
            ),
            timeout=LEASE_TTL_S + 8,  # the standby's take-over, then the backoff (1 s)
        )
        took = time.monotonic() - began
        assert sup.monitor_info().pid == second
    finally:
        os.kill(leader, signal.SIGCONT)
    # Once awake, the old leader finds it lost the lead before it acts on anything.
    wait_until(lambda: "no longer leads" in first_log.read_text(errors="replace"), timeout=5)
    canary_passes(sup, 2)
    assert procs[0].poll() is None, "the old leader died instead of standing by"
    assert sup.monitor_info().pid == second
    assert len(events_of(sup, "restarted", "api")) == 1
    assert len(events_of(sup, "exited", "api")) == 1
    assert sup.records.get("api").run == 2
    one_tree(sup, "api")
    assert took >= 1.0, took  # restarted only after the backoff, by the standby


def remove(folder: Path) -> bool:
    """Remove a folder; False when a monitor added a file meanwhile (try again)."""
    try:
        shutil.rmtree(folder)
    except OSError:
        return False
    return True


def test_removing_the_lock_folders_under_two_monitors_gives_one_restart(
    project: Workspace, procs: list[subprocess.Popen[bytes]]
) -> None:
    project.write(
        """
        [tasks.api]
        command = "sleep 100000"
        restart_backoff = 0
        """
        + CANARY
    )
    sup = project.open()
    run_monitor(project, procs, sup)
    standby(project, procs, sup)
    assert anyio.run(lambda: sup.start(["api"], wait=False)).ok
    old = alive_pid(sup, "api")
    for folder in (sup.paths.locks, sup.paths.monitor):
        wait_until(lambda folder=folder: remove(folder), timeout=5, interval=0)
    wait_until(lambda: sup.monitor_info().acting, timeout=LEASE_TTL_S + 2)
    os.kill(old, signal.SIGKILL)
    wait_until(lambda: sup.records.get("api").run >= 2, timeout=10)
    canary_passes(sup, 2)
    assert all(proc.poll() is None for proc in procs)
    assert len(events_of(sup, "restarted", "api")) == 1
    assert len(events_of(sup, "exited", "api")) == 1
    assert sup.records.get("api").run == 2
    one_tree(sup, "api")


# ------------------------------------------------------------------ 3: a frozen lock holder and MCP


@asynccontextmanager
async def mcp_client(project: Workspace) -> AsyncIterator[Client]:
    """An in-memory MCP session against a fresh server for the project."""
    async with Client(build_server(slot_for(project)), mode="legacy") as client:
        yield client


async def timed_status(client: Client, limit: float = 2.0) -> dict[str, Any]:
    """Call `status`, which must answer within limit seconds; its structured content."""
    began = time.monotonic()
    with anyio.fail_after(limit):
        result = await client.call_tool("status", {})
    assert not result.is_error and result.structured_content is not None, result.content
    assert time.monotonic() - began < limit
    return result.structured_content


def state_in(status: dict[str, Any], name: str) -> str:
    """One task's state in a status answer."""
    return str(next(t for t in status["tasks"] if t["name"] == name)["state"])


@pytest.mark.anyio
@pytest.mark.parametrize("lock", ["task-api.lock", "record-api.lock"])
async def test_a_lock_held_by_a_suspended_process_does_not_freeze_mcp(
    project: Workspace, procs: list[subprocess.Popen[bytes]], lock: str
) -> None:
    project.write(
        """
        [tasks.api]
        command = "sleep 100000"
        stop_grace_period = 0.5
        """
    )
    sup = project.open()
    assert (await sup.start(["api"], wait=False)).ok
    path = sup.paths.locks / lock
    holder = subprocess.Popen(
        ["flock", str(path), "sleep", "30"], start_new_session=True, env=project.env
    )
    procs.append(holder)
    with anyio.fail_after(5):
        while not is_locked(path):
            await anyio.sleep(0.02)
    os.killpg(holder.pid, signal.SIGSTOP)
    progress: list[str] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        if message:
            progress.append(message)

    replies: list[types.CallToolResult] = []
    async with mcp_client(project) as client:
        assert state_in(await timed_status(client), "api") == "running"

        async def stop() -> None:
            replies.append(
                await client.call_tool("stop", {"tasks": ["api"]}, progress_callback=on_progress)
            )

        async with anyio.create_task_group() as group:
            group.start_soon(stop)
            for _ in range(5):  # the stop waits (or fails) while the server keeps answering
                assert state_in(await timed_status(client), "api") in ("running", "stopped")
                await anyio.sleep(0.2)
            if replies:  # it failed at once: the message names the holder
                text = replies[0].content[0]
                assert replies[0].is_error and isinstance(text, types.TextContent)
                assert "busy" in text.text and f"pid {holder.pid}" in text.text, text.text
            os.killpg(holder.pid, signal.SIGKILL)
            holder.wait(timeout=5)
            with anyio.fail_after(15):
                while not replies:
                    await anyio.sleep(0.05)
        if replies[0].is_error:  # it had failed: now a new stop goes through
            replies[0] = await client.call_tool("stop", {"tasks": ["api"]})
        assert not replies[0].is_error, replies[0].content
        assert replies[0].structured_content is not None
        assert replies[0].structured_content["tasks"][0]["state"] == "stopped"
        assert state_in(await timed_status(client), "api") == "stopped"
    assert marked(sup, "api") == []
    if progress:
        print("progress while waiting:", progress)


def hold_record_lock(sup: Facade, procs: list[subprocess.Popen[bytes]]) -> int:
    """Lock the record of task api from a suspended `flock` process; its pid."""
    path = sup.paths.locks / "record-api.lock"
    holder = subprocess.Popen(["flock", str(path), "sleep", "30"], start_new_session=True)
    procs.append(holder)
    wait_until(lambda: is_locked(path), timeout=5)
    os.killpg(holder.pid, signal.SIGSTOP)
    return holder.pid


def test_a_stop_refused_by_a_busy_record_lock_names_its_holder(
    project: Workspace, procs: list[subprocess.Popen[bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(records, "RECORD_LOCK_S", 0.5)  # in this process only: fail fast
    project.write(
        """
        [tasks.api]
        command = "sleep 100000"
        stop_grace_period = 0.5
        """
    )
    sup = project.open()
    assert anyio.run(lambda: sup.start(["api"], wait=False)).ok
    holder = hold_record_lock(sup, procs)
    result = anyio.run(lambda: sup.stop(["api"]))
    error = result.tasks[0].error or ""
    assert not result.ok and "busy" in error, result
    assert f"pid {holder} " in error, error


def test_a_stop_refused_by_a_busy_record_lock_keeps_the_restart_policy(
    project: Workspace, procs: list[subprocess.Popen[bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(records, "RECORD_LOCK_S", 0.5)  # in this process only: fail fast
    project.write(
        """
        [tasks.api]
        command = "sleep 100000"
        restart_policy = "always"
        restart_backoff = 0
        stop_grace_period = 0.5
        """
    )
    sup = project.open()
    assert anyio.run(lambda: sup.start(["api"], wait=False)).ok
    holder = hold_record_lock(sup, procs)
    result = anyio.run(lambda: sup.stop(["api"]))
    assert not result.ok and "busy" in (result.tasks[0].error or ""), result
    os.killpg(holder, signal.SIGKILL)
    pid = alive_pid(sup, "api")  # the refused stop left it running, as it said
    assert not sup.records.get("api").manually_stopped
    run_monitor(project, procs, sup)
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: sup.records.get("api").run == 2, timeout=3)
    wait_until(lambda: status_of(sup, "api").state is TaskState.RUNNING, timeout=3)
    assert len(policy_exits(sup, "api")) == 1
    one_tree(sup, "api")
