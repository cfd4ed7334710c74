"""The MCP face on real tmux: in memory with the SDK's client, over stdio, with the Inspector."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import psutil
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.server import MCPServer
from mcp.shared.exceptions import MCPDeprecationWarning, MCPError
from support import Workspace, npm_tool, slot_for

from taskmux_mcp import mcp_server
from taskmux_mcp.mcp_server import INSTRUCTIONS, build_server
from taskmux_mcp.operations import OPERATIONS

TOOLS = {
    "status",
    "start",
    "stop",
    "restart",
    "kill",
    "logs",
    "grep",
    "inspect",
    "health",
    "events",
    "down",
    "send",
    "screen",
    "wait_for",
}
ENTRY = Path(sys.executable).with_name("taskmux-mcp")


@pytest.fixture
def anyio_backend() -> str:
    """Run async tests on asyncio."""
    return "asyncio"


def free_port() -> int:
    """A TCP port nobody listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Seen:
    """What a client received besides replies: log messages and resource updates."""

    logs: list[types.LoggingMessageNotificationParams] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)

    async def on_log(self, params: types.LoggingMessageNotificationParams) -> None:
        """logging_callback."""
        self.logs.append(params)

    async def on_message(self, message: object) -> None:
        """message_handler."""
        if isinstance(message, types.ResourceUpdatedNotification):
            self.updated.append(str(message.params.uri))

    def messages(self) -> list[str]:
        """The text of every log message so far."""
        return [
            str(entry.data.get("message")) for entry in self.logs if isinstance(entry.data, dict)
        ]


async def until(predicate: Callable[[], Any], timeout: float = 10.0) -> Any:
    """Poll an async-world condition with a deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s (last value: {value!r})")
        await anyio.sleep(0.05)


async def until_async(predicate: Callable[[], Awaitable[Any]], timeout: float = 10.0) -> Any:
    """Poll an async condition with a deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s (last value: {value!r})")
        await anyio.sleep(0.1)


@asynccontextmanager
async def connect(
    project: Workspace, *, mode: str = "legacy", server: MCPServer[Any] | None = None
) -> AsyncIterator[tuple[Client, Seen]]:
    """An in-memory client session against the server (a fresh one for the project by default)."""
    seen = Seen()
    server = server or build_server(slot_for(project))
    async with Client(
        server, mode=mode, logging_callback=seen.on_log, message_handler=seen.on_message
    ) as client:
        yield client, seen


async def call(client: Client, tool: str, **arguments: Any) -> dict[str, Any]:
    """Call a tool that must succeed; its structured content."""
    result = await client.call_tool(tool, arguments)
    assert not result.is_error, result.content
    assert result.structured_content is not None
    text = result.content[0]
    assert isinstance(text, types.TextContent)
    assert json.loads(text.text)  # the same answer as compact JSON text
    return result.structured_content


async def fail(client: Client, tool: str, **arguments: Any) -> str:
    """Call a tool that must fail as a tool error; its message."""
    result = await client.call_tool(tool, arguments)
    assert result.is_error, result.structured_content
    text = result.content[0]
    assert isinstance(text, types.TextContent)
    return text.text


def task(status: dict[str, Any], name: str) -> dict[str, Any]:
    """One task's entry of a status answer."""
    return next(t for t in status["tasks"] if t["name"] == name)


async def subscribe(client: Client, uri: str) -> None:
    """resources/subscribe, the 2025-11-25 way."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MCPDeprecationWarning)
        await client.subscribe_resource(uri)


async def unsubscribe(client: Client, uri: str) -> None:
    """resources/unsubscribe, the 2025-11-25 way."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MCPDeprecationWarning)
        await client.unsubscribe_resource(uri)


SIMPLE = """
name = "simple"
[tasks.a]
command = "echo a-up; sleep 1000"
stop_grace_period = 0.5
[tasks.b]
command = "echo b-up; sleep 1000"
auto_start = false
stop_grace_period = 0.5
"""


