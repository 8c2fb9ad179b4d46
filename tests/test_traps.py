"""Every trap of REFERENCES.md, each on a model named after it, with planted dead units found exactly.

Expected dead units come from a brute-force count in the test: the relu's input computed by running the
layers by hand, then ``(pre > 0)`` reduced over every axis but the unit axis.
"""

from __future__ import annotations

import statistics

import pytest
import torch
from models import (
    Conv1dNet,
    ConvBNReluShifted,
    ConvNet2d,
    DropoutBeforeRelu,
    EveryReluForm,
    FunctionalReluNet,
    InplaceReluThenAdd,
    NaNUnit,
    OtherActivationsNet,
    ReusedReluBlock,
    TokenFFN,
    TransformerReluLayer,
    dead_by_brute_force,
)

from relu_doctor import scan
from relu_doctor.errors import ObservationError


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_reused_relu_is_one_site_per_call_with_its_own_dead_units() -> None:
    torch.manual_seed(0)
    model, x = ReusedReluBlock(), torch.randn(64, 8, generator=_gen())
    report = scan(model, [x])
    with torch.no_grad():
        first, second = model.preactivations(x)
    assert [s.name for s in report.sites] == ["relu#1", "relu#2"]
    assert [s.call_index for s in report.sites] == [1, 2]
    assert report.sites[0].dead_units == dead_by_brute_force(first, 1) == ReusedReluBlock.DEAD_FIRST
    assert report.sites[1].dead_units == dead_by_brute_force(second, 1)
    assert set(ReusedReluBlock.DEAD_SECOND) <= set(report.sites[1].dead_units)
    # 2 + 3 planted over 2 sites of 8 units -> 5 of 16 at least; exactly the brute force total
    assert report.summary.dead == len(dead_by_brute_force(first, 1)) + len(dead_by_brute_force(second, 1))


def test_functional_relus_are_sites_named_after_their_owner() -> None:
    torch.manual_seed(0)
    model, x = FunctionalReluNet(), torch.randn(64, 6, generator=_gen())
    report = scan(model, [x])
    with torch.no_grad():
        expected = [dead_by_brute_force(pre, 1) for pre in model.preactivations(x)]
    assert [s.name for s in report.sites] == ["block:relu", ":relu#1", ":relu#2"]
    assert [s.kind for s in report.sites] == ["functional"] * 3
    assert [s.module_path for s in report.sites] == ["block", "", ""]
    assert [s.dead_units for s in report.sites] == expected
    assert expected[0] == FunctionalReluNet.DEAD_BLOCK
    assert set(FunctionalReluNet.DEAD_ROOT_FIRST) <= set(expected[1])
    assert set(FunctionalReluNet.DEAD_ROOT_SECOND) <= set(expected[2])


def test_inplace_relu_then_add_reads_the_preactivation() -> None:
    torch.manual_seed(0)
    model, x = InplaceReluThenAdd(), torch.randn(64, 8, generator=_gen())
    report = scan(model, [x])
    with torch.no_grad():
        pre = model.fc(x)
    (site,) = report.sites
    assert site.op == "relu_"
    assert site.dead_units == dead_by_brute_force(pre, 1) == InplaceReluThenAdd.DEAD
    # the max pre-activation is read before the relu overwrites it: dead units sit near the -1000 bias
    assert all(site.counters.max_preactivation[u] < -900 for u in site.dead_units)


def test_batchnorm_shift_between_conv_and_relu_is_seen() -> None:
    torch.manual_seed(0)
    model, x = ConvBNReluShifted(), torch.randn(16, 3, 5, 5, generator=_gen())
    report = scan(model, [x])
    with torch.no_grad():
        pre, conv_out = model.preactivation(x), model.conv(x)
    (site,) = report.sites
    assert site.unit_axis == 1 and site.units == 6
    assert site.dead_units == dead_by_brute_force(pre, 1) == ConvBNReluShifted.DEAD
    assert dead_by_brute_force(conv_out, 1) == ()  # the conv output alone shows no dead channel
    assert site.producer is not None and site.producer.norm_path == "bn"
    # positions per unit are samples x H x W: 16 x 5 x 5 -> 400; a channel is one unit, not 25
    assert site.counters.positions == 400 and site.counters.samples == 16


def test_token_ffn_units_are_features_not_positions() -> None:
    torch.manual_seed(0)
    model, x = TokenFFN(), torch.randn(4, 7, 8, generator=_gen())
    report = scan(model, [x])
    with torch.no_grad():
        pre = model.up(x)
    (site,) = report.sites
    assert (site.unit_axis, site.layout, site.units) == (2, "feature-last", 12)
    assert site.dead_units == dead_by_brute_force(pre, 2) == TokenFFN.DEAD
    assert site.counters.positions == 4 * 7  # samples x tokens
    assert site.counters.samples == 4


