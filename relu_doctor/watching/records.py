"""What the training watch records, as frozen, torch-free data: one record per window, one per recycle event.

Loggers, plots and the integrations read these; nothing here imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..repair.records import SiteRepair, SkippedSite
from ..report import Report, Site

METRIC_PREFIX = "relu_doctor"
"""Every logged metric's name starts with this (``relu_doctor/dead_fraction``, ``relu_doctor/<site>/...``)."""


class _Fractions:
    """``dead``, ``dying`` and ``dormant`` as shares of ``units`` (0 when there are no units)."""

    units: int
    dead: int
    dying: int
    dormant: int

    @property
    def dead_fraction(self) -> float:
        """dead / units."""
        return self.dead / self.units if self.units else 0.0

    @property
    def dying_fraction(self) -> float:
        """dying / units."""
        return self.dying / self.units if self.units else 0.0

    @property
    def dormant_fraction(self) -> float:
        """dormant / units."""
        return self.dormant / self.units if self.units else 0.0


@dataclass(frozen=True)
class SiteWindow(_Fractions):
    """One site's counts over one window."""

    name: str
    """Site name, as in the report."""
    units: int
    """Number of units."""
    dead: int
    """Units that never fired on any observed training sample of the window."""
    dying: int
    """Units that fired on fewer than the dying rate of their positions."""
    dormant: int
    """tau-dormant units (ReDo), dead ones included."""


@dataclass(frozen=True)
class WindowRecord(_Fractions):
    """The watch's counts over one window of observed training steps."""

    index: int
    """Window number, from 0."""
    first_step: int
    """First training step observed in the window."""
    last_step: int
    """Last training step observed in the window."""
    observed_steps: int
    """Training steps observed (``window``, fewer for the last one when training stopped early)."""
    samples: int
    """Training samples that went through the model in the observed forward passes (summed over ranks)."""
    sites: tuple[SiteWindow, ...]
    """Every site, in call order (the ignored ones included)."""
    units: int
    """Units over the sites the totals count (ignore globs left out, as in the report's summary)."""
    dead: int
    """Dead units over those sites."""
    dying: int
    """Dying units over those sites."""
    dormant: int
    """tau-dormant units over those sites."""
    gate_passed: bool
    """True when the window's report is within its thresholds."""
    violations: tuple[str, ...] = ()
    """One line per exceeded threshold (the gate's)."""

    def site(self, name: str) -> SiteWindow:
        """The site called ``name`` (KeyError when there is none)."""
        for site in self.sites:
            if site.name == name:
                return site
        raise KeyError(name)

    def metrics(self, *, per_site: bool = True) -> dict[str, float]:
        """Logger-ready scalars: ``relu_doctor/{dead,dying,dormant}_fraction`` for the model and, with ``per_site``,
        ``relu_doctor/<site>/{dead,dying,dormant}_fraction`` for every site."""
        found = {
            f"{METRIC_PREFIX}/dead_fraction": self.dead_fraction,
            f"{METRIC_PREFIX}/dying_fraction": self.dying_fraction,
            f"{METRIC_PREFIX}/dormant_fraction": self.dormant_fraction,
            f"{METRIC_PREFIX}/dead_units": float(self.dead),
        }
        for site in self.sites if per_site else ():
            found[f"{METRIC_PREFIX}/{site.name}/dead_fraction"] = site.dead_fraction
            found[f"{METRIC_PREFIX}/{site.name}/dying_fraction"] = site.dying_fraction
            found[f"{METRIC_PREFIX}/{site.name}/dormant_fraction"] = site.dormant_fraction
        return found


@dataclass(frozen=True)
class RecycleEvent:
    """One in-training recycle: which units got fresh incoming weights, what was left alone, what was reset."""

    step: int
    """The training step after which the units were recycled."""
    window: int
    """Index of the window whose counts chose the units."""
    recycled: tuple[SiteRepair, ...]
    """Per site: the units recycled and the layers changed (the same records as ``fix --strategy recycle``)."""
    skipped: tuple[SkippedSite, ...]
    """Sites whose units could not be recycled without changing the output, and why."""
    optimizer_values_reset: int
    """Optimizer-state entries (Adam moments, momentum buffers) set to zero for the changed weights."""

    @property
    def units(self) -> int:
        """Units recycled over every site."""
        return sum(len(repair.units) for repair in self.recycled)


def site_window(site: Site) -> SiteWindow:
    """A report site's counts."""
    return SiteWindow(site.name, site.units, site.dead, site.dying, len(site.dormant_units))


def window_record(index: int, first_step: int, last_step: int, observed_steps: int, report: Report) -> WindowRecord:
    """The record of one window from its report."""
    summary = report.summary
    return WindowRecord(
        index=index,
        first_step=first_step,
        last_step=last_step,
        observed_steps=observed_steps,
        samples=report.probe.samples,
        sites=tuple(site_window(site) for site in report.sites),
        units=summary.units,
        dead=summary.dead,
        dying=summary.dying,
        dormant=summary.dormant,
        gate_passed=report.gate.passed,
        violations=tuple(str(violation) for violation in report.gate.violations),
    )
