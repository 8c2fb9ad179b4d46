"""Recycle units (ReDo, Sokar et al. 2023; continual backprop, Dohare et al. 2024) without changing the output.

For each unit: new incoming weights from the layer's default initialiser (nn.Linear / nn.ConvNd
``reset_parameters``: kaiming_uniform(a=sqrt(5)), i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in))), bias 0, a feeding
per-channel norm reset (gamma 1, beta 0, running mean 0, running var 1), and zero outgoing weights in every consumer,
so the unit contributes nothing until training gives it outgoing weights again. A dying unit first has its mean
activation times its outgoing weights folded into the consumer's bias (continual backprop's ``gnt.py``).

Everything is computed as :mod:`~relu_doctor.repair.edits`, so ``fix`` and the scan's simulation apply the same
numbers: the simulation's predicted recycle is the fix's.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence

import torch
from torch import nn

from .edits import Edits, StateEdits
from .plan import Consumer, SitePlan

DEFAULT_SEED = 0
"""Seed of the generator drawing new incoming weights when none is given (``fix --seed``'s default)."""
MAX_REDRAWS = 8
"""Rounds of re-drawing recycled units that still never fire on the probe (a draw can miss every probe input)."""

SilentUnits = Callable[[Edits], Sequence[tuple[SitePlan, Sequence[int]]]]
"""Given the edits so far: (plan, units) among the planned units that still never fire on the probe."""


def recycle_until_alive(
    model: nn.Module, plans: Sequence[SitePlan], generator: torch.Generator, silent: SilentUnits
) -> tuple[Edits, dict[str, int]]:
    """Edits recycling every plan, re-drawing units ``silent`` finds still dead; also extra draws per site.

    ``silent`` is always last called on the returned edits, so a caller measuring there measures the result.
    """
    state = StateEdits(model)
    for plan in plans:
        recycle_plan(state, plan, generator)
    redraws: Counter[str] = Counter()
    for round_ in range(MAX_REDRAWS + 1):
        still_dead = silent(state.edits)
        if not still_dead or round_ == MAX_REDRAWS:
            break
        for plan, units in still_dead:
            redraw_incoming(state, plan, units, generator)
            redraws[plan.site.name] += len(units)
    return state.edits, dict(redraws)


def recycle_plan(state: StateEdits, plan: SitePlan, generator: torch.Generator) -> None:
    """Fold dying units' means, zero every planned unit's outgoing weights, then draw its incoming weights."""
    for consumer in plan.consumers:
        for unit in plan.dying:
            fold_mean(state, consumer, unit, mean_activation(plan, unit))
        for unit in plan.units:
            zero_outgoing(state, consumer, unit)
    redraw_incoming(state, plan, plan.units, generator)


def mean_activation(plan: SitePlan, unit: int) -> float:
    """The unit's activation averaged over every probe position."""
    counters = plan.site.counters
    return counters.activation_sum[unit] / counters.positions if counters.positions else 0.0


def redraw_incoming(state: StateEdits, plan: SitePlan, units: Sequence[int], generator: torch.Generator) -> None:
    """New incoming weights for ``units``, bias 0, and the feeding norm channel reset."""
    weight = state.tensor(plan.producer, "weight")
    has_bias = isinstance(getattr(state.modules[plan.producer], "bias", None), torch.Tensor)
    bound = 1.0 / math.sqrt(max(weight[0].numel(), 1))  # kaiming_uniform(a=sqrt(5)) on fan_in = in/groups * kernel
    for unit in units:
        fresh = torch.empty(weight.shape[1:], dtype=torch.float32).uniform_(-bound, bound, generator=generator)
        weight[unit] = fresh.to(weight.device, weight.dtype)
        if has_bias:
            state.tensor(plan.producer, "bias")[unit] = 0
    if plan.norm is not None:
        reset_norm_channels(state, plan.norm, units)


def reset_norm_channels(state: StateEdits, norm_path: str, units: Sequence[int]) -> None:
    """gamma 1, beta 0, running mean 0, running var 1 for ``units`` of a BatchNorm / InstanceNorm."""
    norm, index = state.modules[norm_path], list(units)
    for name, value in (("weight", 1.0), ("bias", 0.0), ("running_mean", 0.0), ("running_var", 1.0)):
        if isinstance(getattr(norm, name, None), torch.Tensor):
            state.tensor(norm_path, name)[index] = value


def input_slots(layer: nn.Module, consumer: Consumer, unit: int) -> tuple[slice, slice]:
    """(output rows, input columns) of ``layer.weight`` that carry ``unit`` into the consumer."""
    if isinstance(layer, nn.Linear):
        return slice(None), slice(unit * consumer.block, (unit + 1) * consumer.block)
    assert isinstance(layer, nn.modules.conv._ConvNd)
    per_group_in = layer.weight.shape[1]
    group, column = divmod(unit, per_group_in)
    per_group_out = layer.out_channels // layer.groups
    return slice(group * per_group_out, (group + 1) * per_group_out), slice(column, column + 1)


def zero_outgoing(state: StateEdits, consumer: Consumer, unit: int) -> None:
    """Zero the weights through which ``unit`` reaches the consumer."""
    rows, columns = input_slots(state.modules[consumer.module_path], consumer, unit)
    state.tensor(consumer.module_path, "weight")[rows, columns] = 0


def fold_mean(state: StateEdits, consumer: Consumer, unit: int, mean: float) -> None:
    """Add mean activation x outgoing weights to the consumer's bias, so zeroing them keeps the output on average."""
    rows, columns = input_slots(state.modules[consumer.module_path], consumer, unit)
    outgoing = state.tensor(consumer.module_path, "weight")[rows, columns]
    per_row = outgoing.reshape(outgoing.shape[0], -1).sum(dim=1, dtype=torch.float64)
    bias = state.tensor(consumer.module_path, "bias")
    bias[rows] += (per_row * mean).to(bias.dtype)
