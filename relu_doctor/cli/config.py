"""Configuration: ``[tool.relu-doctor]`` in the nearest ``pyproject.toml``, ``--config FILE``, ``RELU_DOCTOR_*``.

Pure and CLI-free: the CLI says which options were given on the command line, and :func:`resolve` layers
them as **command line > environment > config file > defaults**. Keys are the long option names, with ``_``
or ``-`` (``max_layer_dead_fraction`` = ``max-layer-dead-fraction``); an unknown key is an error naming it.
Options that run code from a checkpoint (``--trust``, ``--import``, ``--allow-global``) are never read from a
file or the environment: a shared config must not be able to turn them on. The settings that name code to run
(``arch``, ``arch_kwargs``) come from the command line or a config file only, never the environment; in a file,
``arch`` must name a ``.py`` file inside the config's own repository or a non-standard-library module. The search
for ``pyproject.toml`` stops at the repository root (a folder holding ``.git``) or the home folder.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from ..errors import ConfigError
from ..render import REPORT_FORMATS
from ..report import Thresholds
from ..settings import DEVICES, DTYPES, REDUCERS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

ENV_PREFIX = "RELU_DOCTOR_"
"""Environment variables are this prefix plus the key in upper case: RELU_DOCTOR_MAX_DEAD_FRACTION."""
SECTION = "relu-doctor"
"""The table under [tool] in pyproject.toml."""
COMMAND_LINE_ONLY = {
    "trust": "--trust",
    "import": "--import",
    "imports": "--import",
    "allow_global": "--allow-global",
}
"""Keys that let a checkpoint run code: refused in files and the environment, with the option to use instead."""
NOT_FROM_ENVIRONMENT = {"arch": "--arch", "arch_kwargs": "--arch-kwargs"}
"""Keys that name code to run: a config file of the project may set them, a CI variable may not."""
# Modules an `arch` from a config file may not name: their callables run commands or fetch and run code.
_REFUSED_ARCH_MODULES = frozenset(sys.stdlib_module_names) | {"builtins", "__main__", "torch", "relu_doctor", "pip"}


@dataclass(frozen=True)
class Key:
    """One configurable setting."""

    name: str
    """Key name (the long option without dashes, ``-`` as ``_``)."""
    kind: str
    """Value type: fraction, float, int, bool, str, path, arch, choice, list, table or sites."""
    choices: tuple[str, ...] = ()
    """Allowed values of a ``choice`` key."""


KEYS: dict[str, Key] = {
    key.name: key
    for key in (
        Key("arch", "arch"),
        Key("arch_kwargs", "table"),
        Key("probe", "path"),
        Key("probe_key", "str"),
        Key("samples", "int"),
        Key("seed", "int"),
        Key("batch_size", "int"),
        Key("input_shape", "str"),
        Key("unit_dim", "int"),
        Key("device", "choice", DEVICES),
        Key("dtype", "choice", DTYPES),
        Key("reducer", "choice", REDUCERS),
        Key("dying_rate", "fraction"),
        Key("tau", "float"),
        Key("max_dead_fraction", "fraction"),
        Key("max_layer_dead_fraction", "fraction"),
        Key("ignore", "list"),
        Key("sites", "sites"),
        Key("format", "choice", REPORT_FORMATS.names()),
        Key("strict", "bool"),
    )
}
"""Every key a config file or RELU_DOCTOR_* variable may set."""


@dataclass(frozen=True)
class Resolved:
    """The settings after layering, and where each one came from."""

    values: Mapping[str, Any]
    """Key -> value, for every key any layer (defaults included) set."""
    sources: Mapping[str, str] = field(default_factory=dict)
    """Key -> "command line", "RELU_DOCTOR_X", the config file's path, or "default"."""
    config_path: str | None = None
    """The config file that was read, if any."""
    warnings: tuple[str, ...] = ()
    """Things the user should know that do not stop the run (an unknown RELU_DOCTOR_* variable)."""


@dataclass(frozen=True)
class FileConfig:
    """The relu-doctor settings of one config file, parsed and checked."""

    path: str
    """The file they came from."""
    values: Mapping[str, Any]
    """Key -> value (paths already made relative to the file's folder)."""


