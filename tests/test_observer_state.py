"""A scan leaves the model exactly as it was: training flags, BatchNorm statistics, parameters, hooks."""

from __future__ import annotations

import pytest
import torch
from models import ConvBNReluShifted, DropoutBeforeRelu
from torch import nn

from relu_doctor import scan
from relu_doctor.errors import ObservationError


class MixedModeNet(nn.Module):
    """Conv -> BatchNorm (train mode) -> ReLU -> Dropout (eval mode): flags must come back one by one."""

    def __init__(self) -> None:
        super().__init__()
        self.body = ConvBNReluShifted()
        self.dropout = nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.body(x))


class ForwardRaises(nn.Module):
    """A model whose forward fails after its first relu has run."""

    def __init__(self) -> None:
        super().__init__()
        self.body = ConvBNReluShifted()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.body(x)
        raise RuntimeError("boom in forward")


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: t.detach().clone() for name, t in model.state_dict().items()}


def _flags(model: nn.Module) -> dict[str, bool]:
    return {name: m.training for name, m in model.named_modules()}


def _hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def _assert_unchanged(model: nn.Module, state: dict[str, torch.Tensor], flags: dict[str, bool]) -> None:
    after = model.state_dict()
    assert after.keys() == state.keys()
    for name, value in state.items():
        assert torch.equal(after[name], value), f"{name} changed"
    assert _flags(model) == flags
    assert _hook_count(model) == 0


def test_scan_leaves_training_flags_stats_and_parameters_untouched() -> None:
    torch.manual_seed(0)
    model = MixedModeNet().train()
    model.dropout.eval()
    state, flags = _state(model), _flags(model)
    assert int(state["body.bn.num_batches_tracked"]) == 7
    scan(model, [torch.randn(8, 3, 5, 5) for _ in range(3)])
    _assert_unchanged(model, state, flags)
    assert flags["body.bn"] is True and flags["dropout"] is False


def test_scan_in_train_mode_would_have_moved_the_stats() -> None:
    # guards the test above: the same batches through the model in train mode do change BatchNorm
    torch.manual_seed(0)
    model = MixedModeNet().train()
    state = _state(model)
    with torch.no_grad():
        model(torch.randn(8, 3, 5, 5))
    assert not torch.equal(model.state_dict()["body.bn.running_mean"], state["body.bn.running_mean"])
    assert int(model.state_dict()["body.bn.num_batches_tracked"]) == 8


def test_model_is_restored_when_the_forward_pass_fails() -> None:
    torch.manual_seed(0)
    model = ForwardRaises().train()
    state, flags = _state(model), _flags(model)
    fastpath = torch.backends.mha.get_fastpath_enabled()
    with pytest.raises(ObservationError, match="boom in forward"):
        scan(model, [torch.randn(2, 3, 5, 5)])
    _assert_unchanged(model, state, flags)
    assert torch.backends.mha.get_fastpath_enabled() == fastpath


def test_eval_model_stays_in_eval_mode() -> None:
    model = DropoutBeforeRelu().eval()
    scan(model, [torch.randn(4, 4)])
    assert not any(_flags(model).values())


def test_scan_does_not_record_autograd_history() -> None:
    model = DropoutBeforeRelu()
    scan(model, [torch.randn(4, 4)])
    assert all(p.grad is None for p in model.parameters())
    assert all(p.requires_grad for p in model.parameters())


def test_buffer_written_by_forward_is_restored_with_a_warning() -> None:
    class CountsCalls(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.calls: torch.Tensor
            self.register_buffer("calls", torch.zeros(()))
            self.relu = nn.ReLU()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.calls += 1
            return self.relu(x)

    model = CountsCalls()
    report = scan(model, [torch.randn(2, 3), torch.randn(2, 3)])
    assert float(model.calls) == 0.0
    assert any("modified buffer 'calls'" in w for w in report.warnings)
