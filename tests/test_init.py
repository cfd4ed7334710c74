"""`taskmux init`: detection of project types, the generated file, the agent note."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest
from support import Workspace, status_of

from taskmux_mcp.config import Condition, ProjectConfig, load_config
from taskmux_mcp.init import NOTE_BEGIN, NOTE_END, detect_tasks, run_init, write_agent_note
from taskmux_mcp.models import Health, TaskState

VITE_READY = "(?i)ready in"
NEXT_READY = "(?i)ready in|started server on"
NEST_READY = "Nest application successfully started"


def write(root: Path, files: dict[str, str]) -> None:
    """Write a fixture project: relative path -> text."""
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def package(scripts: dict[str, str], **more: object) -> str:
    """A package.json text with these scripts."""
    return json.dumps({"scripts": scripts, **more})


def initialised(root: Path) -> ProjectConfig:
    """Run `taskmux init --defaults` in root and load the taskmux.toml it wrote."""
    assert run_init(root, defaults=True, as_json=True) == 0
    return load_config(root / "taskmux.toml")


RAILS_LIKE = {
    "Procfile": "web: bundle exec puma -C config/puma.rb\nrelease: bin/rails db:migrate\n",
    "Procfile.dev": (
        "# the dev stack\n"
        "web: bin/rails server -p $PORT\n"
        "release: bin/rails db:prepare\n"
        "css: bin/rails tailwindcss:watch\n"
        "js: ${PORT:-x} yarn build --watch\n"
    ),
    "package.json": package({"dev": "vite"}),
}


def test_procfile_dev_wins_and_release_runs_first(tmp_path: Path) -> None:
    write(tmp_path, RAILS_LIKE)
    assert detect_tasks(tmp_path) == {
        "release": {"command": "bin/rails db:prepare", "oneshot": True},
        "web": {"command": "bin/rails server -p $PORT", "port": "auto", "depends_on": ["release"]},
        "css": {"command": "bin/rails tailwindcss:watch", "depends_on": ["release"]},
        "js": {
            "command": "${PORT:-x} yarn build --watch",
            "port": "auto",
            "depends_on": ["release"],
        },
    }
    config = initialised(tmp_path)
    assert config.task("release").oneshot
    assert config.condition("web", "release") is Condition.COMPLETED
    assert config.with_dependencies(["web"]) == ["release", "web"]
    assert config.task("web").port == "auto" and config.task("css").port is None


def test_a_plain_procfile_is_used_without_procfile_dev(tmp_path: Path) -> None:
    procfile = "web: gunicorn app:app -b :$PORT\nworker: celery -A app worker\nrails: bin/rails s\n"
    write(tmp_path, {"Procfile": procfile})
    assert detect_tasks(tmp_path) == {
        "web": {"command": "gunicorn app:app -b :$PORT", "port": "auto"},
        "worker": {"command": "celery -A app worker"},
        "rails": {"command": "bin/rails s", "port": 3000},
    }
    assert initialised(tmp_path).task("worker").depends_on == ()


def test_the_procfile_stack_starts_web_after_release_completed(project: Workspace) -> None:
    write(
        project.root,
        {
            "Procfile": "web: exit 3\n",
            "Procfile.dev": (
                "web: cat release.out && exec python3 -m http.server $PORT --bind 127.0.0.1\n"
                "release: sleep 0.5; echo migrated > release.out\n"
            ),
        },
    )
    proc = project.cli("init", "--defaults")
    assert proc.returncode == 0, proc.stderr
    assert "next: `taskmux start`" in proc.stdout
    sup = project.open()
    result = anyio.run(lambda: sup.start(timeout=30))
    assert result.ok, result
    release, web = status_of(sup, "release"), status_of(sup, "web")
    assert release.state is TaskState.EXITED and release.exit_code == 0
    assert web.state is TaskState.RUNNING and web.health is Health.HEALTHY and web.restarts == 0
    assert isinstance(web.port, int)
    assert "migrated" in [line.text for line in sup.logs_sync(["web"], since="start").lines]


TURBO = {
    "package.json": json.dumps(
        {
            "name": "@acme/Turbo Repo",
            "private": True,
            "scripts": {"dev": "turbo run dev", "build": "turbo run build"},
            "devDependencies": {"turbo": "^2.0.0"},
        }
    ),
    "turbo.json": "{}",
    "pnpm-lock.yaml": "lockfileVersion: '9.0'\n",
    "pnpm-workspace.yaml": "# workspace\npackages:\n  - 'apps/*'\n  - \"packages/*\"  # libs\n",
    "apps/web/package.json": package({"dev": "vite", "build": "vite build"}),
    "apps/docs/package.json": package({"dev": "next dev --turbopack", "build": "next build"}),
    "packages/ui/package.json": package({"lint": "eslint ."}, name="@acme/ui"),
}


def test_a_turbo_monorepo_gets_a_task_per_package_with_a_dev_script(tmp_path: Path) -> None:
    write(tmp_path, TURBO)
    assert detect_tasks(tmp_path) == {
        "docs": {
            "command": "pnpm run dev",
            "cwd": "apps/docs",
            "port": 3000,
            "ready_log": NEXT_READY,
        },
        "web": {
            "command": "pnpm run dev",
            "cwd": "apps/web",
            "port": 5173,
            "ready_log": VITE_READY,
        },
    }
    config = initialised(tmp_path)
    assert config.name == "Turbo-Repo"
    assert config.task("web").working_dir(config.root) == tmp_path / "apps/web"
    assert config.task("docs").ready_log == NEXT_READY


@pytest.mark.parametrize(
    ("files", "command"),
    [
        ({"pnpm-lock.yaml": ""}, "pnpm run dev"),
        ({"yarn.lock": ""}, "yarn dev"),
        ({"bun.lockb": ""}, "bun run dev"),
        ({"bun.lock": ""}, "bun run dev"),
        ({"package-lock.json": "{}"}, "npm run dev"),
        ({}, "npm run dev"),
    ],
)
def test_scripts_run_with_the_package_manager_of_the_lockfile(
    tmp_path: Path, files: dict[str, str], command: str
) -> None:
    write(tmp_path, {"package.json": package({"dev": "node server.js"}), **files})
    assert detect_tasks(tmp_path) == {"dev": {"command": command}}
    assert initialised(tmp_path).task("dev").command == command


def test_without_a_lockfile_package_manager_decides(tmp_path: Path) -> None:
    write(tmp_path, {"package.json": package({"dev": "node server.js"}, packageManager="yarn@4.1")})
    assert detect_tasks(tmp_path) == {"dev": {"command": "yarn dev"}}


def test_workspace_packages_use_the_root_lockfile(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "package.json": json.dumps(
                {"workspaces": {"packages": ["services/*", "!services/old"]}}
            ),
            "bun.lock": "",
            "services/api/package.json": package({"start:dev": "nest start --watch", "dev": "x"}),
            "services/api/package-lock.json": "{}",
            "services/old/package.json": package({"dev": "node old.js"}),
            "services/cli/package.json": package({"build": "tsc"}),
        },
    )
    assert detect_tasks(tmp_path) == {
        "api": {
            "command": "bun run start:dev",
            "cwd": "services/api",
            "port": 3000,
            "ready_log": NEST_READY,
        }
    }
    initialised(tmp_path)


def test_start_dev_is_preferred_and_named_validly(tmp_path: Path) -> None:
    scripts = {"start": "nest start", "start:dev": "nest start --watch", "start:prod": "node dist"}
    write(tmp_path, {"package.json": package(scripts), "yarn.lock": ""})
    assert detect_tasks(tmp_path) == {
        "start-dev": {"command": "yarn start:dev", "port": 3000, "ready_log": NEST_READY}
    }
    assert initialised(tmp_path).task("start-dev").command == "yarn start:dev"


def test_dev_server_ports_come_from_flags_then_defaults_once_each(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "package.json": json.dumps({"workspaces": ["apps/*"]}),
            "apps/a/package.json": package({"dev": "next dev"}),
            "apps/b/package.json": package({"dev": "next"}),
            "apps/c/package.json": package({"dev": "vite --port 4000 --host"}),
            "apps/d/package.json": package({"dev": "next dev -p $PORT"}),
            "apps/e/package.json": package({"watch": "vite build --watch"}),
            "apps/f/package.json": package({"dev": "PORT=4100 node server.js"}),
        },
    )
    tasks = detect_tasks(tmp_path)
    assert {name: fields.get("port") for name, fields in tasks.items()} == {
        "a": 3000,
        "b": None,  # next's default is a's already: next moves to a free port itself
        "c": 4000,
        "d": "auto",
        "e": None,
        "f": 4100,
    }
    assert tasks["b"]["ready_log"] == NEXT_READY and tasks["c"]["ready_log"] == VITE_READY
    assert "ready_log" not in tasks["e"] and "ready_log" not in tasks["f"]
    initialised(tmp_path)


def test_apps_in_subfolders_when_the_root_has_none(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "README.md": "# app\n",
            "backend/manage.py": "",
            "frontend/package.json": package({"dev": "vite"}),
            "frontend/yarn.lock": "",
            "server/Procfile": "release: echo migrated\nweb: node index.js --port 4500\n",
        },
    )
    assert detect_tasks(tmp_path) == {
        "backend": {
            "command": "python manage.py runserver 127.0.0.1:8000",
            "cwd": "backend",
            "port": 8000,
        },
        "frontend": {
            "command": "yarn dev",
            "cwd": "frontend",
            "port": 5173,
            "ready_log": VITE_READY,
        },
        "server-release": {"command": "echo migrated", "cwd": "server", "oneshot": True},
        "server-web": {
            "command": "node index.js --port 4500",
            "cwd": "server",
            "port": 4500,
            "depends_on": ["server-release"],
        },
    }
    config = initialised(tmp_path)
    assert config.with_dependencies(["server-web"]) == ["server-release", "server-web"]


def test_django_is_recognised(tmp_path: Path) -> None:
    write(tmp_path, {"manage.py": ""})
    assert detect_tasks(tmp_path) == {
        "web": {"command": "python manage.py runserver 127.0.0.1:8000", "port": 8000}
    }


@pytest.mark.parametrize(
    ("files", "python"),
    [
        ({"uv.lock": ""}, "uv run python"),
        ({"poetry.lock": ""}, "poetry run python"),
        ({"pyproject.toml": '[tool.poetry]\nname = "x"\n'}, "poetry run python"),
        ({"Pipfile": ""}, "pipenv run python"),
        ({"pyproject.toml": '[project]\nname = "x"\n'}, "python"),
    ],
)
def test_django_runs_with_the_python_tool_of_the_repo(
    tmp_path: Path, files: dict[str, str], python: str
) -> None:
    write(tmp_path, {"manage.py": "", **files})
    assert (
        detect_tasks(tmp_path)["web"]["command"] == f"{python} manage.py runserver 127.0.0.1:8000"
    )


def test_a_backend_in_a_subfolder_joins_the_root_scripts(tmp_path: Path) -> None:
    """vintasoftware/django-react-boilerplate: the frontend at the root, Django in backend/,
    a template's placeholder for a package name; the frontend/ scripts the root drives."""
    write(
        tmp_path,
        {
            "package.json": package(
                {"dev": "webpack serve --mode=development --hot"}, name="{{project_name}}-frontend"
            ),
            "pnpm-lock.yaml": "",
            "pyproject.toml": '[tool.poetry]\nname = "{{project_name}}"\n',
            "backend/manage.py": "",
            "frontend/package.json": package({"dev": "vite"}),
        },
    )
    assert detect_tasks(tmp_path) == {
        "dev": {"command": "pnpm run dev"},
        "backend": {
            "command": "poetry run python manage.py runserver 127.0.0.1:8000",
            "cwd": "backend",
            "port": 8000,
        },
    }
    assert initialised(tmp_path).name == tmp_path.name


