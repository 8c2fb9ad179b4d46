"""The terminal report: a rich table of sites in call order, a summary, suggested fixes and blind spots."""

from __future__ import annotations

import io

from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from ..report import Report
from .common import dead_range, percent, rate, site_status, summary_line

_STATUS_STYLE = {"FAIL": "bold red", "dead": "red", "nan": "magenta", "warn": "yellow", "ok": "green"}


def sites_table(report: Report) -> Table:
    """One row per site: name, op, units, dead, dying, firing rate, dead units' max pre-activation, status."""
    table = Table(title="relu sites (call order)", title_justify="left", expand=False)
    table.add_column("#", justify="right", style="dim")
    table.add_column("site", overflow="fold", min_width=12)
    table.add_column("op")
    table.add_column("units", justify="right")
    table.add_column("dead", justify="right")
    table.add_column("dying", justify="right")
    table.add_column("firing min / median", justify="right")
    table.add_column("dead max pre-act", justify="right", overflow="fold")
    table.add_column("status")
    for site in report.sites:
        status = site_status(site, report)
        table.add_row(
            str(site.index), site.name, site.op, str(site.units),
            f"{site.dead} ({percent(site.dead_fraction)})", str(site.dying),
            f"{rate(site.firing_rate.min)} / {rate(site.firing_rate.median)}", dead_range(site),
            Text(status, style=_STATUS_STYLE[status]),
        )  # fmt: skip
    return table


def report_renderable(report: Report) -> RenderableType:
    """The whole terminal report as one rich renderable."""
    parts: list[RenderableType] = [Text(f"relu-doctor {report.tool_version}: {report.model.path or 'model'}", style="bold")]
    parts.append(sites_table(report) if report.sites else Text("no relu sites found", style="yellow"))
    parts.append(Text(summary_line(report), style="bold green" if report.gate.passed else "bold red"))
    parts.append(
        Text(
            f"a unit that never fired on {report.probe.samples} samples fires on fewer than "
            f"{report.probe.dead_rate_bound_95:.2%} of inputs (95% upper bound)",
            style="dim",
        )
    )
    parts.extend(Text(f"✗ {line}", style="red") for line in report.gate.violations)
    if report.findings:
        parts.append(Text("suggested fixes", style="bold"))
        for f in report.findings:
            parts.append(Text(f"[{f.code}] {f.site or 'model'}: {f.cause}; {f.suggestion}"))
    for warning in report.warnings:
        parts.append(Text(f"! {warning}", style="yellow"))
    if report.other_activations:
        seen = ", ".join(f"{op} ×{calls}" for op, calls in report.other_activations)
        parts.append(Text(f"other activations seen (not relu sites): {seen}", style="dim"))
    return Group(*parts)


def render_table(report: Report, *, width: int = 100, color: bool = False) -> str:
    """The terminal report as text, at a fixed width, with or without ANSI colour."""
    buffer = io.StringIO()
    console = Console(
        file=buffer, width=width, force_terminal=color, no_color=not color, color_system="standard" if color else None,
        highlight=False, soft_wrap=False,
    )  # fmt: skip
    console.print(report_renderable(report))
    return buffer.getvalue()
