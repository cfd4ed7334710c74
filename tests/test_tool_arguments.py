"""Property tests over every MCP tool's arguments, through the real server and client.

Each call gives a result or a clear error, never a crash; the server keeps answering; no
command runs that taskmux.toml did not define; no file outside the state folder is read.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import anyio
import anyio.from_thread
import mcp_types as types
import pydantic
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mcp import Client
from mcp.shared.exceptions import MCPError
from support import Workspace, make_project, slot_for

from taskmux_mcp.events import Cause
from taskmux_mcp.mcp_server import build_server

RUN = uuid.uuid4().hex[:8]
SECRET = f"CANARY-{RUN}-SECRET"
MARK = f"/tmp/taskmux-pwned-{RUN}"
CANARY = f"/tmp/taskmux-canary-{RUN}"
OTHER = "other-0123abcd"
KNOWN = {"sleeper", "done"}
WINDOWS = KNOWN | {"_monitor"}
CONFIG = """\
name = "argfuzz"
[tasks.sleeper]
command = "sleep 1000"
health_check = "true"
stop_grace_period = 0.5
[tasks.done]
command = "echo done-output"
oneshot = true
"""
CASES: Counter[str] = Counter()
OUTCOMES: Counter[tuple[str, bool]] = Counter()

HOSTILE_NAMES = [
    "", " ", ".", "..", "a.b", "x:y", "with space", "sleeper ", " sleeper", "SLEEPER",
    "sleeper\n", "sleeper\x00", "sleeper\x00../../secret", "é", "日本語", "\u202esleeper",
    "../x", "../../secret", "../../../secret", f"../../{OTHER}/logs/sleeper", "/etc/passwd",
    CANARY, f"{CANARY}\x00", "logs/../sleeper", "./sleeper", "sleeper/../done", "..\\secret",
    "%2e%2e%2fsecret", f"$(touch {MARK})", f"`touch {MARK}`", f"x; touch {MARK}",
    f"x && touch {MARK} #", f"'; touch {MARK}; '", "*", "?", "[a-z]*", "-", "--help", "-t",
    "_monitor", "sleeper.log", "~", "~root", "#{pane_pid}", "#(touch " + MARK + ")",
    "x" * 10_000, "é" * 10_000, "../" * 3000, "sleeper", "done",
]  # fmt: skip
NAMES = st.one_of(
    st.sampled_from(sorted(KNOWN)),
    st.sampled_from(HOSTILE_NAMES),
    st.text(max_size=16),
    st.text(alphabet="abc.:/ \\$`;'\"#{}()~-_\x00é", max_size=16),
)
TASK_LISTS = st.one_of(
    st.lists(NAMES, max_size=4),
    st.just([]),
    st.builds(lambda name: [name] * 1000, NAMES),
    st.just(["sleeper"] * 1000),
    st.just([f"t{i}" for i in range(1000)]),
)
INTS = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, -1, 1, 2**31, -(2**31), 2**63, -(2**63), 2**63 - 1, 10**30, -(10**30)]),
)
TIMEOUTS = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0, -1, 1e-300, 1e308, 86400, 86400.001, 0.001, 2**70, -(2**70)]),
)


SINCES_ANY = st.one_of(
    st.none(),
    st.text(max_size=24),
    st.sampled_from(
        [
            "", "start", "START", "0s", "-5s", "-1h", "99999999999999999999h", "1e308s",
            "inf", "nan", "-inf", "NaN s", "5m5m", "9999-12-31T23:59:59Z", "0001-01-01",
            "9999-99-99", "2026-13-45T25:61:61Z", "0001-01-01T00:00:00+14:00",
            "9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00Z", "9999-12-31",
            "1970-01-01T00:00:00+99:00",
            "../../etc/passwd", "/etc/passwd", CANARY, "\x00", "1" * 10_000, "s" * 10_000,
        ]
    ),
)  # fmt: skip
SINCES = SINCES_ANY


PATTERNS_ANY = st.one_of(
    st.text(max_size=24),
    st.sampled_from(
        [
            "(", ")", "[", "*", "+?*", "(?P<", "(?P<a>x)(?P<a>y)", "a{99999999999}", "\\",
            "\\9", "(?#", "(?<=a+)b", "(?i", "SECRET", "(?i)canary", ".*", "", "root:",
            "x" * 10_000, "(" * 5000 + ")" * 5000, "[^\\x00-\\x7f]", "\\p{L}",
        ]
    ),
)  # fmt: skip
PATTERNS = PATTERNS_ANY
ARGS: dict[str, st.SearchStrategy[dict[str, Any]]] = {
    "status": st.fixed_dictionaries({}),
    "logs": st.fixed_dictionaries(
        {}, optional={"task": st.one_of(st.none(), NAMES), "lines": INTS, "since": SINCES}
    ),
    "grep": st.fixed_dictionaries(
        {"pattern": PATTERNS},
        optional={
            "tasks": TASK_LISTS,
            "context": INTS,
            "ignore_case": st.booleans(),
            "since": SINCES,
            "max_matches": INTS,
        },
    ),
    "inspect": st.fixed_dictionaries({"task": NAMES}),
    "health": st.fixed_dictionaries({}, optional={"tasks": TASK_LISTS}),
    "events": st.fixed_dictionaries(
        {}, optional={"task": st.one_of(st.none(), NAMES), "since": SINCES, "limit": INTS}
    ),
    "start": st.fixed_dictionaries(
        {}, optional={"tasks": TASK_LISTS, "wait": st.booleans(), "timeout": TIMEOUTS}
    ),
    "stop": st.fixed_dictionaries({}, optional={"tasks": TASK_LISTS}),
    "restart": st.fixed_dictionaries(
        {}, optional={"tasks": TASK_LISTS, "wait": st.booleans(), "timeout": TIMEOUTS}
    ),
    "kill": st.fixed_dictionaries({"tasks": TASK_LISTS}),
}
JSON = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=12),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)
ARG_NAMES = sorted(
    {"tasks", "task", "wait", "timeout", "lines", "since", "pattern", "context", "ignore_case"}
    | {"max_matches", "limit", "bogus", ""}
)


def fast(examples: int) -> settings:
    """Few examples, no deadline (a call may start or stop a task)."""
    return settings(
        max_examples=examples, deadline=None, suppress_health_check=[HealthCheck.too_slow]
    )


class ErrorLog(logging.Handler):
    """Every ERROR record logged in the process (the SDK logs each tool crash so)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        """Keep the record."""
        self.records.append(record)


