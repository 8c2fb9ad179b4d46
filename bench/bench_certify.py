"""Tightness and cost of --certify: the share of probe-dead units that interval bounds and the linear relaxation
prove dead on the probe's box, and the time each takes relative to one plain forward pass of one probe batch.

    python bench/bench_certify.py            # --reps 3 --threads 1

Models: planted dead units (test models; bias -1000 / BN shift), the digits MLP killed by a high learning rate
(samples/, real dying, nothing planted), a small ResNet-like CNN with planted BN shifts, and the ResNet-18-like
benchmark CNN (32x32 inputs) with BN beta = -50 on a few channels.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "bench")]

import relu_doctor  # noqa: E402
from relu_doctor.certification import Box  # noqa: E402


def digits(name: str) -> tuple[nn.Module, torch.Tensor]:
    from safetensors.torch import load_file

    sys.path.insert(0, str(ROOT / "samples"))
    from digits_mlp import build_mlp

    model = build_mlp()
    model.load_state_dict(load_file(str(ROOT / "samples" / f"{name}_mlp.safetensors")))
    return model.eval(), torch.from_numpy(np.load(ROOT / "samples" / "digits_probe.npy"))


def planted(build: Callable[[], nn.Module], shape: tuple[int, ...]) -> Callable[[], tuple[nn.Module, torch.Tensor]]:
    def make() -> tuple[nn.Module, torch.Tensor]:
        torch.manual_seed(0)
        return build().eval(), torch.randn((512, *shape), generator=torch.Generator().manual_seed(0))

    return make


def resnet18_planted() -> tuple[nn.Module, torch.Tensor]:
    from bench_models import ResNet18Like

    torch.manual_seed(0)
    model = ResNet18Like().eval()
    with torch.no_grad():
        model.bn1.bias[:4] = -50.0
        model.stages[0][0].bn1.bias[:4] = -50.0
        model.stages[1][1].bn1.bias[:8] = -50.0
    return model, torch.randn((128, 3, 32, 32), generator=torch.Generator().manual_seed(0))


def tiny_resnet() -> tuple[nn.Module, torch.Tensor]:
    from _certify_models import TinyResNet

    return TinyResNet(beta_spread=2.0).eval(), torch.randn((512, 2, 8, 8), generator=torch.Generator().manual_seed(0))


def measure(name: str, make: Callable[[], tuple[nn.Module, torch.Tensor]], batch: int, reps: int) -> str:
    model, probe = make()
    report = relu_doctor.scan(model, list(probe.split(batch)))
    box = Box(probe.double().amin(0), probe.double().amax(0), "probe")
    dead = {s.name: set(s.dead_units) for s in report.sites}
    probe_dead = sum(len(d) for d in dead.values())
    forward = _median(reps, lambda: model(probe[:batch]))
    results = {}
    for methods in (("interval",), ("interval", "linear")):
        seconds = []
        for _ in range(reps):
            cert = relu_doctor.certify(model, box, methods=methods)
            seconds.append(dict(cert.seconds))
        proved = sum(len(dead[s.name] & set(s.certified_dead)) for s in cert.sites)
        extra = sum(len(set(s.certified_dead) - dead[s.name]) for s in cert.sites)
        skipped = sum(1 for s in cert.sites if any(n.startswith("linear relaxation skipped") for n in s.notes))
        method = methods[-1]
        time_of = statistics.median(s[method] for s in seconds)
        results[method] = (proved, extra, time_of, skipped)
    i, lin = results["interval"], results["linear"]
    share = lambda n: f"{n}/{probe_dead} ({n / probe_dead:.0%})" if probe_dead else "n/a"  # noqa: E731
    return (
        f"| {name} | {probe_dead} | {share(i[0])} | {share(lin[0])} | {i[2] / forward:.1f}x | {lin[2] / forward:.1f}x"
        f"{f' ({lin[3]} sites over the limit)' if lin[3] else ''} | {forward * 1e3:.2f} ms (batch {batch}) |"
    )


def _median(reps: int, run: Callable[[], object]) -> float:
    times = []
    with torch.inference_mode():
        run()
        for _ in range(reps):
            started = time.perf_counter()
            run()
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import models as test_models

    cases = [
        ("ReusedReluBlock (planted bias)", planted(test_models.ReusedReluBlock, (8,)), 64),
        ("FunctionalReluNet (planted bias)", planted(test_models.FunctionalReluNet, (6,)), 64),
        ("ConvBNReluShifted (planted BN shift)", planted(test_models.ConvBNReluShifted, (3, 6, 6)), 64),
        ("TinyResNet (planted BN beta -50, bias -100)", tiny_resnet, 64),
        ("digits MLP, lr 0.03 (dying_mlp)", lambda: digits("dying"), 64),
        ("digits MLP, lr 0.001 (healthy_mlp)", lambda: digits("healthy"), 64),
        ("ResNet-18-like 3x32x32 (BN beta -50 planted)", resnet18_planted, 32),
    ]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of {args.reps}; domain = probe box")
    print(
        "| model | dead on probe | certified by interval | by interval + linear | interval time | linear time | forward |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, make, batch in cases:
        print(measure(name, make, batch, args.reps), flush=True)


if __name__ == "__main__":
    main()
