"""Tiny models and checkpoint writers shared by the loading tests (not a conftest: owned by loading)."""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

INPUT_FEATURES = 4


class MixedReluNet(nn.Module):
    """Every relu-family spelling in one forward: nn.ReLU, torch.relu, nn.ReLU6, F.threshold(0, 0)."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.fc1 = nn.Linear(INPUT_FEATURES, width)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(width, width)
        self.norm = nn.BatchNorm1d(width)
        self.act6 = nn.ReLU6()
        self.head = nn.Linear(width, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.act(self.fc1(x)))
        x = self.act6(self.norm(self.fc2(x)))
        return self.head(F.threshold(x, 0.0, 0.0))


class PositionBufferNet(nn.Module):
    """A non-persistent buffer computed in __init__: stays on meta after assign, forcing the CPU rebuild."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(INPUT_FEATURES, 3)
        self.register_buffer("offset", torch.arange(3.0), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.fc(x) + self.offset)


class MetaHostileNet(MixedReluNet):
    """Reads a tensor value at init (`.item()`), which fails on the meta device."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = float(self.fc1.weight.abs().max().item()) * 0 + 1.0


def build_model(width: int = 8) -> MixedReluNet:
    """The --arch callable the tests point at."""
    return MixedReluNet(width)


def not_a_module() -> str:
    return "a string"


def exploding(**_: object) -> nn.Module:
    raise ValueError("width must be even")


def reference_model(seed: int = 0) -> MixedReluNet:
    """A trained-looking model in eval mode with non-trivial BatchNorm statistics."""
    torch.manual_seed(seed)
    model = MixedReluNet()
    with torch.no_grad():
        model.norm.running_mean.uniform_(-0.5, 0.5)
        model.norm.running_var.uniform_(0.5, 1.5)
    return model.eval()


def probe(seed: int = 1) -> torch.Tensor:
    return torch.randn(5, INPUT_FEATURES, generator=torch.Generator().manual_seed(seed))


HERE = Path(__file__).parent
ARCH_FILE_SPEC = f"{HERE / '_loading_helpers.py'}:build_model"
ARCH_MODULE_SPEC = "_loading_helpers:build_model"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_sharded(directory: Path, state: dict[str, torch.Tensor], kind: str) -> None:
    """A Hugging Face sharded layout: two shards and the index naming which tensor lives where."""
    directory.mkdir(parents=True, exist_ok=True)
    names = sorted(state)
    halves = {"a": names[: len(names) // 2], "b": names[len(names) // 2 :]}
    weight_map = {}
    for tag, keys in halves.items():
        shard = f"model-0000{tag}.{'safetensors' if kind == 'safetensors' else 'bin'}"
        part = {name: state[name].contiguous() for name in keys}
        save_file(part, directory / shard) if kind == "safetensors" else torch.save(part, directory / shard)
        weight_map.update(dict.fromkeys(keys, shard))
    index = "model.safetensors.index.json" if kind == "safetensors" else "pytorch_model.bin.index.json"
    (directory / index).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def write_legacy_export(path: Path, program: torch.export.ExportedProgram) -> None:
    """The torch.export.save layout used before the PT2 archive (torch < 2.7), written by hand."""
    from torch._export.serde.serialize import SCHEMA_VERSION, serialize

    artifact = serialize(program)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("serialized_exported_program.json", artifact.exported_program)
        archive.writestr("serialized_state_dict.pt", artifact.state_dict)
        archive.writestr("serialized_constants.pt", artifact.constants)
        archive.writestr("serialized_example_inputs.pt", artifact.example_inputs)
        archive.writestr("version", ".".join(map(str, SCHEMA_VERSION)))


def save_every_format(directory: Path, model: MixedReluNet) -> dict[str, Path]:
    """The same weights in every format relu-doctor reads, keyed by the format name sniff() reports."""
    state = model.state_dict()
    paths = {name: directory / file for name, file in _FILES.items()}
    torch.save(state, paths["torch-save"])
    torch.save(state, paths["torch-save-legacy"], _use_new_zipfile_serialization=False)
    save_file(state, paths["safetensors"])
    (paths["hf-safetensors"]).mkdir()
    save_file(state, paths["hf-safetensors"] / "model.safetensors")
    (paths["hf-bin"]).mkdir()
    torch.save(state, paths["hf-bin"] / "pytorch_model.bin")
    write_sharded(paths["hf-safetensors-sharded"], state, "safetensors")
    write_sharded(paths["hf-bin-sharded"], state, "bin")
    torch.save(
        {
            "state_dict": {f"model.{k}": v for k, v in state.items()},
            "epoch": 3,
            "pytorch-lightning_version": "2.4.0",
            "optimizer_states": [{"state": {}}],
        },
        paths["lightning"],
    )
    torch.save({f"module.{k}": v for k, v in state.items()}, paths["ddp"])
    torch.save(model, paths["pickled-module"])
    torch.jit.save(torch.jit.trace(model, probe()), paths["torchscript"])
    batch = torch.export.Dim("batch", min=2)
    program = torch.export.export(model, (probe(),), dynamic_shapes=({0: batch},))
    torch.export.save(program, paths["torch-export"])
    write_legacy_export(paths["torch-export-legacy"], program)
    return paths


_FILES = {
    "torch-save": "state.pt",
    "torch-save-legacy": "legacy.pt",
    "safetensors": "weights.safetensors",
    "hf-safetensors": "hf_single",
    "hf-bin": "hf_bin",
    "hf-safetensors-sharded": "hf_sharded",
    "hf-bin-sharded": "hf_bin_sharded",
    "lightning": "last.ckpt",
    "ddp": "ddp.pt",
    "pickled-module": "whole.pt",
    "torchscript": "scripted.pt",
    "torch-export": "program.pt2",
    "torch-export-legacy": "program_old.pt2",
}
