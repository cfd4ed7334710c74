"""The WebSocket bridge: a real server on a loopback port, real websockets clients, real tmux."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import pytest
from pydantic import BaseModel
from support import Workspace, slot_for, wait_until
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, ConnectionClosedError, InvalidStatus

from taskmux_mcp import bridge as bridge_module
from taskmux_mcp.bridge import (
    BridgeCallError,
    BridgeNotRunning,
    bridge_call,
    run_bridge_call,
)
from taskmux_mcp.endpoint import ServerInfo, read_server_info, running_server
from taskmux_mcp.errors import InvalidArgument
from taskmux_mcp.events import Cause, EventType
from taskmux_mcp.models import (
    ActionResult,
    EventsResult,
    GrepResult,
    HealthResult,
    InspectResult,
    LogsResult,
    StatusResult,
)
from taskmux_mcp.project import ProjectSlot
from taskmux_mcp.serve import run_serve

pytestmark = pytest.mark.anyio

FLOOD_TEXT = "x" * 4000


@pytest.fixture
def anyio_backend() -> str:
    """websockets runs on asyncio."""
    return "asyncio"


@dataclass
class Running:
    """A bridge serving a project inside the test's event loop."""

    port: int
    token: str
    info_path: Path
    handle: ProjectSlot

    @property
    def url(self) -> str:
        """Where the bridge listens."""
        return f"ws://127.0.0.1:{self.port}/ws"

    def auth(self) -> dict[str, str]:
        """The header a client presents."""
        return {"Authorization": f"Bearer {self.token}"}


@contextlib.asynccontextmanager
async def serving(project: Workspace, **kwargs: Any) -> AsyncIterator[Running]:
    """Run the server for project on a free loopback port until the block ends."""
    project.open()  # registers the project's processes for cleanup
    handle = slot_for(project, cause=Cause.USER, host="bridge")
    infos: list[ServerInfo] = []
    ready = anyio.Event()

    def on_ready(info: ServerInfo) -> None:
        infos.append(info)
        ready.set()

    async with anyio.create_task_group() as group:
        group.start_soon(partial(run_serve, handle, port=0, ready=on_ready, **kwargs))
        with anyio.fail_after(20):
            await ready.wait()
        assert handle.current is not None
        path = handle.current.paths.server
        info = json.loads(path.read_text())
        yield Running(infos[0].port, info["token"], path, handle)
        group.cancel_scope.cancel()


@dataclass
class Rpc:
    """A JSON-RPC client over one WebSocket connection that keeps what it has not asked for."""

    ws: ClientConnection
    replies: dict[Any, dict[str, Any]] = field(default_factory=dict)
    order: list[Any] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    progress: list[dict[str, Any]] = field(default_factory=list)
    _next: int = 1000  # ids chosen by tests stay below

    async def send(self, method: str, params: dict[str, Any] | None = None, id: Any = None) -> Any:
        """Send a request; its id."""
        if id is None:
            self._next += 1
            id = self._next
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": id, "method": method}
        if params is not None:
            message["params"] = params
        await self.ws.send(json.dumps(message))
        return id

    async def _read(self) -> None:
        message = json.loads(await self.ws.recv())
        if "id" in message:
            self.order.append(message["id"])
            self.replies[message["id"]] = message
        else:
            assert message["method"] in ("event", "progress"), message
            kept = self.events if message["method"] == "event" else self.progress
            kept.append(message["params"])

    async def reply(self, id: Any, timeout: float = 20) -> dict[str, Any]:
        """The reply to request id."""
        with anyio.fail_after(timeout):
            while id not in self.replies:
                await self._read()
        return self.replies.pop(id)

    async def call(
        self, method: str, params: dict[str, Any] | None = None, timeout: float = 20
    ) -> dict[str, Any]:
        """Send a request and return its whole reply."""
        return await self.reply(await self.send(method, params), timeout)

    async def result(self, method: str, params: dict[str, Any] | None = None) -> Any:
        """The result of a call that must succeed."""
        reply = await self.call(method, params)
        assert "result" in reply, reply
        return reply["result"]

    async def raw(self, frame: str | bytes, timeout: float = 10) -> dict[str, Any]:
        """Send a frame as is; the next reply (of any id)."""
        seen = len(self.order)
        await self.ws.send(frame)
        with anyio.fail_after(timeout):
            while len(self.order) == seen:
                await self._read()
        return self.replies.pop(self.order[seen])

    async def event(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 15
    ) -> dict[str, Any]:
        """The first event matching predicate."""
        with anyio.fail_after(timeout):
            while True:
                for event in self.events:
                    if predicate(event):
                        return event
                await self._read()