@dataclass
class Served:
    """The project, a live in-memory client session on its MCP server, and the crash log."""

    project: Workspace
    portal: anyio.from_thread.BlockingPortal
    client: Client
    errors: ErrorLog

    def call(self, tool: str, arguments: dict[str, Any]) -> types.CallToolResult:
        """One tools/call, checked: a result or a clear error, nothing leaked or spawned."""
        CASES[tool] += 1
        self.errors.records.clear()
        result: types.CallToolResult = self.portal.call(self.client.call_tool, tool, arguments)
        text = "".join(c.text for c in result.content if isinstance(c, types.TextContent))
        OUTCOMES[tool, not result.is_error] += 1
        if result.is_error:
            assert text != f"Error executing tool {tool}", (
                f"crash on {tool}({str(arguments)[:300]})"
            )
            assert not text.startswith("Error executing tool") and len(text) > 15, text
            assert "internal error" not in text.lower() and "Traceback" not in text, text
        else:
            assert result.structured_content is not None, text
        self.assert_clean(text + json.dumps(result.structured_content), tool, arguments)
        return result

    def read(self, uri: str) -> None:
        """One resources/read: contents or a protocol error, nothing leaked."""
        CASES["resource"] += 1
        self.errors.records.clear()
        try:
            result = self.portal.call(self.client.read_resource, uri)
        except MCPError as exc:
            assert str(exc), uri
            self.assert_clean(str(exc), "resource", {"uri": uri})
            OUTCOMES["resource", False] += 1
            return
        except pydantic.ValidationError:
            CASES["resource (not sent: invalid URI)"] += 1
            return
        OUTCOMES["resource", True] += 1
        dumped = result.model_dump_json()
        self.assert_clean(dumped, "resource", {"uri": uri})

    def assert_clean(self, answer: str, tool: str, arguments: dict[str, Any]) -> None:
        """No canary in the answer, no file made by a hostile name, no crash logged."""
        where = f"{tool}({str(arguments)[:300]})"
        assert SECRET not in answer, f"canary leaked by {where}"
        assert "root:x:0:0" not in answer, f"/etc/passwd leaked by {where}"
        assert not os.path.exists(MARK), f"a command the config did not define ran: {where}"
        crashes = [r for r in self.errors.records if r.exc_info]
        assert not crashes, f"server logged a crash on {where}: {crashes[0].getMessage()}"

    def still_serving(self) -> None:
        """status still answers, and only the config's windows exist."""
        status = self.call("status", {})
        assert not status.is_error
        assert status.structured_content is not None
        assert {t["name"] for t in status.structured_content["tasks"]} == KNOWN
        listed = self.project.server.cmd("list-windows", "-a", "-F", "#{window_name}", check=False)
        assert set(listed.stdout.split()) <= WINDOWS, listed.stdout


