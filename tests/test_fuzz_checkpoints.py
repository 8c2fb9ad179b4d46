"""Seeded mutations of real checkpoints: every outcome is a load or a ReluDoctorError, and the input is untouched."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import pytest
import torch
from _loading_helpers import ARCH_MODULE_SPEC, reference_model
from safetensors.torch import save_file

from relu_doctor.errors import ReluDoctorError
from relu_doctor.loading import LoadedModel, load_model

CASES = 200
SEED = 20240611


def _seeds(directory: Path) -> list[bytes]:
    state = reference_model().state_dict()
    torch.save(state, directory / "zip.pt")
    torch.save(state, directory / "legacy.pt", _use_new_zipfile_serialization=False)
    torch.save({"state_dict": {f"model.{k}": v for k, v in state.items()}, "epoch": 1}, directory / "ckpt.pt")
    save_file(state, directory / "w.safetensors")
    return [(directory / name).read_bytes() for name in ("zip.pt", "legacy.pt", "ckpt.pt", "w.safetensors")]


def _mutate(data: bytes, rng: random.Random) -> bytes:
    """One of: flip bits, overwrite a run, truncate, insert junk, delete a run, copy a run elsewhere."""
    out = bytearray(data)
    position = rng.randrange(len(out))
    kind = rng.randrange(6)
    if kind == 0:
        for index in rng.sample(range(len(out)), rng.randint(1, 8)):
            out[index] ^= 1 << rng.randrange(8)
    elif kind == 1:
        out[position : position + 16] = rng.randbytes(16)
    elif kind == 2:
        del out[position:]
    elif kind == 3:
        out[position:position] = rng.randbytes(rng.randint(1, 64))
    elif kind == 4:
        del out[position : position + rng.randint(1, 256)]
    else:
        start = rng.randrange(len(data))
        out[position:position] = data[start : start + 128]
    return bytes(out)


def _listing(directory: Path) -> list[tuple[str, str]]:
    return sorted((p.name, hashlib.sha256(p.read_bytes()).hexdigest()) for p in directory.iterdir())


def test_mutated_checkpoints_load_or_fail_cleanly_and_stay_untouched(tmp_path: Path) -> None:
    seeds = _seeds(tmp_path)
    rng = random.Random(SEED)
    outcomes = {"loaded": 0, "refused": 0}
    for case in range(CASES):
        directory = tmp_path / f"case{case}"
        directory.mkdir()
        target = directory / rng.choice(["model.pt", "model.safetensors", "model.ckpt", "model"])
        target.write_bytes(_mutate(rng.choice(seeds), rng))
        before = _listing(directory)
        try:
            result = load_model(target, arch=ARCH_MODULE_SPEC)
        except ReluDoctorError as error:
            assert "\n" not in str(error), f"case {case}: multi-line message"
            outcomes["refused"] += 1
        except Exception as error:  # pragma: no cover - the failure we are looking for
            pytest.fail(f"case {case} ({target.name}): {type(error).__name__} escaped: {error}")
        else:
            assert isinstance(result, LoadedModel)
            outcomes["loaded"] += 1
        assert _listing(directory) == before, f"case {case}: the input or its directory changed"
    assert outcomes["loaded"] + outcomes["refused"] == CASES
    assert outcomes["refused"] > 0
