"""Per-unit counters of one site: the only place that reduces activations, and the only state kept per site.

Each batch is reduced to a handful of per-unit vectors inside the hook; activations are never kept.
Counts and maxima merge exactly; sums are accumulated in float64 (float32 on devices without it).
"""

from __future__ import annotations

import math

import torch

from .report import UnitCounters


class UnitAccumulator:
    """Running per-unit counters of one site; ``merge`` combines two exactly (batches, ranks, files)."""

    def __init__(self, units: int, device: torch.device) -> None:
        wide = torch.float32 if device.type == "mps" else torch.float64
        self.units = units
        self.positive = torch.zeros(units, dtype=torch.int64, device=device)
        self.samples_fired = torch.zeros(units, dtype=torch.int64, device=device)
        self.max_preactivation = torch.full((units,), -math.inf, dtype=torch.float32, device=device)
        self.activation_sum = torch.zeros(units, dtype=wide, device=device)
        self.nan = torch.zeros(units, dtype=torch.int64, device=device)
        self.inf = torch.zeros(units, dtype=torch.int64, device=device)
        self.positions = 0
        self.samples = 0

    def add_finite(self, sample_max: torch.Tensor, output: torch.Tensor, unit_axis: int) -> None:
        """Count one batch whose pre-activations are all finite (activations have >= 2 axes).

        ``sample_max`` is the (samples, units) max of the pre-activation over positions; ``output`` is the
        op's result, whose non-zeros are exactly the positive pre-activations for every relu-family op.
        """
        other = [d for d in range(output.dim()) if d != unit_axis]
        self.positive += torch.count_nonzero(output, dim=other)
        self.activation_sum += output.sum(dim=other, dtype=torch.float32)
        self._add_sample_max(sample_max)
        self.positions += output.numel() // max(self.units, 1)

    def add_exact(self, pre: torch.Tensor, activation: torch.Tensor, unit_axis: int, sample_axis: int | None) -> None:
        """Count one batch that holds NaN or Inf: the slow path that keeps them out of every other counter."""
        other = [d for d in range(pre.dim()) if d != unit_axis]
        finite = torch.isfinite(pre)
        self.nan += torch.isnan(pre).sum(dim=other)
        self.inf += torch.isinf(pre).sum(dim=other)
        self.positive += ((pre > 0) & finite).sum(dim=other)
        self.activation_sum += torch.where(finite, activation, 0).sum(dim=other, dtype=torch.float32)
        masked = torch.where(finite, pre, -math.inf)
        self._add_sample_max(reduce_sample_max(masked, unit_axis, sample_axis))
        self.positions += pre.numel() // max(self.units, 1)

    def _add_sample_max(self, sample_max: torch.Tensor) -> None:
        # sample_max is (samples, units); one row per independent probe sample.
        self.max_preactivation = torch.maximum(self.max_preactivation, sample_max.amax(dim=0).float())
        self.samples_fired += (sample_max > 0).sum(dim=0)
        self.samples += sample_max.shape[0]

    def merge(self, other: UnitAccumulator) -> None:
        """Add another accumulator of the same site (another batch, rank or saved file)."""
        if other.units != self.units:
            raise ValueError(f"cannot merge a site of {other.units} units into one of {self.units}")
        self.positive += other.positive.to(self.positive.device)
        self.samples_fired += other.samples_fired.to(self.samples_fired.device)
        self.max_preactivation = torch.maximum(self.max_preactivation, other.max_preactivation.to(self.max_preactivation.device))
        self.activation_sum += other.activation_sum.to(self.activation_sum)
        self.nan += other.nan.to(self.nan.device)
        self.inf += other.inf.to(self.inf.device)
        self.positions += other.positions
        self.samples += other.samples

    def tensors(self) -> dict[str, torch.Tensor]:
        """The counters as named tensors (for all_reduce and --save-stats)."""
        return {
            "positive": self.positive, "samples_fired": self.samples_fired,
            "max_preactivation": self.max_preactivation, "activation_sum": self.activation_sum,
            "nan": self.nan, "inf": self.inf,
            "positions": torch.tensor(self.positions), "samples": torch.tensor(self.samples),
        }  # fmt: skip

    @classmethod
    def from_tensors(cls, data: dict[str, torch.Tensor]) -> UnitAccumulator:
        """Rebuild an accumulator from :meth:`tensors`."""
        acc = cls(int(data["positive"].numel()), torch.device("cpu"))
        for name in ("positive", "samples_fired", "max_preactivation", "activation_sum", "nan", "inf"):
            setattr(acc, name, data[name].clone().cpu())
        acc.positions, acc.samples = int(data["positions"]), int(data["samples"])
        return acc

    def snapshot(self) -> UnitCounters:
        """The counters as torch-free tuples."""
        return UnitCounters(
            positive=tuple(self.positive.tolist()),
            positions=self.positions,
            samples_fired=tuple(self.samples_fired.tolist()),
            samples=self.samples,
            max_preactivation=tuple(self.max_preactivation.tolist()),
            activation_sum=tuple(self.activation_sum.tolist()),
            nan=tuple(self.nan.tolist()),
            inf=tuple(self.inf.tolist()),
        )


def reduce_sample_max(pre: torch.Tensor, unit_axis: int, sample_axis: int | None) -> torch.Tensor:
    """(samples, units) max of the pre-activation over every other axis.

    Without a sample axis the whole tensor counts as one sample: fewer trials, so a wider (honest) bound.
    """
    if sample_axis is None:
        other = [d for d in range(pre.dim()) if d != unit_axis]
        return (pre.amax(dim=other) if other else pre).unsqueeze(0)
    positions = [d for d in range(pre.dim()) if d not in (unit_axis, sample_axis)]
    reduced = pre.amax(dim=positions) if positions else pre
    # After reducing, the two kept axes stay in their original order.
    return reduced if sample_axis < unit_axis else reduced.transpose(0, 1)
