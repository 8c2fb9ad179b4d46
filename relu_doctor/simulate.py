"""What each fix would do, measured: re-run the probe through modified versions of the model.

A variant swaps chosen relu sites to LeakyReLU(0.01) and/or replaces some parameters (a bias shift, recycled
units); nothing is asserted, everything is measured against the unmodified model on the same batches:

- drift: relative L2 of the change of every floating output, ‖y' − y‖ / ‖y‖ over the whole probe;
- argmax_changed: for a classifier output (N, C ≥ 2), the share of probe samples whose argmax changes;
- units_with_gradient: units of all relu sites that fired at least once, plus every unit of a swapped site
  (a LeakyReLU passes gradient everywhere);
- revived: how many of the units a fix targets fired at least once.

Sites are swapped at the dispatch level (:class:`_SwapMode` replaces the aten relu of chosen sites by
``leaky_relu``), so functional relus can be swapped as well as modules, and each simulated forward is an exact
re-run of the modified model. Parameters are replaced in place for one forward pass and copied back bit for bit
(cheaper than a copy of the model per variant); the model is left exactly as it was.
"""

from __future__ import annotations

import contextlib
import math
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from . import ops
from .diagnose import BIAS_MARGIN, leaky_everywhere
from .observe import (
    ACTIVATION_MODULES,
    ModuleCallTracker,
    ObservedSite,
    _restored_model_state,
    _transformer_fastpath_disabled,
)
from .report import Report, Site

NEGATIVE_SLOPE = 0.01
"""Slope of the LeakyReLU a swap puts in place of a relu (PyTorch's default)."""
MAX_SIMULATED_SITES = 8
"""Sites with the most dead units that get per-site simulations; each costs a few forward passes of the probe."""
RECYCLE_SEED = 0
"""Seed of the generator drawing recycled units' new incoming weights."""
_SWAPPABLE = {"relu", "relu_", "threshold", "threshold_"}
"""relu6 (hardtanh) sites are not swapped: a LeakyReLU would also remove their upper clip."""

SiteKey = tuple[str, int, int]
"""(owner module path, call of the owner in the pass, relu op of that call): how the observer keys a site."""


@dataclass(frozen=True)
class Variant:
    """One modified model to re-run on the probe."""

    name: str
    """What the variant is, for messages."""
    leaky_sites: frozenset[SiteKey] = frozenset()
    """Sites whose relu becomes LeakyReLU(0.01)."""
    edits: tuple[tuple[str, torch.Tensor], ...] = ()
    """(state-dict name, replacement tensor) for every changed parameter or buffer."""
    watch: tuple[SiteKey, tuple[int, ...]] | None = None
    """The site and units the fix targets, counted as revived when they fire."""


@dataclass(frozen=True)
class Outcome:
    """What a variant did, measured on the probe."""

    drift: float
    """Relative L2 change of the model's output."""
    argmax_changed: float | None
    """Share of samples whose argmax changed; None when the output is not a (N, C >= 2) classifier output."""
    units_with_gradient: int
    """Units of all relu sites that fired at least once, plus every unit of a swapped site."""
    revived: int
    """Units of ``Variant.watch`` that fired at least once (0 without a watch)."""


