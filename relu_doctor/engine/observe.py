"""The observer: sees every relu-family call of a forward pass and reduces its input to per-unit counters.

Attribution rule (in the spirit of fvcore's): a relu-family aten op is a *site*. Its owner is the innermost
module whose ``forward`` is running when the op is dispatched; the site is keyed by (owner path, which call
of the owner in this pass, which relu-family op of that call), so one ``nn.ReLU`` called twice is two sites
and ``F.relu`` / ``torch.relu`` / ``Tensor.relu_`` are seen as well as modules. The pre-activation is read
before the op runs (an in-place relu cannot hide it) and the unit axis comes from where the tensor was made
(conv/norm/pool -> channels, linear/matmul -> last axis), followed through elementwise and view ops.

Three classes do three jobs: :class:`ModuleCallTracker` knows which module is running; :class:`SiteKeys` turns
that into a site's key (the scan's simulation keys its re-runs with it too, so a site there is the same site);
:class:`ReluObserver` owns the dispatch mode, the counters, and restores the model (training flags, buffers, the
transformer fast path) in ``finally``.

Only the first pass needs every op: it finds the sites, their provenance and the warnings. When all sites are
plain activation-module calls, later passes hook just those modules, so no other op pays any Python time
(:meth:`ReluObserver._static_module_sites` says when).
"""

from __future__ import annotations

import contextlib
import enum
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakTensorKeyDictionary

from .. import activations
from ..activations import ACTIVATION_MODULES, module_cap
from ..errors import ObservationError, UsageError
from ..report import Producer
from ..settings import DEFAULT_REDUCER, check_reducer_name
from . import fused, ops
from .counters import UnitAccumulator, all_finite, reduce_sample_max
from .model_state import instrumented
from .ops import Layout, Role
from .provenance import Origin, derive_origin, tensor_args
from .site_keys import SiteKey, SiteKeys
from .tracking import ModuleCallTracker


@dataclass
class ObservedSite:
    """A site while it is being observed: identity, unit axis, counters and its place in the graph."""

    index: int
    module_path: str
    call_index: int
    ordinal: int
    op: str
    kind: str
    unit_axis: int
    layout: str
    activation_shape: tuple[int, ...]
    counters: UnitAccumulator
    producer: Producer | None
    consumers: set[tuple[str, str, tuple[int, ...]]] = field(default_factory=set)
    """(module path, op, input shape) of layers that read this site's output."""
    feeds_sum: bool = False
    feeds_concat: bool = False
    reaches_output: bool = False
    unknown_uses: set[str] = field(default_factory=set)
    """Ops that read the output whose effect on units is not followed (transpose, attention, ...)."""
    undecided: list[tuple[torch.Tensor, torch.Tensor, float]] | None = None
    """While the unit axis waits for a consumer (provenance unknown, first pass only): (pre-activation, output,
    cap) copies of the calls seen so far, counted once the axis is known."""


