"""Replay passes: every pass after the first, for a model whose first pass showed a fixed set of sites.

The first pass runs under the dispatch mode, which costs Python time on every aten op; it finds the sites, their
provenance and the warnings. When that pass showed nothing the dispatch mode alone can see (no other activation
to count, no opaque graph, every module called, inference mode enough), a later pass only has to find the same
relu calls again, in the same order, and forward hooks on the sites' *owner* modules alone (:class:`OwnerCalls`)
say which call of which owner is running. It finds the relu calls in one of two ways:

- at the relu family's own entry points (:class:`EntryPoints`): ``F.relu``, ``torch.relu``, ``Tensor.relu_``,
  ``F.hardtanh`` ... are replaced for the pass, so only relu calls pay any Python time. Used only when the first
  pass, which ran with them replaced too, proved that each of its relu ops ran inside exactly one such call, and
  no other reference to these functions is held where a later pass could call it (:meth:`EntryPoints.probing`,
  :meth:`EntryPoints.held_elsewhere`);
- otherwise under :class:`ReplayMode`, a torch-function mode that sees each torch function call by name and stops
  at relu-family ones (every torch call of the pass pays for torch's mode handling).

The replay is checked, never trusted, either way: the innermost module running at each relu (read from the
interpreter's frames) must be the owner the hooks say, each call's key must be the next key of the first pass,
and the pass must end with every key seen. Anything else (data-dependent control flow, a relu inside another torch
function) raises :class:`NotReplayable`; the observer then drops the pass's counts and runs the batch, and every
later one, under the dispatch mode, so no count depends on which path ran.

What neither way sees is a relu that no pass before made and that runs where the replay cannot look: C++ or
scripted code under both, and under the entry points also a reference to a relu function bound before the pass
somewhere other than a module global or a model attribute (a closure, a container), called only on a branch the
first pass did not take. The end-of-pass check catches such a call whenever it replaces one of the first pass's.
"""

from __future__ import annotations

import functools
import operator
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from ..activations import ACTIVATION_MODULES, FUNCTION_ALIASES, FUNCTION_NAMES, Member, member_of
from .recording import CallRecorder
from .site_keys import SiteKey
from .sites import ObservedSite

_CALL_IMPL = nn.Module._call_impl.__code__


class NotReplayable(Exception):
    """A replay pass met a relu call the first pass did not make at this point."""


class OwnerCalls:
    """Which site-owning module runs innermost, and which call of it this is, from hooks on those modules only.

    Modules no pass has called yet get a hook too, which adds them to ``called`` if they ever run (so the report's
    "modules never called" stays exact); modules that did run and own no site get none."""

    def __init__(
        self, root: nn.Module, owners: dict[str, nn.Module], uncalled: dict[str, nn.Module], called: set[str]
    ) -> None:
        self.root = root
        self.owners = owners
        self.uncalled = uncalled
        self.called = called
        self.stack: list[tuple[str, int, nn.Module]] = []
        self.calls: Counter[str] = Counter()
        self.ordinals: Counter[tuple[str, int]] = Counter()
        self.active = False
        """True during a replay pass; the hooks do nothing otherwise (other forward passes are not counted)."""
        self._handles: list[Any] = []

    @property
    def installed(self) -> bool:
        return bool(self._handles)

    def install(self) -> None:
        """Hook the owners (and the modules not called yet) once, for every replay pass to come."""
        for path, module in self.owners.items():
            self._handles.append(module.register_forward_pre_hook(self._enter(path)))
            self._handles.append(module.register_forward_hook(self._exit, always_call=True))
        for path, module in self.uncalled.items():
            if path not in self.owners:
                self._handles.append(module.register_forward_pre_hook(self._mark(path)))

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    @contextmanager
    def counting(self) -> Iterator[None]:
        """One replay pass: calls counted from 1."""
        self.stack.clear()
        self.calls.clear()
        self.ordinals.clear()
        self.active = True
        try:
            yield
        finally:
            self.active = False

    def next_key(self) -> SiteKey:
        """The key of the relu call now running; :class:`NotReplayable` when its innermost module is not an owner."""
        path, call, module = self.stack[-1] if self.stack else ("", 1, self.root)
        # An activation module's own forward calls its op and nothing else; any other owner is checked.
        if type(module) not in ACTIVATION_MODULES and _innermost_module() is not module:
            raise NotReplayable("a relu ran inside a module that owned no site in the first pass")
        self.ordinals[(path, call)] += 1
        return (path, call, self.ordinals[(path, call)])

    def _enter(self, path: str) -> Any:
        def hook(module: nn.Module, args: Any) -> None:
            if self.active:
                self.calls[path] += 1
                self.stack.append((path, self.calls[path], module))

        return hook

    def _mark(self, path: str) -> Any:
        def hook(module: nn.Module, args: Any) -> None:
            if self.active:
                self.called.add(path)

        return hook

    def _exit(self, module: nn.Module, args: Any, output: Any) -> None:
        if self.active and self.stack and self.stack[-1][2] is module:
            self.stack.pop()


