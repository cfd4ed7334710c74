"""Hostile files and strings on real tmux (issue 10, failures 4, 9 and 10).

Failure 4, an invalid taskmux.toml locks users out:
  test_a_broken_config_leaves_running_tasks_observable_stoppable_and_killable (CLI),
  test_mcp_status_and_stop_work_with_a_broken_config.
Failure 9, faults that reach "internal error", user strings parsed by tmux, long commands:
  full disk: test_a_stop_on_a_full_disk_stops_and_says_what_was_not_written,
    test_a_start_on_a_full_disk_fails_clearly_and_leaves_nothing_running,
    test_a_restart_on_a_full_disk_restarts_or_fails_clearly;
  read-only state folder: test_a_read_only_state_folder_stops_and_records_the_exit_once;
  nested events.jsonl line: test_a_deeply_nested_event_line_is_skipped_by_events_and_inspect;
  `;`, `#(...)`, `##`, `#{...}` in cwd and env: test_tmux_never_parses_cwd_or_env_values;
  a project folder named `p#(...)` and the hosted monitor:
    test_a_project_folder_with_a_tmux_format_runs_the_hosted_monitor_without_running_it;
  40 KB command and env value: test_a_40_kb_command_and_env_value_pass_check_and_run.
Failure 10, logs lost silently:
  20,000 lines then exit: test_a_verdict_waits_for_a_frozen_log_writer_to_flush_everything
    (the rate at which tmux itself drops a tail: bench/bench_log_tail.py);
  killed log writer: test_a_killed_log_writer_is_replaced_and_logging_resumes;
  deleted log folder: test_a_deleted_log_folder_is_noticed_and_logging_resumes.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
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

from taskmux_mcp.control import ask_monitor
from taskmux_mcp.mcp_server import build_server
from taskmux_mcp.models import TaskState
from taskmux_mcp.processes import is_running
from taskmux_mcp.project import Project as Facade

CRASH_WORDS = ("internal error", "traceback", "failed unexpectedly", "exceptiongroup")
LONG = 40_000
API = """
[tasks.api]
command = "sleep 100000"
stop_grace_period = 0.5
"""


@pytest.fixture
def procs(project: Workspace) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes (monitors) started by a test, ended afterwards; no hosted monitor unless
    a test asks for one."""
    started: list[subprocess.Popen[bytes]] = []
    project.env["TASKMUX_HOSTED_MONITOR"] = "0"
    yield started
    end_processes(started)


@pytest.fixture
def state_tmpfs(project: Workspace) -> Iterator[Path]:
    """A small tmpfs mounted on the project's state folder (skipped where mount is refused)."""
    folder = project.state_dir
    folder.mkdir(parents=True, exist_ok=True)
    mount = ["mount", "-t", "tmpfs", "-o", "size=2M,mode=0700", "tmpfs", str(folder)]
    done = subprocess.run(mount, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs root): {done.stderr.strip()}")
    try:
        yield folder
    finally:
        # Lazy: the tasks' log writers may still hold files there until the tmux server goes.
        subprocess.run(["umount", "-l", str(folder)], capture_output=True, check=False)


def remount(folder: Path, how: str) -> None:
    """Remount the tmpfs read-only ("ro") or read-write ("rw")."""
    subprocess.run(["mount", "-o", f"remount,{how}", str(folder)], check=True)


def fill(folder: Path) -> None:
    """Write into the filesystem until it is full."""
    subprocess.run(
        ["dd", "if=/dev/zero", f"of={folder / 'fill'}", "bs=64k"],
        capture_output=True,
        check=False,
    )
    with pytest.raises(OSError):
        (folder / "probe").write_bytes(b"x" * 8192)


def no_crash(*texts: str) -> str:
    """The texts joined; none of them may show an unexpected failure."""
    joined = "\n".join(texts)
    for word in CRASH_WORDS:
        assert word not in joined.lower(), joined
    return joined


def cli(project: Workspace, *args: str) -> tuple[int, str, str]:
    """Run the CLI; its exit status, stdout and stderr (never an unexpected failure)."""
    done = project.cli(*args)
    no_crash(done.stdout, done.stderr)
    return done.returncode, done.stdout, done.stderr


def cli_json(project: Workspace, *args: str) -> tuple[int, dict[str, Any]]:
    """Run the CLI with --json; its exit status and parsed answer."""
    code, out, err = cli(project, *args, "--json")
    assert out.strip(), err
    answer: dict[str, Any] = json.loads(out)
    return code, answer


