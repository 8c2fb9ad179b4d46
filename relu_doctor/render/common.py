"""Small formatting helpers shared by the text renderers."""

from __future__ import annotations

import math

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


def summary_line(report: Report) -> str:
    """The one-line verdict also printed on stderr."""
    s = report.summary
    verdict = "passed" if report.gate.passed else "FAILED"
    return (
        f"{s.dead} of {s.units} units dead ({percent(s.dead_fraction)}) across {s.sites} sites, "
        f"{s.dying} dying, {s.nan_units} NaN/Inf; {report.probe.samples} {report.probe.source} probe samples; gate {verdict}"
    )
