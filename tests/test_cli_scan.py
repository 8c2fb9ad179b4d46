"""`relu-doctor scan` end to end: exit codes 0/1/2, JSON and Markdown on stdout, one-line errors on stderr."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("relu_doctor.loading", reason="the checkpoint loader (relu_doctor.loading) is not importable yet")

from typer.testing import CliRunner, Result  # noqa: E402

from relu_doctor.cli import app  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "samples"
DYING = str(SAMPLES / "dying_mlp.safetensors")
ARCH = f"{SAMPLES / 'digits_mlp.py'}:build_mlp"
PROBE = str(SAMPLES / "digits_probe.npy")
SAMPLE_ARGS = ["scan", DYING, "--arch", ARCH, "--probe", PROBE]

REQUIRED_KEYS = {
    "schema_version",
    "tool_version",
    "model",
    "probe",
    "sites",
    "summary",
    "thresholds",
    "passed",
    "exit_code",
}
REQUIRED_SITE_KEYS = {
    "name",
    "module_path",
    "call_index",
    "op",
    "unit_axis",
    "units",
    "dead",
    "dead_units",
    "dying",
    "firing_rate",
    "nan_count",
}

FORWARD_FAILS = """
import torch
from torch import nn

class ForwardFails(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 8)

    def forward(self, x):
        return torch.relu(self.fc(x)) @ torch.ones(5, 5)

def build():
    return ForwardFails()
"""

WRONG_ARCH = """
from torch import nn

def build():
    return nn.Sequential(nn.Linear(64, 10), nn.ReLU())
