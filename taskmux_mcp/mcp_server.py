"""The stdio MCP server: SPEC §7's tools, resources, subscriptions and notifications."""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import inspect
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
from mcp.server.session import ServerSession
from mcp.server.subscriptions import InMemorySubscriptionBus, ResourceUpdated
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import BaseModel, Field

from .errors import ConfigError, TaskmuxError, UnknownTask
from .events import Cause, EventType
from .models import (
    ActionResult,
    EventRecord,
    EventsResult,
    GrepResult,
    HealthResult,
    InspectResult,
    LogsResult,
    StatusResult,
)
from .monitor import Monitor
from .project import ProjectHandle
from .supervisor import Supervisor
from .tools import TOOL_INFO, Tools

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
Read output with `logs` (since="start" for the current run) and `grep`; `inspect` explains a \
failure; `events` shows what happened; `stop` / `kill` end tasks."""

STATUS_URI: Final = "taskmux://status"
CONFIG_URI: Final = "taskmux://config"
EVENTS_URI: Final = "taskmux://events"
LOG_RESOURCE_LINES: Final = 200
PROJECT_RETRY_S: Final = 1.0
MONITOR_RETRY_S: Final = 2.0
HEARTBEAT_S: Final = 5.0
SHUTDOWN_GRACE_S: Final = 5.0
LOG_FILE_BYTES: Final = 1_000_000

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
    }
)
CONFIG_EVENTS: Final = frozenset({EventType.CONFIG_RELOADED, EventType.CONFIG_INVALID})

TaskList = Annotated[
    list[str],
    Field(default_factory=list, description="task names; empty or omitted means the default set"),
]
Since = Annotated[
    str | None,
    Field(description='"start" (current run only), a duration like "30s"/"5m"/"2h", or ISO 8601'),
]


def package_version() -> str:
    """The installed distribution's version."""
    try:
        return importlib.metadata.version("taskmux-mcp")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


def task_uri(name: str) -> str:
    """The resource URI of one task."""
    return f"taskmux://tasks/{name}"


@dataclass
class Peer:
    """One client connection: its session (2025-era clients), subscriptions and log level."""

    bus: InMemorySubscriptionBus
    session: ServerSession | None = None
    subscribed: set[str] = field(default_factory=set)
    log_level: types.LoggingLevel = "debug"
    monitor: Monitor | None = None

    def wants(self, level: types.LoggingLevel) -> bool:
        """Whether the client asked for messages of this level."""
        return LOG_LEVELS.index(level) >= LOG_LEVELS.index(self.log_level)

    async def send(self, notification: types.ServerNotification) -> None:
        """Send on the connection's own channel; a gone client is not an error."""
        if self.session is None:
            return
        with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
            await self.session.send_notification(notification)


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


async def publish(peer: Peer, event: EventRecord) -> None:
    """Turn one event into resource-updated and logging notifications for a connection."""
    for uri in affected_uris(event):
        await peer.bus.publish(ResourceUpdated(uri=uri))
        if uri in peer.subscribed:
            await peer.send(
                types.ResourceUpdatedNotification(
                    params=types.ResourceUpdatedNotificationParams(uri=uri)
                )
            )
    described = describe(event)
    if described is not None:
        await tell(peer, *described, event=event.type, task=event.task)


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


async def wait_for_project(handle: ProjectHandle, peer: Peer) -> Supervisor:
    """A supervisor of its own for the monitor, once taskmux.toml is found and valid; until
    then the connection is told what is wrong each time that changes."""
    reported: str | None = None
    while True:
        handle.refresh()
        current = handle.current
        problem = str(handle.error) if handle.error else "no usable taskmux.toml"
        if current is not None:
            try:
                return Supervisor(
                    current.config,
                    socket_name=handle.tmux_socket,
                    cause=Cause.POLICY,
                    host_monitor=False,
                )
            except Exception as exc:  # e.g. an unwritable state folder: say so, keep serving
                problem = f"cannot run the monitor: {exc}"
        if problem != reported:
            log.warning("monitor waiting for a valid taskmux.toml: %s", problem)
            await tell(peer, "error", problem, event=EventType.CONFIG_INVALID)
            reported = problem
        await anyio.sleep(PROJECT_RETRY_S)


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


