"""Every taskmux project on a tmux server at a glance: each checkout, its session, tasks, ports."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import anyio

from .errors import TaskmuxError
from .models import Health, ProjectOverview, ProjectsResult, TaskState, TaskStatus
from .project import MONITOR_WINDOW, Project
from .tmux import taskmux_sessions


def all_projects(
    socket_name: str | None, environ: Mapping[str, str], *, redact: bool = True
) -> ProjectsResult:
    """What every checkout runs: from its own records where its taskmux.toml can be read,
    else from tmux alone (saying why)."""
    found = []
    for key, (session, config, alive) in sorted(taskmux_sessions(socket_name).items()):
        tasks = {name: up for name, up in alive.items() if name != MONITOR_WINDOW}
        try:
            if not config:
                raise TaskmuxError("the session was made by an older taskmux (no config path)")
            project = Project(
                Path(config), socket_name=socket_name, environ=environ, hosted_monitor=False
            )
            if project.key != key:
                raise TaskmuxError(f"{config} now belongs to another state folder")
            status = project.status_sync()
            if redact:
                status = project.redactor().model(status)
            found.append(
                ProjectOverview(
                    project=status.project,
                    checkout=str(project.config.root),
                    session=session,
                    config_path=config,
                    tasks=status.tasks,
                    error=str(project.config_error) if project.config_error else None,
                )
            )
        except TaskmuxError as exc:
            rows = [
                TaskStatus(
                    name=name,
                    state=TaskState.RUNNING if up else TaskState.EXITED,
                    health=Health.UNKNOWN,
                    restart_policy="unknown",
                )
                for name, up in tasks.items()
            ]
            checkout = str(Path(config).parent) if config else None
            found.append(
                ProjectOverview(
                    project=key.rsplit("-", 1)[0],
                    checkout=checkout,
                    session=session,
                    config_path=config or None,
                    tasks=rows,
                    error=str(exc),
                )
            )
    return ProjectsResult(projects=found)


async def all_projects_async(socket_name: str | None, environ: Mapping[str, str]) -> ProjectsResult:
    """all_projects in a worker thread."""
    return await anyio.to_thread.run_sync(lambda: all_projects(socket_name, environ))
