"""The clock seam: every wait of the restart policy, the start periods and the monitor lease.

Wall time (`now`) is what processes share (records, lease renewals); monotonic time is for
waits inside one process. Tests pass a fake clock and run the monitor's logic in milliseconds.
"""

from __future__ import annotations

import time
from typing import Protocol

import anyio


class Clock(Protocol):
    """Where the policy and the monitor read time and wait."""

    def now(self) -> float:
        """Wall time in seconds since the epoch (comparable across processes)."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (this process only)."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait that long."""
        ...


class SystemClock:
    """The real clock."""

    def now(self) -> float:
        """Wall time."""
        return time.time()

    def monotonic(self) -> float:
        """Monotonic time."""
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        """A real wait."""
        await anyio.sleep(seconds)


SYSTEM_CLOCK = SystemClock()
