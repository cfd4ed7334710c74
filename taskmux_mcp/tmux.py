"""The tmux backend: the only code that talks to tmux (sessions, task windows, snapshots, pipes).

User strings never reach tmux's parsers: a task's folder, environment and command travel in
one shell script (see `backend.launch_script`) passed as the pane command's last argument,
or as a file when it is too long for tmux's command line; tmux's start folder (`-c`, which
tmux format-expands) is never used.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import anyio

from .backend import Launch, Pane, Snapshot, launch_script
from .coalesce import Batched, Coalesced
from .config import SCROLLBACK_LINES
from .errors import TmuxError
from .processes import is_running, zombie_status
from .state import write_atomic

if TYPE_CHECKING:
    import libtmux
    import libtmux.common

PROJECT_OPTION = "@taskmux_project"
TASK_OPTION = "@taskmux_task"
RUN_OPTION = "@taskmux_run"
STOP_OPTION = "@taskmux_stop"
INTERRUPT_OPTION = "@taskmux_interrupt"
CONFIG_OPTION = "@taskmux_config"
WINDOW_SIZE = ("220", "50")
BATCH_CHARS = 12_000  # of one tmux call's arguments: tmux refuses about 16 KB in all
_REPORT_TAG = "taskmux-launched "
_RECEIPT_TAG = "taskmux-done "
INLINE_SCRIPT_MAX = 4096  # tmux refuses command lines over about 16 KB in all
_HOLD_ARGV = ("/bin/sh", "-c", "read -r _")  # a new session's first window, until the task's

_FIELDS = (
    "pid",
    "session_name",
    PROJECT_OPTION,
    "window_id",
    TASK_OPTION,
    "pane_id",
    "pane_pid",
    "pane_dead",
    "pane_dead_status",
    "pane_dead_signal",
    "pane_dead_time",
    RUN_OPTION,
    STOP_OPTION,
    "pane_pipe",
    INTERRUPT_OPTION,
)
_SEP = "\x1f"
_FORMAT = _SEP.join("#{" + name + "}" for name in _FIELDS)
_NO_SERVER = re.compile(
    r"no server running|error connecting to|No such file or directory|server exited|lost server"
)
# A server with no session left (it is about to exit, or exit-empty is off) has no target.
_NO_SESSIONS = re.compile(r"no current target")


def _int(text: str) -> int | None:
    return int(text) if text.lstrip("-").isdigit() else None


class TmuxBackend:
    """tmux access for one project, identified by its key (not by session or window names)."""

    def __init__(
        self,
        project_key: str,
        session_name: str,
        socket_name: str | None = None,
        *,
        scripts: Path | None = None,
        config_path: Path | None = None,
        scrollback: int = SCROLLBACK_LINES,
    ) -> None:
        self.project_key = project_key
        self.session_name = session_name
        self.socket_name = socket_name or "default"
        self.scripts = scripts
        self.config_path = config_path
        self.scrollback = scrollback
        self._snapshots = Coalesced(self._read_snapshot)
        self._commands: Batched[list[str], None] = Batched(self._run_batch)

    def _call(self, args: Sequence[str]) -> tuple[int, list[str], str]:
        """One tmux process on this project's server: (status, stdout lines, stderr)."""
        binary = shutil.which("tmux")
        if binary is None:
            raise TmuxError("tmux is not installed or not on PATH (taskmux needs tmux >= 3.2)")
        # -L always: an inherited $TMUX must not pick another server than the one configured.
        env = {key: value for key, value in os.environ.items() if key != "TMUX"}
        done = subprocess.run(
            [binary, "-L", self.socket_name, *args],
            capture_output=True,
            text=True,
            errors="backslashreplace",
            env=env,
            stdin=subprocess.DEVNULL,
            check=False,
        )
        return done.returncode, done.stdout.splitlines(), done.stderr.strip()

    def run(self, *args: str) -> list[str]:
        """Run one tmux command sequence; return its stdout lines; raise TmuxError on failure."""
        status, lines, errors = self._call(args)
        if status != 0:
            message = errors.replace("\n", "; ") or f"tmux exited {status}"
            raise TmuxError(f"tmux {args[0]} failed: {message}")
        return lines

    def snapshot_sync(self) -> Snapshot:
        """Every pane of this project and which session names are taken, in one tmux spawn
        begun after the call (shared by the callers that asked meanwhile).

        A second spawn happens only to recover an exit status tmux failed to collect.
        """
        return self._snapshots.get()

    def _read_snapshot(self) -> Snapshot:
        snapshot, (unreaped, unresolved), server_pid = self._list_panes()
        if unreaped and server_pid:
            # tmux 3.3 can miss a SIGCHLD when panes die together, leaving a zombie whose
            # status it never reads; another SIGCHLD makes it reap. A pane's end read from
            # its zombie needs no second look.
            with contextlib.suppress(OSError):
                os.kill(server_pid, signal.SIGCHLD)
                if unresolved:
                    time.sleep(0.02)
                    snapshot, _, _ = self._list_panes()
        return snapshot

    def _list_panes(self) -> tuple[Snapshot, tuple[bool, bool], int | None]:
        """The snapshot, whether tmux has yet to reap a dead pane's process (and whether the
        end of one could not be read from its zombie), and the tmux server's pid."""
        status, lines, message = self._call(["list-panes", "-a", "-F", _FORMAT])
        if status != 0:
            if _NO_SERVER.search(message) or not message:
                return Snapshot(server_running=False, session=None), (False, False), None
            if _NO_SESSIONS.search(message):
                return Snapshot(server_running=True, session=None), (False, False), None
            raise TmuxError(f"tmux list-panes failed: {message}")
        panes: dict[str, Pane] = {}
        ours: str | None = None
        in_use: set[str] = set()
        owners: dict[str, str] = {}
        unreaped = unresolved = False
        server_pid: int | None = None
        for line in lines:
            parts = line.split(_SEP)
            if len(parts) != len(_FIELDS):
                continue
            row = dict(zip(_FIELDS, parts, strict=True))
            server_pid = _int(row["pid"])
            session = row["session_name"]
            in_use.add(session)
            owners.setdefault(session, row[PROJECT_OPTION])
            if row[PROJECT_OPTION] != self.project_key:
                continue
            ours = session
            task = row[TASK_OPTION]
            if not task or task in panes:
                continue
            pid = _int(row["pane_pid"])
            exit_status, exit_signal = _int(row["pane_dead_status"]), _int(row["pane_dead_signal"])
            dead_time: float | None = _int(row["pane_dead_time"])
            known_end = row["pane_dead_status"] != "" or row["pane_dead_signal"] != ""
            reaped = True
            if row["pane_dead"] == "1" and not known_end:
                # tmux saw the pty close before it reaped the process (it soon will)
                wait_status = zombie_status(pid, server_pid) if pid and server_pid else None
                unreaped = True
                if wait_status is None:
                    unresolved = True
                else:
                    known_end, dead_time, reaped = True, time.time(), False
                    if os.WIFEXITED(wait_status):
                        exit_status = os.WEXITSTATUS(wait_status)
                    if os.WIFSIGNALED(wait_status):
                        exit_signal = os.WTERMSIG(wait_status)
            # A pane is dead once its pty closed, but its process may still run (it closed
            # the terminal) or wait to be reaped: it has ended only when tmux knows how.
            dead = row["pane_dead"] == "1" and (known_end or not is_running(pid))
            panes[task] = Pane(
                task=task,
                session=session,
                window_id=row["window_id"],
                pane_id=row["pane_id"],
                pid=pid,
                dead=dead,
                exit_status=exit_status,
                exit_signal=exit_signal,
                dead_time=dead_time,
                run=_int(row[RUN_OPTION]),
                stop_mark=row[STOP_OPTION] or None,
                piped=row["pane_pipe"] == "1",
                interrupt=row[INTERRUPT_OPTION] or None,
                reaped=reaped,
            )
        foreign = None
        if ours is None and self.session_name in owners:
            foreign = owners[self.session_name] or "(a session not made by taskmux)"
        snapshot = Snapshot(
            server_running=True,
            session=ours,
            panes=panes,
            sessions_in_use=frozenset(in_use),
            foreign_owner=foreign,
        )
        return snapshot, (unreaped, unresolved), server_pid

    async def snapshot(self) -> Snapshot:
        """Async form of snapshot_sync (its waiters hold no worker thread)."""
        return await self._snapshots.aget()

    def _pane_argv(self, launch: Launch) -> list[str]:
        script = launch_script(launch)
        if len(script.encode()) <= INLINE_SCRIPT_MAX:
            return ["/bin/sh", "-c", script]
        if self.scripts is None:
            raise TmuxError(f"the command of task '{launch.task}' is too long to pass to tmux")
        path = self.scripts / f"{launch.task}.sh"
        try:
            write_atomic(path, script.encode())
        except OSError as exc:
            raise TmuxError(f"cannot write the launch script {path}: {exc.strerror}") from None
        return ["/bin/sh", str(path)]

    def launch_sync(self, launch: Launch, snapshot: Snapshot) -> Pane:
        """Run one launch as the pane process of the task's window (new, or its dead pane
        respawned: tmux refuses to respawn a live one), with its options and pipe set before
        tmux reads any output."""
        result = self.launch_many_sync([launch], snapshot)[0]
        if isinstance(result, TmuxError):
            raise result
        return result

    def launch_many_sync(
        self, launches: Sequence[Launch], snapshot: Snapshot
    ) -> list[Pane | TmuxError]:
        """Several launches in as few tmux calls as the command-line limit allows (one call
        creates many windows); each gets its pane or why it failed."""
        session = snapshot.session
        prepared: list[tuple[Launch, list[str]] | TmuxError] = []
        limit_set = False  # the session's history-limit, set before this call's first new window
        for launch in launches:
            try:
                words, session = self._launch_words(launch, snapshot, session, limit_set)
            except TmuxError as exc:
                prepared.append(exc)
                continue
            limit_set = limit_set or launch.task not in snapshot.panes
            prepared.append((launch, words))
        results: list[Pane | TmuxError] = []
        batch: list[tuple[Launch, list[str]]] = []
        size = 0
        for item in [*prepared, None]:
            item_size = 0 if not isinstance(item, tuple) else _words_size(item[1])
            if batch and (item is None or size + item_size > BATCH_CHARS):
                results.extend(self._run_launches(batch))
                batch, size = [], 0
            if isinstance(item, TmuxError):
                results.append(item)
            elif item is not None:
                batch.append(item)
                size += item_size
        return results

    def _run_launches(self, batch: Sequence[tuple[Launch, list[str]]]) -> list[Pane | TmuxError]:
        """One tmux call for a batch. tmux stops at a failing command: the launches before it
        are done (their reports came), it failed, the ones after it are tried again."""
        words = [w for i, (_, item) in enumerate(batch) for w in ([";"] if i else []) + item]
        status, lines, errors = self._call(words)
        reports = [line for line in lines if line.startswith(_REPORT_TAG)][: len(batch)]
        done: list[Pane | TmuxError] = [
            self._reported(launch, line) for (launch, _), line in zip(batch, reports, strict=False)
        ]
        if len(done) == len(batch):
            return done
        launch = batch[len(done)][0]
        if status == 0:  # every command ran: trying again would open windows twice
            unreported = [TmuxError(f"tmux did not report the pane of task '{item.task}'")
                          for item, _ in batch[len(done) :]]  # fmt: skip
            return [*done, *unreported]
        if "still active" in errors:
            failed = TmuxError(f"task '{launch.task}' is already running")
        else:
            message = errors.replace("\n", "; ") or f"tmux exited {status}"
            failed = TmuxError(f"tmux could not open the window of task '{launch.task}': {message}")
        rest = batch[len(done) + 1 :]
        return [*done, failed, *(self._run_launches(rest) if rest else [])]

    @staticmethod
    def _reported(launch: Launch, line: str) -> Pane:
        window_id, pane_id, pid, session_name = line[len(_REPORT_TAG) :].split(" ", 3)
        return Pane(
            task=launch.task,
            session=session_name,
            window_id=window_id,
            pane_id=pane_id,
            pid=_int(pid),
            dead=False,
            exit_status=None,
            exit_signal=None,
            dead_time=None,
            run=launch.run,
            stop_mark=None,
            piped=launch.pipe is not None,
        )

    def _launch_words(
        self, launch: Launch, snapshot: Snapshot, session: str | None, limit_set: bool = False
    ) -> tuple[list[str], str]:
        """The tmux command sequence of one launch, and the session it will be in. A new window
        gets its scrollback from the session's history-limit at its creation (tmux never changes
        it later), so the limit is set first: on a new session, whose first window would get the
        server's, that window holds the session open only until the task's window exists."""
        argv = self._pane_argv(launch)
        existing = snapshot.panes.get(launch.task)
        report_format = _REPORT_TAG + "#{window_id} #{pane_id} #{pane_pid} #{session_name}"
        if existing is not None:
            target = existing.pane_id
            create = ["respawn-pane", "-t", target, "--", *argv]
            extra: list[str] = []
            rename: list[str] = []
            session = existing.session
        else:
            nonce = f"taskmux-{secrets.token_hex(6)}"
            new_session = session is None
            session = session or self._free_session_name(snapshot)
            target = f"={session}:={nonce}"
            limit = ["set-option", "-t", f"={session}:", "history-limit", str(self.scrollback)]
            window = ["new-window", "-d", "-t", f"={session}:", "-n", nonce, "--", *argv]
            if new_session:
                hold = f"{nonce}-hold"
                create = [
                    "new-session", "-d", "-s", session, "-n", hold, "-x", WINDOW_SIZE[0],
                    "-y", WINDOW_SIZE[1], "--", *_HOLD_ARGV,
                    ";", "set-option", "-t", f"={session}:", PROJECT_OPTION, self.project_key,
                    ";", "set-option", "-t", f"={session}:", "destroy-unattached", "off",
                    ";", *limit, ";", *window,
                    # The task's window takes the first index, as if it had opened the session.
                    ";", "swap-window", "-d", "-s", target, "-t", f"={session}:={hold}",
                    ";", "kill-window", "-t", f"={session}:={hold}",
                ]  # fmt: skip
            else:
                create = window if limit_set else [*limit, ";", *window]
            # A window named at its creation (-n) keeps automatic-rename off; programs may
            # still rename it unless allow-rename is off.
            extra = [
                ";", "set-option", "-w", "-t", target, TASK_OPTION, launch.task,
                ";", "set-option", "-w", "-t", target, "allow-rename", "off",
            ]  # fmt: skip
            rename = [";", "rename-window", "-t", target, launch.task]
        pipe = ["pipe-pane", "-t", target] + ([] if launch.pipe is None else [launch.pipe])
        # A session option, so `status --all` finds the checkout; it ends in taskmux.toml,
        # never in the `;` tmux would read as a separator.
        where = [] if self.config_path is None else [
            ";", "set-option", "-t", target, CONFIG_OPTION, str(self.config_path),
        ]  # fmt: skip
        # Marks left by the last run are cleared; a new window has none. A set-option costs tmux
        # time that grows with its windows (0.5 ms at 500): none is sent that changes nothing.
        clear = [
            w for option, mark in ((STOP_OPTION, existing and existing.stop_mark),
                                   (INTERRUPT_OPTION, existing and existing.interrupt)) if mark
            for w in (";", "set-option", "-w", "-t", target, option, "")
        ]  # fmt: skip
        sequence = [
            *create,
            *where,
            ";", "set-option", "-w", "-t", target, "remain-on-exit", "on",
            ";", "set-option", "-w", "-t", target, RUN_OPTION, str(launch.run),
            *clear,
            *extra,
            ";", *pipe,
            ";", "display-message", "-p", "-t", target, report_format,
            *rename,  # last: the nonce names the window until then
        ]  # fmt: skip
        return sequence, session

    def _free_session_name(self, snapshot: Snapshot) -> str:
        """The project's name, or a name suffixed with the checkout's key when another has it."""
        if self.session_name not in snapshot.sessions_in_use:
            return self.session_name
        return self.fallback_session_name

    @property
    def fallback_session_name(self) -> str:
        """The session name used when another checkout or a user session has the project's."""
        return f"{self.session_name}-{self.project_key[-6:]}"

    async def _run(self, *args: str) -> None:
        """One tmux command, sent with the others asked for at the same moment in one call."""
        await self._commands.submit(list(args))

    async def _run_batch(self, commands: list[list[str]]) -> list[TmuxError | None]:
        return await anyio.to_thread.run_sync(self._run_commands, commands)

    def _run_commands(self, commands: Sequence[list[str]]) -> list[TmuxError | None]:
        """Commands in as few tmux calls as fit; tmux stops at a failing one: those before it
        are done (their receipts came), it failed, the ones after it are tried again."""
        results: list[TmuxError | None] = []
        todo = list(commands)
        while todo:
            batch: list[list[str]] = []
            size = 0
            while todo and (not batch or size + _words_size(todo[0]) <= BATCH_CHARS):
                size += _words_size(todo[0])
                batch.append(todo.pop(0))
            words = [
                w for i, c in enumerate(batch)
                for w in [*c, ";", "display-message", "-p", f"{_RECEIPT_TAG}{i}", ";"]
            ][:-1]  # fmt: skip
            status, lines, errors = self._call(words)
            done = sum(1 for line in lines if line.startswith(_RECEIPT_TAG))
            results.extend([None] * done)
            if done < len(batch):
                message = errors.replace("\n", "; ") or f"tmux exited {status}"
                results.append(TmuxError(f"tmux {batch[done][0]} failed: {message}"))
                todo[:0] = batch[done + 1 :]
        return results

    async def interrupt(self, pane_id: str) -> None:
        """Type C-c into the pane (SIGINT to its foreground process group)."""
        await self._run("send-keys", "-t", pane_id, "C-c")

    async def mark_stop(self, pane_id: str, kind: str) -> None:
        """Set the window's stop mark, which tmux keeps in memory (no disk needed)."""
        await self._run("set-option", "-w", "-t", pane_id, STOP_OPTION, kind)

    async def mark_interrupt(self, pane_id: str, mark: str) -> None:
        """Note on the window that someone typed an interrupt key into this run."""
        await self._run("set-option", "-w", "-t", pane_id, INTERRUPT_OPTION, mark)

    def _pane(self, pane_id: str) -> libtmux.Pane:
        import libtmux  # only send and screen need it: keeps other commands fast

        return libtmux.Pane(server=libtmux.Server(socket_name=self.socket_name), pane_id=pane_id)

    def type_sync(self, pane_id: str, text: str, keys: Sequence[tuple[bool, str]]) -> None:
        """Type text literally, then keys (literal characters or key names), into a pane."""
        pane = self._pane(pane_id)
        typed = [(True, chunk) for chunk in _literal_chunks(text)]
        for literal, value in [*typed, *keys]:
            # tmux reads an argument ending in ';' as a command separator: "\;" is a literal ';'.
            word = value[:-1] + "\\;" if value.endswith(";") else value
            flags = ["-l", "--"] if literal else ["--"]
            _checked(pane.cmd("send-keys", *flags, word), "send-keys")

    def screen_sync(self, pane_id: str) -> tuple[list[str], int, int, int, int]:
        """A pane's visible screen (plain text), cursor and size: rows, x, y, width, height."""
        pane = self._pane(pane_id)
        shown = _checked(pane.cmd("display-message", "-p", _SCREEN_FORMAT), "display-message")
        x, y, width, height = (int(v) for v in shown[0].split(" "))
        lines = _checked(pane.cmd("capture-pane", "-p"), "capture-pane")
        return lines, x, y, width, height

    async def repipe(self, pane_id: str, pipe: str) -> None:
        """Attach a fresh pipe to a live pane."""
        await self._run("pipe-pane", "-t", pane_id, pipe)

    async def kill_window(self, window_id: str) -> None:
        """Remove a task's window."""
        await self._run("kill-window", "-t", window_id)

    async def kill_session(self, session: str) -> None:
        """Remove the project's session (and every window left in it)."""
        await self._run("kill-session", "-t", f"={session}")

    def select_argv(self, target: str, *, inside: bool) -> list[str]:
        """tmux attach (or switch-client from inside tmux) to a session or window."""
        tmux = shutil.which("tmux") or "tmux"
        verb = "switch-client" if inside else "attach-session"
        return [tmux, "-L", self.socket_name, verb, "-t", target]


