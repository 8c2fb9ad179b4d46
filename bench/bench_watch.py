"""The training watch's cost: training steps with ``relu_doctor.watch`` at every=1, 10, 100 against none.

Overhead (default): for each model, five copies train side by side in ONE process -- no watch (twice: the second,
"A/A", shows how far two identical copies differ, the noise floor), and a watch at ``every=1``, ``every=10``,
``every=100`` (``window=10``) -- one step of each copy in turn (order rotated every
step, so machine noise hits all four alike), in repeats of ``--block`` steps per copy (default 100, so ``every=100``
observes one step per repeat); each watch stays open across repeats, so windows close at their real rate (every
10, 100 and 1,000 steps). Printed: the median over repeats of (a copy's time / the unwatched copy's time), and, from the same steps timed one by one,
the median cost of a plain step, of an observed step, of a step the watch skips and of a window's close (report
build), next to a scan's observation pass of the same batch (``ReluObserver.run`` vs a plain
``torch.inference_mode()`` forward, as in ``bench_speed.py``). Times are this process's CPU seconds on one torch
thread by default (``--clock cpu``), which other jobs on a shared machine barely disturb.

Paired (``--paired``, instead of the above): the step extra measured on one model copy, so copy-to-copy noise
drops out: a watch at ``every=2``, each observed step against the skipped step right after it on the same copy
(median of the differences), and a scan's observation pass against a plain forward, once with the replay passes
finding the relus at the relu family's entry points (the default) and once under the torch-function mode they
used before, both ways in the same rounds.

Study (``--study``): the dying run of the README -- a small relu MLP trained by plain SGD at a too-high learning
rate -- with ``recycle_every`` against without, over seeds: dead units at the end and held-out accuracy, mean and
spread (see :mod:`watch_study`).

Every watch and every scan pass here use the same reducer, ``--reducer`` (default torch: what an install without
``[fast]`` gets; a watch's own default, auto, takes the fused one when numba is installed and a scan's may not).

Usage: ``python bench/bench_watch.py [--reps 3] [--block 100] [--only mlp] [--reducer torch|fused]`` or ``python bench/bench_watch.py
--study [--seeds 0 1 2]``.
"""

from __future__ import annotations

import argparse
import copy
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_models import ResNet18Like, mlp  # noqa: E402

import relu_doctor  # noqa: E402
from relu_doctor.engine import replay  # noqa: E402
from relu_doctor.engine.observe import ReluObserver  # noqa: E402
from relu_doctor.watching import Watch  # noqa: E402

CLOCKS = {"cpu": time.process_time, "wall": time.perf_counter}
REDUCER = ["torch"]
"""The reducer of every watch and every scan observer here (``--reducer``): the same one on both sides."""
EVERY = (1, 10, 100)
WINDOW = 10


@dataclass
class Workload:
    """A model and one training batch, reused for every step (the cost does not depend on the data)."""

    name: str
    build: Callable[[], nn.Module]
    inputs: torch.Tensor
    targets: torch.Tensor


def workloads() -> list[Workload]:
    gen = torch.Generator().manual_seed(0)
    return [
        Workload(
            "cnn (ResNet-18-like, 16x3x32x32)",
            lambda: ResNet18Like(classes=10),
            torch.randn(16, 3, 32, 32, generator=gen),
            torch.randint(0, 10, (16,), generator=gen),
        ),
        Workload(
            "mlp (4x1024, batch 256x512)",
            mlp,
            torch.randn(256, 512, generator=gen),
            torch.randint(0, 10, (256,), generator=gen),
        ),
    ]


@dataclass
class Runner:
    """One model copy training with (or without) a watch, its steps timed one by one."""

    label: str
    model: nn.Module
    optimizer: torch.optim.Optimizer
    watch: Watch | None
    blocks: list[float] = field(default_factory=list)
    steps: dict[str, list[float]] = field(default_factory=dict)

    def train_step(self, work: Workload, clock: Callable[[], float]) -> float:
        """One training step, timed; filed under plain, skipped (the watch does not observe it), observed, or
        closing (the observed step whose end closes a window and builds its report)."""
        kind = self._kind()
        windows = len(self.watch.history) if self.watch else 0
        start = clock()
        self.optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(self.model(work.inputs), work.targets).backward()
        self.optimizer.step()  # ends the watch's step (its post-step hook); a window may close here
        spent = clock() - start
        if self.watch is not None and len(self.watch.history) > windows:
            kind = "closing"
        self.steps.setdefault(kind, []).append(spent)
        return spent

    def _kind(self) -> str:
        if self.watch is None:
            return "plain"
        return "observed" if self.watch.observes_this_step else "skipped"


