"""Benchmark `relu-doctor fix`: does repairing the sample MLP killed by a too-high learning rate help fine-tuning?

    python bench/bench_fix.py [--steps 0 50 200 500] [--lr 1e-3] [--seeds 0 1 2]

The model is samples/dying_mlp.safetensors (Adam at lr 3e-2 killed 78 of act2's 128 units). Data: scikit-learn's
digits with the split and standardisation of samples/make_samples.py (1285 train, 512 test). Two arms start from
the same checkpoint and fine-tune with the same optimizer (Adam, fresh), learning rate, seed and batch order:

- no fix: the checkpoint as it is;
- fix:    `repair_model(..., strategy="recycle")`, probed on the training inputs (never the test set), then trained.

Printed per seed and step count: test accuracy and dead units on the test probe (512 samples), side by side.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from pathlib import Path
from types import ModuleType

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "samples"
BATCH_SIZE = 32


def _module(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_checkpoint() -> nn.Module:
    model = _module(SAMPLES / "digits_mlp.py").build_mlp()
    model.load_state_dict(load_file(SAMPLES / "dying_mlp.safetensors"))
    return model.eval()


def load_data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_train, y_train, x_test, y_test) exactly as samples/make_samples.py makes them."""
    x_tr, y_tr, x_te, y_te = _module(SAMPLES / "make_samples.py").load_data()
    return torch.from_numpy(x_tr), torch.from_numpy(y_tr), torch.from_numpy(x_te), torch.from_numpy(y_te)


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model.eval()(x).argmax(dim=1) == y).float().mean())


def dead_units(model: nn.Module, x: torch.Tensor) -> tuple[int, int]:
    """(act1, act2) units whose pre-activation is never > 0 on ``x``: counted by hand, not by relu-doctor."""
    with torch.no_grad():
        first = model.fc1(x)
        second = model.fc2(F.relu(first))
    return int((first <= 0).all(dim=0).sum()), int((second <= 0).all(dim=0).sum())


def fine_tune(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, lr: float, seed: int) -> nn.Module:
    """``steps`` Adam steps on shuffled mini-batches; the batch order depends only on ``seed``."""
    torch.manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    order = torch.Generator().manual_seed(seed)
    model.train()
    done = 0
    while done < steps:
        permutation = torch.randperm(len(x), generator=order)
        for start in range(0, len(x), BATCH_SIZE):
            if done == steps:
                break
            index = permutation[start : start + BATCH_SIZE]
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(x[index]), y[index]).backward()
            optimizer.step()
            done += 1
    return model.eval()


def repaired(model: nn.Module, probe: torch.Tensor, seed: int) -> nn.Module:
    from relu_doctor.repair.api import repair_model

    result = repair_model(model, list(probe.split(256)), strategy="recycle", seed=seed)
    assert result.result.drift.relative_l2 <= 1e-6, result.result.drift
    return result.model


def run(steps: list[int], lr: float, seeds: list[int]) -> None:
    x_tr, y_tr, x_te, y_te = load_data()
    checkpoint = load_checkpoint()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; Adam lr {lr}, batch {BATCH_SIZE}")
    print(
        f"checkpoint: test acc {accuracy(checkpoint, x_te, y_te):.4f}, dead on test probe (act1, act2) "
        f"{dead_units(checkpoint, x_te)}, dead on train {dead_units(checkpoint, x_tr)}"
    )
    header = f"{'seed':>4} {'steps':>5} | {'no fix: acc':>11} {'dead a1/a2':>10} | {'fix: acc':>8} {'dead a1/a2':>10} | {'gain':>7}"
    print(header + "\n" + "-" * len(header))
    gains: dict[int, list[float]] = {n: [] for n in steps}
    for seed in seeds:
        fixed_start = repaired(checkpoint, x_tr, seed)
        for n in steps:
            plain = fine_tune(_copy(checkpoint), x_tr, y_tr, n, lr, seed)
            fixed = fine_tune(_copy(fixed_start), x_tr, y_tr, n, lr, seed)
            a_plain, a_fixed = accuracy(plain, x_te, y_te), accuracy(fixed, x_te, y_te)
            gains[n].append(a_fixed - a_plain)
            print(
                f"{seed:>4} {n:>5} | {a_plain:>11.4f} {_pair(dead_units(plain, x_te)):>10} | "
                f"{a_fixed:>8.4f} {_pair(dead_units(fixed, x_te)):>10} | {a_fixed - a_plain:>+7.4f}"
            )
    for n in steps:
        print(
            f"mean gain after {n:>4} steps over {len(seeds)} seeds: {statistics.fmean(gains[n]):+.4f} "
            f"(min {min(gains[n]):+.4f}, max {max(gains[n]):+.4f})"
        )


def _copy(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model)


def _pair(counts: tuple[int, int]) -> str:
    return f"{counts[0]}/{counts[1]}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[0, 50, 200, 500])
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    started = time.perf_counter()
    run(args.steps, args.lr, args.seeds)
    print(f"({time.perf_counter() - started:.1f} s)", file=sys.stderr)


if __name__ == "__main__":
    main()
