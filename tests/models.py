"""Tiny test models, one per trap that made other dead-ReLU detectors wrong (REFERENCES.md "Traps").

Each model plants dead units with a large negative bias (or BatchNorm shift) on the units listed in its
``DEAD`` constants, so a test can compare relu-doctor against a brute-force count made by running the
layers by hand. Every model is small enough to scan in milliseconds on a CPU. Other test files import these.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

KILL = -1000.0
"""A bias no standard-normal input can overcome: the unit's pre-activation is always negative."""


def plant_dead(layer: nn.Linear | nn.Conv1d | nn.Conv2d, units: tuple[int, ...]) -> None:
    """Kill ``units`` of ``layer`` by giving them a huge negative bias."""
    with torch.no_grad():
        assert layer.bias is not None
        layer.bias[list(units)] = KILL


def dead_by_brute_force(pre: torch.Tensor, unit_axis: int) -> tuple[int, ...]:
    """Units whose pre-activation is never > 0 over every other axis: the independent count tests compare to."""
    other = [d for d in range(pre.dim()) if d != unit_axis]
    fired = (pre > 0).amax(dim=other) if other else pre > 0
    return tuple(int(u) for u in torch.nonzero(~fired).flatten())


class ReusedReluBlock(nn.Module):
    """One ``nn.ReLU`` object called twice (torchvision's BasicBlock): two sites, ``relu#1`` and ``relu#2``."""

    DEAD_FIRST = (0, 3)
    DEAD_SECOND = (1, 2, 5)

    def __init__(self, features: int = 8) -> None:
        super().__init__()
        self.fc1 = nn.Linear(features, features)
        self.fc2 = nn.Linear(features, features)
        self.relu = nn.ReLU()
        plant_dead(self.fc1, self.DEAD_FIRST)
        plant_dead(self.fc2, self.DEAD_SECOND)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.fc2(self.relu(self.fc1(x))))

    def preactivations(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The input of each relu call, computed by hand."""
        first = self.fc1(x)
        return [first, self.fc2(torch.clamp(first, min=0))]


class FunctionalBlock(nn.Module):
    """A child module whose forward calls ``F.relu`` itself: its site is ``block:relu``."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.fc = nn.Linear(features, features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.fc(x))


class FunctionalReluNet(nn.Module):
    """Only functional relus, never an ``nn.ReLU``: ``F.relu`` in a child, ``torch.relu`` and ``x.relu()`` in the root."""

    DEAD_BLOCK = (1,)
    DEAD_ROOT_FIRST = (0, 4)
    DEAD_ROOT_SECOND = (2,)

    def __init__(self, features: int = 6) -> None:
        super().__init__()
        self.block = FunctionalBlock(features)
        self.fc1 = nn.Linear(features, features)
        self.fc2 = nn.Linear(features, features)
        plant_dead(self.block.fc, self.DEAD_BLOCK)
        plant_dead(self.fc1, self.DEAD_ROOT_FIRST)
        plant_dead(self.fc2, self.DEAD_ROOT_SECOND)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.block(x)
        h = torch.relu(self.fc1(h))
        return self.fc2(h).relu()

    def preactivations(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Inputs of block:relu, :relu#1 and :relu#2, by hand."""
        block = self.block.fc(x)
        first = self.fc1(torch.clamp(block, min=0))
        return [block, first, self.fc2(torch.clamp(first, min=0))]


class InplaceReluThenAdd(nn.Module):
    """``nn.ReLU(inplace=True)`` followed by ``h += 1``: a stored output reads as alive, the input as rectified."""

    DEAD = (0, 2, 7)

    def __init__(self, features: int = 8) -> None:
        super().__init__()
        self.fc = nn.Linear(features, features)
        self.relu = nn.ReLU(inplace=True)
        plant_dead(self.fc, self.DEAD)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu(self.fc(x))
        h += 1
        return h


class ConvBNReluShifted(nn.Module):
    """Conv -> BatchNorm with a large negative shift on some channels -> ReLU.

    The conv output of the shifted channels is alive; only the BatchNorm kills them, so a detector that
    measures the conv output instead of the relu input misses them.
    """

    DEAD = (1, 4)

    def __init__(self, channels: int = 6) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, channels, kernel_size=3, padding=1)
        self.bn = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU()
        mean, var, tracked = self.bn.running_mean, self.bn.running_var, self.bn.num_batches_tracked
        assert mean is not None and var is not None and tracked is not None
        with torch.no_grad():
            self.bn.bias[list(self.DEAD)] = KILL
            mean.uniform_(-0.5, 0.5)
            var.uniform_(0.5, 2.0)
            tracked.add_(7)  # trained statistics: a scan must leave them exactly as they are

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x)))

    def preactivation(self, x: torch.Tensor) -> torch.Tensor:
        """The relu input, with BatchNorm's eval-mode formula written out."""
        bn, mean, var = self.bn, self.bn.running_mean, self.bn.running_var
        assert mean is not None and var is not None
        scale = bn.weight / torch.sqrt(var + bn.eps)
        return (self.conv(x) - mean[:, None, None]) * scale[:, None, None] + bn.bias[:, None, None]


