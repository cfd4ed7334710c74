"""The stdio MCP server: the declared operations as tools, resources, subscriptions, notifications.

Tools are built from `operations`: their input schemas are the declarations' strict ones, and
arguments are checked by the same `bind` the CLI and the bridge use (unknown names refused with
a did-you-mean). Every reply fits the reply budget. The server, its monitor and the tools share
one `Project`, so a tool call and a policy action on one task are serialized by its lock.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import logging
import logging.handlers
import os
import signal
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Final, TypeVar, get_args

import anyio
import mcp_types as types
from mcp.server import MCPServer
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ResourceError, ResourceNotFoundError, ToolError
from mcp.server.mcpserver.tools.base import Tool
from mcp.server.session import ServerSession
from mcp.server.stdio import stdio_server
from mcp.server.subscriptions import InMemorySubscriptionBus, ResourceUpdated
from mcp.shared.exceptions import MCPError
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from .budget import REPLY_BUDGET
from .errors import ArgumentError, ConfigError, TaskmuxError, UnknownTask
from .events import Cause, EventType
from .models import BaseModel, EventRecord
from .monitor import Monitor
from .operations import OPERATIONS, Call, Operation, perform
from .overview import all_projects_async
from .project import Project, ProjectSlot
from .state import CONFIG_FILENAME
from .terminal import cut_line

log = logging.getLogger("taskmux.mcp")

T = TypeVar("T")

SERVER_NAME = "taskmux"
INSTRUCTIONS = """\
taskmux runs this project's dev tasks (servers, workers, watchers, one-shot setup steps) from \
taskmux.toml, each in its own tmux window, with health checks, dependency order, restart \
policies and persistent logs; a human can watch them with `tmux attach`.
Call `status` first to see every task's state.
Use `start` / `restart` instead of running servers in your own shell: they wait until the tasks \
are healthy and otherwise tell you why not (exit status, failing check, last log lines).
Read output with `logs` (since="start" for the current run; pass its `cursor` as `before` for \
older lines) and `grep` (the current runs unless you give `since`); `inspect` explains a \
failure; `events` shows what happened; `stop` / `kill` end tasks.
Each task has a real terminal: `wait_for` waits for a line of its output (instead of polling \
`logs`), `send` types into it (prompts, shortcut keys), `screen` shows what it displays now."""

STATUS_URI: Final = "taskmux://status"
CONFIG_URI: Final = "taskmux://config"
EVENTS_URI: Final = "taskmux://events"
PROJECTS_URI: Final = "taskmux://projects"
TASK_PREFIX: Final = "taskmux://tasks/"
LOGS_PREFIX: Final = "taskmux://logs/"
LOG_RESOURCE_LINES: Final = 200
RESOURCE_NOT_FOUND: Final = -32002
INVALID_PARAMS: Final = -32602
PROJECT_RETRY_S: Final = 1.0
MONITOR_RETRY_S: Final = 2.0
HEARTBEAT_S: Final = 5.0
PEER_KEY: Final = "taskmux.peer"
SHUTDOWN_GRACE_S: Final = 5.0
LOG_FILE_BYTES: Final = 1_000_000
LOG_MESSAGE_CHARS: Final = 2000
MAX_MESSAGE: Final = 4 * 1024 * 1024

LOG_LEVELS: Final[tuple[types.LoggingLevel, ...]] = get_args(types.LoggingLevel)
STATE_EVENTS: Final = frozenset(
    {
        EventType.STARTED,
        EventType.EXITED,
        EventType.STOPPED,
        EventType.KILLED,
        EventType.RESTARTED,
        EventType.RESTART_SCHEDULED,
        EventType.GAVE_UP,
        EventType.HEALTH_CHANGED,
        EventType.RECORD_REPAIRED,
    }
)
CONFIG_EVENTS: Final = frozenset({EventType.CONFIG_RELOADED, EventType.CONFIG_INVALID})


def package_version() -> str:
    """The installed distribution's version."""
    try:
        return importlib.metadata.version("taskmux-mcp")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


