"""Make a tiny relu language model folder (OPT-style, random weights, its own word-level tokenizer) and scan it
with a text probe, all offline: ``python samples/hf_tiny_lm.py [FOLDER]`` (needs ``relu-doctor[hf]``).

The folder is what ``save_pretrained`` writes (config.json, model.safetensors, tokenizer.json), so the scan is
the one a user runs on a downloaded model: ``relu-doctor scan FOLDER --probe FOLDER/texts.txt``.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import OPTConfig, OPTForCausalLM, PreTrainedTokenizerFast

TEXTS = [
    "the cat sat on the mat",
    "a dog ran in the park",
    "relu units that never fire are dead",
    "padding must not make a unit look alive",
    "the model reads one text per line",
    "short",
]


def make(folder: Path) -> Path:
    """Write the model, its tokenizer and texts.txt into ``folder``; returns the probe path."""
    words = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    words.train_from_iterator(TEXTS, trainers.WordLevelTrainer(special_tokens=["[PAD]", "[UNK]", "</s>"]))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=words, pad_token="[PAD]", unk_token="[UNK]", eos_token="</s>")
    torch.manual_seed(0)
    config = OPTConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=4,
        ffn_dim=128,
        num_attention_heads=4,
        max_position_embeddings=128,
        word_embed_proj_dim=32,
        activation_function="relu",
        pad_token_id=0,
    )
    model = OPTForCausalLM(config)
    with torch.no_grad():  # a few dead feed-forward units in the first layer, as relu LMs have
        model.model.decoder.layers[0].fc1.bias[:16] = -50.0
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    probe = folder / "texts.txt"
    probe.write_text("\n".join(TEXTS) + "\n")
    return probe


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp()) / "tiny-relu-lm"
    texts = make(target)
    command = [sys.executable, "-m", "relu_doctor", "scan", str(target), "--probe", str(texts), "--no-simulate"]
    print("$", " ".join(command[1:]), flush=True)
    sys.exit(subprocess.call(command))