@dataclass
class _Meter:
    """Accumulates one variant's drift, argmax changes and fired units over the batches."""

    diff_squares: float = 0.0
    reference_squares: float = 0.0
    changed: int = 0
    rows: int = 0
    classifier: bool = True
    fired: dict[SiteKey, torch.Tensor] = field(default_factory=dict)

    def add(self, before: Any, after: Any, fired: dict[SiteKey, torch.Tensor]) -> None:
        old, new = _float_leaves(before), _float_leaves(after)
        for a, b in zip(old, new):
            self.diff_squares += float((b.double() - a.double()).square().sum())
            self.reference_squares += float(a.double().square().sum())
        self.classifier = self.classifier and bool(old) and old[0].dim() == 2 and old[0].shape[1] >= 2
        if self.classifier:
            self.changed += int((old[0].argmax(dim=1) != new[0].argmax(dim=1)).sum())
            self.rows += old[0].shape[0]
        for key, units in fired.items():
            self.fired[key] = self.fired[key] | units if key in self.fired else units

    def outcome(self, variant: Variant, units: dict[SiteKey, int]) -> Outcome:
        drift = math.sqrt(self.diff_squares / self.reference_squares) if self.reference_squares else math.nan
        if self.diff_squares == 0:
            drift = 0.0
        with_gradient = sum(units[k] if k in variant.leaky_sites else int(f.sum()) for k, f in self.fired.items())
        with_gradient += sum(units[k] for k in variant.leaky_sites if k not in self.fired)
        revived = 0
        if variant.watch is not None and variant.watch[0] in self.fired:
            revived = int(self.fired[variant.watch[0]][list(variant.watch[1])].sum())
        argmax = self.changed / self.rows if self.classifier and self.rows else None
        return Outcome(drift, argmax, with_gradient, revived)


class _SwapMode(TorchDispatchMode):
    """Forwards every aten op to the re-run; holds no logic of its own."""

    def __init__(self, rerun: Rerun) -> None:
        super().__init__()
        self.rerun = rerun

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        return self.rerun._dispatch(func, args, kwargs or {})


class Rerun:
    """Context manager that runs the model with chosen relu sites swapped, and records which units fired.

    Sites are keyed exactly as the observer keys them (owner module, call, op within the call), so a site of the
    scan is the same site here.
    """

    def __init__(self, model: nn.Module, observed: Sequence[ObservedSite], site_paths: tuple[str, ...] | None = None) -> None:
        self.model = model
        self.site_paths = site_paths
        self.axes = {site_key(s): s.unit_axis for s in observed}
        self.tracker = ModuleCallTracker(model)
        self.leaky: frozenset[SiteKey] = frozenset()
        self.fired: dict[SiteKey, torch.Tensor] = {}
        self._ordinals: Counter[tuple[str, int]] = Counter()
        self._path_calls: Counter[str] = Counter()
        self._relu_calls = 0
        self._names: dict[Any, str] = {}
        self._exit_stack = contextlib.ExitStack()

    def __enter__(self) -> Rerun:
        try:
            self._exit_stack.enter_context(_restored_model_state(self.model, {}))
            self._exit_stack.enter_context(_transformer_fastpath_disabled())
            self.tracker.install()
            self._exit_stack.callback(self.tracker.remove)
        except BaseException:
            self._exit_stack.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._exit_stack.close()

    def forward(self, batch: Any, leaky: frozenset[SiteKey] = frozenset()) -> Any:
        """One forward pass with ``leaky`` sites swapped; ``fired`` then holds this pass's fired units per site."""
        args = batch if isinstance(batch, tuple) else (batch,)
        self.leaky, self.fired = leaky, {}
        self.tracker.start_pass()
        self._ordinals.clear()
        self._path_calls.clear()
        self._relu_calls = 0
        with torch.inference_mode(), _SwapMode(self):
            return self.model(*args)

    def _dispatch(self, func: Any, args: Any, kwargs: dict[str, Any]) -> Any:
        name = self._names.get(func) or self._names.setdefault(func, ops.op_name(func))
        if not ops.is_relu_site(name, args, kwargs):
            return func(*args, **kwargs)
        key, pre = self._key(), args[0]
        if key in self.leaky and name in _SWAPPABLE:
            swapped = torch.nn.functional.leaky_relu(pre, NEGATIVE_SLOPE)
            return pre.copy_(swapped) if name.endswith("_") else swapped
        self._count(key, pre)
        return func(*args, **kwargs)

    def _key(self) -> SiteKey:
        path, call, module = self.tracker.current()
        if self.site_paths is not None and module is self.model and not isinstance(module, ACTIVATION_MODULES):
            k = self._relu_calls  # an opaque model: the k-th relu op of the pass, named from its graph (as observed)
            path = self.site_paths[k] if k < len(self.site_paths) else path
            self._path_calls[path] += 1
            call = self._path_calls[path]
        self._relu_calls += 1
        self._ordinals[(path, call)] += 1
        return (path, call, self._ordinals[(path, call)])

    def _count(self, key: SiteKey, pre: torch.Tensor) -> None:
        view = pre.reshape(1, -1) if pre.dim() < 2 else pre
        axis = self.axes.get(key, 1 if view.dim() >= 4 else view.dim() - 1)
        other = [d for d in range(view.dim()) if d != axis]
        fired = (view > 0).any(dim=tuple(other)) if other else view > 0
        self.fired[key] = self.fired[key] | fired if key in self.fired else fired


