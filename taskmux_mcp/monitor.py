"""The background loop: observe every task, apply restart policies, run checks, reload config."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import anyio
import psutil

from .config import ProjectConfig, load_config
from .errors import ConfigError, TaskmuxError
from .events import Cause, EventType
from .models import Health
from .policy import Action, Counters, Decision, Observation, Seen, decide, is_stable
from .processes import is_running
from .state import ExitRecord, MonitorLease, TaskRecord, monitor_lock_path, write_atomic
from .supervisor import Supervisor

log = logging.getLogger("taskmux.monitor")

POLL_S = 0.25
SWEEP_S = 2.0
STANDBY_POLL_S = 0.5
IDLE_CHECK_POLLS = 10
LAUNCH_S = 10.0
CONFIG_DEBOUNCE_S = 0.3
CHANGE_EVENTS = frozenset({"modified", "created", "moved", "deleted", "closed"})


class MonitorLock:
    """The per-project lock whose holder is the acting monitor (released by the kernel on death)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def try_acquire(self) -> bool:
        """Take the lock if nobody holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def release(self) -> None:
        """Let another monitor act."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class ConfigWatcher:
    """Notices changes of taskmux.toml (in place, by rename, delete + create) via watchdog."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.changed_at: float | None = None
        self._observer: object | None = None
        self._lock = threading.Lock()

    def _touch(self) -> None:
        with self._lock:
            self.changed_at = time.monotonic()

    def start(self) -> None:
        """Begin watching the config's folder."""
        from watchdog.events import FileSystemEvent, FileSystemEventHandler
        from watchdog.observers import Observer

        target = self.path.name
        watcher = self

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event: FileSystemEvent) -> None:
                if event.event_type not in CHANGE_EVENTS:
                    return  # reads of the file (opened, closed without writing) change nothing
                paths = [event.src_path, getattr(event, "dest_path", "")]
                if any(os.path.basename(str(p)) == target for p in paths if p):
                    watcher._touch()

        observer = Observer()
        observer.schedule(Handler(), str(self.path.parent), recursive=False)
        observer.daemon = True
        observer.start()
        self._observer = observer

    def stop(self) -> None:
        """Stop watching."""
        observer = self._observer
        if observer is not None:
            observer.stop()  # type: ignore[attr-defined]
            self._observer = None

    def settled(self) -> bool:
        """True once a change happened and the file has been quiet for the debounce time."""
        with self._lock:
            if self.changed_at is None or time.monotonic() - self.changed_at < CONFIG_DEBOUNCE_S:
                return False
            self.changed_at = None
            return True


