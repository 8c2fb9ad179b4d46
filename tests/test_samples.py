"""The committed samples: relu-doctor's counts equal an independent brute force in float64 numpy.

The dying model was killed by training (Adam, lr 3e-2), not planted: 78 of act2's 128 units never fire on
the 512-sample probe; act1 has none dead (samples/README.md).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import load_file

from relu_doctor.report import Report

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
PROBE = SAMPLES / "digits_probe.npy"


def _build_mlp() -> Any:
    spec = importlib.util.spec_from_file_location("digits_mlp_for_tests", SAMPLES / "digits_mlp.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build_mlp()


def brute_force_dead(weights_file: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Dead units of act1 and act2, by applying each Linear by hand in float64 over the whole probe."""
    weights = {k: v.astype(np.float64) for k, v in load_file(str(SAMPLES / weights_file)).items()}
    x = np.load(PROBE).astype(np.float64)
    pre1 = x @ weights["fc1.weight"].T + weights["fc1.bias"]
    pre2 = np.maximum(pre1, 0) @ weights["fc2.weight"].T + weights["fc2.bias"]
    return tuple(np.flatnonzero(~(pre1 > 0).any(0)).tolist()), tuple(np.flatnonzero(~(pre2 > 0).any(0)).tolist())


@pytest.fixture(scope="module")
def dying_report() -> Report:
    import torch
    from safetensors.torch import load_file as load_torch

    from relu_doctor import scan

    model = _build_mlp()
    model.load_state_dict(load_torch(str(SAMPLES / "dying_mlp.safetensors")))
    probe = torch.from_numpy(np.load(PROBE))
    return scan(model, list(probe.split(100)))


def test_dying_sample_matches_brute_force(dying_report: Report) -> None:
    dead1, dead2 = brute_force_dead("dying_mlp.safetensors")
    act1, act2 = dying_report.sites
    assert (act1.name, act2.name) == ("act1", "act2")
    assert act1.dead_units == dead1 == ()
    assert act2.dead_units == dead2
    assert len(dead2) == 78 and act2.units == 128  # 78 of 128 -> 60.9%
    assert dying_report.summary.dead == 78 and dying_report.summary.units == 256  # 78 / 256 -> 30.5%
    assert dying_report.probe.samples == 512


def test_healthy_sample_matches_brute_force() -> None:
    import torch
    from safetensors.torch import load_file as load_torch

    from relu_doctor import scan

    model = _build_mlp()
    model.load_state_dict(load_torch(str(SAMPLES / "healthy_mlp.safetensors")))
    report = scan(model, [torch.from_numpy(np.load(PROBE))])
    dead1, dead2 = brute_force_dead("healthy_mlp.safetensors")
    assert [s.dead_units for s in report.sites] == [dead1, dead2]
    assert report.summary.dead == len(dead1) + len(dead2)


def test_loader_and_pipeline_give_the_same_answer(dying_report: Report) -> None:
    pytest.importorskip("relu_doctor.loading", reason="the checkpoint loader is not importable yet")
    from relu_doctor.workflow.scan import ScanRequest, run_scan

    request = ScanRequest(
        str(SAMPLES / "dying_mlp.safetensors"), arch=f"{SAMPLES / 'digits_mlp.py'}:build_mlp", probe_path=str(PROBE)
    )
    report = run_scan(request)
    assert [s.dead_units for s in report.sites] == [s.dead_units for s in dying_report.sites]
    assert [s.counters.positive for s in report.sites] == [s.counters.positive for s in dying_report.sites]
    assert report.model.format == "safetensors" and report.model.sha256 is not None


def test_cli_table_for_the_sample(table_rows: Callable[[str], list[dict[str, str]]]) -> None:
    pytest.importorskip("relu_doctor.loading", reason="the checkpoint loader is not importable yet")
    from typer.testing import CliRunner

    from relu_doctor.cli import app

    args = ["scan", str(SAMPLES / "dying_mlp.safetensors"), "--arch", f"{SAMPLES / 'digits_mlp.py'}:build_mlp"]
    result = CliRunner().invoke(app, [*args, "--probe", str(PROBE)], env={"COLUMNS": "100"})
    assert result.exit_code == 0, result.stderr
    rows = {row["site"]: row["dead"].split()[0] for row in table_rows(result.stdout)}
    dead1, dead2 = brute_force_dead("dying_mlp.safetensors")
    assert rows == {"act1": str(len(dead1)), "act2": str(len(dead2))} == {"act1": "0", "act2": "78"}
    assert "78 of 256 units dead (30.5%)" in result.stdout
