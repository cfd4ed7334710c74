"""The companion CLI `taskmux`: parse, call the facade, print; exit 0 ok, 1 failed, 2 usage.

The operation commands (status, start, stop, ...) get their arguments from the declarations
in `operations`, so their names, defaults and bounds are the MCP tools' and the bridge's.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import json
import logging
import os
import shlex
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import anyio
from pydantic import BaseModel

from . import config as configuration
from .control import ANSWERED
from .errors import ConfigError, InvalidArgument, TaskmuxError, UnknownTask
from .events import Cause
from .models import (
    ActionResult,
    EventsResult,
    GrepResult,
    HealthResult,
    InspectResult,
    LogLine,
    ProjectsResult,
    ScreenResult,
    SendResult,
    StatusResult,
    WaitResult,
)
from .operations import OPERATIONS, Call, Kind, Operation, perform
from .project import Project
from .redaction import NO_SECRETS
from .state import discover_config, state_root
from .wording import counted

if TYPE_CHECKING:
    from .project import ProjectSlot

log = logging.getLogger("taskmux.cli")

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
MCP_CLIENTS = ("claude", "codex", "cursor", "opencode", "gemini", "vscode", "windsurf", "zed")
T = TypeVar("T")


class UsageError(Exception):
    """A command line that cannot be acted on."""


class _HelpFormatter(argparse.HelpFormatter):
    """Help that shows each option's default, where it has one worth showing."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (
            default is None
            or default is argparse.SUPPRESS
            or isinstance(default, bool)
            or default in ([], ())
            or "(default" in text
        ):
            return text
        shown = f"{default:g}" if isinstance(default, float) else str(default)
        return f"{text} (default: {shown.replace('%', '%%')})"


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        raise UsageError(message)


def tmux_socket(args: argparse.Namespace, environ: Mapping[str, str] = os.environ) -> str | None:
    """The named tmux server to use, from --tmux-socket or $TASKMUX_TMUX_SOCKET."""
    value = getattr(args, "tmux_socket", None) or environ.get("TASKMUX_TMUX_SOCKET")
    return value or None


def open_project(args: argparse.Namespace, cause: Cause = Cause.USER, host: str = "cli") -> Project:
    """The project the global options name (its last valid config if taskmux.toml is broken)."""
    return Project.open(
        project=getattr(args, "project", None),
        config=getattr(args, "config", None),
        socket_name=tmux_socket(args),
        cause=cause,
        host=host,
    )


def load_project(args: argparse.Namespace) -> configuration.ProjectConfig:
    """Find and load the project's taskmux.toml from the global options (strictly)."""
    path = discover_config(
        project=getattr(args, "project", None), config=getattr(args, "config", None)
    )
    return configuration.load_config(path)


def _rendered(args: argparse.Namespace, model: BaseModel, human: Callable[[Any], str]) -> str:
    text = model.model_dump_json(indent=2) if args.json else human(model)
    return f"{text}\n" if text else ""


def _emit(args: argparse.Namespace, model: BaseModel, human: Callable[[Any], str]) -> None:
    sys.stdout.write(_rendered(args, model, human))


def _progress(args: argparse.Namespace) -> Callable[[str], Awaitable[None]] | None:
    if args.json or not sys.stderr.isatty():
        return None

    async def show(message: str) -> None:
        print(f"  … {message}", file=sys.stderr, flush=True)

    return show


# ------------------------------------------------------------------ formatting


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    return f"{s // 86400}d{(s % 86400) // 3600}h"


