"""Process trees of tasks, signals to them, and the owners of listening ports.

A task's processes are found three ways, so that none escapes a stop: the descendants of
its root pid, the members of the session the root leads (tmux makes each pane process a
session leader), and every process whose environment carries ``TASKMUX_TASK_ID=<id>``
(which catches double-forked and setsid'd grandchildren that left both tree and session).

Cost of a scan: one pass over all processes (psutil reads ``/proc/<pid>/stat`` on Linux),
one ``getsid`` syscall per process when a root pid is given, and one read of each
process's environment (``/proc/<pid>/environ``) when a task id is given. Processes of
other users are only visible to root; tasks run as our user, so that is enough.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import select
import signal
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.to_thread
import psutil

from taskmux_mcp.coalesce import Coalesced
from taskmux_mcp.errors import InvalidArgument, PortBusy

ENV_MARKER = "TASKMUX_TASK_ID"

_SCAN_ATTRS = ["pid", "ppid", "status", "create_time", "name"]
MARKER_SETTLE_S = 2.0


@dataclass(frozen=True)
class ProcessInfo:
    """A snapshot of one live process."""

    pid: int
    ppid: int
    pgid: int | None
    sid: int | None
    name: str
    cmdline: str
    status: str
    born: float | None = None


@dataclass(frozen=True)
class StopOutcome:
    """How a stop or kill of a task's processes ended."""

    stopped: bool
    signal_used: str
    remaining: tuple[int, ...]
    duration_s: float


def describe_signal(signum: int | None) -> str | None:
    """Name a signal number (11 -> "SIGSEGV"); None for None."""
    if signum is None:
        return None
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def is_running(pid: int | None) -> bool:
    """Whether pid is a live process (not a zombie waiting to be reaped)."""
    if pid is None:
        return False
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:
        return True


def _protected_pids() -> set[int]:
    """Our own pid and every ancestor's: never signalled, never reported as a task's."""
    pids = {os.getpid(), 0, 1}
    with contextlib.suppress(psutil.Error):
        pids.update(p.pid for p in psutil.Process().parents())
    return pids


def _protected_pgids(protected: Iterable[int]) -> set[int]:
    """Process groups of protected processes: a killpg there would hit us."""
    pgids = {0, 1, os.getpgrp()}
    for pid in protected:
        with contextlib.suppress(OSError):
            pgids.add(os.getpgid(pid))
    return pgids


