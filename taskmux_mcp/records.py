"""Each task's persisted record and the only ways it may change: a small state machine.

::

    idle/stopped/exited/failed/backoff ──launch──▶ launching ──launched──▶ up
    launching ──launch_failed──▶ failed | backoff          (backoff: a restart is scheduled)
    up ──ended (policy)──▶ exited | backoff | failed
    any ──stop──▶ stopping ──stopped──▶ stopped (manual) | stopping (restart: launch follows)
                                      | backoff (policy: an unhealthy task is being replaced)
    any ──killed──▶ stopped           stopping(restart) ──not_restarted──▶ failed

Every lifecycle change is made by a process holding the task's lock (see `lifecycle`); the
record's own short lock only keeps read-modify-write cycles (health results) whole. Each
transition says from which phases it is legal and which causes may make it, and raises
`IllegalTransition` otherwise. Records are read without any lock (writes are atomic renames).
A manual stop is also kept as an empty ``<task>.stopped`` file, so a corrupt or unwritable
record never lets a monitor revive a task someone stopped.
"""

from __future__ import annotations

import contextlib
import functools
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import anyio.lowlevel
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from .backend import Pane
from .config import TaskConfig
from .errors import IllegalTransition, StateWriteError, TaskmuxError
from .events import Cause
from .locks import FileLock
from .models import Health, TaskState
from .policy import Action, Decision
from .processes import describe_signal
from .state import write_atomic

HEALTH_HISTORY_LIMIT = 10
RECORD_LOCK_S = 5.0
_NAME_OK = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")


class Phase(StrEnum):
    """Where a task is in its lifecycle, as far as taskmux's own actions go."""

    IDLE = "idle"
    LAUNCHING = "launching"
    UP = "up"
    STOPPING = "stopping"
    STOPPED = "stopped"
    EXITED = "exited"
    BACKOFF = "backoff"
    FAILED = "failed"


class StopKind(StrEnum):
    """Why a task is being stopped."""

    MANUAL = "manual"
    RESTART = "restart"
    POLICY = "policy"


class ExitRecord(BaseModel):
    """How a run ended."""

    model_config = ConfigDict(frozen=True)

    code: int | None = None
    signal: int | None = None
    at: float | None = None
    expected: bool = False


class CheckRecord(BaseModel):
    """One health check result."""

    model_config = ConfigDict(frozen=True)

    healthy: bool
    method: str
    detail: str
    duration_ms: float
    at: float


class TaskRecord(BaseModel):
    """What every process of the project knows about one task, persisted."""

    model_config = ConfigDict(frozen=True)

    phase: Phase = Phase.IDLE
    run: int = Field(0, ge=0)
    stop_kind: StopKind | None = None
    stopped_by: str | None = None
    restarts: int = Field(0, ge=0, description="consecutive automatic restarts")
    total_restarts: int = Field(0, ge=0)
    started_at: float | None = None
    pid: int | None = None
    pane_id: str | None = None
    last_exit: ExitRecord | None = None
    handled_run: int = Field(0, ge=0, description="the last run whose end was dealt with")
    restart_at: float | None = None
    failed: str | None = None
    health: Health = Health.UNKNOWN
    health_failures: int = Field(0, ge=0)
    healthy_since: float | None = None
    checks: tuple[CheckRecord, ...] = ()
    config_digest: str | None = None

    @property
    def manually_stopped(self) -> bool:
        """Stopped (or being stopped) by a user, an agent or the config: never revived."""
        return self.phase is Phase.STOPPED or (
            self.phase is Phase.STOPPING and self.stop_kind is StopKind.MANUAL
        )

    def changed(self, **values: Any) -> TaskRecord:
        """A copy with some fields set, validated like a read record."""
        return TaskRecord.model_validate({**self.model_dump(), **values})


# ------------------------------------------------------------------ the transitions

_EVERYONE = frozenset(Cause)
_PEOPLE = frozenset({Cause.USER, Cause.AGENT, Cause.CONFIG})
_POLICY = frozenset({Cause.POLICY, Cause.HEALTH})
_ALL_PHASES = frozenset(Phase)


