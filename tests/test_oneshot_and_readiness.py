"""Issue 12: oneshot steps, depends_on conditions, ready_log readiness, stop_signal, old files."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
import pytest
from support import FakeClock, Workspace, events_of, status_of, wait_until

from taskmux_mcp import readiness
from taskmux_mcp.config import Condition, RestartPolicy, parse_config
from taskmux_mcp.errors import ConfigError, ConfigProblem
from taskmux_mcp.models import ActionResult, Health, TaskResult, TaskState
from taskmux_mcp.project import Project as Facade
from taskmux_mcp.records import Phase
from taskmux_mcp.state import CONFIG_FILENAME


class Background:
    """An action of the facade run in its own thread while the test watches the project."""

    def __init__(self, action: Callable[[], Awaitable[ActionResult]]) -> None:
        self.result: ActionResult | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(action,), daemon=True)
        self.thread.start()

    def _run(self, action: Callable[[], Awaitable[ActionResult]]) -> None:
        try:
            self.result = anyio.run(action)
        except BaseException as exc:  # handed to the test in join()
            self.error = exc

    @property
    def running(self) -> bool:
        """Whether the action has not returned yet."""
        return self.thread.is_alive()

    def join(self, timeout: float = 30.0) -> ActionResult:
        """The action's result, once it returned."""
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"the action did not return within {timeout}s"
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


def by_name(result: ActionResult) -> dict[str, TaskResult]:
    """The per-task results of an action, by task name."""
    return {t.name: t for t in result.tasks}


def run_lines(sup: Facade, name: str) -> list[str]:
    """The log lines of the task's current run."""
    return sup.logs.last_run_lines(name, 50)


def healthy_now(sup: Facade, name: str) -> bool | None:
    """What the task's checks say right now (nothing recorded)."""
    return anyio.run(lambda: sup.health([name])).tasks[0].healthy


def problems_of(text: str, folder: Path) -> list[ConfigProblem]:
    """The problems parse_config reports for text (it must fail)."""
    with pytest.raises(ConfigError) as info:
        parse_config(text, folder / CONFIG_FILENAME)
    return list(info.value.problems)


def stamps(path: Path) -> dict[str, float]:
    """`WHAT SECONDS` lines of a file written by the tasks, as {what: seconds}."""
    found = {}
    for line in path.read_text().splitlines():
        what, at = line.split()
        found[what] = float(at)
    return found


# ---------------------------------------------------------------- 1. a watcher is long-running


TAILWIND = """
    [tasks.tailwind]
    command = "sleep 1000"
    auto_start = false
    restart_policy = "no"
    """


def test_readme_tailwind_watcher_starts_and_returns_at_once(project: Workspace) -> None:
    project.write(TAILWIND)
    sup = project.open()
    began = time.monotonic()
    result = anyio.run(lambda: sup.start(["tailwind"], timeout=20))
    took = time.monotonic() - began
    assert result.ok, result
    task = result.tasks[0]
    assert task.action == "started" and task.state is TaskState.RUNNING, task
    assert task.error is None and took < 5, (took, task)
    assert status_of(sup, "tailwind").state is TaskState.RUNNING


def test_readme_tailwind_watcher_starts_from_the_cli(project: Workspace) -> None:
    project.write(TAILWIND)
    began = time.monotonic()
    started = project.cli("start", "tailwind", timeout=30)
    took = time.monotonic() - began
    assert started.returncode == 0, (started.stdout, started.stderr)
    assert "timed out" not in started.stdout + started.stderr
    assert took < 10, took
    assert status_of(project.open(), "tailwind").state is TaskState.RUNNING


# ---------------------------------------------------------------- 2. oneshot gates its users


