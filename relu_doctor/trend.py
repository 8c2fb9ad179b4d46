"""Follow one training run across checkpoints: how each site's dead share moves, and when each unit died.

Checkpoints are ordered naturally (``epoch_10`` after ``epoch_9``). A unit *died at* checkpoint k when it is
dead at k and at every later checkpoint (so a unit that died, revived and died again dates from its last
death); only units dead at the last checkpoint have a date. The gate and exit code are the last checkpoint's.
Building a :class:`TrendReport` from reports is pure; :func:`scan_checkpoints` loads and scans (torch).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import PurePath
from typing import Any

from .errors import UsageError
from .report import GateResult, Report


@dataclass(frozen=True)
class SiteTrend:
    """One site followed over the checkpoints."""

    name: str
    """Site name, as in each report."""
    units: int
    """Number of units (the same in every checkpoint)."""
    dead: tuple[int | None, ...]
    """Dead units per checkpoint; None where the site did not run."""
    dead_fraction: tuple[float | None, ...]
    """Dead share per checkpoint; None where the site did not run."""
    died_at: tuple[tuple[int, int], ...]
    """(unit, checkpoint index) for each unit dead at the last checkpoint: the first index from which it stays dead."""
    revived: tuple[int, ...]
    """Units dead at some earlier checkpoint but alive at the last one."""

    def deaths_per_checkpoint(self) -> dict[int, tuple[int, ...]]:
        """Checkpoint index -> the units that died there, in index order."""
        grouped: dict[int, list[int]] = {}
        for unit, index in self.died_at:
            grouped.setdefault(index, []).append(unit)
        return {index: tuple(units) for index, units in sorted(grouped.items())}


@dataclass(frozen=True)
class TrendReport:
    """Reports of several checkpoints of one run, and each site's trend across them."""

    checkpoints: tuple[str, ...]
    """Checkpoint paths, in natural order."""
    reports: tuple[Report, ...]
    """One report per checkpoint, same order."""
    sites: tuple[SiteTrend, ...]
    """Every site seen, in the call order of the first checkpoint that has it."""

    @property
    def last(self) -> Report:
        """The last checkpoint's report: the one thresholds and exit codes apply to."""
        return self.reports[-1]

    @property
    def gate(self) -> GateResult:
        """The last checkpoint's gate result."""
        return self.last.gate

    @property
    def exit_code(self) -> int:
        """0 when the last checkpoint is within thresholds, 1 when not."""
        return self.gate.exit_code

    def labels(self) -> tuple[str, ...]:
        """Short names for the checkpoints: file names when those are unique, else the paths."""
        names = tuple(PurePath(path).name for path in self.checkpoints)
        return names if len(set(names)) == len(names) else self.checkpoints


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
    return TrendReport(tuple(checkpoints), tuple(reports), tuple(_site_trend(name, checkpoints, reports) for name in names))


def _site_trend(name: str, checkpoints: Sequence[str], reports: Sequence[Report]) -> SiteTrend:
    found = [next((s for s in report.sites if s.name == name), None) for report in reports]
    sizes = {site.units for site in found if site is not None}
    if len(sizes) > 1:
        shown = ", ".join(f"{PurePath(c).name}: {s.units}" for c, s in zip(checkpoints, found) if s is not None)
        raise UsageError(f"site {name!r} changes size across checkpoints ({shown}); trend compares checkpoints "
                         "of one architecture, so pass checkpoints of a single run")  # fmt: skip
    dead = [None if site is None else frozenset(site.dead_units) for site in found]
    seen_dead = set().union(*(d for d in dead[:-1] if d is not None)) if len(dead) > 1 else set()
    return SiteTrend(
        name=name, units=sizes.pop(), dead=tuple(None if s is None else s.dead for s in found),
        dead_fraction=tuple(None if s is None else s.dead_fraction for s in found), died_at=died_at(dead),
        revived=tuple(sorted(seen_dead - (dead[-1] or set()))),
    )  # fmt: skip


def scan_checkpoints(paths: Sequence[str], request: Any, *,
                     on_checkpoint: Callable[[int, str], None] | None = None) -> TrendReport:  # fmt: skip
    """Scan each checkpoint with ``request`` (a :class:`~relu_doctor.pipeline.ScanRequest`; its model path is
    replaced), in natural order, and follow the sites. ``on_checkpoint(index, path)`` runs before each scan."""
    from .pipeline import run_scan

    ordered = sort_naturally(list(dict.fromkeys(paths)))
    reports = []
    for index, path in enumerate(ordered):
        if on_checkpoint is not None:
            on_checkpoint(index, path)
        reports.append(run_scan(replace(request, model_path=path)))
    return build_trend(ordered, reports)
