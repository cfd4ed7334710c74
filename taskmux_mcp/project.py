"""A long-lived face's hold on its project: finds, reloads and keeps the last good taskmux.toml."""

from __future__ import annotations

import os
from pathlib import Path

from .config import ProjectConfig, discover_config, load_config
from .errors import ConfigError
from .events import Cause
from .supervisor import Supervisor


class ProjectHandle:
    """Gives faces a supervisor on the current config; survives a missing or broken file."""

    def __init__(
        self,
        *,
        project: str | Path | None = None,
        config: str | Path | None = None,
        tmux_socket: str | None = None,
        cause: Cause = Cause.AGENT,
        host_monitor: bool = True,
        cwd: Path | None = None,
    ) -> None:
        self._project = project
        self._config = config
        self._cwd = cwd
        self.tmux_socket = tmux_socket
        self.cause = cause
        self.host_monitor = host_monitor
        self._sup: Supervisor | None = None
        self._stamp: tuple[int, int, int] | None = None
        self.error: ConfigError | None = None

    def _path(self) -> Path:
        if self._sup is not None:
            return self._sup.config.config_path
        return discover_config(project=self._project, config=self._config, cwd=self._cwd)

    @staticmethod
    def _file_stamp(path: Path) -> tuple[int, int, int] | None:
        try:
            st = os.stat(path)
        except OSError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def refresh(self) -> None:
        """Load the file again if it changed; remember why when it cannot be used."""
        try:
            path = self._path()
        except ConfigError as exc:
            self.error = exc
            return
        stamp = self._file_stamp(path)
        if self._sup is not None and stamp == self._stamp:
            return
        try:
            loaded = load_config(path)
        except ConfigError as exc:
            self.error = exc
            self._stamp = stamp
            return
        self.error = None
        self._stamp = stamp
        self._use(loaded)

    def _use(self, config: ProjectConfig) -> None:
        if self._sup is not None and self._sup.config.name == config.name:
            self._sup.use_config(config)
            return
        self._sup = Supervisor(
            config,
            socket_name=self.tmux_socket,
            cause=self.cause,
            host_monitor=self.host_monitor,
        )

    def supervisor(self, *, strict: bool = False) -> Supervisor:
        """The supervisor on the last good config; strict refuses while the file is invalid."""
        self.refresh()
        if self._sup is None or (strict and self.error is not None):
            assert self.error is not None
            raise self._explained(self.error)
        return self._sup

    def _explained(self, error: ConfigError) -> ConfigError:
        kept = " (the last valid config is still in force)" if self._sup is not None else ""
        problems = error.problems
        wrapped = ConfigError(error.path, problems)
        wrapped.args = (f"{error}\nFix taskmux.toml and call again{kept}.",)
        return wrapped

    @property
    def current(self) -> Supervisor | None:
        """The supervisor, if a valid config was ever loaded."""
        return self._sup
