"""Streams and colour: only the report on stdout, chatter on stderr, colour where it belongs (NO_COLOR,
FORCE_COLOR, --no-color), COLUMNS, --quiet, --output (atomic), --exit-zero and --strict."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from relu_doctor.cli import app
from relu_doctor.cli.app import output_style

SAMPLES = Path(__file__).resolve().parent.parent / "samples"
SCAN = [
    "scan",
    str(SAMPLES / "dying_mlp.safetensors"),
    "--arch",
    str(SAMPLES / "digits_mlp.py") + ":build_mlp",
    "--probe",
    str(SAMPLES / "digits_probe.npy"),
    "--no-simulate",
]  # (simulated fixes are not what this tests)
FAILING = ["--max-layer-dead-fraction", "0.5"]  # act2 has 78 of 128 dead (60.9%)
ANSI = "\x1b["


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No colour variables, no RELU_DOCTOR_* and no pyproject.toml above the working directory."""
    for name in [n for n in os.environ if n.startswith("RELU_DOCTOR_") or n in ("NO_COLOR", "FORCE_COLOR", "COLUMNS")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def run(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(app, [*SCAN, *args], env=env)


# -- the pure decision --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("environ", "flag", "tty", "to_file", "color"),
    [
        ({}, False, True, False, True),  # a terminal gets colour
        ({}, False, False, False, False),  # a pipe does not
        ({"FORCE_COLOR": "1"}, False, False, False, True),  # unless forced
        ({"NO_COLOR": "1", "FORCE_COLOR": "1"}, False, True, False, False),  # NO_COLOR wins
        ({"NO_COLOR": ""}, False, True, False, True),  # an empty NO_COLOR is unset (no-color.org)
        ({}, True, True, False, False),  # --no-color
        ({"FORCE_COLOR": "1"}, False, True, True, False),  # never into a file
    ],
)
def test_colour_decision(environ: dict[str, str], flag: bool, tty: bool, to_file: bool, color: bool) -> None:
    style = output_style(
        quiet=False, verbose=False, no_color=flag, to_file=to_file, environ=environ, stdout_tty=tty, stderr_tty=tty
    )
    assert style.color is color


def test_width_and_progress_decision() -> None:
    def style(environ: dict[str, str], stderr_tty: bool = False, quiet: bool = False):
        return output_style(
            quiet=quiet,
            verbose=False,
            no_color=False,
            to_file=False,
            environ=environ,
            stdout_tty=False,
            stderr_tty=stderr_tty,
        )

    assert style({"COLUMNS": "72"}).width == 72
    assert style({"COLUMNS": "wide"}).width is None  # unreadable COLUMNS falls back (a pipe: no wrap), never crashes
    assert style({}).width is None  # a pipe or a file: no hard wrap (issue 15)
    assert style({}, stderr_tty=True).progress and not style({}).progress and not style({}, True, quiet=True).progress


# -- through the CLI ----------------------------------------------------------------------------------------------
def test_json_stdout_is_only_the_report_and_stderr_one_summary_line() -> None:
    result = run("-f", "json")
    assert result.exit_code == 0
    assert json.loads(result.stdout)["summary"]["dead"] == 78
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]  # no progress bar in a non-terminal
    assert "78 of 256 units dead" in result.stderr


def test_table_colour_follows_force_color_no_color_and_the_flag() -> None:
    assert ANSI not in run().stdout  # not a terminal
    assert ANSI in run(env={"FORCE_COLOR": "1"}).stdout
    assert ANSI not in run(env={"FORCE_COLOR": "1", "NO_COLOR": "1"}).stdout
    assert ANSI not in run("--no-color", env={"FORCE_COLOR": "1"}).stdout


def test_columns_sets_the_table_width() -> None:
    narrow = run(env={"COLUMNS": "70"}).stdout.splitlines()
    wide = run(env={"COLUMNS": "140"}).stdout.splitlines()
    assert max(map(len, narrow)) <= 70 < max(map(len, wide)) <= 140


def test_quiet_prints_nothing_and_keeps_the_exit_code() -> None:
    result = run("-q", *FAILING)
    assert (result.exit_code, result.stdout, result.stderr) == (1, "", "")


def test_output_writes_the_file_atomically_and_leaves_stdout_empty(tmp_path: Path) -> None:
    target = tmp_path / "report.json"
    target.write_text("old")
    assert run("-f", "json", "-o", str(target)).exit_code == 2  # an existing file is replaced only with --force
    assert target.read_text() == "old"
    result = run("-f", "json", "-o", str(target), "--force")
    assert result.exit_code == 0 and result.stdout == ""
    assert json.loads(target.read_text())["summary"]["dead"] == 78
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]  # no temporary file left behind
    assert run("-f", "json", "-q", "-o", str(target), "--force", *FAILING).exit_code == 1  # quiet still writes
    assert json.loads(target.read_text())["passed"] is False


def test_output_into_a_missing_folder_is_one_line_exit_2(tmp_path: Path) -> None:
    result = run("-o", str(tmp_path / "missing" / "r.txt"))
    assert result.exit_code == 2 and result.stdout == ""
    assert "missing" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_exit_zero_reports_the_failure_but_exits_0() -> None:
    result = run("-f", "json", "--exit-zero", *FAILING)
    assert result.exit_code == 0
    assert json.loads(result.stdout)["passed"] is False


def test_exit_zero_does_not_hide_errors() -> None:
    result = CliRunner().invoke(app, ["scan", "no-such-file.safetensors", "--exit-zero"])
    assert result.exit_code == 2


def test_strict_turns_warnings_into_failures() -> None:
    synthetic = [
        "scan",
        str(SAMPLES / "healthy_mlp.safetensors"),
        "--arch",
        str(SAMPLES / "digits_mlp.py") + ":build_mlp",
        "--samples",
        "64",
        "-f",
        "json",
        "--no-simulate",
    ]
    relaxed = CliRunner().invoke(app, synthetic)
    assert relaxed.exit_code == 0 and any("synthetic probe" in w for w in json.loads(relaxed.stdout)["warnings"])
    strict = CliRunner().invoke(app, [*synthetic, "--strict"])
    assert strict.exit_code == 1
    assert any(v.startswith("strict: synthetic probe") for v in json.loads(strict.stdout)["violations"])
    assert CliRunner().invoke(app, [*synthetic, "--strict", "--exit-zero"]).exit_code == 0


@pytest.mark.parametrize("fmt", ["csv", "github", "sarif", "junit", "markdown"])
def test_every_format_runs_end_to_end(fmt: str) -> None:
    result = run("-f", fmt, *FAILING)
    assert result.exit_code == 1 and "act2" in result.stdout
