"""Layer introspection: questions about a model's modules that the probe and the cause rules both ask."""

from __future__ import annotations

from torch import nn

__all__ = ["first_layer", "first_layer_hint", "first_layer_path"]


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


def first_layer_hint(model: nn.Module) -> str:
    """What the first parameterised layer takes, for an error after a failed forward pass ("" when unknown).

    A hint only: models often reshape their input before that layer (audio frames to an image, raw audio to a
    spectrogram), so a probe is never refused on this guess.
    """
    first = first_layer(model)
    path = first_layer_path(model)
    if isinstance(first, nn.Linear):
        return f"the first layer with parameters, {path} (Linear), takes {first.in_features} features"
    if isinstance(first, nn.modules.conv._ConvNd):
        kind = type(first).__name__
        return f"the first layer with parameters, {path} ({kind}), takes {first.in_channels} input channels"
    return ""
