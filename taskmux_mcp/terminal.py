"""Plain text of terminal output: escapes removed, carriage-return redraws resolved, in linear time.

A line is replayed as a terminal would show it (``\\r``, backspace, cursor moves, erases) under
a work budget proportional to its length; a line built to make that replay slow (a long line
erased backwards thousands of times) is instead cleaned by a plain linear pass that keeps
what follows its last carriage return. Lines returned to agents are cut at `LINE_CHARS`.
"""

from __future__ import annotations

import re

LINE_CHARS = 4000
WORK_PER_CHAR = 8
WORK_FLOOR = 4096

ESC_BYTES = re.compile(
    rb"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b\n]*(?:\x07|\x1b\\)?"
    rb"|[PX^_][^\x1b\n]*(?:\x1b\\)?|[ -/]*[0-~])?"
)
_ESC_TEXT = re.compile(
    r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b\n]*(?:\x07|\x1b\\)?"
    r"|[PX^_][^\x1b\n]*(?:\x1b\\)?|[ -/]*[0-~])?"
)
_TOKENS = re.compile(
    r"\x1b\[([0-?]*)[ -/]*([@-~])|\x1b(?:\][^\x07\x1b\n]*(?:\x07|\x1b\\)?"
    r"|[PX^_][^\x1b\n]*(?:\x1b\\)?|[ -/]*[0-~])?|\r|\x08|[^\x1b\r\x08]+"
)


class _OverBudget(Exception):
    pass


def clean_text(raw: bytes) -> str:
    """Plain text of one raw output line: escapes removed, \\r and \\b redraws resolved."""
    if b"\r" in raw or b"\x08" in raw:
        text = raw.decode("utf-8", "replace")
        try:
            return _redraw(text, WORK_FLOOR + WORK_PER_CHAR * len(text))
        except _OverBudget:
            return _plain(text)
    if b"\x1b" in raw:
        raw = ESC_BYTES.sub(b"", raw)
    return raw.decode("utf-8", "replace")


def _plain(text: str) -> str:
    """A linear approximation of a redrawn line: no escapes, what follows the last \\r."""
    parts = [part for part in _ESC_TEXT.sub("", text).split("\r") if part]
    last = parts[-1] if parts else ""
    return last.replace("\x08", "")


def _redraw(text: str, budget: int) -> str:
    """What a terminal shows for one line written with \\r, \\b and cursor/erase sequences."""
    cells: list[str] = []
    col = 0
    for m in _TOKENS.finditer(text):
        token = m.group()
        first = token[0]
        if first == "\r":
            col = 0
        elif first == "\x08":
            col = max(0, col - 1)
        elif first == "\x1b":
            final = m.group(2)
            param = m.group(1) or ""
            n = min(int(param[:9]), len(text)) if param.isdigit() else 0  # clamp to the line
            if final == "K":
                budget -= len(cells) if n else len(cells) - col
                if n == 0:
                    del cells[col:]
                elif n == 1:
                    cells[: col + 1] = " " * min(col + 1, len(cells))
                else:
                    cells.clear()
            elif final in ("G", "`"):
                col = max(0, n - 1)
            elif final == "C":
                col = min(col + max(1, n), len(text))
            elif final == "D":
                col = max(0, col - max(1, n))
        else:
            if col > len(cells):
                budget -= col - len(cells)
                cells.extend(" " * (col - len(cells)))
            budget -= len(token)
            cells[col : col + len(token)] = token
            col += len(token)
        if budget < 0:
            raise _OverBudget
    return "".join(cells)


def cut_line(text: str, limit: int = LINE_CHARS, more_bytes: int = 0) -> str:
    """The line, cut past limit characters with a marker saying how much was left out."""
    if len(text) <= limit and not more_bytes:
        return text
    left = len(text) - limit if len(text) > limit else 0
    parts = []
    if left:
        parts.append(f"{left} more characters")
    if more_bytes:
        parts.append(f"{more_bytes} more bytes of output")
    return f"{text[:limit]} … [line cut: {', '.join(parts)}]"
