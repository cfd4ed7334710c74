"""taskmux.toml: its models, discovery, loading with full validation, and editing with tomlkit."""

from __future__ import annotations

import difflib
import heapq
import itertools
import json
import math
import os
import re
import shlex
import shutil
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError

from taskmux_mcp.envfiles import DEFAULT_ENV_FILE, load_env_files
from taskmux_mcp.errors import (
    ConfigError,
    ConfigProblem,
    InvalidArgument,
    UnknownTask,
)
from taskmux_mcp.state import CONFIG_FILENAME, write_atomic

if TYPE_CHECKING:
    import tomlkit.items

NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}"
NAME_RE: re.Pattern[str] = re.compile(NAME_PATTERN)
NAME_RULE = "use 1 to 64 ASCII letters, digits, '_' or '-', starting with a letter or digit"
HOOK_NAMES: tuple[str, ...] = ("before_start", "after_start", "before_stop", "after_stop")
# tmux's scrollback per task window ([logs] scrollback): the log files keep every line; tmux's
# own default (2000) costs about 1.4 MiB per pane of 80-column lines.
SCROLLBACK_LINES = 1000
SCROLLBACK_MAX = 1_000_000


class RestartPolicy(StrEnum):
    """When a task that stopped on its own is started again."""

    NO = "no"
    ON_FAILURE = "on-failure"
    ALWAYS = "always"


class Condition(StrEnum):
    """What a dependent waits for in a dependency (docker compose's depends_on conditions)."""

    STARTED = "started"
    HEALTHY = "healthy"
    COMPLETED = "completed"


_Seconds = Annotated[float, Field(ge=0, strict=True, allow_inf_nan=False)]
_PositiveSeconds = Annotated[float, Field(gt=0, strict=True, allow_inf_nan=False)]
_Name = Annotated[str, Field(pattern=f"^{NAME_PATTERN}$")]
_Text = Annotated[str, Field(min_length=1)]
_FROZEN = ConfigDict(frozen=True, extra="forbid")


class HooksConfig(BaseModel):
    """The four lifecycle hooks (shell commands) of the project or of one task."""

    model_config = _FROZEN

    before_start: _Text | None = None
    after_start: _Text | None = None
    before_stop: _Text | None = None
    after_stop: _Text | None = None

    def get(self, hook: str) -> str | None:
        """The command of hook `hook` (one of HOOK_NAMES), or None when unset."""
        if hook not in HOOK_NAMES:
            raise InvalidArgument(f"unknown hook '{hook}'; hooks are: {', '.join(HOOK_NAMES)}")
        value: str | None = getattr(self, hook)
        return value


class TaskConfig(BaseModel):
    """One task of taskmux.toml, with SPEC §3's defaults filled in."""

    model_config = _FROZEN

    name: _Name
    command: _Text
    cwd: _Text | None = None
    env: dict[str, str] = Field(default_factory=dict)
    env_file: tuple[str, ...] | None = None
    port: Annotated[int, Field(ge=1, le=65535, strict=True)] | Literal["auto"] | None = None
    auto_start: StrictBool = True
    oneshot: StrictBool = False
    depends_on: tuple[str, ...] = ()
    conditions: dict[str, Condition] = Field(
        default_factory=dict, description="depends_on's long form: the condition per dependency"
    )
    ready_log: _Text | None = None
    health_check: _Text | None = None
    health_url: _Text | None = None
    health_expected_status: tuple[int, ...] = ()
    health_expected_body: _Text | None = None
    health_interval: _PositiveSeconds = 10.0
    health_timeout: _PositiveSeconds = 5.0
    health_retries: Annotated[int, Field(ge=1, strict=True)] = 3
    health_start_period: _Seconds = 10.0
    stop_grace_period: _Seconds = 5.0
    stop_signal: str = "SIGINT"
    restart_policy: RestartPolicy = RestartPolicy.ON_FAILURE
    max_restarts: Annotated[int, Field(ge=0, strict=True)] = 5
    restart_backoff: _Seconds = 2.0
    log_max_bytes: Annotated[int, Field(ge=1024, strict=True)] | None = None
    log_max_files: Annotated[int, Field(ge=1, strict=True)] | None = None
    hooks: HooksConfig = HooksConfig()

    def has_check(self) -> bool:
        """Whether a readiness check applies: ready_log, health_check, health_url, or port."""
        checks = self.ready_log or self.health_check or self.health_url or self.port is not None
        return bool(checks) and not self.oneshot

    def condition(self, dep: str, dependency: TaskConfig) -> Condition:
        """What this task waits for in `dependency` (long form, else completed/healthy)."""
        if dep in self.conditions:
            return self.conditions[dep]
        return Condition.COMPLETED if dependency.oneshot else Condition.HEALTHY

    def working_dir(self, root: Path) -> Path:
        """The task's working directory: cwd resolved against root (the config's folder)."""
        if self.cwd is None:
            return root
        return root / Path(self.cwd).expanduser()


class LogsConfig(BaseModel):
    """Log rotation settings, table [logs]."""

    model_config = _FROZEN

    max_bytes: Annotated[int, Field(ge=1024, strict=True)] = 10 * 1024 * 1024
    max_files: Annotated[int, Field(ge=1, strict=True)] = 3
    scrollback: Annotated[int, Field(ge=0, le=SCROLLBACK_MAX, strict=True)] = SCROLLBACK_LINES


class BridgeConfig(BaseModel):
    """WebSocket bridge settings, table [bridge]."""

    model_config = _FROZEN

    allowed_origins: tuple[str, ...] = ()


