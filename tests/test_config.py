"""taskmux.toml: validation, 0.3.x compatibility, discovery, editing and runtime checks."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest

from taskmux_mcp.config import (
    NAME_RE,
    SCROLLBACK_LINES,
    BridgeConfig,
    HooksConfig,
    LogsConfig,
    ProjectConfig,
    RestartPolicy,
    TaskConfig,
    add_task,
    load_config,
    parse_config,
    remove_task,
    render_new_config,
    runtime_problems,
)
from taskmux_mcp.errors import (
    ConfigError,
    ConfigProblem,
    InvalidArgument,
    ProjectNotFound,
    UnknownTask,
)
from taskmux_mcp.state import CONFIG_FILENAME, discover_config

SPEC_EXAMPLE = """\
name = "myapp"                      # tmux session name; default: the directory's name

[hooks]                             # project-wide; same four keys per task
before_start = "echo starting"      # a failing before_* hook aborts that action
after_stop = "echo done"

[tasks.db]
command = "docker compose up postgres"
health_check = "pg_isready -h localhost"

[tasks.api]
command = "python manage.py runserver 0.0.0.0:8000"
cwd = "apps/api"                    # relative to the config file's folder; default: that folder
env = { DJANGO_DEBUG = "1" }
port = 8000                         # its listener; freed before start (LISTEN sockets only)
depends_on = ["db"]                 # start waits until db is healthy
health_url = "http://localhost:8000/health"
stop_grace_period = 10

[tasks.worker]
command = "celery -A myapp worker -l info"
depends_on = ["db"]
restart_policy = "always"
max_restarts = 10
restart_backoff = 3.0

[tasks.tailwind]
command = "npx tailwindcss -w"
auto_start = false
"""

EDITABLE = """\
# Project tasks; keep this comment.
name = "demo"   # session

[hooks]
before_start = "echo hi"   # project hook

# The database.
[tasks.db]
command = "pg_ctl start"    # inline comment
health_check = "pg_isready"
# port = 5432

# The API server.
[tasks.api]
command = "python app.py"
depends_on = ["db"]

# Log rotation.
[logs]
max_files = 2
"""


def write(folder: Path, text: str, name: str = CONFIG_FILENAME) -> Path:
    """Write a config file into folder and return its path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def problems_of(text: str, folder: Path) -> list[ConfigProblem]:
    """The problems parse_config reports for text (it must fail)."""
    with pytest.raises(ConfigError) as info:
        parse_config(text, folder / CONFIG_FILENAME)
    return list(info.value.problems)


def only_problem(text: str, folder: Path) -> ConfigProblem:
    """The single problem parse_config reports for text."""
    found = problems_of(text, folder)
    assert len(found) == 1, found
    return found[0]


# ---------------------------------------------------------------- loading


def test_spec_example_loads_with_every_field(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, SPEC_EXAMPLE))
    assert cfg.name == "myapp"
    assert cfg.root == tmp_path.resolve()
    assert cfg.config_path == tmp_path.resolve() / CONFIG_FILENAME
    assert list(cfg.tasks) == ["db", "api", "worker", "tailwind"]
    assert cfg.hooks == HooksConfig(before_start="echo starting", after_stop="echo done")
    api = cfg.task("api")
    assert api.cwd == "apps/api"
    assert api.env == {"DJANGO_DEBUG": "1"}
    assert api.port == 8000
    assert api.depends_on == ("db",)
    assert api.health_url == "http://localhost:8000/health"
    assert api.stop_grace_period == 10.0
    assert api.working_dir(cfg.root) == cfg.root / "apps" / "api"
    worker = cfg.task("worker")
    assert worker.restart_policy is RestartPolicy.ALWAYS
    assert (worker.max_restarts, worker.restart_backoff) == (10, 3.0)
    assert cfg.task("tailwind").auto_start is False
    assert cfg.task("db").health_check == "pg_isready -h localhost"


def test_defaults_equal_spec_table(tmp_path: Path) -> None:
    cfg = parse_config('[tasks.a]\ncommand = "run"\n', tmp_path / CONFIG_FILENAME)
    task = cfg.task("a")
    assert task.model_dump() == {
        "name": "a",
        "command": "run",
        "cwd": None,
        "env": {},
        "env_file": None,
        "port": None,
        "auto_start": True,
        "depends_on": (),
        "health_check": None,
        "health_url": None,
        "health_expected_status": (),
        "health_expected_body": None,
        "health_interval": 10,
        "health_timeout": 5,
        "health_retries": 3,
        "health_start_period": 10,
        "stop_grace_period": 5,
        "stop_signal": "SIGINT",
        "restart_policy": RestartPolicy.ON_FAILURE,
        "max_restarts": 5,
        "restart_backoff": 2.0,
        "oneshot": False,
        "conditions": {},
        "ready_log": None,
        "log_max_bytes": None,
        "log_max_files": None,
        "hooks": HooksConfig().model_dump(),
    }
    assert task.working_dir(cfg.root) == cfg.root
    assert cfg.logs == LogsConfig(max_bytes=10 * 1024 * 1024, max_files=3)
    assert cfg.bridge == BridgeConfig(allowed_origins=())
    assert cfg.auto_start is True
    assert task.has_check() is False


