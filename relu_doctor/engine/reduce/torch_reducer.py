"""The torch reducer: plain vectorised torch reductions, for every device, dtype and layout.

Speed: a site with positions (a conv map, a token sequence) costs a few reads of its activation on top of the op
(max per sample over positions, sign + sum for the positive count, sum of the output), each over a copy-free
(lead, units, trail) view. A short per-sample max (a 7x7 or 4x4 map) is a slow reduction in torch, so such a site
reads its unit maxima along the samples first and its fired samples from the output's per-sample signs
(:class:`_FewPositions`); a (samples, units, 1, 1) map is a one-position site (the observer views it so). A small
samples-first site with positions (up to MAP_SITE_ELEMENTS, a conv map of a small batch) is copied and reduced with
the others of its shape and layout at the end of the pass, as one-position sites are (below).
Counting through ``sign`` and a float32 sum is exact below 2**24 per partial sum and several times faster than
``count_nonzero`` (a bool reduction); longer reductions fall back to it. A site with one position per sample (a
linear layer's (samples, units) activation) keeps only a copy of its pre-activation during the pass; at the end of the pass the copies of all such sites of one shape are reduced together, a few
tensor calls for all of them rather than a dozen per site (a 200-layer MLP has 200 of them). A larger one is read
once for its finiteness and once for each unit's maximum, and its output gives the rest (with one position per
sample, the samples a unit fired on are the positions where its output is non-zero): no copy, no (samples, units)
temporary.

Counts add up to the site's counters only at :meth:`TorchReducer.end_pass`, so a pass cut short changes nothing.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Any

import torch

from ...activations import Member
from ..counters import BatchCounts, UnitAccumulator
from ..masking import Block, real_blocks

ROW_SITE_ELEMENTS = 1 << 16
"""A one-position site (samples, units) up to this size is copied into its group's buffer and reduced with the
others at the end of the pass (per-call torch overhead dominates such small sites); a larger one at once."""
ROW_GROUP_BYTES = 32 << 20
"""The most a group's buffer holds; a full buffer is reduced before the pass ends."""


