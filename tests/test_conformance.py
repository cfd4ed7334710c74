"""The official MCP conformance suite (npm @modelcontextprotocol/conformance 0.1) run against a
real `taskmux serve` at /mcp: every server scenario that applies to taskmux passes, every other
one is named here with the reason it does not apply."""

from __future__ import annotations

import json
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from support import REPO, Workspace, npm_tool, serving

SUITE = "@modelcontextprotocol/conformance@0.1"
# The first run installs Node 22 and the suite from npm (cached under .cache/ afterwards).
pytestmark = pytest.mark.timeout(300)

PROJECT = """
name = "conformance"
[tasks.api]
command = "echo api-up; sleep 1000"
stop_grace_period = 0.5
"""

# Scenarios that test what any MCP server over Streamable HTTP must do, with nothing of the
# suite's own: each must pass (no failed check, at least one passed).
APPLICABLE = (
    "server-initialize",
    "logging-set-level",
    "ping",
    "tools-list",
    "resources-list",
    "server-sse-multiple-streams",
    "dns-rebinding-protection",
)


@dataclass(frozen=True)
class NotApplicable:
    """Why a scenario does not apply, and what its checks show when it meets that."""

    needs: str
    why: str
    shows: str


def _fixture_tool(tool: str, shows: str, why: str = "") -> NotApplicable:
    """A scenario that calls a tool of the suite's reference server."""
    return NotApplicable(f"the suite's tool `{tool}`", why or "taskmux has no such tool", shows)


# The one list of scenarios that do not apply (the README's table repeats it).
NOT_APPLICABLE: dict[str, NotApplicable] = {
    "completion-complete": NotApplicable(
        "the suite's prompt `test_prompt_with_arguments` and the `completions` capability",
        "taskmux offers no prompts and no completions; the method is answered -32601",
        "Method not found",
    ),
    "tools-call-simple-text": _fixture_tool(
        "test_simple_text",
        "Unknown tool: test_simple_text",
        "passes anyway, only because an unknown tool's error result is text; not counted",
    ),
    "tools-call-image": _fixture_tool(
        "test_image_content", "No image content found", "taskmux's tools return no images"
    ),
    "tools-call-audio": _fixture_tool(
        "test_audio_content", "No audio content found", "taskmux's tools return no audio"
    ),
    "tools-call-embedded-resource": _fixture_tool(
        "test_embedded_resource",
        "No resource content found",
        "taskmux's tools return no embedded resources",
    ),
    "tools-call-mixed-content": _fixture_tool(
        "test_multiple_content_types",
        "Expected multiple content items",
        "taskmux's tools return text and structured content only",
    ),
    "tools-call-with-logging": _fixture_tool(
        "test_tool_with_logging",
        "No log notifications received",
        "taskmux logs task events (crash, restart, health), not steps of a tool call",
    ),
    "tools-call-error": _fixture_tool(
        "test_error_handling",
        "Unknown tool: test_error_handling",
        "passes anyway, only because an unknown tool is an error result too; not counted",
    ),
    "tools-call-with-progress": _fixture_tool(
        "test_tool_with_progress",
        "Unknown tool: test_tool_with_progress",
        "taskmux reports progress only while start, restart or wait_for waits",
    ),
    "tools-call-sampling": _fixture_tool(
        "test_sampling", "Unknown tool: test_sampling", "taskmux never asks the client to sample"
    ),
    "tools-call-elicitation": _fixture_tool(
        "test_elicitation", "Unknown tool: test_elicitation", "taskmux never elicits"
    ),
    "json-schema-2020-12": _fixture_tool(
        "json_schema_2020_12_tool", "Tool 'json_schema_2020_12_tool' not found"
    ),
    "elicitation-sep1034-defaults": _fixture_tool(
        "test_elicitation_sep1034_defaults",
        "did not request elicitation",
        "taskmux never elicits",
    ),
    "server-sse-polling": _fixture_tool(
        "test_reconnection",
        "Unknown tool: test_reconnection",
        "a tool that closes its stream mid-call; taskmux never does",
    ),
    "elicitation-sep1330-enums": _fixture_tool(
        "test_elicitation_sep1330_enums",
        "did not request elicitation",
        "taskmux never elicits",
    ),
    **{
        scenario: NotApplicable(
            f"the suite's resource `{uri}`",
            "taskmux has only its own `taskmux://` resources; any other URI is answered -32002",
            uri,
        )
        for scenario, uri in (
            ("resources-read-text", "test://static-text"),
            ("resources-read-binary", "test://static-binary"),
            ("resources-templates-read", "test://template/123/data"),
            ("resources-subscribe", "test://watched-resource"),
            ("resources-unsubscribe", "test://watched-resource"),
        )
    },
    **{
        scenario: NotApplicable(
            needs,
            "taskmux offers no prompts, so it declares no `prompts` capability and answers -32601",
            "Method not found",
        )
        for scenario, needs in (
            ("prompts-list", "prompts (any)"),
            ("prompts-get-simple", "the suite's prompt `test_simple_prompt`"),
            ("prompts-get-with-args", "the suite's prompt `test_prompt_with_arguments`"),
            (
                "prompts-get-embedded-resource",
                "the suite's prompt `test_prompt_with_embedded_resource`",
            ),
            ("prompts-get-with-image", "the suite's prompt `test_prompt_with_image`"),
        )
    },
}


