"""WebSocket bridge: the MCP tools as JSON-RPC 2.0 for editors, dashboards and scripts (and
taskmux 0.3's ``{"command": ...}`` messages, see `compat`).

Every connection must present the token from ``bridge.json`` (state folder, mode 0600) and
an allowed ``Origin`` (or none); refusals happen at the handshake and carry no data. Requests
on one connection run concurrently; replies carry their request's id; events go to
subscribers as notifications. Each connection has a bounded outgoing queue: a client that
stops reading is dropped instead of holding up anyone else.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hmac
import ipaddress
import json
import logging
import os
import secrets
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
import anyio.abc
from pydantic import BaseModel, ConfigDict, ValidationError
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.http11 import Request, Response
from websockets.sync.client import connect

from . import compat
from .budget import REPLY_BUDGET
from .errors import (
    ArgumentError,
    ConfigError,
    HookFailed,
    InvalidArgument,
    TaskBusy,
    TaskmuxError,
    TmuxError,
    UnknownTask,
)
from .events import Cause
from .models import EventRecord
from .monitor import Monitor
from .operations import OPERATIONS, Call, perform
from .project import Project, ProjectSlot
from .state import ProjectPaths, write_atomic

log = logging.getLogger("taskmux.bridge")

DEFAULT_PORT = 8765
MAX_FRAME = 1024 * 1024  # largest incoming message; bigger ones close the connection (1009)
OUTGOING_QUEUE = 256  # messages waiting for a client; one more and the client is dropped
MAX_IN_FLIGHT = 32  # concurrent requests per connection
CLOSE_TIMEOUT = 2.0
SHUTDOWN_TIMEOUT = 3.0
MONITOR_RETRY_S = 1.0

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
TASKMUX_ERROR = -32000
UNKNOWN_TASK = -32001
INVALID_ARGUMENT = -32002
CONFIG_ERROR = -32003
TMUX_ERROR = -32004
HOOK_FAILED = -32005
TASK_BUSY = -32006
BUSY = -32010

_ERROR_CODES: tuple[tuple[type[TaskmuxError], int], ...] = (
    (ArgumentError, INVALID_PARAMS),
    (UnknownTask, UNKNOWN_TASK),
    (TaskBusy, TASK_BUSY),
    (InvalidArgument, INVALID_ARGUMENT),
    (ConfigError, CONFIG_ERROR),
    (TmuxError, TMUX_ERROR),
    (HookFailed, HOOK_FAILED),
)


class BridgeNotRunning(TaskmuxError):
    """No bridge answers for this project."""


class BridgeTimeout(TaskmuxError):
    """The bridge did not answer in time."""


class BridgeCallError(TaskmuxError):
    """The bridge answered a call with a JSON-RPC error."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        self.code = code
        self.message = message
        self.data = data
        super().__init__(f"{message} (JSON-RPC error {code})")


# ------------------------------------------------------------------ JSON-RPC


@dataclass(frozen=True)
class RpcError(Exception):
    """A JSON-RPC error to send back."""

    code: int
    message: str
    data: Any = None

    def payload(self) -> dict[str, Any]:
        """The error member of a response."""
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            error["data"] = self.data
        return error


_UNEXPECTED = RpcError(
    INTERNAL_ERROR, "the bridge could not complete this call (the reason is in the bridge's log)"
)


class _SubscribeParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tasks: list[str] | None = None


class _NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _reject_constant(value: str) -> Any:
    raise ValueError(f"{value} is not valid JSON")