class TorchReducer:
    """Reduces each call with torch operations; counts reach the counters at :meth:`end_pass`."""

    name = "torch"

    def __init__(self) -> None:
        self._pending: list[tuple[UnitAccumulator, BatchCounts]] = []
        self._group_counts: list[_GroupCounts] = []
        self._groups: dict[tuple[Any, ...], _RowGroup] = {}
        """(shape, dtype, device, member) -> the buffered one-position calls of that kind (buffers kept across
        passes: the next pass fills them again)."""
        self._blocks: tuple[torch.Tensor, list[Block] | None] | None = None
        """The last attention mask seen and its blocks of real tokens (every site of a pass shares the mask)."""

    def start_pass(self, *, undoable: bool = False) -> None:
        """Begin a pass (``undoable``: :meth:`undo_pass` may drop it; the torch reducer can always do that)."""
        self._pending.clear()
        self._group_counts.clear()
        for group in self._groups.values():
            group.clear()

    def before_op(
        self,
        counters: UnitAccumulator,
        pre: torch.Tensor,
        unit_axis: int,
        sample_axis: int | None,
        member: Member,
        mask: torch.Tensor | None = None,
    ) -> Any:
        """Read what the counters need from the pre-activation before the op runs (an in-place op overwrites it);
        returns what :meth:`after_op` needs (None when the op's output is not needed)."""
        if mask is not None:
            return self._before_masked(counters, pre, member, mask)
        if small_rows(pre, sample_axis):
            rows = pre if sample_axis == 0 else pre.t()
            key = (tuple(rows.shape), rows.dtype, rows.device, member)
            group = self._groups.get(key)
            if group is None:
                group = self._groups[key] = _RowGroup(rows, member)
            if group.add(counters, rows):
                self._group_counts.extend(group.reduce())
            return None
        if small_maps(pre, unit_axis, sample_axis):
            layout = (tuple(pre.shape), unit_axis, pre.dtype, pre.device, member)
            group = self._groups.get(layout)
            if group is None:
                group = self._groups[layout] = _MapGroup(pre, member, unit_axis)
            if group.add(counters, pre):
                self._group_counts.extend(group.reduce())
            return None
        if pre.dim() == 2 and sample_axis is not None:
            # One position per sample: a unit fired on a sample exactly where its output is non-zero, so the
            # output's count is the sample count too; only each unit's extremes are read here (no copy of pre).
            if not all_finite(pre):  # a whole-tensor aminmax: several times faster than one along the samples
                return ExactCall(counters, pre.clone(), unit_axis, sample_axis)
            return _Finite(counters, pre.amax(dim=sample_axis), unit_axis, pre.shape, per_sample=False)
        if sample_axis is not None and few_positions(pre, unit_axis, sample_axis):
            # A short per-sample max (a 7x7 or 4x4 map) is a slow reduction in torch: 1-2 ns per element, 20-50x a
            # long one. Read the unit maxima along the samples first, and the fired samples from the output.
            if not all_finite(pre):
                return ExactCall(counters, pre.clone(), unit_axis, sample_axis)
            return _FewPositions(counters, unit_maxima(pre, unit_axis), unit_axis, sample_axis, pre.shape)
        sample_max = reduce_sample_max(pre, unit_axis, sample_axis)
        if not all_finite(sample_max):
            return ExactCall(counters, pre.clone(), unit_axis, sample_axis)
        return _Finite(counters, sample_max, unit_axis, pre.shape)

    def _before_masked(self, counters: UnitAccumulator, pre: torch.Tensor, member: Member, mask: torch.Tensor) -> Any:
        """A (samples, positions, units) call with its attention mask: each block of real tokens goes through the
        unmasked path (fused kernels included), so padding costs no copy and no masked reduction; a mask with holes
        takes the exact masked path. Rows without a real token are no sample in either."""
        if self._blocks is None or self._blocks[0] is not mask:
            self._blocks = (mask, real_blocks(mask))
        blocks = self._blocks[1]
        if blocks is None:
            return _Masked(counters, pre.clone(), mask) if bool(mask.any()) else None
        parts = tuple((block, self.before_op(counters, _block_of(pre, block), 2, 0, member)) for block in blocks)
        return _Blocks(pre.shape, parts)

    def after_op(self, token: Any, output: torch.Tensor) -> None:
        """Count what needs the op's output (``token`` from :meth:`before_op`)."""
        if isinstance(token, _Blocks):
            tokens = output.reshape(token.shape)
            for block, part in token.parts:
                self.after_op(part, _block_of(tokens, block))
        elif token is not None:
            self._pending.append((token.counters, token.counts(output.detach())))

    def end_pass(self) -> None:
        """Add the pass's counts to the counters."""
        # Counters made inside a pass are inference tensors, writable only in inference mode; normal ones are too.
        with torch.inference_mode():
            for group in self._groups.values():
                self._group_counts.extend(group.reduce())
            for counters, counts in self._pending:
                counters.add(counts)
            for group_counts in self._group_counts:
                group_counts.add()
        self.start_pass()

    def undo_pass(self) -> None:
        """Forget the pass's counts: the counters stay as they were before it."""
        self.start_pass()


def small_rows(pre: torch.Tensor, sample_axis: int | None) -> bool:
    """True for a (samples, units) pre-activation small enough to be reduced with others of its shape."""
    return pre.dim() == 2 and sample_axis is not None and pre.numel() <= ROW_SITE_ELEMENTS


