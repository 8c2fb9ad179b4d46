"""Per-site metrics and site rules: ReDo dormancy, constant units and constant output, relu on the output, the
code registry, and the table/markdown/JSON agreeing on causes."""

from __future__ import annotations

import re

import torch
from torch import nn

from relu_doctor import scan
from relu_doctor.analysis.build import build_report
from relu_doctor.codes import describe_codes
from relu_doctor.engine.runner import observe
from relu_doctor.render.json_format import report_dict
from relu_doctor.render.markdown import render_markdown
from relu_doctor.render.table import render_table
from relu_doctor.report import ModelInfo, ProbeInfo, Thresholds


class ScaledChannelsConv(nn.Module):
    """Conv channels scaled 1, 0.01, 0, 2: channel 1 is tau-dormant but alive, channel 2 dead."""

    SCALES = (1.0, 0.01, 0.0, 2.0)

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.relu = nn.Conv2d(2, 4, 3), nn.ReLU()
        with torch.no_grad():
            self.conv.weight.mul_(torch.tensor(self.SCALES).view(4, 1, 1, 1))
            self.conv.bias.mul_(torch.tensor(self.SCALES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv(x))


def test_dormant_follows_redo_with_channels_averaged_over_batch_and_positions() -> None:
    model, x = ScaledChannelsConv(), torch.randn(32, 2, 8, 8, generator=torch.Generator().manual_seed(0))
    tau = 0.1
    site = scan(model, [x], thresholds=Thresholds(tau=tau)).sites[0]
    with torch.no_grad():
        h = model(x)
    score = h.abs().mean(dim=(0, 2, 3))  # E|h_i| over batch x H x W
    expected = tuple(int(u) for u in torch.nonzero(score / score.mean() <= tau).flatten())
    assert expected == (1, 2)  # channel 1: ~0.01 / ~0.75 of the mean; channel 2: 0 (dead counts as dormant)
    assert site.dormant_units == expected and site.dead_units == (2,)


class ZeroGammaBatchNorm(nn.Module):
    """BatchNorm features with gamma 0: beta 0.5 -> constant 0.5 (alive, no information); beta -0.5 -> dead."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc, self.bn, self.act, self.head = nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2)
        with torch.no_grad():
            self.bn.weight[1:3] = 0.0
            self.bn.bias[1], self.bn.bias[2] = 0.5, -0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act(self.bn(self.fc(x))))


def test_gamma_zero_batchnorm_gives_a_constant_unit_reported_apart_from_dead() -> None:
    report = scan(ZeroGammaBatchNorm(), [torch.randn(64, 3, generator=torch.Generator().manual_seed(0))])
    site = report.sites[0]
    assert site.constant_units == (1,) and site.dead_units == (2,)
    codes = {f.code: f for f in report.findings}
    assert codes["RD005"].units == (1,) and "bn" in codes["RD005"].cause
    assert codes["RD102"].units == (2,)  # beta -0.5 <= -3 * |gamma 0|
    data = report_dict(report)["sites"][0]
    assert data["constant_units"] == [1] and data["constant_output"] is False


class ConstantSite(nn.Module):
    """Zero weights: every unit's pre-activation is its bias (-1, 2, 3): one dead, two constant -> constant output."""

    def __init__(self) -> None:
        super().__init__()
        self.fc, self.act, self.head = nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 2)
        with torch.no_grad():
            self.fc.weight.zero_()
            self.fc.bias.copy_(torch.tensor([-1.0, 2.0, 3.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act(self.fc(x)))


def test_a_site_of_dead_and_constant_units_is_flagged_as_constant_output() -> None:
    report = scan(ConstantSite(), [torch.randn(16, 3)])
    site = report.sites[0]
    assert site.dead_units == (0,) and site.constant_units == (1, 2)
    assert report_dict(report)["sites"][0]["constant_output"] is True
    assert "whole site's output is constant" in next(f.cause for f in report.findings if f.code == "RD005")


class ReluOnLogits(nn.Module):
    """A classifier whose last op is a relu: negative logits are clipped."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.act1, self.out = nn.Linear(4, 8), nn.Linear(8, 3), nn.ReLU(), nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.fc2(self.act1(self.fc1(x))))


def test_a_relu_writing_the_model_output_is_flagged() -> None:
    report = scan(ReluOnLogits(), [torch.randn(32, 4)])
    flagged = [f.site for f in report.findings if f.code == "RD201"]
    assert flagged == ["out"]


def test_without_the_model_dead_units_keep_the_generic_rd001() -> None:
    model = ZeroGammaBatchNorm()
    observer, samples = observe(model, [torch.randn(64, 3)])
    report = build_report(
        observer.sites, None, None, Thresholds(), ProbeInfo("file", samples, 64), ModelInfo("", "x", None)
    )
    codes = {f.code for f in report.findings}
    assert "RD001" in codes and not any(c.startswith("RD1") for c in codes)


def test_every_code_a_report_can_carry_is_described() -> None:
    described = describe_codes()
    assert {
        "RD001",
        "RD002",
        "RD003",
        "RD004",
        "RD005",
        "RD100",
        "RD101",
        "RD102",
        "RD103",
        "RD104",
        "RD105",
        "RD106",
        "RD201",
        "RD301",
    } == set(described)
    assert all(text and not text.startswith("RD") for text in described.values())


def test_table_markdown_and_json_agree_on_cause_counts() -> None:
    report = scan(ZeroGammaBatchNorm(), [torch.randn(64, 3, generator=torch.Generator().manual_seed(0))])
    by_code = {f["code"]: len(f["units"]) for f in report_dict(report)["findings"]}
    # RD102 x 1 dead unit, RD005 x 1 constant unit
    expected = {"RD005": 1, "RD102": 1}
    for text in (render_table(report, width=100), render_markdown(report)):
        cell = dict((code, int(n)) for code, n in re.findall(r"(RD\d{3})×(\d+)", text))
        assert cell == expected == {c: by_code[c] for c in expected}
