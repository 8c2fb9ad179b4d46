"""`fix` never calls a worse model verified (issue 15): every site is compared before and after, a fix that leaves
more dead units anywhere or fails to revive a unit it claimed exits 1 and names every such unit, nothing written
is "not applied", skip reasons are the real ones, and the scan's bias-shift prediction is what fix does."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn
from typer.testing import CliRunner, Result

from relu_doctor.cli import app


def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(app, list(args), env=env)


def probe_file(tmp_path: Path, features: int, samples: int = 512, seed: int = 0) -> str:
    path = tmp_path / "probe.npy"
    np.save(path, np.random.default_rng(seed).standard_normal((samples, features)).astype(np.float32))
    return str(path)


class LeakyKillsNextSite(nn.Module):
    """3 dead units in relu1 (bias -1000); once they leak (0.01 * -1000 = -10 each), the +1 weights every unit of
    lin2 gives them push lin2's pre-activation down by 30: all 16 units of relu2 die."""

    def __init__(self) -> None:
        super().__init__()
        self.lin1, self.relu1 = nn.Linear(8, 16), nn.ReLU()
        self.lin2, self.relu2 = nn.Linear(16, 16), nn.ReLU()
        self.head = nn.Linear(16, 4)
        with torch.no_grad():
            self.lin1.bias[:3] = -1000.0
            self.lin2.weight[:, :3] = 1.0
            self.lin2.bias.fill_(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.relu2(self.lin2(self.relu1(self.lin1(x)))))


ARCH_SOURCE = """
import torch
from torch import nn

class LeakyKillsNextSite(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin1, self.relu1 = nn.Linear(8, 16), nn.ReLU()
        self.lin2, self.relu2 = nn.Linear(16, 16), nn.ReLU()
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        return self.head(self.relu2(self.lin2(self.relu1(self.lin1(x)))))
"""


def test_leaky_that_kills_the_next_site_is_not_verified_and_names_every_new_dead_unit(tmp_path: Path) -> None:
    source, out = tmp_path / "whole.pt", tmp_path / "leaky.pt"
    torch.save(LeakyKillsNextSite(), source)
    args = ("fix", str(source), "--trust", "--probe", probe_file(tmp_path, 8), "-s", "leaky", "-o", str(out))
    result = invoke(*args, "--format", "json")
    assert result.exit_code == 1, (result.stdout, result.stderr)
    data = json.loads(result.stdout)
    relu2 = next(s for s in data["verification"]["sites"] if s["site"] == "relu2")
    assert relu2["dead_before"] == 0 and relu2["dead_after"] == 16 and relu2["newly_dead"] == list(range(16))
    assert not data["verification"]["passed"]
    assert "relu2: 16 units newly dead (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15)" in result.stderr
    text = invoke(*args, "--force")
    assert text.exit_code == 1 and "verified" not in text.stdout.replace("did NOT verify", "")
    assert "✓" not in text.stdout.splitlines()[-1]


def test_leaky_on_a_state_dict_is_not_applied(tmp_path: Path) -> None:
    (tmp_path / "arch.py").write_text(ARCH_SOURCE)
    source = tmp_path / "weights.safetensors"
    save_file(LeakyKillsNextSite().state_dict(), source)
    result = invoke(
        "fix",
        str(source),
        "--arch",
        f"{tmp_path / 'arch.py'}:LeakyKillsNextSite",
        "--probe",
        probe_file(tmp_path, 8),
        "-s",
        "leaky",
        "-o",
        str(tmp_path / "out.safetensors"),
        "--no-color",
    )
    assert not (tmp_path / "out.safetensors").exists()
    assert "✓" not in result.stdout and "units repaired" not in result.stdout, result.stdout
    assert "not applied" in result.stdout
    # in memory the swap kills relu2 as it would once the code is changed: say so, exit 1
    assert result.exit_code == 1 and "relu2: 16 units newly dead" in result.stdout


