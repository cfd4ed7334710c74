"""WebSocket bridge: the MCP tools as JSON-RPC 2.0 for editors, dashboards and scripts (and
taskmux 0.3's ``{"command": ...}`` messages, see `compat`), served at ``/ws`` by `serve`.

`serve` checks every connection's token, Origin and Host before it reaches the bridge.
Requests on one connection run concurrently; replies carry their request's id; events go to
subscribers as notifications, and followed log lines as ``log`` notifications. Each
connection has a bounded outgoing queue: a client that stops reading is dropped instead of
holding up anyone else.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import anyio.to_thread
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.websockets import WebSocket, WebSocketDisconnect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.sync.client import connect

from . import compat
from .budget import REPLY_BUDGET
from .endpoint import read_server_info
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
from .operations import OPERATIONS, Call, perform
from .project import Project, ProjectSlot
from .state import ProjectPaths

log = logging.getLogger("taskmux.bridge")

MAX_FRAME = 1024 * 1024  # largest incoming message; bigger ones close the connection (1009)
OUTGOING_QUEUE = 256  # messages waiting for a client; one more and the client is dropped
MAX_IN_FLIGHT = 32  # concurrent requests per connection
MAX_FOLLOWS = 16  # log follows at once, over all connections (each holds a reading thread)
FOLLOW_LINES = 200
CLOSE_TIMEOUT = 2.0

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


class _FollowParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tasks: list[str] | None = None
    lines: int = Field(default=FOLLOW_LINES, ge=0, le=10_000)


EXTRA_METHODS = ("subscribe", "unsubscribe", "follow", "unfollow")


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
    """One authenticated connection: its outgoing queue, subscription, log follow, requests."""

    def __init__(self, ws: WebSocket, group: anyio.abc.TaskGroup) -> None:
        self.ws = ws
        self.group = group
        self.outgoing, self._queued = anyio.create_memory_object_stream[str](OUTGOING_QUEUE)
        self.subscribed = False
        self.task_filter: frozenset[str] | None = None
        self.in_flight = 0
        self.in_order = _InOrder(self)
        self.closed = False
        self.follow_stop: threading.Event | None = None

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
        self.stop_following()
        log.warning("dropping bridge client %s: %s", _peer(self.ws), reason)
        self.group.start_soon(self._close, reason)

    async def _close(self, reason: str) -> None:
        with anyio.move_on_after(CLOSE_TIMEOUT), contextlib.suppress(Exception):
            await self.ws.close(1008, reason[:120])
        self.group.cancel_scope.cancel()

    def stop_following(self) -> None:
        """End this connection's log follow, if any."""
        if self.follow_stop is not None:
            self.follow_stop.set()
            self.follow_stop = None

    async def write_loop(self) -> None:
        """Send queued messages in order until the connection or the queue closes."""
        with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
            async with self._queued:
                async for text in self._queued:
                    await self.ws.send_text(text)

    def wants(self, event: EventRecord) -> bool:
        """Whether this client subscribed to this event."""
        if not self.subscribed:
            return False
        return self.task_filter is None or event.task in self.task_filter


def _peer(ws: WebSocket) -> str:
    client = ws.client
    return f"{client.host}:{client.port}" if client is not None else "?"


