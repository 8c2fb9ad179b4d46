"""Certification (issue 18): a certified claim is never contradicted, by the probe or by a gradient search.

Oracles: the scan's own counts on a probe inside the domain (a certified-dead unit must be dead there, a
certified-active one must fire at every position), and a projected-gradient search that maximises a certified
unit's pre-activation inside the box (it must never find a positive value).
"""

from __future__ import annotations

import math

import models as m
import pytest
import torch
import torch.nn.functional as F
from _certify_models import RandomResidualNet, TinyResNet, gradient_search, per_unit, preactivations
from torch import nn

import relu_doctor
from relu_doctor.certification import Box, box_from_spec, certify
from relu_doctor.engine.bounds.rules import Interval, default_rules
from relu_doctor.errors import CertifyError, UsageError

# (model, shape of one sample) for every test model whose forward takes one float tensor.
TEST_MODELS = [
    (m.ReusedReluBlock, (8,)),
    (m.FunctionalReluNet, (6,)),
    (m.InplaceReluThenAdd, (8,)),
    (m.ConvBNReluShifted, (3, 6, 6)),
    (m.TokenFFN, (5, 8)),
    (m.Conv1dNet, (4, 9)),
    (m.TransformerReluLayer, (4, 16)),
    (m.DropoutBeforeRelu, (4,)),
    (m.NaNUnit, (4,)),
    (m.EveryReluForm, (3,)),
    (m.ConvNet2d, (2, 6, 6)),
    (m.GoldenReportNet, (4,)),
    (TinyResNet, (2, 8, 8)),
]


