"""MCP server figures (issue 5): status latency, startup time and memory, answer sizes.

Run: .venv/bin/python bench/bench_mcp.py   (about half a minute). Every tmux server, task and
state folder lives in one temp folder with a private tmux socket; all are removed at the end.

- `status` tool-call latency (over stdio) with 30 tasks, against one raw `tmux list-panes -a`
  in the same run (goal <= 3x);
- spawn-to-initialize-reply time and RSS of taskmux-mcp against a bare mcp SDK stdio server
  with one tool (goal <= 1.3x each);
- bytes of the answers to (a) start everything, (b) why did a task fail (inspect), (c) restart a
  task (with its log_tail), (d) grep an error, on examples/webapp.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import psutil
from mcp import Client
from mcp.client.stdio import StdioServerParameters

REPO = Path(__file__).resolve().parent.parent
ENTRY = Path(sys.executable).with_name("taskmux-mcp")
TASKS = 30
RUNS = 30
SPAWNS = 5
BARE_SERVER = """\
from mcp.server import MCPServer

server = MCPServer("bare")


@server.tool()
def echo(text: str) -> str:
    \"\"\"Echo the text.\"\"\"
    return text


server.run()
"""
INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "bench", "version": "1"},
    },
}


class Sandbox:
    """A temp folder with its own tmux server (TMUX_TMPDIR + socket name) and state folder."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="tmxbench"))
        self.socket = "bench"
        self.env = {
            **os.environ,
            "TMUX_TMPDIR": str(self.root / "tmux"),
            "TASKMUX_STATE_DIR": str(self.root / "state"),
            "TASKMUX_TMUX_SOCKET": self.socket,
            "HOME": str(self.root / "home"),
        }
        self.env.pop("TMUX", None)
        self.env.pop("TASKMUX_PROJECT", None)
        for name in ("tmux", "home"):
            (self.root / name).mkdir()

    def tmux(self, *args: str) -> subprocess.CompletedProcess[str]:
        """A tmux command on the private server."""
        return subprocess.run(
            ["tmux", "-L", self.socket, *args],
            capture_output=True,
            text=True,
            env=self.env,
            check=False,
        )

    def close(self) -> None:
        """Kill the tmux server and every task process, remove the folder."""
        marked = []
        for proc in psutil.process_iter(["pid"]):
            try:
                if str(self.root) in proc.environ().get("TASKMUX_STATE_DIR", ""):
                    marked.append(proc)
            except (psutil.Error, OSError):
                continue
        self.tmux("kill-server")
        for proc in marked:
            try:
                if proc.pid != os.getpid():
                    proc.kill()
            except psutil.Error:
                continue
        shutil.rmtree(self.root, ignore_errors=True)

    def params(self, project: Path) -> StdioServerParameters:
        """taskmux-mcp for a project, started as an agent client starts it."""
        return StdioServerParameters(
            command=str(ENTRY), args=["--project", str(project)], env=self.env, cwd=str(project)
        )


def median_ms(samples: list[float]) -> float:
    """Median of seconds, in milliseconds."""
    return statistics.median(samples) * 1000


def verdict(ratio: float, goal: float) -> str:
    """met / missed."""
    return "met" if ratio <= goal else "MISSED"


async def timed(fn: Callable[[], Awaitable[Any]], runs: int) -> list[float]:
    """Durations of runs calls after one warm-up."""
    await fn()
    out = []
    for _ in range(runs):
        began = time.perf_counter()
        await fn()
        out.append(time.perf_counter() - began)
    return out


