"""Fault suite: each scenario breaks something on purpose and checks that nothing is lost.

Nothing lost means: no task silently dead that should run, no stopped task revived, no log
line missing, no process of a task (or of a check or hook) left behind.

| scenario | where it is tested |
|---|---|
| face SIGKILLed during a restart's stop (CLI, stdio MCP server) | here |
| face SIGKILLed between a restart's stop and its start | here |
| acting monitor SIGKILLed: failover within 2 s | test_monitor.py::test_one_monitor_acts_and_another_takes_over_after_sigkill |
| `tmux kill-server`: tasks brought back, stopped ones not | test_monitor.py::test_tmux_server_death_brings_tasks_back |
| `tmux kill-server`: logs complete, new run follows | here |
| task ignoring SIGINT and SIGTERM: stop ends with SIGKILL | here (test_supervisor.py checks that nothing is left) |
| grandchildren that setsid, double-fork or leave the group | here; setsid + stop also in test_supervisor.py |
| health check hanging forever | here |
| hook hanging forever | here |
| config made invalid while running, then fixed | test_monitor.py::test_invalid_config_is_kept_out_then_picked_up |
| save-by-rename | test_monitor.py::test_save_by_rename_restarts_only_changed_tasks |
| deleted cwd: backoff, bounded spawns | test_monitor.py::test_deleted_cwd_backs_off_without_runaway_spawning |
| port held by a process we did not start | test_supervisor.py::test_port_cleanup_frees_a_listener_and_spares_a_connected_client |
| 100 start/stop cycles: 0 orphans, bounded fds in the monitor | here |
"""  # noqa: E501

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import anyio
import psutil
import pytest
from support import (
    Workspace,
    events_of,
    run_monitor,
    status_of,
    wait_until,
)

from taskmux_mcp.models import TaskState
from taskmux_mcp.project import Project as Facade

BIN = Path(sys.executable).parent


@pytest.fixture
def procs(monitors: list[subprocess.Popen[bytes]]) -> list[subprocess.Popen[bytes]]:
    """Processes (monitors, faces) started by a test, ended afterwards; no hosted monitor."""
    return monitors


def cli_popen(project: Workspace, *args: str) -> subprocess.Popen[bytes]:
    """Start the `taskmux` CLI in the background."""
    return subprocess.Popen(
        [str(BIN / "taskmux"), "--project", str(project.root), *args],
        env=project.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def processes_with(cmdline: list[str], **env: str) -> list[psutil.Process]:
    """Live processes running exactly cmdline whose environment has every given value."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if proc.info["cmdline"] != cmdline or proc.status() == psutil.STATUS_ZOMBIE:
                continue
            environ = proc.environ()
        except (psutil.Error, OSError):
            continue
        if all(environ.get(k) == v for k, v in env.items()):
            found.append(proc)
    return found


def task_cmdlines(project: Workspace) -> list[str]:
    """Command lines of the project's task processes."""
    found = []
    for pid in project.task_pids():
        try:
            found.append(" ".join(psutil.Process(pid).cmdline()))
        except psutil.Error:
            continue
    return found


def assert_consistent(project: Workspace, name: str) -> None:
    """`taskmux status` answers, and what it says matches the processes that exist."""
    done = project.cli("--json", "status", timeout=30)
    assert done.returncode == 0, done.stderr
    task = next(t for t in json.loads(done.stdout)["tasks"] if t["name"] == name)
    marked = project.task_pids()
    if task["state"] == "starting" and task["pid"] is None:
        assert marked == [], (task, marked)  # a launch under way (or interrupted): no process yet
    elif task["state"] in ("running", "starting", "unhealthy"):
        assert task["pid"] in marked, (task, marked)
    else:
        assert marked == [], (task, marked)


# ------------------------------------------------------------------ a face killed mid-restart

STUBBORN = """
[tasks.api]
command = "trap 'echo got-int' INT; while :; do sleep 0.1; done"
stop_grace_period = 60
restart_backoff = 1.0
"""


def _kill_face_during_stop(project: Workspace, face: subprocess.Popen[bytes], sup: Facade) -> int:
    """Wait until the face is in the restart's stop phase (SIGINT ignored), then SIGKILL it."""
    pid = status_of(sup, "api").pid
    assert pid is not None
    wait_until(lambda: sup.records.get("api").phase.value == "stopping", timeout=30)
    wait_until(lambda: "got-int" in sup.logs.path("api").read_text(errors="replace"), timeout=10)
    face.kill()
    face.wait(timeout=10)
    return pid


def _after_interrupted_restart(
    project: Workspace, procs: list[subprocess.Popen[bytes]], sup: Facade, pid: int
) -> None:
    """The task still runs; with a monitor, its crash is restarted; a later kill leaves nothing."""
    assert status_of(sup, "api").state is TaskState.RUNNING
    assert status_of(sup, "api").pid == pid
    assert_consistent(project, "api")
    if not procs:
        run_monitor(project, procs, sup)
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: sup.records.get("api").run == 2, timeout=8)
    wait_until(lambda: status_of(sup, "api").state is TaskState.RUNNING, timeout=15)
    assert_consistent(project, "api")
    assert project.cli("start", "api", timeout=90).returncode == 0
    assert sup.records.get("api").run == 2
    assert project.cli("kill", "api", timeout=90).returncode == 0  # its grace period is 60 s
    assert project.task_pids() == []


