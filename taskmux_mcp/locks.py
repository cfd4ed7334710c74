"""Cross-process locks on files in the state folder, taken without ever blocking an event loop.

A lock is an ``flock`` on a file that the kernel releases when its holder dies. Two rules keep
it honest when someone removes the file (or the whole ``locks/`` folder) under a holder: a
lock counts as taken only while the path still names the locked file, and a holder checks
that again (``held``) before it acts. Waiting is polling with a deadline, so a holder that is
frozen (SIGSTOP) costs a waiter a clear `TaskBusy` error naming it, never a hang.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import anyio
import psutil

from .errors import TaskBusy

POLL_S = 0.02
PROC_LOCKS = "/proc/locks"
_HOLDER_MAX = 4096


@dataclass(frozen=True)
class Holder:
    """Who holds a lock, as it wrote into the lock file."""

    pid: int
    what: str
    since: float

    def describe(self, now: float | None = None) -> str:
        """One phrase naming the holder, and what to do when it is frozen."""
        age = max(0.0, (time.time() if now is None else now) - self.since)
        text = f"pid {self.pid} ({self.what}, for {age:.0f}s)"
        try:
            status = psutil.Process(self.pid).status()
        except psutil.Error:
            return text
        if status == psutil.STATUS_STOPPED:
            text += (
                f", which is suspended (SIGSTOP): resume it with `kill -CONT {self.pid}` "
                f"or end it with `kill {self.pid}`"
            )
        return text


def is_locked(path: Path) -> bool | None:
    """Whether some process holds the lock of the file at path; None when there is no file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def flock_holders(dev: int, ino: int) -> list[int] | None:
    """Pids the kernel lists as holding an flock on the file; None when it cannot be asked."""
    try:
        table = Path(PROC_LOCKS).read_text()
    except OSError:
        return None
    wanted = f"{os.major(dev):02x}:{os.minor(dev):02x}:{ino}"
    pids = []
    for line in table.splitlines():
        fields = line.split()
        if "->" in fields:
            continue  # a waiter, not a holder
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == wanted:
            with contextlib.suppress(ValueError):
                pids.append(int(fields[4]))
    return pids


def _process_holder(pid: int) -> Holder:
    """A holder that did not write its identity (e.g. `flock(1)`): named from the process."""
    try:
        proc = psutil.Process(pid)
        return Holder(pid=pid, what=" ".join(proc.cmdline())[:200] or proc.name(),
                      since=proc.create_time())  # fmt: skip
    except psutil.Error:
        return Holder(pid=pid, what="unknown process", since=time.time())


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path)
    except OSError:
        return False
    own = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)


class FileLock:
    """An exclusive lock on one file, with the holder's identity written inside."""

    def __init__(self, path: Path, what: str) -> None:
        self.path = path
        self.what = what
        self._fd: int | None = None

    def try_acquire(self) -> bool:
        """Take the lock if it is free (never waits)."""
        if self._fd is not None:
            return True
        try:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except FileNotFoundError:  # the folder first (it is there but once: no mkdir then)
                self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError:
            # A read-only or full state folder: an existing lock file still locks (flock
            # works on a read-only descriptor); a missing one raises for the caller to report.
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        if not _same_file(fd, self.path):
            os.close(fd)  # removed or replaced while we locked it: the next try opens the new one
            return False
        holder = {"pid": os.getpid(), "what": self.what, "since": time.time()}
        with contextlib.suppress(OSError):  # a full disk must not stop a lock from working
            data = json.dumps(holder).encode()
            size = os.fstat(fd).st_size
            if size <= _HOLDER_MAX:  # padded over the last holder: a truncate costs a journal
                data = data.ljust(size)  # write on ext4 (0.3 ms), JSON ignores the spaces
            else:
                os.ftruncate(fd, 0)
            os.pwrite(fd, data, 0)
        self._fd = fd
        return True

    async def acquire(
        self,
        timeout: float,
        *,
        task: str,
        waiting: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        """Take the lock, polling until timeout; TaskBusy names the holder when it runs out."""
        deadline = time.monotonic() + timeout
        told = False
        while not self.try_acquire():
            if time.monotonic() >= deadline:
                raise TaskBusy(task, self.describe_holder(), timeout)
            if waiting is not None and not told:
                told = True
                await waiting(f"{task}: waiting for {self.describe_holder()}")
            await anyio.sleep(POLL_S)

    def held(self) -> bool:
        """Whether this object still holds the lock on the file the path names."""
        return self._fd is not None and _same_file(self._fd, self.path)

    def release(self) -> None:
        """Let go (the file stays: removing it would race with the next taker)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def holder(self) -> Holder | None:
        """Who holds the lock now: the kernel's word on the pid, the file's on what it does."""
        written: Holder | None = None
        try:
            with open(self.path, "rb") as handle:
                data = json.loads(handle.read(_HOLDER_MAX) or b"null")
                st = os.fstat(handle.fileno())
            written = Holder(int(data["pid"]), str(data["what"]), float(data["since"]))
        except (OSError, ValueError, TypeError, KeyError, RecursionError):
            try:
                st = os.stat(self.path)
            except OSError:
                return None
        pids = flock_holders(st.st_dev, st.st_ino)
        if pids is None or (written is not None and written.pid in pids):
            return written  # no /proc/locks to ask, or the file tells the truth
        if not pids:
            return None
        return _process_holder(pids[0])

    def describe_holder(self) -> str:
        """The holder as a phrase for an error message."""
        holder = self.holder()
        return holder.describe() if holder is not None else "another process"

    def __enter__(self) -> FileLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
