"""What happens to one task under its lock: launch a run, stop it, kill it, settle it.

Every function here expects the caller (the facade or the monitor) to hold the task's lock,
so no two actions on one task ever overlap, in this process or any other. Each records its
changes through the record's transitions, marks a stop on the tmux window as well (tmux keeps
it in memory, so a full disk cannot lose it), and never lets a failed write stop a stop: what
could not be saved comes back as a warning.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import anyio

from . import processes, records
from .backend import Launch, Pane, Snapshot
from .config import TaskConfig
from .errors import HookFailed, PortBusy, StateWriteError, TaskmuxError, TmuxError
from .events import Cause, EventType
from .hooks import run_hook
from .models import TaskResult, TaskState
from .policy import Action, Counters, Decision, Observation, Seen, decide
from .records import ExitRecord, Phase, StopKind, TaskRecord, interrupted_by, observe

if TYPE_CHECKING:
    from .locks import FileLock
    from .project import Project

log = logging.getLogger("taskmux")

DEAD_WAIT_S = 2.0
DRAIN_WAIT_S = 3.0
FailureDecision = Callable[[TaskRecord], Decision]


def task_digest(task: TaskConfig) -> str:
    """A short fingerprint of a task's definition (a changed definition restarts it)."""
    return hashlib.sha256(task.model_dump_json().encode()).hexdigest()[:16]


@dataclass
class Notes:
    """Warnings gathered while acting: what could not be saved, and why."""

    items: list[str] = field(default_factory=list)

    def add(self, problem: str | None) -> None:
        """Keep one warning (once)."""
        if problem and problem not in self.items:
            self.items.append(problem)


async def change(
    project: Project, name: str, how: Callable[[TaskRecord], TaskRecord], notes: Notes
) -> TaskRecord | None:
    """Apply a transition; a refused write becomes a warning and None, never an error."""
    try:
        return await project.records.change(name, how)
    except StateWriteError as exc:
        notes.add(str(exc))
        return None


def event(project: Project, notes: Notes, kind: EventType, cause: Cause, task: str | None,
          **details: object) -> None:  # fmt: skip
    """Record an event; a refused write becomes a warning."""
    notes.add(project.events.try_record(kind, cause, task, **details)[1])


async def task_hook(
    project: Project, notes: Notes, hook: str, task: TaskConfig, cause: Cause
) -> HookFailed | None:
    """Run one of a task's hooks; a failure is recorded as an event and returned."""
    if not task.hooks.get(hook):
        return None  # no hook: not even its environment is worked out
    try:
        await run_hook(
            hook,
            task.hooks.get(hook),
            task=task.name,
            cwd=task.working_dir(project.config.root),
            env=project.task_env(task.name) if task.name in project.config.tasks else {},
        )
    except HookFailed as exc:
        event(project, notes, EventType.HOOK_FAILED, cause, task.name, hook=hook, error=str(exc))
        return exc
    return None


async def launch(
    project: Project,
    name: str,
    cause: Cause,
    *,
    lock: FileLock,
    automatic: bool = False,
    on_failure: FailureDecision | None = None,
    notes: Notes | None = None,
    force_port: bool = False,
    not_before: float | None = None,
    seen: Snapshot | None = None,
) -> Pane:
    """Start a new run of a task that is not running (the caller holds its lock).

    Hooks, leftovers of older runs and the spawn happen between the `launch` and `launched`
    transitions; a failure is recorded (`on_failure` gives the policy's decision for
    automatic restarts) and raised as TaskmuxError. not_before: the moment (wall time) the
    process may start; what comes before its spawn is done meanwhile. seen: a snapshot the
    caller took holding the lock (nobody else can have started the task since).
    """
    if not lock.held():
        raise TaskmuxError(f"lost the lock of task '{name}' before starting it")
    notes = notes or Notes()
    task = project.config.task(name)
    cwd = task.working_dir(project.config.root)
    digest = task_digest(task)
    now = max(project.clock.now(), not_before or 0.0)  # when its process starts
    record = await project.records.change(
        name,
        lambda r: records.launch(r, cause=cause, now=now, automatic=automatic, digest=digest),
    )
    run = record.run
    try:
        if not cwd.is_dir():
            raise TaskmuxError(f"cwd {cwd} of task '{name}' does not exist")
        await run_hook(
            "before_start", task.hooks.before_start, task=name, cwd=cwd, env=project.task_env(name)
        )
        with anyio.CancelScope(shield=True):
            pane = await _spawn(
                project, name, task, run, cause, force_port=force_port, notes=notes,
                not_before=not_before, seen=seen,
            )  # fmt: skip
    except TaskmuxError as exc:
        decision = on_failure(record) if on_failure is not None else None
        error = str(exc)
        await change(
            project,
            name,
            lambda r: records.launch_failed(
                r, cause=cause, run=run, error=error, decision=decision, now=project.clock.now()
            ),
            notes,
        )
        if isinstance(exc, HookFailed):
            event(project, notes, EventType.HOOK_FAILED, cause, name, error=str(exc))
        raise
    await change(
        project,
        name,
        lambda r: records.launched(r, cause=cause, run=run, pid=pane.pid, pane_id=pane.pane_id),
        notes,
    )
    event(
        project,
        notes,
        EventType.RESTARTED if automatic else EventType.STARTED,
        cause,
        name,
        pid=pane.pid,
        run=run,
        session=pane.session,
    )
    await task_hook(project, notes, "after_start", task, cause)
    return pane