def running_pid(sup: Facade, task: str) -> int:
    """The pid of a running task (which must be alive)."""
    status = status_of(sup, task)
    assert status.state is TaskState.RUNNING and status.pid is not None, status
    assert psutil.pid_exists(status.pid)
    return status.pid


@asynccontextmanager
async def mcp_client(project: Workspace) -> AsyncIterator[Client]:
    """An in-memory MCP session against a fresh server for the project."""
    async with Client(build_server(slot_for(project)), mode="legacy") as client:
        yield client


async def tool(client: Client, name: str, **arguments: Any) -> tuple[bool, str, dict[str, Any]]:
    """Call a tool; (is_error, text, structured content), never an unexpected failure."""
    result = await client.call_tool(name, arguments)
    text = result.content[0]
    assert isinstance(text, types.TextContent)
    no_crash(text.text)
    return bool(result.is_error), text.text, result.structured_content or {}


def never_created(path: Path, window: float = 0.5) -> None:
    """Assert that path does not appear during a short window (tmux runs `#()` jobs late)."""
    deadline = time.monotonic() + window
    while time.monotonic() < deadline:
        assert not path.exists(), f"{path} was created: tmux ran a user string"
        time.sleep(0.05)


# ------------------------------------------------------------------ 4: an invalid taskmux.toml


def test_a_broken_config_leaves_running_tasks_observable_stoppable_and_killable(
    project: Workspace, procs: list[subprocess.Popen[bytes]]
) -> None:
    project.write(API)
    sup = project.open()
    assert anyio.run(lambda: sup.start(["api"], wait=False)).ok
    config = project.root / "taskmux.toml"
    good = config.read_text()
    config.write_text(good.replace("[tasks.api]", "[tasks.api"))  # an unclosed table

    code, out, err = cli(project, "status")
    assert code == 0, err
    row = next(line for line in out.splitlines() if line.startswith("api "))
    assert "running" in row, out
    assert "taskmux.toml" in out + err, (out, err)
    for verb in ("start", "restart"):
        code, out, err = cli(project, verb, "api")
        assert code == 2, (verb, out, err)
        assert str(config) in err and "line" in err.lower(), err
    running_pid(sup, "api")  # the refused actions left it running
    code, out, err = cli(project, "stop", "api")
    assert code == 0, (out, err)
    assert marked(sup, "api") == []
    assert status_of(sup, "api").state is TaskState.STOPPED

    config.write_text(good)
    assert anyio.run(lambda: sup.start(["api"], wait=False)).ok
    running_pid(sup, "api")
    config.write_text(good.replace("command =", "comand ="))  # an unknown key
    code, out, err = cli(project, "kill", "api")
    assert code == 0, (out, err)
    assert marked(sup, "api") == []
    code, out, err = cli(project, "start", "api")
    assert code == 2 and "comand" in err and str(config) in err, (out, err)
    assert marked(sup, "api") == []


@pytest.mark.anyio
async def test_mcp_status_and_stop_work_with_a_broken_config(
    project: Workspace, procs: list[subprocess.Popen[bytes]]
) -> None:
    project.write(API)
    sup = project.open()
    assert (await sup.start(["api"], wait=False)).ok
    config = project.root / "taskmux.toml"
    async with mcp_client(project) as client:
        error, text, status = await tool(client, "status")
        assert not error and status["tasks"][0]["state"] == "running", text
        config.write_text(config.read_text() + "\n[tasks.api\n")
        error, text, status = await tool(client, "status")
        assert not error, text
        assert status["tasks"][0]["state"] == "running", status
        assert "taskmux.toml" in (status.get("config_error") or ""), status
        error, text, _ = await tool(client, "start", tasks=["api"])
        assert error and "taskmux.toml" in text, text
        error, text, _ = await tool(client, "restart", tasks=["api"])
        assert error and "taskmux.toml" in text, text
        error, text, stopped = await tool(client, "stop", tasks=["api"])
        assert not error and stopped["tasks"][0]["state"] == "stopped", text
    assert marked(sup, "api") == []


# ------------------------------------------------------------------ 9: a full or read-only disk


STOP_BUG = (
    "BUG: lifecycle.stop's first record change (records.stop) fails on a full or read-only "
    "state folder and becomes a warning, but its last one (records.stopped) then reads the "
    "unchanged UP record and raises IllegalTransition 'cannot finish a stop: the task is up': "
    "the processes are gone yet the stop (and any restart) replies failed, with no warning "
    "saying what could not be written, and status shows the task exited, not stopped"
)


