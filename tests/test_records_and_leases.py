"""The record's state machine, the record store's repairs, task locks and the monitor lease."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import anyio
import pytest
from support import FakeClock, wait_until

from taskmux_mcp import records
from taskmux_mcp.backend import Pane
from taskmux_mcp.errors import IllegalTransition, StateWriteError, TaskBusy
from taskmux_mcp.events import Cause
from taskmux_mcp.lease import LEASE_TTL_S, Lease, read_lease
from taskmux_mcp.locks import FileLock
from taskmux_mcp.policy import Action, Decision
from taskmux_mcp.records import ExitRecord, Phase, RecordStore, StopKind, TaskRecord

NOW = 1_000_000.0
RESTART = Decision(Action.RESTART, "exited with status 1; restart 1 in 1s", 1.0)
GIVE_UP = Decision(Action.GIVE_UP, "gave up", 0.0)
NOTHING = Decision(Action.NOTHING, "clean exit", 0.0)


def launched_run() -> TaskRecord:
    """A task whose first run is up."""
    r = records.launch(TaskRecord(), cause=Cause.USER, now=NOW, automatic=False, digest="d")
    return records.launched(r, cause=Cause.USER, run=1, pid=42, pane_id="%1")


def pane(*, dead: bool, run: int | None = 1, stop_mark: str | None = None) -> Pane:
    """A pane as tmux would report it."""
    return Pane("api", "s", "@1", "%1", 42, dead, 1 if dead else None, None, None, run, stop_mark)


# ------------------------------------------------------------------ transitions


def test_a_run_moves_through_its_phases() -> None:
    r = launched_run()
    assert (r.phase, r.run, r.pid) == (Phase.UP, 1, 42)
    ended = records.ended(
        r, cause=Cause.POLICY, run=1, exit=ExitRecord(code=1), decision=RESTART, now=NOW
    )
    assert ended.phase is Phase.BACKOFF and ended.restart_at == NOW + 1 and ended.handled_run == 1
    again = records.launch(ended, cause=Cause.POLICY, now=NOW + 1, automatic=True, digest="d")
    assert (again.phase, again.run, again.restarts, again.total_restarts) == (
        Phase.LAUNCHING, 2, 1, 1,
    )  # fmt: skip
    manual = records.launch(again, cause=Cause.AGENT, now=NOW + 2, automatic=False, digest="d")
    assert manual.restarts == 0 and manual.total_restarts == 1


def test_illegal_transitions_are_refused() -> None:
    r = launched_run()
    with pytest.raises(IllegalTransition, match="run 2 is not the task's current run"):
        records.ended(r, cause=Cause.POLICY, run=2, exit=ExitRecord(), decision=NOTHING, now=NOW)
    with pytest.raises(IllegalTransition, match="user may not record the end of a run"):
        records.ended(r, cause=Cause.USER, run=1, exit=ExitRecord(), decision=NOTHING, now=NOW)
    ended = records.ended(
        r, cause=Cause.POLICY, run=1, exit=ExitRecord(), decision=NOTHING, now=NOW
    )
    with pytest.raises(IllegalTransition, match="the task is exited"):
        records.ended(ended, cause=Cause.POLICY, run=1, exit=ExitRecord(), decision=NOTHING,
                      now=NOW)  # fmt: skip
    with pytest.raises(IllegalTransition, match="only the restart policy"):
        records.launch(r, cause=Cause.USER, now=NOW, automatic=True, digest=None)
    with pytest.raises(IllegalTransition, match="may not make a policy stop"):
        records.stop(r, cause=Cause.AGENT, kind=StopKind.POLICY)
    with pytest.raises(IllegalTransition, match="the task is up"):
        records.stopped(r, cause=Cause.USER, exit=None)
    with pytest.raises(IllegalTransition, match="only a restart can be given up"):
        records.not_restarted(
            records.stop(r, cause=Cause.USER, kind=StopKind.MANUAL), cause=Cause.USER, reason="x"
        )


def test_a_manual_stop_is_final_and_a_policy_stop_backs_off() -> None:
    r = launched_run()
    stopping = records.stop(r, cause=Cause.AGENT, kind=StopKind.MANUAL)
    assert stopping.manually_stopped and stopping.handled_run == 1
    done = records.stopped(stopping, cause=Cause.AGENT, exit=ExitRecord(signal=2, expected=True))
    assert done.phase is Phase.STOPPED and done.stopped_by == "agent" and done.manually_stopped
    policy = records.stop(r, cause=Cause.HEALTH, kind=StopKind.POLICY)
    with pytest.raises(IllegalTransition, match="needs the time of the restart"):
        records.stopped(policy, cause=Cause.HEALTH, exit=None)
    backing = records.stopped(policy, cause=Cause.HEALTH, exit=None, restart_at=NOW + 5)
    assert backing.phase is Phase.BACKOFF and not backing.manually_stopped
    restart = records.stop(r, cause=Cause.USER, kind=StopKind.RESTART)
    assert records.stopped(restart, cause=Cause.USER, exit=None).phase is Phase.STOPPING


def test_checks_of_an_older_run_are_dropped() -> None:
    r = launched_run()
    check = records.CheckRecord(healthy=False, method="http", detail="503", duration_ms=1, at=NOW)
    assert records.checked(r, run=2, check=check, start_period=0, retries=1) == r
    failed = records.checked(r, run=1, check=check, start_period=0, retries=1)
    assert failed.health.value == "unhealthy" and failed.checks == (check,)


def test_repair_keeps_a_manual_stop_and_follows_a_live_pane() -> None:
    blank = TaskRecord()
    assert records.repaired(blank, manual=True, pane=pane(dead=True, run=4)).manually_stopped
    live = records.repaired(blank, manual=False, pane=pane(dead=False, run=4))
    assert (live.phase, live.run, live.handled_run) == (Phase.UP, 4, 0)
    crashed = records.repaired(blank, manual=False, pane=pane(dead=True, run=4))
    assert crashed.phase is Phase.UP and crashed.handled_run < crashed.run  # the policy decides
    assert records.repaired(blank, manual=False, pane=None).phase is Phase.IDLE


# ------------------------------------------------------------------ the store


@pytest.fixture
def store(tmp_path: Path) -> RecordStore:
    """A record store in a fresh folder."""
    (tmp_path / "tasks").mkdir()
    return RecordStore(tmp_path / "tasks", tmp_path / "locks")


def test_reads_are_lenient_and_say_what_is_wrong(store: RecordStore) -> None:
    anyio.run(lambda: store.change("api", lambda r: launched_run()))
    path = store.folder / "api.json"
    data = json.loads(path.read_text())
    data["restarts"] = "many"
    path.write_text(json.dumps(data))
    read = store.read("api")
    assert read.problem and "restarts" in read.problem
    assert read.record.run == 1 and read.record.pid == 42 and read.record.restarts == 0
    path.write_text("[" * 100_000)
    assert "not valid JSON" in (store.read("api").problem or "")
    path.write_bytes(b"\xff\xfe")
    assert store.read("api").problem


def test_the_stop_mark_outlives_the_record(store: RecordStore) -> None:
    stopped = records.stopped(
        records.stop(launched_run(), cause=Cause.USER, kind=StopKind.MANUAL),
        cause=Cause.USER,
        exit=None,
    )
    store.save("api", stopped)
    assert store.stop_mark("api").exists()
    (store.folder / "api.json").write_text('{"phase": 7}')
    assert store.read("api").record.manually_stopped
    store.save("api", launched_run())
    assert not store.stop_mark("api").exists()


def test_a_refused_write_is_a_clear_error(store: RecordStore, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    broken = RecordStore(blocker / "tasks", tmp_path / "locks")
    with pytest.raises(StateWriteError, match="could not save the state of task 'api'"):
        broken.save("api", launched_run())
    with pytest.raises(Exception, match="not a task name"):
        store.read("../etc")


def test_a_record_change_never_waits_forever(
    store: RecordStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(records, "RECORD_LOCK_S", 0.3)
    lock = FileLock(store.locks / "record-api.lock", "a test")
    assert lock.try_acquire()
    try:

        async def change() -> None:
            with anyio.fail_after(10):
                await store.change("api", lambda r: r)

        with pytest.raises(TaskBusy, match=f"pid {os.getpid()} \\(a test"):
            anyio.run(change)
    finally:
        lock.release()


# ------------------------------------------------------------------ locks


def test_a_removed_lock_file_is_not_a_second_lock(tmp_path: Path) -> None:
    path = tmp_path / "locks" / "task-api.lock"
    first = FileLock(path, "first")
    assert first.try_acquire() and first.held()
    shutil.rmtree(tmp_path / "locks")
    assert not first.held(), "a holder must notice its lock file was removed"
    second = FileLock(path, "second")
    assert second.try_acquire()
    assert not FileLock(path, "third").try_acquire()
    first.release()
    second.release()


def test_a_holder_written_over_a_longer_one_reads_whole(tmp_path: Path) -> None:
    path = tmp_path / "task-api.lock"
    first = FileLock(path, "restarting api after its config changed, mcp " + "x" * 200)
    assert first.try_acquire()
    first.release()
    second = FileLock(path, "stop")  # shorter: written over the first without a truncate
    assert second.try_acquire()
    try:
        holder = second.holder()
        assert holder is not None and (holder.pid, holder.what) == (os.getpid(), "stop")
    finally:
        second.release()


def test_the_holder_of_a_lock_is_named_with_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "task-api.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import time
            from pathlib import Path
            from taskmux_mcp.locks import FileLock
            lock = FileLock(Path({str(path)!r}), "stopping api, cli")
            assert lock.try_acquire()
            print("locked", flush=True)
            time.sleep(60)
        """)],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        os.kill(holder.pid, signal.SIGSTOP)
        waiter = FileLock(path, "starting api, mcp")
        with pytest.raises(TaskBusy) as busy:
            anyio.run(lambda: waiter.acquire(0.2, task="api"))
        message = str(busy.value)
        assert f"pid {holder.pid} (stopping api, cli" in message
        assert f"kill -CONT {holder.pid}" in message
    finally:
        holder.kill()
        holder.wait()
    assert FileLock(path, "after").try_acquire()