def test_two_second_oneshot_migrate_gates_web(project: Workspace) -> None:
    project.write(
        """
        [tasks.migrate]
        command = "sleep 2; echo migrated $(date +%s.%N) >> order.txt"
        oneshot = true
        [tasks.web]
        command = "echo web $(date +%s.%N) >> order.txt; exec sleep 1000"
        depends_on = ["migrate"]
        """
    )
    sup = project.open()
    began = time.time()
    result = anyio.run(lambda: sup.start(["web"], timeout=20))
    assert result.ok, result
    tasks = by_name(result)
    migrate, web = tasks["migrate"], tasks["web"]
    assert migrate.ok and migrate.action == "exited" and migrate.exit_code == 0, migrate
    assert migrate.state is TaskState.EXITED, migrate
    assert web.ok and web.state is TaskState.RUNNING, web
    order = project.root / "order.txt"
    assert [line.split()[0] for line in order.read_text().splitlines()] == ["migrated", "web"]
    at = stamps(order)
    assert at["migrated"] - began >= 1.9, at  # the 2 s step really ran to its end...
    assert at["web"] >= at["migrated"], at  # ...before web's command began
    started_at = sup.records.get("web").started_at
    assert started_at is not None and started_at >= at["migrated"] - 0.05, (started_at, at)


def test_failing_oneshot_blocks_its_dependent(project: Workspace) -> None:
    project.write(
        """
        [tasks.migrate]
        command = "echo cannot reach db; sleep 0.1; exit 3"
        oneshot = true
        [tasks.web]
        command = "echo web >> order.txt; exec sleep 1000"
        depends_on = ["migrate"]
        """
    )
    sup = project.open()
    result = anyio.run(lambda: sup.start(["web"], timeout=20))
    assert not result.ok
    tasks = by_name(result)
    migrate, web = tasks["migrate"], tasks["web"]
    assert not migrate.ok and migrate.exit_code == 3, migrate
    assert web.action == "not_started" and web.blocked_by == "migrate", web
    error = web.error or ""
    assert "migrate" in error and "status 3" in error, error
    assert not (project.root / "order.txt").exists()
    assert status_of(sup, "web").pid is None


def test_completed_oneshot_reruns_only_when_named_or_changed(project: Workspace) -> None:
    toml = """
        [tasks.migrate]
        command = "echo {word} >> runs.txt"
        oneshot = true
        [tasks.web]
        command = "sleep 1000"
        depends_on = ["migrate"]
        """
    project.write(toml.format(word="one"))
    runs = project.root / "runs.txt"
    sup = project.open()
    assert anyio.run(lambda: sup.start(["web"], timeout=20)).ok
    assert runs.read_text() == "one\n"
    anyio.run(lambda: sup.stop(["web"]))
    again = anyio.run(lambda: sup.start(["web"], timeout=20))
    assert again.ok, again
    tasks = by_name(again)
    assert tasks["migrate"].action == "already_done", tasks
    assert tasks["web"].action == "started", tasks
    assert runs.read_text() == "one\n"
    named = anyio.run(lambda: sup.start(["migrate"], timeout=20))
    assert named.ok and named.tasks[0].action == "exited", named
    assert runs.read_text() == "one\none\n"
    project.write(toml.format(word="two"))
    changed = project.open()
    after_edit = anyio.run(lambda: changed.start(["web"], timeout=20))
    assert after_edit.ok, after_edit
    assert by_name(after_edit)["migrate"].action == "exited", after_edit
    assert runs.read_text() == "one\none\ntwo\n"


# ---------------------------------------------------------------- 3. dependency conditions


def test_condition_started_launches_the_dependent_while_the_dependency_starts(
    project: Workspace,
) -> None:
    project.write(
        """
        [tasks.db]
        command = "sleep 1000"
        health_check = "test -f up.flag"
        health_start_period = 60
        [tasks.web]
        command = "sleep 1000"
        depends_on = [{ task = "db", condition = "started" }]
        """
    )
    sup = project.open()
    watcher = project.open()
    start = Background(lambda: sup.start(["web"], timeout=30))
    wait_until(lambda: status_of(watcher, "web").state is TaskState.RUNNING, timeout=10)
    assert not (project.root / "up.flag").exists()
    assert status_of(watcher, "db").state is TaskState.STARTING
    assert healthy_now(watcher, "db") is False
    (project.root / "up.flag").touch()
    result = start.join()
    assert result.ok, result
    assert by_name(result)["db"].health is Health.HEALTHY


