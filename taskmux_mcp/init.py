"""`taskmux init`: a first taskmux.toml from what the project looks like, and a note for agents."""

from __future__ import annotations

import json
import re
import sys
import tomllib
from collections.abc import Collection
from dataclasses import dataclass
from itertools import takewhile
from pathlib import Path

from .config import default_project_name, load_config, render_new_config
from .state import CONFIG_FILENAME
from .wording import counted

NOTE_BEGIN = "<!-- taskmux:begin -->"
NOTE_END = "<!-- taskmux:end -->"
AGENT_NOTE = f"""{NOTE_BEGIN}
## Dev tasks (taskmux)

This project's dev servers, workers and setup steps are defined in `taskmux.toml` and run in
tmux under taskmux. Use the `taskmux` MCP tools instead of starting servers in your own shell:
call `status` first; `start` / `restart` wait until tasks are healthy and say why not;
`logs` (with `since="start"`) and `grep` read their output; `events` tells what happened.
Without MCP, the same commands exist as `taskmux status|start|restart|logs|grep`.
{NOTE_END}
"""
_PROCFILE_LINE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9_-]{0,63})\s*:\s*(.+)$")
_RELEASE = "release"
_WEB = "web"
_SCRIPTS = ("start:dev", "dev", "start", "watch")
_LOCKFILES = (
    ("pnpm-lock.yaml", "pnpm run"),
    ("yarn.lock", "yarn"),
    ("bun.lockb", "bun run"),
    ("bun.lock", "bun run"),
    ("package-lock.json", "npm run"),
)
_RUNNERS = {"pnpm": "pnpm run", "yarn": "yarn", "bun": "bun run", "npm": "npm run"}
_APP_FOLDERS = ("apps/*", "backend", "web", "frontend", "server", "client", "api", "app", "src")
_PYTHON_RUNNERS = (
    ("uv.lock", "uv run python"),
    ("poetry.lock", "poetry run python"),
    ("Pipfile", "pipenv run python"),
)
_PORT_REFERENCE = re.compile(r"\$\{?PORT\b")
_PORT_FLAG = re.compile(r"(?:--port[=\s]\s*|(?<![\w-])-p\s*|\bPORT=)(\d{2,5})\b")
_HOST_PORT = re.compile(
    r"(?:(?<![\w.:/-])(?:\d{1,3}(?:\.\d{1,3}){3}|localhost|\[[0-9a-fA-F:]*\])|(?<=[\s='\"])):"
    r"(\d{2,5})(?![\w.:/-])"
)
_MAKE_CALL = re.compile(r"^make\s+([\w.-]+)\s*$")
_TEMPLATE_MARKUP = re.compile(r"\{\{|\{%|<%|\$")
_GO_PACKAGE = re.compile(r"^package\s+(\w+)", re.MULTILINE)
_GO_IGNORED = re.compile(r"^//\s*(?:go:build|\+build)\s+ignore\b", re.MULTILINE)
_YAML_COMMENT = re.compile(r"(?:^|\s+)#.*$")


@dataclass(frozen=True)
class _DevServer:
    """A dev server known by its command: its default port, and the line it prints when ready."""

    command: re.Pattern[str]
    port: int
    ready_log: str | None


_COMMAND_END = r"(?=\s+-|\s*$|\s*[;&|\"'])"
_DEV_SERVERS = (
    _DevServer(
        re.compile(rf"(?<![\w./-])vite(?:\s+(?:dev|serve))?{_COMMAND_END}"),
        5173,
        r"(?i)ready in",
    ),
    _DevServer(
        re.compile(rf"(?<![\w./-])next(?:\s+(?:dev|start))?{_COMMAND_END}"),
        3000,
        r"(?i)ready in|started server on",
    ),
    _DevServer(re.compile(rf"(?<![\w.-])rails\s+s(?:erver)?{_COMMAND_END}"), 3000, None),
    _DevServer(
        re.compile(rf"(?<![\w./-])nest\s+start{_COMMAND_END}"),
        3000,
        r"Nest application successfully started",
    ),
    _DevServer(re.compile(rf"\bmanage\.py\s+runserver{_COMMAND_END}"), 8000, None),
)

Detected = dict[str, dict[str, object]]