def test_cli_sigkilled_in_the_stop_phase_of_a_restart(
    project: Workspace, procs: list[subprocess.Popen[bytes]]
) -> None:
    project.write(STUBBORN)
    sup = project.open()
    assert anyio.run(lambda: sup.start(timeout=20)).ok
    face = cli_popen(project, "restart", "api")
    pid = _kill_face_during_stop(project, face, sup)
    _after_interrupted_restart(project, procs, sup, pid)


def test_stdio_mcp_server_sigkilled_in_the_stop_phase_of_a_restart(
    project: Workspace, procs: list[subprocess.Popen[bytes]]
) -> None:
    project.write(STUBBORN)
    sup = project.open()
    assert anyio.run(lambda: sup.start(timeout=20)).ok
    server = subprocess.Popen(
        [str(BIN / "taskmux-mcp"), "--project", str(project.root)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=project.env,
        cwd=project.root,
    )
    procs.append(server)
    assert server.stdin is not None and server.stdout is not None
    messages = [
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-11-25",
                "capabilities": {},
                "clientInfo": {"name": "faults", "version": "1"},
            },
        },
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {
            "jsonrpc": "2.0",
            "id": 2,
            "method": "tools/call",
            "params": {"name": "restart", "arguments": {"tasks": ["api"]}},
        },
    ]
    server.stdin.write(b"".join(json.dumps(m).encode() + b"\n" for m in messages))
    server.stdin.flush()
    pid = _kill_face_during_stop(project, server, sup)
    procs.remove(server)
    server.stdin.close()
    server.stdout.close()
    _after_interrupted_restart(project, procs, sup, pid)


def test_cli_sigkilled_between_the_stop_and_the_start_of_a_restart(
    project: Workspace, procs: list[subprocess.Popen[bytes]]
) -> None:
    marker = project.root / "hook-ran"
    project.write(
        f"""
        [tasks.api]
        command = "sleep 1000"
        restart_backoff = 1.0
        [tasks.api.hooks]
        before_start = "if [ -e {marker} ]; then touch {marker}.2; sleep 3; fi; touch {marker}"
        """
    )
    sup = project.open()
    run_monitor(project, procs, sup)
    assert anyio.run(lambda: sup.start(timeout=20)).ok
    face = cli_popen(project, "restart", "api")
    wait_until(lambda: marker.with_name("hook-ran.2").exists(), timeout=30)
    face.kill()
    face.wait(timeout=10)
    assert_consistent(project, "api")
    wait_until(lambda: status_of(sup, "api").state is TaskState.RUNNING, timeout=8)
    assert_consistent(project, "api")
    assert project.cli("start", timeout=90).returncode == 0
    assert project.cli("stop", timeout=90).returncode == 0
    assert project.task_pids() == []


# ------------------------------------------------------------------ stubborn and escaping processes


def test_task_ignoring_sigint_and_sigterm_is_sigkilled_and_nothing_is_left(
    project: Workspace,
) -> None:
    project.write(
        """
        [tasks.deaf]
        command = "trap '' INT TERM; sh -c 'trap \\"\\" INT TERM; sleep 1000' & wait; wait"
        stop_grace_period = 0.5
        """
    )
    sup = project.open()
    assert anyio.run(lambda: sup.start(timeout=20)).ok
    wait_until(lambda: len(project.task_pids()) >= 3)
    done = project.cli("stop", "deaf", timeout=60)
    assert done.returncode == 0, done.stderr
    assert project.task_pids() == []
    stopped = events_of(sup, "stopped", "deaf")
    assert [e["signal"] for e in stopped] == ["SIGKILL"]
    assert float(str(stopped[0]["duration_s"])) >= 3.5 - 0.1  # grace, then 3 s after SIGTERM
    assert status_of(sup, "deaf").state is TaskState.STOPPED


