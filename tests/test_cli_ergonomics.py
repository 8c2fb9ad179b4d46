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


# -- terminal output ----------------------------------------------------------------------------------------------
ANSI = "\x1b["


def test_the_table_fits_80_columns_and_keeps_the_verdict() -> None:
    result = scan_sample(env={"COLUMNS": "80"})
    lines = result.stdout.splitlines()
    assert max(map(len, lines)) <= 80
    header = next(line for line in lines if line.startswith("┃"))
    assert "status" in header and "dead" in header and "site" in header
    assert "(60.9%)" in result.stdout  # the dead cell is never wrapped into "(60.9…"
    assert "┃ site ┃" in header  # short names are not padded to 12 characters


def test_a_pipe_gets_no_hard_wrap_no_trailing_spaces_and_one_summary_line() -> None:
    result = scan_sample()
    lines = result.stdout.splitlines()
    assert all(line == line.rstrip() for line in lines)
    (summary,) = [line for line in lines if "gate passed" in line]
    assert summary.startswith("78 of 256 units dead (30.5%) across 2 sites")
    assert any(len(line) > 100 for line in lines)  # long findings stay one line each


@pytest.mark.parametrize(
    ("args", "env", "coloured"),
    [
        (("--color", "never"), {"FORCE_COLOR": "1"}, False),
        (("--no-color",), {"FORCE_COLOR": "1"}, False),
        (("--color", "always"), {}, True),
        (("--color", "always"), {"NO_COLOR": "1"}, True),  # an explicit flag beats the environment
        ((), {}, False),  # auto: not a terminal
    ],
)
def test_color_auto_always_never(args: tuple[str, ...], env: dict[str, str], coloured: bool) -> None:
    result = scan_sample(*args, env=env)
    assert (ANSI in result.stdout) is coloured
    if not coloured:
        assert ANSI not in result.stderr


def test_strict_lists_each_warning_once_and_counts_read_as_english() -> None:
    result = invoke("scan", DYING, "--arch", ARCH, "--no-simulate", "--strict", "--samples", "64")
    assert result.exit_code == 1
    strict = [line for line in result.stdout.splitlines() if "strict:" in line]
    assert strict
    for line in strict:
        warning = line.split("strict: ", 1)[1]
        assert result.stdout.count(warning) == 1, warning


def test_version_has_a_short_flag() -> None:
    assert invoke("-V").stdout.startswith("relu-doctor ")
