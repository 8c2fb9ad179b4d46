"""Turn observed sites into report records: unique names, and dead / dying / dormant classification.

Definitions (README "Definitions"):
- dead: no position of any probe sample had a pre-activation > 0 (units with NaN/Inf are reported apart);
- dying: alive, but positive on fewer than ``dying_rate`` of the positions it was measured on;
- tau-dormant (ReDo): mean activation / the site's mean of that over units <= ``tau``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Protocol

from ..activations import MEMBERS_BY_NAME
from ..report import Site, SiteRecord, Thresholds, UnitCounters, rate_summary


class Called(Protocol):
    """Where a site's relu op ran: all its name needs (an engine ObservedSite or a SiteRecord)."""

    @property
    def module_path(self) -> str: ...
    @property
    def call_index(self) -> int: ...
    @property
    def ordinal(self) -> int: ...
    @property
    def kind(self) -> str: ...
    @property
    def member(self) -> str: ...


def site_names(observed: Sequence[Called]) -> list[str]:
    """Unique, stable names in call order.

    A module site is named by its path, with ``#k`` when the module ran more than once per pass; a functional
    site by its owner and op, ``owner:relu``, with ``#k`` when the owner made more than one such call.
    """
    calls_per_path = Counter(s.module_path for s in observed if s.ordinal == 1)
    functional_per_call = Counter((s.module_path, s.call_index) for s in observed if s.kind == "functional")
    names = []
    for site in observed:
        owner = site.module_path + (f"#{site.call_index}" if calls_per_path[site.module_path] > 1 else "")
        if site.kind != "functional":
            names.append(owner or "<root>")
            continue
        op = MEMBERS_BY_NAME[site.member].display
        suffix = f"#{site.ordinal}" if functional_per_call[(site.module_path, site.call_index)] > 1 else ""
        names.append(f"{owner}:{op}{suffix}")
    return _deduplicated(names)


def build_site(observed: SiteRecord, name: str, thresholds: Thresholds) -> Site:
    """The report record of one observed site, classified with the given thresholds."""
    counters = observed.counters
    rates = tuple(p / counters.positions if counters.positions else 0.0 for p in counters.positive)
    nan_units = tuple(u for u in range(len(rates)) if counters.nan[u] or counters.inf[u])
    bad = set(nan_units)
    dead = tuple(u for u, p in enumerate(counters.positive) if p == 0 and u not in bad)
    dying = tuple(u for u, r in enumerate(rates) if 0 < r < thresholds.dying_rate and u not in bad)
    total_positions = counters.positions * len(rates)
    return Site(
        index=observed.index,
        name=name,
        module_path=observed.module_path,
        call_index=observed.call_index,
        ordinal=observed.ordinal,
        op=MEMBERS_BY_NAME[observed.member].shown_as(observed.op),
        kind=observed.kind,
        unit_axis=observed.unit_axis,
        layout=observed.layout,
        activation_shape=observed.activation_shape,
        units=len(rates),
        counters=counters,
        dead_units=dead,
        dying_units=dying,
        nan_units=nan_units,
        firing_rate=rate_summary(tuple(r for u, r in enumerate(rates) if u not in bad)),
        sparsity=_zeros(counters) / total_positions if total_positions else 0.0,
        dead_max_preactivation=_dead_range(counters, dead),
        producer=observed.producer,
        dormant_units=dormant_units(counters, thresholds.tau, bad),
    )


def dormant_units(counters: UnitCounters, tau: float, excluded: set[int]) -> tuple[int, ...]:
    """ReDo's tau-dormant units: score_i = mean|h_i| / mean_k mean|h_k| <= tau (dead units included)."""
    n = counters.positions
    if not n:
        return ()
    means = [s / n for s in counters.activation_sum]
    layer_mean = sum(means) / len(means) if means else 0.0
    if layer_mean <= 0:
        return tuple(u for u in range(len(means)) if u not in excluded)
    return tuple(u for u, m in enumerate(means) if m / layer_mean <= tau and u not in excluded)


def _dead_range(counters: UnitCounters, dead: tuple[int, ...]) -> tuple[float, float] | None:
    if not dead:
        return None
    values = [counters.max_preactivation[u] for u in dead]
    return (min(values), max(values))


def _deduplicated(names: list[str]) -> list[str]:
    # Two owners can share a display name only in odd graphs (a module named like an op); keep names unique.
    seen: Counter[str] = Counter()
    unique = []
    for name in names:
        seen[name] += 1
        unique.append(name if seen[name] == 1 else f"{name}~{seen[name]}")
    return unique


def _zeros(counters: UnitCounters) -> int:
    """Positions whose activation is 0: neither positive nor NaN/Inf (a NaN is not a zero)."""
    total = counters.positions * len(counters.positive)
    return total - sum(counters.positive) - sum(counters.nan) - sum(counters.inf)