def format_table(rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns."""
    if not rows:
        return ""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def format_status(result: StatusResult) -> str:
    """Human view of status."""
    monitor = (
        f"monitor: pid {result.monitor.pid} ({result.monitor.host})"
        if result.monitor.acting
        else "monitor: none acting (restart policies apply while `taskmux monitor` or an MCP "
        "server runs)"
    )
    head = f"project {result.project}  session {result.session}  {monitor}"
    rows = [["TASK", "STATE", "HEALTH", "PID", "PORT", "UPTIME", "RESTARTS", "EXIT"]]
    for task in result.tasks:
        exit_text = task.exit_signal or ("" if task.exit_code is None else str(task.exit_code))
        state = task.state.value + (" (stopped by user)" if task.manually_stopped else "")
        rows.append(
            [
                task.name,
                state,
                task.health.value if task.checked else "no check",
                str(task.pid or "-"),
                str(task.port or "-"),
                _age(task.uptime_s),
                str(task.restarts),
                exit_text or "-",
            ]
        )
    lines = [head, format_table(rows)]
    lines += [f"  {t.name}: {t.error}" for t in result.tasks if t.error]
    lines += [f"warning: {w}" for w in result.warnings]
    return "\n".join(lines)


def format_projects(result: ProjectsResult) -> str:
    """Human view of status --all."""
    if not result.projects:
        return "no taskmux project has tasks on this tmux server"
    rows = [["PROJECT", "CHECKOUT", "SESSION", "TASK", "STATE", "PORT", "URL"]]
    for found in result.projects:
        head = [found.project, found.checkout or "?", found.session]
        for task in found.tasks or []:
            rows.append(
                [*head, task.name, task.state.value, str(task.port or "-"), task.url or "-"]
            )
            head = ["", "", ""]
        if not found.tasks:
            rows.append([*head, "-", "-", "-", "-"])
    notes = [f"  {p.project} ({p.checkout}): {p.error}" for p in result.projects if p.error]
    return "\n".join([format_table(rows), *notes])


def format_action(result: ActionResult) -> str:
    """Human view of a start/stop/restart/kill."""
    lines = []
    for task in result.tasks:
        mark = "ok " if task.ok else "ERR"
        extra = []
        if task.pid:
            extra.append(f"pid {task.pid}")
        if task.exit_signal:
            extra.append(f"signal {task.exit_signal}")
        elif task.exit_code is not None:
            extra.append(f"exit {task.exit_code}")
        if task.duration_s is not None:
            extra.append(f"{task.duration_s:.2f}s")
        detail = f" ({', '.join(extra)})" if extra else ""
        lines.append(f"{mark} {task.name}: {task.outcome()}{detail}")
        if task.error:
            lines.append(f"    error: {task.error}")
        if task.check_output:
            lines.append(f"    check: {task.check_output.strip()}")
        for line in task.log_tail:
            lines.append(f"    | {line}")
    if result.message and (result.ok or not result.tasks):
        lines.append(result.message)
    return "\n".join(lines)


def format_send(result: SendResult) -> str:
    """Human view of send."""
    keys = f", then {' '.join(result.keys)}" if result.keys else ""
    return f"typed {result.typed_chars} character(s) into {result.task}{keys}"


def format_screen(result: ScreenResult) -> str:
    """Human view of screen: its rows, then where the cursor is."""
    foot = (
        f"-- {result.task} ({result.state.value}): cursor at column {result.cursor_x}, "
        f"row {result.cursor_y} of a {result.width}x{result.height} screen"
    )
    return "\n".join([*result.lines, foot])


def format_wait(result: WaitResult) -> str:
    """Human view of wait: the matching line, or why none came."""
    if result.ok:
        return "\n".join([*(f"  {line}" for line in result.before), f"> {result.line}"])
    return "\n".join([f"{result.task}: {result.error}", *(f"    | {t}" for t in result.log_tail)])


def format_health(result: HealthResult) -> str:
    """Human view of health."""
    rows = [["TASK", "HEALTHY", "METHOD", "MS", "DETAIL"]]
    for report in result.tasks:
        verdict = "-" if report.healthy is None else ("yes" if report.healthy else "NO")
        rows.append(
            [report.name, verdict, report.method, f"{report.duration_ms:.0f}", report.detail[:100]]
        )
    return format_table(rows)


def format_lines(
    lines: Sequence[LogLine], prefix: bool, color: bool = False, width: int | None = None
) -> str:
    """Log lines, optionally prefixed by their task (padded to width, or the longest name)."""
    out = []
    if width is None:
        width = max((len(line.task) for line in lines), default=0)
    for line in lines:
        if prefix:
            label = line.task.ljust(width)
            if color:
                label = f"\x1b[{31 + (sum(map(ord, line.task)) % 6)}m{label}\x1b[0m"
            out.append(f"{label} | {line.text}")
        else:
            out.append(line.text)
    return "\n".join(out)


def format_grep(result: GrepResult, separators: bool = True) -> str:
    """Human view of grep matches, grep-style: blocks that touch are one, `--` between others."""
    out: list[str] = []
    previous: str | None = None
    for match in result.matches:
        if separators and out and not (match.continues and match.task == previous):
            out.append("--")
        out += [f"{match.task}-  {line}" for line in match.before]
        out.append(f"{match.task}:  {match.line}")
        out += [f"{match.task}-  {line}" for line in match.after]
        previous = match.task
    if result.truncated:
        out.append(f"… stopped after {len(result.matches)} matches")
    return "\n".join(out)


def format_events(result: EventsResult) -> str:
    """Human view of events."""
    rows = []
    for event in result.events:
        details = " ".join(f"{k}={v}" for k, v in event.details.items())
        rows.append(
            [
                event.time.astimezone().strftime("%H:%M:%S"),
                event.type,
                event.task or "-",
                event.cause,
                details,
            ]
        )
    return format_table(rows) if rows else "(no events)"


def format_inspect(result: InspectResult) -> str:
    """Human view of inspect."""
    data = result.model_dump(mode="json")
    return json.dumps(data, indent=2)


def _config_warning(project: Project) -> str:
    if project.config_error is None:
        return ""
    return (
        f"taskmux: warning: {project.config_error}\n"
        "  (showing and stopping tasks with the last valid config; fix taskmux.toml to "
        "start them)\n"
    )


# ------------------------------------------------------------------ operation commands


def _raw(op: Operation, args: argparse.Namespace) -> dict[str, Any]:
    return {p.name: getattr(args, p.name) for p in op.params if hasattr(args, p.name)}


def _exit_for(result: BaseModel) -> int:
    if isinstance(result, ActionResult):
        return EXIT_OK if result.ok else EXIT_FAILED
    if isinstance(result, HealthResult):
        return EXIT_OK if all(r.healthy is not False for r in result.tasks) else EXIT_FAILED
    if isinstance(result, GrepResult):
        return EXIT_OK if result.matches else EXIT_FAILED
    if isinstance(result, WaitResult):
        return EXIT_OK if result.ok else EXIT_FAILED
    return EXIT_OK


FORMATS: dict[str, Callable[[argparse.Namespace], Callable[[Any], str]]] = {
    "status": lambda args: format_status,
    "start": lambda args: format_action,
    "stop": lambda args: format_action,
    "restart": lambda args: format_action,
    "kill": lambda args: format_action,
    "down": lambda args: format_action,
    "health": lambda args: format_health,
    "inspect": lambda args: format_inspect,
    "events": lambda args: format_events,
    "grep": lambda args: lambda r: format_grep(r, separators=args.context > 0),
    "send": lambda args: format_send,
    "screen": lambda args: format_screen,
    "wait_for": lambda args: format_wait,
}


def cmd_operation(args: argparse.Namespace) -> int:
    """Any declared operation: bind the arguments, call the facade, print the result."""
    op: Operation = args.operation
    raw = _raw(op, args)
    if op.name == "status" and getattr(args, "all", False):
        from .overview import all_projects

        every = all_projects(tmux_socket(args), os.environ, redact=not getattr(args, "raw", False))
        _emit(args, every, format_projects)
        return EXIT_OK
    project = open_project(args)
    sys.stderr.write(_config_warning(project))
    if op.name == "logs":
        return _logs(project, args)
    result: BaseModel
    if op.name == "status":
        shown = NO_SECRETS if getattr(args, "raw", False) else project.redactor()
        result = shown.model(project.status_sync(op.bind(raw)["tasks"]))  # no event loop: quick
    else:
        result = anyio.run(_perform, project, args, _progress(args))
    _emit(args, result, FORMATS[op.name](args))
    if op.name == "start" and args.monitor:
        from .monitor import run_monitor_foreground

        return run_monitor_foreground(project, host="cli")
    return _exit_for(result)


async def _perform(
    project: Project, args: argparse.Namespace, progress: Callable[[str], Awaitable[None]] | None
) -> BaseModel:
    op: Operation = args.operation
    call = Call(cause=Cause.USER, progress=progress, raw=getattr(args, "raw", False))
    return await perform(project, op.name, _raw(op, args), call)


async def answer_command(
    project: Project, argv: Sequence[str], cwd: Path, environ: Mapping[str, str]
) -> tuple[str, str, int] | str:
    """What `taskmux ARGV`, run in cwd with environ, prints (stdout, stderr) and returns,
    carried out by this process (the leading monitor); or why the caller must run it itself."""
    printed = io.StringIO()  # usage, help, version: the caller's CLI prints them itself
    with contextlib.redirect_stderr(printed), contextlib.redirect_stdout(printed):
        try:
            args = _parse(_answering_parser(), argv)
        except (UsageError, SystemExit):
            return "not a command line this process answers"
    op: Operation | None = getattr(args, "operation", None)
    if op is None or op.name not in ANSWERED or getattr(args, "all", False):
        return "not a command the monitor answers"
    try:
        config = discover_config(args.project, args.config, cwd, environ)
        state = cwd / state_root(environ)
    except Exception:  # the caller's CLI says what is wrong
        return "no project found from the caller's folder"
    if (
        os.path.realpath(config) != os.path.realpath(project.config_path)
        or (tmux_socket(args, environ) or "default") != project.backend.socket_name
        or environ.get("TMUX_TMPDIR", "") != os.environ.get("TMUX_TMPDIR", "")
        or os.path.realpath(state) != os.path.realpath(project.paths.root.parent)
    ):
        return "another project, tmux server or state folder than this monitor's"
    if not project.config_current():
        return "taskmux.toml changed since this monitor read it"
    if op.name == "stop" and project.stop_runs_hooks(_raw(op, args).get("tasks") or ()):
        return "stop hooks run in the caller's environment"
    warning = _config_warning(project)
    try:
        result = await _perform(project, args, None)
    except TaskmuxError as exc:
        message, code = _failure(exc)
        return "", f"{warning}{message}\n", code
    except Exception:
        log.exception("the control socket could not answer %s", op.name)
        return "this process failed to answer"
    return _rendered(args, result, FORMATS[op.name](args)), warning, _exit_for(result)


@functools.cache
def _answering_parser() -> argparse.ArgumentParser:
    return build_parser()


def _logs(project: Project, args: argparse.Namespace) -> int:
    """logs: every line asked for, streamed (or followed, or searched with -g)."""
    op: Operation = args.operation.for_cli()
    bound = op.bind(_raw(op, args))
    names = project.config.require(bound["tasks"]) if bound["tasks"] else list(project.config.tasks)
    shown = NO_SECRETS if getattr(args, "raw", False) else project.redactor()
    if args.grep:
        found = project.grep_sync(args.grep, names, context=args.context, since=bound["since"])
        _emit(args, shown.model(found), lambda r: format_grep(r, separators=args.context > 0))
        return EXIT_OK if found.matches else EXIT_FAILED
    color = sys.stdout.isatty() and not args.json
    width = max(map(len, names), default=0)

    def show(line: LogLine) -> str:
        line = line.model_copy(update={"text": shown.text(line.text)})
        if args.json:
            return line.model_dump_json()
        return format_lines([line], prefix=len(names) > 1, color=color, width=width)

    if args.follow:
        try:
            for line in project.logs.follow(names, since=bound["since"], lines=bound["lines"]):
                print(show(line), flush=True)
        except KeyboardInterrupt:
            pass
        return EXIT_OK
    with project.logs.reading(
        names, bound["lines"], bound["since"], before=bound["before"]
    ) as read:
        if args.json:
            print('{"lines": [')
        elif read.truncated and read.omitted:
            print(f"… {read.omitted} earlier line(s) left out")
        for i, line in enumerate(read.lines()):
            print(("," if args.json and i else "") + show(line))
        if args.json:
            rest = read.result([]).model_dump(mode="json", exclude={"lines"})
            print("], " + json.dumps(rest)[1:])
    return EXIT_OK


# ------------------------------------------------------------------ other commands


def _config_path(args: argparse.Namespace) -> Path:
    return discover_config(
        project=getattr(args, "project", None), config=getattr(args, "config", None)
    )


def cmd_add(args: argparse.Namespace) -> int:
    """add NAME COMMAND [...]."""
    path = _config_path(args)
    cfg = configuration.add_task(
        path,
        args.name,
        args.command,
        cwd=args.cwd,
        port=args.port,
        depends_on=args.depends_on,
        health_check=args.health_check,
        health_url=args.health_url,
    )
    if args.json:
        print(cfg.task(args.name).model_dump_json(indent=2))
    else:
        print(f"added task '{args.name}' to {path}")
    return EXIT_OK


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("taskmux-mcp")
    except PackageNotFoundError:
        return "(not installed)"


class _VersionAction(argparse.Action):
    """--version, the package metadata read only when asked (it is slow to find)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS,
                         nargs=0, **kwargs)  # fmt: skip

    def __call__(self, parser: argparse.ArgumentParser, *args: Any) -> NoReturn:
        print(f"taskmux {_version()}")
        parser.exit()


