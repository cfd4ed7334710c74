"""Health probes against real commands, HTTP servers and sockets."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import ssl
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import anyio
import psutil
import pytest

from taskmux_mcp.health import (
    ProbeMethod,
    ProbeOutcome,
    probe_checks,
    probe_command,
    probe_http,
    probe_tcp,
)

PROBE_MARKER = "TASKMUX_TEST_PROBE"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def marked(marker: str) -> list[psutil.Process]:
    """Live (non-zombie) processes whose environment carries the marker."""
    found = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if proc.environ().get(PROBE_MARKER) == marker and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
    return found


async def wait_none_left(marker: str, timeout: float = 3.0) -> None:
    """Poll until no marked process remains; fail with what is left after the timeout."""
    deadline = time.monotonic() + timeout
    while left := marked(marker):
        if time.monotonic() > deadline:
            pytest.fail(f"processes left behind: {[p.cmdline() for p in left]}")
        await anyio.sleep(0.02)


@pytest.fixture
def probe_env() -> Iterator[dict[str, str]]:
    """Our environment plus a marker; kills anything marked that a test leaves behind."""
    marker = uuid.uuid4().hex
    yield {**os.environ, PROBE_MARKER: marker}
    for proc in marked(marker):
        with contextlib.suppress(psutil.Error):
            proc.kill()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def answer(self, status: int, body: bytes, **headers: str) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path == "/ok":
            self.answer(200, b"fine")
        elif self.path == "/moved":
            self.answer(302, b"", Location="/down")
        elif self.path == "/down":
            self.answer(503, b"\x1b[31mdatabase is down\x1b[0m\r\n" + b"x" * 1000)
        elif self.path == "/chunked":
            self.send_response(500)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for part in (b"broken ", b"pipe"):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            self.wfile.write(b"0\r\n\r\n")
        elif self.path == "/query?x=1":
            self.answer(204, b"")
        else:
            self.answer(404, b"no such page")


@pytest.fixture(scope="module")
def http_base() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A port bound but not listening: connections to it are refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections (kernel backlog) but never answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield s.getsockname()[1]


# --- command -------------------------------------------------------------------------


@pytest.mark.anyio
async def test_command_pass(tmp_path: Path, probe_env: dict[str, str]) -> None:
    out = await probe_command("echo all good", cwd=tmp_path, env=probe_env, timeout=5)
    assert out.healthy
    assert out.method is ProbeMethod.COMMAND
    assert out.detail == "exit 0: all good"
    assert out.duration_ms > 0


@pytest.mark.anyio
async def test_command_fail_reports_status_and_clean_output(
    tmp_path: Path, probe_env: dict[str, str]
) -> None:
    cmd = r"echo oops >&2; printf '\033[31mred\033[0m\r\n'; exit 3"
    out = await probe_command(cmd, cwd=tmp_path, env=probe_env, timeout=5)
    assert not out.healthy
    assert out.detail.startswith("exit 3: ")
    assert "oops" in out.detail
    assert "red" in out.detail
    assert "\x1b" not in out.detail
    assert "\r" not in out.detail


@pytest.mark.anyio
async def test_command_output_tail_is_bounded(tmp_path: Path, probe_env: dict[str, str]) -> None:
    out = await probe_command("seq 1 20000; exit 1", cwd=tmp_path, env=probe_env, timeout=5)
    assert not out.healthy
    assert out.detail.endswith("19999\n20000")
    assert len(out.detail) < 600


@pytest.mark.anyio
async def test_command_uses_cwd_and_env(
    tmp_path: Path, probe_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "flag").write_text("")
    monkeypatch.setenv("TASKMUX_TEST_INHERITED", "1")
    env = {PROBE_MARKER: probe_env[PROBE_MARKER], "WANTED": "yes"}  # added to our environment
    command = 'test -f flag && test "$WANTED" = yes && test "$TASKMUX_TEST_INHERITED" = 1'
    out = await probe_command(command, cwd=tmp_path, env=env, timeout=5)
    assert out.healthy, out.detail
    out = await probe_command("test -f nope", cwd=tmp_path, env=env, timeout=5)
    assert not out.healthy


@pytest.mark.anyio
async def test_command_missing_cwd(tmp_path: Path, probe_env: dict[str, str]) -> None:
    out = await probe_command("true", cwd=tmp_path / "gone", env=probe_env, timeout=5)
    assert not out.healthy
    assert "does not exist" in out.detail


@pytest.mark.anyio
@pytest.mark.parametrize(
    "command",
    [
        "sleep 100",
        "echo waiting; sleep 101 & sleep 100",
        "setsid sleep 102 & sleep 100",
        "trap '' TERM INT; sleep 103 & while :; do sleep 0.05; done",
    ],
)
async def test_command_timeout_kills_everything(
    tmp_path: Path, probe_env: dict[str, str], command: str
) -> None:
    marker = probe_env[PROBE_MARKER]
    out = await probe_command(command, cwd=tmp_path, env=probe_env, timeout=0.5)
    assert not out.healthy
    assert out.detail.startswith("timed out after 0.5s")
    assert out.duration_ms < 3000
    if "echo" in command:
        assert out.detail.endswith("waiting")
    await wait_none_left(marker)


@pytest.mark.anyio
async def test_command_background_child_does_not_hold_probe(
    tmp_path: Path, probe_env: dict[str, str]
) -> None:
    out = await probe_command("sleep 104 & echo done", cwd=tmp_path, env=probe_env, timeout=10)
    assert out.healthy
    assert out.detail == "exit 0: done"
    assert out.duration_ms < 5000
    await wait_none_left(probe_env[PROBE_MARKER])


@pytest.mark.anyio
async def test_command_cancelled_from_outside_leaves_nothing(
    tmp_path: Path, probe_env: dict[str, str]
) -> None:
    with anyio.move_on_after(0.3) as scope:
        await probe_command("sleep 105", cwd=tmp_path, env=probe_env, timeout=30)
    assert scope.cancelled_caught
    await wait_none_left(probe_env[PROBE_MARKER])


# --- http ----------------------------------------------------------------------------


@pytest.mark.anyio
async def test_http_ok(http_base: str) -> None:
    out = await probe_http(f"{http_base}/ok", timeout=5)
    assert out.healthy
    assert out.method is ProbeMethod.HTTP
    assert out.detail == "HTTP 200"


@pytest.mark.anyio
async def test_http_redirect_is_healthy_and_not_followed(http_base: str) -> None:
    out = await probe_http(f"{http_base}/moved", timeout=5)
    assert out.healthy
    assert out.detail == "HTTP 302"


@pytest.mark.anyio
async def test_http_503_reports_body_snippet(http_base: str) -> None:
    out = await probe_http(f"{http_base}/down", timeout=5)
    assert not out.healthy
    assert out.detail.startswith("HTTP 503: database is down xxx")
    assert len(out.detail) == len("HTTP 503: ") + 200


@pytest.mark.anyio
async def test_http_expected_status_replaces_the_2xx_3xx_rule(http_base: str) -> None:
    down = await probe_http(f"{http_base}/down", timeout=5, expected_status=(503,))
    assert down.healthy and down.detail == "HTTP 503", down
    ok = await probe_http(f"{http_base}/ok", timeout=5, expected_status=(204, 503))
    assert not ok.healthy and ok.detail.startswith("HTTP 200"), ok


@pytest.mark.anyio
async def test_http_expected_body_must_match(http_base: str) -> None:
    down = await probe_http(
        f"{http_base}/down", timeout=5, expected_status=(503,), expected_body=r"database is \w+"
    )
    assert down.healthy, down
    wrong = await probe_http(
        f"{http_base}/down", timeout=5, expected_status=(503,), expected_body="all good"
    )
    assert not wrong.healthy and "body does not match 'all good'" in wrong.detail, wrong


@pytest.mark.anyio
async def test_http_chunked_error_body(http_base: str) -> None:
    out = await probe_http(f"{http_base}/chunked", timeout=5)
    assert not out.healthy
    assert out.detail == "HTTP 500: broken pipe"


@pytest.mark.anyio
async def test_http_query_and_404(http_base: str) -> None:
    assert (await probe_http(f"{http_base}/query?x=1", timeout=5)).detail == "HTTP 204"
    out = await probe_http(f"{http_base}/missing", timeout=5)
    assert not out.healthy
    assert out.detail == "HTTP 404: no such page"


@pytest.mark.anyio
async def test_http_refused(closed_port: int) -> None:
    out = await probe_http(f"http://127.0.0.1:{closed_port}/health", timeout=5)
    assert not out.healthy
    assert "connection refused" in out.detail


@pytest.mark.anyio
async def test_http_silent_server_times_out(silent_port: int) -> None:
    out = await probe_http(f"http://127.0.0.1:{silent_port}/", timeout=0.5)
    assert not out.healthy
    assert out.detail.startswith("timed out after 0.5s")
    assert out.duration_ms < 3000


@pytest.mark.anyio
@pytest.mark.parametrize("url", ["ftp://example.org/", "http:///nohost", "not a url"])
async def test_http_bad_url(url: str) -> None:
    out = await probe_http(url, timeout=1)
    assert not out.healthy
    assert out.detail.startswith("bad URL")


@pytest.fixture(scope="module")
def https_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """An HTTPS server with a fresh self-signed certificate; yields (base URL, cert file)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    argv = "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1"
    argv += " -subj /CN=localhost -addext subjectAltName=IP:127.0.0.1,DNS:localhost"
    subprocess.run(
        [*argv.split(), "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}", cert
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.mark.anyio
async def test_https(https_server: tuple[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    base, cert = https_server
    untrusted = await probe_http(f"{base}/ok", timeout=5)
    assert not untrusted.healthy
    assert "certificate verify failed" in untrusted.detail
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    assert (await probe_http(f"{base}/ok", timeout=5)).detail == "HTTP 200"
    assert (await probe_http(f"{base}/down", timeout=5)).detail.startswith("HTTP 503: database")


# --- tcp -----------------------------------------------------------------------------


@pytest.mark.anyio
async def test_tcp_open_and_closed(silent_port: int, closed_port: int) -> None:
    out = await probe_tcp(silent_port, timeout=2)
    assert out.healthy
    assert out.method is ProbeMethod.TCP
    out = await probe_tcp(closed_port, timeout=2)
    assert not out.healthy
    assert "connection refused" in out.detail


@pytest.mark.anyio
async def test_tcp_falls_back_to_ipv6_loopback() -> None:
    with socket.socket(socket.AF_INET6) as s:
        s.bind(("::1", 0))
        s.listen()
        port = s.getsockname()[1]
        out = await probe_tcp(port, timeout=2)
    assert out.healthy, out.detail
    assert "[::1]" in out.detail


# --- combined ------------------------------------------------------------------------


async def checks(
    cwd: Path,
    *,
    health_check: str | None = None,
    health_url: str | None = None,
    port: int | None = None,
    env: dict[str, str] | None = None,
) -> ProbeOutcome | None:
    return await probe_checks(
        health_check=health_check,
        health_url=health_url,
        port=port,
        cwd=cwd,
        env=env if env is not None else dict(os.environ),
        timeout=2,
    )


@pytest.mark.anyio
async def test_checks_none_configured(tmp_path: Path) -> None:
    assert await checks(tmp_path) is None


@pytest.mark.anyio
async def test_checks_port_only(tmp_path: Path, silent_port: int, closed_port: int) -> None:
    out = await checks(tmp_path, port=silent_port)
    assert out is not None and out.healthy and out.method is ProbeMethod.TCP
    out = await checks(tmp_path, port=closed_port)
    assert out is not None and not out.healthy


@pytest.mark.anyio
async def test_checks_explicit_checks_override_port(
    tmp_path: Path, probe_env: dict[str, str], http_base: str, closed_port: int
) -> None:
    out = await checks(tmp_path, health_check="true", port=closed_port, env=probe_env)
    assert out is not None and out.healthy and out.method is ProbeMethod.COMMAND
    out = await checks(tmp_path, health_url=f"{http_base}/ok", port=closed_port, env=probe_env)
    assert out is not None and out.healthy and out.method is ProbeMethod.HTTP


@pytest.mark.anyio
async def test_checks_all_explicit_must_pass(
    tmp_path: Path, probe_env: dict[str, str], http_base: str
) -> None:
    both_ok = await checks(
        tmp_path, health_check="echo ready", health_url=f"{http_base}/ok", env=probe_env
    )
    assert both_ok is not None and both_ok.healthy
    assert "command ok: exit 0: ready" in both_ok.detail
    assert "http ok: HTTP 200" in both_ok.detail

    url_fails = await checks(
        tmp_path, health_check="echo ready", health_url=f"{http_base}/down", env=probe_env
    )
    assert url_fails is not None and not url_fails.healthy
    assert url_fails.method is ProbeMethod.HTTP
    assert url_fails.detail.startswith("http failed: HTTP 503")
    assert "command ok" in url_fails.detail

    cmd_fails = await checks(
        tmp_path, health_check="exit 7", health_url=f"{http_base}/ok", env=probe_env
    )
    assert cmd_fails is not None and not cmd_fails.healthy
    assert cmd_fails.method is ProbeMethod.COMMAND
    assert cmd_fails.detail.startswith("command failed: exit 7")


# --- concurrency ---------------------------------------------------------------------


@pytest.mark.anyio
async def test_probes_run_concurrently(
    tmp_path: Path, probe_env: dict[str, str], silent_port: int
) -> None:
    async def one() -> ProbeOutcome:
        return await probe_command("sleep 0.4", cwd=tmp_path, env=probe_env, timeout=5)

    started = time.perf_counter()
    single = await one()
    single_s = time.perf_counter() - started
    assert single.healthy

    results: list[ProbeOutcome] = []

    async def collect() -> None:
        results.append(await one())

    async def silent_http() -> None:
        results.append(await probe_http(f"http://127.0.0.1:{silent_port}/", timeout=0.4))

    started = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(8):
            tg.start_soon(collect)
        for _ in range(2):
            tg.start_soon(silent_http)
    total_s = time.perf_counter() - started
    assert len(results) == 10
    assert sum(r.healthy for r in results) == 8
    assert total_s < 3 * single_s
