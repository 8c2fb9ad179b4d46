"""The certification section of a report (``--certify``), as JSON-ready data and as text lines.

Torch-free, like every renderer: it reads the :class:`~relu_doctor.report.Certification` the report carries.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

from ..report import CertifiedSite, Report, Site

SHOWN = 6
"""Units listed per site in text before "and N more"."""


def certification_dict(report: Report) -> dict[str, Any] | None:
    """The report-level certification: domain, methods, totals, timings and notes (None without --certify)."""
    cert = report.certification
    if cert is None:
        return None
    return {
        "domain": cert.domain,
        "description": cert.description,
        "input_shape": list(cert.input_shape),
        "methods": list(cert.methods),
        "certified_dead": cert.certified_dead,
        "certified_active": cert.certified_active,
        "dead_not_certified": sum(len(dead_not_certified(report, s)) for s in report.sites),
        "seconds": {name: _number(value) for name, value in cert.seconds},
        "notes": list(cert.notes),
    }


def site_certification_dict(report: Report, site: Site) -> dict[str, Any] | None:
    """One site's certified units, its probe-dead units without a proof (with their bounds), and bound summaries."""
    proved = report.certification.site(site.name) if report.certification is not None else None
    if proved is None:
        return None
    return {
        "certified_dead": list(proved.certified_dead),
        "certified_dead_by": _by_method(proved.certified_dead, proved.dead_method),
        "certified_active": list(proved.certified_active),
        "certified_active_by": _by_method(proved.certified_active, proved.active_method),
        "dead_not_certified": [
            {"unit": unit, "upper_bound": _number(proved.upper_bound[unit])}
            for unit in dead_not_certified(report, site)
        ],
        "upper_bound": _summary(proved.upper_bound),
        "interval_upper_bound": _summary(proved.interval_upper_bound),
        "lower_bound": _summary(proved.lower_bound),
        "relaxed": proved.relaxed,
        "notes": list(proved.notes),
    }


def dead_not_certified(report: Report, site: Site) -> tuple[int, ...]:
    """Units dead on the probe that the bounds do not prove dead on the domain."""
    proved = report.certification.site(site.name) if report.certification is not None else None
    if proved is None:
        return site.dead_units
    certified = set(proved.certified_dead)
    return tuple(u for u in site.dead_units if u not in certified)


def certification_lines(report: Report) -> list[str]:
    """Plain-text lines for the table and Markdown reports: the domain, totals, then one line per site of interest."""
    cert = report.certification
    if cert is None:
        return []
    seconds = ", ".join(f"{name} {value:.3g} s" for name, value in cert.seconds)
    lines = [
        f"certified on {cert.domain} ({cert.description}) by {' + '.join(cert.methods)}: "
        f"{cert.certified_dead} units certified dead, {cert.certified_active} always active ({seconds})"
    ]
    for site in report.sites:
        proved = cert.site(site.name)
        if proved is None:
            lines.append(f"  {site.name}: not reached by the bound pass")
            continue
        line = _site_line(report, site, proved)
        if line:
            lines.append(line)
    lines.extend(f"  note: {note}" for note in cert.notes)
    return lines


def _site_line(report: Report, site: Site, proved: CertifiedSite) -> str:
    unproved = dead_not_certified(report, site)
    if not proved.certified_dead and not unproved:
        return ""
    parts = []
    if proved.certified_dead:
        methods = ", ".join(f"{n} by {m}" for m, n in sorted(_counts(proved.dead_method).items()))
        parts.append(f"{len(proved.certified_dead)} certified dead ({methods}): {_units(proved.certified_dead)}")
    if unproved:
        bounds = ", ".join(f"{u} (<= {proved.upper_bound[u]:.3g})" for u in unproved[:SHOWN])
        more = f" and {len(unproved) - SHOWN} more" if len(unproved) > SHOWN else ""
        parts.append(f"{len(unproved)} dead on the probe, not proved: {bounds}{more}")
    return f"  {site.name}: " + "; ".join(parts)


def _units(units: tuple[int, ...]) -> str:
    shown = ", ".join(str(u) for u in units[:SHOWN])
    return shown + (f" and {len(units) - SHOWN} more" if len(units) > SHOWN else "")


def _counts(methods: tuple[str, ...]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for method in methods:
        counts[method] = counts.get(method, 0) + 1
    return counts


def _by_method(units: tuple[int, ...], methods: tuple[str, ...]) -> dict[str, list[int]]:
    by: dict[str, list[int]] = {}
    for unit, method in zip(units, methods):
        by.setdefault(method, []).append(unit)
    return by


def _summary(values: tuple[float, ...]) -> dict[str, Any]:
    if not values:
        return {"min": None, "median": None, "max": None}
    return {"min": _number(min(values)), "median": _number(statistics.median(values)), "max": _number(max(values))}


def _number(value: float) -> float | None:
    # JSON has no Infinity: null is an unbounded (or undefined) value.
    return value if math.isfinite(value) else None
