"""The monitor's logic on real tmux, driven pass by pass with a fake clock: backoff, give-up,
start periods, counter resets, corrupt records, and acting only under a task's lock."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator

import anyio
import pytest
from support import FakeClock, Workspace, events_of, status_of, wait_until

from taskmux_mcp.lease import LEASE_TTL_S, RENEW_S
from taskmux_mcp.models import Health, TaskState
from taskmux_mcp.monitor import RESTART_LEAD_S, STARTING_CHECK_S, SWEEP_S, Monitor
from taskmux_mcp.project import Project as Facade
from taskmux_mcp.records import Phase


@pytest.fixture
def clock() -> FakeClock:
    """A clock that moves only when the test says."""
    return FakeClock()


@pytest.fixture
def fresh(project: Workspace, clock: FakeClock) -> Iterator[tuple[Facade, Monitor]]:
    """A facade and a monitor leading its project, both on the fake clock."""

    def make() -> tuple[Facade, Monitor]:
        facade = project.open(clock=clock)
        monitor = Monitor(facade, host="test", watch_config=False)
        assert monitor.lease.try_lead()
        return facade, monitor

    holder: list[Monitor] = []

    def opened() -> tuple[Facade, Monitor]:
        pair = make()
        holder.append(pair[1])
        return pair

    yield opened  # type: ignore[misc]
    for monitor in holder:
        monitor.lease.release()


def dead(facade: Facade, name: str) -> bool:
    """Whether tmux reports the task's pane dead."""
    pane = facade.backend.snapshot_sync().panes.get(name)
    return pane is not None and pane.dead


def step(monitor: Monitor) -> None:
    """One monitor pass, its actions awaited."""
    anyio.run(monitor.step)


def tick(clock: FakeClock, monitor: Monitor, seconds: float) -> None:
    """Let time pass while the monitor keeps renewing its lease, as its loop does."""
    left = seconds
    while left > 0:
        chunk = min(0.5, left)
        clock.advance(chunk)
        left -= chunk
        assert monitor.lease.leading()


def crash_and_step(facade: Facade, monitor: Monitor, name: str) -> None:
    """Wait (real time) for the run to end, then let the monitor see it."""
    wait_until(lambda: dead(facade, name), timeout=10)
    step(monitor)


def test_backoff_schedules_each_restart_at_its_time_then_gives_up(
    project: Workspace, fresh: object, clock: FakeClock
) -> None:
    project.write(
        """
        [tasks.crash]
        command = "echo boom; sleep 0.1; exit 1"
        max_restarts = 3
        restart_backoff = 2.0
        """
    )
    facade, monitor = fresh()  # type: ignore[operator]
    anyio.run(lambda: facade.start(wait=False))
    for attempt, delay in enumerate([1.0, 2.0, 4.0], start=1):
        crash_and_step(facade, monitor, "crash")
        record = facade.records.get("crash")
        assert record.phase is Phase.BACKOFF and record.run == attempt
        assert status_of(facade, "crash").state is TaskState.RESTARTING
        restart_at = record.restart_at
        assert restart_at is not None
        tick(clock, monitor, delay - RESTART_LEAD_S - 0.01)
        step(monitor)
        assert facade.records.get("crash").run == attempt, "restarted before its delay"
        tick(clock, monitor, 0.02)  # its lead: locked and prepared, spawned at its time
        step(monitor)
        record = facade.records.get("crash")
        assert record.run == attempt + 1
        assert clock.now() >= restart_at and (record.started_at or 0) >= restart_at
    crash_and_step(facade, monitor, "crash")
    record = facade.records.get("crash")
    assert record.phase is Phase.FAILED and "max_restarts = 3" in (record.failed or "")
    assert [e["delay_s"] for e in events_of(facade, "restart_scheduled", "crash")] == [1, 2, 4]
    assert len(events_of(facade, "gave_up", "crash")) == 1
    assert len(events_of(facade, "exited", "crash")) == 4
    tick(clock, monitor, 3600)
    step(monitor)
    assert facade.records.get("crash").run == 4, "a failed task was restarted"


