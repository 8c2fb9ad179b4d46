"""Hugging Face folders that carry code or pickles (issue 17): a config naming its own model code (auto_map) is
refused without --trust before any of its code runs; pytorch_model.bin (one file or sharded) loads through the
weights-only unpickler, and a .bin whose pickle would call a function is refused without calling it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from _hf_models import brute_force, opt_model  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from relu_doctor.cli import app  # noqa: E402
from relu_doctor.loading import load_model  # noqa: E402

CONFIGURATION = """
from pathlib import Path
Path({marker!r}).open("a").write("configuration imported\\n")
from transformers import PretrainedConfig

class ReluCustomConfig(PretrainedConfig):
    model_type = "relu-custom"

    def __init__(self, width=8, **kwargs):
        self.width = width
        super().__init__(**kwargs)
"""

MODELING = """
from pathlib import Path
Path({marker!r}).open("a").write("modeling imported\\n")
import torch
from transformers import PreTrainedModel
from .configuration_relu_custom import ReluCustomConfig

class ReluCustomModel(PreTrainedModel):
    config_class = ReluCustomConfig

    def __init__(self, config):
        super().__init__(config)
        self.fc = torch.nn.Linear(config.width, config.width)
        self.act = torch.nn.ReLU()
        self.post_init()

    def forward(self, x):
        return self.act(self.fc(x))
"""


def _remote_code_folder(root: Path, marker: Path) -> tuple[Path, Path]:
    """A folder whose config.json names its model class in modeling_relu_custom.py; 3 of 8 units dead."""
    from safetensors.torch import save_file

    folder = root / "custom"
    folder.mkdir()
    (folder / "configuration_relu_custom.py").write_text(CONFIGURATION.format(marker=str(marker)))
    (folder / "modeling_relu_custom.py").write_text(MODELING.format(marker=str(marker)))
    auto_map = {
        "AutoConfig": "configuration_relu_custom.ReluCustomConfig",
        "AutoModel": "modeling_relu_custom.ReluCustomModel",
    }
    config = {"model_type": "relu-custom", "width": 8, "architectures": ["ReluCustomModel"], "auto_map": auto_map}
    (folder / "config.json").write_text(json.dumps(config))
    torch.manual_seed(0)
    weight, bias = torch.randn(8, 8), torch.zeros(8)
    bias[:3] = -100.0  # units 0, 1, 2 never fire on inputs in [-1, 1]
    save_file({"fc.weight": weight, "fc.bias": bias}, str(folder / "model.safetensors"))
    probe = root / "x.npy"
    np.save(probe, np.random.default_rng(0).uniform(-1, 1, size=(32, 8)).astype(np.float32))
    return folder, probe


def test_remote_code_config_is_refused_without_trust_and_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "code-ran.txt"
    folder, probe = _remote_code_folder(tmp_path, marker)
    result = CliRunner().invoke(app, ["scan", str(folder), "--probe", str(probe)])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "--trust" in lines[0] and "modeling_relu_custom.ReluCustomModel" in lines[0]
    assert "Traceback" not in result.output
    assert not marker.exists()  # neither file of the folder was imported


def test_remote_code_config_builds_with_trust(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import transformers.dynamic_module_utils as dynamic

    monkeypatch.setattr(dynamic, "HF_MODULES_CACHE", str(tmp_path / "hf-modules"))  # transformers copies code here
    marker = tmp_path / "code-ran.txt"
    folder, probe = _remote_code_folder(tmp_path, marker)
    result = CliRunner().invoke(app, ["scan", str(folder), "--probe", str(probe), "--trust", "--format", "json"])
    assert result.exit_code in (0, 1), result.output  # 1: the gate fails on 3 of 8 dead units
    report = json.loads(result.stdout)
    assert [site["name"] for site in report["sites"]] == ["act"]
    assert report["sites"][0]["dead_units"] == [0, 1, 2]
    assert "modeling imported" in marker.read_text()  # --trust really ran the folder's code


def _bin_folder(root: Path, shards: int) -> tuple[Path, transformers.OPTForCausalLM]:
    """The tiny OPT as pytorch_model.bin (torch.save of its state dict, as transformers writes it), or sharded
    into ``shards`` files with pytorch_model.bin.index.json."""
    model = opt_model(vocab=32)
    folder = root / f"opt-bin-{shards}"
    folder.mkdir()
    model.config.architectures = ["OPTForCausalLM"]  # what save_pretrained writes into config.json
    model.config.save_pretrained(folder)
    state = {key: tensor.clone() for key, tensor in model.state_dict().items() if key != "lm_head.weight"}
    if shards == 1:
        torch.save(state, folder / "pytorch_model.bin")
        return folder, model
    keys = list(state)
    weight_map = {}
    for number in range(shards):
        name = f"pytorch_model-{number + 1:05d}-of-{shards:05d}.bin"
        part = {key: state[key] for key in keys[number::shards]}
        torch.save(part, folder / name)
        weight_map.update(dict.fromkeys(part, name))
    index = {"metadata": {}, "weight_map": weight_map}
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    return folder, model


@pytest.mark.parametrize("shards", [1, 3])
def test_pytorch_model_bin_folder_loads_weights_only_and_scans(tmp_path: Path, shards: int) -> None:
    folder, original = _bin_folder(tmp_path, shards)
    loaded = load_model(folder)
    assert loaded.info.format == ("hf-bin" if shards == 1 else "hf-bin-sharded")
    for key, tensor in original.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], tensor), key
    ids = np.random.default_rng(1).integers(3, 32, size=(5, 6), dtype=np.int64)
    np.save(tmp_path / "ids.npy", ids)
    result = CliRunner().invoke(app, ["scan", str(folder), "--probe", str(tmp_path / "ids.npy"), "--format", "json"])
    assert result.exit_code in (0, 1), result.output
    report = json.loads(result.stdout)
    oracle = brute_force(original, (torch.as_tensor(row) for row in ids))
    for site in report["sites"]:
        positive, fired, _, positions, samples = oracle[site["module_path"]]
        assert (site["samples"], site["positions_per_unit"]) == (samples, positions) == (5, 30)
        assert site["dead_units"] == [unit for unit, count in enumerate(fired) if count == 0]


class _Opens:
    """Unpickling this calls open(path, "w"): a file appears if the loader ever runs pickled code."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.path), "w"))


def test_bin_shard_whose_pickle_calls_a_function_is_refused_without_calling_it(tmp_path: Path) -> None:
    folder, _ = _bin_folder(tmp_path, 3)
    marker = tmp_path / "pickle-ran.txt"
    shard = folder / "pytorch_model-00002-of-00003.bin"
    part = torch.load(shard, weights_only=True)
    part["model.decoder.final_layer_norm.weight"] = _Opens(marker)
    torch.save(part, shard)
    probe = tmp_path / "ids.npy"  # exists (a missing probe is refused before loading); the load fails first
    np.save(probe, np.zeros((2, 4), dtype=np.int64))
    result = CliRunner().invoke(app, ["scan", str(folder), "--probe", str(probe)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1 and "open" in result.output
    assert not marker.exists()
