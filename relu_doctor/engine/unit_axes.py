"""Where a site's units are: the axis a new site gets (from ``--unit-dim``, from the layout its input's provenance
gives, or, until a reader tells, from its rank), and the calls an undecided site saw while it waited."""

from __future__ import annotations

from typing import Any

import torch

from ..activations import Member
from ..errors import ObservationError
from .counters import UnitAccumulator
from .ops import Layout
from .provenance import Origin
from .recording import CallRecorder
from .site_keys import SiteKey
from .sites import ObservedSite, SiteTable, site_label


class UnitAxes:
    """Creates sites with their unit axis and settles the axes a first pass could not tell at once."""

    def __init__(self, unit_dim: int | None, table: SiteTable, calls: CallRecorder, warnings: dict[str, None]) -> None:
        self.unit_dim = unit_dim
        """``--unit-dim`` (None: from provenance)."""
        self.table = table
        self.calls = calls
        self.warnings = warnings

    def new_site(
        self, key: SiteKey, name: str, member: Member, kind: str, pre: torch.Tensor, origin: Origin | None
    ) -> ObservedSite:
        """A site first seen now, its axis from ``origin`` (the provenance of its input ``pre``)."""
        view_shape = (1, *pre.shape) if pre.dim() < 2 else tuple(pre.shape)
        axis, layout = self._unit_axis(pre, len(view_shape), origin.layout if origin else None)
        undecided: list[Any] | None = [] if layout == "rank" and len(view_shape) >= 3 else None
        return self.table.add(
            key,
            op=name,
            kind=kind,
            unit_axis=axis,
            layout=layout,
            activation_shape=tuple(int(s) for s in pre.shape),
            counters=UnitAccumulator(int(view_shape[axis]), pre.device),
            producer=origin.producer if origin else None,
            member=member.name,
            undecided=undecided,
        )

    def decide(self, site: ObservedSite, axis: int, layout: str) -> None:
        """Fix an undecided site's unit axis and count the calls it saw meanwhile."""
        captured, site.undecided = site.undecided or [], None
        site.unit_axis, site.layout = axis, layout
        shape = captured[0][0].shape if captured else site.activation_shape
        site.counters = UnitAccumulator(int(shape[axis]), site.counters.positive.device)
        with torch.no_grad():
            for pre, output, member in captured:
                token = self.calls.before_op(site, site.op, pre, member)
                self.calls.after_op(token, output)

    def decide_undecided(self) -> None:
        """At the end of a pass, sites that no conv, norm or linear read keep the axis their rank suggests."""
        for site in self.table.sites:
            if site.undecided is not None:
                self.decide(site, site.unit_axis, "rank")
                self.warnings[
                    f"{site_label(site)}: neither where its {list(site.activation_shape)} input came from nor what "
                    f"reads its output tells the unit axis; axis {site.unit_axis} was guessed from its rank "
                    "(pass --unit-dim to choose)"
                ] = None

    def _unit_axis(self, pre: torch.Tensor, ndim: int, layout: Layout | None) -> tuple[int, str]:
        if self.unit_dim is not None:
            axis = self.unit_dim + ndim if self.unit_dim < 0 else self.unit_dim
            if not 1 <= axis < ndim:
                raise ObservationError(
                    f"--unit-dim {self.unit_dim} does not fit an activation of shape {tuple(pre.shape)}; "
                    f"use an axis from 1 to {ndim - 1} (0 is the batch axis)"
                )
            return axis, "override"
        if pre.dim() < 2:
            return 1, "rank"
        if layout is Layout.CHANNEL_FIRST:
            return 1, layout.value
        if layout is Layout.FEATURE_LAST:
            return ndim - 1, layout.value
        return (1 if ndim >= 4 else ndim - 1), "rank"
