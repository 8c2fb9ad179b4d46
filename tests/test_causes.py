"""Causes of dead units (RD1xx): a planted model per cause gets that cause's code, and a model with several planted
causes gets the right cause for each dead unit. Expected numbers are recomputed by running the layers by hand."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from relu_doctor import scan
from relu_doctor.analysis.diagnose import BIAS_MARGIN
from relu_doctor.report import Report

KILL = -50.0


def _seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def causes_by_unit(report: Report, site: str) -> dict[int, str]:
    """unit -> RD1xx code, from the report's findings for one site."""
    return {u: f.code for f in report.findings if f.site == site and f.code.startswith("RD1") for u in f.units}


def finding(report: Report, code: str, site: str | None = None):  # noqa: ANN201
    matches = [f for f in report.findings if f.code == code and (site is None or f.site == site)]
    assert len(matches) == 1, [(f.code, f.site) for f in report.findings]
    return matches[0]


class BiasKilledMLP(nn.Module):
    """fc2 units 1 and 4 get bias -50; fc2's weights are positive on non-negative inputs, so W·x > 0 everywhere."""

    KILLED = (1, 4)

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.fc2 = nn.Linear(4, 8), nn.Linear(8, 6)
        with torch.no_grad():
            self.fc1.bias.fill_(1.0)  # every fc1 unit alive on a standard-normal probe
            self.fc2.weight.abs_()
            self.fc2.bias.fill_(0.0)
            self.fc2.bias[list(self.KILLED)] = KILL

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.fc2(F.relu(self.fc1(x))))


class BatchNormShiftedConv(nn.Module):
    """bn channels 0 and 2 have beta = -6 with gamma = 1 (<= -3 |gamma|); the conv output is ~N(0, <1)."""

    SHIFTED = (0, 2)

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.bn, self.relu = nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU()
        with torch.no_grad():
            self.bn.bias[list(self.SHIFTED)] = -6.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x)))


class UpstreamDeadChain(nn.Module):
    """fc1 is wholly bias-killed, so fc2 sees only zeros: its units with bias <= 0 are dead, the rest constant."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.fc2, self.head = nn.Linear(4, 6), nn.Linear(6, 4), nn.Linear(4, 2)
        self.act1, self.act2 = nn.ReLU(), nn.ReLU()
        with torch.no_grad():
            self.fc1.weight.abs_()
            self.fc1.bias.fill_(KILL)
            self.fc2.bias.copy_(torch.tensor([-0.5, 0.0, 0.25, 0.75]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))


class CollapsedWeightsMLP(nn.Module):
    """fc unit 2 has all-zero incoming weights and bias -0.1 (what L2 with Adam leaves of a unit)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc, self.act = nn.Linear(4, 5), nn.ReLU()
        with torch.no_grad():
            self.fc.bias.fill_(0.5)
            self.fc.weight[2] = 0.0
            self.fc.bias[2] = -0.1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.fc(x))


class WeightsAwayMLP(nn.Module):
    """fc2 unit 0 reads non-negative inputs through negative weights: W·x <= 0 whatever the input, bias 0."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.fc2 = nn.Linear(4, 8), nn.Linear(8, 3)
        with torch.no_grad():
            self.fc1.bias.fill_(1.0)
            self.fc2.weight.abs_()
            self.fc2.weight[0] = -self.fc2.weight[0]
            self.fc2.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.fc2(F.relu(self.fc1(x))))


class RawPixelMLP(nn.Module):
    """A default-initialised first layer fed raw 0..255 pixels: every unit whose weights sum below 0 dies."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc, self.act = nn.Linear(16, 12), nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.fc(x))