def normalize(name: str) -> str:
    """``max-dead-fraction`` -> ``max_dead_fraction``."""
    return name.strip().replace("-", "_").lower()


CONFIG_NAMES = (".relu-doctor.toml", "pyproject.toml")
"""The files searched in each folder, first wins (as ruff's .ruff.toml before pyproject.toml): a
``.relu-doctor.toml`` of bare keys, or a ``pyproject.toml`` with a ``[tool.relu-doctor]`` table."""


def find_config_for(models: Collection[Path], cwd: Path) -> Path | None:
    """The config of a run over ``models``: the nearest one at or above their folder (their common folder when
    there are several), as ruff finds a file's settings; when none is there (a model outside any project), the
    nearest one at or above ``cwd``."""
    folders = [os.path.abspath(path if path.is_dir() else path.parent) for path in models]
    if folders:
        try:
            found = find_config(Path(os.path.commonpath(folders)))
        except ValueError:  # paths on different drives: no common folder
            found = None
        if found is not None:
            return found
    return find_config(cwd)


def find_config(start: Path) -> Path | None:
    """The nearest ``.relu-doctor.toml``, or ``pyproject.toml`` with a ``[tool.relu-doctor]`` table, at or above
    ``start``, searching no higher than the repository root (a folder holding ``.git``) or the home folder;
    unreadable files are skipped."""
    for folder in search_folders(start):
        for name in CONFIG_NAMES:
            candidate = folder / name
            try:
                if candidate.is_file() and (
                    name != "pyproject.toml" or SECTION in _read_toml(candidate).get("tool", {})
                ):
                    return candidate
            except ConfigError:
                if os.access(candidate, os.R_OK):
                    raise  # the project's own file is broken: say so
    return None


def search_folders(start: Path) -> list[Path]:
    """``start`` and its parents up to the first repository root or the home folder, whichever comes first."""
    home = Path.home().resolve()
    folders = []
    for folder in (start, *start.parents):
        folders.append(folder)
        if (folder / ".git").exists() or folder.resolve() == home:
            break
    return folders


def repository_root(folder: Path) -> Path:
    """The repository root holding ``folder`` (see :func:`search_folders`), or ``folder`` itself outside one."""
    folders = search_folders(folder.resolve())
    last = folders[-1]
    return last if (last / ".git").exists() else folder.resolve()


def load_config(path: Path) -> FileConfig:
    """Read a config file: a pyproject.toml's ``[tool.relu-doctor]``, or a TOML file of bare keys."""
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist; pass an existing TOML file to --config")
    document = _read_toml(path)
    tool = document.get("tool", {})
    table: dict[str, Any] = (
        tool[SECTION] if isinstance(tool, dict) and isinstance(tool.get(SECTION), dict) else document
    )
    if path.name == "pyproject.toml" and table is document:
        table = {}  # a pyproject.toml without our table sets nothing (its other tables are not ours)
    origin = f"{path} [tool.{SECTION}]" if table is not document else str(path)
    return FileConfig(str(path), MappingProxyType(parse_table(table, origin, path.parent)))


def parse_table(table: Mapping[str, Any], origin: str, base_dir: Path) -> dict[str, Any]:
    """Check every key and value of a config table; relative paths become relative to ``base_dir``."""
    values: dict[str, Any] = {}
    for raw_name, raw_value in table.items():
        name = _known_key(raw_name, origin)
        if name in values:
            raise ConfigError(f"{origin}: {name!r} is given twice (as - and _ spellings); keep one")
        values[name] = _relative_to(base_dir, KEYS[name], _check(KEYS[name], raw_value, f"{origin}: {raw_name}"))
        if name == "arch":
            _check_config_arch(values[name], f"{origin}: {raw_name}", repository_root(base_dir))
    return values


def _check_config_arch(spec: str, origin: str, root: Path) -> None:
    """An ``arch`` read from a file names a .py file inside `root` or a module outside the standard library."""
    target = spec.rpartition(":")[0]
    if target.endswith(".py") or "/" in target or "\\" in target:
        resolved = Path(target).resolve()
        if root != resolved and root not in resolved.parents:
            raise ConfigError(
                f"{origin} = {spec!r} names a file outside the project {str(root)!r}; a config file may only name "
                "the project's own code, pass --arch on the command line for anything else"
            )
        return
    if target.split(".")[0] in _REFUSED_ARCH_MODULES:
        raise ConfigError(
            f"{origin} = {spec!r} names a standard-library or torch callable, which builds no model and can run "
            "commands; a config file may only name the project's code or an installed model package"
        )


