"""Configuration: [tool.relu-doctor] found upward, --config, RELU_DOCTOR_* variables; precedence command line >
environment > file > defaults; unknown keys and bad values exit 2 naming them; --trust never from a file or env."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from relu_doctor.cli import app, config
from relu_doctor.errors import ConfigError

SAMPLES = Path(__file__).resolve().parent.parent / "samples"
DYING = str(SAMPLES / "dying_mlp.safetensors")  # act2: 78 of 128 dead (60.9%); act1: 0 dead


def write_pyproject(folder: Path, body: str) -> Path:
    path = folder / "pyproject.toml"
    path.write_text(f'[project]\nname = "demo"\n\n[tool.relu-doctor]\n{body}\n', encoding="utf-8")
    return path


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project folder holding the sample architecture and probe, as the working directory, with no RELU_DOCTOR_*."""
    shutil.copy(SAMPLES / "digits_mlp.py", tmp_path / "digits_mlp.py")
    shutil.copy(SAMPLES / "digits_probe.npy", tmp_path / "digits_probe.npy")
    for name in [n for n in os.environ if n.startswith(config.ENV_PREFIX)]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def invoke(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(app, ["scan", DYING, "--no-simulate", *args], env=env)  # simulated fixes: not tested here


# -- pure layering ------------------------------------------------------------------------------------------------
def test_precedence_is_command_line_then_environment_then_file_then_defaults() -> None:
    file = config.FileConfig("pyproject.toml", {"tau": 0.5, "dying_rate": 0.2, "batch_size": 16})
    resolved = config.resolve(
        command_line={"tau": 0.1},
        environment={"tau": 0.3, "dying_rate": 0.05},
        file=file,
        defaults={"tau": 0.025, "dying_rate": 0.01, "batch_size": 64, "seed": 0},
    )
    assert dict(resolved.values) == {"tau": 0.1, "dying_rate": 0.05, "batch_size": 16, "seed": 0}
    assert dict(resolved.sources) == {
        "tau": "command line",
        "dying_rate": "RELU_DOCTOR_DYING_RATE",
        "batch_size": "pyproject.toml",
        "seed": "default",
    }


def test_nearest_pyproject_with_our_table_is_found_upward(tmp_path: Path) -> None:
    write_pyproject(tmp_path, "tau = 0.1")
    inner = tmp_path / "pkg" / "sub"
    inner.mkdir(parents=True)
    (tmp_path / "pkg" / "pyproject.toml").write_text(
        '[project]\nname = "inner"\n', encoding="utf-8"
    )  # no table: skipped
    assert config.find_config(inner) == tmp_path / "pyproject.toml"


def test_file_keys_accept_dashes_and_sites_become_overrides(tmp_path: Path) -> None:
    path = write_pyproject(
        tmp_path,
        'max-layer-dead-fraction = 0.3\nignore = ["head.*"]\nprobe = "data/p.npy"\n'
        '[tool.relu-doctor.sites]\n"encoder.*" = { max_layer_dead_fraction = 0.5 }',
    )
    loaded = config.load_config(path)
    thresholds = config.thresholds_from(loaded.values)
    assert thresholds.max_layer_dead_fraction == 0.3
    assert thresholds.site_overrides == (("encoder.*", 0.5),)
    assert thresholds.ignore == ("head.*",)
    assert loaded.values["probe"] == str(tmp_path / "data" / "p.npy")  # relative to the config file, not the cwd


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ("max_dead_fractoin = 0.2", "'max_dead_fractoin'"),
        ('[tool.relu-doctor.sites]\n"enc.*" = { max_dead_fraction = 0.5 }', "'max_dead_fraction'"),
        ('max_dead_fraction = "high"', "'high'"),
        ("max_dead_fraction = 1.5", "1.5"),
        ('format = "xml"', "'xml'"),
        ("ignore = [1]", "[1]"),
    ],
)
def test_bad_file_keys_and_values_are_named(tmp_path: Path, body: str, named: str) -> None:
    with pytest.raises(ConfigError, match=named.replace("[", r"\[").replace("]", r"\]").replace(".", r"\.")):
        config.load_config(write_pyproject(tmp_path, body))