def runners(work: Workload) -> list[Runner]:
    torch.manual_seed(0)
    base = work.build().train()
    made = []
    for label, every in (("none", None), ("none (A/A)", None), *((f"every={e}", e) for e in EVERY)):
        model = copy.deepcopy(base)
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        watch = (
            None
            if every is None
            else relu_doctor.watch(model, every=every, window=WINDOW, optimizer=optimizer, reducer=REDUCER[0])
        )
        made.append(Runner(label, model, optimizer, watch))
    return made


def scan_pass(work: Workload, reps: int, clock: Callable[[], float]) -> tuple[float, float]:
    """(median plain inference forward, median scan observation pass) of the batch, paired and alternated."""
    torch.manual_seed(0)
    model = work.build().eval()
    twin = copy.deepcopy(model)
    plain, observed = [], []

    def forward() -> float:
        start = clock()
        with torch.inference_mode():
            twin(work.inputs)
        return clock() - start

    with ReluObserver(model, reducer=REDUCER[0]) as observer:
        observer.run(work.inputs)  # the first pass is the dispatch pass that finds the sites; later ones are hooked
        forward()
        for i in range(reps):  # alternate which runs first, so drift hits both alike
            if i % 2:
                plain.append(forward())
            start = clock()
            observer.run(work.inputs)
            observed.append(clock() - start)
            if not i % 2:
                plain.append(forward())
    return statistics.median(plain), statistics.median(observed)


def overhead(work: Workload, reps: int, block: int, warmup: int, clock: Callable[[], float]) -> None:
    made = runners(work)
    for runner in made:
        if runner.watch is not None:
            runner.watch.start()
        for _ in range(warmup):  # step 0 is observed by every watch: its first pass, the dispatch one
            runner.train_step(work, clock)
        runner.steps.clear()
    for _ in range(reps):
        spent = dict.fromkeys(range(len(made)), 0.0)
        for step in range(block):  # one step of each copy in turn, the order rotated every step
            for index in [(step + k) % len(made) for k in range(len(made))]:
                spent[index] += made[index].train_step(work, clock)
        for index, runner in enumerate(made):
            runner.blocks.append(spent[index])
    for runner in made:
        if runner.watch is not None:
            runner.watch.close()
    plain = made[0]
    print(
        f"\n{work.name}: {reps} repeats of {block} interleaved steps per copy (after {warmup} warm-up steps), window={WINDOW}"
    )
    print(f"  {'watch':12} {'block':>9} {'ratio':>8} {'overhead':>9}")
    for runner in made:
        ratio = statistics.median(b / p for b, p in zip(runner.blocks, plain.blocks))
        print(f"  {runner.label:12} {statistics.median(runner.blocks):8.3f}s {ratio:7.4f}x {100 * (ratio - 1):+8.2f}%")
    kinds: dict[str, list[float]] = {}
    for runner in made:
        for kind, times in runner.steps.items():
            kinds.setdefault(kind, []).extend(times)
    step = statistics.median(kinds["plain"])
    forward, scanned = scan_pass(work, max(5, reps * 2), clock)
    print("  one step (median):")
    for kind in ("plain", "skipped", "observed", "closing"):
        times = kinds.get(kind, [])
        if times:
            median = statistics.median(times)
            print(f"    {kind:9} {median * 1e3:9.2f} ms  {(median - step) * 1e3:+8.2f} ms extra  (n={len(times)})")
    print(
        f"    scan pass {scanned * 1e3:9.2f} ms  {(scanned - forward) * 1e3:+8.2f} ms extra over a plain "
        f"inference forward of {forward * 1e3:.2f} ms (ReluObserver.run, the scan's per-batch pass)"
    )


WAYS = {"entry points": True, "mode": False}


