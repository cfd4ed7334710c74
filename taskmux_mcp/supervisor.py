"""The facade every face calls: start, stop, restart, kill, status, inspect, health, logs."""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import anyio

from . import processes
from .config import ProjectConfig, RestartPolicy, TaskConfig
from .errors import HookFailed, InvalidArgument, TaskmuxError
from .events import Cause, EventLog, EventType
from .health import ProbeOutcome, probe_checks
from .hooks import run_hook
from .logs import LogStore
from .models import (
    ActionResult,
    EventRecord,
    EventsResult,
    ExitInfo,
    GrepResult,
    Health,
    HealthResult,
    InspectResult,
    LogsResult,
    MonitorInfo,
    ProbeReport,
    ProcessEntry,
    StatusResult,
    TaskResult,
    TaskState,
    TaskStatus,
)
from .state import (
    CheckRecord,
    ExitRecord,
    ProjectPaths,
    StateStore,
    TaskRecord,
    file_lock,
    state_root,
)
from .tmux import Pane, Snapshot, TmuxBackend

log = logging.getLogger("taskmux")

MONITOR_WINDOW = "_monitor"
SETTLE_S = 1.0
READY_POLL_S = 0.2
LOG_TAIL_LINES = 15
LOG_SETTLE_S = 1.5
RESTART_TAIL_LINES = 10
INSPECT_EVENTS = 6
Progress = Callable[[str], Awaitable[None]]


def _now() -> float:
    return time.time()


def _stamp(epoch: float | None) -> datetime | None:
    return datetime.fromtimestamp(epoch, UTC) if epoch is not None else None


def is_one_shot(task: TaskConfig) -> bool:
    """A task run to completion: restart policy "no" and nothing to probe."""
    return task.restart_policy is RestartPolicy.NO and not task.has_check()


@dataclass(frozen=True)
class Observed:
    """A task's state and health, derived from its pane and its persisted record."""

    state: TaskState
    health: Health
    pid: int | None
    exit_code: int | None
    exit_signal: str | None


def observe(task: TaskConfig, record: TaskRecord, pane: Pane | None) -> Observed:
    """Derive the SPEC state vocabulary from what tmux shows and what was persisted."""
    if pane is not None and not pane.dead:
        health = Health(record.health) if task.has_check() else Health.UNKNOWN
        if not task.has_check() or health is Health.HEALTHY:
            state = TaskState.RUNNING
        elif health is Health.UNHEALTHY:
            state = TaskState.UNHEALTHY
        else:
            state = TaskState.STARTING
        if record.restart_at is not None:
            state = TaskState.RESTARTING
        return Observed(state, health, pane.pid, None, None)
    code = pane.exit_status if pane is not None else None
    sig = processes.describe_signal(pane.exit_signal) if pane is not None else None
    if pane is None and record.last_exit is not None:
        code = record.last_exit.code
        sig = processes.describe_signal(record.last_exit.signal)
    if record.failed:
        state = TaskState.FAILED
    elif record.restart_at is not None:
        state = TaskState.RESTARTING
    elif pane is None or record.manually_stopped or record.stopping:
        state = TaskState.STOPPED
    else:
        state = TaskState.EXITED
    return Observed(state, Health.UNKNOWN, None, code, sig)


