"""Tensors that are not plain dense CPU tensors never reach a kernel: refused before the model is built."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _hostile import ARCH, assert_refused, run_inprocess, sparse_weight
from _loading_helpers import reference_model

from relu_doctor.errors import CheckpointError
from relu_doctor.loading.dense import check_dense

# Building sparse, quantized and nested tensors makes torch warn about beta APIs; that is the test's own doing.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.mark.parametrize("kind", ["quantized", "nested", "meta"])
def test_quantized_nested_and_meta_weights_are_refused(tmp_path: Path, kind: str) -> None:
    state = reference_model().state_dict()
    weight = state["fc1.weight"]
    if kind == "quantized":
        state["fc1.weight"] = torch.quantize_per_tensor(weight, 0.1, 0, torch.qint8)
    elif kind == "nested":
        state["fc1.weight"] = torch.nested.nested_tensor([weight[0], weight[1, :2]])
    else:
        state["fc1.weight"] = torch.empty(8, 4, device="meta")
    torch.save(state, tmp_path / "model.pt")
    assert_refused(run_inprocess("scan", str(tmp_path / "model.pt"), "--arch", ARCH), "refusing", kind)


def test_a_stride_zero_probe_of_2_to_the_40_samples_is_refused_at_once(tmp_path: Path) -> None:
    torch.save(reference_model().state_dict(), tmp_path / "model.pt")
    # 16 bytes of storage claimed to be 2**40 samples: every row is the same four floats.
    torch.save(torch.zeros(4).expand(2**40, 4), tmp_path / "probe.pt")
    assert (tmp_path / "probe.pt").stat().st_size < 4096
    outcome = run_inprocess("scan", str(tmp_path / "model.pt"), "--arch", ARCH, "--probe", str(tmp_path / "probe.pt"))
    assert_refused(outcome, "refusing probe", "storage holds 16", seconds=10)


def test_a_dense_view_probe_still_works(tmp_path: Path) -> None:
    # The control: a probe saved as a view of a bigger tensor holds every element it claims.
    torch.save(reference_model().state_dict(), tmp_path / "model.pt")
    torch.save(torch.randn(64, 4)[8:40], tmp_path / "probe.pt")
    outcome = run_inprocess(
        "scan",
        str(tmp_path / "model.pt"),
        "--arch",
        ARCH,
        "--probe",
        str(tmp_path / "probe.pt"),
        "--no-simulate",
        "-f",
        "json",
    )
    assert outcome.code in (0, 1), outcome.stderr
    assert '"samples": 32' in outcome.stdout


@pytest.mark.parametrize("layout", ["coo", "csr"])
def test_the_walk_after_loading_is_a_second_fence(layout: str) -> None:
    # What the pickle pre-scan cannot see (a future rebuild name, a trusted whole model) the walk still refuses.
    module = torch.nn.Linear(4, 8)
    checkpoint = {"ema": [{"shadow": module}], "weights": {"fc1.weight": sparse_weight(layout)}}
    with pytest.raises(CheckpointError, match=r"weights\.fc1\.weight is a sparse_(coo|csr) tensor"):
        check_dense(checkpoint, "model.pt")
    check_dense({"ema": [{"shadow": module}]}, "model.pt")  # dense: silent
