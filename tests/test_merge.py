"""`--save-stats` + `relu-doctor merge`: the files of probe shards merge into the report of one scan of the union."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from models import ConvBNReluShifted, ReusedReluBlock, TokenFFN
from safetensors.torch import save_file
from typer.testing import CliRunner

from relu_doctor import scan
from relu_doctor.cli import app
from relu_doctor.report import ModelInfo, ProbeInfo, Report, Thresholds
from relu_doctor.workflow.stats_io import StatsWriter, load_stats, merge_stats

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "samples"
MODEL = str(SAMPLES / "dying_mlp.safetensors")
ARCH = f"{SAMPLES / 'digits_mlp.py'}:build_mlp"
INFO = ModelInfo("model.pt", "state-dict", "ab" * 32)


def _scan_saving(model: torch.nn.Module, batches: list[torch.Tensor], path: Path) -> Report:
    probe = ProbeInfo("file", sum(len(b) for b in batches), len(batches[0]), str(path.with_suffix(".npy")))
    writer = StatsWriter(path, inner=None, probe=probe, model=INFO, thresholds=Thresholds(), unit_dim=None)
    return scan(model, batches, model_info=INFO, probe_info=probe, combiner=writer)


def _assert_same_sites(merged: Report, whole: Report) -> None:
    """Everything derived from counters agrees; counts and maxima exactly, sums up to summation order."""
    assert [s.name for s in merged.sites] == [s.name for s in whole.sites]
    for ours, theirs in zip(merged.sites, whole.sites):
        a, b = ours.counters, theirs.counters
        assert (a.positive, a.positions, a.samples_fired, a.samples) == (
            b.positive,
            b.positions,
            b.samples_fired,
            b.samples,
        )
        assert (a.max_preactivation, a.nan, a.inf) == (b.max_preactivation, b.nan, b.inf)
        assert a.activation_sum == pytest.approx(b.activation_sum, rel=1e-12)
        assert (ours.dead_units, ours.dying_units, ours.dormant_units) == (
            theirs.dead_units,
            theirs.dying_units,
            theirs.dormant_units,
        )
    assert merged.summary == whole.summary
    assert merged.gate == whole.gate


@pytest.mark.parametrize(
    ("model_type", "shape"),
    [(ConvBNReluShifted, (40, 3, 5, 5)), (TokenFFN, (40, 6, 8)), (ReusedReluBlock, (40, 8))],
    ids=["conv-bn", "tokens", "reused-relu"],
)
def test_merged_shards_equal_one_scan_of_the_union(tmp_path: Path, model_type: type, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    model = model_type()
    batches = list(torch.randn(shape, generator=torch.Generator().manual_seed(1)).split(8))  # 5 batches
    whole = scan(model, batches, model_info=INFO)
    _scan_saving(model, batches[:2], tmp_path / "a.stats")
    _scan_saving(model, batches[2:], tmp_path / "b.stats")
    merged = merge_stats([tmp_path / "a.stats", tmp_path / "b.stats"])
    _assert_same_sites(merged, whole)
    assert merged.probe.samples == 40  # 16 + 24
    assert merged.model == INFO


def test_stats_file_round_trips_counters_and_identity(tmp_path: Path) -> None:
    torch.manual_seed(0)
    report = _scan_saving(ReusedReluBlock(), [torch.randn(6, 8)], tmp_path / "one.stats")
    saved = load_stats(tmp_path / "one.stats")
    assert [s.counters for s in saved.sites] == [s.counters for s in report.sites]
    assert [(s.module_path, s.call_index) for s in saved.sites] == [("relu", 1), ("relu", 2)]  # one nn.ReLU, two calls
    assert saved.model == INFO and saved.probe.samples == 6


def test_merge_refuses_files_of_different_models(tmp_path: Path) -> None:
    torch.manual_seed(0)
    _scan_saving(ReusedReluBlock(), [torch.randn(4, 8)], tmp_path / "a.stats")
    _scan_saving(TokenFFN(), [torch.randn(4, 3, 8)], tmp_path / "b.stats")
    with pytest.raises(Exception, match="saw 1 sites.*saw 2"):
        merge_stats([tmp_path / "a.stats", tmp_path / "b.stats"])


def _split_probe(tmp_path: Path) -> tuple[Path, Path, Path]:
    probe = np.load(SAMPLES / "digits_probe.npy")[:192]
    paths = tmp_path / "all.npy", tmp_path / "first.npy", tmp_path / "second.npy"
    for path, rows in zip(paths, (probe, probe[:128], probe[128:])):
        np.save(path, rows)
    return paths


def test_cli_save_stats_and_merge_equal_the_scan_of_the_whole_probe(tmp_path: Path) -> None:
    runner = CliRunner()
    whole, first, second = _split_probe(tmp_path)
    scan_args = ["scan", MODEL, "--arch", ARCH, "--batch-size", "64", "--no-simulate", "-f", "json"]
    for probe in (first, second):
        result = runner.invoke(
            app, [*scan_args, "--probe", str(probe), "--save-stats", str(probe.with_suffix(".stats"))]
        )
        assert result.exit_code in (0, 1), result.output
    expected = runner.invoke(app, [*scan_args, "--probe", str(whole)])
    merged = runner.invoke(
        app, ["merge", str(first.with_suffix(".stats")), str(second.with_suffix(".stats")), "-f", "json"]
    )
    assert merged.exit_code == expected.exit_code
    ours, theirs = json.loads(merged.stdout), json.loads(expected.stdout)
    assert [(s["name"], s["dead_units"], s["units"]) for s in ours["sites"]] == [
        (s["name"], s["dead_units"], s["units"]) for s in theirs["sites"]
    ]
    assert ours["summary"] == theirs["summary"]
    assert ours["probe"]["samples"] == 192  # 128 + 64


def test_cli_merge_override_changes_the_gate(tmp_path: Path) -> None:
    runner = CliRunner()
    _, first, _ = _split_probe(tmp_path)
    stats = tmp_path / "first.stats"
    runner.invoke(
        app, ["scan", MODEL, "--arch", ARCH, "--probe", str(first), "--no-simulate", "-q", "--save-stats", str(stats)]
    )
    dead = load_stats(stats).sites
    assert any(s.counters.positive.count(0) for s in dead)  # the dying sample has dead units
    assert runner.invoke(app, ["merge", str(stats), "-q", "--max-dead-fraction", "0"]).exit_code == 1
    assert runner.invoke(app, ["merge", str(stats), "-q", "--max-dead-fraction", "1"]).exit_code == 0


@pytest.mark.parametrize("content", ["missing", "foreign", "not-safetensors"])
def test_cli_merge_bad_file_is_one_line_and_exit_2(tmp_path: Path, content: str) -> None:
    path = tmp_path / "x.stats"
    if content == "foreign":
        save_file({"w": torch.zeros(2)}, str(path))
    elif content == "not-safetensors":
        path.write_text("hello")
    result = CliRunner().invoke(app, ["merge", str(path)])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and "--save-stats" in lines[0]


def test_cli_merge_bad_override_is_a_usage_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["merge", str(tmp_path / "x.stats"), "--max-dead-fraction", "2"])
    assert result.exit_code == 2 and "--max-dead-fraction must be between 0 and 1, got 2.0" in result.stderr


def _rewrite_as_version_1(path: Path, target: Path) -> None:
    """The file as relu-doctor 0.1 wrote it: layout version 1, with the observer's graph facts in each site."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        document = json.loads((handle.metadata() or {})["relu_doctor"])
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118 (not a dict)
    document["version"] = 1
    for site in document["sites"]:
        site.update(feeds_sum=False, feeds_concat=False, reaches_output=True, consumers=[], unknown_uses=[])
    save_file(tensors, str(target), metadata={"relu_doctor": json.dumps(document)})


