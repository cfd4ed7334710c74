"""Fixtures: a project on a private tmux server and state folder per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support import Workspace, make_project


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Workspace]:
    """A fresh project folder with its own tmux server, HOME and state folder."""
    monkeypatch.delenv("TMUX", raising=False)
    monkeypatch.delenv("TASKMUX_PROJECT", raising=False)
    yield from make_project(monkeypatch.setenv, tmp_path)


@pytest.fixture
def anyio_backend() -> str:
    """Run async tests on asyncio."""
    return "asyncio"