def task_uri(name: str) -> str:
    """The resource URI of one task."""
    return f"{TASK_PREFIX}{name}"


@dataclass(eq=False)
class Peer:
    """One client connection: its session (2025-era clients), subscriptions and log level."""

    session: ServerSession | None = None
    subscribed: set[str] = field(default_factory=set)
    log_level: types.LoggingLevel = "debug"

    def wants(self, level: types.LoggingLevel) -> bool:
        """Whether the client asked for messages of this level."""
        return LOG_LEVELS.index(level) >= LOG_LEVELS.index(self.log_level)

    async def send(self, notification: types.ServerNotification) -> None:
        """Send on the connection's own channel; a gone client is not an error."""
        if self.session is None:
            return
        with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
            await self.session.send_notification(notification)


@dataclass
class Hub:
    """What every connection of one server shares: the subscription bus, the monitor, and the
    connections to tell of events (one over stdio; any number over HTTP)."""

    bus: InMemorySubscriptionBus
    peers: list[Peer] = field(default_factory=list)
    monitor: Monitor | None = None

    def peer(self, session: ServerSession) -> Peer:
        """The connection a request came on (registered on its first request)."""
        connection = session._connection  # the SDK's per-connection state has no public handle
        peer = connection.state.get(PEER_KEY)
        if not isinstance(peer, Peer):
            peer = Peer()
            connection.state[PEER_KEY] = peer
            self.peers.append(peer)
            connection.exit_stack.callback(self._forget, peer)
        return peer

    def _forget(self, peer: Peer) -> None:
        with contextlib.suppress(ValueError):
            self.peers.remove(peer)

    async def publish(self, event: EventRecord) -> None:
        """Turn one event into resource-updated and logging notifications for every connection."""
        uris = affected_uris(event)
        for uri in uris:
            await self.bus.publish(ResourceUpdated(uri=uri))
        described = describe(event)
        for peer in list(self.peers):
            for uri in uris:
                if uri in peer.subscribed:
                    await peer.send(
                        types.ResourceUpdatedNotification(
                            params=types.ResourceUpdatedNotificationParams(uri=uri)
                        )
                    )
            if described is not None:
                await tell(peer, *described, event=event.type, task=event.task)

    async def tell_all(self, level: types.LoggingLevel, message: str, *, event: str) -> None:
        """A logging notification to every connection that wants that level."""
        for peer in list(self.peers):
            await tell(peer, level, message, event=event)


def describe(event: EventRecord) -> tuple[types.LoggingLevel, str] | None:
    """The log message an agent should see for an event, if any."""
    d = event.details
    task = f"task '{event.task}'"
    match event.type:
        case EventType.EXITED:
            if d.get("vanished"):
                return "error", f"{task} vanished (its tmux window or server is gone)"
            if d.get("signal"):
                return "error", f"{task} crashed: killed by {d['signal']}"
            if d.get("exit_code") not in (0, None):
                return "error", f"{task} crashed: exited with status {d['exit_code']}"
            return None
        case EventType.RESTART_SCHEDULED:
            return "warning", f"{task} will be restarted in {d.get('delay_s', 0):g}s: " + str(
                d.get("reason", "")
            )
        case EventType.RESTARTED:
            return "info", f"{task} was restarted (pid {d.get('pid')})"
        case EventType.GAVE_UP:
            return "error", f"{task} failed; taskmux gave up restarting it: {d.get('reason', '')}"
        case EventType.HEALTH_CHANGED:
            health = d.get("health")
            detail = f": {d['detail']}" if d.get("detail") else ""
            if health == "unhealthy":
                return "warning", f"{task} is unhealthy{detail}"
            return "info", f"{task} is {health}{detail}"
        case EventType.CONFIG_INVALID:
            errors = "; ".join(str(e) for e in d.get("errors", [])) or "see `status`"
            return (
                "error",
                f"taskmux.toml is invalid (the last valid config stays in force): {errors}",
            )
        case EventType.LOG_WRITER_REPLACED:
            return "warning", f"{task}: {d.get('reason', 'log writer replaced')}; {d.get('detail')}"
    return None