def test_has_check_for_each_kind_of_check() -> None:
    assert TaskConfig(name="a", command="x", port=80).has_check()
    assert TaskConfig(name="a", command="x", health_check="true").has_check()
    assert TaskConfig(name="a", command="x", health_url="http://h/").has_check()


def test_hooks_get_and_unknown_hook() -> None:
    hooks = HooksConfig(after_stop="echo bye")
    assert hooks.get("after_stop") == "echo bye"
    assert hooks.get("before_start") is None
    with pytest.raises(InvalidArgument, match="before_start, after_start"):
        hooks.get("on_start")


def test_taskmux_03_file_loads_unchanged(tmp_path: Path) -> None:
    text = """\
name = "legacy"
auto_start = false

[hooks]
before_start = "echo project"

[tasks]
web = "python -m http.server 8000"
build = "make"

[tasks.watch]
command = "npm run watch"
auto_start = true
health_check = "true"
health_interval = 30
health_timeout = 2
stop_grace_period = 3
max_restarts = 2
restart_backoff = 2
restart_policy = "no"
depends_on = ["build"]

[tasks.watch.hooks]
after_start = "echo started"
"""
    cfg = load_config(write(tmp_path, text))
    assert list(cfg.tasks) == ["web", "build", "watch"]
    assert cfg.task("web").command == "python -m http.server 8000"
    assert cfg.auto_start is False
    assert cfg.task("web").auto_start is False
    assert cfg.task("build").auto_start is False
    watch = cfg.task("watch")
    assert watch.auto_start is True
    assert watch.health_interval == 30.0 and isinstance(watch.health_interval, float)
    assert watch.restart_backoff == 2.0
    assert watch.restart_policy is RestartPolicy.NO
    assert watch.hooks.get("after_start") == "echo started"
    assert cfg.hooks.get("before_start") == "echo project"


def test_logs_and_bridge_tables(tmp_path: Path) -> None:
    text = '[logs]\nmax_bytes = 2048\nmax_files = 1\n[bridge]\nallowed_origins = ["http://x"]\n'
    cfg = parse_config(text, tmp_path / CONFIG_FILENAME)
    assert cfg.logs == LogsConfig(max_bytes=2048, max_files=1)
    assert cfg.bridge.allowed_origins == ("http://x",)
    assert cfg.tasks == {}


def test_scrollback_is_tmuxs_lines_per_task_window(tmp_path: Path) -> None:
    default = parse_config("", tmp_path / CONFIG_FILENAME)
    assert default.logs.scrollback == SCROLLBACK_LINES < 2000  # below tmux's own default
    cfg = parse_config("[logs]\nscrollback = 0\n", tmp_path / CONFIG_FILENAME)
    assert cfg.logs.scrollback == 0


def test_utf8_bom_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / CONFIG_FILENAME
    path.write_bytes(b'\xef\xbb\xbf[tasks.a]\ncommand = "x"\n')
    assert list(load_config(path).tasks) == ["a"]


def test_unreadable_or_undecodable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / CONFIG_FILENAME)
    path = tmp_path / CONFIG_FILENAME
    path.write_bytes(b'name = "\xff"\n')
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(path)


# ---------------------------------------------------------------- validation


def test_syntax_error_has_line_and_column(tmp_path: Path) -> None:
    problem = only_problem('name = "x"\n\n[tasks.a]\ncommand = \n', tmp_path)
    assert (problem.line, problem.column) == (4, 11)
    assert problem.message.startswith("TOML syntax error: Invalid value")
    assert "line 4, column 11" in str(problem)


def test_syntax_error_duplicate_key(tmp_path: Path) -> None:
    problem = only_problem('[tasks.a]\ncommand = "x"\ncommand = "y"\n', tmp_path)
    assert problem.line == 3
    assert "overwrite" in problem.message


def test_syntax_error_at_end_of_file(tmp_path: Path) -> None:
    problem = only_problem('[tasks.a]\ncommand = "unterminated', tmp_path)
    assert (problem.line, problem.column) == (2, 24)
    assert problem.message == "TOML syntax error: Unterminated string at the end of the file"


