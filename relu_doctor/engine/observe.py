"""The observer: sees every relu-family call of a forward pass and hands its input and output to a reducer.

Attribution rule (in the spirit of fvcore's): a relu-family aten op is a *site*. Its owner is the innermost
module whose ``forward`` is running when the op is dispatched; the site is keyed by (owner path, which call
of the owner in this pass, which relu-family op of that call), so one ``nn.ReLU`` called twice is two sites
and ``F.relu`` / ``torch.relu`` / ``Tensor.relu_`` are seen as well as modules. The pre-activation is read
before the op runs (an in-place relu cannot hide it) and the unit axis comes from where the tensor was made
(conv/norm/pool -> channels, linear/matmul -> last axis), followed through elementwise and view ops.

Small units with one job each: :class:`~.tracking.ModuleCallTracker` knows which module is running;
:class:`~.site_keys.SiteKeys` turns that into a site's key; :class:`~.graph.GraphRecorder` follows provenance and
what reads each site; :class:`~.sites.SiteTable` holds the sites; a :class:`~.reduce.Reducer` turns each call into
counts; :mod:`.passes` runs a pass (dispatch mode, autograd state). :class:`ReluObserver` routes between them,
chooses how each pass runs, and restores the model (training flags, buffers, the transformer fast path) in
``finally``.

Only the first pass needs every op: it finds the sites, their provenance and the warnings. Later passes replay
it when they can (:mod:`.replay`): they find the same relu calls at the torch-function level, with hooks on the
sites' owner modules only, so no other op pays the dispatch mode's Python time (:meth:`ReluObserver._replayable`
says when).
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from .. import activations
from ..activations import Member
from ..settings import DEFAULT_REDUCER
from . import ops
from .batches import MaskedBatch, call_arguments, leading_size
from .graph import GraphRecorder
from .model_state import instrumented
from .ops import Role
from .passes import GRAD_SHOWING, ForwardingMode, Grad, autograd_state, stronger
from .recording import CallRecorder
from .reduce import Reducer, make_reducer
from .replay import EntryPoints, NotReplayable, OwnerCalls, Replay
from .site_keys import SiteKeys
from .sites import ObservedSite, SiteTable
from .tracking import ModuleCallTracker
from .unit_axes import UnitAxes

__all__ = ["ObservedSite", "ReluObserver"]


class ReluObserver:
    """Context manager that observes relu sites over any number of forward passes.

    ``with ReluObserver(model) as obs: obs.run(batch)`` for each batch, then ``obs.sites``.
    The model is put in eval mode for the duration and restored exactly afterwards.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        unit_dim: int | None = None,
        site_paths: tuple[str, ...] | None = None,
        reducer: str = DEFAULT_REDUCER,
        expected_passes: int | None = None,
    ) -> None:
        self.reducer: Reducer = make_reducer(reducer, expected_passes)
        """Turns each call into counts (``expected_passes``: forward passes the caller will run, None: unknown)."""
        self.warnings: dict[str, None] = {}
        self.calls = CallRecorder(self.reducer, self.warnings)
        """Hands each call of a site to the reducer, for the batch now running."""
        self.model = model
        self.unit_dim = unit_dim
        self.site_paths = site_paths
        self.tracker = ModuleCallTracker(model)
        self.keys = SiteKeys(model, self.tracker, site_paths)
        self.table = SiteTable()
        self.sites = self.table.sites
        self.other_activations: Counter[str] = Counter()
        opaque = isinstance(model, (torch.jit.ScriptModule, torch.fx.GraphModule)) or site_paths is not None
        self.axes = UnitAxes(unit_dim, self.table, self.calls, self.warnings)
        self.graph = GraphRecorder(model, self.tracker, self.sites, opaque, self.axes.decide)
        self.replaying = False
        """True while passes replay the first one (:mod:`.replay`) instead of running under the dispatch mode."""
        self._passes = 0
        self._replay: Replay | None = None
        self._entries = EntryPoints(model)
        """The relu family's entry points: the first pass proves whether replays may find the relus there."""
        self._grad = Grad.INFERENCE
        """Autograd state of dispatched passes: raised when a fused kernel hid relus that another state shows."""
        self._raise_grad: Grad | None = None
        self._op_cache: dict[Any, tuple[str, Role]] = {}
        self._kwargs: dict[str, Any] = {}
        self._exit_stack = contextlib.ExitStack()

    # -- lifecycle -------------------------------------------------------------------------------------
    def __enter__(self) -> ReluObserver:
        self._exit_stack.enter_context(instrumented(self.model, self.tracker, self.warnings))
        # Hooks stay installed only during run(): other forward passes of the model while the observer is open
        # are neither slowed down nor counted.
        self.tracker.remove()
        return self

    def __exit__(self, *exc: object) -> None:
        self._exit_stack.close()

    def run(self, inputs: Any) -> None:
        """One forward pass of ``inputs`` (a tensor, a tuple of positional inputs, or a :class:`MaskedBatch`)."""
        args, self._kwargs = call_arguments(inputs)
        mask = inputs.attention_mask.bool() if isinstance(inputs, MaskedBatch) else None
        self.calls.start_batch(leading_size(args), mask)
        if self.replaying:
            self._run_replay(args)
        else:
            self._run_dispatched_once(args)
        self._after_pass()

    def _after_pass(self) -> None:
        self._passes += 1
        if self._passes == 1 and self._replayable():
            modules = self.tracker.paths
            owners = {s.module_path: modules[s.module_path] for s in self.sites}
            uncalled = {path: m for path, m in modules.items() if path not in self.tracker.ever_called}
            calls = OwnerCalls(self.model, owners, uncalled, self.tracker.ever_called)
            entries = self._entries if self._entries.proven and not self._entries.held_elsewhere() else None
            self._replay = Replay(self.sites, calls, self.calls, entries)
            self.replaying = True

    @contextlib.contextmanager
    def observed_pass(self, inputs: Any) -> Iterator[Callable[[Any], None]]:
        """Observe a forward pass the caller runs inside the block; call the yielded function with its output.

        For the training watch (:mod:`relu_doctor.watching`): the model's own training forward, under the caller's
        autograd state and without entering the observer (the model's mode and buffers are the caller's). Counting
        records no graph and keeps no activation. Unlike :meth:`run`, nothing is ever re-run: a
        replay pass that meets a relu call the first pass did not make leaves it uncounted (with a warning) and later
        passes use the dispatch mode. ``inputs`` (any nest of tensors) gives the batch size from its first tensor.
        """
        self.calls.start_batch(leading_size(inputs))
        outputs: list[Any] = []
        replaying = self.replaying
        self.reducer.start_pass()
        with self._replay_scope(persistent=False) if replaying else self._dispatch_scope():
            yield outputs.append
        if replaying and self._replay is not None and not self._replay.complete:
            self._note_stray()
            self.replaying = False
        else:
            self.graph.mark_outputs(outputs[-1] if outputs else None)
            self.axes.decide_undecided()
        self.reducer.end_pass()
        self._raise_grad = None
        self._after_pass()

    @contextlib.contextmanager
    def _dispatch_scope(self) -> Iterator[None]:
        self.tracker.start_pass()
        self.keys.start_pass()
        self.graph.start_pass()
        self.tracker.install()
        try:
            with self._entries.probing() if self._passes == 0 else contextlib.nullcontext(), ForwardingMode(self):
                yield
        finally:
            self.tracker.remove()

    # -- passes under the dispatch mode ----------------------------------------------------------------
    def _run_dispatched_once(self, args: tuple[Any, ...]) -> None:
        """A dispatched pass; when the first one met a fused kernel hiding relus that a stronger autograd state
        shows (nn.RNN's relu under no_grad, a scripted transformer layer's fast path under grad mode), its results
        are dropped and it runs again in that state, for this and every later pass."""
        warnings_before = list(self.warnings)
        self._run_dispatched(args)
        while self._raise_grad is not None and self._passes == 0:
            self._grad, self._raise_grad = self._raise_grad, None
            self.table.clear()
            self.other_activations.clear()
            self._forget_warnings_since(warnings_before)
            self._run_dispatched(args)
        self._raise_grad = None

    def _run_dispatched(self, args: tuple[Any, ...]) -> None:
        """A pass under the dispatch mode: every op seen, provenance followed, sites found."""
        self.reducer.start_pass()
        try:
            with self._dispatch_scope(), autograd_state(self._grad, self.model):
                output = self.model(*args, **self._kwargs)
            self.graph.mark_outputs(output)
            self.axes.decide_undecided()
        except BaseException:
            self.reducer.undo_pass()
            raise
        if self._raise_grad is not None and self._passes == 0:
            self.reducer.undo_pass()  # the pass runs again in a stronger autograd state
        else:
            self.reducer.end_pass()
        if self.site_paths is not None and self.keys.unnamed:
            self.warnings[
                f"the graph names {len(self.site_paths)} relu sites but {self.keys.relu_calls} ran; "
                "site names past the first difference may be misattributed"
            ] = None

    def _dispatch(self, func: Any, args: Any, kwargs: dict[str, Any]) -> Any:
        cached = self._op_cache.get(func)
        if cached is None:
            name = ops.op_name(func)
            cached = self._op_cache[func] = (name, ops.role_of(name))
        name, role = cached
        member = activations.member_of(name, args, kwargs) if name in activations.FAMILY_OPS else None
        if member is not None:
            return self._observe_site(func, name, member, args, kwargs)
        self._note_op(name, role, args, kwargs)
        output = func(*args, **kwargs)
        self.graph.propagate(name, role, args, output)
        return output

    def _note_op(self, name: str, role: Role, args: Any, kwargs: dict[str, Any]) -> None:
        """Side tables: other activations, relu-like ops that are not sites, relus hidden in fused kernels, dropout
        that runs in eval mode."""
        if role is Role.OTHER_ACTIVATION:
            self.other_activations[activations.display_op(name)] += 1
        elif (relu_like := activations.uncounted_relu_like(name, args, kwargs)) is not None:
            where = f"{relu_like.describe(args, kwargs)} in {self._owner()}"
            self.warnings[f"{where} computes a relu but is not counted as a site"] = None
        elif (hidden := activations.fused_relu_blind_spot(name, args, kwargs)) is not None:
            self._raise_grad = stronger(self._raise_grad, GRAD_SHOWING.get(name), self._grad)
            self.warnings[f"{hidden} in {self._owner()}: its relu units are not counted"] = None
        elif (
            name.endswith("dropout")
            and _arg(args, kwargs, 2, "train", False)
            and not self.tracker.current()[2].training
        ):
            self.warnings[
                f"dropout with training=True runs in {self._owner()} even in eval mode: counts may overstate death"
            ] = None

    def _owner(self) -> str:
        return self.tracker.current()[0] or "<root>"

    def _observe_site(self, func: Any, name: str, member: Member, args: Any, kwargs: dict[str, Any]) -> Any:
        self._entries.note_site_op()
        pre = args[0]
        site = self._site_for(name, member, pre)
        if site.undecided is not None:  # counted once a consumer tells the unit axis (or the pass ends)
            copy = pre.detach().clone()
            output = func(*args, **kwargs)
            site.undecided.append((copy, output.detach().clone(), member))
        else:
            with torch.no_grad():  # grad mode may be on (see Grad): the counters never join autograd's graph
                token = self.calls.before_op(site, name, pre.detach(), member)
            output = func(*args, **kwargs)
            with torch.no_grad():
                self.calls.after_op(token, output)
        self.graph.site_output(output, pre, site)
        return output

    def _site_for(self, name: str, member: Member, pre: torch.Tensor) -> ObservedSite:
        origin = self.graph.origin(pre)
        key, kind = self.keys.next_key(origin.producer.module_path if origin and origin.producer else None)
        site = self.table.get(key)
        return site if site is not None else self.axes.new_site(key, name, member, kind, pre, origin)

    # -- replay passes ---------------------------------------------------------------------------------
    def _replayable(self) -> bool:
        """Whether later passes may replay the first: nothing in it needed the dispatch mode beyond finding sites."""
        modules = self.tracker.paths
        return (
            self.site_paths is None
            and bool(self.sites)
            and not self.other_activations  # counted per call, by the dispatch mode only
            and self._grad is Grad.INFERENCE  # stronger states show relus of fused kernels as aten ops only
            and not any(isinstance(m, torch.jit.ScriptModule) for m in self.model.modules())
            and all(site.module_path in modules for site in self.sites)
        )

    def _run_replay(self, args: tuple[Any, ...]) -> None:
        """A replay pass; when it is not a replay of the first (:class:`~.replay.NotReplayable`), its counts are
        dropped and the batch runs under the dispatch mode, as do the batches after it."""
        self.reducer.start_pass(undoable=True)
        try:
            with torch.inference_mode(), self._replay_scope(persistent=True):
                self.model(*args, **self._kwargs)
            if self._replay is not None and not self._replay.complete:
                raise NotReplayable("the pass made fewer relu calls than the first")
        except NotReplayable:
            self.reducer.undo_pass()
            self.replaying = False
            self._run_dispatched(args)
            return
        except BaseException:
            self.reducer.undo_pass()
            raise
        self.reducer.end_pass()

    @contextlib.contextmanager
    def _replay_scope(self, persistent: bool) -> Iterator[None]:
        """``persistent`` (a scan): the owner hooks stay until the observer closes (inactive between passes), and a
        call that is not the first pass's stops the pass; otherwise (a training step, which cannot be run again)
        the hooks are removed after the pass and such a call goes uncounted."""
        replay = self._replay
        assert replay is not None
        owners = replay.owners
        if not owners.installed:
            owners.install()
            if persistent:
                self._exit_stack.callback(owners.remove)
        try:
            with replay.replaying(tolerant=not persistent):
                yield
        finally:
            if not persistent:
                owners.remove()

    def _note_stray(self) -> None:
        self.warnings[
            "a training pass made relu calls the first observed pass did not (data-dependent control flow); "
            "calls that did not match went uncounted there, and later passes follow every op"
        ] = None

    def _forget_warnings_since(self, before: list[str]) -> None:
        for warning in [w for w in self.warnings if w not in before]:
            del self.warnings[warning]


def _arg(args: Any, kwargs: dict[str, Any], index: int, key: str, default: Any) -> Any:
    return args[index] if len(args) > index else kwargs.get(key, default)
