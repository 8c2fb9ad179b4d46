"""A code-carrying checkpoint is loaded only after an explicit yes at a terminal, or with --trust."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from relu_doctor.cli import app
from relu_doctor.cli import scan as scan_command

runner = CliRunner()


@pytest.fixture()
def pickled_module(tmp_path: Path) -> Path:
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    with torch.no_grad():
        model[0].bias[:2] = -100.0  # 2 of 6 units dead
    path = tmp_path / "model.pt"
    torch.save(model, path)
    return path


def _scan(path: Path, answer: str | None = None, *extra: str) -> object:
    return runner.invoke(app, ["scan", str(path), "--samples", "64", "-f", "json", *extra], input=answer)


def test_without_a_terminal_the_file_is_refused_without_asking(pickled_module: Path) -> None:
    result = _scan(pickled_module, "y\n")
    assert result.exit_code == 2
    assert "--trust" in result.output and "Load this" not in result.output


def test_a_yes_at_the_terminal_loads_it(pickled_module: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scan_command, "can_ask", lambda: True)
    result = _scan(pickled_module, "y\n")
    assert result.exit_code == 0, result.output
    assert "Load this pickled-module file" in result.output and '"dead": 2' in result.output


def test_a_no_at_the_terminal_refuses_it(pickled_module: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scan_command, "can_ask", lambda: True)
    result = _scan(pickled_module, "n\n")
    assert result.exit_code == 2 and "--trust" in result.output


def test_trust_on_the_command_line_needs_no_answer(pickled_module: Path) -> None:
    result = _scan(pickled_module, None, "--trust")
    assert result.exit_code == 0 and '"dead": 2' in result.output