def site_key(site: ObservedSite) -> SiteKey:
    """The key the observer gave ``site``."""
    return (site.module_path, site.call_index, site.ordinal)


@contextlib.contextmanager
def edited(model: nn.Module, edits: Sequence[tuple[str, torch.Tensor]]) -> Iterator[None]:
    """Replace parameters/buffers by name for the duration; restore them bit for bit afterwards."""
    tensors = model.state_dict(keep_vars=True)
    saved: list[tuple[torch.Tensor, torch.Tensor]] = []
    try:
        with torch.no_grad():
            for name, value in edits:
                target = tensors[name]
                saved.append((target, target.detach().clone()))
                target.data.copy_(value)
        yield
    finally:
        with torch.no_grad():
            for target, original in reversed(saved):
                target.data.copy_(original)


def run_variants(
    model: nn.Module, observed: Sequence[ObservedSite], batches: Iterable[Any], variants: Sequence[Variant],
    site_paths: tuple[str, ...] | None = None,
) -> tuple[Outcome, list[Outcome]]:  # fmt: skip
    """The unmodified model's outcome and each variant's, over one pass of ``batches`` (1 + V forwards a batch)."""
    baseline, meters = _Meter(), [_Meter() for _ in variants]
    with Rerun(model, observed, site_paths) as rerun:
        for batch in batches:
            reference = rerun.forward(batch)
            baseline.add(reference, reference, rerun.fired)
            for variant, meter in zip(variants, meters):
                with edited(model, variant.edits):
                    meter.add(reference, rerun.forward(batch, variant.leaky_sites), rerun.fired)
    units = {site_key(s): s.counters.units for s in observed}
    return baseline.outcome(Variant("unchanged"), units), [m.outcome(v, units) for v, m in zip(variants, meters)]


# -- planning: which variants a report calls for ---------------------------------------------------------------
def leaky_variant(keys: Iterable[SiteKey], name: str) -> Variant:
    """Swap the given sites to LeakyReLU(0.01)."""
    return Variant(name, leaky_sites=frozenset(keys))


def bias_shift_variant(model: nn.Module, site: Site, key: SiteKey, units: Sequence[int]) -> Variant | None:
    """Raise the bias (or the norm's beta) of ``units`` so their max pre-activation becomes +BIAS_MARGIN."""
    target = _bias_name(model, site)
    highest = site.counters.max_preactivation
    if target is None or not all(math.isfinite(highest[u]) for u in units):
        return None
    bias = model.state_dict(keep_vars=True)[target].detach().clone()
    for unit in units:
        bias[unit] += BIAS_MARGIN - highest[unit]
    return Variant(f"bias shift {site.name}", edits=((target, bias),), watch=(key, tuple(units)))


def recycle_variant(model: nn.Module, seen: ObservedSite, site: Site, units: Sequence[int]) -> Variant | None:
    """ReDo-style: new incoming weights (the layer's default init), bias 0, norm reset, zero outgoing weights."""
    producer = _module(model, site.producer.module_path if site.producer else None)
    if not isinstance(producer, (nn.Linear, nn.modules.conv._ConvNd)) or site.producer is None:
        return None
    edits: dict[str, torch.Tensor] = {}
    tensors = model.state_dict(keep_vars=True)
    _redraw(edits, tensors, site.producer.module_path, producer, units)
    if site.producer.norm_path:
        _reset_norm(edits, tensors, site.producer.norm_path, units)
    for path in sorted({c[0] for c in seen.consumers}):
        _zero_outgoing(edits, tensors, path, _module(model, path), units, site.units)
    return Variant(f"recycle {site.name}", edits=tuple(edits.items()), watch=(site_key(seen), tuple(units)))