def paired(work: Workload, pairs: int, clock: Callable[[], float]) -> None:
    """Observed step minus the skipped step after it (same copy, watch every=2), and scan pass minus plain forward,
    for each replay way; the ways alternate within every round."""
    torch.manual_seed(0)
    base = work.build().train()
    steps: dict[str, Runner] = {}
    for way in WAYS:
        model = copy.deepcopy(base)
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        watch = relu_doctor.watch(model, every=2, window=WINDOW, optimizer=optimizer, reducer=REDUCER[0])
        steps[way] = Runner(way, model, optimizer, watch)
    plain_model = copy.deepcopy(base).eval()
    observers = {way: ReluObserver(copy.deepcopy(base).eval(), reducer=REDUCER[0]) for way in WAYS}
    extra: dict[str, list[float]] = {f"{kind} {way}": [] for kind in ("step", "scan") for way in WAYS}

    def forward() -> float:
        start = clock()
        with torch.inference_mode():
            plain_model(work.inputs)
        return clock() - start

    for way, runner in steps.items():
        replay.USE_ENTRY_POINTS = WAYS[way]
        assert runner.watch is not None
        runner.watch.start()
        for _ in range(4):
            runner.train_step(work, clock)
        observers[way].__enter__()
        observers[way].run(work.inputs)
        observers[way].run(work.inputs)
    try:
        for i in range(pairs):
            for way in list(WAYS)[i % 2 :] + list(WAYS)[: i % 2]:
                replay.USE_ENTRY_POINTS = WAYS[way]
                runner = steps[way]
                assert runner.watch is not None and runner.watch.observes_this_step
                observed = runner.train_step(work, clock)
                extra[f"step {way}"].append(observed - runner.train_step(work, clock))
                start = clock()
                observers[way].run(work.inputs)
                extra[f"scan {way}"].append(clock() - start - forward())
    finally:
        replay.USE_ENTRY_POINTS = True
        for way, runner in steps.items():
            assert runner.watch is not None
            runner.watch.close()
            observers[way].__exit__(None, None, None)
    print(f"\n{work.name}: {pairs} rounds, the two replay ways alternated; medians of paired differences")
    for way in WAYS:
        step, scanned = statistics.median(extra[f"step {way}"]), statistics.median(extra[f"scan {way}"])
        low, high = _interval(extra[f"step {way}"], extra[f"scan {way}"])
        print(
            f"  replays at {way:12}  observed step - next skipped step {step * 1e3:+7.2f} ms   "
            f"scan pass - plain inference forward {scanned * 1e3:+7.2f} ms   "
            f"difference {(step - scanned) * 1e3:+6.2f} ms (90% interval {low * 1e3:+.2f} .. {high * 1e3:+.2f})"
        )


def _interval(steps: list[float], scans: list[float], draws: int = 2000) -> tuple[float, float]:
    """90% bootstrap interval of median(steps) - median(scans): the rounds resampled with replacement (seeded), so
    "an observed step costs no more than a scan pass" can be read against the noise of this machine."""
    rng = random.Random(0)
    n = len(steps)
    diffs = sorted(
        statistics.median(steps[i] for i in picks) - statistics.median(scans[i] for i in picks)
        for picks in ([rng.randrange(n) for _ in range(n)] for _ in range(draws))
    )
    return diffs[int(0.05 * draws)], diffs[int(0.95 * draws) - 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=3, help="repeats of the four blocks")
    parser.add_argument("--block", type=int, default=100, help="training steps per block")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per copy first")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="cpu")
    parser.add_argument("--only", default="", help="run only the models whose name contains this")
    parser.add_argument("--study", action="store_true", help="recycling in the loop on the dying run, not timing")
    parser.add_argument("--paired", type=int, default=0, help="rounds of the paired step measurement (0: off)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds of the --study")
    parser.add_argument(
        "--reducer", choices=["torch", "fused"], default="torch", help="of the watches and the scan passes alike"
    )
    args = parser.parse_args()
    REDUCER[0] = args.reducer
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.study:
        from watch_study import print_study

        print_study(args.seeds)
        return
    clock = CLOCKS[args.clock]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.clock} clock, --reducer {args.reducer}")
    for work in workloads():
        if args.only in work.name:
            if args.paired:
                paired(work, args.paired, clock)
            else:
                overhead(work, args.reps, args.block, args.warmup, clock)
    print(
        "\nratio: median over repeats of the watched copy's time / the unwatched copy's over the same interleaved steps. "
        "extra: a step's median time minus a plain step's (skipped: a step the watch does not observe; closing: "
        "the observed step that closes a window and builds its report)."
    )


if __name__ == "__main__":
    main()
