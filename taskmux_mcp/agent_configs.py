"""Registrations of the stdio MCP server for each agent client: print them, or merge them in."""

from __future__ import annotations

import difflib
import json
import os
import re
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomlkit
import tomlkit.exceptions

from .errors import TaskmuxError
from .state import write_atomic

SERVER_KEY = "taskmux"
PLACEHOLDER_PROJECT = "/path/to/your/project"
PLACEHOLDER_COMMAND = "/path/to/venv/bin/taskmux-mcp"
TOOL_TIMEOUT_S = 120  # start/restart wait up to 60 s by default; leave room for that
EXIT_OK = 0
EXIT_USAGE = 2


class MergeRefused(TaskmuxError):
    """The client's config file cannot be merged into safely; nothing was written."""


@dataclass(frozen=True)
class ClientSpec:
    """Where a client keeps its MCP servers and how an entry looks."""

    name: str
    title: str
    where: str
    ready_file: str
    fmt: str  # "json", "jsonc" (comments allowed) or "toml"
    container: tuple[str, ...]
    entry: Callable[[str, list[str]], dict[str, Any]]
    target: Callable[[Path], Path]
    preamble: tuple[tuple[str, Any], ...] = ()
    aliases: tuple[str, ...] = ()


def _plain(command: str, args: list[str]) -> dict[str, Any]:
    return {"command": command, "args": args}


def _codex(command: str, args: list[str]) -> dict[str, Any]:
    return {"command": command, "args": args, "tool_timeout_sec": TOOL_TIMEOUT_S}


def _opencode(command: str, args: list[str]) -> dict[str, Any]:
    return {"type": "local", "command": [command, *args], "enabled": True}


def _vscode(command: str, args: list[str]) -> dict[str, Any]:
    return {"type": "stdio", "command": command, "args": args}


def _zed(command: str, args: list[str]) -> dict[str, Any]:
    return {"source": "custom", "command": command, "args": args, "env": {}}


def _codex_home(_: Path) -> Path:
    home = os.environ.get("CODEX_HOME")
    base = Path(home).expanduser() if home else Path.home() / ".codex"
    return base / "config.toml"


def _in_project(*parts: str) -> Callable[[Path], Path]:
    return lambda project: project.joinpath(*parts)


CLIENTS: dict[str, ClientSpec] = {
    spec.name: spec
    for spec in (
        ClientSpec(
            "claude",
            "Claude Code",
            ".mcp.json at the project root (project scope, shared with the team)",
            "claude.mcp.json",
            "json",
            ("mcpServers",),
            _plain,
            _in_project(".mcp.json"),
            aliases=("claude-code", "claude-cli"),
        ),
        ClientSpec(
            "codex",
            "Codex CLI",
            "~/.codex/config.toml (or $CODEX_HOME/config.toml)",
            "codex.config.toml",
            "toml",
            ("mcp_servers",),
            _codex,
            _codex_home,
            aliases=("codex-cli", "openai-codex"),
        ),
        ClientSpec(
            "cursor",
            "Cursor",
            ".cursor/mcp.json in the project",
            "cursor.mcp.json",
            "json",
            ("mcpServers",),
            _plain,
            _in_project(".cursor", "mcp.json"),
        ),
        ClientSpec(
            "opencode",
            "OpenCode",
            "opencode.json at the project root",
            "opencode.json",
            "json",
            ("mcp",),
            _opencode,
            _in_project("opencode.json"),
            (("$schema", "https://opencode.ai/config.json"),),
        ),
        ClientSpec(
            "gemini",
            "Gemini CLI",
            ".gemini/settings.json in the project",
            "gemini.settings.json",
            "json",
            ("mcpServers",),
            _plain,
            _in_project(".gemini", "settings.json"),
            aliases=("gemini-cli",),
        ),
        ClientSpec(
            "vscode",
            "VS Code (Copilot agent mode)",
            ".vscode/mcp.json in the project",
            "vscode.mcp.json",
            "jsonc",
            ("servers",),
            _vscode,
            _in_project(".vscode", "mcp.json"),
            aliases=("code", "visual-studio-code"),
        ),
        ClientSpec(
            "windsurf",
            "Windsurf",
            "~/.codeium/windsurf/mcp_config.json",
            "windsurf.mcp_config.json",
            "json",
            ("mcpServers",),
            _plain,
            lambda _: Path.home() / ".codeium" / "windsurf" / "mcp_config.json",
        ),
        ClientSpec(
            "zed",
            "Zed",
            ".zed/settings.json in the project (or ~/.config/zed/settings.json)",
            "zed.settings.json",
            "jsonc",
            ("context_servers",),
            _zed,
            _in_project(".zed", "settings.json"),
        ),
    )
}


