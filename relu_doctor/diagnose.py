"""Diagnosis rules: pure functions from a site to findings, each with a stable code documented in the README.

Every rule is registered once in :data:`RULES`; codes never change meaning once released.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from .report import Finding, ProbeInfo, Site

BIAS_MARGIN = 0.1
"""Positive margin a bias shift aims for above zero, in pre-activation units."""

Rule = Callable[[Site, ProbeInfo], Iterable[Finding]]


def dead_units(site: Site, probe: ProbeInfo) -> Iterable[Finding]:
    """RD001: units that never fired on the probe, with the shift that would wake them."""
    if not site.dead or site.dead == site.units:
        return
    low, high = site.dead_max_preactivation or (0.0, 0.0)
    need_low, need_high = BIAS_MARGIN - high, BIAS_MARGIN - low
    yield Finding(
        code="RD001",
        site=site.name,
        units=site.dead_units,
        cause=(
            f"{site.dead} of {site.units} units never fired on {probe.samples} samples; "
            f"their max pre-activation is {low:.3g} … {high:.3g}: a negative bias or shift keeps them off"
        ),
        suggestion=(
            f"raise their bias by ≈{need_low:.3g}" + (f" to {need_high:.3g}" if need_high > need_low + 1e-9 else "")
            + ", use LeakyReLU(0.01), or re-initialise them (relu-doctor fix --strategy recycle)"
        ),
    )


def whole_site_dead(site: Site, probe: ProbeInfo) -> Iterable[Finding]:
    """RD002: every unit of the site is dead, so its output is constant zero and nothing behind it learns."""
    if site.units and site.dead == site.units:
        low, high = site.dead_max_preactivation or (0.0, 0.0)
        yield Finding(
            code="RD002", site=site.name, units=site.dead_units, severity="error",
            cause=f"all {site.units} units are dead (max pre-activation {low:.3g} … {high:.3g}): the output is constant 0",
            suggestion="check the layer before it (bias, BatchNorm shift, input scale); re-initialise it or lower the learning rate",
        )  # fmt: skip


def dying_units(site: Site, probe: ProbeInfo) -> Iterable[Finding]:
    """RD003: units that fire, but rarely; they get almost no gradient."""
    if site.dying:
        rates = site.firing_rates()
        worst = min(rates[u] for u in site.dying_units)
        yield Finding(
            code="RD003", site=site.name, units=site.dying_units, severity="note",
            cause=f"{site.dying} of {site.units} units fire on fewer than 1 in {round(1 / max(worst, 1e-12)):,} positions (lowest {worst:.2%})",
            suggestion="watch them across checkpoints (relu-doctor trend); a lower learning rate or LeakyReLU keeps them learning",
        )  # fmt: skip


def nan_units(site: Site, probe: ProbeInfo) -> Iterable[Finding]:
    """RD004: NaN or Inf pre-activations; these units are neither dead nor alive."""
    if site.nan_units:
        nans = sum(site.counters.nan)
        infs = sum(site.counters.inf)
        yield Finding(
            code="RD004", site=site.name, units=site.nan_units, severity="error",
            cause=f"{len(site.nan_units)} units saw {nans:,} NaN and {infs:,} Inf pre-activations",
            suggestion="the weights or the probe hold non-finite values: check the checkpoint and the input scale",
        )  # fmt: skip


RULES: tuple[tuple[str, Rule], ...] = (
    ("RD001", dead_units),
    ("RD002", whole_site_dead),
    ("RD003", dying_units),
    ("RD004", nan_units),
)


def diagnose(sites: Sequence[Site], probe: ProbeInfo) -> tuple[Finding, ...]:
    """Every registered rule over every site, in site order."""
    return tuple(finding for site in sites for _, rule in RULES for finding in rule(site, probe))
