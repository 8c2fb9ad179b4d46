"""Simulated fixes: each predicted number equals a plain re-run of an explicitly modified copy of the model."""

from __future__ import annotations

import copy
import functools
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from typer.testing import CliRunner

from relu_doctor import scan
from relu_doctor.analysis.diagnose import BIAS_MARGIN
from relu_doctor.cli import app
from relu_doctor.repair.api import repair_model
from relu_doctor.report import Finding, Report

SLOPE = 0.01


class BiasKilledClassifier(nn.Module):
    """A 4-class MLP: fc1 units 0, 1 (in-place nn.ReLU) and fc2 unit 5 (functional relu) killed by a bias of -4.

    The biases are large enough to kill on the probe but small enough that a shift or a LeakyReLU visibly moves
    the logits, so every predicted drift is non-zero and can be compared.
    """

    FC1_DEAD, FC2_DEAD = (0, 1), (5,)

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.fc2, self.head = nn.Linear(6, 10), nn.Linear(10, 8), nn.Linear(8, 4)
        self.act1 = nn.ReLU(inplace=True)
        self.act2 = F.relu
        with torch.no_grad():
            self.fc1.bias[list(self.FC1_DEAD)] = -8.0
            self.fc2.bias[list(self.FC2_DEAD)] = -8.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))

    def preactivations(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The inputs of the two relus, computed by hand."""
        first = self.fc1(x)
        return first, self.fc2(self.act1(first.clone()))


@pytest.fixture(scope="module")
def probe() -> list[torch.Tensor]:
    x = torch.randn(96, 6, generator=torch.Generator().manual_seed(3)) * 3
    return list(x.split(32))


@pytest.fixture(scope="module")
def report(probe: list[torch.Tensor]) -> Report:
    return scan(BiasKilledClassifier(), probe, simulate=True, simulate_budget=None)


def _rerun_drift(model: nn.Module, changed: nn.Module, probe: list[torch.Tensor]) -> tuple[float, float]:
    """(relative L2 drift, share of argmax changes) of ``changed`` against ``model``, by plain forward passes."""
    with torch.no_grad():
        before = torch.cat([model.eval()(x) for x in probe]).double()
        after = torch.cat([changed.eval()(x) for x in probe]).double()
    drift = float((after - before).norm() / before.norm())
    return drift, float((after.argmax(1) != before.argmax(1)).double().mean())


def _cause(report: Report, site: str) -> Finding:
    return next(f for f in report.findings if f.site == site and f.code.startswith("RD1"))


def test_the_planted_units_are_dead_and_bias_caused(report: Report) -> None:
    act1, act2 = report.sites
    assert act1.dead_units == BiasKilledClassifier.FC1_DEAD and act2.dead_units == BiasKilledClassifier.FC2_DEAD
    assert _cause(report, "act1").code == _cause(report, ":relu").code == "RD101"


def test_leaky_swap_of_an_inplace_module_site_equals_a_rerun_of_a_swapped_copy(
    report: Report, probe: list[torch.Tensor]
) -> None:
    model = BiasKilledClassifier()
    swapped = copy.deepcopy(model)
    swapped.act1 = nn.LeakyReLU(SLOPE, inplace=True)
    drift, argmax = _rerun_drift(model, swapped, probe)
    predicted = _cause(report, "act1").prediction("leaky")
    assert predicted is not None and predicted.scope == "site" and predicted.argmax_changed is not None
    assert drift > 1e-3  # the comparison means something
    assert math.isclose(predicted.output_drift, drift, rel_tol=1e-6)
    assert math.isclose(predicted.argmax_changed, argmax, abs_tol=1e-12)
    assert predicted.revived is None  # a LeakyReLU leaves no dead unit to count


def test_leaky_swap_of_a_functional_site_equals_a_rerun_of_a_swapped_copy(
    report: Report, probe: list[torch.Tensor]
) -> None:
    model = BiasKilledClassifier()
    swapped = copy.deepcopy(model)
    swapped.act2 = functools.partial(F.leaky_relu, negative_slope=SLOPE)
    drift, _ = _rerun_drift(model, swapped, probe)
    predicted = _cause(report, ":relu").prediction("leaky")
    assert predicted is not None
    assert drift > 1e-4 and math.isclose(predicted.output_drift, drift, rel_tol=1e-6)
    # 10 - 2 dead units of act1 still fire; act2 swapped: all 8 carry gradient -> 16 of 18 (was 18 - 3 = 15)
    assert predicted.units_with_gradient_before == 15 and predicted.units_with_gradient == 16


def test_leaky_everywhere_counts_every_unit_as_carrying_gradient(report: Report, probe: list[torch.Tensor]) -> None:
    model = BiasKilledClassifier()
    swapped = copy.deepcopy(model)
    swapped.act1, swapped.act2 = nn.LeakyReLU(SLOPE), functools.partial(F.leaky_relu, negative_slope=SLOPE)
    drift, _ = _rerun_drift(model, swapped, probe)
    everywhere = next(f for f in report.findings if f.code == "RD301")
    predicted = everywhere.prediction("leaky")
    assert predicted is not None and predicted.scope == "model"
    assert math.isclose(predicted.output_drift, drift, rel_tol=1e-6)
    assert predicted.units_with_gradient == 18  # 10 + 8 units


def test_bias_shift_equals_a_rerun_of_a_copy_with_raised_biases(report: Report, probe: list[torch.Tensor]) -> None:
    model = BiasKilledClassifier()
    shifted = copy.deepcopy(model)
    with torch.no_grad():  # fix shifts every site at once, each sized on the unshifted model (issue 15)
        first = torch.cat([model.preactivations(x)[0] for x in probe])
        second = torch.cat([model.preactivations(x)[1] for x in probe])
        for unit in BiasKilledClassifier.FC1_DEAD:
            shifted.fc1.bias[unit] += BIAS_MARGIN - first[:, unit].max()
        for unit in BiasKilledClassifier.FC2_DEAD:
            shifted.fc2.bias[unit] += BIAS_MARGIN - second[:, unit].max()
        revived = int((torch.cat([shifted.preactivations(x)[0] for x in probe])[:, [0, 1]] > 0).any(0).sum())
    drift, argmax = _rerun_drift(model, shifted, probe)
    predicted = _cause(report, "act1").prediction("bias_shift")
    assert predicted is not None and predicted.argmax_changed is not None
    assert drift > 1e-4 and math.isclose(predicted.output_drift, drift, rel_tol=1e-5)
    assert math.isclose(predicted.argmax_changed, argmax, abs_tol=1e-12)
    assert predicted.revived == revived == predicted.targeted == 2  # max pre-activation lands on +0.1 > 0


def test_recycle_keeps_the_output_and_revives_what_a_rerun_of_the_recycled_copy_revives(
    report: Report, probe: list[torch.Tensor]
) -> None:
    model = BiasKilledClassifier()
    recycled = repair_model(model, probe, strategy="recycle").model  # what `relu-doctor fix` writes
    drift, _ = _rerun_drift(model, recycled, probe)
    with torch.no_grad():
        first = torch.cat([recycled.preactivations(x)[0] for x in probe])
    revived = int((first[:, list(BiasKilledClassifier.FC1_DEAD)] > 0).any(0).sum())
    predicted = _cause(report, "act1").prediction("recycle")
    assert predicted is not None and predicted.forward_passes >= 1
    assert drift == predicted.output_drift == 0.0  # outgoing weights zeroed: the output cannot move
    assert predicted.revived == revived > 0


def test_simulation_leaves_the_model_exactly_as_it_was(probe: list[torch.Tensor]) -> None:
    model = BiasKilledClassifier().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    scan(model, iter(probe), simulate=True, simulate_budget=None)  # an iterator is replayed from memory
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_without_simulate_findings_carry_no_predictions(probe: list[torch.Tensor]) -> None:
    report = scan(BiasKilledClassifier(), probe)
    assert report.findings and all(f.predicted == () for f in report.findings)
    assert "RD301" not in {f.code for f in report.findings}


class FailsWhenRunAgain(nn.Module):
    """A model that refuses a second pass over its probe (e.g. a stateful stream): the scan survives without predictions."""

    def __init__(self) -> None:
        super().__init__()
        self.fc, self.calls = nn.Linear(3, 4), 0
        with torch.no_grad():
            self.fc.bias[0] = -100.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls > 1:
            raise RuntimeError("stream already consumed")
        return torch.relu(self.fc(x))


def test_a_model_that_cannot_be_rerun_keeps_its_scan_and_says_why() -> None:
    report = scan(FailsWhenRunAgain(), [torch.randn(8, 3)], simulate=True, simulate_budget=None)
    assert report.sites[0].dead_units == (0,)
    assert any(w.startswith("simulation skipped: RuntimeError: stream already consumed") for w in report.warnings)


SAMPLE = [
    "samples/dying_mlp.safetensors",
    "--arch",
    "samples/digits_mlp.py:build_mlp",
    "--probe",
    "samples/digits_probe.npy",
    "--format",
    "json",
]


def test_cli_simulates_by_default_and_no_simulate_skips_it() -> None:
    runner = CliRunner()
    simulated = json.loads(
        runner.invoke(app, ["scan", *SAMPLE, "--simulate-samples", "100000", "--simulate-budget", "1000"]).stdout
    )
    skipped = json.loads(runner.invoke(app, ["scan", *SAMPLE, "--no-simulate"]).stdout)
    cause = next(f for f in simulated["findings"] if f["code"].startswith("RD1"))
    # 78 of act2's 128 units are dead; a bias shift to +0.1 wakes every one of them
    shift = next(p for p in cause["predicted"] if p["fix"] == "bias_shift")
    assert cause["units"] and shift["revived"] == shift["targeted"] == len(cause["units"]) == 78
    assert all(f["predicted"] == [] for f in skipped["findings"])
    assert [f["code"] for f in skipped["findings"]] == [
        f["code"] for f in simulated["findings"] if f["code"] != "RD301"
    ]
