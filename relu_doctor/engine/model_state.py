"""The model's state around a pass: eval mode and buffers restored exactly afterwards, the transformer fast path
off, the module hooks installed and removed. Everything a pass changes is put back in ``finally``."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from .tracking import ModuleCallTracker


@contextlib.contextmanager
def instrumented(model: nn.Module, tracker: ModuleCallTracker, warnings: dict[str, None]) -> Any:
    """Everything a pass under a dispatch mode needs around it: eval mode and buffers restored afterwards, the
    transformer fast path off, and the module hooks installed and removed."""
    with restored_model_state(model, warnings), transformer_fastpath_disabled():
        tracker.install()
        try:
            yield
        finally:
            tracker.remove()


@contextlib.contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode for the duration; every module's training flag restored afterwards."""
    flags = [(m, m.training) for m in model.modules()]
    for module, _ in flags:
        # Set the flag directly: exported GraphModules refuse eval(), and flags are all eval() would change.
        module.training = False
    try:
        yield model
    finally:
        for module, flag in flags:
            module.training = flag


@contextlib.contextmanager
def restored_model_state(model: nn.Module, warnings: dict[str, None]) -> Any:
    """Eval mode for the scan; afterwards every training flag is as it was and buffers are unchanged."""
    buffers = [(name, b, b._version) for name, b in model.named_buffers() if not b.is_meta]
    saved = {name: b.detach().clone() for name, b, _ in buffers}
    with evaluating(model):
        try:
            yield
        finally:
            for name, buffer, version in buffers:
                if buffer._version != version:
                    with torch.no_grad():
                        buffer.copy_(saved[name])
                    warnings[f"the forward pass modified buffer {name!r}; it was restored"] = None


@contextlib.contextmanager
def transformer_fastpath_disabled() -> Any:
    """The fused TransformerEncoderLayer kernel hides its relu from every observer: turn it off for the scan."""
    mha = getattr(torch.backends, "mha", None)
    if mha is None:
        yield
        return
    previous = mha.get_fastpath_enabled()
    mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        mha.set_fastpath_enabled(previous)