def installed_command() -> str:
    """Absolute path of the installed `taskmux-mcp` (next to this interpreter)."""
    beside = Path(sys.executable).absolute().parent / "taskmux-mcp"
    if beside.exists():
        return str(beside)
    found = shutil.which("taskmux-mcp")
    return str(Path(found).absolute()) if found else str(beside)


def _squashed(name: str) -> str:
    return re.sub(r"[\s._-]+", "", name.casefold())


SPELLINGS: dict[str, str] = {
    _squashed(spelling): spec.name
    for spec in CLIENTS.values()
    for spelling in (spec.name, *spec.aliases)
}


def client_name(client: str) -> str:
    """The client a name means ("Claude", "claude-code", "vs_code"); MergeRefused otherwise."""
    name = SPELLINGS.get(_squashed(client))
    if name is not None:
        return name
    close = difflib.get_close_matches(_squashed(client), list(SPELLINGS), 1, cutoff=0.6)
    hint = f"did you mean {SPELLINGS[close[0]]!r}? " if close else ""
    raise MergeRefused(
        f"unknown client {client[:64]!r}; {hint}choose one of: {', '.join(CLIENTS)} "
        "(any case; aliases such as claude-code, vs-code or gemini-cli are accepted too)"
    )


def _spec(client: str) -> ClientSpec:
    return CLIENTS[client_name(client)]


def _entry(spec: ClientSpec, project_dir: Path, command: str | None) -> dict[str, Any]:
    return spec.entry(command or installed_command(), ["--project", str(project_dir)])


def _document(spec: ClientSpec, entry: dict[str, Any]) -> dict[str, Any]:
    inner: dict[str, Any] = {SERVER_KEY: entry}
    for key in reversed(spec.container):
        inner = {key: inner}
    return {**dict(spec.preamble), **inner}


def _comment(spec: ClientSpec, marker: str) -> str:
    lines = [
        f"taskmux MCP server for {spec.title}: runs and watches this project's dev tasks in tmux.",
        f"Goes in {spec.where}.",
        f"Merge it with: taskmux --project DIR mcp-config {spec.name} --write",
    ]
    return "".join(f"{marker} {line}\n" for line in lines)


def render(client: str, project_dir: Path, command: str | None = None) -> tuple[Path, str]:
    """The file the client reads, and the text registering taskmux-mcp for project_dir."""
    spec = _spec(client)
    project_dir = Path(os.path.abspath(project_dir))
    doc = _document(spec, _entry(spec, project_dir, command))
    if spec.fmt == "toml":
        text = _comment(spec, "#") + tomlkit.dumps(doc)
    else:
        body = json.dumps(doc, indent=2) + "\n"
        text = _comment(spec, "//") + body if spec.fmt == "jsonc" else body
    return spec.target(project_dir), text


_JSONC_TOKENS = re.compile(r'"(?:\\.|[^"\\])*"|//[^\n]*|/\*.*?\*/', re.DOTALL)
_TRAILING_COMMA = re.compile(r",(\s*[}\]])")


def _strip_jsonc(text: str) -> str:
    without = _JSONC_TOKENS.sub(lambda m: m.group(0) if m.group(0)[0] == '"' else "", text)
    return _TRAILING_COMMA.sub(r"\1", without)