@pytest.mark.anyio
async def test_tools_list_has_every_tool_with_schemas_and_annotations(
    project: Workspace,
) -> None:
    project.write(SIMPLE)
    async with connect(project) as (client, _):
        assert client.instructions == INSTRUCTIONS and "`status` first" in INSTRUCTIONS
        caps = client.server_capabilities
        assert caps.resources is not None and caps.resources.subscribe
        assert caps.logging is not None
        listed = {tool.name: tool for tool in (await client.list_tools()).tools}
    assert set(listed) == TOOLS
    for name, tool in listed.items():
        info = OPERATIONS[name]
        assert tool.input_schema["type"] == "object"
        assert "progress" not in tool.input_schema["properties"]
        assert tool.output_schema is not None and tool.output_schema["type"] == "object"
        assert tool.description and len(tool.description) > 40
        hints = tool.annotations
        assert hints is not None
        assert hints.read_only_hint is info.read_only
        assert hints.destructive_hint is info.destructive
        assert hints.idempotent_hint is info.idempotent
        assert hints.open_world_hint is False

    def props(name: str) -> dict[str, Any]:
        return dict(listed[name].input_schema["properties"])

    assert set(props("start")) == {"tasks", "wait", "timeout", "force_port", "wait_for"}
    assert set(props("send")) == {"task", "text", "keys", "enter"}
    assert props("send")["keys"]["maxItems"] == 32
    assert set(props("wait_for")) == {"task", "pattern", "timeout", "since"}
    assert listed["send"].annotations is not None
    assert listed["send"].annotations.read_only_hint is False
    assert props("start")["wait"]["default"] is True and props("start")["timeout"]["default"] == 60
    assert set(props("grep")) == {
        "pattern", "tasks", "context", "ignore_case", "since", "max_matches",
    }  # fmt: skip
    assert props("grep")["context"]["default"] == 2
    assert props("grep")["max_matches"]["default"] == 100
    assert props("logs")["lines"]["default"] == 100
    assert props("events")["limit"]["default"] == 50
    assert listed["kill"].input_schema["required"] == ["tasks"]
    assert listed["grep"].input_schema["required"] == ["pattern"]
    assert listed["inspect"].input_schema["required"] == ["task"]
    assert "required" not in listed["start"].input_schema
    status_schema = listed["status"].output_schema
    assert status_schema is not None
    assert set(status_schema["properties"]) >= {"tasks", "monitor", "session", "config_path"}


def session_toml(port: int, marker: Path) -> str:
    return f"""
    name = "session"
    [tasks.web]
    command = "python3 -m http.server {port} --bind 127.0.0.1"
    port = {port}
    health_url = "http://127.0.0.1:{port}/"
    health_interval = 0.5
    health_start_period = 5
    stop_grace_period = 1
    [tasks.worker]
    command = "echo before; echo \\"ERROR boom in $$\\"; echo after; echo worker-pid-$$; sleep 1000"
    restart_policy = "on-failure"
    restart_backoff = 1
    stop_grace_period = 0.5
    [hooks]
    after_start = "echo started >> {marker}"
    """


