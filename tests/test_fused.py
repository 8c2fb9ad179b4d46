"""The fused (numba) reducer: the same counts and maxima as the torch reducer and as a float64 brute force,
on every layout it accepts; nothing counted from a batch holding NaN or Inf; a clear error without numba."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from models import ConvBNReluShifted, EveryReluForm, NaNUnit, TokenFFN
from torch import nn
from typer.testing import CliRunner

from relu_doctor import scan
from relu_doctor.activations import MEMBERS_BY_NAME
from relu_doctor.cli import app
from relu_doctor.engine.counters import UnitAccumulator
from relu_doctor.engine.observe import ReluObserver
from relu_doctor.engine.reduce import count_batch, fused
from relu_doctor.engine.reduce.torch_reducer import TorchReducer
from relu_doctor.errors import UsageError

needs_numba = pytest.mark.skipif(not fused.available(), reason="numba (relu-doctor[fast]) is not installed")


def _data(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """Normal values with exact zeros, -0.0 and repeated maxima mixed in, so ties and signs are exercised."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen)
    pick = torch.rand(shape, generator=gen)
    x[pick < 0.05] = 0.0
    x[(pick >= 0.05) & (pick < 0.08)] = -0.0
    x[pick > 0.98] = 2.5
    return x


def _brute_force(x: torch.Tensor, unit_axis: int, sample_axis: int | None, cap: float) -> dict[str, list]:
    """Every counter from float64 and plain loops over units, independent of both reducers."""
    x64 = x.double()
    per_unit = x64.movedim(unit_axis, 0)
    if sample_axis is None:
        by_sample = x64.reshape(1, *x64.shape).movedim(unit_axis + 1, 1)
    else:
        by_sample = x64.movedim((sample_axis, unit_axis), (0, 1))
    out: dict[str, list] = {"positive": [], "fired": [], "max": [], "sum": []}
    for u in range(x.shape[unit_axis]):
        values = per_unit[u].reshape(-1)
        out["positive"].append(int((values > 0).sum()))
        out["max"].append(float(values.max()))
        out["sum"].append(float(values.clamp(0, cap).sum()))
        sample_max = by_sample[:, u].reshape(by_sample.shape[0], -1).max(dim=1).values
        out["fired"].append(int((sample_max > 0).sum()))
    return out


LAYOUTS = [
    # (name, tensor factory, unit axis, sample axis)
    ("nchw", lambda: _data((6, 5, 7, 9)), 1, 0),
    ("channels-last", lambda: _data((6, 5, 7, 9)).contiguous(memory_format=torch.channels_last), 1, 0),
    ("ncl", lambda: _data((4, 3, 33)), 1, 0),
    ("tokens", lambda: _data((5, 11, 13)), 2, 0),
    ("sequence-first", lambda: _data((11, 5, 13)), 2, 1),
    ("rows", lambda: _data((700, 37)), 1, 0),
    ("no-sample-axis", lambda: _data((3, 8, 10)), 1, None),
]


