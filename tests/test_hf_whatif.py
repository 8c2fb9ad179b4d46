"""The fix simulations and output drift mask padding too (issue 17): a padded position neither revives nor kills
a unit in a prediction, nor moves the drift, so the same texts padded to different lengths predict the same."""

from __future__ import annotations

import copy
from dataclasses import asdict

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from _hf_models import TEXTS, make_tokenizer, opt_model  # noqa: E402

from relu_doctor.engine.batches import MaskedBatch  # noqa: E402
from relu_doctor.repair.drift import drift_between  # noqa: E402
from relu_doctor.whatif import scan  # noqa: E402

PADDINGS = ((1, None), (2, None), (6, None), (3, 40), (6, 24))
"""(texts per batch, pad every text to this many tokens or None: to the batch's longest)."""


def _batches(tokenizer: object, size: int, pad_to: int | None) -> list[MaskedBatch]:
    out = []
    for start in range(0, len(TEXTS), size):
        padding = "max_length" if pad_to else True
        enc = tokenizer(TEXTS[start : start + size], padding=padding, max_length=pad_to, return_tensors="pt")  # type: ignore[operator]
        out.append(MaskedBatch(enc["input_ids"], enc["attention_mask"]))
    return out


@pytest.fixture(scope="module")
def model_and_tokenizer() -> tuple[torch.nn.Module, object]:
    tokenizer = make_tokenizer()
    model = opt_model(vocab=len(tokenizer))
    with torch.no_grad():  # the pad token's embedding drives units 4..7 of layer 0 hard: padding would revive them
        model.model.decoder.embed_tokens.weight[0] = 50.0 * model.model.decoder.layers[0].fc1.weight[4:8].sum(0)
    return model, tokenizer


def test_predictions_do_not_depend_on_padding(model_and_tokenizer: tuple[torch.nn.Module, object]) -> None:
    model, tokenizer = model_and_tokenizer
    predictions = []
    for size, pad_to in PADDINGS:
        report = scan(model, _batches(tokenizer, size, pad_to), simulate=True, simulate_budget=None)
        predicted = {(f.code, f.site, p.fix, p.scope): asdict(p) for f in report.findings for p in f.predicted}
        assert predicted, "the planted dead units must get predictions"
        predictions.append(predicted)
    assert any(b.attention_mask.min() == 0 for b in _batches(tokenizer, 6, 24))  # padding really happened
    first = predictions[0]
    for other in predictions[1:]:
        assert other.keys() == first.keys()
        for key, numbers in first.items():
            assert other[key].keys() == numbers.keys()
            for name, value in numbers.items():
                if isinstance(value, float):
                    assert other[key][name] == pytest.approx(value, rel=1e-5, abs=1e-9), (key, name)
                else:
                    assert other[key][name] == value, (key, name)


def test_drift_leaves_padded_positions_out(model_and_tokenizer: tuple[torch.nn.Module, object]) -> None:
    model, tokenizer = model_and_tokenizer
    changed = copy.deepcopy(model)
    with torch.no_grad():
        # not a constant shift: the final LayerNorm would take it out again
        changed.model.decoder.layers[1].fc2.bias += 0.5 * torch.linspace(-1, 1, 16)
    drifts = [drift_between(model, changed, _batches(tokenizer, size, pad)).relative_l2 for size, pad in PADDINGS]
    assert drifts[0] > 1e-3
    assert drifts == pytest.approx([drifts[0]] * len(drifts), rel=1e-6)
