"""Write a repaired checkpoint in the format family of its input, atomically, never touching the input.

The input file is re-read as it is on disk and only the tensor entries the repair changed are replaced (cast to the
file's dtype), so everything else (other keys of a training checkpoint, metadata, untouched weights bit for bit)
is kept. In a training checkpoint, the optimizer's per-parameter state (Adam moments, momentum) is zeroed at the
changed entries, as ReDo resets the moments of recycled weights.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import RepairError
from ..loading.sniff import PICKLED_MODULE, SAFETENSORS, TORCH_SAVE, TORCH_SAVE_LEGACY, sniff
from ..loading.state_dict import fit_keys, select
from ..loading.torch_save import TrustPolicy, read_torch_save
from .leaky import swap_to_leaky

WRITABLE = (SAFETENSORS, TORCH_SAVE, TORCH_SAVE_LEGACY, PICKLED_MODULE)
"""Formats `relu-doctor fix` can write back (single files)."""


@dataclass(frozen=True)
class Change:
    """The entries of one state-dict tensor the repair changed."""

    mask: torch.Tensor
    """True where the value changed."""
    value: torch.Tensor
    """The repaired tensor (CPU)."""


def check_writable(model_path: Path, format_name: str) -> None:
    """RepairError for formats fix cannot write back (directories, TorchScript, torch.export)."""
    if format_name in WRITABLE and model_path.is_file():
        return
    raise RepairError(
        f"{model_path} is a {format_name} checkpoint, which fix cannot write back; give it a single state-dict, "
        "safetensors or pickled-model file (e.g. the model.safetensors inside a Hugging Face folder, with --arch)"
    )


def changed_entries(original: nn.Module, repaired: nn.Module) -> dict[str, Change]:
    """Per state-dict key of the model, the entries whose value differs after the repair."""
    before = original.state_dict()
    changes: dict[str, Change] = {}
    for name, after in repaired.state_dict().items():
        old = before.get(name)
        if old is None or old.shape != after.shape:
            continue
        old, new = old.detach().cpu(), after.detach().cpu()
        mask = old != new
        if old.is_floating_point():
            mask &= ~(torch.isnan(old) & torch.isnan(new))
        if bool(mask.any()):
            changes[name] = Change(mask, new)
    return changes


Saver = Callable[[Callable[[str], None]], None]
"""Puts a file in place: called with a function that writes a temporary path (the workflow's one atomic writer)."""


def write_repaired(
    source: Path,
    write: Saver,
    *,
    key: str | None,
    policy: TrustPolicy,
    original: nn.Module,
    repaired: nn.Module,
    swapped: tuple[str, ...] = (),
) -> tuple[str, ...]:
    """Write ``repaired`` through ``write`` in the format of ``source``; returns notes on what else was done."""
    changes = changed_entries(original, repaired)
    model_keys = list(original.state_dict())
    format_name = sniff(source)
    if format_name == SAFETENSORS:
        return _write_safetensors(source, write, changes, model_keys)
    checkpoint = read_torch_save(source, format_name, policy)
    where, found = select(checkpoint, key, str(source))
    notes: list[str] = []
    if isinstance(found, nn.Module):
        _update_module(found, changes, swapped)
    else:
        _update_state_dict(found, changes, model_keys, str(source))
    if where and isinstance(checkpoint, MutableMapping):
        notes += reset_optimizer_state(checkpoint, changes, dict(original.named_parameters()))
    legacy = format_name == TORCH_SAVE_LEGACY
    write(lambda temporary: torch.save(checkpoint, temporary, _use_new_zipfile_serialization=not legacy))
    return tuple(notes)


def _write_safetensors(
    source: Path, write: Saver, changes: dict[str, Change], model_keys: list[str]
) -> tuple[str, ...]:
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(source))
    with safe_open(str(source), framework="pt") as handle:
        metadata = handle.metadata()
    _update_state_dict(tensors, changes, model_keys, str(source))
    write(
        lambda temporary: save_file({k: v.contiguous() for k, v in tensors.items()}, temporary, metadata=metadata),
    )
    return ()


