"""The terminal report: a rich table of sites in call order, a summary, causes and fixes per site, blind spots."""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass

from rich.console import Console, Group, JustifyMethod, RenderableType
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from ..report import Finding, Report, Site
from .certificate import certification_lines
from .common import percent, summary_line
from .layers import layer_rows, row_cells, should_group
from .leaky import leaky_swap_line
from .markdown import confidence_line, predicted_text, simulation_note, site_causes, units_text

_STATUS_STYLE = {"FAIL": "bold red", "dead": "red", "nan": "magenta", "warn": "yellow", "ok": "green"}
_SEVERITY_STYLE = {"error": "bold red", "warning": "yellow", "note": "cyan"}


@dataclass(frozen=True)
class _Column:
    """One column of the sites table: its header, how to justify it, and its cell for a site."""

    header: str
    justify: JustifyMethod
    cell: Callable[[Report, Site], str | Text]
    no_wrap: bool = True


_COLUMNS = {
    "#": _Column("#", "right", lambda r, s: str(s.index)),
    "site": _Column("site", "left", lambda r, s: Text(s.name), no_wrap=False),  # Text: a name is never markup
    "op": _Column("op", "left", lambda r, s: s.op),
    "units": _Column("units", "right", lambda r, s: f"{s.units:,}"),
    "dead": _Column("dead", "right", lambda r, s: f"{s.dead:,} ({percent(s.dead_fraction)})"),
    "dying": _Column("dying", "right", lambda r, s: f"{s.dying:,}"),
    "dormant": _Column("dormant", "right", lambda r, s: f"{len(s.dormant_units):,}"),
    "zeros": _Column("zeros", "right", lambda r, s: percent(s.sparsity)),
    "causes": _Column("causes", "left", lambda r, s: site_causes(r, s), no_wrap=False),
    "status": _Column("status", "left", lambda r, s: Text(s.status, style=_STATUS_STYLE[s.status])),
}
DROP_ORDER = ("zeros", "dormant", "op", "#", "causes", "dying", "units")
"""Columns given up, first to last, until the table fits the width (torchinfo-style column choice). site, dead and
status (the verdict) are never dropped; the JSON and the findings below the table carry everything dropped."""


def sites_table(report: Report, width: int | None = None, by_layer: bool | None = None) -> Table:
    """One row per site: units, dead, dying, dormant, zeros (sparsity), cause codes and status.

    With a ``width``, low-value columns are dropped (:data:`DROP_ORDER`) until the table fits it. Firing rates
    and the dead units' max pre-activation are in the JSON; the causes' numbers are listed below.
    ``by_layer``: one row per numbered layer, clean runs folded (:mod:`relu_doctor.render.layers`); None groups
    by its automatic rule (:func:`~relu_doctor.render.layers.should_group`).
    """
    grouped = should_group(report) if by_layer is None else by_layer
    shown = list(_COLUMNS)
    table = _table(report, shown, grouped)
    for name in DROP_ORDER:
        if width is None or _natural_width(table) <= width:
            break
        shown.remove(name)
        table = _table(report, shown, grouped)
    return table


def _table(report: Report, shown: list[str], by_layer: bool) -> Table:
    title = "relu sites by layer (call order; every site in --format json)" if by_layer else "relu sites (call order)"
    table = Table(title=title, title_justify="left", expand=False)
    for name in shown:
        column = _COLUMNS[name]
        table.add_column(column.header, justify=column.justify, no_wrap=column.no_wrap, overflow="fold")
    if by_layer:
        for row in layer_rows(report):
            cells = row_cells(report, row)
            status = Text(cells["status"], style=_STATUS_STYLE[cells["status"]])
            table.add_row(*(status if name == "status" else cells[name] for name in shown))
        return table
    for site in report.sites:
        table.add_row(*(_COLUMNS[name].cell(report, site) for name in shown))
    return table


def _natural_width(table: Table) -> int:
    console = Console(width=100_000)
    return Measurement.get(console, console.options, table).maximum


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
        line.append(f"\n    simulated {simulated}", style="dim")
    return line


def report_renderable(report: Report, width: int | None = None, by_layer: bool | None = None) -> RenderableType:
    """The whole terminal report as one rich renderable (``by_layer``: see :func:`sites_table`)."""
    parts: list[RenderableType] = [
        Text(f"relu-doctor {report.tool_version}: {report.model.path or 'model'}", style="bold")
    ]
    table = sites_table(report, width, by_layer) if report.sites else Text("no relu sites found", style="yellow")
    parts.append(table)
    parts.append(Text(summary_line(report), style="bold green" if report.gate.passed else "bold red"))
    parts.append(Text(confidence_line(report), style="dim"))
    parts.extend(Text(f"✗ {v.text}", style="red") for v in report.gate.violations)
    swap = leaky_swap_line(report)
    if swap is not None:
        parts.append(Text(swap, style="dim"))
    parts.extend(Text(line, style="cyan") for line in certification_lines(report))
    if report.findings:
        parts.append(Text("causes and fixes", style="bold"))
        parts.extend(finding_renderable(f) for f in report.findings)
        note = simulation_note(report)
        if note:
            parts.append(Text(note, style="dim"))
    strict = {v.text for v in report.gate.violations}
    for warning in report.warnings:  # under --strict a warning is already listed as a violation: once is enough
        if f"strict: {warning}" not in strict:
            parts.append(Text(f"! {warning}", style="yellow"))
    if report.other_activations:
        seen = ", ".join(f"{op} ×{calls:,}" for op, calls in report.other_activations)
        parts.append(Text(f"other activations seen (not relu sites): {seen}", style="dim"))
    return Group(*parts)


def render_table(report: Report, *, width: int | None = 100, color: bool = False, by_layer: bool | None = None) -> str:
    """The terminal report as text, with or without ANSI colour.

    ``width``: the table fits it (columns dropped as needed); None for a pipe or a file: nothing is wrapped.
    With None no line is wrapped (``grep 'gate passed'`` finds the summary); no line carries trailing spaces.
    ``by_layer``: group sites by layer (True), never (False), or by the automatic rule (None, :func:`sites_table`).
    """
    return print_to_text(report_renderable(report, width, by_layer), width=width, color=color)


def print_to_text(renderable: RenderableType, *, width: int | None, color: bool) -> str:
    """Print ``renderable`` to a string, trailing spaces removed: at ``width`` for a terminal (tables fit it, text
    wraps at word boundaries); with None for a pipe or a file, unbounded: one logical line stays one line."""
    buffer = io.StringIO()
    console = Console(
        file=buffer,
        width=width or 100_000,
        force_terminal=color,
        no_color=not color,
        color_system="standard" if color else None,
        highlight=False,
        soft_wrap=width is None,
    )
    console.print(renderable)
    return "".join(line.rstrip(" ") + "\n" for line in buffer.getvalue().splitlines())
