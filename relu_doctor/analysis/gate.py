"""The gate: compare a report's dead fractions with the thresholds. Pure and torch-free."""

from __future__ import annotations

from collections.abc import Sequence
from fnmatch import fnmatchcase

from ..report import GateResult, Site, Summary, Thresholds


def is_ignored(name: str, thresholds: Thresholds) -> bool:
    """True when a site name matches one of the ``ignore`` globs."""
    return any(fnmatchcase(name, pattern) for pattern in thresholds.ignore)


def site_limit(name: str, thresholds: Thresholds) -> float | None:
    """The dead-fraction limit for one site: the last matching override, else the global per-site limit."""
    limit = thresholds.max_layer_dead_fraction
    for pattern, value in thresholds.site_overrides:
        if fnmatchcase(name, pattern):
            limit = value
    return limit


def evaluate(sites: Sequence[Site], summary: Summary, thresholds: Thresholds) -> GateResult:
    """Pass/fail with one line per exceeded threshold (a fraction equal to its limit passes)."""
    violations = []
    failing = []
    for site in sites:
        limit = site_limit(site.name, thresholds)
        if is_ignored(site.name, thresholds) or limit is None or site.dead_fraction <= limit:
            continue
        failing.append(site.name)
        violations.append(
            f"site {site.name}: {site.dead} of {site.units} units dead ({site.dead_fraction:.1%}) "
            f"> max-layer-dead-fraction {limit:g}"
        )
    limit = thresholds.max_dead_fraction
    if limit is not None and summary.dead_fraction > limit:
        violations.append(
            f"model: {summary.dead} of {summary.units} units dead ({summary.dead_fraction:.1%}) "
            f"> max-dead-fraction {limit:g}"
        )
    return GateResult(passed=not violations, violations=tuple(violations), failing_sites=tuple(failing))


def summarize(sites: Sequence[Site], thresholds: Thresholds) -> Summary:
    """Totals over the sites that are not ignored."""
    kept = [s for s in sites if not is_ignored(s.name, thresholds)]
    return Summary(
        sites=len(kept),
        units=sum(s.units for s in kept),
        dead=sum(s.dead for s in kept),
        dying=sum(s.dying for s in kept),
        nan_units=sum(len(s.nan_units) for s in kept),
        dormant=sum(len(s.dormant_units) for s in kept),
    )