def _edit(edits: dict[str, torch.Tensor], tensors: dict[str, Any], name: str) -> torch.Tensor:
    if name not in edits:
        edits[name] = tensors[name].detach().clone()
    return edits[name]


def _redraw(edits: dict[str, torch.Tensor], tensors: dict[str, Any], path: str, layer: nn.Module, units: Sequence[int]) -> None:
    weight = _edit(edits, tensors, f"{path}.weight")
    generator = torch.Generator().manual_seed(RECYCLE_SEED)
    bound = 1.0 / math.sqrt(max(weight[0].numel(), 1))  # nn.Linear / nn.ConvNd default: kaiming_uniform(a=sqrt(5))
    for unit in units:
        fresh = torch.empty(weight.shape[1:], dtype=torch.float32).uniform_(-bound, bound, generator=generator)
        weight[unit] = fresh.to(weight.dtype)
    if getattr(layer, "bias", None) is not None:
        _edit(edits, tensors, f"{path}.bias")[list(units)] = 0


def _reset_norm(edits: dict[str, torch.Tensor], tensors: dict[str, Any], path: str, units: Sequence[int]) -> None:
    for suffix, value in (("weight", 1.0), ("bias", 0.0), ("running_mean", 0.0), ("running_var", 1.0)):
        name = f"{path}.{suffix}"
        if name in tensors and tensors[name] is not None and tensors[name].dim() == 1:
            _edit(edits, tensors, name)[list(units)] = value


def _zero_outgoing(edits: dict[str, torch.Tensor], tensors: dict[str, Any], path: str, layer: nn.Module | None,
                   units: Sequence[int], site_units: int) -> None:  # fmt: skip
    """Zero the input columns of ``units`` in a Linear/Conv reader (a block of columns after a flatten)."""
    if not isinstance(layer, (nn.Linear, nn.modules.conv._ConvNd)) or getattr(layer, "groups", 1) != 1:
        return
    if isinstance(layer, nn.modules.conv._ConvTransposeNd):
        return
    inputs = layer.weight.shape[1]
    if inputs % site_units:
        return
    block = inputs // site_units
    weight = _edit(edits, tensors, f"{path}.weight")
    for unit in units:
        weight[:, unit * block : (unit + 1) * block] = 0


def _bias_name(model: nn.Module, site: Site) -> str | None:
    producer = site.producer
    if producer is None:
        return None
    tensors = model.state_dict(keep_vars=True)
    for path in (producer.norm_path, producer.module_path):
        if path is not None and isinstance(tensors.get(f"{path}.bias"), torch.Tensor):
            return f"{path}.bias" if tensors[f"{path}.bias"].numel() == site.units else None
    return None


def _module(model: nn.Module, path: str | None) -> nn.Module | None:
    if path is None:
        return None
    try:
        return model.get_submodule(path)
    except (AttributeError, RuntimeError):  # RuntimeError: a ScriptModule has no get_submodule
        return None


def _float_leaves(output: Any) -> list[torch.Tensor]:
    return [t for t in tree_flatten(output)[0] if isinstance(t, torch.Tensor) and t.is_floating_point()]


# -- from a report to predictions ---------------------------------------------------------------------------
_BIAS_FIXABLE = {"RD101", "RD102", "RD106"}
"""Causes a bias (or beta) shift addresses; a shift only makes dead-input or collapsed units constant."""
_RECYCLABLE = {"RD100", "RD101", "RD102", "RD104", "RD105", "RD106"}
"""Causes new incoming weights can address; units with dead inputs stay dead whatever their weights."""


@dataclass(frozen=True)
class _Planned:
    """A variant and the findings whose ``predicted`` it fills (-1: the model-wide RD301)."""

    variant: Variant
    prefix: str
    findings: tuple[int, ...]


