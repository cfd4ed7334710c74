"""Where a project's local server (`taskmux serve`) listens, and the token it requires:
``server.json`` in the state folder, mode 0600 from its creation.

The token is drawn once (256 bits) and kept across restarts, so client entries written by
`taskmux mcp-config --http` stay valid; deleting server.json draws a new one. While a server
runs, the file names its pid and port; when it stops, its pid becomes 0.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import time
from pathlib import Path
from urllib.parse import quote

from pydantic import BaseModel, ValidationError

from .errors import InvalidArgument
from .state import write_atomic

DEFAULT_PORT = 8765
DEFAULT_HOST = "127.0.0.1"
TOKEN_BYTES = 32
MIN_TOKEN_CHARS = 32  # a shorter saved token is not kept: a new one is drawn
CONNECT_TIMEOUT_S = 0.5


def new_token() -> str:
    """A fresh 256-bit token, URL-safe."""
    return secrets.token_urlsafe(TOKEN_BYTES)


def url_host(host: str) -> str:
    """The host as it goes into a URL a client on this machine can open."""
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


class ServerInfo(BaseModel):
    """What server.json holds."""

    host: str
    port: int
    token: str
    pid: int = 0
    started: float = 0.0

    @property
    def url(self) -> str:
        """The server's base URL, e.g. http://127.0.0.1:8765."""
        return f"http://{url_host(self.host)}:{self.port}"

    @property
    def mcp_url(self) -> str:
        """The MCP endpoint (Streamable HTTP)."""
        return f"{self.url}/mcp"

    @property
    def ws_url(self) -> str:
        """The WebSocket bridge."""
        return f"ws://{url_host(self.host)}:{self.port}/ws"

    @property
    def dashboard_url(self) -> str:
        """The dashboard's login URL: it carries the token once, then a cookie does."""
        return f"{self.url}/?token={quote(self.token)}"

    def save(self, path: Path) -> None:
        """Write the file, private from its first instant."""
        write_atomic(path, self.model_dump_json(indent=2).encode() + b"\n", 0o600)


def read_server_info(path: Path) -> ServerInfo | None:
    """The server.json at path, or None when absent or unreadable."""
    try:
        return ServerInfo.model_validate_json(path.read_bytes())
    except (OSError, ValidationError, ValueError):
        return None


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def listening(info: ServerInfo) -> bool:
    """Whether something accepts connections at the server's address."""
    host = url_host(info.host).strip("[]")
    try:
        with socket.create_connection((host, info.port), timeout=CONNECT_TIMEOUT_S):
            return True
    except OSError:
        return False


def running_server(path: Path) -> ServerInfo | None:
    """The server that server.json names, if its process lives and its port answers."""
    info = read_server_info(path)
    if info is None or not pid_alive(info.pid) or not listening(info):
        return None
    return info


def token_for(path: Path) -> str:
    """The token to serve with: the one already saved, else a new one."""
    info = read_server_info(path)
    return info.token if info is not None and len(info.token) >= MIN_TOKEN_CHARS else new_token()


def choose_port(port: int | None, path: Path) -> int:
    """--port when given, else the port this project's server used last, else DEFAULT_PORT."""
    if port is not None:
        if not 0 <= port <= 65535:
            raise InvalidArgument(f"port must be between 0 and 65535 (got {port})")
        return port
    saved = read_server_info(path)
    return saved.port if saved is not None and 0 < saved.port <= 65535 else DEFAULT_PORT


def published_or_drawn(path: Path) -> tuple[ServerInfo, bool]:
    """Where clients will find this project's server: server.json's address and token, else
    the token and port `taskmux serve` will use, drawn now and saved for it (True)."""
    saved = read_server_info(path)
    if saved is not None and len(saved.token) >= MIN_TOKEN_CHARS and 0 < saved.port <= 65535:
        return saved, False
    host = saved.host if saved is not None else DEFAULT_HOST
    info = ServerInfo(host=host, port=choose_port(None, path), token=token_for(path))
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    info.save(path)
    return info, True


def mark_stopped(path: Path, token: str) -> None:
    """Say in server.json that the server stopped (pid 0), if the file is still ours."""
    info = read_server_info(path)
    if info is None or not secrets.compare_digest(info.token, token) or info.pid != os.getpid():
        return
    with contextlib.suppress(OSError):
        info.model_copy(update={"pid": 0, "started": time.time()}).save(path)
