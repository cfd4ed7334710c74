"""The backend seam: what the core needs from whatever runs task windows (tmux today).

A second backend (tmux on another host over SSH, say) is one new module implementing
`Backend`. The core never hands a backend a user string to interpret: what a task runs,
where and with which environment travels as one POSIX shell script (`launch_script`) that
the pane's own shell reads.
"""

from __future__ import annotations

import shlex
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

ENV_BINARY = shutil.which("env") or "/usr/bin/env"
NOT_FOUND_STATUS = 127


@dataclass(frozen=True)
class Pane:
    """One task's window as the backend reports it."""

    task: str
    session: str
    window_id: str
    pane_id: str
    pid: int | None
    dead: bool
    exit_status: int | None
    exit_signal: int | None
    dead_time: float | None
    run: int | None = None
    stop_mark: str | None = None
    piped: bool = True
    interrupt: str | None = field(default=None, compare=False)
    # False while tmux has yet to reap the ended process (its end was read from the zombie):
    # tmux may not have handed the pane's pipe its last output yet.
    reaped: bool = field(default=True, compare=False)

    @property
    def alive(self) -> bool:
        """Whether the pane's process still runs."""
        return not self.dead


@dataclass(frozen=True)
class Snapshot:
    """The project's panes and the session names in use, from one backend call."""

    server_running: bool
    session: str | None
    panes: Mapping[str, Pane] = field(default_factory=dict)
    sessions_in_use: frozenset[str] = frozenset()
    foreign_owner: str | None = None

    def alive(self, task: str) -> Pane | None:
        """The task's pane when its process runs."""
        pane = self.panes.get(task)
        return pane if pane is not None and not pane.dead else None


@dataclass(frozen=True)
class Launch:
    """One run of a task: what to run, where, with which environment, and where output goes."""

    task: str
    run: int
    command: str
    cwd: Path
    env: Mapping[str, str]
    pipe: str | None


def launch_script(launch: Launch) -> str:
    """The shell script a pane runs: enter the cwd (cd, never the backend's start folder),
    then exec the command under `/bin/sh -c` with the task's environment added."""
    folder = shlex.quote(str(launch.cwd))
    words = [ENV_BINARY, *(f"{key}={value}" for key, value in launch.env.items())]
    words += ["/bin/sh", "-c", launch.command]
    failure = shlex.quote(f"taskmux: cannot enter the working directory {launch.cwd}")
    return (
        f"cd -- {folder} || {{ echo {failure} >&2; exit {NOT_FOUND_STATUS}; }}\n"
        f"exec {shlex.join(words)}\n"
    )


class Backend(Protocol):
    """What runs task windows."""

    socket_name: str

    def snapshot_sync(self) -> Snapshot:
        """Every pane of the project, from one call."""
        ...

    async def snapshot(self) -> Snapshot:
        """Async form of snapshot_sync."""
        ...

    def launch_sync(self, launch: Launch, snapshot: Snapshot) -> Pane:
        """Run a launch in the task's window: a new one, or its dead pane respawned; never
        replaces a live process (raises instead)."""
        ...

    async def interrupt(self, pane_id: str) -> None:
        """Type C-c into the pane."""
        ...

    async def mark_stop(self, pane_id: str, kind: str) -> None:
        """Note on the window itself that taskmux is stopping it (survives a full disk)."""
        ...

    async def repipe(self, pane_id: str, pipe: str) -> None:
        """Attach a new output pipe to a live pane."""
        ...

    async def kill_window(self, window_id: str) -> None:
        """Remove a task's window."""
        ...

    def select_argv(self, target: str, *, inside: bool) -> list[str]:
        """The command that attaches a terminal to the session or a window."""
        ...

    @property
    def fallback_session_name(self) -> str:
        """The session name used when the project's own is taken."""
        ...
