"""The leading monitor's control socket: `taskmux status` and `stop` answered by the process
that has the project loaded already, so the CLI imports almost nothing; in any doubt the CLI
runs the command itself."""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import socket
import struct
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from . import __version__
from .state import discover_config, find_state_folder

if TYPE_CHECKING:
    import anyio.abc

    from .project import Project

log = logging.getLogger("taskmux.control")

SOCKET_NAME = "control.sock"
ANSWERED = ("status", "stop")  # operations whose output cannot depend on the caller's process
COMMANDS = frozenset({*ANSWERED, "ls", "list"})  # with the CLI's aliases of status
DISABLE_ENV = "TASKMUX_NO_CONTROL"
ACK_WAIT_S = 0.3  # a busy or frozen monitor: the CLI runs the command itself
LOOK_S = 1.0  # while the monitor carries a command out, how often the CLI checks it still runs
REQUEST_MAX = 256 * 1024
_VALUED = frozenset({"--project", "--config", "--tmux-socket"})
# What the answer may depend on besides the arguments (the state root, tmux's socket folder).
_ENV_KEYS = ("HOME", "XDG_STATE_HOME", "TMUX_TMPDIR")


def main() -> None:
    """Entry point of `taskmux`: the monitor answers when it can, else the full CLI."""
    argv = sys.argv[1:]
    try:
        code = ask_monitor(argv, Path.cwd(), os.environ)
    except KeyboardInterrupt:
        sys.exit(130)
    if code is None:
        from .cli import main as cli_main

        code = cli_main(argv)
    leave(code)


def leave(code: int) -> NoReturn:
    """Exit as the interpreter would, except for tearing itself down: freeing every object of
    pydantic's and ours takes it 30-100 ms that the kernel does in no time."""
    main_thread = threading.main_thread()
    for thread in threading.enumerate():
        if thread is not main_thread and not thread.daemon:
            thread.join()  # as the interpreter waits for them (anyio's workers are ending)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)


# ------------------------------------------------------------------ the CLI's side


def _words(argv: Sequence[str]) -> tuple[str | None, dict[str, str]]:
    """The command word and the values of the global options naming the project."""
    command, options = None, {}
    items = iter(argv)
    for word in items:
        name, eq, value = word.partition("=")
        if name in _VALUED:
            options[name] = value if eq else next(items, "")
        elif command is None and not word.startswith("-"):
            command = word
    return command, options


def ask_monitor(argv: Sequence[str], cwd: Path, environ: Mapping[str, str]) -> int | None:
    """Have the leading monitor run the command and print its output: its exit code, or None
    when the CLI must run it itself."""
    if environ.get(DISABLE_ENV):
        return None
    command, options = _words(argv)
    if command not in COMMANDS:
        return None
    try:
        config = discover_config(options.get("--project"), options.get("--config"), cwd, environ)
        folder = find_state_folder(config.parent, environ)
        if folder is None:
            return None
        env = {k: v for k, v in environ.items() if k.startswith("TASKMUX_") or k in _ENV_KEYS}
        request = {"argv": list(argv), "cwd": str(cwd), "env": env, "version": __version__}
        reply = _exchange(folder / SOCKET_NAME, request)
    except Exception:  # whatever it is, the full CLI says it properly
        return None
    if not isinstance(reply, dict) or not isinstance(reply.get("code"), int):
        return None  # "fallback": the monitor says the caller should run it
    try:
        sys.stderr.write(str(reply.get("stderr", "")))
        sys.stdout.write(str(reply.get("stdout", "")))
        sys.stdout.flush()
    except BrokenPipeError:  # `taskmux status | head -1`: done, as the full CLI says
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return int(reply["code"])


@contextlib.contextmanager
def _reachable(path: Path) -> Iterator[str]:
    """A name of path short enough for a unix socket (108 bytes), through its folder's fd."""
    if len(os.fsencode(path)) < 100 or not os.path.isdir("/proc/self/fd"):
        yield str(path)
        return
    fd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


def _peer(sock: socket.socket) -> tuple[int, int]:
    """The pid and uid of the process at the other end of a unix socket."""
    pid, uid, _ = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    return pid, uid


