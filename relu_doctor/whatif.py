"""What each fix would do, measured: re-run the probe through modified versions of the model.

A variant swaps chosen relu sites to LeakyReLU(0.01) and/or edits some parameters (a bias shift, recycled
units); nothing is asserted, everything is measured against the unmodified model on the same batches:

- drift: relative L2 of the change of every floating output, ‖y' − y‖ / ‖y‖ over the whole probe (the
  :class:`~relu_doctor.repair.drift.DriftMeter` that ``fix`` reports with);
- argmax_changed: for a classifier output (N, C ≥ 2), the share of probe samples whose argmax changes;
- units_with_gradient: units of all relu sites that fired at least once, plus every unit of a swapped site
  (a LeakyReLU passes gradient everywhere);
- revived: how many of the units a fix targets fired at least once.

Bias shifts and recycles are built by the repair package (its plans and edits), so a site ``fix`` would refuse
gets no prediction; the recycle is ``fix --strategy recycle`` itself (every site, same seed, same re-draws).
Sites are swapped at the dispatch level (:class:`_SwapMode` replaces the aten relu of chosen sites by
``leaky_relu``), so functional relus can be swapped as well as modules, and each simulated forward is an exact
re-run of the modified model. Edits are applied in place for one pass of the probe and put back bit for bit
(cheaper than a copy of the model per variant); the model is left exactly as it was.
"""

from __future__ import annotations

import contextlib
import math
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence, Sized
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from . import activations
from .activations import ACTIVATION_MODULES, LEAKY_SLOPE, SWAPPABLE_OPS
from .analysis.diagnose import leaky_everywhere
from .api import ScanOptions, scan_observed
from .codes import BIAS_SHIFT, LEAKY, RECYCLE, fixable_by
from .engine import ops
from .engine.batches import MaskedBatch, batch_samples, call_arguments
from .engine.masking import batch_mask, token_view
from .engine.model_state import instrumented
from .engine.observe import ObservedSite
from .engine.passes import ForwardingMode
from .engine.site_keys import SiteKey, SiteKeys
from .engine.tracking import ModuleCallTracker
from .errors import first_line
from .repair.bias_shift import bias_shift_edits
from .repair.drift import DriftMeter, flat_floats
from .repair.edits import Edits, state_tensors
from .repair.plan import SitePlan, plan_bias_shift, plan_recycle
from .repair.recycle import DEFAULT_SEED, recycle_until_alive
from .report import Finding, Prediction, Report, Site
from .settings import (
    DEFAULT_SIMULATE_BUDGET,
    DEFAULT_SIMULATE_SAMPLES,
    MIN_SIMULATED_PASSES,
    MIN_SIMULATED_SAMPLES,
    check_simulate_budget,
)

if TYPE_CHECKING:
    from typing_extensions import Unpack

MAX_SIMULATED_SITES = 8
"""Sites with the most dead units that get per-site simulations; each costs a few forward passes of the probe."""


@dataclass(frozen=True)
class Variant:
    """One modified model to re-run on the probe."""

    name: str
    """What the variant is, for messages."""
    leaky_sites: frozenset[SiteKey] = frozenset()
    """Sites whose relu becomes LeakyReLU(0.01)."""
    edits: tuple[tuple[str, torch.Tensor], ...] = ()
    """(state-dict name, replacement tensor) for every changed parameter or buffer."""
    watch: tuple[tuple[SiteKey, tuple[int, ...]], ...] = ()
    """Sites and the units a fix targets there, counted as revived when they fire."""


@dataclass(frozen=True)
class Outcome:
    """What a variant did, measured on the probe."""

    drift: float
    """Relative L2 change of the model's output."""
    argmax_changed: float | None
    """Share of samples whose argmax changed; None when the output is not a (N, C >= 2) classifier output."""
    units_with_gradient: int
    """Units of all relu sites that fired at least once, plus every unit of a swapped site."""
    revived_units: Mapping[SiteKey, frozenset[int]] = field(default_factory=dict)
    """Per site of ``Variant.watch``: its watched units that fired at least once."""
    newly_dead: int = 0
    """Units of unswapped relu sites that fired on the unmodified model and never fire with the variant."""
    passes: int = 1
    """Passes over the sub-probe it took (a recycle: one per round of re-drawn weights)."""

    def revived(self, key: SiteKey, units: Iterable[int]) -> int:
        """How many of ``units`` of site ``key`` fired (0 for a site the variant did not watch)."""
        return len(self.revived_units.get(key, frozenset()) & set(units))


