"""Result shapes shared by every face (MCP tools, CLI --json, bridge): defined once here."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel as PydanticModel
from pydantic import ConfigDict, Field


class BaseModel(PydanticModel):
    """Base of the result shapes; schemas are built on first use (quick CLI start)."""

    model_config = ConfigDict(defer_build=True)


class TaskState(StrEnum):
    """Lifecycle state of a task, as SPEC §4 names them."""

    STOPPED = "stopped"
    STARTING = "starting"
    RUNNING = "running"
    UNHEALTHY = "unhealthy"
    EXITED = "exited"
    RESTARTING = "restarting"
    FAILED = "failed"


class Health(StrEnum):
    """Latest health verdict of a task."""

    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"
    UNKNOWN = "unknown"


class MonitorInfo(BaseModel):
    """Which monitor acts for the project, if any."""

    acting: bool = Field(description="whether some monitor currently applies restart policies")
    pid: int | None = None
    host: str | None = Field(default=None, description="where it runs: mcp, cli, bridge, tmux")
    since: datetime | None = None


class TaskStatus(BaseModel):
    """One task's state in a status listing."""

    name: str
    state: TaskState
    health: Health
    pid: int | None = None
    exit_code: int | None = None
    exit_signal: str | None = None
    restarts: int = Field(0, description="consecutive automatic restarts")
    manually_stopped: bool = False
    port: int | None = Field(None, description='its port, fixed or assigned (`port = "auto"`)')
    url: str | None = Field(None, description="its health_url, ports filled in")
    uptime_s: float | None = None
    restart_policy: str
    oneshot: bool = Field(False, description="a setup step: success is exit 0")
    checked: bool = Field(False, description="whether a check decides its health")
    depends_on: list[str] = Field(default_factory=list)
    error: str | None = Field(None, description="why the task is failed, when it is")


class StatusResult(BaseModel):
    """Every task of the project, plus the project itself."""

    project: str
    session: str
    config_path: str
    monitor: MonitorInfo
    tasks: list[TaskStatus]
    config_error: str | None = Field(
        default=None, description="why taskmux.toml cannot be loaded now (last valid one in force)"
    )
    warnings: list[str] = Field(
        default_factory=list, description="problems found in the state folder, and their repair"
    )


class TaskResult(BaseModel):
    """Outcome of an action (start/stop/restart/kill) on one task."""

    name: str
    ok: bool
    action: str = Field(description="what was done: started, already_running, stopped, ...")
    state: TaskState
    health: Health = Health.UNKNOWN
    pid: int | None = None
    exit_code: int | None = None
    exit_signal: str | None = None
    error: str | None = None
    blocked_by: str | None = Field(None, description="the dependency that kept this task down")
    check_output: str | None = Field(None, description="output of the failing health check")
    log_tail: list[str] = Field(
        default_factory=list, description="last log lines of this run (on failure, after restart)"
    )
    duration_s: float | None = None
    matched_line: str | None = Field(None, description="the line that `wait_for` waited for")
    warnings: list[str] = Field(
        default_factory=list, description="what could not be saved (full disk, read-only state)"
    )

    def outcome(self) -> str:
        """What was done and the state reached, in words ("started, running", "exited")."""
        done = self.action.split("_")
        words = " ".join(done)
        return words if self.state.value in done else f"{words}, {self.state.value}"


class ActionResult(BaseModel):
    """Outcome of an action over several tasks."""

    ok: bool = Field(description="true when every task reached what was asked")
    tasks: list[TaskResult]
    message: str | None = None
    warnings: list[str] = Field(default_factory=list, description="problems beside the tasks'")


class ProbeReport(BaseModel):
    """One health check run now."""

    name: str
    healthy: bool | None = Field(description="null when the task has no check")
    method: str
    detail: str
    duration_ms: float


class HealthResult(BaseModel):
    """Health checks run on request."""

    tasks: list[ProbeReport]


class LogLine(BaseModel):
    """One line of task output, as plain text."""

    task: str
    time: datetime | None
    text: str


