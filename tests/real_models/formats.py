"""Save one model in each of the five formats relu-doctor reads, and the command-line arguments to scan each."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

FORMATS = ("state-dict", "safetensors", "pickled-module", "torchscript", "torch-export")


def save_state_dict(model: nn.Module, path: Path) -> Path:
    torch.save(model.state_dict(), path)
    return path


def save_safetensors(model: nn.Module, path: Path) -> Path:
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
    return path


def save_pickled(model: nn.Module, path: Path) -> Path:
    torch.save(model, path)
    return path


def save_torchscript(model: nn.Module, path: Path, example: torch.Tensor, how: str = "script") -> Path:
    scripted = torch.jit.script(model) if how == "script" else torch.jit.trace(model, (example,))
    torch.jit.save(scripted, str(path))
    return path


def save_export(model: nn.Module, path: Path, example: torch.Tensor, dynamic_batch: bool = True) -> Path:
    """A torch.export .pt2; with ``dynamic_batch`` the batch axis may take any size >= 2."""
    shapes = ({0: torch.export.Dim("batch", min=2)},) if dynamic_batch else None
    program = torch.export.export(model, (example,), dynamic_shapes=shapes)
    torch.export.save(program, str(path))
    return path


def save(model: nn.Module, fmt: str, directory: Path, *, arch: str, example: torch.Tensor, script: str) -> list[str]:
    """Write ``model`` in format ``fmt`` under ``directory``; the scan arguments that load it."""
    directory.mkdir(parents=True, exist_ok=True)
    if fmt == "state-dict":
        return [str(save_state_dict(model, directory / "state.pt")), "--arch", arch]
    if fmt == "safetensors":
        return [str(save_safetensors(model, directory / "weights.safetensors")), "--arch", arch]
    if fmt == "pickled-module":
        return [str(save_pickled(model, directory / "whole.pt")), "--trust"]
    if fmt == "torchscript":
        return [str(save_torchscript(model, directory / "scripted.pt", example, script)), "--trust"]
    if fmt == "torch-export":
        return [str(save_export(model, directory / "program.pt2", example)), "--trust"]
    raise ValueError(f"unknown format {fmt!r}")
