"""Assigned ports (`port = "auto"`): chosen once per checkout and task, kept until released.

A port is picked below the kernel's ephemeral range (so outgoing connections never hold it),
free to bind now, and not assigned to any other checkout on this machine; each checkout's
choices live in its state folder (`ports.json`), read by every other checkout while one
assigns, under one machine-wide lock.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import socket
import time
from collections.abc import Iterable
from pathlib import Path

from .locks import FileLock
from .state import write_atomic

LOW, HIGH = 20000, 32000
BOOK_LOCK_S = 5.0


def can_bind(port: int) -> bool:
    """Whether a listener could bind the port on every interface now."""
    for family, host in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError:
            continue  # no IPv6 here
        with sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError:
                return False
    return True


def read_book(path: Path) -> dict[str, int]:
    """A checkout's assigned ports by task (empty when missing or unreadable)."""
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {str(k): v for k, v in data.items() if isinstance(v, int) and LOW <= v < HIGH}


class PortBook:
    """One checkout's assigned ports."""

    def __init__(self, path: Path, key: str) -> None:
        self.path = path
        self.key = key

    def assigned(self) -> dict[str, int]:
        """Task → port, as assigned so far."""
        return read_book(self.path)

    async def assign(self, tasks: Iterable[str], reserved: Iterable[int] = ()) -> dict[str, int]:
        """Give each task without a port one (never a reserved one, e.g. the project's fixed
        ports); every assignment of this checkout."""
        book = self.assigned()
        wanted = [t for t in tasks if t not in book]
        if not wanted:
            return book
        lock = FileLock(self.path.parent.parent / "ports.lock", "assigning ports")
        await lock.acquire(BOOK_LOCK_S, task=wanted[0])
        try:
            book = self.assigned()
            taken = self._taken_elsewhere() | set(book.values()) | set(reserved)
            for task in wanted:
                if task not in book:
                    book[task] = self._pick(task, taken)
                    taken.add(book[task])
            write_atomic(self.path, json.dumps(book, sort_keys=True).encode())
        finally:
            lock.release()
        return book

    def release(self, tasks: Iterable[str] | None = None) -> list[str]:
        """Forget the ports of these tasks (default: all); the tasks released."""
        lock = FileLock(self.path.parent.parent / "ports.lock", "releasing ports")
        deadline = time.monotonic() + BOOK_LOCK_S
        with contextlib.suppress(OSError):
            while not lock.try_acquire() and time.monotonic() < deadline:
                time.sleep(0.02)  # held for milliseconds by an assignment
        try:
            book = self.assigned()
            gone = [t for t in (book if tasks is None else tasks) if t in book]
            if gone:
                for task in gone:
                    del book[task]
                with contextlib.suppress(OSError):
                    write_atomic(self.path, json.dumps(book, sort_keys=True).encode())
            return gone
        finally:
            lock.release()

    def _taken_elsewhere(self) -> set[int]:
        taken: set[int] = set()
        with contextlib.suppress(OSError):
            for other in self.path.parent.parent.glob("*/ports.json"):
                if other != self.path:
                    taken.update(read_book(other).values())
        return taken

    def _pick(self, task: str, taken: set[int]) -> int:
        span = HIGH - LOW
        digest = hashlib.sha256(f"{self.key}/{task}".encode()).digest()
        first = int.from_bytes(digest[:4], "big") % span
        for step in range(span):
            port = LOW + (first + step) % span
            if port not in taken and can_bind(port):
                return port
        raise OSError(f"no free port left from {LOW} to {HIGH - 1}")
