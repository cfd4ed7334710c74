"""Every operation, declared once: name, parameters (types, bounds, defaults, docs), result and
hints. The MCP tools' input schemas, the CLI's arguments and the bridge's params are derived
from these declarations, and every face checks arguments with `bind`, so a limit, a default or
a spelling cannot differ by face.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from .errors import ArgumentError
from .events import Cause
from .interactive import KEY_FORMS, MAX_KEYS, MAX_SCREEN_LINES, MAX_TEXT
from .logs import MAX_CONTEXT, MAX_CURSOR, MAX_LINES, MAX_MATCHES, MAX_PATTERN
from .models import (
    ActionResult,
    BaseModel,
    EventsResult,
    GrepResult,
    HealthResult,
    InspectResult,
    LogsResult,
    ScreenResult,
    SendResult,
    StatusResult,
    WaitResult,
)

if TYPE_CHECKING:
    from .project import Project

MAX_NAMES = 200
MAX_NAME = 64
MAX_SINCE = 64
MAX_EVENTS = 10_000
MAX_TIMEOUT = 86_400.0
MAX_WORD = 32
MAX_STREAMED = 10**9
Progress = Callable[[str], Awaitable[None]]


class Kind(StrEnum):
    """The type of a parameter."""

    TEXT = "text"
    INTEGER = "integer"
    NUMBER = "number"
    BOOLEAN = "boolean"
    NAME = "name"
    NAMES = "names"
    WORDS = "words"


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()


@dataclass(frozen=True)
class Param:
    """One parameter of an operation."""

    name: str
    kind: Kind
    doc: str
    default: Any = REQUIRED
    minimum: float | None = None
    maximum: float | None = None
    max_length: int | None = None
    min_items: int = 0
    aliases: tuple[str, ...] = ()
    flags: tuple[str, ...] = ()
    negation: str | None = None
    metavar: str | None = None
    cli_default: Any = REQUIRED  # where a person at a terminal wants another default
    cli_maximum: float | None = None  # where the CLI streams what agents get in pages

    def for_cli(self) -> Param:
        """The parameter as the CLI takes it (its own default and bound, where it has them)."""
        default = self.default if self.cli_default is REQUIRED else self.cli_default
        return replace(self, default=default, maximum=self.cli_maximum or self.maximum)

    @property
    def required(self) -> bool:
        """Whether a call must give it."""
        return self.default is REQUIRED

    def schema(self) -> dict[str, Any]:
        """Its JSON schema, in the subset strict tool-callers accept (no null, bounds given)."""
        doc = self.doc
        if self.aliases:
            doc += f" (also accepted as: {', '.join(self.aliases)})"
        out: dict[str, Any]
        if self.kind is Kind.NAMES:
            item = {"type": "string", "maxLength": MAX_NAME}
            out = {"type": "array", "items": item, "maxItems": MAX_NAMES}
            if self.min_items:
                out["minItems"] = self.min_items
        elif self.kind is Kind.WORDS:
            item = {"type": "string", "maxLength": MAX_WORD}
            out = {"type": "array", "items": item, "maxItems": self.max_length or MAX_NAMES}
        elif self.kind in (Kind.TEXT, Kind.NAME):
            out = {"type": "string", "maxLength": self.max_length or MAX_NAME}
        elif self.kind is Kind.BOOLEAN:
            out = {"type": "boolean"}
        else:
            out = {"type": self.kind.value, "minimum": self.minimum, "maximum": self.maximum}
        out["description"] = doc
        if not self.required and self.default is not None:
            out["default"] = list(self.default) if isinstance(self.default, tuple) else self.default
        return out

    def check(self, value: Any, operation: str) -> Any:
        """The value, normalised; ArgumentError saying what is expected otherwise."""
        if self.kind is Kind.NAMES:
            return self._names(value)
        if self.kind is Kind.WORDS:
            return self._words(value)
        if self.kind in (Kind.TEXT, Kind.NAME):
            if self.kind is Kind.NAME and isinstance(value, list) and len(value) == 1:
                value = value[0]
            limit = self.max_length or MAX_NAME
            if not isinstance(value, str):
                raise self._wrong(f"a string of at most {limit} characters", value)
            if len(value) > limit:
                raise ArgumentError(f"{self.name} is longer than {limit} characters")
            if self.kind is Kind.NAME and not value:
                raise ArgumentError(f"{self.name} must name a task")
            return value
        if self.kind is Kind.BOOLEAN:
            if not isinstance(value, bool):
                raise self._wrong("true or false", value)
            return value
        return self._number(value)

    def _names(self, value: Any) -> list[str]:
        if isinstance(value, str):
            value = [value]
        what = f"a list of at most {MAX_NAMES} task names"
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise self._wrong(what, value)
        if len(value) > MAX_NAMES:
            raise ArgumentError(f"{self.name} must be {what} (got {len(value)})")
        if len(value) < self.min_items:
            raise ArgumentError(f"{self.name} needs at least one task name")
        if any(len(v) > MAX_NAME for v in value):
            raise ArgumentError(f"{self.name}: a task name has at most {MAX_NAME} characters")
        return list(dict.fromkeys(value))

    def _words(self, value: Any) -> list[str]:
        if isinstance(value, str):
            value = [value]
        limit = self.max_length or MAX_NAMES
        what = f"a list of at most {limit} strings of at most {MAX_WORD} characters"
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise self._wrong(what, value)
        if len(value) > limit or any(len(v) > MAX_WORD for v in value):
            raise ArgumentError(f"{self.name} must be {what}")
        return list(value)

    def _number(self, value: Any) -> int | float:
        integer = self.kind is Kind.INTEGER
        what = "an integer" if integer else "a number"
        what += f" from {self.minimum:g} to {self.maximum:g}"
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self._wrong(what, value)
        if integer and isinstance(value, float):
            if not value.is_integer():
                raise self._wrong(what, value)
            value = int(value)
        if isinstance(value, float) and not math.isfinite(value):
            raise self._wrong(what, value)
        assert self.minimum is not None and self.maximum is not None
        if not self.minimum <= value <= self.maximum:
            raise self._wrong(what, value)
        number: int | float = value
        return number

    def _wrong(self, what: str, value: Any) -> ArgumentError:
        return ArgumentError(f"{self.name} must be {what} (got {_show(value)})")


def _show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        text = value if len(value) <= 40 else value[:37] + "..."
        return repr(text)
    if isinstance(value, int | float):
        return str(value)[:40]
    return f"a {'list' if isinstance(value, list) else type(value).__name__}"


@dataclass(frozen=True)
class Call:
    """Who calls, where progress messages go, and whether secrets may be shown (a human's
    `--raw`)."""

    cause: Cause
    progress: Progress | None = None
    raw: bool = False


Runner = Callable[["Project", Mapping[str, Any], Call], Awaitable[BaseModel]]


@dataclass(frozen=True)
class Operation:
    """One thing taskmux does for a face."""

    name: str
    title: str
    doc: str
    params: tuple[Param, ...]
    result: type[BaseModel]
    run: Runner
    read_only: bool = True
    destructive: bool = False
    idempotent: bool = True
    waits: bool = False
    needs_config: bool = False
    cli: str | None = None
    by_name: dict[str, Param] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        names = {p.name: p for p in self.params}
        names |= {alias: p for p in self.params for alias in p.aliases}
        object.__setattr__(self, "by_name", names)

    def for_cli(self) -> Operation:
        """The operation with its parameters as the CLI takes them."""
        return replace(self, params=tuple(p.for_cli() for p in self.params))

    def input_schema(self) -> dict[str, Any]:
        """The JSON schema of its arguments (additionalProperties false, bounds declared)."""
        schema: dict[str, Any] = {
            "type": "object",
            "properties": {p.name: p.schema() for p in self.params},
            "additionalProperties": False,
        }
        required = [p.name for p in self.params if p.required]
        if required:
            schema["required"] = required
        return schema

    def bind(self, raw: object) -> dict[str, Any]:
        """Arguments checked against the declaration, defaults filled in; ArgumentError (one
        sentence, with a did-you-mean for an unknown name) otherwise."""
        if raw is None:
            raw = {}
        if not isinstance(raw, Mapping):
            raise ArgumentError(f"{self.name} takes an object of named arguments")
        values: dict[str, Any] = {}
        for key, value in raw.items():
            param = self.by_name.get(key) if isinstance(key, str) else None
            if param is None:
                raise ArgumentError(self._unknown(str(key)))
            if value is None and not param.required:
                continue  # null means "not given" for an optional argument
            checked = param.check(value, self.name)
            if param.name in values and param.kind is Kind.NAMES:
                checked = list(dict.fromkeys([*values[param.name], *checked]))
            values[param.name] = checked
        for param in self.params:
            if param.name in values:
                continue
            if param.required:
                raise ArgumentError(f"{self.name} needs {param.name}: {param.doc}")
            default = param.default
            values[param.name] = list(default) if isinstance(default, tuple) else default
        return values

    def _unknown(self, key: str) -> str:
        known = [p.name for p in self.params]
        close = difflib.get_close_matches(key, [*self.by_name], 1, cutoff=0.6)
        hint = f"; did you mean '{self.by_name[close[0]].name}'?" if close else ""
        takes = ", ".join(known) if known else "no arguments"
        return f"{self.name} has no argument '{key[:64]}'{hint} (it takes: {takes})"


# ------------------------------------------------------------------ the parameters


def _tasks(doc: str, *, required: bool = False) -> Param:
    return Param(
        "tasks",
        Kind.NAMES,
        doc,
        default=REQUIRED if required else (),
        min_items=1 if required else 0,
        aliases=("task",),
        metavar="TASK",
    )


WAIT = Param(
    "wait", Kind.BOOLEAN, "wait until the tasks are up (or failed)", default=True,
    negation="--no-wait",
)  # fmt: skip
TIMEOUT = Param(
    "timeout", Kind.NUMBER, "seconds to wait at most", default=60.0, minimum=0.1,
    maximum=MAX_TIMEOUT, flags=("--timeout",), metavar="S",
)  # fmt: skip
FORCE_PORT = Param(
    "force_port", Kind.BOOLEAN, "kill whoever listens on a task's port, even a process that is "
    "not this task's (without it, only the task's own leftovers are)", default=False,
    flags=("--force-port",),
)  # fmt: skip
WAIT_FOR = Param(
    "wait_for", Kind.TEXT, "then wait until a line of each named task's current run matches "
    "this Python regex (within the same timeout)", default=None, max_length=MAX_PATTERN,
    flags=("--wait-for",), metavar="PATTERN",
)  # fmt: skip
SINCE = Param(
    "since",
    Kind.TEXT,
    '"start" (the current run only), "all" (every run kept), a duration like "30s"/"5m"/"2h", '
    "or an ISO 8601 time",
    default=None,
    max_length=MAX_SINCE,
    flags=("--since",),
    metavar="S",
)


# ------------------------------------------------------------------ the operations


async def _status(project: Project, args: Mapping[str, Any], call: Call) -> BaseModel:
    return await project.status(args["tasks"])


def _waiting(action: str) -> Runner:
    """start or restart: the facade method of that name, with waiting and progress."""

    async def run(project: Project, args: Mapping[str, Any], call: Call) -> BaseModel:
        method = getattr(project, action)
        result: BaseModel = await method(
            args["tasks"],
            wait=args["wait"],
            timeout=args["timeout"],
            cause=call.cause,
            progress=call.progress,
            force_port=args["force_port"],
            wait_for=args["wait_for"],
        )
        return result

    return run


def _ending(action: str) -> Runner:
    """stop or kill: the facade method of that name."""

    async def run(project: Project, args: Mapping[str, Any], call: Call) -> BaseModel:
        method = getattr(project, action)
        result: BaseModel = await method(args["tasks"], cause=call.cause, progress=call.progress)
        return result

    return run


async def _down(project: Project, args: Mapping[str, Any], call: Call) -> BaseModel:
    return await project.down(
        cause=call.cause, progress=call.progress, release_ports=args["release_ports"]
    )


async def _logs(project: Project, args: Mapping[str, Any], call: Call) -> BaseModel:
    return await project.read_logs(
        args["tasks"], lines=args["lines"], since=args["since"], before=args["before"]
    )


async def _grep(project: Project, args: Mapping[str, Any], call: Call) -> BaseModel:
    return await project.grep(
        args["pattern"],
        args["tasks"],
        context=args["context"],
        ignore_case=args["ignore_case"],
        since=args["since"],
        max_matches=args["max_matches"],
    )


async def _inspect(project: Project, args: Mapping[str, Any], call: Call) -> BaseModel:
    return await project.inspect(args["task"])


async def _health(project: Project, args: Mapping[str, Any], call: Call) -> BaseModel:
    return await project.health(args["tasks"])


async def _send(project: Project, args: Mapping[str, Any], call: Call) -> BaseModel:
    return await project.send(
        args["task"], args["text"], args["keys"], enter=args["enter"], cause=call.cause
    )


async def _screen(project: Project, args: Mapping[str, Any], call: Call) -> BaseModel:
    return await project.screen(args["task"], lines=args["lines"])


async def _wait_for(project: Project, args: Mapping[str, Any], call: Call) -> BaseModel:
    return await project.wait_for(
        args["task"], args["pattern"], timeout=args["timeout"], since=args["since"],
        progress=call.progress,
    )  # fmt: skip


def _task(doc: str = "the task's name") -> Param:
    return Param("task", Kind.NAME, doc, aliases=("tasks",), metavar="TASK")


async def _events(project: Project, args: Mapping[str, Any], call: Call) -> BaseModel:
    return await project.read_events(args["tasks"], since=args["since"], limit=args["limit"])


OPERATIONS: dict[str, Operation] = {
    op.name: op
    for op in (
        Operation(
            "status",
            "Task status",
            "Call first: every task's state, health, pid, exit code, restarts, port and uptime. "
            "Also says which tmux session holds the tasks, where taskmux.toml is, whether it "
            "is valid, and whether a monitor is applying restart policies.",
            (_tasks("only these tasks (default: all)"),),
            StatusResult,
            _status,
        ),
        Operation(
            "start",
            "Start tasks",
            "Start tasks (default: every auto_start task) and their dependencies, in order. "
            "Use this instead of running servers in your own shell. With wait (default) it "
            "returns when each task is healthy/running, has exited 0 (one-shot), or has failed "
            "(with the exit status, the failing check's output and the last log lines), or at "
            "the timeout. Tasks already running are left alone; starting is safe to repeat.",
            (
                _tasks("tasks to start (default: every auto_start task)"),
                WAIT,
                TIMEOUT,
                FORCE_PORT,
                WAIT_FOR,
            ),
            ActionResult,
            _waiting("start"),
            read_only=False,
            waits=True,
            needs_config=True,
        ),
        Operation(
            "stop",
            "Stop tasks",
            "Stop tasks gracefully (default: all): SIGINT, then SIGTERM, then SIGKILL, until "
            "none of their processes is left. A stopped task is not restarted by any restart "
            "policy until it is started again.",
            (_tasks("tasks to stop (default: all)"),),
            ActionResult,
            _ending("stop"),
            read_only=False,
            destructive=True,
        ),
        Operation(
            "restart",
            "Restart tasks",
            "Stop then start tasks (default: all running ones); clears manual-stop marks. With "
            "wait (default) it returns the verdict like `start`, and for each task the lines it "
            "printed since this start (`log_tail`).",
            (
                _tasks("tasks to restart (default: every running task)"),
                WAIT,
                TIMEOUT,
                FORCE_PORT,
                WAIT_FOR,
            ),
            ActionResult,
            _waiting("restart"),
            read_only=False,
            destructive=True,
            idempotent=False,
            waits=True,
            needs_config=True,
        ),
        Operation(
            "kill",
            "Kill tasks",
            "SIGKILL every process of the named tasks at once and remove their tmux windows.",
            (_tasks("tasks to kill (at least one)", required=True),),
            ActionResult,
            _ending("kill"),
            read_only=False,
            destructive=True,
            idempotent=False,
        ),
        Operation(
            "down",
            "Take the project down",
            "Stop every task, remove the project's tmux session (its windows, the monitor "
            'there, the log writers) and release the ports assigned to `port = "auto"` '
            "tasks. Logs and events are kept.",
            (
                Param(
                    "release_ports",
                    Kind.BOOLEAN,
                    "release the ports assigned to this "
                    'checkout\'s `port = "auto"` tasks (false: keep them for the next start)',
                    default=True,
                    negation="--keep-ports",
                ),
            ),
            ActionResult,
            _down,
            read_only=False,
            destructive=True,
        ),
        Operation(
            "logs",
            "Read task logs",
            "Tasks' output as plain text (default: all tasks interleaved by time), the last "
            f"lines (at most {MAX_LINES} per call). Lines longer than 4000 characters are cut; "
            "says when lines were left out. To read further back, pass the result's `cursor` "
            "as `before` (with the same tasks and since): you get the lines just before those "
            "returned, none lost or repeated even while the log grows.",
            (
                _tasks("only these tasks (default: all)"),
                Param(
                    "lines",
                    Kind.INTEGER,
                    "how many of the last lines",
                    default=100,
                    minimum=1,
                    maximum=MAX_LINES,
                    flags=("-n", "--lines"),
                    metavar="N",
                    cli_maximum=MAX_STREAMED,
                ),
                SINCE,
                Param(
                    "before",
                    Kind.TEXT,
                    "the `cursor` of an earlier logs result: read the lines just before it",
                    default=None,
                    max_length=MAX_CURSOR,
                    flags=("--before",),
                    metavar="CURSOR",
                ),
            ),
            LogsResult,
            _logs,
        ),
        Operation(
            "grep",
            "Search task logs",
            "Search task logs with a Python regular expression: by default every task's current "
            'run (since="start"); since="all" searches every run kept, rotated files too. Each '
            "match has its task, time, line and up to `context` lines around it; context "
            "shared by matches close together is given once (`before` holds only lines the "
            "previous match of that task did not give, `continues` says no line lies between).",
            (
                Param(
                    "pattern",
                    Kind.TEXT,
                    "a Python regular expression",
                    max_length=MAX_PATTERN,
                    metavar="PATTERN",
                ),
                _tasks("only these tasks (default: all)"),
                Param(
                    "context",
                    Kind.INTEGER,
                    "lines of context before and after each match",
                    default=2,
                    minimum=0,
                    maximum=MAX_CONTEXT,
                    flags=("-C", "--context"),
                    metavar="N",
                ),
                Param(
                    "ignore_case",
                    Kind.BOOLEAN,
                    "match regardless of case",
                    default=False,
                    flags=("-i", "--ignore-case"),
                ),
                replace(SINCE, default="start", cli_default="all"),
                Param(
                    "max_matches",
                    Kind.INTEGER,
                    "stop after this many matches",
                    default=100,
                    minimum=1,
                    maximum=MAX_MATCHES,
                    flags=("-m", "--max-matches"),
                    metavar="N",
                ),
            ),
            GrepResult,
            _grep,
        ),
        Operation(
            "inspect",
            "Inspect a task",
            "Everything known of one task: config, state, processes, last exit, health "
            "history, restart counters and recent events. Use it to find out why a task failed.",
            (_task(),),
            InspectResult,
            _inspect,
        ),
        Operation(
            "health",
            "Run health checks",
            "Run health checks now (default: every task); per task healthy, method, detail and "
            "how long the check took. Nothing is recorded.",
            (_tasks("only these tasks (default: all)"),),
            HealthResult,
            _health,
        ),
        Operation(
            "events",
            "Recent events",
            "What happened, newest last: starts, exits, stops, restarts, give-ups, health "
            "changes, config reloads, repairs, each with its cause (user, agent, policy, "
            "health, config).",
            (
                _tasks("only these tasks (default: all)"),
                SINCE,
                Param(
                    "limit",
                    Kind.INTEGER,
                    "how many of the newest events",
                    default=50,
                    minimum=1,
                    maximum=MAX_EVENTS,
                    flags=("-n", "--limit"),
                    metavar="N",
                ),
            ),
            EventsResult,
            _events,
        ),
        Operation(
            "send",
            "Type into a task",
            "Type into a running task's terminal, as a person at its window would: `text` "
            "literally (never read as key names or tmux commands), then `keys` from an "
            f"allowlist ({KEY_FORMS}), then Enter when `enter` is true. For prompts "
            "(`Overwrite? [y/N]`), REPLs and dev servers' shortcut keys (vite's `r`, jest's `a`). "
            "An exit right after C-c, C-\\ or C-d is your stop, not a crash: it is not "
            "restarted. Read the result with `screen` or `wait_for`.",
            (
                _task(),
                Param(
                    "text",
                    Kind.TEXT,
                    "text to type, literally",
                    default="",
                    max_length=MAX_TEXT,
                    metavar="TEXT",
                ),
                Param(
                    "keys",
                    Kind.WORDS,
                    "keys to press after the text, in order",
                    default=(),
                    max_length=MAX_KEYS,
                    flags=("--key",),
                    metavar="K",
                ),
                Param(
                    "enter",
                    Kind.BOOLEAN,
                    "press Enter at the end",
                    default=False,
                    flags=("--enter",),
                ),
            ),
            SendResult,
            _send,
            read_only=False,
            idempotent=False,
        ),
        Operation(
            "screen",
            "Read a task's screen",
            "The task's visible terminal screen now, as plain text rows, with the cursor "
            "position and the pane size: for prompts, TUIs and REPLs, whose state is on the "
            "screen rather than in the log.",
            (
                _task(),
                Param(
                    "lines",
                    Kind.INTEGER,
                    "at most this many rows, from the bottom",
                    default=MAX_SCREEN_LINES,
                    minimum=1,
                    maximum=MAX_SCREEN_LINES,
                    flags=("-n", "--lines"),
                    metavar="N",
                ),
            ),
            ScreenResult,
            _screen,
        ),
        Operation(
            "wait_for",
            "Wait for a line of output",
            "Wait until a line of the task's current run matches a Python regex (or a line "
            'since `since`: "now", a duration, a time), the task exits, or the timeout. '
            "Returns the matching line with the lines before it, or why it stopped waiting "
            "(the exit status and the last lines, or the timeout). Instead of polling `logs`.",
            (
                _task(),
                Param(
                    "pattern",
                    Kind.TEXT,
                    "a Python regular expression",
                    max_length=MAX_PATTERN,
                    metavar="PATTERN",
                ),
                TIMEOUT,
                Param(
                    "since",
                    Kind.TEXT,
                    '"start" (default: the current run), "now" (only '
                    'lines printed from now on), a duration like "30s", or an ISO 8601 time',
                    default=None,
                    max_length=MAX_SINCE,
                    flags=("--since",),
                    metavar="S",
                ),
            ),
            WaitResult,
            _wait_for,
            waits=True,
            cli="wait",
        ),
    )
}


def operation(name: str) -> Operation:
    """The declared operation called name; ArgumentError listing them otherwise."""
    try:
        return OPERATIONS[name]
    except KeyError:
        raise ArgumentError(
            f"unknown operation '{name[:64]}'; operations: {', '.join(OPERATIONS)}"
        ) from None


async def perform(
    project: Project, name: str, raw: object, call: Call, *, budget: int | None = None
) -> BaseModel:
    """Check the arguments of one operation, run it, and fit its result into budget bytes."""
    from .budget import fit

    op = operation(name)
    args = op.bind(raw)
    if op.needs_config:
        project.valid_config()
    result = await op.run(project, args, call)
    if not call.raw:
        result = project.redactor().model(result)
    return fit(result, budget) if budget is not None else result