@pytest.mark.anyio
async def test_full_session(project: Workspace) -> None:
    port = free_port()
    project.write(session_toml(port, project.root / "hook.txt"))
    project.open()
    progress: list[float] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append(value)

    server = build_server(slot_for(project))
    async with (
        connect(project, server=server) as (client, seen),
        connect(project, server=server) as (_, other),
    ):
        await subscribe(client, "taskmux://status")
        await subscribe(client, "taskmux://tasks/worker")

        started = await client.call_tool("start", {}, progress_callback=on_progress)
        assert not started.is_error, started.content
        body = started.structured_content
        assert body is not None and body["ok"], body
        by_name = {t["name"]: t for t in body["tasks"]}
        assert by_name["web"]["state"] == "running" and by_name["web"]["health"] == "healthy"
        assert by_name["worker"]["state"] == "running"
        assert len(progress) >= 4 and progress == sorted(set(progress))

        status = await call(client, "status")
        first_pid = task(status, "worker")["pid"]
        assert first_pid and task(status, "web")["health"] == "healthy"

        # a crash: every client is told, and the monitor restarts the task
        os.kill(first_pid, signal.SIGKILL)
        for watcher in (seen, other):
            await until(lambda w=watcher: any("worker' crashed" in m for m in w.messages()))
        crash = next(e for e in seen.logs if "crashed" in str(e.data))
        assert crash.level == "error" and "SIGKILL" in str(crash.data)
        await until(lambda: "taskmux://tasks/worker" in seen.updated)
        assert "taskmux://status" in seen.updated

        async def restarted() -> bool:
            entry = task(await call(client, "status"), "worker")
            return entry["state"] == "running" and entry["pid"] not in (None, first_pid)

        await until_async(restarted)
        await until(lambda: any("restarted" in m for m in seen.messages()))
        status = await call(client, "status")
        assert task(status, "worker")["restarts"] == 1

        # what it printed since this start, and only that
        new_pid = task(status, "worker")["pid"]

        async def new_run_logged() -> dict[str, Any] | None:
            logs = await call(client, "logs", task="worker", since="start")
            texts = [line["text"] for line in logs["lines"]]
            return logs if any(f"worker-pid-{new_pid}" in t for t in texts) else None

        logs = await until_async(new_run_logged)
        texts = [line["text"] for line in logs["lines"]]
        assert not any(f"worker-pid-{first_pid}" in t for t in texts)
        assert all(line["task"] == "worker" and line["time"] for line in logs["lines"])

        found = await call(client, "grep", pattern=r"error BOOM", ignore_case=True, context=1)
        assert len(found["matches"]) == 1 and not found["truncated"]  # the current run only
        runs = await call(client, "grep", pattern=r"error BOOM", ignore_case=True, since="all")
        assert len(runs["matches"]) == 2
        match = found["matches"][-1]
        assert match["task"] == "worker" and f"ERROR boom in {new_pid}" in match["line"]
        assert match["before"] == ["before"] and match["after"] == ["after"]

        inspected = await call(client, "inspect", task="worker")
        assert inspected["status"]["pid"] == new_pid
        assert inspected["total_restarts"] == 1 and inspected["runs"] == 2
        assert any(p["pid"] == new_pid for p in inspected["processes"])
        assert inspected["config"]["name"] == "worker" and "command" in inspected["config"]
        assert "restart_policy" not in inspected["config"]  # defaults are left out
        assert {e["type"] for e in inspected["recent_events"]} >= {"exited", "restarted"}

        health = await call(client, "health")
        reports = {r["name"]: r for r in health["tasks"]}
        assert reports["web"]["healthy"] is True and reports["web"]["method"] != "process"
        assert reports["worker"]["healthy"] is True and reports["worker"]["method"] == "process"

        stopped = await call(client, "stop", tasks=["web"])
        assert stopped["ok"] and stopped["tasks"][0]["state"] == "stopped"
        killed = await call(client, "kill", tasks=["worker"])
        assert killed["ok"]
        status = await call(client, "status")
        assert {t["state"] for t in status["tasks"]} == {"stopped"}
        assert project.task_pids() == []

        events = await call(client, "events", limit=100)
        kinds = [(e["type"], e["task"], e["cause"]) for e in events["events"]]
        for expected in [
            ("started", "web", "agent"),
            ("exited", "worker", "policy"),
            ("restart_scheduled", "worker", "policy"),
            ("restarted", "worker", "policy"),
            ("stopped", "web", "agent"),
            ("killed", "worker", "agent"),
        ]:
            assert expected in kinds, (expected, kinds)
        times = [e["time"] for e in events["events"]]
        assert times == sorted(times)
        worker_only = await call(client, "events", task="worker", limit=2)
        assert [e["type"] for e in worker_only["events"]][-1] == "killed"
        assert len(worker_only["events"]) == 2 and worker_only["truncated"]


@pytest.mark.anyio
async def test_bad_requests_are_tool_errors_and_the_server_stays_up(project: Workspace) -> None:
    project.write(SIMPLE)
    project.open()
    async with connect(project) as (client, _):
        assert "known tasks: a, b" in await fail(client, "start", tasks=["nope"])
        assert "unknown task 'nope'" in await fail(client, "inspect", task="nope")
        assert "unknown task" in await fail(client, "logs", task="nope")
        assert "invalid regular expression" in await fail(client, "grep", pattern="(")
        assert "invalid since" in await fail(client, "logs", since="last tuesday")
        assert "invalid since" in await fail(client, "events", since="soon")
        assert "at least one" in await fail(client, "kill", tasks=[])
        assert "limit" in await fail(client, "events", limit=0)
        assert "timeout" in await fail(client, "start", timeout=-1)
        assert "pattern must be a string" in await fail(client, "grep", pattern=3)
        status = await call(client, "status")
        assert [t["name"] for t in status["tasks"]] == ["a", "b"]


