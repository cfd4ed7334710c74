"""The `taskmux` CLI as a subprocess: exit codes, --json shapes, errors without tracebacks."""

from __future__ import annotations

import argparse
import itertools
import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from support import Workspace, wait_until

from taskmux_mcp.cli import build_parser
from taskmux_mcp.endpoint import running_server
from taskmux_mcp.models import ActionResult, HealthResult, StatusResult, TaskResult, TaskState


def no_traceback(proc: object) -> None:
    """Fail if a subprocess printed a Python traceback."""
    assert "Traceback" not in proc.stderr  # type: ignore[attr-defined]
    assert "Traceback" not in proc.stdout  # type: ignore[attr-defined]


def test_start_status_stop_round_trip_with_json_shapes(project: Workspace) -> None:
    project.write(
        """
        name = "clidemo"
        [tasks.api]
        command = "echo api up; sleep 1000"
        [tasks.setup]
        command = "echo done"
        oneshot = true
        """
    )
    started = project.cli("--json", "start")
    assert started.returncode == 0, started.stderr
    result = ActionResult.model_validate_json(started.stdout)
    assert result.ok and {t.name for t in result.tasks} == {"api", "setup"}
    shown = project.cli("status", "--json")
    assert shown.returncode == 0
    status = StatusResult.model_validate_json(shown.stdout)
    states = {t.name: t.state.value for t in status.tasks}
    assert states == {"api": "running", "setup": "exited"}
    assert status.project == "clidemo" and status.session == "clidemo"
    human = project.cli("ls")
    assert "api" in human.stdout and "running" in human.stdout
    logs = project.cli("logs", "api")
    assert "api up" in logs.stdout
    stopped = project.cli("stop")
    assert stopped.returncode == 0
    assert project.task_pids() == []


def test_failed_start_exits_1_with_the_reason(project: Workspace) -> None:
    project.write(
        """
        [tasks.broken]
        command = "echo 'ImportError: no module named flask'; sleep 0.1; exit 2"
        restart_policy = "no"
        """
    )
    proc = project.cli("start")
    assert proc.returncode == 1
    assert "exited with status 2" in proc.stdout
    assert "ImportError: no module named flask" in proc.stdout
    no_traceback(proc)


@pytest.mark.parametrize(
    ("toml", "needle"),
    [
        ("[tasks.api\ncommand = 'x'\n", "line 1"),
        ("[tasks.api]\ncomand = 'x'\n", "did you mean 'command'"),
        (
            "[tasks.a]\ncommand='x'\ndepends_on=['b']\n[tasks.b]\ncommand='y'\ndepends_on=['a']\n",
            "->",
        ),
        ("[tasks.'a b']\ncommand = 'x'\n", "a b"),
    ],
)
def test_bad_config_exits_2_without_traceback(project: Workspace, toml: str, needle: str) -> None:
    (project.root / "taskmux.toml").write_text(toml)
    for args in (["status"], ["start"], ["--json", "status"]):
        proc = project.cli(*args)
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
        assert needle in proc.stderr
        no_traceback(proc)


def test_unknown_task_lists_the_known_ones(project: Workspace) -> None:
    project.write(
        """
        [tasks.api]
        command = "sleep 1000"
        [tasks.web]
        command = "sleep 1000"
        """
    )
    for args in (["start", "nope"], ["stop", "nope"], ["inspect", "nope"], ["logs", "nope"],
                 ["kill", "../etc"], ["grep", "x", "nope"]):  # fmt: skip
        proc = project.cli(*args)
        assert proc.returncode == 2, args
        assert "known tasks: api, web" in proc.stderr
        no_traceback(proc)


def test_missing_project_says_where_it_looked(tmp_path: Path, project: Workspace) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = project.cli("--project", str(empty), "status")
    assert proc.returncode == 2
    assert "taskmux init" in proc.stderr and str(empty) in proc.stderr
    no_traceback(proc)


