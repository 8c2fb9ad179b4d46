"""Probe files in every supported form give the same batches; bad probes are one clear ProbeError."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from relu_doctor.engine.runner import observe
from relu_doctor.errors import ObservationError, ProbeError
from relu_doctor.workflow.probe import file_probe, npy_rows, parse_shape, synthetic_probe

ROWS = np.arange(7 * 2 * 3, dtype=np.float32).reshape(7, 2, 3)


def _all_rows(path: Path, key: str | None = None, batch_size: int = 3) -> torch.Tensor:
    return torch.cat(list(file_probe(path, batch_size=batch_size, key=key).batches()))


def _every_form(tmp_path: Path) -> dict[str, tuple[Path, str | None]]:
    np.save(tmp_path / "rows.npy", ROWS)
    np.save(tmp_path / "fortran.npy", np.asfortranarray(ROWS))
    np.savez(tmp_path / "rows.npz", x=ROWS)
    save_file({"x": torch.from_numpy(ROWS), "y": torch.zeros(7)}, tmp_path / "rows.safetensors")
    torch.save({"inputs": torch.from_numpy(ROWS), "labels": torch.zeros(7)}, tmp_path / "dict.pt")
    torch.save((torch.from_numpy(ROWS), torch.zeros(7)), tmp_path / "tuple.pt")
    shards = tmp_path / "shards"
    shards.mkdir()
    for i, (lo, hi) in enumerate([(0, 2), (2, 3), (3, 7)]):  # uneven shards, read across their borders
        np.save(shards / f"part{i}.npy", ROWS[lo:hi])
    return {
        "npy": (tmp_path / "rows.npy", None),
        "fortran npy": (tmp_path / "fortran.npy", None),
        "npz": (tmp_path / "rows.npz", None),
        "safetensors": (tmp_path / "rows.safetensors", "x"),
        "pt dict": (tmp_path / "dict.pt", "inputs"),
        "pt tuple": (tmp_path / "tuple.pt", "0"),
        "npy shards": (shards, None),
    }


@pytest.mark.parametrize("form", ["npy", "fortran npy", "npz", "safetensors", "pt dict", "pt tuple", "npy shards"])
def test_every_probe_form_yields_the_same_rows(tmp_path: Path, form: str) -> None:
    path, key = _every_form(tmp_path)[form]
    assert torch.equal(_all_rows(path, key), torch.from_numpy(ROWS))


def test_npy_rows_are_read_on_demand_not_mapped(tmp_path: Path) -> None:
    np.save(tmp_path / "rows.npy", ROWS)
    rows = npy_rows(tmp_path / "rows.npy")
    assert not isinstance(rows, np.memmap)
    assert np.array_equal(rows[5:99], ROWS[5:])  # a slice past the end stops at the last row


def test_a_truncated_npy_is_a_probe_error(tmp_path: Path) -> None:
    np.save(tmp_path / "rows.npy", ROWS)
    data = (tmp_path / "rows.npy").read_bytes()
    (tmp_path / "cut.npy").write_bytes(data[: len(data) - 10])
    with pytest.raises(ProbeError, match="shorter than its header"):
        _all_rows(tmp_path / "cut.npy")


def test_a_file_with_several_tensors_needs_probe_key(tmp_path: Path) -> None:
    path, _ = _every_form(tmp_path)["pt dict"]
    with pytest.raises(ProbeError, match="--probe-key") as error:
        file_probe(path, batch_size=2)
    assert "inputs" in str(error.value) and "labels" in str(error.value)
    with pytest.raises(ProbeError, match="'nope' not in"):
        file_probe(path, batch_size=2, key="nope")


def test_a_probe_that_does_not_fit_names_both_shapes(tmp_path: Path) -> None:
    np.save(tmp_path / "rows.npy", ROWS)  # samples of shape (2, 3): 3 features
    model = nn.Sequential(nn.Linear(5, 4), nn.ReLU())
    # Never refused by a guess from the first layer: the forward pass fails, and its error carries the hint.
    with pytest.raises(ObservationError) as error:
        observe(model, file_probe(tmp_path / "rows.npy", batch_size=2).batches())
    assert "(2, 2, 3)" in str(error.value) and "0 (Linear), takes 5 features" in str(error.value)


def test_a_non_numeric_probe_is_refused(tmp_path: Path) -> None:
    np.save(tmp_path / "text.npy", np.array([["a", "b"], ["c", "d"]]))
    with pytest.raises(ProbeError, match="dtype"):
        _all_rows(tmp_path / "text.npy")


def test_synthetic_probe_does_not_depend_on_batch_size() -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU())
    small = torch.cat(list(synthetic_probe(model, samples=300, seed=7, batch_size=7, input_shape=None).batches()))
    large = torch.cat(list(synthetic_probe(model, samples=300, seed=7, batch_size=300, input_shape=None).batches()))
    assert small.shape == (300, 4) and torch.equal(small, large)


def test_synthetic_probe_for_an_embedding_draws_token_ids() -> None:
    model = nn.Sequential(nn.Embedding(11, 4), nn.ReLU())
    batch = next(synthetic_probe(model, samples=8, seed=0, batch_size=8, input_shape=(5,)).batches())
    assert batch.dtype == torch.int64 and batch.shape == (8, 5) and int(batch.min()) >= 0 and int(batch.max()) < 11


@pytest.mark.parametrize("text", ["", "3x", "0x4", "axb", "-1"])
def test_bad_input_shapes_are_refused(text: str) -> None:
    with pytest.raises(ProbeError, match="--input-shape"):
        parse_shape(text)
