"""Layer introspection: questions about a model's modules that the probe and the cause rules both ask."""

from __future__ import annotations

from torch import nn

__all__ = ["first_layer", "first_layer_path"]


def first_layer(model: nn.Module) -> nn.Module | None:
    """The first leaf module with parameters, in registration order (the usual input layer)."""
    for module in model.modules():
        if not list(module.children()) and any(True for _ in module.parameters(recurse=False)):
            return module
    return None


def first_layer_path(model: nn.Module) -> str | None:
    """The state-dict path of :func:`first_layer` (None when the model has no parameterised leaf)."""
    first = first_layer(model)
    return next((path for path, module in model.named_modules() if module is first), None)