class Supervisor:
    """Operations on one project's tasks; every face (MCP, CLI, bridge, monitor) calls these."""

    def __init__(
        self,
        config: ProjectConfig,
        *,
        socket_name: str | None = None,
        cause: Cause = Cause.USER,
        environ: Mapping[str, str] | None = None,
        host_monitor: bool = False,
    ) -> None:
        self._config = config
        self.cause = cause
        self.host_monitor = host_monitor
        self._environ = dict(os.environ if environ is None else environ)
        # taskmux run from inside a task must not mark the tmux server it may start as that task.
        os.environ.pop(processes.ENV_MARKER, None)
        self.paths = ProjectPaths.for_project(config.name, config.root, environ)
        self.paths.ensure()
        self.key = self.paths.root.name
        self.store = StateStore(self.paths)
        self.events = EventLog(self.paths.events)
        self.logs = LogStore(
            self.paths.logs, max_bytes=config.logs.max_bytes, max_files=config.logs.max_files
        )
        self.tmux = TmuxBackend(self.key, config.name, socket_name)

    @property
    def config(self) -> ProjectConfig:
        """The config in force."""
        return self._config

    def use_config(self, config: ProjectConfig) -> None:
        """Switch to a newly loaded config of the same project."""
        self._config = config

    def task_id(self, name: str) -> str:
        """The marker every process of a task carries in its environment."""
        return f"{self.key}/{name}"

    def _names(self, tasks: Iterable[str]) -> list[str]:
        return self.config.require(tasks)

    # ---------------------------------------------------------------- status

    def _task_status(self, name: str, record: TaskRecord, pane: Pane | None) -> TaskStatus:
        task = self.config.task(name)
        seen = observe(task, record, pane)
        alive = seen.pid is not None
        return TaskStatus(
            name=name,
            state=seen.state,
            health=seen.health,
            pid=seen.pid,
            exit_code=seen.exit_code,
            exit_signal=seen.exit_signal,
            restarts=record.restarts,
            manually_stopped=record.manually_stopped,
            port=task.port,
            uptime_s=round(_now() - record.started_at, 1) if alive and record.started_at else None,
            restart_policy=str(task.restart_policy),
            depends_on=list(task.depends_on),
            error=record.failed,
        )

    async def status(self) -> StatusResult:
        """Every task's state, from one tmux call and the persisted records."""
        return await anyio.to_thread.run_sync(self.status_sync)

    def status_sync(self) -> StatusResult:
        """Blocking form of status, for callers without an event loop."""
        snap = self.tmux.snapshot_sync()
        tasks = [
            self._task_status(name, self.store.get(name), snap.panes.get(name))
            for name in self.config.tasks
        ]
        return StatusResult(
            project=self.config.name,
            session=snap.session or self._expected_session(snap),
            config_path=str(self.config.config_path),
            monitor=self.monitor_info(),
            tasks=tasks,
        )

    def _expected_session(self, snap: Snapshot) -> str:
        if snap.foreign_owner is None:
            return self.config.name
        return self.tmux.fallback_session_name

    def monitor_info(self) -> MonitorInfo:
        """Which monitor acts for this project, as its lease file says."""
        from .state import read_monitor_lease

        lease = read_monitor_lease(self.paths)
        if lease is None:
            return MonitorInfo(acting=False)
        return MonitorInfo(acting=True, pid=lease.pid, host=lease.host, since=_stamp(lease.since))

    # ---------------------------------------------------------------- start

    def _env(self, name: str, *, marked: bool = False) -> dict[str, str]:
        """The task's extra environment; only its own processes carry the task marker."""
        task = self.config.task(name)
        env = {"TASKMUX_PROJECT": self.config.name, "TASKMUX_TASK": name, **task.env}
        if marked:
            env[processes.ENV_MARKER] = self.task_id(name)
        return env

    async def launch(self, name: str, cause: Cause, *, automatic: bool = False) -> Pane:
        """Spawn one task now (no dependency handling): hooks, port cleanup, tmux, event."""
        task = self.config.task(name)
        cwd = task.working_dir(self.config.root)
        if not cwd.is_dir():
            raise TaskmuxError(f"cwd {cwd} of task '{name}' does not exist")
        env = self._env(name)
        await run_hook("before_start", task.hooks.before_start, task=name, cwd=cwd, env=env)
        snap = await self.tmux.snapshot()
        old = snap.panes.get(name)
        await processes.kill_tree(old.pid if old and not old.dead else None, self.task_id(name))
        if task.port is not None:
            freed = await processes.free_port(task.port, protect=[os.getpid()])
            for proc in freed:
                self.events.record(
                    EventType.PORT_FREED,
                    cause,
                    name,
                    port=task.port,
                    pid=proc.pid,
                    process=proc.name,
                )

        def begin(record: TaskRecord) -> TaskRecord:
            return record.model_copy(
                update={
                    "runs": record.runs + 1,
                    "restarts": record.restarts + 1 if automatic else 0,
                    "total_restarts": record.total_restarts + (1 if automatic else 0),
                    "started_at": _now(),
                    "manually_stopped": False,
                    "stopping": False,
                    "stopping_pid": None,
                    "restart_requested": False,
                    "failed": None,
                    "restart_at": None,
                    "health": Health.UNKNOWN.value,
                    "health_failures": 0,
                    "healthy_since": None,
                    "pid": None,
                    "pane_id": None,
                }
            )

        with anyio.CancelScope(shield=True):
            record = self.store.mutate(name, begin)
            pipe = self.logs.pipe_command(name, record.runs)

            def spawn() -> Pane:
                with file_lock(self.paths.locks / "spawn.lock"):
                    fresh = self.tmux.snapshot_sync()
                    pane = self.tmux.spawn_sync(
                        name,
                        ["/bin/sh", "-c", task.command],
                        cwd,
                        self._env(name, marked=True),
                        pipe,
                        fresh,
                    )
                    if self.host_monitor:
                        self._ensure_hosted_monitor()
                    return pane

            pane = await anyio.to_thread.run_sync(spawn)
            self.store.update(name, pid=pane.pid, pane_id=pane.pane_id)
            self.events.record(
                EventType.RESTARTED if automatic else EventType.STARTED,
                cause,
                name,
                pid=pane.pid,
                run=record.runs,
                session=pane.session,
            )
        try:
            await run_hook("after_start", task.hooks.after_start, task=name, cwd=cwd, env=env)
        except HookFailed as exc:
            self.events.record(
                EventType.HOOK_FAILED, cause, name, hook="after_start", error=str(exc)
            )
        return pane

    def _ensure_hosted_monitor(self) -> None:
        """Keep a monitor running in the project's own session, so policies outlive the agent."""
        snap = self.tmux.snapshot_sync()
        pane = snap.panes.get(MONITOR_WINDOW)
        if pane is not None and not pane.dead:
            return
        argv = [
            sys.executable, "-m", "taskmux_mcp", "--config", str(self.config.config_path),
            "--tmux-socket", self.tmux.socket_name, "monitor", "--hosted",
        ]  # fmt: skip
        env = {"TASKMUX_STATE_DIR": str(state_root(self._environ))}
        for key in ("PATH", "TMUX_TMPDIR", "HOME"):
            if key in self._environ:
                env[key] = self._environ[key]
        self.tmux.spawn_sync(MONITOR_WINDOW, argv, self.config.root, env, None, snap)

    async def start(
        self,
        tasks: Sequence[str] = (),
        *,
        wait: bool = True,
        timeout: float = 60.0,
        cause: Cause | None = None,
        progress: Progress | None = None,
    ) -> ActionResult:
        """Start tasks (all auto_start ones by default) and their dependencies, in order."""
        if timeout <= 0 or timeout > 24 * 3600:
            raise InvalidArgument("timeout must be between 0 and 86400 seconds")
        cause = cause or self.cause
        config = self.config
        requested = (
            self._names(tasks)
            if tasks
            else [name for name, task in config.tasks.items() if task.auto_start]
        )
        closure = config.with_dependencies(requested)
        needed_by_others = {dep for name in closure for dep in config.task(name).depends_on}
        deadline = time.monotonic() + timeout
        env = {"TASKMUX_PROJECT": config.name}
        try:
            await run_hook(
                "before_start", config.hooks.before_start, task=None, cwd=config.root, env=env
            )
        except HookFailed as exc:
            self.events.record(
                EventType.HOOK_FAILED, cause, None, hook="before_start", error=str(exc)
            )
            failed = [self._failure(name, str(exc)) for name in requested]
            return ActionResult(ok=False, tasks=failed, message=str(exc))
        done = {name: anyio.Event() for name in closure}
        results: dict[str, TaskResult] = {}

        async def bring_up(name: str) -> None:
            try:
                results[name] = await self._bring_up(
                    name,
                    done,
                    results,
                    wait=wait or name in needed_by_others,
                    deadline=deadline,
                    cause=cause,
                    progress=progress,
                    requested=name in requested,
                )
            finally:
                done[name].set()

        async with anyio.create_task_group() as group:
            for name in closure:
                group.start_soon(bring_up, name)
        try:
            await run_hook(
                "after_start", config.hooks.after_start, task=None, cwd=config.root, env=env
            )
        except HookFailed as exc:
            self.events.record(
                EventType.HOOK_FAILED, cause, None, hook="after_start", error=str(exc)
            )
        ordered = [results[name] for name in closure]
        ok = all(result.ok for result in ordered)
        return ActionResult(ok=ok, tasks=ordered, message=None if ok else _summary(ordered))

    async def log_tail(self, name: str, lines: int = LOG_TAIL_LINES) -> list[str]:
        """The last lines of the task's current run, once its log writer has caught up."""
        path = self.logs.path(name)
        deadline = time.monotonic() + LOG_SETTLE_S
        last_size = -1
        while True:
            try:
                size = path.stat().st_size
            except OSError:
                size = -1
            tail = self.logs.last_run_lines(name, lines)
            if (tail and size == last_size) or time.monotonic() >= deadline:
                return tail
            last_size = size
            await anyio.sleep(0.1)

    def _failure(self, name: str, error: str, **extra: Any) -> TaskResult:
        return TaskResult(
            name=name,
            ok=False,
            action="failed",
            state=TaskState.FAILED,
            error=error,
            log_tail=self.logs.last_run_lines(name, LOG_TAIL_LINES),
            **extra,
        )

    async def _bring_up(
        self,
        name: str,
        done: Mapping[str, anyio.Event],
        results: Mapping[str, TaskResult],
        *,
        wait: bool,
        deadline: float,
        cause: Cause,
        progress: Progress | None,
        requested: bool,
    ) -> TaskResult:
        task = self.config.task(name)
        began = time.monotonic()
        for dep in task.depends_on:
            with anyio.move_on_after(max(0.0, deadline - time.monotonic())):
                await done[dep].wait()
            dep_result = results.get(dep)
            if dep_result is None:
                return TaskResult(
                    name=name,
                    ok=False,
                    action="not_started",
                    state=self._observe(name, (await self.tmux.snapshot())).state,
                    error=f"timed out waiting for dependency '{dep}'",
                    blocked_by=dep,
                )
            if not dep_result.ok:
                return TaskResult(
                    name=name,
                    ok=False,
                    action="not_started",
                    state=self._observe(name, (await self.tmux.snapshot())).state,
                    error=f"dependency '{dep}' did not come up: "
                    f"{dep_result.error or dep_result.state.value}",
                    blocked_by=dep,
                )
        snap = await self.tmux.snapshot()
        pane = snap.panes.get(name)
        action = "already_running"
        if not requested and pane is not None and pane.dead and self._completed(name, pane):
            return TaskResult(
                name=name,
                ok=True,
                action="already_done",
                state=TaskState.EXITED,
                exit_code=0,
                duration_s=0.0,
            )
        if pane is None or pane.dead:
            action = "started"
            try:
                pane = await self.launch(name, cause)
            except TaskmuxError as exc:
                self.store.update(name, failed=str(exc))
                if isinstance(exc, HookFailed):
                    self.events.record(EventType.HOOK_FAILED, cause, name, error=str(exc))
                return self._failure(name, str(exc), duration_s=round(time.monotonic() - began, 2))
            if progress is not None:
                await progress(f"{name}: started (pid {pane.pid})")
        else:
            self.store.update(name, manually_stopped=False)
        if not wait:
            seen = self._observe(name, await self.tmux.snapshot())
            return TaskResult(
                name=name,
                ok=True,
                action=action,
                state=seen.state,
                health=seen.health,
                pid=pane.pid,
            )
        result = await self._await_ready(name, action, deadline, began)
        if progress is not None:
            await progress(f"{name}: {result.state.value}")
        return result

    def _completed(self, name: str, pane: Pane) -> bool:
        """A one-shot dependency whose last run succeeded: it is not run again for a dependent."""
        record = self.store.get(name)
        return (
            is_one_shot(self.config.task(name))
            and pane.exit_status == 0
            and pane.exit_signal is None
            and not record.manually_stopped
            and record.failed is None
        )

    def _observe(self, name: str, snap: Snapshot) -> Observed:
        return observe(self.config.task(name), self.store.get(name), snap.panes.get(name))

    async def _await_ready(
        self, name: str, action: str, deadline: float, began: float
    ) -> TaskResult:
        """Poll until the task is healthy / settled, has exited, or the deadline passes."""
        task = self.config.task(name)
        last_check: ProbeOutcome | None = None
        while True:
            snap = await self.tmux.snapshot()
            pane = snap.panes.get(name)
            record = self.store.get(name)
            elapsed = round(time.monotonic() - began, 2)
            if pane is None or pane.dead:
                seen = self._observe(name, snap)
                ok = seen.exit_code == 0 and seen.exit_signal is None and pane is not None
                return TaskResult(
                    name=name,
                    ok=ok,
                    action="exited" if ok else "crashed",
                    state=seen.state,
                    health=seen.health,
                    exit_code=seen.exit_code,
                    exit_signal=seen.exit_signal,
                    error=None if ok else _exit_text(seen),
                    log_tail=[] if ok else await self.log_tail(name),
                    duration_s=elapsed,
                )
            alive_for = _now() - (record.started_at or _now())
            if task.has_check():
                last_check = await self.check(name, record, cause=None)
                record = self.store.get(name)
                if record.health == Health.HEALTHY:
                    return self._ready(name, action, pane, elapsed)
                if record.health == Health.UNHEALTHY:
                    return self._not_ready(name, pane, "health check failing", last_check, elapsed)
            elif not is_one_shot(task) and alive_for >= SETTLE_S:
                return self._ready(name, action, pane, elapsed)
            if time.monotonic() >= deadline:
                what = "to become healthy" if task.has_check() else "to finish"
                if not task.has_check() and not is_one_shot(task):
                    what = "to settle"
                return self._not_ready(name, pane, f"timed out waiting {what}", last_check, elapsed)
            await anyio.sleep(min(READY_POLL_S, max(0.0, deadline - time.monotonic())))

    def _ready(self, name: str, action: str, pane: Pane, elapsed: float) -> TaskResult:
        record = self.store.get(name)
        seen = observe(self.config.task(name), record, pane)
        return TaskResult(
            name=name,
            ok=True,
            action=action,
            state=seen.state,
            health=seen.health,
            pid=pane.pid,
            duration_s=elapsed,
        )

    def _not_ready(
        self, name: str, pane: Pane, error: str, check: ProbeOutcome | None, elapsed: float
    ) -> TaskResult:
        seen = observe(self.config.task(name), self.store.get(name), pane)
        return TaskResult(
            name=name,
            ok=False,
            action="not_ready",
            state=seen.state,
            health=seen.health,
            pid=pane.pid,
            error=error,
            check_output=check.detail if check else None,
            log_tail=self.logs.last_run_lines(name, LOG_TAIL_LINES),
            duration_s=elapsed,
        )

    # ---------------------------------------------------------------- health

    async def probe(self, name: str) -> ProbeOutcome | None:
        """Run the task's checks once, without recording anything."""
        task = self.config.task(name)
        return await probe_checks(
            health_check=task.health_check,
            health_url=task.health_url,
            port=task.port,
            cwd=task.working_dir(self.config.root),
            env=self._env(name),
            timeout=task.health_timeout,
        )

    async def check(
        self, name: str, record: TaskRecord, *, cause: Cause | None
    ) -> ProbeOutcome | None:
        """Probe a running task; fold the result into its persisted health (retries, period)."""
        task = self.config.task(name)
        outcome = await self.probe(name)
        if outcome is None:
            return None
        now = _now()
        in_start_period = (
            record.healthy_since is None
            and record.started_at is not None
            and now - record.started_at < task.health_start_period
        )

        def fold(current: TaskRecord) -> TaskRecord:
            if current.runs != record.runs:
                return current
            entry = CheckRecord(
                healthy=outcome.healthy,
                method=str(outcome.method),
                detail=outcome.detail,
                duration_ms=outcome.duration_ms,
                at=now,
            )
            updated = current.with_check(entry)
            if outcome.healthy:
                return updated.model_copy(
                    update={
                        "health": Health.HEALTHY.value,
                        "health_failures": 0,
                        "healthy_since": current.healthy_since or now,
                    }
                )
            if in_start_period:
                return updated
            failures = current.health_failures + 1
            health = Health.UNHEALTHY.value if failures >= task.health_retries else current.health
            return updated.model_copy(update={"health": health, "health_failures": failures})

        updated = self.store.mutate(name, fold)
        if cause is not None and updated.health != record.health:
            self.events.record(
                EventType.HEALTH_CHANGED,
                cause,
                name,
                health=updated.health,
                previous=record.health,
                detail=outcome.detail,
            )
        return outcome

    async def health(self, tasks: Sequence[str] = ()) -> HealthResult:
        """Run every requested task's checks now, concurrently."""
        names = self._names(tasks) if tasks else list(self.config.tasks)
        snap = await self.tmux.snapshot()
        reports: dict[str, ProbeReport] = {}

        async def one(name: str) -> None:
            pane = snap.panes.get(name)
            outcome = await self.probe(name)
            if outcome is None:
                alive = pane is not None and not pane.dead
                detail = f"no check configured; process {'alive' if alive else 'not running'}"
                if alive and pane is not None:
                    detail += f" (pid {pane.pid})"
                reports[name] = ProbeReport(
                    name=name, healthy=alive, method="process", detail=detail, duration_ms=0.0
                )
                return
            reports[name] = ProbeReport(
                name=name,
                healthy=outcome.healthy,
                method=str(outcome.method),
                detail=outcome.detail,
                duration_ms=round(outcome.duration_ms, 1),
            )

        async with anyio.create_task_group() as group:
            for name in names:
                group.start_soon(one, name)
        return HealthResult(tasks=[reports[name] for name in names])

    # ---------------------------------------------------------------- stop / kill

    async def stop(
        self, tasks: Sequence[str] = (), *, cause: Cause | None = None, for_restart: bool = False
    ) -> ActionResult:
        """Stop tasks gracefully (all by default), dependents before their dependencies."""
        cause = cause or self.cause
        config = self.config
        names = self._names(tasks) if tasks else list(config.tasks)
        env = {"TASKMUX_PROJECT": config.name}
        try:
            await run_hook(
                "before_stop", config.hooks.before_stop, task=None, cwd=config.root, env=env
            )
        except HookFailed as exc:
            self.events.record(
                EventType.HOOK_FAILED, cause, None, hook="before_stop", error=str(exc)
            )
            return ActionResult(
                ok=False, tasks=[self._failure(name, str(exc)) for name in names], message=str(exc)
            )
        done = {name: anyio.Event() for name in names}
        results: dict[str, TaskResult] = {}

        async def stop_one(name: str) -> None:
            try:
                for other in names:
                    if other != name and name in config.task(other).depends_on:
                        await done[other].wait()
                results[name] = await self._stop_one(name, cause, for_restart=for_restart)
            finally:
                done[name].set()

        async with anyio.create_task_group() as group:
            for name in names:
                group.start_soon(stop_one, name)
        try:
            await run_hook(
                "after_stop", config.hooks.after_stop, task=None, cwd=config.root, env=env
            )
        except HookFailed as exc:
            self.events.record(
                EventType.HOOK_FAILED, cause, None, hook="after_stop", error=str(exc)
            )
        ordered = [results[name] for name in names]
        ok = all(r.ok for r in ordered)
        return ActionResult(ok=ok, tasks=ordered, message=None if ok else _summary(ordered))

    async def terminate(self, name: str, cause: Cause) -> TaskResult:
        """Stop a task's processes for the monitor (no manual-stop mark, no hooks)."""
        return await self._stop_one(name, cause, manual=False)

    async def _stop_one(
        self, name: str, cause: Cause, *, manual: bool = True, for_restart: bool = False
    ) -> TaskResult:
        task = self.config.task(name)
        cwd = task.working_dir(self.config.root)
        env = self._env(name)
        snap = await self.tmux.snapshot()
        pane = snap.panes.get(name)
        alive = pane is not None and not pane.dead
        if alive and manual:
            try:
                await run_hook("before_stop", task.hooks.before_stop, task=name, cwd=cwd, env=env)
            except HookFailed as exc:
                self.events.record(
                    EventType.HOOK_FAILED, cause, name, hook="before_stop", error=str(exc)
                )
                seen = self._observe(name, snap)
                return TaskResult(
                    name=name, ok=False, action="not_stopped", state=seen.state, error=str(exc)
                )
        if manual:
            self._mark_stopped(name, for_restart=for_restart)
        else:
            self.store.update(name, stopping=True, stopping_pid=os.getpid())
        with anyio.CancelScope(shield=True):
            interrupt = self._interrupter(pane)
            outcome = await processes.stop_tree(
                pane.pid if alive and pane is not None else None,
                self.task_id(name),
                interrupt=interrupt,
                grace=task.stop_grace_period,
            )
            after = (await self.tmux.snapshot()).panes.get(name)
            exit_record = (
                ExitRecord(
                    code=after.exit_status, signal=after.exit_signal, at=_now(), expected=True
                )
                if alive and after is not None
                else self.store.get(name).last_exit
            )
            # A restart keeps `stopping` until its start begins: a monitor must not step in.
            self.store.update(name, stopping=for_restart, pid=None, last_exit=exit_record)
        if alive or outcome.signal_used != "none":
            self.events.record(
                EventType.STOPPED,
                cause,
                name,
                signal=outcome.signal_used,
                duration_s=round(outcome.duration_s, 3),
                remaining=list(outcome.remaining),
            )
        if alive and manual:
            try:
                await run_hook("after_stop", task.hooks.after_stop, task=name, cwd=cwd, env=env)
            except HookFailed as exc:
                self.events.record(
                    EventType.HOOK_FAILED, cause, name, hook="after_stop", error=str(exc)
                )
        return TaskResult(
            name=name,
            ok=outcome.stopped,
            action="stopped" if alive else "already_stopped",
            state=TaskState.STOPPED if outcome.stopped else TaskState.RUNNING,
            exit_code=exit_record.code if exit_record and alive else None,
            exit_signal=processes.describe_signal(exit_record.signal)
            if exit_record and alive
            else None,
            error=None if outcome.stopped else f"processes left: {list(outcome.remaining)}",
            duration_s=round(outcome.duration_s, 3),
        )

    def _mark_stopped(self, name: str, *, for_restart: bool = False) -> None:
        """Persist that a user stopped the task, so no monitor in any process revives it.

        For a restart the mark says so instead: a monitor completes a restart whose process
        died before starting the task again.
        """
        self.store.mutate(
            name,
            lambda r: r.model_copy(
                update={
                    "manually_stopped": not for_restart,
                    "restart_requested": for_restart,
                    "stopping": True,
                    "stopping_pid": os.getpid(),
                    "restart_at": None,
                    "failed": None,
                    "handled_run": r.runs,
                }
            ),
        )

    def _settle_restart(self, names: Iterable[str]) -> None:
        """Drop this process's restart marks of tasks its start did not relaunch."""
        me = os.getpid()

        def settle(record: TaskRecord) -> TaskRecord:
            if not (record.restart_requested and record.stopping_pid == me):
                return record
            return record.model_copy(
                update={"restart_requested": False, "stopping": False, "stopping_pid": None}
            )

        for name in names:
            self.store.mutate(name, settle)

    def _interrupter(self, pane: Pane | None) -> Callable[[], Awaitable[None]]:
        async def interrupt() -> None:
            if pane is not None and not pane.dead:
                await self.tmux.interrupt(pane.pane_id)

        return interrupt

    async def kill(self, tasks: Sequence[str], *, cause: Cause | None = None) -> ActionResult:
        """SIGKILL every process of the tasks at once and remove their windows."""
        if not tasks:
            raise InvalidArgument("kill needs at least one task name")
        cause = cause or self.cause
        names = self._names(tasks)
        snap = await self.tmux.snapshot()
        results: dict[str, TaskResult] = {}

        async def kill_one(name: str) -> None:
            pane = snap.panes.get(name)
            self._mark_stopped(name)
            with anyio.CancelScope(shield=True):
                outcome = await processes.kill_tree(
                    pane.pid if pane is not None and not pane.dead else None, self.task_id(name)
                )
                if pane is not None:
                    try:
                        await self.tmux.kill_window(pane.window_id)
                    except TaskmuxError as exc:
                        log.debug("kill-window %s: %s", pane.window_id, exc)
                self.store.update(name, stopping=False, pid=None, pane_id=None)
            self.events.record(EventType.KILLED, cause, name, signal="SIGKILL")
            results[name] = TaskResult(
                name=name,
                ok=outcome.stopped,
                action="killed",
                state=TaskState.STOPPED,
                error=None if outcome.stopped else f"processes left: {list(outcome.remaining)}",
                duration_s=round(outcome.duration_s, 3),
            )

        async with anyio.create_task_group() as group:
            for name in names:
                group.start_soon(kill_one, name)
        ordered = [results[name] for name in names]
        return ActionResult(ok=all(r.ok for r in ordered), tasks=ordered)

    async def restart(
        self,
        tasks: Sequence[str] = (),
        *,
        wait: bool = True,
        timeout: float = 60.0,
        cause: Cause | None = None,
        progress: Progress | None = None,
    ) -> ActionResult:
        """Stop then start tasks (all running ones by default); clears manual-stop marks."""
        if tasks:
            names = self._names(tasks)
        else:
            snap = await self.tmux.snapshot()
            names = [
                name
                for name in self.config.tasks
                if (pane := snap.panes.get(name)) is not None and not pane.dead
            ]
            if not names:
                return ActionResult(ok=True, tasks=[], message="no task is running")
        try:
            stopped = await self.stop(names, cause=cause, for_restart=True)
            failures = [r for r in stopped.tasks if not r.ok]
            if failures:
                return ActionResult(ok=False, tasks=stopped.tasks, message=_summary(failures))
            started = await self.start(
                names, wait=wait, timeout=timeout, cause=cause, progress=progress
            )
        finally:
            with anyio.CancelScope(shield=True):
                self._settle_restart(names)
        if wait:
            for result in started.tasks:
                if result.ok and not result.log_tail:
                    result.log_tail = self.logs.last_run_lines(result.name, RESTART_TAIL_LINES)
        return started

    # ---------------------------------------------------------------- reading

    async def inspect(self, name: str) -> InspectResult:
        """Everything known of one task."""
        task = self.config.task(name)
        snap = await self.tmux.snapshot()
        pane = snap.panes.get(name)
        record = self.store.get(name)
        alive = pane is not None and not pane.dead
        root_pid = pane.pid if alive and pane else None
        tree = await anyio.to_thread.run_sync(
            lambda: processes.process_tree(root_pid, self.task_id(name))
        )
        last_exit = None
        if pane is not None and pane.dead:
            last_exit = ExitInfo(
                code=pane.exit_status,
                signal=processes.describe_signal(pane.exit_signal),
                time=_stamp(pane.dead_time),
                expected=record.stopping or record.manually_stopped,
            )
        elif record.last_exit is not None:
            last_exit = ExitInfo(
                code=record.last_exit.code,
                signal=processes.describe_signal(record.last_exit.signal),
                time=_stamp(record.last_exit.at),
                expected=record.last_exit.expected,
            )
        return InspectResult(
            status=self._task_status(name, record, pane),
            config=task.model_dump(mode="json", exclude_defaults=True),
            window_id=pane.window_id if pane else None,
            pane_id=pane.pane_id if pane else None,
            processes=[
                ProcessEntry(
                    pid=p.pid, ppid=p.ppid, name=p.name, cmdline=p.cmdline[:300], status=p.status
                )
                for p in tree[:50]
            ],
            last_exit=last_exit,
            health_history=[
                ProbeReport(
                    name=name,
                    healthy=c.healthy,
                    method=c.method,
                    detail=c.detail,
                    duration_ms=round(c.duration_ms, 1),
                )
                for c in record.checks
            ],
            total_restarts=record.total_restarts,
            runs=record.runs,
            log_path=str(self.logs.path(name)),
            log_tail=self.logs.last_run_lines(name, LOG_TAIL_LINES),
            recent_events=self.events.read(task=name, limit=INSPECT_EVENTS).events,
        )

    def read_logs(
        self, task: str | None = None, *, lines: int = 100, since: str | None = None
    ) -> LogsResult:
        """The last lines of one task, or of all tasks interleaved by time."""
        names = self._names([task]) if task else list(self.config.tasks)
        return self.logs.tail(names, lines=lines, since=since)

    def grep(
        self,
        pattern: str,
        tasks: Sequence[str] = (),
        *,
        context: int = 2,
        ignore_case: bool = False,
        since: str | None = None,
        max_matches: int = 100,
    ) -> GrepResult:
        """Search task logs (rotated files included) for a regular expression."""
        names = self._names(tasks) if tasks else list(self.config.tasks)
        return self.logs.grep(
            pattern,
            names,
            context=context,
            ignore_case=ignore_case,
            since=since,
            max_matches=max_matches,
        )

    def read_events(
        self, task: str | None = None, *, since: str | None = None, limit: int = 50
    ) -> EventsResult:
        """Recent events of the project (or one task), newest last."""
        if task is not None:
            self._names([task])
        return self.events.read(task=task, since=since, limit=limit)

    def record_event(
        self, event: EventType, cause: Cause, task: str | None, **details: object
    ) -> EventRecord:
        """Record an event on behalf of a face or the monitor."""
        return self.events.record(event, cause, task, **details)


def _exit_text(seen: Observed) -> str:
    if seen.exit_signal:
        return f"killed by {seen.exit_signal}"
    return f"exited with status {seen.exit_code}"


def _summary(results: Iterable[TaskResult]) -> str:
    parts = [f"{r.name}: {r.error or r.state.value}" for r in results if not r.ok]
    return "; ".join(parts)


__all__ = ["Observed", "Supervisor", "is_one_shot", "observe"]
