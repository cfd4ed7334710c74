"""Supervisor against a real tmux server: lifecycle, exit status, stop/kill, ports, deps, hooks."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import psutil
import pytest
from support import Workspace, events_of, status_of, wait_until

from taskmux_mcp import lifecycle
from taskmux_mcp.backend import Launch, Pane
from taskmux_mcp.events import Cause
from taskmux_mcp.models import TaskState
from taskmux_mcp.project import Project as Facade


def test_exit_status_and_signal_are_read_from_the_pane(project: Workspace) -> None:
    project.write(
        """
        [tasks.three]
        command = "echo bye; sleep 0.1; exit 3"
        restart_policy = "no"
        [tasks.segv]
        command = "kill -SEGV $$"
        restart_policy = "no"
        """
    )
    sup = project.open()
    result = anyio.run(lambda: sup.start(["three", "segv"], timeout=10))
    by_name = {t.name: t for t in result.tasks}
    assert not result.ok
    assert by_name["three"].exit_code == 3
    assert by_name["three"].state is TaskState.EXITED
    assert by_name["segv"].exit_signal == "SIGSEGV"
    three = status_of(sup, "three")
    assert three.state is TaskState.EXITED and three.exit_code == 3
    segv = status_of(sup, "segv")
    assert segv.exit_signal == "SIGSEGV"


def test_sh_c_task_is_running_not_dead(project: Workspace) -> None:
    project.write(
        """
        [tasks.sleeper]
        command = "sh -c 'sleep 1000'"
        """
    )
    sup = project.open()
    result = anyio.run(lambda: sup.start(["sleeper"], timeout=10))
    assert result.ok, result
    status = status_of(sup, "sleeper")
    assert status.state is TaskState.RUNNING
    assert psutil.pid_exists(status.pid)


def test_stop_leaves_no_process_of_a_tree(project: Workspace) -> None:
    project.write(
        """
        [tasks.tree]
        command = "sh -c 'sleep 1001 & sleep 1002 & wait'"
        stop_grace_period = 0.5
        [tasks.stubborn]
        command = "trap '' INT TERM; while true; do sleep 0.1; done"
        stop_grace_period = 0.3
        """
    )
    sup = project.open()
    assert anyio.run(lambda: sup.start(timeout=10)).ok
    wait_until(lambda: len(project.task_pids()) >= 5)
    result = anyio.run(sup.stop)
    assert result.ok, result
    assert project.task_pids() == []
    assert {t.state for t in anyio.run(sup.status).tasks} == {TaskState.STOPPED}


def test_stop_of_a_task_that_dies_on_sigint_does_not_wait_for_the_grace_period(
    project: Workspace,
) -> None:
    project.write(
        """
        [tasks.sleep]
        command = "sleep 1000"
        stop_grace_period = 5
        """
    )
    sup = project.open()
    assert anyio.run(lambda: sup.start(timeout=10)).ok
    result = anyio.run(lambda: sup.stop(["sleep"]))
    assert result.ok
    assert result.tasks[0].duration_s is not None and result.tasks[0].duration_s < 5
    stopped = sup.events_sync(["sleep"]).events[-1]
    assert stopped.type == "stopped" and stopped.details["signal"] == "SIGINT"


def test_setsid_grandchild_is_stopped_too(project: Workspace) -> None:
    project.write(
        """
        [tasks.daemon]
        command = "setsid sleep 1005 & sleep 1000"
        stop_grace_period = 0.5
        """
    )
    sup = project.open()
    assert anyio.run(lambda: sup.start(timeout=10)).ok
    wait_until(lambda: len(project.task_pids()) >= 2)
    assert anyio.run(sup.stop).ok
    assert project.task_pids() == []


def test_kill_removes_the_window(project: Workspace) -> None:
    project.write(
        """
        [tasks.victim]
        command = "sleep 1000"
        """
    )
    sup = project.open()
    assert anyio.run(lambda: sup.start(timeout=10)).ok
    windows = project.server.cmd("list-windows", "-a", "-F", "#{@taskmux_task}").stdout.split()
    assert "victim" in windows
    result = anyio.run(lambda: sup.kill(["victim"]))
    assert result.ok
    out = project.server.cmd("list-windows", "-a", "-F", "#{@taskmux_task}", check=False).stdout
    assert "victim" not in out.split()
    assert project.task_pids() == []
    assert status_of(sup, "victim").manually_stopped


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_strangers_listener_is_refused_then_forced_and_a_connected_client_spared(
    project: Workspace,
) -> None:
    port = _free_port()
    listener = subprocess.Popen(
        [sys.executable, "-c", f"""
