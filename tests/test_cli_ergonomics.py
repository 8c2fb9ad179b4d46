"""CLI ergonomics users know from ruff, mypy and pytest (issue 15): config layers for every command, unknown
variables warn, --isolated, ignore globs that match nothing, --color, -V, usage errors, torch-free errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from relu_doctor.cli import app

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "samples"
DYING = str(SAMPLES / "dying_mlp.safetensors")
ARCH = f"{SAMPLES / 'digits_mlp.py'}:build_mlp"
PROBE = str(SAMPLES / "digits_probe.npy")


def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(app, list(args), env=env)


def scan_sample(*extra: str, env: dict[str, str] | None = None) -> Result:
    return invoke("scan", DYING, "--arch", ARCH, "--probe", PROBE, "--no-simulate", *extra, env=env)


def test_an_unknown_variable_is_one_warning_with_the_closest_name_not_an_error() -> None:
    result = scan_sample("-f", "json", env={"RELU_DOCTOR_DYING_RTE": "0.5"})
    assert result.exit_code == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "warning" in line]
    assert warnings == [
        "relu-doctor: warning: ignoring unknown environment variable RELU_DOCTOR_DYING_RTE; "
        "did you mean RELU_DOCTOR_DYING_RATE?"
    ]


def test_isolated_ignores_the_environment_and_config_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pyproject.toml").write_text("[tool.relu-doctor]\nmax_dead_fraction = 0.01\n")
    failing = scan_sample("-q")
    assert failing.exit_code == 1  # the file's 1% limit: 78 of 256 units are dead
    assert scan_sample("-q", "--isolated").exit_code == 0
    assert scan_sample("-q", env={"RELU_DOCTOR_MAX_DEAD_FRACTION": "0.01"}).exit_code == 1
    assert scan_sample("-q", "--isolated", env={"RELU_DOCTOR_MAX_DEAD_FRACTION": "0.01"}).exit_code == 0