def _port_arg(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'{text!r} is not a port number or "auto"') from None


def cmd_remove(args: argparse.Namespace) -> int:
    """remove NAME."""
    path = _config_path(args)
    with contextlib.suppress(TaskmuxError, OSError):  # an invalid file: nothing to release
        open_project(args).ports.release([args.name])
    configuration.remove_task(path, args.name)
    if args.json:
        print(json.dumps({"removed": args.name, "config_path": str(path)}))
    else:
        print(f"removed task '{args.name}' from {path} (stop it with `taskmux stop` if it runs)")
    return EXIT_OK


def cmd_check(args: argparse.Namespace) -> int:
    """check: validate taskmux.toml, cwds and executables."""
    from .errors import ConfigProblem
    from .tmux import version_problem

    cfg = load_project(args)
    problems = configuration.runtime_problems(cfg)
    tmux_problem = version_problem()
    if tmux_problem:
        problems.append(ConfigProblem(tmux_problem))
    if args.json:
        print(
            json.dumps(
                {
                    "ok": not problems,
                    "config_path": str(cfg.config_path),
                    "tasks": list(cfg.tasks),
                    "problems": [str(p) for p in problems],
                    "warnings": list(cfg.warnings),
                },
                indent=2,
            )
        )
        return EXIT_USAGE if problems else EXIT_OK
    for warning in cfg.warnings:
        print(f"{cfg.config_path}: warning: {warning}", file=sys.stderr)
    if problems:
        print(f"{cfg.config_path}: {len(problems)} problem(s):", file=sys.stderr)
        for problem in problems:
            print(f"  - {problem}", file=sys.stderr)
    else:
        print(f"{cfg.config_path}: ok ({counted(len(cfg.tasks), 'task')})")
    return EXIT_USAGE if problems else EXIT_OK


