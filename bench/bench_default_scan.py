"""The default ``relu-doctor scan`` (fix simulations on) against a plain forward, whole process, side by side.

Every figure is one fresh process (``python -m relu_doctor scan ...`` or a plain script that loads the same
checkpoint through the same loader and runs ``model(batch)`` under ``torch.inference_mode()`` over the same
synthetic probe), timed as CPU seconds of the child (user + system, so other load on the machine matters
less) and wall seconds, with its peak RSS. Runs are interleaved and the median of ``--reps`` is reported.
Default options except ``--reducer torch`` (no numba) and the output going to a file. Children keep compiled
bytecode as an installed package does (bench/child_env.py) and each command runs once untimed first.

Cases (each model gets dead units planted, so the scan has findings to simulate):
- cnn: the ResNet-18-like CNN of bench/bench_models.py, 3x32x32, at --samples (1,024) and 10,000 samples,
  default scan vs plain forward vs --no-simulate;  "plain forward, GC as the CLI" is the same plain script with
  the cyclic GC handled as the console script handles it (paused for the imports, then ``gc.freeze()``), so the
  scan's ratio to it is the cost of the scan's own work, without the CLI's GC saving;
- mlp200: a 200-layer 256-wide Linear-ReLU stack, 512 samples;
- memory: peak RSS of the default scan at 1x and 16x the probe, synthetic, .npy file, directory of shards.

Usage: ``python bench/bench_default_scan.py [--reps 3] [--only cnn,mlp200,memory] [--threads 1]``.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_models import ResNet18Like, seeded  # noqa: E402
from child_env import child_env  # noqa: E402

ARCHS = """
import sys
sys.path.insert(0, {here!r})
from torch import nn
from bench_models import ResNet18Like


def deep_mlp(depth=200, width=256):
    layers = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(width, 10))
"""

PLAIN = """
import sys, torch
from relu_doctor.loading import load_model
from relu_doctor.workflow.probe import file_probe, synthetic_probe
torch.set_num_threads({threads})
model = load_model({ckpt!r}, arch={arch!r}).model.eval()
if {probe!r}:
    probe = file_probe({probe!r}, batch_size=64)
else:
    probe = synthetic_probe(model, samples={samples}, seed=0, batch_size=64, input_shape={shape})
with torch.inference_mode():
    for batch in probe.batches(torch.float32, torch.device("cpu")):
        model(batch)
"""


PEAK = """
import atexit, os, runpy, sys


def _peak():  # the peak of this process's own memory: ru_maxrss would include the forking parent's RSS
    with open("/proc/self/status") as status:
        peak = next(line.split()[1] for line in status if line.startswith("VmHWM:"))
    with open(os.environ["BENCH_PEAK_FILE"], "w") as out:
        out.write(peak)


atexit.register(_peak)
mode, target, *rest = sys.argv[1:]
if mode == "-m":
    sys.argv = [target, *rest]
    runpy.run_module(target, run_name="__main__", alter_sys=True)
else:
    sys.argv = ["-c", *rest]
    exec(compile(target, "<string>", "exec"), {"__name__": "__main__"})
"""


def run_child(argv: list[str], threads: int) -> tuple[float, float, float]:
    """(cpu seconds, wall seconds, peak RSS MiB) of one child process (``python -m ...`` or ``python -c ...``).

    The peak is the child's own high-water mark (VmHWM), read by the child as it exits: a forked child's
    ``ru_maxrss`` starts at its parent's RSS, so it floors every child at the size of this benchmark process.
    """
    with tempfile.NamedTemporaryFile(suffix=".peak") as peak:
        env = child_env(threads, BENCH_PEAK_FILE=peak.name)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        wrapped = [argv[0], "-c", PEAK, *argv[1:]]
        code, _ = _wait(subprocess.Popen(wrapped, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
        wall = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if code not in (0, 1):
            raise SystemExit(f"child failed ({code}): {' '.join(argv[:6])} ...")
        rss = int(Path(peak.name).read_text() or 0) / 1024
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return cpu, wall, rss


def _wait(process: subprocess.Popen[bytes]) -> tuple[int, float]:
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.stderr is not None:
        process.stderr.close()
    return process.returncode, usage.ru_maxrss / 1024


def scan_argv(ckpt: str, arch: str, samples: int, shape: str, extra: list[str], out: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "relu_doctor",
        "scan",
        ckpt,
        "--arch",
        arch,
        "--samples",
        str(samples),
        "--input-shape",
        shape,
        "--reducer",
        "torch",
        "-f",
        "json",
        "-o",
        out,
        "--force",
        *extra,
    ]


FROZEN_GC = """
import gc
gc.disable()
import torch
gc.freeze()
gc.enable()
"""
"""What the console script does before it loads a model (relu_doctor.cli.app.settle_imports)."""


def plain_argv(
    ckpt: str, arch: str, samples: int, shape: tuple[int, ...], threads: int, probe: str = "", frozen: bool = False
) -> list[str]:
    """A plain forward of the probe; ``frozen``: with the GC handled as the CLI does it, so the scan's ratio to it is
    the cost of the scan's own work alone."""
    code = PLAIN.format(ckpt=ckpt, arch=arch, samples=samples, shape=shape, threads=threads, probe=probe)
    return [sys.executable, "-c", (FROZEN_GC if frozen else "") + code]