def _probe(shape: tuple[int, ...], samples: int = 256, seed: int = 0) -> torch.Tensor:
    return torch.randn((samples, *shape), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(("build", "shape"), TEST_MODELS, ids=[b.__name__ for b, _ in TEST_MODELS])
def test_certified_units_agree_with_every_probe_sample(build, shape):
    torch.manual_seed(0)
    model = build().eval()
    probe = _probe(shape)
    cert = certify(model, "probe", samples=[probe])
    report = relu_doctor.scan(model, [probe[:128], probe[128:]])
    assert [s.name for s in cert.sites] == [s.name for s in report.sites]
    for site in report.sites:
        proved = cert.site(site.name)
        assert proved is not None
        assert set(proved.certified_dead) <= set(site.dead_units), site.name
        counters = site.counters
        for unit in proved.certified_active:  # fires at every position of every sample
            assert counters.positive[unit] == counters.positions, (site.name, unit)
        finite = [u for u in range(site.units) if math.isfinite(counters.max_preactivation[u])]
        for unit in finite:  # the bound holds on the probe, which lies inside its own box
            assert counters.max_preactivation[unit] <= proved.upper_bound[unit] + 1e-4, (site.name, unit)


def test_planted_units_are_certified_on_the_probe_box():
    # Bias -100 and BN beta -50 can not be overcome by any input of the probe's box.
    model = TinyResNet().eval()
    cert = certify(model, "probe", samples=[_probe((2, 8, 8), 512)], methods=("interval",))
    assert cert.sites[0].name == ":relu#1"
    assert set(TinyResNet.PLANTED_STEM) <= set(cert.sites[0].certified_dead)
    head = next(s for s in cert.sites if s.name == ":relu#2")
    assert set(TinyResNet.PLANTED_HEAD) <= set(head.certified_dead)
    assert all(method == "interval" for s in cert.sites for method in s.dead_method)
    for build, dead_of in (
        (m.ReusedReluBlock, {"relu#1": (0, 3), "relu#2": (1, 2, 5)}),
        (m.ConvBNReluShifted, {"relu": (1, 4)}),
        (m.TokenFFN, {"relu": (3, 9)}),
    ):
        torch.manual_seed(0)
        model = build().eval()
        shape = {m.ReusedReluBlock: (8,), m.ConvBNReluShifted: (3, 6, 6), m.TokenFFN: (5, 8)}[build]
        cert = certify(model, "probe", samples=[_probe(shape, 512)])
        for name, units in dead_of.items():
            assert set(units) <= set(cert.site(name).certified_dead), (build.__name__, name)


@pytest.mark.parametrize("seed", range(8))
def test_gradient_search_never_beats_a_certificate(seed):
    model = RandomResidualNet(seed).eval()
    lo, hi = -torch.ones(2, 4, 4), torch.ones(2, 4, 4)
    cert = certify(model, Box(lo.double(), hi.double()))
    highest = gradient_search(model, lo, hi, maximise=True, seed=seed, restarts=8, steps=20)
    lowest = gradient_search(model, lo, hi, maximise=False, seed=seed, restarts=8, steps=20)
    assert len(cert.sites) == len(highest)
    for site, high, low in zip(cert.sites, highest, lowest):
        for unit in site.certified_dead:
            assert high[unit] <= 0, (seed, site.name, unit, float(high[unit]))
        for unit in site.certified_active:
            assert low[unit] > 0, (seed, site.name, unit, float(low[unit]))
        for unit in range(site.units):  # every bound holds where the search went
            assert high[unit] <= site.upper_bound[unit] + 1e-4 and low[unit] >= site.lower_bound[unit] - 1e-4


def test_the_property_test_has_teeth():
    # Over the seeds above, many units are certified (by intervals alone), and the search finds firing inputs.
    certified = found_firing = 0
    for seed in range(8):
        model = RandomResidualNet(seed).eval()
        lo, hi = -torch.ones(2, 4, 4), torch.ones(2, 4, 4)
        cert = certify(model, Box(lo.double(), hi.double()), methods=("interval",))
        highest = gradient_search(model, lo, hi, maximise=True, seed=seed, restarts=4, steps=5)
        certified += cert.certified_dead
        found_firing += sum(int((h > 0).sum()) for h in highest)
    assert certified >= 20 and found_firing >= 40


class CancellingNet(nn.Module):
    """fc2(fc1(x)) = -0.5 exactly, but interval arithmetic loses the cancellation: only the relaxation proves it."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(2, 2)
        self.fc2 = nn.Linear(2, 1)
        with torch.no_grad():
            self.fc1.weight.copy_(torch.tensor([[1.0, 1.0], [1.0, 1.0]]))
            self.fc1.bias.zero_()
            self.fc2.weight.copy_(torch.tensor([[1.0, -1.0]]))
            self.fc2.bias.fill_(-0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.fc2(self.fc1(x)))


def test_relaxation_proves_what_intervals_cannot_and_says_so():
    model = CancellingNet().eval()
    interval = certify(model, "box:-1,1", input_shape=(2,), methods=("interval",))
    relaxed = certify(model, "box:-1,1", input_shape=(2,))
    # intervals: fc1 in [-2, 2]^2, fc2 in [-4.5, 3.5]; relaxation: exactly -0.5
    assert interval.sites[0].certified_dead == () and interval.sites[0].upper_bound[0] == pytest.approx(3.5)
    assert relaxed.sites[0].certified_dead == (0,) and relaxed.sites[0].dead_method == ("linear",)
    assert relaxed.sites[0].upper_bound[0] == pytest.approx(-0.5)
    assert relaxed.sites[0].interval_upper_bound[0] == pytest.approx(3.5)


class UnknownOpNet(nn.Module):
    """relu(fc1) -> cos -> relu(fc2 with bias -100): cos has no rule, so fc2's planted unit is not certified."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(3, 4)
        self.fc2 = nn.Linear(4, 4)
        with torch.no_grad():
            self.fc1.bias[0] = -100.0
            self.fc2.bias[1] = -100.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.fc2(torch.cos(F.relu(self.fc1(x)))))


def test_an_op_without_a_rule_voids_claims_downstream_and_is_named():
    cert = certify(UnknownOpNet().eval(), "box:-1,1", input_shape=(3,))
    first, second = cert.sites
    assert first.certified_dead == (0,)
    assert second.certified_dead == () and math.isinf(second.upper_bound[1])
    assert any("cos in <root>" in note for note in second.notes)
    assert any("no bound through cos" in note for note in cert.notes)
    # With a rule for cos (values in [-1, 1]) the planted unit is proved dead.
    rules = default_rules()
    rules.register(
        ["cos"],
        lambda call: [
            Interval(-torch.ones_like(call.interval(call.args[0]).lo), torch.ones_like(call.interval(call.args[0]).lo))
        ],
    )
    assert certify(UnknownOpNet().eval(), "box:-1,1", input_shape=(3,), rules=rules).sites[1].certified_dead == (1,)


