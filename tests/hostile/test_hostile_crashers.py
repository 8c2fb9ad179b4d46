"""Inputs that killed the process (SIGSEGV) before the guards: all run in one child process, each checked alone.

One interpreter start serves every case; a case that still crashes fails its own test (and marks the cases after
it as not run) instead of killing the suite.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _hostile import ARCH, Outcome, assert_refused, deep_tuple_key, run_isolated, snapshot, sparse_weight, torch_zip
from _loading_helpers import reference_model

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
LAYOUTS = ("coo", "csr", "csc", "bsr")


def _sparse_state(layout: str) -> dict[str, torch.Tensor]:
    state = reference_model().state_dict()
    state["fc1.weight"] = sparse_weight(layout)
    return state


def _build(root: Path) -> dict[str, list[str]]:
    """Every crashing input, and the command line that used to crash on it."""
    cases: dict[str, list[str]] = {}
    torch.save(reference_model().state_dict(), root / "good.pt")
    for layout in LAYOUTS:
        torch.save(_sparse_state(layout), root / f"{layout}.pt")
        cases[f"scan-{layout}"] = ["scan", str(root / f"{layout}.pt"), "--arch", ARCH, "--no-simulate"]
    (root / "hf").mkdir()
    torch.save(_sparse_state("csr"), root / "hf" / "pytorch_model.bin")
    cases["scan-hf-folder"] = ["scan", str(root / "hf"), "--arch", ARCH]
    cases["fix-coo"] = ["fix", str(root / "coo.pt"), "--arch", ARCH, "-s", "recycle", "-o", str(root / "out.pt")]
    cases["trend-csr"] = ["trend", str(root / "good.pt"), str(root / "csr.pt"), "--arch", ARCH]
    torch.save(sparse_weight("csr"), root / "probe-csr.pt")
    torch.save(sparse_weight("coo").t(), root / "probe-coo.pt")
    for layout in ("csr", "coo"):
        cases[f"probe-{layout}"] = [
            "scan",
            str(root / "good.pt"),
            "--arch",
            ARCH,
            "--probe",
            str(root / f"probe-{layout}.pt"),
        ]
    torch_zip(root / "deep.pt", deep_tuple_key(1_000_000))
    cases["deep-key"] = ["scan", str(root / "deep.pt"), "--arch", ARCH]
    return cases


@pytest.fixture(scope="module")
def crashers(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[dict[str, Outcome], Path, dict[str, str], dict[str, str]]:
    root = tmp_path_factory.mktemp("crashers")
    cases = _build(root)
    before = snapshot(root)
    outcomes = run_isolated(cases)
    return outcomes, root, before, snapshot(root)


@pytest.mark.parametrize(
    ("case", "words"),
    [(f"scan-{layout}", ("refusing", "sparse")) for layout in LAYOUTS]
    + [
        ("scan-hf-folder", ("refusing", "sparse")),
        ("fix-coo", ("refusing", "sparse")),
        ("trend-csr", ("refusing", "sparse")),
        ("probe-csr", ("refusing probe", "sparse")),
        ("probe-coo", ("refusing probe", "sparse")),
        ("deep-key", ("refusing", "more than 200 levels deep")),
    ],
)
def test_crashing_inputs_are_one_line_and_exit_2(
    crashers: tuple[dict[str, Outcome], Path, dict[str, str], dict[str, str]], case: str, words: tuple[str, ...]
) -> None:
    outcomes, _, _, _ = crashers
    assert_refused(outcomes[case], *words)


def test_crashing_inputs_leave_every_file_as_it_was(
    crashers: tuple[dict[str, Outcome], Path, dict[str, str], dict[str, str]],
) -> None:
    # Byte-identical inputs, no output written by the refused fix, no temporary or bytecode files left.
    _, root, before, after = crashers
    assert after == before
