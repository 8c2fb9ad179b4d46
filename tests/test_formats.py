"""Output formats: every registered format renders; golden output for csv, github, sarif and junit; validity checks
(JSON, XML, required SARIF keys, Actions escaping) and invariants against the report they came from.

Regenerate the goldens after a deliberate change: python -m pytest tests/test_formats.py --regen-golden
"""

from __future__ import annotations

import csv
import io
import json
import xml.etree.ElementTree as ET
from dataclasses import replace

import pytest
import torch
from torch import nn

from relu_doctor.analysis import diagnose
from relu_doctor.api import scan
from relu_doctor.render import REPORT_FORMATS, render
from relu_doctor.render.csv_format import COLUMNS
from relu_doctor.render.github import escape_data, escape_property, workflow_command
from relu_doctor.render.sarif import FINGERPRINT_KEY, registered_rules, sarif_log
from relu_doctor.report import ModelInfo, ProbeInfo, Report, Thresholds

MODEL_PATH = "models/bias_killed.safetensors"


class FunctionalReluBlock(nn.Module):
    """A Linear followed by torch.relu: a functional site, named ``block:relu`` (a ':' the Actions title escapes)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.fc(x))


class BiasKilledNet(nn.Module):
    """Three sites with known dead units, and one module never called.

    act1: identity weights, bias -5 on units 2, 3; inputs lie in [-1, 1] -> 2 of 4 dead (50%).
    block:relu: unit 3 has zero weights and bias -5 -> 1 of 4 dead (25%); unit 2 copies unit 0 minus 0.9 and
    fires on 1 of 16 samples (the only input above 0.9) -> dying at dying_rate 0.1.
    head.1: bias -50 -> 2 of 2 dead (100%).
    """

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.act1, self.block = nn.Linear(4, 4), nn.ReLU(), FunctionalReluBlock()
        self.head = nn.Sequential(nn.Linear(4, 2), nn.ReLU())
        self.spare = nn.Linear(4, 4)
        with torch.no_grad():
            self.fc1.weight.copy_(torch.eye(4))
            self.fc1.bias.copy_(torch.tensor([0.0, 0.0, -5.0, -5.0]))
            self.block.fc.weight.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]]))
            self.block.fc.bias.copy_(torch.tensor([0.0, 0.0, -0.9, -5.0]))
            self.head[0].weight.fill_(1.0)
            self.head[0].bias.fill_(-50.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(self.act1(self.fc1(x))))


def scan_bias_killed(thresholds: Thresholds) -> Report:
    probe = torch.linspace(-1, 1, 64).reshape(16, 4)
    report = scan(
        BiasKilledNet(),
        probe.split(8),
        thresholds=thresholds,
        model_info=ModelInfo(MODEL_PATH, "safetensors", "ab" * 32),
        probe_info=ProbeInfo("file", 16, 8, "probe.npy", (4,)),
    )
    return replace(report, tool_version="0.0.0-test")  # goldens must not change with each release


# act1 (50%) breaks 0.4; head.* is allowed 100%; the model's 5 of 10 (50%) breaks 0.4.
GATED = Thresholds(
    dying_rate=0.1, max_dead_fraction=0.4, max_layer_dead_fraction=0.4, site_overrides=(("head.*", 1.0),)
)


@pytest.fixture(scope="module")
def report() -> Report:
    return scan_bias_killed(GATED)


@pytest.fixture(scope="module")
def ignoring_head() -> Report:
    return scan_bias_killed(replace(GATED, ignore=("head.*",)))


def test_every_format_has_a_renderer_that_returns_text(report: Report) -> None:
    for fmt in REPORT_FORMATS.names():
        assert render(report, fmt).strip(), fmt


def test_fixture_has_the_planted_sites(report: Report) -> None:
    assert [(s.name, s.dead_units) for s in report.sites] == [
        ("act1", (2, 3)),
        ("block:relu", (3,)),
        ("head.1", (0, 1)),
    ]
    assert report.sites[1].dying_units == (2,)  # fires on 1 of 16 positions: 6.25% < 10%
    assert report.gate.failing_sites == ("act1",)


@pytest.mark.parametrize("fmt", ["csv", "github", "sarif", "junit"])
def test_golden(fmt: str, report: Report, golden) -> None:
    actual = render(report, fmt)
    assert actual == golden(f"formats_{fmt}.golden", actual)


# -- csv ---------------------------------------------------------------------------------------------------------
def test_csv_has_a_header_and_one_row_per_site_whose_dead_total_matches_json(report: Report) -> None:
    text = render(report, "csv")
    assert text.splitlines()[0] == ",".join(COLUMNS)
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [row["site"] for row in rows] == [s.name for s in report.sites]
    assert sum(int(row["dead"]) for row in rows) == json.loads(render(report, "json"))["summary"]["dead"] == 5
    assert [row["status"] for row in rows] == ["FAIL", "warn", "dead"]


def test_csv_marks_ignored_sites(ignoring_head: Report) -> None:
    rows = list(csv.DictReader(io.StringIO(render(ignoring_head, "csv"))))
    assert [row["ignored"] for row in rows] == ["false", "false", "true"]


# -- github ------------------------------------------------------------------------------------------------------
def test_github_escaping_matches_the_actions_toolkit() -> None:
    # @actions/core escapeData: % \r \n; escapeProperty adds : and ,
    assert escape_data("50% dead\r\nnext: a, b") == "50%25 dead%0D%0Anext: a, b"
    assert escape_property("block:relu, 50%\n") == "block%3Arelu%2C 50%25%0A"
    assert workflow_command("warning", "a\nb", title="x:y", file="") == "::warning title=x%3Ay::a%0Ab"


def _unescape(text: str) -> str:
    return text.replace("%0A", "\n").replace("%0D", "\r").replace("%3A", ":").replace("%2C", ",").replace("%25", "%")


def parse_command(line: str) -> tuple[str, dict[str, str], str]:
    """``::level k=v,k=v::message`` -> (level, properties, message), unescaped (the runner's reading)."""
    assert line.startswith("::"), line
    head, message = line[2:].split("::", 1)
    level, _, props = head.partition(" ")
    properties = dict(pair.split("=", 1) for pair in props.split(",")) if props else {}
    return level, {k: _unescape(v) for k, v in properties.items()}, _unescape(message)


def test_github_one_annotation_per_failing_or_warned_site(report: Report) -> None:
    commands = [parse_command(line) for line in render(report, "github").splitlines()]
    per_site = {
        props["title"]: level for level, props, _ in commands if props.get("title", "").startswith("relu-doctor: ")
    }
    # act1 breaks its limit; block:relu has a dead unit; head.1 passes its 100% limit but is wholly dead (RD002 error)
    assert per_site == {
        "relu-doctor: act1": "error",
        "relu-doctor: block:relu": "warning",
        "relu-doctor: head.1": "error",
        "relu-doctor: model": "error",
        "relu-doctor: blind spot": "warning",
    }
    act1 = next(message for _, props, message in commands if props.get("title") == "relu-doctor: act1")
    assert act1.splitlines()[0] == "act1: 2 of 4 units dead (50.0%), 0 dying"
    model = [message for _, props, message in commands if props.get("title") == "relu-doctor: model"]
    assert model == ["model: 5 of 10 units dead (50.0%) > max-dead-fraction 0.4"]
    assert all(props.get("file") in (MODEL_PATH, None) for _, props, _ in commands)


def test_github_leaves_ignored_sites_out(ignoring_head: Report) -> None:
    assert "head.1" not in render(ignoring_head, "github")


# -- sarif -------------------------------------------------------------------------------------------------------
def test_sarif_has_the_required_keys_and_one_result_per_finding(report: Report) -> None:
    log = json.loads(render(report, "sarif"))
    assert log["version"] == "2.1.0" and log["$schema"].endswith("sarif-2.1.0.json")
    run = log["runs"][0]
    assert run["tool"]["driver"]["name"] == "relu-doctor"
    rule_ids = [rule["id"] for rule in run["tool"]["driver"]["rules"]]
    assert len(run["results"]) == len(report.findings)
    for result, finding in zip(run["results"], report.findings):
        assert result["ruleId"] == finding.code == rule_ids[result["ruleIndex"]]
        assert result["message"]["text"]
        location = result["locations"][0]["physicalLocation"]
        assert location["artifactLocation"]["uri"] == MODEL_PATH and location["region"]["startLine"] >= 1
        assert result["partialFingerprints"][FINGERPRINT_KEY]
    assert run["artifacts"][0]["location"]["uri"] == MODEL_PATH
    assert {r["level"] for r in run["results"] if r["properties"]["site"] == "act1"} == {"error"}  # breaks its limit


def test_sarif_rules_come_from_every_diagnosis_registry(report: Report) -> None:
    rule_ids = {rule["id"] for rule in sarif_log(report)["runs"][0]["tool"]["driver"]["rules"]}
    assert {code for code, _ in diagnose.RULES} <= rule_ids
    assert {code for code, _ in getattr(diagnose, "CAUSES", ())} <= rule_ids
    assert {f.code for f in report.findings} <= rule_ids
    assert set(registered_rules()) <= rule_ids


def test_sarif_fingerprints_are_stable_when_counts_change_and_distinct_per_site(report: Report) -> None:
    def fingerprints(r: Report) -> dict[tuple[str, str], str]:
        return {
            (x["ruleId"], x["properties"]["site"]): x["partialFingerprints"][FINGERPRINT_KEY]
            for x in sarif_log(r)["runs"][0]["results"]
        }

    other = scan_bias_killed(replace(GATED, dying_rate=0.01))  # different thresholds, same dead units
    first, second = fingerprints(report), fingerprints(other)
    assert {k: v for k, v in first.items() if k in second} == {k: v for k, v in second.items() if k in first}
    assert len(set(first.values())) == len(first)


def test_sarif_leaves_findings_of_ignored_sites_out(ignoring_head: Report) -> None:
    results = sarif_log(ignoring_head)["runs"][0]["results"]
    assert results and all(r["properties"]["site"] != "head.1" for r in results)


# -- junit -------------------------------------------------------------------------------------------------------
def test_junit_parses_with_one_case_per_site_failing_where_the_gate_fails(report: Report) -> None:
    root = ET.fromstring(render(report, "junit"))
    suite = root.find("testsuite")
    assert suite is not None
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases] == [s.name for s in report.sites] + ["model"]
    failing = [c.get("name") for c in cases if c.find("failure") is not None]
    assert failing == ["act1", "model"]  # act1 > 0.4; the model's 50% > 0.4
    assert suite.get("tests") == str(len(cases)) and suite.get("failures") == str(len(failing))


def test_junit_skips_ignored_sites(ignoring_head: Report) -> None:
    root = ET.fromstring(render(ignoring_head, "junit"))
    skipped = [c.get("name") for c in root.iter("testcase") if c.find("skipped") is not None]
    assert skipped == ["head.1"]
