"""Whether a task is up: its checks, folded into its record, and waiting until it is ready."""

from __future__ import annotations

import math
import re
import time
from typing import TYPE_CHECKING

import anyio

from . import processes, records
from .backend import Pane
from .events import Cause, EventType
from .health import ProbeMethod, ProbeOutcome, probe_checks
from .lifecycle import drain
from .logs import run_line_matching
from .models import Health, TaskResult, TaskState
from .records import CheckRecord, Observed, TaskRecord, observe
from .terminal import cut_line

if TYPE_CHECKING:
    from .project import Project

SETTLE_S = 1.0
READY_POLL_S = 0.2
START_PROBE_S = 0.02  # within its start period, a start's probes begin this far apart
LOG_TAIL_LINES = 15


def probe_pause(spent: float, alive_for: float, start_period: float) -> float:
    """The wait before a start's next probe, given what the last one took (its recording
    included): within the task's start period, when it is expected to become ready, what is
    left of START_PROBE_S, or as long as a slow probe took (probes take at most half the
    time); READY_POLL_S after it, and at most."""
    if alive_for >= start_period:
        return READY_POLL_S
    return min(READY_POLL_S, max(START_PROBE_S - spent, spent))


def is_one_shot(project: Project, name: str) -> bool:
    """A task run to completion (`oneshot = true`): success is exit 0."""
    return project.config.task(name).oneshot


def ready_line(project: Project, name: str, run: int) -> str | None:
    """The line of run `run` that matched the task's ready_log (remembered once seen)."""
    pattern = project.config.task(name).ready_log
    if pattern is None:
        return None
    seen = project.ready_lines.get(name)
    if seen is not None and seen[0] == run:
        return seen[1]
    line = run_line_matching(project.logs, name, run, re.compile(pattern))
    if line is not None:
        project.ready_lines[name] = (run, line)
    return line


async def probe(project: Project, name: str) -> ProbeOutcome | None:
    """Run the task's checks once (its ready_log first), without recording anything."""
    task = project.config.task(name)
    if task.oneshot:
        return None
    logged: ProbeOutcome | None = None
    if task.ready_log is not None:
        run = project.records.get(name).run
        began = time.perf_counter()
        line = await anyio.to_thread.run_sync(ready_line, project, name, run)
        elapsed = round((time.perf_counter() - began) * 1000, 1)
        if line is None:
            detail = f"no line of run {run} matches ready_log {task.ready_log!r} yet"
            return ProbeOutcome(False, ProbeMethod.LOG, detail, elapsed)
        logged = ProbeOutcome(True, ProbeMethod.LOG, f"ready_log matched: {cut_line(line, 200)}",
                              elapsed)  # fmt: skip
    outcome = await probe_checks(
        health_check=task.health_check,
        health_url=project.health_url_of(name),
        port=project.port_of(name),
        expected_status=task.health_expected_status,
        expected_body=task.health_expected_body,
        cwd=task.working_dir(project.config.root),
        env=project.task_env(name),
        timeout=task.health_timeout,
    )
    if logged is None or outcome is None:
        return outcome or logged
    detail = f"{logged.detail}; {outcome.method} {'ok' if outcome.healthy else 'failed'}: " + (
        outcome.detail
    )
    return ProbeOutcome(outcome.healthy, outcome.method, detail,
                        logged.duration_ms + outcome.duration_ms)  # fmt: skip


async def check(
    project: Project, name: str, record: TaskRecord, *, cause: Cause | None
) -> ProbeOutcome | None:
    """Probe a running task and fold the result into its record (retries, start period)."""
    task = project.config.task(name)
    outcome = await probe(project, name)
    if outcome is None:
        return None
    entry = CheckRecord(
        healthy=outcome.healthy,
        method=str(outcome.method),
        detail=outcome.detail,
        duration_ms=outcome.duration_ms,
        at=project.clock.now(),
    )
    updated = await project.records.change(
        name,
        lambda r: records.checked(
            r,
            run=record.run,
            check=entry,
            start_period=task.health_start_period,
            retries=task.health_retries,
        ),
    )
    if cause is not None and updated.health != record.health:
        project.events.record(
            EventType.HEALTH_CHANGED,
            cause,
            name,
            health=updated.health.value,
            previous=record.health.value,
            detail=outcome.detail,
        )
    return outcome


def _being_restarted(record: TaskRecord, pane: Pane | None) -> bool:
    """Whether the run ended because a restart (by anyone) is replacing it."""
    if record.phase is records.Phase.LAUNCHING:
        return True
    restart = records.StopKind.RESTART
    if record.phase is records.Phase.STOPPING and record.stop_kind is restart:
        return True
    return pane is not None and pane.stop_mark == restart.value and record.run > (pane.run or 0)


