"""Bounded fix simulations: the sub-probe they re-run, what the report says about it, and the progress display."""

from __future__ import annotations

import copy
import io
import json
import math
import sys
from pathlib import Path

import pytest
import torch
from rich.console import Console
from torch import nn
from typer.testing import CliRunner

from relu_doctor import scan
from relu_doctor.cli import app
from relu_doctor.cli.app import StageDisplay
from relu_doctor.report import Finding, Prediction, Report
from relu_doctor.whatif import DISPATCHED_PASS_COST, SubProbe
from tests.test_simulate import SAMPLE, BiasKilledClassifier


def _probe(samples: int) -> list[torch.Tensor]:
    x = torch.randn(samples, 6, generator=torch.Generator().manual_seed(3)) * 3
    return list(x.split(32))


def _predicted(report: Report) -> dict[tuple[str, str], tuple[Prediction, ...]]:
    return {(f.code, f.site): f.predicted for f in report.findings if f.predicted}


def _drift_on(samples: list[torch.Tensor]) -> float:
    """LeakyReLU at act1, by plain forward passes of a swapped copy over ``samples``."""
    model = BiasKilledClassifier().eval()
    swapped = copy.deepcopy(model)
    swapped.act1 = nn.LeakyReLU(0.01, inplace=True)
    with torch.no_grad():
        before = torch.cat([model(x) for x in samples]).double()
        after = torch.cat([swapped(x) for x in samples]).double()
    return float((after - before).norm() / before.norm())


def _cause(report: Report, site: str) -> Finding:
    return next(f for f in report.findings if f.site == site and f.code.startswith("RD1"))


def test_predictions_equal_a_full_probe_simulation_when_the_sub_probe_holds_the_probe() -> None:
    probe = _probe(96)
    full = scan(BiasKilledClassifier(), probe, simulate=True, simulate_budget=None, simulate_samples=96)
    larger = scan(BiasKilledClassifier(), iter(probe), simulate=True, simulate_budget=None, simulate_samples=10_000)
    assert _predicted(full) and _predicted(full) == _predicted(larger)
    assert {p.simulated_samples for p in _cause(full, "act1").predicted} == {96}


def test_the_sub_probe_is_the_first_samples_and_its_size_is_honoured() -> None:
    probe = _probe(96)
    report = scan(BiasKilledClassifier(), probe, simulate=True, simulate_budget=None, simulate_samples=40)
    predicted = _cause(report, "act1").prediction("leaky")
    assert predicted is not None
    # 40 samples = the first batch of 32 and 8 samples of the second
    first_40 = [torch.cat(probe)[:40]]
    assert predicted.simulated_samples == 40
    assert math.isclose(predicted.output_drift, _drift_on(first_40), rel_tol=1e-6)
    assert report.extra["simulation"]["samples"] == 40
    assert report.extra["simulation"]["batches"] == 2
    # the scan itself still saw all 96
    assert report.probe.samples == 96


def test_forward_passes_are_counted_and_the_baseline_runs_once() -> None:
    report = scan(BiasKilledClassifier(), _probe(96), simulate=True, simulate_budget=None, simulate_samples=64)
    passes = report.extra["simulation"]["forward_passes"]
    # 2 batches: one baseline pass each, then every variant (leaky/bias shift per site, leaky everywhere, recycle
    # rounds) 2 passes each: an even count, at least baseline + leaky everywhere
    assert passes % 2 == 0 and passes >= 4


def test_sub_probe_keeps_only_its_head_of_an_iterator() -> None:
    batches = (torch.full((10, 3), float(i)) for i in range(1000))
    head = SubProbe.of(batches, 25)
    assert [b.shape[0] for b in head.batches] == [10, 10, 5] and head.samples == 25
    assert next(batches)[0, 0] == 3.0  # read no further than it needed
    tapped = SubProbe(15)
    seen = sum(1 for _ in tapped.tap(torch.ones(7, 2) for _ in range(50)))
    assert seen == 50 and tapped.samples == 15 and len(tapped.batches) == 3


def test_tuple_batches_are_cut_on_every_input() -> None:
    head = SubProbe.of([(torch.zeros(8, 2), torch.ones(8, 3), "mask")], 5)
    (cut,) = head.batches
    assert cut[0].shape == (5, 2) and cut[1].shape == (5, 3) and cut[2] == "mask"


def test_cli_simulate_samples_is_in_the_json_and_verbose_counts_the_passes() -> None:
    result = CliRunner().invoke(app, ["scan", *SAMPLE, "--simulate-samples", "64", "--simulate-budget", "1000", "-v"])
    cause = next(f for f in json.loads(result.stdout)["findings"] if f["predicted"])
    assert {p["simulated_samples"] for p in cause["predicted"]} == {64}
    assert "extra forward passes" in result.stderr and "first 64 samples" in result.stderr


def test_cli_rejects_a_zero_sub_probe() -> None:
    result = CliRunner().invoke(app, ["scan", *SAMPLE, "--simulate-samples", "0"])
    assert result.exit_code == 2 and "--simulate-samples must be at least 1" in result.stderr