def detect_tasks(root: Path) -> Detected:
    """Suggest tasks for the project at root and for the apps it keeps in subfolders.

    A stack file at the root (a Procfile, a Rails app) is the whole stack. Otherwise the
    subfolders' apps are added, except in folders a task runs in already and, when the root
    has package.json scripts of its own, except their package.json scripts (the root's drive them).
    """
    if stack := _stack(root):
        return _distinct_ports(stack)
    scripts = _node(root, root)
    tasks = _merged(scripts, _components(root, root))
    covered = {root / str(fields["cwd"]) for fields in tasks.values() if "cwd" in fields}
    for folder in _app_folders(root):
        if folder not in covered:
            found = _stack(folder) or _merged(
                {} if scripts else _node(folder, root), _components(folder, root)
            )
            tasks = _merged(tasks, _placed(found, folder, root))
    return _distinct_ports(tasks)


def _stack(folder: Path) -> Detected:
    """The dev stack the folder declares: Procfile.dev, a Rails app's bin/dev, Procfile, Rails."""
    return (
        _procfile(folder / "Procfile.dev")
        or _rails(folder, "bin/dev")
        or _procfile(folder / "Procfile")
        or _rails(folder, "bin/rails server")
    )


def _components(folder: Path, root: Path) -> Detected:
    """The tasks of manage.py, Cargo.toml and go.mod."""
    tasks: Detected = {}
    for found in (_django(folder, root), _cargo(folder), _go(folder)):
        tasks = _merged(tasks, found)
    return tasks


def _procfile(path: Path) -> Detected:
    """A Procfile's processes; a `release` one-shot runs before the others, `web` gets a $PORT."""
    if not path.is_file():
        return {}
    tasks: Detected = {}
    for line in path.read_text(errors="replace").splitlines():
        if match := _PROCFILE_LINE.match(line.strip()):
            name, command = match.group(1), _built_go_binary(path.parent, match.group(2).strip())
            fields = _server_fields(_seen_through_make(path.parent, command))
            if name == _WEB and "port" not in fields:
                fields["port"] = "auto"  # Heroku's and foreman's contract: web listens on $PORT
            tasks[name] = {"command": command, **fields}
    if _RELEASE not in tasks:
        return tasks
    release = {"command": tasks.pop(_RELEASE)["command"], "oneshot": True}
    return {_RELEASE: release} | {n: {**f, "depends_on": [_RELEASE]} for n, f in tasks.items()}


def _seen_through_make(folder: Path, command: str) -> str:
    """The command, or for `make TARGET` the recipe of that target in the folder's Makefile."""
    call = _MAKE_CALL.match(command)
    if call is None:
        return command
    try:
        lines = (folder / "Makefile").read_text(errors="replace").splitlines()
    except OSError:
        return command
    head = re.compile(rf"{re.escape(call.group(1))}\s*:(?!=)")
    at = next((at for at, line in enumerate(lines) if head.match(line)), None)
    if at is None:
        return command
    recipe = takewhile(lambda line: line.startswith("\t"), lines[at + 1 :])
    return "\n".join(line.strip() for line in recipe) or command


def _server_fields(command: str) -> dict[str, object]:
    """The port and ready_log a command tells: $PORT, a port flag or host:port, a dev server."""
    fields: dict[str, object] = {}
    server = next((s for s in _DEV_SERVERS if s.command.search(command)), None)
    flag = _PORT_FLAG.search(command) or _HOST_PORT.search(command)
    if _PORT_REFERENCE.search(command):
        fields["port"] = "auto"
    elif flag and 1 <= int(flag.group(1)) <= 65535:
        fields["port"] = int(flag.group(1))
    elif server:
        fields["port"] = server.port
    if server and server.ready_log:
        fields["ready_log"] = server.ready_log
    return fields


def _node(folder: Path, root: Path) -> Detected:
    """A task per workspace package with a dev script, else the package's own dev script."""
    package = _json_object(folder / "package.json")
    if package is None:
        return {}
    runner = _script_runner(folder, root, package)
    tasks: Detected = {}
    for member in _workspace_members(folder, package):
        member_package = _json_object(member / "package.json") or {}
        if found := _script_task(member_package, runner):
            name = _unique(_valid_name(member.name), tasks)
            tasks[name] = _run_in(found[1], member, root)
    if tasks:
        return tasks
    found = _script_task(package, runner)
    return {} if found is None else {_valid_name(found[0]): found[1]}


def _script_task(package: dict[str, object], runner: str) -> tuple[str, dict[str, object]] | None:
    """The first of start:dev, dev, start, watch in the package's scripts, as a task."""
    scripts = package.get("scripts")
    if not isinstance(scripts, dict):
        return None
    script = next((s for s in _SCRIPTS if isinstance(scripts.get(s), str)), None)
    if script is None:
        return None
    return script, {"command": f"{runner} {script}", **_server_fields(scripts[script])}