class LogsResult(BaseModel):
    """The last lines of one task or all tasks interleaved by time."""

    lines: list[LogLine]
    truncated: bool = Field(description="true when older lines were left out")
    omitted: int = Field(0, description="how many matching lines were left out, when known")
    notice: str | None = Field(None, description="what was cut to fit the reply, and why")
    cursor: str | None = Field(
        None,
        description="where these lines begin: pass it as `before` (same tasks and since) to "
        "get the lines just before them; absent when no line was returned",
    )


class GrepMatch(BaseModel):
    """One line matching a pattern, with its context."""

    task: str
    time: datetime | None
    line: str
    before: list[str] = Field(
        default_factory=list,
        description="lines before it that the previous match of its task has not given",
    )
    after: list[str] = Field(
        default_factory=list, description="lines after it, up to the next match of its task"
    )
    continues: bool = Field(
        False,
        description="true when no line lies between the previous match of its task (its "
        "`after`) and this one (its `before`): one block, as GNU grep joins them",
    )


class GrepResult(BaseModel):
    """Matches of a pattern across task logs, oldest first."""

    matches: list[GrepMatch]
    truncated: bool = Field(description="true when max_matches (or the reply budget) cut it")
    files_searched: int = 0
    notice: str | None = Field(None, description="what was cut to fit the reply, and why")


class EventRecord(BaseModel):
    """One entry of the project's event history."""

    time: datetime
    type: str
    task: str | None = None
    cause: str
    details: dict[str, Any] = Field(default_factory=dict)


class EventsResult(BaseModel):
    """Recent events, newest last."""

    events: list[EventRecord]
    truncated: bool = False
    notice: str | None = Field(None, description="what was cut to fit the reply, and why")


class ProcessEntry(BaseModel):
    """One process belonging to a task."""

    pid: int
    ppid: int
    name: str
    cmdline: str
    status: str


class ExitInfo(BaseModel):
    """How a task's last run ended."""

    code: int | None = None
    signal: str | None = None
    time: datetime | None = None
    expected: bool = Field(False, description="true when taskmux itself stopped it")


class InspectResult(BaseModel):
    """Everything known of one task."""

    status: TaskStatus
    config: dict[str, Any]
    window_id: str | None = None
    pane_id: str | None = None
    processes: list[ProcessEntry] = Field(default_factory=list)
    last_exit: ExitInfo | None = None
    health_history: list[ProbeReport] = Field(default_factory=list)
    total_restarts: int = 0
    runs: int = 0
    log_path: str
    log_tail: list[str] = Field(default_factory=list, description="last lines of the last run")
    recent_events: list[EventRecord] = Field(default_factory=list)


class ProjectOverview(BaseModel):
    """One checkout with tasks on the tmux server, as `status --all` lists it."""

    project: str
    checkout: str | None = Field(None, description="the folder holding its taskmux.toml")
    session: str
    config_path: str | None = None
    tasks: list[TaskStatus] = Field(default_factory=list)
    error: str | None = Field(None, description="why only tmux's view of it is shown")


class ProjectsResult(BaseModel):
    """Every taskmux project on the tmux server (every checkout of every project)."""

    projects: list[ProjectOverview]


class SendResult(BaseModel):
    """What was typed into a task's pane."""

    task: str
    pid: int | None = None
    typed_chars: int = Field(description="characters of text typed literally")
    keys: list[str] = Field(default_factory=list, description="named keys pressed after the text")


class ScreenResult(BaseModel):
    """A task's visible screen, now."""

    task: str
    state: TaskState
    lines: list[str] = Field(description="the screen's rows as plain text, trailing blanks cut")
    cursor_x: int
    cursor_y: int
    width: int
    height: int
    truncated: bool = Field(False, description="true when top rows were left out to fit")
    notice: str | None = Field(None, description="what was cut to fit the reply, and why")


class WaitResult(BaseModel):
    """How waiting for a line of a task's output ended."""

    task: str
    ok: bool = Field(description="true when a line matched")
    outcome: str = Field(description="matched, exited, not_running or timeout")
    line: str | None = Field(None, description="the matching line")
    time: datetime | None = None
    before: list[str] = Field(default_factory=list, description="the lines just before it")
    state: TaskState
    exit_code: int | None = None
    exit_signal: str | None = None
    error: str | None = None
    log_tail: list[str] = Field(default_factory=list, description="last lines, when none matched")
    waited_s: float
