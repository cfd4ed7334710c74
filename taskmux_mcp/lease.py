"""Which monitor leads a project: numbered leases, renewed by their holder, taken over when stale.

A lease is a file ``lease-<epoch>`` in the state folder's ``monitor/`` folder. A claimant
writes and locks a private file, then links it to the next epoch's name, which succeeds for
exactly one claimant. The holder keeps the file locked (the kernel lets go when it dies) and
renews it by setting its time. A standby takes over when the newest lease is unlocked (its
holder died) or was not renewed for `LEASE_TTL_S` (its holder is frozen). A holder checks
before each action that its lease is still the newest, is still in place, and was renewed in
time; a holder that finds itself late steps down, because someone may be taking over.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from .clock import Clock
from .locks import is_locked

LEASE_TTL_S = 3.0
RENEW_S = LEASE_TTL_S / 2  # a leader late by up to half the TTL still holds
_NAME = re.compile(r"lease-(\d{1,12})\Z")


@dataclass(frozen=True)
class LeaseInfo:
    """The newest lease, as a reader sees it."""

    epoch: int
    pid: int
    host: str
    since: float
    renewed: float
    alive: bool


def _file(folder: Path, epoch: int) -> Path:
    return folder / f"lease-{epoch:012d}"


def _epochs(folder: Path) -> list[int]:
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    return sorted(int(m[1]) for name in names if (m := _NAME.match(name)))


def read_lease(folder: Path, now: float) -> LeaseInfo | None:
    """The newest lease and whether its holder is alive and renewing; None when there is none."""
    epochs = _epochs(folder)
    if not epochs:
        return None
    path = _file(folder, epochs[-1])
    try:
        st = os.stat(path)
        data = json.loads(path.read_bytes())
        pid, host, since = int(data["pid"]), str(data["host"]), float(data["since"])
    except (OSError, ValueError, TypeError, KeyError, RecursionError):
        return None
    locked = is_locked(path)
    alive = bool(locked) and now - st.st_mtime <= LEASE_TTL_S
    return LeaseInfo(epochs[-1], pid, host, since, st.st_mtime, alive)


def _holder_pid(path: Path) -> int | None:
    """The pid written in a lease file (None when it cannot be read)."""
    try:
        return int(json.loads(path.read_bytes())["pid"])
    except (OSError, ValueError, TypeError, KeyError, RecursionError):
        return None


class Lease:
    """One monitor's claim to lead its project."""

    def __init__(self, folder: Path, *, host: str, clock: Clock) -> None:
        self.folder = folder
        self.host = host
        self.clock = clock
        self.epoch: int | None = None
        self._fd: int | None = None
        self._renewed = 0.0
        self._holder: tuple[int, int | None, float] | None = None  # epoch, pid, renewed

    def try_lead(self) -> bool:
        """Lead if we already do, or if the newest lease's holder is dead or frozen."""
        if self.leading():
            return True
        epochs = _epochs(self.folder)
        top = epochs[-1] if epochs else 0
        if top and self._holder_alive(top):
            return False
        self._holder = None
        return self._claim(top + 1)

    def _holder_alive(self, epoch: int) -> bool:
        path = _file(self.folder, epoch)
        locked = is_locked(path)
        if not locked:
            return False
        try:
            renewed = os.stat(path).st_mtime
        except OSError:
            return False
        if self._holder is None or self._holder[0] != epoch:
            self._holder = (epoch, _holder_pid(path), renewed)
        else:
            self._holder = (epoch, self._holder[1], renewed)
        return self.clock.now() - renewed <= LEASE_TTL_S

    def holder(self) -> tuple[int | None, float] | None:
        """For a standby: the leader's pid (None when unreadable) and the moment its lease
        goes stale unless renewed (when to look again); None when no one else was seen
        leading at the last try."""
        if self._holder is None or self._fd is not None:
            return None
        _, pid, renewed = self._holder
        return pid, renewed + LEASE_TTL_S

    def renew_at(self) -> float | None:
        """For the leader: when its lease is next due for renewal (wall time)."""
        return self._renewed + RENEW_S if self._fd is not None else None

    def _claim(self, epoch: int) -> bool:
        now = self.clock.now()
        try:
            self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            tmp = self.folder / f".claim-{os.getpid()}-{secrets.token_hex(4)}"
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            body = {"pid": os.getpid(), "host": self.host, "since": now, "epoch": epoch}
            os.write(fd, json.dumps(body).encode())
            os.utime(fd, (now, now))
            os.link(tmp, _file(self.folder, epoch))
        except OSError:
            os.close(fd)
            return False
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        self._fd, self.epoch, self._renewed = fd, epoch, now
        for old in _epochs(self.folder):
            if old < epoch:
                with contextlib.suppress(OSError):
                    os.unlink(_file(self.folder, old))
        return True

    def leading(self) -> bool:
        """Whether we lead now; renews the lease when due, steps down when late or replaced."""
        if self._fd is None or self.epoch is None:
            return False
        now = self.clock.now()
        path = _file(self.folder, self.epoch)
        if now - self._renewed > LEASE_TTL_S:
            self._step_down()  # we were frozen: a standby may be taking over right now
            return False
        try:
            st = os.stat(path)
        except OSError:
            self._step_down()
            return False
        own = os.fstat(self._fd)
        if (st.st_dev, st.st_ino) != (own.st_dev, own.st_ino) or _file(
            self.folder, self.epoch + 1
        ).exists():
            self._step_down()
            return False
        if now - self._renewed >= RENEW_S:
            try:
                os.utime(self._fd, (now, now))
            except OSError:
                self._step_down()
                return False
            self._renewed = now
        return True

    def _step_down(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
        self._fd, self.epoch = None, None

    def release(self) -> None:
        """Stop leading and remove our lease, so a standby takes over at once."""
        if self._fd is not None and self.epoch is not None:
            path = _file(self.folder, self.epoch)
            with contextlib.suppress(OSError):
                st, own = os.stat(path), os.fstat(self._fd)
                if (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino):
                    os.unlink(path)
        self._step_down()
