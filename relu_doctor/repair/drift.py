"""Output drift: how far a changed model's output moved from the original's, over the probe."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_flatten

from ..engine.batches import call_arguments
from ..engine.masking import batch_mask, real_positions
from ..engine.model_state import evaluating
from .records import Drift


class DriftMeter:
    """Accumulates max |after - before| and the two sums of squares behind the relative L2 drift."""

    def __init__(self) -> None:
        self.max_abs = 0.0
        self.diff_squares = 0.0
        self.reference_squares = 0.0

    def add(self, before: torch.Tensor, after: torch.Tensor) -> None:
        """Count one batch; a NaN/Inf in one output but not the other is an infinite drift, in both is none."""
        if before.shape != after.shape:
            raise ValueError(f"outputs of shape {tuple(before.shape)} and {tuple(after.shape)} cannot be compared")
        before, after = before.double(), after.double()
        same = (before == after) | (torch.isnan(before) & torch.isnan(after))
        difference = torch.where(same, 0.0, after - before).nan_to_num(nan=math.inf, posinf=math.inf, neginf=math.inf)
        if difference.numel():
            self.max_abs = max(self.max_abs, float(difference.abs().max()))
        self.diff_squares += float(difference.square().sum())
        self.reference_squares += float(torch.where(torch.isfinite(before), before, 0.0).square().sum())

    def result(self) -> Drift:
        if self.reference_squares == 0.0:
            return Drift(self.max_abs, 0.0 if self.diff_squares == 0.0 else float("inf"))
        return Drift(self.max_abs, (self.diff_squares / self.reference_squares) ** 0.5)


def flat_output(model: nn.Module, batch: Any) -> torch.Tensor:
    """Every floating-point output element of one forward pass, as one flat float64 CPU tensor (a token batch's
    padded positions left out)."""
    args, kwargs = call_arguments(batch)
    with torch.inference_mode():
        return flat_floats(model(*args, **kwargs), batch_mask(batch))


def flat_floats(output: Any, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Every floating-point tensor of a model's output, as one flat float64 CPU tensor (what drift compares).

    ``mask``: a token batch's (samples, positions) attention mask; entries at padded positions are left out of
    every output that lines up with it (:func:`relu_doctor.engine.masking.real_positions`)."""
    leaves = [t for t in tree_flatten(output)[0] if isinstance(t, torch.Tensor) and t.is_floating_point()]
    if mask is not None:
        leaves = [real_positions(t.detach(), mask) for t in leaves]
    if not leaves:
        return torch.zeros(0, dtype=torch.float64)
    return torch.cat([t.detach().reshape(-1).double().cpu() for t in leaves])


def reference_outputs(model: nn.Module, batches: Iterable[Any]) -> list[torch.Tensor]:
    """The model's flat output for each batch, kept to compare repaired versions against."""
    with evaluating(model):
        return [flat_output(model, batch) for batch in batches]


def drift_against(reference: list[torch.Tensor], model: nn.Module, batches: Iterable[Any]) -> Drift:
    """Drift of ``model`` from outputs computed earlier on the same batches."""
    meter = DriftMeter()
    with evaluating(model):
        for before, batch in zip(reference, batches):
            meter.add(before, flat_output(model, batch))
    return meter.result()


def drift_between(before: nn.Module, after: nn.Module, batches: Iterable[Any]) -> Drift:
    """Drift of ``after`` from ``before``, batch by batch, keeping no outputs."""
    meter = DriftMeter()
    with evaluating(before), evaluating(after):
        for batch in batches:
            meter.add(flat_output(before, batch), flat_output(after, batch))
    return meter.result()
