"""Small real-world patterns built on torch's own modules (torch's BSD-style licence covers nn.TransformerEncoder
and nn.RNN; the wrappers are written here).

- :class:`ReluTransformer`: an ``nn.TransformerEncoder`` with relu feed-forward blocks, the layer PyTorch's own
  tutorials build; scripted, its fused fast path hides the relu unless grad mode is on (issue 11, item 3).
- :class:`ReluRnnTagger`: ``nn.RNN(nonlinearity="relu")`` whose per-step relus only ``inference_mode`` hides.
- :class:`RoutedExperts`: mixture-of-experts routing as in Switch/fairseq MoE layers: an expert runs only on the
  samples routed to it, so its ``F.relu`` can first run in a later batch (item 4).
- :class:`ReluLikeOps`: relu-like ops the tool does not count, which must be listed (item 8).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

D_MODEL = 16


class ReluTransformer(nn.Module):
    """Token features -> 2 relu TransformerEncoderLayers -> a linear head on the mean token."""

    def __init__(self) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(
            D_MODEL, nhead=2, dim_feedforward=32, dropout=0.1, activation="relu", batch_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
        self.head = nn.Linear(D_MODEL, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x).mean(dim=1))


def build_transformer() -> ReluTransformer:
    return ReluTransformer()


def plant_transformer(model: ReluTransformer) -> ReluTransformer:
    """encoder.layers.0.linear1 units 0-4: bias -50, far below any W·x of layer-normed tokens -> 5 dead."""
    with torch.no_grad():
        model.encoder.layers[0].linear1.bias[:5] = -50.0
    return model.eval()


def transformer_probe(samples: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.randn(samples, 6, D_MODEL, generator=torch.Generator().manual_seed(seed))


class ReluRnnTagger(nn.Module):
    """nn.RNN(nonlinearity='relu') over (N, T, 8) inputs, a linear head on every step."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.RNN(8, 12, nonlinearity="relu", batch_first=True)
        self.head = nn.Linear(12, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(x)[0])


RNN_STEPS = 3


def build_rnn() -> ReluRnnTagger:
    return ReluRnnTagger()


def plant_rnn(model: ReluRnnTagger) -> ReluRnnTagger:
    """rnn hidden units 0-2: input bias -50 -> never > 0 at any step (their own state stays 0) -> 3 dead per step."""
    with torch.no_grad():
        model.rnn.bias_ih_l0[:3] = -50.0
    return model.eval()


def rnn_probe(samples: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.randn(samples, RNN_STEPS, 8, generator=torch.Generator().manual_seed(seed))


class RoutedExperts(nn.Module):
    """A shared relu trunk, then two experts; expert 1's relu only runs on samples whose router score is high.

    Every module runs in every batch (expert 1 is computed densely, as some MoE kernels do); only the functional
    relu depends on the data, so nothing but the relu itself says that the control flow varied.
    """

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 10)
        self.act = nn.ReLU()
        self.router = nn.Linear(10, 1)
        self.expert0 = nn.Linear(10, 10)
        self.expert1 = nn.Linear(10, 10)
        self.head = nn.Linear(10, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.fc(x))
        routed = self.router(h).squeeze(1) > 0
        out = self.act(self.expert0(h))
        candidate = self.expert1(h)  # computed densely, kept only where routed
        if bool(routed.any()):
            out = out.clone()
            out[routed] = F.relu(candidate[routed])
        return self.head(out)


def build_experts() -> RoutedExperts:
    return RoutedExperts()


def plant_experts(model: RoutedExperts) -> RoutedExperts:
    """The router fires only on inputs with x[:, 0] > 4 (one in ~30,000 for N(0, 1)); expert1 units 0-1 dead.

    fc unit 0 copies x[:, 0] (weight e0, bias 0); the router reads unit 0 with bias -4. expert1 units 0, 1 get
    bias -100. The probe puts all its routed samples after the first 64, so batch 1 never reaches expert1.
    """
    with torch.no_grad():
        model.fc.weight[0] = torch.tensor([1.0, 0, 0, 0, 0, 0])
        model.fc.bias[0] = 0.0
        model.router.weight.zero_()
        model.router.weight[0, 0] = 1.0
        model.router.bias.fill_(-4.0)
        model.expert1.bias[:2] = -100.0
    return model.eval()


def experts_probe(samples: int = 256, seed: int = 0) -> torch.Tensor:
    """N(0, 1) samples; samples 64 + 8k get x[:, 0] = 6, so only batches after the first 64 samples are routed."""
    x = torch.randn(samples, 6, generator=torch.Generator().manual_seed(seed)).clamp(-3.5, 3.5)
    x[64::8, 0] = 6.0
    return x


class ReluLikeOps(nn.Module):
    """A real relu next to three relu-like ops that are not counted: Hardtanh(0, 2), clamp(0, 6), clamp(min=0)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 8)
        self.act = nn.ReLU()
        self.gate = nn.Hardtanh(0.0, 2.0)
        self.out = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.fc(x))
        h = self.gate(h) + h.clamp(0, 6) + h.clamp(min=0)
        return self.out(h)


class Activations:
    """A namespace of activation functions, as Lightning-era code kept them (a class of staticmethods)."""

    @staticmethod
    def relu(x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x)


class StaticActivationNet(nn.Module):
    """Holds a staticmethod as an attribute: ``torch.save`` (pickle protocol 2) encodes it as
    ``getattr(Activations, 'relu')``, so loading the whole model reaches ``builtins.getattr`` (item 7)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 6)
        self.activation = Activations.relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.fc(x))


class FirstLayerLies(nn.Module):
    """The first registered Linear is not the input layer: ``proj`` (8 features in) is registered before
    ``embed`` (3 features in), which reads the input. A shape guessed from ``proj`` must be confirmed by a trial
    forward, and fail with --input-shape named (item 1)."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(8, 4)
        self.embed = nn.Linear(3, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(torch.relu(self.embed(x)))
