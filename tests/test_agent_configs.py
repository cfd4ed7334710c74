"""Agent client registrations: rendering, the ready files, and merging into existing files."""

from __future__ import annotations

import json
import re
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
from support import REPO

from taskmux_mcp.agent_configs import (
    CLIENTS,
    PLACEHOLDER_COMMAND,
    PLACEHOLDER_PROJECT,
    MergeRefused,
    client_name,
    installed_command,
    merge,
    ready_file,
    render,
    run_mcp_config,
)

READY = REPO / "agent-configs"
CMD = "/opt/venv/bin/taskmux-mcp"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private HOME (user-level client files land there)."""
    folder = tmp_path / "home"
    folder.mkdir()
    monkeypatch.setenv("HOME", str(folder))
    monkeypatch.delenv("CODEX_HOME", raising=False)
    return folder


@pytest.fixture
def proj(tmp_path: Path) -> Path:
    """A project folder."""
    folder = tmp_path / "proj"
    folder.mkdir()
    (folder / "taskmux.toml").write_text('[tasks.a]\ncommand = "true"\n')
    return folder


def parse(client: str, text: str) -> dict[str, Any]:
    """A client file's content, read the way the client reads it."""
    if CLIENTS[client].fmt == "toml":
        return tomllib.loads(text)
    body = "\n".join(line for line in text.splitlines() if not line.startswith("//"))
    return dict(json.loads(body))


def server_entry(client: str, data: dict[str, Any]) -> dict[str, Any]:
    """The taskmux entry inside a parsed client file."""
    node: Any = data
    for key in CLIENTS[client].container:
        node = node[key]
    return dict(node["taskmux"])


def argv(client: str, entry: dict[str, Any]) -> list[str]:
    """The command line a client would run for an entry."""
    if client == "opencode":
        assert entry["type"] == "local" and entry["enabled"] is True
        return list(entry["command"])
    return [entry["command"], *entry["args"]]


def test_the_eight_clients() -> None:
    assert list(CLIENTS) == [
        "claude", "codex", "cursor", "opencode", "gemini", "vscode", "windsurf", "zed",
    ]  # fmt: skip


@pytest.mark.parametrize("client", list(CLIENTS))
def test_ready_files_match_what_render_prints(client: str) -> None:
    name, text = ready_file(client)
    assert (READY / name).read_text() == text
    assert name in (READY / "README.md").read_text()
    entry = server_entry(client, parse(client, text))
    assert argv(client, entry) == [PLACEHOLDER_COMMAND, "--project", PLACEHOLDER_PROJECT]
    if CLIENTS[client].fmt != "json":
        assert "Goes in" in text.splitlines()[1]


def test_readme_lists_every_ready_file() -> None:
    listed = set(re.findall(r"`([\w.]+\.(?:json|toml))`", (READY / "README.md").read_text()))
    files = {p.name for p in READY.iterdir() if p.name != "README.md"}
    assert files == {CLIENTS[c].ready_file for c in CLIENTS}
    assert files <= listed


@pytest.mark.parametrize("client", list(CLIENTS))
def test_render_registers_the_absolute_command_with_the_project(
    client: str, proj: Path, home: Path
) -> None:
    target, text = render(client, proj, command=CMD)
    entry = server_entry(client, parse(client, text))
    assert argv(client, entry) == [CMD, "--project", str(proj)]
    if client in ("codex", "windsurf"):
        assert target.is_relative_to(home)
    else:
        assert target.is_relative_to(proj)


