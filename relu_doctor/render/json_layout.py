"""The one JSON layout of every JSON output (report, several models, SARIF, trend, fix outcome).

Objects and arrays that hold objects or arrays are indented by two spaces, one member per line, as
``json.dumps(data, indent=2)`` writes them; an array of scalars (unit lists, rates, shapes) is written on one line,
``[3, 17, 42]``. The data is the same either way (``json.loads`` gives equal values); the layout matters because
a scan of a deep network has tens of thousands of unit indices: one line per index made a 2 MB document, and any
``indent`` sends CPython's :mod:`json` through its pure-Python encoder. Here every one-line array is encoded by the
C encoder in one call, and only the (small) skeleton of objects is walked in Python.

Strict like ``json.dumps(..., allow_nan=False)``: NaN and infinities raise :class:`ValueError`; ASCII-only output
(non-ASCII characters and control characters are escaped); keys must be strings; tuples are arrays.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from json.encoder import encode_basestring_ascii
from typing import Any

__all__ = ["json_document"]

_INDENT = "  "
_ONE_LINE = json.JSONEncoder(separators=(", ", ": "), allow_nan=False)
"""Encodes any flat array or scalar in C (no ``indent``, so :mod:`json` takes its C encoder); the fallback for
arrays of mixed or unusual scalar types."""
_SCALARS = (str, int, float, type(None))  # bool is an int


def _float_text(value: float) -> str:
    if not math.isfinite(value):
        raise ValueError(f"Out of range float values are not JSON compliant: {value!r}")
    return float.__repr__(value)


_TEXT: dict[type, Callable[[Any], str]] = {
    str: encode_basestring_ascii,
    int: int.__repr__,
    float: _float_text,
    bool: {True: "true", False: "false"}.__getitem__,
    type(None): lambda _: "null",
}
"""The text of a scalar of each exact type, as json.dumps writes it, without building an encoder per value."""


def json_document(data: Any) -> str:
    """``data`` as indented JSON text, arrays of scalars on one line, ending with a newline."""
    out: list[str] = []
    _write(data, "\n", out)
    out.append("\n")
    return "".join(out)


def _write(value: Any, newline: str, out: list[str]) -> None:
    """Appends the text of ``value`` to ``out``; its first line is already indented, and ``newline`` (a line
    break and the indentation of ``value`` itself) starts each further line."""
    text = _TEXT.get(type(value))
    if text is not None:
        out.append(text(value))
    elif isinstance(value, dict):
        _write_object(value, newline, out)
    elif isinstance(value, (list, tuple)):
        _write_array(value, newline, out)
    else:  # a subclass of a scalar type (an enum), or not JSON at all (TypeError)
        out.append(_ONE_LINE.encode(value))


def _write_object(members: dict[Any, Any], newline: str, out: list[str]) -> None:
    if not members:
        out.append("{}")
        return
    inner = newline + _INDENT
    separator = "{" + inner
    for key, value in members.items():
        if type(key) is not str:
            raise TypeError(f"JSON object keys must be strings, got {key!r}")
        text = _TEXT.get(type(value))
        if text is not None:  # most members: one append, no call of _write
            out.append(f"{separator}{encode_basestring_ascii(key)}: {text(value)}")
        else:
            out.append(f"{separator}{encode_basestring_ascii(key)}: ")
            _write(value, inner, out)
        separator = "," + inner
    out.append(newline + "}")


def _write_array(items: list[Any] | tuple[Any, ...], newline: str, out: list[str]) -> None:
    # map(type, ...) and map(text, ...) run in C: a 10,000-unit list costs a few C loops, not 10,000 Python calls
    if not items:
        out.append("[]")
        return
    kinds = set(map(type, items))
    if len(kinds) == 1 and (kind := next(iter(kinds))) in _TEXT:
        # a list of ints prints as its JSON text ([3, 17, 42]), the commonest array here: unit indices
        out.append(
            repr(items) if kind is int and type(items) is list else "[" + ", ".join(map(_TEXT[kind], items)) + "]"
        )
    elif all(issubclass(kind, _SCALARS) for kind in kinds):
        out.append(_ONE_LINE.encode(items))  # flat, mixed types (ints and None, ...), or empty
    else:
        inner = newline + _INDENT
        separator = "[" + inner
        for item in items:
            out.append(separator)
            _write(item, inner, out)
            separator = "," + inner
        out.append(newline + "]")
