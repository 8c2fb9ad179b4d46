"""The layers of docs/ARCHITECTURE.md hold: import-linter's contracts (.importlinter) pass on the package, and
they fail when a module imports a layer above its own (so a back-edge fails CI, not a review)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("importlinter", reason="import-linter is in the dev extra")

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / ".importlinter"
_RUN = (
    "import sys; from importlinter.cli import lint_imports; "
    "sys.exit(lint_imports(config_filename=sys.argv[1], no_cache=True, no_logo=True))"
)


def lint(root: Path) -> subprocess.CompletedProcess[str]:
    """import-linter on the package under ``root`` (a fresh process, so it sees that copy of relu_doctor)."""
    return subprocess.run(
        [sys.executable, "-c", _RUN, str(root / ".importlinter")],
        cwd=root,
        env={"PYTHONPATH": str(root), "PATH": "", "NO_COLOR": "1", "COLUMNS": "400"},
        capture_output=True,
        text=True,
        timeout=120,
    )


def copy_package(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "relu_doctor", tmp_path / "relu_doctor", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(CONFIG, tmp_path / ".importlinter")
    return tmp_path


def test_the_package_keeps_every_contract() -> None:
    result = lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "back_edge", "contract"),
    [
        ("engine/counters.py", "from .. import api", "Layers"),  # the engine reaching up to the scan stage
        ("analysis/gate.py", "from .. import whatif", "Layers"),  # analysis calling the simulations
        ("render/table.py", "import torch", "Renderers never import torch"),
        ("workflow/scan.py", "import typer", "Only the CLI imports typer"),
        ("cli/scan.py", "from ..render.table import render_table", "Commands pick an output format by name"),
        ("workflow/stats_io.py", "from ..engine.observe import ObservedSite", "Stats files hold the report's"),
    ],
)
def test_a_back_edge_breaks_a_contract(tmp_path: Path, module: str, back_edge: str, contract: str) -> None:
    root = copy_package(tmp_path)
    target = root / "relu_doctor" / module
    target.write_text(target.read_text() + f"\n{back_edge}  # noqa\n")
    result = lint(root)
    assert result.returncode == 1, result.stdout + result.stderr
    broken = [line for line in result.stdout.splitlines() if " BROKEN" in line]
    assert any(line.startswith(contract) for line in broken), result.stdout


def test_the_test_models_and_the_benchmark_models_import_side_by_side(monkeypatch: pytest.MonkeyPatch) -> None:
    # tests/models.py and bench/models.py once shared the module name `models`: one process could not use both
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    monkeypatch.syspath_prepend(str(ROOT / "tests"))
    import bench_models
    import models

    assert Path(models.__file__).parent.name == "tests" and Path(bench_models.__file__).parent.name == "bench"
    assert models.ReusedReluBlock and bench_models.ResNet18Like


def test_no_blanket_format_skips_and_every_format_pause_says_why() -> None:
    # ruff format --check passes on a skipped line, so only this keeps formatting honest: a table that reads
    # better unformatted sits in a `# fmt: off` / `# fmt: on` block under a comment saying why
    skip, pause = "# fmt" + ": skip", "# fmt" + ": off"
    offenders, unexplained = [], []
    for folder in ("relu_doctor", "tests", "bench", "samples"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            lines = path.read_text(encoding="utf-8").splitlines()
            offenders += [f"{path.relative_to(ROOT)}:{n + 1}" for n, line in enumerate(lines) if skip in line]
            unexplained += [
                f"{path.relative_to(ROOT)}:{n + 1}"
                for n, line in enumerate(lines)
                if line.strip() == pause and (n == 0 or not lines[n - 1].strip().startswith("#"))
            ]
    assert not offenders, f"blanket format skips (let ruff format the code): {offenders}"
    assert not unexplained, f"a format pause without a comment above it saying why: {unexplained}"
