"""`relu_doctor.repair` in memory: recycle keeps the output and revives units, bias-shift revives, leaky swaps,
and everything that cannot be repaired safely is skipped with a reason. Tiny models, CPU, seconds."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from relu_doctor import scan
from relu_doctor.analysis.diagnose import BIAS_MARGIN
from relu_doctor.errors import UsageError
from relu_doctor.repair.api import repair_model
from relu_doctor.repair.drift import DriftMeter
from relu_doctor.repair.records import Drift, Strategy

KILL = -1000.0
"""A bias no standard-normal input overcomes: the unit never fires."""


def kill(bias: torch.Tensor, units: tuple[int, ...]) -> None:
    with torch.no_grad():
        bias[list(units)] = KILL


def probe(*shape: int, samples: int = 128, seed: int = 0) -> list[torch.Tensor]:
    return list(torch.randn((samples, *shape), generator=torch.Generator().manual_seed(seed)).split(32))


def relative_l2(before: nn.Module, after: nn.Module, batches: list[torch.Tensor]) -> float:
    """||after(x) - before(x)|| / ||before(x)||, computed here independently of the repair code."""
    with torch.no_grad():
        y0 = torch.cat([before(b) for b in batches]).double()
        y1 = torch.cat([after(b) for b in batches]).double()
    return float((y1 - y0).norm() / y0.norm())


def fires(preactivation: torch.Tensor, units: tuple[int, ...], axis: int = 1) -> list[bool]:
    other = [d for d in range(preactivation.dim()) if d != axis]
    fired = (preactivation > 0).amax(dim=other)
    return [bool(fired[u]) for u in units]


def state_copy(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_state_equal(model: nn.Module, saved: dict[str, torch.Tensor]) -> None:
    for name, value in model.state_dict().items():
        assert torch.equal(value, saved[name]), f"{name} changed"


class DeadHiddenMLP(nn.Module):
    """Linear -> ReLU -> Linear with planted dead hidden units (huge negative bias)."""

    DEAD = (1, 4, 5, 9)

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1 = nn.Linear(6, 12)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(12, 3)
        kill(self.fc1.bias, self.DEAD)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class ResidualFedRelu(nn.Module):
    """A relu whose output feeds a residual sum (skipped) next to one inside the block (recyclable)."""

    DEAD_STEM = (0, 2)
    DEAD_INNER = (3, 7)

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.stem = nn.Linear(5, 8)
        self.inner = nn.Linear(8, 10)
        self.back = nn.Linear(10, 8)
        self.head = nn.Linear(8, 2)
        kill(self.stem.bias, self.DEAD_STEM)
        kill(self.inner.bias, self.DEAD_INNER)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.stem(x))
        h = h + self.back(F.relu(self.inner(h)))
        return self.head(h)


class ConvBNReluConv(nn.Module):
    """conv -> BatchNorm -> relu -> conv, channels killed by the BatchNorm shift (beta)."""

    DEAD = (1, 4)

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(6, 4, 3)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-0.5, 0.5)
            self.bn.running_var.uniform_(0.5, 2.0)
            self.bn.weight.uniform_(0.5, 1.5)
            self.bn.bias[list(self.DEAD)] = KILL

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.relu(self.bn(self.conv1(x))))


class ConvReluFlattenLinear(nn.Module):
    """conv -> relu -> flatten -> linear: a dead channel is a block of H*W columns of the linear."""

    DEAD = (0, 3)

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.conv = nn.Conv2d(2, 5, 3)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(5 * 4 * 4, 3)
        kill(self.conv.bias, self.DEAD)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.relu(self.conv(x)), 1))


class PreactivationReused(nn.Module):
    """The producer's output is also read before the relu (fc3(h)): a use the site graph does not show."""

    DEAD = (2,)

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(4)
        self.fc1 = nn.Linear(4, 6)
        self.fc2 = nn.Linear(6, 2)
        self.fc3 = nn.Linear(6, 2)
        with torch.no_grad():
            self.fc1.bias[2] = -5.0  # dead, but its pre-activation still reaches the output through fc3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        return self.fc2(F.relu(h)) + self.fc3(h)


class ConcatFedRelu(nn.Module):
    """A relu read by a Linear and also concatenated into the output: zeroing the Linear's columns is not enough."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(5)
        self.fc1 = nn.Linear(4, 6)
        self.fc2 = nn.Linear(6, 2)
        kill(self.fc1.bias, (0,))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.fc1(x))
        return torch.cat([self.fc2(h), h], dim=1)


class ReluAtOutput(nn.Module):
    """The last relu's output is the model output: ReDo never recycles it."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 6), nn.ReLU())
        kill(self.net[0].bias, (1,))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


# -- recycle -----------------------------------------------------------------------------------------------------


