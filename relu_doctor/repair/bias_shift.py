"""Bias shift: raise each dead unit's bias so its largest pre-activation on the probe becomes a small margin.

With a norm between the producer and the relu, the norm's shift (beta) is raised instead: it is added after
normalisation, so the pre-activation moves by exactly the same amount. The output changes (the unit now fires);
the drift is measured and reported.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..diagnose import BIAS_MARGIN
from .plan import SitePlan


def required_shifts(plan: SitePlan, margin: float = BIAS_MARGIN) -> list[float]:
    """Per unit of the plan: margin - max pre-activation on the probe (> 0 for a dead unit)."""
    highest = plan.site.counters.max_preactivation
    return [margin - highest[u] for u in plan.units]


def shift_target(plan: SitePlan) -> str:
    """Module path whose bias is raised: the norm when there is one, else the producer."""
    return plan.norm or plan.producer


@torch.no_grad()
def bias_shift(model: nn.Module, plans: Sequence[SitePlan], margin: float = BIAS_MARGIN) -> None:
    """Raise the bias (or beta) of every planned unit in place."""
    modules = dict(model.named_modules())
    for plan in plans:
        bias = modules[shift_target(plan)].bias
        assert isinstance(bias, torch.Tensor)
        for unit, shift in zip(plan.units, required_shifts(plan, margin)):
            bias[unit] += shift