def _innermost_module() -> nn.Module | None:
    """The module whose ``__call__`` is innermost on the interpreter's stack (None outside any module call)."""
    frame = sys._getframe(1)
    while frame is not None and frame.f_code is not _CALL_IMPL:
        frame = frame.f_back  # type: ignore[assignment]
    return frame.f_locals.get("self") if frame is not None else None


class ReplayMode(TorchFunctionMode):
    """Passes every torch function call through, except relu-family ones (by name), which go to ``on_relu``."""

    def __init__(self, on_relu: Callable[[Any, str, tuple[Any, ...], dict[str, Any]], Any]) -> None:
        super().__init__()
        self.on_relu = on_relu

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        name = getattr(func, "__name__", "")
        if name in FUNCTION_NAMES:
            return self.on_relu(func, name, args, kwargs or {})
        return func(*args, **(kwargs or {}))


USE_ENTRY_POINTS = True
"""False: every replay pass runs under :class:`ReplayMode` (the benchmarks measure both ways in one process)."""

ReluHandler = Callable[[Any, str, tuple[Any, ...], dict[str, Any]], Any]
"""Called with (the original function, its name as :func:`~relu_doctor.activations.member_of` reads it, args,
kwargs) for a relu-family call; returns what the call returns."""


def _entry_points() -> list[tuple[Any, str, str]]:
    """(owner, attribute, name) of each Python-level entry point of the relu family: what ``F.relu(x)``,
    ``torch.relu(x)``, ``x.relu_()``, ``nn.ReLU6`` (``F.hardtanh``), ``F.threshold`` ... look up when they run."""
    nn_c = torch._C._nn
    return [
        (F, "relu", "relu"),
        (F, "relu_", "relu_"),
        (F, "relu6", "relu6"),
        (F, "hardtanh", "hardtanh"),
        (F, "hardtanh_", "hardtanh_"),
        (F, "threshold", "threshold"),
        (F, "_threshold", "threshold"),
        (F, "threshold_", "threshold_"),
        (torch, "relu", "relu"),
        (torch, "relu_", "relu_"),
        (torch, "threshold", "threshold"),
        (torch, "threshold_", "threshold_"),
        (nn_c, "relu6", "relu6"),
        (nn_c, "relu6_", "relu6_"),
        (nn_c, "hardtanh", "hardtanh"),
        (nn_c, "hardtanh_", "hardtanh_"),
        (torch.Tensor, "relu", "relu"),
        (torch.Tensor, "relu_", "relu_"),
    ]


_MISSING = object()
_CLEAN_MODULES: dict[str, tuple[int, int]] = {}
"""Loaded modules found holding no relu-family function: name -> (id of the module, how many globals it had)."""
_CLEAN_STATE: list[tuple[tuple[int, ...], ...] | None] = [None]
"""Every loaded module (by id) and its number of globals, when all of them were last found clean."""
_GLOBALS = operator.attrgetter("__dict__")
_MAIN = ("__main__", "__mp_main__")
_PATCHING = threading.Lock()
"""Held while some pass has the entry points replaced: one at a time, so each puts back the true originals."""


