"""The facade: the one way into a project's tasks, for every face and for the monitor.

A `Project` owns the config in force (the last valid one, kept on disk too, so a broken
taskmux.toml never hides or strands running tasks), the task records and their locks, the
backend, logs and events. Every operation that changes a task takes that task's lock, so
actions from any number of CLIs, MCP servers, bridges and monitors on one task are serialized.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio

from . import interactive, lifecycle, processes, readiness, records
from .backend import Launch, Pane, Snapshot
from .clock import SYSTEM_CLOCK, Clock
from .coalesce import Batched
from .config import Condition, ProjectConfig, load_config
from .envfiles import load_env_files
from .errors import (
    ConfigError,
    ConfigProblem,
    HookFailed,
    InvalidArgument,
    StateWriteError,
    TaskmuxError,
    TmuxError,
)
from .events import Cause, EventLog, EventType
from .hooks import run_hook
from .lease import read_lease
from .locks import FileLock
from .logs import LogStore
from .models import (
    ActionResult,
    EventsResult,
    ExitInfo,
    GrepResult,
    HealthResult,
    InspectResult,
    LogsResult,
    MonitorInfo,
    ProbeReport,
    ProcessEntry,
    ScreenResult,
    SendResult,
    StatusResult,
    TaskResult,
    TaskState,
    TaskStatus,
    WaitResult,
)
from .ports import PortBook
from .records import Phase, RecordStore, StopKind, TaskRecord, observe
from .redaction import Redactor, expand_ports, looks_secret
from .state import ProjectPaths, discover_config, find_state_folder, state_root, write_atomic
from .tmux import TmuxBackend

log = logging.getLogger("taskmux")

MONITOR_WINDOW = "_monitor"
LOCK_WAIT_S = 60.0
SPAWN_WAIT_S = 10.0
RESTART_TAIL_LINES = 10
INSPECT_EVENTS = 6
HOSTED_MONITOR_ENV = "TASKMUX_HOSTED_MONITOR"
Progress = Callable[[str], Awaitable[None]]


def _stamp(epoch: float | None) -> datetime | None:
    return datetime.fromtimestamp(epoch, UTC) if epoch is not None else None


def hosted_monitor_wanted(environ: Mapping[str, str]) -> bool:
    """Whether starting a task also keeps a monitor window in the project's session."""
    return environ.get(HOSTED_MONITOR_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def _summary(results: Iterable[TaskResult]) -> str:
    return "; ".join(f"{r.name}: {r.error or r.state.value}" for r in results if not r.ok)


def _stat_stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


class Project:
    """Operations on one project's tasks; every face and the monitor call these."""

    def __init__(
        self,
        config_path: Path,
        *,
        host: str = "cli",
        cause: Cause = Cause.USER,
        socket_name: str | None = None,
        environ: Mapping[str, str] | None = None,
        clock: Clock = SYSTEM_CLOCK,
        hosted_monitor: bool | None = None,
    ) -> None:
        self.config_path = config_path
        self.host = host
        self.cause = cause
        self.clock = clock
        self._hosted_seen = False  # the hosted monitor ran at the last launch's snapshot
        self._environ = dict(os.environ if environ is None else environ)
        self.hosted_monitor = (
            hosted_monitor_wanted(self._environ) if hosted_monitor is None else hosted_monitor
        )
        # taskmux run from inside a task must not mark the tmux server it may start as that task.
        os.environ.pop(processes.ENV_MARKER, None)
        self.socket_name = socket_name
        self.config_error: ConfigError | None = None
        self._stamp = _stat_stamp(config_path)
        try:
            config = load_config(config_path)
        except ConfigError as exc:
            config = self._saved_config(config_path, exc)
            self.config_error = exc
        self._install(config)
        if self.config_error is None:
            self._save_config()

    @classmethod
    def open(
        cls,
        *,
        project: str | Path | None = None,
        config: str | Path | None = None,
        cwd: Path | None = None,
        **options: Any,
    ) -> Project:
        """Find taskmux.toml (see `config.discover_config`) and open its project."""
        return cls(discover_config(project=project, config=config, cwd=cwd), **options)

    # ---------------------------------------------------------------- config

    def _saved_config(self, path: Path, error: ConfigError) -> ProjectConfig:
        folder = find_state_folder(path.parent, self._environ)
        if folder is not None:
            with contextlib.suppress(OSError, ValueError):
                saved = ProjectConfig.model_validate_json((folder / "config.json").read_bytes())
                if saved.config_path == path:
                    return saved
        raise error

    def _install(self, config: ProjectConfig) -> None:
        self._config = config
        self.paths = ProjectPaths.for_project(config.name, config.root, self._environ)
        with contextlib.suppress(OSError):
            self.paths.ensure()
        self.key = self.paths.root.name
        self.records = RecordStore(self.paths.tasks, self.paths.locks)
        self.events = EventLog(self.paths.events)
        self.logs = LogStore(
            self.paths.logs, max_bytes=config.logs.max_bytes, max_files=config.logs.max_files
        )
        self.backend = TmuxBackend(
            self.key, config.name, self.socket_name, scripts=self.paths.scripts,
            config_path=config.config_path, scrollback=config.logs.scrollback,
        )  # fmt: skip
        self.ports = PortBook(self.paths.ports, self.key)
        self.ready_lines: dict[str, tuple[int, str]] = {}
        self._spawns: Batched[tuple[Launch, Snapshot | None], Pane] = Batched(self._spawn_batch)
        self._redactor: tuple[object, Redactor] | None = None

    def log_pipe(self, name: str, run: int, *, resume: bool = False) -> str:
        """The pipe-pane command that writes run `run` of a task to its log (its rotation)."""
        task = self.config.task(name)
        return self.logs.pipe_command(
            name, run, resume=resume, max_bytes=task.log_max_bytes, max_files=task.log_max_files
        )

    def _save_config(self) -> None:
        with contextlib.suppress(OSError):
            write_atomic(self.paths.saved_config, self._config.model_dump_json().encode())

    @property
    def environ(self) -> dict[str, str]:
        """The environment the project was opened with (state folder, tmux, env expansion)."""
        return dict(self._environ)

    @property
    def config(self) -> ProjectConfig:
        """The config in force: the file's when valid, else the last valid one."""
        return self._config

    def refresh(self) -> bool:
        """Load taskmux.toml again if it changed; True when the config in force changed."""
        stamp = _stat_stamp(self.config_path)
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        try:
            config = load_config(self.config_path)
        except ConfigError as exc:
            self.config_error = exc
            return False
        if config.name != self._config.name:
            problem = ConfigProblem(
                f"the project name changed from '{self._config.name}' to '{config.name}'; "
                "stop its tasks and start taskmux again to use the new name",
                key="name",
            )
            self.config_error = ConfigError(self.config_path, [problem])
            return False
        self.config_error = None
        changed = config != self._config
        self._config = config
        self.logs.max_bytes, self.logs.max_files = config.logs.max_bytes, config.logs.max_files
        self.backend.scrollback = config.logs.scrollback
        if changed:
            self._save_config()
        return changed

    def config_current(self) -> bool:
        """Whether the config in force was read from taskmux.toml as it is now."""
        return _stat_stamp(self.config_path) == self._stamp

    def valid_config(self) -> ProjectConfig:
        """The config for actions that run commands: refused while taskmux.toml is invalid."""
        if self.config_error is not None:
            raise ConfigError(
                self.config_error.path, self.config_error.problems
            ) from self.config_error
        return self._config

    def _names(self, tasks: Iterable[str], default: Iterable[str] | None = None) -> list[str]:
        wanted = list(tasks)
        if not wanted:
            return list(self.config.tasks if default is None else default)
        return self.config.require(wanted)

    # ---------------------------------------------------------------- parts

    def task_id(self, name: str) -> str:
        """The marker every process of a task carries in its environment."""
        return f"{self.key}/{name}"

    def port_of(self, name: str) -> int | None:
        """The task's port: its fixed one, or the one assigned to it (None until then)."""
        port = self.config.task(name).port
        if port == "auto":
            return self.ports.assigned().get(name)
        return port

    def all_ports(self) -> dict[str, int]:
        """Every task's port that is known (fixed, or assigned), from one read of the book."""
        book: dict[str, int] | None = None
        found = {}
        for name, task in self.config.tasks.items():
            if task.port == "auto":
                book = self.ports.assigned() if book is None else book
                if name in book:
                    found[name] = book[name]
            elif task.port is not None:
                found[name] = task.port
        return found

    async def assign_ports(self) -> dict[str, int]:
        """Give every `port = "auto"` task of the project its port, if it has none yet."""
        auto = [n for n, t in self.config.tasks.items() if t.port == "auto"]
        if not auto:
            return {}
        fixed = [t.port for t in self.config.tasks.values() if isinstance(t.port, int)]
        try:
            return await self.ports.assign(auto, reserved=fixed)
        except OSError as exc:
            raise StateWriteError(f"cannot assign ports (in {self.paths.ports}): {exc}") from exc

    def port_env(self) -> dict[str, str]:
        """TASKMUX_PORT_<TASK> for every task that has a port."""
        return {
            "TASKMUX_PORT_" + name.upper().replace("-", "_"): str(port)
            for name, port in self.all_ports().items()
        }

    def health_url_of(self, name: str) -> str | None:
        """The task's health_url with $PORT and ${TASKMUX_PORT_<TASK>} filled in."""
        url = self.config.task(name).health_url
        if url is None:
            return None
        ports = self.port_env()
        own = ports.get("TASKMUX_PORT_" + name.upper().replace("-", "_"))
        if own is not None:
            ports["PORT"] = own
        return expand_ports(url, ports)

    def verdict_tail(self, name: str, n: int) -> list[str]:
        """The last n lines of the task's current run for a verdict, its health probes left out."""
        url = self.health_url_of(name) if name in self.config.tasks else None
        return self.logs.verdict_tail(name, n, url)

    def env_file_values(self, name: str) -> tuple[dict[str, str], list[str]]:
        """The variables the task's env files give it, and what is wrong with those files."""
        return load_env_files(self.config.env_files(name), self._environ)

    def task_env(self, name: str, *, marked: bool = False) -> dict[str, str]:
        """The task's extra environment, lowest precedence first: env files, ports, `env`.

        marked: for a launch, which also carries the task marker and refuses a broken env file.
        """
        task = self.config.task(name)
        from_files, problems = self.env_file_values(name)
        if problems and marked:
            raise ConfigError(self.config_path, [ConfigProblem(p, task=name, key="env_file")
                                                 for p in problems])  # fmt: skip
        env = {**from_files, **self.port_env()}
        port = self.port_of(name)
        if port is not None:
            env["PORT"] = str(port)
        env |= {"TASKMUX_PROJECT": self.config.name, "TASKMUX_TASK": name,
                processes.CHECKOUT_ENV: str(self.config.root), **task.env}  # fmt: skip
        if marked:
            env[processes.ENV_MARKER] = self.task_id(name)
        return env

    def redactor(self) -> Redactor:
        """What hides this project's secrets from agents (rebuilt when an env file changes)."""
        files = sorted({f for name in self.config.tasks for f in self.config.env_files(name)})
        key = (id(self._config), tuple((f, _stat_stamp(f)) for f in files))
        if self._redactor is None or self._redactor[0] != key:
            self._redactor = (key, Redactor(self.secrets()))
        return self._redactor[1]

    def secrets(self) -> dict[str, str]:
        """Values agents must not read: everything from env files, and secret-looking `env`."""
        found: dict[str, str] = {}
        for name, task in self.config.tasks.items():
            found |= self.env_file_values(name)[0]
            found |= {k: v for k, v in task.env.items() if looks_secret(k)}
        return found

    def task_lock(self, name: str, what: str) -> FileLock:
        """The lock whose holder alone may change the task (start, stop, restart, kill)."""
        return FileLock(self.paths.locks / f"task-{name}.lock", f"{what}, {self.host}")

    async def _locked(
        self, name: str, what: str, timeout: float, progress: Progress | None
    ) -> FileLock | None:
        """The task's lock, waited for; None when the state folder cannot hold a lock."""
        lock = self.task_lock(name, what)
        try:
            await lock.acquire(timeout, task=name, waiting=progress)
        except OSError as exc:
            log.warning("cannot lock task %s: %s", name, exc)
            return None
        return lock

    async def spawn(self, spec: Launch, seen: Snapshot | None = None) -> Pane:
        """Create or respawn a window. The launches asked for at once in this process go to
        tmux together, in one call; across processes one batch at a time (a session is
        created once). seen: a snapshot the caller took holding the task's lock; when it shows
        the session, tmux is not read again before the launch."""
        return await self._spawns.submit((spec, seen))

    async def _spawn_batch(
        self, requests: list[tuple[Launch, Snapshot | None]]
    ) -> Sequence[Pane | BaseException]:
        specs = [spec for spec, _ in requests]
        guard = FileLock(self.paths.locks / "spawn.lock", f"opening the window of {specs[0].task}")
        try:
            with contextlib.suppress(OSError):  # a read-only state folder: go unguarded
                await guard.acquire(SPAWN_WAIT_S, task=specs[0].task)
            seen = {id(snap): snap for _, snap in requests}
            reused = next(iter(seen.values())) if len(seen) == 1 else None
            if reused is not None and reused.session is not None:
                results = await self._launch(specs, reused)
                retry = [i for i, result in enumerate(results) if isinstance(result, TmuxError)]
                if not retry:
                    return results
                # What changed since (a session or window gone): once more on tmux's word.
                again = await self._launch([specs[i] for i in retry], None)
                for i, result in zip(retry, again, strict=True):
                    results[i] = result
                return results
            return await self._launch(specs, None)
        except (TaskmuxError, OSError) as exc:
            return [exc] * len(specs)
        finally:
            guard.release()

    async def _launch(
        self, specs: list[Launch], snapshot: Snapshot | None
    ) -> list[Pane | TmuxError]:
        """Launch specs (holding the spawn lock) on that snapshot, or on one read now."""
        if snapshot is None:
            snapshot = await self.backend.snapshot()
        self._hosted_seen = snapshot.alive(MONITOR_WINDOW) is not None
        launched = snapshot
        return await anyio.to_thread.run_sync(
            lambda: self.backend.launch_many_sync(specs, launched)
        )

    async def ensure_hosted_monitor(self) -> None:
        """Keep a monitor in the project's own session, so policies outlive the agent."""
        if not self.hosted_monitor or self._hosted_seen:
            return  # the snapshot taken for the launch just before showed it running
        guard = FileLock(self.paths.locks / "hosted-monitor.lock", "starting the hosted monitor")
        try:
            if not guard.try_acquire():
                return
        except OSError:
            return
        try:
            snapshot = await self.backend.snapshot()
            if snapshot.alive(MONITOR_WINDOW) is not None:
                return
            argv = [
                sys.executable, "-m", "taskmux_mcp", "--config", str(self.config_path),
                "--tmux-socket", self.backend.socket_name, "monitor", "--hosted",
            ]  # fmt: skip
            env = {"TASKMUX_STATE_DIR": str(state_root(self._environ))}
            for key in ("PATH", "TMUX_TMPDIR", "HOME"):
                if key in self._environ:
                    env[key] = self._environ[key]
            spec = Launch(
                task=MONITOR_WINDOW,
                run=0,
                command="exec " + " ".join(_shell_quote(a) for a in argv),  # no shell left
                cwd=self.config.root,
                env=env,
                pipe=None,
            )
            await self.spawn(spec)
        except TaskmuxError as exc:
            log.warning("cannot start the hosted monitor: %s", exc)
        finally:
            guard.release()

    # ---------------------------------------------------------------- status

    def task_status(self, name: str, record: TaskRecord, pane: Pane | None) -> TaskStatus:
        """One task's line of a status listing."""
        task = self.config.task(name)
        seen = observe(task, record, pane)
        alive = seen.pid is not None
        uptime = None
        if alive and record.started_at:
            uptime = round(max(0.0, self.clock.now() - record.started_at), 1)
        return TaskStatus(
            name=name,
            state=seen.state,
            health=seen.health,
            pid=seen.pid,
            exit_code=seen.exit_code,
            exit_signal=seen.exit_signal,
            restarts=record.restarts,
            manually_stopped=record.manually_stopped,
            port=self.port_of(name),
            url=self.health_url_of(name),
            uptime_s=uptime,
            restart_policy=str(task.restart_policy),
            oneshot=task.oneshot,
            checked=task.has_check(),
            depends_on=list(task.depends_on),
            error=record.failed if record.phase is Phase.FAILED else None,
        )

    def status_sync(self, tasks: Sequence[str] = ()) -> StatusResult:
        """Every task's state, from one tmux call and the records (no lock is taken)."""
        names = self._names(tasks)
        snap = self.backend.snapshot_sync()
        warnings = [f"taskmux.toml: {w}" for w in self.config.warnings]
        rows = []
        for name in names:
            read = self.records.read(name)
            if read.problem:
                warnings.append(f"task '{name}': {read.problem} (the monitor repairs it)")
            rows.append(self.task_status(name, read.record, snap.panes.get(name)))
        return StatusResult(
            project=self.config.name,
            session=snap.session or self._expected_session(snap),
            config_path=str(self.config_path),
            monitor=self.monitor_info(),
            tasks=rows,
            config_error=str(self.config_error) if self.config_error else None,
            warnings=warnings,
        )

    async def status(self, tasks: Sequence[str] = ()) -> StatusResult:
        """Async form of status_sync (runs in a worker thread)."""
        return await anyio.to_thread.run_sync(lambda: self.status_sync(tasks))

    def _expected_session(self, snap: Snapshot) -> str:
        if snap.foreign_owner is None:
            return self.config.name
        return self.backend.fallback_session_name

    def monitor_info(self) -> MonitorInfo:
        """Which monitor leads the project, from its lease."""
        lease = read_lease(self.paths.monitor, self.clock.now())
        if lease is None or not lease.alive:
            return MonitorInfo(acting=False)
        return MonitorInfo(acting=True, pid=lease.pid, host=lease.host, since=_stamp(lease.since))

    # ---------------------------------------------------------------- start

    async def start(
        self,
        tasks: Sequence[str] = (),
        *,
        wait: bool = True,
        timeout: float = 60.0,
        cause: Cause | None = None,
        progress: Progress | None = None,
        force_port: bool = False,
        wait_for: str | None = None,
    ) -> ActionResult:
        """Start tasks (all auto_start ones by default) and their dependencies, in order.

        force_port: kill whoever holds a task's port (else only the task's own leftovers).
        wait_for: then wait for a line of each requested task's run matching this regex.
        """
        config = self.valid_config()
        began = time.monotonic()
        if wait_for is not None:
            interactive.compile_pattern(wait_for)
        auto = [name for name, task in config.tasks.items() if task.auto_start]
        requested = self._names(tasks, auto)
        result = await self._bring_up_all(
            requested, wait=wait, timeout=timeout, cause=cause or self.cause, progress=progress,
            force_port=force_port,
        )  # fmt: skip
        return await self._then_wait_for(result, requested, wait_for, began + timeout, progress)

    async def _then_wait_for(
        self,
        result: ActionResult,
        names: Sequence[str],
        pattern: str | None,
        deadline: float,
        progress: Progress | None,
    ) -> ActionResult:
        """The tasks' results once a line of each matched `pattern` (or why none did)."""
        by_name = {r.name: r for r in result.tasks}
        watched = [by_name[n] for n in names if n in by_name and by_name[n].ok]
        if pattern is None or not watched:
            return result

        async def one(task: TaskResult) -> None:
            left = max(0.1, deadline - time.monotonic())
            waited = await interactive.wait_for(
                self, task.name, pattern, timeout=left, progress=progress
            )
            task.matched_line = waited.line
            if not waited.ok:
                task.ok, task.error = False, waited.error
                task.log_tail = task.log_tail or waited.log_tail

        async with anyio.create_task_group() as group:
            for task in watched:
                group.start_soon(one, task)
        result.ok = all(r.ok for r in result.tasks)
        result.message = None if result.ok else _summary(result.tasks)
        return result

    async def _bring_up_all(
        self,
        requested: Sequence[str],
        *,
        wait: bool,
        timeout: float,
        cause: Cause,
        progress: Progress | None,
        held: dict[str, FileLock | None] | None = None,
        force_port: bool = False,
    ) -> ActionResult:
        if timeout <= 0 or timeout > 24 * 3600:
            raise InvalidArgument("timeout must be between 0 and 86400 seconds")
        config = self.config
        closure = config.with_dependencies(requested)
        needed = {
            dep
            for name in closure
            for dep in config.task(name).depends_on
            if config.condition(name, dep) is not Condition.STARTED
        }
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
        run = _StartRun(closure)
        results = run.results

        async def bring_up(name: str) -> None:
            try:
                results[name] = await self._bring_up(
                    name,
                    run,
                    wait=wait or name in needed,
                    deadline=deadline,
                    cause=cause,
                    progress=progress,
                    requested=name in requested,
                    held=held,
                    force_port=force_port,
                )
            except TaskmuxError as exc:
                results[name] = self._failure(name, str(exc))
            finally:
                run.launched[name].set()
                run.done[name].set()

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

    def _failure(self, name: str, error: str, **extra: Any) -> TaskResult:
        return TaskResult(
            name=name,
            ok=False,
            action="failed",
            state=TaskState.FAILED,
            error=error,
            log_tail=self.verdict_tail(name, readiness.LOG_TAIL_LINES),
            **extra,
        )

    async def _bring_up(
        self,
        name: str,
        run: _StartRun,
        *,
        wait: bool,
        deadline: float,
        cause: Cause,
        progress: Progress | None,
        requested: bool,
        held: dict[str, FileLock | None] | None,
        force_port: bool,
    ) -> TaskResult:
        task = self.config.task(name)
        began = time.monotonic()
        for dep in task.depends_on:
            why = await self._unmet(dep, self.config.condition(name, dep), run, deadline)
            if why is not None:
                return await self._blocked(name, why, dep, held)
        owned = held is not None and name in held
        lock = held.pop(name) if held is not None and owned else None
        if not owned:
            remaining = max(0.1, deadline - time.monotonic())
            lock = await self._locked(name, f"starting {name}", remaining, progress)
        notes = lifecycle.Notes()
        try:
            snap = await self.backend.snapshot()
            pane = snap.panes.get(name)
            if not requested and pane is not None and pane.dead and self._completed(name, pane):
                return TaskResult(
                    name=name, ok=True, action="already_done", state=TaskState.EXITED,
                    exit_code=0, duration_s=0.0,
                )  # fmt: skip
            if pane is not None and not pane.dead:
                action = "already_running"
                await lifecycle.adopt(self, name, pane, cause, notes)
                run.launches[name] = TaskResult(name=name, ok=True, action=action,
                                                state=TaskState.RUNNING, pid=pane.pid)  # fmt: skip
            else:
                if lock is None:
                    raise StateWriteError(
                        f"task '{name}' cannot be started: its lock cannot be created "
                        f"in {self.paths.locks} (state folder not writable)"
                    )
                action = "started"
                try:
                    pane = await lifecycle.launch(
                        self, name, cause, lock=lock, notes=notes, force_port=force_port, seen=snap
                    )
                except TaskmuxError as exc:
                    return self._failure(
                        name,
                        str(exc),
                        duration_s=round(time.monotonic() - began, 2),
                        warnings=notes.items,
                    )
                run.launches[name] = TaskResult(name=name, ok=True, action=action,
                                                state=TaskState.STARTING, pid=pane.pid)  # fmt: skip
                if progress is not None:
                    await progress(f"{name}: started (pid {pane.pid})")
        finally:
            if lock is not None:
                lock.release()
            run.launched[name].set()
        if not wait:
            seen = observe(task, self.records.get(name), pane)
            return TaskResult(
                name=name, ok=True, action=action, state=seen.state, health=seen.health,
                pid=pane.pid, warnings=notes.items,
            )  # fmt: skip
        result = await readiness.await_ready(self, name, action, deadline, began)
        result.warnings = notes.items + result.warnings
        if progress is not None:
            await progress(f"{name}: {result.state.value}")
        return result

    async def _unmet(
        self, dep: str, condition: Condition, run: _StartRun, deadline: float
    ) -> str | None:
        """Why dependency `dep` does not meet `condition` by the deadline; None once it does."""
        started = condition is Condition.STARTED
        result: TaskResult | None = None
        with anyio.move_on_after(max(0.0, deadline - time.monotonic())):
            if started:
                await run.launched[dep].wait()
                result = run.launches.get(dep)
            if result is None:  # not launched (done already, blocked, failed): its verdict
                await run.done[dep].wait()
                result = run.results.get(dep)
        if result is None:
            return f"timed out waiting for dependency '{dep}' to be {condition.value}"
        if not result.ok:
            return f"dependency '{dep}' did not come up: {result.error or result.state.value}"
        finished = result.state is TaskState.EXITED and result.exit_code == 0
        if condition is not Condition.COMPLETED or finished:
            return None
        began = time.monotonic()
        ended = await readiness.await_ready(self, dep, "completed", deadline, began, finish=True)
        if ended.ok:
            return None
        return f"dependency '{dep}' did not complete: {ended.error or ended.state.value}"

    async def _blocked(
        self, name: str, why: str, dep: str, held: dict[str, FileLock | None] | None
    ) -> TaskResult:
        if held is not None and name in held:
            # A restart stopped it and cannot start it again: say so in its record.
            notes = lifecycle.Notes()
            await lifecycle.change(
                self, name, lambda r: _give_up_restart(r, self.cause, why), notes
            )
        pane = (await self.backend.snapshot()).panes.get(name)
        seen = observe(self.config.task(name), self.records.get(name), pane)
        return TaskResult(
            name=name, ok=False, action="not_started", state=seen.state, error=why, blocked_by=dep
        )

    def _completed(self, name: str, pane: Pane) -> bool:
        """A one-shot dependency whose last run succeeded: it is not run again for a dependent."""
        record = self.records.get(name)
        return (
            readiness.is_one_shot(self, name)
            and record.config_digest == lifecycle.task_digest(self.config.task(name))
            and pane.exit_status == 0
            and pane.exit_signal is None
            and not record.manually_stopped
            and record.phase is not Phase.FAILED
        )

    # ---------------------------------------------------------------- stop / kill

    def _stop_order(self, names: Sequence[str]) -> dict[str, list[str]]:
        """For each task, the tasks among names that depend on it (stopped before it)."""
        users: dict[str, list[str]] = {name: [] for name in names}
        for other in names:
            for dep in dict.fromkeys(self.config.task(other).depends_on):
                if dep in users and dep != other:
                    users[dep].append(other)
        return users

    async def stop(
        self,
        tasks: Sequence[str] = (),
        *,
        cause: Cause | None = None,
        progress: Progress | None = None,
    ) -> ActionResult:
        """Stop tasks gracefully (all by default), dependents before their dependencies."""
        cause = cause or self.cause
        names = self._names(tasks)
        hook_error = await self._project_hook("before_stop", cause)
        if hook_error is not None:
            failed = [self._failure(name, hook_error) for name in names]
            return ActionResult(ok=False, tasks=failed, message=hook_error)

        async def one(name: str) -> TaskResult:
            lock = await self._locked(name, f"stopping {name}", LOCK_WAIT_S, progress)
            try:
                return await lifecycle.stop(self, name, cause, kind=StopKind.MANUAL, lock=lock)
            finally:
                if lock is not None:
                    lock.release()

        results = await self._in_stop_order(names, one)
        await self._project_hook("after_stop", cause)
        return self._action_result(results)

    def stop_runs_hooks(self, tasks: Sequence[str] = ()) -> bool:
        """Whether stopping these tasks (all by default) runs a project or task stop hook."""
        config = self.config
        hooked = [config.hooks, *(config.tasks[n].hooks for n in tasks or config.tasks
                                  if n in config.tasks)]  # fmt: skip
        return any(h.before_stop or h.after_stop for h in hooked)

    async def down(
        self,
        *,
        cause: Cause | None = None,
        progress: Progress | None = None,
        release_ports: bool = True,
    ) -> ActionResult:
        """Stop every task, then remove the project's session (windows left, the hosted
        monitor, log writers) and release its assigned ports."""
        stopped = await self.stop((), cause=cause, progress=progress)
        warnings = list(stopped.warnings)
        snap = await self.backend.snapshot()
        if snap.session is not None:
            try:
                await self.backend.kill_session(snap.session)
            except TmuxError as exc:
                warnings.append(f"session {snap.session} could not be removed: {exc}")
        released = self.ports.release() if release_ports else []
        done = f"session {snap.session} removed" if snap.session else "no session was left"
        if released:
            done += "; assigned ports released: " + ", ".join(released)
        message = done if stopped.ok else f"{stopped.message}; {done}"
        return ActionResult(ok=stopped.ok, tasks=stopped.tasks, message=message, warnings=warnings)

    async def _in_stop_order(
        self, names: Sequence[str], one: Callable[[str], Awaitable[TaskResult]]
    ) -> list[TaskResult]:
        users = self._stop_order(names)
        done = {name: anyio.Event() for name in names}
        results: dict[str, TaskResult] = {}

        async def run(name: str) -> None:
            try:
                for other in users[name]:
                    await done[other].wait()
                results[name] = await one(name)
            except TaskmuxError as exc:
                results[name] = self._failure(name, str(exc))
            finally:
                done[name].set()

        async with anyio.create_task_group() as group:
            for name in names:
                group.start_soon(run, name)
        return [results[name] for name in names]

    async def _project_hook(self, hook: str, cause: Cause) -> str | None:
        config = self.config
        try:
            await run_hook(
                hook,
                config.hooks.get(hook),
                task=None,
                cwd=config.root,
                env={"TASKMUX_PROJECT": config.name},
            )
        except HookFailed as exc:
            self.events.record(EventType.HOOK_FAILED, cause, None, hook=hook, error=str(exc))
            return str(exc)
        return None

    @staticmethod
    def _action_result(results: list[TaskResult]) -> ActionResult:
        ok = all(r.ok for r in results)
        return ActionResult(ok=ok, tasks=results, message=None if ok else _summary(results))

    async def kill(
        self,
        tasks: Sequence[str],
        *,
        cause: Cause | None = None,
        progress: Progress | None = None,
    ) -> ActionResult:
        """SIGKILL every process of the tasks at once and remove their windows."""
        if not tasks:
            raise InvalidArgument("kill needs at least one task name")
        cause = cause or self.cause
        names = self._names(tasks)
        results: dict[str, TaskResult] = {}

        async def one(name: str) -> None:
            try:
                lock = await self._locked(name, f"killing {name}", LOCK_WAIT_S, progress)
            except TaskmuxError as exc:
                results[name] = self._failure(name, str(exc))
                return
            try:
                results[name] = await lifecycle.kill(self, name, cause, lock=lock)
            finally:
                if lock is not None:
                    lock.release()

        async with anyio.create_task_group() as group:
            for name in names:
                group.start_soon(one, name)
        return self._action_result([results[name] for name in names])

    async def restart(
        self,
        tasks: Sequence[str] = (),
        *,
        wait: bool = True,
        timeout: float = 60.0,
        cause: Cause | None = None,
        progress: Progress | None = None,
        force_port: bool = False,
        wait_for: str | None = None,
    ) -> ActionResult:
        """Stop then start tasks (all running ones by default); clears manual-stop marks.

        Each task's lock is held from its stop until its new run is launched; a restart asked
        for while another one of the same task was under way counts as done by that one.
        """
        self.valid_config()
        began = time.monotonic()
        if wait_for is not None:
            interactive.compile_pattern(wait_for)
        cause = cause or self.cause
        asked_at = self.clock.now()
        if tasks:
            names = self._names(tasks)
        else:
            snap = await self.backend.snapshot()
            names = [name for name in self.config.tasks if snap.alive(name) is not None]
            if not names:
                return ActionResult(ok=True, tasks=[], message="no task is running")
        order = [n for n in reversed(self.config.topo_order()) if n in names]
        held: dict[str, FileLock | None] = {}
        try:
            for name in order:  # one global order: two restarts never wait on each other
                held[name] = await self._locked(name, f"restarting {name}", LOCK_WAIT_S, progress)
            snap = await self.backend.snapshot()
            for name in [n for n in order if self._restarted_since(n, snap, asked_at)]:
                lock = held.pop(name)
                if lock is not None:
                    lock.release()
            fresh = [name for name in names if name in held]
            stopped = await self._in_stop_order(
                fresh,
                lambda name: lifecycle.stop(
                    self, name, cause, kind=StopKind.RESTART, lock=held[name]
                ),
            )
            failures = [r for r in stopped if not r.ok]
            if failures:
                return ActionResult(ok=False, tasks=stopped, message=_summary(failures))
            started = await self._bring_up_all(
                names, wait=wait, timeout=timeout, cause=cause, progress=progress, held=held,
                force_port=force_port,
            )  # fmt: skip
        finally:
            with anyio.CancelScope(shield=True):
                await self._settle_restarts(held)
        started = await self._then_wait_for(started, names, wait_for, began + timeout, progress)
        if wait or wait_for is not None:
            for result in started.tasks:
                if result.ok and not result.log_tail:
                    result.log_tail = self.verdict_tail(result.name, RESTART_TAIL_LINES)
        return started

    # ---------------------------------------------------------------- a task's terminal

    async def send(
        self, task: str, text: str, keys: Sequence[str] = (), *, enter: bool = False,
        cause: Cause | None = None,
    ) -> SendResult:  # fmt: skip
        """Type text, then keys, then Enter, into a running task's terminal."""
        return await interactive.send(self, task, text, keys, enter, cause or self.cause)

    async def screen(self, task: str, *, lines: int = interactive.MAX_SCREEN_LINES) -> ScreenResult:
        """The task's visible screen as plain text, with its cursor and size."""
        return await interactive.screen(self, task, lines)

    async def wait_for(
        self, task: str, pattern: str, *, timeout: float = 60.0, since: str | None = None,
        progress: Progress | None = None,
    ) -> WaitResult:  # fmt: skip
        """Wait for a line of the task's current run (or since `since`) matching `pattern`."""
        if timeout <= 0 or timeout > 24 * 3600:
            raise InvalidArgument("timeout must be between 0 and 86400 seconds")
        return await interactive.wait_for(
            self, task, pattern, timeout=timeout, since=since, progress=progress
        )

    def _restarted_since(self, name: str, snap: Snapshot, moment: float) -> bool:
        """Whether another restart or start launched the task after `moment`."""
        record = self.records.get(name)
        return (
            snap.alive(name) is not None
            and record.phase is Phase.UP
            and record.started_at is not None
            and record.started_at >= moment
        )

    async def _settle_restarts(self, held: dict[str, FileLock | None]) -> None:
        """Release the restart's locks; a task still waiting for its launch is marked failed."""
        for name, lock in list(held.items()):
            del held[name]
            record = self.records.get(name)
            if record.phase is Phase.STOPPING and record.stop_kind is StopKind.RESTART:
                notes = lifecycle.Notes()
                await lifecycle.change(self, name, _interrupted_restart(self.cause), notes)
            if lock is not None:
                lock.release()

    # ---------------------------------------------------------------- reading

    async def health(self, tasks: Sequence[str] = ()) -> HealthResult:
        """Run every requested task's checks now, concurrently (nothing is recorded)."""
        names = self._names(tasks)
        snap = await self.backend.snapshot()
        reports: dict[str, ProbeReport] = {}

        async def one(name: str) -> None:
            pane = snap.alive(name)
            outcome = await readiness.probe(self, name)
            if outcome is None:
                detail = f"no check configured; process {'alive' if pane else 'not running'}"
                if pane is not None:
                    detail += f" (pid {pane.pid})"
                reports[name] = ProbeReport(
                    name=name, healthy=pane is not None, method="process", detail=detail,
                    duration_ms=0.0,
                )  # fmt: skip
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

    async def inspect(self, name: str) -> InspectResult:
        """Everything known of one task."""
        return await anyio.to_thread.run_sync(lambda: self.inspect_sync(name))

    def inspect_sync(self, name: str) -> InspectResult:
        """Blocking form of inspect."""
        task = self.config.task(name)
        pane = self.backend.snapshot_sync().panes.get(name)
        record = self.records.get(name)
        root_pid = pane.pid if pane is not None and not pane.dead else None
        tree = processes.process_tree(root_pid, self.task_id(name))
        last_exit = None
        if pane is not None and pane.dead:
            last_exit = ExitInfo(
                code=pane.exit_status,
                signal=processes.describe_signal(pane.exit_signal),
                time=_stamp(pane.dead_time),
                expected=record.handled_run >= record.run and pane.stop_mark is not None,
            )
        elif record.last_exit is not None:
            last_exit = ExitInfo(
                code=record.last_exit.code,
                signal=processes.describe_signal(record.last_exit.signal),
                time=_stamp(record.last_exit.at),
                expected=record.last_exit.expected,
            )
        return InspectResult(
            status=self.task_status(name, record, pane),
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
            runs=record.run,
            log_path=str(self.logs.path(name)),
            log_tail=self.logs.last_run_lines(name, readiness.LOG_TAIL_LINES),
            recent_events=self.events.read(task=name, limit=INSPECT_EVENTS).events,
        )

    def logs_sync(
        self,
        tasks: Sequence[str] = (),
        *,
        lines: int = 100,
        since: str | None = None,
        before: str | None = None,
    ) -> LogsResult:
        """The last lines of some tasks (all by default), interleaved by time, before a cursor."""
        return self.logs.tail(self._names(tasks), lines=lines, since=since, before=before)

    async def read_logs(
        self,
        tasks: Sequence[str] = (),
        *,
        lines: int = 100,
        since: str | None = None,
        before: str | None = None,
    ) -> LogsResult:
        """Async form of logs_sync (runs in a worker thread)."""
        return await anyio.to_thread.run_sync(
            lambda: self.logs_sync(tasks, lines=lines, since=since, before=before)
        )

    def grep_sync(
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
        return self.logs.grep(
            pattern,
            self._names(tasks),
            context=context,
            ignore_case=ignore_case,
            since=since,
            max_matches=max_matches,
        )

    async def grep(self, pattern: str, tasks: Sequence[str] = (), **options: Any) -> GrepResult:
        """Async form of grep_sync (runs in a worker thread)."""
        return await anyio.to_thread.run_sync(lambda: self.grep_sync(pattern, tasks, **options))

    def events_sync(
        self, tasks: Sequence[str] = (), *, since: str | None = None, limit: int = 50
    ) -> EventsResult:
        """Recent events of the project (or some tasks), newest last."""
        wanted = self.config.require(tasks) if tasks else None
        return self.events.read(since=since, limit=limit, tasks=wanted)

    async def read_events(
        self, tasks: Sequence[str] = (), *, since: str | None = None, limit: int = 50
    ) -> EventsResult:
        """Async form of events_sync (runs in a worker thread)."""
        return await anyio.to_thread.run_sync(
            lambda: self.events_sync(tasks, since=since, limit=limit)
        )


def _interrupted_restart(cause: Cause) -> Callable[[TaskRecord], TaskRecord]:
    why = "the restart stopped it and was interrupted before starting it again"
    return lambda record: _give_up_restart(record, cause, why)


def _give_up_restart(record: TaskRecord, cause: Cause, why: str) -> TaskRecord:
    if record.phase is Phase.STOPPING and record.stop_kind is StopKind.RESTART:
        return records.not_restarted(record, cause=cause, reason=why)
    return record


def _shell_quote(word: str) -> str:
    import shlex

    return shlex.quote(word)


@dataclass
class _StartRun:
    """What the tasks of one start know of each other: launched, done, their results."""

    closure: Sequence[str]
    launched: dict[str, anyio.Event] = field(init=False)
    done: dict[str, anyio.Event] = field(init=False)
    launches: dict[str, TaskResult] = field(default_factory=dict)
    results: dict[str, TaskResult] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.launched = {name: anyio.Event() for name in self.closure}
        self.done = {name: anyio.Event() for name in self.closure}


class ProjectSlot:
    """A long-lived face's hold on its project: opens it once it exists and is usable."""

    def __init__(self, opener: Callable[[], Project]) -> None:
        self._opener = opener
        self._project: Project | None = None
        self.error: TaskmuxError | None = None

    def get(self) -> Project:
        """The project, refreshed; raises what keeps it from being opened."""
        if self._project is None:
            try:
                self._project = self._opener()
            except TaskmuxError as exc:
                self.error = exc
                raise
        self._project.refresh()
        self.error = self._project.config_error
        return self._project

    @property
    def current(self) -> Project | None:
        """The project, if it was ever opened."""
        return self._project
