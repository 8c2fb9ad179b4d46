"""Edits of a model's state: state-dict name -> replacement tensor, computed without touching the model.

One set of edits serves both users: ``relu-doctor fix`` applies it for good to its copy (:func:`apply_edits`), the
scan's simulation applies it for one re-run of the probe and puts every tensor back bit for bit (:func:`edited`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

import torch
from torch import nn

Edits = dict[str, torch.Tensor]
"""State-dict name -> the whole replacement tensor (same shape, dtype and device as the model's)."""


def state_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer of ``model`` by state-dict name (the live tensors, not copies)."""
    return model.state_dict(keep_vars=True)


class StateEdits:
    """Edits being built on top of a model's state: each tensor is copied on its first change, the model never is."""

    def __init__(self, model: nn.Module) -> None:
        self.modules = dict(model.named_modules())
        self.edits: Edits = {}
        self._tensors = state_tensors(model)

    def tensor(self, module_path: str, attribute: str) -> torch.Tensor:
        """The edited copy of ``attribute`` of the module at ``module_path``, to change in place."""
        name = f"{module_path}.{attribute}" if module_path else attribute  # the root module's path is ""
        if name not in self.edits:
            self.edits[name] = self._tensors[name].detach().clone()
        return self.edits[name]


@torch.no_grad()
def apply_edits(model: nn.Module, edits: Mapping[str, torch.Tensor]) -> None:
    """Copy every edit into ``model``'s own tensors, in place."""
    tensors = state_tensors(model)
    for name, value in edits.items():
        tensors[name].data.copy_(value)


@contextlib.contextmanager
def edited(model: nn.Module, edits: Mapping[str, torch.Tensor]) -> Iterator[None]:
    """``edits`` applied for the duration; every changed tensor restored bit for bit afterwards."""
    tensors = state_tensors(model)
    saved = {name: tensors[name].detach().clone() for name in edits}
    try:
        apply_edits(model, edits)
        yield
    finally:
        apply_edits(model, saved)
