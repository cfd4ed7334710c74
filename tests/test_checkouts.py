"""Parallel checkouts of one project on one tmux server (issue 11): ports, env files, secrets.

Two checkout folders share the tmux server and the state root, as two git worktrees of one
repository do on a developer's machine.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request

import anyio
import psutil
import pytest
from mcp import Client
from support import (
    Workspace,
    end_processes,
    events_of,
    run_monitor,
    slot_for,
    status_of,
    wait_until,
)

from taskmux_mcp.mcp_server import build_server
from taskmux_mcp.models import TaskState
from taskmux_mcp.ports import HIGH, LOW
from taskmux_mcp.processes import port_listeners
from taskmux_mcp.project import Project as Facade

SERVE = f"{sys.executable} -m http.server"
AUTO_API = f"""
name = "shop"
[tasks.api]
command = "{SERVE} $PORT --bind 127.0.0.1"
port = "auto"
health_url = "http://127.0.0.1:${{PORT}}/"
health_interval = 0.5
"""


def sibling(project: Workspace, name: str) -> Workspace:
    """A second checkout of the project: same tmux server and state root, another folder."""
    root = project.root.parent / name
    root.mkdir()
    return Workspace(
        root=root, state_dir=project.state_dir, server=project.server, env=project.env,
        facades=project.facades,
    )  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(url: str) -> int:
    """The status of an HTTP GET; 0 when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:
            return int(reply.status)
    except OSError:
        return 0


def start(facade: Facade, *tasks: str, **options: object) -> object:
    return anyio.run(lambda: facade.start(list(tasks), timeout=20, **options))  # type: ignore[arg-type]


# ------------------------------------------------------------------ ports


def test_a_second_checkout_never_kills_the_firsts_server_on_a_fixed_port(
    project: Workspace,
) -> None:
    port = free_port()
    config = f"""
        name = "shop"
        [tasks.api]
        command = "{SERVE} {port} --bind 127.0.0.1"
        port = {port}
        """
    project.write(config)
    other = sibling(project, "shop-wt2")
    other.write(config)
    first = project.open()
    assert start(first, "api").ok  # type: ignore[attr-defined]
    pid = status_of(first, "api").pid
    second = other.open()
    result = start(second, "api")
    error = result.tasks[0].error or ""  # type: ignore[attr-defined]
    assert not result.ok, result  # type: ignore[attr-defined]
    listener = psutil.Process(pid).children()[0].pid  # the pane runs `sh -c`, which forks it
    assert f"port {port} is in use by pid {listener} (" in error, error
    assert f"task 'api' of project 'shop' in {project.root}" in error, error
    assert 'port = "auto"' in error
    assert status_of(first, "api").state is TaskState.RUNNING
    assert status_of(first, "api").pid == pid and psutil.pid_exists(pid or 0)
    assert get(f"http://127.0.0.1:{port}/") == 200
    busy = events_of(second, "port_busy", "api")
    assert busy[0]["holders"][0]["checkout"] == str(project.root)


def test_auto_ports_let_both_checkouts_run_healthy_and_stay_put(project: Workspace) -> None:
    project.write(AUTO_API)
    other = sibling(project, "shop-wt2")
    other.write(AUTO_API)
    first, second = project.open(), other.open()
    for facade in (first, second):
        result = start(facade, "api")
        assert result.ok and result.tasks[0].health.value == "healthy", result  # type: ignore[attr-defined]
    ports = [status_of(f, "api").port for f in (first, second)]
    assert None not in ports and ports[0] != ports[1], ports
    assert all(LOW <= p < HIGH for p in ports if p is not None)
    for facade, port in zip((first, second), ports, strict=True):
        status = status_of(facade, "api")
        assert status.url == f"http://127.0.0.1:{port}/"
        assert get(f"http://127.0.0.1:{port}/") == 200
        environ = psutil.Process(status.pid).environ()
        assert environ["PORT"] == str(port) and environ["TASKMUX_PORT_API"] == str(port)
    # Sticky: across a restart, and across the tmux server being killed.
    assert anyio.run(lambda: first.restart(["api"], timeout=20)).ok
    assert status_of(first, "api").port == ports[0]
    project.server.kill()
    for pid in project.task_pids():
        os.kill(pid, signal.SIGKILL)
    assert start(first, "api").ok  # type: ignore[attr-defined]
    assert status_of(first, "api").port == ports[0]
    assert json.loads(first.paths.ports.read_text()) == {"api": ports[0]}
    down = anyio.run(first.down)
    assert down.ok and "api" in (down.message or ""), down
    assert not first.paths.ports.read_text().strip("{} \n")
    assert first.backend.snapshot_sync().session is None


def test_a_tasks_port_reaches_another_task_and_its_checks(project: Workspace) -> None:
    (project.root / "fetch.py").write_text(
        "import os, urllib.request as u\n"
        "url = 'http://127.0.0.1:' + os.environ['TASKMUX_PORT_API']\n"
        "print('got', u.urlopen(url).status, flush=True)\n"
    )
    fetch = f"{sys.executable} fetch.py"
    project.write(
        AUTO_API
        + f"""
        [tasks.web]
        command = "{fetch}; sleep 100000"
        depends_on = ["api"]
        health_check = "test -n \\"$TASKMUX_PORT_API\\" && test \\"$PORT\\" = ''"
        """
    )
    facade = project.open()
    result = start(facade, "web")
    assert result.ok, result  # type: ignore[attr-defined]
    wait_until(lambda: any("got 200" in line.text for line in facade.logs_sync(["web"]).lines))