def _encode(message: dict[str, Any]) -> str:
    return json.dumps(message, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def error_reply(request_id: Any, error: RpcError) -> dict[str, Any]:
    """A JSON-RPC error response."""
    return {"jsonrpc": "2.0", "id": request_id, "error": error.payload()}


def rpc_error_for(exc: TaskmuxError) -> RpcError:
    """The JSON-RPC error of a taskmux failure (code by kind, message for the caller)."""
    code = next((c for kind, c in _ERROR_CODES if isinstance(exc, kind)), TASKMUX_ERROR)
    data: dict[str, Any] | None = None
    if isinstance(exc, UnknownTask):
        data = {"task": exc.name, "known": list(exc.known)}
    elif isinstance(exc, ConfigError):
        data = {"problems": [str(p) for p in exc.problems]}
    return RpcError(code, str(exc), data)


@dataclass(frozen=True)
class RpcRequest:
    """A well-formed request: id (absent for notifications), method, params."""

    id: Any
    method: str
    params: dict[str, Any]
    notification: bool


class _Invalid(Exception):
    def __init__(self, request_id: Any, error: RpcError) -> None:
        super().__init__(error.message)
        self.request_id = request_id
        self.error = error


def decode_message(raw: str | bytes) -> Any:
    """The JSON value of one message; _Invalid (a parse error) when it is not JSON."""
    try:
        return json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise _Invalid(None, RpcError(PARSE_ERROR, f"parse error: {_short(exc)}")) from None


def parse_request(data: Any) -> RpcRequest:
    """The JSON-RPC request in a decoded message; _Invalid (with the id when known) otherwise."""
    if isinstance(data, list):
        raise _Invalid(
            None,
            RpcError(
                INVALID_REQUEST,
                "batch requests are not supported: send one request per message "
                "(requests on one connection run concurrently)",
            ),
        )
    if not isinstance(data, dict):
        raise _Invalid(None, RpcError(INVALID_REQUEST, "a request must be a JSON object"))
    request_id = data.get("id")
    id_ok = request_id is None or (
        isinstance(request_id, str | int) and not isinstance(request_id, bool)
    )
    if not id_ok:
        raise _Invalid(None, RpcError(INVALID_REQUEST, "id must be a string, an integer or null"))
    if "jsonrpc" not in data:
        raise _Invalid(
            request_id,
            RpcError(
                INVALID_REQUEST,
                'not a request: send JSON-RPC 2.0, {"jsonrpc": "2.0", "id": 1, "method": '
                '"status"}, or taskmux 0.3\'s {"command": "status"}',
            ),
        )
    if data.get("jsonrpc") != "2.0":
        raise _Invalid(request_id, RpcError(INVALID_REQUEST, 'jsonrpc must be "2.0"'))
    method = data.get("method")
    if not isinstance(method, str):
        raise _Invalid(request_id, RpcError(INVALID_REQUEST, "method must be a string"))
    params = data.get("params", {})
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise _Invalid(
            request_id,
            RpcError(INVALID_PARAMS, "params must be an object of named arguments"),
        )
    return RpcRequest(request_id, method, params, notification="id" not in data)


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 200 else text[:200] + "…"


def validate_params(method: str, model: type[BaseModel], params: dict[str, Any]) -> BaseModel:
    """Check a call's params against its model; RpcError -32602 with pydantic's words."""
    try:
        return model.model_validate(params)
    except ValidationError as exc:
        problems = exc.errors(include_url=False, include_context=False, include_input=False)
        parts = [
            f"{'.'.join(str(p) for p in problem['loc']) or 'params'}: {problem['msg']}"
            for problem in problems
        ]
        details = [
            {"loc": [str(p) for p in problem["loc"]], "msg": problem["msg"]} for problem in problems
        ]
        raise RpcError(
            INVALID_PARAMS, f"invalid params for {method}: " + "; ".join(parts), details
        ) from None


# ------------------------------------------------------------------ handshake


def is_loopback(host: str) -> bool:
    """Whether host names only this machine."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _bind_host(host: str, allow_remote: bool) -> str:
    if not host:
        raise InvalidArgument("empty --host; use 127.0.0.1 (the default)")
    if is_loopback(host):
        return "127.0.0.1" if host.lower() == "localhost" else host.strip("[]")
    if not allow_remote:
        raise InvalidArgument(
            f"refusing to listen on {host}: it is not a loopback address, so other machines "
            "could reach the bridge; pass --allow-remote to do it anyway"
        )
    return host


def _bearer_tokens(headers: Headers) -> list[str]:
    tokens = []
    for value in headers.get_all("Authorization"):
        scheme, _, credentials = value.strip().partition(" ")
        if scheme.lower() == "bearer" and credentials.strip():
            tokens.append(credentials.strip())
    return tokens


def _token_matches(candidate: str, token: bytes) -> bool:
    return hmac.compare_digest(candidate.encode("utf-8", "surrogateescape"), token)


def _origin_allowed(origins: list[str], allowed: tuple[str, ...]) -> bool:
    if not origins:
        return True  # not a browser: the token alone decides
    if len(origins) > 1:
        return False
    wanted = {a.strip().rstrip("/").lower() for a in allowed}
    return origins[0].strip().rstrip("/").lower() in wanted


def _refusal(connection: ServerConnection, status: HTTPStatus) -> Response:
    response = connection.respond(status, f"{status.value} {status.phrase}\n")
    if status is HTTPStatus.UNAUTHORIZED:
        response.headers["WWW-Authenticate"] = "Bearer"
    return response


# ------------------------------------------------------------------ connections


class _Slot:
    """The place of one taskmux 0.3 reply in its connection's order."""

    def __init__(self, order: _InOrder) -> None:
        self._order = order
        self.reply: dict[str, Any] | None = None

    def fill(self, reply: dict[str, Any]) -> None:
        """Set the reply; it is sent once every earlier one has been."""
        self.reply = reply
        self._order.flush()


class _InOrder:
    """taskmux 0.3 replies, sent in the order of their requests (they carry no id)."""

    def __init__(self, client: _Client) -> None:
        self._client = client
        self._slots: collections.deque[_Slot] = collections.deque()

    def reserve(self) -> _Slot | None:
        """A place for the next reply; None (and the client dropped) when too many wait."""
        if len(self._slots) >= OUTGOING_QUEUE:
            self._client.drop("client too slow: too many taskmux 0.3 replies waiting")
            return None
        slot = _Slot(self)
        self._slots.append(slot)
        return slot

    def flush(self) -> None:
        """Send the replies that are ready and have no unanswered request before them."""
        while self._slots and (reply := self._slots[0].reply) is not None:
            self._slots.popleft()
            self._client.push(reply)


class _Client:
    """One authenticated connection: its outgoing queue, subscription and requests."""

    def __init__(self, ws: ServerConnection) -> None:
        self.ws = ws
        self.outgoing, self._queued = anyio.create_memory_object_stream[str](OUTGOING_QUEUE)
        self.subscribed = False
        self.task_filter: frozenset[str] | None = None
        self.in_flight = 0
        self.in_order = _InOrder(self)
        self.closed = False
        self._closer: asyncio.Task[None] | None = None

    def push(self, message: dict[str, Any]) -> None:
        """Queue a message; a client whose queue is full is dropped."""
        if self.closed:
            return
        try:
            text = _encode(message)
        except ValueError as exc:
            log.error("could not encode a reply: %s", exc)
            text = _encode(error_reply(message.get("id"), _UNEXPECTED))
        try:
            self.outgoing.send_nowait(text)
        except anyio.WouldBlock:
            self.drop("client too slow: outgoing queue full")
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            pass

    def drop(self, reason: str) -> None:
        """Close the connection now, without waiting for the client to read anything."""
        if self.closed:
            return
        self.closed = True
        self.outgoing.close()
        log.warning("dropping bridge client %s: %s", _peer(self.ws), reason)
        self._closer = asyncio.get_running_loop().create_task(self._close(reason))

    async def _close(self, reason: str) -> None:
        with anyio.move_on_after(CLOSE_TIMEOUT):
            await self.ws.close(1008, reason[:120])
        self.ws.transport.abort()

    async def write_loop(self) -> None:
        """Send queued messages in order until the connection or the queue closes."""
        with contextlib.suppress(ConnectionClosed):
            async with self._queued:
                async for text in self._queued:
                    await self.ws.send(text)

    def wants(self, event: EventRecord) -> bool:
        """Whether this client subscribed to this event."""
        if not self.subscribed:
            return False
        return self.task_filter is None or event.task in self.task_filter


def _peer(ws: ServerConnection) -> str:
    try:
        address = ws.remote_address
    except Exception:
        return "?"
    if isinstance(address, tuple) and len(address) >= 2:
        return f"{address[0]}:{address[1]}"
    return str(address)


class Bridge:
    """The JSON-RPC service behind the WebSocket server (one per running bridge)."""

    def __init__(self, slot: ProjectSlot, token: str) -> None:
        self.slot = slot
        self._token = token.encode()
        self.group: anyio.abc.TaskGroup | None = None
        self.clients: set[_Client] = set()

    def allowed_origins(self) -> tuple[str, ...]:
        """The [bridge] allowed_origins of the config in force."""
        with contextlib.suppress(TaskmuxError):
            self.slot.get()
        current = self.slot.current
        return current.config.bridge.allowed_origins if current is not None else ()

    def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        """Refuse the handshake unless the Origin is allowed and the token is right."""
        if not _origin_allowed(request.headers.get_all("Origin"), self.allowed_origins()):
            return _refusal(connection, HTTPStatus.FORBIDDEN)
        candidates = _bearer_tokens(request.headers)
        candidates += parse_qs(urlsplit(request.path).query).get("token", [])
        # every candidate is compared, so timing does not tell which one (or whether any) matched
        matches = [_token_matches(candidate, self._token) for candidate in candidates]
        if not any(matches):
            return _refusal(connection, HTTPStatus.UNAUTHORIZED)
        return None

    async def handler(self, ws: ServerConnection) -> None:
        """Serve one connection until it closes."""
        client = _Client(ws)
        self.clients.add(client)
        try:
            async with anyio.create_task_group() as group:
                group.start_soon(client.write_loop)
                try:
                    async for message in ws:
                        self.dispatch(client, message)
                except ConnectionClosed:
                    pass
                finally:
                    client.closed = True
                    client.outgoing.close()
        finally:
            self.clients.discard(client)

    def dispatch(self, client: _Client, message: str | bytes) -> None:
        """Answer bad messages at once; run good ones concurrently."""
        try:
            data = decode_message(message)
            if compat.is_legacy(data):
                self._legacy(client, data)
                return
            call = parse_request(data)
        except _Invalid as invalid:
            client.push(error_reply(invalid.request_id, invalid.error))
            return
        if call.method in ("subscribe", "unsubscribe"):
            self._subscription(client, call)
            return
        if call.method not in OPERATIONS:
            self._reply_error(
                client,
                call,
                RpcError(
                    METHOD_NOT_FOUND,
                    f"unknown method {call.method[:64]!r}; methods: "
                    + ", ".join([*OPERATIONS, "subscribe", "unsubscribe"]),
                ),
            )
            return
        busy = self._busy(client)
        if busy is not None:
            self._reply_error(client, call, RpcError(BUSY, busy))
            return
        assert self.group is not None
        client.in_flight += 1
        self.group.start_soon(self._run, client, call)

    def _busy(self, client: _Client) -> str | None:
        """Why a request cannot run now, if it cannot."""
        if client.in_flight >= MAX_IN_FLIGHT:
            return f"too many requests in flight (at most {MAX_IN_FLIGHT})"
        if self.group is None:
            return "the bridge is starting or stopping"
        return None

    def _legacy(self, client: _Client, data: dict[str, Any]) -> None:
        """Run a taskmux 0.3 request; its reply follows those of the requests before it."""
        slot = client.in_order.reserve()
        if slot is None:
            return
        try:
            request = compat.parse_legacy(data)
        except compat.LegacyInvalid as invalid:
            slot.fill(compat.error(str(invalid)))
            return
        busy = self._busy(client)
        if busy is not None:
            slot.fill(compat.error(busy))
            return
        assert self.group is not None
        client.in_flight += 1
        self.group.start_soon(self._run_legacy, client, request, slot)

    async def _run_legacy(
        self, client: _Client, request: compat.LegacyRequest, slot: _Slot
    ) -> None:
        try:
            project, result = await self._operate(request.command, request.params, None)
            reply = await compat.reply(project, result)
        except TaskmuxError as exc:
            reply = compat.error(str(exc))
        except Exception:
            log.exception("bridge command %s failed", request.command)
            reply = compat.error(_UNEXPECTED.message)
        finally:
            client.in_flight -= 1
        slot.fill(reply)

    def _reply_error(self, client: _Client, call: RpcRequest, error: RpcError) -> None:
        if not call.notification:
            client.push(error_reply(call.id, error))

    def _subscription(self, client: _Client, call: RpcRequest) -> None:
        try:
            if call.method == "subscribe":
                params = validate_params(call.method, _SubscribeParams, call.params)
                assert isinstance(params, _SubscribeParams)
                client.task_filter = None if params.tasks is None else frozenset(params.tasks)
                client.subscribed = True
            else:
                validate_params(call.method, _NoParams, call.params)
                client.subscribed = False
        except RpcError as error:
            self._reply_error(client, call, error)
            return
        if not call.notification:
            client.push(
                {"jsonrpc": "2.0", "id": call.id, "result": {"subscribed": client.subscribed}}
            )

    async def _run(self, client: _Client, call: RpcRequest) -> None:
        try:
            result = await self.execute(client, call)
            reply = {"jsonrpc": "2.0", "id": call.id, "result": result}
        except RpcError as error:
            reply = error_reply(call.id, error)
        except Exception:
            log.exception("bridge call %s failed", call.method)
            reply = error_reply(call.id, _UNEXPECTED)
        finally:
            client.in_flight -= 1
        if not call.notification:
            client.push(reply)

    async def execute(self, client: _Client, call: RpcRequest) -> dict[str, Any]:
        """Run one operation; every failure comes back as an RpcError."""
        progress = None
        if OPERATIONS[call.method].waits and not call.notification:
            progress = self._progress(client, call.id)
        try:
            _, result = await self._operate(call.method, call.params, progress)
        except TaskmuxError as exc:
            raise rpc_error_for(exc) from None
        dumped: dict[str, Any] = result.model_dump(mode="json")
        return dumped

    async def _operate(
        self, name: str, params: dict[str, Any], progress: Callable[[str], Any] | None
    ) -> tuple[Project, BaseModel]:
        """The project and the result of one operation, fitted to the reply budget."""
        project = self.slot.get()
        call = Call(cause=Cause.USER, progress=progress)
        return project, await perform(project, name, params, call, budget=REPLY_BUDGET)

    @staticmethod
    def _progress(client: _Client, request_id: Any) -> Callable[[str], Any]:
        async def progress(message: str) -> None:
            client.push(
                {
                    "jsonrpc": "2.0",
                    "method": "progress",
                    "params": {"request": request_id, "message": message},
                }
            )

        return progress

    def publish(self, event: EventRecord) -> None:
        """Send an event to every client that subscribed to it (never waits)."""
        wanted = [client for client in self.clients if client.wants(event)]
        if not wanted:
            return
        message = {"jsonrpc": "2.0", "method": "event", "params": event.model_dump(mode="json")}
        for client in wanted:
            client.push(message)

    async def pump(self, project: Project) -> None:
        """Forward the project's events (from every process) to subscribers, secrets hidden."""
        async with project.events.subscribe() as feed:
            async for event in feed:
                try:
                    self.publish(project.redactor().model(event))
                except Exception:
                    log.exception("could not forward an event")


# ------------------------------------------------------------------ bridge.json


class BridgeInfo(BaseModel):
    """What bridge.json holds: where the bridge listens and the token it requires."""

    url: str
    host: str
    port: int
    token: str
    pid: int
    started: float


def _client_url(host: str, port: int) -> str:
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"ws://{host}:{port}"


def read_bridge_info(path: Path) -> BridgeInfo | None:
    """The bridge.json at path, or None when absent or unreadable."""
    try:
        return BridgeInfo.model_validate_json(path.read_bytes())
    except (OSError, ValidationError):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _listening(info: BridgeInfo) -> bool:
    host = urlsplit(info.url).hostname or "127.0.0.1"
    try:
        with socket.create_connection((host, info.port), timeout=0.5):
            return True
    except OSError:
        return False


def _refuse_second_bridge(path: Path) -> None:
    info = read_bridge_info(path)
    if info is None or info.pid == os.getpid() or not _pid_alive(info.pid):
        return
    if _listening(info):
        raise InvalidArgument(
            f"a bridge is already running for this project (pid {info.pid}, {info.url}); "
            "stop it first, or use it"
        )


def _remove_if_ours(path: Path, token: str) -> None:
    info = read_bridge_info(path)
    if info is not None and hmac.compare_digest(info.token, token):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


# ------------------------------------------------------------------ server


async def run_bridge(
    slot: ProjectSlot,
    *,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    allow_remote: bool = False,
    ready: Callable[[int], None] | None = None,
) -> None:
    """Serve the project's tools over WebSocket and run its monitor until cancelled."""
    bind = _bind_host(host, allow_remote)
    if not 0 <= port <= 65535:
        raise InvalidArgument(f"port must be between 0 and 65535 (got {port})")
    project = slot.get()
    paths = project.paths
    _refuse_second_bridge(paths.bridge)
    if not is_loopback(bind):
        log.warning(
            "the bridge listens on %s, reachable from other machines: anyone holding the "
            "token controls this project's tasks, and it travels unencrypted (no TLS)",
            bind,
        )
    token = secrets.token_urlsafe(32)
    bridge = Bridge(slot, token)
    server = await serve(
        bridge.handler,
        bind,
        port,
        process_request=bridge.process_request,
        max_size=MAX_FRAME,
        close_timeout=CLOSE_TIMEOUT,
        compression=None,
        server_header=None,
    )
    try:
        bound = server.sockets[0].getsockname()[1]
        info = BridgeInfo(
            url=_client_url(bind, bound),
            host=bind,
            port=bound,
            token=token,
            pid=os.getpid(),
            started=time.time(),
        )
        async with anyio.create_task_group() as group:
            bridge.group = group
            write_atomic(paths.bridge, info.model_dump_json(indent=2).encode(), 0o600)
            group.start_soon(_keep_monitor, project)
            group.start_soon(bridge.pump, project)
            if ready is not None:
                ready(bound)
            try:
                await anyio.sleep_forever()
            finally:
                _remove_if_ours(paths.bridge, token)
                with anyio.CancelScope(shield=True), anyio.move_on_after(SHUTDOWN_TIMEOUT):
                    await _shutdown(server)
    finally:
        _remove_if_ours(paths.bridge, token)
        server.close()


async def _keep_monitor(project: Project) -> None:
    """Run the project's monitor; should it fail, log why and run a fresh one."""
    while True:
        try:
            await Monitor(project, host="bridge").run()
            return
        except Exception:
            log.exception("the monitor failed; starting it again in %.0f s", MONITOR_RETRY_S)
        await anyio.sleep(MONITOR_RETRY_S)


async def _shutdown(server: Server) -> None:
    server.close()
    await server.wait_closed()


def serve_bridge(
    slot: ProjectSlot,
    *,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    allow_remote: bool = False,
) -> int:
    """Run the bridge until SIGINT/SIGTERM (the `taskmux bridge` command); exit status."""

    def announce(bound: int) -> None:
        current = slot.current
        where = current.paths.bridge if current is not None else "bridge.json"
        print(
            f"taskmux bridge: listening on {_client_url(_bind_host(host, allow_remote), bound)} "
            f"(token in {where}); Ctrl-C to stop",
            file=sys.stderr,
            flush=True,
        )

    async def main() -> None:
        with anyio.CancelScope() as scope:
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(signum, scope.cancel)
            await run_bridge(slot, host=host, port=port, allow_remote=allow_remote, ready=announce)

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="taskmux bridge: %(message)s")
    try:
        anyio.run(main)
    except TaskmuxError as exc:
        print(f"taskmux bridge: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(
            f"taskmux bridge: cannot listen on {host}:{port}: {exc.strerror or exc}",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        pass
    return 0


# ------------------------------------------------------------------ client


def bridge_call(
    paths_or_state_file: ProjectPaths | Path,
    method: str,
    params: dict[str, Any] | None = None,
    *,
    timeout: float = 60,
) -> dict[str, Any]:
    """Call one method on the project's running bridge; its result, or BridgeCallError."""
    if isinstance(paths_or_state_file, ProjectPaths):
        path = paths_or_state_file.bridge
    elif paths_or_state_file.is_dir():
        path = paths_or_state_file / "bridge.json"
    else:
        path = paths_or_state_file
    info = read_bridge_info(path)
    if info is None:
        raise BridgeNotRunning(f"no bridge is running for this project (no {path})")
    request = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params or {}}
    deadline = time.monotonic() + timeout
    try:
        with connect(
            info.url,
            additional_headers={"Authorization": f"Bearer {info.token}"},
            open_timeout=min(timeout, 10),
            max_size=None,
            compression=None,
            proxy=None,
        ) as ws:
            ws.send(_encode(request))
            while True:
                raw = ws.recv(timeout=max(0.0, deadline - time.monotonic()))
                reply = json.loads(raw)
                if isinstance(reply, dict) and reply.get("id") == 1:
                    break
    except InvalidStatus as exc:
        status = exc.response.status_code
        raise BridgeNotRunning(
            f"the bridge at {info.url} refused the connection (HTTP {status}); {path} may be stale"
        ) from None
    except (OSError, InvalidHandshake) as exc:
        raise BridgeNotRunning(
            f"no bridge answers at {info.url} ({_short(exc)}); {path} may be stale — "
            "start one with `taskmux bridge`"
        ) from None
    except ConnectionClosed as exc:
        raise BridgeNotRunning(f"the bridge closed the connection ({_short(exc)})") from None
    except TimeoutError:
        raise BridgeTimeout(f"no answer from the bridge within {timeout:g}s") from None
    if "error" in reply:
        error = reply["error"] if isinstance(reply["error"], dict) else {}
        raise BridgeCallError(
            int(error.get("code", INTERNAL_ERROR)),
            str(error.get("message", "error")),
            error.get("data"),
        )
    result = reply.get("result")
    return result if isinstance(result, dict) else {"value": result}


