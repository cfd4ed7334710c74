"""Agent client registrations: rendering, the ready files, and merging into existing files."""

from __future__ import annotations

import json
import re
import shlex
import socket
import stat
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from support import REPO, Workspace, serving

from taskmux_mcp.agent_configs import (
    CLIENTS,
    PLACEHOLDER_COMMAND,
    PLACEHOLDER_PROJECT,
    TOKEN_INPUT,
    HttpServer,
    MergeRefused,
    client_name,
    http_registration,
    installed_command,
    merge,
    ready_file,
    ready_http_file,
    render,
    run_mcp_config,
    write_registration,
)
from taskmux_mcp.endpoint import DEFAULT_PORT, ServerInfo, read_server_info

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
    stdio = {CLIENTS[c].ready_file for c in CLIENTS}
    http = {CLIENTS[c].http.ready_file for c in CLIENTS}
    assert files == stdio | http and not stdio & http
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


# ------------------------------------------------------------------ --http: taskmux serve's entry

URL_KEY = {"gemini": "httpUrl", "windsurf": "serverUrl"}
HEADERS_KEY = {"codex": "http_headers"}
TOKEN = "t0k3n-" + "x" * 40
SERVER = HttpServer(
    "http://127.0.0.1:8123/mcp", TOKEN, "proj-0123abcd", ("/opt/venv/bin/taskmux", "--headers")
)


