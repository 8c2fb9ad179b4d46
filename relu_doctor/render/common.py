"""Small formatting helpers shared by the text renderers."""

from __future__ import annotations

import dataclasses
import enum
import math
from typing import Any

from ..report import Report, Site


def percent(value: float) -> str:
    """0.375 -> '37.5%'; NaN -> '-'."""
    return "-" if math.isnan(value) else f"{value:.1%}"


def dead_range(site: Site) -> str:
    """'-48.6 … -3.1' for the max pre-activation of the dead units, '' without dead units."""
    if site.dead_max_preactivation is None:
        return ""
    low, high = site.dead_max_preactivation
    return f"{low:.3g}" if low == high else f"{low:.3g} … {high:.3g}"


def rate(value: float) -> str:
    """A firing rate as a short percentage."""
    if math.isnan(value):
        return "-"
    return f"{value:.1%}" if value >= 0.001 or value == 0 else f"{value:.2g}"


def plural(count: int, noun: str) -> str:
    """``1 site``, ``2 sites``, ``1,024 units``: thousands separated, as every count in the text formats."""
    return f"{count:,} {noun}{'' if count == 1 else 's'}"


def summary_line(report: Report) -> str:
    """The one-line verdict also printed on stderr."""
    s = report.summary
    verdict = "passed" if report.gate.passed else "FAILED"
    return (
        f"{s.dead:,} of {plural(s.units, 'unit')} dead ({percent(s.dead_fraction)}) across {plural(s.sites, 'site')}, "
        f"{s.dying:,} dying, {s.nan_units:,} NaN/Inf; {plural(report.probe.samples, f'{report.probe.source} probe sample')}; "
        f"gate {verdict}"
    )


def verdict_lines(report: Report, prefix: str = "") -> str:
    """The one-line verdict, then ``✗ <violation>`` for each exceeded threshold: what stderr says whenever the
    table (which shows both) is not what the user sees (another format, or the report in a file)."""
    lines = [prefix + summary_line(report)]
    lines += [f"✗ {printable(violation.text)}" for violation in report.gate.violations]
    return "\n".join(lines)


_CONTROL = {code: f"\\x{code:02x}" for code in (*range(0x20), *range(0x7F, 0xA0))} | {
    0x0A: "\\n",
    0x0D: "\\r",
    0x09: "\\t",
    0x2028: "\\u2028",
    0x2029: "\\u2029",
    0x85: "\\x85",
}
WORKFLOW_COMMAND_GUARD = "\u200b"
"""Put in front of a data line that would start with ``::`` (GitHub Actions reads those as workflow commands)."""


def printable(text: str) -> str:
    """`text` with control characters (newlines, escapes, NUL, C1, line separators) written as escapes."""
    return text.translate(_CONTROL)


def printable_report(value: Any) -> Any:
    """A copy of a report (any frozen record) with :func:`printable` applied to every string in it (enum members,
    which are choices of ours, are kept)."""
    if isinstance(value, enum.Enum):
        return value
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, tuple):
        return tuple(printable_report(item) for item in value)
    if isinstance(value, list):
        return [printable_report(item) for item in value]
    if isinstance(value, dict):
        return {printable_report(key): printable_report(item) for key, item in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        changed = {
            field.name: printable_report(getattr(value, field.name))
            for field in dataclasses.fields(value)
            if field.init and _holds_text(getattr(value, field.name))
        }
        return dataclasses.replace(value, **changed) if changed else value
    return value


def _holds_text(value: Any) -> bool:
    return isinstance(value, (str, tuple, list, dict)) or (
        dataclasses.is_dataclass(value) and not isinstance(value, type)
    )


def defuse_workflow_commands(text: str) -> str:
    """No line of `text` starts with ``::`` (even after spaces): such a line gets an invisible guard in front."""
    lines = text.split("\n")
    return "\n".join(WORKFLOW_COMMAND_GUARD + line if line.lstrip().startswith("::") else line for line in lines)
