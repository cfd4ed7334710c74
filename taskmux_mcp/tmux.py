"""The only code that talks to tmux: sessions, task windows, snapshots, pipes."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import anyio

from .errors import TmuxError
from .processes import is_running

PROJECT_OPTION = "@taskmux_project"
TASK_OPTION = "@taskmux_task"
WINDOW_SIZE = ("220", "50")

_FIELDS = (
    "pid",
    "session_name",
    PROJECT_OPTION,
    "window_id",
    TASK_OPTION,
    "pane_id",
    "pane_pid",
    "pane_dead",
    "pane_dead_status",
    "pane_dead_signal",
    "pane_dead_time",
    "window_name",
)
_SEP = "\x1f"
ENV_BINARY = shutil.which("env") or "/usr/bin/env"
_FORMAT = _SEP.join("#{" + name + "}" for name in _FIELDS)
_NO_SERVER = re.compile(
    r"no server running|error connecting to|No such file or directory|server exited|lost server"
)


@dataclass(frozen=True)
class Pane:
    """One task's window as tmux reports it."""

    task: str
    session: str
    window_id: str
    pane_id: str
    pid: int | None
    dead: bool
    exit_status: int | None
    exit_signal: int | None
    dead_time: float | None


@dataclass(frozen=True)
class Snapshot:
    """The project's panes and the session names in use, from one tmux call."""

    server_running: bool
    session: str | None
    panes: Mapping[str, Pane] = field(default_factory=dict)
    sessions_in_use: frozenset[str] = frozenset()
    foreign_owner: str | None = None


def _int(text: str) -> int | None:
    return int(text) if text.lstrip("-").isdigit() else None


