"""Many concurrent actions, few expensive calls: one reading of a shared fact (the process
table, tmux's panes) serves every caller who asked while the previous reading ran, and requests
made at once (windows to open, tmux commands) go out together in one batch."""

from __future__ import annotations

import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import anyio
import anyio.to_thread

T = TypeVar("T")


@dataclass
class _Reading(Generic[T]):
    """A reading in flight, awaited by the callers of one event loop."""

    began: float
    done: anyio.Event = field(default_factory=lambda: anyio.Event())  # noqa: PLW0108
    value: T | None = None
    ok: bool = False


class Coalesced(Generic[T]):
    """Calls `read` for a caller only when no reading began after that caller asked."""

    def __init__(self, read: Callable[[], T]) -> None:
        self._read = read
        self._lock = threading.Lock()
        self._began = -1.0
        self._value: T | None = None
        self._reading: dict[int, _Reading[T]] = {}  # by the thread of its event loop
        self._rested = 0.0  # when an async reading may begin again

    async def aget(self) -> T:
        """Async form of get: callers wait on the event loop, not each in a worker thread, so a
        thousand of them cost one thread and the readings they share."""
        asked = time.monotonic()
        loop = threading.get_ident()  # each event loop has its own readings in flight
        while loop in self._reading:
            reading = self._reading[loop]
            await reading.done.wait()
            if reading.began >= asked and reading.ok:
                return reading.value  # type: ignore[return-value]
        reading = _Reading(time.monotonic())
        self._reading[loop] = reading
        try:
            # Readings back to back at most half the time: the source (tmux) has other work.
            await anyio.sleep(max(0.0, self._rested - time.monotonic()))
            reading.began = time.monotonic()
            reading.value = await anyio.to_thread.run_sync(self._get_from, reading.began)
            reading.ok = True
            return reading.value
        finally:
            now = time.monotonic()
            self._rested = now + (now - reading.began)
            del self._reading[loop]
            reading.done.set()

    def get(self) -> T:
        """A reading begun after this call (shared with whoever else asked meanwhile)."""
        return self._get_from(time.monotonic())

    def _get_from(self, asked: float) -> T:
        with self._lock:
            if self._value is not None and self._began >= asked:
                return self._value
            self._began = time.monotonic()
            self._value = None
            self._value = self._read()
            return self._value


Q = TypeVar("Q")
R = TypeVar("R")


@dataclass
class _Slot(Generic[Q, R]):
    request: Q
    # anyio imports Event on first use: a lambda keeps that out of every command's start-up
    done: anyio.Event = field(default_factory=lambda: anyio.Event())  # noqa: PLW0108
    result: R | BaseException | None = None


class Batched(Generic[Q, R]):
    """Requests made in this process while a batch is under way go together in the next one;
    `handle` gets a batch and returns each request's result or exception, in order."""

    def __init__(self, handle: Callable[[list[Q]], Awaitable[Sequence[R | BaseException]]]) -> None:
        self._handle = handle
        self._pending: list[_Slot[Q, R]] = []
        self._busy = False

    async def submit(self, request: Q) -> R:
        """The request's result, once its batch is done. A caller cancelled meanwhile may
        still have its request carried out: shield the call where that matters."""
        slot: _Slot[Q, R] = _Slot(request)
        self._pending.append(slot)
        if not self._busy:
            self._busy = True
            try:
                with anyio.CancelScope(shield=True):  # the others wait on this caller's batches
                    await anyio.sleep(0)  # the requests made at the same moment join the first
                    while self._pending:
                        batch, self._pending = self._pending, []
                        try:
                            results = await self._handle([s.request for s in batch])
                        except Exception as exc:  # every waiter hears of it, none hangs
                            results = [exc] * len(batch)
                        for waiting, result in zip(batch, results, strict=True):
                            waiting.result = result
                            waiting.done.set()
            finally:
                self._busy = False
        if not slot.done.is_set():
            await slot.done.wait()
        if isinstance(slot.result, BaseException):
            raise slot.result
        return slot.result  # type: ignore[return-value]