def affected_uris(event: EventRecord) -> list[str]:
    """The resources whose content an event changes."""
    uris = [EVENTS_URI]
    if event.type in STATE_EVENTS:
        uris.append(STATUS_URI)
        if event.task:
            uris.append(task_uri(event.task))
    elif event.type in CONFIG_EVENTS:
        uris += [STATUS_URI, CONFIG_URI]
    return uris


async def tell(
    peer: Peer, level: types.LoggingLevel, message: str, *, event: str, task: str | None = None
) -> None:
    """A logging notification to the connection, if it wants that level."""
    if not peer.wants(level):
        return
    data = {"message": message, "event": event, "task": task}
    await peer.send(
        types.LoggingMessageNotification(
            params=types.LoggingMessageNotificationParams(level=level, data=data, logger="taskmux")
        )
    )


def explained(error: TaskmuxError, slot: ProjectSlot) -> str:
    """An error as an agent should read it: what is wrong, and what to do."""
    if isinstance(error, ConfigError) and error.path is not None:
        kept = " (the last valid config is still in force)" if slot.current is not None else ""
        return f"{error}\nFix taskmux.toml and call again{kept}."
    return str(error)


async def wait_for_project(slot: ProjectSlot, hub: Hub) -> Project:
    """The project, once taskmux.toml is found and usable; until then the connections are told
    what is wrong each time that changes."""
    reported: str | None = None
    while True:
        try:
            return slot.get()
        except TaskmuxError as exc:
            problem = str(exc)
        except OSError as exc:  # e.g. an unwritable state folder: say so, keep serving
            problem = f"cannot open the project: {exc}"
        if problem != reported:
            log.warning("monitor waiting for a usable taskmux.toml: %s", problem)
            await hub.tell_all("error", problem, event=EventType.CONFIG_INVALID)
            reported = problem
        await anyio.sleep(PROJECT_RETRY_S)


class CutLongMessages(logging.Filter):
    """Cuts each log message to LOG_MESSAGE_CHARS: a client may send megabyte names, and the
    SDK logs failed calls with them."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Keep the record, its message cut."""
        message = record.getMessage()
        if len(message) > LOG_MESSAGE_CHARS:
            record.msg = cut_line(message, LOG_MESSAGE_CHARS)
            record.args = None
        return True


def attach_log_file(state_dir: Path) -> None:
    """Also write server logs to <state dir>/mcp-server.log (once per process)."""
    path = str(state_dir / "mcp-server.log")
    root = logging.getLogger()
    for existing in root.handlers:
        if getattr(existing, "baseFilename", None) == path:
            return
    try:
        handler = logging.handlers.RotatingFileHandler(
            path, maxBytes=LOG_FILE_BYTES, backupCount=1, encoding="utf-8"
        )
    except OSError as exc:
        log.warning("cannot write %s: %s", path, exc)
        return
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s")
    )
    handler.addFilter(CutLongMessages())
    root.addHandler(handler)


async def run_monitor(monitor: Monitor) -> None:
    """Run the monitor; an unexpected failure is logged and the monitor started again."""
    while True:
        try:
            await monitor.run()
            return
        except Exception:
            log.exception("monitor failed; starting it again")
            await anyio.sleep(MONITOR_RETRY_S)


async def pump(hub: Hub, project: Project) -> None:
    """Forward every event of the project (from any process) to the connections."""
    while True:
        try:
            async with project.events.subscribe() as feed:
                async for event in feed:
                    await hub.publish(project.redactor().model(event))
            return
        except Exception:
            log.exception("event pump failed; resuming")
            await anyio.sleep(MONITOR_RETRY_S)


