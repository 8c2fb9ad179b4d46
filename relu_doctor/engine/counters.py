"""Per-unit counters of one site: the only place that reduces activations, and the only state kept per site.

Each batch is reduced to a handful of per-unit vectors inside the hook; activations are never kept.
Counts and maxima merge exactly; sums are accumulated in float64 (float32 on devices without it).

Speed: a site costs a few reads of its activation on top of the relu itself (max per sample over positions,
sign + sum for the positive count, sum of the output), each a plain vectorised reduction over a copy-free
(lead, units, trail) view. Counting through ``sign`` and a float32 sum is exact below 2**24 per partial sum
and several times faster than ``count_nonzero`` (a bool reduction); longer reductions fall back to it.
"""

from __future__ import annotations

import math
import threading

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

    def add_finite(self, sample_max: torch.Tensor, output: torch.Tensor, unit_axis: int) -> None:
        """Count one batch whose pre-activations are all finite (activations have >= 2 axes).

        ``sample_max`` is the (samples, units) max of the pre-activation over positions; ``output`` is the
        op's result, whose non-zeros are exactly the positive pre-activations for every relu-family op.
        """
        positive, total = count_and_sum(output, unit_axis)
        self.positive += positive
        self.activation_sum += total
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

    def add_masked(self, pre: torch.Tensor, activation: torch.Tensor, mask: torch.Tensor) -> None:
        """Count one batch of (samples, positions, units) pre-activations and outputs at real tokens only.

        ``mask`` is (samples, positions), True at real tokens: padded positions add to no counter (not the
        positions, the firing counts, the sums, the per-sample maxima nor the NaN/Inf counts)."""
        keep = mask.to(pre.device).unsqueeze(-1)
        finite = torch.isfinite(pre)
        real = keep & finite
        self.nan += (torch.isnan(pre) & keep).sum(dim=(0, 1))
        self.inf += (torch.isinf(pre) & keep).sum(dim=(0, 1))
        self.positive += ((pre > 0) & real).sum(dim=(0, 1))
        self.activation_sum += torch.where(real, activation, 0).sum(dim=(0, 1), dtype=torch.float32)
        self._add_sample_max(torch.where(real, pre, -math.inf).amax(dim=1))
        self.positions += int(keep.sum())

    def _add_sample_max(self, sample_max: torch.Tensor) -> None:
        # sample_max is (samples, units); one row per independent probe sample.
        self.max_preactivation = torch.maximum(self.max_preactivation, sample_max.amax(dim=0).float())
        self.samples_fired += _count_positive_rows(sample_max)
        self.samples += sample_max.shape[0]

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


def reduce_sample_max(pre: torch.Tensor, unit_axis: int, sample_axis: int | None) -> torch.Tensor:
    """(samples, units) max of the pre-activation over every other axis.

    Without a sample axis the whole tensor counts as one sample: fewer trials, so a wider (honest) bound.
    """
    if sample_axis is None:
        other = [d for d in range(pre.dim()) if d != unit_axis]
        return (pre.amax(dim=other) if other else pre.clone()).unsqueeze(0)
    positions = [d for d in range(pre.dim()) if d not in (unit_axis, sample_axis)]
    # A copy, never a view: an in-place relu runs right after this and would overwrite an alias.
    reduced = pre.amax(dim=positions) if positions else pre.clone()
    # After reducing, the two kept axes stay in their original order.
    return reduced if sample_axis < unit_axis else reduced.transpose(0, 1)


EXACT_FLOAT32_COUNT = 1 << 24
"""float32 holds every integer up to 2**24: a count summed in float32 over fewer terms than this is exact."""

CHUNK_ELEMENTS = 1 << 20
"""The sign temporary covers this many elements at a time (one reused buffer, :func:`_scratch`), so a site needs
no second activation-sized buffer."""