class ProjectConfig(BaseModel):
    """A loaded, valid taskmux.toml."""

    model_config = _FROZEN

    name: _Name
    config_path: Path
    root: Path
    auto_start: StrictBool = True
    env_file: tuple[str, ...] | None = None
    hooks: HooksConfig = HooksConfig()
    tasks: dict[str, TaskConfig] = Field(default_factory=dict)
    logs: LogsConfig = LogsConfig()
    bridge: BridgeConfig = BridgeConfig()
    warnings: tuple[str, ...] = Field(
        default=(),
        description="keys read but ignored, and settings that may not mean what they did",
    )

    def condition(self, name: str, dep: str) -> Condition:
        """What task `name` waits for in its dependency `dep`."""
        return self.task(name).condition(dep, self.task(dep))

    def task(self, name: str) -> TaskConfig:
        """The task called `name`; UnknownTask when there is none."""
        try:
            return self.tasks[name]
        except KeyError:
            raise UnknownTask(name, self.tasks) from None

    def env_files(self, name: str) -> list[Path]:
        """The dotenv files of a task, lowest precedence first (see `env_file`)."""
        task = self.task(name)
        project = (
            [self.root / DEFAULT_ENV_FILE] if self.env_file is None else
            [self.root / Path(f).expanduser() for f in self.env_file]
        )  # fmt: skip
        if self.env_file is None and not project[0].is_file():
            project = []
        own = [self.root / Path(f).expanduser() for f in task.env_file or ()]
        return project + own if task.env_file != () else []

    def require(self, names: Iterable[str]) -> list[str]:
        """`names` without duplicates, in the given order; UnknownTask for the first unknown."""
        seen: dict[str, None] = {}
        for name in names:
            self.task(name)
            seen[name] = None
        return list(seen)

    def with_dependencies(self, names: Iterable[str]) -> list[str]:
        """`names` and everything they transitively depend on, dependencies first."""
        wanted = set(self.require(names))
        todo = list(wanted)
        while todo:
            for dep in self.tasks[todo.pop()].depends_on:
                if dep not in wanted:
                    wanted.add(dep)
                    todo.append(dep)
        return self._topo(wanted)

    def dependents(self, name: str) -> list[str]:
        """Tasks that transitively depend on `name`, dependencies first (reverse it to stop)."""
        self.task(name)
        users: dict[str, list[str]] = {n: [] for n in self.tasks}
        for task in self.tasks.values():
            for dep in task.depends_on:
                users[dep].append(task.name)
        found: set[str] = set()
        todo = [name]
        while todo:
            for user in users[todo.pop()]:
                if user not in found:
                    found.add(user)
                    todo.append(user)
        found.discard(name)
        return self._topo(found)

    def topo_order(self) -> list[str]:
        """All tasks, each after the tasks it depends on; file order breaks ties."""
        return self._topo(set(self.tasks))

    def _topo(self, subset: set[str]) -> list[str]:
        index = {name: i for i, name in enumerate(self.tasks)}
        missing = {n: sum(d in subset for d in set(self.tasks[n].depends_on)) for n in subset}
        users: dict[str, list[str]] = {n: [] for n in subset}
        for name in subset:
            for dep in set(self.tasks[name].depends_on):
                if dep in subset:
                    users[dep].append(name)
        ready = [(index[n], n) for n in subset if missing[n] == 0]
        heapq.heapify(ready)
        order: list[str] = []
        while ready:
            _, name = heapq.heappop(ready)
            order.append(name)
            for user in users[name]:
                missing[user] -= 1
                if missing[user] == 0:
                    heapq.heappush(ready, (index[user], user))
        return order