async def background(slot: ProjectSlot, hub: Hub, log_to_state: bool, host: str) -> None:
    """The server's background work: the monitor and the event→notification pump."""
    project = await wait_for_project(slot, hub)
    if log_to_state:
        attach_log_file(project.paths.root)
    log.info("project %s (%s); monitor standing by", project.config.name, project.config_path)
    hub.monitor = Monitor(project, host=host)
    async with anyio.create_task_group() as group:
        group.start_soon(run_monitor, hub.monitor)
        group.start_soon(pump, hub, project)


def progress_reporter(ctx: Context[Any, Any]) -> Callable[[str], Awaitable[None]]:
    """Progress messages as increasing MCP progress values (a no-op without a token)."""
    count = 0

    async def report(message: str) -> None:
        nonlocal count
        count += 1
        with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
            await ctx.report_progress(count, None, message)

    return report


def wants_progress(ctx: Context[Any, Any]) -> bool:
    """Whether the caller sent a progress token."""
    try:
        meta = ctx.request_context.meta
    except ValueError:
        return False
    return meta is not None and meta.get("progress_token") is not None


async def with_heartbeat(
    ctx: Context[Any, Any], work: Callable[[Callable[[str], Awaitable[None]]], Awaitable[T]]
) -> T:
    """Run a waiting action, sending a progress message every few seconds while it waits."""
    report = progress_reporter(ctx)
    if not wants_progress(ctx):
        return await work(report)
    result: list[T] = []
    async with anyio.create_task_group() as group:

        async def beat() -> None:
            waited = 0.0
            while True:
                await anyio.sleep(HEARTBEAT_S)
                waited += HEARTBEAT_S
                await report(f"waiting ({waited:g}s)")

        group.start_soon(beat)
        result.append(await work(report))
        group.cancel_scope.cancel()
    return result[0]


def answer(model: BaseModel) -> types.CallToolResult:
    """A tool result: the model as structured content, and as compact JSON text for the model
    to read (nulls left out)."""
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=model.model_dump_json(exclude_none=True))],
        structured_content=model.model_dump(mode="json"),
    )


def dumps(model: Any) -> str:
    """Compact JSON of a result model."""
    return str(model.model_dump_json(exclude_none=True))


# ------------------------------------------------------------------ tools


class DeclaredTool(Tool):
    """A tool whose schema and argument checks come from an operation's declaration."""

    operation: Any = None
    slot: Any = None

    async def run(
        self, arguments: dict[str, Any], context: Context[Any, Any], convert_result: bool = False
    ) -> Any:
        """Check the arguments, perform the operation, answer within the reply budget."""
        op: Operation = self.operation
        slot: ProjectSlot = self.slot
        try:
            project = slot.get()

            async def work(report: Callable[[str], Awaitable[None]]) -> BaseModel:
                call = Call(cause=Cause.AGENT, progress=report)
                return await perform(project, op.name, arguments, call, budget=REPLY_BUDGET)

            result = await (with_heartbeat(context, work) if op.waits else work(_no_progress))
        except TaskmuxError as exc:
            raise ToolError(explained(exc, slot)) from exc
        except OSError as exc:
            raise ToolError(f"{op.name} could not be done: {exc}") from exc
        return answer(result)


async def _no_progress(message: str) -> None:
    return None


