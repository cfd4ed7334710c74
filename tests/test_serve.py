"""`taskmux serve`: a real server process, the mcp SDK's Streamable HTTP client, raw HTTP and
WebSocket clients, several at once."""

from __future__ import annotations

import json
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp_types as types
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPDeprecationWarning
from support import Workspace, serving, wait_until
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect as ws_connect

from taskmux_mcp.endpoint import ServerInfo, read_server_info, running_server

pytestmark = pytest.mark.anyio

PROJECT = """
name = "served"
[tasks.api]
command = "echo api-up; sleep 1000"
stop_grace_period = 0.5
[tasks.flaky]
command = "echo flaky-up; sleep 1000"
auto_start = false
restart_policy = "no"
stop_grace_period = 0.5
"""


@pytest.fixture
def anyio_backend() -> str:
    """The SDK's HTTP client runs on asyncio here."""
    return "asyncio"


class Seen:
    """What one MCP session received besides replies."""

    def __init__(self) -> None:
        self.logs: list[str] = []
        self.updated: list[str] = []

    async def on_log(self, params: types.LoggingMessageNotificationParams) -> None:
        """logging_callback."""
        if isinstance(params.data, dict):
            self.logs.append(str(params.data.get("message")))

    async def on_message(self, message: object) -> None:
        """message_handler."""
        if isinstance(message, types.ResourceUpdatedNotification):
            self.updated.append(str(message.params.uri))


@asynccontextmanager
async def session(info: ServerInfo, token: str | None = None) -> AsyncIterator[tuple[Client, Seen]]:
    """An MCP session over Streamable HTTP with the SDK's own client."""
    seen = Seen()
    headers = {"Authorization": f"Bearer {token or info.token}"}
    async with (
        create_mcp_http_client(headers=headers) as http,
        Client(
            streamable_http_client(info.mcp_url, http_client=http),
            mode="legacy",
            logging_callback=seen.on_log,
            message_handler=seen.on_message,
        ) as client,
    ):
        yield client, seen


async def until(predicate: Any, timeout: float = 20.0) -> Any:
    """Poll a condition with a deadline, without blocking the event loop."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s (last value: {value!r})")
        await anyio.sleep(0.05)


async def call(client: Client, tool: str, **arguments: Any) -> dict[str, Any]:
    """A tool call that must succeed; its structured content."""
    result = await client.call_tool(tool, arguments)
    assert not result.is_error, result.content
    assert result.structured_content is not None
    return result.structured_content


def state_of(status: dict[str, Any], name: str) -> str:
    """One task's state in a status answer."""
    return str(next(t["state"] for t in status["tasks"] if t["name"] == name))


def initialize_body() -> dict[str, Any]:
    """An MCP initialize request."""
    return {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "raw", "version": "1"},
        },
    }


MCP_HEADERS = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}


async def test_two_mcp_sessions_share_the_tasks_each_with_its_own_subscriptions(
    project: Workspace,
) -> None:
    project.write(PROJECT)
    with serving(project) as (_, info):
        async with session(info) as (one, seen_one), session(info) as (two, seen_two):
            tools = {tool.name for tool in (await one.list_tools()).tools}
            assert {"status", "start", "stop", "logs", "wait_for"} <= tools
            resources = {str(r.uri) for r in (await two.list_resources()).resources}
            assert "taskmux://status" in resources
            started = await call(one, "start", tasks=["api", "flaky"])
            assert started["ok"] is True
            shown = await call(two, "status")  # the other session sees what the first did
            assert state_of(shown, "api") == "running" and state_of(shown, "flaky") == "running"
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", MCPDeprecationWarning)
                await one.subscribe_resource("taskmux://tasks/flaky")
            text = await two.read_resource("taskmux://status")
            content = text.contents[0]
            assert isinstance(content, types.TextResourceContents)
            assert state_of(json.loads(content.text), "flaky") == "running"

            flaky_pid = next(t["pid"] for t in shown["tasks"] if t["name"] == "flaky")
            subprocess.run(["kill", "-9", str(flaky_pid)], check=True)
            crashed = "task 'flaky' crashed: killed by SIGKILL"
            await until(lambda: crashed in seen_one.logs and crashed in seen_two.logs)
            await until(lambda: "taskmux://tasks/flaky" in seen_one.updated)
            assert "taskmux://tasks/flaky" not in seen_two.updated  # it did not subscribe
            status = await call(two, "status")
            assert state_of(status, "flaky") in ("crashed", "exited")
        # a third session after the first two closed still gets notifications
        async with session(info) as (three, seen_three):
            await call(three, "restart", tasks=["api"])
            shown = await call(three, "status")
            api_pid = next(t["pid"] for t in shown["tasks"] if t["name"] == "api")
            subprocess.run(["kill", "-9", str(api_pid)], check=True)
            await until(lambda: any("task 'api' crashed" in m for m in seen_three.logs))