def conformance(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the suite's CLI (installed under .cache/conformance on first use)."""
    cli, path_env = npm_tool("conformance", SUITE, "conformance")
    return subprocess.run(
        [str(cli), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, "PATH": path_env},
    )


def listed_scenarios() -> list[str]:
    """The server scenarios the installed suite knows."""
    done = conformance("list", "--server")
    assert done.returncode == 0, done.stderr[-2000:]
    found = re.findall(r"^\s+- (\S+)", done.stdout, re.MULTILINE)
    assert found, done.stdout[-2000:]
    return found


def results(out: Path) -> dict[str, list[dict[str, Any]]]:
    """Each scenario's checks, from the folders the suite wrote (server-NAME-TIMESTAMP)."""
    found: dict[str, list[dict[str, Any]]] = {}
    for checks in out.glob("server-*/checks.json"):
        named = re.fullmatch(r"server-(.+)-\d{4}-\d\d-\d\dT[\d-]+Z", checks.parent.name)
        assert named, checks.parent.name
        found[named.group(1)] = json.loads(checks.read_text())
    return found


def problems(scenario: str, checks: list[dict[str, Any]] | None) -> list[str]:
    """What is wrong with one scenario's outcome; nothing when it is what this file expects."""
    if checks is None:
        return [f"{scenario}: the suite wrote no result"]
    if scenario in NOT_APPLICABLE:
        expected = NOT_APPLICABLE[scenario]
        if expected.shows in json.dumps(checks):
            return []
        return [
            f"{scenario} (not applicable: needs {expected.needs}) did not show "
            f"{expected.shows!r}; it now says: {json.dumps(checks)[:600]}"
        ]
    failed = [
        f"{scenario}: {c.get('id')}: {c.get('errorMessage') or c.get('description')}"
        for c in checks
        if c.get("status") == "FAILURE"
    ]
    if not failed and not any(c.get("status") == "SUCCESS" for c in checks):
        failed = [f"{scenario}: no check passed: {json.dumps(checks)[:600]}"]
    return failed


def test_every_scenario_the_suite_lists_is_classified() -> None:
    listed = listed_scenarios()
    known = set(APPLICABLE) | set(NOT_APPLICABLE)
    assert not set(APPLICABLE) & set(NOT_APPLICABLE)
    new = [name for name in listed if name not in known]
    gone = sorted(known - set(listed))
    assert not new, (
        f"the suite has new server scenarios {new}: run them against taskmux serve and add each "
        "to APPLICABLE, or to NOT_APPLICABLE with the reason (and to the README's table)"
    )
    assert not gone, f"the suite no longer has {gone}: remove them here and from the README"


def test_every_applicable_server_scenario_passes(project: Workspace, tmp_path: Path) -> None:
    npm_tool("conformance", SUITE, "conformance")  # installed first: no server waits on npm
    project.write(PROJECT)
    out = tmp_path / "results"
    with serving(project) as (_, info):
        # The suite sends no headers of its own, so the token goes in the URL.
        done = conformance("server", "--url", f"{info.mcp_url}?token={info.token}", "--suite",
                           "all", "--output-dir", str(out))  # fmt: skip
    found = results(out)
    assert found, done.stdout[-2000:] + done.stderr[-2000:]
    wrong = [line for name in listed_scenarios() for line in problems(name, found.get(name))]
    assert not wrong, "\n".join([*wrong, done.stderr[-1500:]])


def test_the_readme_table_repeats_the_scenarios_that_do_not_apply() -> None:
    readme = (REPO / "README.md").read_text()
    assert "\n### The MCP conformance suite\n" in readme
    section = readme.split("\n### The MCP conformance suite\n", 1)[1].split("\n#", 1)[0]
    rows = set(re.findall(r"^\| `[a-z0-9-]+` \|.*\|$", section, re.MULTILINE))
    expected = {f"| `{name}` | {n.needs} | {n.why} |" for name, n in NOT_APPLICABLE.items()}
    assert rows == expected, "\n".join(sorted(rows ^ expected))