@pytest.mark.anyio
async def test_invalid_config_is_explained_and_a_fix_is_picked_up(project: Workspace) -> None:
    project.write('[tasks.a]\ncomand = "sleep 1000"\n')
    async with connect(project) as (client, seen):
        message = await fail(client, "status")
        assert "comand" in message and "command" in message and "Fix taskmux.toml" in message
        assert "invalid config" in await fail(client, "start")
        config = json.loads(_text(await client.read_resource("taskmux://config")))
        assert config["error"] and "comand" in config["text"] and not config["in_force"]
        project.write('[tasks.a]\ncommand = "sleep 1000"\ndepends_on = ["ghost"]\n')
        await until(lambda: any("ghost" in m for m in seen.messages()))
        assert seen.logs[-1].level == "error"

        project.write(SIMPLE)
        status = await call(client, "status")
        assert [t["name"] for t in status["tasks"]] == ["a", "b"]
        assert status["config_error"] is None
        project.open()
        # the monitor, waiting for a valid file, now acts
        await until_async(lambda: _monitor_acting(client))

        project.write(SIMPLE + "\n[tasks.c]\ncommand = 1\n")
        await until(lambda: any("taskmux.toml is invalid" in m for m in seen.messages()))
        status = await call(client, "status")
        assert status["config_error"] and "task 'c'" in status["config_error"]
        assert [t["name"] for t in status["tasks"]] == ["a", "b"]  # the last good config
        refused = await fail(client, "start", tasks=["a"])
        assert "last valid config is still in force" in refused


async def _monitor_acting(client: Client) -> bool:
    status = await call(client, "status")
    return bool(status["monitor"]["acting"] and status["monitor"]["host"] == "mcp")


@pytest.mark.anyio
async def test_no_project_found_says_how_to_create_one(project: Workspace) -> None:
    server = build_server(slot_for(project, cwd=project.root))
    async with Client(server, mode="legacy") as client:
        message = await fail(client, "status")
    assert "no taskmux.toml found" in message and "taskmux init" in message


def _text(result: types.ReadResourceResult) -> str:
    content = result.contents[0]
    assert isinstance(content, types.TextResourceContents)
    return content.text


