"""Shell commands run to completion with a time limit: lifecycle hooks and command checks."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import anyio

from .errors import HookFailed

HOOK_TIMEOUT = 60.0
HOOK_TIMEOUT_ENV = "TASKMUX_HOOK_TIMEOUT"
OUTPUT_LIMIT = 4000


def hook_timeout() -> float:
    """The hooks' time limit: $TASKMUX_HOOK_TIMEOUT seconds when valid, else 60."""
    try:
        value = float(os.environ.get(HOOK_TIMEOUT_ENV, ""))
    except ValueError:
        return HOOK_TIMEOUT
    return value if 0 < value <= 24 * 3600 else HOOK_TIMEOUT


# Runs the command, and ends its whole process group should the process that started it die
# first (a killed CLI or MCP server would otherwise leave a hook running past its limit).
_GUARD = (
    'owner=$1; shift; "$@" & child=$!; '
    '(while kill -0 "$owner" 2>/dev/null; do sleep 0.5; done; kill -KILL 0) & guard=$!; '
    'wait "$child"; status=$?; kill "$guard" 2>/dev/null; exit "$status"'
)


@dataclass(frozen=True)
class ShellOutcome:
    """How a shell command ended: status None means it was killed at its time limit."""

    status: int | None
    output: str
    duration_s: float

    @property
    def ok(self) -> bool:
        """True when the command exited 0 in time."""
        return self.status == 0


async def run_shell(
    command: str, *, cwd: Path, env: Mapping[str, str], timeout: float
) -> ShellOutcome:
    """Run /bin/sh -c command in its own process group; kill the whole group at the time limit."""
    started = time.monotonic()
    process = await anyio.open_process(
        ["/bin/sh", "-c", _GUARD, "taskmux-hook", str(os.getpid()), "/bin/sh", "-c", command],
        cwd=str(cwd),
        env={**os.environ, **env},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    chunks: list[bytes] = []
    status: int | None = None

    drained = anyio.Event()

    async def collect() -> None:
        assert process.stdout is not None
        async for chunk in process.stdout:
            chunks.append(chunk)
            if sum(len(c) for c in chunks) > 4 * OUTPUT_LIMIT:
                del chunks[: len(chunks) // 2]
        drained.set()

    try:
        with anyio.move_on_after(timeout):
            async with anyio.create_task_group() as group:
                group.start_soon(collect)
                status = await process.wait()
                _kill_group(process.pid)
                # A descendant that left the group may still hold the pipe: read briefly, then go.
                with anyio.move_on_after(0.5):
                    await drained.wait()
                group.cancel_scope.cancel()
    finally:
        # Descendants may hold the pipe open or outlive the shell: end the whole group.
        _kill_group(process.pid)
        with anyio.CancelScope(shield=True), contextlib.suppress(ProcessLookupError):
            await process.wait()
        await process.aclose()
    text = b"".join(chunks).decode(errors="replace")
    return ShellOutcome(status, text[-OUTPUT_LIMIT:], time.monotonic() - started)


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


async def run_hook(
    hook: str,
    command: str | None,
    *,
    task: str | None,
    cwd: Path,
    env: Mapping[str, str],
    timeout: float | None = None,
) -> ShellOutcome | None:
    """Run one hook if configured; raise HookFailed when it fails."""
    if not command:
        return None
    limit = hook_timeout() if timeout is None else timeout
    outcome = await run_shell(command, cwd=cwd, env=env, timeout=limit)
    if not outcome.ok:
        raise HookFailed(hook, task, outcome.status, outcome.output[-1000:])
    return outcome