@pytest.mark.parametrize(
    ("text", "task", "key", "hint"),
    [
        ('nmae = "x"\n', None, "nmae", "did you mean 'name'?"),
        ('[hooks]\nbefor_start = "x"\n', None, "hooks.befor_start", "did you mean 'before_start'?"),
        ('[tasks.a]\ncommand = "x"\ncomand = "y"\n', "a", "comand", "did you mean 'command'?"),
        (
            '[tasks.a]\ncommand = "x"\n[tasks.a.hooks]\nafter_stpo = "y"\n',
            "a",
            "hooks.after_stpo",
            "did you mean 'after_stop'?",
        ),
        ("[logs]\nmax_file = 2\n", None, "logs.max_file", "did you mean 'max_files'?"),
        ("[bridge]\nallowed_origin = []\n", None, "bridge.allowed_origin", "'allowed_origins'"),
        (
            '[tasks.a]\ncommand = "x"\nhealth_intervall = 3\n',
            "a",
            "health_intervall",
            "'health_interval'",
        ),
        ('[tasks.a]\ncmd = "x"\ncommand = "x"\n', "a", "cmd", "did you mean 'command'?"),
        ('[tasks.a]\ncommand = "x"\nworking_dir = "w"\n', "a", "working_dir", "'cwd'"),
    ],
)
def test_unknown_keys_at_every_level(
    tmp_path: Path, text: str, task: str | None, key: str, hint: str
) -> None:
    problem = only_problem(text, tmp_path)
    assert (problem.task, problem.key) == (task, key)
    assert problem.message.startswith(f"unknown key '{key.rsplit('.', maxsplit=1)[-1]}'")
    assert hint in problem.message


def test_unknown_key_without_close_match_lists_valid_keys(tmp_path: Path) -> None:
    problem = only_problem('[tasks.a]\ncommand = "x"\nzzz = 1\n', tmp_path)
    assert "valid keys: command, cwd, env, env_file, port" in problem.message


def test_misplaced_keys_get_a_pointed_hint(tmp_path: Path) -> None:
    found = problems_of(
        'command = "x"\nbefore_stop = "y"\n[tasks.a]\ncommand = "x"\nafter_stop = "z"\n',
        tmp_path,
    )
    messages = {(p.task, p.key): p.message for p in found}
    assert "task settings go in a [tasks.NAME] table" in messages[(None, "command")]
    assert "project hooks go in the [hooks] table" in messages[(None, "before_stop")]
    assert "did you mean 'hooks.after_stop'?" in messages[("a", "after_stop")]


@pytest.mark.parametrize(
    ("line", "key", "expected"),
    [
        ('port = "abc"', "port", 'must be an integer from 1 to 65535, or "auto"'),
        ("port = true", "port", "got true (a boolean)"),
        ("port = 0", "port", 'from 1 to 65535, or "auto" (a free port chosen for you), got 0'),
        ("port = 65536", "port", 'or "auto" (a free port chosen for you), got 65536'),
        ("port = 80.0", "port", "got 80.0 (a number)"),
        ("env = { A = 1 }", "env", 'value of A must be a string (quote it: A = "1")'),
        ('env = "A=1"', "env", "must be a table of strings"),
        ('depends_on = "db"', "depends_on", "must be an array of task names or tables"),
        ("depends_on = [1]", "depends_on", "must be an array of task names or tables"),
        ("health_interval = -1", "health_interval", "a number of seconds > 0, got -1"),
        ("health_interval = 0", "health_interval", "a number of seconds > 0, got 0"),
        ("health_timeout = nan", "health_timeout", "got nan"),
        ("health_timeout = inf", "health_timeout", "got inf"),
        ("health_start_period = -0.5", "health_start_period", ">= 0, got -0.5"),
        ("stop_grace_period = true", "stop_grace_period", "got true (a boolean)"),
        ("health_retries = 0", "health_retries", "an integer >= 1, got 0"),
        ("max_restarts = -1", "max_restarts", "an integer >= 0, got -1"),
        ("max_restarts = 1.5", "max_restarts", "got 1.5 (a number)"),
        ("restart_backoff = -2", "restart_backoff", ">= 0, got -2"),
        (
            'restart_policy = "sometimes"',
            "restart_policy",
            'must be one of "no", "on-failure", "always", got "sometimes"',
        ),
        ('restart_policy = "on_failure"', "restart_policy", "did you mean 'on-failure'?"),
        ("restart_policy = false", "restart_policy", '"always", got false (a boolean)'),
        ('auto_start = "yes"', "auto_start", 'must be true or false, got "yes" (a string)'),
        ('health_url = "localhost:8000"', "health_url", "http:// or https:// URL"),
        ('health_check = ""', "health_check", "must not be empty"),
        ('cwd = "  "', "cwd", "must not be empty"),
        ('hooks = "echo"', "hooks", "must be a table (keys before_start"),
        ("hooks = { before_start = 1 }", "hooks.before_start", "must be a string, got 1"),
        ("health_check = 2024-01-01", "health_check", "(a date/time)"),
    ],
)
def test_wrong_types_and_ranges(tmp_path: Path, line: str, key: str, expected: str) -> None:
    problem = only_problem(f'[tasks.api]\ncommand = "run"\n{line}\n', tmp_path)
    assert (problem.task, problem.key) == ("api", key)
    assert expected in problem.message
    assert f"task 'api'; key '{key}'" in str(problem)


