"""Process trees, stop/kill escalation and port owners, against real processes and sockets."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import psutil
import pytest

from taskmux_mcp.errors import InvalidArgument, PortBusy
from taskmux_mcp.processes import (
    CHECKOUT_ENV,
    ENV_MARKER,
    PidWatch,
    ProcessInfo,
    describe_signal,
    kill_tree,
    port_listeners,
    process_tree,
    reclaim_port,
    signal_all,
    stop_tree,
    task_processes,
    zombie_status,
)

RUN_MARKER = "TASKMUX_TEST_RUN"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def alive(pid: int) -> bool:
    """True while the pid is a live process (zombies count as gone)."""
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def wait_for(condition: Callable[[], Any], timeout: float = 5.0, what: str = "condition") -> Any:
    """Poll until condition() is truthy; return its value or fail after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def cmdlines(procs: list[ProcessInfo]) -> set[str]:
    return {p.cmdline for p in procs}


class Spawner:
    """Starts marked processes and kills every one of them (and their offspring) at teardown."""

    def __init__(self) -> None:
        self.run = uuid.uuid4().hex
        self.popens: list[subprocess.Popen[bytes]] = []

    def task_id(self) -> str:
        return f"test-{uuid.uuid4().hex[:8]}/task"

    def shell(self, script: str, task_id: str | None = None) -> subprocess.Popen[bytes]:
        """Run `sh -c script` as a session leader, like a tmux pane process."""
        env = {**os.environ, RUN_MARKER: self.run}
        if task_id is not None:
            env[ENV_MARKER] = task_id
        proc = subprocess.Popen(["/bin/sh", "-c", script], env=env, start_new_session=True)
        self.popens.append(proc)
        return proc

    def cleanup(self) -> None:
        for proc in psutil.process_iter():
            with contextlib.suppress(psutil.Error):
                if proc.environ().get(RUN_MARKER) == self.run:
                    proc.kill()
        for popen in self.popens:
            with contextlib.suppress(OSError):
                os.killpg(popen.pid, signal.SIGKILL)
            with contextlib.suppress(OSError):
                popen.kill()
            popen.wait(timeout=5)
            if popen.stdout is not None:
                popen.stdout.close()


@pytest.fixture
def spawner() -> Iterator[Spawner]:
    # Started as a background job of a non-interactive shell, we inherit an ignored SIGINT,
    # which our children would keep; tmux gives a pane process default signal handling.
    previous = signal.getsignal(signal.SIGINT)
    if previous == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    s = Spawner()
    try:
        yield s
    finally:
        s.cleanup()
        signal.signal(signal.SIGINT, previous)


def sigint_group(pgid: int) -> Callable[[], Any]:
    """The `interrupt` a test uses: SIGINT to the pane's group (tmux sends C-c instead)."""

    async def interrupt() -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGINT)

    return interrupt


def test_task_processes_finds_whole_tree(spawner: Spawner) -> None:
    task = spawner.task_id()
    root = spawner.shell("sleep 1001 & sleep 1002 & wait", task)
    found = wait_for(
        lambda: (
            (p := task_processes(root.pid, None))
            and len(p) == 3
            and {"sleep 1001", "sleep 1002"} <= cmdlines(p)
            and p
        ),
        what="three processes, the sleeps exec'd",
    )
    assert {"sleep 1001", "sleep 1002"} <= cmdlines(found)
    assert root.pid in {p.pid for p in found}
    for p in found:
        assert p.sid == root.pid
        assert p.pgid == root.pid
    assert {p.pid for p in task_processes(None, task)} == {p.pid for p in found}
    assert task_processes(None, spawner.task_id()) == []
    assert task_processes(None, None) == []


def test_env_marker_finds_grandchild_that_left_session(spawner: Spawner) -> None:
    task = spawner.task_id()
    root = spawner.shell("(setsid sleep 1003 &); sleep 1001 & wait", task)
    escaped = wait_for(
        lambda: [p for p in task_processes(None, task) if p.cmdline == "sleep 1003"],
        what="the setsid'd grandchild",
    )[0]
    assert escaped.sid != root.pid
    assert escaped.pgid != root.pid
    assert escaped.ppid != root.pid
    assert "sleep 1003" not in cmdlines(task_processes(root.pid, None))
    assert "sleep 1003" in cmdlines(task_processes(root.pid, task))


