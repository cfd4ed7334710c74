"""The background loop: observe every task, apply restart policies, run checks, reload config.

One monitor leads a project at a time (`lease`); the others stand by. The leader's pass
(`step`) reads the records and one tmux snapshot without any lock, plans what each task
needs, and acts only after taking that task's lock without waiting (a task someone else is
acting on is looked at again on the next pass), checking its lead again, and re-reading the
task under the lock. All its waits go through the project's clock, so tests drive `step`
with a fake clock in milliseconds.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping
from enum import StrEnum
from pathlib import Path

import anyio
import anyio.abc

from . import lifecycle, readiness, records
from .backend import Pane, Snapshot
from .config import ProjectConfig, TaskConfig
from .control import serve_control
from .errors import StateWriteError, TaskBusy, TaskmuxError
from .events import Cause, EventType
from .lease import Lease
from .lifecycle import Notes, task_digest
from .locks import FileLock
from .models import Health
from .policy import (
    STABLE_AFTER_S,
    Action,
    Counters,
    Decision,
    Observation,
    Seen,
    backoff_delay,
    decide,
    is_stable,
)
from .processes import PidWatch, describe_signal
from .project import Project
from .records import ExitRecord, Phase, Read, StopKind, TaskRecord, interrupted_by
from .state import watch_file, watch_folder

log = logging.getLogger("taskmux.monitor")

SWEEP_S = 30.0  # the safety sweep, for what announces itself to no one (tmux's odd states)
IDLE_RECHECK_S = 5.0  # a monitor that ends when idle looks this often while no task runs
BUSY_RETRY_S = 0.5  # a task someone else was acting on is looked at again this soon
RESTART_LEAD_S = 0.1  # a restart takes its lock and scans this early; its process starts on time
STANDBY_RETRY_S = 0.5  # a standby that saw no leader but could not lead tries again this soon
STARTING_CHECK_S = 1.0  # a starting task's checks come at least this often
CONFIG_DEBOUNCE_S = 0.3
WRITER_GRACE_S = 2.0


class Need(StrEnum):
    """What a task needs from the monitor on this pass."""

    REPAIR = "repair its damaged record"
    ENDED = "deal with the end of its run"
    VANISHED = "deal with its vanished window"
    RESTART = "restart it"
    SETTLE = "settle an interrupted action"
    STABLE = "reset its restart count"
    ADOPT = "follow its live pane"
    REPIPE = "replace its log writer"


class ConfigWatcher:
    """Notices changes of taskmux.toml (in place, by rename, delete + create) via watchdog."""

    def __init__(self, path: Path, wakeup: Callable[[], None] | None = None) -> None:
        self.path = path
        self.changed_at: float | None = None
        self._stop_watch: Callable[[], None] | None = None
        self._lock = threading.Lock()
        self._wakeup = wakeup

    def _touch(self) -> None:
        with self._lock:
            self.changed_at = time.monotonic()
        if self._wakeup is not None:
            self._wakeup()

    def start(self) -> None:
        """Begin watching the config's folder."""
        self._stop_watch = watch_file(self.path, self._touch)

    def stop(self) -> None:
        """Stop watching."""
        if self._stop_watch is not None:
            self._stop_watch()
            self._stop_watch = None

    def settles_at(self) -> float | None:
        """When a pending change will have been quiet for the debounce time (monotonic)."""
        with self._lock:
            return None if self.changed_at is None else self.changed_at + CONFIG_DEBOUNCE_S

    def settled(self) -> bool:
        """True once a change happened and the file has been quiet for the debounce time."""
        with self._lock:
            if self.changed_at is None or time.monotonic() - self.changed_at < CONFIG_DEBOUNCE_S:
                return False
            self.changed_at = None
            return True


def _counters(record: TaskRecord) -> Counters:
    return Counters(record.manually_stopped, record.restarts)


