"""Renderers of a :class:`~relu_doctor.report.TrendReport`: a terminal table with a sparkline per site, JSON,
Markdown, CSV (one row per site and checkpoint) and GitHub annotations."""

from __future__ import annotations

import csv
import io
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from ..report import SiteTrend, TrendReport
from .common import percent, plural, summary_line
from .github import render_github, workflow_command
from .json_format import report_dict
from .json_layout import json_document
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
    revived = f"{len(site.revived)} revived" if site.revived else ""
    return "; ".join(part for part in (shown, revived) if part)


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
    return json_document(trend_dict(trend))


def _grew(site: SiteTrend) -> bool:
    shares = [share for share in site.dead_fraction if share is not None]
    return len(shares) > 1 and shares[-1] > shares[0]


def render_trend_markdown(trend: TrendReport) -> str:
    """A pull-request comment: the last checkpoint's verdict, one table row per site, its violations."""
    labels = trend.labels()
    lines = [
        f"**relu-doctor trend** over {plural(len(labels), 'checkpoint')} ({_md(labels[0])} … {_md(labels[-1])}): "
        f"last checkpoint: {summary_line(trend.last)}",
        "",
        "| site | units | first | last | trend | died at (units dead at the end) |",
        "|---|---:|---:|---:|---|---|",
    ]
    lines += [
        f"| {_md(s.name)} | {s.units:,} | {_share(s.dead_fraction[0])} | {_share(s.dead_fraction[-1])} | "
        f"{sparkline(s.dead_fraction)} | {_md(deaths_text(s, labels))} |"
        for s in trend.sites
    ]
    lines += [""] + [f"- ✗ {_md(v.text)}" for v in trend.gate.violations] if trend.gate.violations else []
    return "\n".join(lines) + "\n"


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


TREND_CSV_COLUMNS = ("site", "units", "checkpoint_index", "checkpoint", "dead", "dead_fraction")
"""The trend CSV's header: one row per site and checkpoint (long format, for pandas and spreadsheets)."""


def render_trend_csv(trend: TrendReport) -> str:
    """One row per site and checkpoint; a checkpoint where the site did not run has empty counts."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(TREND_CSV_COLUMNS)
    for site in trend.sites:
        for index, (dead, share) in enumerate(zip(site.dead, site.dead_fraction)):
            writer.writerow(
                (
                    site.name,
                    site.units,
                    index,
                    trend.checkpoints[index],
                    "" if dead is None else dead,
                    "" if share is None else f"{share:.6g}",
                )
            )
    return buffer.getvalue()


def render_trend_github(trend: TrendReport) -> str:
    """The last checkpoint's annotations (as ``scan --format github``), a ``::warning`` per site whose dead share
    grew over the run, and a closing ``::notice`` with the last checkpoint's verdict."""
    labels = trend.labels()
    last = render_github(trend.last).rstrip("\n").splitlines()
    closing = last.pop() if last and last[-1].startswith("::notice") else None
    lines = last + [
        workflow_command(
            "warning",
            f"{site.name}: dead share {_share(site.dead_fraction[0])} at {labels[0]} → "
            f"{_share(site.dead_fraction[-1])} at {labels[-1]} ({deaths_text(site, labels)})",
            title=f"relu-doctor trend: {site.name}",
            file=trend.checkpoints[-1],
        )
        for site in trend.sites
        if _grew(site)
    ]
    lines.append(
        closing or workflow_command("notice", f"last checkpoint: {summary_line(trend.last)}", title="relu-doctor")
    )
    return "\n".join(lines) + "\n"
