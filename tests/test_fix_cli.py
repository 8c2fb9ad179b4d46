"""`relu-doctor fix` end to end: the file written (format, untouched tensors, training-checkpoint keys, optimizer
moments), the input never touched, overwrite protection, the before/after check and its exit codes 0 / 1 / 2."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

pytest.importorskip("relu_doctor.loading", reason="the checkpoint loader (relu_doctor.loading) is not importable yet")

from typer.testing import CliRunner, Result  # noqa: E402

from relu_doctor.cli import app  # noqa: E402
from relu_doctor.loading import sniff  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "samples"
DYING = SAMPLES / "dying_mlp.safetensors"
ARCH = f"{SAMPLES / 'digits_mlp.py'}:build_mlp"
PROBE = str(SAMPLES / "digits_probe.npy")
DEAD_ACT2 = 78
"""samples/README.md: 78 of act2's 128 units are dead on the 512-sample probe (killed by Adam at lr 3e-2)."""


def invoke(*args: str) -> Result:
    return CliRunner().invoke(app, ["fix", *args])


def fix_sample(model: Path, out: Path, *extra: str) -> Result:
    return invoke(str(model), "--arch", ARCH, "--probe", PROBE, "-o", str(out), *extra)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_one_line_error(result: Result, *words: str) -> None:
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert all(word in lines[0] for word in words), lines[0]
    assert result.stdout == ""


def sample_model() -> nn.Module:
    sys.path.insert(0, str(SAMPLES))
    try:
        from digits_mlp import build_mlp
    finally:
        sys.path.remove(str(SAMPLES))
    model = build_mlp()
    model.load_state_dict(load_file(DYING))
    return model


def test_recycle_writes_safetensors_verifies_and_leaves_the_input_alone(tmp_path: Path) -> None:
    before = sha256(DYING)
    out = tmp_path / "fixed.safetensors"
    result = fix_sample(DYING, out, "-s", "recycle", "--format", "json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)  # stdout holds the JSON and nothing else
    assert sha256(DYING) == before
    assert sniff(out) == "safetensors"
    checks = {c["site"]: c for c in data["verification"]["sites"]}
    assert (checks["act2"]["dead_before"], checks["act2"]["dead_after"]) == (DEAD_ACT2, 0)
    assert data["verification"]["passed"] and data["verification"]["drift"]["relative_l2"] <= 1e-6
    assert data["units_repaired"] == DEAD_ACT2 and data["exit_code"] == 0
    old, new = load_file(DYING), load_file(out)
    assert set(new) == set(old)
    for name in ("fc1.weight", "fc1.bias"):  # not on the repaired path: bit for bit the same
        assert torch.equal(new[name], old[name])
    dead = [u["units"] for u in data["repaired"]][0]
    assert torch.equal(new["fc3.weight"][:, dead], torch.zeros(10, DEAD_ACT2))
    assert "written and verified" in result.stderr


def test_the_table_shows_before_and_after(tmp_path: Path) -> None:
    result = fix_sample(DYING, tmp_path / "fixed.safetensors", "-s", "recycle")
    assert result.exit_code == 0, result.stderr
    assert "before / after" in result.stdout and "relative L2 0 (limit 1e-06)" in result.stdout
    row = next(line for line in result.stdout.splitlines() if "act2" in line and "│" in line)
    assert [cell.strip() for cell in row.split("│")[1:-1]] == ["act2", "128", "78", "0", "12", "12"]


def test_safetensors_metadata_is_kept(tmp_path: Path) -> None:
    source = tmp_path / "with_meta.safetensors"
    save_file(load_file(DYING), str(source), metadata={"epoch": "9"})
    out = tmp_path / "fixed.safetensors"
    assert fix_sample(source, out, "-s", "recycle").exit_code == 0
    with safe_open(str(out), framework="pt") as handle:
        assert handle.metadata() == {"epoch": "9"}


def test_existing_output_is_refused_without_force(tmp_path: Path) -> None:
    out = tmp_path / "taken.safetensors"
    out.write_bytes(b"keep me")
    assert_one_line_error(fix_sample(DYING, out, "-s", "recycle"), str(out), "--force")
    assert out.read_bytes() == b"keep me"
    assert fix_sample(DYING, out, "-s", "recycle", "--force").exit_code == 0
    assert sniff(out) == "safetensors"


def test_the_input_is_never_the_output_even_with_force(tmp_path: Path) -> None:
    source = tmp_path / "model.safetensors"
    source.write_bytes(DYING.read_bytes())
    before = sha256(source)
    assert_one_line_error(fix_sample(source, source, "-s", "recycle", "--force"), "input")
    assert sha256(source) == before


def test_training_checkpoint_keeps_its_keys_and_resets_the_optimizer_moments(tmp_path: Path) -> None:
    model = sample_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.0)  # lr 0: the moments fill, the weights stay dead
    model(torch.randn(32, 64)).square().mean().backward()
    optimizer.step()
    source = tmp_path / "train.pt"
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": 7}, source)
    out = tmp_path / "fixed.pt"
    result = fix_sample(source, out, "-s", "recycle", "--key", "model", "--format", "json")
    assert result.exit_code == 0, result.stderr
    saved = torch.load(out, weights_only=True)
    assert saved["epoch"] == 7 and set(saved) == {"model", "optimizer", "epoch"}
    dead = json.loads(result.stdout)["repaired"][0]["units"]
    alive = [u for u in range(128) if u not in dead]
    moments = saved["optimizer"]["state"]
    # Parameter order: fc1.weight 0, fc1.bias 1, fc2.weight 2, fc2.bias 3, fc3.weight 4, fc3.bias 5.
    old = optimizer.state_dict()["state"]
    for field in ("exp_avg", "exp_avg_sq"):
        assert torch.equal(moments[4][field][:, dead], torch.zeros(10, len(dead)))
        assert torch.equal(moments[4][field][:, alive], old[4][field][:, alive])
        assert torch.equal(moments[2][field][dead], torch.zeros(len(dead), 128))  # re-drawn incoming rows
        assert torch.equal(moments[0][field], old[0][field])
    assert any("optimizer state 'optimizer'" in note for note in json.loads(result.stdout)["written"])