def test_conv1d_units_are_channels_even_though_3d() -> None:
    torch.manual_seed(0)
    model, x = Conv1dNet(), torch.randn(4, 4, 9, generator=_gen())
    report = scan(model, [x])
    with torch.no_grad():
        pre = model.conv(x)
    (site,) = report.sites
    assert (site.unit_axis, site.layout, site.units) == (1, "channel-first", 7)
    assert site.dead_units == dead_by_brute_force(pre, 1) == Conv1dNet.DEAD


def test_transformer_encoder_layer_relu_is_visible_despite_the_fast_path() -> None:
    torch.manual_seed(0)
    model, x = TransformerReluLayer().eval(), torch.randn(4, 5, 16, generator=_gen())
    before = torch.backends.mha.get_fastpath_enabled()
    report = scan(model, [x])
    with torch.no_grad():
        pre = model.preactivation(x)
    assert [s.name for s in report.sites] == ["layer:relu"]
    (site,) = report.sites
    assert (site.unit_axis, site.units) == (2, 32)
    assert site.dead_units == dead_by_brute_force(pre, 2) == TransformerReluLayer.DEAD
    assert torch.backends.mha.get_fastpath_enabled() == before
    assert not any("never called" in w for w in report.warnings)  # out_proj's weights are used, not called


def test_dropout_left_in_train_mode_does_not_invent_dead_units() -> None:
    torch.manual_seed(0)
    model, x = DropoutBeforeRelu().train(), torch.randn(4, 4, generator=_gen())
    report = scan(model, [x])
    with torch.no_grad():
        eval_pre = model.fc(x)
        torch.manual_seed(1)
        train_pre = model.dropout(model.fc(x))  # what a detector running in train mode would see
    (site,) = report.sites
    assert site.dead_units == dead_by_brute_force(eval_pre, 1)
    assert len(dead_by_brute_force(train_pre, 1)) > site.dead  # the trap is real on this model
    assert model.training and model.dropout.training


def test_nan_and_inf_units_are_reported_apart_never_dead_or_alive() -> None:
    torch.manual_seed(0)
    model, x = NaNUnit(), torch.randn(8, 4, generator=_gen())
    report = scan(model, [x])
    (site,) = report.sites
    assert site.nan_units == NaNUnit.NAN + NaNUnit.INF
    assert site.dead_units == NaNUnit.DEAD
    assert not set(site.nan_units) & set(site.dead_units)
    assert site.counters.nan[0] == 8 and site.counters.inf[1] == 8  # every one of 8 samples
    assert sum(site.counters.nan) + sum(site.counters.inf) == 16
    assert report.summary.nan_units == 2 and report.summary.dead == 1
    with torch.no_grad():
        finite_rates = [float(r) for r in (model.fc(x) > 0).float().mean(0)[2:]]  # units 2..5
    # the rate summary leaves the NaN/Inf units out instead of counting them as never firing
    assert site.firing_rate.median == pytest.approx(statistics.median(finite_rates))
    assert site.firing_rate.mean == pytest.approx(statistics.fmean(finite_rates))
    assert any(f.code == "RD004" for f in report.findings)


def test_nan_in_one_batch_keeps_other_units_exact() -> None:
    torch.manual_seed(0)
    model = NaNUnit()
    clean, dirty = torch.randn(8, 4, generator=_gen(1)), torch.randn(8, 4, generator=_gen(2))
    report = scan(model, [clean, dirty])
    with torch.no_grad():
        pre = model.fc(torch.cat([clean, dirty]))
    (site,) = report.sites
    finite_units = [u for u in range(6) if u not in site.nan_units]
    positive = (pre > 0).sum(0)
    assert [site.counters.positive[u] for u in finite_units] == [int(positive[u]) for u in finite_units]
    assert site.counters.max_preactivation[2] == pytest.approx(float(pre[:, 2].max()))


def test_every_relu_family_form_is_a_site() -> None:
    torch.manual_seed(0)
    report = scan(EveryReluForm(), [torch.randn(8, 3, generator=_gen())])
    assert len(report.sites) == len(EveryReluForm.FORMS) == 10
    assert [s.op for s in report.sites] == [
        "relu",
        "relu_",
        "relu",
        "relu",
        "relu",
        "relu_",
        "relu6",
        "relu6",
        "relu6",
        "threshold",
    ]
    assert [s.kind for s in report.sites] == ["module"] * 2 + ["functional"] * 4 + ["module", "functional"] + [
        "module"
    ] * 2
    assert report.other_activations == ()