def test_usage_errors_exit_2(project: Workspace) -> None:
    project.write('[tasks.api]\ncommand = "sleep 1"\n')
    for args in (["frobnicate"], ["kill"], ["start", "--timeout", "soon"], ["grep", "(unclosed"],
                 ["logs", "--since", "yesterday-ish"], ["start", "--timeout", "-5"]):  # fmt: skip
        proc = project.cli(*args)
        assert proc.returncode == 2, (args, proc.stderr)
        assert proc.stderr.strip()
        no_traceback(proc)


def test_add_and_remove_keep_comments(project: Workspace) -> None:
    path = project.write(
        """
        # my project
        name = "keep"

        # the api server
        [tasks.api]
        command = "sleep 1000"  # inline
        """
    )
    before = path.read_text()
    added = project.cli("add", "worker", "sleep 5", "--depends-on", "api", "--port", "9999")
    assert added.returncode == 0, added.stderr
    text = path.read_text()
    assert "# the api server" in text and "# inline" in text and "[tasks.worker]" in text
    assert project.cli("add", "worker", "x").returncode == 2
    removed = project.cli("remove", "worker")
    assert removed.returncode == 0, removed.stderr
    assert path.read_text() == before


def test_check_reports_missing_cwd_and_command(project: Workspace) -> None:
    project.write(
        """
        [tasks.api]
        command = "definitely-not-a-command-xyz --serve"
        [tasks.web]
        command = "sleep 1"
        cwd = "no/such/dir"
        """
    )
    proc = project.cli("check")
    assert proc.returncode == 2
    assert "definitely-not-a-command-xyz" in proc.stderr
    assert "no/such/dir" in proc.stderr
    project.write('[tasks.api]\ncommand = "sleep 1"\n')
    assert project.cli("check").returncode == 0


def test_health_and_inspect(project: Workspace) -> None:
    project.write(
        """
        [tasks.api]
        command = "sleep 1000"
        health_check = "true"
        [tasks.down]
        command = "sleep 1000"
        health_check = "echo nope; exit 1"
        auto_start = false
        """
    )
    assert project.cli("start").returncode == 0
    proc = project.cli("--json", "health")
    assert proc.returncode == 1
    health = HealthResult.model_validate_json(proc.stdout)
    assert {r.name: r.healthy for r in health.tasks} == {"api": True, "down": False}
    inspect = json.loads(project.cli("--json", "inspect", "api").stdout)
    assert inspect["status"]["state"] == "running"
    assert inspect["processes"] and inspect["pane_id"].startswith("%")