def run_bridge_call(
    slot: ProjectSlot, method: str, params_json: str | None, *, as_json: bool
) -> int:
    """`taskmux bridge-call METHOD [JSON]`: print the result; exit 0, 1 (error reply) or 2."""
    try:
        params = json.loads(params_json) if params_json else {}
    except ValueError as exc:
        print(f"taskmux bridge-call: params are not valid JSON: {exc}", file=sys.stderr)
        return 2
    if not isinstance(params, dict):
        print(
            'taskmux bridge-call: params must be a JSON object, e.g. \'{"tasks": ["api"]}\'',
            file=sys.stderr,
        )
        return 2
    wait_s = params.get("timeout", 60)
    timeout = max(60.0, float(wait_s) + 30) if isinstance(wait_s, int | float) else 60.0
    try:
        paths = slot.get().paths
        result = bridge_call(paths, method, params, timeout=timeout)
    except (BridgeCallError, BridgeTimeout) as exc:
        if as_json and isinstance(exc, BridgeCallError):
            error = {"code": exc.code, "message": exc.message, "data": exc.data}
            print(json.dumps({"error": error}, indent=2, ensure_ascii=False))
        print(f"taskmux bridge-call: {exc}", file=sys.stderr)
        return 1
    except TaskmuxError as exc:
        print(f"taskmux bridge-call: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2, ensure_ascii=False))
    return 0
