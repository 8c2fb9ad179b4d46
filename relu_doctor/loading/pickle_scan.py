"""Static inspection of the pickles inside torch.save files: which globals would loading import?

Nothing here unpickles anything: `pickletools.genops` only parses opcodes, so a hostile file is
read as data. The findings drive the refusal messages and the choice between "pickled module",
"unsafe globals" and "malicious".
"""

from __future__ import annotations

import pickletools
import warnings
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
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
        "pkgutil",
        "pydoc",
        "zipimport",
        "distutils",
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
# A table of names: filled lines read better than one name per line.
# fmt: off
_DANGEROUS_PREFIXES = (
    "torch.hub.", "torch._C._jit", "torch.jit._", "torch.load", "numpy.load", "torch.utils.collect_env.",
    "torch.utils.cpp_extension.", "torch._inductor.", "torch._dynamo.", "torch.package.", "operator.methodcaller",
    "operator.attrgetter",
)
# fmt: on
_MODULE_CLASS_PREFIXES = ("torch.nn.modules.", "torch.nn.parallel.", "torch.ao.nn.", "torch.fx.graph_module.")
_STRING_OPS = frozenset(
    {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "STRING", "BINSTRING", "SHORT_BINSTRING"}
)
_PUT_OPS = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})
_GET_OPS = frozenset({"GET", "BINGET", "LONG_BINGET"})
UNRESOLVED = "<unresolved STACK_GLOBAL>"


MAX_OPCODES = 3_000_000
"""Opcodes one pickle may hold (a state dict needs about 30 per tensor); past this the scan stops and refuses."""
MAX_DEPTH = 200
"""Nesting depth of any object in a pickle; real checkpoints stay under 30, Python's own hash and repr recurse."""
MAX_EXPANDED = 20_000_000
"""Objects any value would hold if memo-shared parts were copied out (a hash bomb doubles them per level)."""
MAX_TENSORS = 100_000
"""Tensors (and storages) one pickle may rebuild; loading costs ~0.1 ms each, so this is ~10 s of work."""
# Rebuilders of tensors that are not plain dense (strided) CPU tensors: torch checks sparse invariants only when
# asked, so an out-of-range index reaches the kernels; quantized, nested and meta tensors are no weights we read.
# A table of names: filled lines read better than one name per line.
# fmt: off
NON_DENSE_GLOBALS = frozenset(
    {"torch._utils._rebuild_sparse_tensor", "torch._utils._rebuild_nested_tensor", "torch._utils._rebuild_qtensor",
     "torch._utils._rebuild_meta_tensor_no_storage", "torch._utils._rebuild_wrapper_subclass",
     "torch.serialization._get_layout"}
)
# fmt: on
_NON_DENSE_PREFIXES = ("torch.sparse.", "torch.cuda.sparse.", "torch.QInt", "torch.QUInt")
_TENSOR_REBUILDS = ("torch._utils._rebuild_", "torch._tensor._rebuild_from_type")
_MUTATORS = frozenset({"APPEND", "APPENDS", "SETITEM", "SETITEMS", "ADDITEMS", "BUILD"})
_CALLS = frozenset({"REDUCE", "NEWOBJ", "NEWOBJ_EX", "OBJ", "INST"})


class PickleLimitError(ValueError):
    """A pickle that breaks one of the bounds above; the message says which, in words."""


@dataclass(frozen=True)
class PickleFacts:
    """What a bounded static pass over one pickle found."""

    globals: frozenset[str]
    """Every `module.name` it would import (UNRESOLVED for a STACK_GLOBAL whose names are not static strings)."""
    opcodes: int
    """Opcodes read."""
    tensors: int
    """Tensor rebuild calls and storages seen."""


class _Item:
    """One stack value, summarised: how deep it nests, how many objects it expands to, a string or global name."""

    __slots__ = ("depth", "size", "text")

    def __init__(self, depth: int = 0, size: int = 1, text: str | None = None) -> None:
        self.depth, self.size, self.text = depth, size, text


