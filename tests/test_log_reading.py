"""Reading logs as a newcomer does (issue 12): every line from the CLI, pages over MCP, grep
context blocks like GNU grep's, verdict tails without taskmux's own health probes."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from typing import Any

import pytest
from mcp import Client
from support import Workspace, slot_for, wait_until

from taskmux_mcp.mcp_server import build_server
from taskmux_mcp.models import ActionResult, LogsResult


@pytest.fixture
def anyio_backend() -> str:
    """Run async tests on asyncio."""
    return "asyncio"


def last_line(project: Workspace, task: str) -> str:
    """The newest line of a task's log, as the CLI prints it."""
    shown = project.cli("logs", task, "-n", "1").stdout.splitlines()
    return shown[-1] if shown else ""


def test_cli_logs_streams_every_line_asked_for(project: Workspace) -> None:
    project.write('[tasks.seq]\ncommand = "seq 1 100000; sleep 1000"\n')
    assert project.cli("start", "--no-wait").returncode == 0
    wait_until(lambda: last_line(project, "seq") == "100000", timeout=30, interval=0.2)
    every = project.cli("logs", "seq", "-n", "200000", "--since", "start")
    assert every.returncode == 0, every.stderr
    assert every.stdout.splitlines() == [str(i) for i in range(1, 100_001)]
    some = project.cli("logs", "seq", "-n", "60000", "--since", "start").stdout.splitlines()
    assert some[0] == "… 40000 earlier line(s) left out"
    assert some[1:] == [str(i) for i in range(40_001, 100_001)]
    shaped = project.cli("--json", "logs", "seq", "-n", "100000", "--since", "start")
    result = LogsResult.model_validate_json(shaped.stdout)
    assert [line.text for line in result.lines] == [str(i) for i in range(1, 100_001)]
    assert (result.truncated, result.omitted) == (False, 0)
    assert result.lines[0].task == "seq" and result.lines[0].time is not None


async def call(client: Client, tool: str, **arguments: Any) -> dict[str, Any]:
    """A tool call that must succeed: its structured content."""
    result = await client.call_tool(tool, arguments)
    assert not result.is_error, result.content
    assert result.structured_content is not None
    return dict(result.structured_content)


@pytest.mark.anyio
async def test_mcp_logs_pages_back_with_no_line_lost_or_repeated(project: Workspace) -> None:
    project.write(
        """
        [tasks.seq]
        command = "seq 1 12000; sleep 1000"
        [tasks.ticker]
        command = "i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.02; done"
        """
    )
    assert project.cli("start").returncode == 0
    wait_until(lambda: last_line(project, "seq") == "12000", timeout=20, interval=0.2)
    async with Client(build_server(slot_for(project)), mode="legacy") as client:
        page = await call(client, "logs", tasks=["seq", "ticker"], lines=5000)
        assert page["truncated"] and "KiB" in page["notice"]  # the reply budget cut it too
        pages = [page]
        while page["truncated"]:
            page = await call(client, "logs", tasks=["seq", "ticker"], before=page["cursor"])
            pages.insert(0, page)
    lines = [line for page in pages for line in page["lines"]]
    assert len(pages) > 3
    assert [line["time"] for line in lines] == sorted(line["time"] for line in lines)
    by_task = {
        task: [ln["text"] for ln in lines if ln["task"] == task] for task in ("seq", "ticker")
    }
    assert by_task["seq"][0].startswith("--- taskmux: run 1 started")
    assert by_task["seq"][1:] == [str(i) for i in range(1, 12_001)]
    assert by_task["ticker"][0].startswith("--- taskmux: run 1 started")
    ticks = [int(text.split()[1]) for text in by_task["ticker"][1:]]
    assert ticks == list(range(1, len(ticks) + 1))
    assert int(last_line(project, "ticker").split()[1]) > ticks[-1]  # it grew while we paged


def gnu_grep() -> str:
    """Path of a GNU grep, or skip."""
    path = shutil.which("grep")
    if path is None or "GNU" not in subprocess.check_output([path, "--version"], text=True):
        pytest.skip("GNU grep is needed to compare with")
    return path


def test_cli_grep_context_blocks_are_merged_like_gnu_grep(project: Workspace) -> None:
    grep = gnu_grep()
    project.write('[tasks.seq]\ncommand = "seq 1 60; sleep 1000"\n')
    assert project.cli("start", "--no-wait").returncode == 0
    wait_until(lambda: last_line(project, "seq") == "60", timeout=10)
    pattern = "^(5|6|9|20|22|40)$"
    ours = project.cli("grep", pattern, "seq", "-C", "2")
    assert ours.returncode == 0, ours.stderr
    seq = "".join(f"{i}\n" for i in range(1, 61))
    theirs = subprocess.check_output([grep, "-E", "-C", "2", pattern], input=seq, text=True)
    shown = [re.sub(r"^seq[-:]  ", "", line) for line in ours.stdout.splitlines()]
    assert shown == theirs.splitlines()
    assert shown.count("--") == 2 and len(shown) == 9 + 7 + 5 + 2
    found = json.loads(project.cli("--json", "grep", pattern, "seq", "-C", "2").stdout)
    given = [t for m in found["matches"] for t in [*m["before"], m["line"], *m["after"]]]
    assert given == [line for line in shown if line != "--"]
    assert [m["continues"] for m in found["matches"]] == [False, True, True, False, True, False]

    assert project.cli("restart", "seq").returncode == 0
    wait_until(lambda: last_line(project, "seq") == "60", timeout=10)
    runs = json.loads(project.cli("--json", "grep", "^5$", "seq", "-C", "0").stdout)
    assert len(runs["matches"]) == 2  # the CLI searches every run


SERVER = """
import http.server, os, sys

class Handler(http.server.BaseHTTPRequestHandler):
    requests = 0

    def do_GET(self):
        Handler.requests += 1
        print("request from", self.headers.get("User-Agent"), flush=True)
        self.send_response(503)
        self.end_headers()
        if Handler.requests == 5:
            print("own line: giving up after 5 requests", flush=True)
            sys.stderr.flush()
            os._exit(3)

for i in range(1, 21):
    print(f"own line {i}", flush=True)
http.server.HTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"""


def test_crash_verdict_log_tail_leaves_out_health_probes(project: Workspace) -> None:
    (project.root / "server.py").write_text(SERVER)
    project.write(
        """
        [tasks.api]
        command = "python3 -u server.py"
        port = "auto"
        health_url = "http://127.0.0.1:${PORT}/health"
        restart_policy = "no"
        """
    )
    started = project.cli("--json", "start", "--timeout", "20")
    assert started.returncode == 1, started.stderr
    verdict = ActionResult.model_validate_json(started.stdout).tasks[0]
    assert (verdict.action, verdict.exit_code) == ("crashed", 3), verdict
    assert verdict.log_tail == [f"own line {i}" for i in range(7, 21)] + [
        "own line: giving up after 5 requests"
    ]
    everything = project.cli("logs", "api", "--since", "start").stdout
    assert everything.count('"GET /health HTTP/1.1" 503') == 5
    assert everything.count("request from taskmux-health") == 5
