"""The fused reducer: one pass over a site's pre-activation, compiled with numba (the optional ``fast`` extra).

The torch reducer (:mod:`relu_doctor.engine.reduce.torch_reducer`) reads each activation three to four times (per-sample max,
sign, two sums). This one reads it once and updates a site's counters directly: per-sample maxima (hence
samples fired and the largest pre-activation), the positive count and the activation sum. A batch holding a
NaN or an infinity changes nothing, and the caller takes the exact path, so non-finite values never reach these
counters (this also catches a -inf next to finite values, which the torch reducer's fast path does not).

Two kernels (:mod:`relu_doctor.engine.reduce._fused_kernels`), by the copy-free (lead, units, trail) view of
:func:`~relu_doctor.engine.reduce.torch_reducer.unit_blocks`: ``blocks`` for trail > 1 (channels-first maps: the inner loop runs along a unit's
positions) and ``rows`` for trail == 1 (feature-last activations: the inner loop runs across units). Counts and
maxima are exact, so they equal the torch reducer's; the float32 sums are added in another order, so activation
sums may differ from it in the last bits.

Used for float32 CPU tensors whose sample axis is a lead axis of that view. Loading numba and the compiled
kernels costs about 0.6 s and 120 MiB once per process (the very first compilation, a few seconds, is cached
under ``__pycache__`` or numba's user cache directory), so ``--reducer auto`` uses them only where the scan
has enough work left to win that back (:func:`worth_loading`); a scan of a small model never imports numba.
"""

from __future__ import annotations

import math
import weakref
from functools import cache
from typing import Any

import numpy as np
import torch

from ...activations import Member
from ..counters import UnitAccumulator
from .torch_reducer import ExactCall, TorchReducer, small_rows, unit_blocks

MIN_WORK = 500_000_000
"""Elements a scan must still reduce for ``auto`` to load numba: at about 1.3 ns saved per element (CNN, CPU)
that pays for loading numba and the cached kernels (about 0.6 s, 120 MiB) in a process that has not yet."""

_loaded = False
"""True once the kernels ran in this process: from then on ``auto`` costs nothing to use them."""


@cache
def available() -> bool:
    """True when numba imports (the ``fast`` extra is installed)."""
    try:
        import numba  # noqa: F401
    except Exception:  # an incompatible numba/numpy pair raises ImportError or worse; either way: not available
        return False
    return True


def suits(pre: torch.Tensor) -> bool:
    """True for a tensor the kernels read: float32 on the CPU, at least 2-D."""
    return pre.is_cpu and pre.dtype == torch.float32 and pre.dim() >= 2


def worth_loading(remaining_elements: int | None) -> bool:
    """``auto``'s choice: use the fused reducer when it is already loaded, or when numba is installed and the
    scan still has ``remaining_elements`` (None: unknown) to reduce, enough to pay for loading it."""
    if _loaded:
        return True
    return remaining_elements is not None and remaining_elements >= MIN_WORK and available()


def add_batch(
    counters: UnitAccumulator, pre: torch.Tensor, unit_axis: int, sample_axis: int | None, cap: float
) -> bool | None:
    """Reduce ``pre`` in one pass into ``counters``.

    Returns True when counted; False when ``pre`` holds a NaN or an infinity (``counters`` untouched: the caller
    takes the exact path); None when its layout does not allow the fused pass (the caller uses the torch reducer).
    ``cap`` is the op's upper clamp (6 for relu6 and hardtanh(0, 6), ``inf`` for relu and threshold(0, 0)): the
    activation sum is of ``min(max(x, 0), cap)``, the op's output.
    """
    layout = _layout(pre, unit_axis, sample_axis)
    if layout is None:
        return None
    order, shape, inner, samples = layout
    # numpy views, not torch ones: the per-call torch calls (permute, view, numpy) cost more than small kernels
    data = pre.numpy().transpose(order).reshape(shape)
    kernels = _kernels()
    kernel = kernels.blocks if len(shape) == 3 else kernels.rows
    finite = kernel(data, data.view(np.int32), inner, samples, cap, *_counter_arrays(counters))
    global _loaded
    _loaded = True
    if finite:
        counters.positions += pre.numel() // max(shape[1], 1)
        counters.samples += samples
    return bool(finite)


_Layout = tuple[tuple[int, ...], tuple[int, ...], int, int]
"""(axis order, kernel view shape, inner, samples) of one pre-activation layout: see :func:`_layout`."""
_LAYOUTS: dict[tuple[Any, ...], _Layout | None] = {}
"""Layouts already worked out, by (shape, strides, unit axis, sample axis): a pass meets the same few again."""
_MAX_LAYOUTS = 4096
_ARRAYS: weakref.WeakKeyDictionary[UnitAccumulator, tuple[tuple[torch.Tensor, ...], tuple[Any, ...]]] = (
    weakref.WeakKeyDictionary()
)
"""Each counters object's tensors and their numpy views (re-made when a counter tensor is replaced)."""