async def _spawn(
    project: Project,
    name: str,
    task: TaskConfig,
    run: int,
    cause: Cause,
    *,
    force_port: bool,
    notes: Notes,
    not_before: float | None = None,
    seen: Snapshot | None = None,
) -> Pane:
    snapshot = seen or await project.backend.snapshot()
    current = snapshot.panes.get(name)
    if current is not None and not current.dead:
        raise TaskmuxError(f"task '{name}' is already running (pid {current.pid})")
    if run > 1:  # an older run's orphans (a first run has none to leave)
        await processes.kill_tree(None, project.task_id(name))
    await project.assign_ports()
    port = project.port_of(name)
    if port is not None:
        try:
            freed = await processes.reclaim_port(port, project.task_id(name), force=force_port)
        except PortBusy as exc:
            holders = [h.details() for h in exc.holders]
            event(project, notes, EventType.PORT_BUSY, cause, name, port=port, holders=holders)
            raise
        for holder in freed:
            forced = holder.task_id != project.task_id(name)
            details = holder.details()
            event(project, notes, EventType.PORT_FREED, cause, name, port=port, forced=forced,
                  **details)  # fmt: skip
            if forced:
                notes.add(f"port {port}: killed {holder.describe()} (force_port)")
    spec = Launch(
        task=name,
        run=run,
        command=task.command,
        cwd=task.working_dir(project.config.root),
        env=project.task_env(name, marked=True),
        pipe=project.log_pipe(name, run),
    )
    if not_before is not None:
        await project.clock.sleep(max(0.0, not_before - project.clock.now()))
    pane = await project.spawn(spec, snapshot)
    await project.ensure_hosted_monitor()
    return pane


async def wait_dead(project: Project, name: str, timeout: float = DEAD_WAIT_S) -> Pane | None:
    """The task's pane once tmux has noticed its process ended (or as it is at the timeout)."""
    deadline = anyio.current_time() + timeout
    while True:
        pane = (await project.backend.snapshot()).panes.get(name)
        if pane is None or pane.dead or anyio.current_time() >= deadline:
            return pane
        await anyio.sleep(0.02)


async def drain(project: Project, name: str, pane: Pane | None) -> bool:
    """After a run ended: wait until its log writer has saved every byte (a flush barrier).

    The writer, asked to finish, writes what is in the pipe and what tmux still hands on (a
    full pipe leaves the rest with tmux), until nothing came for a moment, and lets go of its
    log's lock.
    """
    if pane is None or not pane.dead or not pane.piped:
        return False
    run = pane.run if pane.run is not None else project.records.get(name).run
    with anyio.move_on_after(DRAIN_WAIT_S):
        while not pane.reaped:  # an end read from the zombie: wait for tmux's own, as before
            await anyio.sleep(0.002)
            again = (await project.backend.snapshot()).panes.get(name)
            if again is None or again.pane_id != pane.pane_id:
                break
            pane = again
    return await project.logs.drain_writer(name, run, timeout=DRAIN_WAIT_S)


