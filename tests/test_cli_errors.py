"""The console script turns click's usage errors into one line on stderr and exit 2, like every other error."""

from __future__ import annotations

import subprocess
import sys

import pytest


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "relu_doctor", *args], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (("scan", "--format", "xml", "model.pt"), "--format"),
        (("scan", "--batch-size", "many", "model.pt"), "--batch-size"),
        (("scan", "--no-such-option", "model.pt"), "--no-such-option"),
        (("scan",), "model"),
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
