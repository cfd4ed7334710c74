"""The monitor on real tmux: policies, stops from other processes, failover, tmux death, reload."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess

import anyio
from support import (
    Workspace,
    acting_pid,
    events_of,
    run_monitor,
    spawn_monitor,
    status_of,
    wait_until,
)

from taskmux_mcp.models import TaskState
from taskmux_mcp.project import Project as Facade


def state_of(sup: Facade, name: str) -> TaskState:
    """The current state of one task."""
    return status_of(sup, name).state


def test_stop_from_another_process_is_respected(
    project: Workspace, monitors: list[subprocess.Popen[bytes]]
) -> None:
    project.write(
        """
        [tasks.api]
        command = "sleep 1000"
        restart_policy = "always"
        restart_backoff = 1.0
        [tasks.web]
        command = "sleep 1000"
        restart_policy = "always"
        restart_backoff = 1.0
        [tasks.canary]
        command = "sleep 0.3; exit 1"
        restart_backoff = 0.3
        max_restarts = 0
        """
    )
    sup = project.open()
    run_monitor(project, monitors, sup)
    assert anyio.run(lambda: sup.start(["api", "web"], timeout=10)).ok
    assert project.cli("stop", "api").returncode == 0
    assert project.cli("kill", "web").returncode == 0
    monitors[0].send_signal(signal.SIGTERM)
    monitors[0].wait(timeout=10)
    run_monitor(project, monitors, sup)
    anyio.run(lambda: sup.start(["canary"], wait=False))
    # The canary crashing and being restarted twice proves the new monitor has swept since.
    wait_until(lambda: sup.records.get("canary").run >= 3, timeout=20)
    assert state_of(sup, "api") is TaskState.STOPPED
    assert state_of(sup, "web") is TaskState.STOPPED
    assert sup.records.get("api").run == 1 and sup.records.get("web").run == 1


def watches_a_pid(pid: int) -> bool:
    """Whether the process holds a pidfd (a standby monitor waits on its leader's)."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{pid}/fd/{fd}") == "anon_inode:[pidfd]":
                return True
    return False


def test_one_monitor_acts_and_another_takes_over_after_sigkill(
    project: Workspace, monitors: list[subprocess.Popen[bytes]]
) -> None:
    project.write(
        """
        [tasks.flaky]
        command = "sleep 1000"
        restart_backoff = 1.0
        max_restarts = 0
        [tasks.canary]
        command = "sleep 0.3; exit 1"
        restart_backoff = 0.3
        max_restarts = 0
        auto_start = false
        """
    )
    sup = project.open()
    first = run_monitor(project, monitors, sup)
    second = spawn_monitor(project, monitors)
    assert anyio.run(lambda: sup.start(timeout=10)).ok
    assert acting_pid(sup) == first
    wait_until(lambda: watches_a_pid(second.pid), timeout=30)  # standing by, not starting up
    os.kill(first, signal.SIGKILL)
    wait_until(lambda: acting_pid(sup) == second.pid, timeout=2.5, interval=0.05)
    pid = next(t.pid for t in anyio.run(sup.status).tasks if t.name == "flaky")
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: sup.records.get("flaky").run == 2, timeout=10)
    anyio.run(lambda: sup.start(["canary"], wait=False))
    wait_until(lambda: sup.records.get("canary").run >= 3, timeout=20)
    assert sup.records.get("flaky").run == 2, "restarted twice"
    assert len(events_of(sup, "restarted", "flaky")) == 1
    assert len(events_of(sup, "exited", "flaky")) == 1


def test_tmux_server_death_brings_tasks_back(
    project: Workspace, monitors: list[subprocess.Popen[bytes]]
) -> None:
    project.write(
        """
        [tasks.api]
        command = "sleep 1000"
        restart_backoff = 1.0
        [tasks.stopped]
        command = "sleep 1000"
        """
    )
    sup = project.open()
    run_monitor(project, monitors, sup)
    assert anyio.run(lambda: sup.start(timeout=10)).ok
    assert anyio.run(lambda: sup.stop(["stopped"])).ok
    project.server.kill()
    wait_until(
        lambda: state_of(sup, "api") is TaskState.RUNNING and sup.records.get("api").run == 2,
        timeout=15,
        interval=0.2,
    )
    assert state_of(sup, "stopped") is TaskState.STOPPED
    exited = events_of(sup, "exited", "api")
    assert exited and exited[-1]["vanished"] is True
    assert sup.records.get("api").total_restarts == 1


def test_invalid_config_is_kept_out_then_picked_up(
    project: Workspace, monitors: list[subprocess.Popen[bytes]]
) -> None:
    path = project.write(
        """
        [tasks.api]
        command = "sleep 1000"
        """
    )
    sup = project.open()
    run_monitor(project, monitors, sup)
    assert anyio.run(lambda: sup.start(timeout=10)).ok
    pid = next(t.pid for t in anyio.run(sup.status).tasks)
    path.write_text('[tasks.api]\ncommand = "sleep 1000"\nbogus_key = 1\n')
    wait_until(lambda: events_of(sup, "config_invalid"), timeout=10)
    assert "bogus_key" in str(events_of(sup, "config_invalid")[0]["errors"])
    assert next(t.pid for t in anyio.run(sup.status).tasks) == pid
    path.write_text('[tasks.api]\ncommand = "sleep 1000"\n[tasks.added]\ncommand = "sleep 999"\n')
    wait_until(lambda: events_of(sup, "config_reloaded"), timeout=10)
    fresh = project.open()
    wait_until(lambda: state_of(fresh, "added") is TaskState.RUNNING, timeout=10)
    assert next(t.pid for t in anyio.run(fresh.status).tasks if t.name == "api") == pid


def test_save_by_rename_restarts_only_changed_tasks(
    project: Workspace, monitors: list[subprocess.Popen[bytes]]
) -> None:
    path = project.write(
        """
        [tasks.keep]
        command = "sleep 1000"
        [tasks.change]
        command = "sleep 1000"
        [tasks.drop]
        command = "sleep 1000"
        """
    )
    sup = project.open()
    run_monitor(project, monitors, sup)
    assert anyio.run(lambda: sup.start(timeout=10)).ok
    before = {t.name: t.pid for t in anyio.run(sup.status).tasks}
    tmp = path.with_name(".taskmux.toml.swp")
    tmp.write_text('[tasks.keep]\ncommand = "sleep 1000"\n[tasks.change]\ncommand = "sleep 1001"\n')
    os.replace(tmp, path)
    fresh = project.open()

    def applied() -> bool:
        now = {t.name: t for t in anyio.run(fresh.status).tasks}
        change = now.get("change")
        return change is not None and change.pid not in (None, before["change"])

    wait_until(applied, timeout=15, interval=0.2)
    after = {t.name: t.pid for t in anyio.run(fresh.status).tasks}
    assert after["keep"] == before["keep"]
    assert "drop" not in after
    assert before["drop"] not in project.task_pids()
    reloaded = events_of(sup, "config_reloaded")
    assert reloaded[0]["changed"] == ["change"] and reloaded[0]["removed"] == ["drop"]
