"""Help and usage errors as ruff, mypy and pytest users expect (issue 15): conventional metavars, our own words
in every usage error, the --help hint, every missing option at once, and errors that need no torch before torch."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from relu_doctor.cli import app

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "samples"
DYING = str(SAMPLES / "dying_mlp.safetensors")
ARCH = f"{SAMPLES / 'digits_mlp.py'}:build_mlp"
PROBE = str(SAMPLES / "digits_probe.npy")
COMMANDS = get_command(app).commands  # type: ignore[attr-defined]

# The real console entry point in a fresh interpreter; the last stderr line says whether torch was imported.
ENTRY = """
import sys, time
started = time.perf_counter()
sys.argv = ["relu-doctor", *sys.argv[1:]]
from relu_doctor.cli import main
try:
    main()
except SystemExit as exit:
    code = exit.code
else:
    code = 0
import gc
sys.stderr.write(
    f"\\nEXIT={code} TORCH_IMPORTED={'torch' in sys.modules} SECONDS={time.perf_counter() - started:.3f} "
    f"FROZEN={gc.get_freeze_count()} GC={gc.isenabled()}\\n"
)
"""


def entry(*args: str, cwd: Path | None = None) -> tuple[subprocess.CompletedProcess[str], dict[str, str]]:
    """One CLI run through the real console entry point: the process and the fields of its last stderr line."""
    completed = subprocess.run(
        [sys.executable, "-c", ENTRY, *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    return completed, dict(part.split("=") for part in completed.stderr.strip().splitlines()[-1].split())


def run_entry(*args: str, cwd: Path | None = None) -> tuple[str, int, bool, float]:
    """(the error lines, exit code, torch imported, seconds from start to exit) of one CLI run."""
    completed, fields = entry(*args, cwd=cwd)
    *lines, _ = completed.stderr.strip().splitlines()
    return (
        "\n".join(line for line in lines if line),
        int(fields["EXIT"]),
        fields["TORCH_IMPORTED"] == "True",
        float(fields["SECONDS"]),
    )


# -- help ----------------------------------------------------------------------------------------------------------


def help_text(*args: str) -> str:
    result = CliRunner().invoke(app, [*args, "--help"], env={"COLUMNS": "250", "NO_COLOR": "1"})
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize("command", ["", *sorted(COMMANDS)])
def test_help_uses_conventional_metavars(command: str) -> None:
    text = help_text(*([command] if command else []))
    for typer_style in ("<bool>", "<str>", "<int>", "<float>", "<path>", "<list[", "{"):
        assert typer_style not in text, f"{command}: {typer_style} in --help"


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_flags_have_no_metavar_and_values_have_one(command: str) -> None:
    context = COMMANDS[command].make_context(command, ["--help"], resilient_parsing=True)
    for param in COMMANDS[command].get_params(context):
        if getattr(param, "is_flag", False):
            assert param.metavar == "", (command, param.name)
        else:
            assert param.metavar and "<" not in param.metavar, (command, param.name, param.metavar)


def test_the_usual_metavars() -> None:
    text = help_text("scan")
    assert "Usage: relu-doctor scan [OPTIONS] MODEL" in text
    assert "--samples          N " in text or " N " in text.split("--samples")[1].split("\n")[0]
    for option, metavar in (
        ("--format", "[table|json|markdown|csv|github|sarif|junit]"),
        ("--color", "[auto|always|never]"),
        ("--device", "[auto|cpu|cuda|mps]"),
        ("--output", "FILE"),
        ("--arch ", "SPEC"),
        ("--ignore", "GLOB"),
    ):
        row = next(line for line in text.splitlines() if option in line)
        assert metavar in row, row
    assert "Usage: relu-doctor trend [OPTIONS] CKPT..." in help_text("trend")
    assert "Usage: relu-doctor merge [OPTIONS] STATS..." in help_text("merge")


# -- usage errors: our words, the hint, all missing options ----------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("scan", "m.pt", "--color", "purple"), "--color must be one of auto, always, never, got 'purple'"),
        (("scan", "m.pt", "-f", "xml"), "--format must be one of table, json, markdown, csv, github, sarif, junit"),
        (("scan", "m.pt", "--samples", "abc"), "--samples must be an integer, got 'abc'"),
        (("scan", "m.pt", "--tau", "abc"), "--tau must be a number, got 'abc'"),
        (("fix", "m.pt", "-s", "melt", "-o", "x"), "--strategy must be one of recycle, bias-shift, leaky, got 'melt'"),
        (("trend", "m.pt", "--color", "red"), "--color must be one of auto, always, never, got 'red'"),
        (("merge", "m.stats", "--tau", "x"), "--tau must be a number, got 'x'"),
    ],
)
def test_bad_values_are_reported_in_our_words(args: tuple[str, ...], expected: str) -> None:
    error, code, torch_imported, _ = run_entry(*args)
    assert code == 2 and not torch_imported
    assert error.startswith(f"relu-doctor: error: {expected}"), error
    assert "Value error" not in error and "Input should be" not in error and "Invalid value" not in error
    assert error.endswith(f"; see 'relu-doctor {args[0]} --help'"), error


@pytest.mark.parametrize(
    "args",
    [
        ("scan", "m.pt", "--samples"),  # the parser's own error
        ("scan", "m.pt", "--tau", "nan"),  # ours, raised after parsing
        ("scan", DYING, "--samples", "0"),
        ("scan", DYING, "--device", "gpu"),
        ("scan", DYING, "--isolated", "--config", "x.toml"),
        ("merge", "m.stats", "--tau", "-1"),
    ],
)
def test_every_usage_error_ends_with_the_help_hint(args: tuple[str, ...]) -> None:
    error, code, _, _ = run_entry(*args)
    assert code == 2 and len(error.splitlines()) == 1, error
    assert error.endswith(f"; see 'relu-doctor {args[0]} --help'"), error


def test_fix_reports_every_missing_option_at_once() -> None:
    error, code, _, _ = run_entry("fix", "m.pt")
    assert code == 2
    assert error == (
        "relu-doctor: error: missing options --strategy [recycle|bias-shift|leaky], --output FILE; "
        "see 'relu-doctor fix --help'"
    )
    error, _, _, _ = run_entry("fix", "m.pt", "-o", "out.pt")
    assert "missing option --strategy [recycle|bias-shift|leaky];" in error


# -- errors that need no torch come before torch ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("scan", "nope.pt"), "nope.pt: no such file or directory"),
        (("scan", DYING, "--probe", "nope.npy"), "--probe 'nope.npy' does not exist"),
        (("scan", DYING, "--arch", "nowhere/m.py:build"), "no such file 'nowhere/m.py'"),
        (("scan", DYING, "--input-shape", "3xx"), "--input-shape"),
        (("scan", DYING, "--device", "tpu"), "--device must be one of"),
        (("scan", DYING, "--max-dead-fraction", "2"), "--max-dead-fraction must be between 0 and 1"),
        (("scan", DYING, "-o", PROBE, "--probe", PROBE), "is the input"),
        (("fix", "nope.pt", "-s", "recycle", "-o", "out.pt"), "nope.pt: no such file or directory"),
        (("fix", DYING, "-s", "recycle", "-o", PROBE), "already exists"),
        (("trend", DYING, "nope.pt"), "nope.pt: no such file or directory"),
    ],
)
def test_errors_that_need_no_torch_come_before_torch(args: tuple[str, ...], words: str) -> None:
    error, code, torch_imported, _ = run_entry(*args)
    assert code == 2 and words in error, error
    assert not torch_imported, f"torch was imported before: {error}"


def test_the_torch_probe_sees_a_real_load() -> None:
    # guards the test above: a scan that gets as far as loading does import torch, and the probe notices
    error, code, torch_imported, _ = run_entry("scan", DYING, "--arch", f"{SAMPLES / 'digits_mlp.py'}:no_such_callable")
    assert code == 2 and torch_imported, error


def test_a_torch_free_error_is_several_times_faster_than_a_load() -> None:
    # measured side by side, best of 2 each, so a loaded machine slows both alike
    early = min(run_entry("scan", "nope.pt")[3] for _ in range(2))
    loaded = min(
        run_entry("scan", DYING, "--arch", f"{SAMPLES / 'digits_mlp.py'}:no_such_callable")[3] for _ in range(2)
    )
    assert early * 2 < loaded, (early, loaded)


# -- gate violations, ignore globs, config search, outputs never replace inputs -------------------------------------


def scan_sample(*extra: str, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(app, ["scan", DYING, "--arch", ARCH, "--probe", PROBE, "--no-simulate", *extra], env=env)


def test_with_an_output_file_stderr_still_names_each_violation(tmp_path: Path) -> None:
    result = scan_sample(
        "--max-layer-dead-fraction", "0.5", "--max-dead-fraction", "0.1", "-f", "json", "-o", str(tmp_path / "r.json")
    )
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    assert lines[0].endswith("gate FAILED")
    # act2: 78 of 128 dead (60.9%) > 0.5; the model: 78 of 256 (30.5%) > 0.1
    assert [line for line in lines if line.startswith("✗")] == [
        "✗ site act2: 78 of 128 units dead (60.9%) > max-layer-dead-fraction 0.5",
        "✗ model: 78 of 256 units dead (30.5%) > max-dead-fraction 0.1",
    ]


def test_an_ignore_glob_that_matches_nothing_is_one_warning() -> None:
    result = scan_sample("-q", "--ignore", "act*")
    assert result.exit_code == 0 and result.stderr == ""  # matches: no warning (and -q keeps stderr quiet anyway)
    result = scan_sample("-f", "json", "--ignore", "act3", "--ignore", "head.*", "--ignore", "act1")
    warnings = [line for line in result.stderr.splitlines() if "warning" in line]
    assert warnings == [
        "relu-doctor: warning: --ignore 'act3' matches no site; did you mean 'act2'?",
        "relu-doctor: warning: --ignore 'head.*' matches no site",
    ]


def test_the_config_is_found_above_the_model_not_the_working_directory(tmp_path: Path) -> None:
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    (project / "models").mkdir(parents=True)
    elsewhere.mkdir()
    (project / ".git").mkdir()
    model = project / "models" / "m.safetensors"
    model.write_bytes(Path(DYING).read_bytes())
    (project / "pyproject.toml").write_text("[tool.relu-doctor]\nmax_dead_fraction = 0.01\n")
    (elsewhere / "pyproject.toml").write_text("[tool.relu-doctor]\nmax_dead_fraction = 0.99\n")
    args = ("scan", str(model), "--arch", ARCH, "--probe", PROBE, "--no-simulate", "-v", "-f", "json")
    error, code, _, _ = run_entry(*args, cwd=elsewhere)
    assert code == 1, error  # the project's 1% limit, not the working directory's 99%
    assert f"config: {project / 'pyproject.toml'}" in error
    # a .relu-doctor.toml beside pyproject.toml wins, as ruff's .ruff.toml does
    (project / ".relu-doctor.toml").write_text("max_dead_fraction = 0.9\n")
    error, code, _, _ = run_entry(*args, cwd=elsewhere)
    assert code == 0 and f"config: {project / '.relu-doctor.toml'}" in error, error


def test_a_model_outside_any_project_falls_back_to_the_working_directory(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text("[tool.relu-doctor]\nmax_dead_fraction = 0.01\n")
    error, code, _, _ = run_entry("scan", DYING, "--arch", ARCH, "--probe", PROBE, "--no-simulate", "-q", cwd=tmp_path)
    assert code == 1, error  # samples/ has no config up to its repository root: the working directory's is used


def test_an_arch_module_file_is_an_input_no_output_may_replace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from relu_doctor.workflow.scan import ScanRequest, scan_inputs

    package = tmp_path / "mypkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "models.py").write_text("def build():\n    raise AssertionError('never imported')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    inputs = scan_inputs(ScanRequest(model_path=DYING, arch="mypkg.models:build"))
    assert str(package / "models.py") in inputs
    assert "mypkg.models" not in sys.modules  # found on sys.path, not imported
    result = CliRunner().invoke(
        app, ["scan", DYING, "--arch", "mypkg.models:build", "-o", str(package / "models.py"), "--force"]
    )
    assert result.exit_code == 2 and "is the input" in result.stderr, result.stderr
    assert "never imported" in (package / "models.py").read_text()


def test_the_console_script_freezes_import_time_objects_and_an_in_process_run_does_not() -> None:
    # The console script's process runs one command: torch's import-time objects leave the cyclic GC's reach
    # (cli.app.settle_imports); a program running the app in-process (CliRunner, here) keeps its GC untouched.
    args = ("scan", DYING, "--arch", ARCH, "--probe", PROBE, "-f", "json", "--no-simulate", "--exit-zero")
    completed, fields = entry(*args)
    assert fields["EXIT"] == "0" and json.loads(completed.stdout)["summary"]["dead"] > 0
    assert int(fields["FROZEN"]) > 50_000 and fields["GC"] == "True"
    frozen = gc.get_freeze_count()
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    assert gc.get_freeze_count() == frozen and gc.isenabled()


def test_fix_through_the_console_script_freezes_them_after_its_checks(tmp_path: Path) -> None:
    out = tmp_path / "fixed.safetensors"
    args = ("fix", DYING, "--arch", ARCH, "--probe", PROBE, "-o", str(out), "--strategy", "recycle")
    completed, fields = entry(*args)
    assert fields["EXIT"] == "0" and out.exists(), completed.stderr
    assert int(fields["FROZEN"]) > 50_000 and fields["GC"] == "True"


def test_measured_startup_of_an_early_error() -> None:
    # not an assertion of speed: prints the figure for the notes (pytest -s)
    started = time.perf_counter()
    _, code, torch_imported, seconds = run_entry("scan", "nope.pt")
    print(f"early error: {seconds:.3f} s inside, {time.perf_counter() - started:.3f} s with the interpreter")
    assert code == 2 and not torch_imported


MARKUP_NET = """
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(4, 8)
        self.add_module("[bold]act[/bold]", nn.ReLU())
        self.fc2 = nn.Linear(8, 2)

    def forward(self, x):
        return self.fc2(getattr(self, "[bold]act[/bold]")(self.fc1(x)))
