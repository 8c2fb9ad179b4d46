"""Scan time vs a plain ``torch.inference_mode()`` forward of the same probe, measured side by side.

Ratios per model, all medians over rounds run in one process, the order of the runs rotated each round, so
machine noise hits every run alike (on a shared machine only the ratios mean anything):

- per batch: one observed forward pass (``ReluObserver.run`` in an open observer: after the first pass, the
  replay passes of ``engine/replay.py`` and the per-unit reduction) vs one plain forward of the same batch -- the
  cost that grows with the probe -- once with each reducer (``torch``, and ``fused`` when numba is installed);
- whole scan: ``relu_doctor.scan`` of the probe (observer set-up, the first pass under the dispatch mode, every
  replay, report, diagnosis and causes; default ``auto`` reducer; no simulations) vs plain forwards of it.

A model with an ``nn.TransformerEncoderLayer`` runs a fused kernel in a plain eval forward; the scan turns that fast
path off to see its relus. For such a model the plain forward is timed both ways: ``fast path off`` is the cost of
seeing the relus at all (the same for any observer), and the observation ratios are against the forward without
the fast path, the one the scan runs.

``--compare-replay`` adds, per reducer, the same observation with every replay pass under the torch-function
mode (``<reducer>/mode``), the way replays ran before they found the relus at the relu family's entry points;
both observers run in the same rounds.

Usage: ``python bench/bench_speed.py [--reps 7] [--batches 4] [--threads N] [--only cnn] [--compare-replay]``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_models import ReluTransformer, ResNet18Like, deep_mlp, mlp, relu_encoder, seeded  # noqa: E402

from relu_doctor import scan  # noqa: E402
from relu_doctor.engine import replay  # noqa: E402
from relu_doctor.engine.observe import ReluObserver  # noqa: E402
from relu_doctor.engine.reduce import fused  # noqa: E402

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
        "mlp200 (200x256 Linear-ReLU, 512 = 8x64)": (
            seeded(deep_mlp),
            [torch.randn(64, 256, generator=gen) for _ in range(8)],
        ),
        "encoder (nn.TransformerEncoder relu, 1024x20x32 = 16x64)": (
            seeded(relu_encoder),
            [torch.randn(64, 20, 32, generator=gen) for _ in range(16)],
        ),
    }


CLOCKS = {"cpu": time.process_time, "wall": time.perf_counter}
"""cpu: this process's CPU seconds, which other jobs on a shared machine barely disturb (use with 1 thread)."""
clock = CLOCKS["cpu"]


def seconds(run: Callable[[], object]) -> float:
    start = clock()
    run()
    return clock() - start


