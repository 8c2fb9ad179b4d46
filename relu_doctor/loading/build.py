"""Build the --arch model without allocating weights, then adopt the checkpoint's tensors.

The model is built on the meta device and loaded with `assign=True`, so the (often mmap'd)
checkpoint tensors become the parameters and RAM holds one copy. When that cannot work (the
callable fails on meta, or state is left on meta such as non-persistent buffers), the model is
built normally on the CPU and loaded the same way.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch

from ..errors import ArchitectureError
from .arch import build_arch
from .state_dict import check_match, fit_keys


def build_with_weights(
    tensors: Mapping[str, Any], spec: str, kwargs: dict[str, Any] | None, source: str
) -> tuple[torch.nn.Module, tuple[str, ...]]:
    """(model holding `tensors`, notes on key rewrites); ArchitectureError when they do not fit."""
    model = _build_on_meta(spec, kwargs)
    on_meta = model is not None
    if model is None:
        model = build_arch(spec, kwargs)
    fitted, notes = fit_keys(tensors, set(model.state_dict()))
    check_match(fitted, model, spec, source)
    _assign(model, fitted, spec, source)
    if on_meta and any(True for _ in meta_tensors(model)):
        model = build_arch(spec, kwargs)
        _assign(model, fitted, spec, source)
    return model, notes


def _build_on_meta(spec: str, kwargs: dict[str, Any] | None) -> torch.nn.Module | None:
    """The model built on the meta device, or None when the callable cannot build there."""
    try:
        with torch.device("meta"):
            return build_arch(spec, kwargs)
    except ArchitectureError:
        # Some callables fail only on meta (they index real data at init); building for real
        # below reports the error again if it is not meta-specific.
        return None


def _assign(model: torch.nn.Module, tensors: Mapping[str, Any], spec: str, source: str) -> None:
    try:
        model.load_state_dict(tensors, strict=True, assign=True)
    except (RuntimeError, TypeError, ValueError) as error:
        message = " ".join(str(error).split())[:300]
        raise ArchitectureError(f"weights in {source} do not load into --arch {spec}: {message}") from None


def meta_tensors(model: torch.nn.Module) -> Iterator[str]:
    """Names of tensors still on the meta device: parameters, buffers and plain tensor attributes."""
    for name, tensor in (*model.named_parameters(), *model.named_buffers()):
        if tensor.is_meta:
            yield name
    for module_name, module in model.named_modules():
        for attribute, value in vars(module).items():
            if isinstance(value, torch.Tensor) and value.is_meta:
                yield f"{module_name}.{attribute}" if module_name else attribute
