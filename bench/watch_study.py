"""The dying run of the README's watch section, and what the watch says about it.

A 16-64-64-4 relu MLP (no BatchNorm, no dropout: its training-mode and eval-mode forwards are the same function)
learns a 4-class task labelled by a fixed random linear teacher, by full-batch SGD (momentum 0.9) on 256 samples.
At the too-high learning rate 1.0 most of the second hidden layer dies within a few dozen steps; at 0.3 it trains.

- ``truth``: the watch (``every=E``, ``window=1``) against ``trend``. At each observed step ``s`` the weights are saved
  as ``step_{s}.safetensors`` *before* step ``s``'s forward, so checkpoint ``s`` holds the weights the watch's
  window ``s`` counted with; :func:`relu_doctor.workflow.trend.scan_checkpoints` then scans every checkpoint (eval
  mode, ``--no-simulate``) over the same 256 training samples (``train.npy``) the full-batch step ran on. *Agrees*
  means: for every observed step, every site's dead units (indices) in the watch's window report equal those of the
  checkpoint's trend report, and so the first step at which a layer is more than half dead is the same step.
- ``repair``: the same dying run, 3 seeds, with ``recycle_every`` (ReDo-style recycling of tau-dormant units,
  optimizer state reset) against without: dead units at the end (a scan of the final model over 1,024 held-out
  samples) and held-out accuracy, mean and spread.

Usage: ``python bench/watch_study.py truth [--steps 60 --every 4]``, ``python bench/watch_study.py repair
[--seeds 0 1 2]`` (also ``python bench/bench_watch.py --study``).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

import relu_doctor
from relu_doctor.report import Report, TrendReport
from relu_doctor.watching import Watch
from relu_doctor.workflow.scan import ScanRequest
from relu_doctor.workflow.trend import scan_checkpoints

FEATURES, HIDDEN, CLASSES = 16, 64, 4
TRAIN_SAMPLES, HELD_OUT_SAMPLES = 256, 1024
HIGH_LR, SAFE_LR, MOMENTUM = 1.0, 0.3, 0.9
HALF = 0.5
SITES = ("1", "3")
"""The two relu sites (nn.Sequential paths of the two nn.ReLU)."""


def build_dying_mlp() -> nn.Sequential:
    """The architecture (``--arch bench/watch_study.py:build_dying_mlp``); weights from torch's global seed."""
    return nn.Sequential(
        nn.Linear(FEATURES, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, CLASSES)
    )


def seeded_model(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return build_dying_mlp()


def task() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(train x, train y, held-out x, held-out y): Gaussian inputs, labels = argmax of a fixed random linear map."""
    teacher = torch.randn(FEATURES, CLASSES, generator=torch.Generator().manual_seed(99))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(TRAIN_SAMPLES + HELD_OUT_SAMPLES, FEATURES, generator=g)
    y = (x @ teacher).argmax(dim=1)
    return x[:TRAIN_SAMPLES], y[:TRAIN_SAMPLES], x[TRAIN_SAMPLES:], y[TRAIN_SAMPLES:]


def train(
    model: nn.Module,
    steps: int,
    lr: float,
    *,
    watch_options: dict | None = None,
    before_step: Callable[[int, nn.Module], None] | None = None,
    after_step: Callable[[int, Watch], None] | None = None,
) -> Watch | None:
    """Full-batch SGD on the training set; with ``watch_options`` under ``relu_doctor.watch``.
    ``before_step(step, model)`` runs before each step's forward, ``after_step(step, watch)`` after its update."""
    x, y, _, _ = task()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=MOMENTUM)
    watch = None if watch_options is None else relu_doctor.watch(model, optimizer=optimizer, **watch_options)
    with watch if watch is not None else _nothing():
        for step in range(steps):
            if before_step is not None:
                before_step(step, model)
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()  # ends the watch's step
            if after_step is not None and watch is not None:
                after_step(step, watch)
    return watch


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


