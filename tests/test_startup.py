"""Startup: --help and --version never import torch; `python -m relu_doctor --version` works."""

from __future__ import annotations

import subprocess
import sys

import pytest

from relu_doctor import __version__

# Runs the real console entry point in a fresh interpreter, then reports whether torch got imported.
ENTRY = """
import sys
sys.argv = ["relu-doctor", *sys.argv[1:]]
from relu_doctor.cli import main
try:
    main()
except SystemExit as exit:
    code = exit.code
else:
    code = 0
sys.stderr.write(f"\\nEXIT={code} TORCH_IMPORTED={'torch' in sys.modules}\\n")
"""


def _run_entry(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", ENTRY, *args], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(
    "args", [("--help",), ("--version",), ("scan", "--help")], ids=["help", "version", "scan-help"]
)
def test_help_and_version_do_not_import_torch(args: tuple[str, ...]) -> None:
    completed = _run_entry(*args)
    assert "EXIT=0 TORCH_IMPORTED=False" in completed.stderr, completed.stderr


def test_the_probe_above_can_see_torch() -> None:
    # guards the test above: a command that scans does import torch, and the check notices
    completed = _run_entry("scan", "does-not-exist.pt")
    assert "EXIT=2 TORCH_IMPORTED=True" in completed.stderr, completed.stderr


def test_python_dash_m_version() -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "relu_doctor", "--version"], capture_output=True, text=True, timeout=60
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == f"relu-doctor {__version__}"
