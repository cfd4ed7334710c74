"""Fixtures: a project on a private tmux server and state folder per test."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import Workspace, end_processes, make_project


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


@pytest.fixture
def monitors(project: Workspace) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Monitor processes started by a test, ended afterwards; no hosted monitor."""
    procs: list[subprocess.Popen[bytes]] = []
    project.env["TASKMUX_HOSTED_MONITOR"] = "0"
    yield procs
    end_processes(procs)