def test_the_tasks_own_orphan_on_its_port_is_reclaimed(project: Workspace) -> None:
    port = free_port()
    project.write(
        f"""
        [tasks.api]
        command = "setsid {SERVE} {port} --bind 127.0.0.1 & sleep 100000"
        port = {port}
        """
    )
    facade = project.open()
    assert start(facade, "api").ok  # type: ignore[attr-defined]
    wait_until(lambda: get(f"http://127.0.0.1:{port}/") == 200)
    orphan = port_listeners(port)[0]
    project.server.kill()  # the setsid child survives its tmux server, still listening
    assert psutil.pid_exists(orphan.pid)
    assert start(facade, "api").ok  # type: ignore[attr-defined]
    wait_until(lambda: not psutil.pid_exists(orphan.pid) or psutil.Process(orphan.pid).status()
               == psutil.STATUS_ZOMBIE)  # fmt: skip


# ------------------------------------------------------------------ env files


def test_env_files_load_with_precedence_and_dotenv_syntax(project: Workspace) -> None:
    (project.root / ".env").write_text(
        '# project defaults\nexport A="from .env"\nB=from-dotenv\nC=${B}-expanded\nD=dotenv\n'
    )
    (project.root / "api.env").write_text("B=from-task-file\nD='task file'\n")
    project.write(
        """
        [tasks.api]
        command = "echo A=$A B=$B C=$C D=$D; sleep 100000"
        env_file = "api.env"
        env = { D = "from env" }
        [tasks.plain]
        command = "echo A=[$A]; sleep 100000"
        env_file = false
        """
    )
    facade = project.open()
    assert start(facade, "api", "plain").ok  # type: ignore[attr-defined]

    def line(task: str) -> str:
        lines = facade.logs_sync([task]).lines
        return lines[-1].text if lines else ""

    wait_until(lambda: line("api").startswith("A=") and line("plain").startswith("A="))
    assert line("api") == "A=from .env B=from-task-file C=from-dotenv-expanded D=from env"
    assert line("plain") == "A=[]"


def test_a_malformed_env_file_line_is_a_config_problem_with_its_line(project: Workspace) -> None:
    (project.root / ".env").write_text("GOOD=1\nthis is not an assignment\n")
    project.write('[tasks.api]\ncommand = "sleep 100000"\n')
    done = project.cli("start", "api")
    assert done.returncode == 2, done
    assert ".env:2" in done.stderr and "cannot be parsed" in done.stderr, done.stderr
    missing = project.write('[tasks.api]\ncommand = "sleep 1"\nenv_file = "nope.env"\n')
    done = project.cli("check")
    assert done.returncode == 2 and "nope.env does not exist" in done.stderr + done.stdout
    assert missing.exists()


# ------------------------------------------------------------------ secrets


SECRET = "sk-live-4f9a8b7c6d5e"


@pytest.mark.anyio
async def test_secrets_are_redacted_in_everything_agents_read(project: Workspace) -> None:
    (project.root / ".env").write_text(f"STRIPE_KEY={SECRET}\nDEBUG=1\n")
    project.write(
        f"""
        [tasks.api]
        command = "echo key is $STRIPE_KEY and token $API_TOKEN; echo debug $DEBUG; sleep 1; exit 3"
        env = {{ API_TOKEN = "tok-abcdef123456", PLAIN = "visible-value" }}
        restart_policy = "no"
        health_check = "false"
        [hooks]
        before_stop = "echo {SECRET} >&2; exit 1"
        """
    )
    facade = project.open()
    async with Client(build_server(slot_for(project)), mode="legacy") as client:
        started = await client.call_tool("start", {"tasks": ["api"], "timeout": 5})
        text = json.dumps(started.structured_content)
        assert SECRET not in text and "tok-abcdef123456" not in text
        assert "[redacted:STRIPE_KEY]" in text, text  # the verdict's log tail
        logs = await client.call_tool("logs", {"tasks": ["api"]})
        shown = json.dumps(logs.structured_content)
        assert "key is [redacted:STRIPE_KEY] and token [redacted:API_TOKEN]" in shown, shown
        assert "debug 1" in shown  # short and plain values stay
        found = await client.call_tool("grep", {"pattern": "key is"})
        assert "[redacted:STRIPE_KEY]" in json.dumps(found.structured_content)
        await client.call_tool("stop", {})  # its before_stop hook prints the secret
        events = json.dumps((await client.call_tool("events", {})).structured_content)
        assert "hook_failed" in events and SECRET not in events, events
        assert "[redacted:STRIPE_KEY]" in events
    raw = b"".join(p.read_bytes() for p in facade.paths.logs.glob("api*"))
    assert SECRET.encode() in raw  # the files keep everything
    cli = project.cli("logs", "api", "--json")
    assert SECRET not in cli.stdout and "[redacted:STRIPE_KEY]" in cli.stdout
    assert SECRET in project.cli("logs", "api", "--raw").stdout