@pytest.mark.parametrize("proc_fs", [True, False], ids=["proc", "psutil"])
def test_both_scans_see_the_same_tree(
    spawner: Spawner, monkeypatch: pytest.MonkeyPatch, proc_fs: bool
) -> None:
    if not proc_fs:  # as off Linux: no /proc to read, psutil does the scan
        real_isdir = os.path.isdir
        monkeypatch.setattr(os.path, "isdir", lambda p: p != "/proc/self/" and real_isdir(p))
    task = spawner.task_id()
    root = spawner.shell("(setsid sleep 1003 &); sleep 1001 & wait", task)
    found = wait_for(
        lambda: (p := task_processes(root.pid, task)) and len(p) == 3 and p,
        what="the tree with its escaped grandchild",
    )
    assert {"sleep 1001", "sleep 1003"} <= cmdlines(found)
    assert next(p for p in found if p.pid == root.pid).sid == root.pid


@pytest.mark.anyio
async def test_stop_tree_kills_escaped_grandchild(spawner: Spawner) -> None:
    task = spawner.task_id()
    root = spawner.shell("(setsid sleep 1003 &); sleep 1001 & wait", task)
    procs = wait_for(
        lambda: (p := task_processes(root.pid, task)) and len(p) == 3 and p,
        what="tree with escaped grandchild",
    )
    outcome = await stop_tree(root.pid, task, interrupt=sigint_group(root.pid), grace=0.3)
    assert outcome.stopped
    assert outcome.remaining == ()
    assert outcome.signal_used in ("SIGTERM", "SIGKILL")
    assert not any(alive(p.pid) for p in procs)
    assert task_processes(root.pid, task) == []


@pytest.mark.anyio
async def test_stop_tree_returns_quickly_when_sigint_is_enough(spawner: Spawner) -> None:
    task = spawner.task_id()
    root = spawner.shell("sleep 1001; sleep 1002", task)
    wait_for(lambda: "sleep 1001" in cmdlines(task_processes(root.pid, task)), what="sleep")
    outcome = await stop_tree(root.pid, task, interrupt=sigint_group(root.pid), grace=30)
    assert outcome.stopped
    assert outcome.signal_used == "SIGINT"
    assert outcome.duration_s < 5
    assert task_processes(root.pid, task) == []


@pytest.mark.anyio
async def test_stop_tree_waits_for_what_outlives_the_root(spawner: Spawner) -> None:
    # The root ends on SIGINT at once; a child that left its group and ignores SIGINT is
    # still the task's: the stop is not done when the root's pidfd fires.
    task = spawner.task_id()
    root = spawner.shell("setsid sh -c 'trap \"\" INT; sleep 1003; true' & exec sleep 1001", task)
    wait_for(lambda: "sleep 1003" in cmdlines(task_processes(root.pid, task)), what="child")
    outcome = await stop_tree(root.pid, task, interrupt=sigint_group(root.pid), grace=0.4)
    assert outcome.stopped and outcome.signal_used == "SIGTERM"
    assert outcome.duration_s >= 0.4
    assert task_processes(root.pid, task) == []


