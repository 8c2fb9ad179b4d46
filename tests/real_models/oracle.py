"""An independent float64 brute-force counter of relu sites, for checking relu-doctor on the real-model corpus.

It shares no code with relu_doctor's observer: the model is copied to float64 and run batch by batch with plain
forward hooks. Relus are caught where Python calls them (``nn.ReLU``/``nn.ReLU6`` module pre-hooks, and
``F.relu``/``torch.relu``/``Tensor.relu`` patched for the duration), and relus that torch's own modules compute
where no patch can reach (nn.RNN's per-step relu inside its C++ loop) are recomputed by hand from that module's
weights (:class:`Tap`).

Definitions (README): a unit is a channel (axis 1) of a conv-style activation or a feature (last axis) of a
linear-style one; which it is comes from the model's author (``unit_axis``), not from any inference. A unit is
dead when its pre-activation is never > 0 and it had no NaN/Inf; units with NaN/Inf are reported apart.
Names follow the README: the module path, ``#k`` for the k-th call of a module run several times per pass;
a functional relu is ``owner:relu`` with ``#k`` when that call of the owner makes several.
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class Tap:
    """A relu computed inside library code, recomputed from a module's call.

    ``module`` is the module whose forward hook sees the call, ``owner`` the module whose forward runs the relu
    (the site's owner in the README's naming), and ``preactivations(module, args, output)`` returns the relu
    inputs of that call, in order.
    """

    module: str
    owner: str
    preactivations: Callable[[nn.Module, tuple[Any, ...], Any], list[torch.Tensor]]


@dataclass
class OracleSite:
    """Counts of one site over the whole probe."""

    name: str
    op: str
    units: int
    positive: torch.Tensor
    nonfinite: torch.Tensor
    zeros: int = 0
    positions: int = 0

    @property
    def dead_units(self) -> list[int]:
        return [u for u in range(self.units) if self.positive[u] == 0 and self.nonfinite[u] == 0]

    @property
    def nan_units(self) -> list[int]:
        return [u for u in range(self.units) if self.nonfinite[u] > 0]


@dataclass
class _Pass:
    """Module stack and per-pass call counts of one forward pass."""

    stack: list[tuple[str, int, nn.Module]] = field(default_factory=list)
    calls: Counter[str] = field(default_factory=Counter)
    ordinals: Counter[tuple[str, int]] = field(default_factory=Counter)
    keys: list[tuple[str, int, int, str, str]] = field(default_factory=list)
    """(path, call, ordinal, op, kind) of every relu of the pass, in call order."""


_ACTIVATION_MODULES = (nn.ReLU, nn.ReLU6)


def oracle_scan(
    model: nn.Module, batches: Iterable[torch.Tensor], unit_axis: int, taps: Sequence[Tap] = ()
) -> list[OracleSite]:
    """Every relu site of ``model`` over ``batches``, counted in float64, in call order of first appearance."""
    model = copy.deepcopy(model).double().eval()
    sites: dict[tuple[str, int, int], OracleSite] = {}
    order: list[tuple[str, int, int]] = []
    kinds: dict[tuple[str, int, int], tuple[str, str]] = {}
    calls_per_pass: Counter[str] = Counter()
    for batch in batches:
        state = _Pass()
        captured: list[tuple[tuple[str, int, int], torch.Tensor]] = []

        def record(
            owner: str, op: str, kind: str, pre: torch.Tensor, state: _Pass = state, captured: list[Any] = captured
        ) -> None:
            path, call = _owner_call(state, owner)
            state.ordinals[(path, call)] += 1
            key = (path, call, state.ordinals[(path, call)])
            kinds.setdefault(key, (op, kind))
            captured.append((key, pre.detach().clone()))

        with _hooks(model, state, record, taps), _patched_functional(state, record), torch.no_grad():
            model(batch.double() if batch.is_floating_point() else batch)
        for path, count in state.calls.items():
            calls_per_pass[path] = max(calls_per_pass[path], count)
        for key, pre in captured:
            if key not in sites:
                order.append(key)
                sites[key] = _new_site(pre, unit_axis, kinds[key][0])
            _count(sites[key], pre, unit_axis)
    names = _names(order, kinds, calls_per_pass)
    for key, name in zip(order, names):
        sites[key].name = name
    return [sites[key] for key in order]


def _owner_call(state: _Pass, owner: str | None) -> tuple[str, int]:
    if owner is None:
        path, call, _ = state.stack[-1] if state.stack else ("", 1, None)
        return path, call
    return owner, max(state.calls[owner], 1)


def _new_site(pre: torch.Tensor, unit_axis: int, op: str) -> OracleSite:
    view = pre.reshape(1, -1) if pre.dim() < 2 else pre
    units = view.shape[unit_axis]
    return OracleSite("", op, units, torch.zeros(units, dtype=torch.int64), torch.zeros(units, dtype=torch.int64))


def _count(site: OracleSite, pre: torch.Tensor, unit_axis: int) -> None:
    view = pre.reshape(1, -1) if pre.dim() < 2 else pre
    moved = view.movedim(unit_axis, 0).reshape(site.units, -1)
    finite = torch.isfinite(moved)
    site.positive += ((moved > 0) & finite).sum(dim=1)
    site.nonfinite += (~finite).sum(dim=1)
    site.zeros += int(((moved <= 0) & finite).sum())
    site.positions += moved.shape[1]


def _names(order: list[tuple[str, int, int]], kinds: dict[Any, tuple[str, str]], calls: Counter[str]) -> list[str]:
    functional_per_call = Counter((path, call) for (path, call, _), (_, kind) in kinds.items() if kind == "functional")
    names = []
    for key in order:
        path, call, ordinal = key
        op, kind = kinds[key]
        owner = path + (f"#{call}" if calls[path] > 1 else "")
        if kind == "module":
            names.append(owner or "<root>")
        else:
            suffix = f"#{ordinal}" if functional_per_call[(path, call)] > 1 else ""
            names.append(f"{owner}:{op}{suffix}")
    return names


class _hooks:
    """Module stack tracking, activation-module capture and taps, removed on exit."""

    def __init__(self, model: nn.Module, state: _Pass, record: Callable[..., None], taps: Sequence[Tap]) -> None:
        self.handles: list[Any] = []
        by_path = dict(model.named_modules())
        for path, module in by_path.items():
            self.handles.append(module.register_forward_pre_hook(self._enter(state, path, record)))
            self.handles.append(module.register_forward_hook(self._exit(state)))
        for tap in taps:
            self.handles.append(by_path[tap.module].register_forward_hook(self._tap(tap, record)))

    @staticmethod
    def _enter(state: _Pass, path: str, record: Callable[..., None]) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            state.calls[path] += 1
            state.stack.append((path, state.calls[path], module))
            if isinstance(module, _ACTIVATION_MODULES):
                op = "relu6" if isinstance(module, nn.ReLU6) else "relu"
                record(None, op, "module", args[0])

        return hook

    @staticmethod
    def _exit(state: _Pass) -> Any:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            state.stack.pop()

        return hook

    @staticmethod
    def _tap(tap: Tap, record: Callable[..., None]) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            for pre in tap.preactivations(module, args, output):
                record(tap.owner, "relu", "functional", pre)

        return hook

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        for handle in self.handles:
            handle.remove()


class _patched_functional:
    """F.relu, torch.relu and Tensor.relu record their input when called outside an activation module."""

    def __init__(self, state: _Pass, record: Callable[..., None]) -> None:
        self.state, self.record = state, record
        self.saved: list[tuple[Any, str, Any, bool]] = []
        self.depth = 0

    def _wrap(self, original: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        def relu(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
            inside_module = bool(self.state.stack) and isinstance(self.state.stack[-1][2], _ACTIVATION_MODULES)
            if not inside_module and not self.depth:  # F.relu calls torch.relu: one relu, recorded once
                self.record(None, "relu", "functional", x)
            self.depth += 1
            try:
                return original(x, *args, **kwargs)
            finally:
                self.depth -= 1

        return relu

    def __enter__(self) -> None:
        for owner, name in ((F, "relu"), (torch, "relu"), (torch.Tensor, "relu")):
            original = getattr(owner, name)
            # torch.Tensor inherits relu from its C base: restore that by deleting the patch, not by shadowing it
            self.saved.append((owner, name, original, name in vars(owner)))
            setattr(owner, name, self._wrap(original))

    def __exit__(self, *exc: object) -> None:
        for owner, name, original, own in reversed(self.saved):
            if own:
                setattr(owner, name, original)
            else:
                delattr(owner, name)
        self.saved.clear()


# -- taps for relus inside torch's modules --------------------------------------------------------------------
def rnn_relu_tap(path: str) -> Tap:
    """A one-layer, batch-first nn.RNN(nonlinearity='relu'): h_t = relu(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)."""

    def steps(rnn: nn.Module, args: tuple[Any, ...], output: Any) -> list[torch.Tensor]:
        x = args[0]
        h = torch.zeros(x.shape[0], rnn.hidden_size, dtype=x.dtype)
        pres = []
        for t in range(x.shape[1]):
            pre = x[:, t] @ rnn.weight_ih_l0.T + rnn.bias_ih_l0 + h @ rnn.weight_hh_l0.T + rnn.bias_hh_l0
            pres.append(pre)
            h = pre.clamp(min=0)  # not torch.relu: that one is patched to record sites
        return pres

    return Tap(path, path, steps)