@contextlib.asynccontextmanager
async def client(running: Running, **kwargs: Any) -> AsyncIterator[Rpc]:
    """An authenticated connection."""
    kwargs.setdefault("additional_headers", running.auth())
    async with connect(running.url, compression=None, proxy=None, max_size=None, **kwargs) as ws:
        yield Rpc(ws)


async def refused(url: str, **kwargs: Any) -> InvalidStatus:
    """The handshake refusal a connection attempt gets."""
    with pytest.raises(InvalidStatus) as caught:
        async with connect(url, proxy=None, open_timeout=5, **kwargs):
            pass
    return caught.value


def ws_frame(text: str) -> bytes:
    """One masked text frame, as a client sends it."""
    payload = text.encode()
    assert len(payload) < 126
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x81, 0x80 | len(payload)]) + mask + masked


def pipelined_attempt(port: int, headers: str, frame: bytes) -> bytes:
    """A handshake followed at once by a request frame, ignoring the answer; the whole reply."""
    request = (
        "GET / HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{port}\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        f"{headers}\r\n"
    )
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request.encode() + frame)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def validate(model: type[BaseModel], result: Any) -> Any:
    """result parsed as model (fails the test if it does not fit)."""
    return model.model_validate(result)


# ------------------------------------------------------------------ security


async def test_refusals_happen_at_the_handshake_and_execute_nothing(project: Workspace) -> None:
    project.write(
        """
        [tasks.web]
        command = "sleep 60"
        """
    )
    async with serving(project) as running:
        start = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "start", "params": {}})
        legacy_start = json.dumps({"command": "start"})
        no_token = await refused(running.url)
        wrong = await refused(running.url, additional_headers={"Authorization": "Bearer nope"})
        almost = running.token[:-1] + ("B" if running.token.endswith("A") else "A")
        wrong_query = await refused(running.url + "?token=" + almost)
        foreign = await refused(
            running.url + "?token=" + running.token, origin="http://evil.example"
        )
        foreign_header = await refused(
            running.url, additional_headers=running.auth(), origin="http://localhost:3000"
        )
        for refusal, status in [
            (no_token, 401),
            (wrong, 401),
            (wrong_query, 401),
            (foreign, 403),
            (foreign_header, 403),
        ]:
            assert refusal.response.status_code == status
            assert refusal.response.body is not None
            assert running.token.encode() not in refusal.response.body
            assert b"web" not in refusal.response.body
        assert no_token.response.headers.get("WWW-Authenticate") == "Bearer"

        # a client that pipelines a request behind its handshake gets nothing executed
        attempts = [
            "",
            "Authorization: Bearer wrong\r\n",
            f"Authorization: Bearer {running.token}\r\nOrigin: http://evil.example\r\n",
        ]
        for headers in attempts:
            for frame in (start, legacy_start):
                answer = await anyio.to_thread.run_sync(
                    pipelined_attempt, running.port, headers, ws_frame(frame)
                )
                assert answer.split(b"\r\n")[0] in (
                    b"HTTP/1.1 401 Unauthorized",
                    b"HTTP/1.1 403 Forbidden",
                )
                assert b"jsonrpc" not in answer and b"success" not in answer

        async with client(running) as rpc:
            status = validate(StatusResult, await rpc.result("status"))
            events = validate(EventsResult, await rpc.result("events", {"task": "web"}))
        assert [t.state for t in status.tasks] == ["stopped"]
        assert [e.type for e in events.events] == []
        assert project.task_pids() == []


