"""Build the model an --arch spec names: `package.module:callable` or `path/to/file.py:callable`."""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from ..errors import ArchitectureError
from .messages import describe_exception

_FORM = "use path/to/model.py:build_model or package.module:build_model"


def build_arch(spec: str, kwargs: dict[str, Any] | None = None) -> torch.nn.Module:
    """Call the callable `spec` names with `kwargs` and return the nn.Module it builds.

    Raises ArchitectureError with a one-line message naming `spec` and the fix.
    """
    factory = resolve_arch(spec)
    try:
        model = factory(**(kwargs or {}))
    except Exception as error:
        raise ArchitectureError(
            f"--arch {spec!r} raised {describe_exception(error)}; check the callable and --arch-kwargs"
        ) from None
    if not isinstance(model, torch.nn.Module):
        raise ArchitectureError(
            f"--arch {spec!r} returned an object of type {type(model).__name__}, not a torch.nn.Module; "
            "point it at a function or class that builds the model"
        )
    return model


def resolve_arch(spec: str) -> Any:
    """The callable an --arch spec names (imported, not yet called)."""
    target, separator, attribute = spec.rpartition(":")
    if not separator or not target or not attribute:
        raise ArchitectureError(f"--arch {spec!r} has no ':callable' part; {_FORM}")
    module = _load_file(spec, Path(target)) if is_file_target(target) else _import(spec, target)
    value: Any = module
    for part in attribute.split("."):
        if not hasattr(value, part):
            raise ArchitectureError(f"--arch {spec!r}: {target} has no attribute {attribute!r}; check the name")
        value = getattr(value, part)
    if not callable(value):
        raise ArchitectureError(f"--arch {spec!r}: {attribute} is a {type(value).__name__}, not callable; {_FORM}")
    return value


def is_file_target(target: str) -> bool:
    """True when the part before ':' is a file path rather than a dotted module name."""
    return target.endswith(".py") or "/" in target or "\\" in target


def arch_directories(spec: str | None) -> list[Path]:
    """The directory of a file --arch: it goes on sys.path so its siblings and pickled classes import."""
    if spec is None:
        return []
    target = spec.rpartition(":")[0]
    return [Path(target).resolve().parent] if target and is_file_target(target) else []


@contextlib.contextmanager
def on_sys_path(directories: Sequence[Path]) -> Iterator[None]:
    """Put `directories` in front of sys.path for the duration of a load, then remove what was added."""
    added = [str(directory) for directory in directories if str(directory) not in sys.path]
    sys.path[:0] = added
    try:
        yield
    finally:
        for entry in added:
            with contextlib.suppress(ValueError):
                sys.path.remove(entry)


def _import(spec: str, name: str) -> ModuleType:
    try:
        with no_bytecode():
            return importlib.import_module(name)
    except ImportError as error:
        raise ArchitectureError(
            f"--arch {spec!r}: cannot import {name!r} ({describe_exception(error)}); "
            "check the module name or give a file path, e.g. path/to/model.py:build_model"
        ) from None
    except Exception as error:
        raise ArchitectureError(f"--arch {spec!r}: importing {name!r} raised {describe_exception(error)}") from None


def _load_file(spec: str, path: Path) -> ModuleType:
    resolved = path.resolve()
    if not resolved.is_file():
        raise ArchitectureError(f"--arch {spec!r}: no such file {str(path)!r}; check the path before ':'")
    name = _module_name(resolved)
    if name in sys.modules:
        return sys.modules[name]
    module_spec = importlib.util.spec_from_file_location(name, resolved)
    if module_spec is None or module_spec.loader is None:
        raise ArchitectureError(f"--arch {spec!r}: {str(path)!r} cannot be imported as Python; {_FORM}")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module  # registered first so dataclasses and pickles inside it resolve
    try:
        with no_bytecode():
            module_spec.loader.exec_module(module)
    except Exception as error:
        del sys.modules[name]
        raise ArchitectureError(f"--arch {spec!r}: running {str(path)!r} raised {describe_exception(error)}") from None
    return module


@contextlib.contextmanager
def no_bytecode() -> Iterator[None]:
    """Import without writing __pycache__ next to the user's files (restored afterwards)."""
    previous = sys.dont_write_bytecode
    sys.dont_write_bytecode = True
    try:
        yield
    finally:
        sys.dont_write_bytecode = previous


def _module_name(resolved: Path) -> str:
    """The file's stem when that is free (so pickles naming `model.Net` find it), else a unique name."""
    if resolved.stem.isidentifier() and _finds_itself(resolved):
        return resolved.stem
    return f"_relu_doctor_arch_{hashlib.sha256(str(resolved).encode()).hexdigest()[:12]}"


def _finds_itself(resolved: Path) -> bool:
    # The stem must not shadow another module (a stdlib `json.py`, an earlier `model.py` elsewhere).
    existing = sys.modules.get(resolved.stem)
    if existing is not None:
        return getattr(existing, "__file__", None) == str(resolved)
    try:
        found = importlib.util.find_spec(resolved.stem)
    except (ImportError, ValueError):
        return False
    return found is None or found.origin == str(resolved)
