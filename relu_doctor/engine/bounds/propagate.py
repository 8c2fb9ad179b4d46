"""Interval bound propagation through any model: one forward pass of the domain's centre under a dispatch mode.

Every aten op runs on its concrete arguments as usual; for every op that reads a tensor derived from the network
input, a rule of :mod:`.rules` also bounds its outputs over the whole domain, kept in a side table keyed by
tensor (weakly). Tensors the input does not reach (weights, buffers, constants) are exact. Relu-family ops are
keyed with the observer's own :class:`~relu_doctor.observe.SiteKeys`, so every bound joins the scan's site.

Soundness rules the pass keeps, whatever the model does:
- an op without a rule (or whose rule does not apply) gives unbounded outputs, and a note naming it;
- an in-place write into a storage makes every *other* tensor on that storage unbounded (views and bases
  of the written tensor), including exact ones, unless they are bounded again later;
- once the forward pass reads a value of an input-dependent tensor into Python (``.item()``, ``if x.any()``)
  or sizes a tensor by one (``nonzero``, boolean indexing), nothing after it is claimed.

With ``record_graph`` the pass also records the computation as nodes for the linear relaxation
(:mod:`.relax`): affine ops as functions of their bounded inputs, relus, and boxes for everything else.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_flatten, tree_unflatten
from torch.utils.weak import WeakTensorKeyDictionary

from ... import activations
from .. import ops
from ..model_state import instrumented
from ..passes import ForwardingMode
from ..site_keys import SiteKey, SiteKeys
from ..tracking import ModuleCallTracker
from .rules import Interval, OpCall, RuleTable, Scratch, is_plain_relu

# A table of names: filled lines read better than one name per line.
# fmt: off
DATA_DEPENDENT = frozenset({
    "_local_scalar_dense", "item", "is_nonzero", "equal", "allclose", "nonzero", "nonzero_static", "argwhere",
    "unique", "_unique", "_unique2", "unique_dim", "unique_consecutive", "unique_dim_consecutive",
    "masked_select", "repeat_interleave", "bincount", "histc", "_assert_async", "masked_scatter",
})
# fmt: on
"""Ops whose result (a Python value, or an output's shape) depends on the values of their input."""


@dataclass
class Node:
    """One input-dependent tensor of the recorded computation, for the linear relaxation."""

    kind: str
    """input (the domain), affine (a function of its inputs), relu, or box (its interval is all that is known)."""
    interval: Interval
    """Bounds of the tensor; the relaxation tightens a site's pre-activation node in place."""
    inputs: tuple[int, ...] = ()
    """Node ids the value is computed from (affine: one per bounded argument; relu: its input)."""
    function: Callable[..., torch.Tensor] | None = None
    """affine only: the op as a function of its bounded arguments (float64 in, float64 out)."""


@dataclass
class _Entry:
    interval: Interval
    step: int
    node: int | None
    fallbacks: frozenset[str]


@dataclass
class SitePass:
    """What the pass learnt about one relu-family call."""

    key: SiteKey
    """The scan's site key."""
    op: str
    """The aten op."""
    pre: Interval | None
    """Bounds of the pre-activation over the domain, per element; None when nothing is claimed (see notes)."""
    node: int | None
    """Graph node of the pre-activation (None when not recorded, or when it does not depend on the input)."""
    notes: tuple[str, ...] = ()
    """Ops without a bound upstream of this site, or why nothing is claimed."""


@dataclass
class BoundPass:
    """Runs the propagation once; results in ``sites`` (by key, in call order), ``notes`` and ``graph``."""

    model: nn.Module
    rules: RuleTable
    site_paths: tuple[str, ...] | None = None
    record_graph: bool = False
    sites: dict[SiteKey, SitePass] = field(default_factory=dict)
    notes: dict[str, None] = field(default_factory=dict)
    """Ops that got unbounded outputs (no rule, or the rule did not apply), and anything that voided claims."""
    warnings: dict[str, None] = field(default_factory=dict)
    graph: list[Node] = field(default_factory=list)
    poisoned: str | None = None
    """Why nothing after some point is claimed, or None."""

    def __post_init__(self) -> None:
        self.tracker = ModuleCallTracker(self.model)
        self.keys = SiteKeys(self.model, self.tracker, self.site_paths)
        self._table: WeakTensorKeyDictionary = WeakTensorKeyDictionary()
        self._taint: dict[int, int] = {}
        self._step = 0
        self._schema_cache: dict[Any, tuple[tuple[tuple[int, str], ...], bool]] = {}
        self._scratch = Scratch()

    def run(self, centre: torch.Tensor, box: Interval) -> None:
        """One forward pass of ``centre`` (with the batch axis) whose input ranges over ``box`` (same shape)."""
        x = centre.detach().clone()
        node = self._add_node(Node("input", box))
        self._table[x] = _Entry(box, 0, node, frozenset())
        with instrumented(self.model, self.tracker, self.warnings):
            self.tracker.start_pass()
            self.keys.start_pass()
            try:
                with torch.inference_mode(), ForwardingMode(self):
                    self.model(x)
            finally:
                self._scratch.release()

    # -- dispatch ----------------------------------------------------------------------------------------
    def _dispatch(self, func: Any, args: Any, kwargs: dict[str, Any]) -> Any:
        name = ops.op_name(func)
        site_key = self.keys.next_key()[0] if activations.is_relu_site(name, args, kwargs) else None
        leaves = tree_flatten((args, kwargs))[0]
        bounded = {id(t): e for t in leaves if isinstance(t, torch.Tensor) and (e := self._lookup(t)) is not None}
        if site_key is not None:
            self._record_site(site_key, name, args[0], bounded.get(id(args[0])))
        output = func(*args, **kwargs)
        self._step += 1
        if not bounded:
            self._forget_fresh(func, output)
        elif self.poisoned is None:
            if name in DATA_DEPENDENT or _has_python_result(output) or _bounded_mask_index(name, args, bounded):
                self.poisoned = f"the forward pass read input-dependent values into Python or a shape ({name} in {self._owner()}): nothing after it is claimed"
                self.notes[self.poisoned] = None
            else:
                self._bound(func, name, args, kwargs, output, bounded)
        return output

    def _lookup(self, tensor: torch.Tensor) -> _Entry | None:
        """The tensor's bounds entry, None when it is exact; a stale entry becomes an unbounded one."""
        entry = self._table.get(tensor)
        tainted = self._taint.get(_storage_key(tensor))
        if tainted is None or (entry is not None and entry.step >= tainted):
            return entry
        note = "a tensor written in place through another view"
        fresh = _Entry(Interval.unbounded(tensor), self._step, None, frozenset({note}))
        fresh.node = self._add_node(Node("box", fresh.interval)) if self.record_graph else None
        self._table[tensor] = fresh
        return fresh

    def _record_site(self, key: SiteKey, name: str, pre: torch.Tensor, entry: _Entry | None) -> None:
        if self.poisoned is not None:
            self.sites[key] = SitePass(key, name, None, None, (self.poisoned,))
        elif entry is None:
            self.sites[key] = SitePass(key, name, Interval.exact(pre), None)
        else:
            self.sites[key] = SitePass(key, name, entry.interval, entry.node, tuple(sorted(entry.fallbacks)))

    def _bound(
        self, func: Any, name: str, args: Any, kwargs: dict[str, Any], output: Any, bounded: dict[int, _Entry]
    ) -> None:
        call = OpCall(
            func,
            name,
            args,
            kwargs,
            lambda t: e.interval if (e := bounded.get(id(t))) is not None else None,
            self._scratch,
        )
        rule = self.rules.get(name)
        intervals = None
        if rule is not None:
            try:
                intervals = rule.interval(call)
            except Exception:  # a rule that cannot handle these arguments claims nothing
                intervals = None
        fallbacks = frozenset().union(*(e.fallbacks for e in bounded.values()))
        if intervals is None:
            note = f"{activations.display_op(name)} in {self._owner()}"
            self.notes[f"no bound through {note}: its outputs are unbounded"] = None
            fallbacks = fallbacks | {note}
        outputs = _tensor_outputs(output)
        affine = rule is not None and intervals is not None and _safe(rule.affine, call)
        written, aliases = self._schema(func)
        for index, key in written:
            target = args[index] if index < len(args) else kwargs.get(key)
            if isinstance(target, torch.Tensor):
                self._taint[_storage_key(target)] = self._step
        for i, out in enumerate(outputs):
            interval = intervals[i] if intervals is not None and i < len(intervals) else None
            complete = interval is not None and tuple(interval.lo.shape) == tuple(out.shape)
            interval = interval.sanitized() if complete and interval is not None else Interval.unbounded(out)
            tags = (
                fallbacks
                if complete or intervals is None
                else fallbacks | {f"{activations.display_op(name)} output {i}"}
            )
            node = self._graph_node(call, i, interval, affine and complete, bounded) if self.record_graph else None
            self._table[out] = _Entry(interval, self._step, node, tags)
        for index, key in written:
            target = args[index] if index < len(args) else kwargs.get(key)
            if isinstance(target, torch.Tensor) and not any(target is o for o in outputs):
                self._table[target] = _Entry(Interval.unbounded(target), self._step, self._box(target), fallbacks)

    # -- graph -------------------------------------------------------------------------------------------
    def _add_node(self, node: Node) -> int:
        self.graph.append(node)
        return len(self.graph) - 1

    def _box(self, tensor: torch.Tensor) -> int | None:
        return self._add_node(Node("box", Interval.unbounded(tensor))) if self.record_graph else None

    def _graph_node(
        self, call: OpCall, index: int, interval: Interval, affine: bool, bounded: dict[int, _Entry]
    ) -> int:
        first = call.args[0] if call.args else None
        if (
            isinstance(first, torch.Tensor)
            and id(first) in bounded
            and is_plain_relu(call.name, call.args, call.kwargs)
        ):
            source = bounded[id(first)].node
            if source is not None:
                return self._add_node(Node("relu", interval, (source,)))
        if affine:
            function, inputs = _affine_function(call, index, bounded)
            if all(i is not None for i in inputs):
                return self._add_node(Node("affine", interval, tuple(i for i in inputs if i is not None), function))
        return self._add_node(Node("box", interval))

    # -- bookkeeping -------------------------------------------------------------------------------------
    def _schema(self, func: Any) -> tuple[tuple[tuple[int, str], ...], bool]:
        """(positions and names of the arguments the op writes, whether an output aliases an input)."""
        cached = self._schema_cache.get(func)
        if cached is None:
            schema = func._schema
            written = tuple(
                (i, a.name)
                for i, a in enumerate(schema.arguments)
                if a.alias_info is not None and a.alias_info.is_write
            )
            aliases = any(r.alias_info is not None for r in schema.returns)
            cached = self._schema_cache[func] = (written, aliases)
        return cached

    def _forget_fresh(self, func: Any, output: Any) -> None:
        """A newly allocated output shares no values with any tensor seen before: drop a stale taint at its address."""
        if self._taint and not self._schema(func)[1]:
            for out in _tensor_outputs(output):
                self._taint.pop(_storage_key(out), None)

    def _owner(self) -> str:
        return self.tracker.current()[0] or "<root>"


def _affine_function(
    call: OpCall, index: int, bounded: dict[int, _Entry]
) -> tuple[Callable[..., torch.Tensor], list[int | None]]:
    """The op as a function of its bounded arguments (other arguments fixed at their values now)."""
    leaves, spec = tree_flatten((call.args, call.kwargs))
    positions = [i for i, leaf in enumerate(leaves) if isinstance(leaf, torch.Tensor) and id(leaf) in bounded]
    inputs = [bounded[id(leaves[i])].node for i in positions]
    fixed = [
        _snapshot(leaf) if isinstance(leaf, torch.Tensor) and i not in positions else leaf
        for i, leaf in enumerate(leaves)
    ]
    func = _functional(call.func)

    def function(*values: torch.Tensor) -> torch.Tensor:
        current = [_to64(v) if isinstance(v, torch.Tensor) else v for v in fixed]
        for position, value in zip(positions, values):
            current[position] = value
        args, kwargs = tree_unflatten(current, spec)
        return _tensor_outputs(func(*args, **kwargs))[index].to(torch.float64)

    return function, inputs


def _functional(func: Any) -> Any:
    """The out-of-place form of an in-place op (``add_.Tensor`` -> ``add.Tensor``); the op itself otherwise."""
    name = ops.op_name(func)
    if not name.endswith("_") or name.startswith("_"):
        return func
    packet = getattr(torch.ops.aten, name[:-1], None)
    return getattr(packet, func._overloadname, func) if packet is not None else func


def _snapshot(tensor: torch.Tensor) -> torch.Tensor:
    """A fixed argument as it is now (the model may overwrite an intermediate later); parameters are kept as they are."""
    return tensor if isinstance(tensor, nn.Parameter) else tensor.detach().clone()


def _to64(tensor: torch.Tensor) -> torch.Tensor:
    # Runs outside inference mode: the copy is a normal tensor that autograd may save.
    if not tensor.is_floating_point():
        return tensor.clone() if tensor.is_inference() else tensor
    return tensor.detach().to(torch.float64, copy=True)


def _tensor_outputs(output: Any) -> list[torch.Tensor]:
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, (list, tuple)):
        return [o for o in output if isinstance(o, torch.Tensor)]
    return []


def _has_python_result(output: Any) -> bool:
    values = output if isinstance(output, (list, tuple)) else (output,)
    return any(isinstance(v, (bool, int, float, complex)) for v in values)


def _bounded_mask_index(name: str, args: Any, bounded: dict[int, _Entry]) -> bool:
    """Boolean indexing by an input-dependent mask: the output's shape depends on input values."""
    if not name.startswith("index") or len(args) < 2 or not isinstance(args[1], (list, tuple)):
        return False
    return any(isinstance(i, torch.Tensor) and id(i) in bounded and i.dtype == torch.bool for i in args[1])


def _storage_key(tensor: torch.Tensor) -> int:
    try:
        return int(tensor.untyped_storage().data_ptr())
    except (RuntimeError, NotImplementedError):
        return id(tensor)


def _safe(predicate: Callable[[OpCall], bool], call: OpCall) -> bool:
    try:
        return bool(predicate(call))
    except Exception:
        return False
