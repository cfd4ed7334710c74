"""Health probes (shell command, HTTP GET, TCP connect), each bounded by a timeout.

Every probe is a coroutine that never blocks the event loop, so the probes of many tasks
run side by side in one task group. A probe never raises for a failing check: it returns
a ProbeOutcome that says what went wrong.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import signal
import ssl
import subprocess
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from urllib.parse import urlsplit

import anyio
import anyio.abc
import anyio.to_thread
import psutil
from anyio.streams.buffered import BufferedByteReceiveStream

PROBE_AGENT = "taskmux-health"  # the User-Agent of HTTP probes, so logs can tell them apart
_OUTPUT_TAIL = 500
_BODY_SNIPPET = 200
_KEEP_BYTES = 8192
_HEAD_LIMIT = 65536
# After a probe command exits, how long its output may keep draining (a background child
# can hold the pipe open forever).
_DRAIN_S = 0.2
_ANSI = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]"  # CSI
    r"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)"  # OSC
    r"|\x1b[@-Z\\-_]"  # other two-byte escapes
)


class ProbeMethod(StrEnum):
    """How a task's health was probed."""

    COMMAND = "command"
    HTTP = "http"
    TCP = "tcp"
    LOG = "log"
    PROCESS = "process"


@dataclass(frozen=True)
class ProbeOutcome:
    """The verdict of one probe."""

    healthy: bool
    method: ProbeMethod
    detail: str
    duration_ms: float


def _elapsed_ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 1)


def _fmt_seconds(seconds: float) -> str:
    return f"{seconds:g}s"


def _clean_text(raw: bytes) -> str:
    """Decode output for a human: no ANSI escapes, no carriage returns, trimmed."""
    text = raw.decode("utf-8", errors="replace")
    text = _ANSI.sub("", text).replace("\r\n", "\n").replace("\r", "\n")
    return text.strip()


def _tail(raw: bytes, limit: int = _OUTPUT_TAIL) -> str:
    text = _clean_text(raw)
    return text if len(text) <= limit else "…" + text[-limit:]


def _exit_text(returncode: int | None) -> str:
    if returncode is None:
        return "no exit status"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"killed by {name}"
    return f"exit {returncode}"


def _kill_everything(root_pid: int) -> None:
    """SIGKILL a probe's process group, session and descendants (blocking; run in a thread)."""
    # Freeze the group first so that nobody forks while we look for descendants.
    with contextlib.suppress(OSError):
        os.killpg(root_pid, signal.SIGSTOP)
    children: dict[int, list[int]] = {}
    victims: set[int] = set()
    for proc in psutil.process_iter(["pid", "ppid"], ad_value=None):
        pid, ppid = proc.info["pid"], proc.info["ppid"]
        if ppid is not None:
            children.setdefault(ppid, []).append(pid)
        with contextlib.suppress(OSError):
            if os.getsid(pid) == root_pid:
                victims.add(pid)
    stack = [root_pid]
    while stack:
        pid = stack.pop()
        victims.add(pid)
        stack.extend(c for c in children.get(pid, ()) if c not in victims)
    victims.discard(os.getpid())
    with contextlib.suppress(OSError):
        os.killpg(root_pid, signal.SIGKILL)
    for pid in victims:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def _kill_group(root_pid: int) -> None:
    """SIGKILL what is left of a probe's process group once its shell has been reaped."""
    # A live process with the shell's pid means the group is empty and the number reused.
    if psutil.pid_exists(root_pid):
        return
    with contextlib.suppress(OSError):
        os.killpg(root_pid, signal.SIGKILL)