@dataclass
class _Meter:
    """Accumulates one variant's drift, argmax changes and fired units over the batches."""

    drift: DriftMeter = field(default_factory=DriftMeter)
    changed: int = 0
    rows: int = 0
    classifier: bool = True
    fired: dict[SiteKey, torch.Tensor] = field(default_factory=dict)

    def add(self, before: Any, after: Any, fired: dict[SiteKey, torch.Tensor], mask: torch.Tensor | None) -> None:
        """Count one batch; ``mask`` (a token batch's attention mask) leaves padded positions out of the drift."""
        self.drift.add(flat_floats(before, mask), flat_floats(after, mask))
        old, new = _float_leaves(before), _float_leaves(after)
        self.classifier = self.classifier and bool(old) and old[0].dim() == 2 and old[0].shape[1] >= 2
        if self.classifier:
            self.changed += int((old[0].argmax(dim=1) != new[0].argmax(dim=1)).sum())
            self.rows += old[0].shape[0]
        for key, units in fired.items():
            self.fired[key] = self.fired[key] | units if key in self.fired else units

    def outcome(self, variant: Variant, units: dict[SiteKey, int]) -> Outcome:
        with_gradient = sum(units[k] if k in variant.leaky_sites else int(f.sum()) for k, f in self.fired.items())
        with_gradient += sum(units[k] for k in variant.leaky_sites if k not in self.fired)
        revived = {key: self._fired_among(key, watched) for key, watched in variant.watch}
        argmax = self.changed / self.rows if self.classifier and self.rows else None
        return Outcome(self.drift.result().relative_l2, argmax, with_gradient, revived)

    def _fired_among(self, key: SiteKey, units: tuple[int, ...]) -> frozenset[int]:
        """Which of ``units`` fired at site ``key`` (one indexing op: a recycle watches thousands of units)."""
        if key not in self.fired or not units:
            return frozenset()
        watched = torch.tensor(units, dtype=torch.long)
        return frozenset(watched[self.fired[key][watched]].tolist())