def plant_dead(model: nn.Module) -> nn.Module:
    """An eighth of every BatchNorm's (or Linear's) channels get a bias of -10: dead after the next relu."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.BatchNorm2d, nn.Linear)) and module.bias is not None:
                module.bias[: max(1, module.bias.numel() // 8)] = -10.0
    return model


def compare(label: str, runs: dict[str, list[str]], reps: int, threads: int) -> dict[str, tuple[float, float, float]]:
    """Median (cpu, wall, rss) per named command, the commands interleaved rep by rep."""
    seen: dict[str, list[tuple[float, float, float]]] = {name: [] for name in runs}
    for argv in runs.values():  # untimed: fills the bytecode cache (bench/child_env.py) and the file cache
        run_child(argv, threads)
    for _ in range(reps):
        for name, argv in runs.items():
            seen[name].append(run_child(argv, threads))
    medians = {name: tuple(statistics.median(v[i] for v in values) for i in range(3)) for name, values in seen.items()}
    base = medians[next(iter(runs))]
    print(f"\n{label}")
    print(f"  {'run':28} {'cpu s':>8} {'wall s':>8} {'peak MiB':>9} {'cpu ratio':>10} {'wall ratio':>10}")
    for name, (cpu, wall, rss) in medians.items():
        print(f"  {name:28} {cpu:8.2f} {wall:8.2f} {rss:9.0f} {cpu / base[0]:10.3f} {wall / base[1]:10.3f}")
    return medians  # type: ignore[return-value]


def bench_cnn(folder: Path, arch_file: Path, args: argparse.Namespace) -> None:
    ckpt = str(folder / "cnn.safetensors")
    save_file({k: v.contiguous() for k, v in plant_dead(seeded(ResNet18Like)).state_dict().items()}, ckpt)
    arch, out = f"{arch_file}:ResNet18Like", str(folder / "cnn.json")
    for samples in (args.samples, 10_000):
        runs = {
            "plain forward": plain_argv(ckpt, arch, samples, (3, 32, 32), args.threads),
            "plain forward, GC as the CLI": plain_argv(ckpt, arch, samples, (3, 32, 32), args.threads, frozen=True),
            "scan --no-simulate": scan_argv(ckpt, arch, samples, "3x32x32", ["--no-simulate"], out),
            "scan (default)": scan_argv(ckpt, arch, samples, "3x32x32", [], out),
        }
        compare(
            f"ResNet-18-like, 3x32x32, {samples} samples (ratios to the plain forward)", runs, args.reps, args.threads
        )


def bench_mlp200(folder: Path, arch_file: Path, args: argparse.Namespace) -> None:
    torch.manual_seed(0)
    exec(compile(ARCHS.format(here=str(HERE)), "archs", "exec"), namespace := {})
    model = plant_dead(namespace["deep_mlp"]())
    ckpt = str(folder / "mlp200.safetensors")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, ckpt)
    arch, out = f"{arch_file}:deep_mlp", str(folder / "mlp.json")
    runs = {
        "plain forward": plain_argv(ckpt, arch, 512, (256,), args.threads),
        "plain forward, GC as the CLI": plain_argv(ckpt, arch, 512, (256,), args.threads, frozen=True),
        "scan --no-simulate": scan_argv(ckpt, arch, 512, "256", ["--no-simulate"], out),
        "scan (default)": scan_argv(ckpt, arch, 512, "256", [], out),
    }
    compare("200-layer MLP, 256 wide, 512 samples (ratios to the plain forward)", runs, args.reps, args.threads)


def bench_memory(folder: Path, arch_file: Path, args: argparse.Namespace) -> None:
    ckpt = str(folder / "cnn.safetensors")
    if not Path(ckpt).exists():
        save_file({k: v.contiguous() for k, v in plant_dead(seeded(ResNet18Like)).state_dict().items()}, ckpt)
    arch, out = f"{arch_file}:ResNet18Like", str(folder / "mem.json")
    small, large = args.memory_samples, args.memory_samples * 16
    data = np.random.default_rng(0).standard_normal((large, 3, 32, 32), dtype=np.float32)
    np.save(folder / "small.npy", data[:small])
    np.save(folder / "large.npy", data)
    for name, rows in (("small_shards", small), ("large_shards", large)):
        (folder / name).mkdir(exist_ok=True)
        for start in range(0, rows, small // 4):
            np.save(folder / name / f"{start:08d}.npy", data[start : start + small // 4])
    del data
    print(
        f"\nPeak RSS of the default scan (ResNet-18-like, 3x32x32), {small} vs {large} samples, median of {args.reps}"
    )
    print(f"  {'probe':12} {'small MiB':>10} {'large MiB':>10} {'large/small':>12}")
    for kind in ("synthetic", "npy file", "shards"):
        peaks = []
        for samples, stem in ((small, "small"), (large, "large")):
            if kind == "synthetic":
                argv = scan_argv(ckpt, arch, samples, "3x32x32", [], out)
            else:
                path = folder / (f"{stem}.npy" if kind == "npy file" else f"{stem}_shards")
                argv = scan_argv(ckpt, arch, samples, "3x32x32", ["--probe", str(path)], out)
                argv.remove("--samples"), argv.remove(str(samples))
            peaks.append(statistics.median(run_child(argv, args.threads)[2] for _ in range(args.reps)))
        print(f"  {kind:12} {peaks[0]:10.0f} {peaks[1]:10.0f} {peaks[1] / peaks[0]:12.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--samples", type=int, default=1024, help="the CNN's small probe")
    parser.add_argument("--memory-samples", type=int, default=256, help="the small probe of the memory case")
    parser.add_argument("--only", default="cnn,mlp200,memory")
    args = parser.parse_args()
    print(f"python {sys.version.split()[0]}, torch {torch.__version__}, {args.threads} thread(s), --reducer torch")
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        arch_file = folder / "archs.py"
        arch_file.write_text(ARCHS.format(here=str(HERE)))
        for case in args.only.split(","):
            {"cnn": bench_cnn, "mlp200": bench_mlp200, "memory": bench_memory}[case](folder, arch_file, args)


if __name__ == "__main__":
    main()