class Monitor:
    """Applies the project's restart policies; exactly one monitor per project acts at a time."""

    def __init__(
        self,
        supervisor: Supervisor,
        *,
        host: str,
        watch_config: bool = True,
        exit_when_idle: bool = False,
    ) -> None:
        self.sup = supervisor
        self.host = host
        self.watch_config = watch_config
        self.exit_when_idle = exit_when_idle
        self.acting = False
        self._lock = MonitorLock(monitor_lock_path(supervisor.paths))
        self._next_check: dict[str, float] = {}
        self._checking: set[str] = set()
        self._restarting: set[str] = set()
        self._known_pids: dict[str, int] = {}
        self._due: float | None = None
        self._records_stamp = 0
        self._invalid_config: str | None = None
        self._config_digest: str | None = self._digest(supervisor.config.config_path)
        self._stop = anyio.Event()

    @property
    def cause(self) -> Cause:
        """Cause recorded for the monitor's own actions."""
        return Cause.POLICY

    async def run(self) -> None:
        """Stand by until the lock is ours, then act until cancelled or idle."""
        try:
            polls = 0
            while not self._lock.try_acquire():
                polls += 1
                if self.exit_when_idle and polls % IDLE_CHECK_POLLS == 0 and await self._idle():
                    return
                await anyio.sleep(STANDBY_POLL_S)
            self.acting = True
            lease = MonitorLease(pid=os.getpid(), host=self.host, since=time.time())
            write_atomic(self.sup.paths.root / "monitor.json", lease.model_dump_json().encode())
            self.sup.record_event(
                EventType.MONITOR_STARTED, Cause.POLICY, None, pid=os.getpid(), host=self.host
            )
            await self._act()
        finally:
            self.acting = False
            self._lock.release()

    async def _idle(self) -> bool:
        """True when no task of the project has a window and no restart is scheduled."""
        snap = await self.sup.tmux.snapshot()
        if any(name in snap.panes for name in self.sup.config.tasks):
            return False
        return all(self.sup.store.get(name).restart_at is None for name in self.sup.config.tasks)

    @staticmethod
    def _digest(path: Path) -> str | None:
        try:
            return hashlib.sha256(path.read_bytes()).hexdigest()
        except OSError:
            return None

    def stop(self) -> None:
        """Ask the loop to end."""
        self._stop.set()

    async def _act(self) -> None:
        watcher = ConfigWatcher(self.sup.config.config_path) if self.watch_config else None
        if watcher is not None:
            watcher.start()
        try:
            async with anyio.create_task_group() as group:
                group.start_soon(self._until_stopped, group.cancel_scope)
                last_sweep = 0.0
                while True:
                    now = time.monotonic()
                    try:
                        due = self._due is not None and time.time() >= self._due
                        if (
                            now - last_sweep >= SWEEP_S
                            or due
                            or self._records_changed()
                            or self._pid_vanished()
                        ):
                            last_sweep = now
                            if await self.sweep(group) and self.exit_when_idle:
                                group.cancel_scope.cancel()
                                return
                        self._schedule_checks(group)
                        if watcher is not None and watcher.settled():
                            await self.reload_config()
                    except Exception:
                        # Nothing a task, tmux or the config does may end the monitor.
                        log.exception("monitor pass failed; going on")
                        last_sweep = now
                    await anyio.sleep(POLL_S)
        finally:
            if watcher is not None:
                watcher.stop()

    async def _until_stopped(self, scope: anyio.CancelScope) -> None:
        await self._stop.wait()
        scope.cancel()

    def _records_changed(self) -> bool:
        """True when any process wrote a task record since the last look (a start, a stop)."""
        try:
            stamp = os.stat(self.sup.paths.tasks).st_mtime_ns
        except OSError:
            return False
        changed = stamp != self._records_stamp
        self._records_stamp = stamp
        return changed

    def _pid_vanished(self) -> bool:
        return any(not psutil.pid_exists(pid) for pid in self._known_pids.values())

    async def sweep(self, group: anyio.abc.TaskGroup) -> bool:
        """Observe every task once and act on what changed; True when the project is idle."""
        config = self.sup.config
        # Records first: a task launched after this read shows up as a newer run, never as
        # a pane that vanished.
        records = {name: self.sup.store.get(name) for name in config.tasks}
        snap = await self.sup.tmux.snapshot()
        now = time.time()
        self._known_pids = {}
        self._due = None
        idle = True
        for name, task in config.tasks.items():
            record = records[name]
            pane = snap.panes.get(name)
            alive = pane is not None and not pane.dead
            if alive and pane is not None and pane.pid:
                self._known_pids[name] = pane.pid
            if record.stopping and not is_running(record.stopping_pid):
                record = self._interrupted_stop(name, record, alive=alive)
                if record.restart_requested and name not in self._restarting:
                    idle = False
                    self._restarting.add(name)
                    group.start_soon(self._complete_restart, name)
                    continue
            if record.restart_at is not None:
                idle = False
                if now >= record.restart_at and name not in self._restarting:
                    self._restarting.add(name)
                    group.start_soon(self._restart, name)
                elif now < record.restart_at:
                    self._expect(record.restart_at)
                continue
            if alive:
                stable = is_stable(
                    alive=True,
                    has_check=task.has_check(),
                    healthy=record.health == Health.HEALTHY,
                    started_at=record.started_at,
                    healthy_since=record.healthy_since,
                    now=now,
                )
                if stable and record.restarts:
                    self.sup.store.update(name, restarts=0)
                continue
            if record.runs <= record.handled_run or record.stopping or name in self._restarting:
                continue
            if pane is None and record.pid is None and now - (record.started_at or 0) < LAUNCH_S:
                continue  # being launched right now by some process
            if pane is None:
                observation = Observation(Seen.VANISHED)
            else:
                observation = Observation(
                    Seen.EXITED, exit_code=pane.exit_status, exit_signal=pane.exit_signal
                )
            self.sup.record_event(
                EventType.EXITED,
                Cause.POLICY,
                name,
                exit_code=observation.exit_code,
                signal=self.sup_signal(observation.exit_signal),
                vanished=pane is None,
                run=record.runs,
            )
            decision = decide(task, Counters(record.manually_stopped, record.restarts), observation)
            self._apply(name, decision, record.runs, observation)
            if decision.action is Action.RESTART:
                idle = False
        return idle and not any(name in snap.panes for name in config.tasks)

    def _expect(self, moment: float) -> None:
        """Sweep again at moment (a scheduled restart)."""
        self._due = moment if self._due is None else min(self._due, moment)

    @staticmethod
    def sup_signal(signum: int | None) -> str | None:
        """A signal number as its name."""
        from .processes import describe_signal

        return describe_signal(signum)

    def _apply(self, name: str, decision: Decision, run: int, observation: Observation) -> None:
        now = time.time()
        last_exit = ExitRecord(
            code=observation.exit_code, signal=observation.exit_signal, at=now, expected=False
        )
        if decision.action is Action.RESTART:
            self.sup.store.update(
                name, handled_run=run, last_exit=last_exit, restart_at=now + decision.delay_s
            )
            self._expect(now + decision.delay_s)
            self.sup.record_event(
                EventType.RESTART_SCHEDULED,
                Cause.POLICY,
                name,
                delay_s=decision.delay_s,
                reason=decision.reason,
            )
        elif decision.action is Action.GIVE_UP:
            self.sup.store.update(
                name, handled_run=run, last_exit=last_exit, restart_at=None, failed=decision.reason
            )
            self.sup.record_event(EventType.GAVE_UP, Cause.POLICY, name, reason=decision.reason)
        else:
            self.sup.store.update(name, handled_run=run, last_exit=last_exit)

    def _interrupted_stop(self, name: str, record: TaskRecord, *, alive: bool) -> TaskRecord:
        """Settle the marks of a stop or restart whose process died before it finished."""
        if alive:
            # The stop never took effect: the task runs, and its policy applies again.
            handled = record.runs - 1 if record.restart_requested else record.handled_run
            log.warning("a stop of %s was interrupted; it keeps running", name)
            return self.sup.store.update(
                name,
                stopping=False,
                stopping_pid=None,
                restart_requested=False,
                handled_run=min(handled, record.handled_run),
            )
        if record.restart_requested:
            log.warning("a restart of %s was interrupted; completing it", name)
            return record
        return self.sup.store.update(name, stopping=False, stopping_pid=None)

    async def _complete_restart(self, name: str) -> None:
        try:
            await self.sup.launch(name, Cause.POLICY)
        except TaskmuxError as exc:
            self.sup.store.update(name, stopping=False, stopping_pid=None, restart_requested=False)
            self._launch_failed(name, str(exc))
        except Exception:
            log.exception("completing the restart of %s failed", name)
        finally:
            self._restarting.discard(name)

    async def _restart(self, name: str) -> None:
        try:
            await self._restart_now(name)
        except Exception:
            log.exception("restart of %s failed", name)
        finally:
            self._restarting.discard(name)

    async def _restart_now(self, name: str) -> None:
        record = self.sup.store.get(name)
        if record.restart_at is None or record.manually_stopped:
            return
        try:
            pane = await self.sup.launch(name, Cause.POLICY, automatic=True)
        except TaskmuxError as exc:
            self._launch_failed(name, str(exc))
            return
        if pane.pid:
            self._known_pids[name] = pane.pid

    def _launch_failed(self, name: str, error: str) -> None:
        record = self.sup.store.update(name, restart_at=None)
        record = self.sup.store.update(
            name, restarts=record.restarts + 1, total_restarts=record.total_restarts + 1
        )
        task = self.sup.config.task(name)
        decision = decide(
            task,
            Counters(record.manually_stopped, record.restarts),
            Observation(Seen.LAUNCH_FAILED),
        )
        reason = f"{error}; {decision.reason}"
        now = time.time()
        if decision.action is Action.RESTART:
            self.sup.store.update(name, restart_at=now + decision.delay_s, failed=None)
            self._expect(now + decision.delay_s)
            self.sup.record_event(
                EventType.RESTART_SCHEDULED,
                Cause.POLICY,
                name,
                delay_s=decision.delay_s,
                reason=reason,
            )
        else:
            self.sup.store.update(name, failed=reason)
            self.sup.record_event(EventType.GAVE_UP, Cause.POLICY, name, reason=reason)

    # ------------------------------------------------------------ health

    def _schedule_checks(self, group: anyio.abc.TaskGroup) -> None:
        now = time.monotonic()
        for name, task in self.sup.config.tasks.items():
            if not task.has_check() or name in self._checking or name not in self._known_pids:
                continue
            due = self._next_check.get(name, 0.0)
            if now < due:
                continue
            self._next_check[name] = now + task.health_interval
            self._checking.add(name)
            group.start_soon(self._check, name)

    async def _check(self, name: str) -> None:
        try:
            record = self.sup.store.get(name)
            if record.restart_at is not None or record.stopping:
                return
            before = record.health
            await self.sup.check(name, record, cause=Cause.HEALTH)
            after = self.sup.store.get(name)
            if after.health == Health.UNHEALTHY and before != Health.UNHEALTHY:
                await self._unhealthy(name, after.runs)
        except Exception:
            log.exception("health check of %s failed to run", name)
        finally:
            self._checking.discard(name)

    async def _unhealthy(self, name: str, run: int) -> None:
        record = self.sup.store.get(name)
        task = self.sup.config.task(name)
        decision = decide(
            task, Counters(record.manually_stopped, record.restarts), Observation(Seen.UNHEALTHY)
        )
        if decision.action is Action.NOTHING:
            return
        self._apply(name, decision, run, Observation(Seen.UNHEALTHY))
        await self.sup.terminate(name, Cause.HEALTH)

    # ------------------------------------------------------------ config

    async def reload_config(self) -> None:
        """Load taskmux.toml again and apply the difference; keep the old config when invalid."""
        old = self.sup.config
        digest = self._digest(old.config_path)
        if digest is not None and digest == self._config_digest:
            return
        self._config_digest = digest
        try:
            new = load_config(old.config_path)
        except ConfigError as exc:
            message = str(exc)
            if message != self._invalid_config:
                self._invalid_config = message
                self.sup.record_event(
                    EventType.CONFIG_INVALID,
                    Cause.CONFIG,
                    None,
                    errors=[str(p) for p in exc.problems],
                    path=str(old.config_path),
                )
            return
        self._invalid_config = None
        await apply_config(self.sup, old, new)


