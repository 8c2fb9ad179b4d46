"""Cost of scanning a 125M-parameter relu decoder (OPT-125m dims, random weights, built locally) vs its forward.

``python bench/bench_hf.py [--texts 64] [--tokens 128] [--batch-size 16] [--device cpu]``: builds OPTForCausalLM
from an OPTConfig with OPT-125m's sizes (no download), makes ``--texts`` token sequences of ``--tokens`` tokens
(the last quarter of every other sequence padded, so the mask path is the one measured), then times, in one
run, the plain forward over the batches and ``relu_doctor.scan`` over the same batches, and prints both.
Not run by the tests (needs transformers and minutes of CPU).
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers import OPTConfig, OPTForCausalLM

from relu_doctor.api import scan
from relu_doctor.engine.batches import MaskedBatch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--texts", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.manual_seed(0)
    config = OPTConfig(
        vocab_size=50272,
        hidden_size=768,
        num_hidden_layers=12,
        ffn_dim=3072,
        num_attention_heads=12,
        max_position_embeddings=2048,
        word_embed_proj_dim=768,
        activation_function="relu",
        pad_token_id=1,
    )
    model = OPTForCausalLM(config).eval().to(args.device)
    params = sum(p.numel() for p in model.parameters())
    ids = torch.randint(2, config.vocab_size, (args.texts, args.tokens))
    mask = torch.ones_like(ids)
    mask[::2, args.tokens * 3 // 4 :] = 0
    ids[mask == 0] = config.pad_token_id
    batches = [
        MaskedBatch(ids[i : i + args.batch_size].to(args.device), mask[i : i + args.batch_size].to(args.device))
        for i in range(0, args.texts, args.batch_size)
    ]

    def sync() -> None:
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    with torch.inference_mode():  # warm-up
        model(batches[0].input_ids, attention_mask=batches[0].attention_mask)
    sync()
    start = time.perf_counter()
    with torch.inference_mode():
        for batch in batches:
            model(batch.input_ids, attention_mask=batch.attention_mask)
    sync()
    forward = time.perf_counter() - start
    start = time.perf_counter()
    report = scan(model, batches, reducer="torch")
    sync()
    scanned = time.perf_counter() - start
    real = int(mask.sum())
    print(
        f"model: OPTForCausalLM, {params / 1e6:.1f}M parameters, relu FFN, device {args.device}, "
        f"{torch.get_num_threads()} threads"
    )
    print(
        f"probe: {args.texts} texts x {args.tokens} tokens ({real} real, {mask.numel() - real} padded), "
        f"batch {args.batch_size}"
    )
    print(f"plain forward: {forward:.2f} s")
    print(
        f"relu-doctor scan: {scanned:.2f} s ({scanned / forward:.2f}x the forward), {len(report.sites)} sites, "
        f"{report.summary.dead} dead units"
    )


if __name__ == "__main__":
    main()