def _script_runner(folder: Path, root: Path, package: dict[str, object]) -> str:
    """How the repo runs a script: its nearest lockfile's tool, else packageManager, else npm."""
    for place in (folder, *folder.parents):
        for lockfile, runner in _LOCKFILES:
            if (place / lockfile).is_file():
                return runner
        if place == root:
            break
    manager = package.get("packageManager")
    tool = manager.partition("@")[0] if isinstance(manager, str) else "npm"
    return _RUNNERS.get(tool, "npm run")


def _workspace_members(folder: Path, package: dict[str, object]) -> list[Path]:
    """The workspace package folders (globs, `!` excludes) that have a package.json."""
    included: dict[Path, None] = {}
    excluded: set[Path] = set()
    for pattern in _workspace_patterns(folder, package):
        glob = pattern.removeprefix("!").removeprefix("./").rstrip("/")
        if not glob or glob.startswith("/"):
            continue
        found = {
            p
            for p in folder.glob(glob)
            if (p / "package.json").is_file() and "node_modules" not in p.relative_to(folder).parts
        }
        if pattern.startswith("!"):
            excluded |= found
        else:
            included |= dict.fromkeys(sorted(found))
    return [p for p in included if p not in excluded and p != folder]


def _workspace_patterns(folder: Path, package: dict[str, object]) -> list[str]:
    """package.json's `workspaces` (an array, or an object's `packages`), else pnpm's list."""
    declared = package.get("workspaces")
    if isinstance(declared, dict):
        declared = declared.get("packages")
    if isinstance(declared, list):
        return [p for p in declared if isinstance(p, str)]
    return _pnpm_packages(folder / "pnpm-workspace.yaml")


def _pnpm_packages(path: Path) -> list[str]:
    """The `packages:` list of pnpm-workspace.yaml, as a block list or a one-line flow list."""
    if not path.is_file():
        return []
    found: list[str] = []
    inside = False
    for raw in path.read_text(errors="replace").splitlines():
        line = _YAML_COMMENT.sub("", raw).strip()
        if line.startswith("-") and inside:
            found.append(_unquoted(line[1:]))
        elif line and not raw[0].isspace():
            key, _, rest = line.partition(":")
            inside = key.strip() == "packages"
            if inside and rest.strip().startswith("["):
                found += [_unquoted(item) for item in rest.strip().strip("[]").split(",")]
    return [p for p in found if p]


def _unquoted(text: str) -> str:
    return text.strip().strip("'\"")


def _django(folder: Path, root: Path) -> Detected:
    """Django's dev server when there is a manage.py, run by the repo's Python tool."""
    if not (folder / "manage.py").is_file():
        return {}
    command = f"{_python_runner(folder, root)} manage.py runserver 127.0.0.1:8000"
    return {"web": {"command": command, "port": 8000}}


def _python_runner(folder: Path, root: Path) -> str:
    """How the repo runs Python: its nearest uv/poetry/pipenv lockfile's tool (or Poetry's
    pyproject.toml section), else plain `python`."""
    for place in (folder, *folder.parents):
        for lockfile, runner in _PYTHON_RUNNERS:
            if (place / lockfile).is_file():
                return runner
        pyproject = place / "pyproject.toml"
        if pyproject.is_file() and "[tool.poetry" in pyproject.read_text(errors="replace"):
            return "poetry run python"
        if place == root:
            break
    return "python"


def _rails(folder: Path, command: str) -> Detected:
    """A Rails app's dev server run by command (bin/dev, Rails' entry to its dev stack, or
    bin/rails server), if the app has that script."""
    script = folder / command.split(maxsplit=1)[0]
    if not (folder / "config/application.rb").is_file() or not script.is_file():
        return {}
    return {_WEB: {"command": command, "port": 3000}}


def _cargo(folder: Path) -> Detected:
    """`cargo run` for a crate's one binary, `--bin X` for each of several; nothing for a lib."""
    try:
        manifest = tomllib.loads((folder / "Cargo.toml").read_text())
    except (OSError, ValueError):
        return {}
    package = manifest.get("package")
    package = package if isinstance(package, dict) else {}
    binaries = _cargo_binaries(folder, manifest, package)
    if len(binaries) == 1:
        return {"app": {"command": "cargo run"}}
    default = package.get("default-run", package.get("name"))
    return _binaries({b: f"cargo run --bin {b}" for b in binaries}, default)


