"""A config file or environment variable can never make relu-doctor run a command (arch + arch_kwargs)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _hostile import ARCH, assert_refused
from _loading_helpers import reference_model
from typer.testing import CliRunner

from relu_doctor.cli import app


def _payload(marker: Path) -> str:
    return f'arch = "os:system"\narch_kwargs = {{ command = "touch {marker}" }}\n'


@pytest.fixture
def layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """shared/ (hostile pyproject two folders up) > repo/ (.git) > work/ (the cwd, holding the model)."""
    marker = tmp_path / "PWNED"
    (tmp_path / "pyproject.toml").write_text("[tool.relu-doctor]\n" + _payload(marker))
    work = tmp_path / "repo" / "work"
    work.mkdir(parents=True)
    torch.save(reference_model().state_dict(), work / "model.pt")
    monkeypatch.chdir(work)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return work, marker


def _scan(*extra: str, env: dict[str, str] | None = None) -> object:
    return CliRunner().invoke(app, ["scan", "model.pt", "--no-simulate", *extra], env=env)


def test_a_config_above_the_repository_root_is_never_read(layout: tuple[Path, Path]) -> None:
    work, marker = layout
    (work.parent / ".git").mkdir()
    result = _scan("--arch", ARCH)
    assert result.exit_code in (0, 1), result.stderr  # type: ignore[attr-defined]
    assert not marker.exists()


def test_outside_a_repository_a_config_cannot_name_a_builtin_callable(layout: tuple[Path, Path]) -> None:
    _, marker = layout
    line = assert_refused(_outcome(_scan()), "os:system", "standard-library")
    assert "pyproject.toml" in line
    assert not marker.exists()


@pytest.mark.parametrize(
    ("variable", "value"), [("RELU_DOCTOR_ARCH", "os:system"), ("RELU_DOCTOR_ARCH_KWARGS", '{"command": "true"}')]
)
def test_code_naming_settings_never_come_from_the_environment(
    layout: tuple[Path, Path], variable: str, value: str
) -> None:
    work, marker = layout
    (work.parent / ".git").mkdir()
    assert_refused(_outcome(_scan("--arch", ARCH, env={variable: value})), variable, "environment")
    assert not marker.exists()


def test_trend_is_held_to_the_same_rule(layout: tuple[Path, Path]) -> None:
    work, marker = layout
    (work.parent / ".git").mkdir()
    result = CliRunner().invoke(app, ["trend", "model.pt", "model.pt"], env={"RELU_DOCTOR_ARCH": "os:system"})
    assert_refused(_outcome(result), "RELU_DOCTOR_ARCH")
    assert not marker.exists()


def test_an_explicit_config_cannot_name_a_builtin_callable_either(layout: tuple[Path, Path]) -> None:
    work, marker = layout
    (work / "ci.toml").write_text(_payload(marker))
    assert_refused(_outcome(_scan("--config", "ci.toml")), "os:system")
    assert not marker.exists()


def test_a_config_may_name_its_own_project_file_but_not_one_outside(layout: tuple[Path, Path]) -> None:
    work, marker = layout
    (work.parent / ".git").mkdir()
    helpers = Path(__file__).resolve().parent.parent / "_loading_helpers.py"
    (work / "model_def.py").write_text(helpers.read_text())
    (work / "pyproject.toml").write_text('[tool.relu-doctor]\narch = "model_def.py:build_model"\n')
    assert _scan().exit_code in (0, 1)  # type: ignore[attr-defined]
    (work / "pyproject.toml").write_text(f'[tool.relu-doctor]\narch = "{helpers}:build_model"\n')
    assert_refused(_outcome(_scan()), "outside the project")


def test_a_broken_pyproject_above_the_repository_does_not_block_runs(layout: tuple[Path, Path]) -> None:
    work, marker = layout
    (work.parent / ".git").mkdir()
    (work.parent.parent / "pyproject.toml").write_text("[tool.relu-doctor\nthis is not toml")
    result = _scan("--arch", ARCH)
    assert result.exit_code in (0, 1), result.stderr  # type: ignore[attr-defined]


def _outcome(result: object):  # type: ignore[no-untyped-def]
    from _hostile import Outcome

    return Outcome(result.exit_code, result.stdout, result.stderr, 0.0)  # type: ignore[attr-defined]