def test_render_targets(proj: Path, home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert render("claude", proj)[0] == proj / ".mcp.json"
    assert render("cursor", proj)[0] == proj / ".cursor" / "mcp.json"
    assert render("opencode", proj)[0] == proj / "opencode.json"
    assert render("gemini", proj)[0] == proj / ".gemini" / "settings.json"
    assert render("vscode", proj)[0] == proj / ".vscode" / "mcp.json"
    assert render("zed", proj)[0] == proj / ".zed" / "settings.json"
    assert render("windsurf", proj)[0] == home / ".codeium" / "windsurf" / "mcp_config.json"
    assert render("codex", proj)[0] == home / ".codex" / "config.toml"
    monkeypatch.setenv("CODEX_HOME", str(home / "elsewhere"))
    assert render("codex", proj)[0] == home / "elsewhere" / "config.toml"
    codex = tomllib.loads(render("codex", proj)[1])
    assert codex["mcp_servers"]["taskmux"]["tool_timeout_sec"] >= 90


def test_default_command_is_the_installed_entry_point(proj: Path) -> None:
    command = installed_command()
    assert Path(command).is_absolute() and Path(command).exists()
    assert Path(command).parent == Path(sys.executable).absolute().parent
    _, text = render("claude", proj)
    assert server_entry("claude", parse("claude", text))["command"] == command


def test_relative_project_dir_is_made_absolute(proj: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(proj.parent)
    _, text = render("cursor", Path("proj"), command=CMD)
    assert server_entry("cursor", parse("cursor", text))["args"] == ["--project", str(proj)]


@pytest.mark.parametrize("client", list(CLIENTS))
def test_merge_creates_a_missing_file(client: str, proj: Path, home: Path) -> None:
    path = merge(client, proj, command=CMD)
    data = parse(client, path.read_text())
    assert argv(client, server_entry(client, data)) == [CMD, "--project", str(proj)]
    if client == "opencode":
        assert data["$schema"] == "https://opencode.ai/config.json"


def test_merge_keeps_other_servers_and_settings(proj: Path, home: Path) -> None:
    path = proj / ".mcp.json"
    other = {"command": "npx", "args": ["-y", "other-server"], "env": {"TOKEN": "x"}}
    path.write_text(json.dumps({"mcpServers": {"other": other}, "extra": [1, 2]}))
    merge("claude", proj, command=CMD)
    data = json.loads(path.read_text())
    assert data["mcpServers"]["other"] == other and data["extra"] == [1, 2]
    assert data["mcpServers"]["taskmux"]["command"] == CMD
    first = path.read_text()
    merge("claude", proj, command=CMD)
    assert path.read_text() == first  # idempotent


def test_merge_replaces_a_stale_taskmux_entry(proj: Path, home: Path) -> None:
    path = proj / ".gemini" / "settings.json"
    path.parent.mkdir()
    stale = {"command": "/old/taskmux-mcp", "args": ["--project", "/old"]}
    path.write_text(json.dumps({"theme": "dark", "mcpServers": {"taskmux": stale}}))
    merge("gemini", proj, command=CMD)
    data = json.loads(path.read_text())
    assert data["theme"] == "dark"
    assert data["mcpServers"]["taskmux"] == {"command": CMD, "args": ["--project", str(proj)]}


def test_merge_into_codex_toml_keeps_comments_and_other_servers(proj: Path, home: Path) -> None:
    path = home / ".codex" / "config.toml"
    path.parent.mkdir()
    original = (
        '# my codex settings\nmodel = "o4"\n\n'
        '[mcp_servers.docs]  # documentation server\ncommand = "docs-mcp"\nargs = []\n\n'
        '[profiles.fast]\nmodel_reasoning_effort = "low"\n'
    )
    path.write_text(original)
    merge("codex", proj, command=CMD)
    text = path.read_text()
    kept = [line for line in text.splitlines() if line and line in original.splitlines()]
    assert kept == [line for line in original.splitlines() if line]  # every line, in order
    assert "\n\n[profiles.fast]" in text
    assert "# documentation server" in text
    data = tomllib.loads(text)
    assert data["model"] == "o4" and data["mcp_servers"]["docs"]["command"] == "docs-mcp"
    assert data["profiles"]["fast"]["model_reasoning_effort"] == "low"
    entry = data["mcp_servers"]["taskmux"]
    assert entry["command"] == CMD and entry["args"] == ["--project", str(proj)]
    merge("codex", proj, command=CMD)
    assert path.read_text() == text


def test_merge_into_zed_settings_keeps_other_settings(proj: Path, home: Path) -> None:
    path = proj / ".zed" / "settings.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"tab_size": 2, "context_servers": {"x": {"source": "extension"}}}))
    merge("zed", proj, command=CMD)
    data = json.loads(path.read_text())
    assert data["tab_size"] == 2 and data["context_servers"]["x"] == {"source": "extension"}
    assert data["context_servers"]["taskmux"]["source"] == "custom"


def test_merge_refuses_an_unparseable_file_and_leaves_it_alone(proj: Path, home: Path) -> None:
    path = proj / ".cursor" / "mcp.json"
    path.parent.mkdir()
    broken = '{"mcpServers": {"other": {"command": "x",}\n'
    path.write_text(broken)
    with pytest.raises(MergeRefused, match=r"not valid JSON \(line"):
        merge("cursor", proj, command=CMD)
    assert path.read_text() == broken

    codex = home / ".codex" / "config.toml"
    codex.parent.mkdir()
    codex.write_text("[mcp_servers\nbroken")
    with pytest.raises(MergeRefused, match="not valid TOML"):
        merge("codex", proj, command=CMD)
    assert codex.read_text() == "[mcp_servers\nbroken"


def test_merge_refuses_to_drop_jsonc_comments(proj: Path, home: Path) -> None:
    path = proj / ".vscode" / "mcp.json"
    path.parent.mkdir()
    commented = '{\n  // my servers\n  "servers": {},\n}\n'
    path.write_text(commented)
    with pytest.raises(MergeRefused, match="has comments") as refused:
        merge("vscode", proj, command=CMD)
    assert CMD in str(refused.value)  # the entry to paste by hand
    assert path.read_text() == commented


def test_merge_refuses_a_container_of_the_wrong_type(proj: Path, home: Path) -> None:
    path = proj / "opencode.json"
    path.write_text(json.dumps({"mcp": ["not", "an", "object"]}))
    with pytest.raises(MergeRefused, match="'mcp' is a list"):
        merge("opencode", proj, command=CMD)
    (proj / ".mcp.json").write_text("[1, 2]")
    with pytest.raises(MergeRefused, match="JSON object"):
        merge("claude", proj, command=CMD)


def test_run_mcp_config_prints_the_snippet(
    proj: Path, home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_mcp_config("vscode", proj, write=False, as_json=False) == 0
    out, err = capsys.readouterr()
    assert out == render("vscode", proj)[1]
    assert str(proj / ".vscode" / "mcp.json") in err
    assert not (proj / ".vscode").exists()

    assert run_mcp_config("codex", proj, write=False, as_json=True) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["path"] == str(home / ".codex" / "config.toml")
    assert printed["text"] == render("codex", proj)[1]


def test_run_mcp_config_writes(proj: Path, home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_mcp_config("claude", proj, write=True, as_json=False) == 0
    assert str(proj / ".mcp.json") in capsys.readouterr().out
    data = json.loads((proj / ".mcp.json").read_text())
    assert data["mcpServers"]["taskmux"]["command"] == installed_command()
    assert run_mcp_config("cursor", proj, write=True, as_json=True) == 0
    assert json.loads(capsys.readouterr().out)["written"] is True


def test_run_mcp_config_errors_exit_2(
    proj: Path, home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_mcp_config("emacs", proj, write=False, as_json=False) == 2
    err = capsys.readouterr().err
    assert "unknown client 'emacs'" in err and "claude" in err
    (proj / ".mcp.json").write_text("{nope")
    assert run_mcp_config("claude", proj, write=True, as_json=False) == 2
    err = capsys.readouterr().err
    assert "not valid JSON" in err and "Traceback" not in err
    assert (proj / ".mcp.json").read_text() == "{nope"


@pytest.mark.parametrize(
    ("spelling", "client"),
    [
        ("Claude", "claude"),
        ("claude-code", "claude"),
        ("claudecode", "claude"),
        ("Claude_Code", "claude"),
        ("claude code", "claude"),
        ("vs-code", "vscode"),
        ("VSCode", "vscode"),
        ("code", "vscode"),
        ("visual-studio-code", "vscode"),
        ("gemini-cli", "gemini"),
        ("open-code", "opencode"),
        ("codex-cli", "codex"),
        ("CURSOR", "cursor"),
        ("zed", "zed"),
    ],
)
def test_client_names_in_any_case_and_common_aliases(spelling: str, client: str) -> None:
    assert client_name(spelling) == client


def test_an_unknown_client_lists_the_valid_ones_with_a_did_you_mean(
    proj: Path, home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(MergeRefused, match=r"did you mean 'claude'\?") as typo:
        client_name("cluade")
    assert "choose one of: claude, codex, cursor, opencode, gemini, vscode" in str(typo.value)
    with pytest.raises(MergeRefused) as unknown:
        client_name("emacs")
    assert "did you mean" not in str(unknown.value) and "windsurf, zed" in str(unknown.value)
    assert run_mcp_config("Claude-Code", proj, write=True, as_json=True) == 0
    assert json.loads(capsys.readouterr().out)["client"] == "claude"
    assert (proj / ".mcp.json").exists()
