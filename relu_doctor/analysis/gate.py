"""The gate: compare a report's dead fractions with the thresholds. Pure and torch-free."""

from __future__ import annotations

from collections.abc import Sequence
from fnmatch import fnmatchcase

from ..report import Certification, GateResult, Site, Summary, Thresholds, Violation


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


def evaluate(
    sites: Sequence[Site], summary: Summary, thresholds: Thresholds, certification: Certification | None = None
) -> GateResult:
    """Pass/fail with one line per exceeded threshold (a fraction equal to its limit passes).

    With ``thresholds.gate_on == "certified"`` the limits count certified-dead units (none without a
    certification) instead of units dead on the probe."""
    certified = thresholds.gate_on == "certified"
    word = "certified dead" if certified else "dead"
    violations = []
    failing = []
    total_dead = 0
    for site in sites:
        dead = _certified_dead(site.name, certification) if certified else site.dead
        if not is_ignored(site.name, thresholds):
            total_dead += dead
        limit = site_limit(site.name, thresholds)
        fraction = dead / site.units if site.units else 0.0
        if is_ignored(site.name, thresholds) or limit is None or fraction <= limit:
            continue
        failing.append(site.name)
        violations.append(
            Violation(
                f"site {site.name}: {dead} of {site.units} units {word} ({fraction:.1%}) "
                f"> max-layer-dead-fraction {limit:g}",
                site.name,
            )
        )
    limit = thresholds.max_dead_fraction
    fraction = total_dead / summary.units if summary.units else 0.0
    if limit is not None and fraction > limit:
        violations.append(
            Violation(
                f"model: {total_dead} of {summary.units} units {word} ({fraction:.1%}) > max-dead-fraction {limit:g}"
            )
        )
    return GateResult(passed=not violations, violations=tuple(violations), failing_sites=tuple(failing))


def _certified_dead(name: str, certification: Certification | None) -> int:
    found = certification.site(name) if certification is not None else None
    return len(found.certified_dead) if found is not None else 0


def site_status(site: Site, gate: GateResult) -> str:
    """One word per site: FAIL (breaks a threshold), dead (all units), nan, warn (some dead), ok."""
    if site.name in gate.failing_sites:
        return "FAIL"
    if site.units and site.dead == site.units:
        return "dead"
    if site.nan_units:
        return "nan"
    if site.dead:
        return "warn"
    return "ok"


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
