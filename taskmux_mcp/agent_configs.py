"""Registrations of the MCP server for each agent client — the stdio server, or `taskmux serve`'s
HTTP endpoint (`--http`) — printed, or merged into the client's file."""

from __future__ import annotations

import difflib
import json
import os
import re
import shlex
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomlkit
import tomlkit.exceptions

from .endpoint import published_or_drawn, running_server
from .errors import InvalidArgument
from .state import write_atomic

SERVER_KEY = "taskmux"
PLACEHOLDER_PROJECT = "/path/to/your/project"
PLACEHOLDER_COMMAND = "/path/to/venv/bin/taskmux-mcp"
PLACEHOLDER_TASKMUX = "/path/to/venv/bin/taskmux"
PLACEHOLDER_URL = "http://127.0.0.1:8765/mcp"
PLACEHOLDER_TOKEN = "TOKEN-FROM-server.json"
PLACEHOLDER_KEY = "myproject-0123abcd"
TOKEN_INPUT = "taskmux-token"  # VS Code's input variable holding the token
ENTRY_KEY_CHARS = 32  # clients prefix tool names with the entry's name; keep it short
TOOL_TIMEOUT_S = 120  # start/restart wait up to 60 s by default; leave room for that
EXIT_OK = 0
EXIT_USAGE = 2


class MergeRefused(InvalidArgument):
    """The client's config file cannot be merged into safely; nothing was written."""


@dataclass(frozen=True)
class HttpServer:
    """What an entry for `taskmux serve` names: its MCP URL and token, and whose they are."""

    url: str
    token: str
    key: str  # the project's state folder name, which names entries in user-level files
    helper: tuple[str, ...]  # a command printing the auth header as JSON (headersHelper)

    @property
    def authorization(self) -> dict[str, str]:
        """The header that carries the token."""
        return {"Authorization": f"Bearer {self.token}"}


@dataclass(frozen=True)
class HttpForm:
    """Where a client keeps an entry for an HTTP server, and how it looks."""

    where: str
    ready_file: str
    entry: Callable[[HttpServer], dict[str, Any]]
    target: Callable[[Path], Path]
    holds_token: bool  # the token is in the file: a user-level one, written 0600
    note: str = ""
    prompt: Callable[[Path], dict[str, Any]] | None = None  # an input the client asks for


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
    http: HttpForm
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


def _claude_http(server: HttpServer) -> dict[str, Any]:
    return {"type": "http", "url": server.url, "headersHelper": shlex.join(server.helper)}


def _codex_http(server: HttpServer) -> dict[str, Any]:
    return {"url": server.url, "http_headers": server.authorization,
            "tool_timeout_sec": TOOL_TIMEOUT_S}  # fmt: skip


def _url_headers(server: HttpServer) -> dict[str, Any]:
    return {"url": server.url, "headers": server.authorization}


def _opencode_http(server: HttpServer) -> dict[str, Any]:
    # oauth false: a refused token is reported, not answered with an OAuth sign-in attempt
    return {"type": "remote", "url": server.url, "enabled": True, "oauth": False,
            "headers": server.authorization}  # fmt: skip


def _gemini_http(server: HttpServer) -> dict[str, Any]:
    return {"httpUrl": server.url, "headers": server.authorization}


def _vscode_http(server: HttpServer) -> dict[str, Any]:
    return {"type": "http", "url": server.url,
            "headers": {"Authorization": f"Bearer ${{input:{TOKEN_INPUT}}}"}}  # fmt: skip


def _vscode_token_input(project_dir: Path) -> dict[str, Any]:
    return {"type": "promptString", "id": TOKEN_INPUT, "password": True,
            "description": f"Token of taskmux serve for {project_dir} (in server.json; "
            "`taskmux mcp-config vscode --http` prints it)"}  # fmt: skip


def _windsurf_http(server: HttpServer) -> dict[str, Any]:
    return {"serverUrl": server.url, "headers": server.authorization}


def _xdg_config(*parts: str) -> Callable[[Path], Path]:
    def target(_: Path) -> Path:
        base = os.environ.get("XDG_CONFIG_HOME")
        return (Path(base).expanduser() if base else Path.home() / ".config").joinpath(*parts)

    return target


