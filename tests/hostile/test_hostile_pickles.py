"""Tiny pickles that crashed or never ended: bounded by the pre-scan, each one clear line and exit 2 in seconds."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _hostile import (
    ARCH,
    assert_refused,
    deep_tuple_key,
    hash_bomb,
    opcode_flood,
    run_inprocess,
    snapshot,
    torch_zip,
)
from _loading_helpers import reference_model

from relu_doctor.loading import pickle_scan


def test_a_hash_bomb_is_refused_in_seconds(tmp_path: Path) -> None:
    # 64 levels of t = (t, t) through the memo: hashing the key would take 2**64 steps (a hang, not a crash).
    path = torch_zip(tmp_path / "model.pt", hash_bomb(64))
    assert path.stat().st_size < 2048
    before = snapshot(tmp_path)
    outcome = run_inprocess("scan", str(path), "--arch", ARCH)
    assert_refused(outcome, "refusing", "hash bomb", seconds=10)
    assert snapshot(tmp_path) == before


def test_a_flood_of_opcodes_is_refused_within_seconds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The file: 30 million NONE/POP opcodes deflated to ~60 KB. The bound is 3 million opcodes (~3 s of
    # scanning, measured); the test lowers it to 200,000 so the suite stays fast, and checks the default too.
    assert pickle_scan.MAX_OPCODES == 3_000_000
    monkeypatch.setattr(pickle_scan, "MAX_OPCODES", 200_000)
    path = torch_zip(tmp_path / "model.pt", opcode_flood(30_000_000 // 2))
    assert path.stat().st_size < 100_000
    outcome = run_inprocess("scan", str(path), "--arch", ARCH)
    assert_refused(outcome, "refusing", "more than 200,000 opcodes", seconds=10)


def test_too_many_tensors_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The bound is 100,000 (about 10 s of loading); 41 one-element tensors against a bound of 40 prove the count.
    monkeypatch.setattr(pickle_scan, "MAX_TENSORS", 40)
    torch.save({f"t{i}": torch.ones(1) for i in range(41)}, tmp_path / "model.pt")
    assert_refused(run_inprocess("scan", str(tmp_path / "model.pt"), "--arch", ARCH), "refusing", "more than 40")


def test_a_probe_pickle_gets_the_same_bounds(tmp_path: Path) -> None:
    torch.save(reference_model().state_dict(), tmp_path / "model.pt")
    probe = torch_zip(tmp_path / "probe.pt", hash_bomb(40))
    outcome = run_inprocess("scan", str(tmp_path / "model.pt"), "--arch", ARCH, "--probe", str(probe))
    assert_refused(outcome, "refusing probe", "hash bomb", seconds=10)


@pytest.mark.parametrize("depth", [150, 200])
def test_nesting_within_the_bound_is_scanned_through(depth: int) -> None:
    # The control: a key nested 150 or 200 deep is legal for the scan (199 tuple levels + the dict).
    import io

    facts = pickle_scan.scan_pickle(io.BytesIO(deep_tuple_key(depth - 1)))
    assert facts.opcodes == depth + 5


def test_a_real_checkpoint_scans_in_bounds(tmp_path: Path) -> None:
    state = reference_model().state_dict()
    torch.save(
        {"state_dict": state, "optimizer_states": [{"state": {}, "param_groups": []}], "epoch": 3}, tmp_path / "c.pt"
    )
    facts = pickle_scan.scan_torch_file(tmp_path / "c.pt")
    # 11 tensors, each one rebuild call and one storage
    assert facts.tensors == 2 * len(state)
    assert "torch._utils._rebuild_tensor_v2" in facts.globals
