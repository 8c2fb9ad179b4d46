"""`relu-doctor merge`: one report from the ``--save-stats`` files of separate scans (probe shards)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..render import REPORT_FORMATS
from . import options as opt
from .app import (
    ReluCommand,
    app,
    emit,
    emit_reports,
    error_boundary,
    exit_code,
    parse_reports,
    plan_outputs,
    style_from_options,
)


@app.command(cls=ReluCommand)
def merge(
    files: Annotated[
        list[Path],
        typer.Argument(
            metavar="STATS", help="Stats files written by `scan --save-stats` (one per shard).", show_default=False
        ),
    ],
    fmt: opt.ReportFormat = REPORT_FORMATS.default.name,
    output: opt.Output = None,
    reports: opt.Reports = None,
    dying_rate: Annotated[
        float | None, typer.Option(help="Override the saved dying rate.", rich_help_panel=opt.GATE)
    ] = None,
    tau: Annotated[
        float | None, typer.Option(help="Override the saved ReDo dormancy threshold.", rich_help_panel=opt.GATE)
    ] = None,
    max_dead_fraction: Annotated[
        float | None,
        typer.Option(
            help="Exit 1 when the model's dead fraction exceeds this (default: as saved).", rich_help_panel=opt.GATE
        ),
    ] = None,
    max_layer_dead_fraction: Annotated[
        float | None,
        typer.Option(
            help="Exit 1 when any site's dead fraction exceeds this (default: as saved).", rich_help_panel=opt.GATE
        ),
    ] = None,
    exit_zero: opt.ExitZero = False,
    force: opt.Force = False,
    quiet: opt.Quiet = False,
    color: opt.Color = opt.ColorMode.auto,
    no_color: opt.NoColor = False,
    debug: opt.Debug = False,
) -> None:
    """Merge the counters of several scans of one model into one report, equal to a scan of their union."""
    style = style_from_options(quiet, False, no_color, output, color)
    with error_boundary(debug):
        from ..workflow.stats_io import merge_stats

        overrides = {
            "dying_rate": dying_rate,
            "tau": tau,
            "max_dead_fraction": max_dead_fraction,
            "max_layer_dead_fraction": max_layer_dead_fraction,
        }
        targets = plan_outputs(files, force, parse_reports(reports, REPORT_FORMATS), output=output)
        report = merge_stats(files, _checked(overrides))
        emit(REPORT_FORMATS, report, fmt, targets["output"], style)
        emit_reports(REPORT_FORMATS, report, targets["reports"])
    raise typer.Exit(exit_code(report.gate, exit_zero=exit_zero))


def _checked(overrides: dict[str, float | None]) -> dict[str, float]:
    """The gate options given on the command line (None: keep the saved value), validated."""
    from ..errors import UsageError

    given = {name: value for name, value in overrides.items() if value is not None}
    for name, value in given.items():
        option = "--" + name.replace("_", "-")
        if name == "tau" and not 0 <= value < float("inf"):  # also refuses NaN
            raise UsageError(f"{option} must be a finite number >= 0, got {value}")
        if name != "tau" and not 0 <= value <= 1:
            raise UsageError(f"{option} must be between 0 and 1, got {value}")
    return given
