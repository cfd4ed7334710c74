"""Reply budgets: every result sent to an agent or a bridge client fits in `REPLY_BUDGET` bytes.

Each line of output is cut at `terminal.LINE_CHARS` characters (with a marker); then a result
that is still too big loses its oldest log lines or events, or its last grep matches, and says
so in its `notice`, with how to ask for less.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

from .logs import cursor_without
from .models import BaseModel, EventsResult, GrepResult, LogsResult, ScreenResult
from .terminal import LINE_CHARS, cut_line

REPLY_BUDGET = 96 * 1024
_HEADROOM = 512
M = TypeVar("M", bound=BaseModel)


def _cut_strings(value: Any) -> Any:
    if isinstance(value, str):
        return cut_line(value) if len(value) > LINE_CHARS else value
    if isinstance(value, list):
        return [_cut_strings(v) for v in value]
    if isinstance(value, dict):
        return {k: _cut_strings(v) for k, v in value.items()}
    return value


def _has_long_string(value: Any) -> bool:
    if isinstance(value, str):
        return len(value) > LINE_CHARS
    if isinstance(value, list):
        return any(_has_long_string(v) for v in value)
    if isinstance(value, dict):
        return any(_has_long_string(v) for v in value.values())
    return False


def _size(model: BaseModel) -> int:
    return len(model.model_dump_json(exclude_none=True).encode())


def _item_size(item: Any) -> int:
    if isinstance(item, BaseModel):
        return len(item.model_dump_json(exclude_none=True).encode())
    return len(json.dumps(item, ensure_ascii=False).encode())


def _keep(sizes: list[int], room: int, *, newest: bool) -> int:
    """How many items fit in room bytes, taken from the end (newest) or the start."""
    total = 0
    count = 0
    for size in reversed(sizes) if newest else sizes:
        if total + size > room:
            break
        total += size
        count += 1
    return count


_CUTS: dict[type[BaseModel], tuple[str, bool, str]] = {
    LogsResult: (
        "lines",
        True,
        "older line(s)",
    ),
    GrepResult: ("matches", False, "later match(es)"),
    EventsResult: ("events", True, "older event(s)"),
    ScreenResult: ("lines", True, "top row(s) of the screen"),
}
_ADVICE = {
    LogsResult: "ask for fewer lines, a later `since`, or use grep; `cursor` still gives "
    "the lines before those returned",
    GrepResult: "narrow the pattern, use `since`, or less context",
    EventsResult: "ask for a smaller limit or a later `since`",
    ScreenResult: "ask for fewer `lines` (rows counted from the bottom)",
}


def fit(result: M, budget: int = REPLY_BUDGET) -> M:
    """The result with long lines cut, then shortened to budget bytes, saying what was cut."""
    data = result.model_dump(mode="python")
    # Rebuilt only when a line was cut: a status of 500 tasks is read as it is.
    fitted = type(result).model_validate(_cut_strings(data)) if _has_long_string(data) else result
    if type(fitted) not in _CUTS or _size(fitted) <= budget:
        return fitted
    field, newest, what = _CUTS[type(fitted)]
    items: list[Any] = getattr(fitted, field)
    sizes = [_item_size(item) + 1 for item in items]
    room = max(0, budget - (_size(fitted) - sum(sizes)) - _HEADROOM)
    keep = _keep(sizes, room, newest=newest)
    dropped = len(items) - keep
    update: dict[str, Any] = {
        field: items[len(items) - keep :] if newest else items[:keep],
        "truncated": True,
        "notice": f"{dropped} {what} left out to keep this reply under {budget // 1024} KiB; "
        + _ADVICE[type(fitted)],
    }
    if isinstance(fitted, LogsResult):
        update["omitted"] = fitted.omitted + dropped
        if fitted.cursor is not None:
            update["cursor"] = cursor_without(fitted.cursor, dropped)
    return fitted.model_copy(update=update)
