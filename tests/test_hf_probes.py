"""What a sample is for a token model (issue 17): one sequence, with each real token one position.

Token ids without a mask, all-padding rows, and a synthetic probe, each checked against the per-sequence brute
force of tests/_hf_models.py (every sequence run alone, unpadded)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from _hf_models import brute_force, opt_folder  # noqa: E402

from relu_doctor.loading import load_model  # noqa: E402
from relu_doctor.workflow.scan import ScanRequest, run_scan  # noqa: E402


def _ids(rows: int, tokens: int, vocab: int) -> np.ndarray:
    generator = np.random.default_rng(3)
    return generator.integers(3, vocab, size=(rows, tokens), dtype=np.int64)  # 0..2 are [PAD], [UNK], </s>


def test_id_probe_without_mask_counts_one_sample_per_row_on_opt(tmp_path: Path) -> None:
    # OPT flattens (batch, tokens, hidden) to (batch x tokens, hidden) before fc1: without a mask the observer
    # saw a batch of 4 rows as one sample. 6 rows of 7 tokens -> 6 samples, 42 positions per unit.
    folder = opt_folder(tmp_path)
    ids = _ids(6, 7, 20)  # the tokenizer knows 28 words
    np.save(tmp_path / "ids.npy", ids)
    report = run_scan(ScanRequest(str(folder), probe_path=str(tmp_path / "ids.npy"), batch_size=4, device="cpu"))
    assert report.probe.samples == 6
    oracle = brute_force(load_model(folder).model, (torch.as_tensor(row) for row in ids))
    for site in report.sites:
        positive, fired, high, positions, samples = oracle[site.module_path]
        assert (site.counters.samples, site.counters.positions) == (6, 42) == (samples, positions)
        assert list(site.counters.positive) == positive
        assert list(site.counters.samples_fired) == fired
        assert site.counters.max_preactivation == pytest.approx(high, rel=1e-5, abs=1e-5)


def test_synthetic_probe_on_opt_counts_sequences_as_samples(tmp_path: Path) -> None:
    folder = opt_folder(tmp_path)
    report = run_scan(ScanRequest(str(folder), samples=10, batch_size=4, input_shape=(8,), device="cpu"))
    for site in report.sites:
        assert (site.counters.samples, site.counters.positions) == (10, 80)  # 10 sequences of 8 random ids
