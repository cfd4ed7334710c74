"""Small pieces of English shared by the messages of every face."""

from __future__ import annotations


def counted(count: int, noun: str) -> str:
    """The count with its noun, singular or plural: "1 task", "2 tasks", "0 problems"."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"