def _layout(pre: torch.Tensor, unit_axis: int, sample_axis: int | None) -> _Layout | None:
    """How the kernels read ``pre``: the axes in memory order, the (lead, units, trail) view of them (or (lead,
    units) when trail is 1) and the sample mapping of :func:`_sample_mapping`; None when the layout does not
    allow the fused pass. Worked out once per layout (:func:`unit_blocks` is the reference)."""
    key = (pre.shape, pre.stride(), unit_axis, sample_axis)
    if key in _LAYOUTS:
        return _LAYOUTS[key]
    blocks = unit_blocks(pre, unit_axis)
    mapping = None if blocks is None else _sample_mapping(pre, unit_axis, sample_axis)
    layout: _Layout | None = None
    if blocks is not None and mapping is not None:
        strides = pre.stride()
        order = tuple(sorted(range(pre.dim()), key=lambda d: (-strides[d], d)))
        lead, units, trail = blocks.shape
        layout = (order, (lead, units, trail) if trail > 1 else (lead, units), *mapping)
    if len(_LAYOUTS) >= _MAX_LAYOUTS:
        _LAYOUTS.clear()
    _LAYOUTS[key] = layout
    return layout


def _counter_arrays(counters: UnitAccumulator) -> tuple[Any, ...]:
    """numpy views of the counters the kernels add to: positive, samples fired, maxima, activation sums."""
    tensors = (counters.positive, counters.samples_fired, counters.max_preactivation, counters.activation_sum)
    cached = _ARRAYS.get(counters)
    if cached is not None and all(a is b for a, b in zip(cached[0], tensors)):
        return cached[1]
    arrays = tuple(t.numpy() for t in tensors)
    _ARRAYS[counters] = (tensors, arrays)
    return arrays


class FusedReducer(TorchReducer):
    """The numba kernels wherever they read the layout (float32 on the CPU); the torch reducer elsewhere, and for
    small one-position sites, which it reduces together at the end of the pass (a kernel call per site costs more).

    The kernels add to the counters at once, so an undoable pass keeps a copy of each counters object it touches
    (:meth:`undo_pass` puts them back)."""

    name = "fused"

    def __init__(self) -> None:
        super().__init__()
        self._saved: dict[int, tuple[UnitAccumulator, UnitAccumulator]] | None = None

    def start_pass(self, *, undoable: bool = False) -> None:
        super().start_pass()
        self._saved = {} if undoable else None

    def before_op(
        self,
        counters: UnitAccumulator,
        pre: torch.Tensor,
        unit_axis: int,
        sample_axis: int | None,
        member: Member,
        mask: torch.Tensor | None = None,
    ) -> Any:
        if mask is None and suits(pre) and not small_rows(pre, sample_axis):
            if self._saved is not None and id(counters) not in self._saved:
                self._saved[id(counters)] = (counters, counters.copy())
            counted = add_batch(counters, pre, unit_axis, sample_axis, member.cap)
            if counted:
                return None
            if counted is False:
                return ExactCall(counters, pre.clone(), unit_axis, sample_axis)
        return super().before_op(counters, pre, unit_axis, sample_axis, member, mask)

    def end_pass(self) -> None:
        super().end_pass()
        self._saved = None

    def undo_pass(self) -> None:
        for counters, saved in (self._saved or {}).values():
            counters.restore(saved)
        super().undo_pass()
        self._saved = None


def _sample_mapping(pre: torch.Tensor, unit_axis: int, sample_axis: int | None) -> tuple[int, int] | None:
    """(inner, samples) such that lead row ``l`` belongs to sample ``(l // inner) % samples``; None when the
    sample axis is not a lead axis of the memory-ordered view."""
    if sample_axis is None:
        return 1, 1
    strides = pre.stride()
    order = sorted(range(pre.dim()), key=lambda d: (-strides[d], d))
    lead_axes = order[: order.index(unit_axis)]
    if sample_axis not in lead_axes:
        return None
    inner = math.prod(pre.shape[d] for d in lead_axes[lead_axes.index(sample_axis) + 1 :])
    return inner, int(pre.shape[sample_axis])


@cache
def _kernels() -> Any:
    """The compiled kernels (numba compiles them at first call, or loads them from its cache)."""
    from . import _fused_kernels

    return _fused_kernels
