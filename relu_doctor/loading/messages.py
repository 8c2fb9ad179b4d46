"""Helpers that keep every loader error message to one readable line."""

from __future__ import annotations

from collections.abc import Iterable

_MAX_DETAIL = 200


def one_line(text: object, limit: int = _MAX_DETAIL) -> str:
    """Collapse whitespace and cut to `limit` characters: library messages can span many lines."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def describe_exception(error: BaseException) -> str:
    """`TypeName: first part of the message`, for quoting a library failure inside our message."""
    detail = one_line(error)
    return f"{type(error).__name__}: {detail}" if detail else type(error).__name__


def first_few(names: Iterable[str], count: int = 5) -> str:
    """`a, b, c, ... (+N more)`: enough names to act on without flooding the line."""
    items = sorted(names)
    shown = ", ".join(repr(name) for name in items[:count])
    return shown + (f", ... (+{len(items) - count} more)" if len(items) > count else "")
