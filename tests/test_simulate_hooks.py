"""Re-runs on activation-module hooks: the same predictions as re-runs under the dispatch mode, and the fallback."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from relu_doctor import whatif
from relu_doctor.api import scan_observed
from relu_doctor.report import Report
from relu_doctor.whatif import Rerun, _fired_units, simulate_findings


class ReusedInplaceReluNet(nn.Module):
    """fc1 -> in-place ReLU (called twice: one module, two sites) -> ReLU6; units planted dead by biases of -8."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.fc1, self.fc2, self.fc3, self.head = nn.Linear(6, 12), nn.Linear(12, 10), nn.Linear(10, 8), nn.Linear(8, 4)
        self.act = nn.ReLU(inplace=True)
        self.clip = nn.ReLU6()
        with torch.no_grad():
            self.fc1.bias[:3] = -8.0
            self.fc2.bias[:2] = -8.0
            self.fc3.bias[:2] = -8.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.clip(self.fc3(self.act(self.fc2(self.act(self.fc1(x)))))))


class LateFunctionalReluNet(ReusedInplaceReluNet):
    """Like its parent, plus an F.relu that only runs on a batch whose first input is large (data-dependent)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.fc3(self.act(self.fc2(self.act(self.fc1(x)))))
        if float(x[0, 0]) > 100:
            hidden = F.relu(hidden)
        return self.head(self.clip(hidden))


def _probe(first_large: bool = False) -> list[torch.Tensor]:
    x = torch.randn(96, 6, generator=torch.Generator().manual_seed(3)) * 3
    batches = list(x.split(32))
    if first_large:
        batches[1] = batches[1].clone()
        batches[1][0, 0] = 1000.0
    return batches


def _simulated(model: nn.Module, batches: list[torch.Tensor], hooks: bool, monkeypatch: pytest.MonkeyPatch) -> Report:
    report, observed = scan_observed(model, batches)
    if not hooks:
        monkeypatch.setattr(whatif, "_hookable_sites", lambda *args: None)
    try:
        return simulate_findings(report, model, observed, batches)
    finally:
        monkeypatch.undo()


def _numbers(report: Report) -> list[tuple[str, str, object]]:
    return [(f.code, f.site, f.predicted) for f in report.findings if f.predicted]


def test_module_sites_are_rerun_on_hooks() -> None:
    model = ReusedInplaceReluNet()
    _, observed = scan_observed(model, _probe())
    with Rerun(model, observed) as rerun:
        assert rerun.hooked_modules is not None and set(rerun.hooked_modules) == {"act", "clip"}


def test_hooked_and_dispatched_reruns_give_identical_predictions(monkeypatch: pytest.MonkeyPatch) -> None:
    model = ReusedInplaceReluNet().eval()
    hooked = _simulated(model, _probe(), True, monkeypatch)
    dispatched = _simulated(model, _probe(), False, monkeypatch)
    assert _numbers(hooked) and _numbers(hooked) == _numbers(dispatched)
    # both sites of the reused in-place module were swapped on their own (act#1, act#2)
    assert {site for _, site, _ in _numbers(hooked)} >= {"act#1", "act#2"}


def test_a_relu_outside_the_hooked_modules_sends_the_pass_to_the_dispatch_mode(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model = LateFunctionalReluNet().eval()
    _, observed = scan_observed(model, _probe())  # the F.relu never runs on this probe: every site is a module
    with Rerun(model, observed) as rerun:
        assert rerun.hooked_modules is not None
        rerun.forward(_probe(first_large=True)[1])
        assert rerun.hooked_modules is None  # dispatched from now on
        assert ("", 1, 1) in rerun.fired  # the functional relu of the root's forward was counted
    late = _probe(first_large=True)
    assert _numbers(_simulated(model, late, True, monkeypatch)) == _numbers(_simulated(model, late, False, monkeypatch))


def test_fired_units_reads_nan_as_not_positive_without_hiding_positive_positions() -> None:
    view = torch.tensor([[float("nan"), -1.0, 0.0, float("inf")], [2.0, float("nan"), 0.0, -1.0]])
    # unit 0: NaN and 2 -> fired; unit 1: -1 and NaN -> not; unit 2: zeros -> not; unit 3: inf -> fired
    assert _fired_units(view, 1).tolist() == [True, False, False, True]
    assert _fired_units(view, 1).tolist() == (view > 0).any(0).tolist()


@pytest.mark.parametrize("shape, axis", [((4, 3, 5, 5), 1), ((4, 7, 6), 2), ((4, 7, 6), 1), ((5, 9), 1)])
def test_fired_units_equals_any_positive_on_every_layout(shape: tuple[int, ...], axis: int) -> None:
    view = torch.randn(shape, generator=torch.Generator().manual_seed(0)) - 1.5
    others = tuple(d for d in range(len(shape)) if d != axis)
    expected = (view > 0).any(dim=others)
    assert 0 < int(expected.sum()) < shape[axis] or shape[axis] <= 3  # a mix of fired and silent units
    assert torch.equal(_fired_units(view, axis), expected)
    assert torch.equal(_fired_units(view.transpose(0, -1).contiguous().transpose(0, -1), axis), expected)
