"""Cost of scanning a 125M-parameter relu decoder (OPT-125m dims, random weights, built locally) vs its forward.

``python bench/bench_hf.py [--texts 64] [--tokens 128] [--batch-size 16] [--reps 1] [--device cpu]``: builds
OPTForCausalLM from an OPTConfig with OPT-125m's sizes (no download), makes ``--texts`` token sequences of
``--tokens`` tokens (the last quarter of every other sequence padded, so the masked path is the one measured),
then, ``--reps`` times and interleaved in one process, times the plain forward over the batches and
``relu_doctor.scan`` over the same batches with each reducer (torch, and fused when numba is installed), and
prints the median of each and its ratio to the forward's median. Not run by the tests (needs transformers and
minutes of CPU).

``python bench/bench_hf.py --reducer-calls [--reps 7]``: the reducers alone on one OPT-125m feed-forward call,
(16, 128, 3072) float32 with the same padding, interleaved in one process: unmasked, masked through blocks of
real tokens (the fast path), and masked through the exact path (a mask with one hole: what every masked batch
took before the fast path), each as a ratio to the relu op itself. Needs no transformers and takes seconds.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from relu_doctor.activations import member_for_op
from relu_doctor.api import scan
from relu_doctor.engine.batches import MaskedBatch
from relu_doctor.engine.counters import UnitAccumulator
from relu_doctor.engine.reduce import fused, make_reducer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--texts", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--reducer-calls", action="store_true", help="time the reducers alone on one call")
    args = parser.parse_args()
    if args.reducer_calls:
        reducer_calls(args.reps)
        return
    from transformers import OPTConfig, OPTForCausalLM

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

    def forward() -> None:
        with torch.inference_mode():
            for batch in batches:
                model(batch.input_ids, attention_mask=batch.attention_mask)

    reducers = ["torch"] + (["fused"] if fused.available() else [])
    runs: dict[str, Callable[[], object]] = {"plain forward": forward}
    runs.update({f"scan, {name} reducer": (lambda name=name: scan(model, batches, reducer=name)) for name in reducers})
    with torch.inference_mode():  # warm-up (and numba's kernels compiled or loaded from its cache, below)
        model(batches[0].input_ids, attention_mask=batches[0].attention_mask)
    if "fused" in reducers:
        scan(model, batches[:1], reducer="fused")
    times: dict[str, list[float]] = {name: [] for name in runs}
    outcome: object = None
    for _ in range(args.reps):
        for name, run in runs.items():
            sync()
            start = time.perf_counter()
            result = run()
            sync()
            times[name].append(time.perf_counter() - start)
            outcome = result if result is not None else outcome
    real = int(mask.sum())
    print(
        f"model: OPTForCausalLM, {params / 1e6:.1f}M parameters, relu FFN, device {args.device}, "
        f"{torch.get_num_threads()} threads"
    )
    print(
        f"probe: {args.texts} texts x {args.tokens} tokens ({real} real, {mask.numel() - real} padded), "
        f"batch {args.batch_size}; median of {args.reps} interleaved repeats"
    )
    base = statistics.median(times["plain forward"])
    for name, seconds in times.items():
        print(f"{name}: {statistics.median(seconds):.2f} s ({statistics.median(seconds) / base:.2f}x the forward)")
    report = outcome
    print(f"{len(report.sites)} sites, {report.summary.dead} dead units, {report.probe.samples} samples")  # type: ignore[attr-defined]


def reducer_calls(reps: int) -> None:
    """Each reducer on one masked and unmasked (16, 128, 3072) call, interleaved; medians and ratios to the relu."""
    torch.manual_seed(0)
    pre = torch.randn(16, 128, 3072)
    mask = torch.ones(16, 128, dtype=torch.bool)
    mask[::2, 128 * 3 // 4 :] = False
    holed = mask.clone()
    holed[0, 1] = False  # one hole: the exact masked path
    relu = member_for_op("relu")

    def call(name: str, call_mask: torch.Tensor | None) -> Callable[[], object]:
        reducer = make_reducer(name)
        counters = UnitAccumulator(pre.shape[2], torch.device("cpu"))

        def once() -> None:
            reducer.start_pass()
            token = reducer.before_op(counters, pre, 2, 0, relu, call_mask)
            reducer.after_op(token, torch.relu(pre))
            reducer.end_pass()

        return once

    cases: dict[str, Callable[[], object]] = {"relu op alone": lambda: torch.relu(pre)}
    for name in ["torch"] + (["fused"] if fused.available() else []):
        cases[f"{name}: unmasked"] = call(name, None)
        cases[f"{name}: masked, blocks of real tokens"] = call(name, mask)
        cases[f"{name}: masked, exact path"] = call(name, holed)
    for case in cases.values():
        case()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(reps):
        for name, case in cases.items():
            start = time.perf_counter()
            case()
            times[name].append(time.perf_counter() - start)
    print(
        f"one call of (16, 128, 3072) float32, {int(mask.sum())} real tokens of {mask.numel()}, "
        f"{torch.get_num_threads()} threads, median of {reps} interleaved repeats"
    )
    base = statistics.median(times["relu op alone"])
    for name, seconds in times.items():
        median = statistics.median(seconds)
        print(f"{name}: {median * 1e3:.1f} ms ({median / base:.2f}x the relu op)")


if __name__ == "__main__":
    main()
