"""The event history: causes, bounds, concurrent writers, torn lines, live subscriptions."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from enum import Enum
from pathlib import Path

import anyio
import anyio.to_thread
import pytest

from taskmux_mcp import events
from taskmux_mcp.errors import InvalidArgument
from taskmux_mcp.events import Cause, EventLog, EventType, Subscription
from taskmux_mcp.models import EventRecord

RECORDER = """
import sys
from pathlib import Path
from taskmux_mcp.events import Cause, EventLog, EventType
log = EventLog(Path(sys.argv[1]), max_bytes=int(sys.argv[4]))
for i in range(int(sys.argv[3])):
    log.record(EventType.EXITED, Cause.POLICY, "worker", proc=sys.argv[2], n=i)
"""


def record_elsewhere(path: Path, tag: str, count: int, max_bytes: int = 4 << 20) -> None:
    """Record events from another process."""
    subprocess.run(
        [sys.executable, "-c", RECORDER, str(path), tag, str(count), str(max_bytes)],
        check=True,
        timeout=60,
    )


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def next_event(sub: Subscription, timeout: float = 3.0) -> EventRecord:
    with anyio.fail_after(timeout):
        return await sub.__anext__()


def test_events_carry_time_type_task_cause_and_details(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "events.jsonl")
    before = datetime.now(UTC)
    log.record(EventType.STARTED, Cause.AGENT, "api", pid=123)
    log.record(EventType.EXITED, Cause.POLICY, "api", status=3, signal=None)
    log.record(EventType.RESTART_SCHEDULED, Cause.POLICY, "api", delay=1.5)
    log.record(EventType.CONFIG_RELOADED, Cause.CONFIG, changed=["api"], path=tmp_path)
    events = log.read().events
    assert [(e.type, e.task, e.cause) for e in events] == [
        ("started", "api", "agent"),
        ("exited", "api", "policy"),
        ("restart_scheduled", "api", "policy"),
        ("config_reloaded", None, "config"),
    ]
    assert events[0].details == {"pid": 123}
    assert events[1].details == {"status": 3, "signal": None}
    assert events[2].details == {"delay": 1.5}
    assert events[3].details == {"changed": ["api"], "path": str(tmp_path)}
    assert all(before <= e.time <= datetime.now(UTC) for e in events)
    stored = json.loads((tmp_path / "events.jsonl").read_text().splitlines()[0])
    assert stored["type"] == "started"
    assert stored["cause"] == "agent"


def test_read_filters_by_task_since_and_limit(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "events.jsonl")
    log.record(EventType.STARTED, Cause.USER, "api")
    log.record(EventType.STARTED, Cause.USER, "db")
    log.record(EventType.EXITED, Cause.POLICY, "api", status=1)
    log.record(EventType.STARTED, Cause.POLICY, "api")
    log.record(EventType.HEALTH_CHANGED, Cause.HEALTH, "api", healthy=True)
    assert [e.task for e in log.read(task="db").events] == ["db"]
    assert [e.type for e in log.read(task="api", since="start").events] == [
        "started",
        "health_changed",
    ]
    last_two = log.read(limit=2)
    assert [e.type for e in last_two.events] == ["started", "health_changed"]
    assert last_two.truncated
    assert not log.read(limit=50).truncated
    assert len(log.read(since="1m").events) == 5
    future = (datetime.now(UTC) + timedelta(minutes=1)).isoformat()
    assert log.read(since=future).events == []
    with pytest.raises(InvalidArgument):
        log.read(limit=0)
    with pytest.raises(InvalidArgument, match="since"):
        log.read(since="whenever")


def test_details_are_json_and_long_text_is_cut(tmp_path: Path) -> None:
    class Color(Enum):
        RED = "red"

    log = EventLog(tmp_path / "events.jsonl")
    event = log.record(EventType.HOOK_FAILED, Cause.USER, "api", output="x" * 10_000, c=Color.RED)
    assert len(event.details["output"]) == 4001
    assert event.details["c"] == "Color.RED"
    assert log.read().events[0].details == event.details


def test_events_stay_bounded_and_keep_the_newest(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    log = EventLog(path, max_bytes=8192)
    for i in range(2000):
        log.record(EventType.EXITED, Cause.POLICY, "api", n=i)
    line = len(path.read_text().splitlines()[-1]) + 1
    total = path.stat().st_size + (tmp_path / "events.jsonl.1").stat().st_size
    assert total <= 8192 + 2 * line
    assert [e.details["n"] for e in log.read(limit=20).events] == list(range(1980, 2000))
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "events.jsonl",
        "events.jsonl.1",
        "events.jsonl.lock",
    ]


def test_torn_and_garbled_lines_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    log = EventLog(path)
    log.record(EventType.STARTED, Cause.USER, "a")
    with path.open("a") as f:
        f.write('{"time": "2026-11-26T00:00:00+00:00", "type": "exi')  # torn by a crash
        f.write("\nnot json at all\n[1, 2]\n{}\n")
    log.record(EventType.STOPPED, Cause.USER, "a")
    assert [e.type for e in log.read().events] == ["started", "stopped"]


def test_recording_never_raises_on_disk_errors(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    log = EventLog(blocker / "events.jsonl")
    with caplog.at_level(logging.WARNING, logger="taskmux_mcp.events"):
        event = log.record(EventType.KILLED, Cause.AGENT, "api", signal="SIGKILL")
    assert event.type == "killed"
    assert "could not record the killed event" in caplog.text
    assert log.read().events == []


def test_two_processes_recording_at_once_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    procs = [
        subprocess.Popen([sys.executable, "-c", RECORDER, str(path), tag, "400", str(4 << 20)])
        for tag in ("p1", "p2")
    ]
    assert [p.wait(timeout=60) for p in procs] == [0, 0]
    events = EventLog(path).read(limit=10_000).events
    assert len(events) == 800
    seen = {(e.details["proc"], e.details["n"]) for e in events}
    assert seen == {(tag, n) for tag in ("p1", "p2") for n in range(400)}
    for tag in ("p1", "p2"):
        assert [e.details["n"] for e in events if e.details["proc"] == tag] == list(range(400))


@pytest.mark.anyio
async def test_subscribers_get_events_of_this_process_and_of_others(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    log = EventLog(path)
    async with log.subscribe() as sub:
        mine = log.record(EventType.STARTED, Cause.AGENT, "api", pid=1)
        started = time.monotonic()
        assert await next_event(sub) == mine
        assert time.monotonic() - started < 0.1  # in-process events come at once
        await anyio.to_thread.run_sync(record_elsewhere, path, "other", 2)
        theirs = [await next_event(sub), await next_event(sub)]
        assert [(e.type, e.details) for e in theirs] == [
            ("exited", {"proc": "other", "n": 0}),
            ("exited", {"proc": "other", "n": 1}),
        ]
        later = await anyio.to_thread.run_sync(
            lambda: log.record(EventType.STOPPED, Cause.USER, "api")
        )
        assert await next_event(sub) == later  # recorded from a worker thread; no duplicates
        with anyio.move_on_after(0.6):
            extra = await sub.__anext__()
            pytest.fail(f"an event was delivered twice: {extra}")


@pytest.mark.anyio
async def test_other_processes_events_wake_subscribers_without_polling(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(events, "_POLL", 120.0)  # only the file watch can deliver in time
    monkeypatch.setattr(events, "_WATCHED_POLL", 120.0)
    path = tmp_path / "events.jsonl"
    log = EventLog(path)
    log.record(EventType.MONITOR_STARTED, Cause.POLICY)
    async with log.subscribe() as sub, anyio.create_task_group() as group:
        group.start_soon(anyio.to_thread.run_sync, record_elsewhere, path, "woke", 1)
        got = await next_event(sub, timeout=20)
    assert got.details == {"proc": "woke", "n": 0}


@pytest.mark.anyio
async def test_subscription_follows_other_writers_across_rotation(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    log = EventLog(path, max_bytes=4096)
    log.record(EventType.MONITOR_STARTED, Cause.POLICY)
    async with log.subscribe() as sub:
        await anyio.to_thread.run_sync(record_elsewhere, path, "rot", 20, 4096)
        got = [(await next_event(sub)).details["n"] for _ in range(20)]
    assert got == list(range(20))
    assert (tmp_path / "events.jsonl.1").exists()


@pytest.mark.anyio
async def test_a_slow_subscriber_loses_the_oldest_and_never_blocks_recording(
    tmp_path: Path,
) -> None:
    log = EventLog(tmp_path / "events.jsonl", max_bytes=64 << 20)
    sub = log.subscribe()
    idle = log.subscribe()  # never read: must not slow anything down
    started = time.monotonic()
    for i in range(1500):
        log.record(EventType.EXITED, Cause.POLICY, "api", n=i)
    assert time.monotonic() - started < 5
    assert sub.dropped == 500
    assert idle.dropped == 500
    assert (await next_event(sub)).details["n"] == 500
    sub.close()
    idle.close()
    with pytest.raises(StopAsyncIteration):
        await sub.__anext__()
