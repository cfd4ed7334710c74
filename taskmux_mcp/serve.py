"""`taskmux serve`: one local HTTP server per project, running its monitor, that serves the MCP
server over Streamable HTTP at ``/mcp``, the WebSocket bridge at ``/ws`` (and, for taskmux
0.3-era clients, at ``/``) and the dashboard at ``/``.

One guard stands before all three: the Host must name this server (DNS rebinding), an
Origin must be the server's own or listed in ``[bridge] allowed_origins``, and the token of
``server.json`` must come as ``Authorization: Bearer``, as the dashboard's cookie, or (for
the login URL and WebSocket clients that cannot set headers) as ``?token=``. Refusals carry
no data.
"""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import logging
import os
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from http import HTTPStatus
from importlib import resources
from pathlib import Path
from urllib.parse import parse_qs

import anyio
import uvicorn
from mcp.server.streamable_http import EventCallback, EventId, EventMessage, EventStore, StreamId
from mcp.server.streamable_http_manager import StreamableHTTPASGIApp, StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from mcp_types import JSONRPCMessage
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket

from .bridge import MAX_FRAME, Bridge
from .endpoint import (
    ServerInfo,
    choose_port,
    mark_stopped,
    running_server,
    token_for,
    url_host,
)
from .errors import InvalidArgument, TaskmuxError
from .locks import FileLock
from .mcp_server import build_server
from .project import Project, ProjectSlot

log = logging.getLogger("taskmux.serve")

SHUTDOWN_TIMEOUT_S = 3
FIRST_WAIT_S = 5.0  # how long a second `serve` waits for the first one to say where it is
PING_S = 20.0
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
EVENTS_PER_STREAM = 500  # kept per event stream for clients that resume it
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; connect-src 'self'; img-src 'self' data:; "
    "style-src 'self'; script-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
    "form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
}
ASSET_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
}


def is_loopback(host: str) -> bool:
    """Whether host names only this machine."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def bind_host(host: str, allow_remote: bool) -> str:
    """The address to listen on; non-loopback ones only with --allow-remote."""
    if not host:
        raise InvalidArgument("empty --host; use 127.0.0.1 (the default)")
    if is_loopback(host):
        return "127.0.0.1" if host.lower() == "localhost" else host.strip("[]")
    if not allow_remote:
        raise InvalidArgument(
            f"refusing to listen on {host}: it is not a loopback address, so other machines "
            "could reach this project's tasks; pass --allow-remote to do it anyway"
        )
    return host


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        return False
    return True


# ------------------------------------------------------------------ guard


@dataclass(frozen=True)
class Guard:
    """Host, Origin and token checks in front of every HTTP request and WebSocket."""

    app: ASGIApp
    token: str
    port: int
    bind: str
    allowed_origins: Callable[[], tuple[str, ...]]

    @property
    def cookie(self) -> str:
        """The dashboard's cookie name (cookies are not scoped to a port: the name is)."""
        return f"taskmux-{self.port}"

    def host_ok(self, values: list[str]) -> bool:
        """Whether the Host header names this server: a loopback name, an IP address (which
        no DNS rebinding can hide behind) or the bound name, with our port."""
        if len(values) != 1:
            return False
        name, sep, port = values[0].strip().lower().rpartition(":")
        if not sep or (name.endswith("]") is False and ":" in name):
            return False
        if port != str(self.port):
            return False
        return name == "localhost" or _is_ip(name) or name == self.bind.lower()

    def origin_ok(self, values: list[str], host: str) -> bool:
        """No Origin (not a browser), the server's own origin, or an allowed one."""
        if not values:
            return True
        if len(values) > 1:
            return False
        origin = values[0].strip().rstrip("/").lower()
        names = (*LOOPBACK_NAMES, url_host(self.bind).lower())
        own = {f"http://{host.strip().lower()}", *(f"http://{n}:{self.port}" for n in names)}
        if origin in own:
            return True
        return origin in {a.strip().rstrip("/").lower() for a in self.allowed_origins()}

    def matches(self, candidate: str) -> bool:
        """A constant-time comparison with the token."""
        return hmac.compare_digest(
            candidate.encode("utf-8", "surrogateescape"), self.token.encode()
        )

    def presented(self, headers: Headers, query: dict[str, list[str]]) -> bool:
        """Whether any way of presenting the token carries the right one (each is compared,
        so timing tells nothing of which)."""
        candidates: list[str] = []
        for value in headers.getlist("authorization"):
            scheme, _, credentials = value.strip().partition(" ")
            if scheme.lower() == "bearer" and credentials.strip():
                candidates.append(credentials.strip())
        candidates += query.get("token", [])
        for part in ";".join(headers.getlist("cookie")).split(";"):
            name, _, value = part.strip().partition("=")
            if name == self.cookie and value:
                candidates.append(value)
        return any([self.matches(candidate) for candidate in candidates])

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Let a request through, or refuse it with a bare status."""
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        hosts = headers.getlist("host")
        if not self.host_ok(hosts):
            await _refuse(scope, receive, send, HTTPStatus.MISDIRECTED_REQUEST)
            return
        if not self.origin_ok(headers.getlist("origin"), hosts[0]):
            await _refuse(scope, receive, send, HTTPStatus.FORBIDDEN)
            return
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        if not self.presented(headers, query):
            await _refuse(scope, receive, send, HTTPStatus.UNAUTHORIZED)
            return
        if scope["type"] == "http" and scope["path"] == "/" and "token" in query:
            await self._login(scope, receive, send)
            return
        await self.app(scope, receive, send)

    async def _login(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The dashboard's login URL: set the cookie, and send the browser on without the
        token in its address bar or history."""
        response = RedirectResponse("/", status_code=HTTPStatus.SEE_OTHER)
        response.set_cookie(
            self.cookie, self.token, httponly=True, samesite="strict", path="/", secure=False
        )
        for name, value in SECURITY_HEADERS.items():
            response.headers[name] = value
        await response(scope, receive, send)


