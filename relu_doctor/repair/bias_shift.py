"""Bias shift: raise each dead unit's bias so its largest pre-activation on the probe becomes a small margin.

With a norm between the producer and the relu, the norm's shift (beta) is raised instead: it is added after
normalisation, so the pre-activation moves by exactly the same amount. The output changes (the unit now fires);
the drift is measured and reported.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..analysis.diagnose import BIAS_MARGIN
from .edits import Edits, StateEdits, apply_edits
from .plan import SitePlan


def required_shifts(plan: SitePlan, margin: float = BIAS_MARGIN) -> list[float]:
    """Per unit of the plan: margin - max pre-activation on the probe (> 0 for a dead unit)."""
    highest = plan.site.counters.max_preactivation
    return [margin - highest[u] for u in plan.units]


def shift_target(plan: SitePlan) -> str:
    """Module path whose bias is raised: the norm when there is one, else the producer."""
    return plan.norm or plan.producer


def bias_shift_edits(model: nn.Module, plans: Sequence[SitePlan], margin: float = BIAS_MARGIN) -> Edits:
    """The raised bias (or beta) of every planned unit, as edits of ``model``."""
    state = StateEdits(model)
    for plan in plans:
        bias = state.tensor(shift_target(plan), "bias")
        shifts = required_shifts(plan, margin)
        if bias.dtype in (torch.float32, torch.float64):  # one indexed add: the same float as one unit at a time
            bias[list(plan.units)] += torch.tensor(shifts, dtype=bias.dtype, device=bias.device)
            continue
        for unit, shift in zip(plan.units, shifts):  # other dtypes round a Python float their own way
            bias[unit] += shift
    return state.edits


def bias_shift(model: nn.Module, plans: Sequence[SitePlan], margin: float = BIAS_MARGIN) -> None:
    """Raise the bias (or beta) of every planned unit in place."""
    apply_edits(model, bias_shift_edits(model, plans, margin))
