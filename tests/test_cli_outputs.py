"""One scan, many outputs (--report FORMAT=FILE), several models per run, and trend's formats (issue 15)."""

from __future__ import annotations

import csv
import io
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner, Result

from relu_doctor.cli import app
from relu_doctor.render import BATCH_FORMATS, REPORT_FORMATS, TREND_FORMATS

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "samples"
DYING = str(SAMPLES / "dying_mlp.safetensors")
HEALTHY = str(SAMPLES / "healthy_mlp.safetensors")
ARCH = f"{SAMPLES / 'digits_mlp.py'}:build_mlp"
PROBE = str(SAMPLES / "digits_probe.npy")
COMMON = ("--arch", ARCH, "--probe", PROBE, "--no-simulate")


def invoke(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


# -- --report ------------------------------------------------------------------------------------------------------


def test_one_scan_writes_every_report(tmp_path: Path) -> None:
    sarif, junit, data = tmp_path / "r.sarif", tmp_path / "r.xml", tmp_path / "r.json"
    result = invoke(
        "scan",
        DYING,
        *COMMON,
        "-v",
        "--max-layer-dead-fraction",
        "0.5",
        "-f",
        "github",
        "--report",
        f"sarif={sarif}",
        "--report",
        f"junit={junit}",
        "--report",
        f"json={data}",
    )
    assert result.exit_code == 1, result.stderr
    assert sum("scanned 2 sites" in line for line in result.stderr.splitlines()) == 1  # one scan
    assert result.stdout.startswith("::")  # the --format output still goes to stdout
    report = json.loads(data.read_text())
    assert report["summary"]["dead"] == 78 and report["passed"] is False
    log = json.loads(sarif.read_text())
    assert len(log["runs"]) == 1 and {r["ruleId"] for r in log["runs"][0]["results"]} >= {"RD106"}
    suite = ET.fromstring(junit.read_text()).find("testsuite")
    assert suite is not None and suite.get("failures") == "1"  # act2 breaks its 0.5 limit
    # the file holds exactly what --format json prints for the same scan
    alone = invoke("scan", DYING, *COMMON, "--max-layer-dead-fraction", "0.5", "-f", "json")
    assert json.loads(alone.stdout)["summary"] == report["summary"]


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("sarif", "--report expects FORMAT=FILE"),
        ("=out.json", "--report expects FORMAT=FILE"),
        ("xml=out.xml", "unknown format 'xml'; choose one of table, json, markdown, csv, github, sarif, junit"),
        (f"json={PROBE}", "is the input"),
        (f"json={ARCH.rpartition(':')[0]}", "is the input"),
        ("json=no/such/folder/r.json", "does not exist"),
    ],
)
def test_a_bad_report_is_one_line_and_exit_2_before_any_work(spec: str, words: str) -> None:
    result = invoke("scan", DYING, *COMMON, "-v", "--report", spec)
    assert result.exit_code == 2
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and words in errors[0], result.stderr
    assert "scanned" not in result.stderr  # refused before the scan


