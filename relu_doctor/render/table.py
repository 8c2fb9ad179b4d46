"""The terminal report: a rich table of sites in call order, a summary, causes and fixes per site, blind spots."""

from __future__ import annotations

import io

from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from ..report import Finding, Report
from .certificate import certification_lines
from .common import percent, summary_line
from .markdown import confidence_line, predicted_text, site_causes, units_text

_STATUS_STYLE = {"FAIL": "bold red", "dead": "red", "nan": "magenta", "warn": "yellow", "ok": "green"}
_SEVERITY_STYLE = {"error": "bold red", "warning": "yellow", "note": "cyan"}


def sites_table(report: Report) -> Table:
    """One row per site: units, dead, dying, dormant, zeros (sparsity), cause codes and status.

    Firing rates and the dead units' max pre-activation are in the JSON; the causes' numbers are listed below.
    """
    table = Table(title="relu sites (call order)", title_justify="left", expand=False)
    table.add_column("#", justify="right", style="dim")
    table.add_column("site", overflow="fold", min_width=12)
    table.add_column("op")
    table.add_column("units", justify="right")
    table.add_column("dead", justify="right")
    table.add_column("dying", justify="right")
    table.add_column("dormant", justify="right")
    table.add_column("zeros", justify="right")
    table.add_column("causes", overflow="fold", min_width=8)
    table.add_column("status", no_wrap=True)
    for site in report.sites:
        status = site.status
        table.add_row(
            str(site.index),
            site.name,
            site.op,
            str(site.units),
            f"{site.dead} ({percent(site.dead_fraction)})",
            str(site.dying),
            str(len(site.dormant_units)),
            percent(site.sparsity),
            site_causes(report, site),
            Text(status, style=_STATUS_STYLE[status]),
        )
    return table


def finding_renderable(finding: Finding) -> RenderableType:
    """One finding: code, where, cause and fix, then the simulated effects of the fix when there are any."""
    line = Text()
    line.append(f"[{finding.code}] ", style=_SEVERITY_STYLE.get(finding.severity, ""))
    line.append(finding.site or "model", style="bold")
    if finding.units:
        line.append(f" (units {units_text(finding.units)})", style="dim")
    line.append(f": {finding.cause}\n    fix: {finding.suggestion}")
    simulated = predicted_text(finding)
    if simulated:
        line.append(f"\n    simulated: {simulated}", style="dim")
    return line


def report_renderable(report: Report) -> RenderableType:
    """The whole terminal report as one rich renderable."""
    parts: list[RenderableType] = [
        Text(f"relu-doctor {report.tool_version}: {report.model.path or 'model'}", style="bold")
    ]
    parts.append(sites_table(report) if report.sites else Text("no relu sites found", style="yellow"))
    parts.append(Text(summary_line(report), style="bold green" if report.gate.passed else "bold red"))
    parts.append(Text(confidence_line(report), style="dim"))
    parts.extend(Text(f"✗ {v.text}", style="red") for v in report.gate.violations)
    parts.extend(Text(line, style="cyan") for line in certification_lines(report))
    if report.findings:
        parts.append(Text("causes and fixes", style="bold"))
        parts.extend(finding_renderable(f) for f in report.findings)
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
        file=buffer,
        width=width,
        force_terminal=color,
        no_color=not color,
        color_system="standard" if color else None,
        highlight=False,
        soft_wrap=False,
    )
    console.print(report_renderable(report))
    return buffer.getvalue()