def rounds(runs: dict[str, Callable[[], object]], reps: int) -> dict[str, list[float]]:
    """Seconds of every run in each of ``reps`` rounds; each round starts with a different run."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    names = list(runs)
    for i in range(reps):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            times[name].append(seconds(runs[name]))
    return times


def ratio(times: dict[str, list[float]], run: str, base: str) -> float:
    """Median over rounds of run / base (each round's pair measured back to back)."""
    return statistics.median(a / b for a, b in zip(times[run], times[base]))


@contextlib.contextmanager
def fast_path(enabled: bool) -> Iterator[None]:
    mha = torch.backends.mha
    previous = mha.get_fastpath_enabled()
    mha.set_fastpath_enabled(enabled)
    try:
        yield
    finally:
        mha.set_fastpath_enabled(previous)


def has_fast_path(model: nn.Module) -> bool:
    return any(isinstance(m, nn.TransformerEncoderLayer) for m in model.modules())


def plain_forward(model: nn.Module, probe: Probe, fast: bool = True) -> Callable[[], object]:
    def run() -> None:
        with torch.inference_mode(), fast_path(fast):
            for batch in probe:
                model(batch)

    return run


@contextlib.contextmanager
def replay_way(entry_points: bool) -> Iterator[None]:
    previous = replay.USE_ENTRY_POINTS
    replay.USE_ENTRY_POINTS = entry_points
    try:
        yield
    finally:
        replay.USE_ENTRY_POINTS = previous


def per_batch(
    model: nn.Module, probe: Probe, reps: int, reducers: list[str], compare: bool = False
) -> dict[str, float]:
    """Observed vs plain forward over the probe's batches, inside observers opened once (one per reducer).

    The plain passes run on a copy of the model, so nothing the observer installs (hooks, eval mode) touches them.
    """
    twin = copy.deepcopy(model).eval()
    runs: dict[str, Callable[[], object]] = {"plain": plain_forward(twin, probe)}
    if has_fast_path(model):
        runs["plain, fast path off"] = plain_forward(twin, probe, fast=False)
    columns = [(r, True) for r in reducers] + ([(r, False) for r in reducers] if compare else [])
    with contextlib.ExitStack() as stack:
        for reducer, entry_points in columns:
            # each observer on its own copy: an observer's replays leave hooks on the model's modules
            observer = stack.enter_context(ReluObserver(copy.deepcopy(model), reducer=reducer))
            with replay_way(entry_points):
                for batch in probe:  # the first pass (dispatch mode), then warm replays
                    observer.run(batch)

            def observed(observer: ReluObserver = observer, entry_points: bool = entry_points) -> None:
                with replay_way(entry_points):
                    for batch in probe:
                        observer.run(batch)

            runs[reducer if entry_points else f"{reducer}/mode"] = observed
        times = rounds(runs, reps)
    base = "plain, fast path off" if "plain, fast path off" in runs else "plain"
    result = {"plain s": statistics.median(times["plain"])}
    if base != "plain":
        result["fast path off"] = ratio(times, base, "plain")
    result.update({name: ratio(times, name, base) for name in runs if name not in ("plain", base)})
    return result


def whole_scan(model: nn.Module, probe: Probe, reps: int) -> dict[str, float]:
    """relu_doctor.scan of the whole probe (default options, no simulations) vs plain forwards of it."""
    runs: dict[str, Callable[[], object]] = {"plain": plain_forward(model, probe)}
    if has_fast_path(model):
        runs["plain, fast path off"] = plain_forward(model, probe, fast=False)
    runs["scan"] = lambda: scan(model, probe)
    scan(model, probe)
    times = rounds(runs, reps)
    base = "plain, fast path off" if "plain, fast path off" in runs else "plain"
    return {"scan": ratio(times, "scan", base)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=7, help="rounds per model (per batch and whole scan)")
    parser.add_argument("--batches", type=int, default=4, help="batches of the first three models")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="cpu", help="cpu (default) or wall seconds")
    parser.add_argument("--only", default="", help="run only the models whose name contains this")
    parser.add_argument(
        "--compare-replay", action="store_true", help="also observe with replays under the torch-function mode"
    )
    args = parser.parse_args()
    global clock
    clock = CLOCKS[args.clock]
    if args.threads:
        torch.set_num_threads(args.threads)
    reducers = ["torch", "fused"] if fused.available() else ["torch"]
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.clock} clock, {args.reps} rounds, "
        f"reducers: {', '.join(reducers)}"
    )
    modes = [f"{r}/mode" for r in reducers] if args.compare_replay else []
    columns = ["fast path off", *reducers, *modes, "scan"]
    print(f"{'model':58} {'plain':>8} " + " ".join(f"{c:>13}" for c in columns))
    for name, (model, probe) in workloads(args.batches).items():
        if args.only not in name:
            continue
        observed = per_batch(model, probe, args.reps, reducers, args.compare_replay)
        cells = {**observed, **whole_scan(model, probe, max(3, args.reps // 2))}
        shown = " ".join(f"{cells[c]:12.3f}x" if c in cells else f"{'':>13}" for c in columns)
        print(f"{name:58} {cells['plain s']:7.3f}s {shown}", flush=True)
    print(
        "plain: seconds of a plain forward over the probe. Ratios (medians over rounds): fast path off = plain "
        "forward without the TransformerEncoderLayer fast path / with it (the cost of seeing the relus at all); "
        "torch, fused = observation over the probe's batches in an open observer / plain forward (without the fast "
        "path where there is one); <reducer>/mode = the same with replays under the torch-function mode; scan = relu_doctor.scan (first pass, replays, report) / the same plain forward."
    )


if __name__ == "__main__":
    main()
