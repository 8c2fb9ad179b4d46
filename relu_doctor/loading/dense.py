"""Refuse any tensor that is not a plain dense CPU tensor before a model is built from it.

Sparse tensors carry indices their kernels trust (torch checks sparse invariants only when asked), so a file
with an out-of-range index crashes the process at the first matmul; quantized, nested and meta tensors are
not weights relu-doctor can observe. The pickle pre-scan refuses their rebuild functions by name; this walk
over what was loaded is the second fence, for formats and paths the pre-scan does not see.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch

from ..errors import CheckpointError

_MAX_NODES = 2_000_000
_PLAIN_TYPES = (torch.Tensor, torch.nn.Parameter)


def tensor_problem(tensor: torch.Tensor) -> str | None:
    """Why `tensor` is not a plain dense CPU tensor, or None when it is one."""
    if type(tensor) not in _PLAIN_TYPES:
        return f"a {type(tensor).__name__} tensor subclass"
    if tensor.layout != torch.strided:
        return f"a {str(tensor.layout).replace('torch.', '')} tensor"
    if tensor.is_nested:
        return "a nested tensor"
    if tensor.is_quantized:
        return "a quantized tensor"
    if tensor.is_meta:
        return "a meta tensor (no data)"
    if tensor.device.type != "cpu":
        return f"a tensor on {tensor.device}"
    return None


def check_dense(value: Any, source: object) -> None:
    """CheckpointError naming the first tensor in `value` (nested dicts, lists, modules) that is not dense."""
    for where, tensor in _tensors(value, source):
        problem = tensor_problem(tensor)
        if problem is not None:
            raise CheckpointError(
                f"refusing {source}: {where or 'the checkpoint'} is {problem}; relu-doctor reads dense tensors "
                "only, re-save the weights dense (tensor.to_dense(), dequantize()) as a state dict or .safetensors"
            )


def _tensors(value: Any, source: object) -> Iterator[tuple[str, torch.Tensor]]:
    """(dotted key, tensor) for every tensor reachable through containers, each object visited once."""
    pending: list[tuple[str, Any]] = [("", value)]
    seen: set[int] = set()
    while pending:
        where, item = pending.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        if len(seen) > _MAX_NODES:
            raise CheckpointError(
                f"refusing {source}: it holds more than {_MAX_NODES:,} objects; save only the weights"
            )
        if isinstance(item, torch.Tensor):
            yield where, item
        elif isinstance(item, torch.nn.Module):
            pending += [(_join(where, k), v) for k, v in item.state_dict(keep_vars=True).items()]
        elif isinstance(item, Mapping):
            pending += [(_join(where, _label(k)), v) for k, v in item.items()]
            pending += [(_join(where, "<key>"), k) for k in item if isinstance(k, torch.Tensor)]
        elif isinstance(item, (list, tuple, set, frozenset)):
            pending += [(_join(where, str(i)), v) for i, v in enumerate(item)]


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _label(key: object) -> str:
    # Only strings and numbers are spelled out: str() of a hostile nested key could be huge.
    if isinstance(key, str) or (isinstance(key, int) and key.bit_length() < 64):
        return str(key)
    return f"<{type(key).__name__} key>"
