"""Read torch.save files (zip and legacy) weights-only, and explain exactly why a file is refused.

Every untrusted load passes `weights_only=True` explicitly: torch then ignores
TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD, which only flips the default when the argument is omitted.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import pickle
import re
import sys
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError, UntrustedCodeError
from .arch import on_sys_path
from .dense import check_dense
from .messages import describe_exception
from .pickle_scan import (
    dangerous_globals,
    describe_globals,
    module_classes,
    scan_torch_file,
    weights_only_allowed,
)
from .sniff import PICKLED_MODULE, TORCH_SAVE, TORCH_SAVE_LEGACY

# Classes that turn data into calls (gadgets): never admitted by --allow-global even though they are classes.
_NEVER_ALLOWED = ("functools.", "operator.", "builtins.", "pkgutil.", "pydoc.", "codecs.", "_codecs.", "copyreg.")
# The one function --allow-global takes: numpy's scalar reconstructor (numpy refuses object dtype in it), which
# torch's documentation names for numpy scalars such as a saved "best metric".
_SAFE_FUNCTIONS = frozenset({"numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar"})


@dataclass(frozen=True)
class TrustPolicy:
    """What the user allowed beyond plain tensors."""

    trust: bool = False
    """Run code from the file (unpickle arbitrary objects, TorchScript, torch.export)."""
    allow_globals: tuple[str, ...] = ()
    """`module.Name` globals allowed in a weights-only load (the narrow alternative to trust)."""
    imports: tuple[str, ...] = ()
    """Modules to import before unpickling a trusted whole model, so its classes resolve."""


def read_torch_save(path: Path, format_name: str, policy: TrustPolicy) -> Any:
    """The object inside a torch.save file: weights-only, or a full unpickle only under --trust.

    `format_name` comes from :func:`~relu_doctor.loading.sniff.sniff`, which has pre-scanned the pickle within
    bounds; every tensor of the result is checked to be dense before it is returned.
    """
    loaded = _read(path, format_name, policy)
    check_dense(loaded, path)
    return loaded


def _read(path: Path, format_name: str, policy: TrustPolicy) -> Any:
    if format_name == PICKLED_MODULE:
        _refuse_or_continue(path, format_name, _unsafe_globals(path), policy)
        return _load_trusted(path, format_name, policy)
    try:
        return _load_weights_only(path, format_name, _allowed_objects(policy.allow_globals))
    except pickle.UnpicklingError as error:
        unsafe = (_unsafe_globals(path) | _named_in_error(error)) - set(policy.allow_globals)
        if not unsafe:
            raise _damaged(path, format_name, error) from None
        _refuse_or_continue(path, format_name, unsafe, policy)
        return _load_trusted(path, format_name, policy)


def _load_weights_only(path: Path, format_name: str, allowed: list[Any]) -> Any:
    with _source(path, format_name == TORCH_SAVE) as (source, mmap), _quiet():
        try:
            with torch.serialization.safe_globals(allowed):
                return torch.load(source, map_location="cpu", weights_only=True, mmap=mmap)
        except pickle.UnpicklingError:
            raise
        except Exception as error:
            raise _damaged(path, format_name, error) from None


def _load_trusted(path: Path, format_name: str, policy: TrustPolicy) -> Any:
    import_modules(policy.imports)
    with _source(path, format_name != TORCH_SAVE_LEGACY and _is_zip(path)) as (source, mmap), _quiet():
        try:
            return torch.load(source, map_location="cpu", weights_only=False, mmap=mmap)
        except (ImportError, AttributeError) as error:
            raise CheckpointError(
                f"{path}: a class the pickle needs cannot be found ({describe_exception(error)}); "
                "pass --import MODULE for the package that defines it, or --arch with the file that does"
            ) from None


TRUSTED_CODE_GLOBALS = frozenset({"builtins.getattr", "__builtin__.getattr"})
"""Globals refused without --trust but loaded with it: ``getattr`` is how pickle protocols < 4 (torch.save's
default is 2) encode a nested name, e.g. a staticmethod held by a model. It runs code, which --trust accepts;
what stays refused even then are globals that run commands (os, subprocess, eval, ...)."""


def _refuse_or_continue(path: Path, format_name: str, unsafe: set[str], policy: TrustPolicy) -> None:
    dangerous = dangerous_globals(unsafe) - (TRUSTED_CODE_GLOBALS if policy.trust else frozenset())
    if dangerous:
        raise CheckpointError(
            f"refusing {path}: its pickle would call {describe_globals(dangerous)} when loaded, which runs "
            "commands or code (no model needs that, so even --trust does not load it); get the weights from "
            "a trusted source, ideally as .safetensors"
        )
    if policy.trust:
        return
    raise _untrusted(path, format_name, unsafe)


def _untrusted(path: Path, format_name: str, unsafe: set[str]) -> UntrustedCodeError:
    classes = module_classes(unsafe)
    if classes or format_name == PICKLED_MODULE:
        return UntrustedCodeError(
            f"{path} is a whole pickled model ({describe_globals(classes or unsafe)}); unpickling it runs code "
            "from the file, so pass --trust if you trust its source, or re-save model.state_dict() and use --arch",
            format_name=PICKLED_MODULE,
        )
    allowable = [name for name in sorted(unsafe) if _is_known_class(name)]
    advice = (
        f"allow just these classes with --allow-global {allowable[0]} (repeatable), or pass --trust if you trust the file"
        if allowable and len(allowable) == len(unsafe)
        else "pass --trust if you trust the file, or re-save model.state_dict() as .safetensors"
    )
    return UntrustedCodeError(
        f"{path} holds Python objects besides tensors ({describe_globals(unsafe)}); unpickling them may run code, "
        f"so {advice}",
        format_name=format_name,
    )


def _is_known_class(name: str) -> bool:
    """True for `module.Class` of an already imported module (looked up, never imported) that --allow-global takes."""
    module_name, _, attribute = name.rpartition(".")
    module = sys.modules.get(module_name)
    value = getattr(module, attribute, None) if module is not None else None
    if name in _SAFE_FUNCTIONS:
        return True
    return isinstance(value, type) and not dangerous_globals([name]) and not name.startswith(_NEVER_ALLOWED)


def _damaged(path: Path, format_name: str, error: BaseException) -> CheckpointError:
    forced = " (TORCH_FORCE_WEIGHTS_ONLY_LOAD is set)" if os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD") else ""
    return CheckpointError(
        f"{path}: cannot read this {format_name} checkpoint{forced} ({describe_exception(error)}); "
        "the file is damaged or truncated, re-download or re-save it"
    )


def _unsafe_globals(path: Path) -> set[str]:
    """Globals in the checkpoint that the weights-only unpickler does not accept by default."""
    return _all_globals(path) - weights_only_allowed()


def _named_in_error(error: BaseException) -> set[str]:
    """Classes torch only meets while building objects (e.g. numpy.dtypes.Float64DType), from its message."""
    text = str(error)
    return set(re.findall(r"GLOBAL ([\w.]+)", text)) | set(re.findall(r"got <class '([\w.]+)'>", text))


def _all_globals(path: Path) -> set[str]:
    return set(scan_torch_file(path).globals)


def _is_zip(path: Path) -> bool:
    with path.open("rb") as stream:
        return stream.read(4) == b"PK\x03\x04"


def _allowed_objects(names: Sequence[str]) -> list[Any]:
    return [_import_global(name) for name in names]


def _import_global(name: str) -> Any:
    module_name, _, attribute = name.rpartition(".")
    if name in dangerous_globals([name]) or name.startswith(_NEVER_ALLOWED):
        raise CheckpointError(
            f"--allow-global {name!r} is refused: unpickling can call it with arguments from the file, which runs "
            "code; no checkpoint needs it"
        )
    try:
        value = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError, ValueError) as error:
        raise CheckpointError(
            f"--allow-global {name!r} cannot be imported ({describe_exception(error)}); "
            "give it as module.Name exactly as the error listed it, e.g. argparse.Namespace"
        ) from None
    if not isinstance(value, type) and name not in _SAFE_FUNCTIONS:
        raise CheckpointError(
            f"--allow-global {name!r} is a {type(value).__name__}, not a class; --allow-global admits classes only "
            "(the file could call a function with any arguments), so use --trust if you trust the file"
        )
    return value


def import_modules(names: Sequence[str]) -> None:
    """Import the user's --import modules so the classes a trusted pickle names can be found.

    The current folder is searched too, as ``python -m`` would (the console script does not put it on sys.path)."""
    with on_sys_path([Path.cwd()]):
        _import_each(names)


def _import_each(names: Sequence[str]) -> None:
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as error:
            raise CheckpointError(
                f"--import {name!r} failed ({describe_exception(error)}); check the module name and sys.path"
            ) from None


@contextlib.contextmanager
def _source(path: Path, mmap: bool) -> Iterator[tuple[Any, bool]]:
    """(what to pass to torch.load, whether to mmap it): a path where mmap is possible, else a stream."""
    # torch.load sends any *path* ending in .safetensors to safetensors, whatever its content:
    # give such a file as an open stream so the content we sniffed is what gets parsed.
    if mmap and not str(path).endswith(".safetensors"):
        yield str(path), True
        return
    with path.open("rb") as stream:
        yield stream, False


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    # torch warns about e.g. TypedStorage deprecation on old files; the report has its own notes.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