def declared_tools(slot: ProjectSlot) -> list[Tool]:
    """One tool per declared operation, with SPEC §7's names, hints and strict schemas."""
    tools: list[Tool] = []
    for op in OPERATIONS.values():

        async def placeholder(ctx: Context[Any, Any]) -> Any:  # run() is overridden
            raise NotImplementedError

        placeholder.__annotations__ = {
            "ctx": Context,
            "return": Annotated[types.CallToolResult, op.result],
        }
        tool = DeclaredTool.from_function(
            placeholder,
            name=op.name,
            title=op.title,
            description=op.doc,
            annotations=types.ToolAnnotations(
                title=op.title,
                read_only_hint=op.read_only,
                destructive_hint=op.destructive,
                idempotent_hint=op.idempotent,
                open_world_hint=False,
            ),
            structured_output=True,
        )
        assert isinstance(tool, DeclaredTool)
        tool.parameters = op.input_schema()
        tool.operation = op
        tool.slot = slot
        tools.append(tool)
    return tools


# ------------------------------------------------------------------ resources


def _known_uri(uri: str, project: Project | None) -> bool:
    if uri in (STATUS_URI, CONFIG_URI, EVENTS_URI, PROJECTS_URI):
        return True
    for prefix in (TASK_PREFIX, LOGS_PREFIX):
        if uri.startswith(prefix):
            return project is not None and uri[len(prefix) :] in project.config.tasks
    return False


def register_resources(server: MCPServer[Any], slot: ProjectSlot) -> None:
    """taskmux://config, status, tasks/{name}, logs/{name} and events."""

    async def read(name: str, raw: dict[str, Any]) -> BaseModel:
        try:
            project = slot.get()
            return await perform(project, name, raw, Call(Cause.AGENT), budget=REPLY_BUDGET)
        except (UnknownTask, ArgumentError) as exc:  # no such task, or no usable task name
            raise ResourceNotFoundError(str(exc)) from exc
        except TaskmuxError as exc:
            raise ResourceError(explained(exc, slot)) from exc

    @server.resource(
        CONFIG_URI,
        name="config",
        title="taskmux.toml",
        description="The project's taskmux.toml: its path and text, or why it cannot be used.",
        mime_type="application/json",
    )
    def config_resource() -> str:
        error: TaskmuxError | None
        try:
            project: Project | None = slot.get()
            error = project.config_error if project is not None else None
        except TaskmuxError as exc:
            project, error = slot.current, exc
        path = project.config_path if project is not None else None
        if path is None and isinstance(error, ConfigError):
            path = error.path
        text = None
        if path is not None:
            with contextlib.suppress(OSError):
                text = path.read_text(encoding="utf-8", errors="replace")
        if text is not None and project is not None:
            text = project.redactor().text(text)
        return json.dumps(
            {
                "path": str(path) if path else None,
                "text": text,
                "error": str(error) if error else None,
                "in_force": project is not None,
            }
        )

    @server.resource(
        STATUS_URI,
        name="status",
        title="Task status",
        description="Every task's state, as the `status` tool returns it.",
        mime_type="application/json",
    )
    async def status_resource() -> str:
        return dumps(await read("status", {}))

    @server.resource(
        "taskmux://tasks/{name}",
        name="task",
        title="One task",
        description="Everything known of one task, as the `inspect` tool returns it.",
        mime_type="application/json",
    )
    async def task_resource(name: str) -> str:
        return dumps(await read("inspect", {"task": name}))

    @server.resource(
        "taskmux://logs/{name}",
        name="logs",
        title="Task log",
        description=f"The last {LOG_RESOURCE_LINES} lines of a task's output, as plain text.",
        mime_type="text/plain",
    )
    async def logs_resource(name: str) -> str:
        result = await read("logs", {"tasks": [name], "lines": LOG_RESOURCE_LINES})
        stamp = "%Y-%m-%dT%H:%M:%SZ"
        lines = getattr(result, "lines", [])
        return "".join(
            f"{line.time.strftime(stamp) if line.time else '-'} {line.text}\n" for line in lines
        )

    @server.resource(
        PROJECTS_URI,
        name="projects",
        title="Every checkout",
        description="Every taskmux project on this tmux server (each checkout or worktree): "
        "its folder, session, tasks, their states and ports.",
        mime_type="application/json",
    )
    async def projects_resource() -> str:
        project = slot.current
        socket_name = project.socket_name if project is not None else None
        environ = project.environ if project is not None else dict(os.environ)
        return dumps(await all_projects_async(socket_name, environ))

    @server.resource(
        EVENTS_URI,
        name="events",
        title="Recent events",
        description="The project's 50 most recent events, newest last.",
        mime_type="application/json",
    )
    async def events_resource() -> str:
        return dumps(await read("events", {}))


