"""The example project's programs stop quietly on the signals taskmux sends (C-c, SIGTERM)."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from support import REPO, wait_until

EXAMPLE = REPO / "examples" / "webapp"


def free_port() -> int:
    """A port nobody listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def answers(url: str) -> bool:
    """Whether an HTTP GET of url succeeds."""
    try:
        with urllib.request.urlopen(url, timeout=1):
            return True
    except OSError:
        return False


def launch(script: str, cwd: Path, **env: str) -> subprocess.Popen[str]:
    """Run one of the example's scripts."""
    return subprocess.Popen(
        [sys.executable, str(EXAMPLE / script)],
        cwd=cwd,
        env={"PATH": "/usr/bin:/bin", **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def stop(proc: subprocess.Popen[str], signum: int) -> tuple[str, str]:
    """Send signum and return what the process printed by the time it exited."""
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=10)
    return out, err


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_server_and_worker_exit_quietly_on_a_stop_signal(tmp_path: Path, signum: int) -> None:
    (tmp_path / "data.json").write_text('{"greeting": "hi"}')
    port = free_port()
    server = launch("server.py", tmp_path, PORT=str(port))
    worker = None
    try:
        wait_until(lambda: answers(f"http://127.0.0.1:{port}/health"), timeout=10)
        worker = launch("worker.py", tmp_path, TASKMUX_PORT_API=str(port))
        assert worker.stdout is not None
        assert worker.stdout.readline() == "worker got: hi\n"
        worker_out, worker_err = stop(worker, signum)
        server_out, server_err = stop(server, signum)
    finally:
        for proc in (server, worker):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
    assert (worker.returncode, server.returncode) == (0, 0), worker_err + server_err
    assert worker_err == "" and server_err == ""
    assert worker_out.endswith("worker: stopped\n")
    assert server_out.endswith("api: stopped\n")