def only_entry(client: str, data: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The single server entry in a parsed client file, and its name."""
    node: Any = data
    for key in CLIENTS[client].container:
        node = node[key]
    ((name, entry),) = node.items()
    return str(name), dict(entry)


def http_view(
    client: str, data: dict[str, Any], *, pasted: str = "", env: dict[str, str] | None = None
) -> tuple[str, dict[str, str]]:
    """The URL a client connects to and the headers it sends, read from its entry the way the
    client reads it (Claude Code runs headersHelper; VS Code asks for its input)."""
    _, entry = only_entry(client, data)
    if client == "claude":
        assert entry["type"] == "http" and "headers" not in entry
        helper = subprocess.run(
            entry["headersHelper"], shell=True, capture_output=True, text=True, env=env, check=True
        )
        return entry["url"], dict(json.loads(helper.stdout))
    headers = dict(entry[HEADERS_KEY.get(client, "headers")])
    if client == "vscode":
        assert entry["type"] == "http"
        (prompt,) = data["inputs"]
        assert prompt["id"] == TOKEN_INPUT and prompt["password"] is True
        reference = f"${{input:{TOKEN_INPUT}}}"
        assert headers["Authorization"] == f"Bearer {reference}"
        headers = {k: v.replace(reference, pasted) for k, v in headers.items()}
    if client == "opencode":
        assert entry["type"] == "remote" and entry["enabled"] is True
    return str(entry[URL_KEY.get(client, "url")]), headers


@pytest.mark.parametrize("client", list(CLIENTS))
def test_http_ready_files_match_what_render_prints(client: str) -> None:
    name, text = ready_http_file(client)
    assert (READY / name).read_text() == text
    assert name in (READY / "README.md").read_text()
    parse(client, text)
    if CLIENTS[client].fmt != "json":
        assert "Goes in" in text.splitlines()[1]


@pytest.mark.parametrize("client", list(CLIENTS))
def test_http_entry_parses_and_carries_the_url_and_the_token_or_a_way_to_it(
    client: str, proj: Path, home: Path
) -> None:
    reg = http_registration(client, proj, SERVER)
    data = parse(client, reg.text())
    name, entry = only_entry(client, data)
    if client in ("claude", "vscode"):  # project files: the token never goes in them
        assert reg.path.is_relative_to(proj) and name == "taskmux" and not reg.private
        assert TOKEN not in reg.text()
        if client == "claude":
            assert entry == {"type": "http", "url": SERVER.url,
                             "headersHelper": shlex.join(SERVER.helper)}  # fmt: skip
        else:
            assert http_view(client, data, pasted=TOKEN) == (
                SERVER.url, {"Authorization": f"Bearer {TOKEN}"}
            )  # fmt: skip
    else:  # user-level files: the token is in them, each project under its own name
        assert reg.path.is_relative_to(home) and reg.private
        assert name == "taskmux-proj-0123abcd"
        assert http_view(client, data) == (SERVER.url, {"Authorization": f"Bearer {TOKEN}"})
    if client == "codex":
        assert entry["tool_timeout_sec"] >= 90 and "bearer_token" not in entry


def test_http_targets(proj: Path, home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def target(client: str) -> Path:
        return http_registration(client, proj, SERVER).path

    assert target("claude") == proj / ".mcp.json"
    assert target("vscode") == proj / ".vscode" / "mcp.json"
    assert target("cursor") == home / ".cursor" / "mcp.json"
    assert target("gemini") == home / ".gemini" / "settings.json"
    assert target("windsurf") == home / ".codeium" / "windsurf" / "mcp_config.json"
    assert target("codex") == home / ".codex" / "config.toml"
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    assert target("opencode") == home / ".config" / "opencode" / "opencode.json"
    assert target("zed") == home / ".config" / "zed" / "settings.json"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / "xdg"))
    assert target("zed") == home / "xdg" / "zed" / "settings.json"


@pytest.mark.parametrize("client", [c for c in CLIENTS if CLIENTS[c].http.holds_token])
def test_http_write_keeps_other_entries_and_makes_the_file_private(
    client: str, proj: Path, home: Path
) -> None:
    reg = http_registration(client, proj, SERVER)
    reg.path.parent.mkdir(parents=True, exist_ok=True)
    if reg.spec.fmt == "toml":
        reg.path.write_text('model = "o4"\n\n[mcp_servers.docs]\ncommand = "docs-mcp"\n')
    else:
        container: dict[str, Any] = {"other": {"command": "other-mcp"}}
        for key in reversed(CLIENTS[client].container):
            container = {key: container}
        reg.path.write_text(json.dumps({"theme": "dark", **container}))
    reg.path.chmod(0o644)
    assert write_registration(reg) == reg.path
    text = reg.path.read_text()
    data = parse(client, text)
    assert stat.S_IMODE(reg.path.stat().st_mode) == 0o600
    node: Any = data
    for key in CLIENTS[client].container:
        node = node[key]
    if reg.spec.fmt == "toml":
        assert data["model"] == "o4" and node["docs"]["command"] == "docs-mcp"
    else:
        assert data["theme"] == "dark" and node["other"] == {"command": "other-mcp"}
    url, headers = http_view(client, {**data, reg.spec.container[0]: {reg.name: node[reg.name]}})
    assert (url, headers) == (SERVER.url, {"Authorization": f"Bearer {TOKEN}"})
    write_registration(reg)
    assert reg.path.read_text() == text  # idempotent


def test_http_write_replaces_the_stdio_entry_and_keeps_other_inputs(proj: Path, home: Path) -> None:
    merge("vscode", proj, command=CMD)
    path = proj / ".vscode" / "mcp.json"
    data = json.loads(path.read_text())
    other_input = {"type": "promptString", "id": "gh-pat", "description": "GH", "password": True}
    data["inputs"] = [other_input, {"type": "promptString", "id": TOKEN_INPUT, "description": "x"}]
    data["servers"]["github"] = {"type": "http", "url": "https://api.example.com/mcp"}
    path.write_text(json.dumps(data))
    mode = stat.S_IMODE(path.stat().st_mode)
    write_registration(http_registration("vscode", proj, SERVER))
    data = json.loads(path.read_text())
    assert data["inputs"][0] == other_input and len(data["inputs"]) == 2
    assert data["inputs"][1]["password"] is True  # the stale taskmux input replaced, not doubled
    assert data["servers"]["github"]["url"] == "https://api.example.com/mcp"
    assert data["servers"]["taskmux"]["type"] == "http"  # the stdio entry replaced
    assert TOKEN not in path.read_text() and stat.S_IMODE(path.stat().st_mode) == mode


def test_http_snippet_for_a_commented_file_carries_the_vscode_input(proj: Path, home: Path) -> None:
    path = proj / ".vscode" / "mcp.json"
    path.parent.mkdir()
    path.write_text('{\n  // mine\n  "servers": {}\n}\n')
    with pytest.raises(MergeRefused, match="has comments") as refused:
        write_registration(http_registration("vscode", proj, SERVER))
    assert "'inputs'" in str(refused.value) and TOKEN_INPUT in str(refused.value)


def test_http_for_an_unknown_client_or_headers_with_write_draws_nothing(project: Workspace) -> None:
    project.write('[tasks.a]\ncommand = "sleep 100"\n')
    answer = project.cli("mcp-config", "emacs", "--http")
    assert answer.returncode == 2 and "unknown client 'emacs'" in answer.stderr
    both = project.cli("mcp-config", "claude", "--headers", "--write")
    assert both.returncode == 2 and "drop --write" in both.stderr
    assert not list(project.state_dir.glob("*/server.json"))


def free_port() -> int:
    """A port nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def tools_through(url: str, headers: dict[str, str]) -> set[str]:
    """Initialize an MCP session with the SDK's Streamable HTTP client and list the tools."""
    async with (
        create_mcp_http_client(headers=headers) as http,
        Client(streamable_http_client(url, http_client=http), mode="legacy") as client,
    ):
        return {tool.name for tool in (await client.list_tools()).tools}


async def refused_with(url: str, headers: dict[str, str]) -> int:
    """The status an MCP initialize request gets with these headers."""
    body = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "entry", "version": "1"}}}  # fmt: skip
    accept = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
    async with httpx2.AsyncClient(timeout=10) as http:
        answer = await http.post(url, headers={**accept, **headers}, json=body)
    return answer.status_code