def test_all_relu_forms_agree_on_dead_units() -> None:
    torch.manual_seed(0)
    model, x = EveryReluForm(), torch.randn(8, 3, generator=_gen())
    with torch.no_grad():
        model.fc.bias[[1, 3]] = -50.0
        pre = model.fc(x)
    report = scan(model, [x])
    assert {s.dead_units for s in report.sites} == {dead_by_brute_force(pre, 1)}


def test_other_activations_are_listed_not_sites() -> None:
    report = scan(OtherActivationsNet(), [torch.randn(8, 3, generator=_gen())])
    assert report.sites == ()
    assert dict(report.other_activations) == {"leaky_relu": 1, "prelu": 1, "gelu": 1, "elu": 1, "silu": 1}
    assert any("no relu-family call" in w for w in report.warnings)


def test_hardtanh_and_threshold_with_other_bounds_are_not_sites() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Hardtanh(-1.0, 1.0), torch.nn.Threshold(0.5, 0.0))
    report = scan(model, [torch.randn(8, 3, generator=_gen())])
    assert report.sites == ()


def test_sites_are_in_call_order_not_registration_order() -> None:
    class ReversedCalls(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = torch.nn.ReLU()
            self.b = torch.nn.ReLU()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.a(self.b(x))

    report = scan(ReversedCalls(), [torch.randn(4, 3, generator=_gen())])
    assert [s.name for s in report.sites] == ["b", "a"]
    assert [s.index for s in report.sites] == [0, 1]


def test_conv_units_are_channels_and_linear_units_features() -> None:
    torch.manual_seed(0)
    report = scan(ConvNet2d(), [torch.randn(4, 2, 6, 6, generator=_gen())])
    conv, fc = report.sites
    assert (conv.unit_axis, conv.units, conv.layout) == (1, 5, "channel-first")
    assert conv.counters.positions == 4 * 4 * 4  # samples x 4 x 4 output pixels
    assert (fc.unit_axis, fc.units, fc.layout) == (1, 9, "feature-last")
    assert fc.counters.positions == 4


def test_unit_dim_override_counts_along_the_chosen_axis() -> None:
    torch.manual_seed(0)
    model, x = TokenFFN(), torch.randn(4, 7, 8, generator=_gen())
    with torch.no_grad():
        x[:, 2, :] = 0.0
        model.up.bias.fill_(-1.0)  # on an all-zero token every hidden unit sits at -1: token 2 is dead
        model.up.weight.mul_(0.01)
        pre = model.up(x)
    report = scan(model, [x], unit_dim=1)
    (site,) = report.sites
    assert (site.unit_axis, site.units, site.layout) == (1, 7, "override")
    assert site.dead_units == dead_by_brute_force(pre, 1)
    assert 2 in site.dead_units


def test_unit_dim_that_does_not_fit_is_an_observation_error() -> None:
    with pytest.raises(ObservationError, match="--unit-dim 5"):
        scan(TokenFFN(), [torch.randn(2, 3, 8)], unit_dim=5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_model_accumulates_in_float32_or_wider(dtype: torch.dtype) -> None:
    layer = torch.nn.Linear(2, 3)
    model = torch.nn.Sequential(layer, torch.nn.ReLU()).to(dtype)
    with torch.no_grad():
        layer.weight.zero_()
        layer.bias.copy_(torch.tensor([1.0, -1.0, 2.0**-20]))  # 2^-20 is representable in both half types
    batches = [torch.zeros(4096, 2, dtype=dtype) for _ in range(20)]
    report = scan(model, batches)
    (site,) = report.sites
    # unit 0 outputs 1.0 at 20 x 4096 = 81,920 positions: past fp16's 65,504 and bf16's 256-step rounding
    assert site.counters.activation_sum[0] == 81_920.0
    assert site.counters.positive == (81_920, 0, 81_920)
    assert site.dead_units == (1,)
    assert site.counters.max_preactivation[2] == 2.0**-20


def test_modules_the_forward_pass_never_calls_are_reported() -> None:
    class UnusedBranchNet(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(3, 4)
            self.relu = torch.nn.ReLU()
            self.spare = torch.nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.relu(self.fc(x))

    report = scan(UnusedBranchNet(), [torch.randn(4, 3, generator=_gen())])
    assert "1 modules were never called by the forward pass: spare" in report.warnings