def count_and_sum(output: torch.Tensor, unit_axis: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(non-zero count per unit as int64, float32 sum per unit) of a relu-family output, without copying it."""
    blocks = unit_blocks(output, unit_axis)
    if blocks is None or blocks.shape[0] >= EXACT_FLOAT32_COUNT or blocks.shape[2] >= EXACT_FLOAT32_COUNT:
        other = [d for d in range(output.dim()) if d != unit_axis]
        return torch.count_nonzero(output, dim=other), output.sum(dim=other, dtype=torch.float32)
    if blocks.shape[2] == 1:
        return _count_and_sum_rows(blocks[:, :, 0])
    step = max(1, CHUNK_ELEMENTS // max(blocks[0].numel(), 1))
    counts = torch.zeros(blocks.shape[1], dtype=torch.int64, device=output.device)
    for start in range(0, blocks.shape[0], step):
        part = blocks[start : start + step]
        # relu-family outputs are >= 0, so sign() is 1 exactly where the output is non-zero.
        counts += torch.sign(part, out=_scratch(part)).sum(dim=2, dtype=torch.float32).to(torch.int64).sum(dim=0)
    return counts, blocks.sum(dim=2, dtype=torch.float32).sum(dim=0)


def _count_and_sum_rows(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Count and sum over the rows of a (positions, units) output (feature-last sites)."""
    step = max(1, CHUNK_ELEMENTS // max(rows.shape[1], 1))
    counts = torch.zeros(rows.shape[1], dtype=torch.int64, device=rows.device)
    for start in range(0, rows.shape[0], step):
        part = rows[start : start + step]
        counts += torch.sign(part, out=_scratch(part)).sum(dim=0, dtype=torch.float32).to(torch.int64)
    return counts, rows.sum(dim=0, dtype=torch.float32)


_scratch_buffers = threading.local()


def _scratch(like: torch.Tensor) -> torch.Tensor | None:
    """A reused buffer shaped like ``like`` for the sign temporary (a fresh multi-MiB tensor per chunk costs
    page faults on every allocation), one of CHUNK_ELEMENTS per thread, device and dtype; None (allocate) for a
    chunk larger than that, so no bigger buffer outlives the call."""
    if like.numel() > CHUNK_ELEMENTS:
        return None
    buffers = getattr(_scratch_buffers, "by_kind", None)
    if buffers is None:
        buffers = _scratch_buffers.by_kind = {}
    key = (like.device, like.dtype)
    buffer = buffers.get(key)
    if buffer is None:
        with torch.inference_mode(False):  # a normal tensor: writable inside and outside inference mode
            buffer = buffers[key] = torch.empty(CHUNK_ELEMENTS, dtype=like.dtype, device=like.device)
    return buffer[: like.numel()].view(like.shape)


def unit_blocks(tensor: torch.Tensor, unit_axis: int) -> torch.Tensor | None:
    """A (lead, units, trail) view of ``tensor`` that reads memory in order; None when no such view exists.

    Axes are put in memory order first, so channels-last and sequence-first tensors need no copy either.
    """
    strides = tensor.stride()
    order = sorted(range(tensor.dim()), key=lambda d: (-strides[d], d))
    ordered = tensor.permute(order)
    if not ordered.is_contiguous():
        return None
    k = order.index(unit_axis)
    lead, trail = math.prod(ordered.shape[:k]), math.prod(ordered.shape[k + 1 :])
    return ordered.view(lead, tensor.shape[unit_axis], trail)


def _count_positive_rows(sample_max: torch.Tensor) -> torch.Tensor:
    """Per unit, how many rows of a (samples, units) tensor are > 0 (sign of the clamp: faster than a bool sum)."""
    if sample_max.shape[0] >= EXACT_FLOAT32_COUNT:
        return (sample_max > 0).sum(dim=0)
    return torch.sign(sample_max.clamp(min=0)).sum(dim=0, dtype=torch.float32).to(torch.int64)


def all_finite(tensor: torch.Tensor) -> bool:
    """True when no element is NaN or infinite: one min/max pass (``isfinite().all()`` is a slow bool reduction)."""
    if tensor.numel() == 0:
        return True
    low, high = torch.aminmax(tensor)
    return math.isfinite(float(low)) and math.isfinite(float(high))
