"""A task's terminal, for agents: type into it, read its screen, wait for a line of its output."""

from __future__ import annotations

import contextlib
import re
import time
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING

import anyio

from .errors import ArgumentError, InvalidArgument, TmuxError
from .events import Cause, EventType
from .lifecycle import drain
from .locks import FileLock
from .logs import LineWatch
from .models import LogLine, ScreenResult, SendResult, TaskState, WaitResult
from .readiness import exit_text
from .records import observe
from .terminal import clean_text, cut_line

if TYPE_CHECKING:
    from .backend import Pane
    from .operations import Progress
    from .project import Project

MAX_TEXT = 4096
MAX_KEYS = 32
MAX_SCREEN_LINES = 1000
WAIT_POLL_S = 0.1
CONTEXT_LINES = 3
TAIL_LINES = 15
INPUT_LOCK_WAIT_S = 10.0
INTERRUPT_KEYS = frozenset({"C-c", "C-\\", "C-d"})
INTERRUPT_CHARS = "\x03\x1c\x04"  # the same keys typed as text

_NAMED = {
    "enter": "Enter", "return": "Enter", "tab": "Tab", "btab": "BTab", "shift-tab": "BTab",
    "escape": "Escape", "esc": "Escape", "space": "Space", "backspace": "BSpace",
    "bspace": "BSpace", "up": "Up", "down": "Down", "left": "Left", "right": "Right",
    "home": "Home", "end": "End", "pageup": "PPage", "pgup": "PPage", "ppage": "PPage",
    "pagedown": "NPage", "pgdn": "NPage", "npage": "NPage", "delete": "DC", "del": "DC",
    "dc": "DC", "insert": "IC", "ic": "IC",
    **{f"f{n}": f"F{n}" for n in range(1, 13)},
}  # fmt: skip
_CONTROL = re.compile(r"(?:c-|ctrl-|ctrl\+|\^)([a-z\\\]])", re.IGNORECASE)
KEY_FORMS = (
    "Enter, Tab, BTab, Escape, Space, BSpace, Up, Down, Left, Right, Home, End, PageUp, "
    "PageDown, Delete, Insert, F1-F12, C-a..C-z (also Ctrl-X, ^X), C-\\, C-], or one printable "
    "character such as q"
)


def key_name(key: str) -> tuple[bool, str]:
    """A key of the allowlist as (literal, tmux key name or character); ArgumentError else."""
    if len(key) == 1 and key.isprintable():
        return True, key
    if named := _NAMED.get(key.lower()):
        return False, named
    if control := _CONTROL.fullmatch(key):
        return False, "C-" + control[1].lower()
    shown = key if len(key) <= 20 else key[:17] + "..."
    raise ArgumentError(f"unknown key {shown!r}; keys are: {KEY_FORMS}")


def _pane_of(project: Project, name: str, pane: Pane | None, what: str) -> Pane:
    if pane is None:
        raise InvalidArgument(f"task '{name}' has no window (start it first) to {what}")
    return pane


async def send(
    project: Project, name: str, text: str, keys: Sequence[str], enter: bool, cause: Cause
) -> SendResult:
    """Type text literally, then keys, then Enter, into a running task's pane."""
    project.config.task(name)
    if len(text) > MAX_TEXT:
        raise ArgumentError(f"text is longer than {MAX_TEXT} characters")
    if "\0" in text:
        raise ArgumentError("text must not contain a NUL character")
    pressed = [key_name(k) for k in keys]
    if enter:
        pressed.append((False, "Enter"))
    if not text and not pressed:
        raise ArgumentError("send needs text, keys or enter")
    pane = (await project.backend.snapshot()).panes.get(name)
    pane = _pane_of(project, name, pane, "type into")
    if pane.dead:
        raise InvalidArgument(f"task '{name}' is not running: there is nothing to type into")
    interrupts = any(value in INTERRUPT_KEYS for literal, value in pressed if not literal)
    interrupts = interrupts or any(c in text for c in INTERRUPT_CHARS)
    # One sender at a time per task: two texts typed at once never interleave.
    lock = FileLock(project.paths.locks / f"input-{name}.lock", "typing")
    try:
        await lock.acquire(INPUT_LOCK_WAIT_S, task=name)
        held = True
    except OSError:
        held = False  # a state folder that cannot hold locks does not stop the typing
    try:
        if interrupts:
            # Its exit soon after is the sender's doing, not a crash (records.interrupted_by).
            mark = f"{pane.run or 0} {time.time():.3f} {cause.value}"
            await project.backend.mark_interrupt(pane.pane_id, mark)
        try:
            await anyio.to_thread.run_sync(project.backend.type_sync, pane.pane_id, text, pressed)
        except TmuxError:
            if interrupts:
                with contextlib.suppress(TmuxError):
                    await project.backend.mark_interrupt(pane.pane_id, "")
            raise
    finally:
        if held:
            lock.release()
    names = [value for _, value in pressed]
    project.events.record(EventType.INPUT_SENT, cause, name, chars=len(text), keys=names)
    return SendResult(task=name, pid=pane.pid, typed_chars=len(text), keys=names)


