"""Hugging Face model folders: build the model from ``config.json`` with transformers, weights from our safe loaders.

transformers only builds the architecture (random initial weights, no network, no remote code unless trusted);
the weights come from :func:`relu_doctor.loading.weights.read_directory` (safetensors, a sharded index, or
``.bin`` through the weights-only unpickler), never from ``from_pretrained``'s own loading path.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..errors import ArchitectureError, CheckpointError, UntrustedCodeError, UsageError
from .messages import describe_exception, first_few

HF_EXTRA = "pip install 'relu-doctor[hf]'"
"""What to install when a model folder needs transformers."""


def is_hf_folder(path: Path) -> bool:
    """True for a directory holding a ``config.json`` (a transformers model folder)."""
    return path.is_dir() and (path / "config.json").is_file()


def _transformers() -> Any:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach the network from a scan
    try:
        import transformers
    except ImportError:
        raise UsageError(
            "this folder is a Hugging Face model (config.json) and building it needs transformers: " + HF_EXTRA
        ) from None
    return transformers


def build_hf_model(path: Path, tensors: Mapping[str, Any], *, trust: bool) -> tuple[torch.nn.Module, str]:
    """(model built from ``path/config.json`` holding ``tensors``, its class name); ArchitectureError on misfit.

    ``trust`` allows a config whose model code lives in the folder (``trust_remote_code``); without it such a
    config is refused by transformers and reported in one line.
    """
    if not trust:
        _refuse_remote_code(path)
    transformers = _transformers()
    try:
        config = transformers.AutoConfig.from_pretrained(str(path), local_files_only=True, trust_remote_code=trust)
    except Exception as error:  # transformers raises ValueError, OSError, KeyError... on a config it cannot use
        raise CheckpointError(
            f"{path}/config.json: transformers cannot read it ({describe_exception(error)}); "
            "a config with its own model code needs --trust (it runs that code)"
        ) from None
    names = [name for name in getattr(config, "architectures", None) or [] if isinstance(name, str)]
    model_class = next((getattr(transformers, name) for name in names if hasattr(transformers, name)), None)
    try:
        if model_class is not None:
            model = model_class._from_config(config)
        else:
            model = transformers.AutoModel.from_config(config, trust_remote_code=trust)
    except Exception as error:
        raise ArchitectureError(
            f"{path}/config.json: transformers cannot build {names[0] if names else config.model_type!r} "
            f"({describe_exception(error)}); pass --arch to build it yourself"
        ) from None
    _adopt(model, tensors, path)
    return model, type(model).__name__


REMOTE_CODE = "Hugging Face remote-code"
"""The format name of a model folder whose config.json names model code in the folder (``auto_map``)."""


def _refuse_remote_code(path: Path) -> None:
    """UntrustedCodeError when config.json's ``auto_map`` names code in the folder: read as JSON, before
    transformers sees the folder, so nothing from it is imported."""
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return  # transformers reports an unreadable config in its own words
    auto_map = config.get("auto_map") if isinstance(config, dict) else None
    if auto_map:
        named = ", ".join(sorted(str(v) for v in auto_map.values())) if isinstance(auto_map, dict) else str(auto_map)
        raise UntrustedCodeError(
            f"{path}/config.json names model code in the folder (auto_map: {named[:200]}), so building the model "
            "runs that code; pass --trust if you trust its source (or build it yourself with --arch)",
            format_name=REMOTE_CODE,
        )


def _adopt(model: torch.nn.Module, tensors: Mapping[str, Any], path: Path) -> None:
    """Load ``tensors`` into ``model``; keys the folder omits must be tied to loaded ones (e.g. lm_head)."""
    expected = model.state_dict()
    unexpected = sorted(set(tensors) - set(expected))
    if unexpected:
        raise ArchitectureError(
            f"{path}: the weights hold tensors the model built from config.json has not ({first_few(unexpected, 3)}); "
            "the config and weights do not belong together, or pass --arch"
        )
    try:
        with torch.no_grad():
            model.load_state_dict(dict(tensors), strict=False)
    except (RuntimeError, ValueError) as error:
        message = " ".join(str(error).split())[:300]
        raise ArchitectureError(f"{path}: the weights do not fit the model built from config.json: {message}") from None
    tie = getattr(model, "tie_weights", None)
    if callable(tie):
        tie()
    loaded = {tensor.data_ptr() for key, tensor in model.state_dict().items() if key in tensors}
    untied = sorted(
        key for key, tensor in model.state_dict().items() if key not in tensors and tensor.data_ptr() not in loaded
    )
    persistent = [key for key in untied if not key.endswith(("position_ids", "inv_freq", "token_type_ids"))]
    if persistent:
        raise ArchitectureError(
            f"{path}: the weights lack {len(persistent)} tensors of the model built from config.json "
            f"({first_few(persistent, 3)}); a shard may be missing, or the config belongs to another model"
        )


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "vocab.txt", "tokenizer.model")
"""Files that make a folder hold a tokenizer."""


def tokenizer_from(directory: Path) -> Any:
    """The folder's tokenizer (tokenizer.json / tokenizer_config.json), loaded offline; a pad token is ensured."""
    transformers = _transformers()
    if not any((directory / name).is_file() for name in TOKENIZER_FILES):
        raise UsageError(
            f"no tokenizer in {directory} (none of {', '.join(TOKENIZER_FILES)}); pass --tokenizer DIR, "
            "or token ids as a .npy probe with --probe-mask"
        )
    try:
        # Never a tokenizer's own code: a folder naming one in tokenizer_config.json is refused in one line.
        tokenizer = transformers.AutoTokenizer.from_pretrained(
            str(directory), local_files_only=True, trust_remote_code=False
        )
    except Exception as error:
        raise UsageError(
            f"no tokenizer in {directory} ({describe_exception(error)}); pass --tokenizer DIR with tokenizer.json, "
            "or token ids as a .npy probe"
        ) from None
    if tokenizer.pad_token is None:
        fallback = tokenizer.eos_token or tokenizer.unk_token
        if fallback is None:
            raise UsageError(f"the tokenizer in {directory} has no pad, eos or unk token to pad batches with")
        tokenizer.pad_token = fallback
    tokenizer.padding_side = "right"
    return tokenizer


def config_summary(path: Path) -> str:
    """``model_type`` and ``hidden_act``/``activation_function`` from config.json, for notes ('' when unreadable)."""
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return ""
    act = config.get("activation_function") or config.get("hidden_act")
    return f"{config.get('model_type', '?')}, activation {act}" if act else str(config.get("model_type", "?"))
