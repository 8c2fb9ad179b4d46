"""Confidence numbers against hand computation: the rule-of-three bound, the probe size it needs, Wilson intervals."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from relu_doctor import scan
from relu_doctor.analysis.confidence import (
    dead_rate_bound_95,
    dying_intervals,
    probe_size_warning,
    samples_needed,
    wilson_interval,
)
from relu_doctor.render.json_format import report_dict
from relu_doctor.report import ProbeInfo, Thresholds


def test_dead_rate_bound_is_the_exact_zero_success_bound() -> None:
    # 1 - 0.05 ** (1/256) = 1 - exp(ln 0.05 / 256) = 1 - exp(-2.995732 / 256) = 0.011634 ("fires < 1.2%")
    assert dead_rate_bound_95(256) == pytest.approx(0.011634, abs=1e-6)
    # n = 1,000 -> 0.002991, the rule of three's 3/n = 0.003
    assert dead_rate_bound_95(1000) == pytest.approx(0.002991, abs=1e-6)
    assert ProbeInfo("file", 256, 64).dead_rate_bound_95 == dead_rate_bound_95(256)


def test_samples_needed_is_the_smallest_probe_whose_bound_meets_the_rate() -> None:
    # ln 0.05 / ln(1 - 0.01) = -2.995732 / -0.010050 = 298.07 -> 299 (the rule of three says 300)
    assert samples_needed(0.01) == 299
    assert dead_rate_bound_95(299) <= 0.01 < dead_rate_bound_95(298)
    assert samples_needed(0.001) == 2995  # -2.995732 / -0.0010005 = 2994.2 -> 2995


def test_probe_size_warning_names_the_bound_and_the_size_needed() -> None:
    text = probe_size_warning(64, 0.01)
    assert text is not None and "4.57%" in text and "299" in text  # 1 - 0.05 ** (1/64) = 0.0457
    assert probe_size_warning(299, 0.01) is None


def test_wilson_interval_matches_the_textbook_formula() -> None:
    # 1 of 100: centre (0.01 + 1.96²/200) / (1 + 1.96²/100) = 0.028128,
    # half-width 1.96 * sqrt(0.0099/100 + 1.96²/40000) / 1.038415 = 0.026361 -> (0.00177, 0.05449)
    low, high = wilson_interval(0.01, 100)
    assert low == pytest.approx(0.001767, abs=1e-5) and high == pytest.approx(0.054489, abs=1e-5)
    assert wilson_interval(0.0, 10) == (0.0, pytest.approx(0.277533, abs=1e-5))  # 1.96² / (10 + 1.96²)


class RareFeatureUnit(nn.Module):
    """Unit 0 fires only for inputs above 397.5: on the probe 0..399 that is 2 of 400 samples (rate 0.5%)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc, self.act = nn.Linear(1, 2), nn.ReLU()
        with torch.no_grad():
            self.fc.weight.fill_(1.0)
            self.fc.bias.copy_(torch.tensor([-397.5, 1.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.fc(x))


def test_dying_unit_gets_a_wilson_interval_over_samples() -> None:
    report = scan(RareFeatureUnit(), [torch.arange(400.0).unsqueeze(1)])
    site = report.sites[0]
    assert site.dying_units == (0,)
    (interval,) = dying_intervals(site)
    # 2 of 400: centre (0.005 + 1.96²/800) / (1 + 1.96²/400) = 0.009709, half-width 0.008337 -> (0.00137, 0.01805)
    assert (interval.rate, interval.samples_fired) == (0.005, 2)
    assert interval.low == pytest.approx(0.001372, abs=1e-5) and interval.high == pytest.approx(0.018045, abs=1e-5)
    data = report_dict(report)["sites"][0]["dying_rate_ci95"]
    assert data["trials"] == "samples" and data["units"][0]["high"] == pytest.approx(interval.high)


class RareSpotConv(nn.Module):
    """Channel 0 fires on 1 pixel of 16 in every 4th image: positions rate 1/64, samples rate 1/4."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(nn.functional.conv2d(x, torch.ones(2, 1, 1, 1), torch.tensor([-0.5, 1.0])))


def test_conv_interval_counts_samples_as_trials_not_positions() -> None:
    images = torch.zeros(40, 1, 4, 4)
    images[::4, 0, 1, 2] = 1.0  # 10 of 40 images have one bright pixel
    site = scan(RareSpotConv(), [images], thresholds=Thresholds(dying_rate=0.05)).sites[0]
    rate = site.firing_rates()[0]
    assert rate == 10 / 640  # 10 positive positions of 40 images x 16 positions
    (interval,) = dying_intervals(site)
    assert interval.samples_fired == 10
    # trials = 40 samples, not 640 positions: wider than the positions-based interval
    assert (interval.low, interval.high) == pytest.approx(wilson_interval(rate, 40))
    assert interval.high - interval.low > wilson_interval(rate, 640)[1] - wilson_interval(rate, 640)[0]


def test_json_probe_says_whether_it_supports_the_dying_rate() -> None:
    small = report_dict(scan(RareFeatureUnit(), [torch.arange(64.0).unsqueeze(1)]))
    assert small["probe"]["samples_needed_for_dying_rate"] == 299 and small["probe"]["supports_dying_rate"] is False
    assert math.isclose(small["probe"]["dead_rate_bound_95"], dead_rate_bound_95(64))
    assert json.dumps(small, allow_nan=False)
