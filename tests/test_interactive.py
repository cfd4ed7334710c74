"""A task's terminal for agents: send, screen and wait_for on real tmux and real programs."""

from __future__ import annotations

import json
import os
import subprocess
import time
from typing import Any

import anyio
import psutil
import pytest
from mcp import Client
from support import Workspace, end_processes, events_of, run, run_monitor, slot_for, wait_until

from taskmux_mcp import records
from taskmux_mcp.budget import REPLY_BUDGET, fit
from taskmux_mcp.errors import ArgumentError, InvalidArgument
from taskmux_mcp.events import Cause
from taskmux_mcp.interactive import key_name
from taskmux_mcp.mcp_server import build_server
from taskmux_mcp.models import ScreenResult, TaskState

ASKER = """while :; do printf 'name? '; read n || exit 0; echo "hello [$n]"; done"""


@pytest.fixture
def anyio_backend() -> str:
    """Run async tests on asyncio."""
    return "asyncio"


def asker(project: Workspace, policy: str = "on-failure") -> Any:
    project.write(
        f"""
        [tasks.ask]
        command = '''{ASKER}'''
        restart_policy = "{policy}"
        stop_grace_period = 0.5
        """
    )
    sup = project.open(Cause.AGENT)
    assert run(lambda: sup.start(["ask"], timeout=10)).ok
    return sup


def test_a_prompt_gets_what_send_typed(project: Workspace) -> None:
    sup = asker(project)
    sent = run(lambda: sup.send("ask", "Ada Lovelace", enter=True))
    assert sent.typed_chars == 12 and sent.keys == ["Enter"]
    got = run(lambda: sup.wait_for("ask", r"hello \[Ada", timeout=10))
    assert got.ok and got.outcome == "matched"
    assert got.line == "hello [Ada Lovelace]"
    assert events_of(sup, "input_sent", "ask")[-1]["chars"] == 12
    assert "Ada" not in json.dumps(events_of(sup, "input_sent", "ask"))  # the text is not logged
    run(sup.stop)


def test_text_arrives_literally_and_runs_nothing(project: Workspace) -> None:
    sup = asker(project)
    canary = project.root / "PWNED"
    text = f"-t x; #{{pane_pid}} #(touch {canary}) Enter C-c ##;"
    run(lambda: sup.send("ask", text, enter=True))
    got = run(lambda: sup.wait_for("ask", r"^hello \[", timeout=10))
    assert got.line == f"hello [{text}]"
    assert not canary.exists()
    assert sup.status_sync().tasks[0].state is TaskState.RUNNING  # "C-c" typed as text
    run(sup.stop)


def test_concurrent_senders_never_interleave(project: Workspace) -> None:
    sup = asker(project)
    others = [project.open(Cause.AGENT) for _ in range(3)]
    texts = [letter * 3000 for letter in "abc"]  # longer than one tmux argument chunk

    async def all_at_once() -> None:
        async with anyio.create_task_group() as group:
            for facade, text in zip(others, texts, strict=True):
                group.start_soon(lambda f=facade, t=text: f.send("ask", t, enter=True))

    run(all_at_once)
    for text in texts:
        got = run(lambda t=text: sup.wait_for("ask", rf"^hello \[{t[0]}", timeout=15))
        assert got.line == f"hello [{text}]"
    run(sup.stop)


def test_ctrl_c_from_send_is_a_stop_not_a_crash(project: Workspace) -> None:
    sup = asker(project, policy="always")
    procs: list[subprocess.Popen[bytes]] = []
    try:
        run_monitor(project, procs, sup)
        run_before = sup.records.get("ask").run
        run(lambda: sup.send("ask", "", ["C-c"]))
        wait_until(lambda: sup.records.get("ask").phase.value == "stopped", timeout=15)
        status = sup.status_sync().tasks[0]
        assert status.state is TaskState.STOPPED and status.manually_stopped
        record = sup.records.get("ask")
        assert record.run == run_before and record.stopped_by == "agent"
        assert [e["stop"] for e in events_of(sup, "stopped", "ask")] == ["interrupt"]
        assert events_of(sup, "restart_scheduled", "ask") == []
        assert events_of(sup, "exited", "ask") == []
    finally:
        end_processes(procs)