import socket, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", {port})); s.listen(); print("ready", flush=True)
conns = []
while True:
    c, _ = s.accept(); conns.append(c)
"""],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    assert listener.stdout is not None and listener.stdout.readline().strip() == "ready"
    client = subprocess.Popen(
        [sys.executable, "-c", f"""
import socket, time
c = socket.create_connection(("127.0.0.1", {port})); print("connected", flush=True)
time.sleep(1000)
"""],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert client.stdout is not None and client.stdout.readline().strip() == "connected"
        project.write(
            f"""
            [tasks.web]
            command = "{sys.executable} -m http.server {port} --bind 127.0.0.1"
            port = {port}
            health_start_period = 5
            """
        )
        sup = project.open()
        refused = anyio.run(lambda: sup.start(timeout=20))
        error = refused.tasks[0].error or ""
        assert not refused.ok and f"port {port} is in use by pid {listener.pid}" in error, refused
        assert 'port = "auto"' in error and "--force-port" in error
        assert listener.poll() is None, "a stranger's listener was signalled without force"
        busy = [e for e in sup.events_sync(["web"]).events if e.type == "port_busy"]
        assert busy and busy[0].details["holders"][0]["pid"] == listener.pid

        forced = anyio.run(lambda: sup.start(timeout=20, force_port=True))
        assert forced.ok, forced
        assert any(str(listener.pid) in w for w in forced.tasks[0].warnings), forced
        assert listener.wait(timeout=5) is not None
        assert client.poll() is None, "a process merely connected to the port was killed"
        freed = [e for e in sup.events_sync(["web"]).events if e.type == "port_freed"]
        assert freed and freed[0].details["pid"] == listener.pid and freed[0].details["forced"]
    finally:
        for proc in (listener, client):
            proc.kill()
            proc.wait()


def test_dependency_chain_in_order_and_independent_tasks_in_parallel(project: Workspace) -> None:
    project.write(
        """
        [tasks.a]
        command = "sleep 0.6; touch a.ready; sleep 1000"
        health_check = "test -f a.ready"
        [tasks.b]
        command = "sleep 1000"
        depends_on = ["a"]
        [tasks.c]
        command = "sleep 1000"
        """
    )
    sup = project.open()
    result = anyio.run(lambda: sup.start(timeout=20))
    assert result.ok, result
    started = {e.task: e.time.timestamp() for e in sup.events_sync().events if e.type == "started"}
    assert started["b"] - started["a"] >= 0.5, "b started before its dependency was healthy"
    assert abs(started["c"] - started["a"]) < 0.5, "independent task c waited for a"
    assert (project.root / "a.ready").exists()


def test_start_of_a_named_task_starts_its_dependencies(project: Workspace) -> None:
    project.write(
        """
        [tasks.db]
        command = "sleep 1000"
        [tasks.api]
        command = "sleep 1000"
        depends_on = ["db"]
        [tasks.other]
        command = "sleep 1000"
        """
    )
    sup = project.open()
    result = anyio.run(lambda: sup.start(["api"], timeout=20))
    assert [t.name for t in result.tasks] == ["db", "api"]
    states = {t.name: t.state for t in anyio.run(sup.status).tasks}
    assert states == {"db": TaskState.RUNNING, "api": TaskState.RUNNING, "other": TaskState.STOPPED}
    again = anyio.run(lambda: sup.start(["api"], timeout=20))
    assert {t.action for t in again.tasks} == {"already_running"}


def test_failed_dependency_blocks_dependents_with_a_reason(project: Workspace) -> None:
    project.write(
        """
        [tasks.db]
        command = "echo 'FATAL: no database'; sleep 0.1; exit 7"
        [tasks.api]
        command = "sleep 1000"
        depends_on = ["db"]
        """
    )
    sup = project.open()
    result = anyio.run(lambda: sup.start(timeout=20))
    assert not result.ok
    db, api = result.tasks
    assert db.exit_code == 7
    assert any("FATAL: no database" in line for line in db.log_tail)
    assert api.blocked_by == "db" and api.error and "db" in api.error
    assert api.state is TaskState.STOPPED


def test_unhealthy_start_reports_the_check_output(project: Workspace) -> None:
    project.write(
        """
        [tasks.api]
        command = "echo booting; sleep 1000"
        health_check = "echo 'db unreachable' >&2; exit 1"
        health_start_period = 0
        health_retries = 2
        """
    )
    sup = project.open()
    result = anyio.run(lambda: sup.start(timeout=20))
    assert not result.ok
    api = result.tasks[0]
    assert api.state is TaskState.UNHEALTHY
    assert api.check_output and "db unreachable" in api.check_output


def test_hooks_run_and_a_failing_before_start_aborts(project: Workspace) -> None:
    project.write(
        """
        [hooks]
        before_start = "echo project >> hooks.txt"
        [tasks.good]
        command = "sleep 1000"
        [tasks.good.hooks]
        before_start = "echo good-before >> hooks.txt"
        after_stop = "echo good-after-stop >> hooks.txt"
        [tasks.bad]
        command = "sleep 1000"
        hooks = { before_start = "echo 'cannot migrate'; exit 4" }
        """
    )
    sup = project.open()
    result = anyio.run(lambda: sup.start(timeout=20))
    by_name = {t.name: t for t in result.tasks}
    assert by_name["good"].ok
    assert not by_name["bad"].ok
    assert "cannot migrate" in (by_name["bad"].error or "")
    assert status_of(sup, "bad").state is TaskState.FAILED
    anyio.run(lambda: sup.stop(["good"]))
    lines = (project.root / "hooks.txt").read_text().split()
    assert lines == ["project", "good-before", "good-after-stop"]


def test_two_checkouts_with_the_same_name_do_not_collide(
    project: Workspace, tmp_path: Path
) -> None:
    toml = """
        name = "same"
        [tasks.api]
        command = "sleep 1000"
        """
    project.write(toml)
    first = project.open()
    other_root = tmp_path / "other"
    other_root.mkdir()
    (other_root / "taskmux.toml").write_text(project.root.joinpath("taskmux.toml").read_text())
    second = Facade(
        other_root / "taskmux.toml",
        socket_name=project.server.socket,
        environ=project.env,
        hosted_monitor=False,
    )
    project.facades.append(second)
    assert anyio.run(lambda: first.start(timeout=10)).ok
    assert anyio.run(lambda: second.start(timeout=10)).ok
    s1, s2 = anyio.run(first.status), anyio.run(second.status)
    assert s1.session != s2.session
    assert s1.tasks[0].pid != s2.tasks[0].pid
    assert first.paths.root != second.paths.root
    assert anyio.run(second.stop).ok
    assert status_of(first, "api").state is TaskState.RUNNING
    assert status_of(second, "api").state is TaskState.STOPPED


def test_hostile_tmux_conf_changes_nothing(project: Workspace) -> None:
    home = Path(project.env["HOME"])
    (home / ".tmux.conf").write_text(
        "set -g base-index 1\n"
        "setw -g pane-base-index 1\n"
        "set -g renumber-windows on\n"
        "setw -g automatic-rename on\n"
        "setw -g allow-rename on\n"
        "setw -g remain-on-exit off\n"
        "set -g history-limit 10\n"
        "set -g default-shell /bin/false\n"
        "set -g default-command 'exit 9'\n"
        "set -g destroy-unattached on\n"
    )
    project.write(
        """
        [tasks.quick]
        command = '''printf '\\033kevil\\033\\\\'; exit 3'''
        restart_policy = "no"
        [tasks.long]
        command = "for i in $(seq 1 50); do echo line $i; done; sleep 1000"
        """
    )
    sup = project.open()
    result = anyio.run(lambda: sup.start(timeout=20))
    by_name = {t.name: t for t in result.tasks}
    assert by_name["quick"].exit_code == 3
    assert by_name["long"].ok
    wait_until(lambda: len(sup.logs_sync(["long"], lines=100).lines) >= 50)
    statuses = {t.name: t for t in anyio.run(sup.status).tasks}
    assert statuses["quick"].state is TaskState.EXITED and statuses["quick"].exit_code == 3
    assert statuses["long"].state is TaskState.RUNNING
    anyio.run(lambda: sup.kill(["quick"]))
    assert status_of(sup, "long").state is TaskState.RUNNING
    assert anyio.run(sup.stop).ok


def test_stop_is_recorded_for_other_processes(project: Workspace) -> None:
    project.write(
        """
        [tasks.api]
        command = "sleep 1000"
        """
    )
    sup = project.open()
    assert anyio.run(lambda: sup.start(timeout=10)).ok
    proc = project.cli("stop", "api")
    assert proc.returncode == 0, proc.stderr
    fresh = project.open()
    assert fresh.records.get("api").manually_stopped
    assert status_of(fresh, "api").manually_stopped


def test_uptime_and_pid_reported(project: Workspace) -> None:
    project.write(
        """
        [tasks.api]
        command = "sleep 1000"
        """
    )
    sup = project.open()
    assert anyio.run(lambda: sup.start(timeout=10)).ok
    time.sleep(0.1)
    status = status_of(sup, "api")
    assert status.uptime_s is not None and status.uptime_s >= 0
    assert psutil.Process(status.pid).is_running()


@pytest.mark.parametrize("bad", ["", "nope"])
def test_unknown_task_names_the_known_ones(project: Workspace, bad: str) -> None:
    project.write(
        """
        [tasks.api]
        command = "sleep 1000"
        """
    )
    sup = project.open()
    from taskmux_mcp.errors import UnknownTask

    with pytest.raises(UnknownTask, match="known tasks: api"):
        anyio.run(lambda: sup.start([bad or "x y"]))


def test_env_and_cwd_reach_the_task_and_do_not_leak_to_others(project: Workspace) -> None:
    (project.root / "sub").mkdir()
    project.write(
        """
        [tasks.first]
        command = "echo first=$SECRET in $(pwd); sleep 1000"
        cwd = "sub"
        env = { SECRET = "s3cr3t" }
        [tasks.second]
        command = "echo second=${SECRET:-unset} marker=${TASKMUX_TASK}; sleep 1000"
        """
    )
    sup = project.open()
    assert anyio.run(lambda: sup.start(["first"], timeout=10)).ok
    assert anyio.run(lambda: sup.start(["second"], timeout=10)).ok
    first = wait_until(lambda: sup.logs_sync(["first"], since="start").lines)
    second = wait_until(lambda: sup.logs_sync(["second"], since="start").lines)
    assert first[-1].text == f"first=s3cr3t in {project.root / 'sub'}"
    assert second[-1].text == "second=unset marker=second"


def test_restart_does_not_rerun_a_completed_one_shot_dependency(project: Workspace) -> None:
    project.write(
        """
        [tasks.setup]
        command = "echo migrating >> runs.txt"
        oneshot = true
        [tasks.api]
        command = "echo api up; sleep 1000"
        depends_on = ["setup"]
        """
    )
    sup = project.open()
    assert anyio.run(lambda: sup.start(timeout=10)).ok
    restarted = anyio.run(lambda: sup.restart(["api"], timeout=10))
    assert restarted.ok, restarted
    by_name = {t.name: t for t in restarted.tasks}
    assert by_name["setup"].action == "already_done"
    assert by_name["api"].log_tail == ["api up"]
    assert (project.root / "runs.txt").read_text() == "migrating\n"
    again = anyio.run(lambda: sup.start(["setup"], timeout=10))
    assert again.ok and again.tasks[0].action == "exited"
    assert (project.root / "runs.txt").read_text() == "migrating\nmigrating\n"
    inspected = anyio.run(lambda: sup.inspect("api"))
    assert inspected.log_tail == ["api up"]


def test_stop_signal_is_the_first_signal_of_the_stop(project: Workspace) -> None:
    project.write(
        """
        [tasks.api]
        command = "trap 'echo got-term; exit 0' TERM; trap '' INT; while :; do sleep 0.05; done"
        stop_signal = "SIGTERM"
        stop_grace_period = 20
        """
    )
    sup = project.open()
    assert anyio.run(lambda: sup.start(["api"], timeout=20)).ok
    stopped = anyio.run(lambda: sup.stop(["api"]))
    assert stopped.ok and stopped.tasks[0].duration_s is not None, stopped
    assert stopped.tasks[0].duration_s < 10, stopped  # not the 20 s grace: SIGTERM came first
    assert stopped.tasks[0].exit_code == 0, stopped
    assert any("got-term" in line.text for line in sup.logs_sync(["api"]).lines)
    assert events_of(sup, "stopped", "api")[0]["signal"] == "SIGTERM"


def test_one_tmux_call_opens_many_windows_and_a_failure_spoils_none(project: Workspace) -> None:
    project.write(
        """
        [tasks.busy]
        command = "sleep 1000"
        """
        + "".join(f'[tasks.w{i}]\ncommand = "exec sleep 100{i}"\n' for i in range(6))
    )
    sup = project.open()
    assert anyio.run(lambda: sup.start(["busy"], timeout=10)).ok
    snap = anyio.run(sup.backend.snapshot)
    specs = [
        Launch(task=name, run=1, command="exec sleep 1000", cwd=project.root, env={}, pipe=None)
        for name in ("w0", "w1", "w2", "busy", "w3", "w4", "w5")
    ]
    results = sup.backend.launch_many_sync(specs, snap)
    assert [type(r).__name__ for r in results] == ["Pane"] * 3 + ["TmuxError"] + ["Pane"] * 3
    assert "task 'busy' is already running" in str(results[3])
    panes = sup.backend.run("list-panes", "-s", "-t", snap.session or "", "-F", "#{@taskmux_task}")
    assert sorted(panes) == sorted(["busy", "w0", "w1", "w2", "w3", "w4", "w5"])  # once each


def tmux_calls(sup: Facade) -> list[list[str]]:
    """The arguments of every tmux call the facade makes from now on (kept as they happen)."""
    calls: list[list[str]] = []
    original = sup.backend._call

    def recording(args: Any) -> Any:
        calls.append(list(args))
        return original(args)

    sup.backend._call = recording  # type: ignore[method-assign]
    return calls


def test_a_launch_reads_tmux_once_under_the_tasks_lock(project: Workspace) -> None:
    project.write(
        """
        [tasks.db]
        command = "sleep 1000"
        [tasks.web]
        command = "sleep 1000"
        """
    )
    sup = project.open()
    assert anyio.run(lambda: sup.start(["db"], wait=False)).ok  # the session is there
    recorded = tmux_calls(sup)
    assert anyio.run(lambda: sup.start(["web"], wait=False)).ok
    calls = [" ".join(args) for args in recorded]
    launch = next(i for i, call in enumerate(calls) if "TASKMUX_TASK=web" in call)
    reads = [call for call in calls[:launch] if call.startswith("list-panes")]
    assert len(reads) == 1, calls[: launch + 1]  # the one taken holding web's lock


def test_a_launch_on_a_reading_gone_stale_reads_tmux_again(project: Workspace) -> None:
    project.write(
        """
        [tasks.keep]
        command = "sleep 1000"
        [tasks.once]
        command = "exit 0"
        oneshot = true
        """
    )
    sup = project.open()
    assert anyio.run(lambda: sup.start(timeout=10)).ok
    stale = anyio.run(sup.backend.snapshot)
    gone = stale.panes["once"]
    sup.backend.run("kill-window", "-t", gone.window_id)  # after the reading: its pane is gone

    async def relaunch() -> Pane:
        lock = sup.task_lock("once", "test")
        await lock.acquire(5, task="once")
        try:
            return await lifecycle.launch(sup, "once", Cause.USER, lock=lock, seen=stale)
        finally:
            lock.release()

    pane = anyio.run(relaunch)
    assert pane.pane_id != gone.pane_id
    assert anyio.run(sup.backend.snapshot).panes["once"].window_id == pane.window_id


def test_a_hundred_tasks_start_in_few_tmux_calls(project: Workspace) -> None:
    project.write("".join(f'[tasks.t{i}]\ncommand = "exec sleep 100000"\n' for i in range(100)))
    sup = project.open()
    calls = tmux_calls(sup)
    started = anyio.run(lambda: sup.start(wait=False, timeout=60))
    assert started.ok and len(started.tasks) == 100
    launches = [len(args) for args in calls if len(args) > 200]  # the batched launch sequences
    assert 1 <= len(launches) <= 30, calls
    assert len(anyio.run(sup.backend.snapshot).panes) == 100
    anyio.run(sup.stop)


def test_task_windows_keep_the_configured_scrollback(project: Workspace) -> None:
    """[logs] scrollback is each task window's history-limit: the first window of a new session
    too (tmux gives it the server's), respawned panes, and new windows after a config change."""
    chatty = "seq -f %079g 1 1000; exec sleep 1000"
    project.write(
        f"""
        [logs]
        scrollback = 300
        [tasks.chatty]
        command = "{chatty}"
        [tasks.quiet]
        command = "sleep 1000"
        """
    )
    sup = project.open()

    def windows() -> dict[str, tuple[int, int]]:
        shown = project.server.cmd(
            "list-windows", "-a", "-F", "#{window_name} #{history_limit} #{history_size}"
        ).stdout.split("\n")
        return {w[0]: (int(w[1]), int(w[2])) for w in (x.split() for x in shown if x)}

    assert anyio.run(lambda: sup.start(["chatty", "quiet"], timeout=10)).ok
    assert {name: limit for name, (limit, _) in windows().items()} == {"chatty": 300, "quiet": 300}
    assert list(windows()) == ["chatty", "quiet"]  # by index: the first opened the session
    wait_until(lambda: windows()["chatty"][1] >= 250)  # the 1000 lines printed fill it...
    assert windows()["chatty"][1] <= 300  # ...up to the limit, not tmux's default of 2000
    assert anyio.run(lambda: sup.restart(["chatty"], timeout=10)).ok
    assert windows()["chatty"][0] == 300
    project.write(
        """
        [logs]
        scrollback = 50
        [tasks.chatty]
        command = "sleep 1000"
        [tasks.quiet]
        command = "sleep 1000"
        [tasks.late]
        command = "sleep 1000"
        """
    )
    assert sup.refresh()
    assert anyio.run(lambda: sup.start(["late"], timeout=10)).ok
    limits = {name: limit for name, (limit, _) in windows().items()}
    assert limits == {"chatty": 300, "quiet": 300, "late": 50}
