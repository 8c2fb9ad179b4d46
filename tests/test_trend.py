"""`relu-doctor trend`: natural checkpoint order, "died at" detection on a run whose units are killed at known
epochs, revived units, exit codes from the last checkpoint, and a clear error for mismatched checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from relu_doctor.analysis.trend import died_at, natural_key, sort_naturally
from relu_doctor.cli import app
from relu_doctor.render.trend import sparkline

ARCH_SOURCE = """
from torch import nn

def build(width: int = 8):
    return nn.Sequential(nn.Linear(4, width), nn.ReLU(), nn.Linear(width, 2))
"""
EPOCHS = range(1, 11)
# unit -> epochs at which it is dead (bias -1000); every other unit has bias 0.5 and fires on the probe
DEAD_AT = {
    1: set(range(3, 11)),  # dies at epoch 3 and stays dead             -> died at epoch_3
    4: {10},  # dies at the last epoch only                -> died at epoch_10
    6: {2, 3, 4, 8, 9, 10},  # dies, revives at 5, dies again at 8        -> died at epoch_8
    5: {4, 5},  # dies, then revives for good                -> revived
}


def state_at(epoch: int, width: int = 8) -> dict[str, torch.Tensor]:
    """Unit i reads +-x[i % 4] (so it fires on about half the probe) unless DEAD_AT kills it at this epoch."""
    weight = torch.zeros(width, 4)
    for unit in range(width):
        weight[unit, unit % 4] = 1.0 if unit < 4 else -1.0
    bias = torch.tensor([-1000.0 if epoch in DEAD_AT.get(u, ()) else 0.5 for u in range(width)])
    return {"0.weight": weight, "0.bias": bias, "2.weight": torch.ones(2, width), "2.bias": torch.zeros(2)}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("run")
    (folder / "tiny_arch.py").write_text(ARCH_SOURCE)
    np.save(folder / "probe.npy", np.random.default_rng(0).standard_normal((32, 4)).astype(np.float32))
    for epoch in EPOCHS:
        save_file(state_at(epoch), str(folder / f"epoch_{epoch}.safetensors"))
    return folder


def trend(run_dir: Path, epochs: range | list[int], *args: str):
    # Given in shell-glob (lexicographic) order: epoch_1, epoch_10, epoch_2, ...
    paths = sorted(str(run_dir / f"epoch_{e}.safetensors") for e in epochs)
    return CliRunner().invoke(
        app,
        ["trend", *paths, "--arch", f"{run_dir / 'tiny_arch.py'}:build", "--probe", str(run_dir / "probe.npy"), *args],
        env={"COLUMNS": "200"},
    )


# -- pure parts ----------------------------------------------------------------------------------------------------
def test_natural_order_puts_epoch_10_after_epoch_9() -> None:
    paths = ["ckpt/epoch_10.pt", "ckpt/epoch_9.pt", "ckpt/epoch_1.pt", "ckpt/epoch_2.pt"]
    assert sort_naturally(paths) == ["ckpt/epoch_1.pt", "ckpt/epoch_2.pt", "ckpt/epoch_9.pt", "ckpt/epoch_10.pt"]
    assert natural_key("step-100") > natural_key("step-20")


def test_died_at_is_the_start_of_the_final_dead_run() -> None:
    dead = [frozenset({3}), frozenset({1, 3}), frozenset({1}), None, frozenset({1, 3}), frozenset({1, 2, 3})]
    # unit 1 dead from index 4 back to 1 but index 3 did not run -> 4; unit 3 dead at 4, 5 -> 4; unit 2 -> 5
    assert died_at(dead) == ((1, 4), (2, 5), (3, 4))
    assert died_at([frozenset({0})]) == ((0, 0),)


def test_sparkline_is_on_an_absolute_scale() -> None:
    assert sparkline((0.0, 0.01, 0.5, 1.0, None)) == "▁▂▅█ "


# -- through the CLI -------------------------------------------------------------------------------------------------
def test_trend_json_names_when_each_unit_died(run_dir: Path) -> None:
    result = trend(run_dir, EPOCHS, "-f", "json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert [Path(c["path"]).name for c in data["checkpoints"]] == [f"epoch_{e}.safetensors" for e in EPOCHS]
    (site,) = data["sites"]
    assert site["name"] == "1"  # nn.Sequential's relu is module "1"
    died = {entry["unit"]: Path(entry["path"]).name for entry in site["died_at"]}
    assert died == {1: "epoch_3.safetensors", 4: "epoch_10.safetensors", 6: "epoch_8.safetensors"}
    assert site["revived"] == [5]
    expected_dead = [sum(1 for epochs in DEAD_AT.values() if e in epochs) for e in EPOCHS]
    assert site["dead"] == expected_dead  # e.g. epoch 4: units 1, 5, 6 -> 3
    assert data["last_report"]["summary"]["dead"] == 3


def test_trend_table_shows_a_sparkline_and_the_death_dates(run_dir: Path) -> None:
    result = trend(run_dir, EPOCHS)
    assert result.exit_code == 0
    assert sparkline(tuple(n / 8 for n in (0, 1, 2, 3, 2, 1, 1, 2, 2, 3))) in result.stdout
    assert "1 at epoch_3.safetensors, 1 at epoch_8.safetensors, 1 at epoch_10.safetensors; 1 revived" in result.stdout


def test_thresholds_and_exit_code_apply_to_the_last_checkpoint(run_dir: Path) -> None:
    # 3 of 8 dead (37.5%) at epochs 4 and 10; 2 of 8 (25%) at epoch 9.
    assert trend(run_dir, EPOCHS, "-q", "--max-layer-dead-fraction", "0.3").exit_code == 1
    assert trend(run_dir, range(1, 10), "-q", "--max-layer-dead-fraction", "0.3").exit_code == 0


def test_checkpoints_of_different_architectures_exit_2(run_dir: Path, tmp_path: Path) -> None:
    save_file(state_at(1, width=6), str(tmp_path / "epoch_11.safetensors"))
    paths = [str(run_dir / "epoch_1.safetensors"), str(tmp_path / "epoch_11.safetensors")]
    result = CliRunner().invoke(
        app,
        [
            "trend",
            *paths,
            "--arch",
            f"{run_dir / 'tiny_arch.py'}:build",
            "--arch-kwargs",
            '{"width": 8}',
            "--probe",
            str(run_dir / "probe.npy"),
        ],
    )
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1


def test_deaths_text_joins_only_the_parts_it_has() -> None:
    from relu_doctor.render.trend import deaths_text
    from relu_doctor.report import SiteTrend

    labels = ("a.pt", "b.pt")

    def site(died_at: tuple[tuple[int, int], ...], revived: tuple[int, ...]) -> SiteTrend:
        return SiteTrend("act", 4, (1, 1), (0.25, 0.25), died_at, revived)

    assert deaths_text(site((), (2,)), labels) == "1 revived"  # no leading "; " when nothing died
    assert deaths_text(site(((0, 1),), ()), labels) == "1 at b.pt"
    assert deaths_text(site(((0, 1),), (2, 3)), labels) == "1 at b.pt; 2 revived"
    assert deaths_text(site((), ()), labels) == ""