def load_config(path: Path) -> ProjectConfig:
    """Read and validate the taskmux.toml at `path`; ConfigError lists every problem."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError(path, f"cannot read {path}: {reason}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(path, f"not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    return parse_config(text, path)


def parse_config(text: str, path: Path) -> ProjectConfig:
    """Validate taskmux.toml text that lives at `path`; ConfigError lists every problem."""
    path = _absolute(path)
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, [_syntax_problem(str(exc), text)]) from None
    except RecursionError:
        raise ConfigError(path, "values are nested too deeply to read") from None
    return _Validator(path).project(raw)


def _absolute(path: Path) -> Path:
    path = path.expanduser()
    if not path.is_absolute():
        path = Path.cwd() / path
    return path.parent.resolve() / path.name


_AT_RE = re.compile(r"\s*\(at line (\d+), column (\d+)\)\s*$")
_AT_END_RE = re.compile(r"\s*\(at end of document\)\s*$")


def _syntax_problem(message: str, text: str) -> ConfigProblem:
    if match := _AT_RE.search(message):
        line, column = int(match[1]), int(match[2])
        message = message[: match.start()]
    else:
        lines = text.splitlines() or [""]
        line, column = len(lines), len(lines[-1]) + 1
        message = _AT_END_RE.sub(" at the end of the file", message)
    return ConfigProblem(f"TOML syntax error: {message}", line=line, column=column)


class _Invalid(Exception):
    """A value that does not fit its key; the message says what was expected."""


_Check = Callable[[Any], Any]


def _describe(value: object) -> str:
    if isinstance(value, bool):
        return f"{str(value).lower()} (a boolean)"
    if isinstance(value, int):
        return f"{value} (an integer)"
    if isinstance(value, float):
        return f"{value} (a number)"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return f"{json.dumps(shown, ensure_ascii=False)} (a string)"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return f"{value} (a date/time)"


def _quote(name: str) -> str:
    return f"'{name}'" if name.isprintable() else repr(name)


def _expect(what: str, value: object) -> _Invalid:
    return _Invalid(f"must be {what}, got {_describe(value)}")


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise _expect("a string", value)
    if not value.strip():
        raise _Invalid("must not be empty (leave the key out instead)")
    if "\0" in value:
        raise _Invalid("must not contain a NUL character")
    return value


def _url(value: object) -> str:
    url = _text(value)
    if not re.match(r"https?://[^/\s]+", url):
        raise _Invalid(f"must be an http:// or https:// URL, got {_describe(url)}")
    return url


def _bool(value: object) -> bool:
    if not isinstance(value, bool):
        raise _expect("true or false", value)
    return value


def _integer(low: int, high: int | None = None) -> _Check:
    what = f"an integer from {low} to {high}" if high is not None else f"an integer >= {low}"

    def check(value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _expect(what, value)
        if value < low or (high is not None and value > high):
            raise _expect(what, value)
        return value

    return check


def _number(*, positive: bool) -> _Check:
    what = "a number of seconds > 0" if positive else "a number of seconds >= 0"

    def check(value: object) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _expect(what, value)
        number = float(value)
        if not math.isfinite(number) or number < 0 or (positive and number == 0):
            raise _expect(what, value)
        return number

    return check


def _restart_policy(value: object) -> RestartPolicy:
    valid = [p.value for p in RestartPolicy]
    listed = ", ".join(f'"{v}"' for v in valid)
    if not isinstance(value, str) or value not in valid:
        hint = ""
        if isinstance(value, str) and (close := difflib.get_close_matches(value, valid, 1)):
            hint = f"; did you mean '{close[0]}'?"
        raise _Invalid(f"must be one of {listed}, got {_describe(value)}{hint}")
    return RestartPolicy(value)


STOP_SIGNALS = ("SIGINT", "SIGTERM", "SIGQUIT", "SIGHUP", "SIGUSR1", "SIGUSR2", "SIGKILL")


def _stop_signal(value: object) -> str:
    listed = ", ".join(f'"{name}"' for name in STOP_SIGNALS)
    if isinstance(value, str):
        name = value.strip().upper()
        name = name if name.startswith("SIG") else "SIG" + name
        if name in STOP_SIGNALS:
            return name
    raise _Invalid(f"must be one of {listed}, got {_describe(value)}")


def _expected_status(value: object) -> tuple[int, ...]:
    codes = value if isinstance(value, list) else [value]
    what = "an HTTP status code from 100 to 599, or a list of them"
    if not codes or any(isinstance(c, bool) or not isinstance(c, int) or not 100 <= c <= 599
                        for c in codes):  # fmt: skip
        raise _expect(what, value)
    return tuple(dict.fromkeys(codes))


def _regex(value: object) -> str:
    text = _text(value)
    try:
        re.compile(text)
    except (re.error, RecursionError, OverflowError) as exc:
        raise _Invalid(f"is not a valid regular expression: {exc}") from None
    return text


def _port(value: object) -> int | str:
    if value == "auto":
        return "auto"
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise _expect('an integer from 1 to 65535, or "auto" (a free port chosen for you)', value)
    return value


def _env_file(value: object) -> tuple[str, ...]:
    if value is False:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise _expect("a path, a list of paths, or false (no env file)", value)
    if any(not v.strip() or "\0" in v for v in value):
        raise _Invalid("must not hold an empty path or a NUL character")
    for v in value:
        try:
            Path(v).expanduser()
        except RuntimeError:
            raise _Invalid(f"cannot expand {v!r}: no such user's home folder") from None
    return tuple(dict.fromkeys(value))


_CONDITION_ALIASES = {
    "service_started": Condition.STARTED,
    "service_healthy": Condition.HEALTHY,
    "service_completed_successfully": Condition.COMPLETED,
    "process_started": Condition.STARTED,
    "process_healthy": Condition.HEALTHY,
    "process_completed_successfully": Condition.COMPLETED,
    "process_completed": Condition.COMPLETED,
    "completed_successfully": Condition.COMPLETED,
}
_DEPENDS_FORMS = (
    'an array of task names or tables, like ["db", { task = "migrate", condition = "completed" }]'
)


def _condition(value: object) -> Condition:
    valid = [c.value for c in Condition]
    if isinstance(value, str) and value in _CONDITION_ALIASES:
        return _CONDITION_ALIASES[value]
    if isinstance(value, str) and value in valid:
        return Condition(value)
    hint = ""
    if isinstance(value, str) and (close := difflib.get_close_matches(value, valid, 1)):
        hint = f"; did you mean '{close[0]}'?"
    listed = ", ".join(f'"{v}"' for v in valid)
    raise _Invalid(f"condition must be one of {listed}, got {_describe(value)}{hint}")


def _depends_on(value: object) -> dict[str, Condition | None]:
    if isinstance(value, dict):  # docker compose's map form: { db = { condition = "..." } }
        value = [{"task": k, **v} if isinstance(v, dict) else {"task": k, "condition": v}
                 for k, v in value.items()]  # fmt: skip
    if not isinstance(value, list):
        raise _expect(_DEPENDS_FORMS, value)
    found: dict[str, Condition | None] = {}
    for item in value:
        if isinstance(item, str):
            found.setdefault(item, None)
            continue
        if not isinstance(item, dict) or not isinstance(item.get("task"), str):
            raise _expect(_DEPENDS_FORMS + ' (a table needs task = "NAME")', value)
        if extra := [k for k in item if k not in ("task", "condition")]:
            raise _Invalid(
                f"entry for '{item['task']}' has unknown key {_quote(extra[0])}; "
                "an entry has task and condition"
            )
        found[item["task"]] = _condition(item["condition"]) if "condition" in item else None
    return found


_SIZE_UNITS = {"": 1, "B": 1, "K": 1024, "KB": 1024, "M": 1024**2, "MB": 1024**2, "G": 1024**3,
               "GB": 1024**3}  # fmt: skip
_SIZE_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*")


def _size(value: object) -> int:
    what = 'a size such as "10MB", "500KB" or a number of bytes (at least 1024)'
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    elif (
        isinstance(value, str)
        and (m := _SIZE_RE.fullmatch(value))
        and (m[2].upper() in _SIZE_UNITS)
    ):
        size = int(float(m[1]) * _SIZE_UNITS[m[2].upper()])
    else:
        raise _expect(what, value)
    if size < 1024:
        raise _expect(what, value)
    return size


def _string_list(value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _expect('an array of strings (like ["a", "b"])', value)
    return tuple(dict.fromkeys(value))


def _env(value: object) -> dict[str, str]:
    if not isinstance(value, dict):
        raise _expect('a table of strings (like { NAME = "value" })', value)
    for key, item in value.items():
        if not key or "=" in key or "\0" in key or key.startswith("-"):
            raise _Invalid(f"has an invalid variable name {_quote(key)}")
        if not isinstance(item, str):
            raise _Invalid(
                f'value of {key} must be a string (quote it: {key} = "{item}"), '
                f"got {_describe(item)}"
            )
        if "\0" in item:
            raise _Invalid(f"value of {key} must not contain a NUL character")
    return dict(value)


_TASK_CHECKS: dict[str, _Check] = {
    "command": _text,
    "cwd": _text,
    "env": _env,
    "env_file": _env_file,
    "port": _port,
    "auto_start": _bool,
    "oneshot": _bool,
    "depends_on": _depends_on,
    "ready_log": _regex,
    "health_check": _text,
    "health_url": _url,
    "health_expected_status": _expected_status,
    "health_expected_body": _regex,
    "health_interval": _number(positive=True),
    "health_timeout": _number(positive=True),
    "health_retries": _integer(1),
    "health_start_period": _number(positive=False),
    "stop_grace_period": _number(positive=False),
    "stop_signal": _stop_signal,
    "restart_policy": _restart_policy,
    "max_restarts": _integer(0),
    "restart_backoff": _number(positive=False),
}
_TASK_KEYS = (*_TASK_CHECKS, "hooks")
_HEALTH_KEYS = ("ready_log", "health_check", "health_url", "health_expected_status",
                "health_expected_body")  # fmt: skip
_TOP_KEYS = ("name", "auto_start", "env_file", "hooks", "tasks", "logs", "bridge")
# Keys of taskmux 0.3.1 and 0.9 files: read as ours where they mean the same...
_LEGACY_TASK_CHECKS: dict[str, _Check] = {
    "boot_grace": _number(positive=False),
    "health_retries_tcp": _integer(1),
    "log_max_size": _size,
    "log_max_files": _integer(1),
}
# ...and accepted with a warning where nothing here does what they did.
_IGNORED_TASK_KEYS = {
    "host": "taskmux 0.9's proxy host name (no proxy here: use port)",
    "host_path": "taskmux 0.9's proxy path",
    "tunnel": "taskmux 0.9's public tunnel",
    "public_hostname": "taskmux 0.9's public tunnel host name",
    "log_file": "logs are kept in the state folder (read them with `taskmux logs`)",
}
_IGNORED_TOP_KEYS = {
    "auto_daemon": "taskmux 0.9's background daemon (run `taskmux daemon` or an MCP client)",
    "auto_inject_agents": "taskmux 0.9's agent file editing (see `taskmux mcp-config`)",
    "worktree": "taskmux 0.9's worktree naming (each checkout gets its own state here)",
    "tunnel": "taskmux 0.9's public tunnels",
}
_LOGS_CHECKS: dict[str, _Check] = {
    "max_bytes": _integer(1024),
    "max_files": _integer(1),
    "scrollback": _integer(0, SCROLLBACK_MAX),
}
_BRIDGE_CHECKS: dict[str, _Check] = {"allowed_origins": _string_list}
_TASK_KEY_ALIASES = {
    "cmd": "command",
    "run": "command",
    "script": "command",
    "dir": "cwd",
    "directory": "cwd",
    "workdir": "cwd",
    "working_dir": "cwd",
    "working_directory": "cwd",
    "environment": "env",
    "envfile": "env_file",
    "env_files": "env_file",
    "dotenv": "env_file",
    "ports": "port",
    "depends": "depends_on",
    "dependencies": "depends_on",
    "requires": "depends_on",
    "needs": "depends_on",
    "after": "depends_on",
    "healthcheck": "health_check",
    "autostart": "auto_start",
    "restart": "restart_policy",
    "autorestart": "restart_policy",
}


def _unknown_key(key: str, valid: Sequence[str], aliases: Mapping[str, str] | None = None) -> str:
    message = f"unknown key {_quote(key)}"
    if aliases and key.lower() in aliases:
        return f"{message}; did you mean '{aliases[key.lower()]}'?"
    if close := difflib.get_close_matches(key, valid, 1):
        return f"{message}; did you mean '{close[0]}'?"
    return f"{message}; valid keys: {', '.join(valid)}"


def name_problem(name: str, what: str = "task name") -> str | None:
    """Why `name` is not a valid task or project name, or None when it is."""
    if NAME_RE.fullmatch(name):
        return None
    if not name:
        reason = "it is empty"
    elif len(name) > 64:
        reason = f"it is {len(name)} characters long"
    elif bad := sorted({c for c in name if not re.fullmatch(r"[A-Za-z0-9_-]", c)}):
        shown = ", ".join("' ' (space)" if c == " " else repr(c) for c in bad)
        reason = f"it contains {shown}"
    else:
        reason = f"it starts with {name[0]!r}"
    return f"invalid {what} {_quote(name)} ({reason}): {NAME_RULE}"


def default_project_name(folder: Path) -> str:
    """A valid project name made from a folder's name."""
    name = re.sub(r"[^A-Za-z0-9_-]", "-", folder.name)
    if not name:
        return "taskmux"
    if not name[0].isalnum():
        name = "p" + name
    return name[:64]


