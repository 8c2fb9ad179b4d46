"""Turn a checkpoint path into a ready model: the loading layer of relu-doctor.

Formats are recognised by content (see :func:`sniff`). Weights-only formats never run code from the
file; formats that do (whole pickled models, TorchScript, torch.export) are refused unless the caller
passes ``trust=True``. Every failure is a :class:`~relu_doctor.errors.ReluDoctorError` with a
one-line message; no library exception escapes :func:`load_model`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError, ReluDoctorError, UntrustedCodeError, UsageError
from ..report import ModelInfo
from .arch import arch_directories, build_arch, no_bytecode, on_sys_path
from .build import build_with_weights
from .hashing import file_sha256, files_sha256
from .hf import build_hf_model, config_summary, is_hf_folder
from .messages import describe_exception
from .sniff import CODE_FORMATS, DIRECTORY_FORMATS, PICKLED_MODULE, SAFETENSORS, sniff
from .state_dict import select
from .torch_save import TrustPolicy, read_torch_save
from .trusted import ExampleInput, load_code_format, refusal
from .weights import read_directory, read_safetensors

__all__ = ["ExampleInput", "LoadedModel", "build_arch", "load_model", "sniff"]


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to observe, and where it came from."""

    model: torch.nn.Module
    """The model, in eval mode (where the format allows), on the requested device and dtype."""
    info: ModelInfo
    """Path, sniffed format, sha256, --arch spec and notes on what the loader did."""
    site_paths: tuple[str, ...] | None
    """For opaque models (TorchScript, torch.export): the module path of the k-th relu-family aten op
    in one forward pass, in execution order; None for eager modules or when the order is uncertain."""
    example_input: ExampleInput | None = None
    """A torch.export program's own input shape (and fixed batch size, if any); None for other formats."""


@dataclass(frozen=True)
class _Request:
    """What the caller asked for, validated."""

    path: Path
    arch: str | None
    arch_kwargs: dict[str, Any] | None
    key: str | None
    policy: TrustPolicy


@dataclass(frozen=True)
class _Raw:
    """A loaded model before placement, with what is known about it."""

    model: torch.nn.Module
    format_name: str
    files: tuple[Path, ...]
    notes: tuple[str, ...] = ()
    site_paths: tuple[str, ...] | None = None
    used_arch: bool = False
    example_input: ExampleInput | None = None


def load_model(
    path: str | Path,
    *,
    arch: str | None = None,
    arch_kwargs: dict[str, Any] | None = None,
    key: str | None = None,
    trust: bool = False,
    imports: Sequence[str] = (),
    allow_globals: Sequence[str] = (),
    device: str = "cpu",
    dtype: torch.dtype | None = None,
) -> LoadedModel:
    """Load the checkpoint at `path` into a model on `device` (and `dtype`), ready for a scan.

    State dicts need `arch` ("path/to/model.py:build_model" or "package.module:build_model");
    `key` picks one of several nested state dicts; `trust` allows formats that run code from the
    file; `allow_globals` admits named non-tensor objects in a weights-only load.
    Raises CheckpointError (UntrustedCodeError for code without trust), ArchitectureError or UsageError.
    """
    target_device = _parse_device(device)
    policy = TrustPolicy(trust=trust, allow_globals=tuple(allow_globals), imports=tuple(imports))
    request = _Request(Path(path), arch, arch_kwargs, key, policy)
    with on_sys_path(arch_directories(arch)), no_bytecode():
        raw = _guarded(request)
    model = _place(raw.model, target_device, dtype, request.path)
    info = ModelInfo(
        path=str(path),
        format=raw.format_name,
        sha256=_digest(request.path, raw.files),
        arch=arch if raw.used_arch else None,
        notes=raw.notes,
    )
    return LoadedModel(model=model, info=info, site_paths=raw.site_paths, example_input=raw.example_input)


def _guarded(request: _Request) -> _Raw:
    """The loader boundary: our errors pass through, anything else becomes one CheckpointError."""
    try:
        return _load(request)
    except ReluDoctorError:
        raise
    except Exception as error:
        raise CheckpointError(
            f"{request.path}: could not be loaded ({describe_exception(error)}); "
            "the file may be damaged or of an unsupported kind, re-save it as a state dict or safetensors"
        ) from None


def _load(request: _Request) -> _Raw:
    format_name = sniff(request.path)
    if format_name in CODE_FORMATS:
        if not request.policy.trust:
            raise UntrustedCodeError(refusal(request.path, format_name), format_name=format_name)
        model, site_paths, example = load_code_format(request.path, format_name)
        return _Raw(model, format_name, (request.path,), site_paths=site_paths, example_input=example)
    if format_name in DIRECTORY_FORMATS.values():
        checkpoint, files = read_directory(request.path, format_name, request.policy)
        return _from_checkpoint(request, checkpoint, format_name, tuple(files))
    if format_name == SAFETENSORS:
        return _from_checkpoint(request, read_safetensors(request.path), format_name, (request.path,))
    checkpoint = read_torch_save(request.path, format_name, request.policy)
    return _from_checkpoint(request, checkpoint, format_name, (request.path,))


def _from_checkpoint(request: _Request, checkpoint: Any, format_name: str, files: tuple[Path, ...]) -> _Raw:
    """A model from what a weights file held: a whole module, or a state dict built into --arch."""
    where, found = select(checkpoint, request.key, str(request.path))
    notes = (f"used key {where!r}",) if where else ()
    if isinstance(found, torch.nn.Module):
        ignored = ("--arch ignored: the file holds the whole model",) if request.arch else ()
        return _Raw(found, PICKLED_MODULE, files, notes + ignored)
    if request.arch is None and is_hf_folder(request.path):
        model, class_name = build_hf_model(request.path, found, trust=request.policy.trust)
        summary = config_summary(request.path)
        built = f"built {class_name} from config.json with transformers" + (f" ({summary})" if summary else "")
        return _Raw(model, format_name, (*files, request.path / "config.json"), notes + (built,))
    if request.arch is None:
        raise CheckpointError(
            f"{request.path} holds only weights ({format_name} state dict), not the code that builds the model; "
            "say how to build it with --arch path/to/model.py:build_model (a function or class returning the nn.Module)"
        )
    model, key_notes = build_with_weights(found, request.arch, request.arch_kwargs, str(request.path))
    return _Raw(model, format_name, files, notes + key_notes, used_arch=True)


def _parse_device(device: str) -> torch.device:
    try:
        return torch.device(device)
    except (RuntimeError, TypeError, ValueError) as error:
        raise UsageError(
            f"--device {device!r} is not a torch device ({describe_exception(error)}); use e.g. cpu or cuda:0"
        ) from None


def _place(model: torch.nn.Module, device: torch.device, dtype: torch.dtype | None, path: Path) -> torch.nn.Module:
    """Move to device/dtype and switch to eval mode (torch.export modules have their mode fixed)."""
    try:
        model = model.to(device=device) if dtype is None else model.to(device=device, dtype=dtype)
    except (RuntimeError, AssertionError, TypeError) as error:
        raise UsageError(
            f"cannot move the model from {path} to {device} ({describe_exception(error)}); use --device cpu"
        ) from None
    with contextlib.suppress(NotImplementedError):  # torch.export modules fix train/eval at export
        model.eval()
    return model


def _digest(path: Path, files: tuple[Path, ...]) -> str:
    if path.is_dir():
        return files_sha256(path, files)
    return file_sha256(path)