async def pump(peer: Peer, sup: Supervisor) -> None:
    """Forward every event of the project (from any process) to the connection."""
    while True:
        try:
            async with sup.events.subscribe() as feed:
                async for event in feed:
                    await publish(peer, event)
            return
        except Exception:
            log.exception("event pump failed; resuming")
            await anyio.sleep(MONITOR_RETRY_S)


async def background(handle: ProjectHandle, peer: Peer, log_to_state: bool) -> None:
    """The connection's background work: the monitor and the event→notification pump."""
    sup = await wait_for_project(handle, peer)
    if log_to_state:
        attach_log_file(sup.paths.root)
    log.info("project %s (%s); monitor standing by", sup.config.name, sup.config.config_path)
    peer.monitor = Monitor(sup, host="mcp")
    async with anyio.create_task_group() as group:
        group.start_soon(run_monitor, peer.monitor)
        group.start_soon(pump, peer, sup)


async def translated(call: Awaitable[T]) -> T:
    """Await a core call; its errors become tool errors the agent reads."""
    try:
        return await call
    except TaskmuxError as exc:
        raise ToolError(str(exc)) from exc


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


def annotations_for(name: str, title: str) -> types.ToolAnnotations:
    """SPEC §7's hints for one tool."""
    info = TOOL_INFO[name]
    return types.ToolAnnotations(
        title=title,
        read_only_hint=info.read_only,
        destructive_hint=info.destructive,
        idempotent_hint=info.idempotent,
        open_world_hint=False,
    )


def doc(method: Callable[..., Any]) -> str:
    """A Tools method's docstring, as the tool description."""
    return inspect.getdoc(method) or ""


def register_tools(server: MCPServer[Any], tools: Tools) -> None:
    """The ten tools, with SPEC §7's names, arguments and defaults."""

    async def status() -> Annotated[types.CallToolResult, StatusResult]:
        return answer(await translated(tools.status()))

    async def start(
        ctx: Context[Any, Any],
        tasks: TaskList,
        wait: Annotated[bool, Field(description="wait until the tasks are up")] = True,
        timeout: Annotated[float, Field(description="seconds to wait at most")] = 60,
    ) -> Annotated[types.CallToolResult, ActionResult]:
        return answer(
            await with_heartbeat(
                ctx,
                lambda report: translated(
                    tools.start(tasks, wait=wait, timeout=timeout, progress=report)
                ),
            )
        )

    async def stop(tasks: TaskList) -> Annotated[types.CallToolResult, ActionResult]:
        return answer(await translated(tools.stop(tasks)))

    async def restart(
        ctx: Context[Any, Any],
        tasks: TaskList,
        wait: Annotated[bool, Field(description="wait until the tasks are up")] = True,
        timeout: Annotated[float, Field(description="seconds to wait at most")] = 60,
    ) -> Annotated[types.CallToolResult, ActionResult]:
        return answer(
            await with_heartbeat(
                ctx,
                lambda report: translated(
                    tools.restart(tasks, wait=wait, timeout=timeout, progress=report)
                ),
            )
        )

    async def kill(
        tasks: Annotated[list[str], Field(description="task names (at least one)")],
    ) -> Annotated[types.CallToolResult, ActionResult]:
        return answer(await translated(tools.kill(tasks)))

    async def logs(
        task: Annotated[str | None, Field(description="one task; omitted: all, by time")] = None,
        lines: Annotated[int, Field(description="how many of the last lines")] = 100,
        since: Since = None,
    ) -> Annotated[types.CallToolResult, LogsResult]:
        return answer(await translated(tools.logs(task, lines=lines, since=since)))

    async def grep(
        pattern: Annotated[str, Field(description="Python regular expression")],
        tasks: TaskList,
        context: Annotated[int, Field(description="lines of context before and after")] = 2,
        ignore_case: bool = False,
        since: Since = None,
        max_matches: Annotated[int, Field(description="stop after this many matches")] = 100,
    ) -> Annotated[types.CallToolResult, GrepResult]:
        return answer(
            await translated(
                tools.grep(
                    pattern,
                    tasks,
                    context=context,
                    ignore_case=ignore_case,
                    since=since,
                    max_matches=max_matches,
                )
            )
        )

    async def inspect_(
        task: Annotated[str, Field(description="the task's name")],
    ) -> Annotated[types.CallToolResult, InspectResult]:
        return answer(await translated(tools.inspect(task)))

    async def health(tasks: TaskList) -> Annotated[types.CallToolResult, HealthResult]:
        return answer(await translated(tools.health(tasks)))

    async def events(
        task: Annotated[str | None, Field(description="one task; omitted: all")] = None,
        since: Since = None,
        limit: Annotated[int, Field(description="how many of the newest events")] = 50,
    ) -> Annotated[types.CallToolResult, EventsResult]:
        return answer(await translated(tools.events(task, since=since, limit=limit)))

    table: list[tuple[str, str, Callable[..., Awaitable[Any]], Callable[..., Any]]] = [
        ("status", "Task status", status, tools.status),
        ("start", "Start tasks", start, tools.start),
        ("stop", "Stop tasks", stop, tools.stop),
        ("restart", "Restart tasks", restart, tools.restart),
        ("kill", "Kill tasks", kill, tools.kill),
        ("logs", "Read task logs", logs, tools.logs),
        ("grep", "Search task logs", grep, tools.grep),
        ("inspect", "Inspect a task", inspect_, tools.inspect),
        ("health", "Run health checks", health, tools.health),
        ("events", "Recent events", events, tools.events),
    ]
    for name, title, fn, method in table:
        server.add_tool(
            fn,
            name=name,
            title=title,
            description=doc(method),
            annotations=annotations_for(name, title),
            structured_output=True,
        )


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