async def test_every_path_refuses_a_missing_or_wrong_token_a_foreign_origin_and_host(
    project: Workspace,
) -> None:
    project.write(PROJECT)
    with serving(project) as (_, info):
        auth = {"Authorization": f"Bearer {info.token}"}
        wrong = {"Authorization": f"Bearer {info.token[:-2]}xx"}
        own_origin = {"Origin": f"http://127.0.0.1:{info.port}"}
        async with httpx2.AsyncClient(base_url=info.url, timeout=10) as http:
            body = initialize_body()
            cases = [
                ("POST", "/mcp", {}, 401),
                ("POST", "/mcp", wrong, 401),
                ("POST", "/mcp", {**auth, "Origin": "http://evil.example"}, 403),
                ("POST", "/mcp", {**auth, "Origin": f"http://localhost:{info.port + 1}"}, 403),
                ("POST", "/mcp", {**auth, "Host": "evil.example"}, 421),
                ("POST", "/mcp", {**auth, "Host": f"evil.example:{info.port}"}, 421),
                ("POST", "/mcp", {**auth, "Host": f"127.0.0.1:{info.port + 1}"}, 421),
                ("GET", "/", {}, 401),
                ("GET", "/", wrong, 401),
                ("GET", "/assets/app.js", {}, 401),
                ("GET", "/?token=nope", {}, 401),
                ("GET", "/", {**auth, "Host": f"rebound.example:{info.port}"}, 421),
                ("GET", "/nowhere", {}, 401),
            ]
            for method, path, headers, status in cases:
                answer = await http.request(
                    method, path, headers={**MCP_HEADERS, **headers}, json=body
                )
                assert answer.status_code == status, (method, path, headers, answer.text)
                assert answer.text == f"{status} {answer.reason_phrase}\n"  # no data
                assert "access-control-allow-origin" not in answer.headers
                assert "served" not in answer.text and info.token not in answer.text
            unauthorized = await http.post("/mcp", headers=MCP_HEADERS, json=body)
            assert unauthorized.headers["www-authenticate"] == "Bearer"

            # the right token, from the server's own origin or none, gets in
            for extra in ({}, own_origin, {"Origin": f"http://localhost:{info.port}"}):
                answer = await http.post(
                    "/mcp", headers={**MCP_HEADERS, **auth, **extra}, json=body
                )
                assert answer.status_code == 200, answer.text
                assert "mcp-session-id" in answer.headers
                assert "access-control-allow-origin" not in answer.headers
            # a session belongs to the token that opened it
            session_id = answer.headers["mcp-session-id"]
            other = await http.post(
                "/mcp",
                headers={**MCP_HEADERS, **wrong, "mcp-session-id": session_id},
                json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
            )
            assert other.status_code == 401

        for url, headers, status in [
            (info.ws_url, {}, 401),
            (info.ws_url, {"Authorization": "Bearer nope"}, 401),
            (info.ws_url, {**auth, "Origin": "http://evil.example"}, 403),
            (info.ws_url + "?token=" + info.token, {"Origin": "http://evil.example"}, 403),
        ]:
            with pytest.raises(InvalidStatus) as refused:
                ws_connect(url, additional_headers=headers, proxy=None, open_timeout=5)
            assert refused.value.response.status_code == status, (url, headers)
        handshake = (
            f"GET /ws HTTP/1.1\r\nHost: evil.example:{info.port}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            f"Sec-WebSocket-Version: 13\r\nAuthorization: Bearer {info.token}\r\n\r\n"
        )
        with socket.create_connection(("127.0.0.1", info.port), timeout=5) as sock:
            sock.sendall(handshake.encode())
            answer = sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 421 "), answer
        assert project.task_pids() == []  # none of it started anything


async def test_the_dashboard_login_sets_a_private_cookie_that_opens_page_and_websocket(
    project: Workspace,
) -> None:
    project.write(PROJECT)
    with serving(project) as (_, info):
        async with httpx2.AsyncClient(base_url=info.url, timeout=10) as http:
            login = await http.get(info.dashboard_url.removeprefix(info.url))
            assert login.status_code == 303 and login.headers["location"] == "/"
            cookie = login.headers["set-cookie"]
            name = f"taskmux-{info.port}"
            assert cookie.startswith(f"{name}={info.token};")
            flags = {part.strip().lower() for part in cookie.split(";")[1:]}
            assert {"httponly", "path=/", "samesite=strict"} <= flags
            assert login.headers["referrer-policy"] == "no-referrer"
            page = await http.get("/", headers={"Cookie": f"{name}={info.token}"})
            assert page.status_code == 200, page.text
            assert page.headers["content-type"].startswith("text/html")
            assert "script-src 'self'" in page.headers["content-security-policy"]
            other_port = await http.get("/", headers={"Cookie": f"taskmux-1={info.token}"})
            assert other_port.status_code == 401
            with_cookie = {"Cookie": f"{name}={info.token}"}
            for path in ("/assets/..%2Fserve.py", "/assets/.hidden", "/assets/nothing.js"):
                missing = await http.get(path, headers=with_cookie)
                assert missing.status_code == 404, path
        with ws_connect(
            info.ws_url,
            additional_headers={
                "Cookie": f"{name}={info.token}",
                "Origin": f"http://127.0.0.1:{info.port}",
            },
            proxy=None,
        ) as ws:
            ws.send(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "status"}))
            assert json.loads(ws.recv(timeout=10))["result"]["project"] == "served"