def test_stage_display_is_silent_when_stderr_is_not_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    display = StageDisplay(enabled=True)
    display.stage("observing", 10)
    display.advance(5)
    display.stop()
    assert not display.live and stream.getvalue() == ""


def test_stage_display_names_each_stage_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Terminal()
    monkeypatch.setattr("sys.stderr", stream)
    monkeypatch.setattr(
        sys.modules["relu_doctor.cli.app"],
        "stderr_console",
        lambda style=None: Console(file=stream, force_terminal=True, width=80),
    )
    display = StageDisplay(enabled=True)
    assert display.live
    display.stage("observing", 4)
    display.advance(4)
    display.stage("simulating", 6)
    display.update(3, 6)
    display._bar.refresh()  # what the live display draws now
    display.stop()
    assert "simulating" in stream.getvalue() and "3/6" in stream.getvalue()


def test_quiet_turns_the_display_off() -> None:
    display = StageDisplay(enabled=False)
    display.stage("loading", None)
    assert not display.live


class RecordingDisplay(StageDisplay):
    """The CLI's display, drawn on a fake terminal; records each stage it is told and whether it was shown."""

    stages: list[tuple[str, int | None, bool]] = []

    def __init__(self, enabled: bool, style: object = None) -> None:
        class Terminal(io.StringIO):
            def isatty(self) -> bool:
                return True

        self.terminal = Terminal()
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(type(sys.stderr), "isatty", lambda stream: True)
            patch.setattr(
                sys.modules["relu_doctor.cli.app"],
                "stderr_console",
                lambda style=None: Console(file=self.terminal, force_terminal=True, width=80),
            )
            super().__init__(enabled)
        RecordingDisplay.stages = []

    def stage(self, name: str, total: int | None) -> None:
        super().stage(name, total)
        RecordingDisplay.stages.append((name, total, self.live))
        if self._bar is not None:
            self._bar.refresh()  # what the terminal shows now
            assert name in self.terminal.getvalue()