def test_recycle_revives_every_dead_unit_and_keeps_the_output() -> None:
    model, batches = DeadHiddenMLP(), probe(6)
    saved = state_copy(model)
    repaired = repair_model(model, batches, strategy="recycle", seed=0)
    x = torch.cat(batches)
    with torch.no_grad():
        assert fires(model.fc1(x), DeadHiddenMLP.DEAD) == [False] * 4  # planted: dead before
        assert fires(repaired.model.fc1(x), DeadHiddenMLP.DEAD) == [True] * 4
    assert relative_l2(model, repaired.model, batches) <= 1e-6
    assert repaired.result.drift.relative_l2 <= 1e-6
    assert [(r.site, r.units, r.layers) for r in repaired.result.repaired] == [
        ("act", DeadHiddenMLP.DEAD, ("fc1", "fc2"))
    ]
    assert repaired.after.summary.dead == 0
    assert_state_equal(model, saved)  # the input model is untouched


def test_recycle_draws_from_the_linear_default_init_and_zeroes_outgoing_weights() -> None:
    model, batches = DeadHiddenMLP(), probe(6)
    new = repair_model(model, batches, strategy="recycle", seed=3).model
    dead, alive = list(DeadHiddenMLP.DEAD), [u for u in range(12) if u not in DeadHiddenMLP.DEAD]
    bound = 1 / math.sqrt(6)  # kaiming_uniform(a=sqrt(5)) on fan_in 6 -> U(-1/sqrt(6), 1/sqrt(6)) = +-0.408
    assert float(new.fc1.weight[dead].detach().abs().max()) <= bound
    assert not torch.equal(new.fc1.weight[dead], model.fc1.weight[dead])
    assert torch.equal(new.fc1.bias[dead], torch.zeros(4))
    assert torch.equal(new.fc2.weight[:, dead], torch.zeros(3, 4))
    assert torch.equal(new.fc1.weight[alive], model.fc1.weight[alive])
    assert torch.equal(new.fc2.weight[:, alive], model.fc2.weight[:, alive])
    assert torch.equal(new.fc2.bias, model.fc2.bias)


def test_recycle_is_seeded() -> None:
    model, batches = DeadHiddenMLP(), probe(6)
    first = repair_model(model, batches, strategy="recycle", seed=7).model
    again = repair_model(model, batches, strategy="recycle", seed=7).model
    other = repair_model(model, batches, strategy="recycle", seed=8).model
    assert torch.equal(first.fc1.weight, again.fc1.weight)
    assert not torch.equal(first.fc1.weight, other.fc1.weight)


def test_residual_feeding_units_are_skipped_and_named() -> None:
    model, batches = ResidualFedRelu(), probe(5)
    result = repair_model(model, batches, strategy="recycle").result
    assert [(s.site, s.units) for s in result.skipped] == [(":relu#1", ResidualFedRelu.DEAD_STEM)]
    assert "residual sum" in result.skipped[0].reason
    with torch.no_grad():  # brute force: the planted units plus any the dead stem units starved
        pre = model.inner(F.relu(model.stem(torch.cat(batches))))
    inner_dead = tuple(u for u in range(10) if not fires(pre, (u,))[0])
    assert set(ResidualFedRelu.DEAD_INNER) <= set(inner_dead)
    assert [(r.site, r.units, r.layers) for r in result.repaired] == [(":relu#2", inner_dead, ("inner", "back"))]
    assert relative_l2(model, repair_model(model, batches, strategy="recycle").model, batches) <= 1e-6


def test_the_scans_predicted_recycle_is_what_fix_does() -> None:
    model, batches = ResidualFedRelu(), probe(5)
    report = scan(model, batches, simulate=True, simulate_budget=None)
    repaired = repair_model(model, batches, strategy="recycle")
    (skipped,), (inner,) = repaired.result.skipped, repaired.result.repaired
    predicted = {f.site: f for f in report.findings if f.code.startswith("RD1")}
    # the stem feeds the residual sum: fix skips it, so the scan predicts no recycle there
    assert skipped.site == ":relu#1" and predicted[":relu#1"].prediction("recycle") is None
    still_dead = set(next(s for s in repaired.after.sites if s.name == inner.site).dead_units)
    revived = len([u for u in inner.units if u not in still_dead])
    cause = next(f for f in report.findings if f.site == inner.site and f.code.startswith("RD1"))
    assert set(cause.units) == set(inner.units)  # one cause for every dead unit of the site: the counts compare
    recycle = predicted[inner.site].prediction("recycle")
    assert recycle is not None and recycle.output_drift == repaired.result.drift.relative_l2
    # the planted units 3, 7 and unit 2, which only the dead stem units fed: new weights revive all three
    assert recycle.revived == revived == len(inner.units) == 3