class MatmulOwnParameter(nn.Module):
    """The relu's input comes from ``x @ self.weight`` in a custom module: no Linear/Conv to read, cause unknown."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(4, 3))
        with torch.no_grad():
            self.weight[:, 1] = -1.0  # feature 1 = -(sum of positive inputs): dead on a positive probe

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(torch.matmul(x, self.weight))


class PlantedDeathNet(nn.Module):
    """Bias-killed units, BatchNorm-shifted channels and an upstream-dead chain in one model.

    conv -> bn (channels 0, 1: beta -6) -> relu1 -> pool -> flatten -> fc1 (units 0-2: bias -50; unit 3: zero
    weights) -> relu -> fc2 (all units bias -50) -> relu -> fc3 (reads only dead units: 0, 1 dead, 2, 3 constant).
    All other weights are made positive so nothing dies that was not planted.
    """

    BN_SHIFTED, FC1_BIAS, FC1_COLLAPSED, FC3_DEAD, FC3_CONSTANT = (0, 1), (0, 1, 2), (3,), (0, 1), (2, 3)

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1, self.bn1, self.relu1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc1, self.fc2, self.fc3, self.head = nn.Linear(32, 16), nn.Linear(16, 8), nn.Linear(8, 4), nn.Linear(4, 3)
        with torch.no_grad():
            self.bn1.bias[list(self.BN_SHIFTED)] = -6.0
            for layer in (self.fc1, self.fc2):
                layer.weight.abs_()
                layer.bias.fill_(0.1)
            self.fc1.bias[list(self.FC1_BIAS)] = KILL
            self.fc1.weight[3] = 0.0
            self.fc1.bias[3] = -0.2
            self.fc2.bias.fill_(KILL)
            self.fc3.bias.copy_(torch.tensor([-0.5, -0.1, 0.3, 0.2]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.relu1(self.bn1(self.conv1(x)))).flatten(1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.head(F.relu(self.fc3(x)))


def test_bias_killed_units_get_rd101_with_the_shift_to_a_small_margin() -> None:
    model, x = BiasKilledMLP(), torch.randn(200, 4, generator=_seeded())
    report = scan(model, [x])
    site = report.sites[1]
    assert site.dead_units == BiasKilledMLP.KILLED
    assert causes_by_unit(report, site.name) == {1: "RD101", 4: "RD101"}
    pre = model.fc2(F.relu(model.fc1(x))).detach()
    # the shift brings max pre-activation (about -50 + max W·x) to +0.1
    shifts = [BIAS_MARGIN - float(pre[:, u].max()) for u in BiasKilledMLP.KILLED]
    text = finding(report, "RD101").suggestion
    assert f"{min(shifts):.3g} … {max(shifts):.3g}" in text and "fc2.bias" in text
    assert "RD001" not in {f.code for f in report.findings}  # the cause replaces the generic finding


def test_batchnorm_shifted_channels_get_rd102() -> None:
    report = scan(BatchNormShiftedConv(), [torch.randn(16, 2, 6, 6, generator=_seeded())])
    site = report.sites[0]
    assert site.dead_units == BatchNormShiftedConv.SHIFTED
    assert causes_by_unit(report, site.name) == {0: "RD102", 2: "RD102"}
    assert "bn.bias" in finding(report, "RD102").cause  # beta -6 <= -3 * |gamma 1|


def test_units_fed_only_by_dead_units_get_rd103_naming_the_upstream_site() -> None:
    report = scan(UpstreamDeadChain(), [torch.randn(64, 4, generator=_seeded())])
    act1, act2 = report.sites
    assert act1.dead == act1.units == 6
    # fc2 sees zeros only: pre-activation = bias (-0.5, 0, 0.25, 0.75); bias <= 0 -> dead, > 0 -> constant
    assert act2.dead_units == (0, 1) and act2.constant_units == (2, 3)
    assert causes_by_unit(report, "act2") == {0: "RD103", 1: "RD103"}
    assert "act1" in finding(report, "RD103").cause
    assert causes_by_unit(report, "act1") == dict.fromkeys(range(6), "RD101")


def test_dead_channels_flattened_into_a_linear_are_traced_back_to_their_site() -> None:
    model = PlantedDeathNet()
    with torch.no_grad():
        model.bn1.bias.fill_(-6.0)  # every conv channel dead -> fc1 sees only zeros through pool + flatten
    report = scan(model, [torch.randn(32, 3, 8, 8, generator=_seeded())])
    fc1_site = report.sites[1]
    assert set(causes_by_unit(report, fc1_site.name).values()) <= {"RD103", "RD104"}
    assert "relu1" in finding(report, "RD103", fc1_site.name).cause


def test_collapsed_weights_get_rd104() -> None:
    report = scan(CollapsedWeightsMLP(), [torch.randn(64, 4, generator=_seeded())])
    assert report.sites[0].dead_units == (2,)
    assert causes_by_unit(report, "act") == {2: "RD104"}


def test_weights_pointing_away_from_nonnegative_inputs_get_rd106() -> None:
    report = scan(WeightsAwayMLP(), [torch.randn(64, 4, generator=_seeded())])
    site = report.sites[1]
    assert site.dead_units == (0,)
    assert causes_by_unit(report, site.name) == {0: "RD106"}
    assert "100% of their incoming weight is negative" in finding(report, "RD106").cause


def test_unnormalised_probe_at_the_first_layer_gets_rd105_and_a_normalised_one_does_not() -> None:
    model = RawPixelMLP()
    raw = torch.randint(0, 256, (128, 16), generator=_seeded()).float()
    report = scan(model, [raw])
    dead = report.sites[0].dead_units
    assert dead  # raw pixels: RMS ~147, units whose weights sum below 0 never fire
    assert causes_by_unit(report, "act") == dict.fromkeys(dead, "RD105")
    standardised = (raw - raw.mean()) / raw.std()
    again = scan(model, [standardised])
    assert "RD105" not in {f.code for f in again.findings}


def test_a_producer_that_cannot_be_read_gets_rd100_with_the_reason() -> None:
    report = scan(MatmulOwnParameter(), [torch.rand(32, 4, generator=_seeded())])
    site = report.sites[0]
    assert site.dead_units == (1,)
    assert causes_by_unit(report, site.name) == {1: "RD100"}
    assert "not analysed" in finding(report, "RD100").cause


def test_each_planted_dead_unit_gets_its_planted_cause() -> None:
    model = PlantedDeathNet()
    report = scan(model, [torch.randn(64, 3, 8, 8, generator=_seeded(1))])
    relu1, fc1_site, fc2_site, fc3_site = report.sites
    expected = {
        relu1.name: dict.fromkeys(PlantedDeathNet.BN_SHIFTED, "RD102"),
        fc1_site.name: {**dict.fromkeys(PlantedDeathNet.FC1_BIAS, "RD101"), 3: "RD104"},
        fc2_site.name: dict.fromkeys(range(8), "RD101"),
        fc3_site.name: dict.fromkeys(PlantedDeathNet.FC3_DEAD, "RD103"),
    }
    for site in report.sites:
        assert causes_by_unit(report, site.name) == expected[site.name], site.name
        assert sorted(causes_by_unit(report, site.name)) == list(site.dead_units)  # causes add up to the dead units
    assert fc3_site.constant_units == PlantedDeathNet.FC3_CONSTANT
    assert fc2_site.name in finding(report, "RD103").cause


@pytest.mark.parametrize(
    ("units", "fan_in", "kernel", "groups", "upstream_units"),
    [(6, 8, 1, 1, 8), (6, 4 * 9, 9, 1, 4), (6, 2 * 9, 9, 3, 6), (4, 12, 1, 1, 3)],
    ids=["linear", "conv", "grouped-conv", "flattened-blocks"],
)
def test_fed_by_dead_matches_a_per_unit_set_count(
    units: int, fan_in: int, kernel: int, groups: int, upstream_units: int
) -> None:
    from types import SimpleNamespace

    from relu_doctor.analysis.causes import _fed_by_dead, _Layer

    gen = _seeded()
    rows = torch.randn(units, fan_in, generator=gen) * (torch.rand(units, fan_in, generator=gen) < 0.3)
    dead_units = tuple(u for u in range(upstream_units) if u % 2 == 0)
    per_group, block = fan_in // kernel, fan_in // kernel * groups // upstream_units

    def owner(u: int, c: int) -> int:
        return ((c // kernel) + u // (units // groups) * per_group) // block

    for u in range(1, units, 2):  # odd units keep only weights from dead owners (when their group has any)
        rows[u] *= torch.tensor([owner(u, c) in dead_units for c in range(fan_in)])
    rows[0] = 0.0  # no incoming weight at all: never "fed by dead"
    layer = _Layer("fc", rows, torch.zeros(units), "fc.bias", None, groups, kernel)
    upstream = SimpleNamespace(units=upstream_units, dead_units=dead_units)
    expected = []
    for u in range(units):
        owners = {owner(u, c) for c in range(fan_in) if rows[u, c] != 0}
        expected.append(bool(owners) and owners <= set(dead_units))
    assert _fed_by_dead(layer, upstream).tolist() == expected  # type: ignore[arg-type]
    assert any(expected)  # the case exercises a positive answer


class MixedCauses(nn.Module):
    """Dozens of dead units with every parameter-based cause of a Linear stack, on a non-negative probe:
    fc1 units 0-19 bias -30 (RD101), 20-25 all-negative weights (RD106), 26-29 zero weights, bias -1 (RD104);
    fc2 units 0-9 read only dead fc1 units (RD103), 10-29 bias -100 (RD101), some of those also collapsed."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.fc2, self.head = nn.Linear(6, 64), nn.Linear(64, 48), nn.Linear(48, 3)
        with torch.no_grad():
            self.fc1.bias[:20] = -30.0
            self.fc1.weight[20:26] = -self.fc1.weight[20:26].abs()
            self.fc1.bias[20:26] = -0.5
            self.fc1.weight[26:30] = 0.0
            self.fc1.bias[26:30] = -1.0
            self.fc2.weight[:10, 30:] = 0.0  # only dead fc1 units (0-29) feed these
            self.fc2.bias[:10] = -0.25
            self.fc2.bias[10:30] = -100.0
            self.fc2.weight[25:28] = 0.0  # collapsed beats negative bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.fc2(F.relu(self.fc1(x)))))