def test_zero_backoff_restarts_at_once(project: Workspace, fresh: object) -> None:
    project.write(
        """
        [tasks.crash]
        command = "exit 1"
        restart_backoff = 0
        max_restarts = 2
        """
    )
    facade, monitor = fresh()  # type: ignore[operator]
    anyio.run(lambda: facade.start(wait=False))
    crash_and_step(facade, monitor, "crash")
    assert facade.records.get("crash").run == 2  # in the same pass, no clock movement
    assert events_of(facade, "restart_scheduled", "crash")[0]["delay_s"] == 0


def test_clean_exits_follow_each_policy(
    project: Workspace, fresh: object, clock: FakeClock
) -> None:
    project.write(
        """
        [tasks.once]
        command = "exit 0"
        [tasks.again]
        command = "exit 0"
        restart_policy = "always"
        restart_backoff = 1.0
        [tasks.never]
        command = "exit 3"
        restart_policy = "no"
        """
    )
    facade, monitor = fresh()  # type: ignore[operator]
    anyio.run(lambda: facade.start(wait=False))
    for name in ("once", "again", "never"):
        wait_until(lambda name=name: dead(facade, name), timeout=10)
    step(monitor)
    tick(clock, monitor, 1.5)
    step(monitor)
    assert facade.records.get("once").phase is Phase.EXITED
    assert facade.records.get("never").phase is Phase.EXITED
    assert facade.records.get("again").run == 2
    assert status_of(facade, "never").exit_code == 3
    assert facade.records.get("once").run == facade.records.get("never").run == 1


def test_failed_checks_count_only_after_the_start_period(
    project: Workspace, fresh: object, clock: FakeClock
) -> None:
    project.write(
        """
        [tasks.api]
        command = "sleep 100000"
        health_check = "exit 1"
        health_interval = 10
        health_retries = 2
        health_start_period = 30
        restart_backoff = 1.0
        """
    )
    facade, monitor = fresh()  # type: ignore[operator]
    anyio.run(lambda: facade.start(wait=False))
    step(monitor)  # learns the pid
    for _ in range(3):  # t = 0, 10, 20: inside the start period
        anyio.run(monitor.check_due)
        tick(clock, monitor, 10)
    record = facade.records.get("api")
    assert len(record.checks) == 3 and record.health_failures == 0
    assert record.health is Health.UNKNOWN and record.run == 1
    anyio.run(monitor.check_due)  # t = 30: counts
    assert facade.records.get("api").health_failures == 1
    tick(clock, monitor, 10)
    anyio.run(monitor.check_due)  # the second failure: unhealthy, replaced
    record = facade.records.get("api")
    assert record.health is Health.UNHEALTHY and record.phase is Phase.BACKOFF
    assert dead(facade, "api"), "the unhealthy run was not stopped"
    tick(clock, monitor, 1.01)
    step(monitor)
    assert facade.records.get("api").run == 2
    scheduled = events_of(facade, "restart_scheduled", "api")
    assert len(scheduled) == 1 and "health check failing" in str(scheduled[0]["reason"])
    assert events_of(facade, "health_changed", "api")[0]["_cause"] == "health"


def test_a_passing_check_ends_the_start_period(
    project: Workspace, fresh: object, clock: FakeClock, tmp_path: object
) -> None:
    flag = project.root / "healthy"
    flag.touch()
    project.write(
        f"""
        [tasks.api]
        command = "sleep 100000"
        health_check = "test -e {flag}"
        health_interval = 5
        health_retries = 1
        health_start_period = 600
        """
    )
    facade, monitor = fresh()  # type: ignore[operator]
    anyio.run(lambda: facade.start(wait=False))
    step(monitor)
    anyio.run(monitor.check_due)
    assert facade.records.get("api").health is Health.HEALTHY
    flag.unlink()
    tick(clock, monitor, 5)
    anyio.run(monitor.check_due)
    assert facade.records.get("api").health is Health.UNHEALTHY, "start period not ended"


