"""`taskmux init`: a first taskmux.toml from what the project looks like, and a note for agents."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from .config import CONFIG_FILENAME, default_project_name, load_config, render_new_config
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

Detected = dict[str, dict[str, object]]


def detect_tasks(root: Path) -> Detected:
    """Suggest tasks from a Procfile, package.json scripts, Django, Cargo or Go files."""
    tasks: Detected = {}
    procfile = root / "Procfile"
    if procfile.is_file():
        for line in procfile.read_text(errors="replace").splitlines():
            match = _PROCFILE_LINE.match(line.strip())
            if match:
                tasks[match.group(1)] = {"command": match.group(2).strip()}
        if tasks:
            return tasks
    package = root / "package.json"
    if package.is_file():
        try:
            scripts = json.loads(package.read_text()).get("scripts", {})
        except (ValueError, AttributeError):
            scripts = {}
        if isinstance(scripts, dict):
            for script in ("dev", "start", "watch"):
                if script in scripts:
                    tasks[script] = {"command": f"npm run {script}"}
                    break
    if (root / "manage.py").is_file():
        tasks["web"] = {
            "command": "python manage.py runserver 127.0.0.1:8000",
            "port": 8000,
        }
    if (root / "Cargo.toml").is_file():
        tasks["app"] = {"command": "cargo run"}
    if (root / "go.mod").is_file():
        tasks["app"] = {"command": "go run ."}
    return tasks


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
        path.write_text(render_new_config(default_project_name(root), tasks))
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
        print("next: `taskmux start`, and register the MCP server: `taskmux mcp-config claude`")
    return 0