def assert_full_disk_said(answer: dict[str, Any]) -> None:
    """An answer on a full disk says that it could not write (as its error or a warning)."""
    said = [answer.get("message") or ""] + [
        str(task.get("error") or "") + " ".join(task.get("warnings") or [])
        for task in answer["tasks"]
    ]
    assert "No space left" in " ".join(said), answer


@pytest.mark.anyio
async def test_a_stop_on_a_full_disk_stops_and_says_what_was_not_written(
    project: Workspace, procs: list[subprocess.Popen[bytes]], state_tmpfs: Path
) -> None:
    project.write(API)
    sup = project.open()
    assert (await sup.start(["api"], wait=False)).ok
    running_pid(sup, "api")
    fill(state_tmpfs)
    code, stopped = await anyio.to_thread.run_sync(lambda: cli_json(project, "stop", "api"))
    assert marked(sup, "api") == []
    assert code == 0 and stopped["ok"], stopped
    assert_full_disk_said(stopped)  # the record could not be saved: the reply says so
    assert status_of(sup, "api").state is TaskState.STOPPED
    again = await sup.stop(["api"])  # the facade, on a task already stopped
    assert again.ok, again
    async with mcp_client(project) as client:
        error, text, answer = await tool(client, "stop", tasks=["api"])
        assert not error and answer["ok"], text