def test_restart_count_resets_after_a_stable_minute(
    project: Workspace, fresh: object, clock: FakeClock
) -> None:
    marker = project.root / "ran-once"
    project.write(
        f"""
        [tasks.app]
        command = "if [ -e {marker} ]; then exec sleep 100000; fi; touch {marker}; exit 1"
        restart_backoff = 1.0
        """
    )
    facade, monitor = fresh()  # type: ignore[operator]
    anyio.run(lambda: facade.start(wait=False))
    crash_and_step(facade, monitor, "app")
    tick(clock, monitor, 1.01)
    step(monitor)
    assert facade.records.get("app").restarts == 1
    tick(clock, monitor, 59)
    step(monitor)
    assert facade.records.get("app").restarts == 1
    tick(clock, monitor, 2)
    step(monitor)
    assert facade.records.get("app").restarts == 0
    assert facade.records.get("app").total_restarts == 1


def test_the_monitor_acts_only_with_the_tasks_lock(project: Workspace, fresh: object) -> None:
    project.write(
        """
        [tasks.crash]
        command = "exit 1"
        restart_backoff = 0
        """
    )
    facade, monitor = fresh()  # type: ignore[operator]
    anyio.run(lambda: facade.start(wait=False))
    wait_until(lambda: dead(facade, "crash"), timeout=10)
    lock = facade.task_lock("crash", "a test holding it")
    assert lock.try_acquire()
    try:
        step(monitor)
        assert facade.records.get("crash").run == 1 and not events_of(facade, "exited")
    finally:
        lock.release()
    step(monitor)
    assert facade.records.get("crash").run == 2


def test_a_monitor_that_does_not_lead_does_nothing(project: Workspace, clock: FakeClock) -> None:
    project.write(
        """
        [tasks.crash]
        command = "exit 1"
        restart_backoff = 0
        """
    )
    facade = project.open(clock=clock)
    leader = Monitor(facade, host="first", watch_config=False)
    standby = Monitor(facade, host="second", watch_config=False)
    try:
        assert leader.lease.try_lead() and not standby.lease.try_lead()
        anyio.run(lambda: facade.start(wait=False))
        wait_until(lambda: dead(facade, "crash"), timeout=10)
        step(standby)
        assert facade.records.get("crash").run == 1
        clock.advance(3.5)  # the leader stopped renewing: frozen
        assert standby.lease.try_lead()
        assert not leader.lease.leading(), "a late leader must step down before acting"
        step(leader)
        assert facade.records.get("crash").run == 1
        step(standby)
        assert facade.records.get("crash").run == 2
        assert len(events_of(facade, "restarted", "crash")) == 1
    finally:
        leader.lease.release()
        standby.lease.release()


def test_a_corrupt_record_is_repaired_and_the_policy_still_applies(
    project: Workspace, fresh: object
) -> None:
    project.write(
        """
        [tasks.api]
        command = "sleep 100000"
        restart_backoff = 0
        """
    )
    facade, monitor = fresh()  # type: ignore[operator]
    anyio.run(lambda: facade.start(wait=False))
    path = facade.paths.tasks / "api.json"
    path.write_text("{not json")
    assert status_of(facade, "api").state is TaskState.RUNNING
    assert facade.status_sync().warnings
    step(monitor)
    repaired = events_of(facade, "record_repaired", "api")
    assert len(repaired) == 1 and "not valid JSON" in str(repaired[0]["problem"])
    assert facade.records.read("api").problem is None
    pid = status_of(facade, "api").pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    crash_and_step(facade, monitor, "api")
    assert status_of(facade, "api").state is TaskState.RUNNING
    assert status_of(facade, "api").pid not in (None, pid)