class ForwardingMode(TorchDispatchMode):
    """Forwards every aten op to ``target._dispatch(func, args, kwargs)``; holds no logic of its own."""

    def __init__(self, target: Any) -> None:
        super().__init__()
        self.target = target

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        # torch wraps __torch_dispatch__ in a dynamo-disable shim that imports torch._dynamo on first use (about
        # 1 s) and adds a frame to every op; nothing here is compiled, so the shim buys nothing.
        return False

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        return self.target._dispatch(func, args, kwargs or {})


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
        check_reducer(reducer)
        self.model = model
        self.unit_dim = unit_dim
        self.site_paths = site_paths
        self.reducer = reducer
        self.expected_passes = expected_passes
        """Forward passes the caller will run (None: unknown); ``auto`` weighs the fused reducer's load cost
        against the work left after the first pass."""
        self._fused = reducer == "fused" or (reducer == "auto" and fused.worth_loading(None))
        self._passes = 0
        self._suited_elements = 0
        """Elements the first pass reduced that the fused kernels could have read."""
        self._hooked = False
        """True while passes run without the dispatch mode, on hooks of the sites' activation modules only."""
        self._inside_hooked = 0
        """How many hooked activation modules are running now (a relu function inside one is that module's)."""
        self._site_modules: list[tuple[str, str, nn.Module]] = []
        self._hook_calls: Counter[str] = Counter()
        self._pending: dict[int, tuple[ObservedSite, torch.Size, int | None, Any]] = {}
        self._dynamic = False
        self._grad = _Grad.INFERENCE
        """Autograd state of dispatched passes: raised when a fused kernel hid relus that another state shows."""
        self._raise_grad: _Grad | None = None
        self._param_owners = _parameter_owners(model)
        """data_ptr of every parameter -> (module path, numel): producers and calls are read from the weights an op
        uses, which opaque graphs (TorchScript, torch.export) keep while their module calls are gone."""
        self._opaque = isinstance(model, (torch.jit.ScriptModule, torch.fx.GraphModule)) or site_paths is not None
        self.tracker = ModuleCallTracker(model)
        self.keys = SiteKeys(model, self.tracker, site_paths)
        self.sites: list[ObservedSite] = []
        self.other_activations: Counter[str] = Counter()
        self.warnings: dict[str, None] = {}
        self._by_key: dict[SiteKey, ObservedSite] = {}
        self._op_cache: dict[Any, tuple[str, Role]] = {}
        self._origins: WeakTensorKeyDictionary = WeakTensorKeyDictionary()
        self._batch_size = 0
        self._mask: torch.Tensor | None = None
        """(samples, positions) True at real tokens of the current MaskedBatch; None for other batches."""
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
        """One forward pass of ``inputs`` (a tensor, or a tuple of positional inputs)."""
        self._mask, self._kwargs = None, {}
        if isinstance(inputs, MaskedBatch):
            self._mask = inputs.attention_mask.bool()
            self._kwargs = {"attention_mask": inputs.attention_mask}
            inputs = inputs.input_ids
        args = inputs if isinstance(inputs, tuple) else (inputs,)
        first = next((a for a in tree_flatten(args)[0] if isinstance(a, torch.Tensor)), None)
        self._batch_size = int(first.shape[0]) if first is not None and first.dim() > 0 else 1
        if self._hooked:
            self._run_hooked(args)
        else:
            self._run_dispatched_once(args)
        self._after_pass()

    def _after_pass(self) -> None:
        self._passes += 1
        if self._passes == 1:
            if self.reducer == "auto" and not self._fused and self.expected_passes is not None:
                self._fused = fused.worth_loading(self._suited_elements * (self.expected_passes - 1))
            if self._static_module_sites():
                self._hook_sites()

    @contextlib.contextmanager
    def observed_pass(self, inputs: Any) -> Iterator[Callable[[Any], None]]:
        """Observe a forward pass the caller runs inside the block; call the yielded function with its output.

        For the training watch (:mod:`relu_doctor.watching`): the model's own training forward, under the caller's
        autograd state and without entering the observer (the model's mode and buffers are the caller's). Counting
        records no graph and keeps no activation. Unlike :meth:`run`, nothing is ever re-run: a hooked pass that
        meets a relu outside the hooked modules misses it (with a warning) and later passes use the dispatch mode.
        ``inputs`` (any nest of tensors) gives the batch size from its first tensor.
        """
        first = next((a for a in tree_flatten(inputs)[0] if isinstance(a, torch.Tensor)), None)
        self._batch_size = int(first.shape[0]) if first is not None and first.dim() > 0 else 1
        outputs: list[Any] = []
        hooked = self._hooked
        with self._site_hooks() if hooked else self._dispatch_scope():
            yield outputs.append
        if hooked:
            self._hooked = not self._dynamic
        else:
            self._mark_outputs(outputs[-1] if outputs else None)
            self._decide_undecided_axes()
        self._raise_grad = None
        self._after_pass()

    @contextlib.contextmanager
    def _dispatch_scope(self) -> Iterator[None]:
        self.tracker.start_pass()
        self.keys.start_pass()
        self._origins = WeakTensorKeyDictionary()
        self.tracker.install()
        try:
            with ForwardingMode(self):
                yield
        finally:
            self.tracker.remove()

    @contextlib.contextmanager
    def _site_hooks(self) -> Iterator[None]:
        self._hook_calls.clear()
        self._inside_hooked = 0
        handles = []
        try:
            for path, op, module in self._site_modules:
                handles.append(module.register_forward_pre_hook(self._before_hook(path, op), with_kwargs=True))
                handles.append(module.register_forward_hook(self._after_hook, with_kwargs=True, prepend=True))
            with _UnhookedReluNoted(self):
                yield
        finally:
            for handle in handles:
                handle.remove()
            self._pending.clear()

    def _run_dispatched_once(self, args: tuple[Any, ...]) -> None:
        """A dispatched pass; when the first one met a fused kernel hiding relus that a stronger autograd state
        shows (nn.RNN's relu under no_grad, a scripted transformer layer's fast path under grad mode), its results
        are dropped and it runs again in that state, for this and every later pass."""
        warnings_before = list(self.warnings)
        self._run_dispatched(args)
        while self._raise_grad is not None and self._passes == 0:
            self._grad, self._raise_grad = self._raise_grad, None
            self.sites.clear()
            self._by_key.clear()
            self.other_activations.clear()
            self._suited_elements = 0
            for warning in [w for w in self.warnings if w not in warnings_before]:
                del self.warnings[warning]
            self._run_dispatched(args)
        self._raise_grad = None

    def _run_dispatched(self, args: tuple[Any, ...]) -> None:
        """A pass under the dispatch mode: every op seen, provenance followed, sites found."""
        self.tracker.start_pass()
        self.keys.start_pass()
        self._origins = WeakTensorKeyDictionary()
        self.tracker.install()
        try:
            with _autograd_state(self._grad, self.model), ForwardingMode(self):
                output = self.model(*args, **self._kwargs)
        finally:
            self.tracker.remove()
        self._mark_outputs(output)
        self._decide_undecided_axes()
        if self.site_paths is not None and self.keys.unnamed:
            self.warnings[
                f"the graph names {len(self.site_paths)} relu sites but {self.keys.relu_calls} ran; "
                "site names past the first difference may be misattributed"
            ] = None

    # -- passes on module hooks ------------------------------------------------------------------------
    # The dispatch mode costs Python time on every op. Once a first pass has found the sites, their provenance
    # and the model's warnings, a model whose every site is a plain activation module (nn.ReLU, ...) that ran once
    # per call, with every module called, needs only those modules' hooks for the counts of later passes: no
    # per-op overhead for any other op. A call key the first pass did not see (data-dependent control flow)
    # is still counted, and later passes go back to the dispatch mode.
    def _static_module_sites(self) -> bool:
        modules = self.tracker.paths
        return (
            self.site_paths is None
            and bool(self.sites)
            and not self.other_activations
            and set(modules) <= self.tracker.ever_called
            and not any(isinstance(m, torch.jit.ScriptModule) for m in self.model.modules())
            and all(
                site.kind == "module"
                and site.ordinal == 1
                and type(modules.get(site.module_path)) in ACTIVATION_MODULES
                for site in self.sites
            )
        )

    def _hook_sites(self) -> None:
        ops_by_path = {site.module_path: site.op for site in self.sites}
        self._site_modules = [(path, op, self.tracker.paths[path]) for path, op in ops_by_path.items()]
        self._hooked = True

    def _run_hooked(self, args: tuple[Any, ...]) -> None:
        """A pass on the activation modules' hooks. A relu-family function called outside them (data-dependent
        control flow reaching an ``F.relu``) stops the pass: its counts are undone and the batch runs again under
        the dispatch mode, as do the passes after it, so no count depends on how the probe was batched."""
        saved = [(site, site.counters.copy()) for site in self.sites]
        known, warnings_before = len(self.sites), list(self.warnings)
        if self._hooked_pass(args):
            return
        for site, counters in saved:
            site.counters = counters
        for site in self.sites[known:]:
            del self._by_key[(site.module_path, site.call_index, site.ordinal)]
        del self.sites[known:]
        for warning in [w for w in self.warnings if w not in warnings_before]:
            del self.warnings[warning]
        self._hooked = False
        self._run_dispatched(args)

    def _hooked_pass(self, args: tuple[Any, ...]) -> bool:
        """False when a relu ran outside the hooked modules (the pass was cut short)."""
        self._hook_calls.clear()
        self._inside_hooked = 0
        handles = []
        try:
            for path, op, module in self._site_modules:
                # Last among pre-hooks and first among hooks: the input and output the op itself saw.
                handles.append(module.register_forward_pre_hook(self._before_hook(path, op), with_kwargs=True))
                handles.append(module.register_forward_hook(self._after_hook, with_kwargs=True, prepend=True))
            with torch.inference_mode(), _UnhookedReluWatch(self):
                self.model(*args, **self._kwargs)
        except _UnhookedRelu:
            return False
        finally:
            for handle in handles:
                handle.remove()
            self._pending.clear()
        if self._dynamic:
            self._hooked = False
        return True

    def _before_hook(self, path: str, op: str) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            pre = args[0] if args else kwargs["input"]
            self._hook_calls[path] += 1
            key = (path, self._hook_calls[path], 1)
            site = self._by_key.get(key)
            if site is None:
                site = self._new_site(key, op, "module", pre)
                self._dynamic = True
                self.warnings[
                    f"{site_label(site)} first ran after the first batch: its unit axis comes from its rank and "
                    "the layer computing its input is not known"
                ] = None
            view, sample_axis = self._prepare(site, op, pre)
            token = self._before_op(site, view, sample_axis, module_cap(module))
            self._pending[id(module)] = (site, view.shape, sample_axis, token)
            self._inside_hooked += 1

        return hook

    def _after_hook(self, module: nn.Module, args: Any, kwargs: Any, output: Any) -> None:
        self._inside_hooked -= 1
        site, shape, sample_axis, token = self._pending.pop(id(module))
        self._after_op(site, shape, sample_axis, token, output)

    # -- dispatch --------------------------------------------------------------------------------------
    def _dispatch(self, func: Any, args: Any, kwargs: dict[str, Any]) -> Any:
        cached = self._op_cache.get(func)
        if cached is None:
            name = ops.op_name(func)
            cached = self._op_cache[func] = (name, ops.role_of(name))
        name, role = cached
        if activations.is_relu_site(name, args, kwargs):
            return self._observe_site(func, name, args, kwargs)
        if role is Role.OTHER_ACTIVATION:
            self.other_activations[activations.display_op(name)] += 1
        elif (relu_like := activations.uncounted_relu_like(name, args, kwargs)) is not None:
            owner = self.tracker.current()[0] or "<root>"
            where = f"{relu_like.describe(args, kwargs)} in {owner}"
            self.warnings[f"{where} computes a relu but is not counted as a site"] = None
        elif (hidden := activations.fused_relu_blind_spot(name, args, kwargs)) is not None:
            owner = self.tracker.current()[0] or "<root>"
            self._raise_grad = _stronger(self._raise_grad, _GRAD_SHOWING.get(name), self._grad)
            self.warnings[f"{hidden} in {owner}: its relu units are not counted"] = None
        elif (
            name.endswith("dropout")
            and _arg(args, kwargs, 2, "train", False)
            and not self.tracker.current()[2].training
        ):
            owner = self.tracker.current()[0] or "<root>"
            self.warnings[
                f"dropout with training=True runs in {owner} even in eval mode: counts may overstate death"
            ] = None
        output = func(*args, **kwargs)
        self._propagate(name, role, args, output)
        return output

    def _observe_site(self, func: Any, name: str, args: Any, kwargs: dict[str, Any]) -> Any:
        pre = args[0]
        site = self._site_for(name, pre)
        cap = activations.relu_cap(name, args, kwargs)
        if site.undecided is not None:  # counted once a consumer tells the unit axis (or the pass ends)
            copy = pre.detach().clone()
            output = func(*args, **kwargs)
            site.undecided.append((copy, output.detach().clone(), cap))
        else:
            with torch.no_grad():  # grad mode may be on (see _Grad): the counters never join autograd's graph
                view, sample_axis = self._prepare(site, name, pre.detach())
                token = self._before_op(site, view, sample_axis, cap)
            output = func(*args, **kwargs)
            with torch.no_grad():
                self._after_op(site, view.shape, sample_axis, token, output.detach())
        self._origins[output] = Origin(self._layout_of(pre), site.producer, site.index)
        return output

    def _decide_axis(self, site: ObservedSite, axis: int, layout: str) -> None:
        """Fix an undecided site's unit axis and count the calls it saw meanwhile."""
        captured, site.undecided = site.undecided or [], None
        site.unit_axis, site.layout = axis, layout
        shape = captured[0][0].shape if captured else site.activation_shape
        site.counters = UnitAccumulator(int(shape[axis]), site.counters.positive.device)
        with torch.no_grad():
            for pre, output, cap in captured:
                sample_axis = self._sample_axis(pre, axis)
                token = self._before_op(site, pre, sample_axis, cap)
                self._after_op(site, pre.shape, sample_axis, token, output)

    def _decide_undecided_axes(self) -> None:
        """At the end of a pass, sites that no conv, norm or linear read keep the axis their rank suggests."""
        for site in self.sites:
            if site.undecided is not None:
                self._decide_axis(site, site.unit_axis, "rank")
                self.warnings[
                    f"{site_label(site)}: neither where its {list(site.activation_shape)} input came from nor what "
                    f"reads its output tells the unit axis; axis {site.unit_axis} was guessed from its rank "
                    "(pass --unit-dim to choose)"
                ] = None

    def _prepare(self, site: ObservedSite, name: str, pre: torch.Tensor) -> tuple[torch.Tensor, int | None]:
        """The pre-activation as a tensor of at least 2 axes, checked against the site, and its sample axis."""
        view = pre.reshape(1, -1) if pre.dim() < 2 else pre
        if view.shape[site.unit_axis] != site.counters.units:
            raise ObservationError(
                f"site {site.module_path or '<root>'} ({name}) had {site.counters.units} units, then an activation "
                f"of shape {tuple(pre.shape)}; pass --unit-dim to choose the unit axis"
            )
        return view, self._sample_axis(view, site.unit_axis)

    def _before_op(self, site: ObservedSite, view: torch.Tensor, sample_axis: int | None, cap: float) -> Any:
        """Count what needs the pre-activation, before the op runs (an in-place relu overwrites it).

        Returns what :meth:`_after_op` needs from the op's output: None (the fused reducer counted everything),
        the per-sample maxima (the torch reducer counts the rest on the output), or an _Exact copy (NaN or Inf).
        """
        view = view.detach()  # a training forward's tensor: counting records no graph (free in inference mode)
        if self._mask is not None:
            tokens = self._token_view(site, view)
            if tokens is not None:
                return _MaskedPre(tokens.clone())
        suits = fused.suits(view)
        if suits and self._passes == 0:
            self._suited_elements += view.numel()
        counted = (
            fused.add_batch(site.counters, view, site.unit_axis, sample_axis, cap) if suits and self._fused else None
        )
        if counted:
            return None
        if counted is None:
            sample_max = reduce_sample_max(view, site.unit_axis, sample_axis)
            if all_finite(sample_max):
                return sample_max
        return _Exact(view.clone())

    def _after_op(
        self, site: ObservedSite, shape: torch.Size, sample_axis: int | None, token: Any, output: torch.Tensor
    ) -> None:
        if token is None:
            return
        output = output.detach()
        if isinstance(token, _MaskedPre):
            assert self._mask is not None
            site.counters.add_masked(token.pre, output.reshape(token.pre.shape), self._mask)
            return
        activation = output.reshape(shape)
        if isinstance(token, _Exact):
            site.counters.add_exact(token.pre, activation, site.unit_axis, sample_axis)
        else:
            site.counters.add_finite(token, activation, site.unit_axis)

    def _token_view(self, site: ObservedSite, view: torch.Tensor) -> torch.Tensor | None:
        """The pre-activation as (samples, positions, units) lined up with the attention mask, or None (with a
        warning) when its shape does not line up: (B, T, U) as is, or (B*T, U) as OPT's feed-forward flattens it."""
        assert self._mask is not None
        samples, positions = self._mask.shape
        units = site.counters.units
        if view.dim() == 3 and tuple(view.shape[:2]) == (samples, positions) and site.unit_axis == 2:
            return view
        if view.dim() == 2 and view.shape[0] == samples * positions and site.unit_axis == 1:
            return view.reshape(samples, positions, units)
        self.warnings[
            f"{site_label(site)}: its activation of shape {tuple(view.shape)} does not line up with the attention "
            "mask's (samples, positions); padded positions are counted there"
        ] = None
        return None

    def _site_for(self, name: str, pre: torch.Tensor) -> ObservedSite:
        origin = self._origins.get(pre)
        key, kind = self.keys.next_key(origin.producer.module_path if origin and origin.producer else None)
        site = self._by_key.get(key)
        if site is None:
            site = self._new_site(key, name, kind, pre)
        return site

    def _new_site(self, key: SiteKey, name: str, kind: str, pre: torch.Tensor) -> ObservedSite:
        view_shape = (1, *pre.shape) if pre.dim() < 2 else tuple(pre.shape)
        axis, layout = self._unit_axis(pre, len(view_shape))
        undecided: list[Any] | None = [] if layout == "rank" and len(view_shape) >= 3 and not self._hooked else None
        origin = self._origins.get(pre)
        site = ObservedSite(
            index=len(self.sites),
            module_path=key[0],
            call_index=key[1],
            ordinal=key[2],
            op=name,
            kind=kind,
            unit_axis=axis,
            layout=layout,
            activation_shape=tuple(int(s) for s in pre.shape),
            counters=UnitAccumulator(int(view_shape[axis]), pre.device),
            producer=origin.producer if origin else None,
            undecided=undecided,
        )
        self.sites.append(site)
        self._by_key[key] = site
        return site

    def _unit_axis(self, pre: torch.Tensor, ndim: int) -> tuple[int, str]:
        if self.unit_dim is not None:
            axis = self.unit_dim + ndim if self.unit_dim < 0 else self.unit_dim
            if not 1 <= axis < ndim:
                raise ObservationError(
                    f"--unit-dim {self.unit_dim} does not fit an activation of shape {tuple(pre.shape)}; "
                    f"use an axis from 1 to {ndim - 1} (0 is the batch axis)"
                )
            return axis, "override"
        layout = self._layout_of(pre)
        if pre.dim() < 2:
            return 1, "rank"
        if layout is Layout.CHANNEL_FIRST:
            return 1, layout.value
        if layout is Layout.FEATURE_LAST:
            return ndim - 1, layout.value
        return (1 if ndim >= 4 else ndim - 1), "rank"

    def _layout_of(self, tensor: torch.Tensor) -> Layout | None:
        origin = self._origins.get(tensor)
        return origin.layout if origin else None

    def _sample_axis(self, view: torch.Tensor, unit_axis: int) -> int | None:
        if view.shape[0] == self._batch_size and unit_axis != 0:
            return 0
        if view.dim() >= 3 and view.shape[1] == self._batch_size and unit_axis != 1:
            return 1  # (T, N, F): sequence-first transformers
        return None

    # -- provenance ------------------------------------------------------------------------------------
    def _propagate(self, name: str, role: Role, args: Any, output: Any) -> None:
        out = output[0] if isinstance(output, (tuple, list)) and output else output
        if not isinstance(out, torch.Tensor):
            return
        tensors = tensor_args(args)
        inputs = [(a, self._origins.get(a)) for a in tensors]
        owner = self._weights_owner(tensors)
        self._record_uses(name, role, inputs, out, owner)
        origin = derive_origin(name, role, inputs, out, owner if owner is not None else self.tracker.current()[0])
        if origin is not None:
            self._origins[out] = origin

    def _weights_owner(self, tensors: list[torch.Tensor]) -> str | None:
        """The module whose parameters an op reads (the layer it computes), or None.

        In an opaque graph no module call is seen, so the parameter also marks its module as called."""
        for tensor in tensors:
            entry = self._param_owners.get(tensor.data_ptr()) if tensor.device.type != "meta" else None
            if entry is not None and entry[1] == tensor.numel():
                if self._opaque:
                    self.tracker.ever_called.add(entry[0])
                return entry[0]
        return None

    def _record_uses(
        self, name: str, role: Role, inputs: list[tuple[torch.Tensor, Origin | None]], out: Any, owner: str | None
    ) -> None:
        from_sites = [o.site for _, o in inputs if o is not None and o.site is not None]
        if not from_sites:
            return
        owner = owner if owner is not None else self.tracker.current()[0]
        network_operands = sum(1 for t, o in inputs if o is not None or t.shape == out.shape)
        for index in from_sites:
            site = self.sites[index]
            if role in (Role.PRODUCER_CHANNEL, Role.PRODUCER_FEATURE, Role.NORM_CHANNEL, Role.NORM_FEATURE):
                shape = next(tuple(t.shape) for t, o in inputs if o is not None and o.site == index)
                site.consumers.add((owner, name, shape))
                if site.undecided is not None and len(shape) == len(site.activation_shape):
                    # What reads the output tells the unit axis: a conv or norm reads dim 1, a linear the last.
                    channels = role in (Role.PRODUCER_CHANNEL, Role.NORM_CHANNEL)
                    axis = 1 if channels else len(shape) - 1
                    self._decide_axis(site, axis, Layout.CHANNEL_FIRST.value if channels else Layout.FEATURE_LAST.value)
            elif ops.is_sum(name) and network_operands >= 2:
                site.feeds_sum = True
            elif ops.is_concat(name):
                site.feeds_concat = True
            elif role in (Role.OTHER, Role.SUM):
                site.unknown_uses.add(name)

    def _mark_outputs(self, output: Any) -> None:
        for leaf in tree_flatten(output)[0]:
            origin = self._origins.get(leaf) if isinstance(leaf, torch.Tensor) else None
            if origin is not None and origin.site is not None:
                self.sites[origin.site].reaches_output = True


