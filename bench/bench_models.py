"""Benchmark models, written here because torchvision does not import in this environment.

Each builder is seeded, so every run of a benchmark measures the same weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class BasicBlock(nn.Module):
    """ResNet basic block: conv-bn-relu-conv-bn, plus the (projected) input, then relu."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


class ResNet18Like(nn.Module):
    """torchvision's ResNet-18 layout (stem, 4 stages of 2 basic blocks, 64..512 channels), 17 relu calls."""

    def __init__(self, classes: int = 100) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        widths = [(64, 64, 1), (64, 128, 2), (128, 256, 2), (256, 512, 2)]
        self.stages = nn.Sequential(*[nn.Sequential(BasicBlock(a, b, s), BasicBlock(b, b, 1)) for a, b, s in widths])
        self.fc = nn.Linear(512, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.stages(x)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class ReluTransformerBlock(nn.Module):
    """Pre-norm transformer block with a relu FFN (written out, so no fused fast path is involved)."""

    def __init__(self, width: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        self.up = nn.Linear(width, hidden)
        self.act = nn.ReLU()
        self.down = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(n, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(n, t, d)
        x = x + self.proj(attended)
        return x + self.down(self.act(self.up(self.norm2(x))))


class ReluTransformer(nn.Module):
    """Token embedding, a stack of relu-FFN blocks, a linear head."""

    def __init__(self, vocabulary: int = 1000, width: int = 256, depth: int = 4, heads: int = 4) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocabulary, width)
        self.blocks = nn.Sequential(*[ReluTransformerBlock(width, heads, 4 * width) for _ in range(depth)])
        self.head = nn.Linear(width, vocabulary)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.embed(tokens)))


def mlp(features: int = 512, width: int = 1024, depth: int = 4) -> nn.Sequential:
    """Linear-ReLU stack."""
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [nn.Linear(features if i == 0 else width, width), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(width, 10))


def seeded(build, *args, **kwargs) -> nn.Module:  # type: ignore[no-untyped-def]
    """The model from ``build`` with seed-0 weights, in eval mode."""
    torch.manual_seed(0)
    return build(*args, **kwargs).eval()


def deep_mlp(depth: int = 200, width: int = 256) -> nn.Sequential:
    """A deep narrow Linear-ReLU stack: many sites, little compute each (the per-site cost)."""
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(width, 10))


def relu_encoder(width: int = 32, heads: int = 4, hidden: int = 128, depth: int = 2) -> nn.TransformerEncoder:
    """torch's own TransformerEncoder with relu feed-forwards (batch first): a plain eval forward takes the fused
    fast path, which hides the relus; the scan turns it off."""
    layer = nn.TransformerEncoderLayer(width, heads, hidden, dropout=0.0, activation="relu", batch_first=True)
    return nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
