"""Probe batches as the model sees them: one way to turn a batch into the model's call arguments and to count its
samples, used by every pass that runs the model (the observer, the fix simulations, drift, repair)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._pytree import tree_flatten


@dataclass(frozen=True)
class MaskedBatch:
    """Token ids and their attention mask: the model gets ``attention_mask=`` and padded positions (mask 0) are
    left out of every counter, so padding never makes a unit look alive or dead."""

    input_ids: torch.Tensor
    """(samples, positions) integer token ids."""
    attention_mask: torch.Tensor
    """(samples, positions): 1 at real tokens, 0 at padding."""

    @property
    def shape(self) -> torch.Size:
        """The shape of the token ids (what error messages and sample counts read)."""
        return self.input_ids.shape


def call_arguments(batch: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """(positional, keyword) arguments of the model call for one probe batch."""
    if isinstance(batch, MaskedBatch):
        return (batch.input_ids,), {"attention_mask": batch.attention_mask}
    return (batch if isinstance(batch, tuple) else (batch,)), {}


def batch_samples(batch: Any) -> int:
    """Samples in one batch: the first axis of its first tensor (1 for a batch without one); in a token batch, the
    rows holding at least one real token (an all-padding row is no sample: it is neither alive nor dead evidence)."""
    first = batch[0] if isinstance(batch, (tuple, list)) else batch
    if isinstance(first, MaskedBatch):
        return int(first.attention_mask.bool().any(dim=1).sum())
    return int(first.shape[0]) if isinstance(first, torch.Tensor) and first.dim() > 0 else 1


def leading_size(inputs: Any) -> int:
    """The first axis of the first tensor in any nest of inputs (1 when there is none): a pass's batch size."""
    first = next((a for a in tree_flatten(inputs)[0] if isinstance(a, torch.Tensor)), None)
    return int(first.shape[0]) if first is not None and first.dim() > 0 else 1


class Replayable:
    """Batches that can be iterated more than once, each iteration from the start: the one form every stage that
    runs the probe again (repair's re-scans and drift, fix's verification) takes.

    Built from a function returning a fresh iterator (a probe re-read from its file or re-drawn from its seed);
    :meth:`sized` adds the number of batches when it is known (``auto`` reducer sizing reads ``len``).
    """

    def __init__(self, fresh: Callable[[], Iterable[Any]]) -> None:
        self._fresh = fresh

    def __iter__(self) -> Iterator[Any]:
        return iter(self._fresh())

    @staticmethod
    def sized(fresh: Callable[[], Iterable[Any]], batches: int) -> Replayable:
        """A replayable probe of ``batches`` batches."""
        return _SizedReplayable(fresh, batches)


class _SizedReplayable(Replayable):
    def __init__(self, fresh: Callable[[], Iterable[Any]], batches: int) -> None:
        super().__init__(fresh)
        self._batches = batches

    def __len__(self) -> int:
        return self._batches


def replayable(batches: Iterable[Any] | Callable[[], Iterable[Any]]) -> Iterable[Any]:
    """``batches`` as an iterable that starts over on every iteration: a :class:`Replayable` or a sequence as is,
    a function returning fresh iterators wrapped, anything else (an iterator) read once into a list."""
    if isinstance(batches, (Replayable, list, tuple)):
        return batches
    if callable(batches):
        return Replayable(batches)
    return list(batches)