def _cargo_binaries(
    folder: Path, manifest: dict[str, object], package: dict[str, object]
) -> list[str]:
    """The crate's binary targets: its [[bin]] tables and, unless autobins = false, src/bin."""
    declared = manifest.get("bin")
    tables = [b for b in declared if isinstance(b, dict)] if isinstance(declared, list) else []
    names = [b["name"] for b in tables if isinstance(b.get("name"), str)]
    paths = {str(b["path"]) for b in tables if "path" in b}
    if package.get("autobins", True) is False:
        return names
    discovered = [(package.get("name"), "src/main.rs")]
    discovered += [(p.stem, f"src/bin/{p.name}") for p in sorted(folder.glob("src/bin/*.rs"))]
    discovered += [
        (p.parent.name, f"src/bin/{p.parent.name}/main.rs")
        for p in sorted(folder.glob("src/bin/*/main.rs"))
    ]
    for name, path in discovered:
        if isinstance(name, str) and path not in paths and (folder / path).is_file():
            names.append(name)
    return list(dict.fromkeys(names))


def _go(folder: Path) -> Detected:
    """`go run .` for a main package at the root, else `go run ./cmd/X` for each main in cmd/;
    a bare `start` runs the daemon (Xd, X-server) of module X, else X, else a server, api, web."""
    base = _go_module_name(folder)
    if base is None:
        return {}
    if _is_go_main(folder):
        return {"app": {"command": "go run ."}}
    mains = [cmd.name for cmd in sorted(folder.glob("cmd/*")) if cmd.is_dir() and _is_go_main(cmd)]
    commands = {name: f"go run ./cmd/{name}" for name in mains}
    preferred = (f"{base}d", f"{base}-server", base, "server", "api", "web")
    return _binaries(commands, next((name for name in preferred if name in commands), None))


def _go_module_name(folder: Path) -> str | None:
    """The last part of the folder's Go module path ("" if go.mod has none), None without go.mod."""
    try:
        module = (folder / "go.mod").read_text(errors="replace")
    except OSError:
        return None
    path = re.search(r"^module\s+(\S+)", module, re.MULTILINE)
    return path.group(1).rsplit("/", 1)[-1] if path else ""


def _built_go_binary(folder: Path, command: str) -> str:
    """A Procfile command that runs the app's Go binary as Heroku builds it (`X` or `bin/X`),
    as `go run` of its package, since nothing has built it here."""
    program, _, arguments = command.partition(" ")
    name = program.removeprefix("bin/")
    if name and name == _go_module_name(folder) and _is_go_main(folder):
        package = "."
    elif name and (folder / "cmd" / name).is_dir() and _is_go_main(folder / "cmd" / name):
        package = f"./cmd/{name}"
    else:
        return command
    return f"go run {package} {arguments}".rstrip()


def _is_go_main(folder: Path) -> bool:
    """Whether the folder's Go package (test files and `//go:build ignore` ones aside) is main."""
    for source in sorted(folder.glob("*.go")):
        text = source.read_text(errors="replace")
        if not source.name.endswith("_test.go") and not _GO_IGNORED.search(text):
            clause = _GO_PACKAGE.search(text)
            return clause is not None and clause.group(1) == "main"
    return False


def _binaries(commands: dict[str, str], default: object) -> Detected:
    """A task per binary; only the default one (else the first) starts with a bare `start`."""
    first = default if default in commands else next(iter(commands), None)
    return {
        _valid_name(name): {"command": command, **({} if name == first else {"auto_start": False})}
        for name, command in commands.items()
    }


def _app_folders(root: Path) -> list[Path]:
    """Where apps are kept when the root has none of its own: apps/*, backend, web, ..."""
    return [p for pattern in _APP_FOLDERS for p in sorted(root.glob(pattern)) if p.is_dir()]


def _placed(tasks: Detected, folder: Path, root: Path) -> Detected:
    """A subfolder's tasks, named after it and run in it."""
    base = _valid_name(folder.name)
    names = {n: base if len(tasks) == 1 else _valid_name(f"{base}-{n}") for n in tasks}
    return {n: _run_in(fields, folder, root) for n, fields in _renamed(tasks, names).items()}


def _run_in(fields: dict[str, object], folder: Path, root: Path) -> dict[str, object]:
    """The task's fields with its cwd set to folder (after the command), unless it has one."""
    if "cwd" in fields:
        return fields
    return {"command": fields["command"], "cwd": str(folder.relative_to(root)), **fields}


def _merged(tasks: Detected, more: Detected) -> Detected:
    """Both sets of tasks; a name taken already gets a -2, -3, ... suffix."""
    names: dict[str, str] = {}
    for name in more:
        names[name] = _unique(name, [*tasks, *names.values()])
    return {**tasks, **_renamed(more, names)}


