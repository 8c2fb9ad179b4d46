"""In-training recycling (ReDo, Sokar et al. 2023): the fix's function-preserving recycle, applied to the live model,
and the optimizer state of every changed weight reset in place.

The units, the plans and the edits are those of ``relu-doctor fix --strategy recycle`` (:mod:`relu_doctor.repair`):
new incoming weights from the layer's default initialiser, bias 0, a feeding norm channel reset, outgoing weights
zeroed, and a still-firing (tau-dormant) unit's mean activation folded into the consumer's bias first. What ReDo adds
for training is the optimizer: the Adam moments (and momentum buffers, and any other per-weight state shaped like
the weight) of the recycled rows and columns are zeroed, so stale moments do not push the fresh weights back.
No probe is re-run: the watch's counts chose the units, and the next windows show whether they fire.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from torch import nn

from ..engine.observe import ObservedSite
from ..repair.edits import StateEdits, apply_edits
from ..repair.plan import SitePlan, plan_recycle
from ..repair.records import SiteRepair, SkippedSite
from ..repair.recycle import input_slots, recycle_plan
from ..report import Site

RECYCLE_CHOICES = ("dormant", "dead")
"""Which units a recycle takes: tau-dormant ones (ReDo; dead ones are dormant too) or dead ones only."""


@dataclass(frozen=True)
class Recycled:
    """What one in-training recycle did."""

    recycled: tuple[SiteRepair, ...]
    """Per site, the units recycled and the layers changed."""
    skipped: tuple[SkippedSite, ...]
    """Sites left alone, and why."""
    optimizer_values_reset: int
    """Optimizer-state entries set to zero."""


def recycle_live(
    model: nn.Module,
    observed: Sequence[ObservedSite],
    sites: Sequence[Site],
    *,
    units: str,
    generator: torch.Generator,
    optimizers: Sequence[torch.optim.Optimizer] = (),
) -> Recycled:
    """Recycle the chosen units of ``model`` in place and reset their optimizer state; nothing else changes."""
    chosen = [_choose(site, units) for site in sites]
    plans, skipped = plan_recycle(model, observed, chosen, include_dying=True)
    state = StateEdits(model)
    for plan in plans:
        recycle_plan(state, plan, generator)
    apply_edits(model, state.edits)
    masks = changed_weights(model, plans)
    reset = sum(reset_optimizer_state(optimizer, model, masks) for optimizer in optimizers)
    return Recycled(tuple(_site_repair(plan) for plan in plans), tuple(skipped), reset)


def _choose(site: Site, units: str) -> Site:
    """The site with the units to recycle as ``dead_units`` and the still-firing ones among them as ``dying_units``
    (the plan folds the mean of those into the consumer's bias before zeroing their outgoing weights)."""
    dead = set(site.dead_units)
    if units == "dead":
        return replace(site, dying_units=())
    firing = set(site.dormant_units) - dead - set(site.nan_units)
    return replace(site, dying_units=tuple(sorted(firing)))


def _site_repair(plan: SitePlan) -> SiteRepair:
    layers = (plan.producer, *((plan.norm,) if plan.norm else ()), *(c.module_path for c in plan.consumers))
    return SiteRepair(plan.site.name, plan.units, plan.dying, tuple(dict.fromkeys(layers)))


def _name(path: str, attribute: str) -> str:
    return f"{path}.{attribute}" if path else attribute


def changed_weights(model: nn.Module, plans: Sequence[SitePlan]) -> dict[str, torch.Tensor]:
    """Parameter name -> boolean mask of the entries a recycle re-drew or zeroed (incoming rows, bias entries, norm
    channels, outgoing columns); consumer biases, which only absorb a folded mean, keep their optimizer state."""
    modules = dict(model.named_modules())
    params = dict(model.named_parameters())
    masks: dict[str, torch.Tensor] = {}

    def mark(path: str, attribute: str, index: object) -> None:
        name = _name(path, attribute)
        if name in params:
            mask = masks.setdefault(name, torch.zeros_like(params[name], dtype=torch.bool))
            mask[index] = True  # type: ignore[index]

    for plan in plans:
        units = list(plan.units)
        mark(plan.producer, "weight", units)
        mark(plan.producer, "bias", units)
        if plan.norm is not None:
            mark(plan.norm, "weight", units)
            mark(plan.norm, "bias", units)
        for consumer in plan.consumers:
            for unit in units:
                mark(consumer.module_path, "weight", input_slots(modules[consumer.module_path], consumer, unit))
    return masks


@torch.no_grad()
def reset_optimizer_state(optimizer: torch.optim.Optimizer, model: nn.Module, masks: dict[str, torch.Tensor]) -> int:
    """Zero, in place, every per-weight state tensor (shaped like its parameter) of ``optimizer`` at ``masks``;
    scalar state (Adam's step count) is left alone. Returns the number of entries zeroed."""
    params = dict(model.named_parameters())
    state = getattr(optimizer, "state", {})
    zeroed = 0
    for name, mask in masks.items():
        for value in state.get(params[name], {}).values():
            if isinstance(value, torch.Tensor) and value.shape == mask.shape:
                value[mask.to(value.device)] = 0
                zeroed += int(mask.sum())
    return zeroed
