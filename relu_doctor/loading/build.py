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
from torch.overrides import TorchFunctionMode

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


_RANDOM_FILLS = frozenset(
    {
        torch.Tensor.normal_,
        torch.Tensor.erfinv_,
        torch.Tensor.exponential_,
        torch.Tensor.log_normal_,
        torch.Tensor.cauchy_,
        torch.Tensor.geometric_,
    }
)
"""In-place random fills whose meta kernels go through torch._refs, whose first call imports torch._dynamo."""


class _NoFillsOnMeta(TorchFunctionMode):
    """Random fills of meta tensors return the tensor as it is: a meta tensor has no values to fill, and the
    fill's meta kernel would import torch._dynamo (1.5-5 s, once per process: ``kaiming_normal_`` in every
    torchvision-style ``__init__``). Shapes, dtypes and every other op are left to torch."""

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if func in _RANDOM_FILLS and args and isinstance(args[0], torch.Tensor) and args[0].is_meta:
            return args[0]
        return func(*args, **(kwargs or {}))


def _build_on_meta(spec: str, kwargs: dict[str, Any] | None) -> torch.nn.Module | None:
    """The model built on the meta device, or None when the callable cannot build there."""
    try:
        with torch.device("meta"), _NoFillsOnMeta():
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