def test_condition_healthy_waits_for_the_health_check(project: Workspace) -> None:
    project.write(
        """
        [tasks.db]
        command = "sleep 1000"
        health_check = "test -f up.flag"
        health_start_period = 60
        [tasks.web]
        command = "sleep 1000"
        depends_on = [{ task = "db", condition = "healthy" }]
        """
    )
    sup = project.open()
    watcher = project.open()
    start = Background(lambda: sup.start(["web"], timeout=30))
    # db is up and has failed its check a few times: web must still not be launched.
    wait_until(lambda: len(watcher.records.get("db").checks) >= 3, timeout=10)
    assert status_of(watcher, "db").state is TaskState.STARTING
    assert status_of(watcher, "web").pid is None
    assert watcher.backend.snapshot_sync().panes.get("web") is None
    opened = time.time()
    (project.root / "up.flag").touch()
    result = start.join()
    assert result.ok, result
    started_at = sup.records.get("web").started_at
    assert started_at is not None and started_at >= opened, (started_at, opened)


def test_a_dependent_is_launched_the_moment_its_dependency_passes_its_check(
    project: Workspace,
) -> None:
    project.write(
        """
        [tasks.db]
        command = "sleep 0.3; touch db.ready; sleep 1000"
        health_check = "test -f db.ready"
        health_start_period = 600
        [tasks.web]
        command = "sleep 1000"
        depends_on = ["db"]
        """
    )
    clock = FakeClock()
    sup = project.open(clock=clock)
    result = anyio.run(lambda: sup.start(timeout=30))
    assert result.ok, result
    db, web = sup.records.get("db"), sup.records.get("web")
    # The wait between db's probes is the clock's, and short: well under the poll that
    # follows a start period.
    moments = [check.at for check in db.checks]
    gaps = [later - earlier for earlier, later in itertools.pairwise(moments)]
    assert gaps and all(0 < gap < readiness.READY_POLL_S for gap in gaps), gaps
    assert db.checks[-1].healthy and not db.checks[0].healthy
    # Nothing waited between db's passing check and web's launch: no tick of the clock.
    assert db.healthy_since is not None and web.started_at == db.healthy_since


def test_a_probe_of_a_start_comes_tens_of_ms_after_the_last_within_its_start_period() -> None:
    pause = readiness.probe_pause
    assert pause(0.004, alive_for=1.0, start_period=10) == pytest.approx(0.016)
    assert pause(0.0, alive_for=1.0, start_period=10) == readiness.START_PROBE_S
    assert pause(0.05, alive_for=1.0, start_period=10) == 0.05  # a slow probe: half the time
    assert pause(5.0, alive_for=1.0, start_period=10) == readiness.READY_POLL_S
    assert pause(0.004, alive_for=10.0, start_period=10) == readiness.READY_POLL_S


def test_a_crash_while_its_check_is_awaited_is_reported_with_its_status(
    project: Workspace,
) -> None:
    project.write(
        """
        [tasks.api]
        command = "sleep 0.3; exit 3"
        health_check = "false"
        health_start_period = 600
        """
    )
    sup = project.open()
    result = anyio.run(lambda: sup.start(timeout=30))
    api = result.tasks[0]
    assert not result.ok
    assert (api.action, api.exit_code) == ("crashed", 3), api


def test_condition_completed_waits_for_a_long_running_task_to_exit_0(
    project: Workspace,
) -> None:
    project.write(
        """
        [tasks.build]
        command = "sleep 1.5; echo built $(date +%s.%N) >> order.txt"
        restart_policy = "no"
        [tasks.web]
        command = "echo web $(date +%s.%N) >> order.txt; exec sleep 1000"
        depends_on = [{ task = "build", condition = "completed" }]
        """
    )
    sup = project.open()
    began = time.time()
    result = anyio.run(lambda: sup.start(["web"], timeout=20))
    assert result.ok, result
    order = project.root / "order.txt"
    assert [line.split()[0] for line in order.read_text().splitlines()] == ["built", "web"]
    at = stamps(order)
    assert at["built"] - began >= 1.4 and at["web"] >= at["built"], at
    assert status_of(sup, "web").state is TaskState.RUNNING