class Rerun:
    """Context manager that runs the model with chosen relu sites swapped, and records which units fired.

    Sites are keyed by the observer's own :class:`~relu_doctor.engine.site_keys.SiteKeys`, so a site of the scan
    is the same site here. When every site the scan found is a plain activation-module call (``nn.ReLU``, ...),
    passes run on those modules' hooks only, with no Python on any other op (the observer's own rule for its later
    passes); a relu-family function running outside them (data-dependent control flow) stops such a pass, which
    then runs again under the dispatch mode, as do all later passes, so no count depends on which path ran.
    """

    def __init__(
        self, model: nn.Module, observed: Sequence[ObservedSite], site_paths: tuple[str, ...] | None = None
    ) -> None:
        self.model = model
        self.axes = {s.key: s.unit_axis for s in observed}
        self.units = {s.key: s.counters.units for s in observed}
        self.tracker = ModuleCallTracker(model)
        self.keys = SiteKeys(model, self.tracker, site_paths)
        self.leaky: frozenset[SiteKey] = frozenset()
        self.fired: dict[SiteKey, torch.Tensor] = {}
        self._mask: torch.Tensor | None = None
        """The current token batch's attention mask: a unit firing only at padded positions did not fire."""
        self.hooked_modules = _hookable_sites(model, observed, site_paths)
        """Activation modules whose hooks see every site (None: passes run under the dispatch mode)."""
        self._names: dict[Any, str] = {}
        self._calls: Counter[str] = Counter()
        self._inside = 0
        self._swapped: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._exit_stack = contextlib.ExitStack()

    def __enter__(self) -> Rerun:
        self._exit_stack.enter_context(instrumented(self.model, self.tracker, {}))
        self.tracker.remove()  # installed only for dispatched passes: hooked passes need no module tracking
        return self

    def __exit__(self, *exc: object) -> None:
        self._exit_stack.close()

    def forward(self, batch: Any, leaky: frozenset[SiteKey] = frozenset()) -> Any:
        """One forward pass with ``leaky`` sites swapped; ``fired`` then holds this pass's fired units per site."""
        args, kwargs = call_arguments(batch)
        self.leaky, self._mask = leaky, batch_mask(batch)
        if self.hooked_modules is not None:
            try:
                return self._hooked(args, kwargs)
            except _UnhookedRelu:
                self.hooked_modules = None
        return self._dispatched(args, kwargs)

    def _dispatched(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        self.fired = {}
        self.tracker.start_pass()
        self.keys.start_pass()
        self.tracker.install()
        try:
            with torch.inference_mode(), ForwardingMode(self):
                return self.model(*args, **kwargs)
        finally:
            self.tracker.remove()

    def _hooked(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        self.fired, self._inside = {}, 0
        self._calls.clear()
        self._swapped.clear()
        handles = []
        try:
            for path, module in (self.hooked_modules or {}).items():
                # last among pre-hooks and first among hooks: the input and output the op itself sees
                handles.append(module.register_forward_pre_hook(self._before(path), with_kwargs=True))
                handles.append(module.register_forward_hook(self._after, prepend=True))
            with torch.inference_mode(), _UnhookedReluWatch(self):
                return self.model(*args, **kwargs)
        finally:
            for handle in handles:
                handle.remove()

    def _before(self, path: str) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            pre = args[0] if args else kwargs["input"]
            self._calls[path] += 1
            key = (path, self._calls[path], 1)
            self._inside += 1
            if key in self.leaky:  # computed now: an in-place relu overwrites its input
                self._swapped[id(module)] = (pre, torch.nn.functional.leaky_relu(pre, LEAKY_SLOPE))
            else:
                self._count(key, pre)

        return hook

    def _after(self, module: nn.Module, args: Any, output: Any) -> Any:
        self._inside -= 1
        swapped = self._swapped.pop(id(module), None)
        if swapped is None:
            return None
        pre, leaky = swapped
        return pre.copy_(leaky) if output is pre else leaky

    def _dispatch(self, func: Any, args: Any, kwargs: dict[str, Any]) -> Any:
        name = self._names.get(func) or self._names.setdefault(func, ops.op_name(func))
        if not activations.is_relu_site(name, args, kwargs):
            return func(*args, **kwargs)
        (key, _), pre = self.keys.next_key(), args[0]
        if key in self.leaky and name in SWAPPABLE_OPS:
            swapped = torch.nn.functional.leaky_relu(pre, LEAKY_SLOPE)
            return pre.copy_(swapped) if name.endswith("_") else swapped
        self._count(key, pre)
        return func(*args, **kwargs)

    def _count(self, key: SiteKey, pre: torch.Tensor) -> None:
        view = pre.reshape(1, -1) if pre.dim() < 2 else pre
        axis = self.axes.get(key, 1 if view.dim() >= 4 else view.dim() - 1)
        tokens = token_view(view, axis, self._mask) if self._mask is not None else None
        if tokens is not None:  # padded positions read as 0: they never make a unit fire
            assert self._mask is not None
            real = torch.where(self._mask.to(tokens.device).unsqueeze(-1), tokens, 0)
            fired = _fired_units(real, 2)
        else:
            fired = _fired_units(view, axis)
        self.fired[key] = self.fired[key] | fired if key in self.fired else fired


def _fired_units(view: torch.Tensor, axis: int) -> torch.Tensor:
    """Per unit (index along ``axis``), whether any position is positive: ``(view > 0).any(every other axis)``.

    Read from the maximum: one reduction, where a boolean ``any`` over several axes is ten times slower; on a
    contiguous tensor the positions after the unit axis are reduced first, along memory. A unit whose maximum is
    NaN is decided again with its NaNs read as 0, since ``NaN > 0`` is false and must not hide a positive value.
    """
    highest = _unit_max(view, axis)
    if bool(highest.isnan().any()):
        highest = _unit_max(torch.nan_to_num(view, nan=0.0), axis)
    return highest > 0


def _unit_max(view: torch.Tensor, axis: int) -> torch.Tensor:
    if not view.is_contiguous():
        return view.amax(dim=tuple(d for d in range(view.dim()) if d != axis))
    grid = view.reshape(math.prod(view.shape[:axis]), view.shape[axis], -1)
    return grid.amax(dim=2).amax(dim=0) if grid.shape[2] > 1 else grid.amax(dim=(0, 2))


class _UnhookedRelu(Exception):
    """A relu-family function ran outside the hooked activation modules: the pass must be dispatched."""


_RELU_FUNCTIONS = frozenset(
    {"relu", "relu_", "relu6", "hardtanh", "hardtanh_", "threshold", "threshold_", "_threshold"}
)
"""Names of the torch functions that can run a relu-family op (what a hooked pass must not miss)."""


class _UnhookedReluWatch(TorchFunctionMode):
    """Sees every torch function call of a hooked pass by name only, and stops the pass at a relu-family call that
    no hooked module is running (far cheaper than the dispatch mode, which keys every aten op)."""

    def __init__(self, rerun: Rerun) -> None:
        super().__init__()
        self.rerun = rerun

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if not self.rerun._inside and getattr(func, "__name__", "") in _RELU_FUNCTIONS:
            raise _UnhookedRelu(func)
        return func(*args, **(kwargs or {}))


def _hookable_sites(
    model: nn.Module, observed: Sequence[ObservedSite], site_paths: tuple[str, ...] | None
) -> dict[str, nn.Module] | None:
    """The activation modules of every site, when each site is one such module's own call; else None."""
    if site_paths is not None or not observed:
        return None
    modules = dict(model.named_modules())
    if any(isinstance(m, torch.jit.ScriptModule) for m in modules.values()):
        return None
    hooked: dict[str, nn.Module] = {}
    for site in observed:
        module = modules.get(site.module_path)
        if site.kind != "module" or site.ordinal != 1 or type(module) not in ACTIVATION_MODULES:
            return None
        hooked[site.module_path] = module  # type: ignore[assignment]
    return hooked


SimulationProgress = Callable[[int, int], None]
"""Called after each simulated forward pass with (passes done, passes planned so far)."""


class Replay:
    """The sub-probe run once through the unmodified model; each variant is then measured against those outputs.

    The unmodified outputs are kept (the sub-probe is bounded), so the baseline costs one pass in all, and a
    variant's parameter edits are applied once for all its batches rather than once a batch.
    """

    def __init__(
        self, rerun: Rerun, batches: Sequence[Any], planned: int = 0, progress: SimulationProgress | None = None
    ) -> None:
        self.rerun, self.batches, self.progress = rerun, batches, progress
        self.passes = 0
        """Forward passes of one batch run so far (the baseline's included)."""
        self.planned = max(planned, len(batches))
        self.units = {key: int(units) for key, units in rerun.units.items()}
        meter = _Meter()
        self.references = []
        for batch in batches:
            reference = self._forward(batch)
            meter.add(reference, reference, rerun.fired, batch_mask(batch))
            self.references.append(reference)
        self.baseline = meter.outcome(Variant("unchanged"), self.units)
        self._fired = meter.fired

    @property
    def rounds(self) -> int:
        """Whole passes over the sub-probe so far (the baseline's included)."""
        return self.passes // max(len(self.batches), 1)

    def measure(self, variant: Variant) -> Outcome:
        """``variant``'s outcome over the sub-probe, against the unmodified outputs."""
        meter = _Meter()
        self.planned = max(self.planned, self.passes + len(self.batches))
        edits = _swapped_in(self.rerun.model, dict(variant.edits)) if variant.edits else contextlib.nullcontext()
        with edits:
            for batch, reference in zip(self.batches, self.references):
                meter.add(reference, self._forward(batch, variant.leaky_sites), self.rerun.fired, batch_mask(batch))
        newly_dead = _newly_dead(self._fired, meter.fired, variant.leaky_sites)
        return replace(meter.outcome(variant, self.units), newly_dead=newly_dead)

    def _forward(self, batch: Any, leaky: frozenset[SiteKey] = frozenset()) -> Any:
        output = self.rerun.forward(batch, leaky)
        self.passes += 1
        if self.progress is not None:
            self.progress(self.passes, self.planned)
        return output


@contextlib.contextmanager
def _swapped_in(model: nn.Module, edits: Mapping[str, torch.Tensor]) -> Iterator[None]:
    """``edits`` in place of the model's tensors for the duration, each as that tensor's data, then the model's
    own data swapped back untouched: no copy of the edited tensors is kept (``repair.edits.edited`` keeps one to
    copy back, which doubles the memory of a wide model's recycled layers)."""
    tensors = state_tensors(model)
    originals = {name: tensors[name].data for name in edits}
    try:
        for name, value in edits.items():
            tensors[name].data = value
        yield
    finally:
        for name, data in originals.items():
            tensors[name].data = data


def _newly_dead(
    before: Mapping[SiteKey, torch.Tensor], after: Mapping[SiteKey, torch.Tensor], swapped: frozenset[SiteKey]
) -> int:
    """Units that fired before and never after, over the sites that are still relu sites."""
    return sum(
        int((fired & ~after[key]).sum()) if key in after else int(fired.sum())
        for key, fired in before.items()
        if key not in swapped
    )


def _recycle(
    model: nn.Module, observed: Sequence[ObservedSite], sites: Sequence[Site], replay: Replay, rounds: int
) -> Outcome | None:
    """``fix --strategy recycle`` measured: the first draw and up to ``rounds - 1`` re-draws of units still dead."""
    plans, _ = plan_recycle(model, observed, sites, include_dying=False)
    if not plans:
        return None
    keys = [plan.site.key for plan in plans]
    watch = tuple(zip(keys, (plan.units for plan in plans)))
    measured: list[Outcome] = []

    def silent(edits: Edits) -> list[tuple[SitePlan, list[int]]]:
        measured.append(replay.measure(Variant("recycle", edits=tuple(edits.items()), watch=watch)))
        if len(measured) >= rounds:
            return []  # the budget is spent: the prediction is the fix after these draws (fix re-draws further)
        fired = measured[-1].revived_units
        unfired = [(plan, [u for u in plan.units if u not in fired[key]]) for plan, key in zip(plans, keys)]
        return [(plan, units) for plan, units in unfired if units]

    recycle_until_alive(model, plans, torch.Generator().manual_seed(DEFAULT_SEED), silent)
    return replace(measured[-1], passes=len(measured))  # silent() last ran on the final edits


class SubProbe:
    """The first ``limit`` samples of the batches that pass through :meth:`tap`: what the simulations replay.

    Only these samples are kept, so an iterator probe of any size costs the simulations ``limit`` samples of
    memory, and their cost does not grow with the probe.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.batches: list[Any] = []
        self.samples = 0

    def keep(self, batch: Any) -> None:
        """Keep ``batch`` (its head, when the limit falls inside it) until ``limit`` samples are kept."""
        if self.samples >= self.limit:
            return
        size = batch_samples(batch)
        take = min(size, self.limit - self.samples)
        self.batches.append(batch if take == size else _head(batch, take))
        self.samples += take

    @property
    def full(self) -> bool:
        """``limit`` samples are kept."""
        return self.samples >= self.limit

    def tap(self, batches: Iterable[Any]) -> Iterable[Any]:
        """``batches`` unchanged (with its ``len`` when it has one), keeping the head as they are iterated."""
        return _SizedTap(batches, self) if isinstance(batches, Sized) else _Tap(batches, self)

    @classmethod
    def of(cls, batches: Iterable[Any], limit: int) -> SubProbe:
        """The first ``limit`` samples of ``batches``, reading no further."""
        head = cls(limit)
        for batch in batches:
            head.keep(batch)
            if head.full:
                break
        return head


class _Tap:
    def __init__(self, batches: Iterable[Any], head: SubProbe) -> None:
        self.batches, self.head = batches, head

    def __iter__(self) -> Iterator[Any]:
        for batch in self.batches:
            self.head.keep(batch)
            yield batch


class _SizedTap(_Tap):
    def __len__(self) -> int:
        return len(self.batches)  # type: ignore[arg-type]


def _head(batch: Any, samples: int) -> Any:
    """The first ``samples`` samples of a batch (a tensor or a tuple of inputs), copied so the batch can go."""
    if isinstance(batch, torch.Tensor):
        return batch[:samples].clone()
    if isinstance(batch, MaskedBatch):  # samples are rows with a real token: rows up to the samples-th of them
        real = batch.attention_mask.bool().any(dim=1).cumsum(dim=0)
        rows = int((real < samples).sum()) + 1 if samples > 0 else 0
        return MaskedBatch(batch.input_ids[:rows].clone(), batch.attention_mask[:rows].clone())
    if isinstance(batch, (tuple, list)):
        return type(batch)(t[:samples].clone() if isinstance(t, torch.Tensor) and t.dim() > 0 else t for t in batch)
    return batch


def _float_leaves(output: Any) -> list[torch.Tensor]:
    return [t for t in tree_flatten(output)[0] if isinstance(t, torch.Tensor) and t.is_floating_point()]


# -- from a report to predictions ---------------------------------------------------------------------------
_RECYCLABLE = fixable_by(RECYCLE)
"""Causes new incoming weights can address (:mod:`relu_doctor.codes`)."""
_LEAKY_FIXABLE = fixable_by(LEAKY) - {"RD301"}
"""Causes a LeakyReLU swap of their site addresses (RD301 is the model-wide swap itself)."""
SIMULATED_FIXES = frozenset({LEAKY, BIAS_SHIFT, RECYCLE})
"""The fixes this module simulates; every fix a registered code names must be one (tests/test_codes.py)."""


@dataclass(frozen=True)
class _Planned:
    """A variant and the findings whose ``predicted`` it fills (-1: the model-wide RD301)."""

    variant: Variant
    fix: str
    findings: tuple[int, ...]


@dataclass(frozen=True)
class SimulationPlan:
    """What a report calls for: variants to re-run, and the findings a recycle could revive."""

    variants: tuple[_Planned, ...]
    """LeakyReLU swaps and bias shifts, each with the findings it answers."""
    recycle: tuple[int, ...]
    """Indices of the findings (on simulated sites, with a cause new weights can address) given recycle numbers."""
    caveat: str
    """Names the sites left out (MAX_SIMULATED_SITES); empty when none was."""


def simulate_findings(
    report: Report,
    model: nn.Module,
    observed: Sequence[ObservedSite],
    batches: Iterable[Any],
    *,
    site_paths: tuple[str, ...] | None = None,
    samples: int | None = None,
    budget: int | None = None,
    progress: SimulationProgress | None = None,
) -> Report:
    """``report`` with measured predictions on its cause findings, plus RD301 (LeakyReLU everywhere).

    The simulations re-run the first ``samples`` samples of ``batches`` (all of them when None). ``budget`` bounds
    their cost in sample-forwards (samples re-run, the unmodified model's pass and every fix's counted, a re-run
    under the dispatch mode DISPATCHED_PASS_COST times; None: no bound): the sub-probe shrinks towards
    MIN_SIMULATED_SAMPLES and fixes are measured in order of value (:func:`by_value`) while it lasts, never fewer
    than MIN_SIMULATED_PASSES - 1. Each prediction carries ``simulated_samples``; ``report.extra["simulation"]``
    says how many forward passes they took and which fixes the budget left out.
    A simulation that cannot run leaves the report as it was, with a warning saying why: predictions are advice,
    never a reason to fail a scan.
    """
    chosen = plan(report, model, observed)
    if not chosen.variants and not chosen.recycle:
        return report
    ordered = by_value(report, chosen.variants)
    head = batches if samples is None else SubProbe.of(batches, samples).batches
    left_out: list[str] = []
    try:
        with Rerun(model, observed, site_paths) as rerun:
            wanted = 1 + len(ordered) + (PLANNED_RECYCLE_ROUNDS if chosen.recycle else 0)
            pass_cost = 1 if rerun.hooked_modules is not None else DISPATCHED_PASS_COST
            sub_probe, allowed = _within_budget(list(head), None if budget is None else budget // pass_cost, wanted)
            planned = len(sub_probe) * min(allowed, 1 + len(ordered) + bool(chosen.recycle))
            replay = Replay(rerun, sub_probe, planned, progress)
            run: list[tuple[_Planned, Outcome]] = []
            for item in ordered:
                if replay.rounds < allowed:
                    run.append((item, replay.measure(item.variant)))
                else:
                    left_out.append(item.variant.name)
            recycled = None
            if chosen.recycle and replay.rounds < allowed:
                recycled = _recycle(model, observed, report.sites, replay, allowed - replay.rounds)
            elif chosen.recycle:
                left_out.append("recycle")
    except Exception as exc:  # advisory: a model that cannot be re-run still gets its scan
        first = first_line(exc)
        return replace(report, warnings=(*report.warnings, f"simulation skipped: {type(exc).__name__}: {first}"))
    measured_on = sum(batch_samples(b) for b in sub_probe)
    done = replace(chosen, variants=tuple(item for item, _ in run), recycle=chosen.recycle if recycled else ())
    everywhere = any(-1 in item.findings for item in chosen.variants)
    outcomes = [outcome for _, outcome in run]
    findings = _with_predictions(report, observed, done, replay.baseline, outcomes, recycled, measured_on, everywhere)
    warnings = report.warnings + ((chosen.caveat,) if chosen.caveat else ())
    cost = {
        "samples": measured_on,
        "forward_passes": replay.passes,
        "batches": len(sub_probe),
        "budget": budget,
        "not_simulated": left_out,
    }
    return replace(report, findings=findings, warnings=warnings, extra={**report.extra, "simulation": cost})


PLANNED_RECYCLE_ROUNDS = 2
"""Recycle rounds counted when a budget is shared out (the first draw and one re-draw; more run while it lasts)."""
DISPATCHED_PASS_COST = 3
"""What a sample re-run under the dispatch mode counts against the budget, in plain sample-forwards: when the sites
are not all activation-module calls (functional relus such as ``F.relu``, a scripted model), a re-run keys every
aten op in Python, which costs about three plain forwards (the benchmark CNN's first, dispatched, observation pass:
0.18 s against 0.06 s for a plain forward of the batch)."""


def by_value(report: Report, variants: Sequence[_Planned]) -> list[_Planned]:
    """The order a budget measures fixes in: the bias shift (every bias-caused finding at once, with revived
    counts), the LeakyReLU swap of the site with the most dead units, LeakyReLU everywhere (the model-wide swap),
    then the other sites' own swaps, most dead units first. (A recycle, whose rounds vary, comes after them.)"""
    dead = {site.key: site.dead for site in report.sites}
    shifts = [item for item in variants if item.fix == BIAS_SHIFT]
    everywhere = [item for item in variants if -1 in item.findings]
    sites = [item for item in variants if item.fix != BIAS_SHIFT and -1 not in item.findings]
    sites.sort(key=lambda item: -sum(dead.get(key, 0) for key in item.variant.leaky_sites))
    return shifts + sites[:1] + everywhere + sites[1:]


def _within_budget(sub_probe: list[Any], budget: int | None, wanted: int) -> tuple[list[Any], int]:
    """The sub-probe cut to the budget's sample count, and how many passes over it the budget allows.

    ``wanted`` passes (the unmodified model's included) share the budget; each re-runs at least
    MIN_SIMULATED_SAMPLES samples (all of the sub-probe when it is smaller), and at least MIN_SIMULATED_PASSES
    run (the unmodified model and the two fixes of most value).
    """
    if budget is None:
        return sub_probe, sys.maxsize
    kept = sum(batch_samples(b) for b in sub_probe)
    samples = min(kept, max(MIN_SIMULATED_SAMPLES, budget // max(wanted, 1)))
    head = sub_probe if samples >= kept else SubProbe.of(sub_probe, samples).batches
    return head, max(MIN_SIMULATED_PASSES, budget // max(samples, 1))


def _with_predictions(
    report: Report,
    observed: Sequence[ObservedSite],
    chosen: SimulationPlan,
    baseline: Outcome,
    outcomes: Sequence[Outcome],
    recycled: Outcome | None,
    measured_on: int,
    everywhere: bool,
) -> tuple[Finding, ...]:
    """The findings with their predictions; ``everywhere``: RD301 was planned (added, measured or not)."""
    findings = list(report.findings)
    if everywhere:
        findings.append(leaky_everywhere(report.sites, report.summary.dead, report.summary.units))
    keys = _keys_by_name(report)
    predicted: dict[int, list[Prediction]] = {}
    answers = [(item.fix, outcome, i) for item, outcome in zip(chosen.variants, outcomes) for i in item.findings]
    answers += [
        (RECYCLE, recycled, i) for i in chosen.recycle if recycled and keys[findings[i].site] in recycled.revived_units
    ]
    for fix, outcome, index in answers:
        finding = findings[index]
        revived = None if fix == LEAKY else outcome.revived(keys.get(finding.site, ("", 0, 0)), finding.units)
        scope = "site" if fix == LEAKY and finding.site else "model"
        predicted.setdefault(index % len(findings), []).append(
            Prediction(
                fix=fix,
                scope=scope,
                output_drift=outcome.drift,
                argmax_changed=outcome.argmax_changed,
                newly_dead=outcome.newly_dead,
                revived=revived,
                targeted=len(finding.units),
                units_with_gradient_before=baseline.units_with_gradient,
                units_with_gradient=outcome.units_with_gradient,
                simulated_samples=measured_on,
                forward_passes=outcome.passes,
            )
        )
    return tuple(replace(f, predicted=tuple(predicted[i])) if i in predicted else f for i, f in enumerate(findings))


def plan(report: Report, model: nn.Module, observed: Sequence[ObservedSite]) -> SimulationPlan:
    """The variants a report calls for on its MAX_SIMULATED_SITES sites with the most dead units."""
    dead_sites = sorted((s for s in report.sites if s.dead), key=lambda s: -s.dead)
    chosen, left_out = dead_sites[:MAX_SIMULATED_SITES], dead_sites[MAX_SIMULATED_SITES:]
    by_index = {s.index: s for s in observed}
    shifts = plan_bias_shift(model, observed, report.sites)[0]  # fix's own plans and refusals
    shifted = {p.site.name for p in shifts}
    planned: list[_Planned] = []
    recycle: list[int] = []
    shift_answers: list[int] = []
    for site in sorted(chosen, key=lambda s: s.index):
        causes = [i for i, f in enumerate(report.findings) if f.site == site.name and f.code in _LEAKY_FIXABLE]
        planned += _site_variants(report, by_index[site.index], site.name, causes)
        recycle += [i for i in causes if report.findings[i].code in _RECYCLABLE]
        if site.name in shifted:  # fix shifts every dead unit of the site, whatever its cause
            shift_answers += causes
    if shift_answers:
        planned.append(_Planned(bias_shift_variant(model, shifts), BIAS_SHIFT, tuple(shift_answers)))
    swappable = [s.key for s in observed if s.op in SWAPPABLE_OPS]
    if dead_sites and swappable:
        planned.append(_Planned(Variant("LeakyReLU everywhere", frozenset(swappable)), LEAKY, (-1,)))
    caveat = ""
    if left_out:
        caveat = (
            f"simulated the {len(chosen)} sites with the most dead units; not simulated: "
            + ", ".join(s.name for s in left_out[:8])
            + (" …" if len(left_out) > 8 else "")
        )
    return SimulationPlan(tuple(planned), tuple(recycle), caveat)


def bias_shift_variant(model: nn.Module, plans: Sequence[SitePlan]) -> Variant:
    """``fix --strategy bias-shift`` as one variant: every site's shift at once, as fix applies them.

    Shifts interact across layers (a shifted unit feeds the next site, whose shift was sized without it), so the
    prediction is the whole fix measured on the probe, never one site's shift on its own.
    """
    watch = tuple((p.site.key, tuple(p.units)) for p in plans)
    return Variant("bias shift", edits=tuple(bias_shift_edits(model, plans).items()), watch=watch)


def _site_variants(report: Report, seen: ObservedSite, name: str, causes: Sequence[int]) -> list[_Planned]:
    """A LeakyReLU swap of the site for all its causes."""
    if not causes or seen.op not in SWAPPABLE_OPS:
        return []
    return [_Planned(Variant(f"LeakyReLU at {name}", frozenset([seen.key])), LEAKY, tuple(causes))]


def _keys_by_name(report: Report) -> dict[str, SiteKey]:
    return {site.name: site.key for site in report.sites}


# -- the public scan: the scan stage, then (asked for) this one ----------------------------------------------
def scan(
    model: nn.Module,
    batches: Iterable[Any],
    *,
    simulate: bool = False,
    simulate_samples: int = DEFAULT_SIMULATE_SAMPLES,
    simulate_budget: float | None = DEFAULT_SIMULATE_BUDGET,
    simulate_progress: SimulationProgress | None = None,
    **options: Unpack[ScanOptions],
) -> Report:
    """:func:`relu_doctor.api.scan`, then with ``simulate=True`` the fix simulations (:func:`simulate_findings`).

    ``simulate=True`` re-runs at most the first ``simulate_samples`` samples of the probe (kept as the scan reads
    them; nothing else is kept, and under torchrun every rank keeps the same ones) through modified versions of
    the model (LeakyReLU swaps, bias shifts, recycled units) and fills each finding's ``predicted``; it is off
    by default here (the CLI turns it on). ``simulate_budget`` bounds what they re-run to that share of the
    samples the scan observed, every pass counted (the CLI's default; None: every fix on every kept sample).
    ``simulate_progress(done, planned)`` follows their forward passes.
    Every other argument is :func:`relu_doctor.api.scan`'s (:class:`~relu_doctor.api.ScanOptions`).
    """
    if simulate and simulate_budget is not None:
        check_simulate_budget(simulate_budget)  # before the scan: a bad value is never found after minutes of work
    head = SubProbe(simulate_samples)
    report, observed = scan_observed(model, head.tap(batches) if simulate else batches, **options)
    if not simulate:
        return report
    paths = options.get("site_paths")
    budget = None if simulate_budget is None else math.ceil(simulate_budget * report.probe.samples)
    return simulate_findings(
        report, model, observed, head.batches, site_paths=paths, budget=budget, progress=simulate_progress
    )
