"""Follow one training run across checkpoints: how each site's dead share moves, and when each unit died.

Checkpoints are ordered naturally (``epoch_10`` after ``epoch_9``). A unit *died at* checkpoint k when it is
dead at k and at every later checkpoint (so a unit that died, revived and died again dates from its last
death); only units dead at the last checkpoint have a date. The gate and exit code are the last checkpoint's.
Building a :class:`~relu_doctor.report.TrendReport` from reports is pure; the scans are
:func:`relu_doctor.workflow.trend.scan_checkpoints`'.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import PurePath

from ..errors import UsageError
from ..report import Report, SiteTrend, TrendReport


def natural_key(text: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key comparing digit runs as numbers: ``epoch_9`` < ``epoch_10``."""
    parts = re.split(r"(\d+)", text)
    return tuple((0, int(part)) if part.isdigit() else (1, part) for part in parts if part)


def sort_naturally(paths: Sequence[str]) -> list[str]:
    """Paths in natural order (ties broken by the plain string, so the order is total)."""
    return sorted(paths, key=lambda path: (natural_key(path), path))


def died_at(dead_per_checkpoint: Sequence[frozenset[int] | None]) -> tuple[tuple[int, int], ...]:
    """(unit, first index of its final unbroken dead run) for every unit dead at the last checkpoint."""
    if not dead_per_checkpoint or dead_per_checkpoint[-1] is None:
        return ()
    dates = []
    for unit in sorted(dead_per_checkpoint[-1]):
        index = len(dead_per_checkpoint) - 1
        while index > 0 and unit in (dead_per_checkpoint[index - 1] or ()):
            index -= 1
        dates.append((unit, index))
    return tuple(dates)


def build_trend(checkpoints: Sequence[str], reports: Sequence[Report]) -> TrendReport:
    """Follow every site through ``reports`` (one per checkpoint, already in order)."""
    if not reports or len(reports) != len(checkpoints):
        raise UsageError("trend needs one report per checkpoint and at least one checkpoint")
    names = list(dict.fromkeys(site.name for report in reports for site in report.sites))
    return TrendReport(
        tuple(checkpoints), tuple(reports), tuple(_site_trend(name, checkpoints, reports) for name in names)
    )


def _site_trend(name: str, checkpoints: Sequence[str], reports: Sequence[Report]) -> SiteTrend:
    found = [next((s for s in report.sites if s.name == name), None) for report in reports]
    sizes = {site.units for site in found if site is not None}
    if len(sizes) > 1:
        shown = ", ".join(f"{PurePath(c).name}: {s.units}" for c, s in zip(checkpoints, found) if s is not None)
        raise UsageError(
            f"site {name!r} changes size across checkpoints ({shown}); trend compares checkpoints "
            "of one architecture, so pass checkpoints of a single run"
        )
    dead = [None if site is None else frozenset(site.dead_units) for site in found]
    seen_dead = set().union(*(d for d in dead[:-1] if d is not None)) if len(dead) > 1 else set()
    return SiteTrend(
        name=name,
        units=sizes.pop(),
        dead=tuple(None if s is None else s.dead for s in found),
        dead_fraction=tuple(None if s is None else s.dead_fraction for s in found),
        died_at=died_at(dead),
        revived=tuple(sorted(seen_dead - (dead[-1] or set()))),
    )
