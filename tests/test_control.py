"""The leading monitor's control socket: the CLI's status and stop answered by the monitor, the
same output as run in-process, and every doubt (no monitor, a frozen one, an edited config,
another tmux server, hooks, bad requests) sending the CLI back to doing it itself."""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import anyio
import pytest
from support import Workspace, run_monitor, wait_until

from taskmux_mcp import __version__
from taskmux_mcp.cli import answer_command
from taskmux_mcp.control import DISABLE_ENV, SOCKET_NAME, ask_monitor
from taskmux_mcp.models import StatusResult
from taskmux_mcp.project import Project as Facade

TASKS = """
[tasks.api]
command = "exec sleep 1000"
[tasks.worker]
command = "exec sleep 1000"
"""


def started(
    project: Workspace, monitors: list[subprocess.Popen[bytes]], toml: str = TASKS
) -> Facade:
    """The project with its tasks running and a monitor leading it."""
    project.write(toml)
    sup = project.open()
    assert anyio.run(lambda: sup.start(timeout=10)).ok
    run_monitor(project, monitors, sup)
    wait_until((sup.paths.root / SOCKET_NAME).exists, timeout=10)
    return sup


def asked(
    project: Workspace, capsys: pytest.CaptureFixture[str], *argv: str, cwd: Path | None = None
) -> tuple[int | None, str, str]:
    """What the monitor answered (None: the CLI would run it itself), stdout, stderr."""
    code = ask_monitor(["--project", str(project.root), *argv], cwd or project.root, project.env)
    out = capsys.readouterr()
    return code, out.out, out.err


def comparable(text: str) -> list[dict[str, object]]:
    """The rows of a JSON status without what changes from one second to the next."""
    rows = StatusResult.model_validate_json(text).model_dump(mode="json")["tasks"]
    return [{k: v for k, v in row.items() if k not in ("uptime_s", "started_at")} for row in rows]


def test_status_and_stop_are_answered_by_the_monitor_as_the_cli_would(
    project: Workspace, monitors: list[subprocess.Popen[bytes]], capsys: pytest.CaptureFixture[str]
) -> None:
    sup = started(project, monitors)
    code, out, err = asked(project, capsys, "--json", "status")
    assert code == 0 and err == ""
    local = project.cli("--json", "status", env_extra={DISABLE_ENV: "1"})
    assert comparable(out) == comparable(local.stdout)
    code, out, _ = asked(project, capsys, "status")
    assert code == 0 and "api" in out and "running" in out
    code, out, _ = asked(project, capsys, "stop", "api")
    assert code == 0 and "api: stopped" in out
    assert sup.status_sync(["api"]).tasks[0].state.value == "stopped"
    assert sup.status_sync(["worker"]).tasks[0].state.value == "running"
    stops = [e for e in sup.events.read(limit=50).events if e.type == "stopped"]
    assert [(e.task, e.cause) for e in stops] == [("api", "user")]


def test_errors_read_as_the_cli_prints_them(
    project: Workspace, monitors: list[subprocess.Popen[bytes]], capsys: pytest.CaptureFixture[str]
) -> None:
    started(project, monitors)
    code, out, err = asked(project, capsys, "stop", "nope")
    local = project.cli("stop", "nope", env_extra={DISABLE_ENV: "1"})
    assert (code, out, err) == (local.returncode, local.stdout, local.stderr)
    assert code == 2 and "unknown task 'nope'" in err


def test_what_the_monitor_does_not_answer_is_left_to_the_cli(
    project: Workspace, monitors: list[subprocess.Popen[bytes]], capsys: pytest.CaptureFixture[str]
) -> None:
    started(project, monitors)
    left = (["start"], ["restart", "api"], ["status", "--all"], ["status", "--help"],
            ["logs", "api"], ["status", "--bogus"],
            ["--tmux-socket", "other", "status"])  # fmt: skip
    for argv in left:
        assert asked(project, capsys, *argv)[0] is None, argv
    env = {**project.env, DISABLE_ENV: "1"}
    assert ask_monitor(["--project", str(project.root), "status"], project.root, env) is None
    elsewhere = {**project.env, "TASKMUX_STATE_DIR": str(project.state_dir) + "-other"}
    assert ask_monitor(["--project", str(project.root), "status"], project.root, elsewhere) is None
    # An edit the monitor has not read yet: the CLI reads it itself.
    path = project.root / "taskmux.toml"
    path.write_text(path.read_text() + '[tasks.extra]\ncommand = "sleep 1"\n')
    code, out, _ = asked(project, capsys, "status")
    assert code is None or "extra" in out  # never the config as it was
    assert "extra" in project.cli("status").stdout

    def reloaded() -> bool:
        code, out, _ = asked(project, capsys, "status")
        return code == 0 and "extra" in out

    wait_until(reloaded, timeout=15)  # the monitor has read the edit: it answers again