class _Validator:
    """Checks raw TOML data and builds a ProjectConfig, collecting every problem."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.problems: list[ConfigProblem] = []
        self.ignored: dict[tuple[str, bool], list[str]] = {}

    def ignore(self, key: str, task: str | None) -> None:
        owners = self.ignored.setdefault((key, task is not None), [])
        if task is not None:
            owners.append(task)

    def warnings(self, tasks: Mapping[str, TaskConfig]) -> tuple[str, ...]:
        found = []
        for (key, in_task), owners in self.ignored.items():
            if in_task:
                plural = "s" if len(owners) > 1 else ""
                where = f" in task{plural} {', '.join(owners)}: {_IGNORED_TASK_KEYS[key]}"
            else:
                where = f": {_IGNORED_TOP_KEYS[key]}"
            found.append(f"ignored key '{key}'{where}")
        for task in tasks.values():
            if task.oneshot or task.has_check() or task.restart_policy is not RestartPolicy.NO:
                continue
            users = [t.name for t in tasks.values() if task.name in t.depends_on]
            if users and all(
                tasks[u].condition(task.name, task) is Condition.HEALTHY for u in users
            ):
                found.append(
                    f"task '{task.name}' (restart_policy \"no\", no check) is a long-running task: "
                    f"{', '.join(users)} start once it has run a second; if it is a setup step "
                    "they must wait for, add oneshot = true"
                )
        return tuple(found)

    def problem(self, message: str, task: str | None = None, key: str | None = None) -> None:
        self.problems.append(ConfigProblem(message, task=task, key=key))

    def fields(
        self,
        raw: Mapping[str, Any],
        checks: Mapping[str, _Check],
        task: str | None,
        prefix: str = "",
    ) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for key, check in checks.items():
            if key in raw:
                try:
                    values[key] = check(raw[key])
                except _Invalid as exc:
                    self.problem(str(exc), task, prefix + key)
        return values

    def unknown_keys(
        self,
        raw: Mapping[str, Any],
        valid: Sequence[str],
        task: str | None,
        prefix: str = "",
        hint: Callable[[str], str | None] | None = None,
    ) -> None:
        for key in raw:
            if key not in valid:
                special = hint(key) if hint else None
                message = special or _unknown_key(key, valid, _TASK_KEY_ALIASES if task else None)
                self.problem(message, task, prefix + key)

    def table(self, raw: Mapping[str, Any], key: str, task: str | None, what: str) -> Any:
        value = raw.get(key, {})
        if not isinstance(value, dict):
            self.problem(f"must be a table ({what}), got {_describe(value)}", task, key)
            return {}
        return value

    def hooks(self, raw: Mapping[str, Any], task: str | None) -> HooksConfig:
        table = self.table(raw, "hooks", task, "keys " + ", ".join(HOOK_NAMES))
        self.unknown_keys(table, HOOK_NAMES, task, "hooks.")
        values = self.fields(table, dict.fromkeys(HOOK_NAMES, _text), task, "hooks.")
        return HooksConfig(**values)

    def project(self, raw: dict[str, Any]) -> ProjectConfig:
        def top_hint(key: str) -> str | None:
            if key in HOOK_NAMES:
                return f"unknown key '{key}'; project hooks go in the [hooks] table"
            if key in _TASK_KEYS:
                return f"unknown key '{key}'; task settings go in a [tasks.NAME] table"
            return None

        for key in _IGNORED_TOP_KEYS:
            if key in raw:
                self.ignore(key, None)
        known = {k: v for k, v in raw.items() if k not in _IGNORED_TOP_KEYS}
        self.unknown_keys(known, _TOP_KEYS, None, hint=top_hint)
        name = default_project_name(self.path.parent)
        if "name" in raw:
            try:
                name = _text(raw["name"])
            except _Invalid as exc:
                self.problem(str(exc), key="name")
            else:
                if why := name_problem(name, "project name"):
                    self.problem(why, key="name")
        auto_start = self.fields(raw, {"auto_start": _bool}, None).get("auto_start", True)
        env_file = self.fields(raw, {"env_file": _env_file}, None).get("env_file")
        hooks = self.hooks(raw, None)
        logs_raw = self.table(raw, "logs", None, "keys " + ", ".join(_LOGS_CHECKS))
        self.unknown_keys(logs_raw, list(_LOGS_CHECKS), None, "logs.")
        logs = LogsConfig(**self.fields(logs_raw, _LOGS_CHECKS, None, "logs."))
        bridge_raw = self.table(raw, "bridge", None, "keys " + ", ".join(_BRIDGE_CHECKS))
        self.unknown_keys(bridge_raw, list(_BRIDGE_CHECKS), None, "bridge.")
        bridge = BridgeConfig(**self.fields(bridge_raw, _BRIDGE_CHECKS, None, "bridge."))

        tasks_raw = raw.get("tasks", {})
        if not isinstance(tasks_raw, dict):
            self.problem(
                f"must be a table of tasks ([tasks.NAME] sections), got {_describe(tasks_raw)}",
                key="tasks",
            )
            tasks_raw = {}
        tasks: dict[str, TaskConfig] = {}
        deps: dict[str, tuple[str, ...]] = {}
        for task_name, body in tasks_raw.items():
            task = self.task(task_name, body, auto_start, deps)
            if task is not None:
                tasks[task_name] = task
        self.graph(deps)
        self.conditions(tasks)
        if self.problems:
            raise ConfigError(self.path, self.problems)
        try:
            config = ProjectConfig(
                warnings=self.warnings(tasks),
                name=name,
                config_path=self.path,
                root=self.path.parent,
                auto_start=auto_start,
                env_file=env_file,
                hooks=hooks,
                tasks=tasks,
                logs=logs,
                bridge=bridge,
            )
        except ValidationError as exc:
            raise ConfigError(self.path, _pydantic_problems(exc, None)) from None
        self.env_files(config)
        if self.problems:
            raise ConfigError(self.path, self.problems)
        return config

    def env_files(self, config: ProjectConfig) -> None:
        """Every env file must exist (but the default .env) and parse, line by line."""
        seen: set[Path] = set()
        for name, task in config.tasks.items():
            for path in config.env_files(name):
                if path in seen:
                    continue
                seen.add(path)
                owner = name if path in [config.root / f for f in task.env_file or ()] else None
                for problem in env_file_problems(path):
                    self.problem(problem, owner, "env_file")

    def task(
        self, name: str, body: object, auto_start: bool, deps: dict[str, tuple[str, ...]]
    ) -> TaskConfig | None:
        if why := name_problem(name):
            self.problem(why, name)
        if isinstance(body, str):
            body = {"command": body}
        if not isinstance(body, dict):
            self.problem(
                "must be a table of settings or a command string, got " + _describe(body), name
            )
            return None
        before = len(self.problems)

        def task_hint(key: str) -> str | None:
            if key in HOOK_NAMES:
                return (
                    f"unknown key '{key}'; did you mean 'hooks.{key}'? (table [tasks.{name}.hooks])"
                )
            return None

        for key in _IGNORED_TASK_KEYS:
            if key in body:
                self.ignore(key, name)
        legacy = (*_LEGACY_TASK_CHECKS, *_IGNORED_TASK_KEYS)
        ours = {k: v for k, v in body.items() if k not in legacy}
        self.unknown_keys(ours, _TASK_KEYS, name, hint=task_hint)
        if "command" not in body:
            self.problem("missing required key 'command' (the shell command to run)", name)
        values = self.fields(body, _TASK_CHECKS, name)
        self.legacy(values, self.fields(body, _LEGACY_TASK_CHECKS, name))
        hooks = self.hooks(body, name)
        values.setdefault("auto_start", auto_start)
        dependencies = values.pop("depends_on", {})
        values["depends_on"] = tuple(dependencies)
        values["conditions"] = {dep: c for dep, c in dependencies.items() if c is not None}
        deps[name] = values["depends_on"]
        if values.get("oneshot"):
            self.oneshot(values, name)
        if len(self.problems) > before or not NAME_RE.fullmatch(name):
            return None
        try:
            return TaskConfig(name=name, hooks=hooks, **values)
        except ValidationError as exc:
            self.problems.extend(_pydantic_problems(exc, name))
            return None

    @staticmethod
    def legacy(values: dict[str, Any], legacy: Mapping[str, Any]) -> None:
        """taskmux 0.3/0.9 keys that mean one of ours (ours win when both are given)."""
        if "boot_grace" in legacy:
            values.setdefault("health_start_period", legacy["boot_grace"])
        if "health_retries_tcp" in legacy and not (values.get("health_check") or
                                                   values.get("health_url")):  # fmt: skip
            values.setdefault("health_retries", legacy["health_retries_tcp"])
        if "log_max_size" in legacy:
            values["log_max_bytes"] = legacy["log_max_size"]
        if "log_max_files" in legacy:
            values["log_max_files"] = legacy["log_max_files"]

    def oneshot(self, values: dict[str, Any], name: str) -> None:
        """A one-shot step succeeds by exiting 0: no health check, never restarted always."""
        if values.get("restart_policy") is RestartPolicy.ALWAYS:
            self.problem(
                'a oneshot task runs to completion: use restart_policy "no" (the default for it) '
                'or "on-failure" (run it again until it succeeds)',
                name,
                "restart_policy",
            )
        values.setdefault("restart_policy", RestartPolicy.NO)
        for key in _HEALTH_KEYS:
            if key in values:
                self.problem(
                    f"a oneshot task succeeds by exiting 0 and has no health check: remove {key}, "
                    "or remove oneshot for a long-running task",
                    name,
                    key,
                )

    def conditions(self, tasks: Mapping[str, TaskConfig]) -> None:
        for task in tasks.values():
            for dep, condition in task.conditions.items():
                if condition is Condition.HEALTHY and dep in tasks and tasks[dep].oneshot:
                    self.problem(
                        f"'{dep}' is a oneshot task: it completes and is never healthy; "
                        'use condition = "completed"',
                        task.name,
                        "depends_on",
                    )

    def graph(self, deps: Mapping[str, tuple[str, ...]]) -> None:
        known = list(deps)
        edges: dict[str, list[str]] = {}
        for name, targets in deps.items():
            edges[name] = []
            for dep in targets:
                if dep == name:
                    self.problem("depends on itself", name, "depends_on")
                elif dep not in deps:
                    close = difflib.get_close_matches(dep, known, 1)
                    hint = f"; did you mean '{close[0]}'?" if close else ""
                    self.problem(f"depends on unknown task {_quote(dep)}{hint}", name, "depends_on")
                else:
                    edges[name].append(dep)
        for cycle in _cycles(edges):
            self.problem("dependency cycle: " + " -> ".join(cycle), cycle[0], "depends_on")


def _cycles(edges: Mapping[str, list[str]]) -> list[list[str]]:
    """One cycle per back edge of a depth-first walk, each spelled from its first-walked task."""
    state: dict[str, int] = {}
    found: list[list[str]] = []
    seen: set[frozenset[tuple[str, str]]] = set()
    for start in edges:
        if start in state:
            continue
        path: list[str] = [start]
        position = {start: 0}
        stack = [iter(edges[start])]
        state[start] = 1
        while stack:
            dep = next(stack[-1], None)
            if dep is None:
                done = path.pop()
                state[done] = 2
                del position[done]
                stack.pop()
            elif state.get(dep) == 1:
                cycle = [*path[position[dep] :], dep]
                key = frozenset(itertools.pairwise(cycle))
                if key not in seen:
                    seen.add(key)
                    found.append(cycle)
            elif dep not in state:
                state[dep] = 1
                position[dep] = len(path)
                path.append(dep)
                stack.append(iter(edges[dep]))
    return found


def env_file_problems(path: Path) -> list[str]:
    """Why a dotenv file cannot be used: missing, unreadable, or malformed lines."""
    if not path.is_file():
        return [f"env file {path} does not exist (create it, or set env_file = false)"]
    return [f"env file {p}" for p in load_env_files([path], {})[1]]


def _pydantic_problems(exc: ValidationError, task: str | None) -> list[ConfigProblem]:
    return [
        ConfigProblem(err["msg"], task=task, key=".".join(str(p) for p in err["loc"]) or None)
        for err in exc.errors()
    ]


_SHELL_WORDS_TEXT = """! . : [ [[ { } ( ) alias bg break builtin case cd command continue declare
do done echo elif else esac eval exit export false fg fi for function getopts hash if in jobs
kill let local printf pwd read readonly return select set shift source test then time times
trap true type typeset ulimit umask unalias unset until wait while"""
_SHELL_WORDS = frozenset(_SHELL_WORDS_TEXT.split())
_ASSIGNMENT_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")


def runtime_problems(cfg: ProjectConfig) -> list[ConfigProblem]:
    """What `taskmux check` reports beyond validation: missing cwds, commands not found."""
    problems: list[ConfigProblem] = []
    for task in cfg.tasks.values():
        folder = task.working_dir(cfg.root)
        if not folder.exists():
            problems.append(
                ConfigProblem(f"directory {folder} does not exist", task=task.name, key="cwd")
            )
        elif not folder.is_dir():
            problems.append(
                ConfigProblem(f"{folder} is not a directory", task=task.name, key="cwd")
            )
        for key in ("command", "health_check"):
            command: str | None = getattr(task, key)
            if command and (why := _missing_executable(command, folder, task.env)):
                problems.append(ConfigProblem(why, task=task.name, key=key))
    return problems


def _missing_executable(command: str, folder: Path, env: Mapping[str, str]) -> str | None:
    try:
        lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        words = list(lexer)
    except ValueError:
        return None
    path_env = env.get("PATH", os.environ.get("PATH", os.defpath))
    while words and _ASSIGNMENT_RE.match(words[0]):
        if words.pop(0).startswith("PATH="):
            return None
    if words and words[0] == "exec":
        words.pop(0)
    if not words:
        return None
    program = words[0]
    if program in _SHELL_WORDS or program.startswith("-") or any(c in program for c in "$`*?"):
        return None
    if set(program) <= set("|&;<>()"):
        return None
    if "/" in program:
        target = folder / Path(program).expanduser()
        if not target.is_absolute() and not folder.is_dir():
            return None
        if not target.exists():
            return f"'{program}' not found (looked for {target})"
        if not target.is_file() or not os.access(target, os.X_OK):
            return f"'{program}' is not an executable file ({target})"
        return None
    if "$" in path_env:
        return None
    entries = [str(folder / entry) if entry else str(folder) for entry in path_env.split(":")]
    if shutil.which(program, path=os.pathsep.join(entries)) is None:
        return f"'{program}' not found on PATH"
    return None


def add_task(
    path: Path,
    name: str,
    command: str,
    *,
    cwd: str | None = None,
    port: int | str | None = None,
    depends_on: Sequence[str] = (),
    health_check: str | None = None,
    health_url: str | None = None,
) -> ProjectConfig:
    """Add task `name` to the taskmux.toml at `path`, keeping its comments and layout."""
    import tomlkit.items  # editing only: every command loads the config, few edit it

    text, bom = _read_for_edit(path)
    current = parse_config(text, path)
    if why := name_problem(name):
        raise ConfigError(path, [ConfigProblem(why, task=name)])
    if name in current.tasks:
        raise ConfigError(path, [ConfigProblem(f"task '{name}' already exists", task=name)])
    fields: dict[str, object] = {
        "command": command,
        "cwd": cwd,
        "port": port,
        "depends_on": list(depends_on) or None,
        "health_check": health_check,
        "health_url": health_url,
    }
    table = _toml_table(fields)
    doc = tomlkit.parse(text)
    tasks = doc.get("tasks")
    if tasks is None:
        holder = tomlkit.table(is_super_table=True)
        holder.add(name, table)
        doc.add("tasks", holder)
    elif isinstance(tasks, tomlkit.items.InlineTable):
        tasks[name] = _toml_inline(table)
    else:
        tasks[name] = table
    edited = tomlkit.dumps(doc)
    block = tomlkit.document()
    holder = tomlkit.table(is_super_table=True)
    holder.add(name, _toml_table(fields))
    block.add("tasks", holder)
    result = _place_insertion(text, edited, tomlkit.dumps(block))
    return _commit(path, result, edited, bom)


def remove_task(path: Path, name: str) -> ProjectConfig:
    """Remove task `name` from the taskmux.toml at `path`; refused while others depend on it."""
    import tomlkit

    text, bom = _read_for_edit(path)
    current = parse_config(text, path)
    if name not in current.tasks:
        close = difflib.get_close_matches(name, list(current.tasks), 1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(path, [ConfigProblem(f"no task '{name}' to remove{hint}", task=name)])
    users = [t.name for t in current.tasks.values() if name in t.depends_on]
    if users:
        listed = ", ".join(f"'{u}'" for u in users)
        message = (
            f"cannot remove task '{name}': {listed} depend{'s' if len(users) == 1 else ''} "
            "on it; remove it from their depends_on first"
        )
        raise ConfigError(path, [ConfigProblem(message, task=name, key="depends_on")])
    doc = tomlkit.parse(text)
    del doc["tasks"][name]
    edited = tomlkit.dumps(doc)
    return _commit(path, _place_removal(text, edited), edited, bom)


def _read_for_edit(path: Path) -> tuple[str, bool]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(path, f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(path, f"not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    bom = text.startswith("\ufeff")
    return (text[1:] if bom else text), bom


def _commit(path: Path, preferred: str | None, fallback: str, bom: bool) -> ProjectConfig:
    """Validate the edited text and write it atomically; `preferred` if it means the same."""
    text = fallback
    if preferred is not None and preferred != fallback:
        try:
            if tomllib.loads(preferred) == tomllib.loads(fallback):
                text = preferred
        except tomllib.TOMLDecodeError:
            pass
    result = parse_config(text, path)
    try:
        write_atomic(path, (("\ufeff" if bom else "") + text).encode("utf-8"), mode=None)
    except OSError as exc:
        raise ConfigError(path, f"cannot write {path}: {exc.strerror or exc}") from None
    return result


def _toml_value(value: object) -> Any:
    import tomlkit

    if isinstance(value, Mapping):
        inline = tomlkit.inline_table()
        for key, item in value.items():
            inline[str(key)] = _toml_value(item)
        return inline
    if isinstance(value, list | tuple):
        return [_toml_value(v) for v in value]
    if isinstance(value, str | Path):
        return str(value)
    return value


def _toml_table(fields: Mapping[str, object]) -> tomlkit.items.Table:
    import tomlkit

    table = tomlkit.table()
    for key, value in fields.items():
        if value is not None:
            table.add(key, _toml_value(value))
    return table


def _toml_inline(table: tomlkit.items.Table) -> tomlkit.items.InlineTable:
    import tomlkit

    inline = tomlkit.inline_table()
    inline.update(table.unwrap())
    return inline


def _lines(text: str) -> tuple[list[str], bool]:
    if not text:
        return [], False
    lines = text.split("\n")
    ends = text.endswith("\n")
    return (lines[:-1] if ends else lines), ends


def _join(lines: list[str], final_newline: bool) -> str:
    return "\n".join(lines) + ("\n" if final_newline and lines else "")


def _blank(line: str) -> bool:
    return not line.strip()


def _comment(line: str) -> bool:
    return line.lstrip().startswith("#")


def _header(line: str) -> bool:
    return line.lstrip().startswith("[")


def _place_removal(original: str, edited: str) -> str | None:
    """The original text minus what tomlkit removed, comments kept with what they describe."""
    # tomlkit files the comments above a header under the table before it: a removed task
    # must take its own leading comments and leave the next table's. None: not a pure cut.
    old, ends = _lines(original)
    new, _ = _lines(edited)
    start = 0
    while start < min(len(old), len(new)) and old[start] == new[start]:
        start += 1
    tail = 0
    while tail < min(len(old), len(new)) - start and old[-1 - tail] == new[-1 - tail]:
        tail += 1
    end = len(old) - tail
    if old[:start] + old[end:] != new or start >= end:
        return None
    while start > 0 and _comment(old[start - 1]):
        start -= 1
    last = end
    while last > start and _blank(old[last - 1]):
        last -= 1
    first = last
    while first > start and _comment(old[first - 1]):
        first -= 1
    attached_below = last == end and end < len(old) and _header(old[end])
    if first < last and (attached_below or (first > start and _blank(old[first - 1]))):
        end = first
    before, after = old[:start], old[end:]
    if before and _blank(before[-1]) and (not after or _blank(after[0])):
        before.pop()
    if not before:
        while after and _blank(after[0]):
            after.pop(0)
    return _join(before + after, ends)


def _place_insertion(original: str, edited: str, block: str) -> str | None:
    """The original text with `block` inserted where tomlkit put its table, comments respected."""
    # Comments glued to the content before the spot stay with it; comments glued to the next
    # header stay with that header. None: tomlkit did more than insert lines.
    old, ends = _lines(original)
    new, _ = _lines(edited)
    start = 0
    while start < min(len(old), len(new)) and old[start] == new[start]:
        start += 1
    tail = 0
    while tail < min(len(old), len(new)) - start and old[-1 - tail] == new[-1 - tail]:
        tail += 1
    if new[:start] + new[len(new) - tail :] != old:
        return None
    crlf = "\r\n" in original
    added, _ = _lines(block)
    added = [line + "\r" if crlf else line for line in added]
    content = start
    while content > 0 and (_blank(old[content - 1]) or _comment(old[content - 1])):
        content -= 1
    gap = old[content:start]
    at = content
    if not (gap and all(_comment(g) for g in gap) and start < len(old) and _header(old[start])):
        while at < start and _comment(old[at]):
            at += 1
    blank = "\r" if crlf else ""
    lines = ([blank] if at > 0 else []) + added
    if at < len(old) and not _blank(old[at]):
        lines.append(blank)
    return _join(old[:at] + lines + old[at:], ends or at == len(old))


_INIT_HEADER = """\
taskmux.toml: this project's dev tasks, each run in its own tmux window by taskmux.
Each [tasks.NAME] needs a `command`. Optional: cwd, env, port (a number, or "auto" for a free
one; the task gets it as $PORT), oneshot (a setup step: success = exit 0), depends_on,
auto_start, ready_log (a regex: healthy once a line of the run matches), health_check (shell,
exit 0 = healthy), health_url, restart_policy ("no", "on-failure", "always"), and [hooks]
before_start / after_start / before_stop / after_stop.
Edit by hand or with `taskmux add` / `taskmux remove`; validate with `taskmux check`."""

_INIT_EXAMPLE = """\
[tasks.setup]
command = "make setup"
oneshot = true

[tasks.web]
command = "npm run dev"
port = 5173
ready_log = "(?i)ready in"
depends_on = ["setup"]"""


def render_new_config(name: str, tasks: Mapping[str, Mapping[str, object]]) -> str:
    """The text of a fresh taskmux.toml for `taskmux init`, validated."""
    import tomlkit

    doc = tomlkit.document()
    for line in _INIT_HEADER.splitlines():
        doc.add(tomlkit.comment(line))
    doc.add(tomlkit.nl())
    name_item = tomlkit.item(name)
    name_item.comment("the tmux session name")
    doc.add("name", name_item)
    if tasks:
        holder = tomlkit.table(is_super_table=True)
        for task_name, fields in tasks.items():
            try:
                holder.add(task_name, _toml_table(fields))
            except (TypeError, ValueError) as exc:
                raise ConfigError(None, [ConfigProblem(str(exc), task=task_name)]) from None
        doc.add("tasks", holder)
    else:
        doc.add(tomlkit.nl())
        doc.add(tomlkit.comment("No tasks were detected. Add yours, like these:"))
        for line in _INIT_EXAMPLE.splitlines():
            doc.add(tomlkit.comment(line))
    text = tomlkit.dumps(doc)
    try:
        parse_config(text, Path.cwd() / CONFIG_FILENAME)
    except ConfigError as exc:
        raise ConfigError(None, exc.problems) from None
    return text