@pytest.mark.anyio
async def test_stop_tree_polls_where_pidfds_are_refused(
    spawner: Spawner, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refused(pid: int) -> int:
        raise PermissionError("pidfd_open blocked by a seccomp profile")

    monkeypatch.setattr(os, "pidfd_open", refused)
    task = spawner.task_id()
    root = spawner.shell("sleep 1001 & sleep 1002 & wait", task)
    wait_for(lambda: len(task_processes(root.pid, task)) == 3, what="tree")
    outcome = await stop_tree(root.pid, task, interrupt=sigint_group(root.pid), grace=0.3)
    assert outcome.stopped and outcome.signal_used == "SIGTERM"
    assert outcome.duration_s < 3
    assert task_processes(root.pid, task) == []


@pytest.mark.anyio
async def test_stop_tree_escalates_to_sigterm(spawner: Spawner) -> None:
    # Background jobs of a non-interactive shell ignore SIGINT, so only SIGTERM ends them.
    task = spawner.task_id()
    root = spawner.shell("sleep 1001 & sleep 1002 & wait", task)
    wait_for(lambda: len(task_processes(root.pid, task)) == 3, what="tree")
    outcome = await stop_tree(root.pid, task, interrupt=sigint_group(root.pid), grace=0.3)
    assert outcome.stopped
    assert outcome.signal_used == "SIGTERM"
    assert task_processes(root.pid, task) == []


@pytest.mark.anyio
async def test_stop_tree_goes_on_when_interrupt_raises(spawner: Spawner) -> None:
    task = spawner.task_id()
    root = spawner.shell("sleep 1001; true", task)
    wait_for(lambda: "sleep 1001" in cmdlines(task_processes(root.pid, task)), what="sleep")

    async def broken() -> None:
        raise RuntimeError("tmux is gone")

    outcome = await stop_tree(root.pid, task, interrupt=broken, grace=0.2)
    assert outcome.stopped
    assert outcome.signal_used == "SIGTERM"


@pytest.mark.anyio
async def test_stop_tree_sigkills_what_ignores_int_and_term(spawner: Spawner) -> None:
    task = spawner.task_id()
    root = spawner.shell("trap '' INT TERM; while :; do sleep 0.5; done", task)
    wait_for(lambda: len(task_processes(root.pid, task)) >= 2, what="loop with a sleep")
    outcome = await stop_tree(
        root.pid, task, interrupt=sigint_group(root.pid), grace=0.2, term_grace=0.3
    )
    assert outcome.stopped
    assert outcome.signal_used == "SIGKILL"
    assert outcome.remaining == ()
    assert task_processes(root.pid, task) == []
    assert not alive(root.pid)


@pytest.mark.anyio
async def test_stop_tree_of_nothing(spawner: Spawner) -> None:
    root = spawner.shell("exit 0")
    root.wait(timeout=5)
    called: list[bool] = []

    async def interrupt() -> None:
        called.append(True)

    outcome = await stop_tree(root.pid, spawner.task_id(), interrupt=interrupt, grace=5)
    assert outcome.stopped
    assert outcome.signal_used == "none"
    assert called == []


@pytest.mark.anyio
async def test_kill_tree(spawner: Spawner) -> None:
    task = spawner.task_id()
    root = spawner.shell("trap '' INT TERM; (setsid sleep 1003 &); sleep 1001 & wait", task)
    procs = wait_for(lambda: (p := task_processes(root.pid, task)) and len(p) == 3 and p)
    outcome = await kill_tree(root.pid, task)
    assert outcome.stopped
    assert outcome.signal_used == "SIGKILL"
    assert outcome.duration_s < 3
    assert not any(alive(p.pid) for p in procs)
    again = await kill_tree(root.pid, task)
    assert again.signal_used == "none"


def test_process_tree_puts_parents_first(spawner: Spawner) -> None:
    task = spawner.task_id()
    root = spawner.shell("sh -c 'sleep 1001; true' & sleep 1002 & wait", task)

    def settled() -> list[Any] | None:  # four processes, the inner child past its exec
        t = process_tree(root.pid, task)
        return t if len(t) == 4 and any(p.cmdline == "sleep 1001" for p in t) else None

    tree = wait_for(settled)
    position = {p.pid: i for i, p in enumerate(tree)}
    assert tree[0].pid == root.pid
    for p in tree:
        if p.ppid in position:
            assert position[p.ppid] < position[p.pid]
    inner = next(p for p in tree if p.cmdline == "sleep 1001")
    assert inner.ppid != root.pid


def test_signal_all_reaches_unlisted_group_members(spawner: Spawner) -> None:
    task = spawner.task_id()
    root = spawner.shell("sleep 1001 & sleep 1002 & wait", task)
    procs = wait_for(lambda: (p := task_processes(root.pid, task)) and len(p) == 3 and p)
    just_root = [p for p in procs if p.pid == root.pid]
    signal_all(just_root, signal.SIGTERM)
    wait_for(lambda: not any(alive(p.pid) for p in procs), what="group to die")


def test_never_reports_itself_or_its_ancestors(spawner: Spawner) -> None:
    task = spawner.task_id()
    code = (
        "import os; from taskmux_mcp.processes import task_processes as t; "
        "print(os.getpid(), os.getppid(), *[p.pid for p in t(os.getppid(), os.environ["
        f"{ENV_MARKER!r}])])"
    )
    env = {**os.environ, ENV_MARKER: task, RUN_MARKER: spawner.run}
    out = subprocess.run(
        ["/bin/sh", "-c", f'sleep 1001 & "{sys.executable}" -c "{code}"; kill $!'],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout.split()
    me, parent, *found = map(int, out)
    assert me not in found
    assert parent not in found
    assert len(found) == 1
    assert os.getpid() not in {p.pid for p in task_processes(os.getpid(), None)}


def test_describe_signal() -> None:
    assert describe_signal(11) == "SIGSEGV"
    assert describe_signal(9) == "SIGKILL"
    assert describe_signal(None) is None
    assert describe_signal(999) == "signal 999"


def _until_zombie(pid: int) -> None:
    deadline = time.monotonic() + 10
    while psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, f"{pid} did not end"
        time.sleep(0.005)


@pytest.mark.parametrize(
    ("argv", "signal_", "code"),
    [(["sleep", "100"], signal.SIGKILL, None), (["sh", "-c", "exit 3"], None, 3)],
)
def test_zombie_status_reads_an_unreaped_end(
    argv: list[str], signal_: signal.Signals | None, code: int | None
) -> None:
    child = subprocess.Popen(argv)
    try:
        if signal_ is not None:
            assert zombie_status(child.pid, os.getpid()) is None  # still running
            child.send_signal(signal_)
        _until_zombie(child.pid)
        status = zombie_status(child.pid, os.getpid())
        assert status is not None
        assert zombie_status(child.pid, os.getppid()) is None  # another parent's: a reused pid
        if signal_ is not None:
            assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal_
        else:
            assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == code
    finally:
        child.kill()
        child.wait()
    assert zombie_status(child.pid, os.getpid()) is None  # reaped: nothing to read


def test_zombie_status_of_a_live_process_is_none() -> None:
    assert zombie_status(os.getpid(), os.getppid()) is None


LISTENER = """
    import os, socket, sys, time
    family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((sys.argv[1], 0))
    s.listen()
    print(s.getsockname()[1])
    if len(sys.argv) > 2:
        conn, _ = s.accept()
        if os.fork() == 0:
            s.close()
            print(os.getpid())
            time.sleep(1000)
            os._exit(0)
        conn.close()
    time.sleep(1000)
"""

CLIENT = """
    import socket, sys, time
    c = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
    print("connected")
    time.sleep(1000)
"""


def start_listener(spawner: Spawner, host: str, *, accept: bool = False) -> tuple[Any, int]:
    env = {**os.environ, RUN_MARKER: spawner.run, "PYTHONUNBUFFERED": "1"}
    argv = [sys.executable, "-c", textwrap.dedent(LISTENER), host] + (["accept"] if accept else [])
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, start_new_session=True)
    spawner.popens.append(proc)
    assert proc.stdout is not None
    port = int(proc.stdout.readline())
    return proc, port


def start_client(spawner: Spawner, port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, RUN_MARKER: spawner.run, "PYTHONUNBUFFERED": "1"}
    argv = [sys.executable, "-c", textwrap.dedent(CLIENT), str(port)]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, start_new_session=True)
    spawner.popens.append(proc)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == b"connected"
    return proc