def _in_home(*parts: str) -> Callable[[Path], Path]:
    return lambda _: Path.home().joinpath(*parts)


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
            HttpForm(
                ".mcp.json at the project root (no token in it)",
                "claude.http.mcp.json",
                _claude_http,
                _in_project(".mcp.json"),
                holds_token=False,
                note="Claude Code runs the headersHelper command at each connection (after you "
                "trust the project), so .mcp.json holds no token and a new token is picked up",
            ),
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
            HttpForm(
                "~/.codex/config.toml (or $CODEX_HOME/config.toml)",
                "codex.http.config.toml",
                _codex_http,
                _codex_home,
                holds_token=True,
            ),
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
            HttpForm(
                "~/.cursor/mcp.json (user level: the project's .cursor/mcp.json may be committed)",
                "cursor.http.mcp.json",
                _url_headers,
                _in_home(".cursor", "mcp.json"),
                holds_token=True,
            ),
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
            HttpForm(
                "~/.config/opencode/opencode.json ($XDG_CONFIG_HOME honoured; user level: the "
                "project's opencode.json may be committed)",
                "opencode.http.json",
                _opencode_http,
                _xdg_config("opencode", "opencode.json"),
                holds_token=True,
            ),
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
            HttpForm(
                "~/.gemini/settings.json (user level: the project's .gemini/settings.json may be "
                "committed)",
                "gemini.http.settings.json",
                _gemini_http,
                _in_home(".gemini", "settings.json"),
                holds_token=True,
            ),
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
            HttpForm(
                ".vscode/mcp.json in the project (no token in it)",
                "vscode.http.mcp.json",
                _vscode_http,
                _in_project(".vscode", "mcp.json"),
                holds_token=False,
                note=f"VS Code asks for {TOKEN_INPUT!r} the first time it starts the server and "
                "keeps it in its secret storage",
                prompt=_vscode_token_input,
            ),
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
            _in_home(".codeium", "windsurf", "mcp_config.json"),
            HttpForm(
                "~/.codeium/windsurf/mcp_config.json",
                "windsurf.http.mcp_config.json",
                _windsurf_http,
                _in_home(".codeium", "windsurf", "mcp_config.json"),
                holds_token=True,
            ),
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
            HttpForm(
                "~/.config/zed/settings.json ($XDG_CONFIG_HOME honoured; user level: the "
                "project's .zed/settings.json may be committed)",
                "zed.http.settings.json",
                _url_headers,
                _xdg_config("zed", "settings.json"),
                holds_token=True,
            ),
        ),
    )
}


def installed_command(name: str = "taskmux-mcp") -> str:
    """Absolute path of an installed entry point (next to this interpreter)."""
    beside = Path(sys.executable).absolute().parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
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


@dataclass(frozen=True)
class Registration:
    """One client entry: the file it goes in, under which name, and what else goes with it."""

    spec: ClientSpec
    path: Path
    name: str
    entry: dict[str, Any]
    comment: tuple[str, ...]
    lists: tuple[tuple[str, dict[str, Any]], ...] = ()  # (top-level list, item keyed by "id")
    private: bool = False  # holds a token: written 0600

    def document(self) -> dict[str, Any]:
        """The whole file as it would be if it held only this entry."""
        entry = self.entry
        if self.spec.fmt == "toml":  # an entry's own tables (headers) are written inline
            entry = {key: _inline(value) for key, value in entry.items()}
        inner: dict[str, Any] = {self.name: entry}
        for key in reversed(self.spec.container):
            inner = {key: inner}
        extra = {key: [item] for key, item in self.lists}
        return {**dict(self.spec.preamble), **extra, **inner}

    def text(self) -> str:
        """The file's text (with a comment saying where it goes, where comments are allowed)."""
        doc = self.document()
        if self.spec.fmt == "toml":
            return _commented(self.comment, "#") + tomlkit.dumps(doc)
        body = json.dumps(doc, indent=2) + "\n"
        return _commented(self.comment, "//") + body if self.spec.fmt == "jsonc" else body


def _inline(value: Any) -> Any:
    if not isinstance(value, dict):
        return value
    table = tomlkit.inline_table()
    table.update(value)
    return table


def _commented(lines: tuple[str, ...], marker: str) -> str:
    return "".join(f"{marker} {line}\n" for line in lines)


def stdio_registration(client: str, project_dir: Path, command: str | None = None) -> Registration:
    """The entry starting `taskmux-mcp --project DIR` for a client."""
    spec = _spec(client)
    project_dir = Path(os.path.abspath(project_dir))
    entry = spec.entry(command or installed_command(), ["--project", str(project_dir)])
    comment = (
        f"taskmux MCP server for {spec.title}: runs and watches this project's dev tasks in tmux.",
        f"Goes in {spec.where}.",
        f"Merge it with: taskmux --project DIR mcp-config {spec.name} --write",
    )
    return Registration(spec, spec.target(project_dir), SERVER_KEY, entry, comment)