@dataclass(frozen=True)
class Rule:
    """From which phases a transition is legal, and who may make it."""

    name: str
    phases: frozenset[Phase]
    causes: frozenset[Cause]

    def check(self, record: TaskRecord, cause: Cause) -> None:
        """Raise IllegalTransition unless the record and the cause allow this transition."""
        if record.phase not in self.phases:
            raise IllegalTransition(f"cannot {self.name}: the task is {record.phase.value}")
        if cause not in self.causes:
            raise IllegalTransition(f"{cause.value} may not {self.name} a task")


RULES: dict[str, Rule] = {
    rule.name: rule
    for rule in (
        Rule("launch", _ALL_PHASES, _EVERYONE - {Cause.HEALTH}),
        Rule("record a launch", frozenset({Phase.LAUNCHING}), _EVERYONE),
        Rule("record a failed launch", frozenset({Phase.LAUNCHING}), _EVERYONE),
        Rule("record the end of a run", frozenset({Phase.UP}), _POLICY),
        Rule("stop", _ALL_PHASES, _EVERYONE),
        Rule("finish a stop", frozenset({Phase.STOPPING}), _EVERYONE),
        Rule("kill", _ALL_PHASES, _PEOPLE | _POLICY),
        Rule("give up a restart", frozenset({Phase.STOPPING}), _PEOPLE),
        Rule("reset the restart count", frozenset({Phase.UP}), _POLICY),
    )
}


def _apply_decision(
    record: TaskRecord, decision: Decision, now: float, **values: Any
) -> TaskRecord:
    if decision.action is Action.RESTART:
        return record.changed(
            phase=Phase.BACKOFF, restart_at=now + decision.delay_s, failed=None, **values
        )
    if decision.action is Action.GIVE_UP:
        return record.changed(phase=Phase.FAILED, restart_at=None, failed=decision.reason, **values)
    return record.changed(phase=Phase.EXITED, restart_at=None, **values)


def launch(
    record: TaskRecord, *, cause: Cause, now: float, automatic: bool, digest: str | None
) -> TaskRecord:
    """A new run begins: the run number moves on, counters reset unless the policy asked."""
    RULES["launch"].check(record, cause)
    if automatic and cause is not Cause.POLICY:
        raise IllegalTransition("only the restart policy makes automatic restarts")
    return record.changed(
        phase=Phase.LAUNCHING,
        run=record.run + 1,
        restarts=record.restarts + 1 if automatic else 0,
        total_restarts=record.total_restarts + (1 if automatic else 0),
        started_at=now,
        pid=None,
        pane_id=None,
        handled_run=max(record.handled_run, record.run),
        restart_at=None,
        failed=None,
        stop_kind=None,
        stopped_by=None,
        health=Health.UNKNOWN,
        health_failures=0,
        healthy_since=None,
        config_digest=digest,
    )


def launched(
    record: TaskRecord, *, cause: Cause, run: int, pid: int | None, pane_id: str
) -> TaskRecord:
    """The run's process is up in its pane."""
    RULES["record a launch"].check(record, cause)
    _same_run(record, run)
    return record.changed(phase=Phase.UP, pid=pid, pane_id=pane_id)


def launch_failed(
    record: TaskRecord, *, cause: Cause, run: int, error: str, decision: Decision | None, now: float
) -> TaskRecord:
    """The run could not be started; the policy's decision applies to automatic launches."""
    RULES["record a failed launch"].check(record, cause)
    _same_run(record, run)
    if decision is None:
        return record.changed(phase=Phase.FAILED, failed=error, handled_run=run, restart_at=None)
    reason = f"{error}; {decision.reason}"
    failed = Decision(decision.action, reason, decision.delay_s)
    return _apply_decision(record, failed, now, handled_run=run)


def ended(
    record: TaskRecord, *, cause: Cause, run: int, exit: ExitRecord, decision: Decision, now: float
) -> TaskRecord:
    """The monitor saw the run end on its own and applied the policy's decision."""
    RULES["record the end of a run"].check(record, cause)
    _same_run(record, run)
    if record.handled_run >= run:
        raise IllegalTransition(f"the end of run {run} was already dealt with")
    return _apply_decision(record, decision, now, handled_run=run, last_exit=exit, pid=None)