# ------------------------------------------------------------------ every checkout at a glance


def test_status_all_lists_every_checkout_and_ignores_other_sessions(project: Workspace) -> None:
    project.write(AUTO_API)
    other = sibling(project, "shop-wt2")
    other.write(AUTO_API)
    first, second = project.open(), other.open()
    assert start(first, "api").ok and start(second, "api").ok  # type: ignore[attr-defined]
    project.server.cmd("new-session", "-d", "-s", "unrelated", "sleep 100000")
    done = project.cli("status", "--all", "--json")
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)["projects"]
    assert sorted(p["checkout"] for p in found) == sorted([str(project.root), str(other.root)])
    for entry, facade in ((p, f) for p in found for f in (first, second)):
        if entry["checkout"] == str(facade.config.root):
            api = entry["tasks"][0]
            assert api["state"] == "running" and api["port"] == status_of(facade, "api").port
    assert "unrelated" not in {p["session"] for p in found}
    table = project.cli("status", "--all").stdout
    assert str(other.root) in table and "running" in table


@pytest.mark.anyio
async def test_the_projects_resource_lists_every_checkout(project: Workspace) -> None:
    project.write(AUTO_API)
    other = sibling(project, "shop-wt2")
    other.write(AUTO_API)
    assert (await other.open().start(["api"], timeout=20)).ok
    async with Client(build_server(slot_for(project)), mode="legacy") as client:
        await client.call_tool("status", {})
        listed = await client.read_resource("taskmux://projects")
        data = json.loads(listed.contents[0].text)  # type: ignore[union-attr]
    assert [p["checkout"] for p in data["projects"]] == [str(other.root)]
    assert data["projects"][0]["tasks"][0]["port"] is not None


def test_monitors_in_both_checkouts_never_kill_each_others_server(project: Workspace) -> None:
    port = free_port()
    config = f"""
        name = "shop"
        [tasks.api]
        command = "{SERVE} {port} --bind 127.0.0.1"
        port = {port}
        restart_policy = "always"
        restart_backoff = 0
        max_restarts = 2
        """
    project.write(config)
    other = sibling(project, "shop-wt2")
    other.write(config)
    first, second = project.open(), other.open()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        run_monitor(project, procs, first)
        # The second checkout ran first; its server crashed, and meanwhile the first started.
        assert start(second, "api").ok  # type: ignore[attr-defined]
        os.kill(status_of(second, "api").pid or 0, signal.SIGKILL)
        wait_until(lambda: status_of(second, "api").state is not TaskState.RUNNING)
        assert start(first, "api").ok  # type: ignore[attr-defined]
        pid = status_of(first, "api").pid
        run_monitor(other, procs, second)
        # The second checkout's monitor restarts by its policy, is refused, and gives up.
        wait_until(lambda: events_of(second, "gave_up", "api") != [], timeout=20)
        assert len(events_of(second, "port_busy", "api")) == 2, second.events_sync(["api"])
        assert status_of(first, "api").pid == pid and get(f"http://127.0.0.1:{port}/") == 200
        assert events_of(first, "exited", "api") == []
    finally:
        end_processes(procs)


def test_inspect_shows_the_url_and_remove_releases_an_assigned_port(project: Workspace) -> None:
    project.write(AUTO_API)
    facade = project.open()
    assert start(facade, "api").ok  # type: ignore[attr-defined]
    port = status_of(facade, "api").port
    seen = anyio.run(lambda: facade.inspect("api"))
    assert seen.status.url == f"http://127.0.0.1:{port}/" and seen.status.port == port
    assert project.cli("stop", "api").returncode == 0
    done = project.cli("remove", "api")
    assert done.returncode == 0, done.stderr
    assert json.loads(facade.paths.ports.read_text()) == {}


def test_redaction_keeps_identifiers_and_a_malformed_line_never_shows_its_value(
    project: Workspace,
) -> None:
    (project.root / ".env").write_text("APP=shopfront\nHOST_NAME=localhost-box\n")
    project.write(
        """
        [tasks.shopfront]
        command = "echo serving shopfront; sleep 100000"
        """
    )
    facade = project.open()
    assert start(facade, "shopfront").ok  # type: ignore[attr-defined]
    shown = json.loads(project.cli("status", "--json").stdout)
    assert shown["tasks"][0]["name"] == "shopfront"  # an identifier, never redacted
    wait_until(lambda: facade.logs_sync(["shopfront"]).lines)
    logs = json.loads(project.cli("logs", "shopfront", "--json").stdout)
    assert "serving [redacted:APP]" in json.dumps(logs), logs
    (project.root / ".env").write_text('SECRET_TOKEN="hunter2-very-secret\n')
    done = project.cli("check")
    assert done.returncode == 2 and "hunter2" not in done.stdout + done.stderr, done
    assert "SECRET_TOKEN" in done.stdout + done.stderr