def test_condition_completed_on_a_failing_task_blocks_the_dependent(project: Workspace) -> None:
    project.write(
        """
        [tasks.build]
        command = "sleep 1.5; echo build broke; exit 1"
        restart_policy = "no"
        [tasks.web]
        command = "echo web >> order.txt; exec sleep 1000"
        depends_on = [{ task = "build", condition = "completed" }]
        """
    )
    sup = project.open()
    result = anyio.run(lambda: sup.start(["web"], timeout=20))
    assert not result.ok
    web = by_name(result)["web"]
    assert web.action == "not_started" and web.blocked_by == "build", web
    error = web.error or ""
    assert "build" in error and "status 1" in error, error
    assert not (project.root / "order.txt").exists()


def test_compose_spellings_of_conditions_load(tmp_path: Path) -> None:
    listed = parse_config(
        """
        [tasks.db]
        command = "x"
        [tasks.web]
        command = "x"
        depends_on = [{ task = "db", condition = "service_healthy" }]
        """,
        tmp_path / CONFIG_FILENAME,
    )
    assert listed.condition("web", "db") is Condition.HEALTHY
    assert listed.task("web").depends_on == ("db",)
    mapped = parse_config(
        """
        [tasks.db]
        command = "x"
        [tasks.setup]
        command = "x"
        oneshot = true
        [tasks.web]
        command = "x"
        depends_on = { db = { condition = "service_started" }, setup = {} }
        """,
        tmp_path / CONFIG_FILENAME,
    )
    assert mapped.task("web").depends_on == ("db", "setup")
    assert mapped.condition("web", "db") is Condition.STARTED
    assert mapped.condition("web", "setup") is Condition.COMPLETED  # short: a oneshot completes


def test_policy_no_without_check_is_long_running_and_warned_about(tmp_path: Path) -> None:
    text = """
        [tasks.setup]
        command = "x"
        restart_policy = "no"
        [tasks.web]
        command = "x"
        depends_on = ["setup"]
        """
    cfg = parse_config(text, tmp_path / CONFIG_FILENAME)
    assert not cfg.task("setup").oneshot
    assert cfg.condition("web", "setup") is Condition.HEALTHY
    hint = [w for w in cfg.warnings if "task 'setup'" in w]
    assert len(hint) == 1 and "web" in hint[0] and "oneshot = true" in hint[0], cfg.warnings
    explicit = text.replace('["setup"]', '[{ task = "setup", condition = "completed" }]')
    assert parse_config(explicit, tmp_path / CONFIG_FILENAME).warnings == ()


# ---------------------------------------------------------------- 4. config errors


def one_problem(text: str, folder: Path) -> ConfigProblem:
    """The single problem of text."""
    found = problems_of(text, folder)
    assert len(found) == 1, found
    return found[0]


def test_oneshot_restarted_always_is_rejected(tmp_path: Path) -> None:
    problem = one_problem(
        '[tasks.migrate]\ncommand = "x"\noneshot = true\nrestart_policy = "always"\n', tmp_path
    )
    assert (problem.task, problem.key) == ("migrate", "restart_policy"), problem
    assert "oneshot" in problem.message
    ok = parse_config(
        '[tasks.migrate]\ncommand = "x"\noneshot = true\n', tmp_path / CONFIG_FILENAME
    )
    assert ok.task("migrate").restart_policy is RestartPolicy.NO


@pytest.mark.parametrize(
    "line",
    ['health_url = "http://127.0.0.1:9/"', 'health_check = "true"', 'ready_log = "done"'],
)
def test_oneshot_with_a_health_check_is_rejected(tmp_path: Path, line: str) -> None:
    problem = one_problem(f'[tasks.migrate]\ncommand = "x"\noneshot = true\n{line}\n', tmp_path)
    key = line.split(" =", maxsplit=1)[0]
    assert (problem.task, problem.key) == ("migrate", key), problem
    assert "oneshot" in problem.message and key in problem.message


def test_healthy_condition_on_a_oneshot_is_rejected(tmp_path: Path) -> None:
    problem = one_problem(
        """
        [tasks.migrate]
        command = "x"
        oneshot = true
        [tasks.web]
        command = "x"
        depends_on = [{ task = "migrate", condition = "healthy" }]
        """,
        tmp_path,
    )
    assert (problem.task, problem.key) == ("web", "depends_on"), problem
    assert "migrate" in problem.message and '"completed"' in problem.message, problem