class SliceWriteNet(nn.Module):
    """The input is copied into a slice of a zero buffer: the buffer is not a constant any more."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 1)
        with torch.no_grad():
            self.fc.weight.fill_(1.0)
            self.fc.bias.fill_(-1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        buffer = torch.zeros(x.shape[0], 8)
        buffer[:, :4] = x
        return F.relu(self.fc(buffer))


class ViewThenInplaceNet(nn.Module):
    """A view is taken, then its base is overwritten in place: the view's old bounds are stale."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x * 0.0 - 1.0  # in [-1, -1]
        view = h.view(-1, 4)
        h.copy_(x)  # now in [0, 1]
        return F.relu(view + 0.0)


def test_writes_through_aliases_never_leave_stale_bounds():
    # true maximum of fc over [0, 1]^4 in the slice: 4 - 1 = 3 > 0; a stale "zeros" would claim -1.
    cert = certify(SliceWriteNet().eval(), "box:0,1", input_shape=(4,))
    assert cert.sites[0].certified_dead == () and cert.sites[0].upper_bound[0] >= 3.0 - 1e-9
    cert = certify(ViewThenInplaceNet().eval(), "box:0,1", input_shape=(4,))
    assert cert.sites[0].certified_dead == ()


class BranchOnInputNet(nn.Module):
    """Python control flow on an input value: what follows depends on the centre's branch, so it is not claimed."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(2, 2)
        with torch.no_grad():
            self.fc.bias.fill_(-100.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.fc(x))
        if x.sum() > 0:
            return F.relu(h - 1.0)
        return F.relu(h + 1000.0)


def test_data_dependent_control_flow_voids_everything_after_it():
    cert = certify(BranchOnInputNet().eval(), "box:-1,1", input_shape=(2,))
    assert cert.sites[0].certified_dead == (0, 1)
    assert cert.sites[1].certified_dead == () and any("read input-dependent values" in n for n in cert.sites[1].notes)


def test_relaxation_size_limit_is_reported():
    model = TinyResNet().eval()
    cert = certify(model, "box:-1,1", input_shape=(2, 8, 8), work_limit=10)
    skipped = [n for s in cert.sites for n in s.notes if n.startswith("linear relaxation skipped")]
    assert skipped and "> 10" in skipped[0]
    assert not any(s.relaxed for s in cert.sites if any(n.startswith("linear relaxation skipped") for n in s.notes))


def test_model_state_is_left_as_it_was():
    model = TinyResNet().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    certify(model, "box:-1,1", input_shape=(2, 8, 8))
    assert model.training and all(mod.training for mod in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_bounds_hold_on_the_gradient_search_for_the_tiny_resnet():
    model = TinyResNet(beta_spread=2.0).eval()
    lo, hi = -torch.ones(2, 8, 8), torch.ones(2, 8, 8)
    cert = certify(model, Box(lo.double(), hi.double()))
    highest = gradient_search(model, lo, hi, maximise=True, restarts=6, steps=15)
    for site, high in zip(cert.sites, highest):
        assert all(high[u] <= 0 for u in site.certified_dead), site.name
        assert all(high[u] <= site.upper_bound[u] + 1e-4 for u in range(site.units)), site.name
    # the brute force agrees with itself: preactivations() sees one tensor per site
    assert len(preactivations(model, lo.unsqueeze(0))) == len(cert.sites) == 6
    assert per_unit(torch.zeros(3, 4, 2, 2), "max").shape == (3, 4)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("box:1", "two numbers"),
        ("box:2,1", "LO <= HI"),
        ("box:a,1", "not a number"),
        ("probe:-1", ">= 0"),
        ("cube", "must be one of"),
        ("file:bounds.txt", ".npy or .npz"),
        ("box:0,inf", "finite"),
    ],
)
def test_bad_domain_specs_are_usage_errors(spec, message):
    with pytest.raises(UsageError, match=message):
        box_from_spec(spec, input_shape=(2,))


def test_file_domains(tmp_path):
    import numpy as np

    lo, hi = np.zeros((3,)), np.full((3,), 2.0)
    np.save(tmp_path / "box.npy", np.stack([lo, hi]))
    np.savez(tmp_path / "box.npz", lo=lo, hi=hi)
    for name in ("box.npy", "file:" + str(tmp_path / "box.npz")):
        box = box_from_spec(str(tmp_path / name) if name == "box.npy" else name, input_shape=(3,))
        assert torch.equal(box.lo, torch.zeros(3, dtype=torch.float64)) and float(box.hi.max()) == 2.0
    np.save(tmp_path / "bad.npy", np.stack([hi, lo]))
    with pytest.raises(CertifyError, match="exceed"):
        box_from_spec(str(tmp_path / "bad.npy"), input_shape=(3,))
    with pytest.raises(CertifyError, match="do not fit"):
        box_from_spec(str(tmp_path / "box.npy"), input_shape=(4,))
    with pytest.raises(CertifyError, match="not a file"):
        box_from_spec("file:" + str(tmp_path / "missing.npy"), input_shape=(3,))


def test_public_name():
    assert relu_doctor.certify is certify


# Each op's rule, checked elementwise against 2,000 random inputs of its box (and the box's corners).
OPS = {
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "silu": F.silu,
    "hardswish": F.hardswish,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "leaky_relu": F.leaky_relu,
    "elu": F.elu,
    "softplus": F.softplus,
    "abs": torch.abs,
    "square": lambda x: x * x,
    "divide": lambda x: x / (2.0 + x[..., :1].abs()),
    "layer_norm": lambda x: F.layer_norm(
        x, (x.shape[-1],), torch.linspace(-1, 2, x.shape[-1], dtype=x.dtype), torch.ones(x.shape[-1], dtype=x.dtype)
    ),
    "avg_pool": lambda x: F.avg_pool1d(x.unsqueeze(1), 2).squeeze(1),
    "max_pool": lambda x: F.max_pool1d(x.unsqueeze(1), 2).squeeze(1),
    "mean_cat": lambda x: torch.cat([x.mean(-1, keepdim=True), x[..., 1:] - x[..., :-1]], -1),
    "where_on_input": lambda x: torch.where(x > 0, x, -2 * x),
    "sort": lambda x: x.sort(-1).values,
    "outer": lambda x: x.unsqueeze(-1) @ x.unsqueeze(-2),
    "threshold": lambda x: F.threshold(x, 0.5, -3.0),
    "clamp": lambda x: x.clamp(-0.5, 0.7),
    "sub_neg": lambda x: 1.0 - (-x).exp(),
}


class OneOp(nn.Module):
    def __init__(self, op) -> None:
        super().__init__()
        self.op = op

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.op(x))


@pytest.mark.parametrize("name", sorted(OPS))
def test_every_rule_contains_the_op_on_samples_of_its_box(name):
    from relu_doctor.engine.bounds.propagate import BoundPass

    g = torch.Generator().manual_seed(0)
    centre, radius = torch.randn(1, 6, generator=g), torch.rand(1, 6, generator=g) * 2
    lo, hi = (centre - radius).double(), (centre + radius).double()
    bound_pass = BoundPass(OneOp(OPS[name]).eval(), default_rules())
    bound_pass.run(centre, Interval(lo, hi))
    (site,) = bound_pass.sites.values()
    assert site.pre is not None and not bool(torch.isinf(site.pre.hi).all())
    corners = torch.where(torch.rand(64, 6, generator=g) < 0.5, lo, hi)
    x = torch.cat([lo + (hi - lo) * torch.rand(2000, 6, generator=g, dtype=torch.float64), corners])
    values = OPS[name](x)
    assert bool((values >= site.pre.lo - 1e-9).all()) and bool((values <= site.pre.hi + 1e-9).all()), name


def test_conv_bounds_reuse_scratch_memory_without_touching_float64_weights():
    # Convolutions copy their weight into one reused float64 buffer and take |W| in place there: with float64
    # weights (no conversion needed) and a big conv followed by a small one, the weights stay bit-identical and
    # the bounds equal an independent interval computation (centre +- |W| * radius, per conv).
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(2, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 3, 1), nn.ReLU()).double().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    lo, hi = -torch.ones(2, 5, 5, dtype=torch.float64), torch.ones(2, 5, 5, dtype=torch.float64)
    cert = certify(model, Box(lo, hi), methods=("interval",))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    c, r = ((lo + hi) / 2).unsqueeze(0), ((hi - lo) / 2).unsqueeze(0)
    expected = []
    for conv in (model[0], model[2]):
        centre = F.conv2d(c, conv.weight, conv.bias, padding=conv.padding)
        radius = F.conv2d(r, conv.weight.abs(), None, padding=conv.padding)
        expected.append((centre + radius).amax(dim=(0, 2, 3)))
        low, high = (centre - radius).clamp(min=0), (centre + radius).clamp(min=0)
        c, r = (low + high) / 2, (high - low) / 2
    for site, upper in zip(cert.sites, expected):
        assert torch.allclose(torch.tensor(site.upper_bound, dtype=torch.float64), upper, rtol=1e-12, atol=1e-12)
