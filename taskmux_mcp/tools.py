"""The operations the MCP server and the bridge expose, with SPEC §7's names and arguments."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from .errors import InvalidArgument
from .models import (
    ActionResult,
    EventsResult,
    GrepResult,
    HealthResult,
    InspectResult,
    LogsResult,
    StatusResult,
)
from .project import ProjectHandle

Progress = Callable[[str], Awaitable[None]]
MAX_LIST = 200
MAX_EVENTS = 1000


@dataclass(frozen=True)
class ToolInfo:
    """How a face should present one operation."""

    read_only: bool
    destructive: bool
    idempotent: bool


TOOL_INFO: dict[str, ToolInfo] = {
    "status": ToolInfo(read_only=True, destructive=False, idempotent=True),
    "start": ToolInfo(read_only=False, destructive=False, idempotent=True),
    "stop": ToolInfo(read_only=False, destructive=True, idempotent=True),
    "restart": ToolInfo(read_only=False, destructive=True, idempotent=False),
    "kill": ToolInfo(read_only=False, destructive=True, idempotent=False),
    "logs": ToolInfo(read_only=True, destructive=False, idempotent=True),
    "grep": ToolInfo(read_only=True, destructive=False, idempotent=True),
    "inspect": ToolInfo(read_only=True, destructive=False, idempotent=True),
    "health": ToolInfo(read_only=True, destructive=False, idempotent=True),
    "events": ToolInfo(read_only=True, destructive=False, idempotent=True),
}


def _names(tasks: list[str] | None) -> list[str]:
    tasks = list(tasks or [])
    if len(tasks) > MAX_LIST:
        raise InvalidArgument(f"at most {MAX_LIST} task names per call")
    return tasks


class Tools:
    """One method per tool; each returns the shared result model or raises a TaskmuxError."""

    def __init__(self, handle: ProjectHandle) -> None:
        self.handle = handle

    async def status(self) -> StatusResult:
        """Call first: every task's state, health, pid, exit code, restarts, port and uptime.

        Also says which tmux session holds the tasks, where taskmux.toml is, and whether a
        monitor is applying restart policies.
        """
        sup = self.handle.supervisor()
        result = await sup.status()
        if self.handle.error is not None:
            result.config_error = str(self.handle.error)
        return result

    async def start(
        self,
        tasks: list[str] | None = None,
        wait: bool = True,
        timeout: float = 60,
        progress: Progress | None = None,
    ) -> ActionResult:
        """Start tasks (default: every auto_start task) and their dependencies, in order.

        Use this instead of running servers in your own shell. With wait (default) it returns
        when each task is healthy/running, has exited 0 (one-shot), or has failed — a failure
        carries the exit status, the failing check's output and the last log lines — or at
        the timeout (seconds). Tasks already running are left alone.
        """
        sup = self.handle.supervisor(strict=True)
        return await sup.start(_names(tasks), wait=wait, timeout=timeout, progress=progress)

    async def stop(self, tasks: list[str] | None = None) -> ActionResult:
        """Stop tasks gracefully (default: all): SIGINT, then SIGTERM, then SIGKILL.

        A stopped task is not restarted by any restart policy until it is started again.
        """
        sup = self.handle.supervisor()
        return await sup.stop(_names(tasks))

    async def restart(
        self,
        tasks: list[str] | None = None,
        wait: bool = True,
        timeout: float = 60,
        progress: Progress | None = None,
    ) -> ActionResult:
        """Stop then start tasks (default: all running ones); clears manual-stop marks.

        With wait (default) it returns the verdict like `start`, and for each task the lines
        it has printed since this start (`log_tail`).
        """
        sup = self.handle.supervisor(strict=True)
        return await sup.restart(_names(tasks), wait=wait, timeout=timeout, progress=progress)

    async def kill(self, tasks: list[str]) -> ActionResult:
        """SIGKILL every process of the named tasks at once and remove their tmux windows."""
        sup = self.handle.supervisor()
        return await sup.kill(_names(tasks))

    async def logs(
        self, task: str | None = None, lines: int = 100, since: str | None = None
    ) -> LogsResult:
        """A task's output as plain text (default: all tasks interleaved by time), last lines.

        since: "start" (this run only), a duration like "30s"/"5m"/"2h", or an ISO 8601 time.
        Says when older lines were left out.
        """
        sup = self.handle.supervisor()
        return sup.read_logs(task, lines=lines, since=since)

    async def grep(
        self,
        pattern: str,
        tasks: list[str] | None = None,
        context: int = 2,
        ignore_case: bool = False,
        since: str | None = None,
        max_matches: int = 100,
    ) -> GrepResult:
        """Search task logs (default: all tasks, rotated files too) with a Python regex.

        Each match has its task, time, line and `context` lines before and after.
        """
        sup = self.handle.supervisor()
        return sup.grep(
            pattern,
            _names(tasks),
            context=context,
            ignore_case=ignore_case,
            since=since,
            max_matches=max_matches,
        )

    async def inspect(self, task: str) -> InspectResult:
        """Everything known of one task: config, state, processes, last exit, health history,
        restart counters and recent events. Use it to find out why a task failed."""
        sup = self.handle.supervisor()
        return await sup.inspect(task)

    async def health(self, tasks: list[str] | None = None) -> HealthResult:
        """Run health checks now (default: every task); per task healthy, method, detail, ms."""
        sup = self.handle.supervisor()
        return await sup.health(_names(tasks))

    async def events(
        self, task: str | None = None, since: str | None = None, limit: int = 50
    ) -> EventsResult:
        """What happened, newest last: starts, exits, stops, restarts, give-ups, health changes,
        config reloads — each with its cause (user, agent, policy, health, config)."""
        if limit < 1 or limit > MAX_EVENTS:
            raise InvalidArgument(f"limit must be between 1 and {MAX_EVENTS}")
        sup = self.handle.supervisor()
        return sup.read_events(task, since=since, limit=limit)