def test_reports_never_share_a_file_nor_replace_one(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    twice = invoke("scan", DYING, *COMMON, "-o", str(out), "--report", f"sarif={out}")
    assert twice.exit_code == 2 and "give each output its own file" in twice.stderr
    out.write_text("keep")
    exists = invoke("scan", DYING, *COMMON, "--report", f"json={out}")
    assert exists.exit_code == 2 and "already exists" in exists.stderr and out.read_text() == "keep"
    assert invoke("scan", DYING, *COMMON, "--report", f"json={out}", "--force").exit_code == 0
    assert json.loads(out.read_text())["summary"]["dead"] == 78


# -- several models ----------------------------------------------------------------------------------------------------


def test_several_models_one_section_each_and_the_worst_exit_code() -> None:
    result = invoke("scan", DYING, HEALTHY, *COMMON, "--max-layer-dead-fraction", "0.5")
    assert result.exit_code == 1  # dying breaks 0.5 (60.9% of act2), healthy passes (0.8%)
    text = result.stdout
    assert text.index(f"relu-doctor 0.1.0: {DYING}") < text.index(f"relu-doctor 0.1.0: {HEALTHY}")
    assert text.rstrip().endswith("2 models: 1 passed, 1 gate FAILED")
    assert invoke("scan", HEALTHY, HEALTHY, *COMMON, "-q").exit_code == 0
    assert (
        invoke("scan", DYING, HEALTHY, *COMMON, "-q", "--max-layer-dead-fraction", "0.5", "--exit-zero").exit_code == 0
    )


def test_several_models_json_is_one_versioned_document_of_single_reports() -> None:
    both = invoke("scan", DYING, HEALTHY, *COMMON, "-f", "json")
    document = json.loads(both.stdout)
    assert document["schema_version"] == 1 and document["kind"] == "reports"
    assert document["models"] == [DYING, HEALTHY] and document["errors"] == []
    single = json.loads(invoke("scan", HEALTHY, *COMMON, "-f", "json").stdout)
    assert "kind" not in single and "sites" in single  # one model keeps the single-report shape
    assert document["reports"][1]["summary"] == single["summary"]
    assert [r["summary"]["dead"] for r in document["reports"]] == [78, 1]


def test_a_bad_path_among_several_is_reported_and_the_others_are_scanned(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.pt")
    result = invoke("scan", DYING, missing, HEALTHY, *COMMON, "-f", "json")
    assert result.exit_code == 2  # an error is the worst outcome, reported at the end
    assert (
        result.stderr.splitlines()[0]
        == f"relu-doctor: error: {missing}: no such file or directory; check the model path"
    )
    document = json.loads(result.stdout)
    assert [r["model"]["path"] for r in document["reports"]] == [DYING, HEALTHY]
    assert document["errors"] == [
        {"path": missing, "error": f"{missing}: no such file or directory; check the model path"}
    ]
    assert document["exit_code"] == 2
    # the per-model verdict on stderr names the missing path once, not "path: path: ..."
    assert f"{missing}: no such file or directory" in result.stderr
    assert f"{missing}: {missing}:" not in result.stderr
    # --exit-zero forgives a failed gate, never an error
    assert invoke("scan", DYING, missing, *COMMON, "-q", "--exit-zero").exit_code == 2


def test_several_models_in_every_format(tmp_path: Path) -> None:
    files = {name: tmp_path / f"all{entry.extension}.{name}" for name, entry in ((e.name, e) for e in BATCH_FORMATS)}
    args = [arg for name, path in files.items() if name != "table" for arg in ("--report", f"{name}={path}")]
    result = invoke("scan", DYING, HEALTHY, *COMMON, "--max-layer-dead-fraction", "0.5", *args)
    assert result.exit_code == 1, result.stderr
    rows = list(csv.DictReader(io.StringIO(files["csv"].read_text())))
    assert [(r["model"], r["site"], r["dead"]) for r in rows] == [
        (DYING, "act1", "0"),
        (DYING, "act2", "78"),
        (HEALTHY, "act1", "0"),
        (HEALTHY, "act2", "1"),
    ]
    assert len(json.loads(files["sarif"].read_text())["runs"]) == 2
    suites = ET.fromstring(files["junit"].read_text()).findall("testsuite")
    assert [s.get("name") for s in suites] == [DYING, HEALTHY]
    github = files["github"].read_text().splitlines()
    assert github[-1] == "::notice title=relu-doctor::2 models: 1 passed, 1 gate FAILED"
    assert any(line.startswith("::notice") and DYING in line for line in github)
    markdown = files["markdown"].read_text()
    assert f"## `{DYING}`" in markdown and f"## `{HEALTHY}`" in markdown


def test_several_models_refuse_the_one_model_outputs(tmp_path: Path) -> None:
    result = invoke("scan", DYING, HEALTHY, *COMMON, "--save-stats", str(tmp_path / "s.stats"))
    assert result.exit_code == 2 and "scan one MODEL at a time" in result.stderr


def test_every_report_format_has_a_several_models_format() -> None:
    assert BATCH_FORMATS.names() == REPORT_FORMATS.names()


# -- trend -------------------------------------------------------------------------------------------------------------


def test_trend_takes_scans_options_and_its_formats(tmp_path: Path) -> None:
    args = ("trend", DYING, HEALTHY, *COMMON, "--simulate-samples", "64")
    assert set(TREND_FORMATS.names()) >= {"table", "json", "markdown", "csv", "github"}
    data = json.loads(invoke(*args, "-f", "json").stdout)
    table = list(csv.DictReader(io.StringIO(invoke(*args, "-f", "csv").stdout)))
    # the CSV's counts are the JSON's: one row per site and checkpoint
    assert {(r["site"], int(r["checkpoint_index"])): int(r["dead"]) for r in table} == {
        (s["name"], i): dead for s in data["sites"] for i, dead in enumerate(s["dead"])
    }
    markdown = invoke(*args, "-f", "markdown").stdout
    assert "| act2 | 128 | 60.9% | 0.8% |" in markdown
    github = invoke(*args, "-f", "github", "--report", f"json={tmp_path / 't.json'}")
    assert github.exit_code == 0 and github.stdout.splitlines()[-1].startswith("::notice")
    assert json.loads((tmp_path / "t.json").read_text())["sites"] == data["sites"]
    bad = invoke("trend", DYING, *COMMON, "--report", "sarif=t.sarif")
    assert bad.exit_code == 2 and "choose one of table, json, markdown, csv, github" in bad.stderr


def test_fix_writes_its_json_report_beside_the_text(tmp_path: Path) -> None:
    report = tmp_path / "fix.json"
    result = invoke(
        "fix",
        DYING,
        "--arch",
        ARCH,
        "--probe",
        PROBE,
        "-s",
        "recycle",
        "-o",
        str(tmp_path / "fixed.safetensors"),
        "--report",
        f"json={report}",
    )
    assert result.exit_code == 0, result.output
    assert "relu-doctor fix:" in result.stdout  # the table still on stdout
    data = json.loads(report.read_text())
    assert data["verification"]["passed"] is True
    clash = invoke(
        "fix",
        DYING,
        "--arch",
        ARCH,
        "-s",
        "recycle",
        "-o",
        str(tmp_path / "b.safetensors"),
        "--report",
        f"json={tmp_path / 'b.safetensors'}",
    )
    assert clash.exit_code == 2 and "is also --output" in clash.stderr


# -- which sites fix -s leaky would swap -----------------------------------------------------------------------------


class ModuleAndFunctionalDeadNet(torch.nn.Module):
    """Dead units behind an nn.ReLU (fix -s leaky swaps it) and behind F.relu (code it cannot change)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.act, self.fc2, self.head = (
            torch.nn.Linear(4, 8),
            torch.nn.ReLU(),
            torch.nn.Linear(8, 8),
            torch.nn.Linear(8, 3),
        )
        with torch.no_grad():
            self.fc1.bias[:3] = -100.0  # units 0-2 of act never fire
            self.fc2.bias[:2] = -100.0  # units 0-1 of the functional relu never fire

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.nn.functional.relu(self.fc2(self.act(self.fc1(x)))))


def test_the_table_says_which_sites_fix_leaky_would_swap_and_the_measured_drift() -> None:
    import copy

    from relu_doctor import scan

    model = ModuleAndFunctionalDeadNet().eval()
    probe = torch.randn(64, 4, generator=torch.Generator().manual_seed(1))
    report = scan(model, [probe], simulate=True, simulate_budget=None)
    line = next(
        line for line in REPORT_FORMATS.render(report, "table", width=None).splitlines() if "fix -s leaky" in line
    )
    # oracle: swap the module by hand and measure the output drift on the same 64 samples
    swapped = copy.deepcopy(model)
    swapped.act = torch.nn.LeakyReLU(0.01)
    with torch.no_grad():
        before, after = model(probe), swapped(probe)
    drift = float((after - before).norm() / before.norm())
    assert line.startswith(f"fix -s leaky: would swap act (drift {drift:.2%}"), (line, drift)
    assert line.endswith("; cannot swap :relu (functional relu: change the code)"), line


def test_merge_writes_reports_too(tmp_path: Path) -> None:
    stats, report = tmp_path / "s.stats", tmp_path / "merged.json"
    assert invoke("scan", DYING, *COMMON, "-q", "--save-stats", str(stats)).exit_code == 0
    merged = invoke("merge", str(stats), "-f", "markdown", "--report", f"json={report}")
    assert merged.exit_code == 0, merged.stderr
    assert merged.stdout.startswith("**relu-doctor**") or "act2" in merged.stdout
    assert json.loads(report.read_text())["summary"]["dead"] == 78
    assert invoke("merge", str(stats), "--report", f"json={stats}").exit_code == 2  # never over an input
