"""Observed sites: what the observer records about each relu-family site, and the table that finds them by key."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..activations import MEMBERS_BY_NAME, Member
from ..report import Producer, SiteIdentity, SiteRecord
from .counters import UnitAccumulator
from .site_keys import SiteKey


@dataclass
class ObservedSite:
    """A site while it is being observed: identity, unit axis, counters and its place in the graph."""

    index: int
    module_path: str
    call_index: int
    ordinal: int
    op: str
    """The aten op, in-place ``_`` included (``relu_``, ``hardtanh``)."""
    kind: str
    unit_axis: int
    layout: str
    activation_shape: tuple[int, ...]
    counters: UnitAccumulator
    producer: Producer | None
    member: str
    """The relu-family member's :attr:`~relu_doctor.activations.Member.name` (its display name, cap, ...)."""
    consumers: set[tuple[str, str, tuple[int, ...]]] = field(default_factory=set)
    """(module path, op, input shape) of layers that read this site's output."""
    feeds_sum: bool = False
    feeds_concat: bool = False
    reaches_output: bool = False
    unknown_uses: set[str] = field(default_factory=set)
    """Ops that read the output whose effect on units is not followed (transpose, attention, ...)."""
    undecided: list[tuple[torch.Tensor, torch.Tensor, Member]] | None = None
    """While the unit axis waits for a consumer (provenance unknown, first pass only): (pre-activation, output,
    member) copies of the calls seen so far, counted once the axis is known."""

    @property
    def key(self) -> SiteKey:
        """(owner path, call of the owner, relu op of that call): how the observer keyed it."""
        return (self.module_path, self.call_index, self.ordinal)

    @property
    def family(self) -> Member:
        """The relu-family member this site runs."""
        return MEMBERS_BY_NAME[self.member]

    @property
    def identity(self) -> SiteIdentity:
        """What the same site must show on another rank (or in a stats file) to be combined with this one."""
        return SiteIdentity(self.key, self.op, self.member, self.counters.units, self.unit_axis)

    def record(self) -> SiteRecord:
        """The site as plain data (its counters as tuples): what analysis judges and a stats file stores."""
        return SiteRecord(
            index=self.index,
            module_path=self.module_path,
            call_index=self.call_index,
            ordinal=self.ordinal,
            op=self.op,
            member=self.member,
            kind=self.kind,
            unit_axis=self.unit_axis,
            layout=self.layout,
            activation_shape=self.activation_shape,
            counters=self.counters.snapshot(),
            producer=self.producer,
        )


def site_label(site: ObservedSite) -> str:
    """How warnings name a site: its owner and call."""
    return f"{site.module_path or '<root>'} (call {site.call_index})"


class SiteTable:
    """The sites found so far, in call order, and each by its key."""

    def __init__(self) -> None:
        self.sites: list[ObservedSite] = []
        self._by_key: dict[SiteKey, ObservedSite] = {}

    def get(self, key: SiteKey) -> ObservedSite | None:
        return self._by_key.get(key)

    def add(self, key: SiteKey, **fields: Any) -> ObservedSite:
        """A new site with the next index."""
        site = ObservedSite(len(self.sites), key[0], key[1], key[2], **fields)
        self.sites.append(site)
        self._by_key[key] = site
        return site

    def truncate(self, known: int) -> None:
        """Forget every site found after the first ``known``."""
        for site in self.sites[known:]:
            del self._by_key[site.key]
        del self.sites[known:]

    def clear(self) -> None:
        self.truncate(0)