def stop(record: TaskRecord, *, cause: Cause, kind: StopKind) -> TaskRecord:
    """Someone begins to stop the task; the end of its run is expected from now on."""
    RULES["stop"].check(record, cause)
    allowed = _POLICY if kind is StopKind.POLICY else _PEOPLE | {Cause.POLICY}
    if cause not in allowed:
        raise IllegalTransition(f"{cause.value} may not make a {kind.value} stop")
    values: dict[str, Any] = {
        "phase": Phase.STOPPING,
        "stop_kind": kind,
        "handled_run": max(record.handled_run, record.run),
    }
    if kind is not StopKind.POLICY:
        values |= {"restart_at": None, "failed": None}
    if kind is StopKind.MANUAL:
        values["stopped_by"] = cause.value
    return record.changed(**values)


def stopped(
    record: TaskRecord,
    *,
    cause: Cause,
    exit: ExitRecord | None,
    restart_at: float | None = None,
    failed: str | None = None,
) -> TaskRecord:
    """The task's processes are gone: stopped, awaiting its restart's launch, backing off, or
    (a policy stop that gives up) failed."""
    RULES["finish a stop"].check(record, cause)
    values: dict[str, Any] = {"pid": None}
    if exit is not None:
        values["last_exit"] = exit
    if record.stop_kind is StopKind.POLICY:
        if failed is not None:
            return record.changed(phase=Phase.FAILED, failed=failed, restart_at=None, **values)
        if restart_at is None:
            raise IllegalTransition("a policy stop needs the time of the restart")
        return record.changed(phase=Phase.BACKOFF, restart_at=restart_at, **values)
    if record.stop_kind is StopKind.RESTART:
        return record.changed(**values)
    return record.changed(phase=Phase.STOPPED, **values)


def killed(record: TaskRecord, *, cause: Cause) -> TaskRecord:
    """Every process of the task was SIGKILLed and its window removed."""
    RULES["kill"].check(record, cause)
    return record.changed(
        phase=Phase.STOPPED,
        stop_kind=StopKind.MANUAL,
        stopped_by=cause.value,
        pid=None,
        pane_id=None,
        restart_at=None,
        failed=None,
        handled_run=max(record.handled_run, record.run),
    )


def not_restarted(record: TaskRecord, *, cause: Cause, reason: str) -> TaskRecord:
    """A restart stopped the task but could not start it again."""
    RULES["give up a restart"].check(record, cause)
    if record.stop_kind is not StopKind.RESTART:
        raise IllegalTransition("only a restart can be given up")
    return record.changed(phase=Phase.FAILED, failed=reason, stop_kind=None)


def stable(record: TaskRecord, *, cause: Cause) -> TaskRecord:
    """The run stayed up (and healthy) long enough: the restart count starts again."""
    RULES["reset the restart count"].check(record, cause)
    return record.changed(restarts=0)


def checked(
    record: TaskRecord,
    *,
    run: int,
    check: CheckRecord,
    start_period: float,
    retries: int,
) -> TaskRecord:
    """Fold a health check of `run` into the record (a result of an older run is dropped)."""
    if record.phase is not Phase.UP or record.run != run:
        return record
    history = (*record.checks, check)[-HEALTH_HISTORY_LIMIT:]
    if check.healthy:
        return record.changed(
            checks=history,
            health=Health.HEALTHY,
            health_failures=0,
            healthy_since=record.healthy_since or check.at,
        )
    in_start_period = (
        record.healthy_since is None
        and record.started_at is not None
        and check.at - record.started_at < start_period
    )
    if in_start_period:
        return record.changed(checks=history)
    failures = record.health_failures + 1
    health = Health.UNHEALTHY if failures >= retries else record.health
    return record.changed(checks=history, health=health, health_failures=failures)


