"""Masked batches on the fast path (issue 17): blocks of real tokens go through the unmasked reducers (torch and
fused), a mask with holes through the exact masked path, and a row with no real token is no sample. Every case
is checked against tests/_hf_models.py's masked brute force, which reads each unit at real tokens in Python."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from _hf_models import TEXTS, make_tokenizer, masked_brute_force, opt_model  # noqa: E402

from relu_doctor.api import scan  # noqa: E402
from relu_doctor.engine.batches import MaskedBatch  # noqa: E402
from relu_doctor.engine.masking import real_blocks  # noqa: E402
from relu_doctor.engine.reduce import fused  # noqa: E402

REDUCERS = ["torch", "auto"] + (["fused"] if fused.available() else [])


def test_real_blocks_cover_each_real_token_once() -> None:
    mask = torch.tensor(
        [
            [1, 1, 1, 1],  # \ full rows in a row share a block
            [1, 1, 1, 1],  # /
            [1, 1, 0, 0],  # right padding
            [0, 0, 0, 0],  # no real token: no block, no sample
            [0, 1, 1, 1],  # left padding
            [1, 1, 1, 1],
        ]
    )
    assert real_blocks(mask) == [(0, 2, 0, 4), (2, 3, 0, 2), (4, 5, 1, 4), (5, 6, 0, 4)]
    assert real_blocks(torch.tensor([[1, 0, 1, 1]])) is None  # a hole: the exact masked path
    assert real_blocks(torch.zeros(2, 3)) == []


def _batches(side: str, holes: bool) -> list[MaskedBatch]:
    """TEXTS padded to 12 tokens on ``side``, in batches of 4, with two all-padding rows among them; ``holes``
    also masks the second real token of every text of 3 or more tokens."""
    tokenizer = make_tokenizer()
    tokenizer.padding_side = side
    enc = tokenizer(TEXTS, padding="max_length", max_length=12, return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    empty_ids = torch.zeros(1, 12, dtype=ids.dtype)  # [PAD] everywhere
    ids = torch.cat([ids[:2], empty_ids, ids[2:5], empty_ids, ids[5:]])
    mask = torch.cat([mask[:2], torch.zeros_like(empty_ids), mask[2:5], torch.zeros_like(empty_ids), mask[5:]])
    if holes:
        for row in range(mask.shape[0]):
            real = mask[row].nonzero().flatten()
            if len(real) >= 3:
                mask[row, real[1]] = 0
    return [MaskedBatch(ids[i : i + 4], mask[i : i + 4]) for i in range(0, ids.shape[0], 4)]


@pytest.mark.parametrize("reducer", REDUCERS)
@pytest.mark.parametrize(("side", "holes"), [("right", False), ("left", False), ("right", True)])
def test_masked_counts_match_the_masked_brute_force(reducer: str, side: str, holes: bool) -> None:
    model = opt_model(vocab=len(make_tokenizer()))
    batches = _batches(side, holes)
    assert sum(int((b.attention_mask.sum(dim=1) == 0).sum()) for b in batches) == 2
    assert (real_blocks(batches[0].attention_mask) is None) == holes
    report = scan(model, batches, reducer=reducer)
    # 8 rows, 2 of them all padding -> 6 samples
    assert report.probe.samples == len(TEXTS) == 6
    oracle = masked_brute_force(model, ((b.input_ids, b.attention_mask) for b in batches))
    for site in report.sites:
        positive, fired, high, positions, samples = oracle[site.module_path]
        assert (site.counters.samples, site.counters.positions) == (samples, positions)
        assert samples == 6
        assert list(site.counters.positive) == positive
        assert list(site.counters.samples_fired) == fired
        assert site.counters.max_preactivation == pytest.approx(high, rel=1e-5, abs=1e-5)
    assert set(range(4)) <= set(report.sites[0].dead_units)


def test_simulations_sub_probe_counts_rows_with_real_tokens() -> None:
    from relu_doctor.engine.batches import batch_samples
    from relu_doctor.whatif import SubProbe

    ids = torch.arange(12).reshape(4, 3)
    mask = torch.tensor([[1, 1, 0], [0, 0, 0], [1, 0, 0], [1, 1, 1]])  # row 1 is all padding: 3 samples
    head = SubProbe(2)
    head.keep(MaskedBatch(ids, mask))
    (kept,) = head.batches
    # 2 samples are rows 0 and 2, so rows 0..2 are kept (the empty row 1 between them counts for nothing)
    assert head.samples == batch_samples(kept) == 2 and kept.input_ids.shape[0] == 3
