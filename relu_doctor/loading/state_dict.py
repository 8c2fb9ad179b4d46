"""Find the state dict inside a checkpoint and fit it to the --arch model.

Training checkpoints nest the weights (Lightning's `state_dict`, `model`, `ema`, ...) and wrappers
prefix the keys (`module.` from DDP, `_orig_mod.` from torch.compile, the LightningModule's
attribute name). A prefix is removed only when that makes the keys match the model exactly.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ..errors import ArchitectureError, CheckpointError
from .messages import first_few

_MAX_DEPTH = 3
_MAX_PREFIXES = 4
# Optimizer, scheduler and loop state hold str->tensor dicts too (exp_avg, ...), but never weights.
_NOT_WEIGHTS = ("optim", "sched", "scaler", "loops")
_PREFIX_REASONS = {"module.": "DistributedDataParallel", "_orig_mod.": "torch.compile"}


def is_state_dict(value: Any) -> bool:
    """A non-empty mapping from str keys to tensors."""
    return (
        isinstance(value, Mapping)
        and bool(value)
        and all(isinstance(key, str) and isinstance(item, torch.Tensor) for key, item in value.items())
    )


def candidates(checkpoint: Any, where: str = "", depth: int = 0) -> list[tuple[str, Any]]:
    """Every nested state dict (or whole nn.Module) in a checkpoint, as (dotted key, value) pairs."""
    if is_state_dict(checkpoint) or isinstance(checkpoint, torch.nn.Module):
        return [(where, checkpoint)]
    if not isinstance(checkpoint, Mapping) or depth >= _MAX_DEPTH:
        return []
    found: list[tuple[str, Any]] = []
    for key, value in checkpoint.items():
        if isinstance(key, str) and not any(word in key.lower() for word in _NOT_WEIGHTS):
            found += candidates(value, f"{where}.{key}" if where else key, depth + 1)
    return found


def select(checkpoint: Any, key: str | None, source: str) -> tuple[str, Any]:
    """(key, state dict or nn.Module) to load: the one `key` names, or the only candidate."""
    found = candidates(checkpoint)
    if key is not None:
        return key, _lookup(checkpoint, key, found, source)
    if len(found) == 1:
        return found[0]
    if not found:
        raise CheckpointError(
            f"{source} holds no tensors (a {type(checkpoint).__name__}"
            f"{' with keys ' + first_few(map(str, checkpoint), 5) if isinstance(checkpoint, Mapping) else ''}); "
            "save the model's state_dict() or pick the weights with --key"
        )
    names = first_few(name for name, _ in found)
    raise CheckpointError(
        f"{source} holds several state dicts ({names}); choose one with --key, e.g. --key {found[0][0]}"
    )


def _lookup(checkpoint: Any, key: str, found: list[tuple[str, Any]], source: str) -> Any:
    value = _walk(checkpoint, [key]) if _has(checkpoint, key) else _walk(checkpoint, key.split("."))
    if is_state_dict(value) or isinstance(value, torch.nn.Module):
        return value
    options = first_few(name for name, _ in found) if found else "none"
    raise CheckpointError(f"--key {key!r} does not name a state dict in {source}; candidates: {options}")


def _has(value: Any, key: str) -> bool:
    return isinstance(value, Mapping) and key in value


def _walk(value: Any, parts: list[str]) -> Any:
    for part in parts:
        if not _has(value, part):
            return None
        value = value[part]
    return value


def fit_keys(tensors: Mapping[str, Any], expected: set[str]) -> tuple[dict[str, Any], tuple[str, ...]]:
    """(tensors with wrapper prefixes removed, notes on what was removed) when that makes keys match.

    Without an exact match the tensors come back unchanged, so the mismatch error shows real keys.
    """
    if set(tensors) == expected:
        return dict(tensors), ()
    for start, notes in _variants(dict(tensors)):
        current, stripped = start, list(notes)
        for _ in range(_MAX_PREFIXES):
            if set(current) == expected:
                return current, tuple(stripped)
            prefix = _common_prefix(current)
            if prefix is None:
                break
            current = {name[len(prefix) :]: value for name, value in current.items()}
            stripped.append(_strip_note(prefix))
        if set(current) == expected:
            return current, tuple(stripped)
    return dict(tensors), ()


def _variants(tensors: dict[str, Any]) -> list[tuple[dict[str, Any], tuple[str, ...]]]:
    # torch.compile on a submodule leaves `_orig_mod.` in the middle of keys, not only in front.
    variants: list[tuple[dict[str, Any], tuple[str, ...]]] = [(tensors, ())]
    if any("._orig_mod." in name for name in tensors):
        inner = {name.replace("._orig_mod.", "."): value for name, value in tensors.items()}
        variants.append((inner, ("removed '_orig_mod.' (torch.compile) inside keys",)))
    return variants


def _common_prefix(tensors: Mapping[str, Any]) -> str | None:
    heads = {name.split(".", 1)[0] for name in tensors}
    if len(heads) != 1 or not all("." in name for name in tensors):
        return None
    return heads.pop() + "."


def _strip_note(prefix: str) -> str:
    reason = _PREFIX_REASONS.get(prefix, "wrapper or LightningModule attribute")
    return f"stripped prefix {prefix!r} ({reason}) from every key"


def check_match(tensors: Mapping[str, Any], model: torch.nn.Module, arch: str, source: str) -> None:
    """ArchitectureError naming missing/unexpected keys or shape mismatches; silent when they fit."""
    expected = model.state_dict()
    missing, unexpected = set(expected) - set(tensors), set(tensors) - set(expected)
    if missing or unexpected:
        raise ArchitectureError(
            f"weights in {source} do not match --arch {arch}: missing {len(missing)} keys"
            f"{' (' + first_few(missing, 3) + ')' if missing else ''}, unexpected {len(unexpected)} keys"
            f"{' (' + first_few(unexpected, 3) + ')' if unexpected else ''}; check --arch and its kwargs, "
            "or pick another state dict with --key"
        )
    wrong = [
        f"{name} {tuple(tensors[name].shape)} vs {tuple(value.shape)}"
        for name, value in expected.items()
        if isinstance(tensors[name], torch.Tensor) and tensors[name].shape != value.shape
    ]
    if wrong:
        raise ArchitectureError(
            f"weights in {source} do not fit --arch {arch}: shape mismatch in {len(wrong)} tensors "
            f"({'; '.join(wrong[:3])}, checkpoint vs model); check --arch kwargs such as widths"
        )
