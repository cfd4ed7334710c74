"""The exception tree every layer raises and every face translates.

TaskmuxError
├── ConfigError            taskmux.toml is missing, unreadable or invalid (carries every problem)
│   └── ProjectNotFound    no taskmux.toml where we looked
├── UnknownTask            a task name the config does not define (carries the known ones)
├── InvalidArgument        a bad request: regex, `since`, limits, names
│   └── ArgumentError      a tool/bridge/CLI argument that does not fit its declaration
├── TmuxError              tmux is missing, too old, or refused a command
├── HookFailed             a before_* hook failed, aborting its action
├── TaskBusy               another process acts on the task and did not finish in time
├── IllegalTransition      a task record change its current state does not allow
└── StateWriteError        the state folder refused a write (full disk, read-only)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class TaskmuxError(Exception):
    """Base of every error taskmux reports to a user or an agent."""


@dataclass(frozen=True)
class ConfigProblem:
    """One problem found in a config file, located as precisely as known."""

    message: str
    task: str | None = None
    key: str | None = None
    line: int | None = None
    column: int | None = None

    def __str__(self) -> str:
        where = []
        if self.line is not None:
            where.append(f"line {self.line}" + (f", column {self.column}" if self.column else ""))
        if self.task is not None:
            where.append(f"task '{self.task}'")
        if self.key is not None:
            where.append(f"key '{self.key}'")
        prefix = f"{'; '.join(where)}: " if where else ""
        return f"{prefix}{self.message}"


class ConfigError(TaskmuxError):
    """taskmux.toml cannot be used; lists every problem found."""

    def __init__(self, path: Path | None, problems: Sequence[ConfigProblem] | str) -> None:
        if isinstance(problems, str):
            problems = [ConfigProblem(problems)]
        self.path = path
        self.problems: tuple[ConfigProblem, ...] = tuple(problems)
        head = f"invalid config {path}" if path else "invalid config"
        lines = [f"  - {p}" for p in self.problems]
        super().__init__("\n".join([f"{head} ({len(self.problems)} problem(s)):", *lines]))


class ProjectNotFound(ConfigError):
    """No taskmux.toml was found."""

    def __init__(self, searched: Iterable[Path]) -> None:
        self.searched = tuple(searched)
        places = ", ".join(str(p) for p in self.searched) or "(nowhere)"
        TaskmuxError.__init__(
            self,
            f"no taskmux.toml found (looked in: {places}); create one with `taskmux init`, "
            "or pass --project DIR / set TASKMUX_PROJECT",
        )
        self.path = None
        self.problems = (ConfigProblem(str(self)),)


class UnknownTask(TaskmuxError):
    """A task name that the config does not define."""

    def __init__(self, name: str, known: Iterable[str]) -> None:
        self.name = name
        self.known = tuple(known)
        listed = ", ".join(self.known) if self.known else "(none defined)"
        super().__init__(f"unknown task '{name}'; known tasks: {listed}")


class InvalidArgument(TaskmuxError):
    """A request argument that cannot be honoured (bad regex, bad `since`, bad limit)."""


class ArgumentError(InvalidArgument):
    """Arguments that do not match an operation's declaration (unknown, wrong type, bounds)."""


class TmuxError(TaskmuxError):
    """tmux is unavailable or refused a command."""


class HookFailed(TaskmuxError):
    """A before_* hook failed; the action it guarded was not done."""

    def __init__(self, hook: str, task: str | None, status: int | None, output: str) -> None:
        self.hook = hook
        self.task = task
        self.status = status
        self.output = output
        who = f"task '{task}'" if task else "project"
        how = "timed out" if status is None else f"exited {status}"
        tail = f": {output.strip()}" if output.strip() else ""
        super().__init__(f"{hook} hook of {who} {how}{tail}")


class TaskBusy(TaskmuxError):
    """Another process holds a task's lock and did not let go in time."""

    def __init__(self, task: str, holder: str, waited_s: float) -> None:
        self.task = task
        self.holder = holder
        self.waited_s = waited_s
        super().__init__(
            f"task '{task}' is busy: {holder} has held it for the last {waited_s:.0f}s; "
            "try again once it is done"
        )


class IllegalTransition(TaskmuxError):
    """A change of a task's record that its current state does not allow."""


class StateWriteError(TaskmuxError):
    """The state folder refused a write: the disk is full, or the folder is read-only."""


class PortBusy(TaskmuxError):
    """A task's port is held by a process that is not this task's own leftover."""

    def __init__(self, port: int, holders: Sequence[Any], *, protected: Iterable[int] = ()) -> None:
        self.port = port
        self.holders = tuple(holders)
        held_by = "; ".join(h.describe() for h in self.holders) or "another process"
        mine = {h.process.pid for h in self.holders} & set(protected)
        if mine:
            advice = "which is taskmux itself or the process that runs it: choose another port"
        else:
            advice = (
                'stop it, or set port = "auto" in taskmux.toml for a port of this checkout\'s '
                "own, or start with force_port (CLI: --force-port) to kill it"
            )
        super().__init__(f"port {port} is in use by {held_by}; {advice}")
