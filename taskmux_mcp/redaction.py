"""Secrets kept out of what agents read, and `$PORT`-style references filled in.

A secret is a value from an env file, or an `env` value whose name looks like one (TOKEN,
SECRET, PASSWORD, KEY, ...). Every string a face returns passes through `Redactor`, which
shows each secret as `[redacted:NAME]`; the raw log files keep them. Values shorter than 4
characters, numbers and booleans are left alone: redacting them would blank out ordinary
output (a `DEBUG=1` would hide every "1").
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel

M = TypeVar("M", bound=BaseModel)

SECRET_NAME_RE = re.compile(
    r"TOKEN|SECRET|PASSW|PASSPHRASE|KEY|CREDENTIAL|PRIVATE|AUTH|COOKIE|SESSION|SIGNATURE|_PAT$",
    re.IGNORECASE,
)
MIN_SECRET = 4
IDENTIFIERS = frozenset(
    {"name", "task", "project", "session", "config_path", "checkout", "url", "log_path",
     "depends_on", "blocked_by", "window_id", "pane_id", "cursor"}
)  # fmt: skip
_PLAIN_RE = re.compile(r"[+-]?\d+(\.\d+)?|true|false|yes|no|on|off|null|none", re.IGNORECASE)
_PORT_REF_RE = re.compile(
    r"\$(?:\{(PORT|TASKMUX_PORT_[A-Z0-9_]+)\}|(PORT|TASKMUX_PORT_[A-Z0-9_]+)\b)"
)


def looks_secret(name: str) -> bool:
    """Whether a variable's name says it holds a secret."""
    return bool(SECRET_NAME_RE.search(name))


def expand_ports(text: str, ports: Mapping[str, str]) -> str:
    """`$PORT`, `${PORT}` and `${TASKMUX_PORT_<TASK>}` replaced by their values (others kept)."""

    def value(match: re.Match[str]) -> str:
        return ports.get(match[1] or match[2], match[0])

    return _PORT_REF_RE.sub(value, text)


class Redactor:
    """Replaces every secret value in strings (and in the strings inside data)."""

    def __init__(self, secrets: Mapping[str, str]) -> None:
        names: dict[str, str] = {}
        for name, value in secrets.items():
            lines = [line.strip() for line in value.splitlines()] if "\n" in value else []
            for part in [value, *lines]:  # output is read a line at a time
                if len(part) >= MIN_SECRET and not _PLAIN_RE.fullmatch(part.strip()):
                    names.setdefault(part, name)
        self._names = names
        ordered = sorted(names, key=len, reverse=True)
        self._pattern = re.compile("|".join(map(re.escape, ordered))) if ordered else None

    def __bool__(self) -> bool:
        return self._pattern is not None

    def text(self, text: str) -> str:
        """The text with each secret shown as [redacted:NAME]."""
        if self._pattern is None or not text:
            return text
        return self._pattern.sub(lambda m: f"[redacted:{self._names[m[0]]}]", text)

    def data(self, value: Any) -> Any:
        """A copy of JSON-like data with every string redacted but identifiers (task and
        project names, sessions, paths, URLs, cursors), which agents act on and are never
        secrets."""
        if self._pattern is None:
            return value
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {k: v if k in IDENTIFIERS else self.data(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.data(v) for v in value]
        return value

    def model(self, result: M) -> M:
        """A copy of a result model with every string redacted."""
        if self._pattern is None:
            return result
        return type(result).model_validate(self.data(result.model_dump(mode="python")))


NO_SECRETS = Redactor({})