class Bridge:
    """The JSON-RPC service behind the WebSocket endpoint (one per running server)."""

    def __init__(self, slot: ProjectSlot) -> None:
        self.slot = slot
        self.group: anyio.abc.TaskGroup | None = None
        self.clients: set[_Client] = set()
        self.follow_threads = anyio.CapacityLimiter(MAX_FOLLOWS)

    async def handler(self, ws: WebSocket) -> None:
        """Serve one (already authorized) connection until it closes."""
        await ws.accept()
        try:
            async with anyio.create_task_group() as group:
                client = _Client(ws, group)
                self.clients.add(client)
                group.start_soon(client.write_loop)
                try:
                    while True:
                        message = await ws.receive()
                        if message["type"] == "websocket.disconnect":
                            break
                        data = message.get("text")
                        self.dispatch(client, data if data is not None else message.get("bytes"))
                finally:
                    client.closed = True
                    client.outgoing.close()
                    client.stop_following()
                    self.clients.discard(client)
        except (WebSocketDisconnect, RuntimeError, OSError):
            pass

    def dispatch(self, client: _Client, message: str | bytes | None) -> None:
        """Answer bad messages at once; run good ones concurrently."""
        if message is None:
            return
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
        if call.method in ("follow", "unfollow"):
            self._follow(client, call)
            return
        if call.method not in OPERATIONS:
            self._reply_error(
                client,
                call,
                RpcError(
                    METHOD_NOT_FOUND,
                    f"unknown method {call.method[:64]!r}; methods: "
                    + ", ".join([*OPERATIONS, *EXTRA_METHODS]),
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

    def _follow(self, client: _Client, call: RpcRequest) -> None:
        try:
            if call.method == "unfollow":
                validate_params(call.method, _NoParams, call.params)
                client.stop_following()
                result: dict[str, Any] = {"following": []}
            else:
                params = validate_params(call.method, _FollowParams, call.params)
                assert isinstance(params, _FollowParams)
                result = {"following": self._start_follow(client, params)}
        except RpcError as error:
            self._reply_error(client, call, error)
            return
        except TaskmuxError as exc:
            self._reply_error(client, call, rpc_error_for(exc))
            return
        if not call.notification:
            client.push({"jsonrpc": "2.0", "id": call.id, "result": result})

    def _start_follow(self, client: _Client, params: _FollowParams) -> list[str]:
        """Follow the named tasks' logs on this connection (replacing its earlier follow)."""
        project = self.slot.get()
        known = list(project.config.tasks)
        names = known if params.tasks is None else list(dict.fromkeys(params.tasks))
        for name in names:
            if name not in project.config.tasks:
                raise UnknownTask(name, known)
        if self.follow_threads.borrowed_tokens >= MAX_FOLLOWS and client.follow_stop is None:
            raise RpcError(BUSY, f"too many log follows at once (at most {MAX_FOLLOWS})")
        client.stop_following()
        stop = threading.Event()
        client.follow_stop = stop
        assert self.group is not None
        self.group.start_soon(self._stream_logs, client, project, names, params.lines, stop)
        return names

    async def _stream_logs(
        self, client: _Client, project: Project, names: list[str], lines: int, stop: threading.Event
    ) -> None:
        """Push a follow's lines to its client until stopped (reading in a thread of its own)."""
        redactor = project.redactor()

        def relay() -> None:
            for line in project.logs.follow(names, lines=lines, stop=stop.is_set):
                message = {
                    "jsonrpc": "2.0",
                    "method": "log",
                    "params": {
                        "task": line.task,
                        "time": line.time.isoformat() if line.time else None,
                        "text": redactor.text(line.text),
                    },
                }
                anyio.from_thread.run_sync(client.push, message)
                if stop.is_set() or client.closed:
                    return

        try:
            await anyio.to_thread.run_sync(
                relay, abandon_on_cancel=True, limiter=self.follow_threads
            )
        except Exception:
            log.exception("following logs of %s failed", ", ".join(names))
        finally:
            stop.set()

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
        path = paths_or_state_file.server
    elif paths_or_state_file.is_dir():
        path = paths_or_state_file / "server.json"
    else:
        path = paths_or_state_file
    info = read_server_info(path)
    if info is None or info.pid == 0:
        raise BridgeNotRunning(
            f"no server is running for this project (no {path}); start one with `taskmux serve`"
        )
    request = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params or {}}
    deadline = time.monotonic() + timeout
    try:
        with connect(
            info.ws_url,
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
            f"the server at {info.ws_url} refused the connection (HTTP {status}); "
            f"{path} may be stale"
        ) from None
    except (OSError, InvalidHandshake) as exc:
        raise BridgeNotRunning(
            f"no server answers at {info.ws_url} ({_short(exc)}); {path} may be stale — "
            "start one with `taskmux serve`"
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
