"""The README documents every command, option, format, finding code and JSON key (a docs-drift check)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from typer.main import get_command

from relu_doctor import scan
from relu_doctor.cli import app
from relu_doctor.codes import describe_codes
from relu_doctor.render import FIX_FORMATS, REPORT_FORMATS, TREND_FORMATS
from relu_doctor.render.json_format import report_dict

ROOT = Path(__file__).resolve().parents[1]
README = "\n".join(
    path.read_text(encoding="utf-8") for path in (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")))
)
"""The README and the reference it links to in docs/: every option, format, code and key documented somewhere."""
COMMANDS = get_command(app).commands  # type: ignore[attr-defined]


def test_every_command_has_help_and_a_readme_section() -> None:
    assert set(COMMANDS) >= {"scan", "fix", "trend", "merge"}
    for name, command in COMMANDS.items():
        assert command.help, f"{name} has no help text"
        assert f"relu-doctor {name}" in README, f"README has no section for {name}"


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_option_is_in_the_readme(name: str) -> None:
    for param in COMMANDS[name].params:
        longs = [o for o in param.opts if o.startswith("--")]
        if longs:
            assert any(f"`{o}" in README for o in longs), f"{name} {longs} is not documented"
        assert param.help or not longs or longs == ["--help"], f"{name} {longs} has no help text"


def test_every_format_and_finding_code_is_in_the_readme() -> None:
    for formats in (REPORT_FORMATS, TREND_FORMATS, FIX_FORMATS):
        for fmt in formats.names():
            assert f"`{fmt}`" in README, fmt
    codes = list(describe_codes())
    assert codes and all(f"| {code} |" in README for code in codes), [c for c in codes if f"| {c} |" not in README]


def test_every_json_key_is_in_the_readme() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU())
    data = report_dict(scan(model, [torch.randn(8, 3)]))
    documented = set(re.findall(r"`([a-z0-9_]+)`", README))
    missing = [k for k in data if k not in documented] + [k for k in data["sites"][0] if k not in documented]
    assert not missing, f"JSON keys missing from the README: {missing}"


def test_the_quick_start_prints_what_the_readme_shows() -> None:
    """The README's quick-start scan of the bundled sample, run as written: its output block is the real one."""
    from typer.testing import CliRunner

    start = README.index("The scan prints:\n\n```\n") + len("The scan prints:\n\n```\n")
    shown = README[start : README.index("```", start)]
    command = next(line for line in README.splitlines() if line.startswith("pip install -e . && relu-doctor scan"))
    args = command.split("relu-doctor ", 1)[1].split()
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.stderr
    assert result.stdout == shown
