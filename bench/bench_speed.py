"""Scan time vs a plain ``torch.inference_mode()`` forward of the same probe, measured side by side.

Two ratios per model, both medians of pairs run back to back in one process (order alternated each pair, so
machine noise hits both alike):

- per batch: one observed forward pass (``ReluObserver.run``: dispatch, provenance, per-unit reduction)
  vs one plain forward of the same batch -- the cost that grows with the probe -- once with each reducer
  (``torch``, and ``fused`` when numba is installed), so the two are compared in the same run;
- whole scan: ``relu_doctor.scan`` of the probe (observer set-up, every batch, report, diagnosis; default
  ``auto`` reducer) vs plain forwards of the same batches.

Usage: ``python bench/bench_speed.py [--reps 7] [--batches 4] [--threads N] [--only cnn]``.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_models import ReluTransformer, ResNet18Like, mlp, seeded  # noqa: E402

from relu_doctor import scan  # noqa: E402
from relu_doctor.engine.observe import ReluObserver  # noqa: E402
from relu_doctor.engine.reduce import fused

Probe = list[torch.Tensor]


def workloads(batches: int) -> dict[str, tuple[nn.Module, Probe]]:
    """name -> (model, probe batches); the probes are made once, outside the timed region."""
    gen = torch.Generator().manual_seed(0)
    return {
        "cnn (ResNet-18-like, 32x3x80x80)": (
            seeded(ResNet18Like),
            [torch.randn(32, 3, 80, 80, generator=gen) for _ in range(batches)],
        ),
        "transformer (4 blocks, relu FFN, 16x128 tokens)": (
            seeded(ReluTransformer),
            [torch.randint(0, 1000, (16, 128), generator=gen) for _ in range(batches)],
        ),
        "mlp (4x1024, batch 256x512)": (seeded(mlp), [torch.randn(256, 512, generator=gen) for _ in range(batches)]),
    }


CLOCKS = {"cpu": time.process_time, "wall": time.perf_counter}
"""cpu: this process's CPU seconds, which other jobs on a shared machine barely disturb (use with 1 thread)."""
clock = CLOCKS["cpu"]


def seconds(run: Callable[[], object]) -> float:
    start = clock()
    run()
    return clock() - start


def paired(first: Callable[[], object], second: Callable[[], object], pairs: int) -> tuple[float, float, float]:
    """(median s of first, median s of second, median of second/first), alternating which runs first."""
    a, b = [], []
    for i in range(pairs):
        if i % 2 == 0:
            a.append(seconds(first))
            b.append(seconds(second))
        else:
            b.append(seconds(second))
            a.append(seconds(first))
    return statistics.median(a), statistics.median(b), statistics.median(y / x for x, y in zip(a, b))


def plain_forward(model: nn.Module, batch: torch.Tensor) -> Callable[[], object]:
    def run() -> object:
        with torch.inference_mode():
            return model(batch)

    return run


def per_batch(model: nn.Module, probe: Probe, reps: int, reducer: str) -> tuple[float, float, float]:
    """Observed vs plain forward, batch by batch, inside one open observer.

    The plain passes run on a copy of the model, so nothing the observer installs (hooks, eval mode) touches them.
    """
    results = []
    twin = copy.deepcopy(model).eval()
    with ReluObserver(model, reducer=reducer) as observer:
        for batch in probe:  # warm-up: allocator, oneDNN primitives, the observer's first-batch work
            plain_forward(twin, batch)()
            observer.run(batch)
        for batch in probe:
            results.append(paired(plain_forward(twin, batch), lambda b=batch: observer.run(b), reps))
    return tuple(statistics.median(r[i] for r in results) for i in range(3))  # type: ignore[return-value]


def whole_scan(model: nn.Module, probe: Probe, reps: int) -> tuple[float, float, float]:
    """relu_doctor.scan of the whole probe vs plain forwards of it."""

    def plain() -> None:
        for batch in probe:
            plain_forward(model, batch)()

    scan(model, probe)
    return paired(plain, lambda: scan(model, probe), reps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=7, help="pairs per batch (per-batch) and per probe (whole scan)")
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="cpu", help="cpu (default) or wall seconds")
    parser.add_argument("--only", default="", help="run only the models whose name contains this")
    args = parser.parse_args()
    global clock
    clock = CLOCKS[args.clock]
    if args.threads:
        torch.set_num_threads(args.threads)
    reducers = ["torch", "fused"] if fused.available() else ["torch"]
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.clock} clock, {args.batches} batches, "
        f"{args.reps} pairs, reducers: {', '.join(reducers)}"
    )
    per = " ".join(f"{r + ' scan':>11} {'ratio':>7}" for r in reducers)
    print(f"{'model':48} {'plain/batch':>11} {per} | {'plain':>7} {'scan':>7} {'ratio':>7}")
    for name, (model, probe) in workloads(args.batches).items():
        if args.only not in name:
            continue
        cells = []
        for reducer in reducers:
            p, s, ratio = per_batch(model, probe, args.reps, reducer)
            cells.append(f"{s:10.4f}s {ratio:6.3f}x")
        wp, ws, wratio = whole_scan(model, probe, max(3, args.reps // 2))
        print(f"{name:48} {p:10.4f}s {' '.join(cells)} | {wp:6.3f}s {ws:6.3f}s {wratio:6.3f}x")
    print(
        "ratio = median over pairs of scan time / plain time (left: one batch, per reducer; right: whole scan "
        "with report, auto reducer)"
    )


if __name__ == "__main__":
    main()
