"""The faces agree and hold up (issue 10, failures 6, 7, 8 and 11): MCP in memory and over stdio,
the WebSocket bridge with a real client, and the `taskmux` CLI, on real tmux.

Failure 6, faces drift (bounds, defaults, the hosted monitor switch):
  test_every_tool_schema_is_exactly_its_declaration,
  test_cli_help_offers_every_declared_parameter_and_no_other,
  test_mcp_bridge_and_cli_refuse_the_same_arguments_in_the_same_words,
  test_the_stdio_server_honours_the_hosted_monitor_switch[0/1].
Failure 7, arguments not checked, two spellings, schemas strict callers reject, pydantic words:
  test_unknown_arguments_are_refused_with_a_did_you_mean,
  test_task_and_tasks_both_scope_every_read,
  test_task_and_tasks_both_scope_every_action,
  test_the_strictness_checker_rejects_hand_made_bad_schemas,
  test_every_published_input_schema_is_strict,
  test_validation_errors_are_one_plain_sentence.
Failure 8, one line freezes every face, replies without bounds:
  test_a_pathological_line_freezes_no_face,
  test_megabyte_lines_give_replies_within_budget_and_bounded_memory.
Failure 11, protocol details:
  test_no_prompts_are_advertised_and_an_unknown_prompt_is_a_real_error (a),
  test_reading_an_unknown_resource_answers_32002 (b),
  test_a_task_resource_with_an_unusable_name_answers_32002 (b),
  test_subscribing_to_a_foreign_or_unknown_uri_is_refused (c),
  test_garbage_on_stdin_gets_a_parse_error_and_the_server_keeps_serving (d),
  test_a_20_mb_garbage_line_is_refused_and_kept_out_of_the_logs (e),
  test_an_over_long_name_inside_a_valid_message_is_kept_out_of_the_logs (e).
"""

from __future__ import annotations

import json
import queue
import re
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import IO, Any

import anyio
import mcp_types as types
import psutil
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.shared.exceptions import MCPDeprecationWarning, MCPError
from support import Workspace, slot_for, wait_until
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect

from taskmux_mcp.budget import REPLY_BUDGET
from taskmux_mcp.endpoint import ServerInfo
from taskmux_mcp.events import Cause
from taskmux_mcp.mcp_server import build_server
from taskmux_mcp.operations import (
    MAX_NAME,
    MAX_NAMES,
    MAX_WORD,
    OPERATIONS,
    Kind,
    Operation,
    Param,
)
from taskmux_mcp.project import MONITOR_WINDOW
from taskmux_mcp.serve import run_serve
from taskmux_mcp.terminal import LINE_CHARS

ENTRY = Path(sys.executable).with_name("taskmux-mcp")
INIT = {
    "protocolVersion": "2025-11-25",
    "capabilities": {},
    "clientInfo": {"name": "faces", "version": "1"},
}
TWO = """
name = "faces"
[tasks.api]
command = "echo api-line-1; echo api-line-2; exec sleep 1000"
stop_grace_period = 0.5
[tasks.web]
command = "while true; do echo web-tick; sleep 0.2; done"
stop_grace_period = 0.5
"""
# Options a CLI command may have beyond its operation's declared parameters.
COMMON = {"-h", "--help", "--project", "--config", "--json", "--raw", "--tmux-socket"}
CLI_EXTRAS = {
    "start": {"-m", "--monitor"},
    "status": {"--all"},
    "logs": {"-f", "--follow", "-g", "--grep", "-C", "--context"},
}
WRONG_TYPE: dict[Kind, Any] = {
    Kind.NAMES: 3,
    Kind.WORDS: 3,
    Kind.NAME: 3,
    Kind.TEXT: 3,
    Kind.BOOLEAN: "yes",
    Kind.INTEGER: "many",
    Kind.NUMBER: "soon",
}
PEAK_RSS_LIMIT = 300 * 1024 * 1024


@pytest.fixture(autouse=True)
def no_hosted_monitor(project: Workspace) -> None:
    """No `_monitor` window unless a test asks for one."""
    project.env["TASKMUX_HOSTED_MONITOR"] = "0"


# ------------------------------------------------------------------ MCP in memory


@asynccontextmanager
async def mcp(project: Workspace) -> AsyncIterator[Client]:
    """An in-memory MCP session on a fresh server for the project."""
    async with Client(build_server(slot_for(project)), mode="legacy") as client:
        yield client


