"""Outputs never replace an input, replace an existing file only with --force, and never leave a temporary file."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch
from _hostile import ARCH, assert_refused, run_inprocess, snapshot
from _loading_helpers import reference_model

from relu_doctor.errors import UsageError
from relu_doctor.workflow.writer import Terminated, plan_output, write_bytes, write_with


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A model, a probe and a stats file, as a user's folder holds them."""
    torch.save(reference_model().state_dict(), tmp_path / "model.pt")
    torch.save(torch.randn(16, 4), tmp_path / "probe.pt")
    outcome = run_inprocess(
        "scan",
        str(tmp_path / "model.pt"),
        "--arch",
        ARCH,
        "--no-simulate",
        "-q",
        "--save-stats",
        str(tmp_path / "stats.safetensors"),
    )
    assert outcome.code in (0, 1), outcome.stderr
    return tmp_path


def _scan(project: Path, *extra: str) -> list[str]:
    return [
        "scan",
        str(project / "model.pt"),
        "--arch",
        ARCH,
        "--no-simulate",
        "--probe",
        str(project / "probe.pt"),
        *extra,
    ]


@pytest.mark.parametrize(
    "command",
    [
        lambda p, out: _scan(p, "-o", out),
        lambda p, out: _scan(p, "-o", out, "--force"),
        lambda p, out: _scan(p, "--save-stats", out, "--force"),
        lambda p, out: ["trend", str(p / "model.pt"), str(p / "model.pt"), "--arch", ARCH, "-o", out, "--force"],
        lambda p, out: ["fix", str(p / "model.pt"), "--arch", ARCH, "-s", "recycle", "-o", out, "--force"],
    ],
    ids=["scan-o", "scan-o-force", "save-stats", "trend-o", "fix-o"],
)
@pytest.mark.parametrize("spelling", ["same", "dotdot", "symlink", "hardlink"])
def test_no_output_replaces_the_model(project: Path, command: object, spelling: str) -> None:
    out = {
        "same": str(project / "model.pt"),
        "dotdot": str(project / "missing" / ".." / "model.pt"),  # the folder does not exist: resolved, not opened
        "symlink": str(project / "link.pt"),
        "hardlink": str(project / "hard.pt"),
    }[spelling]
    if spelling == "symlink":
        (project / "link.pt").symlink_to(project / "model.pt")
    if spelling == "hardlink":
        (project / "hard.pt").hardlink_to(project / "model.pt")
    before = snapshot(project)
    assert_refused(run_inprocess(*command(project, out)), "input")  # type: ignore[operator]
    assert snapshot(project) == before


@pytest.mark.parametrize("name", ["probe.pt", "stats.safetensors"])
def test_the_probe_and_merge_inputs_are_inputs_too(project: Path, name: str) -> None:
    before = snapshot(project)
    if name == "probe.pt":
        outcome = run_inprocess(*_scan(project, "-o", str(project / name), "--force"))
    else:
        outcome = run_inprocess("merge", str(project / name), "-o", str(project / name), "--force")
    assert_refused(outcome, "input")
    assert snapshot(project) == before


def test_the_config_file_is_an_input(project: Path) -> None:
    config = project / "settings.toml"
    config.write_text("dying_rate = 0.02\n")
    before = snapshot(project)
    assert_refused(run_inprocess(*_scan(project, "--config", str(config), "-o", str(config), "--force")), "input")
    assert snapshot(project) == before


def test_an_existing_report_is_replaced_only_with_force(project: Path) -> None:
    (project / "report.json").write_text("keep me")
    line = assert_refused(run_inprocess(*_scan(project, "-f", "json", "-o", str(project / "report.json"))))
    assert "already exists" in line and "--force" in line
    assert (project / "report.json").read_text() == "keep me"
    outcome = run_inprocess(*_scan(project, "-f", "json", "-o", str(project / "report.json"), "--force"))
    assert outcome.code in (0, 1) and '"summary"' in (project / "report.json").read_text()


def test_two_outputs_cannot_be_one_file(project: Path) -> None:
    out = str(project / "both.out")
    assert_refused(run_inprocess(*_scan(project, "-o", out, "--save-stats", out)), "--save-stats")
    assert not (project / "both.out").exists()


def test_an_output_created_meanwhile_is_not_replaced(tmp_path: Path) -> None:
    target = plan_output(tmp_path / "out.json", [], force=False)
    (tmp_path / "out.json").write_text("someone else's")  # after the check, before the final step
    with pytest.raises(UsageError, match="created by something else"):
        write_bytes(target, "ours")
    assert (tmp_path / "out.json").read_text() == "someone else's"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_of_two_concurrent_writers_one_wins_and_one_is_refused(tmp_path: Path) -> None:
    first, second = (plan_output(tmp_path / "out.json", [], force=False) for _ in range(2))
    write_bytes(first, "first")
    with pytest.raises(UsageError):
        write_bytes(second, "second")
    assert (tmp_path / "out.json").read_text() == "first"


def test_sigterm_while_writing_removes_the_temporary_file(tmp_path: Path) -> None:
    target = plan_output(tmp_path / "big.pt", [], force=False)

    def save(temporary: str) -> None:
        Path(temporary).write_bytes(b"x" * 1_000_000)
        os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(Terminated):
        write_with(target, save)
    assert list(tmp_path.iterdir()) == []
    assert signal.getsignal(signal.SIGTERM) is not None  # the previous handler is back


def test_ctrl_c_is_one_line_and_exit_130(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from relu_doctor.cli import scan as scan_command

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(scan_command, "_run", interrupted)
    outcome = run_inprocess(*_scan(project))
    assert outcome.code == 130
    assert outcome.stderr.count("\n") == 1 and "interrupted" in outcome.stderr


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_folder_is_one_line(project: Path) -> None:
    folder = project / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        assert_refused(run_inprocess(*_scan(project, "-o", str(folder / "r.txt"))), "cannot write")
    finally:
        folder.chmod(0o700)


def test_a_newline_in_a_path_is_escaped_not_cut(project: Path) -> None:
    line = assert_refused(run_inprocess(*_scan(project, "-o", str(project / "no\nsuch" / "r.txt"))))
    assert "no\\nsuch" in line
