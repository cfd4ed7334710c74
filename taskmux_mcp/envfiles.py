"""Dotenv files (`.env`, `env_file`), read with python-dotenv's parser and `${VAR}` expansion.

The syntax is the common library's (quotes, `export` prefixes, comments, `${VAR}` and
`${VAR:-default}`), so a file that works with honcho, compose or python-dotenv works here.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_ENV_FILE = ".env"
MAX_ENV_FILE = 1024 * 1024


@dataclass(frozen=True)
class EnvFile:
    """One file's variables, in file order, and its malformed lines."""

    path: Path
    values: dict[str, str] = field(default_factory=dict)
    problems: list[tuple[int, str]] = field(default_factory=list)


def read_env_file(path: Path, base: Mapping[str, str]) -> EnvFile:
    """Parse a dotenv file; `${VAR}` expands from earlier lines, then from base."""
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_ENV_FILE + 1)
    except OSError as exc:
        return EnvFile(path, problems=[(0, f"cannot be read: {exc.strerror or exc}")])
    if len(data) > MAX_ENV_FILE:
        return EnvFile(path, problems=[(0, f"is larger than {MAX_ENV_FILE // 1024} KiB")])
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return EnvFile(path, problems=[(0, f"is not UTF-8 text ({exc.reason})")])
    from dotenv.parser import parse_stream  # only when a file exists: most projects have none
    from dotenv.variables import parse_variables

    values: dict[str, str] = {}
    problems: list[tuple[int, str]] = []
    scope = dict(base)
    for binding in parse_stream(io.StringIO(text)):
        line = binding.original.line
        if binding.error:
            first = (binding.original.string.strip().splitlines() or [""])[0]
            name = first.split("=", 1)[0].strip()[:60] if "=" in first else ""
            shown = f" (at {name}=…)" if name.isidentifier() else ""  # never the value: a secret
            problems.append((line, f"cannot be parsed{shown}; expected NAME=value"))
            continue
        if binding.key is None or binding.value is None:
            continue  # a comment, a blank line, or a bare NAME (which sets nothing)
        if "\0" in binding.value:
            problems.append((line, f"value of {binding.key} contains a NUL character"))
            continue
        value = "".join(atom.resolve(scope) for atom in parse_variables(binding.value))
        values[binding.key] = value
        scope[binding.key] = value
    return EnvFile(path, values, problems)


def load_env_files(paths: list[Path], base: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
    """Every file's variables, later files winning; problems as `file:line: why` phrases."""
    values: dict[str, str] = {}
    problems: list[str] = []
    for path in paths:
        loaded = read_env_file(path, {**base, **values})
        values.update(loaded.values)
        for line, why in loaded.problems:
            where = f"{path}:{line}" if line else str(path)
            problems.append(f"{where}: {why}")
    return values, problems