async def stop(
    project: Project,
    name: str,
    cause: Cause,
    *,
    kind: StopKind,
    lock: FileLock | None,
    hooks: bool = True,
    restart_at: float | None = None,
    failed: str | None = None,
    task: TaskConfig | None = None,
) -> TaskResult:
    """Stop a task (SIGINT, grace, SIGTERM, SIGKILL) until none of its processes is left.

    task: its definition when it is no longer in the config in force (removed by an edit).
    """
    notes = Notes()
    if lock is None:
        notes.add(f"task '{name}' could not be locked (state folder not writable); stopped anyway")
    task = task or project.config.task(name)
    pane = (await project.backend.snapshot()).panes.get(name)
    alive = pane is not None and not pane.dead
    if alive and hooks and kind is not StopKind.POLICY:
        failed_hook = await task_hook(project, notes, "before_stop", task, cause)
        if failed_hook is not None:
            exc = failed_hook
            return TaskResult(
                name=name,
                ok=False,
                action="not_stopped",
                state=TaskState.RUNNING,
                error=str(exc),
                warnings=notes.items,
            )
    # A run that ended on its own and will not be restarted keeps its verdict (exited, failed).
    ended = not alive and project.records.get(name).phase in (Phase.EXITED, Phase.FAILED)
    if not alive and not ended and pane is not None:
        ended = await _record_own_end(project, name, task, pane, notes)
    with anyio.CancelScope(shield=True):
        # The record first: when its lock is busy (TaskBusy) nothing has changed yet.
        if not ended:
            await change(project, name, lambda r: records.stop(r, cause=cause, kind=kind), notes)
        unmarked = pane is not None and not ended

        async def mark() -> None:
            nonlocal unmarked
            if unmarked and pane is not None:
                unmarked = False
                try:
                    await project.backend.mark_stop(pane.pane_id, kind.value)
                except TmuxError as exc:
                    log.debug("marking the stop of %s: %s", name, exc)

        by_keys = alive and task.stop_signal == "SIGINT"
        if not by_keys:
            await mark()
        pane_pid = pane.pid if alive and pane is not None else None

        async def interrupt() -> None:
            if not alive or pane is None:
                return
            if by_keys:
                async with anyio.create_task_group() as group:  # one tmux call: mark, then C-c
                    group.start_soon(mark)
                    group.start_soon(project.backend.interrupt, pane.pane_id)  # as a person would
            elif pane.pid is not None:
                with contextlib.suppress(OSError):
                    os.killpg(os.getpgid(pane.pid), signal.Signals[task.stop_signal])

        # tmux is asked for the run's end as soon as its root has ended, while the stop still
        # looks for processes that outlive the root (a scan of the whole machine).
        told: list[Pane | None] = []
        asking = False

        async def tmux_says_dead() -> None:
            nonlocal asking
            if pane_pid is not None and await processes.until_exit(pane_pid, math.inf):
                asking = True
                told.append(await wait_dead(project, name))

        async with anyio.create_task_group() as group:
            group.start_soon(tmux_says_dead)
            outcome = await processes.stop_tree(
                pane_pid, project.task_id(name), interrupt=interrupt,
                grace=task.stop_grace_period, first=task.stop_signal,
            )  # fmt: skip
            if not asking:
                group.cancel_scope.cancel()
        await mark()  # when there was nothing to interrupt
        after = told[0] if told else await wait_dead(project, name) if alive else pane
        exit_record = None
        if alive and after is not None and after.dead:
            exit_record = ExitRecord(
                code=after.exit_status,
                signal=after.exit_signal,
                at=project.clock.now(),
                expected=True,
            )
        await drain(project, name, after)

        # Settled even when processes are left (unkillable ones are reported below): a record
        # left "stopping" would look like an interrupted stop to every monitor.
        def finish(record: TaskRecord) -> TaskRecord:
            if record.phase is not records.Phase.STOPPING:  # its first write did not land
                record = records.stop(record, cause=cause, kind=kind)
            return records.stopped(
                record, cause=cause, exit=exit_record, restart_at=restart_at, failed=failed
            )

        if not ended:
            await change(project, name, finish, notes)
    if alive or outcome.signal_used != "none":
        event(
            project,
            notes,
            EventType.STOPPED,
            cause,
            name,
            signal=outcome.signal_used,
            duration_s=round(outcome.duration_s, 3),
            remaining=list(outcome.remaining),
            stop=kind.value,
        )
    if alive and hooks and kind is StopKind.MANUAL:
        await task_hook(project, notes, "after_stop", task, cause)
    state = TaskState.STOPPED if outcome.stopped else TaskState.RUNNING
    action = "stopped" if alive else "already_stopped"
    if ended and outcome.stopped:
        state = observe(task, project.records.get(name), after).state
        action = f"already_{state.value}"
    return TaskResult(
        name=name,
        ok=outcome.stopped,
        action=action,
        state=state,
        exit_code=exit_record.code if exit_record else None,
        exit_signal=processes.describe_signal(exit_record.signal) if exit_record else None,
        error=None if outcome.stopped else f"processes left: {list(outcome.remaining)}",
        duration_s=round(outcome.duration_s, 3),
        warnings=notes.items,
    )


