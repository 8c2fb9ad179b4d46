"""How a first pass is run under observation: the dispatch mode that sees every aten op, and the autograd state
it runs in (later passes replay it: :mod:`.replay`)."""

from __future__ import annotations

import contextlib
import enum
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode


class ForwardingMode(TorchDispatchMode):
    """Forwards every aten op to ``target._dispatch(func, args, kwargs)``; holds no logic of its own."""

    def __init__(self, target: Any) -> None:
        super().__init__()
        self.target = target

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        # torch wraps __torch_dispatch__ in a dynamo-disable shim that imports torch._dynamo on first use (about
        # 1 s) and adds a frame to every op; nothing here is compiled, so the shim buys nothing.
        return False

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        return self.target._dispatch(func, args, kwargs or {})


class Grad(enum.IntEnum):
    """Autograd state of dispatched passes, weakest first. inference_mode is the cheapest; nn.RNN's relu shows
    only outside it (no_grad); a TorchScript transformer layer takes its fused fast path unless grad mode is on
    and a tensor it reads requires grad (the condition in TransformerEncoderLayer.forward), which no switch turns
    off in a scripted layer."""

    INFERENCE = 0
    NO_GRAD = 1
    GRAD = 2


GRAD_SHOWING = {
    "rnn_relu": Grad.NO_GRAD,
    "rnn_relu_cell": Grad.NO_GRAD,
    "_transformer_encoder_layer_fwd": Grad.GRAD,
}
"""Fused kernels that hide relus, and the weakest autograd state in which their relus run as separate ops."""


def stronger(pending: Grad | None, needed: Grad | None, current: Grad) -> Grad | None:
    """The autograd state a pass must be re-run in: ``needed`` when it is stronger than ``current``."""
    if needed is None or needed <= current:
        return pending
    return needed if pending is None else max(pending, needed)


@contextlib.contextmanager
def autograd_state(state: Grad, model: nn.Module) -> Any:
    """inference_mode, no_grad, or grad mode with every floating parameter requiring grad (restored after)."""
    if state is Grad.INFERENCE:
        with torch.inference_mode():
            yield
        return
    if state is Grad.NO_GRAD:
        with torch.no_grad():
            yield
        return
    frozen = [p for p in model.parameters() if p.is_floating_point() and not p.requires_grad]
    for parameter in frozen:
        parameter.requires_grad_(True)
    try:
        with torch.enable_grad():
            yield
    finally:
        for parameter in frozen:
            parameter.requires_grad_(False)
