"""Run batches through a model under the observer: the one loop every scan, repair and re-scan uses."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sized
from typing import Any

import torch
from torch import nn

from ..errors import ObservationError, ReluDoctorError, first_line
from ..settings import DEFAULT_REDUCER
from .batches import MaskedBatch, batch_samples
from .layers import first_layer_hint
from .observe import ReluObserver

Progress = Callable[[int], None]
"""Called after each batch with the number of samples in it."""


def observe(
    model: nn.Module,
    batches: Iterable[Any],
    *,
    unit_dim: int | None = None,
    site_paths: tuple[str, ...] | None = None,
    progress: Progress | None = None,
    reducer: str = DEFAULT_REDUCER,
    expected_batches: int | None = None,
) -> tuple[ReluObserver, int]:
    """Run every batch through ``model`` under the observer; returns it (closed) and the sample count.

    ``expected_batches`` (default: ``len(batches)`` when it has one) lets ``reducer="auto"`` judge whether
    loading the fused reducer pays off."""
    samples = 0
    if expected_batches is None and isinstance(batches, Sized):
        expected_batches = len(batches)
    with ReluObserver(
        model, unit_dim=unit_dim, site_paths=site_paths, reducer=reducer, expected_passes=expected_batches
    ) as observer:
        for batch in batches:
            _forward(observer, batch)
            size = batch_samples(batch)
            samples += size
            if progress is not None:
                progress(size)
    if samples == 0:
        raise ObservationError("the probe yielded no batches; pass a probe with at least one sample")
    return observer, samples


def _forward(observer: ReluObserver, batch: Any) -> None:
    try:
        observer.run(batch)
    except ReluDoctorError:
        raise
    except Exception as exc:
        shape = tuple(batch.shape) if isinstance(batch, (torch.Tensor, MaskedBatch)) else type(batch).__name__
        message = first_line(exc, 300) or type(exc).__name__
        hint = first_layer_hint(observer.model)
        raise ObservationError(
            f"the forward pass failed on a probe batch of shape {shape}: {type(exc).__name__}: {message}; "
            f"check --probe / --input-shape against what the model expects{f' ({hint})' if hint else ''}"
        ) from exc