def cmd_attach(args: argparse.Namespace) -> int:
    """attach [TASK]: tmux attach (or switch-client inside tmux)."""
    project = open_project(args)
    snap = project.backend.snapshot_sync()
    if snap.session is None:
        print("taskmux: the project has no tmux session yet; run `taskmux start`", file=sys.stderr)
        return EXIT_FAILED
    target = f"={snap.session}"
    if args.task:
        pane = snap.panes.get(project.config.task(args.task).name)
        if pane is None:
            print(f"taskmux: task '{args.task}' has no window; start it first", file=sys.stderr)
            return EXIT_FAILED
        project.backend.run("select-window", "-t", pane.window_id)
        target = pane.window_id
    argv = project.backend.select_argv(target, inside=bool(os.environ.get("TMUX")))
    if args.dry_run:
        print(shlex.join(argv))
        return EXIT_OK
    os.execvp(argv[0], argv)


def cmd_init(args: argparse.Namespace) -> int:
    """init [--defaults]: create taskmux.toml and the agent note."""
    from .init import run_init

    return run_init(Path(args.project or os.getcwd()), defaults=args.defaults, as_json=args.json)


def cmd_monitor(args: argparse.Namespace) -> int:
    """monitor: run the monitor in the foreground (standing by while another one leads)."""
    from .monitor import run_monitor_foreground

    project = open_project(args, Cause.POLICY, host="tmux" if args.hosted else "cli")
    if args.hosted:
        print(
            f"taskmux monitor of {project.config.name}: keeps restart policies working", flush=True
        )
        status = run_monitor_foreground(project, host="tmux", exit_when_idle=True)
        own_pane = os.environ.get("TMUX_PANE")
        if own_pane:
            # No task window is left: close this one too, so the session can end.
            with contextlib.suppress(TaskmuxError):
                project.backend.run("kill-window", "-t", own_pane)
        return status
    print(
        f"taskmux monitor of {project.config.name}: applies restart policies and reloads "
        f"{project.config_path} when it changes; Ctrl-C to stop",
        file=sys.stderr,
        flush=True,
    )
    return run_monitor_foreground(project, host="cli")