def test_unknown_condition_suggests_the_closest(tmp_path: Path) -> None:
    problem = one_problem(
        """
        [tasks.db]
        command = "x"
        [tasks.web]
        command = "x"
        depends_on = [{ task = "db", condition = "complete" }]
        """,
        tmp_path,
    )
    assert (problem.task, problem.key) == ("web", "depends_on"), problem
    assert "did you mean 'completed'?" in problem.message, problem


def test_depends_on_table_needs_a_task(tmp_path: Path) -> None:
    problem = one_problem(
        """
        [tasks.db]
        command = "x"
        [tasks.web]
        command = "x"
        depends_on = [{ condition = "healthy" }]
        """,
        tmp_path,
    )
    assert (problem.task, problem.key) == ("web", "depends_on"), problem
    assert 'task = "NAME"' in problem.message, problem


def test_invalid_ready_log_regex_is_rejected(tmp_path: Path) -> None:
    problem = one_problem('[tasks.web]\ncommand = "x"\nready_log = "Listening (on"\n', tmp_path)
    assert (problem.task, problem.key) == ("web", "ready_log"), problem
    assert "regular expression" in problem.message, problem


# ---------------------------------------------------------------- 5. ready_log


def test_ready_log_gates_start_until_the_line(project: Workspace) -> None:
    project.write(
        """
        [tasks.api]
        command = "sh -c 'echo booting; sleep 1; echo Listening on 8000; exec sleep 1000'"
        ready_log = "Listening on"
        """
    )
    sup = project.open()
    result = anyio.run(lambda: sup.start(["api"], timeout=20))
    assert result.ok, result
    api = result.tasks[0]
    assert api.action == "started" and api.health is Health.HEALTHY, api
    assert api.duration_s is not None and api.duration_s >= 0.9, api
    assert "Listening on 8000" in run_lines(sup, "api")
    assert status_of(sup, "api").state is TaskState.RUNNING


GATED = "sh -c 'echo booting; while [ ! -f gate ]; do sleep 0.05; done; echo Listening on 8000; exec sleep 1000'"  # noqa: E501


def test_ready_log_a_line_before_the_match_is_not_enough(project: Workspace) -> None:
    project.write(
        f"""
        [tasks.api]
        command = "{GATED}"
        ready_log = "Listening on"
        health_start_period = 60
        """
    )
    sup = project.open()
    watcher = project.open()
    start = Background(lambda: sup.start(["api"], timeout=30))
    wait_until(lambda: "booting" in run_lines(watcher, "api"), timeout=10)
    wait_until(lambda: len(watcher.records.get("api").checks) >= 2, timeout=10)
    assert start.running
    assert status_of(watcher, "api").state is TaskState.STARTING
    assert healthy_now(watcher, "api") is False
    (project.root / "gate").touch()
    result = start.join()
    assert result.ok and result.tasks[0].health is Health.HEALTHY, result
    assert status_of(watcher, "api").state is TaskState.RUNNING


def test_ready_log_a_line_of_the_previous_run_never_counts(project: Workspace) -> None:
    project.write(
        f"""
        [tasks.api]
        command = "{GATED}"
        ready_log = "Listening on"
        health_start_period = 60
        """
    )
    gate = project.root / "gate"
    gate.touch()
    sup = project.open()
    assert anyio.run(lambda: sup.start(["api"], timeout=20)).ok
    assert "Listening on 8000" in run_lines(sup, "api")
    gate.unlink()
    watcher = project.open()
    restart = Background(lambda: sup.restart(["api"], timeout=30))
    wait_until(lambda: watcher.records.get("api").run == 2, timeout=10)
    wait_until(lambda: watcher.logs.writer_run("api") == 2, timeout=10)  # run 2's log began
    wait_until(lambda: "booting" in run_lines(watcher, "api"), timeout=10)
    assert "Listening on 8000" not in run_lines(watcher, "api")
    wait_until(lambda: len(watcher.records.get("api").checks) >= 2, timeout=10)
    assert healthy_now(watcher, "api") is False
    assert status_of(watcher, "api").state is TaskState.STARTING
    assert restart.running
    gate.touch()
    result = restart.join()
    assert result.ok, result
    assert healthy_now(watcher, "api") is True


