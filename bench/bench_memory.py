"""Peak RSS of a scan of a probe 16x larger than another, each in a fresh subprocess (ru_maxrss).

The probe streams batch by batch (synthetic: generated per batch; file: a memory-mapped .npy), so the
peak should not grow with the probe. Each probe is scanned with the torch reducer and with the fused one
(numba; loading it adds a fixed amount once per process, which must not grow with the probe either).
Usage: ``python bench/bench_memory.py [--samples 256] [--factor 16]``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from relu_doctor.engine.reduce import fused

HERE = Path(__file__).resolve().parent

CHILD = """
import resource, sys, torch
sys.path.insert(0, {here!r})
from bench_models import ResNet18Like, seeded
from relu_doctor import scan
from relu_doctor.workflow.probe import file_probe, synthetic_probe
torch.set_num_threads(1)
model = seeded(ResNet18Like)
if {path!r}:
    probe = file_probe({path!r}, batch_size=32, limit={samples})
else:
    probe = synthetic_probe(model, samples={samples}, seed=0, batch_size=32, input_shape=(3, 32, 32))
report = scan(model, probe.batches(), reducer={reducer!r})
assert report.probe.samples == {samples}
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def peak_rss_mib(samples: int, path: str, reducer: str) -> float:
    """ru_maxrss (KiB on Linux) of a child process that scans ``samples`` samples, in MiB."""
    code = CHILD.format(here=str(HERE), path=path, samples=samples, reducer=reducer)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=256, help="the small probe (the large one is --factor times it)")
    parser.add_argument("--factor", type=int, default=16)
    args = parser.parse_args()
    small, large = args.samples, args.samples * args.factor
    print(f"ResNet-18-like, 3x32x32 samples, batch 32; probes of {small} and {large} samples, one process each")
    print(f"{'probe':12} {'reducer':8} {'small MiB':>10} {'large MiB':>10} {'large/small':>12}")
    with tempfile.TemporaryDirectory() as folder:
        path = str(Path(folder) / "probe.npy")
        data = np.random.default_rng(0).standard_normal((large, 3, 32, 32), dtype=np.float32)
        np.save(path, data)
        del data
        reducers = ("torch", "fused") if fused.available() else ("torch",)
        for name, source in (("synthetic", ""), ("file (.npy)", path)):
            for reducer in reducers:
                a, b = peak_rss_mib(small, source, reducer), peak_rss_mib(large, source, reducer)
                print(f"{name:12} {reducer:8} {a:10.1f} {b:10.1f} {b / a:11.3f}x")


if __name__ == "__main__":
    main()
