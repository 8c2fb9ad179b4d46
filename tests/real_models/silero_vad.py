"""A voice-activity detector with the architecture of Silero VAD v5 (16 kHz branch).

Source: snakers4/silero-vad (MIT licence, Copyright (c) 2020-present Silero Team). Its model ships only as
TorchScript/ONNX, so the code here is rebuilt from the module tree that the MIT-licensed ``silero_vad.jit``
prints (``stft`` with a ``forward_basis_buffer``, ``encoder`` of ``SileroVadBlock(reparam_conv, activation)``,
``decoder`` of ``rnn = LSTMCell(128, 128)`` and ``decoder = Sequential(Dropout, ReLU, Conv1d(128, 1, 1),
Sigmoid)``) and from the public re-implementations that read its weights. Sizes are the original's (about
300 k parameters, cheap); the STFT basis is a real DFT basis computed here, other weights random or planted.

What it reproduces (issue 11): the first registered module with parameters is the encoder's
``Conv1d(129, 128)``, while the model takes ``(N, 576)`` raw audio (64 samples of context + 512) and pads,
reshapes and transforms it in ``forward`` with a conv over a *buffer* (item 1); and the decoder runs
``LSTMCell -> unsqueeze(-1) -> ReLU -> Conv1d(128, 1, 1)``, a relu input of shape ``(N, 128, 1)`` whose units
are its 128 channels (item 2).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

CHUNK = 576
"""Samples per model call at 16 kHz: 64 of context and a 512-sample window."""


class STFT(nn.Module):
    """Magnitude STFT as one strided conv over a fixed basis buffer (filter 256, hop 128 -> 129 bins)."""

    def __init__(self, filter_length: int = 256, hop_length: int = 128) -> None:
        super().__init__()
        self.filter_length = filter_length
        self.hop_length = hop_length
        self.register_buffer("forward_basis_buffer", _dft_basis(filter_length))

    def forward(self, input_data: torch.Tensor) -> torch.Tensor:
        padded = F.pad(input_data, [0, 64], mode="reflect")
        forward_transform = F.conv1d(padded.unsqueeze(1), self.forward_basis_buffer, stride=self.hop_length)
        cutoff = self.filter_length // 2 + 1
        real_part = forward_transform[:, :cutoff, :]
        imag_part = forward_transform[:, cutoff:, :]
        return torch.sqrt(real_part**2 + imag_part**2)


class SileroVadBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.se = nn.Identity()
        self.reparam_conv = nn.Conv1d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1)
        self.activation = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.se(self.reparam_conv(x)))


class VadDecoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.LSTMCell(128, 128)
        self.decoder = nn.Sequential(nn.Dropout(0.1), nn.ReLU(), nn.Conv1d(128, 1, kernel_size=1), nn.Sigmoid())

    def forward(self, x: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.squeeze(-1)
        h, c = self.rnn(x, (state[0], state[1]))
        x = h.unsqueeze(-1)
        state = torch.stack([h, c])
        x = self.decoder(x)
        return x, state


class SileroVad(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stft = STFT()
        self.encoder = nn.Sequential(
            SileroVadBlock(129, 128, 1),
            SileroVadBlock(128, 64, 2),
            SileroVadBlock(64, 64, 2),
            SileroVadBlock(64, 128, 1),
        )
        self.decoder = VadDecoder()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        state = torch.zeros(2, x.shape[0], 128, dtype=x.dtype, device=x.device)
        out = self.stft(x)
        out = self.encoder(out)
        out, _ = self.decoder(out, state)
        return out.squeeze(1).mean(dim=1, keepdim=True)


def _dft_basis(n_fft: int) -> torch.Tensor:
    """(n_fft + 2, 1, n_fft): Hann-windowed cosines then sines of the n_fft // 2 + 1 bins."""
    n = torch.arange(n_fft, dtype=torch.float64)
    k = torch.arange(n_fft // 2 + 1, dtype=torch.float64)[:, None]
    window = torch.hann_window(n_fft, periodic=True, dtype=torch.float64)
    angle = 2 * math.pi * k * n / n_fft
    basis = torch.cat([torch.cos(angle) * window, -torch.sin(angle) * window])
    return basis.float().unsqueeze(1)


def build_vad() -> SileroVad:
    """The --arch callable."""
    return SileroVad()


def plant(model: SileroVad) -> SileroVad:
    """Planted dead units.

    encoder.1: channels 0-2 get bias -1000 (the magnitudes stay far below that) -> 3 dead channels.
    decoder: the LSTM cell's g gate of units 0-6 gets bias -50, so g = -1, c = i·g < 0 and h = o·tanh(c) < 0
    from a zero state: 7 of the 128 decoder channels never fire.
    """
    torch.manual_seed(5)
    with torch.no_grad():
        model.encoder[1].reparam_conv.bias[:3] = -1000.0
        model.decoder.rnn.bias_ih[2 * 128 : 2 * 128 + 7] = -50.0
    return model.eval()


def probe(samples: int = 64, seed: int = 0) -> torch.Tensor:
    """(samples, 576) chunks of noisy audio with a tone in half of them."""
    gen = torch.Generator().manual_seed(seed)
    t = torch.arange(CHUNK) / 16000.0
    tone = torch.sin(2 * math.pi * 220.0 * t) * (torch.arange(samples) % 2)[:, None]
    return 0.1 * torch.randn(samples, CHUNK, generator=gen) + 0.5 * tone