"""


def test_names_are_shown_as_written_never_as_rich_markup(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    (tmp_path / "markup_net.py").write_text(MARKUP_NET)
    torch.manual_seed(0)
    fc1 = torch.nn.Linear(4, 8)
    fc2 = torch.nn.Linear(8, 2)
    with torch.no_grad():
        fc1.bias[:4] = -100.0  # units 0-3 never fire
    weights = {f"fc1.{k}": v for k, v in fc1.state_dict().items()} | {
        f"fc2.{k}": v for k, v in fc2.state_dict().items()
    }
    save_file(weights, str(tmp_path / "m.safetensors"))
    arch = f"{tmp_path / 'markup_net.py'}:Net"
    common = [str(tmp_path / "m.safetensors"), "--arch", arch, "--input-shape", "4", "--samples", "64"]
    scan = CliRunner().invoke(app, ["scan", *common, "--no-simulate"])
    assert "[bold]act[/bold]" in scan.stdout, scan.stdout
    trend = CliRunner().invoke(app, ["trend", *common])
    assert "[bold]act[/bold]" in trend.stdout, trend.stdout
    fix = CliRunner().invoke(app, ["fix", *common, "-s", "recycle", "-o", str(tmp_path / "fixed.safetensors")])
    assert fix.exit_code == 0, fix.output
    table_rows = [line for line in fix.stdout.splitlines() if line.startswith("│")]
    assert any("[bold]act[/bold]" in row for row in table_rows), fix.stdout