ESCAPING = (
    "sh -c '(setsid sleep 1001 &) &'; "  # double fork into a new session
    "setsid sleep 1002 & "  # a new session
    "perl -e 'setpgrp(0, 0); sleep 1003' & "  # a new process group, same session
    "sleep 1000"
)


@pytest.mark.parametrize("how", ["stop", "kill"])
def test_escaped_grandchildren_end_with_their_task(project: Workspace, how: str) -> None:
    project.write(
        f"""
        [tasks.escaper]
        command = "{ESCAPING}"
        stop_grace_period = 0.5
        """
    )
    sup = project.open()
    assert anyio.run(lambda: sup.start(timeout=20)).ok
    wanted = {f"sleep {n}" for n in (1000, 1001, 1002, 1003)}
    wait_until(lambda: all(any(w in c for c in task_cmdlines(project)) for w in wanted))
    sessions = {os.getsid(p) for p in project.task_pids()}
    assert len(sessions) >= 3
    done = project.cli(how, "escaper", timeout=60)
    assert done.returncode == 0, done.stderr
    assert project.task_pids() == []
    assert status_of(sup, "escaper").state is TaskState.STOPPED


# ------------------------------------------------------------------ hanging checks and hooks


def test_hanging_health_check_is_killed_at_its_timeout_and_the_monitor_goes_on(
    project: Workspace, procs: list[subprocess.Popen[bytes]]
) -> None:
    project.write(
        """
        [tasks.api]
        command = "sleep 1000"
        health_check = "sleep 1000"
        health_timeout = 1
        health_interval = 0.5
        health_start_period = 600
        [tasks.crash]
        command = "sleep 0.5; exit 1"
        restart_backoff = 1.0
        max_restarts = 0
        """
    )
    sup = project.open()
    run_monitor(project, procs, sup)
    anyio.run(lambda: sup.start(wait=False))
    seen: set[int] = set()
    deadline = time.monotonic() + 6
    while time.monotonic() < deadline:
        for proc in processes_with(["sleep", "1000"], TASKMUX_TASK="api"):
            try:
                if "TASKMUX_TASK_ID" in proc.environ():
                    continue  # the task itself
                age = time.time() - proc.create_time()
            except psutil.Error:
                continue  # a check that ended since it was listed
            seen.add(proc.pid)
            assert age < 1 + 2.5, f"check process {proc.pid} still alive after {age:.1f}s"
        began = time.monotonic()
        sup.status_sync()
        assert time.monotonic() - began < 3.0, "status blocked by a hanging check"
        time.sleep(0.1)
    assert len(seen) >= 2, "checks stopped being run"
    wait_until(lambda: sup.records.get("crash").run >= 3, timeout=20)  # checks still hanging
    checks = sup.records.get("api").checks
    assert checks and not checks[-1].healthy
    began = time.monotonic()
    done = project.cli("status", timeout=30)
    assert done.returncode == 0 and time.monotonic() - began < 10
    assert anyio.run(sup.stop).ok
    wait_until(lambda: not processes_with(["sleep", "1000"], TASKMUX_TASK="api"), timeout=5)
    assert project.task_pids() == []


@pytest.mark.parametrize("level", ["project", "task"])
def test_hanging_hook_fails_the_start_at_its_time_limit(project: Workspace, level: str) -> None:
    hooks = "[hooks]" if level == "project" else "[tasks.api.hooks]"
    project.write(
        f"""
        name = "hookhang-{level}"
        [tasks.api]
        command = "sleep 1000"
        {hooks}
        before_start = "sleep 1000"
        """
    )
    sup = project.open()
    project.env["TASKMUX_HOOK_TIMEOUT"] = "2"
    began = time.monotonic()
    done = project.cli("start", timeout=60)
    elapsed = time.monotonic() - began
    assert done.returncode == 1, done
    said = done.stdout + done.stderr
    assert "before_start hook" in said and "timed out" in said, said
    assert 2 <= elapsed < 15
    # named per level: the other level may run at the same time in another worker
    assert not processes_with(["sleep", "1000"], TASKMUX_PROJECT=f"hookhang-{level}")
    assert not processes_with(["/bin/sh", "-c", "sleep 1000"], TASKMUX_PROJECT=f"hookhang-{level}")
    assert project.task_pids() == []
    assert status_of(sup, "api").pid is None
    assert events_of(sup, "hook_failed")