async def screen(project: Project, name: str, lines: int) -> ScreenResult:
    """The task's visible screen as plain text, its cursor and size."""
    project.config.task(name)
    pane = (await project.backend.snapshot()).panes.get(name)
    pane = _pane_of(project, name, pane, "show")
    rows, x, y, width, height = await anyio.to_thread.run_sync(
        project.backend.screen_sync, pane.pane_id
    )
    shown = [cut_line(clean_text(row.encode()).rstrip()) for row in rows]
    while shown and not shown[-1]:
        shown.pop()
    state = observe(project.config.task(name), project.records.get(name), pane).state
    return ScreenResult(
        task=name, state=state, lines=shown[-lines:], cursor_x=x, cursor_y=y, width=width,
        height=height,
    )  # fmt: skip


def compile_pattern(pattern: str) -> re.Pattern[str]:
    """A Python regular expression; ArgumentError saying what is wrong otherwise."""
    try:
        return re.compile(pattern)
    except (re.error, RecursionError, OverflowError) as exc:
        raise ArgumentError(f"pattern is not a valid regular expression: {exc}") from None


async def wait_for(
    project: Project,
    name: str,
    pattern: str,
    *,
    timeout: float,
    since: str | None = None,
    progress: Progress | None = None,
) -> WaitResult:
    """Wait until a line of the task's current run (or since `since`) matches, it exits, or
    the timeout passes."""
    task = project.config.task(name)
    rx = compile_pattern(pattern)
    began = time.monotonic()
    deadline = began + timeout
    watch = LineWatch(project.logs, name)  # before the first search: no line falls between
    try:
        running = (await project.backend.snapshot()).alive(name) is not None
        found = await anyio.to_thread.run_sync(_already_written, project, name, rx, since)
        before: deque[str] = deque(maxlen=CONTEXT_LINES)
        ended = not running
        if found is None and running and progress is not None:
            await progress(f"{name}: waiting for a line matching /{pattern}/")
        while found is None:
            for line in await anyio.to_thread.run_sync(watch.new_lines):
                if rx.search(line.text):
                    found = (line, list(before))
                    break
                before.append(line.text)
            if found is not None or ended:
                break
            pane = (await project.backend.snapshot()).panes.get(name)
            if pane is None or pane.dead:
                await drain(project, name, pane)  # its last lines are read once more
                ended = True
                continue
            if time.monotonic() >= deadline:
                break
            await anyio.sleep(min(WAIT_POLL_S, max(0.0, deadline - time.monotonic())))
    finally:
        watch.close()
    pane = (await project.backend.snapshot()).panes.get(name)
    seen = observe(task, project.records.get(name), pane)
    waited = round(time.monotonic() - began, 2)
    if found is not None:
        line, context = found
        return WaitResult(
            task=name, ok=True, outcome="matched", line=line.text, time=line.time,
            before=context, state=seen.state, waited_s=waited,
        )  # fmt: skip
    tail = await anyio.to_thread.run_sync(project.verdict_tail, name, TAIL_LINES)
    if pane is None or pane.dead:
        outcome = "exited" if running else "not_running"
        error = f"task '{name}' {exit_text(seen)} before a line matched /{pattern}/"
        if seen.state is TaskState.STOPPED:
            error = f"task '{name}' is stopped: no line matched /{pattern}/"
        return WaitResult(
            task=name, ok=False, outcome=outcome, state=seen.state, exit_code=seen.exit_code,
            exit_signal=seen.exit_signal, error=error, log_tail=tail, waited_s=waited,
        )  # fmt: skip
    return WaitResult(
        task=name, ok=False, outcome="timeout", state=seen.state,
        error=f"no line matched /{pattern}/ within {timeout:g} s", log_tail=tail,
        waited_s=waited,
    )  # fmt: skip


def _already_written(
    project: Project, name: str, rx: re.Pattern[str], since: str | None
) -> tuple[LogLine, list[str]] | None:
    """The first matching line already in the log within `since` (default: the current run)."""
    if since == "now":
        return None
    if since is None or since == "start":
        if project.logs.writer_run(name) != project.records.get(name).run:
            return None  # the current run's writer has not begun: nothing of it is written
        since = "start"
    found = project.logs.grep(
        rx.pattern, [name], since=since, max_matches=1, context=CONTEXT_LINES
    ).matches
    if not found:
        return None
    return LogLine(task=name, time=found[0].time, text=found[0].line), found[0].before