def test_the_scans_predicted_recycle_counts_the_units_fix_had_to_draw_again() -> None:
    model = DeadHiddenMLP()
    # one input repeated: a fresh row misses it about half the time, so fix re-draws (same generator, same order)
    batches = [torch.randn(1, 6, generator=torch.Generator().manual_seed(0)).expand(8, 6).clone()]
    report = scan(model, batches, simulate=True, simulate_budget=None)
    repaired = repair_model(model, batches, strategy="recycle")
    (act,) = repaired.result.repaired
    still_dead = set(next(s for s in repaired.after.sites if s.name == "act").dead_units)
    findings = [f for f in report.findings if f.site == "act" and f.code.startswith("RD1")]
    assert sorted(u for f in findings for u in f.units) == list(act.units)  # the causes split the site's units
    causes = [f.prediction("recycle") for f in findings]
    assert act.redraws > 0 and all(c and c.output_drift == repaired.result.drift.relative_l2 for c in causes)
    assert all(c and c.forward_passes > 1 for c in causes)  # one pass per round of re-drawn weights
    assert sum(c.revived or 0 for c in causes if c) == len([u for u in act.units if u not in still_dead])


def test_conv_bn_relu_conv_resets_the_norm_channel_and_the_consumer_input_channel() -> None:
    model, batches = ConvBNReluConv(), probe(3, 6, 6, samples=64)
    repaired = repair_model(model, batches, strategy="recycle", seed=0)
    new, dead = repaired.model, list(ConvBNReluConv.DEAD)
    assert torch.equal(new.bn.weight[dead], torch.ones(2)) and torch.equal(new.bn.bias[dead], torch.zeros(2))
    assert torch.equal(new.bn.running_mean[dead], torch.zeros(2)) and torch.equal(
        new.bn.running_var[dead], torch.ones(2)
    )
    assert torch.equal(new.conv2.weight[:, dead], torch.zeros(4, 2, 3, 3))
    assert relative_l2(model, new, batches) <= 1e-6
    assert [s.dead for s in repaired.before.sites] == [2] and [s.dead for s in repaired.after.sites] == [0]


def test_conv_relu_flatten_linear_zeroes_each_dead_channel_block_of_columns() -> None:
    model, batches = ConvReluFlattenLinear(), probe(2, 6, 6, samples=64)
    new = repair_model(model, batches, strategy="recycle", seed=0).model
    block = 4 * 4  # a 6x6 input through a 3x3 conv: channel c is columns c*16 ... c*16+15
    zeroed = [c for c in range(5) if bool((new.fc.weight[:, c * block : (c + 1) * block] == 0).all())]
    assert zeroed == list(ConvReluFlattenLinear.DEAD)
    changed = (new.fc.weight != model.fc.weight).any(dim=0).nonzero().flatten().tolist()
    assert changed == [*range(0, 16), *range(48, 64)]  # channels 0 and 3
    assert relative_l2(model, new, batches) <= 1e-6


def test_a_layer_with_a_use_the_graph_does_not_show_is_caught_by_the_drift_check() -> None:
    model, batches = PreactivationReused(), probe(4)
    repaired = repair_model(model, batches, strategy="recycle")
    assert repaired.result.repaired == ()
    assert [(s.site, s.units) for s in repaired.result.skipped] == [(":relu", (2,))]
    assert "did not show" in repaired.result.skipped[0].reason
    assert relative_l2(model, repaired.model, batches) == 0.0


def test_the_output_layer_is_never_recycled() -> None:
    result = repair_model(ReluAtOutput(), probe(4), strategy="recycle").result
    assert [s.site for s in result.skipped] == ["net.1"] and "model output" in result.skipped[0].reason


def test_a_relu_that_reaches_a_concatenation_is_skipped() -> None:
    model, batches = ConcatFedRelu(), probe(4)
    result = repair_model(model, batches, strategy="recycle").result
    assert [(s.site, s.units) for s in result.skipped] == [(":relu", (0,))]
    assert "concatenation" in result.skipped[0].reason


def test_drift_counts_a_nan_in_both_outputs_as_no_change_and_in_one_as_infinite() -> None:
    meter = DriftMeter()
    meter.add(torch.tensor([3.0, math.nan, 4.0]), torch.tensor([3.0, math.nan, 4.0]))
    assert meter.result() == Drift(0.0, 0.0)
    meter.add(torch.tensor([0.0]), torch.tensor([1.0]))  # ||(0, 0, 1)|| / ||(3, 4, 0)|| = 1 / 5
    assert meter.result() == Drift(1.0, pytest.approx(0.2))
    meter.add(torch.tensor([1.0]), torch.tensor([math.nan]))
    assert meter.result().relative_l2 == math.inf