class RawSession:
    """A minimal JSON-RPC client over a server's stdin/stdout (no client-side schema checks)."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path) -> None:
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            env=env, cwd=cwd,
        )  # fmt: skip
        self.next_id = 1

    def request(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """Send a request; its reply (notifications in between are skipped)."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        ident = self.next_id
        self.next_id += 1
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": ident, "method": method}
        if params is not None:
            message["params"] = params
        self.proc.stdin.write((json.dumps(message) + "\n").encode())
        self.proc.stdin.flush()
        while True:
            reply = json.loads(self.proc.stdout.readline())
            if reply.get("id") == ident:
                return dict(reply)

    def initialize(self) -> None:
        """The handshake."""
        assert self.proc.stdin is not None
        self.request("initialize", INIT["params"])
        self.proc.stdin.write(b'{"jsonrpc":"2.0","method":"notifications/initialized"}\n')
        self.proc.stdin.flush()

    def close(self) -> None:
        """EOF on stdin; wait for the server to leave."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def settle(session: RawSession, timeout: float = 30) -> None:
    """Wait until every task runs with the same pid across two monitor sweeps."""
    deadline = time.monotonic() + timeout
    previous: list[Any] = []
    while time.monotonic() < deadline:
        reply = session.request("tools/call", {"name": "status", "arguments": {}})
        tasks = reply["result"]["structuredContent"]["tasks"]
        pids = [t["pid"] if t["state"] == "running" else None for t in tasks]
        if None not in pids and pids == previous:
            return
        previous = pids
        time.sleep(2.5)
    raise AssertionError("the 30 tasks did not settle")


def status_latency(box: Sandbox) -> None:
    """status over stdio with 30 tasks vs one `tmux list-panes -a`."""
    project = box.root / "thirty"
    project.mkdir()
    body = "".join(f'[tasks.t{i:02d}]\ncommand = "sleep 100000"\n' for i in range(TASKS))
    (project / "taskmux.toml").write_text('name = "thirty"\n' + body)
    session = RawSession([str(ENTRY), "--project", str(project)], box.env, project)
    try:
        session.initialize()
        started = session.request("tools/call", {"name": "start", "arguments": {"wait": False}})
        assert started["result"]["structuredContent"]["ok"], started
        settle(session)
        fmt = "#{session_name} #{window_id} #{pane_id} #{pane_pid} #{pane_dead} #{pane_dead_status}"
        samples, raw = [], []
        size = 0
        for _ in range(RUNS + 1):  # interleaved, so both see the same machine load
            began = time.perf_counter()
            reply = session.request("tools/call", {"name": "status", "arguments": {}})
            samples.append(time.perf_counter() - began)
            assert len(reply["result"]["structuredContent"]["tasks"]) == TASKS
            size = len(reply["result"]["content"][0]["text"])
            began = time.perf_counter()
            done = box.tmux("list-panes", "-a", "-F", fmt)
            raw.append(time.perf_counter() - began)
            assert done.returncode == 0 and len(done.stdout.splitlines()) >= TASKS
    finally:
        session.close()
    ours, theirs = median_ms(samples[1:]), median_ms(raw[1:])
    ratio = ours / theirs
    print(f"status tool call, {TASKS} tasks (JSON-RPC over stdio, median of {RUNS}): {ours:.1f} ms")
    print(f"one raw `tmux list-panes -a` (median of {RUNS}):                    {theirs:.1f} ms")
    print(f"  ratio {ratio:.2f}x (goal <= 3x: {verdict(ratio, 3)}); status text {size} bytes")


def spawn(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[float, int]:
    """Seconds from spawn to the initialize reply, and RSS once serving (after tools/list)."""
    began = time.perf_counter()
    proc = subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env,
        cwd=cwd,
    )  # fmt: skip
    assert proc.stdin is not None and proc.stdout is not None
    try:
        proc.stdin.write((json.dumps(INIT) + "\n").encode())
        proc.stdin.flush()
        reply = json.loads(proc.stdout.readline())
        elapsed = time.perf_counter() - began
        assert reply["id"] == 1 and "result" in reply, reply
        proc.stdin.write(b'{"jsonrpc":"2.0","method":"notifications/initialized"}\n')
        proc.stdin.write(b'{"jsonrpc":"2.0","id":2,"method":"tools/list"}\n')
        proc.stdin.flush()
        assert json.loads(proc.stdout.readline())["id"] == 2
        time.sleep(1.0)  # let background work (monitor, config watcher) settle
        rss = psutil.Process(proc.pid).memory_info().rss
    finally:
        proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
    return elapsed, rss


def startup(box: Sandbox) -> None:
    """taskmux-mcp against a bare SDK server: time to initialize reply, and RSS."""
    bare = box.root / "bare_server.py"
    bare.write_text(BARE_SERVER)
    project = box.root / "thirty"
    ours_t, ours_m, bare_t, bare_m = [], [], [], []
    for _ in range(SPAWNS):
        t, m = spawn([str(ENTRY), "--project", str(project)], box.env, project)
        ours_t.append(t)
        ours_m.append(m)
        t, m = spawn([sys.executable, str(bare)], box.env, box.root)
        bare_t.append(t)
        bare_m.append(m)
    t_ratio = statistics.median(ours_t) / statistics.median(bare_t)
    m_ratio = statistics.median(ours_m) / statistics.median(bare_m)
    mb = 1024 * 1024
    print(f"spawn -> initialize reply (median of {SPAWNS}): taskmux-mcp "
          f"{median_ms(ours_t):.0f} ms, bare SDK server {median_ms(bare_t):.0f} ms: "
          f"{t_ratio:.2f}x (goal <= 1.3x: {verdict(t_ratio, 1.3)})")  # fmt: skip
    print(f"RSS while serving: taskmux-mcp {statistics.median(ours_m) / mb:.1f} MB, bare SDK "
          f"server {statistics.median(bare_m) / mb:.1f} MB: {m_ratio:.2f}x "
          f"(goal <= 1.3x: {verdict(m_ratio, 1.3)})")  # fmt: skip


def port_free(port: int) -> bool:
    """Nobody listens on 127.0.0.1:port."""
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def answer_sizes(box: Sandbox) -> None:
    """Bytes of the four one-call answers on examples/webapp."""
    if not port_free(8077):
        print("answer sizes: skipped, port 8077 (examples/webapp) is in use")
        return
    project = box.root / "webapp"
    shutil.copytree(REPO / "examples" / "webapp", project)
    rows: list[tuple[str, int, int, bool]] = []

    async def run() -> None:
        async with Client(box.params(project), mode="legacy") as client:

            async def ask(label: str, tool: str, **arguments: Any) -> dict[str, Any]:
                result = await client.call_tool(tool, arguments)
                text = result.content[0].text if result.content else ""  # type: ignore[union-attr]
                wire = result.model_dump_json(by_alias=True, exclude_none=True)
                rows.append((label, len(text.encode()), len(wire.encode()), not result.is_error))
                if os.environ.get("BENCH_SHOW"):
                    print(label, text)
                return result.structured_content or {}

            started = await ask("(a) start everything", "start")
            if not started.get("ok"):
                print(f"  note: start everything failed: {started.get('message')}; once more")
                rows.pop()
                started = await ask("(a) start everything", "start")
                assert started.get("ok"), started
            await ask("(c) restart api, with its log_tail", "restart", tasks=["api"])
            (project / "data.json").unlink()  # the API now fails its requests; the worker crashes
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                events = await client.call_tool("events", {"task": "worker", "limit": 5})
                kinds = [e["type"] for e in (events.structured_content or {}).get("events", [])]
                if "exited" in kinds:
                    break
                await anyio.sleep(0.3)
            await ask("(b) why did worker fail (inspect)", "inspect", task="worker")
            await ask("(d) grep an error, all logs", "grep", pattern="Error|Traceback")
            await client.call_tool("stop", {})

    anyio.run(run)
    print("answer sizes on examples/webapp (text the model reads / whole JSON-RPC result):")
    for label, text, wire, ok in rows:
        print(f"  {label:38s} {text:6d} B / {wire:6d} B{'' if ok else '  (tool error)'}")


def main() -> None:
    """Run every figure in one sandbox."""
    if not ENTRY.exists():
        sys.exit(f"{ENTRY} is missing: install the package (pip install -e .)")
    box = Sandbox()
    try:
        when = time.strftime("%Y-%m-%d %H:%M")
        print(f"taskmux-mcp MCP figures ({when}, Python {platform.python_version()}, "
              f"{os.cpu_count()} CPUs)")  # fmt: skip
        status_latency(box)
        startup(box)
        answer_sizes(box)
    finally:
        box.close()


if __name__ == "__main__":
    main()