def test_django_kept_in_app_is_found(tmp_path: Path) -> None:
    """testdrivenio/django-on-docker keeps its project in app/."""
    write(tmp_path, {"docker-compose.yml": "services: {}\n", "app/manage.py": ""})
    assert detect_tasks(tmp_path) == {
        "app": {
            "command": "python manage.py runserver 127.0.0.1:8000",
            "cwd": "app",
            "port": 8000,
        }
    }


def test_a_procfile_web_process_gets_its_port_as_heroku_gives_it(tmp_path: Path) -> None:
    """heroku/*-getting-started: web reads $PORT from its environment, not its command line;
    other processes get no port; a Go binary Heroku would build runs with `go run`."""
    write(
        tmp_path,
        {
            "Procfile": "web: gunicorn --config gunicorn.conf.py gettingstarted.wsgi\n"
            "worker: celery -A app worker\n"
            "sync: bin/syncer --every 5m\n",
            "go.mod": "module github.com/heroku/go-getting-started\n",
            "main.go": "package main\n",
            "cmd/syncer/main.go": "package main\n",
        },
    )
    assert detect_tasks(tmp_path) == {
        "web": {
            "command": "gunicorn --config gunicorn.conf.py gettingstarted.wsgi",
            "port": "auto",
        },
        "worker": {"command": "celery -A app worker"},
        "sync": {"command": "go run ./cmd/syncer --every 5m"},
    }
    write(tmp_path, {"Procfile": "web: go-getting-started\n"})
    assert detect_tasks(tmp_path) == {"web": {"command": "go run .", "port": "auto"}}