class _Grad(enum.IntEnum):
    """Autograd state of dispatched passes, weakest first. inference_mode is the cheapest; nn.RNN's relu shows
    only outside it (no_grad); a TorchScript transformer layer takes its fused fast path unless grad mode is on
    and a tensor it reads requires grad (the condition in TransformerEncoderLayer.forward), which no switch turns
    off in a scripted layer."""

    INFERENCE = 0
    NO_GRAD = 1
    GRAD = 2


_GRAD_SHOWING = {
    "rnn_relu": _Grad.NO_GRAD,
    "rnn_relu_cell": _Grad.NO_GRAD,
    "_transformer_encoder_layer_fwd": _Grad.GRAD,
}
"""Fused kernels that hide relus, and the weakest autograd state in which their relus run as separate ops."""


def _stronger(pending: _Grad | None, needed: _Grad | None, current: _Grad) -> _Grad | None:
    if needed is None or needed <= current:
        return pending
    return needed if pending is None else max(pending, needed)


@contextlib.contextmanager
def _autograd_state(state: _Grad, model: nn.Module) -> Any:
    """inference_mode, no_grad, or grad mode with every floating parameter requiring grad (restored after)."""
    if state is _Grad.INFERENCE:
        with torch.inference_mode():
            yield
        return
    if state is _Grad.NO_GRAD:
        with torch.no_grad():
            yield
        return
    frozen = [p for p in model.parameters() if p.is_floating_point() and not p.requires_grad]
    for parameter in frozen:
        parameter.requires_grad_(True)
    try:
        with torch.enable_grad():
            yield
    finally:
        for parameter in frozen:
            parameter.requires_grad_(False)