class TmuxBackend:
    """tmux access for one project, identified by its key (not by session or window names)."""

    def __init__(self, project_key: str, session_name: str, socket_name: str | None = None) -> None:
        self.project_key = project_key
        self.session_name = session_name
        self.socket_name = socket_name or "default"

    def _call(self, args: Sequence[str]) -> tuple[int, list[str], str]:
        """One tmux process on this project's server: (status, stdout lines, stderr)."""
        binary = shutil.which("tmux")
        if binary is None:
            raise TmuxError("tmux is not installed or not on PATH (taskmux needs tmux >= 3.2)")
        # -L always: an inherited $TMUX must not pick another server than the one configured.
        env = {key: value for key, value in os.environ.items() if key != "TMUX"}
        done = subprocess.run(
            [binary, "-L", self.socket_name, *args],
            capture_output=True,
            text=True,
            errors="backslashreplace",
            env=env,
            stdin=subprocess.DEVNULL,
            check=False,
        )
        return done.returncode, done.stdout.splitlines(), done.stderr.strip()

    def run(self, *args: str) -> list[str]:
        """Run one tmux command sequence; return its stdout lines; raise TmuxError on failure."""
        status, lines, errors = self._call(args)
        if status != 0:
            message = errors.replace("\n", "; ") or f"tmux exited {status}"
            raise TmuxError(f"tmux {args[0]} failed: {message}")
        return lines

    def snapshot_sync(self) -> Snapshot:
        """Every pane of this project and which session names are taken, in one tmux spawn.

        A second spawn happens only to recover an exit status tmux failed to collect.
        """
        snapshot, unreaped, server_pid = self._list_panes()
        if unreaped and server_pid:
            # tmux 3.3 can miss a SIGCHLD when panes die together, leaving a zombie whose
            # status it never reads; another SIGCHLD makes it reap, then ask again.
            with contextlib.suppress(OSError):
                os.kill(server_pid, signal.SIGCHLD)
                time.sleep(0.02)
                snapshot, _, _ = self._list_panes()
        return snapshot

    def _list_panes(self) -> tuple[Snapshot, bool, int | None]:
        status, lines, message = self._call(["list-panes", "-a", "-F", _FORMAT])
        if status != 0:
            if _NO_SERVER.search(message) or not message:
                return Snapshot(server_running=False, session=None), False, None
            raise TmuxError(f"tmux list-panes failed: {message}")
        panes: dict[str, Pane] = {}
        ours: str | None = None
        in_use: set[str] = set()
        owners: dict[str, str] = {}
        unreaped = False
        server_pid: int | None = None
        for line in lines:
            parts = line.split(_SEP)
            if len(parts) != len(_FIELDS):
                continue
            row = dict(zip(_FIELDS, parts, strict=True))
            server_pid = _int(row["pid"])
            session = row["session_name"]
            in_use.add(session)
            owners.setdefault(session, row[PROJECT_OPTION])
            if row[PROJECT_OPTION] != self.project_key:
                continue
            ours = session
            task = row[TASK_OPTION]
            if not task or task in panes:
                continue
            pid = _int(row["pane_pid"])
            known_end = row["pane_dead_status"] != "" or row["pane_dead_signal"] != ""
            # A pane is dead once its pty closed, but its process may still run (it closed
            # the terminal) or wait to be reaped: it has ended only when tmux knows how.
            dead = row["pane_dead"] == "1" and (known_end or not is_running(pid))
            unreaped = unreaped or (row["pane_dead"] == "1" and not known_end)
            dead_time = _int(row["pane_dead_time"])
            panes[task] = Pane(
                task=task,
                session=session,
                window_id=row["window_id"],
                pane_id=row["pane_id"],
                pid=pid,
                dead=dead,
                exit_status=_int(row["pane_dead_status"]),
                exit_signal=_int(row["pane_dead_signal"]),
                dead_time=float(dead_time) if dead_time is not None else None,
            )
        foreign = None
        if ours is None and self.session_name in owners:
            foreign = owners[self.session_name] or "(a session not made by taskmux)"
        snapshot = Snapshot(
            server_running=True,
            session=ours,
            panes=panes,
            sessions_in_use=frozenset(in_use),
            foreign_owner=foreign,
        )
        return snapshot, unreaped, server_pid

    async def snapshot(self) -> Snapshot:
        """Async form of snapshot_sync."""
        return await anyio.to_thread.run_sync(self.snapshot_sync)

    def spawn_sync(
        self,
        task: str,
        argv: Sequence[str],
        cwd: Path,
        env: Mapping[str, str],
        pipe_command: str | None,
        snapshot: Snapshot,
    ) -> Pane:
        """Run argv as the pane process of the task's window (new or respawned), output piped."""
        # The environment goes on the command line, not through `-e`: new-session -e would put
        # it in the session's environment, leaking one task's variables into every window.
        argv = [ENV_BINARY, *(f"{key}={value}" for key, value in env.items()), *argv]
        existing = snapshot.panes.get(task)
        pipe = ["pipe-pane"] if pipe_command is None else ["pipe-pane", pipe_command]
        report = ["display-message", "-p"]
        report_format = "#{window_id} #{pane_id} #{pane_pid} #{session_name}"
        if existing is not None:
            target = existing.pane_id
            sequence = [
                "respawn-pane", "-k", "-t", target, "-c", str(cwd), "--", *argv,
                ";", *pipe[:1], "-t", target, *pipe[1:],
                ";", *report, "-t", target, report_format,
            ]  # fmt: skip
        else:
            nonce = f"taskmux-{secrets.token_hex(6)}"
            session = snapshot.session or self._free_session_name(snapshot)
            window = f"={session}:={nonce}"
            if snapshot.session is None:
                create = [
                    "new-session", "-d", "-s", session, "-n", nonce, "-x", WINDOW_SIZE[0],
                    "-y", WINDOW_SIZE[1],
                ]  # fmt: skip
                session_options = [
                    ";", "set-option", "-t", f"={session}:", PROJECT_OPTION, self.project_key,
                    ";", "set-option", "-t", f"={session}:", "destroy-unattached", "off",
                ]  # fmt: skip
            else:
                create = ["new-window", "-d", "-t", f"={session}:", "-n", nonce]
                session_options = []
            sequence = [
                *create, "-c", str(cwd), "--", *argv,
                ";", "set-option", "-w", "-t", window, "remain-on-exit", "on",
                *session_options,
                ";", "set-option", "-w", "-t", window, TASK_OPTION, task,
                ";", "set-option", "-w", "-t", window, "automatic-rename", "off",
                ";", "set-option", "-w", "-t", window, "allow-rename", "off",
                ";", *pipe[:1], "-t", window, *pipe[1:],
                ";", *report, "-t", window, report_format,
                ";", "rename-window", "-t", window, task,
            ]  # fmt: skip
        lines = self.run(*sequence)
        if not lines:
            raise TmuxError(f"tmux did not report the pane of task '{task}'")
        window_id, pane_id, pid, session_name = lines[-1].split(" ", 3)
        return Pane(
            task=task,
            session=session_name,
            window_id=window_id,
            pane_id=pane_id,
            pid=_int(pid),
            dead=False,
            exit_status=None,
            exit_signal=None,
            dead_time=None,
        )

    async def spawn(
        self,
        task: str,
        argv: Sequence[str],
        cwd: Path,
        env: Mapping[str, str],
        pipe_command: str | None,
        snapshot: Snapshot,
    ) -> Pane:
        """Async form of spawn_sync."""
        return await anyio.to_thread.run_sync(
            lambda: self.spawn_sync(task, argv, cwd, env, pipe_command, snapshot)
        )

    def _free_session_name(self, snapshot: Snapshot) -> str:
        """The project's name, or a name suffixed with the checkout's key when another has it."""
        if self.session_name not in snapshot.sessions_in_use:
            return self.session_name
        return self.fallback_session_name

    @property
    def fallback_session_name(self) -> str:
        """The session name used when another checkout or a user session has the project's."""
        return f"{self.session_name}-{self.project_key[-6:]}"

    async def interrupt(self, pane_id: str) -> None:
        """Type C-c into the pane (SIGINT to its foreground process group)."""
        await anyio.to_thread.run_sync(lambda: self.run("send-keys", "-t", pane_id, "C-c"))

    async def kill_window(self, window_id: str) -> None:
        """Remove a task's window."""
        await anyio.to_thread.run_sync(lambda: self.run("kill-window", "-t", window_id))


def version_problem(minimum: str = "3.2") -> str | None:
    """Why the tmux on PATH cannot serve taskmux, or None when it can."""
    import libtmux.common  # only `taskmux check` needs it: keeps other commands fast

    try:
        if libtmux.common.has_gte_version(minimum):
            return None
        found = libtmux.common.get_version()
    except Exception as exc:  # libtmux raises its own types for a missing or odd tmux
        return f"tmux is not usable: {exc}"
    return f"tmux {found} is too old; taskmux needs tmux >= {minimum}"