def parse_environment(environ: Mapping[str, str]) -> dict[str, Any]:
    """The RELU_DOCTOR_* variables as typed values; an empty variable counts as unset, and an unknown one is left
    out (:func:`unknown_variables` names it for a warning: a stray CI variable must not break every run)."""
    values: dict[str, Any] = {}
    for variable, text in sorted(environ.items()):
        if not variable.startswith(ENV_PREFIX) or not text or _is_unknown(variable):
            continue
        name = _known_key(variable[len(ENV_PREFIX) :], variable, environment=True)
        values[name] = _check(KEYS[name], _from_text(KEYS[name], text, variable), variable)
    return values


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """One warning per RELU_DOCTOR_* variable that sets nothing, with the closest known name."""
    return [
        f"ignoring unknown environment variable {variable}{_did_you_mean(normalize(variable[len(ENV_PREFIX) :]))}"
        for variable in sorted(environ)
        if variable.startswith(ENV_PREFIX) and _is_unknown(variable)
    ]


def _is_unknown(variable: str) -> bool:
    name = normalize(variable[len(ENV_PREFIX) :])
    return name not in KEYS and name not in COMMAND_LINE_ONLY


def _did_you_mean(name: str, *, environment: bool = True) -> str:
    """``; did you mean RELU_DOCTOR_DYING_RATE?`` (or ``'dying_rate'`` for a file) for a near miss, else ''."""
    import difflib

    candidates = [key for key, spec in KEYS.items() if not (environment and spec.kind == "sites")]
    close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    if not close:
        return ""
    return f"; did you mean {ENV_PREFIX + close[0].upper() if environment else repr(close[0])}?"


def resolve(
    command_line: Mapping[str, Any],
    environment: Mapping[str, Any],
    file: FileConfig | None,
    defaults: Mapping[str, Any],
) -> Resolved:
    """Layer the settings: command line > environment > config file > defaults."""
    layers: list[tuple[str, Mapping[str, Any]]] = [("default", defaults)]
    if file is not None:
        layers.append((file.path, file.values))
    layers += [("environment", environment), ("command line", command_line)]
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for origin, layer in layers:
        for name, value in layer.items():
            values[name] = value
            sources[name] = f"{ENV_PREFIX}{name.upper()}" if origin == "environment" else origin
    return Resolved(MappingProxyType(values), MappingProxyType(sources), file.path if file else None)


def thresholds_from(values: Mapping[str, Any]) -> Thresholds:
    """The classification and gate settings of resolved values (absent keys keep Thresholds' defaults)."""
    base = Thresholds()
    sites = values.get("sites") or {}
    return Thresholds(
        dying_rate=values.get("dying_rate", base.dying_rate),
        tau=values.get("tau", base.tau),
        max_dead_fraction=values.get("max_dead_fraction"),
        max_layer_dead_fraction=values.get("max_layer_dead_fraction"),
        site_overrides=tuple(sites.items()) if isinstance(sites, Mapping) else tuple(sites),
        ignore=tuple(values.get("ignore") or ()),
    )


def _known_key(raw: str, origin: str, *, environment: bool = False) -> str:
    name = normalize(raw)
    if name in COMMAND_LINE_ONLY:
        where = "the environment" if environment else "a config file"
        raise ConfigError(
            f"{origin}: {raw!r} cannot come from {where}; it lets a checkpoint run code, "
            f"so pass {COMMAND_LINE_ONLY[name]} on the command line each time"
        )
    if environment and name in NOT_FROM_ENVIRONMENT:
        raise ConfigError(
            f"{origin} cannot come from the environment: it names code to run, so pass {NOT_FROM_ENVIRONMENT[name]} "
            "on the command line or set it in the project's pyproject.toml"
        )
    if name not in KEYS or (environment and KEYS[name].kind == "sites"):
        if name == "sites":
            raise ConfigError(
                f"{origin}: unknown key {raw!r}; per-site limits go in the config file's [tool.relu-doctor.sites] table"
            )
        guess = _did_you_mean(name, environment=False)
        raise ConfigError(f"{origin}: unknown key {raw!r}{guess or '; known keys: ' + ', '.join(KEYS)}")
    return name


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {str(path)!r} is not valid TOML: {exc}; fix the file or pass --config") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read config file {str(path)!r}: {exc.strerror}") from exc