class TokenFFN(nn.Module):
    """A transformer-style feed-forward on (N, T, F): units are the last axis, not the token position."""

    DEAD = (3, 9)

    def __init__(self, features: int = 8, hidden: int = 12) -> None:
        super().__init__()
        self.up = nn.Linear(features, hidden)
        self.relu = nn.ReLU()
        self.down = nn.Linear(hidden, features)
        plant_dead(self.up, self.DEAD)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self.relu(self.up(x)))


class Conv1dNet(nn.Module):
    """Conv1d on (N, C, L): as 3-D as a token activation, but units are the channels (dim 1)."""

    DEAD = (0, 5)

    def __init__(self, channels: int = 7) -> None:
        super().__init__()
        self.conv = nn.Conv1d(4, channels, kernel_size=3, padding=1)
        self.relu = nn.ReLU()
        plant_dead(self.conv, self.DEAD)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv(x))


class TransformerReluLayer(nn.Module):
    """``nn.TransformerEncoderLayer(activation="relu")``: its fused eval fast path hides the relu from observers."""

    DEAD = (2, 11, 30)

    def __init__(self, d_model: int = 16, hidden: int = 32) -> None:
        super().__init__()
        self.layer = nn.TransformerEncoderLayer(
            d_model, nhead=2, dim_feedforward=hidden, activation="relu", batch_first=True
        )
        plant_dead(self.layer.linear1, self.DEAD)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)

    def preactivation(self, x: torch.Tensor) -> torch.Tensor:
        """linear1's output in eval mode, post-norm layer written out by hand."""
        layer = self.layer
        attended = layer.self_attn(x, x, x, need_weights=False)[0]
        return layer.linear1(layer.norm1(x + attended))


class DropoutBeforeRelu(nn.Module):
    """Linear -> Dropout(0.5) -> ReLU, handed over in train mode: a scan left in train mode invents dead units."""

    DEAD = (6,)

    def __init__(self, features: int = 32) -> None:
        super().__init__()
        self.fc = nn.Linear(4, features)
        self.dropout = nn.Dropout(0.5)
        self.relu = nn.ReLU()
        plant_dead(self.fc, self.DEAD)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.dropout(self.fc(x)))


class NaNUnit(nn.Module):
    """A Linear whose weights make unit 0 NaN and unit 1 +Inf on every input; unit 3 is dead."""

    NAN = (0,)
    INF = (1,)
    DEAD = (3,)

    def __init__(self, features: int = 6) -> None:
        super().__init__()
        self.fc = nn.Linear(4, features)
        self.relu = nn.ReLU()
        plant_dead(self.fc, self.DEAD)
        with torch.no_grad():
            self.fc.weight[0, 0] = float("nan")
            self.fc.bias[1] = float("inf")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.fc(x))


