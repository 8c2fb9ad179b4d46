"""Wall time of ``relu-doctor --help`` and ``--version`` (they must not import torch), median of several runs;
and what importing the CLI loads (no torch, no renderer module: a renderer is imported when it renders).

Usage: ``python bench/bench_startup.py [--runs 7]``.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from child_env import child_env  # noqa: E402

COMMANDS = {
    "python -c pass (floor)": [sys.executable, "-c", "pass"],
    "python -c 'import relu_doctor.cli'": [sys.executable, "-c", "import relu_doctor.cli"],
    "relu-doctor --version": [shutil.which("relu-doctor") or "relu-doctor", "--version"],
    "relu-doctor --help": [shutil.which("relu-doctor") or "relu-doctor", "--help"],
    "python -c 'import torch' (for scale)": [sys.executable, "-c", "import torch"],
}
TORCH_CHECK = "import sys; from relu_doctor.cli import app; print('torch' in sys.modules)"
RENDERERS_CHECK = (
    "import sys; from relu_doctor.cli import app; "
    "print(' '.join(sorted(m for m in sys.modules if m.startswith('relu_doctor.render.'))))"
)


def wall(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, env=child_env())
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    imported = subprocess.run([sys.executable, "-c", TORCH_CHECK], capture_output=True, text=True, check=True)
    print(f"importing the CLI imports torch: {imported.stdout.strip()}")
    renderers = subprocess.run([sys.executable, "-c", RENDERERS_CHECK], capture_output=True, text=True, check=True)
    print(f"render modules it imports: {renderers.stdout.strip()}")
    measured = {}
    for name, command in COMMANDS.items():
        wall(command)  # warm the file cache and the bytecode cache (bench/child_env.py)
        measured[name] = [wall(command) for _ in range(args.runs)]
    # the target is a share of `import torch`, which moves with the machine as --help does
    torch_import = statistics.median(measured["python -c 'import torch' (for scale)"])
    print(f"{'command':40} {'median s':>9} {'min s':>7} {'/ import torch':>15}")
    for name, times in measured.items():
        median = statistics.median(times)
        print(f"{name:40} {median:9.3f} {min(times):7.3f} {median / torch_import:15.2f}")
    print("target: relu-doctor --help <= 0.25 of import torch")


if __name__ == "__main__":
    main()
