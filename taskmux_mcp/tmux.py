"""The only code that talks to tmux: sessions, task windows, snapshots, pipes."""

from __future__ import annotations

import re
import secrets
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import libtmux

from .errors import TmuxError

PROJECT_OPTION = "@taskmux_project"
TASK_OPTION = "@taskmux_task"
WINDOW_SIZE = ("220", "50")

_FIELDS = (
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
_NO_SERVER = re.compile(r"no server running|error connecting to|No such file or directory")


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
        self._server = libtmux.Server(socket_name=self.socket_name)
        self._checked = False

    def _check_available(self) -> None:
        if self._checked:
            return
        if shutil.which("tmux") is None:
            raise TmuxError("tmux is not installed or not on PATH (taskmux needs tmux >= 3.2)")
        self._checked = True

    def run(self, *args: str) -> list[str]:
        """Run one tmux command sequence; return its stdout lines; raise TmuxError on failure."""
        self._check_available()
        try:
            result = self._server.cmd(*args)
        except libtmux.exc.TmuxCommandNotFound as exc:
            raise TmuxError("tmux is not installed or not on PATH") from exc
        if result.returncode != 0:
            message = "; ".join(result.stderr) or f"tmux exited {result.returncode}"
            raise TmuxError(f"tmux {args[0]} failed: {message}")
        return list(result.stdout)

    def snapshot_sync(self) -> Snapshot:
        """Every pane of this project and which session names are taken, in one tmux spawn."""
        self._check_available()
        result = self._server.cmd("list-panes", "-a", "-F", _FORMAT)
        if result.returncode != 0:
            message = "; ".join(result.stderr)
            if _NO_SERVER.search(message) or not message:
                return Snapshot(server_running=False, session=None)
            raise TmuxError(f"tmux list-panes failed: {message}")
        panes: dict[str, Pane] = {}
        ours: str | None = None
        in_use: set[str] = set()
        owners: dict[str, str] = {}
        for line in result.stdout:
            parts = line.split(_SEP)
            if len(parts) != len(_FIELDS):
                continue
            row = dict(zip(_FIELDS, parts, strict=True))
            session = row["session_name"]
            in_use.add(session)
            owners.setdefault(session, row[PROJECT_OPTION])
            if row[PROJECT_OPTION] != self.project_key:
                continue
            ours = session
            task = row[TASK_OPTION]
            if not task or task in panes:
                continue
            dead_time = _int(row["pane_dead_time"])
            panes[task] = Pane(
                task=task,
                session=session,
                window_id=row["window_id"],
                pane_id=row["pane_id"],
                pid=_int(row["pane_pid"]),
                dead=row["pane_dead"] == "1",
                exit_status=_int(row["pane_dead_status"]),
                exit_signal=_int(row["pane_dead_signal"]),
                dead_time=float(dead_time) if dead_time is not None else None,
            )
        foreign = None
        if ours is None and self.session_name in owners:
            foreign = owners[self.session_name] or "(a session not made by taskmux)"
        return Snapshot(
            server_running=True,
            session=ours,
            panes=panes,
            sessions_in_use=frozenset(in_use),
            foreign_owner=foreign,
        )

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
