"""Load the formats that carry code (TorchScript, torch.export); only ever called with --trust."""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError
from .messages import describe_exception
from .sites import export_site_paths, torchscript_site_paths
from .sniff import TORCH_EXPORT, TORCH_EXPORT_LEGACY, TORCHSCRIPT

_WHY = {
    TORCHSCRIPT: "a TorchScript archive runs the TorchScript code stored in it",
    TORCH_EXPORT: "a torch.export (.pt2) archive is unpickled and runs the graph stored in it",
    TORCH_EXPORT_LEGACY: "an older torch.export (.pt2) archive is unpickled and runs the graph stored in it",
}


def refusal(path: Path, format_name: str) -> str:
    """The message for a code-carrying file loaded without --trust."""
    return (
        f"{path} is a {format_name} file: {_WHY[format_name]}, so loading it runs code from the file; "
        "pass --trust if you trust its source (or use its state dict with --arch)"
    )


@dataclass(frozen=True)
class ExampleInput:
    """What a torch.export program says about its input: the shape it was exported with."""

    sample_shape: tuple[int, ...]
    """Shape of one sample of the first input (without the batch axis)."""
    static_batch: int | None
    """The batch size the program is fixed to, or None when its batch axis is dynamic."""


Loaded = tuple[torch.nn.Module, tuple[str, ...] | None, ExampleInput | None]


def load_code_format(path: Path, format_name: str) -> Loaded:
    """(module, site paths, example input) of a TorchScript or torch.export file. The caller has checked trust."""
    try:
        with warnings.catch_warnings(), _quiet_logger("torch.export"):
            warnings.simplefilter("ignore")
            if format_name == TORCHSCRIPT:
                return _load_torchscript(path)
            return _load_export(path)
    except CheckpointError:
        raise
    except Exception as error:
        raise CheckpointError(
            f"{path}: cannot load this {format_name} file ({describe_exception(error)}); it is damaged, "
            "or was saved by an incompatible torch version, re-export it"
        ) from None


@contextlib.contextmanager
def _quiet_logger(name: str) -> Iterator[None]:
    # torch.export.load logs a traceback before falling back to the older layout; we report errors ourselves.
    logger = logging.getLogger(name)
    previous = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(previous)


def _load_torchscript(path: Path) -> Loaded:
    module = torch.jit.load(str(path), map_location="cpu")
    return module, torchscript_site_paths(module), None


def _load_export(path: Path) -> Loaded:
    program: Any = torch.export.load(str(path))
    return program.module(), export_site_paths(program), _example_input(program)


def _example_input(program: Any) -> ExampleInput | None:
    """The first user input's shape from the program's graph: static sizes are ints, dynamic ones symbols."""
    names = list(program.graph_signature.user_inputs)
    node = next((n for n in program.graph.nodes if n.op == "placeholder" and names and n.name == names[0]), None)
    value = node.meta.get("val") if node is not None else None
    shape = getattr(value, "shape", None)
    if shape is None or len(shape) < 1 or not all(isinstance(s, int) for s in shape[1:]):
        return None
    batch = shape[0]
    return ExampleInput(tuple(int(s) for s in shape[1:]), int(batch) if isinstance(batch, int) else None)