def http_registration(client: str, project_dir: Path, server: HttpServer) -> Registration:
    """The entry reaching `taskmux serve` at server.url, with its token, for a client."""
    spec = _spec(client)
    form = spec.http
    project_dir = Path(os.path.abspath(project_dir))
    # A user-level file serves every project: each project's server gets its own entry.
    name = f"{SERVER_KEY}-{server.key[-ENTRY_KEY_CHARS:]}" if form.holds_token else SERVER_KEY
    comment = (
        f"taskmux serve's MCP endpoint for {spec.title}: this project's dev tasks over HTTP.",
        f"Goes in {form.where}.",
        f"Merge it with: taskmux --project DIR mcp-config {spec.name} --http --write",
        *(("It holds the token: keep this file private (0600), never commit it.",)
          if form.holds_token else ()),
    )  # fmt: skip
    lists = (("inputs", form.prompt(project_dir)),) if form.prompt is not None else ()
    return Registration(
        spec, form.target(project_dir), name, form.entry(server), comment, lists,
        private=form.holds_token,
    )  # fmt: skip


def render(client: str, project_dir: Path, command: str | None = None) -> tuple[Path, str]:
    """The file the client reads, and the text registering taskmux-mcp for project_dir."""
    registration = stdio_registration(client, project_dir, command)
    return registration.path, registration.text()


_JSONC_TOKENS = re.compile(r'"(?:\\.|[^"\\])*"|//[^\n]*|/\*.*?\*/', re.DOTALL)
_TRAILING_COMMA = re.compile(r",(\s*[}\]])")


def _strip_jsonc(text: str) -> str:
    without = _JSONC_TOKENS.sub(lambda m: m.group(0) if m.group(0)[0] == '"' else "", text)
    return _TRAILING_COMMA.sub(r"\1", without)


def _load_json(reg: Registration, text: str) -> dict[str, Any]:
    path = reg.path
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
        snippet = json.dumps({reg.name: reg.entry}, indent=2)
        extra = "".join(
            f"\nand this item under {key!r}:\n{json.dumps(item, indent=2)}"
            for key, item in reg.lists
        )
        raise MergeRefused(
            f"{path} has comments, which rewriting it would lose; nothing was written. "
            f"Add this under {'.'.join(reg.spec.container)!r} by hand:\n{snippet}{extra}"
        ) from None
    if not isinstance(data, dict):
        raise MergeRefused(f"{path} does not hold a JSON object; nothing was written.")
    return data


def _merge_json(reg: Registration, text: str) -> str:
    data = _load_json(reg, text)
    if not text.strip():
        data.update(dict(reg.spec.preamble))
    for key, item in reg.lists:
        items = data.setdefault(key, [])
        if not isinstance(items, list):
            raise MergeRefused(
                f"{reg.path}: {key!r} is a {type(items).__name__}, not a list; nothing was written."
            )
        kept = [x for x in items if not (isinstance(x, dict) and x.get("id") == item["id"])]
        data[key] = [*kept, item]
    node = data
    for key in reg.spec.container:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise MergeRefused(
                f"{reg.path}: {key!r} is a {type(child).__name__}, not an object; "
                "nothing was written."
            )
        node = child
    node[reg.name] = reg.entry
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def _merge_toml(reg: Registration, text: str) -> str:
    try:
        doc = tomlkit.parse(text)
    except tomlkit.exceptions.ParseError as exc:
        raise MergeRefused(f"{reg.path} is not valid TOML ({exc}); nothing was written.") from None
    node: Any = doc
    for key in reg.spec.container:
        if key not in node:
            node[key] = tomlkit.table(is_super_table=True)
        node = node[key]
        if not isinstance(node, dict):
            raise MergeRefused(f"{reg.path}: {key!r} is not a table; nothing was written.")
    table = tomlkit.table()
    for key, value in reg.entry.items():
        table[key] = _inline(value)
    table.add(tomlkit.nl())
    node[reg.name] = table
    return tomlkit.dumps(doc)


def write_registration(reg: Registration) -> Path:
    """Add or replace the entry in the client's file, keeping everything else."""
    path = reg.path
    try:
        text = path.read_text(encoding="utf-8") if path.exists() else ""
    except (OSError, UnicodeDecodeError) as exc:
        raise MergeRefused(f"cannot read {path}: {exc}; nothing was written.") from None
    new = _merge_toml(reg, text) if reg.spec.fmt == "toml" else _merge_json(reg, text)
    write_atomic(path, new.encode("utf-8"), mode=0o600 if reg.private else None)
    return path