# -- truth: the watch against trend ------------------------------------------------------------------------------
@dataclass(frozen=True)
class TruthRun:
    """The watch's window reports and trend's checkpoint reports of one dying run, step by step."""

    steps: tuple[int, ...]
    """The observed steps (one window and one checkpoint each)."""
    watch_reports: tuple[Report, ...]
    """The watch's report of each window (one observed step each)."""
    trend: TrendReport
    """trend over the checkpoints saved before each observed step's forward."""

    def dead_units(self, site: str) -> tuple[list[tuple[int, ...]], list[tuple[int, ...]]]:
        """(watch, trend) dead unit indices of ``site`` at every observed step."""
        return (
            [_site(report, site).dead_units for report in self.watch_reports],
            [_site(report, site).dead_units for report in self.trend.reports],
        )

    def first_over_half(self, site: str) -> tuple[int | None, int | None]:
        """(watch, trend): the first observed step at which more than half of ``site``'s units are dead."""
        watch, trend = self.dead_units(site)
        units = _site(self.watch_reports[0], site).units
        return _first(self.steps, [len(d) / units for d in watch]), _first(self.steps, [len(d) / units for d in trend])


def _site(report: Report, name: str):  # type: ignore[no-untyped-def]
    return next(site for site in report.sites if site.name == name)


def _first(steps: tuple[int, ...], fractions: list[float]) -> int | None:
    return next((step for step, fraction in zip(steps, fractions) if fraction > HALF), None)


def truth_run(folder: Path, *, steps: int = 60, every: int = 4, seed: int = 0) -> TruthRun:
    """Train the dying run under the watch (window = one observed step), saving a checkpoint before every observed
    step's forward, then scan the checkpoints with trend over the same training samples."""
    x, _, _, _ = task()
    np.save(folder / "train.npy", x.numpy())
    saved: list[int] = []
    reports: list[Report] = []

    def save(step: int, model: nn.Module) -> None:
        if step % every == 0:
            save_file(
                {k: v.detach().clone() for k, v in model.state_dict().items()}, folder / f"step_{step}.safetensors"
            )
            saved.append(step)

    def keep(step: int, watch: Watch) -> None:
        if len(watch.history) > len(reports):  # window = 1: the step just observed closed a window
            reports.append(watch.report())

    train(
        seeded_model(seed),
        steps,
        HIGH_LR,
        watch_options={"every": every, "window": 1},
        before_step=save,
        after_step=keep,
    )
    request = ScanRequest(
        model_path="",
        arch=f"{Path(__file__).resolve()}:build_dying_mlp",
        probe_path=str(folder / "train.npy"),
        batch_size=TRAIN_SAMPLES,
        simulate=False,
        device="cpu",
    )
    trend = scan_checkpoints([str(folder / f"step_{step}.safetensors") for step in saved], request)
    return TruthRun(tuple(saved), tuple(reports), trend)