async def test_token_file_is_private_and_says_when_the_server_stopped(
    project: Workspace,
) -> None:
    project.write(
        """
        [bridge]
        allowed_origins = ["http://localhost:3000"]
        [tasks.web]
        command = "sleep 60"
        """
    )
    stale = project.open().paths.server
    gone = subprocess.run(["sh", "-c", "echo $$"], capture_output=True, text=True, check=True)
    stale.parent.mkdir(parents=True, exist_ok=True)
    old = {"host": "127.0.0.1", "port": 1, "token": "old"}
    stale.write_text(json.dumps({**old, "pid": int(gone.stdout), "started": 0}))
    async with serving(project) as running:
        mode = stat.S_IMODE(running.info_path.stat().st_mode)
        assert mode == 0o600
        info = json.loads(running.info_path.read_text())
        assert info["port"] == running.port
        assert info["pid"] == os.getpid()
        assert len(info["token"]) >= 43  # 32 random bytes
        leftovers = [p.name for p in running.info_path.parent.iterdir() if ".tmp" in p.name]
        assert leftovers == []
        # both ways of presenting the token work, and a listed Origin is let in
        async with connect(running.url + "?token=" + running.token, proxy=None) as ws:
            await ws.send(json.dumps({"jsonrpc": "2.0", "id": "q", "method": "status"}))
            assert json.loads(await ws.recv())["id"] == "q"
        async with client(running, origin="http://localhost:3000") as rpc:
            assert "result" in await rpc.call("status")
        # taskmux 0.3-era clients connect at / rather than /ws
        root_url = running.url.removesuffix("/ws") + "/"
        async with connect(root_url, proxy=None, additional_headers=running.auth()) as ws:
            await ws.send(json.dumps({"command": "status"}))
            assert json.loads(await ws.recv())["tasks"]["web"]["state"] == "stopped"
        path, token = running.info_path, running.token
    after = read_server_info(path)
    assert after is not None and after.pid == 0 and after.token == token  # kept for next time
    assert running_server(path) is None


async def test_non_loopback_host_needs_the_flag(
    project: Workspace, caplog: pytest.LogCaptureFixture
) -> None:
    project.write(
        """
        [tasks.web]
        command = "sleep 60"
        """
    )
    handle = slot_for(project, cause=Cause.USER, host="bridge")
    for host in ("0.0.0.0", "192.0.2.10", "example.com", "::"):
        with pytest.raises(InvalidArgument, match="not a loopback address"):
            await run_serve(handle, host=host, port=0)
    assert not handle.get().paths.server.exists()

    async with (
        serving(project, host="0.0.0.0", allow_remote=True) as running,
        client(running) as rpc,
    ):
        assert "result" in await rpc.call("status")
    assert any("reachable from other machines" in r.getMessage() for r in caplog.records)


# ------------------------------------------------------------------ JSON-RPC


async def test_every_method_answers_with_its_id_and_shape(project: Workspace) -> None:
    project.write(
        """
        [tasks.web]
        command = "echo hello from web; exec sleep 60"
        health_check = "true"
        health_start_period = 0
        """
    )
    async with serving(project) as running, client(running) as rpc:
        calls: list[tuple[Any, str, dict[str, Any], type[BaseModel] | None]] = [
            ("a-1", "status", {}, StatusResult),
            (2, "start", {"tasks": ["web"], "wait": True, "timeout": 20}, ActionResult),
            ("logs", "logs", {"task": "web", "since": "start"}, LogsResult),
            (4, "grep", {"pattern": "HELLO", "ignore_case": True}, GrepResult),
            (5, "inspect", {"task": "web"}, InspectResult),
            (6, "health", {"tasks": ["web"]}, HealthResult),
            (7, "events", {"task": "web", "limit": 5}, EventsResult),
            (8, "restart", {"tasks": ["web"], "timeout": 20}, ActionResult),
            (9, "stop", {"tasks": ["web"]}, ActionResult),
            (10, "kill", {"tasks": ["web"]}, ActionResult),
            (11, "subscribe", {}, None),
            (12, "unsubscribe", {}, None),
        ]
        results: dict[str, Any] = {}
        for id, method, params, model in calls:
            if method == "logs":  # the output reaches the log file through tmux, shortly after
                with anyio.fail_after(10):
                    while not (await rpc.result("grep", {"pattern": "hello"}))["matches"]:
                        await anyio.sleep(0.05)
            await rpc.send(method, params, id=id)
            reply = await rpc.reply(id)
            assert reply["jsonrpc"] == "2.0" and reply["id"] == id, reply
            assert "result" in reply, reply
            results[method] = validate(model, reply["result"]) if model else reply["result"]
        assert results["start"].ok and results["start"].tasks[0].name == "web"
        assert any("hello from web" in line.text for line in results["logs"].lines)
        assert results["grep"].matches
        assert results["inspect"].status.name == "web" and results["inspect"].processes
        assert results["health"].tasks[0].healthy
        assert results["restart"].ok
        assert results["subscribe"] == {"subscribed": True}
        assert results["unsubscribe"] == {"subscribed": False}
        status = validate(StatusResult, await rpc.result("status"))
        assert status.tasks[0].state == "stopped"