def _getpgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def _getsid(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except OSError:
        return None


def _snapshot(proc: Any) -> ProcessInfo | None:
    """Describe one process; None when it vanished or became a zombie meanwhile."""
    try:
        with proc.oneshot():
            status = str(proc.status())
            if status == psutil.STATUS_ZOMBIE:
                return None
            name = str(proc.name())
            ppid = int(proc.ppid())
            try:
                argv = proc.cmdline()
            except psutil.AccessDenied:
                argv = []
    except psutil.Error:
        return None
    return ProcessInfo(
        pid=proc.pid,
        ppid=ppid,
        pgid=_getpgid(proc.pid),
        sid=_getsid(proc.pid),
        name=name,
        cmdline=" ".join(argv) if argv else name,
        status=status,
    )


def _marker_of(proc: Any) -> str | None:
    """The task marker in a process's environment, if readable."""
    try:
        env = proc.environ()
    except (psutil.Error, OSError):  # psutil lets a raw ProcessLookupError out at times
        return None
    value = env.get(ENV_MARKER)
    return value if isinstance(value, str) else None


@dataclass(frozen=True)
class _Row:
    """One live process as a scan saw it: one read of /proc/PID/stat (or psutil)."""

    pid: int
    ppid: int | None
    pgid: int | None
    sid: int | None
    born: float
    name: str
    state: str


_STATES = {"R": "running", "S": "sleeping", "D": "disk-sleep", "T": "stopped", "I": "idle"}


class _Table:
    """One scan of the process table, indexed so that finding a task's processes costs the
    size of the task, not of the table (a stop of 500 tasks asks 500 times)."""

    def __init__(self, rows: dict[int, _Row], markers: dict[int, str]) -> None:
        self.rows = rows
        self.children: dict[int, list[int]] = {}
        self.by_session: dict[int, list[int]] = {}
        self.by_marker: dict[str, list[int]] = {}
        for pid, row in rows.items():
            if row.ppid is not None:
                self.children.setdefault(row.ppid, []).append(pid)
            if row.sid is not None:
                self.by_session.setdefault(row.sid, []).append(pid)
        for pid, marker in markers.items():
            self.by_marker.setdefault(marker, []).append(pid)
        self.protected = {0, 1, os.getpid()}  # we and our ancestors: never a task's
        parent = rows[os.getpid()].ppid if os.getpid() in rows else None
        while parent is not None and parent not in self.protected:
            self.protected.add(parent)
            parent = rows[parent].ppid if parent in rows else None

    def members(self, root_pid: int | None, task_id: str | None) -> list[_Row]:
        """A task's live processes: root and descendants, root's session, env-marked ones."""
        seeds: list[int] = []
        if root_pid is not None:
            seeds += [root_pid, *self.by_session.get(root_pid, ())]
        if task_id is not None:
            seeds += self.by_marker.get(task_id, ())
        found: dict[int, _Row] = {}
        while seeds:
            pid = seeds.pop()
            if pid in found or pid in self.protected or pid not in self.rows:
                continue
            found[pid] = self.rows[pid]
            seeds.extend(self.children.get(pid, ()))
        return [found[pid] for pid in sorted(found)]

    def processes(self, root_pid: int | None, task_id: str | None) -> list[ProcessInfo]:
        """A task's live processes as the scan saw them (the command line is the name)."""
        return [
            ProcessInfo(pid=r.pid, ppid=r.ppid or 0, pgid=r.pgid, sid=r.sid, name=r.name,
                        cmdline=r.name, status=_STATES.get(r.state, r.state), born=r.born)
            for r in self.members(root_pid, task_id)
        ]  # fmt: skip


class _ProcessTable:
    """Every live process with its task marker, scanned at most once for all the callers that
    asked while the previous scan ran (100 concurrent stops cost a couple of scans, not 100);
    a process's marker is read once in its life (its environment is fixed at exec)."""

    def __init__(self) -> None:
        self._markers: dict[tuple[int, float], str | None] = {}
        self._reading = Coalesced(self._scan)

    def read(self) -> _Table:
        """A scan begun after this call."""
        return self._reading.get()

    async def aread(self) -> _Table:
        """A scan begun after this call, waited for on the event loop."""
        return await self._reading.aget()

    def _scan(self) -> _Table:
        rows: dict[int, _Row] = {}
        marked: dict[int, str] = {}
        markers: dict[tuple[int, float], str | None] = {}
        settled = time.time() - MARKER_SETTLE_S
        for row, marker_of in _live_processes():
            key = (row.pid, row.born)
            marker = self._markers[key] if key in self._markers else marker_of()
            if marker is not None or row.born < settled:
                markers[key] = marker  # an exec right after fork may still add a marker
            if marker is not None:
                marked[row.pid] = marker
            rows[row.pid] = row
        self._markers = markers
        return _Table(rows, marked)


def _live_processes() -> Iterator[tuple[_Row, Callable[[], str | None]]]:
    """Every non-zombie process and how to read its marker: one read of /proc/PID/stat each on
    Linux, psutil elsewhere."""
    if not os.path.isdir("/proc/self/"):
        for proc in psutil.process_iter(_SCAN_ATTRS, ad_value=None):
            info = proc.info
            if info["status"] != psutil.STATUS_ZOMBIE:
                pid = info["pid"]
                live = _Row(pid, info["ppid"], _getpgid(pid), _getsid(pid),
                             info["create_time"] or 0.0, info["name"] or "", "")  # fmt: skip
                yield live, functools.partial(_marker_of, proc)
        return
    for name in os.listdir("/proc"):
        if name.isdigit() and (seen := _proc_stat(int(name))) is not None:
            yield seen, functools.partial(_proc_marker, seen.pid)


_BOOT: list[float] = []


def _proc_stat(pid: int) -> _Row | None:
    """A live process from /proc/PID/stat; None when gone or a zombie."""
    stat = _read_proc(pid, "stat")
    if stat is None:
        return None
    close = stat.rfind(b")")
    fields = stat[close + 2 :].split(maxsplit=20)
    if len(fields) < 20 or fields[0] in (b"Z", b"X"):
        return None
    if not _BOOT:
        _BOOT.extend((psutil.boot_time(), os.sysconf("SC_CLK_TCK")))
    born = _BOOT[0] + int(fields[19]) / _BOOT[1]
    name = stat[stat.find(b"(") + 1 : close].decode(errors="replace")
    return _Row(pid, int(fields[1]), int(fields[2]), int(fields[3]), born, name,
                 fields[0].decode())  # fmt: skip


def zombie_status(pid: int, parent: int) -> int | None:
    """The wait status of pid when it has ended but its parent has not reaped it yet (Linux's
    /proc/PID/stat keeps it for a zombie); None otherwise."""
    with contextlib.suppress(OSError):
        if os.getuid() != 0 and os.stat(f"/proc/{pid}").st_uid != os.getuid():
            return None  # the kernel shows another user's exit status as 0
    stat = _read_proc(pid, "stat")
    if stat is None:
        return None
    fields = stat[stat.rfind(b")") + 2 :].split()
    if len(fields) < 50 or fields[0] != b"Z" or int(fields[1]) != parent:
        return None
    return int(fields[49])


def _read_proc(pid: int, name: str) -> bytes | None:
    """/proc/PID/name, read with bare syscalls (a scan reads thousands); None when gone."""
    try:
        fd = os.open(f"/proc/{pid}/{name}", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        chunks = [os.read(fd, 65536)]
        while len(chunks[-1]) == 65536:  # a short read is the end
            chunks.append(os.read(fd, 65536))
        return b"".join(chunks)
    except OSError:
        return None
    finally:
        os.close(fd)


def _proc_marker(pid: int) -> str | None:
    """The task marker in /proc/PID/environ, if readable."""
    environ = _read_proc(pid, "environ")
    if environ is None:
        return None
    key = ENV_MARKER.encode() + b"="
    for entry in environ.split(b"\0"):
        if entry.startswith(key):
            return entry[len(key) :].decode(errors="replace")
    return None


_TABLE = _ProcessTable()


def task_processes(root_pid: int | None, task_id: str | None) -> list[ProcessInfo]:
    """Every live process of a task: root and descendants, root's session, env-marked ones."""
    if root_pid is None and task_id is None:
        return []
    found = []
    for row in _TABLE.read().members(root_pid, task_id):
        with contextlib.suppress(psutil.Error):
            found.append(_snapshot(psutil.Process(row.pid)))
    return [info for info in found if info is not None]


def process_tree(root_pid: int | None, task_id: str | None) -> list[ProcessInfo]:
    """A task's processes ordered for display: each parent before its children."""
    procs = task_processes(root_pid, task_id)
    by_pid = {p.pid: p for p in procs}
    kids: dict[int, list[ProcessInfo]] = {}
    tops: list[ProcessInfo] = []
    for p in procs:
        if p.ppid in by_pid and p.ppid != p.pid:
            kids.setdefault(p.ppid, []).append(p)
        else:
            tops.append(p)
    ordered: list[ProcessInfo] = []
    seen: set[int] = set()
    stack = list(reversed(tops))
    while stack:
        p = stack.pop()
        if p.pid in seen:
            continue
        seen.add(p.pid)
        ordered.append(p)
        stack.extend(reversed(kids.get(p.pid, [])))
    return ordered


def signal_all(processes: Iterable[ProcessInfo], sig: signal.Signals) -> None:
    """Send a signal to each process and to each distinct process group; ignore vanished."""
    procs = list(processes)
    protected = _protected_pids()
    for p in procs:
        if p.pid in protected:
            continue
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(p.pid, sig)
    bad_groups = _protected_pgids(protected)
    for pgid in {p.pgid for p in procs if p.pgid is not None} - bad_groups:
        # While a listed member is still in the group its number cannot be reused.
        if not any(_getpgid(p.pid) == pgid for p in procs if p.pgid == pgid):
            continue
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)


async def _scan(root_pid: int | None, task_id: str | None) -> list[ProcessInfo]:
    if root_pid is None and task_id is None:
        return []
    return (await _TABLE.aread()).processes(root_pid, task_id)


async def _wait_gone(
    root_pid: int | None,
    task_id: str | None,
    *,
    timeout: float,
    poll: float,
    resend: signal.Signals | None,
    signalled: set[int],
) -> list[ProcessInfo]:
    """Poll until no process of the task remains or timeout passes; return what remains.

    With ``resend``, processes that appeared since the last signal get it too.
    """
    deadline = time.monotonic() + timeout
    while True:
        procs = await _scan(root_pid, task_id)
        if not procs:
            return []
        if resend is not None:
            fresh = [p for p in procs if p.pid not in signalled]
            if fresh:
                signal_all(fresh, resend)
                signalled.update(p.pid for p in fresh)
        left = deadline - time.monotonic()
        if left <= 0:
            return procs
        # Without resending, nothing can change until one of them ends: no scan until then.
        await _until_ended(procs, left if resend is None else min(poll, left), poll)


async def _until_ended(procs: list[ProcessInfo], timeout: float, poll: float) -> None:
    """Until every one of procs has ended or timeout passes, as the kernel tells (a pidfd
    each); where pidfds are missing (macOS, seccomp, no fds left), for at most poll s."""
    fds: list[int] = []
    try:
        for proc in procs:
            fd = _open_pidfd(proc.pid, proc.born)
            if fd is not None:
                fds.append(fd)
    except OSError:
        for fd in fds:
            os.close(fd)
        await anyio.sleep(max(0.0, min(timeout, poll)))
        return
    try:
        with anyio.move_on_after(timeout):
            for fd in fds:
                await anyio.wait_readable(fd)
    finally:
        for fd in fds:
            os.close(fd)


async def until_exit(pid: int, timeout: float) -> bool:
    """Until the process ends (True) or timeout passes (False), as the kernel tells; False
    at once where that cannot be watched (no pidfds): the caller polls instead."""
    try:
        fd = _open_pidfd(pid)
    except OSError:
        return False
    if fd is None:
        return True
    try:
        with anyio.move_on_after(timeout):
            await anyio.wait_readable(fd)
            return True
        return False
    finally:
        os.close(fd)


def _open_pidfd(pid: int, born: float | None = None) -> int | None:
    """A pidfd of the process (the one born then, when given); None when it has ended (its
    pid may be another's by now); OSError when pidfds cannot be had."""
    if not hasattr(os, "pidfd_open"):
        raise OSError(errno.ENOSYS, "no pidfd here")
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return None
    if born is not None and (now := _proc_stat(pid)) is not None and now.born != born:
        os.close(fd)
        return None
    return fd


async def stop_tree(
    root_pid: int | None,
    task_id: str | None,
    *,
    interrupt: Callable[[], Awaitable[None]],
    grace: float,
    first: str = "SIGINT",
    term_grace: float = 3.0,
    kill_wait: float = 3.0,
    poll: float = 0.05,
) -> StopOutcome:
    """Stop a task: interrupt() (which sends `first`), wait grace; SIGTERM, wait; SIGKILL,
    wait; done when none remain."""
    started = time.monotonic()

    def outcome(remaining: list[ProcessInfo], used: str) -> StopOutcome:
        return StopOutcome(
            stopped=not remaining,
            signal_used=used,
            remaining=tuple(p.pid for p in remaining),
            duration_s=time.monotonic() - started,
        )

    try:
        root = _open_pidfd(root_pid) if root_pid is not None else None
    except OSError:
        root = None
    found = await _scan(root_pid, task_id) if root is None else []
    if root is None and not found:
        return outcome([], "none")
    deadline = started + grace
    try:
        with contextlib.suppress(Exception):
            await interrupt()
        if root_pid is None:  # no pane to interrupt (its window is gone): what is left gets it
            signal_all(found, signal.Signals[first])
        if root is not None:  # the root ends first as a rule: no scan until it has
            with anyio.move_on_after(grace):
                await anyio.wait_readable(root)
    finally:
        if root is not None:
            os.close(root)
    procs = await _wait_gone(
        root_pid, task_id, timeout=max(0.0, deadline - time.monotonic()), poll=poll,
        resend=None, signalled=set(),
    )  # fmt: skip
    if not procs:
        return outcome([], first)

    signalled = {p.pid for p in procs}
    signal_all(procs, signal.SIGTERM)
    # A stopped (SIGSTOP'd) process only acts on SIGTERM once continued.
    signal_all(procs, signal.SIGCONT)
    procs = await _wait_gone(
        root_pid, task_id, timeout=term_grace, poll=poll, resend=signal.SIGTERM, signalled=signalled
    )
    if not procs:
        return outcome([], "SIGTERM")

    return await _kill_phase(
        root_pid, task_id, procs=procs, wait=kill_wait, poll=poll, outcome=outcome
    )


async def _kill_phase(
    root_pid: int | None,
    task_id: str | None,
    *,
    procs: list[ProcessInfo],
    wait: float,
    poll: float,
    outcome: Callable[[list[ProcessInfo], str], StopOutcome],
) -> StopOutcome:
    deadline = time.monotonic() + wait
    while procs:
        signal_all(procs, signal.SIGKILL)
        if time.monotonic() >= deadline:
            break
        await _until_ended(procs, min(poll, max(0.0, deadline - time.monotonic())), poll)
        procs = await _scan(root_pid, task_id)
    return outcome(procs, "SIGKILL")


async def kill_tree(root_pid: int | None, task_id: str | None, wait: float = 3.0) -> StopOutcome:
    """SIGKILL every process of a task at once and wait until none remains."""
    started = time.monotonic()

    def outcome(remaining: list[ProcessInfo], used: str) -> StopOutcome:
        return StopOutcome(
            stopped=not remaining,
            signal_used=used,
            remaining=tuple(p.pid for p in remaining),
            duration_s=time.monotonic() - started,
        )

    procs = await _scan(root_pid, task_id)
    if not procs:
        return outcome([], "none")
    return await _kill_phase(root_pid, task_id, procs=procs, wait=wait, poll=0.05, outcome=outcome)


def _listener_pids(port: int) -> set[int]:
    """Pids owning a TCP socket in LISTEN state on the port (any address, IPv4 or IPv6)."""
    pids: set[int] = set()

    def wanted(conn: Any) -> bool:
        laddr = conn.laddr
        return bool(conn.status == psutil.CONN_LISTEN and laddr and laddr.port == port and conn.pid)

    try:
        pids.update(c.pid for c in psutil.net_connections(kind="tcp") if wanted(c))
    except psutil.AccessDenied:
        # macOS without root: ask each process we may inspect.
        for proc in psutil.process_iter():
            try:
                conns = proc.net_connections(kind="tcp")
            except psutil.Error:
                continue
            if any(
                c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port for c in conns
            ):
                pids.add(proc.pid)
    return pids


def port_listeners(port: int) -> list[ProcessInfo]:
    """Processes listening on a TCP port; never ones merely connected to it."""
    if not 0 < port < 65536:
        raise InvalidArgument(f"port must be between 1 and 65535, got {port}")
    found: list[ProcessInfo] = []
    for pid in sorted(_listener_pids(port)):
        try:
            info = _snapshot(psutil.Process(pid))
        except psutil.Error:
            continue
        if info is not None:
            found.append(info)
    return found


CHECKOUT_ENV = "TASKMUX_CHECKOUT"


@dataclass(frozen=True)
class PortHolder:
    """A process listening on a port, and the taskmux task it belongs to, if any."""

    process: ProcessInfo
    task_id: str | None = None
    project: str | None = None
    checkout: str | None = None
    task: str | None = None

    def describe(self) -> str:
        """Who it is, in one phrase."""
        text = f"pid {self.process.pid} ({self.process.cmdline[:120] or self.process.name})"
        if self.task_id is not None:
            where = f" in {self.checkout}" if self.checkout else ""
            text += f", task '{self.task}' of project '{self.project}'{where}"
        return text

    def details(self) -> dict[str, object]:
        """Its fields for an event."""
        found = {"pid": self.process.pid, "process": self.process.name,
                 "command": self.process.cmdline[:200]}  # fmt: skip
        if self.task_id is not None:
            found |= {"project": self.project, "checkout": self.checkout, "task": self.task}
        return found


def port_holders(port: int) -> list[PortHolder]:
    """The processes listening on a port, each with the taskmux task it belongs to."""
    holders = []
    for info in port_listeners(port):
        try:
            env = psutil.Process(info.pid).environ()
        except (psutil.Error, OSError):
            env = {}
        marker = env.get(ENV_MARKER)
        holders.append(
            PortHolder(
                info,
                marker,
                env.get("TASKMUX_PROJECT") if marker else None,
                env.get(CHECKOUT_ENV) if marker else None,
                env.get("TASKMUX_TASK") if marker else None,
            )
        )
    return holders


async def reclaim_port(
    port: int,
    task_id: str,
    *,
    force: bool = False,
    wait: float = 3.0,
    term_grace: float = 1.5,
) -> list[PortHolder]:
    """Free a port before a task's start: its own leftovers always, anyone else only by force.

    Raises PortBusy naming the holders when someone else listens and force is off; returns
    the holders it ended (SIGTERM, then SIGKILL). Ourselves and our ancestors are never
    signalled. Returns after `wait` s even if an unkillable listener remains.
    """
    holders = await anyio.to_thread.run_sync(port_holders, port)
    protected = _protected_pids()
    strangers = [h for h in holders if h.task_id != task_id]
    if any(h.process.pid in protected for h in holders) or (strangers and not force):
        raise PortBusy(port, strangers or holders, protected=protected)
    ended = {h.process.pid: h for h in holders}
    deadline = time.monotonic() + wait
    termed: dict[int, float] = {}
    while ended:
        left = await anyio.to_thread.run_sync(_listener_pids, port) & set(ended)
        if not left:
            break
        now = time.monotonic()
        for pid in left:
            sig = signal.SIGTERM
            if pid in termed:
                if now - termed[pid] < term_grace:
                    continue
                sig = signal.SIGKILL
            else:
                termed[pid] = now
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        if now >= deadline:
            break
        await anyio.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
    return list(ended.values())


class PidWatch:
    """Wakes when any watched process ends, from the kernel (pidfds in one epoll), or when
    woken from any thread (`wake`); where pidfds or epoll are missing (macOS, a seccomp
    profile, no fds left) it checks those pids every `POLL_S` instead."""

    RECHECK_S = 0.01
    RECHECKS = 5  # an ended pid still listed (tmux has not said so yet) is news this often
    POLL_S = 0.25  # pids without a pidfd, and wakes without an epoll, are checked this often

    def __init__(self) -> None:
        self._poller: select.epoll | None = None
        self._bell: int | None = None  # an eventfd in the epoll: `wake` rings it
        self._bell_lock = threading.Lock()
        self._rung = False  # `wake` without an epoll
        self._fds: dict[int, int] = {}  # pid -> pidfd
        self._polled: set[int] = set()  # pids watched without a pidfd
        self._ended: dict[int, int] = {}  # pid -> times it was news
        self._ended_at: dict[int, float] = {}  # pid -> when its end was seen (monotonic)
        self._news = False

    def _epoll(self) -> select.epoll | None:
        if self._poller is None and hasattr(select, "epoll"):
            with contextlib.suppress(OSError):
                self._poller = select.epoll()
                with contextlib.suppress(OSError, AttributeError):
                    bell = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
                    self._poller.register(bell, select.EPOLLIN)
                    with self._bell_lock:
                        self._bell = bell
        return self._poller

    def wake(self) -> None:
        """End the current (or next) wait early; safe from any thread."""
        with self._bell_lock:
            if self._bell is None:
                self._rung = True
                return
            with contextlib.suppress(OSError):
                os.eventfd_write(self._bell, 1)

    def watch(self, pids: Iterable[int]) -> None:
        """Watch exactly these pids from now on."""
        wanted = set(pids)
        self._collect()
        self._ended = {pid: n for pid, n in self._ended.items() if pid in wanted}
        self._ended_at = {pid: t for pid, t in self._ended_at.items() if pid in wanted}
        self._polled &= wanted
        for pid in [p for p in self._fds if p not in wanted]:
            self._forget(pid)
        for pid in wanted - set(self._fds) - self._polled:
            if pid in self._ended:
                if self._ended[pid] < self.RECHECKS:
                    self._ended[pid] += 1
                    self._news = True
                continue
            self._open(pid)

    def _open(self, pid: int) -> None:
        poller = self._epoll()
        try:
            if poller is None or not hasattr(os, "pidfd_open"):
                raise OSError(errno.ENOSYS, "no pidfd here")
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            self._ended[pid] = 1  # ended before we looked
            self._ended_at[pid] = time.monotonic()
            self._news = True
            return
        except OSError:
            self._polled.add(pid)
            return
        self._fds[pid] = fd
        poller.register(fd, select.EPOLLIN)

    def _forget(self, pid: int) -> None:
        fd = self._fds.pop(pid)
        if self._poller is not None:
            self._poller.unregister(fd)
        os.close(fd)

    def _collect(self) -> None:
        """Move the pids that ended out of the watch (a pidfd stays readable), and note a
        ring of the bell for the next wait."""
        by_fd = {fd: pid for pid, fd in self._fds.items()}
        ready = self._poller.poll(0) if self._poller is not None else []
        for fd, _ in ready:
            if fd not in by_fd:
                with contextlib.suppress(OSError):
                    os.eventfd_read(fd)  # the bell: read, so that it can ring again
                self._rung = True
                continue
            self._forget(by_fd[fd])
            self._ended[by_fd[fd]] = 1
            self._ended_at[by_fd[fd]] = time.monotonic()
            self._news = True
        for pid in [p for p in self._polled if not is_running(p)]:
            self._polled.discard(pid)
            self._ended[pid] = 1
            self._ended_at[pid] = time.monotonic()
            self._news = True

    def ended_ago(self, pid: int) -> float:
        """Seconds since the watch saw that pid end (0 when it did not)."""
        seen = self._ended_at.get(pid)
        return 0.0 if seen is None else max(0.0, time.monotonic() - seen)

    def ended(self) -> bool:
        """Whether a watched process ended since the last call (does not wait)."""
        self._collect()
        news, self._news = self._news, False
        return news

    async def wait(self, timeout: float) -> bool:
        """Until a watched process ends (True), or it is woken or the timeout passes (False)."""
        if self._news:
            await anyio.sleep(self.RECHECK_S)
            return True
        poller = self._epoll()
        deadline = time.monotonic() + (min(timeout, self.POLL_S) if self._polled else timeout)
        if poller is None or self._bell is None:
            while not self._rung and time.monotonic() < deadline:
                await anyio.sleep(min(self.POLL_S, max(0.0, deadline - time.monotonic())))
        elif not self._rung:
            with anyio.move_on_after(max(0.0, deadline - time.monotonic())):
                await anyio.wait_readable(poller.fileno())
            self._collect()
        self._rung = False
        return self._news

    def close(self) -> None:
        """Let go of every pidfd."""
        for pid in list(self._fds):
            self._forget(pid)
        with self._bell_lock:
            if self._bell is not None:
                os.close(self._bell)
                self._bell = None
        if self._poller is not None:
            self._poller.close()
            self._poller = None