class Monitor:
    """Applies the project's restart policies while it leads; stands by otherwise."""

    def __init__(
        self,
        project: Project,
        *,
        host: str,
        watch_config: bool = True,
        exit_when_idle: bool = False,
    ) -> None:
        self.project = project
        self.host = host
        self.watch_config = watch_config
        self.exit_when_idle = exit_when_idle
        self.lease = Lease(project.paths.monitor, host=host, clock=project.clock)
        self.acting = False
        self._handled: dict[str, int] = {}
        self._next_check: dict[str, float] = {}
        self._checking: set[str] = set()
        self._busy: set[str] = set()
        self._known_pids: dict[str, int] = {}
        self._pids = PidWatch()
        self._reported: dict[str, str] = {}
        self._due: float | None = None
        self._records_stamp = 0
        self._applied: ProjectConfig = project.config
        self._invalid_config: str | None = None
        self._stop = anyio.Event()
        self._sweep_now = True
        self._writers: dict[str, int] = {}  # task -> pid of its run's log writer
        self._replaced: set[int] = set()  # writers whose death was already dealt with
        self._group: anyio.abc.TaskGroup | None = None
        self._control: anyio.CancelScope | None = None

    def stop(self) -> None:
        """Ask the loop to end."""
        self._stop.set()

    # ------------------------------------------------------------ the loop (real time)

    async def run(self) -> None:
        """Lead when possible, stand by otherwise, until stopped (or idle, when asked)."""
        watcher = None
        if self.watch_config:
            watcher = ConfigWatcher(self.project.config_path, self._pids.wake)
        stops: list[Callable[[], None]] = []
        if watcher is not None:
            with contextlib.suppress(OSError):
                watcher.start()
        with contextlib.suppress(OSError, RuntimeError):  # unwatched: the safety sweep finds it
            self.project.paths.tasks.mkdir(parents=True, exist_ok=True)
            stops.append(watch_folder(self.project.paths.tasks, self._pids.wake))
            # A removed log folder: every running task needs a new writer.
            stops.append(
                watch_folder(self.project.paths.root, self._sweep_soon, name="logs", removals=True)
            )
        try:
            async with anyio.create_task_group() as group:
                self._group = group
                group.start_soon(self._until_stopped, group.cancel_scope)
                await self._loop(group, watcher)
                group.cancel_scope.cancel()
        finally:
            self._group = None
            self.acting = False
            if watcher is not None:
                watcher.stop()
            for stop in stops:
                stop()
            self._pids.close()
            self.lease.release()

    async def _loop(self, group: anyio.abc.TaskGroup, watcher: ConfigWatcher | None) -> None:
        """Each pass does what is due, then sleeps until something happens (a task's process
        ends, a task record or the config changes) or the next thing falls due (a lease
        renewal, a scheduled restart, a health check, the safety sweep)."""
        last_sweep = time.monotonic()
        while True:
            try:
                if self._take_lead():
                    now = time.monotonic()
                    if self._sweep_now or now - last_sweep >= SWEEP_S or self._triggered():
                        self._sweep_now = False
                        last_sweep = now
                        if await self.step(group) and self.exit_when_idle:
                            return
                    self._schedule_checks(group)
                    if watcher is not None and watcher.settled():
                        await self.reload_config()
                elif self.exit_when_idle and (
                    self._records_changed() or time.monotonic() - last_sweep >= IDLE_RECHECK_S
                ):
                    last_sweep = time.monotonic()
                    if await self._idle():
                        return
                self._pids.watch(self._watched())
            except Exception:
                # Nothing a task, tmux or the config does may end the monitor.
                log.exception("monitor pass failed; going on")
            await self._pids.wait(self._next_wake(last_sweep, watcher))

    def _sweep_soon(self) -> None:
        """Sweep at the next wake, and wake now (from any thread)."""
        self._sweep_now = True
        self._pids.wake()

    def _watched(self) -> list[int]:
        """The pids whose end wakes the loop: the tasks' while acting, else the leader's (so a
        standby takes over the moment it dies). A standby watches no task: what it knew is the
        leader's business now."""
        if self.acting:
            return [*self._known_pids.values(), *self._writers.values()]
        holder = self.lease.holder()
        return [holder[0]] if holder is not None and holder[0] is not None else []

    def _next_wake(self, last_sweep: float, watcher: ConfigWatcher | None) -> float:
        """Seconds until the next thing falls due."""
        clock = self.project.clock
        now, mono = clock.now(), time.monotonic()
        waits = [last_sweep + SWEEP_S - mono] if self.acting else []
        if self.exit_when_idle and not self.acting:
            waits.append(last_sweep + IDLE_RECHECK_S - mono)
        if self.acting:
            renew = self.lease.renew_at()
            waits += [renew - now] if renew is not None else []
            waits += [self._due - now] if self._due is not None else []
            check = self._next_check_at()
            waits += [check - clock.monotonic()] if check is not None else []
        else:
            holder = self.lease.holder()
            # Past the moment the leader's lease would go stale: a frozen leader is replaced.
            waits.append(holder[1] - now + 0.01 if holder is not None else STANDBY_RETRY_S)
        settles = watcher.settles_at() if watcher is not None else None
        waits += [settles - mono] if settles is not None else []
        return max(0.0, min(waits))

    def _take_lead(self) -> bool:
        try:
            leading = self.lease.try_lead()
        except OSError as exc:
            log.warning("cannot take the monitor lease: %s", exc)
            leading = False
        if leading and not self.acting:
            self.acting = True
            self._sweep_now = True
            self._serve_control()
            self.project.events.record(
                EventType.MONITOR_STARTED, Cause.POLICY, None, pid=os.getpid(), host=self.host
            )
        elif not leading and self.acting:
            self.acting = False
            if self._control is not None:
                self._control.cancel()
            self._known_pids = {}
            log.warning("this monitor no longer leads the project; standing by")
        return leading

    def _serve_control(self) -> None:
        """Answer the CLI's commands on the control socket while this monitor leads."""
        group = self._group
        if group is None:
            return
        self._control = scope = anyio.CancelScope()

        async def serve() -> None:
            with scope:
                try:
                    await serve_control(self.project, group)
                except Exception as exc:  # the CLI runs its commands itself meanwhile
                    log.warning("cannot serve the control socket: %s", exc)

        group.start_soon(serve)

    def _triggered(self) -> bool:
        due = self._due is not None and self.project.clock.now() >= self._due
        return due or self._records_changed() or self._pid_vanished()

    async def _until_stopped(self, scope: anyio.CancelScope) -> None:
        await self._stop.wait()
        scope.cancel()

    def _records_changed(self) -> bool:
        """True when any process wrote a task record since the last look (a start, a stop)."""
        try:
            stamp = os.stat(self.project.paths.tasks).st_mtime_ns
        except OSError:
            return False
        changed = stamp != self._records_stamp
        self._records_stamp = stamp
        return changed

    def _pid_vanished(self) -> bool:
        return self._pids.ended()

    async def _idle(self) -> bool:
        """True when no task of the project has a window and no restart is scheduled."""
        snap = await self.project.backend.snapshot()
        names = self.project.config.tasks
        if any(name in snap.panes for name in names):
            return False
        return all(self.project.records.get(name).phase is not Phase.BACKOFF for name in names)

    # ------------------------------------------------------------ one pass

    async def step(self, group: anyio.abc.TaskGroup | None = None) -> bool:
        """Observe every task once and act on what it needs; True when the project is idle.

        Without a task group the actions are awaited here (what tests do, with a fake clock).
        """
        if not self.lease.leading():
            return False
        project = self.project
        if project.config != self._applied and project.config_error is None:
            await self._apply_config()
        config = project.config
        # Records first: a task launched after this read shows up as a newer run.
        reads = {name: project.records.read(name) for name in config.tasks}
        snap = await project.backend.snapshot()
        now = project.clock.now()
        self._known_pids = {}
        self._due = None
        idle = True
        for name, task in config.tasks.items():
            pane = snap.panes.get(name)
            if pane is not None and not pane.dead and pane.pid:
                self._known_pids[name] = pane.pid
            record = reads[name].record
            if record.phase in (Phase.BACKOFF, Phase.LAUNCHING, Phase.STOPPING):
                idle = False
            need = self._need(name, task, reads[name], pane, now)
            if need is None or name in self._busy:
                continue
            self._busy.add(name)
            if group is None:
                await self._act(name, need)
            else:
                group.start_soon(self._act, name, need)
        self._learn_writers(snap.panes, reads, now)
        windows = any(name in snap.panes for name in config.tasks)
        if self.exit_when_idle and windows and not self._known_pids:
            self._expect(now + IDLE_RECHECK_S)  # no task runs: its last window may go soon
        return idle and not windows

    def _need(
        self, name: str, task: TaskConfig, read: Read, pane: Pane | None, now: float
    ) -> Need | None:
        """What the task needs now, from its record and pane (pure but for `_due`)."""
        record = read.record
        if read.problem:
            return Need.REPAIR
        if record.phase in (Phase.LAUNCHING, Phase.STOPPING):
            return Need.SETTLE
        if record.phase is Phase.BACKOFF:
            if record.restart_at is not None and now >= record.restart_at - RESTART_LEAD_S:
                return Need.RESTART
            if record.restart_at is not None:
                self._expect(record.restart_at - RESTART_LEAD_S)
            return None
        if pane is not None and not pane.dead:
            return self._need_alive(name, task, record, pane, now)
        if record.phase is not Phase.UP or record.handled_run >= record.run:
            return None
        if self._handled.get(name, 0) >= record.run:
            return None
        if pane is None:
            return Need.VANISHED
        if pane.run is not None and pane.run != record.run:
            return None
        return Need.ENDED

    def _need_alive(
        self, name: str, task: TaskConfig, record: TaskRecord, pane: Pane, now: float
    ) -> Need | None:
        if record.phase is Phase.UP and pane.run is not None and pane.run != record.run:
            return Need.ADOPT
        if record.phase is not Phase.UP:
            return None
        started = record.started_at or now
        if not pane.piped or self._writer_died(name):
            return Need.REPIPE
        if not self.project.logs.path(name).exists():
            if now - started > WRITER_GRACE_S:
                return Need.REPIPE
            self._expect(started + WRITER_GRACE_S + 0.01)  # its writer may still be starting
        stable = is_stable(
            alive=True,
            has_check=task.has_check(),
            healthy=record.health is Health.HEALTHY,
            started_at=record.started_at,
            healthy_since=record.healthy_since,
            now=now,
        )
        if record.restarts and not stable:
            since = record.healthy_since if task.has_check() else record.started_at
            if since is not None and since + STABLE_AFTER_S > now:
                self._expect(since + STABLE_AFTER_S)
        return Need.STABLE if stable and record.restarts else None

    def _learn_writers(
        self, panes: Mapping[str, Pane], reads: Mapping[str, Read], now: float
    ) -> None:
        """Watch the log writer of each running task (its end wakes the loop); one still
        starting is looked for again when its grace is over."""
        self._writers = {}
        for name in self._known_pids:
            pane = panes.get(name)  # a restart awaited in this pass made a window it did not see
            if pane is None or name not in reads:
                continue
            pid = self.project.logs.writer_pid(name, pane.run) if pane.run is not None else None
            started = reads[name].record.started_at
            if pid is not None:
                self._writers[name] = pid
            elif pane.piped and started is not None and now < started + WRITER_GRACE_S:
                self._expect(started + WRITER_GRACE_S)

    def _writer_died(self, name: str) -> bool:
        """Whether the log writer of the task's run ended (its pidfd said so; tmux notices
        only when the task next writes) and no writer replaced it yet."""
        pid = self._writers.get(name)
        return pid is not None and pid not in self._replaced and self._pids.ended_ago(pid) > 0

    async def _act(self, name: str, need: Need) -> None:
        lock = self.project.task_lock(name, f"monitor: {need.value}")
        try:
            if need is Need.STABLE:
                await self.project.records.change(
                    name, lambda r: records.stable(r, cause=Cause.POLICY)
                )
                return
            if not lock.try_acquire():
                # Someone acts on it: look again soon (their writes wake us too, but a face
                # killed mid-action writes nothing more).
                self._expect(self.project.clock.now() + BUSY_RETRY_S)
                return
            if not self.lease.leading():
                return
            # Under the lock, look again: whoever held it before may have changed everything.
            read = self.project.records.read(name)
            snap = await self.project.backend.snapshot()
            pane = snap.panes.get(name)
            task = self.project.config.task(name)
            now = self.project.clock.now()
            if self._need(name, task, read, pane, now) is not need:
                return
            if need is Need.RESTART:
                await self._restart(name, task, lock, not_before=read.record.restart_at, seen=snap)
                return
            await self._handle(name, need, task, read.record, pane, lock)
        except (TaskmuxError, OSError) as exc:
            log.warning("monitor could not %s for task %s: %s", need.value, name, exc)
        except Exception:
            log.exception("monitor failed to %s for task %s", need.value, name)
        finally:
            lock.release()
            self._busy.discard(name)
            self._pids.wake()  # what it scheduled (a restart, a retry) counts for the next wait

    async def _handle(
        self,
        name: str,
        need: Need,
        task: TaskConfig,
        record: TaskRecord,
        pane: Pane | None,
        lock: FileLock,
    ) -> None:
        if need is Need.REPAIR:
            await self._repair(name, pane)
        elif need in (Need.ENDED, Need.VANISHED):
            await self._ended(name, task, record, pane, lock)
        elif need is Need.SETTLE:
            await self._settle(name, task, record, pane, lock)
        elif need is Need.ADOPT and pane is not None:
            await lifecycle.adopt(self.project, name, pane, Cause.POLICY, Notes())
        elif need is Need.REPIPE and pane is not None:
            await self._repipe(name, pane)

    # ------------------------------------------------------------ what each need takes

    async def _ended(
        self, name: str, task: TaskConfig, record: TaskRecord, pane: Pane | None, lock: FileLock
    ) -> None:
        project = self.project
        # A delay counts from when the end was seen (the kernel's notice), not from this pass.
        ago = self._pids.ended_ago(pane.pid) if pane is not None and pane.pid else 0.0
        now = project.clock.now() - min(ago, 1.0)
        self._handled[name] = record.run  # never twice, even when the record cannot be saved
        if pane is not None and pane.stop_mark == StopKind.MANUAL.value:
            await self._finish_unsaved_stop(name, pane)
            return
        if (who := interrupted_by(pane)) is not None and pane is not None:
            await lifecycle.drain(project, name, pane)
            await self._finish_unsaved_stop(name, pane, who)
            project.events.record(
                EventType.STOPPED, who, name, stop="interrupt", exit_code=pane.exit_status,
                signal=describe_signal(pane.exit_signal), run=record.run,
            )  # fmt: skip
            return
        if pane is None:
            observation = Observation(Seen.VANISHED)
        else:
            await lifecycle.drain(project, name, pane)  # the logs are complete before anyone hears
            observation = Observation(
                Seen.EXITED,
                exit_code=pane.exit_status,
                exit_signal=pane.exit_signal,
                expected=pane.stop_mark is not None,
            )
        if not observation.expected:
            project.events.record(
                EventType.EXITED,
                Cause.POLICY,
                name,
                exit_code=observation.exit_code,
                signal=describe_signal(observation.exit_signal),
                vanished=pane is None,
                run=record.run,
            )
        decision = decide(task, _counters(record), observation)
        exit = ExitRecord(code=observation.exit_code, signal=observation.exit_signal, at=now)
        try:
            await project.records.change(
                name,
                lambda r: records.ended(
                    r, cause=Cause.POLICY, run=record.run, exit=exit, decision=decision, now=now
                ),
            )
        except StateWriteError as exc:
            log.warning("%s", exc)
        self._announce(name, decision)
        if decision.action is Action.RESTART and decision.delay_s <= 0:
            await self._restart(name, task, lock)
        elif decision.action is Action.RESTART:
            self._expect(now + decision.delay_s - RESTART_LEAD_S)

    async def _finish_unsaved_stop(self, name: str, pane: Pane, who: Cause = Cause.USER) -> None:
        """A manual stop whose record could not be saved (full or read-only state folder), or
        an interrupt typed by `who`: its pane says so; recorded as a stop, never as an exit."""
        exit = ExitRecord(code=pane.exit_status, signal=pane.exit_signal,
                          at=self.project.clock.now(), expected=True)  # fmt: skip

        def finish(record: TaskRecord) -> TaskRecord:
            # Who stopped it was not saved; a manual stop is always a person's.
            stopping = records.stop(record, cause=who, kind=StopKind.MANUAL)
            return records.stopped(stopping, cause=who, exit=exit)

        try:
            await self.project.records.change(name, finish)
        except StateWriteError as exc:
            log.warning("%s", exc)

    def _announce(self, name: str, decision: Decision) -> None:
        if decision.action is Action.RESTART:
            self.project.events.record(
                EventType.RESTART_SCHEDULED,
                Cause.POLICY,
                name,
                delay_s=decision.delay_s,
                reason=decision.reason,
            )
        elif decision.action is Action.GIVE_UP:
            self.project.events.record(
                EventType.GAVE_UP, Cause.POLICY, name, reason=decision.reason
            )

    async def _restart(
        self,
        name: str,
        task: TaskConfig,
        lock: FileLock,
        *,
        not_before: float | None = None,
        seen: Snapshot | None = None,
    ) -> None:
        decided: list[Decision] = []

        def on_failure(record: TaskRecord) -> Decision:
            decided.append(decide(task, _counters(record), Observation(Seen.LAUNCH_FAILED)))
            return decided[-1]

        try:
            pane = await lifecycle.launch(
                self.project, name, Cause.POLICY, lock=lock, automatic=True,
                on_failure=on_failure, not_before=not_before, seen=seen,
            )  # fmt: skip
        except TaskmuxError as exc:
            if decided:
                error = str(exc)
                decision = decided[-1]
                self._announce(name, Decision(decision.action, f"{error}; {decision.reason}",
                                              decision.delay_s))  # fmt: skip
                if decision.action is Action.RESTART:
                    self._expect(self.project.clock.now() + decision.delay_s - RESTART_LEAD_S)
            return
        if pane.pid:
            self._known_pids[name] = pane.pid

    def _expect(self, moment: float) -> None:
        """Look again at moment (a scheduled restart)."""
        self._due = moment if self._due is None else min(self._due, moment)

    async def _settle(
        self, name: str, task: TaskConfig, record: TaskRecord, pane: Pane | None, lock: FileLock
    ) -> None:
        """Finish what a process that died while acting on the task left half done."""
        project = self.project
        alive = pane is not None and not pane.dead
        notes = Notes()
        if record.phase is Phase.LAUNCHING:
            if alive and pane is not None and pane.run == record.run:
                log.warning("a start of %s was interrupted after its launch; adopting it", name)
                await lifecycle.change(
                    project,
                    name,
                    lambda r: records.launched(
                        r, cause=Cause.POLICY, run=record.run, pid=pane.pid, pane_id=pane.pane_id
                    ),
                    notes,
                )
                return
            log.warning("a start of %s was interrupted before its launch", name)
            decision = decide(task, _counters(record), Observation(Seen.LAUNCH_FAILED))
            await lifecycle.change(
                project,
                name,
                lambda r: records.launch_failed(
                    r,
                    cause=Cause.POLICY,
                    run=record.run,
                    error="its start was interrupted (the process starting it ended)",
                    decision=decision,
                    now=project.clock.now(),
                ),
                notes,
            )
            self._announce(name, decision)
            return
        kind = record.stop_kind or StopKind.MANUAL
        if alive and pane is not None and kind is not StopKind.POLICY:
            # The stop never took effect: the task runs, and its policy applies again.
            log.warning("a stop of %s was interrupted; it keeps running", name)
            await lifecycle.adopt(
                project, name, pane, Cause.POLICY, notes, detail="its stop was interrupted"
            )
            return
        if kind is StopKind.RESTART:
            log.warning("a restart of %s was interrupted; completing it", name)
            try:
                await lifecycle.launch(project, name, Cause.POLICY, lock=lock)
            except TaskmuxError as exc:
                log.warning("completing the restart of %s failed: %s", name, exc)
            return
        log.warning("a stop of %s was interrupted; finishing it", name)
        delay = backoff_delay(task.restart_backoff, record.restarts)
        restart_at = project.clock.now() + delay if kind is StopKind.POLICY else None
        await lifecycle.stop(
            project, name, Cause.POLICY, kind=kind, lock=lock, hooks=False, restart_at=restart_at
        )

    async def _repair(self, name: str, pane: Pane | None) -> None:
        project = self.project
        read = project.records.read(name)
        if read.problem is None:
            return
        manual = project.records.stop_mark(name).exists() or (
            pane is not None and pane.stop_mark == StopKind.MANUAL.value
        )
        repaired = records.repaired(read.record, manual=manual, pane=pane)
        try:
            project.records.save(name, repaired)
        except StateWriteError as exc:
            log.warning("%s", exc)
        if self._reported.get(name) != read.problem:
            self._reported[name] = read.problem
            project.events.record(
                EventType.RECORD_REPAIRED,
                Cause.POLICY,
                name,
                problem=read.problem,
                phase=repaired.phase.value,
                manually_stopped=repaired.manually_stopped,
            )

    async def _repipe(self, name: str, pane: Pane) -> None:
        project = self.project
        died = not pane.piped or self._writer_died(name)
        if name in self._writers:
            self._replaced.add(self._writers[name])  # its death is dealt with: never twice
        why = "its log writer died" if died else "its log file was removed"
        run = pane.run or project.records.get(name).run
        await project.backend.repipe(pane.pane_id, project.log_pipe(name, run, resume=True))
        project.events.record(
            EventType.LOG_WRITER_REPLACED,
            Cause.POLICY,
            name,
            reason=why,
            detail="output written while no writer was attached may be missing from the log",
        )

    # ------------------------------------------------------------ health

    def _schedule_checks(self, group: anyio.abc.TaskGroup) -> None:
        for name in self._due_checks():
            group.start_soon(self._check, name)

    def _next_check_at(self) -> float | None:
        """When the next health check falls due (the clock's monotonic time)."""
        due = [
            self._next_check.get(name, 0.0)
            for name, task in self.project.config.tasks.items()
            if task.has_check() and name not in self._checking and name in self._known_pids
        ]
        return min(due, default=None)

    def _check_interval(self, name: str, task: TaskConfig) -> float:
        """A task's health interval; while it starts (not yet healthy, within its start
        period) at most STARTING_CHECK_S, so that it is seen healthy soon after it is."""
        record = self.project.records.get(name)
        started = record.started_at
        starting = started is not None and (
            self.project.clock.now() - started < task.health_start_period
        )
        if starting and record.health is not Health.HEALTHY:
            return min(task.health_interval, STARTING_CHECK_S)
        return task.health_interval

    def _due_checks(self) -> list[str]:
        now = self.project.clock.monotonic()
        due = []
        for name, task in self.project.config.tasks.items():
            if not task.has_check() or name in self._checking or name not in self._known_pids:
                continue
            if now < self._next_check.get(name, 0.0):
                continue
            self._next_check[name] = now + self._check_interval(name, task)
            self._checking.add(name)
            due.append(name)
        return due

    async def check_due(self) -> None:
        """Run the checks that are due now and wait for them (the loop runs them in the
        background; tests call this with a fake clock)."""
        async with anyio.create_task_group() as group:
            for name in self._due_checks():
                group.start_soon(self._check, name)

    async def _check(self, name: str) -> None:
        try:
            record = self.project.records.get(name)
            if record.phase is not Phase.UP:
                return
            before = record.health
            await readiness.check(self.project, name, record, cause=Cause.HEALTH)
            after = self.project.records.get(name)
            if after.health is Health.HEALTHY and before is not Health.HEALTHY:
                interval = self.project.config.task(name).health_interval  # started: its pace
                self._next_check[name] = self.project.clock.monotonic() + interval
            if after.health is Health.UNHEALTHY and before is not Health.UNHEALTHY:
                await self._unhealthy(name, after)
        except (TaskBusy, StateWriteError) as exc:
            log.warning("health check of %s not recorded: %s", name, exc)
        except Exception:
            log.exception("health check of %s failed to run", name)
        finally:
            self._checking.discard(name)
            self._pids.wake()  # its next check counts for the next wait

    async def _unhealthy(self, name: str, record: TaskRecord) -> None:
        task = self.project.config.task(name)
        decision = decide(task, _counters(record), Observation(Seen.UNHEALTHY))
        if decision.action is Action.NOTHING:
            return
        lock = self.project.task_lock(name, "monitor: replace an unhealthy run")
        if not lock.try_acquire():
            return
        try:
            if not self.lease.leading() or self.project.records.get(name).run != record.run:
                return
            self._announce(name, decision)
            now = self.project.clock.now()
            restart = decision.action is Action.RESTART
            await lifecycle.stop(
                self.project,
                name,
                Cause.HEALTH,
                kind=StopKind.POLICY,
                lock=lock,
                hooks=False,
                restart_at=now + decision.delay_s if restart else None,
                failed=None if restart else decision.reason,
            )
            if restart:
                self._expect(now + decision.delay_s - RESTART_LEAD_S)
        finally:
            lock.release()

    # ------------------------------------------------------------ config

    async def reload_config(self) -> None:
        """Load taskmux.toml again; apply the difference, or report why it cannot be used."""
        self.project.refresh()
        error = self.project.config_error
        if error is not None:
            message = str(error)
            if message != self._invalid_config:
                self._invalid_config = message
                self.project.events.record(
                    EventType.CONFIG_INVALID,
                    Cause.CONFIG,
                    None,
                    errors=[str(p) for p in error.problems],
                    path=str(self.project.config_path),
                )
            return
        self._invalid_config = None
        if self.project.config != self._applied:
            await self._apply_config()

    async def _apply_config(self) -> None:
        old, new = self._applied, self.project.config
        self._applied = new
        await apply_config(self.project, old, new)