def wrong(headers: dict[str, str]) -> dict[str, str]:
    """The same headers with another token."""
    return {k: v[:-4] + "nope" if k == "Authorization" else v for k, v in headers.items()}


@pytest.mark.anyio
async def test_every_clients_http_entry_reaches_a_running_server_and_a_wrong_token_gets_401(
    project: Workspace,
) -> None:
    project.write('[tasks.a]\ncommand = "sleep 100"\nauto_start = false\n')
    with serving(project) as (_, info):
        for client in CLIENTS:
            answer = project.cli("mcp-config", client, "--http", "--json")
            assert answer.returncode == 0, answer.stderr
            printed = json.loads(answer.stdout)
            notes = " ".join(printed["notes"])
            assert f"running at {info.url}" in notes
            pasted = info.token if f"asks: {info.token}" in notes else ""
            data = parse(client, printed["text"])
            url, headers = http_view(client, data, pasted=pasted, env=project.env)
            assert url == info.mcp_url and headers == {"Authorization": f"Bearer {info.token}"}
            assert {"status", "start", "logs"} <= await tools_through(url, headers), client
            assert await refused_with(url, wrong(headers)) == 401
            assert await refused_with(url, {}) == 401


@pytest.mark.anyio
async def test_an_entry_written_before_serve_runs_is_valid_once_it_does(
    project: Workspace,
) -> None:
    project.write('[tasks.a]\ncommand = "sleep 100"\nauto_start = false\n')
    paths = project.open().paths
    assert read_server_info(paths.server) is None
    nothing_yet = project.cli("mcp-config", "cursor", "--http")
    assert nothing_yet.returncode == 0, nothing_yet.stderr
    assert f"drew its token and port {DEFAULT_PORT}" in nothing_yet.stderr
    assert "works once `taskmux serve` runs" in nothing_yet.stderr
    drawn = read_server_info(paths.server)
    assert drawn is not None and drawn.pid == 0 and drawn.port == DEFAULT_PORT
    assert stat.S_IMODE(paths.server.stat().st_mode) == 0o600
    assert drawn.mcp_url in nothing_yet.stdout and drawn.token in nothing_yet.stdout

    # a port of its own for this test: as if serve had used it last, with no token kept
    port = free_port()
    ServerInfo(host="127.0.0.1", port=port, token="short").save(paths.server)
    written = project.cli("mcp-config", "cursor", "--http", "--write")
    assert written.returncode == 0, written.stderr
    assert f"drew its token and port {port}" in written.stderr
    entry_file = Path(project.env["HOME"]) / ".cursor" / "mcp.json"
    assert stat.S_IMODE(entry_file.stat().st_mode) == 0o600
    data = json.loads(entry_file.read_text())
    url, headers = http_view("cursor", data)
    assert url == f"http://127.0.0.1:{port}/mcp"
    with serving(project, port=None) as (_, info):  # serve chooses: the saved port and token
        assert info.port == port and headers == {"Authorization": f"Bearer {info.token}"}
        assert {"status", "wait_for"} <= await tools_through(url, headers)
        assert await refused_with(url, wrong(headers)) == 401
    before = entry_file.read_text()
    again = project.cli("mcp-config", "cursor", "--http", "--write")
    assert "not running" in again.stderr
    assert entry_file.read_text() == before  # the token outlived the server: the entry holds