async def _record_own_end(
    project: Project, name: str, task: TaskConfig, pane: Pane, notes: Notes
) -> bool:
    """Record the end of a run no monitor has seen yet, when its policy would not restart it
    (so a stop has nothing to prevent); False when it would, or it is not that case."""
    record = project.records.get(name)
    fresh = record.phase is Phase.UP and record.handled_run < record.run == pane.run
    if not fresh or pane.stop_mark is not None or interrupted_by(pane) is not None:
        return False
    seen = Observation(Seen.EXITED, exit_code=pane.exit_status, exit_signal=pane.exit_signal)
    decision = decide(task, Counters(record.manually_stopped, record.restarts), seen)
    if decision.action is not Action.NOTHING:
        return False
    await drain(project, name, pane)  # the logs are complete before anyone hears
    event(
        project, notes, EventType.EXITED, Cause.POLICY, name, exit_code=pane.exit_status,
        signal=processes.describe_signal(pane.exit_signal), vanished=False, run=record.run,
    )  # fmt: skip
    exit = ExitRecord(code=pane.exit_status, signal=pane.exit_signal, at=project.clock.now())
    now = project.clock.now()
    await change(
        project,
        name,
        lambda r: records.ended(
            r, cause=Cause.POLICY, run=record.run, exit=exit, decision=decision, now=now
        ),
        notes,
    )
    return True


async def kill(project: Project, name: str, cause: Cause, *, lock: FileLock | None) -> TaskResult:
    """SIGKILL every process of a task at once and remove its window."""
    notes = Notes()
    if lock is None:
        notes.add(f"task '{name}' could not be locked (state folder not writable); killed anyway")
    pane = (await project.backend.snapshot()).panes.get(name)
    alive = pane is not None and not pane.dead
    with anyio.CancelScope(shield=True):
        if pane is not None:
            try:
                await project.backend.mark_stop(pane.pane_id, StopKind.MANUAL.value)
            except TmuxError as exc:
                log.debug("marking the kill of %s: %s", name, exc)
        await change(project, name, lambda r: records.killed(r, cause=cause), notes)
        outcome = await processes.kill_tree(
            pane.pid if alive and pane is not None else None, project.task_id(name)
        )
        if pane is not None:
            await drain(project, name, await wait_dead(project, name) if alive else pane)
            try:
                await project.backend.kill_window(pane.window_id)
            except TmuxError as exc:
                log.debug("kill-window %s: %s", pane.window_id, exc)
    event(project, notes, EventType.KILLED, cause, name, signal="SIGKILL")
    return TaskResult(
        name=name,
        ok=outcome.stopped,
        action="killed",
        state=TaskState.STOPPED,
        error=None if outcome.stopped else f"processes left: {list(outcome.remaining)}",
        duration_s=round(outcome.duration_s, 3),
        warnings=notes.items,
    )


async def adopt(
    project: Project,
    name: str,
    pane: Pane,
    cause: Cause,
    notes: Notes,
    *,
    detail: str = "the record follows the live pane",
) -> None:
    """Make the record follow a live pane it lost track of (an unsaved record, a stop that was
    interrupted before it took effect)."""
    record = project.records.get(name)
    if record.phase is records.Phase.UP and record.run == pane.run:
        return
    run = pane.run or record.run

    def follow(r: TaskRecord) -> TaskRecord:
        return r.changed(
            phase=records.Phase.UP,
            run=run,
            handled_run=min(r.handled_run, max(run - 1, 0)),
            pid=pane.pid,
            pane_id=pane.pane_id,
            stop_kind=None,
            stopped_by=None,
            restart_at=None,
            failed=None,
        )

    await change(project, name, follow, notes)
    if pane.stop_mark is not None:
        with contextlib.suppress(TmuxError):
            await project.backend.mark_stop(pane.pane_id, "")
    event(project, notes, EventType.RECORD_REPAIRED, cause, name, detail=detail)


Progress = Callable[[str], Awaitable[None]]