def test_a_wrapper_prefix_in_the_file_is_kept(tmp_path: Path) -> None:
    source = tmp_path / "ddp.pt"
    torch.save({f"module.{k}": v for k, v in load_file(DYING).items()}, source)
    out = tmp_path / "fixed.pt"
    assert fix_sample(source, out, "-s", "recycle").exit_code == 0
    saved = torch.load(out, weights_only=True)
    assert all(k.startswith("module.") for k in saved) and len(saved) == 6


def test_bias_shift_over_the_drift_limit_exits_1(tmp_path: Path) -> None:
    out = tmp_path / "shifted.safetensors"
    result = fix_sample(DYING, out, "-s", "bias-shift", "--max-drift", "0", "--format", "json")
    assert result.exit_code == 1, result.stderr
    data = json.loads(result.stdout)
    assert data["verification"]["drift"]["relative_l2"] > 0 and not data["verification"]["passed"]
    assert {c["site"]: c["dead_after"] for c in data["verification"]["sites"]} == {"act1": 0, "act2": 0}
    assert "did NOT verify" in result.stderr and out.exists()


def test_leaky_on_a_state_dict_prints_the_code_change_and_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "leaky.safetensors"
    result = fix_sample(DYING, out, "-s", "leaky", "--format", "json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["output"] is None and not out.exists()
    assert data["notes"] == ["in your model code, make DigitsMLP.act2 an nn.LeakyReLU(0.01) instead of nn.ReLU()"]
    assert data["drift_in_memory"]["relative_l2"] > 0


def test_leaky_on_a_pickled_model_swaps_the_module(tmp_path: Path) -> None:
    net = nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
    with torch.no_grad():
        net[0].bias[:4] = -1000.0
    source, out = tmp_path / "whole.pt", tmp_path / "leaky.pt"
    torch.save(net, source)
    result = invoke(str(source), "--trust", "--probe", PROBE, "-s", "leaky", "-o", str(out), "--format", "json")
    assert result.exit_code == 0, result.stderr
    swapped = torch.load(out, weights_only=False)
    assert isinstance(swapped[1], nn.LeakyReLU) and swapped[1].negative_slope == 0.01
    assert torch.equal(swapped[0].weight, net[0].weight)
    assert json.loads(result.stdout)["verification"]["sites"][0]["dead_after"] is None  # no longer a relu site


def test_recycle_on_a_pickled_model_writes_a_pickled_model(tmp_path: Path) -> None:
    net = nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
    with torch.no_grad():
        net[0].bias[:4] = -1000.0  # units 0..3 never fire
    source, out = tmp_path / "whole.pt", tmp_path / "fixed.pt"
    torch.save(net, source)
    result = invoke(str(source), "--trust", "--probe", PROBE, "-s", "recycle", "-o", str(out), "--format", "json")
    assert result.exit_code == 0, result.stderr
    assert sniff(out) == "pickled-module"
    fixed = torch.load(out, weights_only=False)
    assert torch.equal(fixed[2].weight[:, :4], torch.zeros(10, 4)) and torch.equal(fixed[0].bias[:4], torch.zeros(4))
    assert torch.equal(fixed[0].weight[4:], net[0].weight[4:])
    assert json.loads(result.stdout)["verification"]["sites"][0]["dead_after"] == 0


def test_a_hard_link_to_the_input_is_the_input(tmp_path: Path) -> None:
    source = tmp_path / "model.safetensors"
    source.write_bytes(DYING.read_bytes())
    (tmp_path / "link.safetensors").hardlink_to(source)
    assert_one_line_error(fix_sample(source, tmp_path / "link.safetensors", "-s", "recycle", "--force"), "input")


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_unwritable_formats_and_bad_options_are_one_line_errors(tmp_path: Path) -> None:
    scripted = tmp_path / "scripted.pt"
    torch.jit.script(nn.Sequential(nn.Linear(64, 8), nn.ReLU(), nn.Linear(8, 2))).save(str(scripted))
    result = invoke(str(scripted), "--trust", "--probe", PROBE, "-s", "recycle", "-o", str(tmp_path / "o.pt"))
    assert_one_line_error(result, "torchscript", "cannot write back")
    result = fix_sample(DYING, tmp_path / "o.safetensors", "-s", "bias-shift", "--include-dying")
    assert_one_line_error(result, "--include-dying", "bias-shift")
    result = fix_sample(DYING, tmp_path / "missing" / "o.safetensors", "-s", "recycle")
    assert_one_line_error(result, "does not exist")
    assert not (tmp_path / "o.pt").exists() and not (tmp_path / "o.safetensors").exists()