def print_truth(steps: int, every: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        run = truth_run(Path(folder), steps=steps, every=every)
    print(
        f"dying run: full-batch SGD lr {HIGH_LR} momentum {MOMENTUM}, {TRAIN_SAMPLES} samples, watch every={every} "
        "window=1; trend over the checkpoints saved before each observed step, probe = the same 256 samples"
    )
    print(f"{'step':>5} " + " ".join(f"{'watch ' + s:>9} {'trend ' + s:>9}" for s in SITES) + "  dead units equal")
    per_site = {site: run.dead_units(site) for site in SITES}
    for index, step in enumerate(run.steps):
        cells = " ".join(
            f"{len(per_site[s][0][index]):>6}/{HIDDEN} {len(per_site[s][1][index]):>6}/{HIDDEN}" for s in SITES
        )
        same = all(per_site[s][0][index] == per_site[s][1][index] for s in SITES)
        print(f"{step:>5} {cells}  {'yes' if same else 'NO'}")
    for site in SITES:
        watch, trend = run.first_over_half(site)
        print(f"site {site}: first step with > 50% dead: watch {watch}, trend {trend}")


# -- repair: recycling in the loop ------------------------------------------------------------------------------
@dataclass(frozen=True)
class RepairResult:
    """The end of one dying run."""

    dead: int
    """Dead units of the final model over the held-out samples (both sites)."""
    nan_units: int
    """Units whose activation is NaN on the held-out samples (the run diverged)."""
    accuracy: float
    """Held-out accuracy."""
    recycled: int
    """Units recycled during training."""


def repair_run(
    seed: int, *, recycle_every: int | None, recycle: str = "dormant", steps: int = 300, lr: float = HIGH_LR
) -> RepairResult:
    model = seeded_model(seed)
    options = {"every": 5, "window": 2, "recycle_every": recycle_every, "recycle": recycle, "seed": seed}
    watch = train(model, steps, lr, watch_options=options)
    assert watch is not None
    _, _, x_test, y_test = task()
    with torch.no_grad():
        accuracy = float((model.eval()(x_test).argmax(dim=1) == y_test).float().mean())
    report = relu_doctor.scan(model, list(x_test.split(256)))
    recycled = sum(event.units for event in watch.recycles)
    return RepairResult(report.summary.dead, report.summary.nan_units, accuracy, recycled)


def print_study(seeds: list[int], steps: int = 300, recycle_every: int = 20) -> None:
    print(
        f"dying run: full-batch SGD momentum {MOMENTUM}, {steps} steps, {TRAIN_SAMPLES} training samples; dead "
        f"and NaN units of {2 * HIDDEN} and accuracy on {HELD_OUT_SAMPLES} held-out samples at the end; seeds "
        f"{seeds}; watch every=5 window=2"
    )
    print(f"{'run':42} {'dead units':>12} {'NaN units':>10} {'held-out accuracy':>18} {'recycled':>9}")
    rows = (
        (f"lr {SAFE_LR} (reference), no recycling", SAFE_LR, None, "dormant"),
        (f"lr {HIGH_LR}, no recycling", HIGH_LR, None, "dormant"),
        (f"lr {HIGH_LR}, recycle_every={recycle_every}, recycle=dead", HIGH_LR, recycle_every, "dead"),
        (f"lr {HIGH_LR}, recycle_every={recycle_every}, recycle=dormant", HIGH_LR, recycle_every, "dormant"),
    )
    for label, lr, every, kind in rows:
        results = [repair_run(seed, recycle_every=every, recycle=kind, steps=steps, lr=lr) for seed in seeds]
        dead = [r.dead for r in results]
        nan = [r.nan_units for r in results]
        accuracy = [100 * r.accuracy for r in results]
        recycled = statistics.mean(r.recycled for r in results)
        print(
            f"{label:42} {_spread(dead, '.1f'):>12} {_spread(nan, '.0f'):>10} {_spread(accuracy, '.1f') + ' %':>18} "
            f"{recycled:9.0f}"
        )
        print(
            f"{'  per seed':42} {', '.join(map(str, dead)):>12} {', '.join(map(str, nan)):>10} "
            f"{', '.join(f'{a:.1f}' for a in accuracy):>18}"
        )
    print("mean ± sample standard deviation over seeds; recycled: units recycled per run (mean)")


def _spread(values: list[float], spec: str) -> str:
    deviation = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):{spec}} ± {deviation:{spec}}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["truth", "repair"])
    parser.add_argument("--steps", type=int, default=None, help="training steps (truth: 60, repair: 300)")
    parser.add_argument("--every", type=int, default=4, help="truth: the watch's every (window is 1)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.what == "truth":
        print_truth(args.steps or 60, args.every)
    else:
        print_study(args.seeds, args.steps or 300)


if __name__ == "__main__":
    main()