async def test_a_followed_log_streams_new_lines_to_the_bridge(project: Workspace) -> None:
    project.write(
        """
        name = "served"
        [tasks.ticker]
        command = "i=0; while true; do i=$((i+1)); echo tick-$i; sleep 0.2; done"
        stop_grace_period = 0.5
        """
    )
    with serving(project) as (_, info):
        headers = {"Authorization": f"Bearer {info.token}"}
        with ws_connect(info.ws_url, additional_headers=headers, proxy=None) as ws:
            ws.send(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "start", "params": {}}))
            ws.send(
                json.dumps({"jsonrpc": "2.0", "id": 2, "method": "follow", "params": {"lines": 0}})
            )
            ws.send(json.dumps({"jsonrpc": "2.0", "id": 3, "method": "follow",
                                "params": {"tasks": ["nope"]}}))  # fmt: skip
            texts: list[str] = []
            replies: dict[int, Any] = {}
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and len(texts) < 5:
                message = json.loads(ws.recv(timeout=10))
                if message.get("method") == "log":
                    assert message["params"]["task"] == "ticker"
                    if message["params"]["text"].startswith("tick-"):
                        texts.append(message["params"]["text"])
                elif "id" in message:
                    replies[message["id"]] = message
            assert replies[2]["result"] == {"following": ["ticker"]}
            assert "known tasks: ticker" in replies[3]["error"]["message"]
            numbers = [int(t.removeprefix("tick-")) for t in texts]
            assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)
            ws.send(json.dumps({"jsonrpc": "2.0", "id": 4, "method": "unfollow"}))
            while True:
                message = json.loads(ws.recv(timeout=10))
                if message.get("id") == 4:
                    assert message["result"] == {"following": []}
                    break


async def test_one_server_per_project_even_when_started_at_once(project: Workspace) -> None:
    project.write(PROJECT)
    exe = Path(sys.executable).with_name("taskmux")
    procs = [
        subprocess.Popen(
            [str(exe), "--project", str(project.root), "serve", "--port", "0"],
            env=project.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    paths = project.open().paths
    try:
        info = wait_until(lambda: running_server(paths.server), timeout=30)
        wait_until(lambda: sum(p.poll() is not None for p in procs) >= 2, timeout=30)
        refused = [p for p in procs if p.poll() is not None]
        assert len(refused) == 2
        for proc in refused:
            assert proc.returncode == 2
            err = proc.stderr.read() if proc.stderr else ""
            assert "already running for this project" in err and info.dashboard_url in err, err
        serving_pid = {p.pid for p in procs} - {p.pid for p in refused}
        assert {info.pid} == serving_pid
        assert stat.S_IMODE(paths.server.stat().st_mode) == 0o600
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                proc.wait(timeout=20)
    after = read_server_info(paths.server)
    assert after is not None and after.pid == 0 and after.token == info.token
    # the next server keeps the token and the port, so registered clients stay valid
    with serving(project) as (_, again):
        assert again.token == info.token


async def test_a_frozen_server_is_named_and_non_loopback_needs_the_flag(
    project: Workspace,
) -> None:
    project.write(PROJECT)
    with serving(project) as (proc, info):
        proc.send_signal(signal.SIGSTOP)
        try:
            second = project.cli("serve", "--port", "0", timeout=30)
        finally:
            proc.send_signal(signal.SIGCONT)
        assert second.returncode == 2
        assert f"already running for this project (pid {info.pid})" in second.stderr
    remote = project.cli("serve", "--host", "0.0.0.0", "--port", "0")
    assert remote.returncode == 2 and "--allow-remote" in remote.stderr
    assert "Traceback" not in remote.stderr


async def test_a_slow_mcp_call_does_not_hold_up_another_session(project: Workspace) -> None:
    project.write(
        """
        name = "served"
        [tasks.slow]
        command = "sleep 1000"
        health_check = "sleep 2; true"
        health_start_period = 0
        health_interval = 1
        stop_grace_period = 0.5
        """
    )
    with serving(project) as (_, info):
        done = threading.Event()
        async with session(info) as (one, _), session(info) as (two, _):

            async def slow() -> None:
                await call(one, "start", tasks=["slow"], timeout=30)
                done.set()

            async with anyio.create_task_group() as group:
                group.start_soon(slow)
                shown = await call(two, "status")  # answered while the start waits
                assert not done.is_set()
                assert shown["project"] == "served"
