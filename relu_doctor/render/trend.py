"""Renderers of a :class:`~relu_doctor.trend.TrendReport`: a terminal table with a sparkline per site, and JSON."""

from __future__ import annotations

import json
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from ..report import SiteTrend, TrendReport
from .common import percent, plural, summary_line
from .json_format import report_dict
from .table import print_to_text

BLOCKS = "▁▂▃▄▅▆▇█"
"""Sparkline levels, lowest first; a missing value is a space."""


def sparkline(values: tuple[float | None, ...]) -> str:
    """One character per value on an absolute 0..1 scale: 0 is the lowest block, any death at least the second."""
    chars = []
    for value in values:
        if value is None:
            chars.append(" ")
        elif value <= 0:
            chars.append(BLOCKS[0])
        else:
            chars.append(BLOCKS[max(1, min(len(BLOCKS) - 1, round(value * (len(BLOCKS) - 1))))])
    return "".join(chars)


def deaths_text(site: SiteTrend, labels: tuple[str, ...], limit: int = 4) -> str:
    """'3 at epoch_2, 5 at epoch_7' for the units dead at the end, grouped by when they died."""
    groups = [f"{len(units)} at {labels[index]}" for index, units in site.deaths_per_checkpoint().items()]
    shown = ", ".join(groups[:limit]) + (f", … ({len(groups) - limit} more)" if len(groups) > limit else "")
    return shown + (f"; {len(site.revived)} revived" if site.revived else "")


def _share(value: float | None) -> str:
    return "-" if value is None else percent(value)


def trend_table(trend: TrendReport) -> Table:
    """One row per site: units, first and last dead share, sparkline, when the dead units died."""
    labels = trend.labels()
    table = Table(
        title=f"dead share per site over {plural(len(labels), 'checkpoint')} ({labels[0]} … {labels[-1]})",
        title_justify="left",
    )
    for name, justify in (
        ("site", "left"),
        ("units", "right"),
        ("first", "right"),
        ("last", "right"),
        ("trend", "left"),
        ("died at (units dead at the end)", "left"),
    ):
        table.add_column(name, justify=justify, overflow="fold")  # type: ignore[arg-type]
    for site in trend.sites:
        table.add_row(
            Text(site.name),  # Text: a name from a file is never rich markup
            str(site.units),
            _share(site.dead_fraction[0]),
            _share(site.dead_fraction[-1]),
            sparkline(site.dead_fraction),
            deaths_text(site, labels),
        )
    return table


def render_trend_table(trend: TrendReport, *, width: int | None = 100, color: bool = False) -> str:
    """The trend as terminal text, with or without ANSI colour (``width`` None: a pipe or file, no wrapping).

    Names are shown as they are: :data:`~relu_doctor.render.TREND_FORMATS` escapes them before rendering."""
    last = trend.last
    parts: list[RenderableType] = [
        trend_table(trend),
        Text(f"last checkpoint: {summary_line(last)}", style="bold green" if last.gate.passed else "bold red"),
    ]
    parts += [Text(f"✗ {v.text}", style="red") for v in last.gate.violations]
    strict = {v.text for v in last.gate.violations}
    parts += [Text(f"! {warning}", style="yellow") for warning in last.warnings if f"strict: {warning}" not in strict]
    return print_to_text(Group(*parts), width=width, color=color)


def trend_dict(trend: TrendReport) -> dict[str, Any]:
    """The trend as JSON-ready data; ``last_report`` is the last checkpoint's full report (the scan schema)."""
    checkpoints = [
        {
            "index": i,
            "path": path,
            "sha256": r.model.sha256,
            "units": r.summary.units,
            "dead": r.summary.dead,
            "dead_fraction": r.summary.dead_fraction,
            "passed": r.gate.passed,
        }
        for i, (path, r) in enumerate(zip(trend.checkpoints, trend.reports))
    ]
    sites = [
        {
            "name": s.name,
            "units": s.units,
            "dead": list(s.dead),
            "dead_fraction": list(s.dead_fraction),
            "died_at": [{"unit": u, "checkpoint": i, "path": trend.checkpoints[i]} for u, i in s.died_at],
            "revived": list(s.revived),
        }
        for s in trend.sites
    ]
    return {
        "schema_version": 1,
        "tool_version": trend.last.tool_version,
        "checkpoints": checkpoints,
        "sites": sites,
        "passed": trend.gate.passed,
        "exit_code": trend.exit_code,
        "last_report": report_dict(trend.last),
    }


def render_trend_json(trend: TrendReport) -> str:
    """The trend as indented JSON."""
    return json.dumps(trend_dict(trend), indent=2, allow_nan=False) + "\n"