class _UnhookedRelu(Exception):
    """A relu-family function ran outside the hooked activation modules during a hooked pass."""


_RELU_FUNCTIONS = frozenset(
    {"relu", "relu_", "relu6", "hardtanh", "hardtanh_", "threshold", "threshold_", "_threshold"}
)


class _UnhookedReluNoted(TorchFunctionMode):
    """The training watch's :class:`_UnhookedReluWatch`: a user's forward cannot be stopped and re-run, so a relu
    outside the hooked modules is noted (a warning, and the dispatch mode from the next pass on), not raised."""

    def __init__(self, observer: ReluObserver) -> None:
        super().__init__()
        self.observer = observer

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if not self.observer._inside_hooked and getattr(func, "__name__", "") in _RELU_FUNCTIONS:
            self.observer._dynamic = True
            self.observer.warnings[
                "a relu ran outside the observed activation modules in one training pass and "
                "was not counted there; later passes follow every op"
            ] = None
        return func(*args, **(kwargs or {}))


class _UnhookedReluWatch(TorchFunctionMode):
    """Sees each torch function call of a hooked pass by name only, and stops the pass at a relu-family call that
    no hooked module is running: far cheaper than the dispatch mode, which follows every op's provenance."""

    def __init__(self, observer: ReluObserver) -> None:
        super().__init__()
        self.observer = observer

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if not self.observer._inside_hooked and getattr(func, "__name__", "") in _RELU_FUNCTIONS:
            raise _UnhookedRelu(func)
        return func(*args, **(kwargs or {}))