"""


def invoke(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


def assert_one_line_error(result: Result, *expected: str) -> str:
    """Exit 2, nothing on stdout, exactly one line on stderr naming the bad value, no traceback."""
    assert result.exit_code == 2, (result.exit_code, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("relu-doctor: error: ")
    assert "Traceback" not in result.stderr
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


def test_sample_scan_exits_0_within_thresholds() -> None:
    result = invoke(*SAMPLE_ARGS)
    assert result.exit_code == 0, result.stderr
    assert "act2" in result.stdout and "78 (60.9%)" in result.stdout


@pytest.mark.parametrize(
    ("option", "limit", "code"),
    [
        # act2: 78 of 128 dead -> 0.609 > 0.5
        ("--max-layer-dead-fraction", "0.5", 1),
        ("--max-layer-dead-fraction", "0.61", 0),
        # model: 78 of 256 dead -> 0.3047 > 0.3, <= 0.31
        ("--max-dead-fraction", "0.3", 1),
        ("--max-dead-fraction", "0.31", 0),
    ],
)
def test_gate_exit_codes(option: str, limit: str, code: int) -> None:
    result = invoke(*SAMPLE_ARGS, option, limit, "--format", "json")
    assert result.exit_code == code, result.stderr
    data = json.loads(result.stdout)
    assert data["exit_code"] == code and data["passed"] is (code == 0)


def test_json_stdout_is_json_and_nothing_else() -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "relu_doctor", *SAMPLE_ARGS, "--format", "json", "--max-layer-dead-fraction", "0.5"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert completed.returncode == 1, completed.stderr
    data = json.loads(completed.stdout)  # fails on any stray byte around the document
    assert data["summary"]["dead"] == 78
    # the verdict, then each violation (the JSON holds them too; stderr names them for the log)
    assert completed.stderr.splitlines() == [
        "78 of 256 units dead (30.5%) across 2 sites, 12 dying, 0 NaN/Inf; 512 file probe samples; gate FAILED",
        "✗ site act2: 78 of 128 units dead (60.9%) > max-layer-dead-fraction 0.5",
    ]


def test_json_has_the_documented_schema() -> None:
    data = json.loads(invoke(*SAMPLE_ARGS, "--format", "json").stdout)
    assert data.keys() >= REQUIRED_KEYS
    assert isinstance(data["schema_version"], int)
    assert {"path", "format", "sha256"} <= data["model"].keys() and data["model"]["format"] == "safetensors"
    assert data["probe"]["source"] == "file" and data["probe"]["samples"] == 512
    assert {"sites", "units", "dead", "dead_fraction", "dying"} <= data["summary"].keys()
    assert [s["name"] for s in data["sites"]] == ["act1", "act2"]
    for site in data["sites"]:
        assert site.keys() >= REQUIRED_SITE_KEYS
        assert {"min", "median", "mean"} <= site["firing_rate"].keys()
        assert site["dead"] == len(site["dead_units"])
    assert data["summary"]["dead"] == sum(s["dead"] for s in data["sites"])


def test_default_samples_do_not_truncate_a_probe_file(tmp_path: Path) -> None:
    # --samples sizes the synthetic probe; with --probe it limits only when given. The probe is larger than
    # the default, so a default that leaked into file probes would show.
    from relu_doctor.settings import DEFAULT_SAMPLES

    rows = np.load(SAMPLES / "digits_probe.npy")
    big = np.concatenate([rows] * (DEFAULT_SAMPLES // len(rows) + 2))  # 3 x 512 = 1536 rows > 512
    np.save(tmp_path / "big.npy", big)
    args = ["scan", DYING, "--arch", ARCH, "--probe", str(tmp_path / "big.npy"), "--no-simulate"]
    assert json.loads(invoke(*args, "--format", "json").stdout)["probe"]["samples"] == len(big)
    limited = json.loads(invoke(*args, "--samples", "100", "--format", "json").stdout)
    assert limited["probe"]["samples"] == 100


def test_markdown_output() -> None:
    result = invoke(*SAMPLE_ARGS, "--format", "markdown")
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    rows = [line for line in lines if line.startswith("| ") and "`act" in line]
    assert len(rows) == 2 and "`act1`" in rows[0] and "`act2`" in rows[1]
    assert "| 78 (60.9%) |" in rows[1] and "| 0 (0.0%) |" in rows[0]
    assert "78 of 256 units dead" in result.stdout


def test_output_file_leaves_stdout_empty(tmp_path: Path) -> None:
    target = tmp_path / "report.json"
    result = invoke(*SAMPLE_ARGS, "--format", "json", "--output", str(target))
    assert result.exit_code == 0 and result.stdout == ""
    assert json.loads(target.read_text())["summary"]["dead"] == 78


def test_input_files_are_not_modified() -> None:
    before = {p: p.read_bytes() for p in (Path(DYING), Path(PROBE))}
    invoke(*SAMPLE_ARGS)
    assert {p: p.read_bytes() for p in before} == before


# -- every bad input: exit 2, one line on stderr naming the bad value ---------------------------------------


def test_missing_model_file(tmp_path: Path) -> None:
    assert_one_line_error(invoke("scan", str(tmp_path / "nope.pt")), "nope.pt")


def test_unsupported_model_file(tmp_path: Path) -> None:
    text = tmp_path / "notes.pt"
    text.write_text("just some text, not a checkpoint\n")
    assert_one_line_error(invoke("scan", str(text), "--arch", ARCH), "notes.pt")


def test_state_dict_without_arch() -> None:
    assert_one_line_error(invoke("scan", DYING, "--probe", PROBE), "--arch")


def test_arch_mismatch(tmp_path: Path) -> None:
    (tmp_path / "wrong.py").write_text(WRONG_ARCH)
    line = assert_one_line_error(invoke("scan", DYING, "--arch", f"{tmp_path / 'wrong.py'}:build", "--probe", PROBE))
    assert "wrong.py:build" in line and "fc1" in line


def test_probe_shape_mismatch(tmp_path: Path) -> None:
    probe = tmp_path / "small.npy"
    np.save(probe, np.zeros((4, 32), dtype=np.float32))
    assert_one_line_error(invoke("scan", DYING, "--arch", ARCH, "--probe", str(probe)), "(4, 32)", "takes 64 features")


def test_forward_failure(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    (tmp_path / "fails.py").write_text(FORWARD_FAILS)
    weights = tmp_path / "fails.safetensors"
    save_file({"fc.weight": torch.zeros(8, 64), "fc.bias": torch.zeros(8)}, str(weights))
    line = assert_one_line_error(
        invoke("scan", str(weights), "--arch", f"{tmp_path / 'fails.py'}:build", "--probe", PROBE)
    )
    assert "forward pass failed" in line


@pytest.mark.parametrize(
    ("options", "named"),
    [
        (["--input-shape", "3xfoo"], "'3xfoo'"),
        (["--input-shape", "0x4"], "'0x4'"),
        (["--arch-kwargs", '{"width": }'], '{"width": }'),
        (["--arch-kwargs", "[1, 2]"], "[1, 2]"),
        (["--unit-dim", "5", "--probe", PROBE], "--unit-dim 5"),
        (["--unit-dim", "0", "--probe", PROBE], "--unit-dim 0"),
        (["--batch-size", "0", "--probe", PROBE], "--batch-size must be at least 1, got 0"),
        (["--max-dead-fraction", "1.5"], "--max-dead-fraction must be between 0 and 1, got 1.5"),
        (["--max-layer-dead-fraction", "-0.1"], "--max-layer-dead-fraction must be between 0 and 1, got -0.1"),
        (["--dying-rate", "2"], "--dying-rate must be between 0 and 1, got 2"),
    ],
    ids=[
        "input-shape-text",
        "input-shape-zero",
        "arch-kwargs-json",
        "arch-kwargs-not-object",
        "unit-dim-too-big",
        "unit-dim-batch-axis",
        "batch-size-0",
        "max-dead-fraction",
        "max-layer-dead-fraction",
        "dying-rate",
    ],
)
def test_bad_option_values(options: list[str], named: str) -> None:
    assert_one_line_error(invoke("scan", DYING, "--arch", ARCH, *options), named)


def test_debug_shows_the_traceback_still_exit_2(tmp_path: Path) -> None:
    result = invoke("scan", DYING, "--probe", PROBE, "--debug")
    assert result.exit_code == 2 and "Traceback" in result.stderr