_ALL_FIELDS = ("session_name", PROJECT_OPTION, CONFIG_OPTION, TASK_OPTION, "pane_dead")
_ALL_FORMAT = _SEP.join("#{" + name + "}" for name in _ALL_FIELDS)


def taskmux_sessions(socket_name: str | None) -> dict[str, tuple[str, str, dict[str, bool]]]:
    """Every taskmux project on a tmux server: key → (session, config path, task → alive)."""
    backend = TmuxBackend("", "", socket_name)
    status, lines, _ = backend._call(["list-panes", "-a", "-F", _ALL_FORMAT])
    found: dict[str, tuple[str, str, dict[str, bool]]] = {}
    if status != 0:
        return found
    for line in lines:
        parts = line.split(_SEP)
        if len(parts) != len(_ALL_FIELDS) or not parts[1]:
            continue  # a session taskmux did not make
        session, key, config, task, dead = parts
        entry = found.setdefault(key, (session, config, {}))
        if task:
            entry[2][task] = dead != "1"
    return found


def version_problem(minimum: str = "3.2") -> str | None:
    """Why the tmux on PATH cannot serve taskmux, or None when it can."""
    import libtmux.common  # only `taskmux check` needs it: keeps other commands fast

    try:
        if libtmux.common.has_gte_version(minimum):
            return None
        found = libtmux.common.get_version()
    except Exception as exc:  # libtmux raises its own types for a missing or odd tmux
        return f"tmux is not usable: {exc}"
    return f"tmux {found} is too old; taskmux needs tmux >= {minimum}"


_SCREEN_FORMAT = "#{cursor_x} #{cursor_y} #{pane_width} #{pane_height}"
_LITERAL_CHUNK = 1024


def _words_size(words: Sequence[str]) -> int:
    """What a command takes of a tmux call's limit (its receipt or report included)."""
    return sum(len(w.encode()) + 1 for w in words) + 64


def _literal_chunks(text: str) -> list[str]:
    """Text in pieces tmux takes as one argument each."""
    return [text[i : i + _LITERAL_CHUNK] for i in range(0, len(text), _LITERAL_CHUNK)]


def _checked(done: libtmux.common.tmux_cmd, what: str) -> list[str]:
    if done.returncode != 0:
        message = "; ".join(done.stderr) or f"tmux exited {done.returncode}"
        raise TmuxError(f"tmux {what} failed: {message}")
    return list(done.stdout)