def _parameter_owners(model: nn.Module) -> dict[int, tuple[str, int]]:
    owners: dict[int, tuple[str, int]] = {}
    for name, parameter in model.named_parameters():
        if parameter.device.type != "meta":
            owners.setdefault(parameter.data_ptr(), (name.rpartition(".")[0], parameter.numel()))
    return owners


@dataclass(frozen=True)
class _Exact:
    """A copy of a pre-activation holding NaN or Inf, kept until the op's output is known."""

    pre: torch.Tensor


@dataclass(frozen=True)
class MaskedBatch:
    """Token ids and their attention mask: the model gets ``attention_mask=`` and padded positions (mask 0) are
    left out of every counter, so padding never makes a unit look alive or dead."""

    input_ids: torch.Tensor
    """(samples, positions) integer token ids."""
    attention_mask: torch.Tensor
    """(samples, positions): 1 at real tokens, 0 at padding."""

    @property
    def shape(self) -> torch.Size:
        """The shape of the token ids (what error messages and sample counts read)."""
        return self.input_ids.shape


def call_arguments(batch: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """(positional, keyword) arguments of the model call for one probe batch."""
    if isinstance(batch, MaskedBatch):
        return (batch.input_ids,), {"attention_mask": batch.attention_mask}
    return (batch if isinstance(batch, tuple) else (batch,)), {}


@dataclass(frozen=True)
class _MaskedPre:
    """A copy of a (samples, positions, units) pre-activation, counted with the batch's attention mask."""

    pre: torch.Tensor


def site_label(site: ObservedSite) -> str:
    return f"{site.module_path or '<root>'} (call {site.call_index})"


def check_reducer(reducer: str) -> None:
    """A usage error for an unknown reducer, or for ``fused`` where numba is not installed."""
    check_reducer_name(reducer)
    if reducer == "fused" and not fused.available():  # auto falls back to torch quietly
        raise UsageError("--reducer fused needs numba: pip install 'relu-doctor[fast]' (or use --reducer auto)")


def _arg(args: Any, kwargs: dict[str, Any], index: int, key: str, default: Any) -> Any:
    return args[index] if len(args) > index else kwargs.get(key, default)
