"""Helpers shared by the tests: polling with a deadline, projects on a private tmux server."""

from __future__ import annotations

import contextlib
import fcntl
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn, TypeVar

import anyio
import psutil
import pytest

from taskmux_mcp.endpoint import ServerInfo, running_server
from taskmux_mcp.events import Cause
from taskmux_mcp.models import TaskStatus
from taskmux_mcp.project import Project as Facade
from taskmux_mcp.project import ProjectSlot

T = TypeVar("T")
REPO = Path(__file__).resolve().parent.parent


def wait_until(predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.05) -> T:
    """Poll predicate until it returns something truthy; fail with its last value at timeout."""
    deadline = time.monotonic() + timeout
    value = predicate()
    while not value:
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s (last value: {value!r})")
        time.sleep(interval)
        value = predicate()
    return value


@dataclass
class TmuxServer:
    """A private tmux server for one test (own TMUX_TMPDIR and socket name)."""

    tmpdir: Path
    socket: str

    def cmd(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a tmux command against this server."""
        return subprocess.run(
            ["tmux", "-L", self.socket, *args],
            capture_output=True,
            text=True,
            check=check,
            env={**os.environ, "TMUX_TMPDIR": str(self.tmpdir)},
        )

    def kill(self) -> None:
        """Kill the server."""
        self.cmd("kill-server", check=False)


class FakeClock:
    """A clock the test moves by hand; `sleep` moves it instead of waiting."""

    def __init__(self, start: float | None = None) -> None:
        self.wall = time.time() if start is None else start
        self.mono = 1000.0

    def now(self) -> float:
        """Fake wall time."""
        return self.wall

    def monotonic(self) -> float:
        """Fake monotonic time."""
        return self.mono

    def advance(self, seconds: float) -> None:
        """Move time forward."""
        self.wall += seconds
        self.mono += seconds

    async def sleep(self, seconds: float) -> None:
        """Move time forward and let others run."""
        self.advance(max(0.0, seconds))
        await anyio.sleep(0)


@dataclass
class Workspace:
    """A project folder with taskmux.toml, its own state folder and tmux server."""

    root: Path
    state_dir: Path
    server: TmuxServer
    env: dict[str, str]
    facades: list[Facade] = field(default_factory=list)

    def write(self, toml: str) -> Path:
        """Write taskmux.toml."""
        path = self.root / "taskmux.toml"
        path.write_text(textwrap.dedent(toml))
        return path

    def open(
        self,
        cause: Cause = Cause.USER,
        *,
        clock: object | None = None,
        host: str = "test",
        hosted_monitor: bool = False,
    ) -> Facade:
        """The project's facade on the current config (no hosted monitor unless asked)."""
        options: dict[str, object] = {}
        if clock is not None:
            options["clock"] = clock
        facade = Facade(
            self.root / "taskmux.toml",
            socket_name=self.server.socket,
            cause=cause,
            host=host,
            environ=self.env,
            hosted_monitor=hosted_monitor,
            **options,  # type: ignore[arg-type]
        )
        self.facades.append(facade)
        return facade

    def cli(
        self,
        *args: str,
        timeout: float = 60,
        check: bool = False,
        env_extra: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run the installed `taskmux` CLI in a subprocess against this project."""
        exe = Path(sys.executable).with_name("taskmux")
        return subprocess.run(
            [str(exe), "--project", str(self.root), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**self.env, **(env_extra or {})},
            check=check,
        )

    def task_pids(self) -> list[int]:
        """Every live process carrying one of this project's task markers."""
        keys = {facade.key for facade in self.facades}
        found = []
        for proc in psutil.process_iter(["pid"]):
            try:
                env = proc.environ()
                marker = env.get("TASKMUX_TASK_ID", "")
                if marker.split("/")[0] in keys and proc.status() != psutil.STATUS_ZOMBIE:
                    found.append(proc.pid)
            except (psutil.Error, OSError):
                continue
        return found


def slot_for(
    project: Workspace,
    *,
    cause: Cause = Cause.AGENT,
    host: str = "mcp",
    root: Path | None = None,
    cwd: Path | None = None,
    hosted_monitor: bool = False,
) -> ProjectSlot:
    """A slot like a long-lived face's, on the project's private tmux server."""

    def opener() -> Facade:
        facade = Facade.open(
            project=None if cwd is not None else (root or project.root),
            cwd=cwd,
            socket_name=project.server.socket,
            cause=cause,
            host=host,
            environ=project.env,
            hosted_monitor=hosted_monitor,
        )
        project.facades.append(facade)
        return facade

    return ProjectSlot(opener)


def run(coro_fn: Callable[[], object]) -> object:
    """Run an async callable to completion."""
    return anyio.run(coro_fn)  # type: ignore[arg-type]


def make_project(
    monkeypatch_env: Callable[[str, str], None], root_parent: Path
) -> Iterator[Workspace]:
    """Create a project with a private tmux server and state folder; clean everything afterwards."""
    tmpdir = Path(tempfile.mkdtemp(prefix="tmx", dir="/tmp"))
    server = TmuxServer(tmpdir, f"t{uuid.uuid4().hex[:10]}")
    root = root_parent / "proj"
    root.mkdir()
    state = root_parent / "state"
    home = root_parent / "home"
    home.mkdir()
    env = {
        **os.environ,
        "TMUX_TMPDIR": str(tmpdir),
        "TASKMUX_STATE_DIR": str(state),
        "TASKMUX_TMUX_SOCKET": server.socket,
        "HOME": str(home),
    }
    env.pop("TMUX", None)
    env.pop("TASKMUX_PROJECT", None)
    for key in ("TMUX_TMPDIR", "TASKMUX_STATE_DIR", "TASKMUX_TMUX_SOCKET", "HOME"):
        monkeypatch_env(key, env[key])
    project = Workspace(root=root, state_dir=state, server=server, env=env)
    try:
        yield project
    finally:
        pids = project.task_pids()
        server.kill()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
        shutil.rmtree(tmpdir, ignore_errors=True)


# ------------------------------------------------------------------ monitors in their own process


def spawn_monitor(
    project: Workspace, procs: list[subprocess.Popen[bytes]]
) -> subprocess.Popen[bytes]:
    """Start `taskmux monitor` for the project in its own process (ended by the caller)."""
    exe = Path(sys.executable).with_name("taskmux")
    proc = subprocess.Popen(
        [str(exe), "--project", str(project.root), "monitor"],
        env=project.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    procs.append(proc)
    return proc


def acting_pid(sup: Facade) -> int | None:
    """The pid of the acting monitor, if any."""
    return sup.monitor_info().pid


def run_monitor(project: Workspace, procs: list[subprocess.Popen[bytes]], sup: Facade) -> int:
    """Start a monitor and wait until it acts."""
    proc = spawn_monitor(project, procs)
    wait_until(lambda: acting_pid(sup) == proc.pid, timeout=15)
    return proc.pid


def end_processes(procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM each process still running, then SIGKILL what does not exit in time."""
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def marked(sup: Facade, task: str) -> list[int]:
    """Live processes carrying the task's marker (its whole process tree, wherever it went)."""
    found = []
    for proc in psutil.process_iter(["pid"]):
        try:
            ours = proc.environ().get("TASKMUX_TASK_ID") == sup.task_id(task)
            if ours and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc.pid)
        except (psutil.Error, OSError):
            continue
    return sorted(found)


def status_of(sup: Facade, name: str) -> TaskStatus:
    """The current status of one task."""
    return next(t for t in sup.status_sync().tasks if t.name == name)


def events_of(sup: Facade, kind: str, task: str | None = None) -> list[dict[str, object]]:
    """Details of the recorded events of one type (with _time and _cause)."""
    return [
        {**e.details, "_time": e.time.timestamp(), "_cause": e.cause}
        for e in sup.events_sync([task] if task else [], limit=10_000).events
        if e.type == kind
    ]


# ------------------------------------------------------------------ taskmux serve


@contextlib.contextmanager
def serving(
    project: Workspace, *args: str, port: str | None = "0"
) -> Iterator[tuple[subprocess.Popen[str], ServerInfo]]:
    """A real `taskmux serve --port 0` (or --port port; None: the port serve chooses) for the
    project in its own process, until the block ends (then SIGTERM, and its exit status must
    be 0)."""
    exe = Path(sys.executable).with_name("taskmux")
    chosen = ["--port", port] if port is not None else []
    proc = subprocess.Popen(
        [str(exe), "--project", str(project.root), "serve", *chosen, *args],
        env=project.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    paths = project.open().paths
    try:
        info = wait_until(
            lambda: proc.poll() is not None or running_server(paths.server), timeout=30
        )
        assert proc.poll() is None and isinstance(info, ServerInfo), (
            proc.stderr and proc.stderr.read()
        )
        yield proc, info
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert "Traceback" not in err, err


# ------------------------------------------------------------------ Node tools from npm, cached

NODE_MIN = (22, 19)
CACHE = REPO / ".cache"


def unavailable(why: str) -> NoReturn:
    """Skip a test whose outside tool cannot be had here; fail it in CI (CI=true), which must."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI must be able to run this test: {why}")
    pytest.skip(why)


def node_version(node: str) -> tuple[int, ...]:
    """The version of a node executable; () when it does not run."""
    try:
        out = subprocess.run(
            [node, "--version"], capture_output=True, text=True, timeout=10, check=False
        )
    except OSError:
        return ()
    found = re.match(r"v(\d+)\.(\d+)", out.stdout.strip())
    return tuple(int(x) for x in found.groups()) if found else ()


@contextlib.contextmanager
def _cache_lock(name: str) -> Iterator[None]:
    """One npm install into a cache folder at a time (xdist workers share .cache/)."""
    CACHE.mkdir(exist_ok=True)
    (CACHE / ".gitignore").write_text("*\n")
    with (CACHE / f"{name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def npm_install(prefix: Path, package: str, path_env: str) -> str | None:
    """Install an npm package under the cache; why not, when it cannot be done."""
    npm = shutil.which("npm")
    if npm is None:
        return "npm is not installed"
    prefix.mkdir(parents=True, exist_ok=True)
    command = ["install", "--no-save", "--no-audit", "--no-fund", "--prefix", str(prefix), package]
    try:
        done = subprocess.run(
            [npm, *command],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
            env={**os.environ, "PATH": path_env},
        )
    except subprocess.TimeoutExpired:
        return f"npm install {package} timed out"
    if done.returncode != 0:
        return f"npm install {package} failed (registry unreachable?): {done.stderr.strip()[-300:]}"
    return None


def node_path() -> str:
    """A PATH holding Node >= 22.19: the system's, or the npm build installed under .cache/."""
    path_env = os.environ.get("PATH", "")
    system_node = shutil.which("node")
    if system_node is not None and node_version(system_node) >= NODE_MIN:
        return path_env
    arch = {"x86_64": "x64", "aarch64": "arm64", "arm64": "arm64"}.get(platform.machine())
    if arch is None:
        unavailable(f"no Node >= 22.19 and no npm Node build for {platform.machine()}")
    package = f"node-{'darwin' if sys.platform == 'darwin' else 'linux'}-{arch}"
    node_dir = CACHE / "node" / "node_modules" / package / "bin"
    with _cache_lock("node"):
        if node_version(str(node_dir / "node")) < NODE_MIN:
            why = npm_install(CACHE / "node", f"{package}@22", path_env)
            if why:
                unavailable(f"Node here is older than 22.19 and a newer one cannot be had: {why}")
    if node_version(str(node_dir / "node")) < NODE_MIN:
        unavailable("Node >= 22.19 is not available")
    return f"{node_dir}{os.pathsep}{path_env}"


def npm_tool(folder: str, package: str, command: str) -> tuple[Path, str]:
    """A Node CLI (npm PACKAGE installed under .cache/FOLDER) and a PATH holding Node >= 22.19."""
    path_env = node_path()
    cli = CACHE / folder / "node_modules" / ".bin" / command
    with _cache_lock(folder):
        if not cli.exists():
            why = npm_install(CACHE / folder, package, path_env)
            if why:
                unavailable(f"{package} cannot be installed: {why}")
    if not cli.exists():
        unavailable(f"{package} installed no {command} command")
    return cli, path_env