def test_wrong_command_types(tmp_path: Path) -> None:
    assert "must be a string, got 42" in only_problem("[tasks.a]\ncommand = 42\n", tmp_path).message
    empty = only_problem('[tasks.a]\ncommand = ""\n', tmp_path)
    assert (empty.key, empty.message) == (
        "command",
        "must not be empty (leave the key out instead)",
    )


def test_ints_accepted_where_seconds_expected(tmp_path: Path) -> None:
    cfg = parse_config(
        '[tasks.a]\ncommand = "x"\nhealth_timeout = 1\nhealth_interval = 0.5\n',
        tmp_path / CONFIG_FILENAME,
    )
    assert cfg.task("a").health_timeout == 1.0
    assert cfg.task("a").health_interval == 0.5


@pytest.mark.parametrize(
    ("text", "key", "expected"),
    [
        ("[logs]\nmax_bytes = 10\n", "logs.max_bytes", "an integer >= 1024, got 10"),
        ("[logs]\nmax_files = 0\n", "logs.max_files", "an integer >= 1, got 0"),
        ("[logs]\nscrollback = -1\n", "logs.scrollback", "an integer from 0 to 1000000, got -1"),
        ("[logs]\nscrollback = 2e3\n", "logs.scrollback", "an integer from 0 to 1000000"),
        ('[logs]\nscrollback = "all"\n', "logs.scrollback", "an integer from 0 to 1000000"),
        ('[bridge]\nallowed_origins = "*"\n', "bridge.allowed_origins", "array of strings"),
        ("logs = 3\n", "logs", "must be a table"),
        ('auto_start = "no"\n', "auto_start", "must be true or false"),
        ("name = 42\n", "name", "must be a string, got 42"),
        ('tasks = ["a"]\n', "tasks", "must be a table of tasks ([tasks.NAME] sections)"),
    ],
)
def test_project_level_types(tmp_path: Path, text: str, key: str, expected: str) -> None:
    problem = only_problem(text, tmp_path)
    assert (problem.task, problem.key) == (None, key)
    assert expected in problem.message


def test_missing_command_and_bad_task_shapes(tmp_path: Path) -> None:
    found = problems_of("[tasks]\nodd = 42\n[tasks.api]\nport = 8000\n", tmp_path)
    assert [(p.task, p.key) for p in found] == [("odd", None), ("api", None)]
    assert (
        found[0].message == "must be a table of settings or a command string, got 42 (an integer)"
    )
    assert found[1].message == "missing required key 'command' (the shell command to run)"


def test_dependency_problems(tmp_path: Path) -> None:
    text = """\
[tasks.db]
command = "db"
depends_on = ["db"]

[tasks.api]
command = "api"
depends_on = ["dbb", "worker"]

[tasks.worker]
command = "worker"
depends_on = ["api"]

[tasks.a]
command = "a"
depends_on = ["b"]

[tasks.b]
command = "b"
depends_on = ["c"]

[tasks.c]
command = "c"
depends_on = ["a", "nothing-like-it"]
"""
    found = [(p.task, p.key, p.message) for p in problems_of(text, tmp_path)]
    assert found == [
        ("db", "depends_on", "depends on itself"),
        ("api", "depends_on", "depends on unknown task 'dbb'; did you mean 'db'?"),
        ("c", "depends_on", "depends on unknown task 'nothing-like-it'"),
        ("api", "depends_on", "dependency cycle: api -> worker -> api"),
        ("a", "depends_on", "dependency cycle: a -> b -> c -> a"),
    ]


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    text = """\
name = "bad name"
colour = "blue"

[tasks.api]
comand = "python app.py"
port = "eighty"
depends_on = ["ghost"]

[tasks."x.y"]
command = "ok"
restart_policy = "never"

[tasks.w]
command = "w"
health_retries = 0
"""
    found = problems_of(text, tmp_path)
    located = [(p.task, p.key) for p in found]
    assert located == [
        (None, "colour"),
        (None, "name"),
        ("api", "comand"),
        ("api", None),
        ("api", "port"),
        ("x.y", None),
        ("x.y", "restart_policy"),
        ("w", "health_retries"),
        ("api", "depends_on"),
    ]
    with pytest.raises(ConfigError) as info:
        parse_config(text, tmp_path / CONFIG_FILENAME)
    assert "(9 problem(s))" in str(info.value)


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("a.b", "contains '.'"),
        ("a:b", "contains ':'"),
        ("a b", "contains ' ' (space)"),
        ("café", "contains 'é'"),
        ("../x", "contains '.', '/'"),
        ("x" * 65, "is 65 characters long"),
        ("-lead", "starts with '-'"),
        ("_lead", "starts with '_'"),
        ("", "is empty"),
        ("tab\there", "contains '\\t'"),
    ],
)
def test_hostile_task_names_rejected(tmp_path: Path, name: str, reason: str) -> None:
    quoted = name.replace("\\", "\\\\").replace('"', '\\"').replace("\t", "\\t")
    problem = only_problem(f'[tasks."{quoted}"]\ncommand = "x"\n', tmp_path)
    assert problem.task == name
    assert problem.message.startswith("invalid task name")
    assert reason in problem.message
    assert "use 1 to 64 ASCII letters, digits, '_' or '-', starting with a letter or digit" in (
        problem.message
    )