def test_a_stop_that_runs_hooks_runs_in_the_callers_process(
    project: Workspace, monitors: list[subprocess.Popen[bytes]], capsys: pytest.CaptureFixture[str]
) -> None:
    hooked = TASKS + '[tasks.api.hooks]\nafter_stop = "echo $PWD > stopped_by"\n'
    sup = started(project, monitors, hooked)
    assert asked(project, capsys, "stop", "api")[0] is None
    assert asked(project, capsys, "stop")[0] is None  # all tasks: api among them
    assert asked(project, capsys, "stop", "worker")[0] == 0
    assert sup.status_sync(["worker"]).tasks[0].state.value == "stopped"


def test_a_project_stop_hook_keeps_every_stop_in_the_callers_process(
    project: Workspace, monitors: list[subprocess.Popen[bytes]], capsys: pytest.CaptureFixture[str]
) -> None:
    started(project, monitors, '[hooks]\nbefore_stop = "true"\n' + TASKS)
    assert asked(project, capsys, "stop", "worker")[0] is None
    assert asked(project, capsys, "status")[0] == 0  # status runs no hook


def test_a_frozen_monitor_leaves_the_cli_to_answer(
    project: Workspace, monitors: list[subprocess.Popen[bytes]], capsys: pytest.CaptureFixture[str]
) -> None:
    started(project, monitors)
    monitors[0].send_signal(signal.SIGSTOP)
    try:
        assert asked(project, capsys, "status")[0] is None
        shown = project.cli("status")
        assert shown.returncode == 0 and "api" in shown.stdout
    finally:
        monitors[0].send_signal(signal.SIGCONT)
    assert asked(project, capsys, "status")[0] == 0


def test_a_new_leader_takes_the_socket_over(
    project: Workspace, monitors: list[subprocess.Popen[bytes]], capsys: pytest.CaptureFixture[str]
) -> None:
    sup = started(project, monitors)
    monitors[0].kill()
    monitors[0].wait()
    assert asked(project, capsys, "status")[0] is None  # nobody listens: refused at once
    run_monitor(project, monitors, sup)
    wait_until(lambda: asked(project, capsys, "status")[0] == 0, timeout=10)


def test_many_clis_at_once(project: Workspace, monitors: list[subprocess.Popen[bytes]]) -> None:
    names = [f"t{i}" for i in range(6)]
    sup = started(project, monitors, "".join(
        f'[tasks.{n}]\ncommand = "exec sleep 1000"\n' for n in names))  # fmt: skip
    calls = [("stop", n) for n in names] + [("--json", "status")] * 6
    with concurrent.futures.ThreadPoolExecutor(len(calls)) as pool:
        done = list(pool.map(lambda argv: project.cli(*argv), calls))
    assert all(d.returncode == 0 for d in done), [d.stderr for d in done]
    for d in done[len(names) :]:
        assert {row["name"] for row in comparable(d.stdout)} == set(names)
    assert {t.state.value for t in sup.status_sync().tasks} == {"stopped"}
    assert monitors[0].poll() is None


@pytest.mark.parametrize(
    "request_",
    [b"", b"\n", b"not json\n", b"[]\n", b'{"argv": "status", "cwd": "/", "env": {}}\n',
     b'{"argv": ["status"], "cwd": 3, "env": {}}\n', b'{"argv": ["status"]}\n',
     b'{"argv": [1], "cwd": "/", "env": {}}\n', b"[" * 100_000 + b"\n", b"x" * 300_000],
)  # fmt: skip
def test_bad_requests_are_dropped_and_the_monitor_answers_on(
    project: Workspace,
    monitors: list[subprocess.Popen[bytes]],
    capsys: pytest.CaptureFixture[str],
    request_: bytes,
) -> None:
    sup = started(project, monitors)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(str(sup.paths.root / SOCKET_NAME))
        try:
            sock.sendall(request_)
            sock.shutdown(socket.SHUT_WR)
            answer = sock.recv(1000)
        except OSError:
            answer = b""
    assert b"code" not in answer and b"stdout" not in answer
    assert asked(project, capsys, "status")[0] == 0
    assert monitors[0].poll() is None