def _update_state_dict(
    tensors: MutableMapping[str, Any], changes: dict[str, Change], model_keys: list[str], source: str
) -> None:
    """Replace the changed entries in a state dict whose keys may carry a wrapper prefix (module., _orig_mod.)."""
    key_of = file_keys(tensors, model_keys, source)
    for name, change in changes.items():
        stored = tensors[key_of[name]]
        tensors[key_of[name]] = torch.where(change.mask, change.value.to(stored.dtype), stored.detach().cpu())


def file_keys(tensors: Mapping[str, Any], model_keys: list[str], source: str) -> dict[str, str]:
    """Model state-dict key -> the key the file uses for it (the loader may have stripped a prefix)."""
    fitted, _ = fit_keys(tensors, set(model_keys))
    if set(fitted) != set(model_keys):
        raise RepairError(f"{source}: the file's keys no longer match the model's; re-run fix on an unchanged file")
    return dict(zip(fitted, tensors))


@torch.no_grad()
def _update_module(module: nn.Module, changes: dict[str, Change], swapped: tuple[str, ...]) -> None:
    state = module.state_dict(keep_vars=True)
    for name, change in changes.items():
        stored = state[name]
        stored.copy_(torch.where(change.mask.to(stored.device), change.value.to(stored.device, stored.dtype), stored))
    swap_to_leaky(module, swapped)


def reset_optimizer_state(
    checkpoint: MutableMapping[str, Any], changes: dict[str, Change], parameters: Mapping[str, Any]
) -> list[str]:
    """Zero per-parameter optimizer state at the changed entries, for every optimizer state dict that maps.

    Optimizer entries are numbered in the order the parameters were given, which is ``model.parameters()``
    order when the optimizer was built the usual way; the mapping is used only when every shape agrees.
    """
    names = list(parameters)
    notes = []
    for key, optimizer in _optimizer_states(checkpoint):
        ids = [i for group in optimizer["param_groups"] for i in group.get("params", ())]
        if len(ids) != len(names) or not _shapes_match(optimizer["state"], ids, names, parameters):
            notes.append(f"optimizer state {key!r} left as it was: its entries do not map onto the model's parameters")
            continue
        reset = _zero_changed(optimizer["state"], dict(zip(ids, names)), changes)
        notes.append(f"optimizer state {key!r}: zeroed {reset:,} per-parameter entries of the changed weights")
    return notes


def _optimizer_states(checkpoint: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    found = []
    for key, value in checkpoint.items():
        candidates = value if isinstance(value, list) else [value]
        for index, item in enumerate(candidates):
            if (
                isinstance(item, dict)
                and isinstance(item.get("state"), dict)
                and isinstance(item.get("param_groups"), list)
            ):
                found.append((key if len(candidates) == 1 else f"{key}[{index}]", item))
    return found


def _shapes_match(state: Mapping[Any, Any], ids: list[Any], names: list[str], parameters: Mapping[str, Any]) -> bool:
    shape_of = {i: tuple(parameters[n].shape) for i, n in zip(ids, names)}
    for index, entry in state.items():
        for value in entry.values() if isinstance(entry, dict) else ():
            if isinstance(value, torch.Tensor) and value.dim() > 0 and tuple(value.shape) != shape_of.get(index):
                return False
    return True


def _zero_changed(state: MutableMapping[Any, Any], name_of: dict[Any, str], changes: dict[str, Change]) -> int:
    reset = 0
    for index, entry in state.items():
        change = changes.get(name_of.get(index, ""))
        if change is None or not isinstance(entry, dict):
            continue
        for field, value in list(entry.items()):
            if isinstance(value, torch.Tensor) and value.shape == change.mask.shape:
                entry[field] = value.masked_fill(change.mask.to(value.device), 0)
                reset += int(change.mask.sum())
    return reset