def register_resources(server: MCPServer[Any], handle: ProjectHandle, tools: Tools) -> None:
    """taskmux://config, status, tasks/{name}, logs/{name} and events."""

    async def read(call: Awaitable[T]) -> T:
        try:
            return await call
        except UnknownTask as exc:
            raise ResourceNotFoundError(str(exc)) from exc
        except TaskmuxError as exc:
            raise ResourceError(str(exc)) from exc

    @server.resource(
        CONFIG_URI,
        name="config",
        title="taskmux.toml",
        description="The project's taskmux.toml: its path and text, or why it cannot be used.",
        mime_type="application/json",
    )
    def config_resource() -> str:
        handle.refresh()
        current = handle.current
        error = handle.error
        path: Path | None = current.config.config_path if current is not None else None
        if path is None and isinstance(error, ConfigError):
            path = error.path
        text = None
        if path is not None:
            with contextlib.suppress(OSError):
                text = path.read_text(encoding="utf-8", errors="replace")
        return json.dumps(
            {
                "path": str(path) if path else None,
                "text": text,
                "error": str(error) if error else None,
                "in_force": current is not None,
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
        return dumps(await read(tools.status()))

    @server.resource(
        "taskmux://tasks/{name}",
        name="task",
        title="One task",
        description="Everything known of one task, as the `inspect` tool returns it.",
        mime_type="application/json",
    )
    async def task_resource(name: str) -> str:
        return dumps(await read(tools.inspect(name)))

    @server.resource(
        "taskmux://logs/{name}",
        name="logs",
        title="Task log",
        description=f"The last {LOG_RESOURCE_LINES} lines of a task's output, as plain text.",
        mime_type="text/plain",
    )
    async def logs_resource(name: str) -> str:
        result = await read(tools.logs(name, lines=LOG_RESOURCE_LINES))
        stamp = "%Y-%m-%dT%H:%M:%SZ"
        return "".join(
            f"{line.time.strftime(stamp) if line.time else '-'} {line.text}\n"
            for line in result.lines
        )

    @server.resource(
        EVENTS_URI,
        name="events",
        title="Recent events",
        description="The project's 50 most recent events, newest last.",
        mime_type="application/json",
    )
    async def events_resource() -> str:
        return dumps(await read(tools.events()))


def register_protocol(server: MCPServer[Peer]) -> None:
    """resources/subscribe, resources/unsubscribe and logging/setLevel (2025-11-25 era)."""
    lowlevel = server._lowlevel_server  # the SDK exposes no public handle for these methods

    async def subscribe(
        ctx: ServerRequestContext[Peer, Any], params: types.SubscribeRequestParams
    ) -> types.EmptyResult:
        ctx.lifespan_context.session = ctx.session
        ctx.lifespan_context.subscribed.add(str(params.uri))
        return types.EmptyResult()

    async def unsubscribe(
        ctx: ServerRequestContext[Peer, Any], params: types.UnsubscribeRequestParams
    ) -> types.EmptyResult:
        ctx.lifespan_context.subscribed.discard(str(params.uri))
        return types.EmptyResult()

    async def set_level(
        ctx: ServerRequestContext[Peer, Any], params: types.SetLevelRequestParams
    ) -> types.EmptyResult:
        ctx.lifespan_context.log_level = params.level
        return types.EmptyResult()

    lowlevel.add_request_handler("resources/subscribe", types.SubscribeRequestParams, subscribe)
    lowlevel.add_request_handler(
        "resources/unsubscribe", types.UnsubscribeRequestParams, unsubscribe
    )
    lowlevel.add_request_handler("logging/setLevel", types.SetLevelRequestParams, set_level)

    async def remember_session(
        ctx: ServerRequestContext[Any, Any], call_next: CallNext
    ) -> HandlerResult:
        peer = ctx.lifespan_context
        if (
            isinstance(peer, Peer)
            and ctx.request_id is not None
            and ctx.protocol_version not in MODERN_PROTOCOL_VERSIONS
        ):
            peer.session = ctx.session
        return await call_next(ctx)

    server.middleware.append(remember_session)


def build_server(
    handle: ProjectHandle,
    *,
    log_to_state: bool = False,
    on_close: Callable[[], None] | None = None,
) -> MCPServer[Peer]:
    """The MCP server for one project: tools, resources, notifications and the monitor."""
    tools = Tools(handle)
    bus = InMemorySubscriptionBus()

    @asynccontextmanager
    async def lifespan(_: MCPServer[Peer]) -> AsyncIterator[Peer]:
        peer = Peer(bus=bus)
        try:
            async with anyio.create_task_group() as group:
                group.start_soon(background, handle, peer, log_to_state)
                try:
                    yield peer
                finally:
                    if peer.monitor is not None:
                        peer.monitor.stop()
                    group.cancel_scope.cancel()
        finally:
            log.info("connection closed; monitor stopped, tasks keep running")
            if on_close is not None:
                on_close()

    server: MCPServer[Peer] = MCPServer(
        SERVER_NAME,
        title="taskmux",
        version=package_version(),
        instructions=INSTRUCTIONS,
        lifespan=lifespan,
        subscriptions=bus,
    )
    register_tools(server, tools)
    register_resources(server, handle, tools)
    register_protocol(server)
    return server


def setup_logging() -> None:
    """Server logs go to stderr (stdout carries only MCP messages)."""
    root = logging.getLogger()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
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
    handle = ProjectHandle(
        project=project,
        config=config,
        tmux_socket=tmux_socket,
        cause=Cause.AGENT,
        host_monitor=True,
    )
    closed = threading.Event()
    server = build_server(handle, log_to_state=True, on_close=closed.set)

    async def main() -> None:
        async with anyio.create_task_group() as group:
            group.start_soon(watch_signals, group.cancel_scope, closed)
            await server.run_stdio_async()
            group.cancel_scope.cancel()

    try:
        anyio.run(main)
    except Exception:
        log.exception("taskmux-mcp failed")
        return 1
    return 0


def main() -> None:
    """Entry point of `taskmux-mcp`."""
    parser = argparse.ArgumentParser(
        prog="taskmux-mcp",
        description="MCP server (stdio) running a project's dev tasks in tmux.",
    )
    parser.add_argument("--project", metavar="DIR", help="folder of taskmux.toml")
    parser.add_argument("--config", metavar="FILE", help="path of taskmux.toml")
    parser.add_argument("--tmux-socket", metavar="NAME", help="named tmux server (tmux -L)")
    parser.add_argument("--version", action="version", version=f"taskmux-mcp {package_version()}")
    args = parser.parse_args()
    project = args.project or os.environ.get("TASKMUX_PROJECT") or None
    socket = args.tmux_socket or os.environ.get("TASKMUX_TMUX_SOCKET") or None
    sys.exit(serve(project, args.config, socket))


if __name__ == "__main__":
    main()
