"""Load the formats that carry code (TorchScript, torch.export); only ever called with --trust."""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
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


def load_code_format(path: Path, format_name: str) -> tuple[torch.nn.Module, tuple[str, ...] | None]:
    """(module, site paths) of a TorchScript or torch.export file. The caller has checked trust."""
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


def _load_torchscript(path: Path) -> tuple[torch.nn.Module, tuple[str, ...] | None]:
    module = torch.jit.load(str(path), map_location="cpu")
    return module, torchscript_site_paths(module)


def _load_export(path: Path) -> tuple[torch.nn.Module, tuple[str, ...] | None]:
    program: Any = torch.export.load(str(path))
    return program.module(), export_site_paths(program)