def test_name_pattern_accepts_the_edges() -> None:
    assert NAME_RE.fullmatch("a")
    assert NAME_RE.fullmatch("A1_b-2" + "x" * 58)
    assert not NAME_RE.fullmatch("x" * 65)


def test_deep_nesting_is_a_config_error(tmp_path: Path) -> None:
    problem = only_problem("a = " + "[" * 20000 + "]" * 20000 + "\n", tmp_path)
    assert problem.message == "values are nested too deeply to read"


def test_invalid_project_name(tmp_path: Path) -> None:
    problem = only_problem('name = "my.app"\n', tmp_path)
    assert problem.key == "name"
    assert "invalid project name 'my.app' (it contains '.')" in problem.message


@pytest.mark.parametrize(
    ("folder", "expected"),
    [
        ("plain", "plain"),
        ("my app.v2", "my-app-v2"),
        ("_hidden", "p_hidden"),
        ("ünï", "-n-"),
        ("y" * 80, "y" * 64),
    ],
)
def test_default_project_name_from_folder(tmp_path: Path, folder: str, expected: str) -> None:
    cfg = parse_config("", tmp_path / folder / CONFIG_FILENAME)
    assert cfg.name == (expected if expected[0].isalnum() else "p" + expected)
    assert NAME_RE.fullmatch(cfg.name)


def test_missing_cwd_is_not_a_load_error(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, '[tasks.a]\ncommand = "true"\ncwd = "later"\n'))
    assert cfg.task("a").working_dir(cfg.root) == cfg.root / "later"


def test_huge_file_loads_quickly(tmp_path: Path) -> None:
    parts = ['[tasks.t0]\ncommand = "echo 0"\nport = 1000\n']
    for i in range(1, 1000):
        parts.append(
            f'[tasks.t{i}]\ncommand = "echo {i}"\nport = {1000 + i}\n'
            f'depends_on = ["t{i - 1}"]\nenv = {{ N = "{i}" }}\n'
        )
    path = write(tmp_path, "\n".join(reversed(parts)))
    began = time.monotonic()
    cfg = load_config(path)
    order = cfg.topo_order()
    assert time.monotonic() - began < 5
    assert order == [f"t{i}" for i in range(1000)]
    assert cfg.with_dependencies(["t3"]) == ["t0", "t1", "t2", "t3"]


def test_long_dependency_cycle_is_reported_without_recursion(tmp_path: Path) -> None:
    parts = [
        f'[tasks.t{i}]\ncommand = "x"\ndepends_on = ["t{(i + 1) % 1500}"]\n' for i in range(1500)
    ]
    problem = only_problem("\n".join(parts), tmp_path)
    assert problem.message.startswith("dependency cycle: t0 -> t1 -> t2")
    assert problem.message.endswith("t1499 -> t0")


# ---------------------------------------------------------------- graph helpers


GRAPH = """\
[tasks.web]
command = "w"
depends_on = ["api", "cache"]

[tasks.api]
command = "a"
depends_on = ["db"]

[tasks.cache]
command = "c"

[tasks.db]
command = "d"

[tasks.lone]
command = "l"
"""


@pytest.fixture
def graph(tmp_path: Path) -> ProjectConfig:
    """A small dependency graph: web -> (api -> db), cache; lone."""
    return parse_config(GRAPH, tmp_path / CONFIG_FILENAME)


def test_topo_order_deps_first_file_order_ties(graph: ProjectConfig) -> None:
    assert graph.topo_order() == ["cache", "db", "api", "web", "lone"]


def test_with_dependencies(graph: ProjectConfig) -> None:
    assert graph.with_dependencies(["web"]) == ["cache", "db", "api", "web"]
    assert graph.with_dependencies(["lone", "api"]) == ["db", "api", "lone"]
    assert graph.with_dependencies([]) == []
    with pytest.raises(UnknownTask, match="unknown task 'nope'; known tasks: web, api"):
        graph.with_dependencies(["api", "nope"])


def test_dependents(graph: ProjectConfig) -> None:
    assert graph.dependents("db") == ["api", "web"]
    assert graph.dependents("cache") == ["web"]
    assert graph.dependents("web") == []
    with pytest.raises(UnknownTask):
        graph.dependents("ghost")


def test_require_and_task(graph: ProjectConfig) -> None:
    assert graph.require(["db", "web", "db"]) == ["db", "web"]
    with pytest.raises(UnknownTask) as info:
        graph.require(["db", "x1", "x2"])
    assert info.value.name == "x1"
    assert info.value.known == ("web", "api", "cache", "db", "lone")
    assert graph.task("db").command == "d"


# ---------------------------------------------------------------- discovery


