"""`relu-doctor scan --certify`: JSON keys, the text section, --gate-on certified, and bad --domain values."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner, Result

from relu_doctor.cli import app

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "samples"
BASE = [
    "scan",
    str(SAMPLES / "dying_mlp.safetensors"),
    "--arch",
    f"{SAMPLES / 'digits_mlp.py'}:build_mlp",
    "--no-simulate",
]
PROBE = ["--probe", str(SAMPLES / "digits_probe.npy")]


def invoke(*args: str) -> Result:
    return CliRunner().invoke(app, [*BASE, *args])


def test_json_has_the_certification_of_every_site():
    result = invoke(*PROBE, "--certify", "-f", "json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    cert = data["certification"]
    assert cert["domain"] == "probe" and cert["methods"] == ["interval", "linear"]
    assert cert["input_shape"] == [64] and set(cert["seconds"]) == {"forward", "interval", "linear"}
    total = 0
    for site in data["sites"]:
        proved = site["certification"]
        assert set(proved["certified_dead"]) <= set(site["dead_units"])
        unproved = {entry["unit"] for entry in proved["dead_not_certified"]}
        assert unproved == set(site["dead_units"]) - set(proved["certified_dead"])
        assert sorted(u for units in proved["certified_dead_by"].values() for u in units) == sorted(
            proved["certified_dead"]
        )
        assert set(proved["upper_bound"]) == {"min", "median", "max"}
        total += len(proved["certified_dead"])
    assert total == cert["certified_dead"]


def test_json_without_certify_has_no_certification_keys():
    data = json.loads(invoke(*PROBE, "-f", "json").stdout)
    assert "certification" not in data and all("certification" not in s for s in data["sites"])


def test_table_names_the_domain_and_the_unproved_dead_units():
    result = invoke(*PROBE, "--certify", "--domain", "probe:0.5")
    assert result.exit_code == 0, result.stderr
    assert "certified on probe:0.5" in result.stdout and "dead on the probe, not proved" in result.stdout


def test_gate_on_certified_counts_only_proofs():
    # 78 of 128 act2 units are dead on the probe; far fewer are proved dead on its box.
    on_probe = invoke(*PROBE, "--max-layer-dead-fraction", "0.2")
    certified = invoke(*PROBE, "--max-layer-dead-fraction", "0.2", "--gate-on", "certified", "-f", "json")
    assert on_probe.exit_code == 1
    assert certified.exit_code == 0, certified.stderr
    assert json.loads(certified.stdout)["thresholds"]["max_layer_dead_fraction"] == 0.2


def test_data_free_certification_on_a_box(tmp_path):
    np.save(tmp_path / "box.npy", np.stack([np.full(64, -1.0), np.full(64, 1.0)]))
    for domain in ("box:-1,1", str(tmp_path / "box.npy")):
        result = invoke("--certify", "--domain", domain, "-f", "json")
        assert result.exit_code == 0, result.stderr
        assert json.loads(result.stdout)["certification"]["domain"] == domain


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--certify", "--domain", "box:0"], "two numbers"),
        (["--certify", "--domain", "cube"], "--domain must be one of"),
        (["--certify"], "needs --domain"),
        (["--gate-on", "sometimes"], "--gate-on must be one of"),
        (["--certify", "--domain", "box:0,1,2,3"], "two numbers"),
        (["--certify", "--domain", "file:missing.npy"], "is not a file"),
        (["--certify", "--domain", "box:0,1", "--input-shape", "3"], "forward pass failed"),
    ],
)
def test_bad_certify_options_are_one_line_and_exit_2(args, message):
    result = invoke(*args)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.stderr


def test_markdown_has_a_certified_section():
    result = invoke(*PROBE, "--certify", "-f", "markdown")
    assert result.exit_code == 0, result.stderr
    assert "**Certified**" in result.stdout and "certified on probe" in result.stdout