class EveryReluForm(nn.Module):
    """Each relu-family form once, in this order: every one of them must be a site."""

    FORMS = (
        "nn.ReLU",
        "nn.ReLU(inplace=True)",
        "F.relu",
        "torch.relu",
        "Tensor.relu",
        "Tensor.relu_",
        "nn.ReLU6",
        "F.relu6",
        "nn.Hardtanh(0, 6)",
        "nn.Threshold(0, 0)",
    )

    def __init__(self, features: int = 5) -> None:
        super().__init__()
        self.fc = nn.Linear(3, features)
        self.relu = nn.ReLU()
        self.relu_inplace = nn.ReLU(inplace=True)
        self.relu6 = nn.ReLU6()
        self.hardtanh = nn.Hardtanh(0.0, 6.0)
        self.threshold = nn.Threshold(0.0, 0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        outputs = [
            self.relu(h),
            self.relu_inplace(h.clone()),
            F.relu(h),
            torch.relu(h),
            h.relu(),
            h.clone().relu_(),
            self.relu6(h),
            F.relu6(h),
            self.hardtanh(h),
            self.threshold(h),
        ]
        return torch.stack(outputs).sum(0)


class OtherActivationsNet(nn.Module):
    """LeakyReLU, PReLU, GELU, ELU and SiLU: none of them ever outputs exactly zero, so none is a site."""

    def __init__(self, features: int = 5) -> None:
        super().__init__()
        self.fc = nn.Linear(3, features)
        self.leaky = nn.LeakyReLU(0.01)
        self.prelu = nn.PReLU()
        self.gelu = nn.GELU()
        self.elu = nn.ELU()
        self.silu = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.silu(self.elu(self.gelu(self.prelu(self.leaky(self.fc(x))))))


class ConvNet2d(nn.Module):
    """Conv2d -> ReLU -> flatten -> Linear -> ReLU: a channel-axis site, then a feature-axis site."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 5, kernel_size=3)
        self.act1 = nn.ReLU()
        self.fc = nn.Linear(5 * 4 * 4, 9)
        self.act2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act2(self.fc(self.act1(self.conv(x)).flatten(1)))


class GoldenReportNet(nn.Module):
    """The golden-output model: integer weights and integer probe values, so every number is exact on any CPU.

    Sites in call order: ``act#1`` (unit 5 dead, unit 4 dying: it fires on 1 of 200 samples), ``block:relu``
    (every unit dead), ``act#2`` (unit 3 NaN: a NaN weight).
    """

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 6)
        self.act = nn.ReLU()
        self.block = FunctionalBlock(6)
        self.fc2 = nn.Linear(6, 4)
        with torch.no_grad():
            for layer in (self.fc1, self.block.fc, self.fc2):
                count = layer.weight.numel()
                layer.weight.copy_((torch.arange(count) * 7 % 5 - 2).reshape(layer.weight.shape).float())
                layer.bias.copy_((torch.arange(layer.bias.numel()) % 3 - 1).float())
            self.fc1.weight[4] = torch.tensor([1.0, 0.0, 0.0, 0.0])
            self.fc1.bias[4] = -5.0
            self.fc1.bias[5] = KILL
            self.block.fc.bias.fill_(KILL)
            self.fc2.weight[3, 1] = float("nan")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.fc1(x))
        return torch.cat([self.block(h), self.act(self.fc2(h))], dim=1)

    @staticmethod
    def probe(samples: int = 200) -> torch.Tensor:
        """Integers in [-3, 3], except sample 0, whose feature 0 is 8 (the only input that wakes fc1's unit 4)."""
        i = torch.arange(samples)[:, None]
        j = torch.arange(4)[None, :]
        x = ((i * 7 + j * 3 + i // 7) % 7 - 3).float()
        x[0, 0] = 8.0
        return x