# ------------------------------------------------------------------ the lease


def test_one_leads_and_a_frozen_leader_is_replaced(tmp_path: Path) -> None:
    clock = FakeClock()
    first = Lease(tmp_path / "monitor", host="a", clock=clock)
    second = Lease(tmp_path / "monitor", host="b", clock=clock)
    assert first.try_lead() and not second.try_lead()
    info = read_lease(tmp_path / "monitor", clock.now())
    assert info is not None and info.alive and info.host == "a" and info.epoch == 1
    clock.advance(LEASE_TTL_S - 0.5)
    assert first.leading()  # renews
    clock.advance(LEASE_TTL_S - 0.5)
    assert not second.try_lead(), "a renewing leader was replaced"
    clock.advance(LEASE_TTL_S + 0.1)  # first stopped renewing: frozen
    assert second.try_lead() and second.epoch == 2
    assert not first.leading(), "the frozen leader must notice it lost the lead"
    assert not first.try_lead()
    second.release()
    assert read_lease(tmp_path / "monitor", clock.now()) is None
    assert first.try_lead()
    first.release()


def test_a_lease_whose_files_are_removed_is_given_up(tmp_path: Path) -> None:
    clock = FakeClock()
    first = Lease(tmp_path / "monitor", host="a", clock=clock)
    second = Lease(tmp_path / "monitor", host="b", clock=clock)
    assert first.try_lead()
    shutil.rmtree(tmp_path / "monitor")
    assert second.try_lead()
    assert not first.leading() and not first.try_lead()
    second.release()


def test_a_dead_leader_is_replaced_at_once(tmp_path: Path) -> None:
    folder = tmp_path / "monitor"
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import time
            from pathlib import Path
            from taskmux_mcp.clock import SYSTEM_CLOCK
            from taskmux_mcp.lease import Lease
            lease = Lease(Path({str(folder)!r}), host="doomed", clock=SYSTEM_CLOCK)
            assert lease.try_lead()
            print("leading", flush=True)
            time.sleep(60)
        """)],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "leading"
        from taskmux_mcp.clock import SYSTEM_CLOCK

        standby = Lease(folder, host="standby", clock=SYSTEM_CLOCK)
        assert not standby.try_lead()
        holder.kill()
        holder.wait()
        wait_until(standby.try_lead, timeout=1.0, interval=0.01)  # no TTL to wait for
        standby.release()
    finally:
        if holder.poll() is None:
            holder.kill()