async def _refuse(scope: Scope, receive: Receive, send: Send, status: HTTPStatus) -> None:
    """A bare refusal: the status and its phrase, nothing else."""
    response = PlainTextResponse(f"{status.value} {status.phrase}\n", status_code=status.value)
    if status is HTTPStatus.UNAUTHORIZED:
        response.headers["WWW-Authenticate"] = "Bearer"
    if scope["type"] == "websocket":
        await WebSocket(scope, receive, send).send_denial_response(response)
        return
    await response(scope, receive, send)


# ------------------------------------------------------------------ resumable streams


class MemoryEventStore(EventStore):
    """The last EVENTS_PER_STREAM messages of each event stream, so a client that lost its
    connection can resume where it was (Last-Event-ID)."""

    def __init__(self, per_stream: int = EVENTS_PER_STREAM) -> None:
        self._per_stream = per_stream
        self._streams: dict[StreamId, list[tuple[int, JSONRPCMessage | None]]] = {}
        self._where: dict[int, StreamId] = {}
        self._next = 0

    async def store_event(self, stream_id: StreamId, message: JSONRPCMessage | None) -> EventId:
        """Keep one message; the oldest of its stream goes when the stream is full."""
        self._next += 1
        kept = self._streams.setdefault(stream_id, [])
        kept.append((self._next, message))
        self._where[self._next] = stream_id
        while len(kept) > self._per_stream:
            old, _ = kept.pop(0)
            self._where.pop(old, None)
        return str(self._next)

    async def replay_events_after(
        self, last_event_id: EventId, send_callback: EventCallback
    ) -> StreamId | None:
        """Send what came after an event on its stream; None when the event is unknown."""
        try:
            after = int(last_event_id)
        except ValueError:
            return None
        stream_id = self._where.get(after)
        if stream_id is None:
            return None
        for number, message in self._streams.get(stream_id, []):
            if number > after and message is not None:
                await send_callback(EventMessage(message, str(number)))
        return stream_id


# ------------------------------------------------------------------ app


def _asset(name: str) -> bytes | None:
    """A dashboard file shipped in the package, or None."""
    if "/" in name or "\\" in name or name.startswith("."):
        return None
    try:
        return resources.files("taskmux_mcp").joinpath("dashboard", name).read_bytes()
    except (OSError, ValueError):
        return None