def test_ready_log_and_health_check_must_both_hold(project: Workspace) -> None:
    project.write(
        """
        [tasks.api]
        command = "echo Listening on 8000; exec sleep 1000"
        ready_log = "Listening on"
        health_check = "test -f ok.flag"
        health_start_period = 60
        """
    )
    sup = project.open()
    watcher = project.open()
    start = Background(lambda: sup.start(["api"], timeout=30))
    wait_until(lambda: "Listening on 8000" in run_lines(watcher, "api"), timeout=10)
    wait_until(lambda: len(watcher.records.get("api").checks) >= 2, timeout=10)
    assert start.running
    assert healthy_now(watcher, "api") is False
    assert status_of(watcher, "api").state is TaskState.STARTING
    (project.root / "ok.flag").touch()
    result = start.join()
    assert result.ok and result.tasks[0].health is Health.HEALTHY, result
    assert healthy_now(watcher, "api") is True


def test_dependent_waits_for_the_ready_log_line(project: Workspace) -> None:
    project.write(
        f"""
        [tasks.api]
        command = "{GATED}"
        ready_log = "Listening on"
        health_start_period = 60
        [tasks.web]
        command = "sleep 1000"
        depends_on = ["api"]
        """
    )
    sup = project.open()
    watcher = project.open()
    start = Background(lambda: sup.start(["web"], timeout=30))
    wait_until(lambda: "booting" in run_lines(watcher, "api"), timeout=10)
    wait_until(lambda: len(watcher.records.get("api").checks) >= 3, timeout=10)
    assert watcher.backend.snapshot_sync().panes.get("web") is None
    opened = time.time()
    (project.root / "gate").touch()
    result = start.join()
    assert result.ok, result
    started_at = sup.records.get("web").started_at
    assert started_at is not None and started_at >= opened, (started_at, opened)


def test_ready_log_matches_ansi_colored_lines(project: Workspace) -> None:
    project.write(
        r"""
        [tasks.vite]
        command = "printf '\\033[32mready in 120ms\\033[0m\\n'; exec sleep 1000"
        ready_log = "ready in"
        health_start_period = 60
        [tasks.split]
        command = "printf '  \\033[1mVITE\\033[22m  \\033[32mready\\033[39m in \\033[1m120\\033[22m ms\\n'; exec sleep 1000"
        ready_log = "VITE +ready in \\d+ ms$"
        health_start_period = 60
        """  # noqa: E501
    )
    sup = project.open()
    result = anyio.run(lambda: sup.start(["vite", "split"], timeout=10))
    assert result.ok, result
    assert all(t.health is Health.HEALTHY for t in result.tasks), result


# ---------------------------------------------------------------- 6. stop_signal


def test_default_stop_signal_is_sigint(project: Workspace) -> None:
    project.write(
        """
        [tasks.api]
        command = "trap 'echo got-int; exit 0' INT; trap '' TERM; while :; do sleep 0.1; done"
        stop_grace_period = 20
        """
    )
    sup = project.open()
    assert anyio.run(lambda: sup.start(["api"], timeout=20)).ok
    stopped = anyio.run(lambda: sup.stop(["api"]))
    assert stopped.ok, stopped
    task = stopped.tasks[0]
    assert task.duration_s is not None and task.duration_s < 10, task
    assert task.exit_code == 0, task
    assert any("got-int" in line.text for line in sup.logs_sync(["api"]).lines)
    assert events_of(sup, "stopped", "api")[0]["signal"] == "SIGINT"


def test_sigquit_stop_signal_loads_and_is_sent(project: Workspace) -> None:
    cfg = parse_config(
        '[tasks.a]\ncommand = "x"\nstop_signal = "quit"\n', project.root / CONFIG_FILENAME
    )
    assert cfg.task("a").stop_signal == "SIGQUIT"
    project.write(
        """
        [tasks.api]
        command = "trap 'echo got-quit; exit 0' QUIT; trap '' INT TERM; while :; do sleep 0.1; done"
        stop_signal = "SIGQUIT"
        stop_grace_period = 20
        """
    )
    sup = project.open()
    assert anyio.run(lambda: sup.start(["api"], timeout=20)).ok
    stopped = anyio.run(lambda: sup.stop(["api"]))
    assert stopped.ok, stopped
    task = stopped.tasks[0]
    assert task.duration_s is not None and task.duration_s < 10, task
    assert any("got-quit" in line.text for line in sup.logs_sync(["api"]).lines)
    assert events_of(sup, "stopped", "api")[0]["signal"] == "SIGQUIT"