def test_a_wrong_typed_field_never_forgets_a_manual_stop(
    project: Workspace, fresh: object, clock: FakeClock
) -> None:
    project.write(
        """
        [tasks.api]
        command = "sleep 100000"
        restart_policy = "always"
        restart_backoff = 0
        """
    )
    facade, monitor = fresh()  # type: ignore[operator]
    anyio.run(lambda: facade.start(wait=False))
    assert anyio.run(lambda: facade.stop(["api"])).ok
    path = facade.paths.tasks / "api.json"
    data = json.loads(path.read_text())
    data["phase"] = 42
    data["restarts"] = "many"
    path.write_text(json.dumps(data))
    assert facade.records.get("api").manually_stopped, "the stop mark was not honoured"
    step(monitor)
    tick(clock, monitor, 10)
    step(monitor)
    assert status_of(facade, "api").state is TaskState.STOPPED
    assert status_of(facade, "api").manually_stopped
    assert facade.records.get("api").run == 1
    assert not events_of(facade, "restarted", "api")


def test_an_interrupted_restart_is_completed(project: Workspace, fresh: object) -> None:
    project.write(
        """
        [tasks.api]
        command = "sleep 100000"
        """
    )
    facade, monitor = fresh()  # type: ignore[operator]
    anyio.run(lambda: facade.start(wait=False))

    async def stop_for_a_restart_and_die() -> None:
        from taskmux_mcp import lifecycle
        from taskmux_mcp.events import Cause
        from taskmux_mcp.records import StopKind

        lock = facade.task_lock("api", "a restart that dies after its stop")
        assert lock.try_acquire()
        await lifecycle.stop(facade, "api", Cause.USER, kind=StopKind.RESTART, lock=lock)
        lock.release()  # the process "died" here, before starting the task again

    anyio.run(stop_for_a_restart_and_die)
    assert facade.records.get("api").phase is Phase.STOPPING
    step(monitor)
    assert status_of(facade, "api").state is TaskState.RUNNING
    assert facade.records.get("api").run == 2 and facade.records.get("api").restarts == 0


def test_a_missing_cwd_backs_off_without_spawning(
    project: Workspace, fresh: object, clock: FakeClock
) -> None:
    (project.root / "app").mkdir()
    project.write(
        """
        [tasks.app]
        command = "sleep 100000"
        cwd = "app"
        restart_backoff = 2.0
        max_restarts = 3
        """
    )
    facade, monitor = fresh()  # type: ignore[operator]
    anyio.run(lambda: facade.start(wait=False))
    (project.root / "app").rmdir()
    pid = status_of(facade, "app").pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    crash_and_step(facade, monitor, "app")
    for delay in (1.0, 2.0, 4.0):
        tick(clock, monitor, delay)
        step(monitor)
    record = facade.records.get("app")
    assert record.phase is Phase.FAILED and record.run == 4  # the first run, three refused
    scheduled = events_of(facade, "restart_scheduled", "app")
    assert [e["delay_s"] for e in scheduled] == [1.0, 2.0, 4.0]
    assert all("does not exist" in str(e["reason"]) for e in scheduled[1:])
    assert "does not exist" in str(events_of(facade, "gave_up", "app")[0]["reason"])
    pane = facade.backend.snapshot_sync().panes["app"]
    assert pane.run == 1, "a spawn was attempted without its cwd"


def test_the_loop_sleeps_until_the_next_thing_falls_due(
    project: Workspace, fresh: object, clock: FakeClock
) -> None:
    project.write(
        """
        [tasks.crash]
        command = "sleep 0.1; exit 1"
        restart_backoff = 2.0
        """
    )
    facade, monitor = fresh()  # type: ignore[operator]
    monitor.acting = True
    swept = time.monotonic()
    assert monitor._next_wake(swept, None) == pytest.approx(RENEW_S, abs=0.05)  # renewal only
    anyio.run(lambda: facade.start(wait=False))
    crash_and_step(facade, monitor, "crash")  # restart due in 1 s
    clock.advance(0.7)
    assert monitor.lease.leading()  # not yet renewed: due 1 s after the claim
    assert monitor._next_wake(swept, None) == pytest.approx(0.3 - RESTART_LEAD_S, abs=0.05)
    clock.advance(0.31)
    assert monitor.lease.leading()  # renewed now: the restart is the next thing due
    assert monitor._next_wake(swept, None) == pytest.approx(0.0, abs=0.05)
    assert monitor._next_wake(swept - SWEEP_S, None) == 0.0  # the safety sweep is due