def register_protocol(server: MCPServer[Hub], slot: ProjectSlot) -> None:
    """resources/subscribe (known resources only), unsubscribe, logging/setLevel; no prompts;
    a resource that does not exist answers -32002, as the 2025-era protocol says."""
    lowlevel = server._lowlevel_server  # the SDK exposes no public handle for these methods
    for method in ("prompts/list", "prompts/get"):
        lowlevel._request_handlers.pop(method, None)  # taskmux has no prompts: advertise none

    async def subscribe(
        ctx: ServerRequestContext[Hub, Any], params: types.SubscribeRequestParams
    ) -> types.EmptyResult:
        uri = str(params.uri)
        project: Project | None
        try:
            project = slot.get()
        except TaskmuxError:
            project = slot.current
        if not _known_uri(uri, project):
            raise MCPError(RESOURCE_NOT_FOUND, f"Resource not found: {uri[:200]}", {"uri": uri})
        peer = ctx.lifespan_context.peer(ctx.session)
        peer.session = ctx.session
        peer.subscribed.add(uri)
        return types.EmptyResult()

    async def unsubscribe(
        ctx: ServerRequestContext[Hub, Any], params: types.UnsubscribeRequestParams
    ) -> types.EmptyResult:
        ctx.lifespan_context.peer(ctx.session).subscribed.discard(str(params.uri))
        return types.EmptyResult()

    async def set_level(
        ctx: ServerRequestContext[Hub, Any], params: types.SetLevelRequestParams
    ) -> types.EmptyResult:
        ctx.lifespan_context.peer(ctx.session).log_level = params.level
        return types.EmptyResult()

    lowlevel.add_request_handler("resources/subscribe", types.SubscribeRequestParams, subscribe)
    lowlevel.add_request_handler(
        "resources/unsubscribe", types.UnsubscribeRequestParams, unsubscribe
    )
    lowlevel.add_request_handler("logging/setLevel", types.SetLevelRequestParams, set_level)

    async def remember_session(
        ctx: ServerRequestContext[Any, Any], call_next: CallNext
    ) -> HandlerResult:
        hub = ctx.lifespan_context
        legacy = ctx.protocol_version not in MODERN_PROTOCOL_VERSIONS
        if isinstance(hub, Hub) and ctx.request_id is not None and legacy:
            hub.peer(ctx.session).session = ctx.session
        try:
            return await call_next(ctx)
        except MCPError as exc:
            missing = ctx.method == "resources/read" and exc.code == INVALID_PARAMS
            if missing and legacy and isinstance(exc.data, dict) and "uri" in exc.data:
                raise MCPError(RESOURCE_NOT_FOUND, exc.message, exc.data) from exc
            raise

    server.middleware.append(remember_session)


def build_server(
    slot: ProjectSlot,
    *,
    log_to_state: bool = False,
    on_close: Callable[[], None] | None = None,
    host: str = "mcp",
) -> MCPServer[Hub]:
    """The MCP server for one project: tools, resources, notifications and the monitor (which
    runs while the server's lifespan does: per stdio connection, or once for all HTTP ones)."""
    bus = InMemorySubscriptionBus()

    @asynccontextmanager
    async def lifespan(_: MCPServer[Hub]) -> AsyncIterator[Hub]:
        hub = Hub(bus=bus)
        try:
            async with anyio.create_task_group() as group:
                group.start_soon(background, slot, hub, log_to_state, host)
                try:
                    yield hub
                finally:
                    if hub.monitor is not None:
                        hub.monitor.stop()
                    group.cancel_scope.cancel()
        finally:
            log.info("MCP server closed; monitor stopped, tasks keep running")
            if on_close is not None:
                on_close()

    server: MCPServer[Hub] = MCPServer(
        SERVER_NAME,
        title="taskmux",
        version=package_version(),
        instructions=INSTRUCTIONS,
        lifespan=lifespan,
        subscriptions=bus,
        tools=declared_tools(slot),
    )
    register_resources(server, slot)
    register_protocol(server, slot)
    return server