def test_environment_values_are_typed_and_unknown_variables_named() -> None:
    values = config.parse_environment(
        {
            "RELU_DOCTOR_IGNORE": "head.*, aux.*",
            "RELU_DOCTOR_STRICT": "yes",
            "RELU_DOCTOR_BATCH_SIZE": "8",
            "RELU_DOCTOR_TAU": "",
            "PATH": "/bin",
        }
    )
    assert values == {"ignore": ["head.*", "aux.*"], "strict": True, "batch_size": 8}  # empty TAU counts as unset
    # an unknown variable sets nothing and is named in a warning, with the closest key (issue 15: a stray CI
    # variable must not break every run)
    assert config.parse_environment({"RELU_DOCTOR_MAX_DEAD": "0.1"}) == {}
    assert config.unknown_variables({"RELU_DOCTOR_MAX_DEAD": "0.1", "RELU_DOCTOR_TAU": "1"}) == [
        "ignoring unknown environment variable RELU_DOCTOR_MAX_DEAD; did you mean RELU_DOCTOR_MAX_DEAD_FRACTION?"
    ]
    with pytest.raises(ConfigError, match="RELU_DOCTOR_SAMPLES must be a number, got 'many'"):
        config.parse_environment({"RELU_DOCTOR_SAMPLES": "many"})


@pytest.mark.parametrize("key", ["trust", "import", "allow-global"])
def test_code_running_options_are_refused_in_files_and_environment(tmp_path: Path, key: str) -> None:
    with pytest.raises(ConfigError, match="on the command line"):
        config.load_config(write_pyproject(tmp_path, f"{key} = true"))
    with pytest.raises(ConfigError, match="on the command line"):
        config.parse_environment({f"RELU_DOCTOR_{config.normalize(key).upper()}": "1"})


# -- through the CLI ----------------------------------------------------------------------------------------------
def test_cli_layers_file_environment_and_command_line(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_pyproject(
        project, 'arch = "digits_mlp.py:build_mlp"\nprobe = "digits_probe.npy"\nmax_layer_dead_fraction = 0.5'
    )
    (project / "sub").mkdir()
    monkeypatch.chdir(project / "sub")  # found upward; relative arch/probe read from the config's folder
    assert invoke("-q").exit_code == 1  # file: act2 60.9% > 0.5
    env = {"RELU_DOCTOR_MAX_LAYER_DEAD_FRACTION": "0.7"}
    assert invoke("-q", env=env).exit_code == 0  # environment beats the file
    assert invoke("-q", "--max-layer-dead-fraction", "0.6", env=env).exit_code == 1  # command line beats both


def test_cli_site_overrides_and_ignore_from_the_file(project: Path) -> None:
    base = 'arch = "digits_mlp.py:build_mlp"\nprobe = "digits_probe.npy"\nmax_layer_dead_fraction = 0.5\n'
    write_pyproject(project, base + '[tool.relu-doctor.sites]\n"act*" = { max_layer_dead_fraction = 0.7 }')
    assert invoke("-q").exit_code == 0  # act2's 60.9% is within its own 0.7
    write_pyproject(project, base + 'ignore = ["act2"]')
    assert invoke("-q").exit_code == 0
    assert invoke("-q", "--ignore", "nothing*").exit_code == 1  # the command line replaces the file's ignore list


def test_cli_explicit_config_file_of_bare_keys(project: Path) -> None:
    (project / "ci.toml").write_text(
        'arch = "digits_mlp.py:build_mlp"\nprobe = "digits_probe.npy"\nmax_dead_fraction = 0.2\n'
    )
    result = invoke("-q", "--config", str(project / "ci.toml"))
    assert result.exit_code == 1  # 78 of 256 = 30.5% > 0.2


def test_cli_unknown_key_exits_2_with_one_line_naming_it(project: Path) -> None:
    write_pyproject(project, "max_layer_dead = 0.5")
    result = invoke("--arch", "digits_mlp.py:build_mlp")
    assert result.exit_code == 2
    assert "unknown key 'max_layer_dead'" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "did you mean 'max_layer_dead_fraction'?" in result.stderr
    assert result.stdout == ""


def test_cli_trust_from_file_or_environment_exits_2(project: Path) -> None:
    write_pyproject(project, 'arch = "digits_mlp.py:build_mlp"\ntrust = true')
    result = invoke()
    assert result.exit_code == 2 and "'trust' cannot come from a config file" in result.stderr
    write_pyproject(project, 'arch = "digits_mlp.py:build_mlp"')
    result = invoke(env={"RELU_DOCTOR_TRUST": "1"})
    assert result.exit_code == 2 and "cannot come from the environment" in result.stderr


def test_verbose_names_the_source_of_each_setting(project: Path) -> None:
    write_pyproject(project, 'arch = "digits_mlp.py:build_mlp"\nprobe = "digits_probe.npy"')
    result = invoke("-v", "-f", "json", env={"RELU_DOCTOR_TAU": "0.05"})
    assert result.exit_code == 0
    assert f"config: {project / 'pyproject.toml'}" in result.stderr
    assert "tau = 0.05  (RELU_DOCTOR_TAU)" in result.stderr and "format = 'json'  (command line)" in result.stderr