def simulate_findings(
    report: Report, model: nn.Module, observed: Sequence[ObservedSite], batches: Iterable[Any],
    *, site_paths: tuple[str, ...] | None = None,
) -> Report:  # fmt: skip
    """``report`` with measured predictions on its cause findings, plus RD301 (LeakyReLU everywhere).

    ``batches`` must be iterable again (the probe is replayed). A simulation that cannot run leaves the report
    as it was, with a warning saying why: predictions are advice, never a reason to fail a scan.
    """
    planned, skipped = plan(report, model, observed)
    if not planned:
        return report
    try:
        baseline, outcomes = run_variants(model, observed, batches, [p.variant for p in planned], site_paths)
    except Exception as exc:  # advisory: a model that cannot be re-run still gets its scan
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        return replace(report, warnings=(*report.warnings, f"simulation skipped: {type(exc).__name__}: {first}"))
    findings = list(report.findings)
    if any(-1 in p.findings for p in planned):
        findings.append(leaky_everywhere(report.sites, report.summary.dead, report.summary.units))
    predicted: dict[int, dict[str, float]] = {}
    for item, outcome in zip(planned, outcomes):
        for index in item.findings:
            predicted.setdefault(index % len(findings), {}).update(_numbers(item.prefix, outcome, baseline))
    findings = [replace(f, predicted=tuple(predicted.get(i, {}).items())) if i in predicted else f
                for i, f in enumerate(findings)]  # fmt: skip
    warnings = report.warnings + ((skipped,) if skipped else ())
    return replace(report, findings=tuple(findings), warnings=warnings)


def plan(report: Report, model: nn.Module, observed: Sequence[ObservedSite]) -> tuple[list[_Planned], str]:
    """The variants a report calls for, and a caveat naming sites left out (MAX_SIMULATED_SITES)."""
    dead_sites = sorted((s for s in report.sites if s.dead), key=lambda s: -s.dead)
    chosen, left_out = dead_sites[:MAX_SIMULATED_SITES], dead_sites[MAX_SIMULATED_SITES:]
    by_index = {s.index: s for s in observed}
    planned: list[_Planned] = []
    for site in sorted(chosen, key=lambda s: s.index):
        planned.extend(_site_plan(report, model, by_index[site.index], site))
    swappable = [site_key(s) for s in observed if s.op in _SWAPPABLE]
    if dead_sites and swappable:
        planned.append(_Planned(leaky_variant(swappable, "LeakyReLU everywhere"), "leaky", (-1,)))
    caveat = ""
    if left_out:
        caveat = (f"simulated the {len(chosen)} sites with the most dead units; not simulated: "
                  + ", ".join(s.name for s in left_out[:8]) + (" …" if len(left_out) > 8 else ""))  # fmt: skip
    return planned, caveat


def _site_plan(report: Report, model: nn.Module, seen: ObservedSite, site: Site) -> list[_Planned]:
    causes = [i for i, f in enumerate(report.findings) if f.site == site.name and f.code.startswith("RD1")]
    if not causes:
        return []
    key = site_key(seen)
    planned = []
    if seen.op in _SWAPPABLE:
        planned.append(_Planned(leaky_variant([key], f"LeakyReLU at {site.name}"), "leaky", tuple(causes)))
    for index in causes:
        finding = report.findings[index]
        shift = bias_shift_variant(model, site, key, finding.units) if finding.code in _BIAS_FIXABLE else None
        recycle = recycle_variant(model, seen, site, finding.units) if finding.code in _RECYCLABLE else None
        planned += [_Planned(v, p, (index,)) for v, p in ((shift, "bias_shift"), (recycle, "recycle")) if v is not None]
    return planned


def _numbers(prefix: str, outcome: Outcome, baseline: Outcome) -> dict[str, float]:
    numbers = {f"{prefix}_drift": outcome.drift}
    if outcome.argmax_changed is not None:
        numbers[f"{prefix}_argmax_changed"] = outcome.argmax_changed
    if prefix == "leaky":
        numbers["units_with_gradient_before"] = float(baseline.units_with_gradient)
        numbers["leaky_units_with_gradient"] = float(outcome.units_with_gradient)
    else:
        numbers[f"{prefix}_revived"] = float(outcome.revived)
    return numbers
