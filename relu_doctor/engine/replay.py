"""Replay passes: every pass after the first, for a model whose first pass showed a fixed set of sites.

The first pass runs under the dispatch mode, which costs Python time on every aten op; it finds the sites, their
provenance and the warnings. When that pass showed nothing the dispatch mode alone can see (no other activation
to count, no opaque graph, every module called, inference mode enough), a later pass only has to find the same
relu calls again, in the same order. It does that at the torch-function level: a :class:`ReplayMode` sees each
torch function call by name only and stops at relu-family ones, and forward hooks on the sites' *owner* modules
alone (:class:`OwnerCalls`) say which call of which owner is running. No other op and no other module pays any
Python time.

The replay is checked, never trusted: the innermost module running at each relu (read from the interpreter's
frames) must be the owner the hooks say, each call's key must be the next key of the first pass, and the pass must
end with every key seen. Anything else (data-dependent control flow, a relu inside another torch function) raises
:class:`NotReplayable`; the observer then drops the pass's counts and runs the batch, and every later one, under
the dispatch mode, so no count depends on which path ran.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

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


class Replay:
    """Replays of a first pass: its sites, in call order, found again call by call and handed to ``calls``."""

    def __init__(self, sites: list[ObservedSite], owners: OwnerCalls, calls: CallRecorder) -> None:
        self.sites = sites
        self.owners = owners
        self.calls = calls
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
        with self.owners.counting(), ReplayMode(self._relu):
            yield

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
        token = self.calls.before_op(site, site.op, args[0].detach(), site.family)
        output = func(*args, **kwargs)
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
