"""Reducers: how each call of a site becomes per-unit counters. One small protocol, two implementations.

The observer finds a site's calls and hands each one to the reducer: the pre-activation before the op runs
(:meth:`Reducer.before_op`), the op's output after it (:meth:`Reducer.after_op`), and the end of each forward
pass (:meth:`Reducer.end_pass`). What "fires" means and what the op outputs are the family member's
(:class:`relu_doctor.activations.Member`): a unit fires where its pre-activation is above
:data:`~relu_doctor.activations.FIRES_ABOVE`, which for every member is exactly where the output is non-zero, and
:meth:`~relu_doctor.activations.Member.activation` is the output. So a new member needs no reducer change.

- ``torch`` (:class:`~.torch_reducer.TorchReducer`): plain torch reductions, any device, dtype and layout.
- ``fused`` (:class:`~.fused.FusedReducer`): numba kernels that read each activation once (float32, CPU), the
  torch reducer elsewhere; needs the ``fast`` extra.
- ``auto``: the fused reducer once it is loaded in this process, or from the second pass on when numba is
  installed and the passes left hold enough work to pay for loading it (:func:`~.fused.worth_loading`); torch
  otherwise.

Names and the default are :data:`relu_doctor.settings.REDUCERS`; :func:`make_reducer` picks one by name.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch

from ...activations import Member
from ...errors import UsageError
from ...settings import check_reducer_name
from ..counters import UnitAccumulator
from . import fused
from .fused import FusedReducer
from .torch_reducer import TorchReducer

__all__ = ["Reducer", "check_reducer", "count_batch", "make_reducer"]


class Reducer(Protocol):
    """Turns the calls of every site in a forward pass into counts added to each site's counters."""

    @property
    def name(self) -> str:
        """The reducer's name in :data:`relu_doctor.settings.REDUCERS` (``auto`` names the one it uses now)."""
        ...

    def start_pass(self, *, undoable: bool = False) -> None:
        """A forward pass begins; ``undoable``: :meth:`undo_pass` may be called instead of :meth:`end_pass`."""
        ...

    def before_op(
        self,
        counters: UnitAccumulator,
        pre: torch.Tensor,
        unit_axis: int,
        sample_axis: int | None,
        member: Member,
        mask: torch.Tensor | None = None,
    ) -> Any:
        """Read a call's pre-activation (at least 2-D) before the op runs; the returned token goes to
        :meth:`after_op`. ``mask`` (samples, positions), True at real tokens: ``pre`` is then (samples,
        positions, units) and padded positions count nowhere."""
        ...

    def after_op(self, token: Any, output: torch.Tensor) -> None:
        """Read the op's output of the call that returned ``token``."""
        ...

    def end_pass(self) -> None:
        """The pass is over: every count of it is in the counters now."""
        ...

    def undo_pass(self) -> None:
        """The (undoable) pass is dropped: the counters are as they were when it started."""
        ...


def make_reducer(name: str, expected_passes: int | None = None) -> Reducer:
    """The reducer called ``name`` (checked: :func:`check_reducer`); ``expected_passes`` (None: unknown) lets
    ``auto`` weigh loading numba against the work left after the first pass."""
    check_reducer(name)
    if name == "fused":
        return FusedReducer()
    if name == "torch":
        return TorchReducer()
    return AutoReducer(expected_passes)


def check_reducer(name: str) -> None:
    """A usage error for an unknown reducer, or for ``fused`` where numba is not installed."""
    check_reducer_name(name)
    if name == "fused" and not fused.available():  # auto falls back to torch quietly
        raise UsageError("--reducer fused needs numba: pip install 'relu-doctor[fast]' (or use --reducer auto)")


class AutoReducer:
    """``auto``: the torch reducer, switched to the fused one after the first pass when that pays off."""

    def __init__(self, expected_passes: int | None) -> None:
        self.expected_passes = expected_passes
        self._active: TorchReducer = FusedReducer() if fused.worth_loading(None) else TorchReducer()
        self._passes = 0
        self._suited = 0
        """Elements the first pass reduced that the fused kernels could have read."""

    @property
    def name(self) -> str:
        return self._active.name

    def start_pass(self, *, undoable: bool = False) -> None:
        self._active.start_pass(undoable=undoable)

    def before_op(
        self,
        counters: UnitAccumulator,
        pre: torch.Tensor,
        unit_axis: int,
        sample_axis: int | None,
        member: Member,
        mask: torch.Tensor | None = None,
    ) -> Any:
        if self._passes == 0 and fused.suits(pre):
            self._suited += pre.numel()
        return self._active.before_op(counters, pre, unit_axis, sample_axis, member, mask)

    def after_op(self, token: Any, output: torch.Tensor) -> None:
        self._active.after_op(token, output)

    def end_pass(self) -> None:
        self._active.end_pass()
        self._passes += 1
        if self._passes != 1 or self._active.name != "torch" or self.expected_passes is None:
            return
        if fused.worth_loading(self._suited * (self.expected_passes - 1)):
            self._active = FusedReducer()

    def undo_pass(self) -> None:
        self._active.undo_pass()
        if self._passes == 0:
            self._suited = 0


def count_batch(
    reducer: Reducer,
    counters: UnitAccumulator,
    pre: torch.Tensor,
    member: Member,
    unit_axis: int = 1,
    sample_axis: int | None = 0,
) -> None:
    """One pass of one call: ``pre`` through ``member``'s op, counted into ``counters`` (tests and benchmarks)."""
    reducer.start_pass()
    token = reducer.before_op(counters, pre, unit_axis, sample_axis, member)
    reducer.after_op(token, member.activation(pre))
    reducer.end_pass()
