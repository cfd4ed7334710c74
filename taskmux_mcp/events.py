"""The project's event history: ``events.jsonl`` (bounded), and live subscriptions to it.

Each event is one JSON line appended with a single O_APPEND write, so processes can record
concurrently. When the file passes half of ``max_bytes`` it is renamed to ``events.jsonl.1``
(replacing the previous one) under a lock, so the pair stays within about ``max_bytes``.
Subscribers get events recorded in this process at once (an in-process bus) and events
recorded by other processes by tailing the file.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import AsyncIterator, Collection
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
from pydantic import ValidationError

from .errors import InvalidArgument
from .logs import lines_backward, parse_since
from .models import EventRecord, EventsResult
from .state import watch_file

if TYPE_CHECKING:
    import asyncio

log = logging.getLogger(__name__)

MAX_LIMIT = 10_000
SUBSCRIBER_QUEUE = 1000
_TEXT_MAX = 4000  # longest string kept in an event's details
_POLL = 1.0  # how often a subscription reads the file when it cannot be watched
_WATCHED_POLL = 30.0  # the safety net under inotify's wake-ups


class EventType(StrEnum):
    """What happened."""

    STARTED = "started"
    EXITED = "exited"
    STOPPED = "stopped"
    KILLED = "killed"
    RESTART_SCHEDULED = "restart_scheduled"
    RESTARTED = "restarted"
    GAVE_UP = "gave_up"
    HEALTH_CHANGED = "health_changed"
    PORT_FREED = "port_freed"
    PORT_BUSY = "port_busy"
    HOOK_FAILED = "hook_failed"
    CONFIG_RELOADED = "config_reloaded"
    CONFIG_INVALID = "config_invalid"
    MONITOR_STARTED = "monitor_started"
    RECORD_REPAIRED = "record_repaired"
    LOG_WRITER_REPLACED = "log_writer_replaced"
    INPUT_SENT = "input_sent"


class Cause(StrEnum):
    """Who made it happen."""

    USER = "user"
    AGENT = "agent"
    POLICY = "policy"
    HEALTH = "health"
    CONFIG = "config"


def _bounded(value: Any) -> Any:
    """JSON-native copy of details, with long strings cut."""
    if isinstance(value, str):
        return value if len(value) <= _TEXT_MAX else value[:_TEXT_MAX] + "…"
    if isinstance(value, dict):
        return {str(k): _bounded(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_bounded(v) for v in value]
    if value is None or isinstance(value, bool | int | float):
        return value
    return _bounded(str(value))


def _parse(line: bytes) -> tuple[EventRecord, int | None] | None:
    """An event and the pid that wrote it, from one stored line (None if torn or garbled)."""
    try:
        data = json.loads(line)
        pid = data.pop("pid", None)
        return EventRecord.model_validate(data), pid if isinstance(pid, int) else None
    except (ValueError, TypeError, AttributeError, ValidationError, RecursionError):
        return None


class _Bus:
    """Fan-out of this process's events to its subscriptions, and a wake-up for them when
    another process appends to the file (inotify, via watchdog); safe from any thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = threading.Lock()
        self.subscribers: weakref.WeakSet[Subscription] = weakref.WeakSet()
        self._observer: Any = None

    def publish(self, event: EventRecord) -> None:
        with self.lock:
            subscribers = list(self.subscribers)
        for subscriber in subscribers:
            subscriber._push(event)

    def poke(self) -> None:
        """Wake every subscription to read the file."""
        with self.lock:
            subscribers = list(self.subscribers)
        for subscriber in subscribers:
            subscriber._wake_up()

    def watch_file(self) -> None:
        """Start watching the file for other processes' appends (once per process)."""
        with self.lock:
            if self._observer is not None:
                return
            self._observer = False  # tried: a folder that cannot be watched leaves the polling
        try:
            stop = watch_file(self.path, self.poke)
        except (OSError, RuntimeError) as exc:
            log.debug("cannot watch %s, polling it: %s", self.path, exc)
            return
        with self.lock:
            self._observer = stop

    def watched(self) -> bool:
        """Whether other processes' appends wake the subscriptions (else they poll)."""
        return bool(self._observer)


_BUSES: dict[str, _Bus] = {}
_BUSES_LOCK = threading.Lock()


def _bus_for(path: Path) -> _Bus:
    key = os.path.abspath(path)
    with _BUSES_LOCK:
        return _BUSES.setdefault(key, _Bus(Path(key)))