def cmd_mcp(args: argparse.Namespace) -> int:
    """mcp: run the stdio MCP server."""
    from .mcp_server import serve

    return serve(project=args.project, config=args.config, tmux_socket=tmux_socket(args))


def _project_dir(args: argparse.Namespace) -> Path:
    """The project folder: --project, else the discovered taskmux.toml's folder, else the cwd."""
    if args.project:
        return Path(args.project).resolve()
    try:
        return _config_path(args).parent
    except ConfigError:
        return Path.cwd()


def cmd_mcp_config(args: argparse.Namespace) -> int:
    """mcp-config CLIENT [--http] [--write] [--headers]: print or merge a client's MCP entry."""
    from .agent_configs import ServerSource, client_name, run_headers, run_mcp_config

    if not (args.http or args.headers):
        return run_mcp_config(args.client, _project_dir(args), write=args.write, as_json=args.json)
    if args.headers and args.write:
        raise UsageError("--headers only prints the header; it writes nothing (drop --write)")
    client_name(args.client)  # an unknown client is refused before anything is drawn
    project = open_project(args)
    source = ServerSource(project.paths.server, project.key)
    if args.headers:
        return run_headers(source)
    return run_mcp_config(
        args.client, project.config.root, write=args.write, as_json=args.json, http=source
    )


