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


# Structured hostile cases, seeded: each kind has a known verdict (refused with its reason, or read as usual).
HOSTILE_CASES = 60
HOSTILE_SEED = 20261203


def _hostile_case(rng: random.Random, directory: Path) -> tuple[Path, str | None]:
    """(checkpoint, the words its refusal must contain, or None when it must load or fail for another reason)."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent / "hostile"))
    from _hostile import deep_tuple_key, hash_bomb, sparse_weight, torch_zip

    target = directory / "model.pt"
    state = reference_model().state_dict()
    kind = rng.choice(["sparse", "quantized", "nested", "meta", "deep", "shared", "strided"])
    if kind == "sparse":
        weight = sparse_weight(rng.choice(["coo", "csr", "csc", "bsr"]))
        state[rng.choice(["fc1.weight", "fc2.weight", "head.weight"])] = weight
        torch.save({"state_dict": state} if rng.random() < 0.5 else state, target)
        return target, "sparse"
    if kind in ("quantized", "nested", "meta"):
        weight = state["fc1.weight"]
        state["fc1.weight"] = {
            "quantized": lambda: torch.quantize_per_tensor(weight, rng.uniform(0.01, 1), rng.randrange(8), torch.qint8),
            "nested": lambda: torch.nested.nested_tensor([weight[0], weight[1, : rng.randint(1, 4)]]),
            "meta": lambda: torch.empty(8, 4, device="meta"),
        }[kind]()
        torch.save(state, target, _use_new_zipfile_serialization=rng.random() < 0.7)
        return target, "refusing"
    if kind == "deep":
        depth = rng.choice([rng.randint(1, 150), rng.randint(201, 5000)])
        return torch_zip(target, deep_tuple_key(depth), compress=rng.random() < 0.5), (
            "levels deep" if depth >= 200 else None
        )
    if kind == "shared":
        levels = rng.choice([rng.randint(1, 12), rng.randint(25, 64)])
        return torch_zip(target, hash_bomb(levels)), "hash bomb" if levels >= 24 else None
    # strided probes: views of one storage, honest ones (slices, transposes) and stride-0 rows repeated 2**k times
    base = torch.randn(rng.randint(8, 64))
    rows = base.numel() // 4
    if rng.random() < 0.5:
        view = base[: rows * 4].view(4, rows).t() if rng.random() < 0.5 else base[: rows * 4].view(rows, 4)[1:]
        torch.save(view, target)
        return target, "probe"
    torch.save(torch.as_strided(base, (2 ** rng.randint(rows + 1, 40), 4), (0, 1)), target)
    return target, "probe:storage holds"


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_hostile_tensors_and_pickles_are_refused_with_their_reason(tmp_path: Path) -> None:
    from relu_doctor.errors import CheckpointError, ProbeError
    from relu_doctor.workflow.probe import file_probe

    rng = random.Random(HOSTILE_SEED)
    refused = 0
    for case in range(HOSTILE_CASES):
        directory = tmp_path / f"hostile{case}"
        directory.mkdir()
        target, reason = _hostile_case(rng, directory)
        before = _listing(directory)
        try:
            if reason is not None and reason.startswith("probe"):
                reason = reason.partition(":")[2] or None
                file_probe(target, batch_size=8).read(0, 8)
            else:
                load_model(target, arch=ARCH_MODULE_SPEC)
        except ReluDoctorError as error:
            message = str(error)
            assert "\n" not in message, f"case {case}: multi-line message"
            if reason is not None:
                assert isinstance(error, (CheckpointError, ProbeError)), f"case {case}: {message}"
                assert reason in message, f"case {case}: {message}"
                refused += 1
        else:
            assert reason is None, f"case {case}: {target} loaded but should be refused ({reason})"
        assert _listing(directory) == before, f"case {case}: the input or its directory changed"
    assert refused > HOSTILE_CASES // 3