class EventLog:
    """A project's events.jsonl: record, read back, subscribe."""

    def __init__(self, path: Path, *, max_bytes: int = 4 * 1024 * 1024) -> None:
        self.path = Path(path)
        self.max_bytes = max(1024, max_bytes)
        self._bus = _bus_for(self.path)

    @property
    def rotated(self) -> Path:
        """Where older events go."""
        return self.path.with_name(self.path.name + ".1")

    def record(
        self, type: EventType, cause: Cause, task: str | None = None, **details: Any
    ) -> EventRecord:
        """Append an event and tell subscribers; disk errors are logged, never raised."""
        return self.try_record(type, cause, task, **details)[0]

    def try_record(
        self, type: EventType, cause: Cause, task: str | None = None, **details: Any
    ) -> tuple[EventRecord, str | None]:
        """Like record, and also say why the event could not be written, if it could not."""
        event = EventRecord(
            time=datetime.now(UTC),
            type=str(type),
            task=task,
            cause=str(cause),
            details=_bounded(details),
        )
        stored = {**event.model_dump(mode="json"), "pid": os.getpid()}
        line = json.dumps(stored, ensure_ascii=False, separators=(",", ":")) + "\n"
        problem = None
        try:
            self._append(line.encode())
        except OSError as exc:
            problem = f"could not record the {event.type} event in {self.path}: {exc.strerror}"
            log.warning("%s", problem)
        self._bus.publish(event)
        return event, problem

    def _append(self, data: bytes) -> None:
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        except FileNotFoundError:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, data)
            size = os.fstat(fd).st_size
        finally:
            os.close(fd)
        if size > self.max_bytes // 2:
            self._rotate()

    def _rotate(self) -> None:
        fd = os.open(str(self.path) + ".lock", os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            deadline = time.monotonic() + 1.0
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        return  # another process is rotating
                    time.sleep(0.005)
            with contextlib.suppress(FileNotFoundError):
                if self.path.stat().st_size > self.max_bytes // 2:
                    os.replace(self.path, self.rotated)
        finally:
            os.close(fd)

    def read(
        self,
        task: str | None = None,
        since: str | None = None,
        limit: int = 50,
        *,
        tasks: Collection[str] | None = None,
    ) -> EventsResult:
        """The newest `limit` events (of some tasks, since a moment or the last start), in order."""
        if limit < 1:
            raise InvalidArgument(f"limit must be at least 1 (got {limit})")
        limit = min(limit, MAX_LIMIT)
        wanted = set(tasks) if tasks else ({task} if task is not None else None)
        when = parse_since(since, datetime.now(UTC)) if since is not None else None
        out: list[EventRecord] = []
        for path in (self.path, self.rotated):
            for line in lines_backward(path):
                parsed = _parse(line)
                if parsed is None:
                    continue
                event = parsed[0]
                if wanted is not None and event.task not in wanted:
                    continue
                if isinstance(when, datetime) and event.time < when:
                    return EventsResult(events=out[::-1], truncated=False)
                if len(out) >= limit:
                    return EventsResult(events=out[::-1], truncated=True)
                out.append(event)
                if when == "start" and event.type == EventType.STARTED:
                    return EventsResult(events=out[::-1], truncated=False)
        return EventsResult(events=out[::-1], truncated=False)

    def subscribe(self) -> Subscription:
        """Events recorded from now on, by this process and by others (async iterator)."""
        return Subscription(self.path, self._bus)


class Subscription(AsyncIterator[EventRecord]):
    """A live feed of events; a slow reader loses the oldest ones (counted in `dropped`)."""

    def __init__(self, path: Path, bus: _Bus, *, maxlen: int = SUBSCRIBER_QUEUE) -> None:
        self.dropped = 0
        self._path = path
        self._bus = bus
        self._maxlen = maxlen
        self._queue: deque[EventRecord] = deque()
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._closed = False
        self._ino: tuple[int, int] | None = None
        self._offset = 0
        self._partial = b""
        with contextlib.suppress(OSError):
            st = path.stat()
            self._ino, self._offset = (st.st_dev, st.st_ino), st.st_size
        with bus.lock:
            bus.subscribers.add(self)
        bus.watch_file()  # before the subscription is handed out: no append falls between

    def _push(self, event: EventRecord) -> None:
        with self._lock:
            if len(self._queue) >= self._maxlen:
                self._queue.popleft()
                self.dropped += 1
            self._queue.append(event)
            loop, wake = self._loop, self._wake
        if loop is None or wake is None:
            return
        import asyncio  # loaded once a subscriber waits, not by every CLI call

        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
            if running is loop:
                wake.set()
            else:
                loop.call_soon_threadsafe(wake.set)

    def _wake_up(self) -> None:
        with self._lock:
            loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
                loop.call_soon_threadsafe(wake.set)

    def _pop(self) -> EventRecord | None:
        with self._lock:
            return self._queue.popleft() if self._queue else None

    def _read_file(self) -> None:
        """Queue the events other processes appended since the last look."""
        try:
            st = self._path.stat()
            current: tuple[int, int] | None = (st.st_dev, st.st_ino)
        except OSError:
            current = None
        if self._ino is not None and current != self._ino:
            self._consume(self._read_from(self._path.with_name(self._path.name + ".1"), self._ino))
            self._ino, self._offset, self._partial = current, 0, b""
        if current is not None:
            self._ino = current
            self._consume(self._read_from(self._path, current))

    def _consume(self, data: bytes) -> None:
        if not data:
            return
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            parsed = _parse(line)
            if parsed is not None and parsed[1] != os.getpid():
                self._push(parsed[0])

    def _read_from(self, path: Path, ino: tuple[int, int]) -> bytes:
        try:
            with path.open("rb") as f:
                st = os.fstat(f.fileno())
                if (st.st_dev, st.st_ino) != ino:
                    return b""
                if st.st_size < self._offset:
                    self._offset = 0
                f.seek(self._offset)
                data = f.read()
        except OSError:
            return b""
        self._offset += len(data)
        return data

    async def __anext__(self) -> EventRecord:
        if self._closed:
            raise StopAsyncIteration
        if self._wake is None:
            import asyncio

            wake = asyncio.Event()
            with self._lock:
                self._loop, self._wake = asyncio.get_running_loop(), wake
        assert self._wake is not None
        while not self._closed:
            self._wake.clear()
            event = self._pop()
            if event is None:
                self._read_file()
                event = self._pop()
            if event is not None:
                return event
            with anyio.move_on_after(_WATCHED_POLL if self._bus.watched() else _POLL):
                await self._wake.wait()
        raise StopAsyncIteration

    def close(self) -> None:
        """Stop receiving events."""
        self._closed = True
        with self._bus.lock:
            self._bus.subscribers.discard(self)
        if self._wake is not None and self._loop is not None:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._wake.set)

    async def aclose(self) -> None:
        """Stop receiving events."""
        self.close()

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
