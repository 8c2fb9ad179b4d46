"""CREPE pitch estimator, ported from torchcrepe.

Source: maxrmorrison/torchcrepe, ``torchcrepe/model.py`` (class ``Crepe``), MIT licence,
Copyright (c) 2020 Max Morrison; itself a port of marl/crepe (MIT). Ported line by line; changes:
- weights are not read from a file (random, with dead units planted by :func:`plant`);
- the channel widths are a parameter (the original "tiny" model has 128, 16, 16, 16, 32, 64; the tests use a
  still smaller set so a CI scan takes milliseconds). Kernel sizes, strides, paddings, pooling and the input of
  1024 audio samples per frame are the original's.

What it reproduces: ``forward`` takes ``(N, 1024)`` frames and reshapes them to ``(N, 1, 1024, 1)`` before the
first ``Conv2d(1, ...)`` (issue 11, item 1), and every relu is a functional ``F.relu`` in the root's helpers.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

MICRO_CAPACITY = (8, 4, 4, 4, 4, 8)
"""Channel widths used by the tests (the original tiny model: 128, 16, 16, 16, 32, 64)."""


class Crepe(nn.Module):
    """Crepe model definition"""

    def __init__(self, channels: tuple[int, ...] = MICRO_CAPACITY) -> None:
        super().__init__()
        c1, c2, c3, c4, c5, c6 = channels
        self.in_features = 4 * c6

        # Model definition
        self.conv1 = nn.Conv2d(in_channels=1, out_channels=c1, kernel_size=(512, 1), stride=(4, 1))
        self.conv1_BN = nn.BatchNorm2d(num_features=c1, eps=0.0010000000474974513, momentum=0.0)

        self.conv2 = nn.Conv2d(in_channels=c1, out_channels=c2, kernel_size=(64, 1))
        self.conv2_BN = nn.BatchNorm2d(num_features=c2, eps=0.0010000000474974513, momentum=0.0)

        self.conv3 = nn.Conv2d(in_channels=c2, out_channels=c3, kernel_size=(64, 1))
        self.conv3_BN = nn.BatchNorm2d(num_features=c3, eps=0.0010000000474974513, momentum=0.0)

        self.conv4 = nn.Conv2d(in_channels=c3, out_channels=c4, kernel_size=(64, 1))
        self.conv4_BN = nn.BatchNorm2d(num_features=c4, eps=0.0010000000474974513, momentum=0.0)

        self.conv5 = nn.Conv2d(in_channels=c4, out_channels=c5, kernel_size=(64, 1))
        self.conv5_BN = nn.BatchNorm2d(num_features=c5, eps=0.0010000000474974513, momentum=0.0)

        self.conv6 = nn.Conv2d(in_channels=c5, out_channels=c6, kernel_size=(64, 1))
        self.conv6_BN = nn.BatchNorm2d(num_features=c6, eps=0.0010000000474974513, momentum=0.0)

        self.classifier = nn.Linear(in_features=self.in_features, out_features=360)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Forward pass through first four layers and part of layer five
        x = self.embed(x)

        # Finish layer five
        x = F.dropout(x, p=0.25, training=self.training, inplace=True)

        # Forward pass through layer six
        x = self.layer(x, self.conv6, self.conv6_BN)

        # Compute logits
        return self.classifier(x.reshape(-1, self.in_features))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Map input audio to pitch embedding"""
        # shape=(batch, 1, 1024, 1)
        x = x[:, None, :, None]

        # Forward pass through first four layers
        x = self.layer(x, self.conv1, self.conv1_BN, (0, 0, 254, 254))
        x = self.layer(x, self.conv2, self.conv2_BN)
        x = self.layer(x, self.conv3, self.conv3_BN)
        x = self.layer(x, self.conv4, self.conv4_BN)

        # Partial forward pass through layer five
        return self.layer_no_dropout(x, self.conv5, self.conv5_BN)

    def layer(
        self,
        x: torch.Tensor,
        conv: nn.Module,
        batch_norm: nn.Module,
        padding: tuple[int, int, int, int] = (0, 0, 31, 32),
    ) -> torch.Tensor:
        """Forward pass through one layer"""
        x = self.layer_no_dropout(x, conv, batch_norm, padding)
        return F.dropout(x, 0.25, self.training, inplace=True)

    def layer_no_dropout(
        self,
        x: torch.Tensor,
        conv: nn.Module,
        batch_norm: nn.Module,
        padding: tuple[int, int, int, int] = (0, 0, 31, 32),
    ) -> torch.Tensor:
        """Forward pass through one layer, without final dropout layer"""
        x = F.pad(x, padding)
        x = conv(x)
        x = F.relu(x)
        x = batch_norm(x)
        return F.max_pool2d(x, (2, 1), (2, 1))


def build_crepe() -> Crepe:
    """The --arch callable."""
    return Crepe()


def plant(model: Crepe) -> Crepe:
    """Weights as if trained here: BatchNorm statistics moved, and dead channels planted.

    conv1 channels 0, 1: bias -100 while |W·x| stays below ~10 on unit-scale audio -> dead (RD101 or RD106).
    conv3 channel 2: every incoming weight 0 and bias -1 -> dead with collapsed weights (RD104).
    """
    torch.manual_seed(11)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
        model.conv1.bias[:2] = -100.0
        model.conv3.weight[2] = 0.0
        model.conv3.bias[2] = -1.0
    return model.eval()


def probe(samples: int = 64, seed: int = 0) -> torch.Tensor:
    """Audio frames of 1024 samples, normalised per frame as torchcrepe does before the model."""
    frames = torch.randn(samples, 1024, generator=torch.Generator().manual_seed(seed)).cumsum(dim=1)
    frames = frames - frames.mean(dim=1, keepdim=True)
    return frames / frames.std(dim=1, keepdim=True).clamp(min=1e-10)
