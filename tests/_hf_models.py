"""Tiny Hugging Face models for the issue-17 tests, built from configs (no download), and a brute-force oracle
that runs each sequence alone: no padding exists there, so it is what a scan that masks padding must match."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
import transformers

TEXTS = [
    "the cat sat on the mat",
    "a dog ran",
    "hello world this is a longer line of text for the probe",
    "x",
    "the dog sat",
    "on the mat a cat ran",
]


def make_tokenizer() -> transformers.PreTrainedTokenizerFast:
    """A word-level tokenizer trained on TEXTS ([PAD] is id 0)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    words = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    words.train_from_iterator(TEXTS, trainers.WordLevelTrainer(special_tokens=["[PAD]", "[UNK]", "</s>"]))
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=words, pad_token="[PAD]", unk_token="[UNK]", eos_token="</s>"
    )


def opt_model(layers: int = 2, dead: int = 4, vocab: int = 64) -> transformers.OPTForCausalLM:
    """A tiny OPT-style relu decoder; ``dead`` units of layer 0 are killed by a bias of -100."""
    torch.manual_seed(0)
    config = transformers.OPTConfig(
        vocab_size=vocab,
        hidden_size=16,
        num_hidden_layers=layers,
        ffn_dim=32,
        num_attention_heads=2,
        max_position_embeddings=64,
        word_embed_proj_dim=16,
        activation_function="relu",
        pad_token_id=0,
    )
    model = transformers.OPTForCausalLM(config)
    with torch.no_grad():
        model.model.decoder.layers[0].fc1.bias[:dead] = -100.0
    return model.eval()


def opt_folder(root: Path, *, shard: bool = False, layers: int = 2, name: str | None = None) -> Path:
    """``opt_model`` saved with ``save_pretrained`` (safetensors, sharded when asked) and its tokenizer."""
    tokenizer = make_tokenizer()
    model = opt_model(layers, vocab=len(tokenizer))
    folder = root / (name or ("opt-sharded" if shard else "opt"))
    model.save_pretrained(folder, max_shard_size="20KB" if shard else "5GB")
    tokenizer.save_pretrained(folder)
    return folder


def texts_file(root: Path, texts: Iterable[str] = TEXTS) -> Path:
    path = root / "texts.txt"
    path.write_text("\n".join(texts) + "\n")
    return path


Oracle = dict[str, tuple[list[int], list[int], list[float], int, int]]
"""Per relu module: (positive positions, samples fired, max pre-activation, positions, samples) per unit."""


def brute_force(model: torch.nn.Module, sequences: Iterable[torch.Tensor]) -> Oracle:
    """Counts from each sequence of real token ids run alone (1, T), unit by unit in Python loops."""
    found: Oracle = {}
    pres: dict[str, torch.Tensor] = {}
    handles = [
        module.register_forward_pre_hook(lambda m, args, name=name: pres.__setitem__(name, args[0].detach().clone()))
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.ReLU)
    ]
    try:
        for ids in sequences:
            with torch.no_grad():
                model(ids.reshape(1, -1))
            for name, pre in pres.items():
                pre = pre.reshape(-1, pre.shape[-1])
                units = pre.shape[1]
                positive, fired, high, positions, samples = found.get(
                    name, ([0] * units, [0] * units, [-1e30] * units, 0, 0)
                )
                for unit in range(units):
                    column = pre[:, unit]
                    positive[unit] += int((column > 0).sum())
                    fired[unit] += int(bool((column > 0).any()))
                    high[unit] = max(high[unit], float(column.max()))
                found[name] = (positive, fired, high, positions + pre.shape[0], samples + 1)
    finally:
        for handle in handles:
            handle.remove()
    return found


def masked_brute_force(model: torch.nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> Oracle:
    """Counts from padded batches run as they are, each unit read at real tokens only (mask 1), in Python loops;
    a row without a real token adds nothing, not even a sample. For masks with holes, which no unpadded run
    reproduces."""
    found: Oracle = {}
    pres: dict[str, torch.Tensor] = {}
    handles = [
        module.register_forward_pre_hook(lambda m, args, name=name: pres.__setitem__(name, args[0].detach().clone()))
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.ReLU)
    ]
    try:
        for ids, mask in batches:
            with torch.no_grad():
                model(ids, attention_mask=mask)
            for name, pre in pres.items():
                pre = pre.reshape(ids.shape[0], ids.shape[1], -1)
                units = pre.shape[2]
                positive, fired, high, positions, samples = found.get(
                    name, ([0] * units, [0] * units, [-1e30] * units, 0, 0)
                )
                for row in range(ids.shape[0]):
                    real = [t for t in range(ids.shape[1]) if mask[row, t]]
                    if not real:
                        continue
                    samples += 1
                    positions += len(real)
                    for unit in range(units):
                        values = [float(pre[row, t, unit]) for t in real]
                        positive[unit] += sum(v > 0 for v in values)
                        fired[unit] += int(any(v > 0 for v in values))
                        high[unit] = max(high[unit], *values)
                found[name] = (positive, fired, high, positions, samples)
    finally:
        for handle in handles:
            handle.remove()
    return found