def project_slot(
    project: str | Path | None, config: str | Path | None, tmux_socket: str | None
) -> ProjectSlot:
    """The slot of the project an MCP server serves (opened once taskmux.toml is usable)."""
    return ProjectSlot(
        lambda: Project.open(
            project=project, config=config, socket_name=tmux_socket, cause=Cause.AGENT, host="mcp"
        )
    )


# ------------------------------------------------------------------ stdio


class WireOut:
    """The client's stdout, shared by the SDK's writer and our replies to garbage."""

    def __init__(self, fd: int) -> None:
        self._file = os.fdopen(fd, "w", encoding="utf-8", closefd=False)
        self._lock = anyio.Lock()

    async def write(self, text: str) -> None:
        """Write one message (the SDK flushes after each)."""
        async with self._lock:
            await anyio.to_thread.run_sync(self._file.write, text)

    async def flush(self) -> None:
        """Flush."""
        async with self._lock:
            await anyio.to_thread.run_sync(self._file.flush)


class WireIn:
    """The client's messages, one per line; what is not JSON-RPC is answered here (parse error,
    invalid request, message too long) and never reaches the SDK, which would log it whole."""

    def __init__(self, fd: int, out: WireOut) -> None:
        self._file = os.fdopen(fd, "rb", closefd=False)
        self._out = out

    def __aiter__(self) -> AsyncIterator[str]:
        return self._lines()

    async def _reply(self, code: int, message: str, request_id: Any = None) -> None:
        error = {"jsonrpc": "2.0", "id": request_id, "error": {"code": code, "message": message}}
        await self._out.write(json.dumps(error) + "\n")
        await self._out.flush()

    async def _read_line(self) -> tuple[bytes, bool]:
        """One line (without its end) and whether it was cut at MAX_MESSAGE; b"" at the end."""
        line = await anyio.to_thread.run_sync(self._file.readline, MAX_MESSAGE + 1)
        if len(line) <= MAX_MESSAGE or line.endswith(b"\n"):
            return line, False
        while True:  # drop the rest of an over-long line
            rest = await anyio.to_thread.run_sync(self._file.readline, MAX_MESSAGE)
            if not rest or rest.endswith(b"\n"):
                return b"x", True

    async def _lines(self) -> AsyncIterator[str]:
        while True:
            line, cut = await self._read_line()
            if not line:
                return
            if cut:
                log.warning("dropped a message over %d bytes", MAX_MESSAGE)
                await self._reply(-32600, f"message over {MAX_MESSAGE} bytes")
                continue
            text = line.decode("utf-8", "replace").strip()
            if not text:
                continue
            try:
                data = json.loads(text)
            except (ValueError, RecursionError) as exc:
                log.warning("unparseable message (%d bytes)", len(line))
                await self._reply(-32700, f"Parse error: {str(exc)[:200]}")
                continue
            try:
                types.jsonrpc_message_adapter.validate_json(text, by_name=False)
            except Exception:
                request_id = data.get("id") if isinstance(data, dict) else None
                if not isinstance(request_id, str | int) or isinstance(request_id, bool):
                    request_id = None
                log.warning("invalid JSON-RPC message (%d bytes)", len(line))
                await self._reply(-32600, "Invalid Request: not a JSON-RPC 2.0 message", request_id)
                continue
            yield text


