"""A speaker encoder (d-vector), ported from Resemblyzer.

Source: resemble-ai/Resemblyzer, ``resemblyzer/voice_encoder.py`` (class ``VoiceEncoder``, network part) and
``resemblyzer/hparams.py``, Apache License 2.0, Copyright Resemble AI. Ported line by line; changes: the hidden
and embedding sizes (256 in the original) are parameters (the tests use 16), weights are random or planted, and
the device handling / weight download of ``__init__`` is left out.

What it reproduces: the relu reads ``linear(hidden[-1])``, the last LSTM layer's final state, a
``(N, embedding)`` activation whose units are features.
"""

from __future__ import annotations

import torch
from torch import nn

mel_n_channels = 40
model_num_layers = 3


class VoiceEncoder(nn.Module):
    def __init__(self, model_hidden_size: int = 16, model_embedding_size: int = 16) -> None:
        super().__init__()
        # Define the network
        self.lstm = nn.LSTM(mel_n_channels, model_hidden_size, model_num_layers, batch_first=True)
        self.linear = nn.Linear(model_hidden_size, model_embedding_size)
        self.relu = nn.ReLU()

    def forward(self, mels: torch.Tensor) -> torch.Tensor:
        """Embeddings of a batch of (batch, frames, 40) mel spectrograms, L2-normed."""
        _, (hidden, _) = self.lstm(mels)
        embeds_raw = self.relu(self.linear(hidden[-1]))
        return embeds_raw / torch.norm(embeds_raw, dim=1, keepdim=True)


def build_encoder() -> VoiceEncoder:
    """The --arch callable."""
    return VoiceEncoder()


def plant(model: VoiceEncoder) -> VoiceEncoder:
    """linear units 0-3: bias -50 while |W·h| <= |W|_1 < 4 (h = o·tanh(c) is in (-1, 1)) -> 4 dead (RD106/RD101)."""
    with torch.no_grad():
        model.linear.bias[:4] = -50.0
    return model.eval()


def probe(samples: int = 64, seed: int = 0) -> torch.Tensor:
    """(samples, 12 frames, 40 mel bins) of log-mel-like values."""
    return torch.randn(samples, 12, mel_n_channels, generator=torch.Generator().manual_seed(seed)).abs().log1p()