async def probe_command(
    command: str, *, cwd: Path, env: Mapping[str, str], timeout: float
) -> ProbeOutcome:
    """Run `/bin/sh -c command` with our environment plus `env`; exit 0 = healthy."""
    started = time.perf_counter()

    def outcome(healthy: bool, detail: str) -> ProbeOutcome:
        return ProbeOutcome(healthy, ProbeMethod.COMMAND, detail, _elapsed_ms(started))

    if not cwd.is_dir():
        return outcome(False, f"cannot run health check: directory {cwd} does not exist")
    try:
        proc = await anyio.open_process(
            ["/bin/sh", "-c", command],
            cwd=cwd,
            env={**os.environ, **env},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    except OSError as exc:
        return outcome(False, f"cannot run health check: {exc}")

    output = bytearray()
    reader_done = anyio.Event()

    async def pump(stream: anyio.abc.ByteReceiveStream) -> None:
        try:
            async for chunk in stream:
                output.extend(chunk)
                if len(output) > _KEEP_BYTES:
                    del output[: len(output) - _KEEP_BYTES]
        except (anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
            pass
        finally:
            reader_done.set()

    returncode: int | None = None
    finished = False
    try:
        with anyio.move_on_after(timeout):
            async with anyio.create_task_group() as tg:
                if proc.stdout is not None:
                    tg.start_soon(pump, proc.stdout)
                else:
                    reader_done.set()
                returncode = await proc.wait()
                finished = True
                with anyio.move_on_after(_DRAIN_S):
                    await reader_done.wait()
                tg.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            if finished or proc.returncode is not None:
                _kill_group(proc.pid)
            else:
                await anyio.to_thread.run_sync(_kill_everything, proc.pid)
            with anyio.move_on_after(2.0):
                await proc.wait()
            with contextlib.suppress(Exception):
                await proc.aclose()

    tail = _tail(bytes(output))
    if not finished:
        detail = f"timed out after {_fmt_seconds(timeout)}"
        return outcome(False, f"{detail}: {tail}" if tail else detail)
    status = _exit_text(returncode)
    return outcome(returncode == 0, f"{status}: {tail}" if tail else status)


def _root_causes(exc: BaseException) -> list[BaseException]:
    """The exception and its causes/contexts, and members of exception groups."""
    found: list[BaseException] = []
    todo: list[BaseException] = [exc]
    while todo:
        e = todo.pop()
        if any(e is f for f in found):
            continue
        found.append(e)
        if isinstance(e, BaseExceptionGroup):
            todo.extend(e.exceptions)
        for nxt in (e.__cause__, e.__context__):
            if nxt is not None:
                todo.append(nxt)
    return found


def _connect_error(exc: BaseException, where: str) -> str:
    causes = _root_causes(exc)
    if any(isinstance(e, ConnectionRefusedError) for e in causes):
        return f"connection refused on {where}"
    if any(isinstance(e, ssl.SSLError) for e in causes):
        return f"TLS error on {where}: {exc}"
    gai = next(
        (e for e in causes if isinstance(e, OSError) and type(e).__name__ == "gaierror"), None
    )
    if gai is not None:
        return f"cannot resolve {where}: {gai}"
    specific = next((e for e in reversed(causes) if isinstance(e, OSError)), exc)
    return f"cannot connect to {where}: {specific}"


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True)
class _Target:
    tls: bool
    host: str
    port: int
    request: bytes


def _parse_url(url: str) -> _Target:
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise ValueError("only http:// and https:// URLs can be probed")
    host = parts.hostname
    if not host:
        raise ValueError("no host in URL")
    port = parts.port or (443 if scheme == "https" else 80)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    host_header = parts.netloc.rpartition("@")[2]
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {host_header}",
        f"User-Agent: {PROBE_AGENT}",
        "Accept: */*",
        "Connection: close",
    ]
    if parts.username is not None:
        creds = f"{parts.username}:{parts.password or ''}".encode()
        lines.append(f"Authorization: Basic {base64.b64encode(creds).decode()}")
    request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", errors="replace")
    return _Target(tls=scheme == "https", host=host, port=port, request=request)