def _file_response(name: str) -> Response:
    body = _asset(name)
    if body is None:
        return PlainTextResponse("404 Not Found\n", status_code=404)
    kind = ASSET_TYPES.get(Path(name).suffix, "application/octet-stream")
    return Response(body, media_type=kind, headers=SECURITY_HEADERS)


async def dashboard(request: Request) -> Response:
    """The dashboard page."""
    return _file_response("index.html")


async def asset(request: Request) -> Response:
    """A file of the dashboard."""
    return _file_response(str(request.path_params["name"]))


def build_app(slot: ProjectSlot, guard_for: Callable[[ASGIApp], Guard]) -> Guard:
    """The server's routes behind its guard; its lifespan runs the monitor (through the MCP
    server's own lifespan) and the bridge's event pump."""
    mcp = build_server(slot, log_to_state=True, host="serve")
    manager = StreamableHTTPSessionManager(
        app=mcp._lowlevel_server,  # the SDK builds its manager from the low-level server
        event_store=MemoryEventStore(),
        security_settings=TransportSecuritySettings(enable_dns_rebinding_protection=False),
    )
    bridge = Bridge(slot)

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        async with manager.run(), anyio.create_task_group() as group:
            bridge.group = group
            group.start_soon(_pump_events, bridge, slot)
            try:
                yield
            finally:
                bridge.group = None
                group.cancel_scope.cancel()

    mcp_app = StreamableHTTPASGIApp(manager)
    app = Starlette(
        routes=[
            Route("/mcp", endpoint=mcp_app, methods=["GET", "POST", "DELETE"]),
            WebSocketRoute("/ws", bridge.handler),
            WebSocketRoute("/", bridge.handler),
            Route("/", dashboard, methods=["GET", "HEAD"]),
            Route("/assets/{name}", asset, methods=["GET", "HEAD"]),
        ],
        lifespan=lifespan,
    )
    app.router.redirect_slashes = False
    return guard_for(app)


async def _pump_events(bridge: Bridge, slot: ProjectSlot) -> None:
    """The bridge's event feed, once the project is usable; restarted if it fails."""
    while True:
        try:
            project = slot.get()
        except TaskmuxError:
            await anyio.sleep(1.0)
            continue
        try:
            await bridge.pump(project)
            return
        except Exception:
            log.exception("the bridge's event feed failed; starting it again")
            await anyio.sleep(1.0)


# ------------------------------------------------------------------ running


def _listen(bind: str, port: int) -> socket.socket:
    """A listening socket (bound before the server starts, so port 0 and errors are known)."""
    family = socket.AF_INET6 if ":" in bind else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((bind, port))
        sock.listen(128)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _first_server(path: Path, lock: FileLock) -> str:
    """What to tell a second `serve`: where the first one is."""
    deadline = time.monotonic() + FIRST_WAIT_S
    while time.monotonic() < deadline:
        info = running_server(path)
        if info is not None:
            return (
                f"taskmux serve is already running for this project (pid {info.pid}) at "
                f"{info.url}: MCP {info.mcp_url}, bridge {info.ws_url}, dashboard "
                f"{info.dashboard_url}"
            )
        time.sleep(0.05)
    return f"taskmux serve is already starting for this project ({lock.describe_holder()})"


async def run_serve(
    slot: ProjectSlot,
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    allow_remote: bool = False,
    ready: Callable[[ServerInfo], None] | None = None,
) -> None:
    """Serve the project (MCP, bridge, dashboard) and run its monitor until cancelled."""
    bind = bind_host(host, allow_remote)
    project = slot.get()
    paths = project.paths
    wanted = choose_port(port, paths.server)
    lock = FileLock(paths.locks / "serve.lock", "taskmux serve")
    paths.locks.mkdir(parents=True, exist_ok=True)
    if not await anyio.to_thread.run_sync(lock.try_acquire):
        raise InvalidArgument(await anyio.to_thread.run_sync(_first_server, paths.server, lock))
    try:
        await _serve_locked(slot, project, bind, wanted, ready)
    finally:
        lock.release()