def _from_text(key: Key, text: str, origin: str) -> Any:
    """An environment string as the key's type (numbers, booleans, comma-separated lists, JSON tables)."""
    try:
        if key.kind in ("fraction", "float"):
            return float(text)
        if key.kind == "int":
            return int(text)
    except ValueError:
        raise ConfigError(f"{origin} must be a number, got {text!r}") from None
    if key.kind == "bool":
        return _boolean(text, origin)
    if key.kind == "list":
        return [part.strip() for part in text.split(",") if part.strip()]
    if key.kind == "table":
        return _json_table(text, origin)
    return text


def _boolean(text: str, origin: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{origin} must be true or false (1/0, yes/no), got {text!r}")


def _json_table(text: str, origin: str) -> Any:
    import json

    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"{origin} must be a JSON object, e.g. '{{\"width\": 64}}', got {text!r} ({exc.msg})"
        ) from exc


_TYPES: dict[str, type | tuple[type, ...]] = {
    "fraction": (int, float),
    "float": (int, float),
    "int": int,
    "bool": bool,
    "list": list,
    "table": dict,
    "sites": dict,
}


def _has_type(value: Any, kind: str) -> bool:
    # bool is an int subclass: `max_dead_fraction = true` must not pass as 1.
    return isinstance(value, _TYPES.get(kind, str)) and (kind == "bool" or not isinstance(value, bool))


def _check(key: Key, value: Any, origin: str) -> Any:
    """Type and range of one value, with the key and the bad value in the message."""
    if not _has_type(value, key.kind):
        raise ConfigError(f"{origin} must be {_describe(key)}, got {value!r}")
    if key.kind == "fraction" and not 0 <= value <= 1:
        raise ConfigError(f"{origin} must be between 0 and 1, got {value!r}")
    if key.kind == "choice" and value not in key.choices:
        raise ConfigError(f"{origin} must be one of {', '.join(key.choices)}, got {value!r}")
    if key.kind == "list" and not all(isinstance(item, str) for item in value):
        raise ConfigError(f'{origin} must be a list of glob strings, e.g. ["head.*"], got {value!r}')
    if key.kind == "sites":
        return _site_limits(value, origin)
    return float(value) if key.kind in ("fraction", "float") else value


def _site_limits(table: Mapping[str, Any], origin: str) -> dict[str, float]:
    """``{"encoder.*": {max_layer_dead_fraction = 0.5}}`` -> ``{"encoder.*": 0.5}``, in file order."""
    limits = {}
    for pattern, entry in table.items():
        where = f"{origin}.{pattern!r}"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where} must be a table, e.g. {{ max_layer_dead_fraction = 0.5 }}, got {entry!r}")
        unknown = [k for k in entry if normalize(k) != "max_layer_dead_fraction"]
        if unknown:
            raise ConfigError(f"{where}: unknown key {unknown[0]!r}; a site table takes max_layer_dead_fraction")
        for value in entry.values():
            limits[pattern] = _check(KEYS["max_layer_dead_fraction"], value, f"{where}.max_layer_dead_fraction")
    return limits


def _describe(key: Key) -> str:
    return {
        "fraction": "a number between 0 and 1",
        "float": "a number",
        "int": "an integer",
        "bool": "true or false",
        "list": "a list of strings",
        "table": "a table",
        "sites": "a table of glob = { max_layer_dead_fraction = x }",
        "choice": f"one of {', '.join(key.choices)}",
    }.get(key.kind, "a string")


def _relative_to(base_dir: Path, key: Key, value: Any) -> Any:
    """A relative probe path, or the file part of a ``file.py:callable`` arch, read from the config's folder."""
    if key.kind == "path" and not Path(value).is_absolute():
        return str(base_dir / value)
    if key.kind == "arch" and ":" in value:
        target, _, name = value.rpartition(":")
        if (target.endswith(".py") or "/" in target) and not Path(target).is_absolute():
            return f"{base_dir / target}:{name}"
    return value