async def tool_ok(client: Client, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
    """A tool call that must succeed: its structured content."""
    result = await client.call_tool(tool, arguments)
    assert not result.is_error, (tool, arguments, result.content)
    assert result.structured_content is not None
    return dict(result.structured_content)


async def tool_error(client: Client, tool: str, arguments: dict[str, Any]) -> str:
    """A tool call that must be refused: its message."""
    result = await client.call_tool(tool, arguments)
    assert result.is_error, (tool, arguments, result.structured_content)
    text = result.content[0]
    assert isinstance(text, types.TextContent)
    return text.text


def listed_schemas(tools: types.ListToolsResult) -> dict[str, dict[str, Any]]:
    """Each listed tool's input schema by name."""
    return {tool.name: dict(tool.input_schema) for tool in tools.tools}


# ------------------------------------------------------------------ the bridge


class BridgeClient:
    """A JSON-RPC client on one authenticated WebSocket connection to the bridge."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.next_id = 0

    async def call(
        self, method: str, params: dict[str, Any], timeout: float = 20
    ) -> dict[str, Any]:
        """Send one request; its whole reply (notifications skipped)."""
        self.next_id += 1
        ident = self.next_id
        await self.ws.send(
            json.dumps({"jsonrpc": "2.0", "id": ident, "method": method, "params": params})
        )
        with anyio.fail_after(timeout):
            while True:
                message = json.loads(await self.ws.recv())
                if message.get("id") == ident:
                    return dict(message)

    async def error(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        """A call that must be refused: its error member."""
        reply = await self.call(method, params)
        assert "error" in reply, (method, params, reply)
        return dict(reply["error"])


@asynccontextmanager
async def bridge(project: Workspace) -> AsyncIterator[BridgeClient]:
    """The project's bridge on a free loopback port, and one client connected to it."""
    slot = slot_for(project, cause=Cause.USER, host="bridge")
    infos: list[ServerInfo] = []
    ready = anyio.Event()

    def on_ready(info: ServerInfo) -> None:
        infos.append(info)
        ready.set()

    async with anyio.create_task_group() as group:
        group.start_soon(partial(run_serve, slot, port=0, ready=on_ready))
        with anyio.fail_after(20):
            await ready.wait()
        token = infos[0].token
        async with ws_connect(
            infos[0].ws_url,
            additional_headers={"Authorization": f"Bearer {token}"},
            compression=None,
            proxy=None,
            max_size=None,
        ) as ws:
            yield BridgeClient(ws)
        group.cancel_scope.cancel()


# ------------------------------------------------------------------ stdio, byte by byte


class RawServer:
    """`taskmux-mcp` in a subprocess, spoken to line by line; its stderr goes to a file."""

    def __init__(self, project: Workspace, stderr: Path) -> None:
        self.project = project
        self.stderr_path = stderr
        self._stderr: IO[bytes] = stderr.open("wb")
        self.proc = subprocess.Popen(
            [str(ENTRY), "--project", str(project.root)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env=project.env,
            cwd=project.root,
        )
        self._lines: queue.Queue[bytes] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)

    def send(self, data: bytes) -> None:
        """Write bytes as they are."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def message(self, method: str, params: Any = None, ident: int | None = None) -> None:
        """Write one JSON-RPC message."""
        message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            message["params"] = params
        if ident is not None:
            message["id"] = ident
        self.send((json.dumps(message) + "\n").encode())

    def next_reply(self, timeout: float = 15) -> dict[str, Any]:
        """The next response (notifications skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            assert left > 0, "no reply in time"
            try:
                message = json.loads(self._lines.get(timeout=left))
            except queue.Empty:
                raise AssertionError(f"no reply within {timeout}s") from None
            if "method" not in message:
                return dict(message)

    def request(self, method: str, params: Any, ident: int) -> dict[str, Any]:
        """Send a request; its reply (which must carry its id)."""
        self.message(method, params, ident)
        reply = self.next_reply()
        assert reply.get("id") == ident, reply
        return reply

    def initialize(self, ident: int = 1) -> dict[str, Any]:
        """initialize + initialized; the server's result."""
        reply = self.request("initialize", INIT, ident)
        assert "result" in reply, reply
        self.message("notifications/initialized")
        return dict(reply["result"])

    def serves(self, ident: int) -> None:
        """tools/list still answers with the ten tools."""
        reply = self.request("tools/list", {}, ident)
        assert {tool["name"] for tool in reply["result"]["tools"]} == set(OPERATIONS)

    def close(self) -> int:
        """Close stdin and wait for the exit status."""
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()
        try:
            code = self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self._stderr.close()
        return code

    def logged(self) -> list[tuple[Path, int]]:
        """The server's logs (stderr, <state>/mcp-server.log) with their sizes."""
        paths = [self.stderr_path, *self.project.state_dir.glob("*/mcp-server.log*")]
        return [(path, path.stat().st_size) for path in paths]


@pytest.fixture
def raw(project: Workspace, tmp_path: Path) -> Iterator[RawServer]:
    """A stdio server on a one-task project, ended after the test."""
    project.write(TWO)
    server = RawServer(project, tmp_path / "server-stderr.log")
    yield server
    if server.proc.poll() is None:
        server.close()


def stdio_params(project: Workspace, **env: str) -> StdioServerParameters:
    """The installed entry point started as an agent's client starts it."""
    return StdioServerParameters(
        command=str(ENTRY),
        args=["--project", str(project.root)],
        env={**project.env, **env},
        cwd=str(project.root),
    )


def stdio_server_process(project: Workspace) -> psutil.Process:
    """The `taskmux-mcp` process the SDK's stdio client started for this project."""

    def find() -> psutil.Process | None:
        for child in psutil.Process().children(recursive=True):
            try:
                cmdline = child.cmdline()
            except psutil.Error:
                continue
            if any(part.endswith("taskmux-mcp") for part in cmdline[:2]) and str(
                project.root
            ) in " ".join(cmdline):
                return child
        return None

    found = wait_until(find, timeout=10)
    assert isinstance(found, psutil.Process)
    return found


def peak_rss(pid: int) -> int:
    """The process's peak resident set size (VmHWM) in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


# ------------------------------------------------------------------ the strictness checker

STRICT_KEYWORDS = frozenset(
    {
        "type", "description", "title", "properties", "required", "additionalProperties",
        "items", "minItems", "maxItems", "minimum", "maximum", "minLength", "maxLength",
        "default", "enum", "format", "anyOf",
    }
)  # fmt: skip
STRICT_TYPES = frozenset({"object", "array", "string", "integer", "number", "boolean"})


def strict_problems(schema: Any, where: str = "$") -> list[str]:
    """What OpenAI strict mode or Gemini function declarations would object to in a tool's
    input schema: keywords outside their common subset, a null type or an anyOf with null,
    an object without properties or with additionalProperties not false, unbounded numbers,
    arrays and strings, `required` naming what is not there."""
    if not isinstance(schema, dict):
        return [f"{where}: a schema must be an object"]
    problems = [
        f"{where}: keyword {key!r} is outside the strict subset"
        for key in schema
        if key not in STRICT_KEYWORDS
    ]
    if "anyOf" in schema:
        members = schema["anyOf"]
        if not isinstance(members, list) or not members:
            return [*problems, f"{where}: anyOf must be a non-empty list"]
        for i, member in enumerate(members):
            if isinstance(member, dict) and member.get("type") == "null":
                problems.append(f"{where}: anyOf contains a null type")
            else:
                problems += strict_problems(member, f"{where}.anyOf[{i}]")
        return problems
    kind = schema.get("type")
    if isinstance(kind, list):
        null = " (with null)" if "null" in kind else ""
        return [*problems, f"{where}: type must be one name, not a list{null}"]
    if kind == "null":
        return [*problems, f"{where}: a null type"]
    if kind not in STRICT_TYPES:
        return [*problems, f"{where}: type {kind!r} is not one of {sorted(STRICT_TYPES)}"]
    if kind == "object":
        properties = schema.get("properties")
        if not isinstance(properties, dict) or not properties:
            problems.append(f"{where}: an object needs non-empty properties")
            properties = {}
        if schema.get("additionalProperties") is not False:
            problems.append(f"{where}: additionalProperties must be false")
        required = schema.get("required", [])
        if not isinstance(required, list) or (not required and "required" in schema):
            problems.append(f"{where}: required must be a non-empty list when given")
        else:
            problems += [
                f"{where}: required names {name!r}, which is not a property"
                for name in required
                if name not in properties
            ]
        for name, sub in properties.items():
            problems += strict_problems(sub, f"{where}.{name}")
    elif kind == "array":
        if not isinstance(schema.get("maxItems"), int):
            problems.append(f"{where}: an array needs maxItems")
        if "items" not in schema:
            problems.append(f"{where}: an array needs items")
        else:
            problems += strict_problems(schema["items"], f"{where}[]")
    elif kind in ("integer", "number"):
        low, high = schema.get("minimum"), schema.get("maximum")
        if not isinstance(low, int | float) or not isinstance(high, int | float):
            problems.append(f"{where}: a {kind} needs minimum and maximum")
        elif low > high:
            problems.append(f"{where}: minimum is above maximum")
        elif "default" in schema and not low <= schema["default"] <= high:
            problems.append(f"{where}: the default is out of bounds")
    elif kind == "string" and not isinstance(schema.get("maxLength"), int):
        problems.append(f"{where}: a string needs maxLength")
    return problems


# ------------------------------------------------------------------ 6: faces drift


def _declared_schema_problems(op: Operation, schema: dict[str, Any]) -> list[str]:
    """How a published schema differs from the operation's declaration."""
    problems = []
    properties = schema.get("properties", {})
    if set(properties) != {p.name for p in op.params}:
        problems.append(f"{op.name}: properties {sorted(properties)}")
    required = sorted(p.name for p in op.params if p.required)
    if sorted(schema.get("required", [])) != required:
        problems.append(f"{op.name}: required {schema.get('required')} != {required}")
    for param in op.params:
        got = properties.get(param.name, {})
        want: dict[str, Any] = {}
        if param.kind is Kind.NAMES:
            want = {"type": "array", "maxItems": MAX_NAMES}
            if got.get("items") != {"type": "string", "maxLength": MAX_NAME}:
                problems.append(f"{op.name}.{param.name}: items {got.get('items')}")
        elif param.kind is Kind.WORDS:
            want = {"type": "array", "maxItems": param.max_length or MAX_NAMES}
            if got.get("items") != {"type": "string", "maxLength": MAX_WORD}:
                problems.append(f"{op.name}.{param.name}: items {got.get('items')}")
        elif param.kind in (Kind.TEXT, Kind.NAME):
            want = {"type": "string", "maxLength": param.max_length or MAX_NAME}
        elif param.kind is Kind.BOOLEAN:
            want = {"type": "boolean"}
        else:
            want = {"type": param.kind.value, "minimum": param.minimum, "maximum": param.maximum}
        if not param.required and param.default is not None:
            default = param.default
            want["default"] = list(default) if isinstance(default, tuple) else default
        elif "default" in got:
            problems.append(f"{op.name}.{param.name}: a default {got['default']!r}")
        for key, value in want.items():
            if got.get(key) != value or type(got.get(key)) is not type(value):
                problems.append(f"{op.name}.{param.name}: {key} {got.get(key)!r} != {value!r}")
        if param.doc not in str(got.get("description", "")):
            problems.append(f"{op.name}.{param.name}: description {got.get('description')!r}")
    return problems


@pytest.mark.anyio
async def test_every_tool_schema_is_exactly_its_declaration(project: Workspace) -> None:
    project.write(TWO)
    async with mcp(project) as client:
        schemas = listed_schemas(await client.list_tools())
    assert set(schemas) == set(OPERATIONS)
    problems = [
        p for name, op in OPERATIONS.items() for p in _declared_schema_problems(op, schemas[name])
    ]
    assert not problems, problems
    # the bounds the issue saw differ by face are the declared ones
    assert schemas["events"]["properties"]["limit"]["maximum"] == 10_000


def _help_flags(text: str) -> set[str]:
    """Every option string the help text lists (the first column of its option lines)."""
    flags: set[str] = set()
    for line in text.splitlines():
        if line.startswith("  -"):
            first_column = re.split(r"\s{2,}", line.strip())[0]
            flags |= set(re.findall(r"(?<![\w-])(--?[a-zA-Z][\w-]*)", first_column))
    return flags


def test_cli_help_offers_every_declared_parameter_and_no_other(project: Workspace) -> None:
    project.write(TWO)
    project.env["COLUMNS"] = "200"  # one help line per option
    with ThreadPoolExecutor(4) as pool:
        helps = dict(
            zip(
                OPERATIONS,
                pool.map(lambda name: project.cli(name, "--help", timeout=30), OPERATIONS),
                strict=True,
            )
        )
    problems = []
    for name, op in OPERATIONS.items():
        proc = helps[name]
        assert proc.returncode == 0, (name, proc.stderr)
        text = " ".join(proc.stdout.split())
        usage = text.split("positional arguments:")[0].split("options:")[0]
        offered = _help_flags(proc.stdout)
        declared: set[str] = set()
        for param in op.params:
            if not param.flags and param.kind is not Kind.BOOLEAN:  # positional
                if (param.metavar or param.name) not in usage:
                    problems.append(f"{name}: no positional {param.metavar} for {param.name}")
                continue
            flags = {param.negation} if param.negation else set(param.flags)
            declared |= {f for f in flags if f}
            missing = {f for f in flags if f and f not in offered}
            if missing:
                problems.append(f"{name}: {param.name} lacks {sorted(missing)}")
            if param.doc.split(" (")[0][:30] not in text:
                problems.append(f"{name}: {param.name}'s doc is not in the help")
            if param.kind in (Kind.INTEGER, Kind.NUMBER):
                shown = f"(default: {param.default:g})"
                if shown not in text:
                    problems.append(f"{name}: {param.name} does not show {shown}")
        extra = offered - declared - COMMON - CLI_EXTRAS.get(name, set())
        if extra:
            problems.append(f"{name}: options not declared by the operation: {sorted(extra)}")
    assert not problems, problems


def _bound_cases(op: Operation) -> Iterator[tuple[Param, Any]]:
    """Values just past each declared bound of an operation."""
    for param in op.params:
        if param.kind in (Kind.INTEGER, Kind.NUMBER):
            assert param.minimum is not None and param.maximum is not None
            step: Any = 1 if param.kind is Kind.INTEGER else 1.0
            cast = int if param.kind is Kind.INTEGER else float
            yield param, cast(param.maximum) + step
            yield param, cast(param.minimum) - step
        elif param.kind is Kind.TEXT and param.max_length:
            yield param, "x" * (param.max_length + 1)


def _cli_argv(op: Operation, param: Param, value: Any) -> list[str]:
    """The command line giving value to param (and a valid value to the other positionals)."""
    argv = [op.cli or op.name]
    for other in op.params:
        if other is param and not other.flags:
            argv.append(str(value))
        elif other.required and not other.flags:
            argv.append("api" if other.kind is Kind.NAME else "x")
    return argv + ([param.flags[-1], str(value)] if param.flags else [])


@pytest.mark.anyio
async def test_mcp_bridge_and_cli_refuse_the_same_arguments_in_the_same_words(
    project: Workspace,
) -> None:
    project.write(TWO)
    facade = project.open()
    mismatches: list[str] = []
    refusals: dict[tuple[str, str, str], str] = {}
    async with mcp(project) as client, bridge(project) as rpc:
        for op in OPERATIONS.values():
            cases: list[tuple[str, str, dict[str, Any]]] = []
            for param in op.params:
                for key in (param.name, *param.aliases):  # every accepted spelling
                    cases.append((param.name, f"{key} wrong type", {key: WRONG_TYPE[param.kind]}))
            cases += [(p.name, repr(v)[:20], {p.name: v}) for p, v in _bound_cases(op)]
            cases.append(("?", "unknown", {"bogus": 1}))
            for param_name, what, arguments in cases:
                by_mcp = await tool_error(client, op.name, arguments)
                by_bridge = await rpc.error(op.name, arguments)
                refusals[op.name, param_name, what] = by_mcp
                if by_bridge["code"] != -32602 or by_bridge["message"] != by_mcp:
                    mismatches.append(f"{op.name} {arguments!r:.60}: {by_mcp!r} / {by_bridge}")
                expected = "has no argument 'bogus'" if param_name == "?" else param_name
                if expected not in by_mcp or ("has no argument" in by_mcp and param_name != "?"):
                    mismatches.append(f"{op.name} {arguments!r:.60}: refused as {by_mcp!r}")
        assert refusals["events", "limit", "10001"] == (
            "limit must be an integer from 1 to 10000 (got 10001)"
        )

    cli_cases = [  # past the upper bounds (the lower ones are the same code path)
        (op, param, value)
        for op in OPERATIONS.values()
        for param, value in _bound_cases(op)
        if (isinstance(value, str) or value > (param.maximum or 0))
        and param.for_cli().maximum == param.maximum
    ]
    with ThreadPoolExecutor(4) as pool:
        procs = list(pool.map(lambda c: project.cli(*_cli_argv(*c), timeout=30), cli_cases))
    for (op, param, value), proc in zip(cli_cases, procs, strict=True):
        want = refusals[op.name, param.name, repr(value)[:20]]
        if proc.returncode != 2 or proc.stderr.strip() != f"taskmux: {want}":
            mismatches.append(f"cli {op.name} {param.name}={value!r:.20}: {proc.stderr!r}")
    assert not mismatches, mismatches
    statuses = facade.status_sync().tasks
    assert all(t.state.value == "stopped" for t in statuses), statuses  # nothing ran


@pytest.mark.anyio
@pytest.mark.parametrize("switch", ["0", "1"])
async def test_the_stdio_server_honours_the_hosted_monitor_switch(
    project: Workspace, switch: str
) -> None:
    project.write(TWO)
    facade = project.open()
    params = stdio_params(project, TASKMUX_HOSTED_MONITOR=switch)
    async with Client(params, mode="legacy") as client:
        started = await tool_ok(client, "start", {"tasks": ["api"], "wait": False})
        assert started["ok"], started
        snapshot = facade.backend.snapshot_sync()
        assert snapshot.alive("api") is not None
        hosted = snapshot.alive(MONITOR_WINDOW)
        await tool_ok(client, "stop", {})
    if switch == "0":
        assert hosted is None, "TASKMUX_HOSTED_MONITOR=0 but a _monitor window was opened"
    else:
        assert hosted is not None, "no _monitor window with TASKMUX_HOSTED_MONITOR=1"


# ------------------------------------------------------------------ 7: arguments


@pytest.mark.anyio
async def test_unknown_arguments_are_refused_with_a_did_you_mean(project: Workspace) -> None:
    project.write(TWO)
    facade = project.open()
    cases: list[tuple[str, dict[str, Any], str | None]] = [
        ("logs", {"tsks": ["api"]}, "tasks"),
        ("grep", {"pattern": "x", "taks": "api"}, "tasks"),
        ("events", {"limt": 5}, "limit"),
        ("inspect", {"tsk": "api"}, "task"),
        ("start", {"taks": ["api"], "wait": False}, "tasks"),
        ("stop", {"tasks": ["api"], "forse": True}, None),
    ]
    async with mcp(project) as client, bridge(project) as rpc:
        for tool, arguments, meant in cases:
            message = await tool_error(client, tool, arguments)
            wrong = next(k for k in arguments if k not in OPERATIONS[tool].by_name)
            assert f"{tool} has no argument '{wrong}'" in message, message
            if meant is not None:
                assert f"did you mean '{meant}'?" in message, message
            else:
                assert "did you mean" not in message, message
            takes = ", ".join(p.name for p in OPERATIONS[tool].params)
            assert f"(it takes: {takes})" in message, message
            assert (await rpc.error(tool, arguments))["message"] == message
    states = [t.state.value for t in facade.status_sync().tasks]
    assert states == ["stopped", "stopped"], states  # the refused start ran nothing


def _names_in(tool: str, result: dict[str, Any]) -> set[str]:
    """The tasks a result is about."""
    if tool == "inspect":
        return {result["status"]["name"]}
    if tool == "logs":
        return {line["task"] for line in result["lines"]}
    if tool == "grep":
        return {match["task"] for match in result["matches"]}
    if tool == "events":
        return {event["task"] for event in result["events"]}
    if tool in ("screen", "wait_for"):
        return {result["task"]}
    return {entry["name"] for entry in result["tasks"]}


@pytest.mark.anyio
async def test_task_and_tasks_both_scope_every_read(project: Workspace) -> None:
    project.write(TWO)
    facade = project.open()
    assert (await facade.start(wait=False)).ok
    wait_until(
        lambda: {"api-line-2", "web-tick"} <= {x.text for x in facade.logs_sync(lines=500).lines}
    )
    reads = [op for op in OPERATIONS.values() if op.read_only]
    spelled = 0
    async with mcp(project) as client:
        for op in reads:
            names = next(p for p in op.params if p.kind in (Kind.NAME, Kind.NAMES))
            for key in (names.name, *names.aliases):
                for value in ("api", ["api"]):
                    arguments: dict[str, Any] = {key: value}
                    if op.name in ("grep", "wait_for"):
                        arguments["pattern"] = "line|tick|taskmux"
                    result = await tool_ok(client, op.name, arguments)
                    assert _names_in(op.name, result) == {"api"}, (op.name, arguments, result)
                    spelled += 1
        logged = await tool_ok(client, "logs", {"tasks": ["api"], "lines": 500})
        texts = [line["text"] for line in logged["lines"]]
        assert "api-line-1" in texts and "api-line-2" in texts
        assert not any("web-tick" in text for text in texts)
        both = await tool_ok(client, "logs", {"task": "api", "tasks": ["web"], "lines": 500})
        assert _names_in("logs", both) == {"api", "web"}
        too_many = await tool_error(client, "inspect", {"tasks": ["api", "web"]})
        assert "task must be a string" in too_many
    assert spelled == 4 * len(reads)


@pytest.mark.anyio
async def test_task_and_tasks_both_scope_every_action(project: Workspace) -> None:
    project.write(TWO)
    facade = project.open()

    def states() -> dict[str, str]:
        return {t.name: t.state.value for t in facade.status_sync().tasks}

    steps: list[tuple[str, dict[str, Any], str, dict[str, str]]] = [
        ("start", {"task": "api", "wait": False}, "api", {"api": "running", "web": "stopped"}),
        ("start", {"tasks": "web", "wait": False}, "web", {"api": "running", "web": "running"}),
        ("restart", {"task": "api", "wait": False}, "api", {"api": "running", "web": "running"}),
        ("stop", {"task": ["api"]}, "api", {"api": "stopped", "web": "running"}),
        ("kill", {"task": "web"}, "web", {"api": "stopped", "web": "stopped"}),
    ]
    async with mcp(project) as client:
        for tool, arguments, acted_on, after in steps:
            result = await tool_ok(client, tool, arguments)
            assert _names_in(tool, result) == {acted_on}, (tool, arguments, result)
            with anyio.fail_after(10):
                while states() != after:
                    await anyio.sleep(0.05)


def test_the_strictness_checker_rejects_hand_made_bad_schemas() -> None:
    good: dict[str, Any] = {
        "type": "object",
        "properties": {
            "tasks": {"type": "array", "items": {"type": "string", "maxLength": 9}, "maxItems": 3},
            "lines": {"type": "integer", "minimum": 1, "maximum": 9, "default": 5},
            "wait": {"type": "boolean"},
        },
        "required": ["tasks"],
        "additionalProperties": False,
    }
    assert strict_problems(good) == []

    def bad(change: dict[str, Any], prop: str | None = None) -> list[str]:
        schema = json.loads(json.dumps(good))
        (schema["properties"][prop] if prop else schema).update(change)
        return strict_problems(schema)

    def null_since(text: dict[str, Any]) -> dict[str, Any]:
        return {"since": {"anyOf": [text, {"type": "null"}]}}

    string = {"type": "string", "maxLength": 9}
    cases: list[tuple[list[str], str]] = [
        (strict_problems({"type": "object", "additionalProperties": False}), "non-empty prop"),
        (strict_problems({"type": "object", "properties": {}}), "non-empty properties"),
        (bad({"additionalProperties": True}), "additionalProperties must be false"),
        (
            bad({"properties": {**good["properties"], **null_since(string)}}),
            "anyOf contains a null",
        ),
        (bad({"type": ["string", "null"]}, "wait"), "with null"),
        (bad({"maximum": None}, "lines"), "needs minimum and maximum"),
        (bad({"default": 10}, "lines"), "default is out of bounds"),
        (bad({"maxItems": None}, "tasks"), "needs maxItems"),
        (bad({"items": {"type": "string"}}, "tasks"), "tasks[]: a string needs maxLength"),
        (bad({"$ref": "#/$defs/x"}, "wait"), "keyword '$ref'"),
        (bad({"$defs": {}}), "keyword '$defs'"),
        (bad({"oneOf": [string]}, "wait"), "keyword 'oneOf'"),
        (bad({"required": ["tasks", "ghost"]}), "'ghost', which is not a property"),
        (bad({"type": "object", "properties": {"x": string}}, "wait"), "wait: additionalPro"),
    ]
    for problems, needle in cases:
        assert any(needle in problem for problem in problems), (needle, problems)
    # the declarations themselves, before any face publishes them
    for op in OPERATIONS.values():
        assert strict_problems(op.input_schema()) == [], op.name


@pytest.mark.anyio
async def test_every_published_input_schema_is_strict(project: Workspace) -> None:
    project.write(TWO)
    async with mcp(project) as client:
        schemas = listed_schemas(await client.list_tools())
    problems = {name: strict_problems(schema) for name, schema in schemas.items()}
    assert set(problems) == set(OPERATIONS)
    assert all(not found for found in problems.values()), problems


def _one_plain_sentence(message: str) -> bool:
    """One line, one sentence, none of pydantic's words or links."""
    lowered = message.lower()
    return (
        bool(message.strip())
        and "\n" not in message
        and "pydantic" not in lowered
        and "errors.pydantic.dev" not in lowered
        and "validation error" not in lowered
        and not re.search(r"[.!?]\s+[A-Z]", message)
        and len(message) < 300
    )


@pytest.mark.anyio
async def test_validation_errors_are_one_plain_sentence(project: Workspace) -> None:
    project.write(TWO)
    bad_calls: list[tuple[str, dict[str, Any]]] = [
        ("logs", {"lines": "many"}),
        ("logs", {"lines": 2.5}),
        ("logs", {"lines": True}),
        ("logs", {"lines": 10**30}),
        ("logs", {"tasks": [1, 2]}),
        ("logs", {"tasks": ["x" * 100]}),
        ("logs", {"tasks": ["a"] * 201}),
        ("logs", {"since": ["start"]}),
        ("grep", {}),
        ("grep", {"pattern": {"re": "x"}}),
        ("grep", {"pattern": "x" * 3000}),
        ("grep", {"pattern": "x", "ignore_case": "yes"}),
        ("grep", {"pattern": "x", "context": -1}),
        ("events", {"limit": 0}),
        ("events", {"limit": 10**400}),
        ("events", {"limit": 1e300}),
        ("start", {"timeout": "soon", "wait": False}),
        ("start", {"wait": "no"}),
        ("inspect", {}),
        ("inspect", {"task": ""}),
        ("inspect", {"task": None}),
        ("kill", {"tasks": []}),
        ("status", {"tasks": {"a": 1}}),
        ("health", {"tsks": ["api"]}),
    ]
    unclear: list[str] = []
    async with mcp(project) as client, bridge(project) as rpc:
        for tool, arguments in bad_calls:
            by_mcp = await tool_error(client, tool, arguments)
            if not _one_plain_sentence(by_mcp):
                unclear.append(f"mcp {tool} {arguments!r:.40}: {by_mcp!r}")
            by_bridge = (await rpc.error(tool, arguments))["message"]
            if not _one_plain_sentence(by_bridge):
                unclear.append(f"bridge {tool} {arguments!r:.40}: {by_bridge!r}")
        for params in ({"tasks": 3}, {"bogus": 1}):
            by_bridge = (await rpc.error("subscribe", params))["message"]
            if not _one_plain_sentence(by_bridge):
                unclear.append(f"bridge subscribe {params}: {by_bridge!r}")
    assert not unclear, unclear


# ------------------------------------------------------------------ 8: one line, every face

HUGE_LINE = """\
import sys, time
for _ in range(3):
    sys.stdout.write("\\r" + "A" * 300000 + "\\x1b[1K" * 50000 + "\\n")
sys.stdout.write("after-huge\\n")
sys.stdout.flush()
time.sleep(1000)
"""
BIG_LINES = """\
import sys, time
for i in range(50):
    sys.stdout.write(str(i % 10) * 1000000 + "\\n")
sys.stdout.write("big-done\\n")
sys.stdout.flush()
time.sleep(1000)
"""


def _cut_huge_lines(lines: list[dict[str, Any]]) -> list[str]:
    """The texts of the pathological lines in a logs reply, checked to be cut with a marker."""
    texts = [line["text"] for line in lines if line["text"].startswith(("A", " "))]
    for text in texts:
        assert len(text) <= LINE_CHARS + 100, len(text)
        assert "[line cut:" in text[LINE_CHARS:], text[LINE_CHARS - 10 :]
    return texts


@pytest.mark.anyio
async def test_a_pathological_line_freezes_no_face(project: Workspace) -> None:
    (project.root / "huge.py").write_text(HUGE_LINE)
    project.write(
        f"""
        [tasks.huge]
        command = "{sys.executable} huge.py"
        stop_grace_period = 0.5
        """
    )
    facade = project.open()
    assert (await facade.start(["huge"], wait=False)).ok
    wait_until(lambda: "after-huge" in [x.text for x in facade.logs_sync(["huge"]).lines], 20)

    async with mcp(project) as client:
        took: dict[str, float] = {}
        replies: dict[str, dict[str, Any]] = {}

        async def timed(name: str, tool: str, arguments: dict[str, Any]) -> None:
            began = time.monotonic()
            replies[name] = await tool_ok(client, tool, arguments)
            took[name] = time.monotonic() - began

        with anyio.fail_after(30):
            async with anyio.create_task_group() as group:
                for i in range(3):
                    group.start_soon(timed, f"logs{i}", "logs", {"tasks": ["huge"]})
                group.start_soon(timed, "grep", "grep", {"pattern": "A{50}", "tasks": ["huge"]})
                await anyio.sleep(0.01)  # the reads are in flight
                group.start_soon(timed, "status", "status", {})
        assert max(took.values()) < 10, took  # minutes before the fix
        assert len(_cut_huge_lines(replies["logs0"]["lines"])) == 3
        for match in replies["grep"]["matches"]:
            assert len(match["line"]) <= LINE_CHARS + 100, len(match["line"])
        assert replies["status"]["tasks"][0]["state"] == "running"

    async with bridge(project) as rpc:
        began = time.monotonic()
        reply = await rpc.call("logs", {"tasks": ["huge"]}, timeout=10)
        assert time.monotonic() - began < 10
        assert len(_cut_huge_lines(reply["result"]["lines"])) == 3

    with ThreadPoolExecutor(2) as pool:
        began = time.monotonic()
        logs, grep = pool.map(
            lambda argv: project.cli(*argv, timeout=30),
            [("logs", "huge"), ("grep", "after-huge", "huge")],
        )
        assert time.monotonic() - began < 20
    assert logs.returncode == 0 and "after-huge" in logs.stdout, logs.stderr
    assert grep.returncode == 0 and "after-huge" in grep.stdout, grep.stderr


@pytest.mark.anyio
async def test_megabyte_lines_give_replies_within_budget_and_bounded_memory(
    project: Workspace,
) -> None:
    (project.root / "big.py").write_text(BIG_LINES)
    project.write(
        f"""
        [logs]
        max_bytes = 67108864
        [tasks.big]
        command = "{sys.executable} big.py"
        stop_grace_period = 0.5
        """
    )
    facade = project.open()
    assert (await facade.start(["big"], wait=False)).ok
    wait_until(lambda: [x.text for x in facade.logs_sync(["big"], lines=1).lines] == ["big-done"])
    async with Client(stdio_params(project), mode="legacy") as client:
        server = stdio_server_process(project)
        for lines in (100, 5000):
            began = time.monotonic()
            result = await client.call_tool("logs", {"tasks": ["big"], "lines": lines})
            took = time.monotonic() - began
            assert not result.is_error and result.structured_content is not None
            content = result.structured_content
            size = len(json.dumps(content, ensure_ascii=False).encode())
            assert size <= REPLY_BUDGET, (lines, size)
            text = result.content[0]
            assert isinstance(text, types.TextContent)
            assert len(text.text.encode()) <= REPLY_BUDGET, (lines, len(text.text))
            assert content["truncated"] and "left out" in (content["notice"] or ""), content
            assert content["lines"] and content["lines"][-1]["text"] == "big-done"
            assert all(len(line["text"]) <= LINE_CHARS + 100 for line in content["lines"])
            assert took < 30, (lines, took)
        peak = peak_rss(server.pid)
        assert peak < PEAK_RSS_LIMIT, f"the server's peak RSS was {peak / 2**20:.0f} MiB"


# ------------------------------------------------------------------ 11: protocol details


def test_no_prompts_are_advertised_and_an_unknown_prompt_is_a_real_error(
    raw: RawServer,
) -> None:
    result = raw.initialize()
    assert "prompts" not in result["capabilities"], result["capabilities"]
    for ident, (method, params) in enumerate(
        [("prompts/get", {"name": "nope"}), ("prompts/list", {}), ("prompts/get", {})], start=2
    ):
        reply = raw.request(method, params, ident)
        assert "error" in reply, reply
        assert reply["error"]["code"] in (-32601, -32602), reply  # not 0
        assert "Traceback" not in json.dumps(reply)
    bad_arguments = raw.request("tools/call", {"name": "logs", "arguments": [1]}, 9)
    assert bad_arguments["error"]["code"] == -32602
    assert _one_plain_sentence(bad_arguments["error"]["message"]), bad_arguments
    raw.serves(10)
    assert raw.close() == 0
    logged = raw.stderr_path.read_text(errors="replace")
    assert "Traceback" not in logged and "ERROR" not in logged, logged[-2000:]


@pytest.mark.anyio
async def test_reading_an_unknown_resource_answers_32002(project: Workspace) -> None:
    project.write(TWO)
    async with mcp(project) as client:
        for uri in (
            "taskmux://tasks/ghost",
            "taskmux://logs/ghost",
            "taskmux://nope",
            "taskmux://tasks/api/x",
            "file:///etc/passwd",
        ):
            with pytest.raises(MCPError) as caught:
                await client.read_resource(uri)
            assert caught.value.error.code == -32002, (uri, caught.value.error)
            assert "Traceback" not in caught.value.error.message
        assert (await client.read_resource("taskmux://tasks/api")).contents  # a known one reads


@pytest.mark.anyio
async def test_a_task_resource_with_an_unusable_name_answers_32002(project: Workspace) -> None:
    project.write(TWO)
    async with mcp(project) as client:
        codes = {}
        for uri in (
            "taskmux://tasks/",
            "taskmux://logs/",
            "taskmux://tasks/" + "x" * 65,
            "taskmux://logs/" + "x" * 65,
        ):
            with pytest.raises(MCPError) as caught:
                await client.read_resource(uri)
            codes[uri[:24]] = caught.value.error.code
    assert set(codes.values()) == {-32002}, codes


@pytest.mark.anyio
async def test_subscribing_to_a_foreign_or_unknown_uri_is_refused(project: Workspace) -> None:
    project.write(TWO)
    async with mcp(project) as client:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", MCPDeprecationWarning)
            for uri in (
                "file:///etc/passwd",
                "https://example.com/status",
                "taskmux://tasks/ghost",
                "taskmux://statusx",
                "other://taskmux/status",
            ):
                with pytest.raises(MCPError) as caught:
                    await client.subscribe_resource(uri)
                assert caught.value.error.code == -32002, (uri, caught.value.error)
            for uri in ("taskmux://status", "taskmux://tasks/api", "taskmux://logs/web"):
                await client.subscribe_resource(uri)


def test_garbage_on_stdin_gets_a_parse_error_and_the_server_keeps_serving(
    raw: RawServer,
) -> None:
    raw.send(b"not json\n")
    reply = raw.next_reply()
    assert reply["id"] is None and reply["error"]["code"] == -32700, reply
    raw.initialize(ident=1)
    for garbage, code in (
        (b"not json\n", -32700),
        (b"\xff\xfe\x00 binary\n", -32700),
        (b"{" * 50_000 + b"\n", -32700),
        (b'{"jsonrpc": "2.0", "id": 7}\n', -32600),
        (b'"tools/list"\n', -32600),
    ):
        raw.send(garbage)
        reply = raw.next_reply()
        assert reply["error"]["code"] == code, (garbage[:30], reply)
        raw.serves(100 + code)
    assert raw.close() == 0
    assert "Traceback" not in raw.stderr_path.read_text(errors="replace")


def test_a_20_mb_garbage_line_is_refused_and_kept_out_of_the_logs(raw: RawServer) -> None:
    raw.initialize()
    raw.send(b"G" * 20_000_000 + b"\n")
    reply = raw.next_reply(timeout=30)
    assert reply["id"] is None and "error" in reply, reply
    assert reply["error"]["code"] in (-32600, -32700), reply
    raw.serves(2)
    raw.send(b"H" * 3_000_000 + b"\n")  # under the size cap, still garbage
    assert raw.next_reply()["error"]["code"] == -32700
    raw.serves(3)
    assert raw.close() == 0
    for path, size in raw.logged():
        assert size < 100_000, (path, size)
        assert "GGGGGGGGGG" not in path.read_text(errors="replace"), path


def test_an_over_long_name_inside_a_valid_message_is_kept_out_of_the_logs(
    raw: RawServer,
) -> None:
    raw.initialize()
    reply = raw.request("tools/call", {"name": "n" * 3_000_000, "arguments": {}}, 2)
    assert "error" in reply or reply["result"]["isError"], str(reply)[:200]
    reply = raw.request("resources/read", {"uri": "taskmux://tasks/" + "u" * 3_000_000}, 3)
    assert reply["error"]["code"] == -32002
    raw.serves(4)
    assert raw.close() == 0
    for path, size in raw.logged():
        assert size < 100_000, (path, size)