async def apply_config(sup: Supervisor, old: ProjectConfig, new: ProjectConfig) -> None:
    """Switch sup to new: stop removed tasks, restart changed running ones, start added ones."""
    if new.name != old.name:
        sup.record_event(
            EventType.CONFIG_INVALID,
            Cause.CONFIG,
            None,
            errors=["the project `name` changed; restart taskmux to use the new name"],
        )
        return
    removed = [name for name in old.tasks if name not in new.tasks]
    added = [name for name in new.tasks if name not in old.tasks]
    changed = [
        name for name in new.tasks if name in old.tasks and new.tasks[name] != old.tasks[name]
    ]
    if new == old:
        return
    if removed:
        await sup.stop(removed, cause=Cause.CONFIG)
        await sup.kill(removed, cause=Cause.CONFIG)
    sup.use_config(new)
    sup.record_event(
        EventType.CONFIG_RELOADED, Cause.CONFIG, None, changed=changed, added=added, removed=removed
    )
    snap = await sup.tmux.snapshot()
    running = [
        name for name in changed if (pane := snap.panes.get(name)) is not None and not pane.dead
    ]
    if running:
        await sup.restart(running, wait=False, cause=Cause.CONFIG)
    starting = [name for name in added if new.tasks[name].auto_start]
    if starting:
        await sup.start(starting, wait=False, cause=Cause.CONFIG)


def run_monitor_foreground(
    supervisor: Supervisor, *, host: str, exit_when_idle: bool = False
) -> int:
    """Run a monitor until SIGINT/SIGTERM (the `taskmux monitor` command)."""
    monitor = Monitor(supervisor, host=host, exit_when_idle=exit_when_idle)

    async def main() -> None:
        async with anyio.create_task_group() as group:
            group.start_soon(_signals, monitor.stop)
            await monitor.run()
            group.cancel_scope.cancel()

    with contextlib.suppress(KeyboardInterrupt):
        anyio.run(main)
    return 0


async def _signals(stop: Callable[[], None]) -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as received:
        async for _ in received:
            stop()
            return