class EntryPoints:
    """The relu family's Python entry points, replaced for one pass by wrappers that hand each *outermost* call made
    on the pass's thread to a handler; every other call (other threads, calls made inside a handled one, such as
    ``F.relu(inplace=True)``'s ``torch.relu_``, and the reducer's own work) runs the original untouched.

    Only relu calls pay any Python time, where :class:`ReplayMode` makes every torch call of the pass pay for torch's
    mode handling. It cannot see a relu reached some other way (a reference taken before the pass, such as
    ``from torch.nn.functional import relu``; C++ or scripted code), so it is used only when :meth:`probing` the
    first pass proved that each of that pass's relu ops ran inside exactly one handled call and
    :meth:`held_elsewhere` finds no other reference to these functions that a later pass could call; and each
    replay pass is still checked call by call and at its end (:attr:`Replay.complete`), as under the mode.
    Attributes of the model's modules that hold one of the functions (``nn.TransformerEncoderLayer.activation``
    is ``F.relu``) are replaced too. Everything replaced is put back when the pass ends, exception or not."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.depth = 0
        """Handled calls now running on the pass's thread (a call made inside one is not handled again)."""
        self.site_ops = 0
        """Relu ops of the first pass that ran inside a handled call (:meth:`note_site_op`)."""
        self.proven = True
        """Every relu op of the first pass ran inside exactly one handled call."""
        self._handler: ReluHandler | None = None
        self._thread = 0
        self._names: dict[int, str] = {}
        self._wrappers: dict[int, Any] = {}
        self._originals: list[Any] = []
        self._module_list: list[nn.Module] = []
        """Every wrapped function, kept alive (the two caches above are keyed by id)."""

    @contextmanager
    def patched(self, handler: ReluHandler) -> Iterator[bool]:
        """One pass: each outermost relu-family call made on this thread goes to ``handler``. Yields False, and
        replaces nothing, while another pass (any observer, any thread) has them replaced."""
        if not _PATCHING.acquire(blocking=False):
            yield False
            return
        saved: list[tuple[Any, str, Any, bool]] = []
        self.depth, self._handler, self._thread = 0, handler, threading.get_ident()
        try:
            for owner, attribute, name in _entry_points():
                original = getattr(owner, attribute)
                saved.append((owner, attribute, vars(owner).get(attribute, _MISSING), False))
                setattr(owner, attribute, self._wrapper(original, name))
            held = self._names.keys()
            for module in self._modules():
                if held.isdisjoint(map(id, vars(module).values())):  # the usual case, read at C speed
                    continue
                for attribute, value in list(vars(module).items()):
                    found = self._names.get(id(value))
                    if found is not None:  # e.g. a TransformerEncoderLayer's activation = F.relu
                        saved.append((module, attribute, value, True))
                        vars(module)[attribute] = self._wrapper(value, found)
            yield True
        finally:
            self._handler = None
            try:
                for owner, attribute, value, instance in reversed(saved):
                    if instance:
                        vars(owner)[attribute] = value
                    elif value is _MISSING:
                        delattr(owner, attribute)  # torch.Tensor inherits relu from its C base
                    else:
                        setattr(owner, attribute, value)
            finally:
                _PATCHING.release()

    def _modules(self) -> list[nn.Module]:
        """The model's modules, listed on the first pass (as the owner hooks are): walking the tree every pass
        cost more than the rest of the patching."""
        if not self._module_list:
            self._module_list = list(self.model.modules())
        return self._module_list

    def _wrapper(self, original: Any, name: str) -> Any:
        wrapper = self._wrappers.get(id(original))
        if wrapper is not None:
            return wrapper
        points = self

        @functools.wraps(original)
        def entry(*args: Any, **kwargs: Any) -> Any:
            handler = points._handler
            if handler is None or points.depth or threading.get_ident() != points._thread:
                return original(*args, **kwargs)
            if not args and "input" in kwargs:  # read like the aten op: the tensor first
                kwargs = dict(kwargs)
                args = (kwargs.pop("input"),)
            points.depth += 1
            try:
                return handler(original, name, args, kwargs)
            finally:
                points.depth -= 1

        self._names[id(original)] = name
        self._wrappers[id(original)] = entry
        self._originals.append(original)
        return entry

    # -- the proof, on the first pass --------------------------------------------------------------------
    @contextmanager
    def probing(self) -> Iterator[None]:
        """The first pass (under the dispatch mode, which calls :meth:`note_site_op` for each relu op it sees)."""
        self.site_ops, self.proven = 0, True
        with self.patched(self._probe) as patched:
            self.proven = patched
            yield

    def note_site_op(self) -> None:
        """A relu op of the first pass: it must run inside a handled call on the pass's thread."""
        if self.depth == 0 or threading.get_ident() != self._thread:
            self.proven = False
        else:
            self.site_ops += 1

    def _probe(self, func: Any, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        before = self.site_ops
        output = func(*args, **kwargs)
        is_site = member_of(FUNCTION_ALIASES.get(name, name), args, kwargs) is not None
        if self.site_ops - before != int(is_site):
            self.proven = False
        return output

    def held_elsewhere(self) -> bool:
        """Whether some other reference to a relu-family function could be called without passing a wrapper: a
        global of a loaded module outside torch (``from torch.nn.functional import relu``) or an attribute of
        one of the model's module classes.

        A module found clean is read again only when its number of globals changed (an import adds names), except
        ``__main__`` (and multiprocessing's ``__mp_main__``), read every time: reading every loaded module's
        globals costs about 20 ms with a few thousand modules loaded, once per observer, against well under 1 ms
        for the check that nothing changed. So a global of another module *rebound* to a relu function after an
        earlier observer read it is not seen."""
        originals = {id(getattr(owner, attribute)) for owner, attribute, _ in _entry_points()}
        for name in _MAIN:  # a script's globals change as it runs: read every time
            main = getattr(sys.modules.get(name), "__dict__", None)
            if isinstance(main, dict) and not originals.isdisjoint(map(id, list(main.values()))):
                return True
        # No object per module is made (a tuple each would set off the garbage collector on a big heap).
        loaded = sys.modules.copy()
        for name in _MAIN:
            loaded.pop(name, None)
        modules = list(loaded.values())
        try:  # built at C speed: the same modules with as many globals each as when last found clean
            state: tuple[tuple[int, ...], ...] | None = (
                tuple(map(id, modules)),
                tuple(map(len, map(_GLOBALS, modules))),
            )
        except (AttributeError, TypeError):
            state = None
        if state is not None and state == _CLEAN_STATE[0]:
            return self._held_by_classes(originals)
        for name, module in zip(loaded, modules):
            if name == "torch" or name.startswith("torch."):
                continue
            namespace = getattr(module, "__dict__", None)
            if not isinstance(namespace, dict):
                continue
            seen = (id(module), len(namespace))
            if _CLEAN_MODULES.get(name) == seen:
                continue
            if not originals.isdisjoint(map(id, list(namespace.values()))):
                return True
            _CLEAN_MODULES[name] = seen
        _CLEAN_STATE[0] = state
        return self._held_by_classes(originals)

    def _held_by_classes(self, originals: set[int]) -> bool:
        for cls in {type(m) for m in self.model.modules()}:
            for klass in cls.__mro__:
                if klass.__module__.split(".")[0] == "torch":
                    continue
                if any(id(getattr(v, "__func__", v)) in originals for v in list(vars(klass).values())):
                    return True
        return False


class Replay:
    """Replays of a first pass: its sites, in call order, found again call by call and handed to ``calls``."""

    def __init__(
        self, sites: list[ObservedSite], owners: OwnerCalls, calls: CallRecorder, entries: EntryPoints | None
    ) -> None:
        self.sites = sites
        self.owners = owners
        self.calls = calls
        self.entries = entries
        """Replaced entry points find the relu calls (None: the first pass did not prove them enough, so
        :class:`ReplayMode` does)."""
        self.last_way = ""
        """How the last pass found its relu calls: ``"entry points"`` or ``"torch function mode"``."""
        self.replayed = 0
        """Sites (in call order) the pass now running has counted."""
        self.stray = False
        """A call of a tolerant pass was not the first pass's (it went uncounted)."""
        self._tolerant = False

    @contextmanager
    def replaying(self, *, tolerant: bool) -> Iterator[None]:
        """One replay pass. A call that is not the first pass's raises :class:`NotReplayable`, or, ``tolerant``
        (a training step, which cannot be run again), goes uncounted and sets :attr:`stray`."""
        self.replayed, self.stray, self._tolerant = 0, False, tolerant
        with self.owners.counting(), self._finding() as way:
            self.last_way = way
            yield

    @contextmanager
    def _finding(self) -> Iterator[str]:
        if self.entries is not None and USE_ENTRY_POINTS:
            with self.entries.patched(self._relu) as patched:
                if patched:
                    yield "entry points"
                    return
        with ReplayMode(self._relu):
            yield "torch function mode"

    @property
    def complete(self) -> bool:
        """The pass made exactly the first pass's relu calls."""
        return not self.stray and self.replayed == len(self.sites)

    def _relu(self, func: Any, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        member = member_of(FUNCTION_ALIASES.get(name, name), args, kwargs)
        if member is None:  # e.g. hardtanh(-1, 1): not a site (the first pass said what it is)
            return func(*args, **kwargs)
        try:
            site = self._next(member)
        except NotReplayable:
            if not self._tolerant:
                raise
            self.stray = True
            return func(*args, **kwargs)
        if torch.is_inference_mode_enabled():  # a scan's pass
            token = self.calls.before_op(site, site.op, args[0].detach(), site.family)
            output = func(*args, **kwargs)
            self.calls.after_op(token, output)
            return output
        # A training step: the counting still runs in inference mode. Its tensors never join autograd, and making
        # them there costs less than with grad mode on (0.1-0.3 ms per call of a CNN's site under no_grad).
        with torch.inference_mode():
            token = self.calls.before_op(site, site.op, args[0].detach(), site.family)
        output = func(*args, **kwargs)
        with torch.inference_mode():
            self.calls.after_op(token, output)
        return output

    def _next(self, member: Member) -> ObservedSite:
        key = self.owners.next_key()
        if self.replayed >= len(self.sites):
            raise NotReplayable("the pass made more relu calls than the first")
        site = self.sites[self.replayed]
        if site.key != key or site.family.cap != member.cap:
            raise NotReplayable(f"relu call {self.replayed + 1} of the pass is not the first pass's")
        self.replayed += 1
        return site
