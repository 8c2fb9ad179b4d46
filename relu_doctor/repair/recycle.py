"""Recycle units (ReDo, Sokar et al. 2023; continual backprop, Dohare et al. 2024) without changing the output.

For each unit: new incoming weights from the layer's default initialiser (nn.Linear / nn.ConvNd
``reset_parameters``: kaiming_uniform(a=sqrt(5)), i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in))), bias 0, a feeding
per-channel norm reset (gamma 1, beta 0, running mean 0, running var 1), and zero outgoing weights in every consumer,
so the unit contributes nothing until training gives it outgoing weights again. A dying unit first has its mean
activation times its outgoing weights folded into the consumer's bias (continual backprop's ``gnt.py``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from .plan import Consumer, SitePlan


@torch.no_grad()
def recycle(model: nn.Module, plans: Sequence[SitePlan], generator: torch.Generator) -> None:
    """Apply every plan to ``model`` in place, drawing new weights from ``generator`` in plan order."""
    modules = dict(model.named_modules())
    for plan in plans:
        for consumer in plan.consumers:
            layer = modules[consumer.module_path]
            for unit in plan.dying:
                fold_mean(layer, consumer, unit, mean_activation(plan, unit))
            for unit in plan.units:
                zero_outgoing(layer, consumer, unit)
        redraw_incoming(modules, plan, plan.units, generator)


def mean_activation(plan: SitePlan, unit: int) -> float:
    """The unit's activation averaged over every probe position."""
    counters = plan.site.counters
    return counters.activation_sum[unit] / counters.positions if counters.positions else 0.0


@torch.no_grad()
def redraw_incoming(
    modules: dict[str, nn.Module], plan: SitePlan, units: Sequence[int], generator: torch.Generator
) -> None:
    """New incoming weights for ``units``, bias 0, and the feeding norm channel reset."""
    layer = modules[plan.producer]
    weight = _weight(layer)
    bound = 1.0 / math.sqrt(max(weight[0].numel(), 1))  # kaiming_uniform(a=sqrt(5)) on fan_in = in/groups * kernel
    for unit in units:
        fresh = torch.empty(weight.shape[1:], dtype=torch.float32).uniform_(-bound, bound, generator=generator)
        weight[unit] = fresh.to(weight.device, weight.dtype)
        if isinstance(layer.bias, torch.Tensor):
            layer.bias[unit] = 0
    if plan.norm is not None:
        reset_norm_channels(modules[plan.norm], units)


@torch.no_grad()
def reset_norm_channels(norm: nn.Module, units: Sequence[int]) -> None:
    """gamma 1, beta 0, running mean 0, running var 1 for ``units`` of a BatchNorm / InstanceNorm."""
    index = list(units)
    for name, value in (("weight", 1.0), ("bias", 0.0), ("running_mean", 0.0), ("running_var", 1.0)):
        tensor = getattr(norm, name, None)
        if isinstance(tensor, torch.Tensor):
            tensor[index] = value


def input_slots(layer: nn.Module, consumer: Consumer, unit: int) -> tuple[slice, slice]:
    """(output rows, input columns) of ``layer.weight`` that carry ``unit`` into the consumer."""
    if isinstance(layer, nn.Linear):
        return slice(None), slice(unit * consumer.block, (unit + 1) * consumer.block)
    assert isinstance(layer, nn.modules.conv._ConvNd)
    per_group_in = layer.weight.shape[1]
    group, column = divmod(unit, per_group_in)
    per_group_out = layer.out_channels // layer.groups
    return slice(group * per_group_out, (group + 1) * per_group_out), slice(column, column + 1)


@torch.no_grad()
def zero_outgoing(layer: nn.Module, consumer: Consumer, unit: int) -> None:
    """Zero the weights through which ``unit`` reaches the consumer."""
    rows, columns = input_slots(layer, consumer, unit)
    _weight(layer)[rows, columns] = 0


@torch.no_grad()
def fold_mean(layer: nn.Module, consumer: Consumer, unit: int, mean: float) -> None:
    """Add mean activation x outgoing weights to the consumer's bias, so zeroing them keeps the output on average."""
    rows, columns = input_slots(layer, consumer, unit)
    outgoing = _weight(layer)[rows, columns]
    per_row = outgoing.reshape(outgoing.shape[0], -1).sum(dim=1, dtype=torch.float64)
    bias = layer.bias
    assert isinstance(bias, torch.Tensor)
    bias[rows] += (per_row * mean).to(bias.dtype)


def _weight(layer: nn.Module) -> torch.Tensor:
    weight = layer.weight
    assert isinstance(weight, torch.Tensor)
    return weight