# ---------------------------------------------------------------- 7. taskmux 0.3 / 0.9 files


TASKMUX_0_9 = """
    name = "legacy"
    auto_start = false
    auto_daemon = true
    auto_inject_agents = false

    [worktree]
    enabled = true
    separator = "-"
    main_branches = ["main", "master"]

    [tunnel.cloudflare]
    zone_id = "0123456789abcdef"

    [tasks.api]
    command = "sleep 1000"
    host = "api"
    host_path = "/api"
    tunnel = "cloudflare"
    public_hostname = "api.example.com"
    health_url = "http://127.0.0.1:18080/health"
    health_expected_status = 204
    health_expected_body = "ok"
    boot_grace = 7
    health_retries_tcp = 9
    log_file = "logs/api.log"
    log_max_size = "5MB"
    log_max_files = 4

    [tasks.web]
    command = "sleep 1000"
    host = "web"
    boot_grace = 2.5
    health_retries_tcp = 6
    log_file = "logs/web.log"
    """
IGNORED_IN_TASKS = {
    "host": ["api", "web"],
    "host_path": ["api"],
    "tunnel": ["api"],
    "public_hostname": ["api"],
    "log_file": ["api", "web"],
}
IGNORED_AT_TOP = ["auto_daemon", "auto_inject_agents", "worktree", "tunnel"]


def assert_legacy_warnings(warnings: list[str] | tuple[str, ...]) -> None:
    """Each ignored key of TASKMUX_0_9 named once, with the tasks that use it."""
    text = list(warnings)
    for key, owners in IGNORED_IN_TASKS.items():
        hits = [w for w in text if f"ignored key '{key}' in task" in w]
        assert len(hits) == 1, (key, text)
        assert all(owner in hits[0] for owner in owners), (key, hits)
    for key in IGNORED_AT_TOP:
        hits = [w for w in text if f"ignored key '{key}':" in w]
        assert len(hits) == 1, (key, text)
    mapped = ("boot_grace", "health_retries_tcp", "log_max_size", "log_max_files", "expected")
    assert not [w for w in text if any(m in w for m in mapped)], text


def test_taskmux_0_9_file_with_every_key_loads(tmp_path: Path) -> None:
    cfg = parse_config(TASKMUX_0_9, tmp_path / CONFIG_FILENAME)
    api, web = cfg.task("api"), cfg.task("web")
    assert api.health_start_period == 7 and web.health_start_period == 2.5
    assert api.health_expected_status == (204,) and api.health_expected_body == "ok"
    assert api.health_retries == 3  # health_retries_tcp counts only without an HTTP/shell check
    assert web.health_retries == 6
    assert api.log_max_bytes == 5 * 1024 * 1024 and api.log_max_files == 4
    assert web.log_max_bytes is None
    assert_legacy_warnings(cfg.warnings)
    assert len(cfg.warnings) == len(IGNORED_IN_TASKS) + len(IGNORED_AT_TOP), cfg.warnings


def test_taskmux_0_9_warnings_in_check_and_status(project: Workspace) -> None:
    project.write(TASKMUX_0_9)
    checked = project.cli("check")
    assert checked.returncode == 0, (checked.stdout, checked.stderr)
    assert_legacy_warnings([line for line in checked.stderr.splitlines() if "warning" in line])
    shown = project.cli("status")
    assert shown.returncode == 0, (shown.stdout, shown.stderr)
    assert_legacy_warnings(
        [line for line in (shown.stdout + shown.stderr).splitlines() if "warning" in line]
    )
    assert_legacy_warnings(project.open().status_sync().warnings)