SERVE_PORT_FROM_ENV = (
    "import http.server, os\n"
    "address = ('127.0.0.1', int(os.environ['PORT']))\n"
    "http.server.HTTPServer(address, http.server.SimpleHTTPRequestHandler).serve_forever()\n"
)


def test_a_procfile_web_reading_port_from_its_environment_starts_healthy(
    project: Workspace,
) -> None:
    write(project.root, {"Procfile": "web: python3 serve.py\n", "serve.py": SERVE_PORT_FROM_ENV})
    proc = project.cli("init", "--defaults")
    assert proc.returncode == 0, proc.stderr
    sup = project.open()
    result = anyio.run(lambda: sup.start(timeout=30))
    assert result.ok, result
    web = status_of(sup, "web")
    assert web.state is TaskState.RUNNING and web.health is Health.HEALTHY
    assert isinstance(web.port, int)


def test_a_procfile_port_is_seen_in_host_port_and_through_make(tmp_path: Path) -> None:
    """django/djangoproject.com: `web: make run`, whose recipe runs runserver 0.0.0.0:8000."""
    write(
        tmp_path,
        {
            "Procfile": "web: make run\nscss: make watch-scss\n"
            "api: gunicorn -b 127.0.0.1:5001 api:app\n"
            "e2e: wait-on http://localhost:3000 && playwright test\n",
            "Makefile": "SCSS = static/scss\n\nrun:\n\tpython -m manage runserver 0.0.0.0:8000\n\n"
            "watch-scss:\n\twatchmedo shell-command --patterns=*.scss $(SCSS)\n",
        },
    )
    assert detect_tasks(tmp_path) == {
        "web": {"command": "make run", "port": 8000},
        "scss": {"command": "make watch-scss"},
        "api": {"command": "gunicorn -b 127.0.0.1:5001 api:app", "port": 5001},
        "e2e": {"command": "wait-on http://localhost:3000 && playwright test"},
    }