def test_status_costs_at_most_two_tmux_spawns_for_30_tasks(
    project: Workspace, tmp_path: Path
) -> None:
    tasks = "".join(f'[tasks.t{i}]\ncommand = "sleep 1000"\n' for i in range(30))
    project.write(tasks)
    env = {**project.env, "TASKMUX_HOSTED_MONITOR": "0"}
    project.env = env
    assert project.cli("start", "--no-wait").returncode == 0
    wrapper_dir = tmp_path / "wrap"
    wrapper_dir.mkdir()
    count_file = tmp_path / "spawns.txt"
    real = next(
        Path(d) / "tmux"
        for d in os.environ["PATH"].split(os.pathsep)
        if (Path(d) / "tmux").is_file()
    )
    wrapper = wrapper_dir / "tmux"
    wrapper.write_text(f'#!/bin/sh\necho "$*" >> {count_file}\nexec {real} "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IEXEC)
    project.env = {**env, "PATH": f"{wrapper_dir}{os.pathsep}{env['PATH']}"}
    proc = project.cli("--json", "status")
    assert proc.returncode == 0, proc.stderr
    status = StatusResult.model_validate_json(proc.stdout)
    assert len(status.tasks) == 30
    assert all(t.state.value == "running" for t in status.tasks)
    spawns = count_file.read_text().splitlines()
    assert 1 <= len(spawns) <= 2, spawns


def test_attach_dry_run_targets_the_session_and_window(project: Workspace) -> None:
    project.write('name = "att"\n[tasks.api]\ncommand = "sleep 1000"\n')
    assert project.cli("start").returncode == 0
    proc = project.cli("attach", "api", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert "attach-session" in proc.stdout and "-t @" in proc.stdout


def test_hosted_monitor_restarts_a_crash_after_the_cli_exits(project: Workspace) -> None:
    project.write(
        """
        [tasks.flaky]
        command = "test -f crashed || { touch crashed; echo crashing; exit 1; }; sleep 1000"
        restart_backoff = 1.0
        """
    )
    proc = project.cli("start", "--no-wait")
    assert proc.returncode == 0, proc.stderr

    def restarted() -> bool:
        shown = StatusResult.model_validate_json(project.cli("--json", "status").stdout)
        task = shown.tasks[0]
        return shown.monitor.acting and task.state.value == "running" and task.restarts == 1

    wait_until(restarted, timeout=20, interval=0.3)
    status = StatusResult.model_validate_json(project.cli("--json", "status").stdout)
    assert status.monitor.host == "tmux"


def test_hosted_monitor_ends_with_the_last_task_window(project: Workspace) -> None:
    project.write('name = "ends"\n[tasks.api]\ncommand = "sleep 1000"\n')
    assert project.cli("start").returncode == 0

    def windows() -> list[str]:
        out = project.server.cmd("list-windows", "-a", "-F", "#{@taskmux_task}", check=False)
        return out.stdout.split()

    wait_until(lambda: sorted(windows()) == ["_monitor", "api"])
    assert project.cli("kill", "api").returncode == 0
    wait_until(lambda: windows() == [], timeout=15, interval=0.2)
    assert project.server.cmd("has-session", "-t", "=ends", check=False).returncode != 0


def test_logs_grep_events_and_follow(project: Workspace) -> None:
    project.write(
        """
        [tasks.api]
        command = "for i in 1 2 3; do echo \\"req $i ok\\"; done; echo 'ERROR db down'; sleep 1000"
        [tasks.ticker]
        command = "i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.2; done"
        """
    )
    assert project.cli("start").returncode == 0
    wait_until(lambda: "ERROR db down" in project.cli("logs", "api").stdout)
    grep = project.cli("--json", "grep", "error", "-i", "-C", "1")
    assert grep.returncode == 0, grep.stderr
    matches = json.loads(grep.stdout)["matches"]
    assert [(m["task"], m["line"], m["before"]) for m in matches] == [
        ("api", "ERROR db down", ["req 3 ok"])
    ]
    assert project.cli("grep", "no-such-thing-anywhere").returncode == 1
    events = json.loads(project.cli("--json", "events", "-n", "10").stdout)["events"]
    assert {(e["type"], e["task"], e["cause"]) for e in events} >= {
        ("started", "api", "user"),
        ("started", "ticker", "user"),
    }
    exe = Path(sys.executable).with_name("taskmux")
    follow = subprocess.Popen(
        [str(exe), "--project", str(project.root), "logs", "-f", "ticker", "-n", "1"],
        stdout=subprocess.PIPE,
        text=True,
        env=project.env,
    )
    try:
        assert follow.stdout is not None
        seen = [follow.stdout.readline().strip() for _ in range(4)]
        numbers = [int(line.split()[-1]) for line in seen]
        assert numbers == sorted(numbers) and len(set(numbers)) == 4, seen
    finally:
        follow.terminate()
        follow.wait(timeout=10)


def test_mcp_config_clients_match_the_renderer(project: Workspace) -> None:
    from taskmux_mcp.agent_configs import CLIENTS
    from taskmux_mcp.cli import MCP_CLIENTS

    assert tuple(CLIENTS) == MCP_CLIENTS
    project.write('[tasks.api]\ncommand = "sleep 1"\n')
    proc = project.cli("mcp-config", "claude")
    assert proc.returncode == 0, proc.stderr
    entry = json.loads(proc.stdout)["mcpServers"]["taskmux"]
    assert entry["args"] == ["--project", str(project.root)]
    assert entry["command"].endswith("taskmux-mcp")


def test_bridge_and_bridge_call_from_the_cli(project: Workspace) -> None:
    import signal

    project.write('[tasks.api]\ncommand = "sleep 1000"\n')
    exe = Path(sys.executable).with_name("taskmux")
    bridge = subprocess.Popen(
        [str(exe), "--project", str(project.root), "bridge", "--port", "0"],
        env=project.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        info = wait_until(lambda: list(project.state_dir.glob("*/server.json")), timeout=20)[0]
        assert stat.S_IMODE(info.stat().st_mode) == 0o600
        wait_until(lambda: running_server(info), timeout=20)
        started = project.cli("bridge-call", "start", '{"tasks": ["api"]}')
        assert started.returncode == 0, started.stderr
        assert json.loads(started.stdout)["ok"] is True
        shown = project.cli("bridge-call", "status")
        assert json.loads(shown.stdout)["tasks"][0]["state"] == "running"
        bad = project.cli("bridge-call", "start", '{"tasks": ["nope"]}')
        assert bad.returncode == 1 and "known tasks: api" in (bad.stdout + bad.stderr)
        assert project.cli("bridge-call", "status", "{not json").returncode == 2
        assert project.cli("bridge", "--host", "0.0.0.0", "--port", "0").returncode == 2
    finally:
        bridge.send_signal(signal.SIGTERM)
        assert bridge.wait(timeout=15) == 0
    assert running_server(info) is None
    assert project.cli("bridge-call", "status").returncode == 2


def test_the_cli_does_not_import_the_mcp_sdk() -> None:
    code = (
        "import sys\n"
        "from taskmux_mcp.cli import build_parser\n"
        "build_parser()\n"
        "print(sorted(m for m in sys.modules if m == 'mcp' or m.startswith('mcp.')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_version_is_printed(project: Workspace) -> None:
    done = project.cli("--version")
    assert done.returncode == 0 and done.stdout.startswith("taskmux "), done
    assert done.stdout.split()[1][0].isdigit(), done.stdout


def _taskmux(project: Workspace, *args: str) -> subprocess.Popen[str]:
    exe = Path(sys.executable).with_name("taskmux")
    return subprocess.Popen(
        [str(exe), "--project", str(project.root), *args],
        env=project.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_daemon_is_the_bridge_and_answers_a_taskmux_03_script(project: Workspace) -> None:
    from websockets.sync.client import connect

    project.write('[tasks.api]\ncommand = "sleep 1000"\n')
    daemon = _taskmux(project, "daemon", "--port", "0", "--host", "localhost")
    try:
        info_path = wait_until(lambda: list(project.state_dir.glob("*/server.json")), timeout=20)
        info = wait_until(lambda: running_server(info_path[0]), timeout=20)
        assert info.host == "127.0.0.1"
        with connect(f"ws://127.0.0.1:{info.port}/?token={info.token}", proxy=None) as ws:
            ws.send(json.dumps({"command": "start", "params": {"task": "api"}}))
            started = json.loads(ws.recv(timeout=30))
            ws.send(json.dumps({"command": "status"}))
            status = json.loads(ws.recv(timeout=10))
        assert started["success"] is True and started["message"] == "api: started, running"
        assert status["tasks"]["api"]["running"] is True and status["session_exists"] is True
        shown = StatusResult.model_validate_json(project.cli("--json", "status").stdout)
        assert shown.monitor.acting and shown.monitor.host == "serve"
        assert shown.monitor.pid == daemon.pid
    finally:
        daemon.send_signal(signal.SIGINT)
        _, err = daemon.communicate(timeout=15)
    assert daemon.returncode == 0, err
    assert "serving this project on http://127.0.0.1:" in err and "Traceback" not in err


def test_watch_is_the_monitor_and_reloads_taskmux_toml(project: Workspace) -> None:
    project.write('[tasks.a]\ncommand = "sleep 1000"\n')
    watch = _taskmux(project, "watch")
    try:

        def acting_pid() -> int | None:
            shown = StatusResult.model_validate_json(project.cli("--json", "status").stdout)
            return shown.monitor.pid if shown.monitor.acting else None

        wait_until(lambda: acting_pid() == watch.pid, timeout=20, interval=0.2)
        project.write('[tasks.a]\ncommand = "sleep 1000"\n[tasks.b]\ncommand = "sleep 1000"\n')

        def state_of_b() -> str:
            shown = StatusResult.model_validate_json(project.cli("--json", "status").stdout)
            return next(t.state.value for t in shown.tasks if t.name == "b")

        wait_until(lambda: state_of_b() == "running", timeout=20, interval=0.2)
        events = json.loads(project.cli("--json", "events").stdout)["events"]
        reloads = [e["details"] for e in events if e["type"] == "config_reloaded"]
        assert [details["added"] for details in reloads] == [["b"]]
    finally:
        watch.send_signal(signal.SIGINT)
        _, err = watch.communicate(timeout=15)
    assert watch.returncode == 0, err
    assert "reloads" in err and "Traceback" not in err


def test_every_option_has_help_and_shows_its_default() -> None:
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    missing = [
        f"{name} {action.dest}"
        for name, sub in commands.choices.items()
        for action in sub._actions
        if not action.help and action.dest != "help"
    ]
    assert missing == []
    texts = {name: " ".join(sub.format_help().split()) for name, sub in commands.choices.items()}
    assert "seconds to wait at most (default: 60)" in texts["start"]
    assert "how many of the last lines (default: 100)" in texts["logs"]
    assert "else 8765)" in texts["daemon"] and "(default: 127.0.0.1)" in texts["bridge"]
    assert "(default: None)" not in "".join(texts.values())
    assert "(default: False)" not in "".join(texts.values())
    assert "reloaded when it changes" in " ".join(parser.format_help().split())


def test_results_name_each_outcome_once_and_count_in_good_english(project: Workspace) -> None:
    project.write(
        """
        [tasks.setup]
        command = "echo done"
        restart_policy = "no"
        [tasks.web]
        command = "sleep 1000"
        depends_on = ["setup"]
        """
    )
    started = project.cli("start")
    assert started.returncode == 0, started.stderr
    assert "ok  setup: exited (exit 0" in started.stdout
    assert "ok  web: started, running (pid" in started.stdout
    stopped = project.cli("stop")
    assert "web: stopped (" in stopped.stdout and "setup: already exited (" in stopped.stdout
    for output in (started.stdout, stopped.stdout):
        for line in output.splitlines():
            words = line.replace(",", " ").split()
            assert all(a != b for a, b in itertools.pairwise(words)), line
    assert project.cli("check").stdout.endswith("ok (2 tasks)\n")
    project.write('[tasks.only]\ncommand = "sleep 1"\n')
    assert project.cli("check").stdout.endswith("ok (1 task)\n")

    def outcome(action: str, state: TaskState) -> str:
        return TaskResult(name="t", ok=True, action=action, state=state).outcome()

    assert outcome("already_running", TaskState.RUNNING) == "already running"
    assert outcome("killed", TaskState.STOPPED) == "killed, stopped"
    assert outcome("already_done", TaskState.EXITED) == "already done, exited"


def test_mcp_config_takes_any_case_and_aliases(project: Workspace) -> None:
    project.write('[tasks.api]\ncommand = "sleep 1"\n')
    for spelling in ("Claude", "claude-code"):
        proc = project.cli("mcp-config", spelling)
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["mcpServers"]["taskmux"]["args"][0] == "--project"
    unknown = project.cli("mcp-config", "cluade")
    assert unknown.returncode == 2 and "did you mean 'claude'?" in unknown.stderr
    no_traceback(unknown)
