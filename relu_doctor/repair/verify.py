"""Verification of a repair: the same probe through the repaired model, compared with the scan before."""

from __future__ import annotations

from collections.abc import Sequence

from ..report import Report
from .records import Drift, SiteCheck, SiteRepair, Verification


def site_checks(before: Report, after: Report) -> tuple[SiteCheck, ...]:
    """Every site of the original model with its dead and dying counts before and after (by site name), and the
    units dead after that were not dead before."""
    later = {site.name: site for site in after.sites}
    checks = []
    for site in before.sites:
        now = later.get(site.name)
        newly_dead = () if now is None else tuple(sorted(set(now.dead_units) - set(site.dead_units)))
        checks.append(
            SiteCheck(
                site.name,
                site.units,
                site.dead,
                site.dying,
                None if now is None else now.dead,
                None if now is None else now.dying,
                newly_dead,
            )
        )
    return tuple(checks)


def still_dead(repaired: Sequence[SiteRepair], after: Report) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """(site, units) among the repaired units that are dead after the repair."""
    later = {site.name: site for site in after.sites}
    found = []
    for repair in repaired:
        now = later.get(repair.site)
        dead = tuple(u for u in repair.units if now is not None and u in set(now.dead_units))
        if dead:
            found.append((repair.site, dead))
    return tuple(found)


def verification(
    before: Report,
    after: Report,
    repaired: Sequence[SiteRepair],
    drift: Drift,
    max_drift: float | None,
    *,
    applied: bool = True,
) -> Verification:
    """The verification record of a repair, from the scans before and after (every site) and the measured drift."""
    return Verification(site_checks(before, after), drift, max_drift, still_dead(repaired, after), applied)
