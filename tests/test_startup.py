"""Startup: --help and --version never import torch; `python -m relu_doctor --version` works."""

from __future__ import annotations

import subprocess
import sys

import pytest

from relu_doctor import __version__

# Runs the real console entry point in a fresh interpreter, then reports whether torch got imported.
ENTRY = """
import sys
sys.argv = ["relu-doctor", *sys.argv[1:]]
from relu_doctor.cli import main
try:
    main()
except SystemExit as exit:
    code = exit.code
else:
    code = 0
sys.stderr.write(f"\\nEXIT={code} TORCH_IMPORTED={'torch' in sys.modules}\\n")
"""


def _run_entry(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", ENTRY, *args], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(
    "args", [("--help",), ("--version",), ("scan", "--help")], ids=["help", "version", "scan-help"]
)
def test_help_and_version_do_not_import_torch(args: tuple[str, ...]) -> None:
    completed = _run_entry(*args)
    assert "EXIT=0 TORCH_IMPORTED=False" in completed.stderr, completed.stderr


def test_the_probe_above_can_see_torch() -> None:
    # guards the test above: a command that scans does import torch, and the check notices
    completed = _run_entry("scan", "samples/dying_mlp.safetensors")  # a state dict without --arch: loaded first
    assert "EXIT=2 TORCH_IMPORTED=True" in completed.stderr, completed.stderr


def test_python_dash_m_version() -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "relu_doctor", "--version"], capture_output=True, text=True, timeout=60
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == f"relu-doctor {__version__}"


META_BUILD = """
import sys
import torch
from torch import nn
from relu_doctor.loading.build import build_with_weights

class KaimingNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        nn.init.kaiming_normal_(self.conv.weight)
        self.pos = nn.Parameter(torch.empty(4, 8))
        nn.init.trunc_normal_(self.pos, std=0.02)

sys.modules["kaiming_arch"] = type(sys)("kaiming_arch")
sys.modules["kaiming_arch"].KaimingNet = KaimingNet
weights = {k: torch.full_like(v, 0.5) for k, v in KaimingNet().state_dict().items()}
sys.modules.pop("torch._dynamo", None)
dynamo_before = any(name.startswith("torch._dynamo") for name in sys.modules)
model, _ = build_with_weights(weights, "kaiming_arch:KaimingNet", None, "weights.pt")
assert all(bool((t == 0.5).all()) and not t.is_meta for t in model.state_dict().values())
print("DYNAMO_IMPORTED", dynamo_before or "torch._dynamo" in sys.modules)
"""


def test_building_an_arch_on_meta_does_not_import_dynamo() -> None:
    # kaiming_normal_ on a meta tensor would go through torch._refs, which imports torch._dynamo (1.5-5 s a run)
    completed = subprocess.run([sys.executable, "-c", META_BUILD], capture_output=True, text=True, timeout=120)
    assert "DYNAMO_IMPORTED False" in completed.stdout, completed.stdout + completed.stderr