def test_hook_of_a_sigkilled_face_does_not_outlive_it(
    project: Workspace, procs: list[subprocess.Popen[bytes]]
) -> None:
    project.write(
        """
        name = "hookorphan"
        [tasks.api]
        command = "sleep 1000"
        [tasks.api.hooks]
        before_start = "sleep 1000"
        """
    )
    project.open()
    face = cli_popen(project, "start")
    procs.append(face)
    wait_until(lambda: processes_with(["sleep", "1000"], TASKMUX_PROJECT="hookorphan"), timeout=30)
    face.kill()
    face.wait(timeout=10)
    try:
        wait_until(
            lambda: not processes_with(["sleep", "1000"], TASKMUX_PROJECT="hookorphan"), timeout=3
        )
    finally:
        for proc in processes_with(["sleep", "1000"], TASKMUX_PROJECT="hookorphan"):
            proc.kill()


# ------------------------------------------------------------------ many cycles, tmux death


def test_hundred_start_stop_cycles_leave_no_orphan_and_bounded_fds(
    project: Workspace, procs: list[subprocess.Popen[bytes]]
) -> None:
    project.write(
        """
        [tasks.small]
        command = "sleep 1000"
        stop_grace_period = 1
        """
    )
    sup = project.open()
    monitor = run_monitor(project, procs, sup)
    fd_dir = Path(f"/proc/{monitor}/fd")

    def fds() -> int:
        """The monitor's open descriptors, least of a few samples (a sweep opens some briefly)."""
        counts = []
        for _ in range(5):
            counts.append(len(list(fd_dir.iterdir())))
            time.sleep(0.1)
        return min(counts)

    async def cycles(count: int) -> None:
        for _ in range(count):
            started = await sup.start(["small"], wait=False)
            assert started.ok, started
            stopped = await sup.stop(["small"])
            assert stopped.ok, stopped

    anyio.run(lambda: cycles(5))
    before = fds()
    anyio.run(lambda: cycles(100))
    assert project.task_pids() == []
    after = fds()
    assert after <= before + 5, (before, after)
    assert sup.records.get("small").run == 105
    assert status_of(sup, "small").state is TaskState.STOPPED
    tmux = psutil.Process(int(project.server.cmd("display", "-p", "#{pid}").stdout))
    assert len(tmux.children(recursive=True)) <= 3, tmux.children(recursive=True)


def test_logs_survive_tmux_kill_server_and_the_new_run_follows(
    project: Workspace, procs: list[subprocess.Popen[bytes]]
) -> None:
    side = project.root / "printed"
    project.write(
        f"""
        [tasks.talker]
        command = "i=0; while :; do echo line-$i; echo line-$i >> {side}; i=$((i+1)); sleep 0.01; done"
        restart_backoff = 1.0
        """  # noqa: E501
    )
    sup = project.open()
    run_monitor(project, procs, sup)
    assert anyio.run(lambda: sup.start(timeout=20)).ok
    wait_until(lambda: side.exists() and len(side.read_text().split()) >= 200, timeout=20)
    old_pid = status_of(sup, "talker").pid
    assert old_pid is not None
    project.server.kill()
    printed = side.read_text().split()
    log = sup.logs.path("talker")

    def runs() -> list[list[str]]:
        """The logged output lines of each run."""
        found: list[list[str]] = []
        for line in log.read_text(errors="replace").splitlines():
            if " @taskmux start run=" in line:
                found.append([])
            elif found and "\t" in line:
                found[-1].append(line.split("\t", 1)[1])
        return found

    wait_until(lambda: len(runs()) == 2 and len(runs()[1]) >= 20, timeout=30)
    first, second = runs()
    assert first == [f"line-{i}" for i in range(len(first))], "gap or disorder in the log"
    # Output still unread in the pty when tmux dies goes with it: a line or two at most.
    assert len(first) >= len(printed) - 3, (len(first), len(printed))
    assert second[:20] == [f"line-{i}" for i in range(20)]
    wait_until(lambda: not psutil.pid_exists(old_pid), timeout=10)
    pid = status_of(sup, "talker").pid
    assert pid is not None and pid != old_pid
    marked = project.task_pids()  # before the tree: a child forked in between is not a stray
    tree = {pid} | {p.pid for p in psutil.Process(pid).children(recursive=True)}
    strays = [p for p in marked if p not in tree and psutil.pid_exists(p)]
    assert strays == [], "a process of the first run survived tmux"