def test_a_crash_long_after_an_interrupt_is_still_a_crash(
    project: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(records, "INTERRUPT_WINDOW_S", 1.0)
    project.write(
        """
        [tasks.repl]
        command = "trap '' INT; while [ ! -e crash ]; do sleep 0.05; done; exit 7"
        restart_policy = "no"
        """
    )
    sup = project.open(Cause.AGENT)
    assert run(lambda: sup.start(["repl"], timeout=10)).ok
    run(lambda: sup.send("repl", "", ["C-c"]))  # ignored by the program
    pane = wait_until(lambda: run(sup.backend.snapshot).panes["repl"])
    assert pane.interrupt is not None
    at = float(pane.interrupt.split()[1])
    wait_until(lambda: time.time() - at > 2.5, timeout=5, interval=0.1)
    (project.root / "crash").touch()
    ended = wait_until(lambda: run(sup.backend.snapshot).panes["repl"].dead)
    assert ended
    status = sup.status_sync().tasks[0]
    assert status.state is TaskState.EXITED and status.exit_code == 7
    assert not status.manually_stopped


def test_screen_shows_what_a_full_screen_program_drew(project: Workspace) -> None:
    (project.root / "draw.sh").write_text(
        r"printf '\033[2J\033[H\033[31mTOP\033[0m\033[6;11HDRAWN here\033[3;1Hrow three'"
        "\n" r"printf '\033[1;4H'" "\n"
    )  # fmt: skip
    project.write(
        """
        [tasks.tui]
        command = "sh draw.sh; sleep 1000"
        stop_grace_period = 0.5
        """
    )
    sup = project.open(Cause.AGENT)
    assert run(lambda: sup.start(["tui"], timeout=10)).ok
    shot = wait_until(lambda: (s := run(lambda: sup.screen("tui"))) and len(s.lines) >= 6 and s)
    assert shot.lines[0] == "TOP"
    assert shot.lines[2] == "row three"
    assert shot.lines[5] == " " * 10 + "DRAWN here"
    assert all("\x1b" not in line for line in shot.lines)
    assert (shot.cursor_x, shot.cursor_y) == (3, 0)
    assert (shot.width, shot.height) == (220, 50)
    assert shot.state is TaskState.RUNNING
    tail = run(lambda: sup.screen("tui", lines=2))
    assert tail.lines == shot.lines[-2:]
    run(sup.stop)


def test_wait_for_returns_on_a_line_printed_later(project: Workspace) -> None:
    project.write(
        """
        [tasks.build]
        command = "echo starting; sleep 2; echo step one; echo compiled successfully; sleep 1000"
        stop_grace_period = 0.5
        """
    )
    sup = project.open(Cause.AGENT)
    assert run(lambda: sup.start(["build"], wait=False)).ok
    got = run(lambda: sup.wait_for("build", "compiled", timeout=20))
    assert got.ok and got.line == "compiled successfully"
    assert got.waited_s >= 1.0
    assert got.before[-1] == "step one"
    run(sup.stop)


def test_wait_for_ignores_the_previous_run(project: Workspace) -> None:
    project.write(
        """
        [tasks.web]
        command = '''if [ -e second ]; then while [ ! -e gate ]; do sleep 0.05; done; fi
                     touch second; echo READY; sleep 1000'''
        stop_grace_period = 0.5
        """
    )
    sup = project.open(Cause.AGENT)
    assert run(lambda: sup.start(["web"], timeout=10)).ok
    assert run(lambda: sup.wait_for("web", "READY", timeout=10)).ok  # run 1 printed it
    assert run(lambda: sup.restart(["web"], timeout=10)).ok
    closed = run(lambda: sup.wait_for("web", "READY", timeout=1.0))
    assert not closed.ok and closed.outcome == "timeout"
    assert "within 1 s" in (closed.error or "")
    (project.root / "gate").touch()
    opened = run(lambda: sup.wait_for("web", "READY", timeout=10))
    assert opened.ok
    now_only = run(lambda: sup.wait_for("web", "READY", timeout=0.5, since="now"))
    assert now_only.outcome == "timeout"
    run(sup.stop)


def test_wait_for_returns_the_exit_when_the_task_dies_first(project: Workspace) -> None:
    project.write(
        """
        [tasks.flaky]
        command = "echo booting; sleep 1; echo 'fatal: no config'; exit 3"
        restart_policy = "no"
        """
    )
    sup = project.open(Cause.AGENT)
    assert run(lambda: sup.start(["flaky"], wait=False)).ok
    got = run(lambda: sup.wait_for("flaky", "listening", timeout=20))
    assert not got.ok and got.outcome == "exited" and got.exit_code == 3
    assert "exited with status 3" in (got.error or "")
    assert "fatal: no config" in got.log_tail
    again = run(lambda: sup.wait_for("flaky", "listening", timeout=20))
    assert again.outcome == "not_running" and again.waited_s < 5
    found = run(lambda: sup.wait_for("flaky", "fatal", timeout=5))
    assert found.ok and found.state is TaskState.EXITED  # its last run's lines still count


def test_cli_send_screen_and_wait(project: Workspace) -> None:
    asker(project)
    sent = project.cli("send", "ask", "from the cli", "--enter")
    assert sent.returncode == 0, sent.stderr
    waited = project.cli("wait", "ask", r"hello \[from", "--timeout", "10")
    assert waited.returncode == 0 and "> hello [from the cli]" in waited.stdout
    shown = project.cli("--json", "screen", "ask")
    assert "hello [from the cli]" in json.loads(shown.stdout)["lines"]
    timed_out = project.cli("wait", "ask", "never printed", "--timeout", "0.5")
    assert timed_out.returncode == 1 and "no line matched" in timed_out.stdout
    bad_key = project.cli("send", "ask", "--key", "Hyper-X")
    assert bad_key.returncode == 2 and "unknown key 'Hyper-X'" in bad_key.stderr
    keyed = project.cli("send", "ask", "--key", "q", "--key", "Enter")
    assert keyed.returncode == 0
    assert "hello [q]" in project.cli("wait", "ask", r"hello \[q\]", "--timeout", "10").stdout
    project.cli("stop")


def test_refusals_are_clear(project: Workspace) -> None:
    project.write(
        """
        [tasks.idle]
        command = "sleep 1000"
        auto_start = false
        """
    )
    sup = project.open(Cause.AGENT)
    with pytest.raises(InvalidArgument, match="has no window"):
        run(lambda: sup.send("idle", "x"))
    with pytest.raises(InvalidArgument, match="has no window"):
        run(lambda: sup.screen("idle"))
    with pytest.raises(ArgumentError, match="not a valid regular expression"):
        run(lambda: sup.wait_for("idle", "(", timeout=1))
    with pytest.raises(ArgumentError, match="not a valid regular expression"):
        run(lambda: sup.start(["idle"], wait_for="[unclosed"))
    assert sup.status_sync().tasks[0].state is TaskState.STOPPED  # nothing was started
    assert run(lambda: sup.start(["idle"], timeout=10)).ok
    with pytest.raises(ArgumentError, match="send needs text, keys or enter"):
        run(lambda: sup.send("idle", ""))
    with pytest.raises(ArgumentError, match="longer than 4096"):
        run(lambda: sup.send("idle", "x" * 4097))
    run(lambda: sup.kill(["idle"]))
    with pytest.raises(InvalidArgument, match="has no window"):
        run(lambda: sup.send("idle", "x"))


def test_key_names() -> None:
    assert key_name("enter") == (False, "Enter")
    assert key_name("Ctrl-C") == (False, "C-c")
    assert key_name("^D") == (False, "C-d")
    assert key_name("PageUp") == (False, "PPage")
    assert key_name("q") == (True, "q")
    assert key_name(";") == (True, ";")
    for bad in ("", "Hyper-X", "C-c;", "send-keys", "\x03", "#{pane_pid}"):
        with pytest.raises(ArgumentError, match="unknown key"):
            key_name(bad)


def own_log_fds(path: str) -> list[str]:
    """Files of the log folder this process holds open."""
    return [f.path for f in psutil.Process(os.getpid()).open_files() if f.path.startswith(path)]


@pytest.mark.anyio
async def test_mcp_wait_for_is_cancellable_and_restart_waits_for_a_line(
    project: Workspace,
) -> None:
    project.write(
        """
        [tasks.web]
        command = "echo booting; sleep 1; echo 'compiled in 12ms'; sleep 1000"
        stop_grace_period = 0.5
        """
    )
    server = build_server(slot_for(project))
    async with Client(server) as client:
        started = await client.call_tool("start", {"tasks": ["web"], "wait": False})
        assert not started.is_error
        logs = str(project.state_dir)
        scope = anyio.CancelScope()
        finished: list[object] = []

        async def waiting() -> None:
            with scope:
                finished.append(
                    await client.call_tool("wait_for", {"task": "web", "pattern": "never"})
                )

        async with anyio.create_task_group() as group:
            group.start_soon(waiting)
            await anyio.to_thread.run_sync(lambda: wait_until(lambda: own_log_fds(logs)))
            scope.cancel()
        assert finished == []
        await anyio.to_thread.run_sync(lambda: wait_until(lambda: not own_log_fds(logs)))

        restarted = await client.call_tool(
            "restart", {"tasks": ["web"], "wait_for": r"compiled in \d+ms", "timeout": 20}
        )
        assert not restarted.is_error, restarted.content
        data = restarted.structured_content
        assert data is not None and data["ok"]
        assert data["tasks"][0]["matched_line"] == "compiled in 12ms"
        refused = await client.call_tool("send", {"task": "web", "keys": ["Meta-Q"]})
        assert refused.is_error and "unknown key" in str(refused.content[0])
        await client.call_tool("stop", {})


def test_a_screen_too_big_for_a_reply_keeps_its_bottom_rows() -> None:
    rows = [f"row {n} " + "x" * 3000 for n in range(100)]
    shot = ScreenResult(
        task="tui", state=TaskState.RUNNING, lines=rows, cursor_x=0, cursor_y=99, width=3010,
        height=100,
    )  # fmt: skip
    fitted = fit(shot)
    assert len(fitted.model_dump_json().encode()) <= REPLY_BUDGET
    assert fitted.truncated and fitted.notice and "top row(s)" in fitted.notice
    assert fitted.lines == rows[-len(fitted.lines) :] and 0 < len(fitted.lines) < 100
    assert fit(ScreenResult(task="t", state=TaskState.RUNNING, lines=["a"], cursor_x=0,
                            cursor_y=0, width=1, height=1)).truncated is False  # fmt: skip
