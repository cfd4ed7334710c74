"""Property tests: any taskmux.toml content or request argument gives a result or a clear error."""

from __future__ import annotations

import string
from pathlib import Path

import tomlkit
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from taskmux_mcp.config import parse_config
from taskmux_mcp.errors import ConfigError, InvalidArgument, TaskmuxError
from taskmux_mcp.logs import LogStore, parse_since

KEYS = [
    "command", "cwd", "env", "port", "auto_start", "depends_on", "health_check", "health_url",
    "health_interval", "health_timeout", "health_retries", "health_start_period",
    "stop_grace_period", "restart_policy", "max_restarts", "restart_backoff", "hooks", "bogus",
]  # fmt: skip
NAMES = st.one_of(
    st.sampled_from(
        ["api", "db", "a.b", "x:y", "with space", "../etc", "../secret", "é", "", "-x", "a" * 65]
    ),
    st.text(alphabet=string.ascii_letters + string.digits + "_-.:/ é", min_size=0, max_size=12),
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)


def _toml_document(tasks: dict[str, dict[str, object]], name: object) -> str | None:
    doc = tomlkit.document()
    try:
        if name is not None:
            doc["name"] = name
        table = tomlkit.table(is_super_table=True)
        for task, fields in tasks.items():
            table[task] = {k: v for k, v in fields.items() if v is not None}
        doc["tasks"] = table
        return tomlkit.dumps(doc)
    except (TypeError, ValueError):
        return None


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    tasks=st.dictionaries(
        NAMES, st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=6), max_size=4
    ),
    name=st.one_of(st.none(), NAMES, SCALARS),
)
def test_any_structured_config_loads_or_says_why(
    tasks: dict[str, dict[str, object]], name: object
) -> None:
    text = _toml_document(tasks, name)
    if text is None:
        return
    try:
        config = parse_config(text, Path("/tmp/fuzz/taskmux.toml"))
    except ConfigError as exc:
        assert exc.problems and all(str(p) for p in exc.problems)
        return
    assert set(config.tasks) == set(tasks)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_any_text_loads_or_says_why(text: str) -> None:
    try:
        parse_config(text, Path("/tmp/fuzz/taskmux.toml"))
    except ConfigError as exc:
        assert str(exc)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40))
def test_any_since_parses_or_says_why(value: str) -> None:
    from datetime import UTC, datetime

    try:
        parse_since(value, datetime.now(UTC))
    except InvalidArgument as exc:
        assert "since" in str(exc).lower() or str(exc)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    pattern=st.text(max_size=30),
    task=NAMES,
    lines=st.integers(min_value=-(2**40), max_value=2**40),
    context=st.integers(min_value=-(2**40), max_value=2**40),
    max_matches=st.integers(min_value=-(2**40), max_value=2**40),
)
def test_log_requests_never_crash_or_escape_the_log_folder(
    pattern: str, task: str, lines: int, context: int, max_matches: int
) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        (root / "logs").mkdir()
        (root / "secret.log").write_text("2026-01-01T00:00:00.000000Z\tTOP SECRET\n")
        store = LogStore(root / "logs")
        for call in (
            lambda: store.tail([task], lines=lines),
            lambda: store.grep(pattern, [task], context=context, max_matches=max_matches),
            lambda: store.grep("SECRET", [task]),
        ):
            try:
                result = call()
            except TaskmuxError as exc:
                assert str(exc)
                continue
            assert "TOP SECRET" not in result.model_dump_json()
