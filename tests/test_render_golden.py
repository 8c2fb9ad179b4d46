"""One golden-output test per renderer, on a small exact model, backed by invariants between the formats.

After a deliberate renderer change: ``python -m pytest tests/test_render_golden.py --regen-golden``, then
review the diff of tests/golden/. The report is built in memory from integer weights and integer inputs
(tests/models.py:GoldenReportNet), and the version, paths and hash are fixed, so nothing in a golden file
depends on the machine.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
from models import GoldenReportNet

from relu_doctor import scan
from relu_doctor.render import REPORT_FORMATS, render
from relu_doctor.render.json_format import render_json
from relu_doctor.render.markdown import render_markdown
from relu_doctor.render.table import render_table
from relu_doctor.report import Finding, ModelInfo, Prediction, ProbeInfo, Report

Golden = Callable[[str, str], str]
Parser = Callable[[str], list[dict[str, str]]]


@pytest.fixture(scope="module")
def report() -> Report:
    model = GoldenReportNet()
    probe = GoldenReportNet.probe()
    report = scan(
        model,
        list(probe.split(50)),
        model_info=ModelInfo("golden.safetensors", "safetensors", "0" * 64, arch="tests/models.py:GoldenReportNet"),
        probe_info=ProbeInfo("file", 200, 50, "golden_probe.npy", (4,)),
    )
    return replace(report, tool_version="0.0.0+golden", findings=_with_predictions(report.findings))


def _with_predictions(findings: tuple[Finding, ...]) -> tuple[Finding, ...]:
    """Fixed simulated numbers on the first finding that has units, so every renderer shows predictions (the
    simulations themselves are tested against brute-force re-runs in tests/test_simulate*.py)."""
    first = next(i for i, f in enumerate(findings) if f.units)
    units = len(findings[first].units)
    leaky = Prediction("leaky", "site", 0.125, 0.25, 0, None, units, 10, 16, 64, 1)
    shift = Prediction("bias_shift", "model", 0.0625, None, 1, units, units, 10, 10, 64, 1)
    predicted = replace(findings[first], predicted=(leaky, shift))
    return findings[:first] + (predicted,) + findings[first + 1 :]


def test_golden_model_is_what_its_docstring_says(report: Report) -> None:
    act1, block, act2 = report.sites
    assert [s.name for s in report.sites] == ["act#1", "block:relu", "act#2"]
    assert act1.dead_units == (5,) and act1.dying_units == (4,)
    assert act1.counters.positive[4] == 1  # 1 of 200 samples -> 0.5% < the 1% dying rate
    assert block.dead == block.units == 6
    assert act2.nan_units == (3,) and act2.dead == 0


def test_table_golden(report: Report, golden: Golden) -> None:
    actual = render_table(report, width=100, color=False)
    assert "\x1b[" not in actual
    assert actual == golden("scan_table.golden", actual)


def test_markdown_golden(report: Report, golden: Golden) -> None:
    actual = render_markdown(report)
    assert actual == golden("scan_markdown.golden", actual)


def test_json_golden(report: Report, golden: Golden) -> None:
    actual = render_json(report)
    expected = golden("scan_json.golden", actual)
    # structure and key order exactly; floats to 1e-12 (libm's pow may differ in the last bit across platforms)
    assert _approx_json(json.loads(actual)) == _approx_json(json.loads(expected))


def test_dead_totals_agree_across_formats(report: Report, table_rows: Parser, markdown_rows: Parser) -> None:
    table = render_table(report, width=100, color=False)
    data = json.loads(render_json(report))
    markdown = render_markdown(report)
    # 1 + 6 + 0 dead units over 6 + 6 + 4 units -> 7 of 16
    site_total = sum(s.dead for s in report.sites)
    assert site_total == report.summary.dead == data["summary"]["dead"] == 7
    assert sum(s["dead"] for s in data["sites"]) == site_total
    assert [_count(row["dead"]) for row in table_rows(table)] == [s.dead for s in report.sites]
    assert [_count(row["dead"]) for row in markdown_rows(markdown)] == [s.dead for s in report.sites]
    assert [row["site"].strip("`") for row in markdown_rows(markdown)] == [s.name for s in report.sites]
    assert _summary_dead(table) == _summary_dead(markdown) == (site_total, report.summary.units)


def test_every_format_has_a_renderer(report: Report) -> None:
    for fmt in REPORT_FORMATS.names():
        assert render(report, fmt).strip()


def test_table_folds_long_site_names_instead_of_cutting_them(report: Report, table_rows: Parser) -> None:
    long_name = "encoder.layers.11.feed_forward.activation_function_with_a_very_long_name"
    site = replace(report.sites[0], name=long_name)
    text = render_table(replace(report, sites=(site,)), width=80, color=False)
    (row,) = table_rows(text)
    assert row["site"].replace(" ", "") == long_name


def _count(cell: str) -> int:
    """'78 (60.9%)' -> 78."""
    return int(cell.split()[0])


def _summary_dead(text: str) -> tuple[int, int]:
    match = re.search(r"(\d+) of (\d+) units dead", text)
    assert match is not None
    return int(match.group(1)), int(match.group(2))


def _approx_json(value: Any) -> Any:
    if isinstance(value, dict):
        return [(k, _approx_json(v)) for k, v in value.items()]
    if isinstance(value, list):
        return [_approx_json(v) for v in value]
    if isinstance(value, float) and math.isfinite(value):
        return pytest.approx(value, rel=1e-12, abs=1e-15)
    return value
