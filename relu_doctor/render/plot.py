"""Pictures: per-site firing-rate histograms of a scan, and dead share per site over a trend's checkpoints.

matplotlib is an optional extra (``pip install "relu-doctor[plot]"``), imported only when a plot is asked for,
with the Agg backend (no display needed). ``*_figure`` return the matplotlib Figure (for tests and notebooks),
``*_png`` its PNG bytes; writing them is the caller's job.
"""

from __future__ import annotations

import io
import math
from typing import Any

from ..errors import UsageError
from ..report import Report, Site, TrendReport

MAX_PANELS = 24
"""At most this many site panels in one histogram figure (the first ones in call order)."""
DEAD_COLOR, ALIVE_COLOR, LIMIT_COLOR = "#c0392b", "#2e86c1", "#7f8c8d"
DEAD_BAR_X = -0.08
"""Where the dead units' bar stands on the firing-rate axis (left of 0, labelled "dead")."""


def require_matplotlib() -> None:
    """Fail now, before any scanning, when --plot cannot be honoured."""
    _pyplot()


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise UsageError('--plot needs matplotlib: pip install "relu-doctor[plot]" (or drop --plot)') from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(figure: Any, plt: Any) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    plt.close(figure)
    return buffer.getvalue()


def _site_panel(axis: Any, site: Site, dying_rate: float) -> None:
    """Histogram of the live units' firing rates, dead units as a separate red bar at 0."""
    rates = site.firing_rates()
    dead = set(site.dead_units)
    alive = [rate for unit, rate in enumerate(rates) if unit not in dead and unit not in site.nan_units]
    axis.hist(alive, bins=20, range=(0.0, 1.0), color=ALIVE_COLOR, label="live units")
    # Dead units get their own bar left of 0, so they never hide the live units that fire rarely.
    axis.bar([DEAD_BAR_X], [len(dead)], width=0.05, color=DEAD_COLOR, label="dead units")
    axis.axvline(dying_rate, color=LIMIT_COLOR, linestyle=":", linewidth=1, label=f"dying rate {dying_rate:g}")
    axis.set_title(
        f"{site.name}: {site.dead}/{site.units} dead ({site.dead_fraction:.1%})",
        fontsize=9,
        color=DEAD_COLOR if site.dead else "black",
    )
    axis.set_xlim(DEAD_BAR_X - 0.04, 1.0)
    axis.set_xticks([DEAD_BAR_X, 0.0, 0.25, 0.5, 0.75, 1.0], ["dead", "0", "0.25", "0.5", "0.75", "1"])
    axis.tick_params(labelsize=7)


def report_png(report: Report) -> bytes:
    """:func:`report_figure` as PNG bytes."""
    return _png(report_figure(report), _pyplot())


def trend_png(trend: TrendReport) -> bytes:
    """:func:`trend_figure` as PNG bytes."""
    return _png(trend_figure(trend), _pyplot())


def report_figure(report: Report) -> Any:
    """One histogram panel per site (firing rate of each unit), the dead units as a red bar and in each title."""
    plt = _pyplot()
    sites = report.sites[:MAX_PANELS]
    columns = min(3, max(1, len(sites)))
    rows = max(1, math.ceil(len(sites) / columns))
    figure, axes = plt.subplots(
        rows, columns, figsize=(4.2 * columns, 2.9 * rows + 0.4), squeeze=False, layout="constrained"
    )
    for axis, site in zip(axes.flat, sites):
        _site_panel(axis, site, report.thresholds.dying_rate)
    for axis in list(axes.flat)[len(sites) :]:
        axis.axis("off")
    if sites:
        axes.flat[0].legend(fontsize=7)
    shown = "" if len(report.sites) <= MAX_PANELS else f" (first {MAX_PANELS} of {len(report.sites)} sites)"
    figure.suptitle(
        f"{report.model.path or 'model'}: firing rate per unit, {report.probe.samples} samples{shown}", fontsize=10
    )
    figure.supxlabel("share of positions where the unit fired", fontsize=8)
    figure.supylabel("units", fontsize=8)
    return figure


def trend_figure(trend: TrendReport) -> Any:
    """Dead share per site (one line each) over the checkpoints, with the per-site limit if one is set."""
    plt = _pyplot()
    labels = trend.labels()
    figure, axis = plt.subplots(figsize=(max(6.0, 0.6 * len(labels) + 3), 4.0), layout="constrained")
    for site in trend.sites:
        values = [math.nan if v is None else v for v in site.dead_fraction]
        axis.plot(range(len(labels)), values, marker="o", markersize=3, label=site.name)
    limit = trend.last.thresholds.max_layer_dead_fraction
    if limit is not None:
        axis.axhline(limit, color=LIMIT_COLOR, linestyle="--", linewidth=1, label=f"limit {limit:g}")
    axis.set_xticks(
        range(len(labels)),
        labels,
        rotation=45 if len(labels) > 6 else 0,
        ha="right" if len(labels) > 6 else "center",
        fontsize=7,
    )
    axis.set_ylim(-0.02, 1.02)
    axis.set_ylabel("dead share")
    axis.set_title(f"dead share per site over {len(labels)} checkpoints", fontsize=10)
    axis.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return figure
