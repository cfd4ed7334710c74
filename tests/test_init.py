"""`taskmux init`: detection of project types, the generated file, the agent note."""

from __future__ import annotations

import json
from pathlib import Path

from support import Workspace

from taskmux_mcp.config import load_config
from taskmux_mcp.init import NOTE_BEGIN, NOTE_END, detect_tasks, write_agent_note


def test_procfile_wins_and_package_json_scripts_are_found(tmp_path: Path) -> None:
    (tmp_path / "package.json").write_text(json.dumps({"scripts": {"dev": "vite", "x": "y"}}))
    assert detect_tasks(tmp_path) == {"dev": {"command": "npm run dev"}}
    (tmp_path / "Procfile").write_text("web: gunicorn app:app\nworker: celery -A app worker\n")
    assert detect_tasks(tmp_path) == {
        "web": {"command": "gunicorn app:app"},
        "worker": {"command": "celery -A app worker"},
    }


def test_django_cargo_and_go_are_recognised(tmp_path: Path) -> None:
    (tmp_path / "manage.py").write_text("")
    assert detect_tasks(tmp_path)["web"]["port"] == 8000
    (tmp_path / "go.mod").write_text("module x\n")
    assert detect_tasks(tmp_path)["app"] == {"command": "go run ."}


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
    text = (project.root / "taskmux.toml").read_text()
    assert "Add tasks like this one" in text
    assert load_config(project.root / "taskmux.toml").tasks == {}