def _load_json(spec: ClientSpec, path: Path, text: str, snippet: str) -> dict[str, Any]:
    try:
        data = json.loads(text) if text.strip() else {}
    except json.JSONDecodeError as exc:
        try:
            json.loads(_strip_jsonc(text))
        except json.JSONDecodeError:
            raise MergeRefused(
                f"{path} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); "
                "fix it, then run this again. Nothing was written."
            ) from None
        raise MergeRefused(
            f"{path} has comments, which rewriting it would lose; nothing was written. "
            f"Add this under {'.'.join(spec.container)!r} by hand:\n{snippet}"
        ) from None
    if not isinstance(data, dict):
        raise MergeRefused(f"{path} does not hold a JSON object; nothing was written.")
    return data


def _merge_json(spec: ClientSpec, path: Path, text: str, entry: dict[str, Any]) -> str:
    snippet = json.dumps({SERVER_KEY: entry}, indent=2)
    data = _load_json(spec, path, text, snippet)
    if not text.strip():
        data.update(dict(spec.preamble))
    node = data
    for key in spec.container:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise MergeRefused(
                f"{path}: {key!r} is a {type(child).__name__}, not an object; nothing was written."
            )
        node = child
    node[SERVER_KEY] = entry
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def _merge_toml(spec: ClientSpec, path: Path, text: str, entry: dict[str, Any]) -> str:
    try:
        doc = tomlkit.parse(text)
    except tomlkit.exceptions.ParseError as exc:
        raise MergeRefused(f"{path} is not valid TOML ({exc}); nothing was written.") from None
    node: Any = doc
    for key in spec.container:
        if key not in node:
            node[key] = tomlkit.table(is_super_table=True)
        node = node[key]
        if not isinstance(node, dict):
            raise MergeRefused(f"{path}: {key!r} is not a table; nothing was written.")
    table = tomlkit.table()
    for key, value in entry.items():
        table[key] = value
    table.add(tomlkit.nl())
    node[SERVER_KEY] = table
    return tomlkit.dumps(doc)


def merge(client: str, project_dir: Path, command: str | None = None) -> Path:
    """Add or replace the taskmux entry in the client's file, keeping everything else."""
    spec = _spec(client)
    project_dir = Path(os.path.abspath(project_dir))
    path = spec.target(project_dir)
    try:
        text = path.read_text(encoding="utf-8") if path.exists() else ""
    except (OSError, UnicodeDecodeError) as exc:
        raise MergeRefused(f"cannot read {path}: {exc}; nothing was written.") from None
    entry = _entry(spec, project_dir, command)
    if spec.fmt == "toml":
        new = _merge_toml(spec, path, text, entry)
    else:
        new = _merge_json(spec, path, text, entry)
    write_atomic(path, new.encode("utf-8"), mode=None)
    return path


def ready_file(client: str) -> tuple[str, str]:
    """The name and text of the client's ready file in agent-configs/ (placeholder paths)."""
    _, text = render(client, Path(PLACEHOLDER_PROJECT), command=PLACEHOLDER_COMMAND)
    return CLIENTS[client].ready_file, text


def run_mcp_config(client: str, project_dir: Path, *, write: bool, as_json: bool) -> int:
    """`taskmux mcp-config CLIENT [--write]`: print the registration, or merge it in."""
    try:
        client = client_name(client)
        if write:
            path = merge(client, project_dir)
            if as_json:
                print(json.dumps({"client": client, "path": str(path), "written": True}))
            else:
                print(f"registered taskmux-mcp for {CLIENTS[client].title} in {path}")
            return EXIT_OK
        path, text = render(client, project_dir)
        if not as_json:
            print(f"# {CLIENTS[client].title}: put this in {path}", file=sys.stderr)
    except MergeRefused as exc:
        print(f"taskmux: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(f"taskmux: cannot write the config: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if as_json:
        print(json.dumps({"client": client, "path": str(path), "text": text}))
    else:
        sys.stdout.write(text)
    return EXIT_OK