def repaired(record: TaskRecord, *, manual: bool, pane: Pane | None) -> TaskRecord:
    """A record rebuilt from what survived of a corrupt one, the stop marks and the pane."""
    alive = pane is not None and not pane.dead
    run = max(record.run, (pane.run or 0) if pane is not None else 0)
    if manual and not alive:
        return record.changed(phase=Phase.STOPPED, run=run, handled_run=run, restart_at=None)
    if pane is None:
        return record.changed(phase=Phase.IDLE, run=run, handled_run=run, restart_at=None)
    return record.changed(
        phase=Phase.UP, run=run, handled_run=min(record.handled_run, max(run - 1, 0))
    )


def _same_run(record: TaskRecord, run: int) -> None:
    if record.run != run:
        raise IllegalTransition(f"run {run} is not the task's current run ({record.run})")


# ------------------------------------------------------------------ the store


@dataclass(frozen=True)
class Read:
    """A record as found on disk, and what was wrong with the file, if anything."""

    record: TaskRecord
    problem: str | None = None


@functools.cache
def _adapter(name: str) -> TypeAdapter[Any]:
    annotation = TaskRecord.model_fields[name].annotation
    assert annotation is not None
    return TypeAdapter(annotation)


def _lenient(data: object) -> tuple[TaskRecord, list[str]]:
    """Every field that validates, defaults for the rest, and the names of the bad ones."""
    if not isinstance(data, dict):
        return TaskRecord(), ["the file holds no JSON object"]
    good: dict[str, Any] = {}
    bad: list[str] = []
    for name in TaskRecord.model_fields:
        if name not in data:
            continue
        try:
            good[name] = _adapter(name).validate_python(data[name])
        except (ValidationError, RecursionError):
            bad.append(name)
    try:
        return TaskRecord.model_validate(good), bad
    except ValidationError:
        return TaskRecord(), [*bad, "the fields do not fit together"]


class RecordStore:
    """Task records on disk: lock-free reads, short-locked atomic changes, stop marks."""

    def __init__(self, folder: Path, locks: Path) -> None:
        self.folder = folder
        self.locks = locks

    def _path(self, task: str) -> Path:
        if not task or len(task) > 64 or not set(task) <= _NAME_OK or task[0] in "_-":
            raise TaskmuxError(f"not a task name: {task!r}")
        return self.folder / f"{task}.json"

    def stop_mark(self, task: str) -> Path:
        """The file whose presence says a user, an agent or the config stopped the task."""
        return self.folder / f"{task}.stopped"

    def read(self, task: str) -> Read:
        """The task's record; a fresh one when none was saved; a repaired view when corrupt."""
        path = self._path(task)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return Read(TaskRecord())
        except OSError as exc:
            return self._damaged(task, TaskRecord(), f"cannot read {path}: {exc.strerror}")
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError):
            return self._damaged(task, TaskRecord(), f"{path} is not valid JSON")
        try:
            return Read(TaskRecord.model_validate(data))
        except (ValidationError, RecursionError):
            record, bad = _lenient(data)
            fields = ", ".join(bad) or "unknown"
            return self._damaged(task, record, f"{path} has invalid fields: {fields}")

    def _damaged(self, task: str, record: TaskRecord, problem: str) -> Read:
        if self.stop_mark(task).exists() and not record.manually_stopped:
            record = record.changed(phase=Phase.STOPPED, stop_kind=StopKind.MANUAL)
        return Read(record, problem)

    def get(self, task: str) -> TaskRecord:
        """The task's record (see `read`)."""
        return self.read(task).record

    async def change(self, task: str, change: Callable[[TaskRecord], TaskRecord]) -> TaskRecord:
        """Apply change to the record under its short lock and save it; StateWriteError if the
        state folder refuses (the stop mark is written first, so a manual stop survives)."""
        # Others go first: a stop of 500 tasks signals the first while the last are saved.
        await anyio.lowlevel.checkpoint()
        lock = FileLock(self.locks / f"record-{task}.lock", f"saving the record of {task}")
        try:
            await lock.acquire(RECORD_LOCK_S, task=task)
        except OSError as exc:
            raise StateWriteError(
                f"the record of task '{task}' cannot be locked in {self.locks}: "
                f"{exc.strerror or exc}"
            ) from exc
        try:
            new = change(self.get(task))
            self.save(task, new)
            return new
        finally:
            lock.release()

    def save(self, task: str, record: TaskRecord) -> None:
        """Write a record (and its stop mark) as it is; StateWriteError when that fails."""
        path = self._path(task)
        problems: list[str] = []
        mark = self.stop_mark(task)
        if record.manually_stopped:
            try:
                mark.touch(mode=0o600)
            except OSError as exc:
                problems.append(f"{mark}: {exc.strerror}")
        try:
            write_atomic(path, record.model_dump_json().encode())
        except OSError as exc:
            problems.append(f"{path}: {exc.strerror}")
        if not record.manually_stopped and not problems:
            with contextlib.suppress(FileNotFoundError):
                mark.unlink()
        if problems:
            raise StateWriteError(
                f"could not save the state of task '{task}' ({'; '.join(problems)})"
            )

    def forget(self, task: str) -> None:
        """Remove a task's record and stop mark."""
        for path in (self._path(task), self.stop_mark(task)):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def damaged(self, tasks: Iterable[str]) -> dict[str, str]:
        """The tasks whose record files are damaged, with what is wrong."""
        return {name: read.problem for name in tasks if (read := self.read(name)).problem}