def test_include_dying_folds_the_mean_activation_into_the_consumer_bias() -> None:
    model, batches = DeadHiddenMLP(), probe(6, samples=200)
    x = torch.cat(batches)
    with torch.no_grad():  # make unit 0 fire on exactly one of 200 samples: dying at 1/200 = 0.5% < 1%
        top2 = (x @ model.fc1.weight[0]).topk(2).values
        model.fc1.bias[0] = -float(top2.mean())
        mean = float(F.relu(model.fc1(x))[:, 0].mean())
    assert mean > 0
    repaired = repair_model(model, batches, strategy="recycle", include_dying=True, seed=0)
    (site,) = repaired.result.repaired
    assert site.units == (0, *DeadHiddenMLP.DEAD) and site.dying_units == (0,)
    expected_bias = model.fc2.bias + model.fc2.weight[:, 0] * mean  # outgoing weights x mean activation
    assert torch.allclose(repaired.model.fc2.bias, expected_bias, atol=1e-6)
    assert torch.equal(repaired.model.fc2.weight[:, 0], torch.zeros(3))
    assert repaired.after.sites[0].dying_units == () and repaired.after.sites[0].dead_units == ()


def test_recycled_units_get_gradients_after_a_few_sgd_steps_where_before_they_had_none() -> None:
    model, batches = DeadHiddenMLP(), probe(6)
    x = torch.cat(batches)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()  # a tiny 3-class task
    dead = list(DeadHiddenMLP.DEAD)
    before = _gradient_norms(copy.deepcopy(model), x, y, dead)
    after = _gradient_norms(repair_model(model, batches, strategy="recycle").model, x, y, dead)
    assert before == [(0.0, 0.0)] * 3  # dead: no gradient in or out, step after step
    assert after[0][1] > 0  # outgoing weights learn at once (the unit fires again)
    assert all(incoming > 0 and outgoing > 0 for incoming, outgoing in after[1:])  # then the incoming ones too


def _gradient_norms(model: nn.Module, x: torch.Tensor, y: torch.Tensor, units: list[int]) -> list[tuple[float, float]]:
    """(|grad| of the units' incoming weights, |grad| of their outgoing weights) at each of 3 SGD steps."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    norms = []
    for _ in range(3):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        norms.append((float(model.fc1.weight.grad[units].norm()), float(model.fc2.weight.grad[:, units].norm())))
        optimizer.step()
    return norms


# -- bias shift --------------------------------------------------------------------------------------------------


def test_bias_shift_raises_each_dead_unit_to_the_margin() -> None:
    model, batches = DeadHiddenMLP(), probe(6)
    repaired = repair_model(model, batches, strategy="bias-shift")
    x = torch.cat(batches)
    with torch.no_grad():
        highest = repaired.model.fc1(x).amax(dim=0)
    for unit in DeadHiddenMLP.DEAD:  # max pre-activation was ~ -1000 + max(x.w); now BIAS_MARGIN = 0.1
        assert highest[unit].item() == pytest.approx(BIAS_MARGIN, abs=1e-3)
    assert repaired.after.summary.dead == 0
    assert repaired.result.drift.relative_l2 == pytest.approx(relative_l2(model, repaired.model, batches), rel=1e-6)
    assert repaired.result.drift.relative_l2 > 0


def test_bias_shift_behind_a_batchnorm_moves_beta() -> None:
    model, batches = ConvBNReluConv(), probe(3, 6, 6, samples=64)
    repaired = repair_model(model, batches, strategy="bias-shift")
    assert [r.layers for r in repaired.result.repaired] == [("bn",)]
    assert torch.equal(repaired.model.conv1.bias, model.conv1.bias)
    assert repaired.after.summary.dead == 0


# -- leaky -------------------------------------------------------------------------------------------------------


def test_leaky_swaps_relu_modules_and_reports_functional_calls() -> None:
    model, batches = ResidualFedRelu(), probe(5)
    result = repair_model(model, batches, strategy="leaky").result
    assert result.repaired == ()
    assert {s.site for s in result.skipped} == {":relu#1", ":relu#2"}
    assert all("not changeable" in s.reason for s in result.skipped)
    mlp = DeadHiddenMLP()
    swapped = repair_model(mlp, probe(6), strategy="leaky")
    assert isinstance(swapped.model.act, nn.LeakyReLU) and swapped.model.act.negative_slope == 0.01
    assert isinstance(mlp.act, nn.ReLU)
    assert swapped.result.drift.relative_l2 == pytest.approx(relative_l2(mlp, swapped.model, probe(6)), rel=1e-6)
    assert swapped.result.notes == (
        "in your model code, make DeadHiddenMLP.act an nn.LeakyReLU(0.01) instead of nn.ReLU()",
    )


def test_include_dying_is_for_recycle_only() -> None:
    with pytest.raises(UsageError, match="--include-dying"):
        repair_model(DeadHiddenMLP(), probe(6), strategy=Strategy.bias_shift, include_dying=True)