def test_a_request_from_elsewhere_is_answered_as_if_run_there(
    project: Workspace, monitors: list[subprocess.Popen[bytes]], capsys: pytest.CaptureFixture[str]
) -> None:
    sup = started(project, monitors)
    nested = project.root / "src" / "deep"
    nested.mkdir(parents=True)
    code = ask_monitor(["status"], nested, project.env)  # found by walking up
    assert code == 0 and "api" in capsys.readouterr().out
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(sup.paths.root / SOCKET_NAME))
        request = {"argv": ["status"], "cwd": "/", "env": project.env, "version": __version__}
        sock.sendall(json.dumps(request).encode() + b"\n")
        lines = sock.makefile("rb").read().splitlines()
    assert json.loads(lines[0]) == {"accepted": True}
    assert "fallback" in json.loads(lines[1])  # no project at / : the caller says so itself


def test_a_long_state_folder_path_still_gets_a_socket(
    project: Workspace, monitors: list[subprocess.Popen[bytes]], capsys: pytest.CaptureFixture[str]
) -> None:
    deep = project.state_dir.parent / ("s" * 120)
    project.env["TASKMUX_STATE_DIR"] = str(deep)
    sup = started(project, monitors)
    assert len(os.fsencode(sup.paths.root / SOCKET_NAME)) > 108
    code, out, _ = asked(project, capsys, "status")
    assert code == 0 and "api" in out


def test_the_thin_path_imports_neither_pydantic_nor_anyio(
    project: Workspace, monitors: list[subprocess.Popen[bytes]]
) -> None:
    started(project, monitors)
    probe = (
        "import sys\nfrom taskmux_mcp.control import ask_monitor\nfrom pathlib import Path\n"
        f"code = ask_monitor(['--project', {str(project.root)!r}, 'status'], Path('.'), "
        "__import__('os').environ)\n"
        "print(code, sorted(m for m in ('pydantic', 'anyio', 'psutil') if m in sys.modules),"
        " file=sys.stderr)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          env=project.env, timeout=30, check=True)  # fmt: skip
    assert done.stderr.strip().splitlines()[-1] == "0 []"


def test_a_request_that_fails_in_the_monitor_leaves_it_running(
    project: Workspace, monitors: list[subprocess.Popen[bytes]], capsys: pytest.CaptureFixture[str]
) -> None:
    started(project, monitors)
    # argparse takes --proj for --project; expanding ~nosuchuser fails inside the monitor
    assert asked(project, capsys, "status", "--proj", "~nosuchuser-x/p")[0] is None
    shown = project.cli("status", "--proj", "~nosuchuser-x/p")
    assert shown.returncode != 0 and "Traceback" not in shown.stderr
    assert monitors[0].poll() is None
    assert asked(project, capsys, "status")[0] == 0


def test_the_default_tmux_server_is_one_name_however_it_is_spelled(project: Workspace) -> None:
    project.write(TASKS)
    on_default = Facade(project.root / "taskmux.toml", socket_name="default", environ=project.env)
    env = {k: v for k, v in project.env.items() if k != "TASKMUX_TMUX_SOCKET"}
    answer = anyio.run(answer_command, on_default, ["status"], project.root, env)
    assert isinstance(answer, tuple) and answer[2] == 0, answer
    elsewhere = {**env, "TMUX_TMPDIR": str(project.root)}
    answer = anyio.run(answer_command, on_default, ["status"], project.root, elsewhere)
    assert isinstance(answer, str) and "tmux server" in answer


def test_a_monitor_frozen_while_it_carries_a_stop_out_leaves_the_cli_to_it(
    project: Workspace, monitors: list[subprocess.Popen[bytes]], capsys: pytest.CaptureFixture[str]
) -> None:
    slow = "[tasks.slow]\ncommand = \"trap '' INT; exec sleep 1000\"\nstop_grace_period = 20\n"
    sup = started(project, monitors, slow)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        asking = pool.submit(ask_monitor, ["--project", str(project.root), "stop", "slow"],
                             project.root, project.env)  # fmt: skip
        wait_until(lambda: sup.records.get("slow").phase.value == "stopping", timeout=10)
        monitors[0].send_signal(signal.SIGSTOP)
        try:
            assert asking.result(timeout=10) is None  # not a hang: the CLI goes on itself
        finally:
            monitors[0].send_signal(signal.SIGCONT)
    capsys.readouterr()