def test_a_stop_the_monitor_answers_on_a_full_disk_says_what_was_not_written(
    project: Workspace,
    procs: list[subprocess.Popen[bytes]],
    state_tmpfs: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    project.write(API + '[tasks.web]\ncommand = "sleep 1000"\n')
    sup = project.open()
    assert anyio.run(lambda: sup.start(wait=False)).ok
    run_monitor(project, procs, sup)
    wait_until((sup.paths.root / "control.sock").exists, timeout=10)
    fill(state_tmpfs)
    argv = ["--project", str(project.root), "--json", "stop", "api"]
    assert ask_monitor(argv, project.root, project.env) == 0  # the monitor answered
    stopped = json.loads(no_crash(capsys.readouterr().out))
    assert stopped["ok"], stopped
    assert_full_disk_said(stopped)
    assert marked(sup, "api") == [] and marked(sup, "web") != []
    assert procs[0].poll() is None
    code, shown = cli_json(project, "status")
    assert code == 0 and {t["name"]: t["state"] for t in shown["tasks"]}["web"] == "running"


@pytest.mark.anyio
async def test_a_start_on_a_full_disk_fails_clearly_and_leaves_nothing_running(
    project: Workspace, procs: list[subprocess.Popen[bytes]], state_tmpfs: Path
) -> None:
    project.write(API)
    sup = project.open()
    fill(state_tmpfs)
    code, started = await anyio.to_thread.run_sync(lambda: cli_json(project, "start", "api"))
    assert code == 1 and not started["ok"], started
    assert_full_disk_said(started)
    assert marked(sup, "api") == []
    async with mcp_client(project) as client:
        error, text, answer = await tool(client, "start", tasks=["api"])
        assert not answer.get("ok", False) and "No space left" in text, text
        for name in ("status", "events", "logs"):
            error, text, _ = await tool(client, name)
            assert not error, (name, text)
    assert marked(sup, "api") == []


@pytest.mark.anyio
async def test_a_restart_on_a_full_disk_restarts_or_fails_clearly(
    project: Workspace, procs: list[subprocess.Popen[bytes]], state_tmpfs: Path
) -> None:
    project.write(API)
    sup = project.open()
    assert (await sup.start(["api"], wait=False)).ok
    fill(state_tmpfs)
    code, answer = await anyio.to_thread.run_sync(
        lambda: cli_json(project, "restart", "api", "--no-wait")
    )
    assert_full_disk_said(answer)
    if code == 0:  # restarted, with warnings: one run, one process tree
        assert marked(sup, "api") == [running_pid(sup, "api")], answer
    else:
        assert code == 1 and marked(sup, "api") == [], answer
    async with mcp_client(project) as client:
        error, text, answer = await tool(client, "restart", tasks=["api"], wait=False)
        assert not error, text
        assert_full_disk_said(answer)
    assert (await sup.stop(["api"])).ok
    assert marked(sup, "api") == []


def test_a_read_only_state_folder_stops_and_records_the_exit_once(
    project: Workspace, procs: list[subprocess.Popen[bytes]], state_tmpfs: Path
) -> None:
    project.write(
        """
        [tasks.api]
        command = "sleep 100000"
        restart_policy = "always"
        restart_backoff = 0
        stop_grace_period = 0.5

        [tasks.canary]
        command = "sleep 0.2; exit 1"
        restart_backoff = 0
        max_restarts = 0
        auto_start = false
        """
    )
    sup = project.open()
    # The logs live elsewhere: tmpfs refuses a read-only remount while the log writer holds
    # its file open for writing.
    shutil.rmtree(sup.paths.logs)
    (project.root.parent / "logs").mkdir()
    sup.paths.logs.symlink_to(project.root.parent / "logs")
    assert anyio.run(lambda: sup.start(["api"], wait=False)).ok
    running_pid(sup, "api")
    remount(state_tmpfs, "ro")
    try:
        code, out, err = cli(project, "stop", "api")
        assert code == 0, (out, err)
        assert marked(sup, "api") == []
        for _ in range(3):  # looking again must not take the stop for an exit to record
            code, out, err = cli(project, "status")
            assert code == 0 and "stopped" in out, (out, err)
        again = anyio.run(lambda: sup.stop(["api"]))
        assert again.ok, again
    finally:
        remount(state_tmpfs, "rw")
    for _ in range(2):
        cli(project, "status")
    run_monitor(project, procs, sup)
    assert anyio.run(lambda: sup.start(["canary"], wait=False)).ok
    wait_until(lambda: sup.records.get("canary").run >= 3, timeout=20)  # passes of the monitor
    assert status_of(sup, "api").state is TaskState.STOPPED
    assert marked(sup, "api") == []
    ends = [
        (e["_cause"], kind)
        for kind in ("exited", "stopped", "killed")
        for e in events_of(sup, kind, "api")
    ]
    assert len(ends) <= 1, ends
    assert events_of(sup, "restarted", "api") == []


# ------------------------------------------------------------------ 9: a nested events line


@pytest.mark.anyio
async def test_a_deeply_nested_event_line_is_skipped_by_events_and_inspect(
    project: Workspace, procs: list[subprocess.Popen[bytes]]
) -> None:
    project.write(API)
    sup = project.open()
    assert (await sup.start(["api"], wait=False)).ok
    with sup.paths.events.open("a") as handle:
        handle.write("[" * 100_000 + "\n")
        handle.write('{"a":' * 50_000 + "\n")
    assert (await sup.stop(["api"])).ok
    assert [e.type for e in sup.events_sync(["api"]).events] == ["started", "stopped"]

    code, out = await anyio.to_thread.run_sync(lambda: cli_json(project, "events"))
    assert code == 0, out
    assert [e["type"] for e in out["events"] if e["task"] == "api"] == ["started", "stopped"]
    code, inspected = await anyio.to_thread.run_sync(lambda: cli_json(project, "inspect", "api"))
    assert code == 0
    assert [e["type"] for e in inspected["recent_events"]] == ["started", "stopped"]
    async with mcp_client(project) as client:
        error, text, events = await tool(client, "events", tasks=["api"])
        assert not error, text
        assert [e["type"] for e in events["events"]] == ["started", "stopped"]
        error, text, inspected = await tool(client, "inspect", task="api")
        assert not error, text
        assert [e["type"] for e in inspected["recent_events"]] == ["started", "stopped"]


# ------------------------------------------------------------------ 9: user strings and tmux


def toml_string(value: str) -> str:
    """A TOML basic string (JSON's escapes are TOML's)."""
    return json.dumps(value)


def environ_of(pid: int) -> dict[bytes, bytes]:
    """The environment a process started with, byte for byte."""
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)