@pytest.mark.parametrize("host", ["127.0.0.1", "0.0.0.0", "::1", "::"])
def test_port_listeners_finds_listener(spawner: Spawner, host: str) -> None:
    server, port = start_listener(spawner, host)
    found = port_listeners(port)
    assert [p.pid for p in found] == [server.pid]
    assert found[0].name.startswith("python")


def start_listener_of(spawner: Spawner, task_id: str, **extra: str) -> tuple[Any, int]:
    """A listener carrying a task's marker (and any other variables), as a task's leftover."""
    env = {**os.environ, RUN_MARKER: spawner.run, "PYTHONUNBUFFERED": "1", ENV_MARKER: task_id}
    argv = [sys.executable, "-c", textwrap.dedent(LISTENER), "127.0.0.1"]
    proc = subprocess.Popen(
        argv, env={**env, **extra}, stdout=subprocess.PIPE, start_new_session=True
    )
    spawner.popens.append(proc)
    assert proc.stdout is not None
    return proc, int(proc.stdout.readline())


@pytest.mark.anyio
async def test_reclaim_port_ends_the_tasks_own_leftover_and_spares_connected_processes(
    spawner: Spawner,
) -> None:
    server, port = start_listener_of(spawner, "demo-1234/api")
    client = start_client(spawner, port)
    ended = await reclaim_port(port, "demo-1234/api")
    assert [h.process.pid for h in ended] == [server.pid]
    wait_for(lambda: server.poll() is not None, what="listener to die")
    assert port_listeners(port) == []
    assert alive(client.pid)


@pytest.mark.anyio
async def test_reclaim_port_never_signals_a_stranger_without_force(spawner: Spawner) -> None:
    server, port = start_listener(spawner, "127.0.0.1")
    with pytest.raises(PortBusy, match=rf"port {port} is in use by pid {server.pid} \(") as err:
        await reclaim_port(port, "demo-1234/api")
    assert "--force-port" in str(err.value)
    assert alive(server.pid)


@pytest.mark.anyio
async def test_reclaim_port_names_another_checkouts_task(spawner: Spawner) -> None:
    other = {"TASKMUX_PROJECT": "demo", "TASKMUX_TASK": "api", CHECKOUT_ENV: "/src/demo-wt2"}
    server, port = start_listener_of(spawner, "demo-99999999/api", **other)
    with pytest.raises(PortBusy) as err:
        await reclaim_port(port, "demo-1234/api")
    assert "task 'api' of project 'demo' in /src/demo-wt2" in str(err.value)
    assert alive(server.pid)