# How each opcode moves the stack, from pickletools' own table: (kind, values popped below a mark or plainly).
_PLAIN, _MARKED, _SPECIAL = 0, 1, 2
# A table of names: filled lines read better than one name per line.
# fmt: off
_SPECIAL_OPS = _STRING_OPS | _PUT_OPS | _GET_OPS | {
    "GLOBAL", "STACK_GLOBAL", "MEMOIZE", "DUP", "POP", "MARK", "PERSID", "BINPERSID", "EXT1", "EXT2", "EXT4", "STOP",
}
# fmt: on
_SHAPE = {
    op.name: (
        _SPECIAL if op.name in _SPECIAL_OPS else _MARKED if pickletools.markobject in op.stack_before else _PLAIN,
        op.stack_before.index(pickletools.markobject)
        if pickletools.markobject in op.stack_before
        else len(op.stack_before),
        bool(op.stack_after),
    )
    for op in pickletools.opcodes
}


class _Scan:
    """A stack machine that mirrors CPython's unpickler (marks on a metastack) on summaries, never building objects."""

    def __init__(self) -> None:
        self.stack: list[_Item] = []
        self.metastack: list[list[_Item]] = []
        self.memo: dict[int, _Item] = {}
        self.found: set[str] = set()
        self.tensors = 0
        self.storages = 0

    def pop(self, count: int) -> list[_Item]:
        stack = self.stack
        if count > len(stack):
            raise IndexError("unpickling stack underflow")
        if count == 0:
            return []
        items = stack[-count:]
        del stack[-count:]
        return items

    def plain(self, name: str, kind: int, below: int, pushes: bool) -> None:
        """An opcode that pops values (to a mark and/or plainly) and pushes at most one."""
        if kind == _MARKED:
            marked = self.stack
            self.stack = self.metastack.pop()
            children = self.pop(below) + marked
        else:
            children = self.pop(below)
        if name in _CALLS and children and (children[0].text or "").startswith(_TENSOR_REBUILDS):
            self.tensors += 1
            if self.tensors > MAX_TENSORS:
                raise PickleLimitError(f"rebuilds more than {MAX_TENSORS:,} tensors")
        if name in _MUTATORS:
            self.stack.append(_grow(children[0], children[1:]))
        elif pushes:
            self.stack.append(_grow(_Item(), children))

    def special(self, name: str, arg: object) -> None:
        stack = self.stack
        if name in _STRING_OPS:
            stack.append(_Item(text=arg if isinstance(arg, str) else None))
        elif name in _GET_OPS:
            stack.append(self.memo[_index(arg)])
        elif name in _PUT_OPS:
            self.memo[_index(arg)] = stack[-1]
        elif name == "MEMOIZE":
            self.memo[len(self.memo)] = stack[-1]
        elif name == "MARK":
            self.metastack.append(stack)
            self.stack = []
        elif name == "POP":
            if stack:
                stack.pop()
            else:
                self.stack = self.metastack.pop()
        elif name == "DUP":
            stack.append(stack[-1])
        elif name in ("GLOBAL", "STACK_GLOBAL"):
            stack.append(_Item(text=self.global_name(name, arg)))
        elif name in ("PERSID", "BINPERSID"):
            self.pop(1 if name == "BINPERSID" else 0)
            self.storages += 1
            if self.storages > MAX_TENSORS:
                raise PickleLimitError(f"refers to more than {MAX_TENSORS:,} tensor storages")
            self.stack.append(_Item())
        else:  # EXT1/2/4: a global from the copyreg extension registry, which cannot be named statically
            self.found.add(UNRESOLVED)
            stack.append(_Item())

    def global_name(self, name: str, arg: object) -> str:
        if name == "GLOBAL":
            resolved = str(arg).replace(" ", ".", 1)
        else:
            module, attribute = self.pop(2)
            resolved = f"{module.text}.{attribute.text}" if module.text and attribute.text else UNRESOLVED
        self.found.add(resolved)
        return resolved