async def _serve_locked(
    slot: ProjectSlot,
    project: Project,
    bind: str,
    port: int,
    ready: Callable[[ServerInfo], None] | None,
) -> None:
    paths = project.paths
    try:
        sock = _listen(bind, port)
    except OSError as exc:
        raise InvalidArgument(
            f"cannot listen on {url_host(bind)}:{port}: {exc.strerror or exc}; pass "
            "--port N for another port, or --port 0 for any free one"
        ) from None
    bound = sock.getsockname()[1]
    token = token_for(paths.server)
    if not is_loopback(bind):
        log.warning(
            "listening on %s, reachable from other machines: anyone holding the token controls "
            "this project's tasks, and it travels unencrypted (no TLS)",
            bind,
        )

    def allowed_origins() -> tuple[str, ...]:
        with contextlib.suppress(TaskmuxError):
            slot.get()
        current = slot.current
        return current.config.bridge.allowed_origins if current is not None else ()

    app = build_app(slot, lambda inner: Guard(inner, token, bound, bind, allowed_origins))
    config = uvicorn.Config(
        app,
        lifespan="on",
        ws="websockets-sansio",
        ws_max_size=MAX_FRAME,
        ws_per_message_deflate=False,
        ws_ping_interval=PING_S,
        ws_ping_timeout=PING_S,
        log_config=None,
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=SHUTDOWN_TIMEOUT_S,
    )
    server = _Server(config)
    done = anyio.Event()
    failed: list[BaseException] = []

    async def run() -> None:
        with anyio.CancelScope(shield=True):  # ends when told to, after a graceful shutdown
            try:
                await server.serve(sockets=[sock])
            except BaseException as exc:  # uvicorn leaves by SystemExit when startup fails
                failed.append(exc)
            finally:
                done.set()

    info = ServerInfo(host=bind, port=bound, token=token, pid=os.getpid(), started=time.time())
    try:
        async with anyio.create_task_group() as group:
            group.start_soon(run)
            while not server.started and not done.is_set():
                await anyio.sleep(0.01)
            if done.is_set():
                raise TaskmuxError(f"the server could not start: {failed[0] if failed else '?'}")
            info.save(paths.server)
            if ready is not None:
                ready(info)
            try:
                await done.wait()
            finally:
                server.should_exit = True
                with anyio.CancelScope(shield=True):
                    with anyio.move_on_after(SHUTDOWN_TIMEOUT_S + 2):
                        await done.wait()
                    server.force_exit = True
                    await done.wait()
    finally:
        mark_stopped(paths.server, token)
        sock.close()


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: `serve_main` handles signals."""

    def capture_signals(self) -> contextlib.AbstractContextManager[None]:  # type: ignore[override]
        """Leave signals alone."""
        return contextlib.nullcontext()


def serve_main(
    slot: ProjectSlot,
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    allow_remote: bool = False,
    name: str = "serve",
) -> int:
    """Run the server until SIGINT/SIGTERM (`taskmux serve`, and its alias `bridge`)."""
    import signal

    def announce(info: ServerInfo) -> None:
        current = slot.current
        where = current.paths.server if current is not None else "server.json"
        print(
            f"taskmux {name}: serving this project on {info.url} (token in {where}); "
            "Ctrl-C to stop\n"
            f"  dashboard  {info.dashboard_url}\n"
            f"  MCP        {info.mcp_url}   (Authorization: Bearer <token>; "
            "`taskmux mcp-config CLIENT --http` registers it)\n"
            f"  bridge     {info.ws_url}",
            file=sys.stderr,
            flush=True,
        )

    async def main() -> None:
        with anyio.CancelScope() as scope:
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as sigs:

                async def watch() -> None:
                    async for _ in sigs:
                        scope.cancel()
                        return

                async with anyio.create_task_group() as group:
                    group.start_soon(watch)
                    await run_serve(
                        slot, host=host, port=port, allow_remote=allow_remote, ready=announce
                    )
                    group.cancel_scope.cancel()

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format=f"taskmux {name}: %(message)s")
    refused: list[BaseException] = []
    try:
        anyio.run(main)
    except* TaskmuxError as failures:
        refused += failures.exceptions
    except* KeyboardInterrupt:
        pass
    for exc in refused:
        print(f"taskmux {name}: {exc}", file=sys.stderr)
    return 2 if refused else 0
