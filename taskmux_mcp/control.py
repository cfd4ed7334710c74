"""The leading monitor's control socket: `taskmux status` and `stop` answered by the process
that has the project loaded already, so the CLI imports almost nothing; any doubt, and the CLI
runs the command itself."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import struct
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .state import discover_config, find_state_folder

if TYPE_CHECKING:
    import anyio.abc

    from .project import Project

SOCKET_NAME = "control.sock"
ANSWERED = ("status", "stop")  # operations whose output cannot depend on the caller's process
COMMANDS = frozenset({*ANSWERED, "ls", "list"})  # with the CLI's aliases of status
DISABLE_ENV = "TASKMUX_NO_CONTROL"
ACK_WAIT_S = 0.3  # a frozen monitor never acknowledges: the CLI then runs the command itself
REQUEST_MAX = 256 * 1024
_VALUED = frozenset({"--project", "--config", "--tmux-socket"})
_NEVER = frozenset({"-h", "--help", "--version", "--all"})
# What the answer may depend on besides the arguments: checked against the monitor's own.
_ENV_KEYS = ("HOME", "XDG_STATE_HOME")


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
    sys.exit(code)


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
    when the command is not one it answers, or no monitor leads, or it did not answer."""
    if environ.get(DISABLE_ENV) or _NEVER.intersection(argv):
        return None
    command, options = _words(argv)
    if command not in COMMANDS:
        return None
    try:
        config = discover_config(options.get("--project"), options.get("--config"), cwd, environ)
        folder = find_state_folder(config.parent, environ)
        if folder is None:
            return None
        reply = _exchange(folder / SOCKET_NAME, {
            "argv": list(argv), "cwd": str(cwd),
            "env": {k: v for k, v in environ.items() if k.startswith("TASKMUX_") or k in _ENV_KEYS},
        })  # fmt: skip
    except Exception:  # whatever it is, the full CLI says it properly
        return None
    if not isinstance(reply, dict) or not isinstance(reply.get("code"), int):
        return None  # "fallback": the monitor says the caller should run it
    try:
        sys.stderr.write(str(reply.get("stderr", "")))
        sys.stdout.write(str(reply.get("stdout", "")))
        sys.stdout.flush()
    except BrokenPipeError:  # `taskmux status | head -1`
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
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


def _peer_frozen(sock: socket.socket) -> bool:
    """Whether the process at the other end is stopped (SIGSTOP): it would never answer."""
    pid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[0]
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3] in (b"T", b"t")


def _exchange(path: Path, request: dict[str, Any]) -> object:
    """Send the request, wait for the acknowledgement (briefly) and then for the reply."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(ACK_WAIT_S)
        with _reachable(path) as name:
            sock.connect(name)
        if _peer_frozen(sock):
            return None
        sock.sendall(json.dumps(request).encode() + b"\n")
        reader = sock.makefile("rb")
        if json.loads(reader.readline() or b"null") != {"accepted": True}:
            return None
        sock.settimeout(None)  # a stop takes as long as the task's grace period
        return json.loads(reader.readline() or b"null")


# ------------------------------------------------------------------ the monitor's side


async def serve_control(project: Project) -> None:
    """Answer CLI commands on the project's control socket until cancelled (while leading)."""
    import anyio
    import anyio.abc

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
    listener = await anyio.abc.SocketListener.from_socket(sock)
    async with listener:
        await listener.serve(lambda stream: _answer(project, stream))


async def _answer(project: Project, stream: anyio.abc.SocketStream) -> None:
    import anyio
    import anyio.streams.buffered

    from .cli import answer_command

    unreadable = (OSError, ValueError, KeyError, TypeError, RecursionError, TimeoutError,
                  anyio.BrokenResourceError, anyio.EndOfStream, anyio.IncompleteRead,
                  anyio.DelimiterNotFound)  # fmt: skip
    async with stream:
        raw = stream.extra(anyio.abc.SocketAttribute.raw_socket)
        uid = struct.unpack("3i", raw.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[1]
        if uid != os.getuid():
            return
        buffered = anyio.streams.buffered.BufferedByteReceiveStream(stream)
        reply: dict[str, object]
        try:
            with anyio.fail_after(5):
                line = await buffered.receive_until(b"\n", REQUEST_MAX)
            request = json.loads(line)
            argv, cwd, env = request["argv"], request["cwd"], request["env"]
            if not (isinstance(argv, list) and all(isinstance(a, str) for a in argv)
                    and isinstance(cwd, str) and isinstance(env, dict)
                    and all(isinstance(v, str) for v in env.values())):  # fmt: skip
                raise ValueError("malformed request")
            await stream.send(b'{"accepted": true}\n')
        except unreadable:
            return
        answer = await answer_command(project, argv, Path(cwd), env)
        if isinstance(answer, str):
            reply = {"fallback": answer}
        else:
            reply = {"stdout": answer[0], "stderr": answer[1], "code": answer[2]}
        with contextlib.suppress(OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
            await stream.send(json.dumps(reply).encode() + b"\n")