def test_discovery_order(tmp_path: Path) -> None:
    by_config = write(tmp_path / "c", "", "other.toml")
    by_project = write(tmp_path / "p", "")
    by_env = write(tmp_path / "e", "")
    by_walk = write(tmp_path / "w", "")
    nested = tmp_path / "w" / "deep" / "er"
    nested.mkdir(parents=True)
    env = {"TASKMUX_PROJECT": str(by_env.parent)}
    assert discover_config(by_project.parent, by_config, nested, env) == by_config
    assert discover_config(by_project.parent, None, nested, env) == by_project
    assert discover_config(None, None, nested, env) == by_env
    assert discover_config(None, None, nested, {"TASKMUX_PROJECT": str(by_env)}) == by_env
    assert discover_config(None, None, nested, {}) == by_walk
    assert discover_config(None, None, nested, {"TASKMUX_PROJECT": ""}) == by_walk


def test_discovery_relative_paths_resolve_against_cwd(tmp_path: Path) -> None:
    found = write(tmp_path / "proj", "")
    assert discover_config("proj", cwd=tmp_path, environ={}) == found
    assert discover_config(config="proj/taskmux.toml", cwd=tmp_path, environ={}) == found


def test_discovery_not_found_lists_where_it_looked(tmp_path: Path) -> None:
    nested = tmp_path / "a" / "b"
    nested.mkdir(parents=True)
    with pytest.raises(ProjectNotFound) as info:
        discover_config(cwd=nested, environ={})
    assert info.value.searched[:3] == (nested, tmp_path / "a", tmp_path)
    assert info.value.searched[-1] == Path("/")
    assert str(nested) in str(info.value)
    assert "taskmux init" in str(info.value)


def test_discovery_explicit_places_must_exist(tmp_path: Path) -> None:
    write(tmp_path, "")
    missing = tmp_path / "missing"
    with pytest.raises(ProjectNotFound) as info:
        discover_config(project=missing, cwd=tmp_path, environ={})
    assert info.value.searched == (missing,)
    with pytest.raises(ProjectNotFound, match=r"nope\.toml"):
        discover_config(config=tmp_path / "nope.toml", cwd=tmp_path, environ={})
    with pytest.raises(ProjectNotFound, match="gone"):
        discover_config(cwd=tmp_path, environ={"TASKMUX_PROJECT": str(tmp_path / "gone")})


# ---------------------------------------------------------------- editing


def test_add_then_remove_round_trips_byte_for_byte(tmp_path: Path) -> None:
    path = write(tmp_path, EDITABLE)
    cfg = add_task(
        path,
        "worker",
        "celery worker",
        cwd="apps/worker",
        port=8001,
        depends_on=["db"],
        health_check="celery inspect ping",
        health_url="http://localhost:8001/",
    )
    assert list(cfg.tasks) == ["db", "api", "worker"]
    assert cfg.task("worker").depends_on == ("db",)
    added = path.read_text()
    assert added == EDITABLE.replace(
        "\n# Log rotation.",
        '\n[tasks.worker]\ncommand = "celery worker"\ncwd = "apps/worker"\nport = 8001\n'
        'depends_on = ["db"]\nhealth_check = "celery inspect ping"\n'
        'health_url = "http://localhost:8001/"\n\n# Log rotation.',
    )
    remove_task(path, "worker")
    assert path.read_text() == EDITABLE


def test_remove_takes_its_own_comments_and_keeps_the_next_ones(tmp_path: Path) -> None:
    path = write(tmp_path, EDITABLE)
    remove_task(path, "api")
    assert path.read_text() == EDITABLE.replace(
        '# The API server.\n[tasks.api]\ncommand = "python app.py"\ndepends_on = ["db"]\n\n', ""
    )
    remove_task(path, "db")
    assert path.read_text() == (
        '# Project tasks; keep this comment.\nname = "demo"   # session\n\n[hooks]\n'
        'before_start = "echo hi"   # project hook\n\n# Log rotation.\n[logs]\nmax_files = 2\n'
    )


def test_remove_last_task_leaves_no_trailing_blank(tmp_path: Path) -> None:
    text = '[tasks.a]\ncommand = "a"\n\n[logs]\nmax_files = 2\n\n[tasks.b]\ncommand = "b"\n'
    path = write(tmp_path, text)
    remove_task(path, "b")
    assert path.read_text() == '[tasks.a]\ncommand = "a"\n\n[logs]\nmax_files = 2\n'


def test_edit_03_bare_string_tasks(tmp_path: Path) -> None:
    text = '# legacy\nname = "old"\n\n[tasks]\nweb = "serve"  # the site\nbuild = "make"\n'
    path = write(tmp_path, text)
    add_task(path, "lint", "ruff check")
    assert path.read_text() == text + '\n[tasks.lint]\ncommand = "ruff check"\n'
    remove_task(path, "web")
    remove_task(path, "lint")
    assert path.read_text() == '# legacy\nname = "old"\n\n[tasks]\nbuild = "make"\n'
    assert list(load_config(path).tasks) == ["build"]