def test_every_dead_unit_gets_the_first_rule_that_holds_with_its_numbers() -> None:
    """The rules run for all units at once; here they run unit by unit in Python floats, in the module docstring's
    order, on pre-activations recomputed by hand, and every code, unit and number must agree."""
    from relu_doctor.analysis.causes import explain
    from relu_doctor.api import scan_observed

    model = MixedCauses().eval()
    x = torch.rand(256, 6, generator=_seeded(2))
    report, observed = scan_observed(model, [x])
    evidence = explain(model, report.sites, observed)
    got = {(c.site, u): (c.code, i, c) for c in evidence.causes for i, u in enumerate(c.units)}
    first, second = report.sites
    with torch.no_grad():
        pre1 = F.linear(x, model.fc1.weight, model.fc1.bias)
        pre2 = F.linear(F.relu(pre1), model.fc2.weight, model.fc2.bias)
    expected_codes = {}
    for site, layer, pre, upstream in ((first, model.fc1, pre1, None), (second, model.fc2, pre2, first)):
        norms = layer.weight.detach().norm(dim=1)
        typical = float(norms.median())
        for unit in site.dead_units:
            weights, bias = layer.weight[unit], float(layer.bias[unit])
            norm, highest = float(norms[unit]), float(pre[:, unit].max())
            reach, shift = highest - bias, BIAS_MARGIN - highest
            fed = upstream is not None and bool((weights != 0).any())
            fed = fed and all(int(c) in upstream.dead_units for c in torch.nonzero(weights).flatten())
            if not (norm > 1e-3 * typical and norm > 0):
                code, numbers = "RD104", {"values": norm}
            elif fed:
                code, numbers = "RD103", {"values": bias}
            elif bias < 0 and reach > 0:
                code, numbers = "RD101", {"values": bias, "reaches": reach, "shifts": shift}
            elif reach <= 0:
                negative = float(weights.clamp(max=0).abs().sum() / weights.abs().sum().clamp(min=1e-30))
                code, numbers = "RD106", {"reaches": reach, "shifts": shift, "scales": negative}
            else:
                code, numbers = "RD100", {}
            expected_codes[(site.name, unit)] = code
            got_code, index, record = got[(site.name, unit)]
            assert got_code == code, (site.name, unit)
            for column, value in numbers.items():
                assert getattr(record, column)[index] == pytest.approx(value, rel=1e-6), (site.name, unit, column)
    assert set(got) == set(expected_codes)
    counts = {code: sum(1 for c in expected_codes.values() if c == code) for code in set(expected_codes.values())}
    assert counts.keys() >= {"RD101", "RD103", "RD104", "RD106"} and sum(counts.values()) >= 50, counts