@pytest.mark.anyio
async def test_resources_read(project: Workspace) -> None:
    path = project.write(SIMPLE)
    project.open()
    async with connect(project) as (client, _):
        await call(client, "start", tasks=["a"], wait=False)
        listed = {str(r.uri) for r in (await client.list_resources()).resources}
        assert listed == {
            "taskmux://config", "taskmux://status", "taskmux://events", "taskmux://projects",
        }  # fmt: skip
        templates = {
            t.uri_template for t in (await client.list_resource_templates()).resource_templates
        }
        assert templates == {"taskmux://tasks/{name}", "taskmux://logs/{name}"}

        config = json.loads(_text(await client.read_resource("taskmux://config")))
        assert config == {
            "path": str(path),
            "text": path.read_text(),
            "error": None,
            "in_force": True,
        }
        status = json.loads(_text(await client.read_resource("taskmux://status")))
        assert task(status, "a")["state"] == "running"
        one = json.loads(_text(await client.read_resource("taskmux://tasks/a")))
        assert one["status"]["name"] == "a" and one["processes"]
        events = json.loads(_text(await client.read_resource("taskmux://events")))
        assert any(e["type"] == "started" for e in events["events"])

        async def log_text() -> str | None:
            read = await client.read_resource("taskmux://logs/a")
            content = read.contents[0]
            assert content.mime_type == "text/plain"
            text = _text(read)
            return text if "a-up" in text else None

        text = await until_async(log_text)
        assert re.search(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ a-up$", text, re.MULTILINE)
        with pytest.raises(MCPError, match="unknown task 'zz'"):
            await client.read_resource("taskmux://tasks/zz")


@pytest.mark.anyio
async def test_subscriptions_notify_state_changes_in_both_protocol_eras(project: Workspace) -> None:
    project.write(SIMPLE)
    project.open()
    async with connect(project) as (client, seen):
        await subscribe(client, "taskmux://status")
        await subscribe(client, "taskmux://tasks/a")
        await call(client, "start", tasks=["a"], wait=False)
        await until(lambda: {"taskmux://status", "taskmux://tasks/a"} <= set(seen.updated))
        assert "taskmux://tasks/b" not in seen.updated and "taskmux://events" not in seen.updated

        await unsubscribe(client, "taskmux://tasks/a")
        seen.updated.clear()
        await call(client, "stop", tasks=["a"])
        await call(
            client, "start", tasks=["b"], wait=False
        )  # a later event: updates arrive in order
        await until(lambda: seen.updated.count("taskmux://status") >= 2)
        assert "taskmux://tasks/a" not in seen.updated
        await call(client, "stop", tasks=["b"])

    async with connect(project, mode="auto") as (modern, _):
        assert modern.protocol_version == "2026-07-28"
        async with modern.listen(resource_subscriptions=["taskmux://tasks/b"]) as feed:
            await call(modern, "start", tasks=["b"], wait=False)
            with anyio.fail_after(10):
                event = await feed.__anext__()
        assert getattr(event, "uri", None) == "taskmux://tasks/b"
        await call(modern, "stop")


@pytest.mark.anyio
async def test_cancelling_a_waiting_start_stops_the_wait_cleanly(
    project: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(mcp_server, "HEARTBEAT_S", 0.2)
    project.write(
        f"""
        [tasks.slow]
        command = "echo slow-up; sleep 1000"
        health_check = "false"
        health_interval = 0.2
        health_start_period = 60
        stop_grace_period = 0.5
        [hooks]
        after_start = "touch {project.root / "waited"}"
        """
    )
    project.open()
    async with connect(project) as (client, _):
        scope = anyio.CancelScope()
        launched = anyio.Event()
        finished: list[object] = []
        progress: list[tuple[float, str | None]] = []

        async def on_progress(value: float, total: float | None, message: str | None) -> None:
            progress.append((value, message))
            if message and "started" in message:
                launched.set()

        async def waiting_start() -> None:
            with scope:
                finished.append(
                    await client.call_tool(
                        "start", {"tasks": ["slow"], "timeout": 1.5}, progress_callback=on_progress
                    )
                )

        async with anyio.create_task_group() as group:
            group.start_soon(waiting_start)
            with anyio.fail_after(10):
                await launched.wait()
            await until(lambda: any("waiting" in str(m) for _, m in progress))
            began = time.monotonic()
            scope.cancel()
        assert time.monotonic() - began < 1.0 and finished == []
        values = [v for v, _ in progress]
        assert values == sorted(set(values))

        status = await call(client, "status")
        slow = task(status, "slow")
        assert slow["state"] == "starting" and psutil.pid_exists(slow["pid"])
        assert slow["error"] is None and not slow["manually_stopped"]
        # the cancelled wait never reaches its end (the after_start hook, past its timeout)
        with anyio.move_on_after(2.5):
            await until((project.root / "waited").exists, timeout=3)
            pytest.fail("the cancelled start kept waiting")
        again = await call(client, "start", tasks=["slow"], wait=False)
        assert again["tasks"][0]["action"] == "already_running"
        assert (project.root / "waited").exists()  # a start that is not cancelled runs the hook
        await call(client, "stop")


@pytest.mark.anyio
async def test_start_reports_a_failure_with_its_verdict(project: Workspace) -> None:
    project.write(
        """
        [tasks.broken]
        command = "echo 'Traceback: ImportError: no module named foo' >&2; sleep 0.1; exit 3"
        restart_policy = "no"
        [tasks.api]
        command = "sleep 1000"
        depends_on = ["broken"]
        """
    )
    project.open()
    async with connect(project) as (client, _):
        result = await client.call_tool("start", {})
        text = result.content[0]
        assert isinstance(text, types.TextContent)
    body = result.structured_content
    assert body is not None and not body["ok"]
    by_name = {t["name"]: t for t in body["tasks"]}
    assert by_name["broken"]["exit_code"] == 3
    assert any("ImportError" in line for line in by_name["broken"]["log_tail"])
    assert by_name["api"]["blocked_by"] == "broken"
    assert "null" not in text.text and len(text.text) < 2048


# ------------------------------------------------------------------ stdio


def stdio_params(project: Workspace) -> StdioServerParameters:
    """The installed entry point, started the way an agent client starts it."""
    return StdioServerParameters(
        command=str(ENTRY),
        args=["--project", str(project.root)],
        env=project.env,
        cwd=str(project.root),
    )


NOISY = """
name = "noisy"
[hooks]
before_start = "echo HOOK-NOISE; echo HOOK-NOISE >&2"
[tasks.noisy]
command = "for i in 1 2 3 4 5; do echo NOISE-$i; done; echo NOISE-ERR >&2; sleep 1000"
health_check = "echo CHECK-NOISE; true"
health_interval = 0.3
stop_grace_period = 0.5
"""


@pytest.mark.anyio
async def test_stdio_entry_point_initialize_list_and_call(project: Workspace) -> None:
    project.write(SIMPLE)
    project.open()
    async with Client(stdio_params(project), mode="legacy") as client:
        assert client.server_info is not None and client.server_info.name == "taskmux"
        assert {t.name for t in (await client.list_tools()).tools} == TOOLS
        started = await call(client, "start", tasks=["a"], wait=False)
        assert started["ok"] and started["tasks"][0]["action"] == "started"
        status = await call(client, "status")
        assert task(status, "a")["state"] == "running"
        await call(client, "stop")
    logs = list(project.state_dir.glob("*/mcp-server.log"))
    assert logs and "project simple" in logs[0].read_text()


def rpc(method: str, params: dict[str, Any] | None, ident: int | None = None) -> bytes:
    """One JSON-RPC line."""
    message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
    if params is not None:
        message["params"] = params
    if ident is not None:
        message["id"] = ident
    return (json.dumps(message) + "\n").encode()


def test_stdout_carries_only_json_rpc(project: Workspace) -> None:
    project.write(NOISY)
    project.open()
    proc = subprocess.Popen(
        [str(ENTRY), "--project", str(project.root)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=project.env,
        cwd=project.root,
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        init = {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": "test", "version": "1"},
        }
        proc.stdin.write(rpc("initialize", init, 1))
        proc.stdin.write(rpc("notifications/initialized", None))
        proc.stdin.write(rpc("tools/call", {"name": "start", "arguments": {}}, 2))
        proc.stdin.flush()
        lines: list[bytes] = []

        def read_until(ident: int) -> None:
            assert proc.stdout is not None
            while True:
                line = proc.stdout.readline()
                assert line, "server closed stdout early"
                lines.append(line)
                if json.loads(line).get("id") == ident:
                    return

        read_until(2)
        proc.stdin.write(rpc("tools/call", {"name": "logs", "arguments": {"task": "noisy"}}, 3))
        proc.stdin.flush()
        read_until(3)
        rest, errors = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    lines += rest.splitlines(keepends=True)
    assert proc.returncode == 0, errors
    for line in lines:
        message = json.loads(line)
        assert message["jsonrpc"] == "2.0" and ("id" in message or "method" in message), line
    logged = json.loads(lines[-1])["result"]["structuredContent"]["lines"]
    assert any(line["text"] == "NOISE-1" for line in logged)
    started = next(json.loads(x) for x in lines if json.loads(x).get("id") == 2)
    assert started["result"]["structuredContent"]["ok"], started
    assert b"NOISE-1" not in b"".join(x for x in lines if b'"id":3' not in x)


def test_sigterm_stops_the_server_and_tasks_keep_running(project: Workspace) -> None:
    project.write(SIMPLE)
    sup = project.open()
    proc = subprocess.Popen(
        [str(ENTRY), "--project", str(project.root)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=project.env,
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        init = {"protocolVersion": "2025-11-25", "capabilities": {},
                "clientInfo": {"name": "t", "version": "1"}}  # fmt: skip
        proc.stdin.write(rpc("initialize", init, 1))
        proc.stdin.write(rpc("notifications/initialized", None))
        start = {"name": "start", "arguments": {"tasks": ["a"], "wait": False}}
        proc.stdin.write(rpc("tools/call", start, 2))
        proc.stdin.flush()
        while json.loads(proc.stdout.readline()).get("id") != 2:
            pass
        began = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert time.monotonic() - began < 3
    finally:
        if proc.poll() is None:
            proc.kill()
    _, errors = proc.communicate()
    assert b"SIGTERM" in errors and b"Traceback" not in errors
    status = anyio.run(sup.status)
    assert next(t for t in status.tasks if t.name == "a").state.value == "running"


# ------------------------------------------------------------------ MCP Inspector CLI


def test_mcp_inspector_cli_lists_tools_and_calls_one(project: Workspace) -> None:
    cli, path_env = npm_tool("inspector", "@modelcontextprotocol/inspector@2", "mcp-inspector")
    project.write(SIMPLE)
    project.open()
    server_env = [
        arg
        for key in ("TMUX_TMPDIR", "TASKMUX_STATE_DIR", "TASKMUX_TMUX_SOCKET", "HOME")
        for arg in ("-e", f"{key}={project.env[key]}")
    ]
    base = [str(cli), "--cli", *server_env, str(ENTRY), "--project", str(project.root)]
    env = {**project.env, "PATH": path_env}

    def run(*args: str) -> dict[str, Any]:
        done = subprocess.run(
            [*base, *args],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
            cwd=project.root,
            check=False,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        return dict(json.loads(done.stdout))

    listed = run("--method", "tools/list")
    assert {t["name"] for t in listed["tools"]} == TOOLS
    assert all("outputSchema" in t and "annotations" in t for t in listed["tools"])
    called = run("--method", "tools/call", "--tool-name", "logs", "--tool-arg", "lines=5")
    assert called["isError"] is False and called["structuredContent"]["truncated"] is False
