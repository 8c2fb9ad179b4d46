"""--plot: per-site firing-rate histograms with the dead units marked, dead share over checkpoints for trend,
and a one-line exit 2 when matplotlib is missing."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from relu_doctor.analysis.trend import build_trend
from relu_doctor.api import scan
from relu_doctor.cli import app
from relu_doctor.report import Report, Thresholds

pytest.importorskip("matplotlib")

from relu_doctor.render.plot import DEAD_COLOR, report_figure, report_png, trend_figure  # noqa: E402

SAMPLES = Path(__file__).resolve().parent.parent / "samples"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def bias_killed(dead_units: tuple[int, ...]) -> Report:
    """Linear(4, 6) + ReLU; +-x[i % 4] per unit, bias -100 on ``dead_units`` (never fire), 0.5 elsewhere."""
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU())
    with torch.no_grad():
        model[0].weight.zero_()
        for unit in range(6):
            model[0].weight[unit, unit % 4] = 1.0 if unit < 4 else -1.0
        model[0].bias.copy_(torch.tensor([-100.0 if u in dead_units else 0.5 for u in range(6)]))
    probe = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))
    return scan(model, probe.split(32), thresholds=Thresholds(max_layer_dead_fraction=0.4))


def test_histogram_marks_the_dead_units_of_each_site() -> None:
    report = bias_killed((0, 3))
    figure = report_figure(report)
    axis = figure.axes[0]
    red = [p.get_height() for p in axis.patches if p.get_facecolor()[:3] == pytest.approx(_rgb(DEAD_COLOR))]
    assert red == [2]  # units 0 and 3
    assert "2/6 dead (33.3%)" in axis.get_title()
    live = sum(p.get_height() for p in axis.patches) - 2
    assert live == 4


def test_report_png_is_a_png() -> None:
    assert report_png(bias_killed(())).startswith(PNG_MAGIC)


def test_trend_figure_draws_the_dead_share_over_checkpoints() -> None:
    reports = [bias_killed(()), bias_killed((1,)), bias_killed((1, 2, 5))]
    figure = trend_figure(build_trend(["e1", "e2", "e3"], reports))
    (line,) = [ln for ln in figure.axes[0].get_lines() if ln.get_label() == "1"]
    assert list(line.get_ydata()) == pytest.approx([0.0, 1 / 6, 3 / 6])
    assert any(ln.get_label() == "limit 0.4" for ln in figure.axes[0].get_lines())


def test_cli_plot_writes_a_png_and_nothing_else_changes(tmp_path: Path) -> None:
    target = tmp_path / "hist.png"
    args = [
        "scan",
        str(SAMPLES / "dying_mlp.safetensors"),
        "--arch",
        f"{SAMPLES / 'digits_mlp.py'}:build_mlp",
        "--probe",
        str(SAMPLES / "digits_probe.npy"),
        "-q",
        "--plot",
        str(target),
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0 and result.stdout == ""
    assert target.read_bytes().startswith(PNG_MAGIC)


def test_missing_matplotlib_is_one_line_exit_2(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    args = [
        "scan",
        str(SAMPLES / "healthy_mlp.safetensors"),
        "--arch",
        f"{SAMPLES / 'digits_mlp.py'}:build_mlp",
        "--samples",
        "8",
        "--plot",
        str(tmp_path / "p.png"),
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and result.stdout == ""  # checked before scanning: no report, then an error
    assert result.stderr.strip().splitlines() == [
        'relu-doctor: error: --plot needs matplotlib: pip install "relu-doctor[plot]" (or drop --plot); '
        "see 'relu-doctor scan --help'"
    ]
    assert not (tmp_path / "p.png").exists()


def _rgb(hex_color: str) -> tuple[float, float, float]:
    return tuple(int(hex_color[i : i + 2], 16) / 255 for i in (1, 3, 5))  # type: ignore[return-value]
