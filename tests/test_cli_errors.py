"""The console script turns click's usage errors into one line on stderr and exit 2, like every other error."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "relu_doctor", *args], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (("scan", "--format", "xml", "model.pt"), "--format"),
        (("scan", "--batch-size", "many", "model.pt"), "--batch-size"),
        (("scan", "--no-such-option", "model.pt"), "--no-such-option"),
        (("scan",), "MODEL"),
        (("frobnicate",), "frobnicate"),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(args: tuple[str, ...], named: str) -> None:
    result = _run(*args)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("relu-doctor: error: ") and named in lines[0] and "--help" in lines[0]
    assert "Traceback" not in result.stderr and "╭" not in result.stderr


def test_text_probe_options_are_checked_even_without_a_text_probe() -> None:
    # --max-length and --probe-mask only matter for token probes; a bad value must still be one line and exit 2.
    # (The library's own refusal, not click's: the in-process CLI shows it as the console script does.)
    from typer.testing import CliRunner

    from relu_doctor.cli import app

    samples = Path(__file__).resolve().parent.parent / "samples"
    model, arch = str(samples / "dying_mlp.safetensors"), f"{samples / 'digits_mlp.py'}:build_mlp"
    for extra, words in ((["--max-length", "0"], "--max-length"), (["--probe-mask", "mask.npy"], "--probe-mask")):
        result = CliRunner().invoke(app, ["scan", model, "--arch", arch, *extra])
        assert result.exit_code == 2, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and words in result.stderr