def _renamed(tasks: Detected, names: dict[str, str]) -> Detected:
    """The tasks under new names, their depends_on entries following."""
    return {names[name]: _dependencies_renamed(fields, names) for name, fields in tasks.items()}


def _dependencies_renamed(fields: dict[str, object], names: dict[str, str]) -> dict[str, object]:
    dependencies = fields.get("depends_on")
    if not isinstance(dependencies, list):
        return fields
    return {**fields, "depends_on": [names[d] for d in dependencies]}


def _unique(name: str, taken: Collection[str]) -> str:
    candidate, suffix = name, 2
    while candidate in taken:
        candidate, suffix = f"{name[:60]}-{suffix}", suffix + 1
    return candidate


def _distinct_ports(tasks: Detected) -> Detected:
    """The tasks, a port that an earlier task has already left out (dev servers move on)."""
    seen: set[object] = set()
    result: Detected = {}
    for name, fields in tasks.items():
        port = fields.get("port")
        result[name] = {k: v for k, v in fields.items() if k != "port" or port not in seen}
        if isinstance(port, int):
            seen.add(port)
    return result


def _valid_name(text: str) -> str:
    """A valid task or project name made from text (an npm scope is left out)."""
    return default_project_name(Path(text))


def _json_object(path: Path) -> dict[str, object] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def project_name(root: Path) -> str:
    """The project's name: package.json's `name` (unless a template's placeholder), else the
    folder's."""
    name = (_json_object(root / "package.json") or {}).get("name")
    if isinstance(name, str) and name.strip("@/ ") and not _TEMPLATE_MARKUP.search(name):
        return _valid_name(name)
    return default_project_name(root)


def write_agent_note(root: Path) -> list[Path]:
    """Add (or refresh) the taskmux note between markers in AGENTS.md / CLAUDE.md."""
    targets = [root / name for name in ("AGENTS.md", "CLAUDE.md") if (root / name).is_file()]
    if not targets:
        targets = [root / "AGENTS.md"]
    for path in targets:
        text = path.read_text() if path.is_file() else ""
        if NOTE_BEGIN in text and NOTE_END in text:
            head, rest = text.split(NOTE_BEGIN, 1)
            tail = rest.split(NOTE_END, 1)[1].lstrip("\n")
            text = head + AGENT_NOTE + tail
        else:
            text = (text.rstrip("\n") + "\n\n" if text.strip() else "") + AGENT_NOTE
        path.write_text(text)
    return targets


def _ask(question: str, default: str) -> str:
    try:
        answer = input(f"{question} [{default}] ").strip()
    except EOFError:
        return default
    return answer or default


def _interactive(tasks: Detected) -> Detected:
    if tasks:
        print("Detected tasks:")
        for name, spec in tasks.items():
            print(f"  {name}: {spec['command']}")
        if _ask("Use these?", "Y").lower().startswith("n"):
            tasks = {}
    while not tasks or _ask("Add another task?", "n").lower().startswith("y"):
        name = _ask("Task name:", "app")
        command = _ask("Command:", "echo hello; sleep 3600")
        tasks[name] = {"command": command}
    return tasks


def run_init(root: Path, *, defaults: bool, as_json: bool) -> int:
    """Create taskmux.toml (unless present) and the agent note; return an exit status."""
    root = root.resolve()
    path = root / CONFIG_FILENAME
    created = False
    if not path.exists():
        tasks: Detected = detect_tasks(root)
        if not defaults and sys.stdin.isatty():
            tasks = _interactive(tasks)
        path.write_text(render_new_config(project_name(root), tasks))
        created = True
    config = load_config(path)
    notes = write_agent_note(root)
    if as_json:
        print(
            json.dumps(
                {
                    "config_path": str(path),
                    "created": created,
                    "tasks": list(config.tasks),
                    "agent_notes": [str(p) for p in notes],
                }
            )
        )
    else:
        verb = "created" if created else "kept existing"
        listed = ", ".join(config.tasks) or "none"
        print(f"{verb} {path} ({counted(len(config.tasks), 'task')}: {listed})")
        print(f"taskmux note in {', '.join(p.name for p in notes)}")
        if config.tasks:
            print("next: `taskmux start`, and register the MCP server: `taskmux mcp-config claude`")
        elif created:
            print(f"no tasks detected; edit {CONFIG_FILENAME} (it has a commented example) or")
            print("add one with `taskmux add NAME COMMAND`, then `taskmux start`")
        else:
            print(f"no tasks in it yet: add them to {CONFIG_FILENAME} or with `taskmux add`")
    return 0