RAILS_APP = {"config/application.rb": "module App; end\n", "bin/rails": "#!/usr/bin/env ruby\n"}


def test_a_rails_app_without_procfile_dev_runs_bin_dev(tmp_path: Path) -> None:
    """basecamp/once-campfire: its Procfile is production's (thrust); bin/dev is the dev server."""
    procfile = "web: bundle exec thrust bin/start-app\nredis: redis-server config/redis.conf\n"
    write(tmp_path, {**RAILS_APP, "bin/dev": "", "Procfile": procfile})
    assert detect_tasks(tmp_path) == {"web": {"command": "bin/dev", "port": 3000}}


def test_a_rails_app_without_bin_dev_keeps_its_procfile_else_runs_rails_server(
    tmp_path: Path,
) -> None:
    write(tmp_path, RAILS_APP)
    assert detect_tasks(tmp_path) == {"web": {"command": "bin/rails server", "port": 3000}}
    write(tmp_path, {"Procfile": "web: bundle exec puma -C config/puma.rb\n"})
    assert detect_tasks(tmp_path) == {
        "web": {"command": "bundle exec puma -C config/puma.rb", "port": "auto"}
    }


def test_a_dev_server_inside_quotes_is_recognised(tmp_path: Path) -> None:
    """shadcn-ui/taxonomy: `concurrently "contentlayer dev" "next dev"`."""
    write(
        tmp_path, {"package.json": package({"dev": 'concurrently "contentlayer dev" "next dev"'})}
    )
    assert detect_tasks(tmp_path) == {
        "dev": {"command": "npm run dev", "port": 3000, "ready_log": NEXT_READY}
    }