async def test_concurrent_requests_are_answered_independently(
    project: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    project.write(
        """
        [tasks.slow]
        command = "sleep 60"
        health_check = "test -f ready"
        health_interval = 1
        """
    )
    async with serving(project) as running, client(running) as rpc:
        start_id = await rpc.send("start", {"tasks": ["slow"], "timeout": 30})
        status_id = await rpc.send("status")
        status = validate(StatusResult, (await rpc.reply(status_id))["result"])
        assert rpc.order == [status_id]  # the start is still waiting for its check
        assert status.tasks[0].name == "slow"
        monkeypatch.setattr(bridge_module, "MAX_IN_FLIGHT", 2)
        again_id = await rpc.send("start", {"tasks": ["slow"], "timeout": 30})
        busy = await rpc.call("status")
        assert busy["error"]["code"] == -32010
        (project.root / "ready").touch()
        started = validate(ActionResult, (await rpc.reply(start_id))["result"])
        assert started.ok and started.tasks[0].health == "healthy"
        assert (await rpc.reply(again_id))["result"]["ok"]
        assert rpc.order[:2] == [status_id, busy["id"]]
        assert "result" in await rpc.call("status")
        assert any(p["request"] == start_id and "slow" in p["message"] for p in rpc.progress)


async def test_bad_messages_get_errors_and_the_connection_stays_usable(project: Workspace) -> None:
    project.write(
        """
        [tasks.web]
        command = "sleep 60"
        """
    )
    async with serving(project) as running, client(running) as rpc:
        cases: list[tuple[str | bytes, Any, int]] = [
            ("not json", None, -32700),
            (b"\xff\xfe binary garbage", None, -32700),
            ("[" * 100_000, None, -32700),
            ('{"jsonrpc":"2.0","id":1,"method":"start","params":{"timeout":NaN}}', None, -32700),
            ('[{"jsonrpc":"2.0","id":1,"method":"status"}]', None, -32600),
            ('"status"', None, -32600),
            ('{"jsonrpc":"2.0","id":[1],"method":"status"}', None, -32600),
            ('{"jsonrpc":"1.0","id":8,"method":"status"}', 8, -32600),
            ('{"jsonrpc":"2.0","id":9,"method":42}', 9, -32600),
            ('{"jsonrpc":"2.0","id":10,"method":"nope"}', 10, -32601),
            ('{"jsonrpc":"2.0","id":11,"method":"__init__"}', 11, -32601),
            ('{"jsonrpc":"2.0","id":12,"method":"logs","params":{"lines":"many"}}', 12, -32602),
            ('{"jsonrpc":"2.0","id":13,"method":"start","params":{"bogus":1}}', 13, -32602),
            ('{"jsonrpc":"2.0","id":14,"method":"start","params":["web"]}', 14, -32602),
            ('{"jsonrpc":"2.0","id":15,"method":"kill","params":{}}', 15, -32602),
            ('{"jsonrpc":"2.0","id":16,"method":"start","params":{"progress":1}}', 16, -32602),
            ('{"jsonrpc":"2.0","id":17,"method":"inspect","params":{"task":"ghost"}}', 17, -32001),
            ('{"jsonrpc":"2.0","id":18,"method":"grep","params":{"pattern":"("}}', 18, -32002),
            ('{"jsonrpc":"2.0","id":19,"method":"subscribe","params":{"x":1}}', 19, -32602),
        ]
        for frame, id, code in cases:
            reply = await rpc.raw(frame)
            assert reply["id"] == id and reply["error"]["code"] == code, (frame[:60], reply)
            assert "Traceback" not in reply["error"]["message"]
        unknown = await rpc.raw(
            '{"jsonrpc":"2.0","id":20,"method":"inspect","params":{"task":"x"}}'
        )
        assert unknown["error"]["data"] == {"task": "x", "known": ["web"]}
        assert "known tasks: web" in unknown["error"]["message"]
        invalid = await rpc.raw('{"jsonrpc":"2.0","id":21,"method":"logs","params":{"lines":"x"}}')
        assert "lines" in invalid["error"]["message"]

        # a notification (no id) gets no reply: the next message is the reply to the next request
        await rpc.ws.send('{"jsonrpc":"2.0","method":"status"}')
        await rpc.ws.send('{"jsonrpc":"2.0","method":"nope"}')
        reply = await rpc.call("status")
        assert rpc.order[-1] == reply["id"] and "result" in reply
        assert validate(StatusResult, reply["result"]).tasks[0].name == "web"


# ------------------------------------------------------------------ taskmux 0.3 messages


async def legacy(ws: ClientConnection, message: dict[str, Any]) -> dict[str, Any]:
    """Send a taskmux 0.3-style request; its reply (the next message)."""
    await ws.send(json.dumps(message))
    with anyio.fail_after(20):
        reply: dict[str, Any] = json.loads(await ws.recv())
    return reply


async def test_taskmux_03_messages_get_one_reply_each_in_their_order(project: Workspace) -> None:
    project.write(
        """
        [tasks.web]
        command = "echo hello from web; exec sleep 60"
        [tasks.slow]
        command = "sleep 60"
        health_check = "test -f ready"
        health_interval = 1
        """
    )
    async with serving(project) as running, client(running) as rpc:
        ws = rpc.ws
        started = await legacy(ws, {"command": "start", "params": {"task": "web", "timeout": 20}})
        assert started["success"] is True and started["message"] == "web: started, running"
        assert validate(ActionResult, started["result"]).ok

        await ws.send(json.dumps({"command": "start", "params": {"task": "slow", "timeout": 30}}))
        await ws.send(json.dumps({"command": "status"}))
        with anyio.move_on_after(1):  # status is quick, but its reply waits for the start's
            early = await ws.recv()
            pytest.fail(f"a reply overtook the pending start: {early!r}")
        (project.root / "ready").touch()
        with anyio.fail_after(20):
            first, second = [json.loads(await ws.recv()) for _ in range(2)]
        assert first["success"] is True and first["message"] == "slow: started, running"
        assert set(second) == {"session_name", "session_exists", "tasks", "timestamp"}
        assert second["session_exists"] is True and set(second["tasks"]) == {"web", "slow"}
        web = second["tasks"]["web"]
        assert web["name"] == "web" and web["running"] is True and web["healthy"] is True
        assert web["command"] == "echo hello from web; exec sleep 60" and web["state"] == "running"

        with anyio.fail_after(10):  # the output reaches the log file through tmux, shortly after
            while not (await rpc.result("grep", {"pattern": "hello"}))["matches"]:
                await anyio.sleep(0.05)
        logs = await legacy(ws, {"command": "logs", "params": {"task": "web", "lines": 50}})
        assert logs["success"] is True and "hello from web" in logs["logs"]
        assert validate(LogsResult, logs["result"]).lines
        restarted = await legacy(ws, {"command": "restart", "params": {"task": "web"}})
        assert restarted["success"] is True and restarted["message"].startswith("web: ")
        killed = await legacy(ws, {"command": "kill", "params": {"task": "web"}})
        assert killed["success"] is True and killed["message"] == "web: killed, stopped"
        health = await legacy(ws, {"command": "health", "params": {"tasks": ["slow"]}})
        assert validate(HealthResult, health["result"]).tasks[0].healthy
        after = await legacy(ws, {"command": "status", "params": None})
        assert after["tasks"]["web"]["running"] is False
        assert after["tasks"]["web"]["healthy"] is False
        assert validate(StatusResult, await rpc.result("status")).tasks  # JSON-RPC beside it


async def test_bad_taskmux_03_messages_get_error_replies_in_order(project: Workspace) -> None:
    project.write(
        """
        [tasks.web]
        command = "sleep 60"
        [tasks.broken]
        command = "echo broken; sleep 0.1; exit 3"
        restart_policy = "no"
        auto_start = false
        """
    )
    async with serving(project) as running, client(running) as rpc:
        cases: list[tuple[dict[str, Any], str]] = [
            ({"command": 5}, "command must be a string"),
            ({"command": None}, "command must be a string"),
            ({"command": "nope"}, "Unknown command: nope (commands: status, start,"),
            ({"command": "subscribe"}, "Unknown command: subscribe"),
            ({"command": "status", "params": [1]}, "params must be an object"),
            ({"command": "status", "id": 1}, "unknown member 'id'"),
            ({"command": "logs", "params": {"lines": "many"}}, "lines must be an integer"),
            ({"command": "restart", "params": {"bogus": 1}}, "has no argument 'bogus'"),
            ({"command": "kill"}, "kill needs tasks"),
            ({"command": "inspect", "params": {"task": "ghost"}}, "known tasks: web, broken"),
            ({"command": "grep", "params": {"pattern": "("}}, "pattern"),
            ({"command": "start", "params": {"task": "broken", "timeout": 20}}, "broken"),
        ]
        for message, _ in cases:
            await rpc.ws.send(json.dumps(message))
        with anyio.fail_after(30):
            replies = [json.loads(await rpc.ws.recv()) for _ in cases]
        for (message, needle), reply in zip(cases, replies, strict=True):
            assert isinstance(reply.get("error"), str), (message, reply)
            assert needle in reply["error"], (message, reply)
            assert "success" not in reply and "Traceback" not in reply["error"]
        failed = validate(ActionResult, replies[-1]["result"])
        assert not failed.ok and failed.tasks[0].exit_code == 3

        neither = await rpc.raw('{"id": 7, "name": "status"}')
        assert neither["id"] == 7 and neither["error"]["code"] == -32600
        assert '{"command": "status"}' in neither["error"]["message"]
        assert "tasks" in await legacy(rpc.ws, {"command": "status"})
        assert "result" in await rpc.call("status")


async def test_oversize_frame_closes_the_connection_with_1009(project: Workspace) -> None:
    project.write(
        """
        [tasks.web]
        command = "sleep 60"
        """
    )
    async with serving(project) as running:
        async with client(running) as rpc:
            await rpc.ws.send("x" * (bridge_module.MAX_FRAME + 1))
            with pytest.raises(ConnectionClosedError) as closed:
                await rpc.call("status", timeout=10)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
        async with client(running) as rpc:
            assert "result" in await rpc.call("status")


# ------------------------------------------------------------------ events and load


async def test_subscribers_see_a_crash_and_the_monitors_restart(project: Workspace) -> None:
    project.write(
        """
        [tasks.crashy]
        command = "sleep 0.3; exit 1"
        restart_policy = "on-failure"
        restart_backoff = 0.1
        max_restarts = 1
        [tasks.quiet]
        command = "sleep 60"
        """
    )
    async with serving(project) as running, client(running) as rpc:
        assert (await rpc.call("subscribe", {"tasks": ["crashy"]}))["result"]["subscribed"]
        started = await rpc.result("start", {"tasks": ["crashy", "quiet"], "wait": False})
        assert validate(ActionResult, started).tasks
        exited = await rpc.event(lambda e: e["type"] == "exited")
        assert exited["task"] == "crashy" and exited["cause"] == "policy"
        restarted = await rpc.event(lambda e: e["type"] == "restarted")
        assert restarted["task"] == "crashy" and restarted["cause"] == "policy"
        assert all(e["task"] == "crashy" for e in rpc.events)
        assert all("id" not in e for e in rpc.events)


async def test_a_client_that_stops_reading_is_dropped_without_stalling_others(
    project: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    project.write(
        """
        [tasks.web]
        command = "sleep 60"
        """
    )
    monkeypatch.setattr(bridge_module, "OUTGOING_QUEUE", 32)
    flood = 400  # ~16 MB of events: far more than the socket buffers and the queue hold
    async with serving(project) as running:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        sock.connect(("127.0.0.1", running.port))
        async with (
            client(running, sock=sock, max_queue=1) as slow,
            client(running) as fast,
        ):
            assert (await slow.call("subscribe"))["result"]["subscribed"]
            assert (await fast.call("subscribe", {"tasks": ["web"]}))["result"]["subscribed"]
            events = running.handle.get().events
            bulk = {f"k{k}": FLOOD_TEXT for k in range(10)}  # ~40 kB per event
            began = time.monotonic()
            for i in range(flood):
                events.record(EventType.CONFIG_RELOADED, Cause.USER, "flood", **bulk)
                if i % 20 == 0:
                    status = await fast.call("status", timeout=5)
                    assert "result" in status
            events.record(EventType.HEALTH_CHANGED, Cause.USER, "web", note="after the flood")
            after = await fast.event(lambda e: e["details"].get("note") == "after the flood", 10)
            assert after["task"] == "web"
            assert time.monotonic() - began < 20

            received = 0
            with anyio.fail_after(15), pytest.raises(ConnectionClosed):
                while True:
                    message = json.loads(await slow.ws.recv())
                    received += message.get("method") == "event"
            assert received < flood
        async with client(running) as again:
            assert "result" in await again.call("status")


async def test_the_bridge_keeps_serving_while_a_health_check_hangs(project: Workspace) -> None:
    project.write(
        """
        [tasks.stuck]
        command = "sleep 60"
        health_check = "sleep 100"
        health_timeout = 2
        health_interval = 1
        """
    )
    async with serving(project) as running, client(running) as rpc:
        await rpc.result("start", {"tasks": ["stuck"], "wait": False})
        rpc.order.clear()
        health_id = await rpc.send("health", {"tasks": ["stuck"]})
        began = time.monotonic()
        status_id = await rpc.send("status")
        status = validate(StatusResult, (await rpc.reply(status_id, timeout=1.5))["result"])
        assert time.monotonic() - began < 1.5
        assert status.tasks[0].state in ("starting", "running")
        assert rpc.order == [status_id]
        health = validate(HealthResult, (await rpc.reply(health_id, timeout=10))["result"])
        assert not health.tasks[0].healthy


# ------------------------------------------------------------------ CLI functions


async def test_serve_bridge_and_bridge_call_from_scripts(
    project: Workspace, capsys: pytest.CaptureFixture[str]
) -> None:
    project.write(
        """
        [tasks.web]
        command = "sleep 60"
        """
    )
    sup = project.open()
    handle = slot_for(project, cause=Cause.USER, host="cli")
    assert run_bridge_call(handle, "status", None, as_json=False) == 2
    assert "no server is running" in capsys.readouterr().err

    code = (
        "import sys; from taskmux_mcp.serve import serve_main; "
        "from taskmux_mcp.project import Project, ProjectSlot; "
        "sys.exit(serve_main(ProjectSlot(lambda: Project.open(project=sys.argv[1], "
        "socket_name=sys.argv[2], host='bridge', hosted_monitor=False)), port=0))"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(project.root), project.server.socket],
        env=project.env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        await anyio.to_thread.run_sync(
            lambda: wait_until(lambda: running_server(sup.paths.server), timeout=20)
        )
        result = await anyio.to_thread.run_sync(bridge_call, sup.paths, "status", {})
        assert validate(StatusResult, result).tasks[0].name == "web"

        with pytest.raises(BridgeCallError) as failed:
            await anyio.to_thread.run_sync(bridge_call, sup.paths.root, "inspect", {"task": "x"})
        assert failed.value.code == -32001

        with pytest.raises(InvalidArgument, match="already running"):
            await run_serve(handle, port=0)

        codes = [
            await anyio.to_thread.run_sync(partial(run_bridge_call, handle, *args, as_json=True))
            for args in [
                ("status", "{}"),
                ("inspect", '{"task": "x"}'),
                ("status", "[1]"),
                ("status", "{bad"),
            ]
        ]
        assert codes == [0, 1, 2, 2]
        out = capsys.readouterr().out
        assert '"project"' in out and '"code": -32001' in out
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = await anyio.to_thread.run_sync(partial(proc.communicate, timeout=15))
    assert proc.returncode == 0, err
    assert "serving this project on http://127.0.0.1:" in err
    assert running_server(sup.paths.server) is None
    with pytest.raises(BridgeNotRunning):
        bridge_call(sup.paths, "status", {})