def merge(client: str, project_dir: Path, command: str | None = None) -> Path:
    """Add or replace the stdio taskmux entry in the client's file, keeping everything else."""
    return write_registration(stdio_registration(client, project_dir, command))


def ready_file(client: str) -> tuple[str, str]:
    """The name and text of the client's ready file in agent-configs/ (placeholder paths)."""
    _, text = render(client, Path(PLACEHOLDER_PROJECT), command=PLACEHOLDER_COMMAND)
    return CLIENTS[client].ready_file, text


def header_helper(taskmux: str, project_dir: Path, client: str) -> tuple[str, ...]:
    """The command that prints the auth header of project_dir's server as JSON."""
    return (taskmux, "--project", str(project_dir), "mcp-config", client, "--headers")


def ready_http_file(client: str) -> tuple[str, str]:
    """The name and text of the client's --http ready file in agent-configs/ (placeholders)."""
    helper = header_helper(PLACEHOLDER_TASKMUX, Path(PLACEHOLDER_PROJECT), client)
    server = HttpServer(PLACEHOLDER_URL, PLACEHOLDER_TOKEN, PLACEHOLDER_KEY, helper)
    return CLIENTS[client].http.ready_file, http_registration(
        client, Path(PLACEHOLDER_PROJECT), server
    ).text()


@dataclass(frozen=True)
class ServerSource:
    """Where a project's `taskmux serve` publishes itself (for `mcp-config --http`)."""

    server_json: Path
    key: str


def http_server(source: ServerSource, project_dir: Path, client: str) -> tuple[HttpServer, str]:
    """The project's server as an entry names it, and a note on its state for the user."""
    info, drawn = published_or_drawn(source.server_json)
    helper = header_helper(installed_command("taskmux"), project_dir, client)
    server = HttpServer(info.mcp_url, info.token, source.key, helper)
    if drawn:
        note = (
            f"no taskmux serve has run for this project yet: drew its token and port "
            f"{info.port} now and saved them in {source.server_json}; the entry works once "
            "`taskmux serve` runs"
        )
    elif running_server(source.server_json) is None:
        note = "taskmux serve is not running: the entry connects once `taskmux serve` runs"
    else:
        note = f"taskmux serve is running at {info.url}"
    return server, note


def _http_notes(reg: Registration, server: HttpServer, state: str) -> list[str]:
    form = reg.spec.http
    notes = [state]
    if form.note:
        notes.append(form.note)
    if form.prompt is not None:
        notes.append(f"the token to paste when {reg.spec.title} asks: {server.token}")
    if form.holds_token:
        notes.append(
            f"{reg.path} holds the token (--write makes it 0600): keep it private, never commit "
            f"it; every project reads this user-level file, so this project's entry is named "
            f"{reg.name!r}"
        )
    return notes


def run_headers(source: ServerSource) -> int:
    """`mcp-config CLIENT --headers`: the auth header as JSON (what a headers helper prints)."""
    info, _ = published_or_drawn(source.server_json)
    print(json.dumps({"Authorization": f"Bearer {info.token}"}))
    return EXIT_OK


def run_mcp_config(
    client: str,
    project_dir: Path,
    *,
    write: bool,
    as_json: bool,
    http: ServerSource | None = None,
) -> int:
    """`taskmux mcp-config CLIENT [--http] [--write]`: print the registration, or merge it in."""
    notes: list[str] = []
    try:
        client = client_name(client)
        if http is None:
            reg = stdio_registration(client, project_dir)
        else:
            server, state = http_server(http, Path(os.path.abspath(project_dir)), client)
            reg = http_registration(client, project_dir, server)
            notes = _http_notes(reg, server, state)
        if write:
            path = write_registration(reg)
            what = "taskmux serve's MCP endpoint" if http is not None else "taskmux-mcp"
            if as_json:
                print(json.dumps({"client": client, "path": str(path), "name": reg.name,
                                  "written": True, "notes": notes}))  # fmt: skip
            else:
                print(f"registered {what} for {CLIENTS[client].title} in {path}")
                for note in notes:
                    print(f"note: {note}", file=sys.stderr)
            return EXIT_OK
        text = reg.text()
        if not as_json:
            print(f"# {CLIENTS[client].title}: put this in {reg.path}", file=sys.stderr)
            for note in notes:
                print(f"# note: {note}", file=sys.stderr)
    except MergeRefused as exc:
        print(f"taskmux: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(f"taskmux: cannot write the config: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if as_json:
        print(json.dumps({"client": client, "path": str(reg.path), "name": reg.name,
                          "text": text, "notes": notes}))  # fmt: skip
    else:
        sys.stdout.write(text)
    return EXIT_OK