def test_add_to_file_without_tasks(tmp_path: Path) -> None:
    path = write(tmp_path, 'name = "fresh"\n')
    add_task(path, "a", "run")
    assert path.read_text() == 'name = "fresh"\n\n[tasks.a]\ncommand = "run"\n'


def test_add_keeps_crlf_line_ends(tmp_path: Path) -> None:
    path = tmp_path / CONFIG_FILENAME
    path.write_bytes(
        b'name = "w"\r\n\r\n[tasks.a]\r\ncommand = "a"\r\n\r\n[logs]\r\nmax_files = 2\r\n'
    )
    add_task(path, "b", "bee")
    assert path.read_bytes() == (
        b'name = "w"\r\n\r\n[tasks.a]\r\ncommand = "a"\r\n\r\n[tasks.b]\r\ncommand = "bee"\r\n'
        b"\r\n[logs]\r\nmax_files = 2\r\n"
    )


def test_edit_keeps_file_mode_and_leaves_no_temp_files(tmp_path: Path) -> None:
    path = write(tmp_path, EDITABLE)
    path.chmod(0o640)
    add_task(path, "x", "true")
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == [CONFIG_FILENAME]


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"name": "api", "command": "x"}, "task 'api' already exists"),
        ({"name": "a.b", "command": "x"}, "invalid task name 'a.b'"),
        ({"name": "n", "command": "x", "depends_on": ["ghost"]}, "unknown task 'ghost'"),
        ({"name": "n", "command": "x", "port": 0}, "from 1 to 65535"),
        ({"name": "n", "command": ""}, "must not be empty"),
        ({"name": "n", "command": "x", "health_url": "nope"}, "http:// or https://"),
    ],
)
def test_invalid_add_leaves_file_untouched(
    tmp_path: Path, kwargs: dict[str, object], expected: str
) -> None:
    path = write(tmp_path, EDITABLE)
    before = path.read_bytes()
    with pytest.raises(ConfigError) as info:
        add_task(path, **kwargs)  # type: ignore[arg-type]
    assert expected in str(info.value)
    assert path.read_bytes() == before


def test_add_to_invalid_file_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, '[tasks.a]\ncomand = "x"\n')
    with pytest.raises(ConfigError, match="did you mean 'command'"):
        add_task(path, "b", "y")
    assert path.read_text() == '[tasks.a]\ncomand = "x"\n'


def test_remove_of_depended_on_task_refused(tmp_path: Path) -> None:
    path = write(tmp_path, GRAPH)
    with pytest.raises(ConfigError) as info:
        remove_task(path, "cache")
    problem = info.value.problems[0]
    assert (problem.task, problem.key) == ("cache", "depends_on")
    assert "cannot remove task 'cache': 'web' depends on it" in problem.message
    assert path.read_text() == GRAPH


def test_remove_unknown_task(tmp_path: Path) -> None:
    path = write(tmp_path, GRAPH)
    with pytest.raises(ConfigError, match="no task 'dbb' to remove; did you mean 'db'"):
        remove_task(path, "dbb")
    assert path.read_text() == GRAPH


# ---------------------------------------------------------------- init


def test_render_new_config_round_trips(tmp_path: Path) -> None:
    text = render_new_config(
        "myapp",
        {
            "db": {"command": "pg", "health_check": "pg_isready"},
            "web": {
                "command": "npm run dev",
                "port": 3000,
                "env": {"A": "1"},
                "depends_on": ("db",),
            },
        },
    )
    assert text.startswith("# taskmux.toml:")
    assert "taskmux check" in text
    cfg = parse_config(text, tmp_path / CONFIG_FILENAME)
    assert cfg.name == "myapp"
    assert cfg.task("web").env == {"A": "1"}
    assert cfg.task("web").depends_on == ("db",)
    assert cfg.with_dependencies(["web"]) == ["db", "web"]


def test_render_new_config_without_tasks_shows_an_example(tmp_path: Path) -> None:
    text = render_new_config("empty", {})
    assert "# [tasks.web]" in text
    assert parse_config(text, tmp_path / CONFIG_FILENAME).tasks == {}


def test_render_new_config_rejects_bad_input() -> None:
    with pytest.raises(ConfigError) as info:
        render_new_config("bad name", {"x": {"command": "y", "port": "no"}})
    assert info.value.path is None
    assert [p.key for p in info.value.problems] == ["name", "port"]
    with pytest.raises(ConfigError, match="Unable to convert"):
        render_new_config("ok", {"x": {"command": object()}})


# ---------------------------------------------------------------- runtime checks


def make_executable(path: Path, body: str = "#!/bin/sh\nexit 0\n") -> Path:
    """Write an executable shell script."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(body)
    path.chmod(0o755)
    return path


def test_runtime_problems_missing_cwd_and_executables(tmp_path: Path) -> None:
    (tmp_path / "plain.sh").write_text("echo\n")
    text = """\