def test_files_of_layout_version_1_still_merge(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = ReusedReluBlock()
    batches = list(torch.randn((24, 8), generator=torch.Generator().manual_seed(1)).split(8))
    _scan_saving(model, batches[:1], tmp_path / "a.stats")
    _scan_saving(model, batches[1:], tmp_path / "b.stats")
    _rewrite_as_version_1(tmp_path / "a.stats", tmp_path / "a1.stats")
    saved = load_stats(tmp_path / "a1.stats")
    assert [s.key for s in saved.sites] == [("relu", 1, 1), ("relu", 2, 1)]  # one nn.ReLU called twice
    old_and_new = merge_stats([tmp_path / "a1.stats", tmp_path / "b.stats"])
    _assert_same_sites(old_and_new, merge_stats([tmp_path / "a.stats", tmp_path / "b.stats"]))
    _assert_same_sites(old_and_new, scan(model, batches, model_info=INFO))


def test_a_site_has_one_key_in_the_engine_the_report_and_a_stats_file(tmp_path: Path) -> None:
    from relu_doctor.api import scan_observed

    torch.manual_seed(0)
    model, batches = ReusedReluBlock(), [torch.randn(6, 8)]
    report, observed = scan_observed(model, batches)
    _scan_saving(model, batches, tmp_path / "one.stats")
    saved = load_stats(tmp_path / "one.stats").sites
    # one nn.ReLU called twice: (owner path, call of the owner, relu op of that call)
    assert [s.key for s in observed] == [s.key for s in report.sites] == [s.key for s in saved]
    assert [s.key for s in report.sites] == [("relu", 1, 1), ("relu", 2, 1)]
    assert [s.identity for s in observed] == [s.identity for s in saved]
