"""CSV: one row per site, header first, for spreadsheets and ``csvkit``/``pandas`` pipelines."""

from __future__ import annotations

import csv
import io
import math

from ..report import Report, Site

COLUMNS = (
    "index",
    "site",
    "module_path",
    "call_index",
    "op",
    "kind",
    "units",
    "dead",
    "dead_fraction",
    "dying",
    "dormant",
    "nan_units",
    "firing_rate_min",
    "firing_rate_median",
    "firing_rate_mean",
    "sparsity",
    "dead_max_preactivation_low",
    "dead_max_preactivation_high",
    "limit",
    "ignored",
    "status",
)
"""The header row, in column order."""


def _number(value: float | None) -> str:
    # Six significant digits: exact for counts-derived rates of any probe we can run, stable across BLAS builds.
    return "" if value is None or math.isnan(value) else f"{value:.6g}"


def site_row(site: Site, report: Report) -> tuple[object, ...]:
    """One site's values, in :data:`COLUMNS` order (empty cells for undefined numbers)."""
    low, high = site.dead_max_preactivation or (None, None)
    return (
        site.index,
        site.name,
        site.module_path,
        site.call_index,
        site.op,
        site.kind,
        site.units,
        site.dead,
        _number(site.dead_fraction),
        site.dying,
        len(site.dormant_units),
        len(site.nan_units),
        _number(site.firing_rate.min),
        _number(site.firing_rate.median),
        _number(site.firing_rate.mean),
        _number(site.sparsity),
        _number(low),
        _number(high),
        _number(site.limit),
        str(site.ignored).lower(),
        site.status,
    )


def render_csv(report: Report) -> str:
    """The sites as CSV with a header row; newline-terminated rows (``\\n``), quoted only where needed."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    writer.writerows(site_row(site, report) for site in report.sites)
    return buffer.getvalue()
