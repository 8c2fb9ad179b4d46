"""Read the weights-only formats: safetensors files and Hugging Face directories (single or sharded)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError
from .messages import describe_exception, first_few
from .sniff import (
    DIRECTORY_FORMATS,
    HF_BIN_SHARDED,
    HF_SAFETENSORS_SHARDED,
    PICKLED_MODULE,
    SAFETENSORS,
    TORCH_SAVE,
    TORCH_SAVE_LEGACY,
    sniff,
)
from .torch_save import TrustPolicy, read_torch_save

# safetensors itself refuses headers above 100 MB; checking first gives the user a clearer reason.
_MAX_HEADER = 100_000_000
_MAX_INDEX = 64 << 20


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file, after checking its header against the file size."""
    _check_safetensors_header(path)
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(path, device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError, TypeError) as error:
        raise CheckpointError(
            f"{path}: cannot read this safetensors file ({describe_exception(error)}); "
            "it is damaged or truncated, re-download or re-export it"
        ) from None


def _check_safetensors_header(path: Path) -> None:
    size = path.stat().st_size
    with path.open("rb") as stream:
        claimed = int.from_bytes(stream.read(8), "little")
        if claimed > min(size - 8, _MAX_HEADER):
            raise CheckpointError(
                f"{path}: the safetensors header claims {claimed} bytes but the file has {size}; "
                "it is truncated or corrupted, re-download or re-export it"
            )
        header = _parse_json(path, stream.read(claimed), "safetensors header")
    data_bytes = size - 8 - claimed
    for name, entry in header.items():
        if name != "__metadata__":
            _check_tensor_entry(path, name, entry, data_bytes)


def _check_tensor_entry(path: Path, name: str, entry: Any, data_bytes: int) -> None:
    offsets: Any = entry.get("data_offsets") if isinstance(entry, dict) else None
    valid = (
        isinstance(offsets, list)
        and len(offsets) == 2
        and all(isinstance(offset, int) for offset in offsets)
        and 0 <= offsets[0] <= offsets[1]
    )
    if not valid:
        raise CheckpointError(f"{path}: safetensors entry {name!r} has no valid data_offsets; re-export the file")
    if offsets[1] > data_bytes:
        raise CheckpointError(
            f"{path}: safetensors tensor {name!r} claims bytes {offsets[0]}..{offsets[1]} but the data "
            f"section holds {data_bytes}; the file is truncated or corrupted, re-download it"
        )


def _parse_json(path: Path, text: bytes, what: str) -> dict[str, Any]:
    try:
        parsed = json.loads(text)
    except (ValueError, RecursionError) as error:
        raise CheckpointError(
            f"{path}: the {what} is not valid JSON ({describe_exception(error)}); re-export it"
        ) from None
    if not isinstance(parsed, dict):
        raise CheckpointError(f"{path}: the {what} is not a JSON object; re-export it")
    return parsed


def read_weights_file(path: Path, policy: TrustPolicy) -> Any:
    """What a single weights file holds (a state dict, a training checkpoint, ...), by its content."""
    format_name = sniff(path)
    if format_name == SAFETENSORS:
        return read_safetensors(path)
    if format_name in (TORCH_SAVE, TORCH_SAVE_LEGACY, PICKLED_MODULE):
        return read_torch_save(path, format_name, policy)
    raise CheckpointError(f"{path} is a {format_name} file, not weights; a model directory needs weight files")


def read_directory(path: Path, format_name: str, policy: TrustPolicy) -> tuple[dict[str, Any], list[Path]]:
    """(merged state dict, files read) of a Hugging Face style directory."""
    if format_name not in (HF_SAFETENSORS_SHARDED, HF_BIN_SHARDED):
        weights_name = next(name for name, fmt in DIRECTORY_FORMATS.items() if fmt == format_name)
        weights = read_weights_file(path / weights_name, policy)
        return _as_flat_mapping(path / weights_name, weights), [path / weights_name]
    index_name = next(name for name, fmt in DIRECTORY_FORMATS.items() if fmt == format_name)
    weight_map = _read_index(path / index_name)
    state: dict[str, Any] = {}
    shards = sorted(set(weight_map.values()))
    for shard in shards:
        state.update(_as_flat_mapping(path / shard, read_weights_file(path / shard, policy)))
    missing = set(weight_map) - set(state)
    if missing:
        raise CheckpointError(
            f"{path}: the index lists tensors no shard holds ({first_few(missing, 3)}); "
            "a shard is missing or stale, re-download the directory"
        )
    return state, [path / index_name, *(path / shard for shard in shards)]


def _read_index(index: Path) -> dict[str, str]:
    if index.stat().st_size > _MAX_INDEX:
        raise CheckpointError(f"{index}: the shard index is implausibly large; re-download it")
    weight_map = _parse_json(index, index.read_bytes(), "shard index").get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{index}: the shard index has no weight_map; re-download it")
    for shard in set(weight_map.values()):
        # Shard names come from the file: only plain names inside the directory are followed.
        if not isinstance(shard, str) or Path(shard).name != shard or shard in ("", ".", ".."):
            raise CheckpointError(f"{index}: shard name {shard!r} is not a file name in the directory; refusing")
        if not (index.parent / shard).is_file():
            raise CheckpointError(f"{index}: shard {shard!r} is missing; download every shard listed in the index")
    return weight_map


def _as_flat_mapping(path: Path, weights: Any) -> dict[str, Any]:
    if not isinstance(weights, Mapping):
        raise CheckpointError(f"{path} holds a {type(weights).__name__}, not a state dict; re-save model.state_dict()")
    return dict(weights)
