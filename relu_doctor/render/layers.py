"""Sites grouped by layer for the terminal table, so a 24-layer language model reads as 24 rows or fewer.

A *layer* is a numbered block of a stack: the part of a site's module path up to its first all-digit segment
(``model.decoder.layers.3`` for ``model.decoder.layers.3.activation_fn``, ``layer1.0`` for ``layer1.0.relu``).
The table groups when a report has more than :data:`GROUP_ABOVE` sites and at least two of them sit in numbered
layers (:func:`should_group`):

- every layer becomes one row totalling its sites (units, dead, dying, dormant; zeros weighted by measured
  positions; the cause codes of all its sites; the worst status), naming its worst site when it holds more
  than one and that one is not ok;
- a run of at least :data:`FOLD_RUN` consecutive *clean* layers of one stack (status ok, no dead, dying or NaN
  unit, no cause finding) becomes one row, ``model.decoder.layers.5–23 (19 layers)``;
- sites outside numbered layers keep a row of their own.

Only the table groups: JSON, markdown and every other format list each site, and the findings under the table
still name sites. Rows keep call order (a layer's place is its first site's).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

from ..report import Report, Site
from .common import percent
from .markdown import site_causes

GROUP_ABOVE = 16
"""A report with more sites than this is grouped by layer (fewer read well one site a row)."""
FOLD_RUN = 3
"""Consecutive clean layers of one stack folded into one row when at least this many."""
STATUS_RANK = {"ok": 0, "warn": 1, "dead": 2, "nan": 3, "FAIL": 4}
"""Worst first when higher: a layer's status is its worst site's."""

_LAYER = re.compile(r"^(?P<stack>.+?)\.(?P<index>\d+)(?=\.|$)")


@dataclass(frozen=True)
class LayerRow:
    """One row of the grouped table: a layer's sites, a folded run of clean layers, or one unlayered site."""

    label: str
    """What the row is: ``model.decoder.layers.3``, ``model.decoder.layers.5–23``, or the site's own name."""
    sites: tuple[Site, ...]
    """The sites it totals, in call order."""
    layers: int
    """Layers it covers (0 for a site outside numbered layers)."""

    @property
    def worst(self) -> Site:
        """The site with the worst status, then the most dead and dying units (the first of equals)."""
        return max(self.sites, key=lambda s: (STATUS_RANK.get(s.status, 0), s.dead, s.dying, -s.index))

    @property
    def units(self) -> int:
        """Units of all its sites."""
        return sum(s.units for s in self.sites)

    @property
    def dead(self) -> int:
        """Dead units of all its sites."""
        return sum(s.dead for s in self.sites)


def layer_of(site: Site) -> tuple[str, int] | None:
    """(stack, index) of the numbered layer holding ``site``, or None when its path has no numbered segment."""
    match = _LAYER.match(site.module_path)
    return (match["stack"], int(match["index"])) if match else None


def should_group(report: Report) -> bool:
    """The automatic rule: more than GROUP_ABOVE sites, and at least two distinct numbered layers."""
    layers = {layer_of(site) for site in report.sites} - {None}
    return len(report.sites) > GROUP_ABOVE and len(layers) >= 2


def layer_rows(report: Report) -> list[LayerRow]:
    """The report's sites as rows of the grouped table, in call order."""
    by_layer: dict[tuple[str, int] | str, list[Site]] = {}
    for site in report.sites:
        by_layer.setdefault(layer_of(site) or site.name, []).append(site)
    rows: list[LayerRow] = []
    for key, sites in by_layer.items():
        if isinstance(key, str):
            rows.append(LayerRow(key, tuple(sites), 0))
        else:
            rows.append(LayerRow(f"{key[0]}.{key[1]}", tuple(sites), 1))
    return _fold_clean_runs(report, rows)


def _fold_clean_runs(report: Report, rows: list[LayerRow]) -> list[LayerRow]:
    folded: list[LayerRow] = []
    run: list[LayerRow] = []

    def flush() -> None:
        if len(run) >= FOLD_RUN:
            first, last = layer_of(run[0].sites[0]), layer_of(run[-1].sites[0])
            assert first is not None and last is not None
            sites = tuple(s for row in run for s in row.sites)
            folded.append(LayerRow(f"{first[0]}.{first[1]}–{last[1]}", sites, len(run)))
        else:
            folded.extend(run)
        run.clear()

    for row in rows:
        if row.layers and _clean(report, row) and (not run or _follows(run[-1], row)):
            run.append(row)
            continue
        flush()
        (run if row.layers and _clean(report, row) else folded).append(row)
    flush()
    return folded


def _clean(report: Report, row: LayerRow) -> bool:
    return all(s.status == "ok" and not (s.dead or s.dying or s.nan_units or site_causes(report, s)) for s in row.sites)


def _follows(previous: LayerRow, row: LayerRow) -> bool:
    before, after = layer_of(previous.sites[0]), layer_of(row.sites[0])
    return before is not None and after is not None and before[0] == after[0] and after[1] == before[1] + 1


def row_label(row: LayerRow) -> str:
    """The site cell: the layer, its site count and worst site; a folded run says how many layers it covers."""
    if row.layers > 1:
        return f"{row.label} ({row.layers} layers, {len(row.sites)} sites)"
    if len(row.sites) == 1:
        return row.sites[0].name
    if row.worst.status == "ok":
        return f"{row.label} ({len(row.sites)} sites)"
    worst = row.worst.name.removeprefix(row.label + ".")
    return f"{row.label} ({len(row.sites)} sites; worst {worst})"


def row_cells(report: Report, row: LayerRow) -> dict[str, str]:
    """Every column's text for a row (the status word is styled by the table)."""
    sites = row.sites
    indices = f"{sites[0].index}" if len(sites) == 1 else f"{sites[0].index}–{sites[-1].index}"
    measured = sum(s.units * s.counters.positions for s in sites)
    zeros = sum(s.sparsity * s.units * s.counters.positions for s in sites) / measured if measured else float("nan")
    causes: Counter[str] = Counter()
    for site in sites:
        for part in site_causes(report, site).split():
            code, _, count = part.partition("×")
            causes[code] += int(count)
    return {
        "#": indices,
        "site": row_label(row),
        "op": ",".join(dict.fromkeys(s.op for s in sites)),
        "units": f"{row.units:,}",
        "dead": f"{row.dead:,} ({percent(row.dead / row.units if row.units else float('nan'))})",
        "dying": f"{sum(s.dying for s in sites):,}",
        "dormant": f"{sum(len(s.dormant_units) for s in sites):,}",
        "zeros": percent(zeros),
        "causes": " ".join(f"{code}×{n}" for code, n in sorted(causes.items())),
        "status": row.worst.status,
    }