def test_a_standby_sleeps_until_the_leaders_lease_would_go_stale(
    project: Workspace, clock: FakeClock
) -> None:
    project.write(
        """
        [tasks.idle]
        command = "sleep 1000"
        """
    )
    facade = project.open(clock=clock)
    leader = Monitor(facade, host="first", watch_config=False)
    standby = Monitor(facade, host="second", watch_config=False)
    try:
        assert leader.lease.try_lead() and not standby.lease.try_lead()
        assert standby._watched() == [os.getpid()]  # the leader's pid: its end wakes the standby
        clock.advance(RENEW_S)
        stale_in = LEASE_TTL_S - RENEW_S
        assert standby._next_wake(time.monotonic(), None) == pytest.approx(stale_in, abs=0.05)
        assert leader.lease.leading()  # renews
        assert not standby.lease.try_lead()
        assert standby._next_wake(time.monotonic(), None) == pytest.approx(LEASE_TTL_S, abs=0.05)
        clock.advance(LEASE_TTL_S + 0.02)  # the leader froze: the standby's wake finds it stale
        assert standby.lease.try_lead()
    finally:
        leader.lease.release()
        standby.lease.release()


def test_a_starting_tasks_checks_come_every_second_until_it_is_healthy(
    project: Workspace, fresh: object, clock: FakeClock
) -> None:
    flag = project.root / "ready"
    project.write(
        f"""
        [tasks.api]
        command = "sleep 100000"
        health_check = "test -e {flag}"
        health_interval = 10
        health_start_period = 30
        """
    )
    facade, monitor = fresh()  # type: ignore[operator]
    anyio.run(lambda: facade.start(wait=False))
    step(monitor)  # learns the pid
    anyio.run(monitor.check_due)  # t = 0: the first check, at once
    for expected in (2, 3):  # still starting: one check a second, not one per 10 s
        tick(clock, monitor, STARTING_CHECK_S)
        anyio.run(monitor.check_due)
        assert len(facade.records.get("api").checks) == expected
    flag.touch()
    tick(clock, monitor, STARTING_CHECK_S)
    anyio.run(monitor.check_due)
    assert facade.records.get("api").health is Health.HEALTHY
    checks = len(facade.records.get("api").checks)
    for _ in range(5):  # healthy: back to its interval
        tick(clock, monitor, 1.5)
        anyio.run(monitor.check_due)
    assert len(facade.records.get("api").checks) == checks
    tick(clock, monitor, 3)
    anyio.run(monitor.check_due)
    assert len(facade.records.get("api").checks) == checks + 1


def test_a_pass_that_brings_back_a_vanished_task_learns_its_new_window(
    project: Workspace, fresh: object, clock: FakeClock
) -> None:
    project.write(
        """
        [tasks.api]
        command = "sleep 1000"
        restart_backoff = 0
        stop_grace_period = 0.5
        """
    )
    facade, monitor = fresh()  # type: ignore[operator]
    assert anyio.run(lambda: facade.start(wait=False)).ok
    step(monitor)
    project.server.kill()
    for pid in project.task_pids():
        os.kill(pid, signal.SIGKILL)
    step(monitor)  # the restart runs inside this pass: its window is not in the pass's snapshot
    pane = facade.backend.snapshot_sync().panes.get("api")
    assert pane is not None and not pane.dead
    assert monitor._known_pids.get("api") == pane.pid