@pytest.fixture
def stderr_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI sees a terminal on stderr (CliRunner's stream is not one) and draws on a RecordingDisplay."""
    cli_app = sys.modules["relu_doctor.cli.app"]
    real = cli_app.output_style
    monkeypatch.setattr(cli_app, "output_style", lambda **options: real(**{**options, "stderr_tty": True}))
    monkeypatch.setattr("relu_doctor.cli.scan.StageDisplay", RecordingDisplay)


@pytest.mark.usefixtures("stderr_terminal")
def test_cli_names_every_stage_to_the_end_on_a_terminal(tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    result = CliRunner().invoke(app, ["scan", *SAMPLE, "--certify", "-f", "json", "-o", str(out)])
    assert result.exit_code == 0, result.stderr
    assert [(name, live) for name, _, live in RecordingDisplay.stages] == [
        ("loading", True),
        ("observing", True),
        ("simulating", True),
        ("certifying", True),
        ("writing", True),
    ]
    # observing counts the probe's 512 samples; simulating its forward passes
    assert RecordingDisplay.stages[1][1] == 512 and (RecordingDisplay.stages[2][1] or 0) > 0
    assert json.loads(out.read_text())["findings"]


@pytest.mark.usefixtures("stderr_terminal")
def test_cli_shows_no_stage_under_quiet(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["scan", *SAMPLE, "-q", "-o", str(tmp_path / "r.txt")])
    assert result.exit_code == 0, result.stderr
    assert RecordingDisplay.stages and not any(live for _, _, live in RecordingDisplay.stages)
    assert result.stderr == ""


# -- the budget: what the default scan may spend on simulations ---------------------------------------------
def _predictions(report: Report) -> dict[tuple[str, str, str], Prediction]:
    return {(f.code, f.site, p.fix + p.scope): p for f in report.findings for p in f.predicted}


def test_the_default_budget_runs_the_minimum_passes_and_names_what_it_left_out() -> None:
    report = scan(BiasKilledClassifier(), _probe(96), simulate=True)  # 2% of 96 samples: below the minimum
    cost = report.extra["simulation"]
    # the unmodified model, the bias shift and the worst site's swap, each on the first 32 samples (one batch)
    assert (cost["samples"], cost["forward_passes"], cost["budget"]) == (32, 3, 2)
    assert cost["not_simulated"] == ["LeakyReLU everywhere", "LeakyReLU at :relu", "recycle"]
    fixes = {(p.fix, p.scope) for p in _predictions(report).values()}
    assert fixes == {("bias_shift", "model"), ("leaky", "site")}
    assert _cause(report, "act1").prediction("leaky") is not None
    assert _cause(report, ":relu").prediction("leaky") is None
    # RD301 is still advised; it carries no measurement
    everywhere = next(f for f in report.findings if f.code == "RD301")
    assert everywhere.predicted == ()


def test_budgeted_predictions_equal_an_unbounded_simulation_of_the_same_samples() -> None:
    probe = _probe(96)
    # a functional relu: re-runs go through the dispatch mode, each sample counting DISPATCHED_PASS_COST (3)
    budgeted = _predictions(scan(BiasKilledClassifier(), probe, simulate=True, simulate_budget=5.1))
    full = _predictions(scan(BiasKilledClassifier(), probe, simulate=True, simulate_budget=None, simulate_samples=32))
    # 490 sample-forwards, 163 under the dispatch mode: five passes of 32, so every fix but the recycle
    assert {p.fix for p in budgeted.values()} == {"bias_shift", "leaky"}
    assert budgeted and all(full[key] == prediction for key, prediction in budgeted.items())
    assert len(budgeted) == len([key for key in full if full[key].fix != "recycle"])


def test_the_recycle_gets_the_rounds_left_and_says_how_many_it_ran() -> None:
    report = scan(BiasKilledClassifier(), _probe(96), simulate=True, simulate_budget=6.3)  # six dispatched passes
    recycled = [p for p in _predictions(report).values() if p.fix == "recycle"]
    assert recycled and {p.forward_passes for p in recycled} == {1}
    assert report.extra["simulation"]["forward_passes"] == 6 and report.extra["simulation"]["not_simulated"] == []


def test_a_budget_never_spends_more_than_its_share_once_past_the_minimum() -> None:
    probe = _probe(96 * 8)
    for share in (0.25, 0.5, 1.0, 3.0):
        cost = scan(BiasKilledClassifier(), probe, simulate=True, simulate_budget=share).extra["simulation"]
        assert cost["forward_passes"] * 32 >= cost["samples"] and cost["budget"] == math.ceil(share * 96 * 8)
        spent = cost["samples"] * cost["forward_passes"] // cost["batches"] * DISPATCHED_PASS_COST
        assert spent <= max(cost["budget"], 3 * 32 * DISPATCHED_PASS_COST), (share, cost)


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf"])
def test_cli_rejects_a_budget_that_is_not_a_positive_number(value: str) -> None:
    result = CliRunner().invoke(app, ["scan", *SAMPLE, "--simulate-budget", value])
    assert result.exit_code == 2 and "--simulate-budget must be a finite number > 0" in result.stderr


def test_cli_table_names_the_fixes_the_budget_left_out() -> None:
    result = CliRunner().invoke(app, ["scan", *SAMPLE, "-f", "table", "-v"])
    assert result.exit_code == 0, result.stderr
    note = "fixes simulated on the probe's first 32 samples: a unit a fix leaves unfired there fires on fewer than 8.9%"
    assert note in result.stdout
    assert "(95% bound); not simulated (--simulate-budget): LeakyReLU everywhere, recycle" in result.stdout
    assert "within a budget of 11 sample-forwards" in result.stderr
    full = CliRunner().invoke(app, ["scan", *SAMPLE, "-f", "table", "--simulate-budget", "1000"])
    assert "not simulated" not in full.stdout and "LeakyReLU everywhere: drift" in full.stdout


def test_cli_json_says_what_the_simulations_cost_and_left_out() -> None:
    data = json.loads(CliRunner().invoke(app, ["scan", *SAMPLE, "-f", "json"]).stdout)
    assert data["simulation"] == {
        "samples": 32,
        "forward_passes": 3,
        "budget": 11,
        "not_simulated": ["LeakyReLU everywhere", "recycle"],
    }
    skipped = json.loads(CliRunner().invoke(app, ["scan", *SAMPLE, "-f", "json", "--no-simulate"]).stdout)
    assert "simulation" not in skipped


def test_hooked_re_runs_count_one_sample_forward_per_sample_and_dispatched_ones_three() -> None:
    """The same fixes, budget and probe: sites that are all nn.ReLU modules re-run on hooks (plain cost), a functional
    relu makes every re-run go through the dispatch mode, which the budget charges DISPATCHED_PASS_COST times."""
    torch.manual_seed(0)
    hooked = nn.Sequential(nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 4))
    with torch.no_grad():
        hooked[0].bias[:2] = -8.0
        hooked[2].bias[5] = -8.0
    dispatched = BiasKilledClassifier()
    probe = _probe(96)
    share = 5 * 32 / 96 + 0.01  # 161 sample-forwards: five plain passes of 32, one dispatched one
    for model, passes in ((hooked, 5), (dispatched, 3)):  # 3: the minimum
        cost = scan(model, probe, simulate=True, simulate_budget=share).extra["simulation"]
        assert (cost["samples"], cost["forward_passes"]) == (32, passes), type(model).__name__


@pytest.mark.parametrize("budget", [0.0, -0.5, float("nan"), float("inf")])
def test_the_python_api_refuses_a_budget_that_is_not_a_positive_number(budget: float) -> None:
    from relu_doctor.errors import UsageError

    with pytest.raises(UsageError, match="--simulate-budget must be a finite number > 0"):
        scan(BiasKilledClassifier(), _probe(32), simulate=True, simulate_budget=budget)