def _slot(args: argparse.Namespace, host: str) -> ProjectSlot:
    from .project import ProjectSlot

    return ProjectSlot(lambda: open_project(args, Cause.USER, host=host))


def cmd_serve(args: argparse.Namespace) -> int:
    """serve [--host H] [--port P] [--allow-remote]: MCP over HTTP, the bridge, the dashboard."""
    from .serve import serve_main

    return serve_main(
        _slot(args, "serve"),
        host=args.host,
        port=args.port,
        allow_remote=args.allow_remote,
        name=args.command,
    )


def cmd_bridge_call(args: argparse.Namespace) -> int:
    """bridge-call METHOD [JSON]: one JSON-RPC call to the running bridge."""
    from .bridge import run_bridge_call

    return run_bridge_call(_slot(args, "cli"), args.method, args.params, as_json=args.json)


# ------------------------------------------------------------------ parser


def add_operation(parser: argparse.ArgumentParser, op: Operation) -> None:
    """Arguments of one declared operation: task names positional, the rest as options."""
    for param in op.params:
        if param.kind is Kind.NAMES:
            parser.add_argument(
                param.name, nargs="+" if param.required else "*", metavar=param.metavar,
                help=param.doc,
            )  # fmt: skip
        elif param.kind is Kind.NAME or (param.kind is Kind.TEXT and not param.flags):
            parser.add_argument(
                param.name, metavar=param.metavar, help=param.doc,
                nargs=None if param.required else "?", default=None,
            )  # fmt: skip
        elif param.kind is Kind.WORDS:
            parser.add_argument(
                *param.flags, dest=param.name, action="append", default=None,
                metavar=param.metavar, help=param.doc + " (repeat it for more)",
            )  # fmt: skip
        elif param.kind is Kind.BOOLEAN:
            if param.negation:
                parser.add_argument(
                    param.negation,
                    dest=param.name,
                    action="store_false",
                    help=f"do not {param.doc}",
                )
            else:
                parser.add_argument(
                    *param.flags, dest=param.name, action="store_true", help=param.doc
                )
        else:
            kind = {Kind.INTEGER: int, Kind.NUMBER: float, Kind.TEXT: str}[param.kind]
            parser.add_argument(
                *param.flags, dest=param.name, type=kind, default=param.default,
                metavar=param.metavar, help=param.doc,
            )  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `taskmux`."""
    common = _Parser(add_help=False)
    common.add_argument(
        "--project",
        metavar="DIR",
        default=argparse.SUPPRESS,
        help="project folder (holding taskmux.toml)",
    )
    common.add_argument(
        "--config", metavar="FILE", default=argparse.SUPPRESS, help="path of taskmux.toml"
    )
    common.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS,
        help="print results as JSON (the MCP tools' shapes)",
    )
    common.add_argument("--tmux-socket", metavar="NAME", default=argparse.SUPPRESS,
                        help="named tmux server (tmux -L NAME)")  # fmt: skip
    common.add_argument("--raw", action="store_true", default=argparse.SUPPRESS,
                        help="show secrets (values from env files, TOKEN/KEY/... variables) "
                        "instead of [redacted:NAME]")  # fmt: skip
    parser = _Parser(
        prog="taskmux",
        description="Run and watch a project's dev tasks in tmux.",
        parents=[common],
    )
    parser.add_argument(
        "--version", action=_VersionAction, help="show program's version number and exit"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    def command(name: str, handler: Callable[[argparse.Namespace], int], helptext: str,
                aliases: Sequence[str] = ()) -> argparse.ArgumentParser:  # fmt: skip
        p = sub.add_parser(name, parents=[common], help=helptext, description=helptext,
                           aliases=list(aliases))  # fmt: skip
        p.set_defaults(handler=handler)
        return p

    p = command("init", cmd_init, "create taskmux.toml and an agent note")
    p.add_argument("--defaults", action="store_true", help="do not ask; write what was detected")
    aliases = {"status": ("ls", "list"), "wait_for": ("wait-for", "wait_for")}
    for op in OPERATIONS.values():
        p = command(op.cli or op.name, cmd_operation, op.title.lower(), aliases.get(op.name, ()))
        p.set_defaults(operation=op)
        add_operation(p, op.for_cli())
        if op.name == "status":
            p.add_argument("--all", action="store_true",
                           help="every taskmux project on this tmux server")  # fmt: skip
        if op.name == "start":
            p.add_argument("-m", "--monitor", action="store_true",
                           help="then stay in the foreground as the monitor")  # fmt: skip
        if op.name == "logs":
            p.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
            p.add_argument("-g", "--grep", metavar="PATTERN", help="only lines matching PATTERN")
            p.add_argument("-C", "--context", type=int, default=2, metavar="N",
                           help="with -g: lines of context")  # fmt: skip
    p = command("add", cmd_add, "add a task to taskmux.toml")
    p.add_argument("name", metavar="NAME", help="the task's name")
    p.add_argument("command", metavar="COMMAND", help="its shell command (quote it)")
    p.add_argument("--cwd", metavar="D", help="its working folder, relative to taskmux.toml's")
    p.add_argument("--port", type=_port_arg, metavar="P",
                   help='the port it listens on, or "auto" for a free one')  # fmt: skip
    p.add_argument("--depends-on", action="append", default=[], metavar="T",
                   help="a task that must be healthy first (repeat for more)")  # fmt: skip
    p.add_argument("--health-check", metavar="C", help="a shell command; exit 0 = healthy")
    p.add_argument("--health-url", metavar="U", help="an HTTP URL; a 2xx or 3xx answer = healthy")
    p = command("remove", cmd_remove, "remove a task from taskmux.toml")
    p.add_argument("name", metavar="NAME", help="the task's name")
    command("check", cmd_check, "validate taskmux.toml, cwds and commands")
    p = command("attach", cmd_attach, "attach to the session, or a task's window")
    p.add_argument("task", nargs="?", metavar="TASK", help="select this task's window")
    p.add_argument("--dry-run", action="store_true", help="print the tmux command instead")
    p = command("monitor", cmd_monitor, "run the monitor in the foreground: restart policies, "
                "health checks, and taskmux.toml reloaded when it changes (`watch`: taskmux "
                "0.3's name)", aliases=("watch",))  # fmt: skip
    p.add_argument("--hosted", action="store_true", help=argparse.SUPPRESS)
    command("mcp", cmd_mcp, "run the stdio MCP server (same as taskmux-mcp)")
    p = command("serve", cmd_serve, "one local server for this project, running its monitor: "
                "MCP over Streamable HTTP at /mcp, the WebSocket bridge at /ws and a live "
                "dashboard at / (`bridge`, and taskmux 0.3's `daemon`, are the same)",
                aliases=("bridge", "daemon"))  # fmt: skip
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on; a loopback one unless --allow-remote "
                   "(default: %(default)s)")  # fmt: skip
    p.add_argument("--port", type=int, default=None,
                   help="port to listen on (default: the one it used last, else 8765); 0 picks "
                   "a free one")  # fmt: skip
    p.add_argument("--allow-remote", action="store_true",
                   help="allow a non-loopback --host (anyone with the token gets in)")  # fmt: skip
    p = command("bridge-call", cmd_bridge_call, "call one method of the running bridge")
    p.add_argument("method", metavar="METHOD", help="an operation (status, start, ...)")
    p.add_argument(
        "params", nargs="?", metavar="JSON", help='params object, e.g. \'{"tasks":["api"]}\''
    )
    p = command("mcp-config", cmd_mcp_config, "print (or --write) an agent's MCP registration")
    p.add_argument("client", metavar="CLIENT", help=f"{', '.join(MCP_CLIENTS)} (any case; "
                   "aliases such as claude-code, vs-code or gemini-cli too)")  # fmt: skip
    p.add_argument("--write", action="store_true", help="merge it into the client's config file")
    p.add_argument("--http", action="store_true",
                   help="the entry for this project's `taskmux serve` (its URL and token, from "
                   "server.json; drawn and saved now if it has not run yet) instead of the "
                   "stdio server (default: the stdio server)")  # fmt: skip
    p.add_argument("--headers", action="store_true",
                   help="print only the header carrying the token, as JSON (what Claude Code's "
                   "headersHelper runs; default: off)")  # fmt: skip
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `taskmux`."""
    parser = build_parser()
    try:
        args = _parse(parser, argv)
        if not getattr(args, "handler", None):
            parser.print_help(sys.stderr)
            return EXIT_USAGE
        handler: Callable[[argparse.Namespace], int] = args.handler
        return handler(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return EXIT_OK
    except Exception as exc:
        message, code = _failure(exc)
        print(message, file=sys.stderr)
        return code


def _parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    args = parser.parse_args(argv)
    for name, default in (("project", None), ("config", None), ("json", False),
                          ("tmux_socket", None)):  # fmt: skip
        if not hasattr(args, name):
            setattr(args, name, default)
    return args


def _failure(exc: Exception) -> tuple[str, int]:
    """The message and exit code of a command that failed with exc."""
    if isinstance(exc, (UsageError, ConfigError, UnknownTask, InvalidArgument)):
        return f"taskmux: {exc}", EXIT_USAGE
    if isinstance(exc, TaskmuxError):
        return f"taskmux: {exc}", EXIT_FAILED
    return (
        f"taskmux: failed unexpectedly ({type(exc).__name__}: {exc}); "
        "please report this with the command you ran"
    ), EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
