"""Probe inputs and settings that hung, exhausted memory or gave "internal error": one line, exit 2, at once."""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from _hostile import ARCH, assert_refused, run_inprocess
from _loading_helpers import reference_model

from relu_doctor.workflow import probe as probe_module


@pytest.fixture
def model(tmp_path: Path) -> Path:
    torch.save(reference_model().state_dict(), tmp_path / "model.pt")
    return tmp_path / "model.pt"


def _scan(model: Path, *extra: str) -> list[str]:
    return ["scan", str(model), "--arch", ARCH, "--no-simulate", *extra]


def test_a_fifo_probe_is_refused_instead_of_blocking(model: Path, tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "probe.npy")
    assert_refused(
        run_inprocess(*_scan(model, "--probe", str(tmp_path / "probe.npy"))), "not a regular file", seconds=5
    )


def test_dev_zero_is_refused_instead_of_read_forever(model: Path) -> None:
    assert_refused(run_inprocess(*_scan(model, "--probe", "/dev/zero")), "not a regular file", seconds=5)


def test_an_npz_inflating_past_the_bound_is_refused(
    model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The bound is 1 GiB; 4 MiB of zeros (deflated to a few KB) against a bound of 1 MiB proves the check.
    monkeypatch.setattr(probe_module, "MAX_NPZ_BYTES", 1 << 20)
    np.savez_compressed(tmp_path / "probe.npz", x=np.zeros((262_144, 4), dtype=np.float32))
    assert (tmp_path / "probe.npz").stat().st_size < 64_000
    assert_refused(run_inprocess(*_scan(model, "--probe", str(tmp_path / "probe.npz"))), "inflates to 4,194,304")


def test_an_npz_whose_header_claims_more_than_it_stores_is_refused(model: Path, tmp_path: Path) -> None:
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (2**28, 4)})
    with zipfile.ZipFile(tmp_path / "probe.npz", "w") as archive:
        archive.writestr("x.npy", header.getvalue() + b"\0" * 64)
    assert_refused(run_inprocess(*_scan(model, "--probe", str(tmp_path / "probe.npz"))), "inflates", seconds=5)


def test_a_big_endian_npy_probe_works(model: Path, tmp_path: Path) -> None:
    np.save(tmp_path / "probe.npy", np.random.default_rng(0).standard_normal((32, 4)).astype(">f4"))
    outcome = run_inprocess(*_scan(model, "--probe", str(tmp_path / "probe.npy"), "-f", "json"))
    assert outcome.code in (0, 1), outcome.stderr
    assert '"samples": 32' in outcome.stdout


@pytest.mark.parametrize(
    ("option", "value", "named"),
    [
        ("--tau", "inf", "--tau"),
        ("--tau", "nan", "--tau"),
        ("--samples", str(10**12), "--samples"),
        ("--seed", str(2**70), "--seed"),
        ("--arch-kwargs", "[" * 100_000 + "]" * 100_000, "--arch-kwargs"),
    ],
)
def test_impossible_settings_are_refused_up_front(model: Path, option: str, value: str, named: str) -> None:
    line = assert_refused(run_inprocess(*_scan(model, "-f", "json", option, value)), named, seconds=10)
    assert "internal error" not in line and len(line) < 400


def test_huge_synthetic_samples_are_drawn_in_small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    # Each 3x64x64 sample is 48 KiB; with a 1 MiB budget a chunk holds 21 samples, not 256 (3.3 GB at 3x1024x1024).
    monkeypatch.setattr(probe_module, "SYNTHETIC_CHUNK_BYTES", 1 << 20)
    drawn: list[int] = []
    real_randn = torch.randn

    def spy(size: tuple[int, ...], **kwargs: object) -> torch.Tensor:
        drawn.append(size[0])
        return real_randn(size, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(torch, "randn", spy)
    conv = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())
    made = probe_module.synthetic_probe(conv, samples=50, seed=1, batch_size=1, input_shape=(3, 64, 64))
    first = made.read(0, 1)
    assert first.shape == (1, 3, 64, 64) and set(drawn) == {21}
    assert torch.equal(made.read(0, 50)[:1], first)  # the same sample, however it is read
