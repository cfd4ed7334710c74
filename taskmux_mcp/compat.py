"""taskmux 0.3's daemon messages on the bridge: ``{"command": "status", "params": {...}}``.

A 0.3 script sends one such object per message and reads one reply per request, in order (they
carry no id). Each runs as the operation of that name (the same `perform` as a JSON-RPC call);
only the envelope differs. Replies keep 0.3's shapes: ``{"error": "..."}`` for any failure;
``{"success": true, "message": ...}`` for actions; ``{"success": true, "logs": "..."}`` for
logs; for status 0.3's object (``session_name``, ``session_exists``, ``tasks`` by name with
``running``, ``healthy`` and ``command``, ``timestamp``). Every success also carries the full
result under ``result`` (status: every field of each task).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from .models import ActionResult, LogsResult, StatusResult, TaskState
from .operations import OPERATIONS

if TYPE_CHECKING:
    from .project import Project

MEMBERS = ("command", "params")
ALIVE = frozenset({TaskState.STARTING, TaskState.RUNNING, TaskState.UNHEALTHY})


class LegacyInvalid(Exception):
    """A 0.3-style message that cannot be run; its text is the error reply."""


@dataclass(frozen=True)
class LegacyRequest:
    """A well-formed 0.3-style request."""

    command: str
    params: dict[str, Any]


def is_legacy(data: object) -> bool:
    """Whether a decoded message is in taskmux 0.3's shape (a command, no jsonrpc member)."""
    return isinstance(data, dict) and "command" in data and "jsonrpc" not in data


def parse_legacy(data: dict[str, Any]) -> LegacyRequest:
    """The request in a 0.3-style message; LegacyInvalid saying what is wrong otherwise."""
    extra = [key for key in data if key not in MEMBERS]
    if extra:
        raise LegacyInvalid(
            f"unknown member {str(extra[0])[:64]!r}: a taskmux 0.3 request has only "
            '"command" and "params", e.g. {"command": "logs", "params": {"task": "api"}}'
        )
    command = data["command"]
    if not isinstance(command, str):
        raise LegacyInvalid('command must be a string, e.g. {"command": "status"}')
    params = data.get("params")
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise LegacyInvalid('params must be an object of named arguments, e.g. {"task": "api"}')
    if command not in OPERATIONS:
        raise LegacyInvalid(f"Unknown command: {command[:64]} (commands: {', '.join(OPERATIONS)})")
    return LegacyRequest(command, params)


def error(message: str) -> dict[str, Any]:
    """A 0.3-style error reply."""
    return {"error": message}


async def reply(project: Project, result: BaseModel) -> dict[str, Any]:
    """The 0.3-style reply carrying an operation's result."""
    if isinstance(result, StatusResult):
        return await _status(project, result)
    dumped = result.model_dump(mode="json")
    if isinstance(result, ActionResult):
        outcomes = "; ".join(f"{task.name}: {task.outcome()}" for task in result.tasks)
        message = outcomes or result.message or "nothing to do"
        if not result.ok:
            return {"error": result.message or message, "result": dumped}
        return {"success": True, "message": message, "result": dumped}
    if isinstance(result, LogsResult):
        several = len({line.task for line in result.lines}) > 1
        text = "\n".join(
            f"{line.task} | {line.text}" if several else line.text for line in result.lines
        )
        return {"success": True, "logs": text, "result": dumped}
    return {"success": True, "result": dumped}


async def _status(project: Project, result: StatusResult) -> dict[str, Any]:
    snapshot = await project.backend.snapshot()
    redactor = project.redactor()
    now = datetime.now().astimezone().isoformat()
    tasks = {}
    for task in result.tasks:
        declared = project.config.tasks.get(task.name)
        tasks[task.name] = {
            **task.model_dump(mode="json"),
            "running": task.state in ALIVE,
            "healthy": task.state is TaskState.RUNNING,
            "command": redactor.text(declared.command) if declared is not None else "",
            "last_check": now,
        }
    return {
        "session_name": result.session,
        "session_exists": snapshot.session is not None,
        "tasks": tasks,
        "timestamp": now,
    }
