"""Per-project state folder and the persisted task records every process of a project shares."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

HEALTH_HISTORY_LIMIT = 10


def state_root(environ: Mapping[str, str] | None = None) -> Path:
    """The folder holding every project's state folder."""
    env = os.environ if environ is None else environ
    if env.get("TASKMUX_STATE_DIR"):
        return Path(env["TASKMUX_STATE_DIR"]).expanduser()
    base = env.get("XDG_STATE_HOME") or str(
        Path(env.get("HOME", "~")).expanduser() / ".local/state"
    )
    return Path(base).expanduser() / "taskmux"


def project_key(root: Path) -> str:
    """A short stable identity of a checkout, from its resolved folder."""
    return hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:8]


@dataclass(frozen=True)
class ProjectPaths:
    """Where a project keeps its logs, events, task records and locks."""

    root: Path

    @classmethod
    def for_project(
        cls, name: str, project_dir: Path, environ: Mapping[str, str] | None = None
    ) -> ProjectPaths:
        """The state folder of the checkout at project_dir, named after its project."""
        return cls(state_root(environ) / f"{name}-{project_key(project_dir)}")

    @property
    def logs(self) -> Path:
        """Folder of per-task log files."""
        return self.root / "logs"

    @property
    def tasks(self) -> Path:
        """Folder of per-task state records."""
        return self.root / "tasks"

    @property
    def locks(self) -> Path:
        """Folder of lock files."""
        return self.root / "locks"

    @property
    def events(self) -> Path:
        """The project's event history."""
        return self.root / "events.jsonl"

    @property
    def bridge(self) -> Path:
        """Where a running bridge publishes its port and token."""
        return self.root / "bridge.json"

    def ensure(self) -> None:
        """Create the folders (private to the user)."""
        for folder in (self.root, self.logs, self.tasks, self.locks):
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)


@contextlib.contextmanager
def file_lock(path: Path, *, shared: bool = False) -> Iterator[None]:
    """Hold an advisory lock on path for the duration of the block (across processes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, mode: int | None = 0o600) -> None:
    """Replace path's content so that readers see the old or the new file, never a mix.

    mode None keeps the mode of the file being replaced (0o644 for a new one). A symlink is
    followed, so the file it points to is replaced.
    """
    target = path.resolve()
    if mode is None:
        try:
            mode = target.stat().st_mode & 0o7777
        except FileNotFoundError:
            mode = 0o644
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


class ExitRecord(BaseModel):
    """How a run ended."""

    model_config = ConfigDict(frozen=True)

    code: int | None = None
    signal: int | None = None
    at: float | None = None
    expected: bool = False


class CheckRecord(BaseModel):
    """One health check result."""

    model_config = ConfigDict(frozen=True)

    healthy: bool
    method: str
    detail: str
    duration_ms: float
    at: float


class TaskRecord(BaseModel):
    """What every process of the project knows about one task, persisted."""

    model_config = ConfigDict(frozen=True)

    manually_stopped: bool = False
    runs: int = 0
    restarts: int = Field(0, description="consecutive automatic restarts")
    total_restarts: int = 0
    started_at: float | None = None
    pid: int | None = None
    pane_id: str | None = None
    stopping: bool = Field(False, description="taskmux is stopping it: its exit is expected")
    stopping_pid: int | None = Field(None, description="the process doing that stop")
    restart_requested: bool = Field(
        False, description="stopped by a restart whose start has not begun yet"
    )
    last_exit: ExitRecord | None = None
    health: str = "unknown"
    health_failures: int = 0
    healthy_since: float | None = None
    checks: tuple[CheckRecord, ...] = ()
    failed: str | None = Field(None, description="why the task is failed, when it is")
    restart_at: float | None = Field(None, description="when a scheduled restart is due")
    handled_run: int = Field(0, description="the last run whose end the monitor has dealt with")
    config_digest: str | None = None

    def with_check(self, check: CheckRecord) -> TaskRecord:
        """This record with one more health check remembered."""
        return self.model_copy(update={"checks": (*self.checks, check)[-HEALTH_HISTORY_LIMIT:]})


_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}\Z")


class StateStore:
    """Task records on disk, safe against concurrent writers and crashes mid-write."""

    def __init__(self, paths: ProjectPaths) -> None:
        self.paths = paths

    def _file(self, task: str) -> Path:
        if not _SAFE_NAME.match(task):
            raise ValueError(f"not a task name: {task!r}")
        return self.paths.tasks / f"{task}.json"

    def get(self, task: str) -> TaskRecord:
        """The task's record (a fresh one when none was saved or the file is unreadable)."""
        try:
            raw = self._file(task).read_bytes()
        except FileNotFoundError:
            return TaskRecord()
        try:
            return TaskRecord.model_validate(json.loads(raw))
        except (ValueError, ValidationError):
            return TaskRecord()

    def mutate(self, task: str, change: Callable[[TaskRecord], TaskRecord]) -> TaskRecord:
        """Apply change to the task's record under a cross-process lock; return the new record."""
        target = self._file(task)
        self.paths.tasks.mkdir(parents=True, exist_ok=True)
        with file_lock(self.paths.locks / f"task-{task}.lock"):
            record = change(self.get(task))
            write_atomic(target, record.model_dump_json().encode())
        return record

    def update(self, task: str, **changes: Any) -> TaskRecord:
        """Set some fields of the task's record."""
        return self.mutate(task, lambda record: record.model_copy(update=changes))

    def remove(self, task: str) -> None:
        """Forget a task."""
        with contextlib.suppress(FileNotFoundError):
            self._file(task).unlink()


class MonitorLease(BaseModel):
    """Who acts as the project's monitor, published by the lock holder."""

    model_config = ConfigDict(frozen=True)

    pid: int
    host: str
    since: float


def monitor_lock_path(paths: ProjectPaths) -> Path:
    """The lock whose holder is the acting monitor."""
    return paths.locks / "monitor.lock"


def read_monitor_lease(paths: ProjectPaths) -> MonitorLease | None:
    """The acting monitor, or None when no process holds the monitor lock."""
    lock = monitor_lock_path(paths)
    try:
        fd = os.open(lock, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            pass
        else:
            return None
    finally:
        os.close(fd)
    try:
        return MonitorLease.model_validate_json((paths.root / "monitor.json").read_bytes())
    except (OSError, ValueError):
        return MonitorLease(pid=0, host="unknown", since=0.0)
