"""What the observer cannot count is said out loud (clamp(min=0), dropout forced on); what it can, it counts."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from relu_doctor import scan


class RnnReluNet(nn.Module):
    """nn.RNN(nonlinearity='relu') computes its relu inside one fused kernel under inference_mode only."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.RNN(4, 6, nonlinearity="relu", batch_first=True)
        self.head = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.rnn(x)[0]))


class ClampReluNet(nn.Module):
    """x.clamp(min=0) is a relu written another way; it is reported, not counted."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x).clamp(min=0)


class ForcedDropoutNet(nn.Module):
    """F.dropout(training=True) hard-coded in forward stays on in eval mode and can invent dead units."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(F.dropout(self.fc(x), p=0.5, training=True))


def _warnings(model: nn.Module, batch: torch.Tensor) -> tuple[tuple[str, ...], int]:
    report = scan(model, [batch])
    return report.warnings, len(report.sites)


def test_an_rnn_relu_is_counted_at_every_step_not_hidden() -> None:
    # inference_mode runs nn.RNN's relu inside one fused kernel; the observer re-runs the first pass under no_grad,
    # where each of the 5 steps is a visible relu: 5 sites in rnn, plus the torch.relu after the RNN.
    report = scan(RnnReluNet(), [torch.randn(8, 5, 4)])
    assert [s.name for s in report.sites] == [*(f"rnn:relu#{k}" for k in range(1, 6)), ":relu"]
    assert not any("fused kernel" in w for w in report.warnings)


def test_clamp_min_zero_is_reported_not_counted() -> None:
    warnings, sites = _warnings(ClampReluNet(), torch.randn(8, 3))
    assert sites == 0
    assert any("clamp(min=0) in <root> computes a relu but is not counted" in w for w in warnings)


def test_dropout_forced_on_is_reported() -> None:
    warnings, sites = _warnings(ForcedDropoutNet(), torch.randn(8, 3))
    assert sites == 1
    assert any("dropout with training=True" in w for w in warnings)


def test_a_plain_model_has_no_blind_spot_warnings() -> None:
    model = nn.Sequential(nn.Linear(3, 5), nn.Dropout(0.5), nn.ReLU())  # nn.Dropout is off in eval mode
    warnings, sites = _warnings(model, torch.randn(400, 3))
    assert sites == 1 and warnings == ()