def test_taskmux_0_3_file_with_log_keys_loads(tmp_path: Path) -> None:
    cfg = parse_config(
        """
        name = "old"
        [tasks.server]
        command = "python -m http.server 8000"
        log_file = "server.log"
        log_max_size = "10MB"
        log_max_files = 5
        """,
        tmp_path / CONFIG_FILENAME,
    )
    server = cfg.task("server")
    assert server.log_max_bytes == 10 * 1024 * 1024 and server.log_max_files == 5
    assert [w for w in cfg.warnings if "'log_file' in task server" in w], cfg.warnings


def test_task_log_max_size_rotates_its_log(project: Workspace) -> None:
    project.write(
        """
        [tasks.chatty]
        command = "for i in $(seq 1 300); do echo line $i of some chatter to fill the log; done; exec sleep 1000"
        log_max_size = "2KB"
        log_max_files = 2
        [tasks.quiet]
        command = "for i in $(seq 1 300); do echo line $i of some chatter to fill the log; done; exec sleep 1000"
        """  # noqa: E501
    )
    sup = project.open()
    assert sup.config.logs.max_bytes > 100_000  # the project default would not rotate
    assert anyio.run(lambda: sup.start(["chatty", "quiet"], timeout=20)).ok
    folder = sup.logs.log_dir
    wait_until((folder / "chatty.log.1").is_file, timeout=10)
    wait_until(lambda: any("line 300 " in t for t in run_lines(sup, "quiet")), timeout=10)
    assert not (folder / "quiet.log.1").exists()
    assert (folder / "chatty.log").stat().st_size <= 4 * 1024
    assert not (folder / "chatty.log.3").exists()  # log_max_files = 2


# ---------------------------------------------------------------- 8. wording

ONESHOT_AND_WEB = """
    [tasks.setup]
    command = "echo done"
    oneshot = true
    [tasks.web]
    command = "sleep 1000"
    depends_on = ["setup"]
    """


def assert_verdict_kept(project: Workspace, sup: Facade) -> None:
    """After `stop` of everything, the completed oneshot is still exited 0, not stopped."""
    setup = status_of(sup, "setup")
    assert setup.state is TaskState.EXITED and setup.exit_code == 0, setup
    assert setup.manually_stopped is False, setup
    shown = project.cli("status").stdout
    setup_row = next(line for line in shown.splitlines() if line.startswith("setup "))
    assert "exited" in setup_row and "stopped by user" not in setup_row, shown


def test_status_health_column_says_no_check(project: Workspace) -> None:
    project.write(ONESHOT_AND_WEB)
    sup = project.open()
    assert anyio.run(lambda: sup.start(timeout=20)).ok
    shown = project.cli("status")
    rows = {line.split()[0]: line for line in shown.stdout.splitlines()[2:] if line.strip()}
    assert "running" in rows["web"] and "no check" in rows["web"], shown.stdout
    assert "unknown" not in rows["web"], shown.stdout


def test_completed_oneshot_keeps_its_verdict_after_stop_with_a_monitor(
    project: Workspace,
) -> None:
    project.write(ONESHOT_AND_WEB)
    started = project.cli("start")  # the CLI hosts a monitor, which records setup's exit
    assert started.returncode == 0, (started.stdout, started.stderr)
    sup = project.open()
    wait_until(lambda: sup.records.get("setup").phase is Phase.EXITED, timeout=10)
    stopped = project.cli("stop")
    assert stopped.returncode == 0, (stopped.stdout, stopped.stderr)
    assert_verdict_kept(project, sup)
    again = anyio.run(lambda: sup.start(["web"], timeout=20))
    assert by_name(again)["setup"].action == "already_done", again


def test_completed_oneshot_keeps_its_verdict_after_stop_without_a_monitor(
    project: Workspace,
) -> None:
    project.write(ONESHOT_AND_WEB)
    sup = project.open()
    assert anyio.run(lambda: sup.start(timeout=20)).ok
    assert status_of(sup, "setup").state is TaskState.EXITED
    assert anyio.run(sup.stop).ok
    assert [e["exit_code"] for e in events_of(sup, "exited", "setup")] == [0]  # heard once
    assert_verdict_kept(project, sup)
    again = anyio.run(lambda: sup.start(["web"], timeout=20))
    assert by_name(again)["setup"].action == "already_done", again