async def apply_config(project: Project, old: ProjectConfig, new: ProjectConfig) -> None:
    """Stop removed tasks, restart running tasks whose definition changed, start added ones."""
    removed = [name for name in old.tasks if name not in new.tasks]
    added = [name for name in new.tasks if name not in old.tasks]
    snap = await project.backend.snapshot()
    changed = [
        name
        for name in new.tasks
        if name in old.tasks
        and new.tasks[name] != old.tasks[name]
        and snap.alive(name) is not None
        and project.records.get(name).config_digest != task_digest(new.tasks[name])
    ]
    if new == old:
        return
    project.events.record(
        EventType.CONFIG_RELOADED, Cause.CONFIG, None, changed=changed, added=added, removed=removed
    )
    for name in removed:
        lock = project.task_lock(name, "config: remove the task")
        try:
            await lock.acquire(lifecycle.DEAD_WAIT_S * 10, task=name)
        except TaskBusy as exc:
            log.warning("cannot remove task %s now: %s", name, exc)
            continue
        try:
            await lifecycle.stop(
                project, name, Cause.CONFIG, kind=StopKind.MANUAL, lock=lock, hooks=False,
                task=old.tasks[name],
            )  # fmt: skip
            await lifecycle.kill(project, name, Cause.CONFIG, lock=lock)
            project.records.forget(name)
        finally:
            lock.release()
    if changed:
        await project.restart(changed, wait=False, cause=Cause.CONFIG)
    starting = [
        name
        for name in added
        if new.tasks[name].auto_start and project.records.get(name).phase is Phase.IDLE
    ]
    if starting:
        await project.start(starting, wait=False, cause=Cause.CONFIG)


def run_monitor_foreground(project: Project, *, host: str, exit_when_idle: bool = False) -> int:
    """Run a monitor until SIGINT/SIGTERM (the `taskmux monitor` command); standby included."""
    monitor = Monitor(project, host=host, exit_when_idle=exit_when_idle)

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
