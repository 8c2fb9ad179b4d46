"""Hugging Face folders (issue 17): built from config.json with transformers, weights through the safe loaders,
text probes with padding masked out of every counter, checked against a per-text brute force with no padding."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from _hf_models import TEXTS, brute_force, opt_folder  # noqa: E402
from _hf_models import make_tokenizer as _tokenizer  # noqa: E402
from _hf_models import texts_file as _texts  # noqa: E402

from relu_doctor.api import scan  # noqa: E402
from relu_doctor.engine.batches import MaskedBatch  # noqa: E402
from relu_doctor.loading import load_model  # noqa: E402
from relu_doctor.workflow.scan import ScanRequest, run_scan  # noqa: E402


def _opt_folder(root: Path, *, shard: bool = False) -> Path:
    return opt_folder(root, shard=shard)


def test_opt_folder_scans_without_arch_and_matches_unpadded_brute_force(tmp_path: Path) -> None:
    folder = _opt_folder(tmp_path)
    report = run_scan(ScanRequest(str(folder), probe_path=str(_texts(tmp_path)), batch_size=4, device="cpu"))
    names = [site.name for site in report.sites]
    assert names == ["model.decoder.layers.0.activation_fn", "model.decoder.layers.1.activation_fn"]
    assert report.probe.samples == len(TEXTS)
    model = load_model(folder).model
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    oracle = brute_force(model, (tokenizer(text, return_tensors="pt")["input_ids"] for text in TEXTS))
    for site in report.sites:
        positive, fired, high, _, _ = oracle[site.module_path]
        assert list(site.counters.positive) == positive
        assert list(site.counters.samples_fired) == fired
        assert site.counters.samples == len(TEXTS)
        assert site.counters.max_preactivation == pytest.approx(high, rel=1e-5, abs=1e-5)
    assert set(range(4)) <= set(report.sites[0].dead_units)
    assert any("transformers" in note for note in report.model.notes)


def test_padding_length_and_batch_size_do_not_change_any_counter(tmp_path: Path) -> None:
    folder = _opt_folder(tmp_path)
    model = load_model(folder).model
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)

    def batches(size: int, pad_to: int | None) -> list[MaskedBatch]:
        out = []
        for start in range(0, len(TEXTS), size):
            padding = "max_length" if pad_to else True
            enc = tokenizer(TEXTS[start : start + size], padding=padding, max_length=pad_to, return_tensors="pt")
            out.append(MaskedBatch(enc["input_ids"], enc["attention_mask"]))
        return out

    reports = [scan(model, batches(size, pad)) for size, pad in ((1, None), (2, None), (6, None), (3, 40), (6, 24))]
    first = reports[0]
    assert any(batch.attention_mask.min() == 0 for batch in batches(6, 24))  # padding really happened
    for other in reports[1:]:
        for a, b in zip(first.sites, other.sites, strict=True):
            assert a.counters.positive == b.counters.positive
            assert a.counters.samples_fired == b.counters.samples_fired
            assert a.counters.positions == b.counters.positions
            assert a.counters.max_preactivation == pytest.approx(b.counters.max_preactivation, abs=1e-5)
            assert a.counters.activation_sum == pytest.approx(b.counters.activation_sum, rel=1e-4, abs=1e-4)
            assert (a.dead_units, a.dormant_units, a.sparsity) == (
                b.dead_units,
                b.dormant_units,
                pytest.approx(b.sparsity),
            )


def test_sharded_folder_and_token_id_probe_with_mask(tmp_path: Path) -> None:
    import numpy as np

    folder = _opt_folder(tmp_path, shard=True)
    assert (folder / "model.safetensors.index.json").is_file()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    enc = tokenizer(TEXTS, padding="max_length", max_length=20, return_tensors="np")
    np.save(tmp_path / "ids.npy", enc["input_ids"].astype(np.int64))
    np.save(tmp_path / "mask.npy", enc["attention_mask"].astype(np.int64))
    by_ids = run_scan(
        ScanRequest(
            str(folder), probe_path=str(tmp_path / "ids.npy"), probe_mask=str(tmp_path / "mask.npy"), device="cpu"
        )
    )
    by_text = run_scan(ScanRequest(str(folder), probe_path=str(_texts(tmp_path)), device="cpu"))
    for a, b in zip(by_ids.sites, by_text.sites, strict=True):
        assert a.counters.positive == b.counters.positive
        assert a.counters.samples_fired == b.counters.samples_fired


def test_gelu_encoder_is_reported_honestly(tmp_path: Path) -> None:
    tokenizer = _tokenizer()
    config = transformers.BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
        hidden_act="gelu",
    )
    folder = tmp_path / "bert"
    transformers.BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    report = run_scan(ScanRequest(str(folder), probe_path=str(_texts(tmp_path)), device="cpu"))
    assert report.sites == ()
    assert "gelu" in dict(report.other_activations)


def test_cli_without_tokenizer_and_bad_jsonl_are_one_line_exit_2(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from relu_doctor.cli import app

    folder = _opt_folder(tmp_path)
    (folder / "tokenizer.json").unlink()
    (folder / "tokenizer_config.json").unlink()
    result = CliRunner().invoke(app, ["scan", str(folder), "--probe", str(_texts(tmp_path))])
    assert result.exit_code == 2 and "tokenizer" in result.output and "Traceback" not in result.output
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"txt": "no field"}) + "\n")
    result = CliRunner().invoke(app, ["scan", str(folder), "--probe", str(bad), "--tokenizer", str(folder)])
    assert result.exit_code == 2 and "text" in result.output


def test_without_transformers_one_line_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from relu_doctor.cli import app

    folder = _opt_folder(tmp_path)
    monkeypatch.setitem(__import__("sys").modules, "transformers", None)
    result = CliRunner().invoke(app, ["scan", str(folder), "--probe", str(_texts(tmp_path))])
    assert result.exit_code == 2
    assert "relu-doctor[hf]" in result.output and len(result.output.strip().splitlines()) == 1
