"""The corpus: each real model with its builder, planted weights, real probe, unit axis and oracle taps."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from . import crepe, resnet, silero_vad, small, speaker
from .oracle import Tap, rnn_relu_tap

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class RealModel:
    """One corpus entry."""

    name: str
    build: Callable[[], nn.Module]
    """Fresh architecture (random weights)."""
    arch: str
    """The --arch spec that builds it from a file path."""
    plant: Callable[[nn.Module], nn.Module]
    """Weights as if trained here, with known dead units."""
    probe: Callable[[], torch.Tensor]
    """The input the network was built for, as a probe file holds it."""
    unit_axis: int
    """1: conv-style channels; -1: features (the README's definition, stated by the author)."""
    script: str
    """How its TorchScript file is made: "script" or "trace"."""
    export: bool = True
    """False when torch.export cannot capture it (data-dependent control flow)."""
    taps: tuple[Tap, ...] = ()

    def planted(self) -> nn.Module:
        torch.manual_seed(0)
        return self.plant(self.build())


def _arch(module: str, function: str) -> str:
    return f"{HERE / module}:{function}"


CORPUS: dict[str, RealModel] = {
    model.name: model
    for model in (
        RealModel("crepe", crepe.build_crepe, _arch("crepe.py", "build_crepe"), crepe.plant, crepe.probe, 1, "trace"),
        RealModel(
            "silero_vad",
            silero_vad.build_vad,
            _arch("silero_vad.py", "build_vad"),
            silero_vad.plant,
            silero_vad.probe,
            1,
            "script",
        ),
        RealModel(
            "resnet", resnet.build_resnet, _arch("resnet.py", "build_resnet"), resnet.plant, resnet.probe, 1, "script"
        ),
        RealModel(
            "speaker",
            speaker.build_encoder,
            _arch("speaker.py", "build_encoder"),
            speaker.plant,
            speaker.probe,
            -1,
            "script",
        ),
        RealModel(
            "transformer",
            small.build_transformer,
            _arch("small.py", "build_transformer"),
            small.plant_transformer,
            small.transformer_probe,
            -1,
            "script",
        ),
        RealModel(
            "rnn",
            small.build_rnn,
            _arch("small.py", "build_rnn"),
            small.plant_rnn,
            small.rnn_probe,
            -1,
            "script",
            taps=(rnn_relu_tap("rnn"),),
        ),
        RealModel(
            "experts",
            small.build_experts,
            _arch("small.py", "build_experts"),
            small.plant_experts,
            small.experts_probe,
            -1,
            "script",
            export=False,
        ),
    )
}
