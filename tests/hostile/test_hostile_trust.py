"""--allow-global admits classes only, the advice never names a callable, --arch leaves no bytecode behind."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from _hostile import ARCH, assert_refused, run_inprocess, snapshot
from _loading_helpers import reference_model


class CollectEnvRun:
    """Pickles as a call of torch.utils.collect_env.run (runs its argument in a shell): the issue's gadget."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        from torch.utils import collect_env

        return (collect_env.run, (f"touch {self.marker}",))


class EvalCall:
    """Pickles as builtins.eval(<code that creates the marker>)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (eval, (f"open({str(self.marker)!r}, 'w')",))


def _checkpoint(tmp_path: Path, payload: object) -> Path:
    torch.save({"state_dict": reference_model().state_dict(), "extra": payload}, tmp_path / "c.pt")
    return tmp_path / "c.pt"


@pytest.mark.parametrize("gadget", [CollectEnvRun, EvalCall])
def test_the_advice_never_names_a_callable(tmp_path: Path, gadget: type) -> None:
    marker = tmp_path / "PWNED"
    path = _checkpoint(tmp_path, gadget(marker))
    line = assert_refused(run_inprocess("scan", str(path), "--arch", ARCH))
    assert "--allow-global" not in line
    assert not marker.exists()


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("torch.utils.collect_env.run", "refused"),
        ("torch.nn.functional.relu", "not a class"),
        ("builtins.eval", "refused"),
        ("os.system", "refused"),
        ("functools.partial", "refused"),
        ("operator.methodcaller", "refused"),
        ("pkgutil.resolve_name", "refused"),
        ("subprocess.Popen", "refused"),
    ],
)
def test_allow_global_refuses_callables_and_gadget_classes(tmp_path: Path, name: str, why: str) -> None:
    marker = tmp_path / "PWNED"
    path = _checkpoint(tmp_path, CollectEnvRun(marker))
    before = snapshot(tmp_path)
    assert_refused(run_inprocess("scan", str(path), "--arch", ARCH, "--allow-global", name), name, why)
    assert not marker.exists()
    assert snapshot(tmp_path) == before


def test_a_plain_class_is_still_suggested_and_allowed(tmp_path: Path) -> None:
    import argparse

    path = _checkpoint(tmp_path, argparse.Namespace(lr=0.1))
    line = assert_refused(run_inprocess("scan", str(path), "--arch", ARCH))
    assert "--allow-global argparse.Namespace" in line
    outcome = run_inprocess("scan", str(path), "--arch", ARCH, "--allow-global", "argparse.Namespace", "--no-simulate")
    assert outcome.code in (0, 1), outcome.stderr


def test_a_tuple_is_never_suggested(tmp_path: Path) -> None:
    # "allow just these with --allow-global tuple" was the old advice for a name torch quoted without a module.
    path = tmp_path / "c.pt"
    torch.save({"state_dict": reference_model().state_dict(), "extra": pickle.loads(pickle.dumps(range(3)))}, path)
    outcome = run_inprocess("scan", str(path), "--arch", ARCH)
    assert "--allow-global tuple" not in outcome.stderr and "--allow-global builtins" not in outcome.stderr


def test_arch_files_are_imported_without_writing_bytecode(tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "netdef_nobytecode.py").write_text(
        "import torch\n\ndef build():\n    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU())\n"
    )
    torch.save(torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU()).state_dict(), project / "w.pt")
    outcome = run_inprocess(
        "scan", str(project / "w.pt"), "--arch", f"{project / 'netdef_nobytecode.py'}:build", "--no-simulate"
    )
    assert outcome.code in (0, 1), outcome.stderr
    assert not (project / "__pycache__").exists()


@pytest.mark.parametrize(
    "gadget",
    ["pkgutil.resolve_name", "pydoc.pipepager", "torch.utils.collect_env.run", "operator.methodcaller"],
)
def test_gadgets_from_the_red_team_are_refused_even_with_trust(tmp_path: Path, gadget: str) -> None:
    # Best effort (the README says so): the deny list names the gadgets the red team used; it is no guarantee.
    from relu_doctor.loading.pickle_scan import dangerous_globals

    assert dangerous_globals([gadget]) == {gadget}
