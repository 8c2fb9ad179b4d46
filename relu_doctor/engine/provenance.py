"""Provenance: where a tensor's units come from (which producer, which layout), followed op by op."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..report import Producer
from .ops import Layout, Role


@dataclass(frozen=True)
class Origin:
    """Provenance of one tensor in the forward pass."""

    layout: Layout | None
    producer: Producer | None = None
    site: int | None = None
    """Index of the site whose output this tensor carries, through unit-preserving ops."""


def tensor_args(args: Any) -> list[torch.Tensor]:
    """The tensors among an aten op's positional arguments, one list level deep (cat/stack take a list):
    aten schemas nest no deeper, and this runs for every op, where a general tree flatten costs more."""
    found = []
    for arg in args:
        if isinstance(arg, torch.Tensor):
            found.append(arg)
        elif isinstance(arg, (list, tuple)):
            found.extend(a for a in arg if isinstance(a, torch.Tensor))
    return found


def derive_origin(
    name: str, role: Role, inputs: list[tuple[torch.Tensor, Origin | None]], out: torch.Tensor, owner: str
) -> Origin | None:
    """The provenance of an op's output, from the op's role and its inputs' provenance."""
    first = next((o for _, o in inputs if o is not None), None)
    source = next((t for t, o in inputs if o is not None), None)
    if role is Role.PRODUCER_CHANNEL:
        return Origin(Layout.CHANNEL_FIRST, Producer(owner, name, input_sites=input_sites(inputs)))
    if role is Role.PRODUCER_FEATURE:
        return Origin(Layout.FEATURE_LAST, Producer(owner, name, input_sites=input_sites(inputs)))
    if role is Role.NORM_CHANNEL:
        producer = first.producer if first else None
        if producer is not None:
            producer = Producer(
                producer.module_path, producer.op, owner, producer.elementwise_only, producer.input_sites
            )
        return Origin(Layout.CHANNEL_FIRST, producer)
    if role is Role.NORM_FEATURE:
        return Origin(Layout.FEATURE_LAST)
    if first is None or source is None:
        return None
    if role is Role.VIEW and first.site is not None and flattens_channels(first, source, out):
        # conv -> flatten -> linear: the linear still reads this site's units, as blocks of columns.
        return Origin(Layout.FEATURE_LAST, None, first.site)
    if role in (Role.POOL, Role.VIEW, Role.ELEMENTWISE, Role.OTHER_ACTIVATION) and keeps_units(first, source, out):
        merged = sum(1 for _, o in inputs if o is not None) > 1
        producer = first.producer
        if merged and producer is not None:
            producer = Producer(producer.module_path, producer.op, producer.norm_path, False, producer.input_sites)
        site = first.site if role is not Role.OTHER_ACTIVATION else None
        return Origin(first.layout, producer, site)
    return None


def input_sites(inputs: list[tuple[torch.Tensor, Origin | None]]) -> tuple[int, ...]:
    """The sites a producer reads (its weights carry no origin, so only network inputs count)."""
    return tuple(o.site for _, o in inputs if o is not None and o.site is not None)


def keeps_units(origin: Origin, before: torch.Tensor, after: torch.Tensor) -> bool:
    """True when the unit axis of ``before`` is still the same axis, same size, in ``after``."""
    if origin.layout is None:  # axis unknown (yet): only a same-shape op surely keeps it
        return origin.site is not None and after.shape == before.shape
    if origin.layout is Layout.CHANNEL_FIRST:
        return after.dim() >= 2 and before.dim() >= 2 and after.shape[:2] == before.shape[:2]
    if origin.layout is Layout.FEATURE_LAST:
        return after.dim() >= 1 and before.dim() >= 1 and after.shape[-1] == before.shape[-1]
    return False


def flattens_channels(origin: Origin, before: torch.Tensor, after: torch.Tensor) -> bool:
    """True for (N, C, *spatial) -> (N, C * prod(spatial)), which keeps each channel as a block of columns."""
    return (
        origin.layout is Layout.CHANNEL_FIRST
        and before.dim() >= 3
        and after.dim() == 2
        and after.shape[0] == before.shape[0]
        and after.shape[1] == before[0].numel()
    )
