"""Models and oracles for the certification tests: a small ResNet-like CNN, seeded random residual nets, and a
projected-gradient search that looks for an input of the domain on which a unit fires (the oracle a proof must
never lose to)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class CapturingNet(nn.Module):
    """A model whose relu inputs can be captured, with autograd, in call order: ``captured = []`` then forward."""

    def __init__(self) -> None:
        super().__init__()
        self.captured: list[torch.Tensor] | None = None

    def pre(self, h: torch.Tensor) -> torch.Tensor:
        if self.captured is not None:
            self.captured.append(h.clone())
        return h


class BasicBlock(nn.Module):
    """conv-BN-relu-conv-BN, plus the input, then the same in-place nn.ReLU again (a reused module)."""

    def __init__(self, owner: CapturingNet, channels: int) -> None:
        super().__init__()
        self.owner = [owner]  # a list keeps the owner out of the module tree
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.owner[0].pre
        out = self.relu(pre(self.bn1(self.conv1(x))))
        out = self.bn2(self.conv2(out))
        out += x
        return self.relu(pre(out))


class TinyResNet(CapturingNet):
    """A ResNet-like CNN: stem conv-BN-relu, max pool, residual blocks with BN and a reused in-place relu,
    global average pool, a functional relu head. Channels ``PLANTED_STEM`` of the stem are killed by BN beta = -50;
    unit ``PLANTED_HEAD`` of the head by bias -100."""

    PLANTED_STEM = (1,)
    PLANTED_HEAD = (2,)

    def __init__(self, channels: int = 4, blocks: int = 2, seed: int = 0, beta_spread: float = 0.0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.stem = nn.Conv2d(2, channels, 3, padding=1)
        self.bn = nn.BatchNorm2d(channels)
        self.blocks = nn.ModuleList(BasicBlock(self, channels) for _ in range(blocks))
        self.fc = nn.Linear(channels, 6)
        self.head = nn.Linear(6, 3)
        with torch.no_grad():
            for module in self.modules():
                if isinstance(module, nn.BatchNorm2d):
                    module.running_mean.uniform_(-0.5, 0.5)
                    module.running_var.uniform_(0.5, 2.0)
                    module.weight.uniform_(0.5, 1.5)
                    module.bias.uniform_(-beta_spread - 0.2, 0.2)
            self.bn.bias[list(self.PLANTED_STEM)] = -50.0
            self.fc.bias[list(self.PLANTED_HEAD)] = -100.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.pre(self.bn(self.stem(x))))
        h = F.max_pool2d(h, 2)
        for block in self.blocks:
            h = block(h)
        h = F.adaptive_avg_pool2d(h, 1).flatten(1)
        return self.head(torch.relu(self.pre(self.fc(h))))


class RandomResidualNet(CapturingNet):
    """Seeded random net for the property test: residual adds, BatchNorm, one reused nn.ReLU, functional relus,
    pooling and a flatten into linear layers; biases and BN shifts spread so some units are dead, some borderline."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        channels = int(torch.randint(2, 5, (1,), generator=g))
        self.blocks = int(torch.randint(1, 3, (1,), generator=g))
        self.use_pool = bool(torch.randint(0, 2, (1,), generator=g))
        self.stem = nn.Conv2d(2, channels, 3, padding=1)
        self.bn = nn.BatchNorm2d(channels)
        self.convs = nn.ModuleList(nn.Conv2d(channels, channels, 3, padding=1) for _ in range(self.blocks))
        self.norms = nn.ModuleList(nn.BatchNorm2d(channels) for _ in range(self.blocks))
        self.relu = nn.ReLU()
        side = 2 if self.use_pool else 4
        self.fc1 = nn.Linear(channels * side * side, 8)
        self.fc2 = nn.Linear(8, 8)
        self.out = nn.Linear(8, 2)
        with torch.no_grad():
            for module in self.modules():
                if isinstance(module, nn.BatchNorm2d):
                    module.running_mean.uniform_(-0.5, 0.5, generator=g)
                    module.running_var.uniform_(0.3, 2.0, generator=g)
                    module.weight.uniform_(-1.5, 1.5, generator=g)
                    module.bias.uniform_(-2.5, 0.5, generator=g)
                if isinstance(module, nn.Linear):
                    module.bias.uniform_(-2.0, 0.5, generator=g)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu(self.pre(self.bn(self.stem(x))))
        for conv, norm in zip(self.convs, self.norms):
            h = self.relu(self.pre(norm(conv(h)) + h))
        if self.use_pool:
            h = F.avg_pool2d(h, 2)
        h = F.relu(self.pre(self.fc1(h.flatten(1))))
        h = self.pre(self.fc2(h) + 0.5 * h)
        return self.out(h.relu())


def preactivations(model: CapturingNet, x: torch.Tensor) -> list[torch.Tensor]:
    """The relu inputs of a capturing model on ``x``, in call order (units on axis 1)."""
    model.captured = []
    try:
        model(x)
        return model.captured
    finally:
        model.captured = None


def per_unit(pre: torch.Tensor, reduce: str) -> torch.Tensor:
    """(samples, units): each unit's max (or min) over its positions."""
    flat = pre.flatten(2) if pre.dim() > 2 else pre.unsqueeze(2)
    return flat.amax(2) if reduce == "max" else flat.amin(2)


def gradient_search(
    model: CapturingNet,
    lo: torch.Tensor,
    hi: torch.Tensor,
    *,
    maximise: bool,
    restarts: int = 16,
    steps: int = 40,
    seed: int = 0,
) -> list[torch.Tensor]:
    """Per site, per unit: the most extreme pre-activation (max if ``maximise``, else min) a projected-gradient
    search finds inside ``lo <= x <= hi``, over random restarts, the centre and every step."""
    g = torch.Generator().manual_seed(seed)
    x = lo + (hi - lo) * torch.rand((restarts, *lo.shape), generator=g)
    x[0] = (lo + hi) / 2
    step = (hi - lo) / 10
    sign = 1.0 if maximise else -1.0
    best: list[torch.Tensor] | None = None
    model.eval()
    for _ in range(steps):
        x = x.detach().requires_grad_(True)
        values = [per_unit(p, "max" if maximise else "min") for p in preactivations(model, x)]
        found = [v.detach().amax(0) if maximise else v.detach().amin(0) for v in values]
        best = (
            found
            if best is None
            else [torch.maximum(b, f) if maximise else torch.minimum(b, f) for b, f in zip(best, found)]
        )
        objective = sign * sum(v.sum() for v in values)
        (grad,) = torch.autograd.grad(objective, x)
        x = torch.minimum(torch.maximum(x + step * grad.sign(), lo), hi)
    assert best is not None
    return best