@needs_numba
@pytest.mark.parametrize("cap", [math.inf, 6.0], ids=["relu", "relu6"])
@pytest.mark.parametrize(("name", "make", "unit_axis", "sample_axis"), LAYOUTS, ids=[layout[0] for layout in LAYOUTS])
def test_fused_counters_equal_a_brute_force_count(name, make, unit_axis, sample_axis, cap) -> None:  # type: ignore[no-untyped-def]
    x = make()
    counters = UnitAccumulator(x.shape[unit_axis], x.device)
    assert fused.add_batch(counters, x, unit_axis, sample_axis, cap) is True
    expected = _brute_force(x, unit_axis, sample_axis, cap)
    assert counters.positive.tolist() == expected["positive"]
    assert counters.samples_fired.tolist() == expected["fired"]
    assert counters.max_preactivation.tolist() == pytest.approx(expected["max"], abs=0)
    assert counters.activation_sum.tolist() == pytest.approx(expected["sum"], rel=1e-6)
    samples = 1 if sample_axis is None else x.shape[sample_axis]
    assert (counters.samples, counters.positions) == (samples, x.numel() // x.shape[unit_axis])


@needs_numba
def test_batches_accumulate_like_the_torch_reducer() -> None:
    fused_counters, torch_counters = UnitAccumulator(5, torch.device("cpu")), UnitAccumulator(5, torch.device("cpu"))
    for seed in range(3):
        x = _data((4, 5, 6, 6), seed)
        assert fused.add_batch(fused_counters, x, 1, 0, math.inf)
        count_batch(TorchReducer(), torch_counters, x, MEMBERS_BY_NAME["relu"])
    a, b = fused_counters.snapshot(), torch_counters.snapshot()
    assert (a.positive, a.samples_fired, a.max_preactivation) == (b.positive, b.samples_fired, b.max_preactivation)
    assert (a.positions, a.samples) == (b.positions, b.samples)
    assert a.activation_sum == pytest.approx(b.activation_sum, rel=1e-6)


@needs_numba
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, -math.nan], ids=["nan", "inf", "-inf", "-nan"])
@pytest.mark.parametrize("shape", [(3, 4, 5, 5), (40, 6)], ids=["blocks", "rows"])
def test_a_batch_with_a_non_finite_value_changes_nothing(bad: float, shape: tuple[int, ...]) -> None:
    x = _data(shape)
    x.view(-1)[x.numel() // 2] = bad  # one value among finite ones
    counters = UnitAccumulator(shape[1], x.device)
    before = counters.snapshot()
    assert fused.add_batch(counters, x, 1, 0, math.inf) is False
    assert counters.snapshot() == before


@needs_numba
def test_layouts_it_cannot_read_in_one_pass_are_declined() -> None:
    x = _data((6, 5, 7))
    counters = UnitAccumulator(7, x.device)
    # sample axis after the unit axis in memory: not a lead axis
    assert fused.add_batch(counters, x.transpose(0, 2).contiguous().transpose(0, 2), 2, 0, math.inf) is None
    # a strided slice has no (lead, units, trail) view
    assert fused.add_batch(UnitAccumulator(5, x.device), x[:, :, ::2], 1, 0, math.inf) is None
    assert counters.samples == 0


def test_suits_only_float32_cpu_tensors() -> None:
    x = torch.zeros(4, 3)
    assert fused.suits(x)
    assert not fused.suits(x.double()) and not fused.suits(x.half()) and not fused.suits(x.bfloat16())
    assert not fused.suits(torch.zeros(3))


def test_auto_loads_numba_only_for_enough_remaining_work(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fused, "_loaded", False)
    assert not fused.worth_loading(None)  # unknown amount of work: do not pay the load
    assert not fused.worth_loading(fused.MIN_WORK - 1)
    assert fused.worth_loading(fused.MIN_WORK) == fused.available()
    monkeypatch.setattr(fused, "_loaded", True)
    assert fused.worth_loading(None) and fused.worth_loading(0)  # already loaded: free to use


@needs_numba
def test_auto_switches_to_fused_after_the_first_batch_when_the_work_pays(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = fused.add_batch

    def spy(*args):  # type: ignore[no-untyped-def]
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(fused, "add_batch", spy)
    model = ConvBNReluShifted()
    batches = list(_data((12, 3, 6, 6)).split(4))  # 3 batches, one site
    monkeypatch.setattr(fused, "_loaded", False)
    small = scan(model, batches)  # a few thousand elements: not worth loading numba
    assert calls == []
    monkeypatch.setattr(fused, "MIN_WORK", 1)
    switched = scan(model, batches)
    assert len(calls) == 2  # batch 1 on torch (its size decides), batches 2 and 3 fused
    a, b = small.sites[0].counters, switched.sites[0].counters
    assert (a.positive, a.samples_fired, a.max_preactivation) == (b.positive, b.samples_fired, b.max_preactivation)
    assert a.activation_sum == pytest.approx(b.activation_sum, rel=1e-6)
    calls.clear()
    scan(model, iter(batches))  # loaded now, so even an iterator of unknown length uses it from the first batch
    assert len(calls) == 3


def _observe(model: nn.Module, batches: list[torch.Tensor], reducer: str) -> list:
    with ReluObserver(model, reducer=reducer) as observer:
        for batch in batches:
            observer.run(batch)
    return [(site.module_path, site.op, site.counters.snapshot()) for site in observer.sites]


@needs_numba
@pytest.mark.parametrize(
    ("make", "shape"),
    [(ConvBNReluShifted, (9, 3, 6, 6)), (TokenFFN, (9, 6, 8)), (EveryReluForm, (9, 3)), (NaNUnit, (9, 4))],
    ids=["conv-bn", "tokens", "every-relu-form", "nan-inf"],
)
def test_observer_counts_the_same_with_either_reducer(make: type, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    model = make()
    batches = list(_data(shape).split(4))
    fused_sites, torch_sites = _observe(model, batches, "fused"), _observe(model, batches, "torch")
    assert [s[:2] for s in fused_sites] == [s[:2] for s in torch_sites]
    for (_, _, a), (_, _, b) in zip(fused_sites, torch_sites):
        assert (a.positive, a.samples_fired, a.max_preactivation) == (b.positive, b.samples_fired, b.max_preactivation)
        assert (a.positions, a.samples, a.nan, a.inf) == (b.positions, b.samples, b.nan, b.inf)
        assert a.activation_sum == pytest.approx(b.activation_sum, rel=1e-5, abs=1e-5)


@needs_numba
def test_inplace_relu_is_read_before_it_runs() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(inplace=True))
    x = _data((5, 3, 8, 8))
    (site,) = scan(model, [x], reducer="fused").sites
    with torch.no_grad():
        pre = model[0](x)
    assert site.counters.max_preactivation == pytest.approx(pre.amax(dim=(0, 2, 3)).tolist(), abs=0)
    assert min(site.counters.max_preactivation) == pytest.approx(float(pre.amax(dim=(0, 2, 3)).min()))


def test_unknown_reducer_and_missing_numba_are_usage_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(UsageError, match="--reducer must be one of auto, torch, fused"):
        ReluObserver(nn.ReLU(), reducer="cuda")
    monkeypatch.setattr(fused, "available", lambda: False)
    with pytest.raises(UsageError, match=r"pip install 'relu-doctor\[fast\]'"):
        ReluObserver(nn.ReLU(), reducer="fused")
    assert scan(nn.Sequential(nn.Linear(3, 4), nn.ReLU()), [torch.randn(2, 3)]).sites  # auto falls back to torch


def test_cli_reducer_fused_without_numba_is_one_line_exit_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from safetensors.torch import save_file

    monkeypatch.setattr(fused, "available", lambda: False)
    arch = tmp_path / "arch.py"
    arch.write_text("from torch import nn\ndef build():\n    return nn.Sequential(nn.Linear(3, 4), nn.ReLU())\n")
    model = tmp_path / "m.safetensors"
    save_file({k: v.contiguous() for k, v in nn.Sequential(nn.Linear(3, 4), nn.ReLU()).state_dict().items()}, model)
    result = CliRunner().invoke(app, ["scan", str(model), "--arch", f"{arch}:build", "--reducer", "fused"])
    assert result.exit_code == 2
    assert result.stderr.strip().count("\n") == 0 and "relu-doctor[fast]" in result.stderr


@needs_numba
def test_cli_scans_agree_between_reducers() -> None:
    samples = Path(__file__).resolve().parent.parent / "samples"
    args = [
        "scan",
        str(samples / "dying_mlp.safetensors"),
        "--arch",
        f"{samples / 'digits_mlp.py'}:build_mlp",
        "--probe",
        str(samples / "digits_probe.npy"),
        "--format",
        "json",
        "--no-simulate",
    ]
    reports = {}
    for reducer in ("torch", "fused"):
        result = CliRunner().invoke(app, [*args, "--reducer", reducer])
        assert result.exit_code in (0, 1), result.stderr
        reports[reducer] = json.loads(result.stdout)
    fields = (
        "name",
        "units",
        "dead",
        "dead_units",
        "dying_units",
        "dormant_units",
        "firing_rate",
        "sparsity",
        "dead_max_preactivation",
        "nan_count",
        "inf_count",
        "samples",
        "positions_per_unit",
    )
    assert len(reports["torch"]["sites"]) == len(reports["fused"]["sites"]) == 2
    for a, b in zip(reports["torch"]["sites"], reports["fused"]["sites"]):
        assert {k: a[k] for k in fields} == {k: b[k] for k in fields}
    assert reports["torch"]["summary"] == reports["fused"]["summary"]


def test_cli_unknown_reducer_is_one_line_exit_2() -> None:
    samples = Path(__file__).resolve().parent.parent / "samples"
    args = ["scan", str(samples / "healthy_mlp.safetensors"), "--arch", f"{samples / 'digits_mlp.py'}:build_mlp"]
    for extra, env in ((["--reducer", "gpu"], {}), ([], {"RELU_DOCTOR_REDUCER": "gpu"})):
        result = CliRunner().invoke(app, [*args, *extra], env=env)
        assert result.exit_code == 2
        assert result.stderr.strip().count("\n") == 0 and "must be one of auto, torch, fused" in result.stderr
        assert result.stdout == ""