@pytest.mark.anyio
async def test_reclaim_port_by_force_escalates_to_sigkill(spawner: Spawner) -> None:
    code = "import signal; signal.signal(signal.SIGTERM, signal.SIG_IGN)\n" + textwrap.dedent(
        LISTENER
    )
    env = {**os.environ, RUN_MARKER: spawner.run, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "127.0.0.1"],
        env=env,
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    spawner.popens.append(proc)
    assert proc.stdout is not None
    port = int(proc.stdout.readline())
    ended = await reclaim_port(port, "demo-1234/api", force=True, term_grace=0.2)
    assert [h.process.pid for h in ended] == [proc.pid]
    assert proc.wait(timeout=5) == -signal.SIGKILL
    assert port_listeners(port) == []


@pytest.mark.anyio
async def test_reclaim_port_refuses_to_kill_itself_even_by_force() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(PortBusy, match=rf"pid {os.getpid()}\b.*taskmux itself"):
            await reclaim_port(port, "demo-1234/api", force=True)
        assert [p.pid for p in port_listeners(port)] == [os.getpid()]


@pytest.mark.anyio
async def test_reclaim_port_of_a_free_port() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening
        assert await reclaim_port(port, "demo-1234/api") == []


def test_port_listeners_rejects_bad_port() -> None:
    with pytest.raises(InvalidArgument):
        port_listeners(70000)


def test_pid_watch_wakes_on_an_exit_from_the_kernel() -> None:
    children = [subprocess.Popen(["sleep", "1000"]) for _ in range(3)]
    watch = PidWatch()
    try:
        pids = [c.pid for c in children]
        watch.watch(pids)
        assert not watch.ended()
        assert anyio.run(watch.wait, 0.2) is False  # nothing ended: the timeout

        async def kill_then_wait() -> float:
            began = time.monotonic()
            os.kill(pids[1], signal.SIGKILL)
            assert await watch.wait(10)
            return time.monotonic() - began

        assert anyio.run(kill_then_wait) < 1.0
        assert 0 < watch.ended_ago(pids[1]) < 10 and watch.ended_ago(pids[0]) == 0
        assert watch.ended() and not watch.ended()  # news once
        watch.watch(pids)  # still listed (tmux has not said so yet): news again, soon
        assert watch.ended()
        for _ in range(PidWatch.RECHECKS):
            watch.watch(pids)
            watch.ended()
        watch.watch(pids)  # ...but not for ever: a stale list never makes the loop spin
        assert not watch.ended() and anyio.run(watch.wait, 0.05) is False
        children[1].wait()
        watch.watch([pids[0], pids[2]])
        assert not watch.ended() and anyio.run(watch.wait, 0.1) is False
        watch.watch([pids[0], 2**22 + 12345])  # no such process: ended before we looked
        assert watch.ended()
    finally:
        watch.close()
        for child in children:
            child.kill()
            child.wait()


def test_pid_watch_falls_back_to_checking_pids_without_pidfds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def refused(pid: int) -> int:
        raise PermissionError("pidfd_open blocked by a seccomp profile")

    monkeypatch.setattr(os, "pidfd_open", refused)
    child = subprocess.Popen(["sleep", "1000"])
    watch = PidWatch()
    try:
        watch.watch([child.pid])
        assert not watch.ended()  # refused is not ended
        child.kill()
        child.wait()
        began = time.monotonic()
        assert anyio.run(watch.wait, 60) is True  # checked every POLL_S, not at the timeout
        assert time.monotonic() - began < 30
        assert watch.ended()
        assert not watch.ended()
    finally:
        watch.close()
        if child.poll() is None:
            child.kill()
            child.wait()


def test_pid_watch_is_woken_from_another_thread() -> None:
    watch = PidWatch()
    try:

        async def woken_during_a_long_wait() -> bool:
            began = time.monotonic()
            threading.Timer(0.1, watch.wake).start()
            assert await watch.wait(60) is False  # woken: no process ended
            return time.monotonic() - began < 30

        assert anyio.run(woken_during_a_long_wait)
        watch.wake()  # rung before the wait (during a pass): the next wait returns at once
        watch.watch([])  # looking at the watch meanwhile does not swallow the ring
        began = time.monotonic()
        assert anyio.run(watch.wait, 60) is False
        assert time.monotonic() - began < 30
    finally:
        watch.close()
