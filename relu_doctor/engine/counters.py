"""Per-unit counters of one site: the only state kept per site. How a batch becomes counts is a reducer's job
(:mod:`relu_doctor.engine.reduce`); this class only stores, adds and merges them.

Counts and maxima merge exactly; sums are accumulated in float64 (float32 on devices without it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..report import UnitCounters


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

    def copy(self) -> UnitAccumulator:
        """An independent copy (to undo a pass)."""
        twin = UnitAccumulator.__new__(UnitAccumulator)
        twin.__dict__ = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in self.__dict__.items()}
        return twin

    def restore(self, saved: UnitAccumulator) -> None:
        """Put back the counters of ``saved`` (a :meth:`copy` of this accumulator) in this same object."""
        self.__dict__.update(saved.__dict__)

    def add(self, batch: BatchCounts) -> None:
        """Add the counts of one batch (or of several, already combined)."""
        self.positive += batch.samples_fired if batch.positive is None else batch.positive
        self.samples_fired += batch.samples_fired
        torch.maximum(self.max_preactivation, batch.max_preactivation, out=self.max_preactivation)
        self.activation_sum += batch.activation_sum
        if batch.nan is not None and batch.inf is not None:
            self.nan += batch.nan
            self.inf += batch.inf
        self.positions += batch.positions
        self.samples += batch.samples

    def merge(self, other: UnitAccumulator) -> None:
        """Add another accumulator of the same site (another batch, rank or saved file)."""
        if other.units != self.units:
            raise ValueError(f"cannot merge a site of {other.units} units into one of {self.units}")
        self.positive += other.positive.to(self.positive.device)
        self.samples_fired += other.samples_fired.to(self.samples_fired.device)
        self.max_preactivation = torch.maximum(
            self.max_preactivation, other.max_preactivation.to(self.max_preactivation.device)
        )
        self.activation_sum += other.activation_sum.to(self.activation_sum)
        self.nan += other.nan.to(self.nan.device)
        self.inf += other.inf.to(self.inf.device)
        self.positions += other.positions
        self.samples += other.samples

    def tensors(self) -> dict[str, torch.Tensor]:
        """The counters as named tensors (for all_reduce and --save-stats)."""
        return {
            "positive": self.positive,
            "samples_fired": self.samples_fired,
            "max_preactivation": self.max_preactivation,
            "activation_sum": self.activation_sum,
            "nan": self.nan,
            "inf": self.inf,
            "positions": torch.tensor(self.positions),
            "samples": torch.tensor(self.samples),
        }

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


@dataclass(frozen=True, slots=True)
class BatchCounts:
    """What one batch adds to a site's counters (per-unit tensors), as a reducer computed it."""

    samples_fired: torch.Tensor
    """Samples on which the unit fired at some position (int64)."""
    max_preactivation: torch.Tensor
    """The largest finite pre-activation (float32)."""
    activation_sum: torch.Tensor
    """Sum of the op's finite outputs."""
    positions: int
    """Positions per unit in the batch (padding excluded)."""
    samples: int
    """Samples in the batch."""
    positive: torch.Tensor | None = None
    """Positions at which the unit fired (None: ``samples_fired``, the batch has one position per sample)."""
    nan: torch.Tensor | None = None
    """NaN pre-activations per unit (None: the batch had no NaN and no infinity)."""
    inf: torch.Tensor | None = None
    """Infinite pre-activations per unit (None with ``nan``)."""