def _parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    fields = lines[0].split(" ", 2)
    if len(fields) < 2 or not fields[0].startswith("HTTP/") or not fields[1].isdigit():
        raise ValueError(f"not an HTTP answer: {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return int(fields[1]), headers


def _status_ok(status: int, expected: tuple[int, ...]) -> bool:
    return status in expected if expected else 200 <= status < 400


async def _read_body(
    buffered: BufferedByteReceiveStream, headers: Mapping[str, str], into: bytearray
) -> None:
    """Read up to _KEEP_BYTES of a response body into `into` (partial if interrupted)."""
    with contextlib.suppress(
        anyio.EndOfStream,
        anyio.IncompleteRead,
        anyio.DelimiterNotFound,
        anyio.BrokenResourceError,
        ValueError,
        OSError,
    ):
        if "chunked" in headers.get("transfer-encoding", "").lower():
            while len(into) < _KEEP_BYTES:
                size_line = await buffered.receive_until(b"\r\n", 1024)
                size = int(size_line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    return
                into.extend(await buffered.receive_exactly(min(size, _KEEP_BYTES)))
                if size > _KEEP_BYTES:
                    return
                await buffered.receive_until(b"\r\n", 2)
            return
        length = headers.get("content-length")
        limit = min(int(length), _KEEP_BYTES) if length and length.isdigit() else _KEEP_BYTES
        while len(into) < limit:
            into.extend(await buffered.receive(limit - len(into)))


async def _open_stream(target: _Target) -> anyio.abc.ByteStream:
    if target.tls:
        return await anyio.connect_tcp(
            target.host,
            target.port,
            ssl_context=ssl.create_default_context(),
            tls_hostname=target.host,
            tls_standard_compatible=False,
        )
    return await anyio.connect_tcp(target.host, target.port)


async def probe_http(
    url: str,
    *,
    timeout: float,
    expected_status: tuple[int, ...] = (),
    expected_body: str | None = None,
) -> ProbeOutcome:
    """GET the URL without following redirects; healthy = a 2xx or 3xx answer (or one of
    expected_status), whose body (its first 8 KiB) matches expected_body when given."""
    started = time.perf_counter()

    def outcome(healthy: bool, detail: str) -> ProbeOutcome:
        return ProbeOutcome(healthy, ProbeMethod.HTTP, detail, _elapsed_ms(started))

    try:
        target = _parse_url(url)
    except ValueError as exc:
        return outcome(False, f"bad URL {url!r}: {exc}")
    where = _host_port(target.host, target.port)
    status: int | None = None
    body = bytearray()
    error: str | None = None
    with anyio.move_on_after(timeout):
        try:
            stream = await _open_stream(target)
        except (OSError, ssl.SSLError, anyio.BrokenResourceError) as exc:
            error = _connect_error(exc, where)
        else:
            async with stream:
                try:
                    await stream.send(target.request)
                    buffered = BufferedByteReceiveStream(stream)
                    head = await buffered.receive_until(b"\r\n\r\n", _HEAD_LIMIT)
                    status, headers = _parse_head(head)
                    if not _status_ok(status, expected_status) or expected_body is not None:
                        await _read_body(buffered, headers, body)
                except (anyio.EndOfStream, anyio.IncompleteRead):
                    error = f"{where} closed the connection without a complete HTTP answer"
                except anyio.DelimiterNotFound:
                    error = f"{where} sent HTTP headers over {_HEAD_LIMIT} bytes"
                except ValueError as exc:
                    error = f"{where}: {exc}"
                except (OSError, ssl.SSLError, anyio.BrokenResourceError) as exc:
                    error = _connect_error(exc, where)
    if status is not None:
        healthy = _status_ok(status, expected_status)
        text = _clean_text(bytes(body))
        snippet = "" if healthy else " ".join(text.split())[:_BODY_SNIPPET]
        if healthy and expected_body is not None and not re.search(expected_body, text):
            shown = " ".join(text.split())[:_BODY_SNIPPET]
            return outcome(False, f"HTTP {status}, body does not match {expected_body!r}: {shown}")
        return outcome(healthy, f"HTTP {status}: {snippet}" if snippet else f"HTTP {status}")
    if error is not None:
        return outcome(False, error)
    return outcome(False, f"timed out after {_fmt_seconds(timeout)} waiting for {url}")


async def probe_tcp(port: int, *, host: str = "127.0.0.1", timeout: float) -> ProbeOutcome:
    """Connect to host:port (also ::1 when 127.0.0.1/localhost refuses); success = healthy."""
    started = time.perf_counter()

    def outcome(healthy: bool, detail: str) -> ProbeOutcome:
        return ProbeOutcome(healthy, ProbeMethod.TCP, detail, _elapsed_ms(started))

    if not 0 < port < 65536:
        return outcome(False, f"invalid port {port}")
    hosts = [host]
    if host in ("127.0.0.1", "localhost"):
        hosts.append("::1")
    failures: list[str] = []
    with anyio.move_on_after(timeout):
        for candidate in hosts:
            where = _host_port(candidate, port)
            try:
                stream = await anyio.connect_tcp(candidate, port)
            except OSError as exc:
                failures.append(_connect_error(exc, where))
                continue
            await stream.aclose()
            return outcome(True, f"connected to {where}")
        return outcome(False, "; ".join(failures))
    tried = ", ".join(_host_port(h, port) for h in hosts)
    return outcome(False, f"timed out after {_fmt_seconds(timeout)} connecting to {tried}")


async def probe_checks(
    *,
    health_check: str | None,
    health_url: str | None,
    port: int | None,
    expected_status: tuple[int, ...] = (),
    expected_body: str | None = None,
    cwd: Path,
    env: Mapping[str, str],
    timeout: float,
) -> ProbeOutcome | None:
    """A task's health verdict: every explicit check must pass; else its port; else None."""
    probes: list[Callable[[], Awaitable[ProbeOutcome]]] = []
    if health_check:
        probes.append(lambda: probe_command(health_check, cwd=cwd, env=env, timeout=timeout))
    if health_url:
        probes.append(
            lambda: probe_http(
                health_url,
                timeout=timeout,
                expected_status=expected_status,
                expected_body=expected_body,
            )
        )
    if not probes:
        if port is None:
            return None
        return await probe_tcp(port, timeout=timeout)
    if len(probes) == 1:
        return await probes[0]()

    started = time.perf_counter()
    results: list[ProbeOutcome | None] = [None] * len(probes)

    async def run(index: int) -> None:
        results[index] = await probes[index]()

    async with anyio.create_task_group() as tg:
        for index in range(len(probes)):
            tg.start_soon(run, index)
    done = [r for r in results if r is not None]
    failed = [r for r in done if not r.healthy]
    passed = [r for r in done if r.healthy]
    parts = [f"{r.method} failed: {r.detail}" for r in failed]
    parts += [f"{r.method} ok: {r.detail}" for r in passed]
    return ProbeOutcome(
        healthy=not failed,
        method=(failed or done)[0].method,
        detail="; ".join(parts),
        duration_ms=_elapsed_ms(started),
    )