# ------------------------------------------------------------------ the derived view


@dataclass(frozen=True)
class Observed:
    """A task's SPEC state and health, derived from its pane and its record."""

    state: TaskState
    health: Health
    pid: int | None
    exit_code: int | None
    exit_signal: str | None


INTERRUPT_WINDOW_S = 10.0


def interrupted_by(pane: Pane | None) -> Cause | None:
    """Who typed the interrupt key (C-c, C-\\, C-d) that this dead pane's run ended within
    INTERRUPT_WINDOW_S of, if anyone: its end is their stop, not a crash."""
    if pane is None or not pane.dead or not pane.interrupt or pane.dead_time is None:
        return None
    try:
        run, at, cause = pane.interrupt.split(" ")
        sent, who = float(at), Cause(cause)
    except ValueError:
        return None
    # tmux keeps the time of death in whole seconds.
    if int(run) != (pane.run or 0) or not -1.0 <= pane.dead_time - sent <= INTERRUPT_WINDOW_S:
        return None
    return who


def observe(task: TaskConfig, record: TaskRecord, pane: Pane | None) -> Observed:
    """The state vocabulary of SPEC §4, from what tmux shows and what was persisted."""
    if pane is not None and not pane.dead:
        health = record.health if task.has_check() else Health.UNKNOWN
        if record.phase is Phase.BACKOFF:
            state = TaskState.RESTARTING
        elif record.phase is Phase.LAUNCHING:
            state = TaskState.STARTING
        elif not task.has_check() or health is Health.HEALTHY:
            state = TaskState.RUNNING
        elif health is Health.UNHEALTHY:
            state = TaskState.UNHEALTHY
        else:
            state = TaskState.STARTING
        return Observed(state, health, pane.pid, None, None)
    code = pane.exit_status if pane is not None else None
    sig = describe_signal(pane.exit_signal) if pane is not None else None
    if pane is None and record.last_exit is not None:
        code = record.last_exit.code
        sig = describe_signal(record.last_exit.signal)
    states = {
        Phase.FAILED: TaskState.FAILED,
        Phase.BACKOFF: TaskState.RESTARTING,
        Phase.LAUNCHING: TaskState.STARTING,
        Phase.EXITED: TaskState.EXITED,
        Phase.UP: TaskState.EXITED if pane is not None else TaskState.STOPPED,
    }
    manual = pane is not None and (
        pane.stop_mark == StopKind.MANUAL.value or interrupted_by(pane) is not None
    )
    if record.phase is Phase.UP and manual:
        return Observed(TaskState.STOPPED, Health.UNKNOWN, None, code, sig)  # not yet recorded
    return Observed(states.get(record.phase, TaskState.STOPPED), Health.UNKNOWN, None, code, sig)