[tasks.nocwd]
command = "true"
cwd = "not/here"

[tasks.notdir]
command = "true"
cwd = "plain.sh"

[tasks.nocmd]
command = "definitely-not-a-program-xyz --flag"

[tasks.noexec]
command = "./plain.sh"

[tasks.nofile]
command = "bin/missing arg"

[tasks.badcheck]
command = "true"
health_check = "no-such-checker-xyz -q"

[tasks.execmissing]
command = "exec no-such-exec-xyz 5"

[tasks.assignmissing]
command = "FOO=1 no-such-assign-xyz"

[tasks.both]
command = "no-such-both-xyz"
cwd = "gone"
"""
    cfg = load_config(write(tmp_path, text))
    found = [(p.task, p.key, p.message) for p in runtime_problems(cfg)]
    root = cfg.root
    assert found == [
        ("nocwd", "cwd", f"directory {root / 'not/here'} does not exist"),
        ("notdir", "cwd", f"{root / 'plain.sh'} is not a directory"),
        ("nocmd", "command", "'definitely-not-a-program-xyz' not found on PATH"),
        ("noexec", "command", f"'./plain.sh' is not an executable file ({root / 'plain.sh'})"),
        ("nofile", "command", f"'bin/missing' not found (looked for {root / 'bin/missing'})"),
        ("badcheck", "health_check", "'no-such-checker-xyz' not found on PATH"),
        ("execmissing", "command", "'no-such-exec-xyz' not found on PATH"),
        ("assignmissing", "command", "'no-such-assign-xyz' not found on PATH"),
        ("both", "cwd", f"directory {root / 'gone'} does not exist"),
        ("both", "command", "'no-such-both-xyz' not found on PATH"),
    ]


def test_runtime_problems_no_false_positives(tmp_path: Path) -> None:
    make_executable(tmp_path / "sub" / "run.sh")
    make_executable(tmp_path / "tools" / "private-tool")
    text = """\
[tasks.cd]
command = "cd somewhere-later && ./go.sh"

[tasks.assign]
command = "FOO=1 BAR=2 python3 -m http.server"

[tasks.exec]
command = "exec sleep 5"

[tasks.shc]
command = "sh -c 'echo hi; exit 3'"

[tasks.script]
command = "./run.sh --flag"
cwd = "sub"

[tasks.unbalanced]
command = "echo 'oops"

[tasks.subshell]
command = "(cd x; make)"

[tasks.variable]
command = "$HOME/bin/thing"

[tasks.pathassign]
command = "PATH=./node_modules/.bin:$PATH vite"

[tasks.ownpath]
command = "private-tool --serve"
env = { PATH = "tools" }
health_check = "test -f x"
"""
    cfg = load_config(write(tmp_path, text))
    assert runtime_problems(cfg) == []


def test_runtime_problems_use_the_task_path(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    text = f'[tasks.a]\ncommand = "sleep 1"\nenv = {{ PATH = "{empty}" }}\n'
    problems = runtime_problems(load_config(write(tmp_path, text)))
    assert [(p.task, p.message) for p in problems] == [("a", "'sleep' not found on PATH")]


def test_runtime_problems_clean_for_real_project(tmp_path: Path) -> None:
    (tmp_path / "apps" / "api").mkdir(parents=True)
    text = (
        '[tasks.api]\ncommand = "python3 -m http.server"\ncwd = "apps/api"\n'
        f'health_check = "{make_executable(tmp_path / "check.sh")}"\n'
    )
    assert runtime_problems(load_config(write(tmp_path, text))) == []
    assert os.access(tmp_path / "check.sh", os.X_OK)


def test_stop_signal_is_validated_and_spelled_one_way(tmp_path: Path) -> None:
    text = '[tasks.a]\ncommand = "x"\nstop_signal = "term"\n'
    cfg = parse_config(text, tmp_path / CONFIG_FILENAME)
    assert cfg.task("a").stop_signal == "SIGTERM"
    problem = only_problem('[tasks.a]\ncommand = "x"\nstop_signal = "SIGFOO"\n', tmp_path)
    assert problem.key == "stop_signal" and '"SIGQUIT"' in problem.message, problem


def test_expected_status_and_body_are_validated(tmp_path: Path) -> None:
    text = '[tasks.a]\ncommand = "x"\nhealth_expected_status = [200, 204]\n'
    assert parse_config(text, tmp_path / CONFIG_FILENAME).task("a").health_expected_status == (
        200,
        204,
    )
    bad = only_problem('[tasks.a]\ncommand = "x"\nhealth_expected_status = 99\n', tmp_path)
    assert bad.key == "health_expected_status" and "from 100 to 599" in bad.message
    regex = only_problem('[tasks.a]\ncommand = "x"\nhealth_expected_body = "(x"\n', tmp_path)
    assert regex.key == "health_expected_body" and "regular expression" in regex.message