def plant_canaries(project: Workspace) -> list[Path]:
    """Files holding SECRET in log-line form: beside the state folder, in /tmp, in the project."""
    line = f"2026-01-01T00:00:00.000000Z\t{SECRET}\n"
    other_logs = project.state_dir / OTHER / "logs"
    other_logs.mkdir(parents=True)
    paths = [
        project.state_dir / "secret.log",
        project.state_dir / "secret",
        other_logs / "sleeper.log",
        Path(f"{CANARY}.log"),
        Path(CANARY),
        project.root / "secret.log",
        project.root.parent / "secret.log",
    ]
    for path in paths:
        path.write_text(line)
    return paths


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """One project with 2 tasks (one running, one exited) and one MCP session for the module."""
    errors = ErrorLog()
    logging.getLogger().addHandler(errors)
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("TMUX", raising=False)
        mp.delenv("TASKMUX_PROJECT", raising=False)
        mp.setenv("TASKMUX_HOSTED_MONITOR", "0")
        projects = make_project(mp.setenv, tmp_path_factory.mktemp("args"))
        project = next(projects)
        canaries: list[Path] = []
        try:
            project.write(CONFIG)
            sup = project.open(Cause.USER)
            started = anyio.run(sup.start)
            assert started.ok, started
            canaries = plant_canaries(project)
            server = build_server(slot_for(project))
            with anyio.from_thread.start_blocking_portal() as portal:
                client = Client(server, mode="legacy")
                with portal.wrap_async_context_manager(client) as connected:
                    yield Served(project, portal, connected, errors)
        finally:
            logging.getLogger().removeHandler(errors)
            for path in canaries:
                path.unlink(missing_ok=True)
            shutil.rmtree(MARK, ignore_errors=True)
            Path(MARK).unlink(missing_ok=True)
            for _ in projects:
                pass


READ_TOOLS = ["logs", "grep", "inspect", "health", "events"]
ACTION_TOOLS = ["start", "stop", "restart", "kill"]


@pytest.mark.parametrize("tool", READ_TOOLS)
def test_read_tools_answer_or_refuse_clearly(served: Served, tool: str) -> None:
    @fast(250)
    @given(arguments=ARGS[tool])
    def check(arguments: dict[str, Any]) -> None:
        served.call(tool, arguments)

    check()
    served.still_serving()


@pytest.mark.parametrize("tool", ACTION_TOOLS)
def test_action_tools_answer_or_refuse_clearly(served: Served, tool: str) -> None:
    @fast(80)
    @given(arguments=ARGS[tool])
    def check(arguments: dict[str, Any]) -> None:
        served.call(tool, arguments)
        served.still_serving()

    check()


@pytest.mark.parametrize("tool", sorted(ARGS))
def test_arguments_of_the_wrong_type_are_refused_clearly(served: Served, tool: str) -> None:
    @fast(50)
    @given(arguments=st.dictionaries(st.sampled_from(ARG_NAMES), JSON, max_size=4))
    def check(arguments: dict[str, Any]) -> None:
        served.call(tool, arguments)

    check()
    served.still_serving()


@fast(300)
@given(name=NAMES, kind=st.sampled_from(["tasks", "logs"]), quoted=st.booleans())
def test_task_resources_with_hostile_names(
    served: Served, name: str, kind: str, quoted: bool
) -> None:
    served.read(f"taskmux://{kind}/{quote(name, safe='') if quoted else name}")


def test_the_project_survived_every_case(served: Served) -> None:
    served.still_serving()
    answered = {tool: OUTCOMES[tool, True] for tool in sorted(CASES)}
    print(f"\ncases tried: {dict(sorted(CASES.items()))}, total {sum(CASES.values())}")
    print(f"of which answered (not refused): {answered}")


def clear_error(served: Served, tool: str, arguments: dict[str, Any]) -> None:
    """The call must be refused with a message, not crash the tool."""
    served.errors.records.clear()
    result = served.portal.call(served.client.call_tool, tool, arguments)
    text = "".join(c.text for c in result.content if isinstance(c, types.TextContent))
    assert result.is_error
    assert text != f"Error executing tool {tool}", "the tool crashed"
    assert not served.errors.records


@pytest.mark.parametrize("tool", ["logs", "events", "grep"])
def test_since_in_year_one_is_refused_clearly(served: Served, tool: str) -> None:
    args: dict[str, Any] = {"since": "0001-01-01"}
    clear_error(served, tool, {"pattern": "x", **args} if tool == "grep" else args)


@pytest.mark.parametrize("tool", ["logs", "events", "grep"])
def test_since_of_an_enormous_duration_is_refused_clearly(served: Served, tool: str) -> None:
    args: dict[str, Any] = {"since": "99999999999999999999h"}
    clear_error(served, tool, {"pattern": "x", **args} if tool == "grep" else args)


def test_grep_with_a_deeply_nested_pattern_is_refused_clearly(served: Served) -> None:
    clear_error(served, "grep", {"pattern": "(" * 5000 + ")" * 5000})


def test_grep_with_an_enormous_repeat_count_is_refused_clearly(served: Served) -> None:
    clear_error(served, "grep", {"pattern": "a{99999999999}"})


@pytest.mark.parametrize("since", ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"])
@pytest.mark.parametrize("tool", ["logs", "grep"])
def test_since_beyond_the_calendar_in_utc_is_refused_clearly(
    served: Served, tool: str, since: str
) -> None:
    clear_error(
        served, tool, {"pattern": "x", "since": since} if tool == "grep" else {"since": since}
    )