@contextlib.contextmanager
def claimed_stdio() -> Any:
    """The wire's descriptors, with fd 0 on /dev/null and fd 1 on stderr meanwhile, so nothing
    a handler or a child process prints can reach the client."""
    wire_in, wire_out = os.dup(0), os.dup(1)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(2, 1)
    try:
        yield wire_in, wire_out
    finally:
        with contextlib.suppress(OSError):
            os.dup2(wire_out, 1)
            os.dup2(wire_in, 0)


async def run_stdio(server: MCPServer[Hub]) -> None:
    """Serve MCP on the process's stdin and stdout, answering garbage ourselves."""
    lowlevel = server._lowlevel_server
    with claimed_stdio() as (wire_in, wire_out):
        out = WireOut(wire_out)
        stdin = WireIn(wire_in, out)
        async with stdio_server(stdin=stdin, stdout=out) as (read_stream, write_stream):  # type: ignore[arg-type]
            await lowlevel.run(read_stream, write_stream, lowlevel.create_initialization_options())


def setup_logging() -> None:
    """Server logs go to stderr (stdout carries only MCP messages)."""
    root = logging.getLogger()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(CutLongMessages())
    root.addHandler(handler)
    wanted = os.environ.get("TASKMUX_LOG_LEVEL", "INFO").upper()
    try:
        root.setLevel(wanted)
    except ValueError:
        root.setLevel(logging.INFO)
        logging.getLogger("taskmux.mcp").warning("unknown TASKMUX_LOG_LEVEL %r; using INFO", wanted)


def exit_after(closed: threading.Event) -> None:
    """Leave the process once the connection's cleanup is done (the stdin reader cannot be
    interrupted, so a signal ends the process rather than waiting for stdin to close)."""
    closed.wait(SHUTDOWN_GRACE_S)
    logging.shutdown()
    os._exit(0)


async def watch_signals(scope: anyio.CancelScope, closed: threading.Event) -> None:
    """On SIGTERM / SIGINT / SIGHUP: stop the monitor and the pump, then exit."""
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for signum in signals:
            log.info("received %s; shutting down", signal.Signals(signum).name)
            threading.Thread(target=exit_after, args=(closed,), daemon=True).start()
            scope.cancel()
            return


def serve(project: str | None, config: str | None, tmux_socket: str | None) -> int:
    """Run the stdio MCP server until stdin closes or a signal arrives."""
    setup_logging()
    closed = threading.Event()
    server = build_server(
        project_slot(project, config, tmux_socket), log_to_state=True, on_close=closed.set
    )

    async def main() -> None:
        async with anyio.create_task_group() as group:
            group.start_soon(watch_signals, group.cancel_scope, closed)
            await run_stdio(server)
            group.cancel_scope.cancel()

    try:
        anyio.run(main)
    except Exception:
        log.exception("taskmux-mcp stopped on an unexpected failure")
        return 1
    return 0


def main() -> None:
    """Entry point of `taskmux-mcp`."""
    parser = argparse.ArgumentParser(
        prog="taskmux-mcp",
        description="MCP server (stdio) running a project's dev tasks in tmux.",
    )
    parser.add_argument("--project", metavar="DIR", help=f"folder of {CONFIG_FILENAME}")
    parser.add_argument("--config", metavar="FILE", help=f"path of {CONFIG_FILENAME}")
    parser.add_argument("--tmux-socket", metavar="NAME", help="named tmux server (tmux -L)")
    parser.add_argument("--version", action="version", version=f"taskmux-mcp {package_version()}")
    args = parser.parse_args()
    project = args.project or os.environ.get("TASKMUX_PROJECT") or None
    socket = args.tmux_socket or os.environ.get("TASKMUX_TMUX_SOCKET") or None
    sys.exit(serve(project, args.config, socket))


if __name__ == "__main__":
    main()