class ShiftsInteract(nn.Module):
    """Bias shifts that interact across layers: relu1's dead units 0..3 (tiny weights, bias -1000: once shifted they
    fire at about the 0.1 margin on every sample) and relu2's dead units 0..3. lin2 reads relu1's units with weight
    -100, so after both shifts relu2's units, sized on the unshifted input, sit 4 * 0.1 * 100 = 40 short again.
    A per-site simulation (relu2 shifted alone) would call them revived."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lin1, self.relu1 = nn.Linear(8, 16), nn.ReLU()
        self.lin2, self.relu2 = nn.Linear(16, 16), nn.ReLU()
        self.head = nn.Linear(16, 4)
        with torch.no_grad():
            self.lin1.weight[:4] *= 1e-3
            self.lin1.bias[:4] = -1000.0
            self.lin2.weight[:4, :4] = -100.0
            self.lin2.bias[:4] = -50.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.relu2(self.lin2(self.relu1(self.lin1(x)))))


def test_bias_shift_prediction_and_fix_agree_when_shifts_interact(tmp_path: Path) -> None:
    source, out = tmp_path / "whole.pt", tmp_path / "shifted.pt"
    torch.save(ShiftsInteract(), source)
    probe = probe_file(tmp_path, 8)
    scanned = invoke("scan", str(source), "--trust", "--probe", probe, "-f", "json", "--exit-zero")
    assert scanned.exit_code == 0, scanned.stderr
    findings = json.loads(scanned.stdout)["findings"]
    predicted: dict[str, int] = {}
    for f in findings:  # a site's dead units may be split over several cause findings
        for shift in (p for p in f["predicted"] if p["fix"] == "bias_shift"):
            predicted[f["site"]] = predicted.get(f["site"], 0) + shift["revived"]
    fixed = invoke("fix", str(source), "--trust", "--probe", probe, "-s", "bias-shift", "-o", str(out), "-f", "json")
    data = json.loads(fixed.stdout)
    still = {entry["site"]: entry["units"] for entry in data["verification"]["still_dead"]}
    revived = {r["site"]: len(r["units"]) - len(still.get(r["site"], [])) for r in data["repaired"]}
    assert predicted == revived, (predicted, revived)
    assert revived["relu1"] == 4 and revived["relu2"] == 0  # the interaction is real: relu2's shift falls short
    assert fixed.exit_code == 1
    units = ", ".join(map(str, still["relu2"]))
    assert f"relu2: {len(still['relu2'])} repaired units still dead ({units})" in fixed.stderr


class FoldDrifts(nn.Module):
    """lin1 units 0..1 dead, units 2..5 dying (fire on ~0.5% of samples, bias -2.6 on a unit-norm row); head reads
    the dying ones with weight 50, so folding their mean into head's bias moves the output well past 1e-2."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lin1, self.relu1, self.head = nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)
        with torch.no_grad():
            self.lin1.weight[2:6] = torch.nn.functional.normalize(self.lin1.weight[2:6], dim=1)
            self.lin1.bias[2:6] = -2.6
            self.lin1.bias[:2] = -1000.0
            self.head.weight[:, 2:6] = 50.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.relu1(self.lin1(x)))


def test_include_dying_skips_the_dying_units_for_the_real_reason_and_still_recycles_the_dead(tmp_path: Path) -> None:
    source, out = tmp_path / "whole.pt", tmp_path / "fixed.pt"
    torch.save(FoldDrifts(), source)
    probe = probe_file(tmp_path, 8, samples=2048)
    result = invoke(
        "fix",
        str(source),
        "--trust",
        "--probe",
        probe,
        "-s",
        "recycle",
        "--include-dying",
        "-o",
        str(out),
        "-f",
        "json",
    )
    data = json.loads(result.stdout)
    assert [(r["site"], r["units"]) for r in data["repaired"]] == [("relu1", [0, 1])], data["repaired"]
    (skip,) = data["skipped"]
    assert skip["units"] == [2, 3, 4, 5] and "folding" in skip["reason"] and "did not show" not in skip["reason"]
    assert result.exit_code == 0 and data["verification"]["passed"]


def test_fix_reads_relu_doctor_dying_rate_like_scan(tmp_path: Path) -> None:
    """Issue 12: RELU_DOCTOR_DYING_RATE=0 makes no unit dying, so --include-dying has only the dead to repair."""
    source = tmp_path / "whole.pt"
    torch.save(FoldDrifts(), source)
    probe = probe_file(tmp_path, 8, samples=2048)
    base = ("fix", str(source), "--trust", "--probe", probe, "-s", "recycle", "--include-dying", "-f", "json")
    default = json.loads(invoke(*base, "-o", str(tmp_path / "a.pt")).stdout)
    env = json.loads(invoke(*base, "-o", str(tmp_path / "b.pt"), env={"RELU_DOCTOR_DYING_RATE": "0"}).stdout)
    assert default["skipped"] and default["skipped"][0]["units"] == [2, 3, 4, 5]  # dying at the default 0.01
    assert env["skipped"] == [] and env["repaired"][0]["units"] == [0, 1]  # nothing dying at rate 0
    config = tmp_path / "relu.toml"
    config.write_text("dying_rate = 0.0\n")
    from_file = json.loads(invoke(*base, "-o", str(tmp_path / "c.pt"), "--config", str(config)).stdout)
    assert from_file["skipped"] == []
