"""Static inspection of the pickles inside torch.save files: which globals would loading import?

Nothing here unpickles anything: `pickletools.genops` only parses opcodes, so a hostile file is
read as data. The findings drive the refusal messages and the choice between "pickled module",
"unsafe globals" and "malicious".
"""

from __future__ import annotations

import pickletools
import warnings
from collections.abc import Iterable
from typing import IO

from .messages import first_few

# Loading any of these from a checkpoint means running commands, reading files or evaluating code.
# A model never needs them, so they are refused even with --trust (best effort: the list is not complete).
_DANGEROUS_MODULES = frozenset(
    {
        "os",
        "posix",
        "nt",
        "subprocess",
        "sys",
        "shutil",
        "socket",
        "runpy",
        "importlib",
        "pty",
        "webbrowser",
        "code",
        "codeop",
        "ctypes",
        "marshal",
        "pickle",
        "_pickle",
        "dill",
        "multiprocessing",
        "asyncio",
        "platform",
        "signal",
        "tempfile",
        "urllib",
        "http",
        "requests",
        "ftplib",
        "smtplib",
        "telnetlib",
        "commands",
        "popen2",
        "_io",
        "io",
        "types",
        "inspect",
        "pdb",
        "bdb",
        "timeit",
        "cProfile",
        "profile",
        "trace",
        "pip",
        "setuptools",
        "_posixsubprocess",
    }
)
# Builtins are fine as containers (set, slice, ...) but these evaluate code or reach any attribute.
_DANGEROUS_BUILTINS = frozenset(
    {
        "eval",
        "exec",
        "compile",
        "open",
        "getattr",
        "setattr",
        "delattr",
        "__import__",
        "globals",
        "locals",
        "vars",
        "input",
        "breakpoint",
        "apply",
        "execfile",
        "file",
        "help",
        "exit",
        "quit",
    }
)
_DANGEROUS_PREFIXES = ("torch.hub.", "torch._C._jit", "torch.jit._", "torch.load", "numpy.load")
_MODULE_CLASS_PREFIXES = ("torch.nn.modules.", "torch.nn.parallel.", "torch.ao.nn.", "torch.fx.graph_module.")
_STRING_OPS = frozenset(
    {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "STRING", "BINSTRING", "SHORT_BINSTRING"}
)
_PUT_OPS = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})
_GET_OPS = frozenset({"GET", "BINGET", "LONG_BINGET"})
UNRESOLVED = "<unresolved STACK_GLOBAL>"


def pickle_globals(stream: IO[bytes]) -> set[str]:
    """Every `module.name` one pickle (read up to its STOP) would import, without unpickling it.

    STACK_GLOBAL takes its names from the stack; they are tracked through the memo as well as a
    static reader can, and an unresolvable one is reported as UNRESOLVED (treated as dangerous).
    """
    found: set[str] = set()
    strings: list[str | None] = []
    memo: dict[int, str | None] = {}
    with warnings.catch_warnings():
        # Damaged string opcodes make pickletools warn about escape sequences; the damage is handled below.
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            for opcode, arg, _ in pickletools.genops(stream):
                name = opcode.name
                if name in ("GLOBAL", "INST"):
                    found.add(str(arg).replace(" ", ".", 1))
                elif name == "STACK_GLOBAL":
                    module, attribute = (strings[-2:] + [None, None])[:2] if len(strings) >= 2 else (None, None)
                    found.add(f"{module}.{attribute}" if module and attribute else UNRESOLVED)
                elif name in _STRING_OPS:
                    strings.append(arg if isinstance(arg, str) else None)
                elif name == "MEMOIZE":
                    memo[len(memo)] = strings[-1] if strings else None
                elif name in _PUT_OPS:
                    memo[_index(arg)] = strings[-1] if strings else None
                elif name in _GET_OPS:
                    strings.append(memo.get(_index(arg)))
                elif name == "STOP":
                    break
        except (ValueError, EOFError, UnicodeDecodeError, OverflowError, MemoryError):
            pass  # a damaged pickle: report what was seen before the damage; loading will fail on its own
    return found


def _index(arg: object) -> int:
    return int(arg) if isinstance(arg, (int, str)) else -1


def dangerous_globals(names: Iterable[str]) -> set[str]:
    """The globals that could run commands or code when unpickled (best-effort deny list)."""
    return {name for name in names if _is_dangerous(name)}


def _is_dangerous(name: str) -> bool:
    module, _, attribute = name.rpartition(".")
    if module in ("builtins", "__builtin__"):
        return attribute in _DANGEROUS_BUILTINS
    return name == UNRESOLVED or module.split(".", 1)[0] in _DANGEROUS_MODULES or name.startswith(_DANGEROUS_PREFIXES)


def module_classes(names: Iterable[str]) -> set[str]:
    """The torch.nn module classes among the globals: their presence means a whole pickled model."""
    return {name for name in names if name.startswith(_MODULE_CLASS_PREFIXES)}


def weights_only_allowed() -> set[str]:
    """Globals torch's weights-only unpickler accepts by default (private API, so guarded)."""
    try:
        from torch import _weights_only_unpickler as unpickler

        return set(unpickler._get_allowed_globals()) | set(unpickler._get_user_allowed_globals())
    except (ImportError, AttributeError):  # an older or newer torch: report every global
        return set()


def describe_globals(names: Iterable[str]) -> str:
    """A short list of global names for a message."""
    return first_few(names, 4).replace("'", "")