def exit_text(seen: Observed) -> str:
    """How a run ended, in words ("killed by SIGKILL", "exited with status 3")."""
    if seen.exit_signal:
        return f"killed by {seen.exit_signal}"
    if seen.exit_code is None:
        return seen.state.value
    return f"exited with status {seen.exit_code}"


class _PaneView:
    """The task's pane as a readiness wait needs it, without a tmux call per probe: tmux is
    read every READY_POLL_S, and at once when /proc no longer shows the pane's process."""

    def __init__(self, project: Project, name: str) -> None:
        self.project = project
        self.name = name
        self.pane: Pane | None = None
        self.read_at = -math.inf

    async def get(self) -> Pane | None:
        """The pane as tmux last reported it, read again when that may have changed."""
        pane = self.pane
        stale = time.monotonic() - self.read_at >= READY_POLL_S
        if pane is None or pane.dead or stale or not processes.is_running(pane.pid):
            self.pane = (await self.project.backend.snapshot()).panes.get(self.name)
            self.read_at = time.monotonic()
        return self.pane


async def await_ready(
    project: Project, name: str, action: str, deadline: float, began: float, *, finish: bool = False
) -> TaskResult:
    """Wait until the task is healthy or settled, has exited, or the deadline passes.

    Within its start period its checks come probe_pause() apart (tens of ms), so whoever waits
    on it (a dependent, the caller) hears within about one probe that it became ready; the
    waits are the project's clock's. finish: wait for its exit even when it is a long-running
    task (as one-shot tasks are waited).
    """
    task = project.config.task(name)
    finish = finish or task.oneshot
    clock = project.clock
    view = _PaneView(project, name)
    last_check: ProbeOutcome | None = None
    while True:
        pane = await view.get()
        record = project.records.get(name)
        elapsed = round(time.monotonic() - began, 2)
        waiting = (pane is None or pane.dead) and _being_restarted(record, pane)
        if waiting and time.monotonic() < deadline:
            await clock.sleep(READY_POLL_S)  # another caller restarts it: wait for that run
            continue
        if pane is None or pane.dead:
            await drain(project, name, pane)
            record = project.records.get(name)
            seen = observe(task, record, pane)
            ok = seen.exit_code == 0 and seen.exit_signal is None and pane is not None
            if record.manually_stopped:
                error = f"stopped by {record.stopped_by or 'someone'} before it was ready"
                return TaskResult(
                    name=name, ok=False, action="stopped", state=TaskState.STOPPED,
                    error=error, duration_s=elapsed,
                )  # fmt: skip
            return TaskResult(
                name=name,
                ok=ok,
                action="exited" if ok else "crashed",
                state=seen.state,
                health=seen.health,
                exit_code=seen.exit_code,
                exit_signal=seen.exit_signal,
                error=None if ok else exit_text(seen),
                log_tail=[] if ok else project.verdict_tail(name, LOG_TAIL_LINES),
                duration_s=elapsed,
            )
        alive_for = clock.now() - (record.started_at or clock.now())
        pause = READY_POLL_S
        if task.has_check() and not finish:
            probed = time.monotonic()
            last_check = await check(project, name, record, cause=None)
            spent = time.monotonic() - probed
            pause = probe_pause(spent, alive_for, task.health_start_period)
            record = project.records.get(name)
            if record.health is Health.HEALTHY:
                return _result(project, name, pane, action, True, elapsed)
            if record.health is Health.UNHEALTHY:
                why = "health check failing"
                return _result(project, name, pane, "not_ready", False, elapsed, why, last_check)
        elif not finish and alive_for >= SETTLE_S:
            return _result(project, name, pane, action, True, elapsed)
        elif not finish:
            pause = min(READY_POLL_S, SETTLE_S - alive_for)  # the last pause ends as it settles
        if time.monotonic() >= deadline:
            what = (
                "to finish" if finish else "to become healthy" if task.has_check() else "to settle"
            )
            why = f"timed out waiting {what}"
            return _result(project, name, pane, "not_ready", False, elapsed, why, last_check)
        await clock.sleep(min(pause, max(0.0, deadline - time.monotonic())))


def _result(
    project: Project,
    name: str,
    pane: Pane,
    action: str,
    ok: bool,
    elapsed: float,
    error: str | None = None,
    check: ProbeOutcome | None = None,
) -> TaskResult:
    seen = observe(project.config.task(name), project.records.get(name), pane)
    return TaskResult(
        name=name,
        ok=ok,
        action=action,
        state=seen.state,
        health=seen.health,
        pid=seen.pid,
        error=error,
        check_output=check.detail if check else None,
        log_tail=[] if ok else project.verdict_tail(name, LOG_TAIL_LINES),
        duration_s=elapsed,
    )