def _stuck(pid: int) -> bool:
    """Whether pid is stopped (SIGSTOP) or gone: it will not answer."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return True
    return stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3] in (b"T", b"t", b"Z", b"X")


def _line(sock: socket.socket, pid: int, buffered: bytearray, within: float | None) -> object:
    """The next line from the peer as JSON: None when it ends, sticks, or (with `within`)
    takes longer than that."""
    deadline = None if within is None else time.monotonic() + within
    while b"\n" not in buffered:
        left = LOOK_S if deadline is None else deadline - time.monotonic()
        if left <= 0:
            return None
        sock.settimeout(min(left, LOOK_S))
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            if _stuck(pid):
                return None
            continue
        if not chunk:
            return None
        buffered += chunk
    line, _, rest = bytes(buffered).partition(b"\n")
    buffered[:] = rest
    return json.loads(line)


def _exchange(path: Path, request: dict[str, Any]) -> object:
    """Send the request, wait for the acknowledgement (briefly), then for the reply for as long
    as the monitor runs (a stop takes the task's grace period)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(ACK_WAIT_S)
        with _reachable(path) as name:
            sock.connect(name)
        pid, uid = _peer(sock)
        if uid != os.getuid() or _stuck(pid):
            return None
        sock.sendall(json.dumps(request).encode() + b"\n")
        buffered = bytearray()
        if _line(sock, pid, buffered, ACK_WAIT_S) != {"accepted": True}:
            return None
        return _line(sock, pid, buffered, None)


# ------------------------------------------------------------------ the monitor's side


async def serve_control(project: Project, handlers: anyio.abc.TaskGroup) -> None:
    """Answer CLI commands on the project's control socket until cancelled (while leading);
    the answers run in `handlers`, so a command under way is finished after that."""
    import anyio.abc

    from . import cli  # now: an upgrade of the package later never mixes versions here

    path = project.paths.root / SOCKET_NAME
    staged = path.with_name(f".{SOCKET_NAME}-{os.getpid()}")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with contextlib.suppress(FileNotFoundError):
            staged.unlink()
        with _reachable(staged) as name:
            sock.bind(name)
        os.chmod(staged, 0o600)
        sock.listen(64)
        os.replace(staged, path)  # whoever connects from now on reaches this monitor
    except OSError:
        sock.close()
        with contextlib.suppress(OSError):
            staged.unlink()
        raise
    async with await anyio.abc.SocketListener.from_socket(sock) as listener:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:  # out of fds, say: the CLI runs its commands itself meanwhile
                log.warning("control socket: %s", exc)
                await anyio.sleep(1)
                continue
            handlers.start_soon(_answer, project, stream, cli.answer_command)


async def _answer(project: Project, stream: anyio.abc.SocketStream, answer_command: Any) -> None:
    import anyio
    import anyio.streams.buffered

    async with stream:
        if _peer(stream.extra(anyio.abc.SocketAttribute.raw_socket))[1] != os.getuid():
            return
        try:
            request = await _request(stream)
            if request is None:
                return
            await stream.send(b'{"accepted": true}\n')
            argv, cwd, env = request
            answer = await answer_command(project, argv, Path(cwd), env)
            if isinstance(answer, str):
                reply: dict[str, object] = {"fallback": answer}
            else:
                reply = {"stdout": answer[0], "stderr": answer[1], "code": answer[2]}
            await stream.send(json.dumps(reply).encode() + b"\n")
        except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
            return  # the CLI went away
        except Exception:  # nothing a request does may end the monitor
            log.exception("control socket: a request failed")


async def _request(
    stream: anyio.abc.SocketStream,
) -> tuple[list[str], str, dict[str, str]] | None:
    """The command a CLI sent (argv, cwd, env), or None when it sent something else."""
    import anyio
    import anyio.streams.buffered

    buffered = anyio.streams.buffered.BufferedByteReceiveStream(stream)
    try:
        with anyio.fail_after(5):
            request = json.loads(await buffered.receive_until(b"\n", REQUEST_MAX))
    except (ValueError, RecursionError, TimeoutError, anyio.EndOfStream, anyio.IncompleteRead,
            anyio.DelimiterNotFound):  # fmt: skip
        return None
    if not isinstance(request, dict) or request.get("version") != __version__:
        return None
    argv, cwd, env = request.get("argv"), request.get("cwd"), request.get("env")
    if not (isinstance(argv, list) and isinstance(cwd, str) and isinstance(env, dict)):
        return None
    if not all(isinstance(word, str) for word in [*argv, *env.values()]):  # JSON keys are str
        return None
    return argv, cwd, env