class _RowGroup:
    """Copies of the (samples, units) pre-activations of one-position sites of one shape, reduced all at once:
    a few tensor calls for every site of the group instead of a dozen per site (a 200-layer MLP has 200)."""

    def __init__(self, like: torch.Tensor, member: Member) -> None:
        self.member = member
        self.capacity = max(1, ROW_GROUP_BYTES // max(like.numel() * like.element_size(), 1))
        with torch.inference_mode(False):  # a normal tensor: writable inside and outside inference mode
            self.buffer = torch.empty((1, *like.shape), dtype=like.dtype, device=like.device)
        self.counters: list[UnitAccumulator] = []
        self.stores: list[_Store] = []
        """One per chunk of the pass (a pass fills the buffer ``capacity`` calls at a time)."""
        self._chunks = 0

    def clear(self) -> None:
        self.counters.clear()
        self._chunks = 0

    def add(self, counters: UnitAccumulator, rows: torch.Tensor) -> bool:
        """Copy one call in; True when the buffer is full (reduce it now)."""
        n = len(self.counters)
        if n == self.buffer.shape[0]:
            shape, dtype, device = self.buffer.shape, self.buffer.dtype, self.buffer.device
            with torch.inference_mode(False):
                grown = torch.empty((min(2 * n, self.capacity), *shape[1:]), dtype=dtype, device=device)
            grown[:n].copy_(self.buffer)
            self.buffer = grown
        self.buffer[n].copy_(rows)  # a copy: an in-place op runs right after this
        self.counters.append(counters)
        return len(self.counters) == self.capacity

    unit_axis = 1
    """Of each call in the buffer: (samples, units)."""

    def reduce(self) -> list[_GroupCounts]:
        """The counts of the calls copied in so far (the buffer is then free for the next ones)."""
        if not self.counters:
            return []
        stacked = self.buffer[: len(self.counters)]
        if not all_finite(stacked):
            member = self.member
            counts = [exact_counts(pre, member.activation(pre), self.unit_axis, 0) for pre in stacked]
            done = [_GroupCounts.per_site(list(zip(self.counters, counts)))]
        else:
            chunk = self._chunks
            self._chunks += 1
            if len(self.stores) <= chunk:
                self.stores.append(_Store())
            done = [_GroupCounts(list(self.counters), self.stores[chunk], *self._finite(stacked))]
        self.counters.clear()
        return done

    def _finite(self, stacked: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int, int]:
        """(fired samples, positions fired, maxima, sums) per (site, unit), samples and positions per sample of the
        finite stacked calls; the buffer is overwritten."""
        maxima = stacked.amax(dim=1).float()
        activation = self.member.activation(stacked, in_place=True)  # the buffer is ours
        sums = activation.sum(dim=1, dtype=torch.float32)
        # a member's output is non-zero exactly where its unit fires: sign() is 1 there, 0 elsewhere
        fired = _count_nonzero(activation.sign_(), dim=1)
        return fired, fired, maxima, sums, stacked.shape[1], 1


MAP_SITE_ELEMENTS = 1 << 18
"""A samples-first site with positions (a conv map, a token sequence) up to this size is copied into its group's
buffer and reduced with the others of its shape at the end of the pass: such a call costs about 30 tensor calls
when reduced alone, 150-300 us on a CPU whatever its size."""


def small_maps(pre: torch.Tensor, unit_axis: int, sample_axis: int | None) -> bool:
    """True for a (samples, units, positions...) or (samples, positions..., units) pre-activation small enough to be
    reduced with others of its shape."""
    return (
        sample_axis == 0 and pre.dim() >= 3 and unit_axis in (1, pre.dim() - 1) and 0 < pre.numel() <= MAP_SITE_ELEMENTS
    )


class _MapGroup(_RowGroup):
    """Copies of the pre-activations of small samples-first sites with positions, of one shape and layout, reduced
    all at once (as :class:`_RowGroup` does for one-position sites)."""

    def __init__(self, like: torch.Tensor, member: Member, unit_axis: int) -> None:
        super().__init__(like, member)
        self.unit_axis = unit_axis

    def _maps(self, stacked: torch.Tensor) -> torch.Tensor:
        """(sites, samples, units, positions) or (sites, samples, positions, units) view of the stacked calls, as
        they lie in memory (a transposed view made the reductions over it up to 50x slower)."""
        sites, samples = stacked.shape[0], stacked.shape[1]
        if self.unit_axis == 1:
            return stacked.reshape(sites, samples, stacked.shape[2], -1)
        return stacked.reshape(sites, samples, -1, stacked.shape[-1])

    def _finite(self, stacked: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int, int]:
        maps = self._maps(stacked)
        along = 3 if self.unit_axis == 1 else 2  # the positions axis of the maps
        # along the samples first (a long reduction), then the few positions of each unit
        maxima = maps.amax(dim=1).amax(dim=along - 1).float()
        activation = self._maps(self.member.activation(stacked, in_place=True))  # the buffer is ours
        sums = activation.sum(dim=(1, along), dtype=torch.float32)
        # a member's output is non-zero exactly where its unit fires: sign() is 1 there, 0 elsewhere; each site's
        # counts stay below MAP_SITE_ELEMENTS < 2**24, exact in float32
        per_sample = activation.sign_().sum(dim=along, dtype=torch.float32)  # (sites, samples, units)
        positive = per_sample.sum(dim=1).to(torch.int64)
        return _count_positive(per_sample, dim=1), positive, maxima, sums, maps.shape[1], maps.shape[along]


class _Store:
    """The counters of the sites of one chunk of a group as rows of (sites, units) tensors: each site's counters
    are views of its row, so a pass adds to every site in four tensor calls. Re-made whenever the chunk's sites
    or their tensors change (a new site, counters replaced by a merge or an all-reduce)."""

    def __init__(self) -> None:
        self.counters: list[UnitAccumulator] = []
        self.views: list[tuple[torch.Tensor, ...]] = []
        self.tensors: tuple[torch.Tensor, ...] = ()

    def holds(self, counters: list[UnitAccumulator]) -> bool:
        return len(counters) == len(self.counters) and all(
            a is b and _fields(a) == tuple(map(id, views)) for a, b, views in zip(counters, self.counters, self.views)
        )

    def adopt(self, counters: list[UnitAccumulator]) -> None:
        with torch.inference_mode(False):  # normal tensors: writable inside and outside inference mode
            self.tensors = tuple(torch.stack([getattr(c, name) for c in counters]) for name in _STORED)
        self.counters = list(counters)
        self.views = []
        for k, acc in enumerate(counters):
            views = tuple(t[k] for t in self.tensors)
            for name, view in zip(_STORED, views):
                setattr(acc, name, view)
            self.views.append(views)


_STORED = ("positive", "samples_fired", "max_preactivation", "activation_sum")


def _fields(counters: UnitAccumulator) -> tuple[int, ...]:
    return tuple(id(getattr(counters, name)) for name in _STORED)


class _GroupCounts:
    """What one reduced chunk of a group adds: (sites, units) tensors, added through the chunk's store."""

    def __init__(
        self,
        counters: list[UnitAccumulator],
        store: _Store | None,
        fired: torch.Tensor | None,
        positive: torch.Tensor | None,
        maxima: torch.Tensor | None,
        sums: torch.Tensor | None,
        samples: int,
        positions: int,
    ) -> None:
        self.counters, self.store, self.fired, self.maxima, self.sums = counters, store, fired, maxima, sums
        self.positive = positive
        """Positions fired (sites, units); with one position per sample, the samples fired."""
        self.samples, self.positions = samples, positions
        """Samples, and positions per sample."""
        self.each: list[tuple[UnitAccumulator, BatchCounts]] = []

    @classmethod
    def per_site(cls, each: list[tuple[UnitAccumulator, BatchCounts]]) -> _GroupCounts:
        counts = cls([], None, None, None, None, None, 0, 1)
        counts.each = each
        return counts

    def add(self) -> None:
        for counters, batch in self.each:
            counters.add(batch)
        if (
            self.store is None
            or self.fired is None
            or self.positive is None
            or self.maxima is None
            or self.sums is None
        ):
            return
        if not self.store.holds(self.counters):
            self.store.adopt(self.counters)
        positive, fired, highest, total = self.store.tensors
        positive += self.positive
        fired += self.fired
        torch.maximum(highest, self.maxima, out=highest)
        total += self.sums
        for counters in self.counters:
            counters.positions += self.samples * self.positions
            counters.samples += self.samples


def _count_nonzero(signs: torch.Tensor, dim: int) -> torch.Tensor:
    """Per unit, the number of ones in a tensor of 0s and 1s along ``dim`` (exact through a float32 sum)."""
    if signs.shape[dim] >= EXACT_FLOAT32_COUNT:
        return (signs != 0).sum(dim=dim)
    return signs.sum(dim=dim, dtype=torch.float32).to(torch.int64)


@dataclass(frozen=True)
class _Finite:
    """A call whose pre-activation is finite, waiting for the op's output: its (samples, units) per-sample maxima,
    or, for a (samples, units) call with one position per sample (``per_sample=False``), its per-unit maxima only."""

    counters: UnitAccumulator
    maxima: torch.Tensor
    unit_axis: int
    shape: torch.Size
    per_sample: bool = True

    def counts(self, output: torch.Tensor) -> BatchCounts:
        # Every member's output is non-zero exactly where the unit fires, so the output gives the counts.
        positive, total = count_and_sum(output.reshape(self.shape), self.unit_axis)
        if not self.per_sample:  # one position per sample: the fired positions are the fired samples
            samples = self.shape[1 - self.unit_axis]
            return BatchCounts(positive, self.maxima.float(), total, samples, samples)
        return BatchCounts(
            _count_positive(self.maxima, dim=0),
            self.maxima.amax(dim=0).float(),
            total,
            output.numel() // max(self.counters.units, 1),
            self.maxima.shape[0],
            positive=positive,
        )


FEW_POSITIONS = 64
"""A sample with fewer positions per unit than this (and more than one) takes :class:`_FewPositions`. Measured,
one CPU thread, per-sample max over the positions vs the unit maxima taken along the samples first plus a
whole-tensor finiteness check: (16, 512, 4x4) 226 vs 52 us, (256, 64, 7x7) 458 vs 192 us; (16, 256, 8x8) 28 us
either way."""


def few_positions(pre: torch.Tensor, unit_axis: int, sample_axis: int) -> bool:
    """True for a call with 2 to FEW_POSITIONS - 1 positions per sample and unit, its samples the outermost axis in
    memory and its units right after them (NCHW, NCL): each sample's positions of a unit lie side by side."""
    if pre.dim() < 3 or sample_axis != 0 or unit_axis != 1 or not len(pre) or not pre.is_contiguous():
        return False
    return 1 < math.prod(pre.shape[2:]) < FEW_POSITIONS


def unit_maxima(pre: torch.Tensor, unit_axis: int) -> torch.Tensor:
    """(units,) max over every other axis of a contiguous (samples, units, positions...) tensor, along the samples
    first (a long reduction), then along each unit's few positions."""
    samples, units = pre.shape[0], pre.shape[unit_axis]
    return pre.reshape(samples, -1).amax(dim=0).view(units, -1).amax(dim=1)


@dataclass(frozen=True)
class _FewPositions:
    """A finite call with a few positions per sample (:func:`few_positions`), waiting for the op's output: its unit
    maxima are read; the samples a unit fired on are those where its output has a non-zero position."""

    counters: UnitAccumulator
    maxima: torch.Tensor
    unit_axis: int
    sample_axis: int
    shape: torch.Size

    def counts(self, output: torch.Tensor) -> BatchCounts:
        out = output.reshape(self.shape)
        samples, units = self.shape[0], self.shape[1]
        rows = out.view(samples, units, -1) if out.is_contiguous() else out.reshape(samples, units, -1)
        # relu-family outputs are >= 0: sign() is 1 exactly where the unit fired. A sample's count of a unit is
        # exact in float32 (fewer than FEW_POSITIONS terms), and so is a chunk's sum of them (under 2**24).
        step = max(1, CHUNK_ELEMENTS // max(out.numel() // samples, 1))
        positive = torch.zeros(units, dtype=torch.int64, device=out.device)
        fired = torch.zeros(units, dtype=torch.int64, device=out.device)
        for start in range(0, samples, step):
            part = rows[start : start + step]
            per_sample = torch.sign(part, out=_scratch(part)).sum(dim=2, dtype=torch.float32)
            positive += per_sample.sum(dim=0).to(torch.int64)
            fired += _count_positive(per_sample, dim=0)
        total = rows.sum(dim=2, dtype=torch.float32).sum(dim=0)
        return BatchCounts(fired, self.maxima.float(), total, out.numel() // max(units, 1), samples, positive=positive)


@dataclass(frozen=True)
class ExactCall:
    """A copy of a pre-activation holding NaN or Inf: the slow path that keeps them out of every other counter."""

    counters: UnitAccumulator
    pre: torch.Tensor
    unit_axis: int
    sample_axis: int | None

    def counts(self, output: torch.Tensor) -> BatchCounts:
        return exact_counts(self.pre, output.reshape(self.pre.shape), self.unit_axis, self.sample_axis)


def exact_counts(pre: torch.Tensor, activation: torch.Tensor, unit_axis: int, sample_axis: int | None) -> BatchCounts:
    """The counts of a call holding NaN or Inf: those go to their own counters and nowhere else."""
    other = [d for d in range(pre.dim()) if d != unit_axis]
    finite = torch.isfinite(pre)
    sample_max = reduce_sample_max(torch.where(finite, pre, -math.inf), unit_axis, sample_axis)
    return BatchCounts(
        _count_positive(sample_max, dim=0),
        sample_max.amax(dim=0).float(),
        torch.where(finite, activation, 0).sum(dim=other, dtype=torch.float32),
        pre.numel() // max(pre.shape[unit_axis], 1),
        sample_max.shape[0],
        positive=((pre > 0) & finite).sum(dim=other),
        nan=torch.isnan(pre).sum(dim=other),
        inf=torch.isinf(pre).sum(dim=other),
    )


def _block_of(tokens: torch.Tensor, block: Block) -> torch.Tensor:
    """The (rows, positions, units) view of one block of real tokens (no copy)."""
    first_row, row_stop, first_position, position_stop = block
    return tokens[first_row:row_stop, first_position:position_stop]


@dataclass(frozen=True)
class _Blocks:
    """A masked call read block by block: what each block of real tokens needs from the op's output."""

    shape: torch.Size
    """(samples, positions, units) of the call."""
    parts: tuple[tuple[Block, Any], ...]
    """Each block of real tokens and its unmasked call's token."""


@dataclass(frozen=True)
class _Masked:
    """A copy of a (samples, positions, units) pre-activation, counted at real tokens of the attention mask only:
    padded positions add to no counter (not the positions, the firing counts, the sums, the maxima, NaN/Inf)."""

    counters: UnitAccumulator
    pre: torch.Tensor
    mask: torch.Tensor
    """(samples, positions), True at real tokens."""

    def counts(self, output: torch.Tensor) -> BatchCounts:
        rows = self.mask.bool().any(dim=1).to(self.pre.device)  # a row without a real token is no sample
        pre = self.pre[rows]
        activation = output.reshape(self.pre.shape)[rows]
        keep = self.mask.to(pre.device)[rows].unsqueeze(-1)
        finite = torch.isfinite(pre)
        real = keep & finite
        sample_max = torch.where(real, pre, -math.inf).amax(dim=1)
        return BatchCounts(
            _count_positive(sample_max, dim=0),
            sample_max.amax(dim=0).float(),
            torch.where(real, activation, 0).sum(dim=(0, 1), dtype=torch.float32),
            int(keep.sum()),
            sample_max.shape[0],
            positive=((pre > 0) & real).sum(dim=(0, 1)),
            nan=(torch.isnan(pre) & keep).sum(dim=(0, 1)),
            inf=(torch.isinf(pre) & keep).sum(dim=(0, 1)),
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
    # A chunk's count is summed in float32 (exact: a chunk has fewer than 2**24 elements per unit), in the order
    # of :func:`_summed`. One chunk for most sites: no zeros, no slicing (a small site spends more on calls than on
    # arithmetic).
    lead, units, trail = blocks.shape
    step = max(1, CHUNK_ELEMENTS // max(units * trail, 1))
    if lead <= step:  # one chunk (most sites): no slicing
        return _summed(torch.sign(blocks, out=_scratch(blocks))).to(torch.int64), _summed(blocks)
    counts = torch.zeros(units, dtype=torch.int64, device=output.device)
    for start in range(0, lead, step):
        part = blocks[start : start + step]
        # relu-family outputs are >= 0, so sign() is 1 exactly where the output is non-zero.
        counts += _summed(torch.sign(part, out=_scratch(part))).to(torch.int64)
    return counts, _summed(blocks)


OUTER_FIRST_TRAIL = 64
"""Below this many trailing positions a (lead, units, trail) view is summed along the lead axis first (a reduction
vectorised across units x trail), then along the short trail; from it on along the trail first. Measured on one
CPU thread: (16, 512, 16) 16 vs 40 us, (256, 64, 49) 58 vs 96 us, (1280, 128, 1) 10 vs 73 us (a size-1 axis reduced
first is a copy); (16, 256, 64) 40 vs 27 us, (16, 64, 1024) 93 vs 61 us."""


def _summed(blocks: torch.Tensor) -> torch.Tensor:
    """The float32 sum per unit of a (lead, units, trail) view."""
    if blocks.shape[2] == 1:
        return blocks.sum(dim=(0, 2), dtype=torch.float32)
    if blocks.shape[2] < OUTER_FIRST_TRAIL:
        return blocks.sum(dim=0, dtype=torch.float32).sum(dim=1)
    return blocks.sum(dim=2, dtype=torch.float32).sum(dim=0)


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


def _count_positive(sample_max: torch.Tensor, dim: int) -> torch.Tensor:
    """Per unit, how many entries along ``dim`` are > 0 (sign of the clamp: faster than a bool sum)."""
    if sample_max.shape[dim] >= EXACT_FLOAT32_COUNT:
        return (sample_max > 0).sum(dim=dim)
    return torch.sign(sample_max.clamp(min=0)).sum(dim=dim, dtype=torch.float32).to(torch.int64)


def all_finite(tensor: torch.Tensor) -> bool:
    """True when no element is NaN or infinite: one min/max pass (``isfinite().all()`` is a slow bool reduction)."""
    if tensor.numel() == 0:
        return True
    low, high = torch.aminmax(tensor)
    return math.isfinite(float(low)) and math.isfinite(float(high))
