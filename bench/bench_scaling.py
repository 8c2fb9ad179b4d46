"""How the default ``relu-doctor scan`` scales: time and peak RSS against probe size, model width and number of
relu sites, each next to the plain forward of the same probe in a process that loads the same checkpoint.

Every figure is one fresh process, as in bench/bench_default_scan.py (whose helpers this uses): CPU seconds of
the child (user + system), wall seconds, peak RSS; the plain forward, ``--no-simulate`` and the default scan of
one configuration run interleaved, ``--reps`` times, and the medians are printed with their ratios to the plain
forward. Default options except ``--reducer torch`` (no numba) and the output going to a file. Each model has
dead units planted (an eighth of every BatchNorm's or Linear's biases at -10), so the simulations have work.

- probe size: the ResNet-18-like CNN of bench/bench_models.py, 3x32x32, 64 ... 16,384 samples;
- width: a 4-layer Linear-ReLU MLP, 256 ... 4,096 wide, 1,024 samples;
- relu sites: a 256-wide Linear-ReLU stack of 25 ... 200 layers (as many sites), 512 samples.

Usage: ``python bench/bench_scaling.py [--reps 1] [--only samples,width,sites] [--threads 1]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_default_scan import plain_argv, plant_dead, run_child, scan_argv  # noqa: E402
from bench_models import ResNet18Like, seeded  # noqa: E402

ARCHS = """
import sys
sys.path.insert(0, {here!r})
from torch import nn
from bench_models import ResNet18Like


def stack(depth=4, width=256):
    layers = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(width, 10))
"""

Row = tuple[str, list[str], list[str], list[str], list[str]]
"""(label, plain forward argv, the same with the GC as the CLI handles it, --no-simulate argv, default scan argv)."""


def measure(title: str, rows: list[Row], reps: int, threads: int) -> None:
    """One table: per row the medians of the four runs (interleaved rep by rep), ratios to the plain forward, and
    the default scan's ratio to the plain forward with the GC handled as the CLI handles it (``GC×``: the cost of the
    scan's own work, without the CLI's GC saving)."""
    print(f"\n{title}")
    print(
        f"  {'':14} {'plain s':>8} {'plain GC s':>10} {'no-sim s':>9} {'default s':>10} {'no-sim ×':>9}"
        f" {'default ×':>10} {'GC×':>5} {'plain MiB':>10} {'default MiB':>12} {'RSS ×':>6}"
    )
    names = ("plain", "frozen", "bare", "default")
    for row, (label, *argvs) in enumerate(rows):
        runs: dict[str, list[tuple[float, float, float]]] = {name: [] for name in names}
        if row == 0:  # untimed: fills the children's bytecode cache (bench/child_env.py)
            for argv in argvs:
                run_child(argv, threads)
        for _ in range(reps):
            for name, argv in zip(names, argvs):
                runs[name].append(run_child(argv, threads))
        cpu = {name: statistics.median(r[0] for r in values) for name, values in runs.items()}
        rss = {name: statistics.median(r[2] for r in values) for name, values in runs.items()}
        print(
            f"  {label:14} {cpu['plain']:8.2f} {cpu['frozen']:10.2f} {cpu['bare']:9.2f} {cpu['default']:10.2f}"
            f" {cpu['bare'] / cpu['plain']:9.2f} {cpu['default'] / cpu['plain']:10.2f}"
            f" {cpu['default'] / cpu['frozen']:5.2f} {rss['plain']:10.0f} {rss['default']:12.0f}"
            f" {rss['default'] / rss['plain']:6.2f}",
            flush=True,
        )


def checkpoint(folder: Path, name: str, build: Callable[[], nn.Module]) -> str:
    path = folder / f"{name}.safetensors"
    if not path.exists():
        torch.manual_seed(0)
        save_file({k: v.contiguous() for k, v in plant_dead(build()).state_dict().items()}, str(path))
    return str(path)


def rows_for(ckpt: str, arch: str, samples: int, shape: tuple[int, ...], label: str, args: argparse.Namespace) -> Row:
    text = "x".join(map(str, shape))
    out = str(Path(ckpt).with_suffix(".json"))
    return (
        label,
        plain_argv(ckpt, arch, samples, shape, args.threads),
        plain_argv(ckpt, arch, samples, shape, args.threads, frozen=True),
        scan_argv(ckpt, arch, samples, text, ["--no-simulate"], out),
        scan_argv(ckpt, arch, samples, text, [], out),
    )


def by_samples(folder: Path, arch_file: Path, args: argparse.Namespace) -> None:
    ckpt = checkpoint(folder, "cnn", lambda: seeded(ResNet18Like))
    arch = f"{arch_file}:ResNet18Like"
    rows = [rows_for(ckpt, arch, n, (3, 32, 32), f"{n:,} samples", args) for n in (64, 256, 1024, 4096, 16384)]
    measure("Probe size: ResNet-18-like, 3x32x32 (CPU s; ratios to the plain forward)", rows, args.reps, args.threads)


def by_width(folder: Path, arch_file: Path, args: argparse.Namespace) -> None:
    rows = []
    for width in (256, 1024, 4096):
        ckpt = checkpoint(folder, f"wide{width}", lambda width=width: _stack(4, width))
        arch = f"{arch_file}:stack"
        row = rows_for(ckpt, arch, 1024, (width,), f"width {width:,}", args)
        rows.append(_with_kwargs(row, {"depth": 4, "width": width}))
    measure("Width: 4-layer MLP, 1,024 samples", rows, args.reps, args.threads)


def by_sites(folder: Path, arch_file: Path, args: argparse.Namespace) -> None:
    rows = []
    for depth in (25, 50, 100, 200):
        ckpt = checkpoint(folder, f"deep{depth}", lambda depth=depth: _stack(depth, 256))
        row = rows_for(ckpt, f"{arch_file}:stack", 512, (256,), f"{depth} sites", args)
        rows.append(_with_kwargs(row, {"depth": depth, "width": 256}))
    measure("Relu sites: 256-wide MLP, one site per layer, 512 samples", rows, args.reps, args.threads)


def _stack(depth: int, width: int) -> nn.Module:
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(width, 10))


def _with_kwargs(row: Row, kwargs: dict[str, int]) -> Row:
    """The row's commands building ``stack(**kwargs)``: --arch-kwargs for scans, the call for the plain forward."""
    import json

    label, plain, frozen, bare, default = row
    plain, frozen = ([*p[:-1], p[-1].replace("arch='", f"arch_kwargs={kwargs!r}, arch='")] for p in (plain, frozen))
    extra = ["--arch-kwargs", json.dumps(kwargs)]
    return label, plain, frozen, [*bare, *extra], [*default, *extra]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", default="samples,width,sites")
    args = parser.parse_args()
    print(f"python {sys.version.split()[0]}, torch {torch.__version__}, {args.threads} thread(s), --reducer torch")
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        arch_file = folder / "archs.py"
        arch_file.write_text(ARCHS.format(here=str(HERE)))
        for case in args.only.split(","):
            {"samples": by_samples, "width": by_width, "sites": by_sites}[case](folder, arch_file, args)


if __name__ == "__main__":
    main()