CARGO_PACKAGE = '[package]\nname = "tool"\nversion = "0.1.0"\n'
GO_MOD = "module example.com/acme/worker\n\ngo 1.22\n"
CARGO_CASES = [
    ({"Cargo.toml": CARGO_PACKAGE, "src/lib.rs": ""}, {}),
    (
        {"Cargo.toml": CARGO_PACKAGE, "src/lib.rs": "", "src/main.rs": ""},
        {"app": {"command": "cargo run"}},
    ),
    (
        {
            "Cargo.toml": CARGO_PACKAGE + 'default-run = "server"\n'
            '[[bin]]\nname = "server"\npath = "src/server.rs"\n',
            "src/main.rs": "",
            "src/server.rs": "",
            "src/bin/migrate.rs": "",
        },
        {
            "server": {"command": "cargo run --bin server"},
            "tool": {"command": "cargo run --bin tool", "auto_start": False},
            "migrate": {"command": "cargo run --bin migrate", "auto_start": False},
        },
    ),
]
GO_CASES = [
    (
        {
            "go.mod": GO_MOD,
            "lib.go": "// Package worker does work.\npackage worker\n",
            "gen.go": "//go:build ignore\n\npackage main\n",
        },
        {},
    ),
    (
        {"go.mod": GO_MOD, "main_test.go": "package main_test\n", "main.go": "package main\n"},
        {"app": {"command": "go run ."}},
    ),
    (
        {
            "go.mod": GO_MOD,
            "lib.go": "package worker\n",
            "cmd/api/main.go": "package main\n",
            "cmd/worker/main.go": "package main\n",
            "cmd/shared/util.go": "package shared\n",
        },
        {
            "api": {"command": "go run ./cmd/api", "auto_start": False},
            "worker": {"command": "go run ./cmd/worker"},
        },
    ),
    (  # benbjohnson/wtf: the CLI is named after the module, its server is wtfd
        {
            "go.mod": "module github.com/acme/wtf\n",
            "wtf.go": "package wtf\n",
            "cmd/wtf/main.go": "package main\n",
            "cmd/wtfd/main.go": "package main\n",
        },
        {
            "wtf": {"command": "go run ./cmd/wtf", "auto_start": False},
            "wtfd": {"command": "go run ./cmd/wtfd"},
        },
    ),
]


@pytest.mark.parametrize(
    ("files", "expected"),
    CARGO_CASES + GO_CASES,
    ids=[
        "cargo-library",
        "cargo-one-bin",
        "cargo-bins",
        "go-library",
        "go-main",
        "go-cmd-mains",
        "go-cmd-daemon",
    ],
)
def test_cargo_and_go_run_binaries_only(
    tmp_path: Path, files: dict[str, str], expected: dict[str, object]
) -> None:
    write(tmp_path, files)
    assert detect_tasks(tmp_path) == expected
    assert list(initialised(tmp_path).tasks) == list(expected)


def test_agent_note_is_added_once_between_markers(tmp_path: Path) -> None:
    (tmp_path / "CLAUDE.md").write_text("# Project rules\n\nBe nice.\n")
    for _ in range(3):
        assert write_agent_note(tmp_path) == [tmp_path / "CLAUDE.md"]
    text = (tmp_path / "CLAUDE.md").read_text()
    assert text.startswith("# Project rules\n\nBe nice.\n")
    assert text.count(NOTE_BEGIN) == 1 and text.count(NOTE_END) == 1
    assert "status" in text and "start" in text
    assert not (tmp_path / "AGENTS.md").exists()


def test_init_defaults_writes_a_valid_config_and_keeps_an_existing_one(project: Workspace) -> None:
    (project.root / "Procfile").write_text("api: python3 -m http.server 9\n")
    proc = project.cli("--json", "init", "--defaults")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["created"] is True and report["tasks"] == ["api"]
    config = load_config(project.root / "taskmux.toml")
    assert config.tasks["api"].command == "python3 -m http.server 9"
    assert NOTE_BEGIN in (project.root / "AGENTS.md").read_text()
    before = (project.root / "taskmux.toml").read_text()
    again = project.cli("--json", "init", "--defaults")
    assert json.loads(again.stdout)["created"] is False
    assert (project.root / "taskmux.toml").read_text() == before
    assert (project.root / "AGENTS.md").read_text().count(NOTE_BEGIN) == 1


def test_init_without_anything_to_detect_writes_an_example(project: Workspace) -> None:
    proc = project.cli("init", "--defaults")
    assert proc.returncode == 0, proc.stderr
    assert "no tasks detected; edit taskmux.toml" in proc.stdout
    assert "next: `taskmux start`" not in proc.stdout
    text = (project.root / "taskmux.toml").read_text()
    assert "# [tasks.web]" in text and "# oneshot = true" in text
    assert load_config(project.root / "taskmux.toml").tasks == {}
    again = project.cli("init", "--defaults")
    assert "no tasks in it yet" in again.stdout and "no tasks detected" not in again.stdout
