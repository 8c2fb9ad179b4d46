"""Load time (and peak RSS) of a large checkpoint: memory-mapped vs ``safetensors.torch.load_file``.

A >= 500 MB state dict of a wide MLP is written to a temporary folder (deleted afterwards), as safetensors and
as ``torch.save``. Each way of loading runs in a fresh subprocess, builds the model on the meta device and
adopts the tensors with ``load_state_dict(assign=True)``, then reports wall time and ru_maxrss:

- ``safetensors load_file``: reads every tensor into fresh memory;
- ``safetensors mmap``: numpy memory-maps the file, tensors are views of the mapping (zero copy);
- ``torch.load`` vs ``torch.load(mmap=True)`` on the torch.save file.

Usage: ``python bench/bench_load.py [--mb 512]``.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

WIDTH = 4096

CHILD = """
import json, resource, sys, time
import numpy as np, torch
from torch import nn
start = time.perf_counter()
layers, path, how = {layers}, {path!r}, {how!r}

def mmap_safetensors(path):
    head = np.memmap(path, dtype=np.uint8, mode="r")
    size = int.from_bytes(head[:8].tobytes(), "little")
    header = json.loads(head[8:8 + size].tobytes())
    base = 8 + size
    out = {{}}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        lo, hi = entry["data_offsets"]
        view = np.frombuffer(head, dtype=np.float32, count=(hi - lo) // 4, offset=base + lo)
        out[name] = torch.from_numpy(view).view(entry["shape"])
    return out

if how == "safetensors load_file":
    from safetensors.torch import load_file
    tensors = load_file(path)
elif how == "safetensors mmap":
    tensors = mmap_safetensors(path)
elif how == "torch.load":
    tensors = torch.load(path, weights_only=True)
else:
    tensors = torch.load(path, weights_only=True, mmap=True)
with torch.device("meta"):
    model = nn.Sequential(*[nn.Linear({width}, {width}) for _ in range(layers)])
import warnings
warnings.filterwarnings("ignore")
model.load_state_dict(tensors, assign=True)
model(torch.ones(1, {width}))  # touch every weight once, as a scan's first batch does
print(time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


def write_checkpoints(folder: Path, megabytes: int) -> tuple[int, Path, Path]:
    layers = max(1, -(-megabytes * 2**20 // (WIDTH * WIDTH * 4)))
    gen = torch.Generator().manual_seed(0)
    state = {}
    for i in range(layers):
        state[f"{i}.weight"] = torch.randn(WIDTH, WIDTH, generator=gen) / WIDTH**0.5
        state[f"{i}.bias"] = torch.zeros(WIDTH)
    safetensors_path, torch_path = folder / "model.safetensors", folder / "model.pt"
    save_file(state, str(safetensors_path))
    torch.save(state, torch_path)
    return layers, safetensors_path, torch_path


def run(how: str, path: Path, layers: int) -> tuple[float, float]:
    code = CHILD.format(layers=layers, path=str(path), how=how, width=WIDTH)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    seconds, rss = out.stdout.split()
    return float(seconds), float(rss)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=int, default=512, help="checkpoint size in MiB (at least 500 for the README)")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        layers, st_path, pt_path = write_checkpoints(Path(folder), args.mb)
        size = st_path.stat().st_size / 2**20
        print(
            f"{layers} x Linear({WIDTH}, {WIDTH}) float32: {size:.0f} MiB; median of {args.runs} fresh processes each"
        )
        print(f"{'load':24} {'seconds':>8} {'peak RSS MiB':>13}")
        ways = [
            ("safetensors load_file", st_path),
            ("safetensors mmap", st_path),
            ("torch.load", pt_path),
            ("torch.load mmap=True", pt_path),
        ]
        results = {}
        for how, path in ways:
            runs = [run(how, path, layers) for _ in range(args.runs)]
            results[how] = statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)
            print(f"{how:24} {results[how][0]:8.3f} {results[how][1]:13.0f}")
        ratio = results["safetensors load_file"][0] / results["safetensors mmap"][0]
        print(f"load_file / mmap time: {ratio:.2f}x")


if __name__ == "__main__":
    main()
