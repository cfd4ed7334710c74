"""Where a project's files are (its taskmux.toml, its state folder), what the state folder holds,
and writing files into it safely."""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from .errors import ProjectNotFound

CONFIG_FILENAME = "taskmux.toml"
PROJECT_ENV_VAR = "TASKMUX_PROJECT"


def discover_config(
    project: str | Path | None = None,
    config: str | Path | None = None,
    cwd: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> Path:
    """Find taskmux.toml: --config, else --project, else $TASKMUX_PROJECT, else walk up from cwd."""
    base = Path.cwd() if cwd is None else Path(os.path.abspath(cwd.expanduser()))
    env = os.environ if environ is None else environ

    def place(value: str | Path) -> Path:
        path = Path(value).expanduser()
        return path if path.is_absolute() else base / path

    def explicit(value: str | Path) -> Path:
        path = place(value)
        candidate = path / CONFIG_FILENAME if path.is_dir() else path
        if not candidate.is_file():
            raise ProjectNotFound([candidate])
        return candidate

    if config is not None and str(config):
        return explicit(config)
    if project is not None and str(project):
        path = place(project)
        if path.is_file():
            return path
        if not (path / CONFIG_FILENAME).is_file():
            raise ProjectNotFound([path])
        return path / CONFIG_FILENAME
    if env.get(PROJECT_ENV_VAR):
        return explicit(env[PROJECT_ENV_VAR])
    searched: list[Path] = []
    for folder in (base, *base.parents):
        searched.append(folder)
        if (folder / CONFIG_FILENAME).is_file():
            return folder / CONFIG_FILENAME
    raise ProjectNotFound(searched)


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
    def server(self) -> Path:
        """Where the local server (`taskmux serve`) publishes its port and token."""
        return self.root / "server.json"

    @property
    def monitor(self) -> Path:
        """Folder of the monitor's leases."""
        return self.root / "monitor"

    @property
    def scripts(self) -> Path:
        """Folder of launch scripts too long to pass to tmux on its command line."""
        return self.root / "run"

    @property
    def ports(self) -> Path:
        """The ports assigned to this checkout's `port = "auto"` tasks."""
        return self.root / "ports.json"

    @property
    def saved_config(self) -> Path:
        """The last valid config, used while taskmux.toml is invalid."""
        return self.root / "config.json"

    def ensure(self) -> None:
        """Create the folders (private to the user)."""
        for folder in (self.root, self.logs, self.tasks, self.locks):
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)


def find_state_folder(project_dir: Path, environ: Mapping[str, str] | None = None) -> Path | None:
    """The state folder a checkout used last, whatever its project was named then."""
    key = project_key(project_dir)
    try:
        found = [p for p in state_root(environ).glob(f"*-{key}") if p.is_dir()]
    except OSError:
        return None
    if not found:
        return None

    def used(path: Path) -> float:
        try:
            return (path / "config.json").stat().st_mtime
        except OSError:
            return 0.0

    return max(found, key=used)


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
    import tempfile  # here: the CLI's thin path (control.py) writes nothing

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


CHANGE_EVENTS = frozenset({"modified", "created", "moved", "deleted", "closed"})


def watch_file(path: Path, changed: Callable[[], None]) -> Callable[[], None]:
    """Call `changed` (from a watchdog thread) whenever the file is written, replaced, created
    or deleted; returns what stops the watch. OSError when its folder cannot be watched."""
    return watch_folder(path.parent, changed, name=path.name)


def watch_folder(
    folder: Path, changed: Callable[[], None], *, name: str | None = None, removals: bool = False
) -> Callable[[], None]:
    """Call `changed` (from a watchdog thread) whenever an entry of the folder (or only the
    one called `name`) is written, replaced, created or deleted (removals: only removed or
    renamed away); returns what stops the watch. Reads (opens, closes without writing,
    listings) are not even asked of the kernel, so they wake no one. OSError when the folder
    cannot be watched."""
    from watchdog import events
    from watchdog.observers import Observer

    class Handler(events.FileSystemEventHandler):
        def on_any_event(self, event: events.FileSystemEvent) -> None:
            if event.event_type not in CHANGE_EVENTS:
                return
            paths = [event.src_path, getattr(event, "dest_path", "")]
            if name is None or any(os.path.basename(str(p)) == name for p in paths if p):
                changed()

    kinds: list[type[events.FileSystemEvent]] = [
        events.FileModifiedEvent, events.FileCreatedEvent, events.FileMovedEvent,
        events.FileDeletedEvent, events.FileClosedEvent, events.DirCreatedEvent,
        events.DirMovedEvent, events.DirDeletedEvent,
    ]  # fmt: skip
    if removals:
        kinds = [events.FileDeletedEvent, events.DirDeletedEvent, events.FileMovedEvent,
                 events.DirMovedEvent]  # fmt: skip
    observer = Observer()
    observer.schedule(Handler(), str(folder), recursive=False, event_filter=kinds)
    observer.daemon = True
    observer.start()
    return observer.stop