def _grow(target: _Item, children: list[_Item]) -> _Item:
    """`target` after taking in `children`: one level deeper than the deepest, their expanded sizes added."""
    for child in children:
        if child.depth >= target.depth:
            target.depth = child.depth + 1
        target.size = min(target.size + child.size, MAX_EXPANDED + 1)
    if target.depth > MAX_DEPTH:
        raise PickleLimitError(f"nests objects more than {MAX_DEPTH} levels deep")
    if target.size > MAX_EXPANDED:
        raise PickleLimitError(f"expands to more than {MAX_EXPANDED:,} objects through shared references (a hash bomb)")
    return target


def scan_pickle(stream: IO[bytes], budget: int = MAX_OPCODES) -> PickleFacts:
    """Read one pickle (up to its STOP) as opcodes, within bounds; nothing is unpickled.

    Raises PickleLimitError when it nests deeper than MAX_DEPTH, expands past MAX_EXPANDED objects through
    memo-shared parts, rebuilds more than MAX_TENSORS tensors or holds more than MAX_OPCODES opcodes. A damaged
    pickle ends the scan quietly: what was seen is returned, and unpickling it fails at the same place.
    """
    scan = _Scan()
    count = 0
    shape = _SHAPE
    with warnings.catch_warnings():
        # Damaged string opcodes make pickletools warn about escape sequences; the damage is handled below.
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            for opcode, arg, _ in pickletools.genops(stream):
                count += 1
                if count > budget:
                    raise PickleLimitError(f"holds more than {MAX_OPCODES:,} opcodes")
                name = opcode.name
                kind, below, pushes = shape[name]
                if kind == _SPECIAL:
                    if name == "STOP":
                        break
                    scan.special(name, arg)
                else:
                    scan.plain(name, kind, below, pushes)
        except PickleLimitError:
            raise
        except (ValueError, EOFError, UnicodeDecodeError, OverflowError, MemoryError, IndexError, KeyError):
            pass  # damaged: CPython's unpickler fails at this opcode too (underflow, missing memo, bad data)
    return PickleFacts(frozenset(scan.found), count, scan.tensors + scan.storages)


def scan_torch_file(path: Path) -> PickleFacts:
    """The bounded scan of a torch.save file: the zip's data.pkl, or the legacy format's leading pickles.

    Raises PickleLimitError (see :func:`scan_pickle`) and OSError/zipfile errors for unreadable files.
    """
    with path.open("rb") as stream:
        zipped = stream.read(4) == b"PK\x03\x04"
    parts: list[PickleFacts] = []
    if zipped:
        with zipfile.ZipFile(path) as archive:
            # Every pickle record, by entry (not name): a zip can hold two entries of one name, or two archives.
            for info in archive.infolist():
                if info.filename.endswith(".pkl"):
                    with archive.open(info) as stream:
                        parts.append(scan_pickle(stream, MAX_OPCODES - sum(part.opcodes for part in parts)))
    else:
        with path.open("rb") as stream:
            # Legacy torch.save: magic number, protocol, system info, the object, then the storage keys.
            for _ in range(5):
                parts.append(scan_pickle(stream, MAX_OPCODES - sum(part.opcodes for part in parts)))
    return PickleFacts(
        frozenset().union(*(part.globals for part in parts)),
        sum(part.opcodes for part in parts),
        sum(part.tensors for part in parts),
    )


def check_torch_file(path: Path) -> PickleFacts:
    """:func:`scan_torch_file`, also raising PickleLimitError when the file rebuilds a non-dense tensor."""
    facts = scan_torch_file(path)
    odd = non_dense_globals(facts.globals)
    if odd:
        raise PickleLimitError(
            f"rebuilds sparse, quantized, nested or meta tensors ({describe_globals(odd)}), which relu-doctor "
            "does not read (their kernels trust the file's indices); save dense tensors (tensor.to_dense())"
        )
    return facts


def non_dense_globals(names: Iterable[str]) -> set[str]:
    """The globals that rebuild sparse, quantized, nested, meta or subclass tensors."""
    return {name for name in names if name in NON_DENSE_GLOBALS or name.startswith(_NON_DENSE_PREFIXES)}


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