def test_tmux_never_parses_cwd_or_env_values(
    project: Workspace, procs: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    mark = tmp_path / "touched-by-tmux"
    folders = {
        "semi": "semi;",
        "hashjob": f"#(touch {mark})",
        "doublehash": "a##b",
        "format": "x#{pane_pid}y",
    }
    value = f"#{{pane_pid}} #(touch {mark}) $HOME ##;"
    tasks = ""
    for name, folder in folders.items():
        (project.root / folder).mkdir(parents=True)
        tasks += f"""
        [tasks.{name}]
        command = "sleep 100000"
        cwd = {toml_string(folder)}
        stop_grace_period = 0.5
        """
    tasks += f"""
        [tasks.envsemi]
        command = "sleep 100000"
        stop_grace_period = 0.5
        env = {{ VALUE = {toml_string(value)}, PLAIN = "ends;" }}
        """
    project.write(tasks)
    sup = project.open()
    started = anyio.run(lambda: sup.start(wait=False))
    assert started.ok, started
    for name, folder in folders.items():
        pid = running_pid(sup, name)
        assert Path(f"/proc/{pid}/cwd").resolve() == (project.root / folder).resolve(), name
    env = environ_of(running_pid(sup, "envsemi"))
    assert env[b"VALUE"] == value.encode() and env[b"PLAIN"] == b"ends;", env
    never_created(mark)


def test_a_tmux_server_without_sessions_reads_as_no_session(project: Workspace) -> None:
    project.write(API)
    sup = project.open()
    project.server.cmd("-f", "/dev/null", "start-server", ";", "set", "-g", "exit-empty", "off")
    listed = project.server.cmd("list-panes", "-a", check=False)
    assert listed.returncode != 0 and "no current target" in listed.stderr, listed
    snapshot = sup.backend.snapshot_sync()
    assert snapshot.server_running and snapshot.session is None and not snapshot.panes
    started = anyio.run(lambda: sup.start(wait=False))
    assert started.ok, started
    assert running_pid(sup, "api")


def test_what_outlives_a_window_closed_by_hand_gets_the_stop_signal_at_once(
    project: Workspace,
) -> None:
    project.write(
        """
        [tasks.api]
        command = "trap '' HUP; exec sleep 1000"
        stop_grace_period = 20
        """
    )
    sup = project.open()
    assert anyio.run(lambda: sup.start(timeout=10)).ok
    pid = running_pid(sup, "api")
    project.server.cmd("kill-window", "-t", sup.backend.snapshot_sync().panes["api"].window_id)
    wait_until(lambda: "api" not in sup.backend.snapshot_sync().panes, timeout=10)
    assert is_running(pid)  # it ignored the SIGHUP of its closing window
    stopped = anyio.run(lambda: sup.stop(["api"]))
    assert stopped.ok and not is_running(pid), stopped
    # its stop signal, not a SIGTERM after the 20 s grace
    assert [e["signal"] for e in events_of(sup, "stopped", "api")] == ["SIGINT"]


def test_a_project_folder_with_a_tmux_format_runs_the_hosted_monitor_without_running_it(
    project: Workspace, tmp_path: Path
) -> None:
    home = Path(project.env["HOME"])
    folder = tmp_path / "p#(cd;touch hosted-mark)"
    folder.mkdir()
    odd = Workspace(folder, project.state_dir, project.server, dict(project.env))
    odd.env["TASKMUX_HOSTED_MONITOR"] = "1"
    odd.write(API)
    sup = odd.open()
    project.facades.append(sup)  # the fixture ends its processes too
    code, out, err = cli(odd, "start", "api")
    assert code == 0, (out, err)
    running_pid(sup, "api")
    wait_until(lambda: sup.monitor_info().host == "tmux", timeout=15)
    for place in (home, folder, tmp_path, Path.cwd()):
        never_created(place / "hosted-mark", window=0.1)
    assert anyio.run(lambda: sup.stop(["api"])).ok


def test_a_40_kb_command_and_env_value_pass_check_and_run(
    project: Workspace, procs: list[subprocess.Popen[bytes]]
) -> None:
    command = ": " + "x" * LONG + "; sleep 100000"
    pattern = "ab'c\"d;e#{pane_pid}f$(g)h\\i `j` ##k %l "
    value = (pattern * (LONG // len(pattern) + 1))[:LONG]
    project.write(
        f"""
        [tasks.big]
        command = {toml_string(command)}
        stop_grace_period = 0.5
        env = {{ BIG = {toml_string(value)} }}
        """
    )
    code, out, err = cli(project, "check")
    assert code == 0 and "ok" in out, (out, err)
    sup = project.open()
    started = anyio.run(lambda: sup.start(["big"], wait=False))
    assert started.ok, started
    pid = running_pid(sup, "big")
    assert psutil.Process(pid).cmdline()[-1] == command
    assert environ_of(pid)[b"BIG"] == value.encode()


# ------------------------------------------------------------------ 10: logs lost silently


def numbers(sup: Facade, task: str, lines: int) -> list[str]:
    """The last lines of a task's current run."""
    return [line.text for line in sup.logs_sync([task], lines=lines, since="start").lines]


HOLD_S = 1.0


async def freeze_writer_until_the_pane_dies(sup: Facade, task: str, run: int) -> None:
    """SIGSTOP the log writer of a task's run as soon as it exists; SIGCONT it a second after
    the run's process ended (its output then sits in the pipe, not yet on disk: only the
    flush barrier makes a verdict built meanwhile complete)."""
    lock = Path(str(sup.logs.path(task)) + ".lock")
    with anyio.fail_after(10):
        while True:
            parts = lock.read_text().split() if lock.exists() else []
            if len(parts) >= 2 and parts[1] == str(run):
                pid = int(parts[0])
                os.kill(pid, signal.SIGSTOP)
                break
            await anyio.sleep(0.005)
    try:
        with anyio.fail_after(10):
            while True:
                pane = (await sup.backend.snapshot()).panes.get(task)
                if pane is not None and pane.run == run and not is_running(pane.pid):
                    break
                await anyio.sleep(0.02)
        await anyio.sleep(HOLD_S)  # the fault: a writer frozen past its pane's death
    finally:
        os.kill(pid, signal.SIGCONT)


def test_a_verdict_waits_for_a_frozen_log_writer_to_flush_everything(project: Workspace) -> None:
    # Fits in the socket tmux writes to (a few hundred small writes, not 64 KB: 5,000 lines
    # could fill it, and then tmux itself may lose the rest): all of it waits in the socket
    # while the writer is frozen past the pane's death.
    total = 1_000
    project.write(
        f"""
        [tasks.count]
        command = "sleep 0.5; seq 1 {total}; exit 3"
        oneshot = true
        """
    )
    sup = project.open()
    for run in (1, 2):

        async def both(run: int = run) -> Any:
            async with anyio.create_task_group() as group:
                group.start_soon(freeze_writer_until_the_pane_dies, sup, "count", run)
                verdict = await sup.start(["count"], timeout=20)
            return verdict

        verdict = anyio.run(both)
        task = verdict.tasks[0]
        assert task.action == "crashed" and task.exit_code == 3, verdict
        assert task.log_tail[-1:] == [str(total)], task.log_tail  # the flushed last line
        assert numbers(sup, "count", total) == [str(n) for n in range(1, total + 1)]


TICKER = """
[tasks.ticker]
command = "i=0; while :; do i=$((i+1)); echo tick-$i; sleep 0.05; done"
stop_grace_period = 0.5
"""


def last_tick(sup: Facade) -> int:
    """The highest tick in the log of the current run (0 before any)."""
    ticks = [
        int(line.split("-")[1])
        for line in numbers(sup, "ticker", 50)
        if line.startswith("tick-") and line[5:].isdigit()
    ]
    return max(ticks, default=0)


def writer_pid(sup: Facade) -> int:
    """The pid of the ticker's log writer, from its lock file."""
    lock = Path(str(sup.logs.path("ticker")) + ".lock")
    return int(lock.read_text().split()[0])


def test_a_killed_log_writer_is_replaced_and_logging_resumes(
    project: Workspace, procs: list[subprocess.Popen[bytes]]
) -> None:
    project.write(TICKER)
    sup = project.open()
    run_monitor(project, procs, sup)
    assert anyio.run(lambda: sup.start(["ticker"], wait=False)).ok
    wait_until(lambda: last_tick(sup) >= 3)
    writer = writer_pid(sup)
    os.kill(writer, signal.SIGKILL)
    with contextlib.suppress(psutil.Error):
        psutil.Process(writer).wait(timeout=2)
    before = last_tick(sup)
    replaced = wait_until(lambda: events_of(sup, "log_writer_replaced", "ticker"), timeout=10)
    assert "writer died" in str(replaced[0]["reason"]), replaced
    wait_until(lambda: last_tick(sup) > before + 3, timeout=10)
    assert writer_pid(sup) != writer


def test_a_deleted_log_folder_is_noticed_and_logging_resumes(
    project: Workspace, procs: list[subprocess.Popen[bytes]]
) -> None:
    project.write(TICKER)
    sup = project.open()
    run_monitor(project, procs, sup)
    assert anyio.run(lambda: sup.start(["ticker"], wait=False)).ok
    before = wait_until(lambda: last_tick(sup) >= 3 and last_tick(sup))
    shutil.rmtree(sup.paths.logs)
    replaced = wait_until(lambda: events_of(sup, "log_writer_replaced", "ticker"), timeout=10)
    assert "removed" in str(replaced[0]["reason"]), replaced
    wait_until(lambda: last_tick(sup) > before + 3, timeout=10)
    assert sup.logs.path("ticker").exists()
