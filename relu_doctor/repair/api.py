"""Repair a model in memory: ``repair_model(model, batches, strategy=...) -> Repaired``. No printing, no files.

The input model is never changed: the repair works on a deep copy, returned with the scan before, the scan after
and a :class:`~relu_doctor.repair.records.RepairResult` saying what was changed, skipped and how far the output moved.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from ..analysis.build import build_report
from ..analysis.sites import build_site, site_names
from ..engine.batches import replayable
from ..engine.runner import observe
from ..errors import UsageError
from ..report import ModelInfo, ProbeInfo, Report, Thresholds
from ..settings import DEFAULT_REDUCER
from .bias_shift import bias_shift, shift_target
from .drift import drift_against, drift_between, reference_outputs
from .edits import Edits, apply_edits
from .leaky import code_changes, plan_leaky, swap_to_leaky
from .plan import SitePlan, plan_bias_shift, plan_recycle
from .records import (
    RECYCLE_DYING_MAX_DRIFT,
    RECYCLE_MAX_DRIFT,
    RepairResult,
    SiteRepair,
    SkippedSite,
    Strategy,
)
from .recycle import recycle_until_alive

Batches = Iterable[Any] | Callable[[], Iterable[Any]]
"""Probe batches that can be replayed: a list of tensors, a :class:`~relu_doctor.engine.batches.Replayable`, or
a function returning a fresh iterator (:func:`~relu_doctor.engine.batches.replayable`)."""


@dataclass(frozen=True)
class Repaired:
    """A repaired copy of a model and what the repair did."""

    model: nn.Module
    """The repaired deep copy (the input model is unchanged)."""
    result: RepairResult
    """Sites changed and skipped, output drift on the probe."""
    before: Report
    """Scan of the input model on the probe."""
    after: Report
    """Scan of the repaired copy on the same probe."""
    swapped: tuple[str, ...] = ()
    """Module paths swapped to LeakyReLU (leaky strategy)."""


@dataclass(frozen=True)
class _Context:
    """What every strategy needs besides the model copy."""

    original: nn.Module
    replay: Iterable[Any]
    """The probe's batches, iterated again by every pass (:func:`~relu_doctor.engine.batches.replayable`)."""
    thresholds: Thresholds
    unit_dim: int | None
    seed: int
    reducer: str = DEFAULT_REDUCER


def default_max_drift(strategy: Strategy, include_dying: bool) -> float | None:
    """The relative L2 drift a strategy is held to when the user sets none: only a recycle promises to keep it."""
    if strategy is not Strategy.recycle:
        return None
    return RECYCLE_DYING_MAX_DRIFT if include_dying else RECYCLE_MAX_DRIFT


def repair_model(
    model: nn.Module,
    batches: Batches,
    *,
    strategy: Strategy | str,
    seed: int = 0,
    include_dying: bool = False,
    max_drift: float | None = None,
    thresholds: Thresholds | None = None,
    unit_dim: int | None = None,
    model_info: ModelInfo | None = None,
    probe_info: ProbeInfo | None = None,
    reducer: str = DEFAULT_REDUCER,
) -> Repaired:
    """Repair the dead (and with ``include_dying`` dying) units of a copy of ``model``, seen on ``batches``.

    ``recycle`` keeps the output (sites where it cannot are skipped, as are sites whose change moved the output by
    more than ``max_drift`` relative L2, default 1e-6); ``bias-shift`` and ``leaky`` change it and report how much.
    """
    strategy = Strategy(strategy)
    if include_dying and strategy is not Strategy.recycle:
        raise UsageError(f"--include-dying works with --strategy recycle only, not {strategy.value}")
    replay = replayable(batches)
    context = _Context(model, replay, thresholds or Thresholds(), unit_dim, seed, reducer)
    observer, samples = observe(model, replay, unit_dim=unit_dim, reducer=reducer)
    probe = probe_info or ProbeInfo("in-memory", samples, 0)
    info = model_info or ModelInfo("", "in-memory", None)
    before = build_report(observer.sites, observer, model, context.thresholds, probe, info, unit_dim)
    work = copy.deepcopy(model)
    if strategy is Strategy.leaky:
        result, swapped = _leaky(work, before, context)
    elif strategy is Strategy.bias_shift:
        result, swapped = _bias_shift(work, observer.sites, before, context), ()
    else:
        limit = max_drift if max_drift is not None else default_max_drift(strategy, include_dying)
        result, swapped = _recycle(work, observer.sites, before, context, include_dying, limit), ()
    after_observer, _ = observe(work, replay, unit_dim=unit_dim, reducer=reducer)
    after = build_report(after_observer.sites, after_observer, work, context.thresholds, probe, info, unit_dim)
    return Repaired(work, result, before, after, swapped)


def _leaky(work: nn.Module, before: Report, context: _Context) -> tuple[RepairResult, tuple[str, ...]]:
    plan = plan_leaky(work, before.sites)
    notes = code_changes(work, plan.module_paths)
    swap_to_leaky(work, plan.module_paths)
    drift = drift_between(context.original, work, context.replay)
    return RepairResult(
        Strategy.leaky, context.seed, False, plan.repaired, plan.skipped, drift, notes
    ), plan.module_paths


def _bias_shift(work: nn.Module, observed: Sequence[Any], before: Report, context: _Context) -> RepairResult:
    plans, skipped = plan_bias_shift(work, observed, before.sites)
    bias_shift(work, plans)
    repaired = tuple(SiteRepair(p.site.name, p.units, (), (shift_target(p),)) for p in plans)
    drift = drift_between(context.original, work, context.replay)
    return RepairResult(Strategy.bias_shift, context.seed, False, repaired, tuple(skipped), drift)


def _recycle(
    work: nn.Module,
    observed: Sequence[Any],
    before: Report,
    context: _Context,
    include_dying: bool,
    limit: float | None,
) -> RepairResult:
    plans, skipped = plan_recycle(work, observed, before.sites, include_dying)
    reference = reference_outputs(context.original, context.replay)
    generator = torch.Generator().manual_seed(context.seed)
    redraws = _apply_recycle(work, plans, context, generator)
    drift = drift_against(reference, work, context.replay)
    if limit is not None and drift.relative_l2 > limit and plans:
        # Something the graph did not show (a layer reused elsewhere, an output used twice): find the sites one by one.
        fresh = copy.deepcopy(context.original)
        plans, redraws, rejected = _recycle_site_by_site(fresh, plans, context, reference, limit)
        work.load_state_dict(fresh.state_dict())
        skipped.extend(rejected)
        drift = drift_against(reference, work, context.replay)
    repaired = tuple(_site_repair(plan, redraws.get(plan.site.name, 0)) for plan in plans)
    return RepairResult(Strategy.recycle, context.seed, include_dying, repaired, tuple(skipped), drift)


def _site_repair(plan: SitePlan, redraws: int) -> SiteRepair:
    layers = (plan.producer, *((plan.norm,) if plan.norm else ()), *(c.module_path for c in plan.consumers))
    return SiteRepair(plan.site.name, plan.units, plan.dying, tuple(dict.fromkeys(layers)), redraws)


def _apply_recycle(
    work: nn.Module, plans: Sequence[SitePlan], context: _Context, generator: torch.Generator
) -> dict[str, int]:
    """Recycle ``plans`` in ``work``, re-drawing units that still never fire; returns extra draws per site."""

    def silent(edits: Edits) -> list[tuple[SitePlan, list[int]]]:
        apply_edits(work, edits)
        return _still_dead(work, plans, context)

    edits, redraws = recycle_until_alive(work, plans, generator, silent)
    apply_edits(work, edits)
    return redraws


def _recycle_site_by_site(
    work: nn.Module, plans: Sequence[SitePlan], context: _Context, reference: list[torch.Tensor], limit: float
) -> tuple[list[SitePlan], dict[str, int], list[SkippedSite]]:
    """Apply plans one at a time, undoing any that moves the output beyond ``limit``.

    A plan with dying units is tried again without them: folding a dying unit's mean into the next bias keeps the
    output only on average, so when that is what moved it, the dead units are still recycled and the dying ones are
    skipped for that reason (not blamed on a hidden use of a layer).
    """
    kept: list[SitePlan] = []
    redraws: dict[str, int] = {}
    rejected: list[SkippedSite] = []
    generator = torch.Generator().manual_seed(context.seed)
    for plan in plans:
        drift, counts = _try_plan(work, plan, context, generator, reference, limit)
        if drift is not None and plan.dying:
            dead_only = replace(plan, units=tuple(u for u in plan.units if u not in plan.dying), dying=())
            dead_drift, counts = _try_plan(work, dead_only, context, generator, reference, limit)
            if dead_drift is None:
                consumers = ", ".join(c.module_path for c in plan.consumers)
                rejected.append(SkippedSite(plan.site.name, plan.dying, _fold_reason(drift, limit, consumers)))
                plan, drift = dead_only, None
        if drift is not None:
            layers = ", ".join(_site_repair(plan, 0).layers)
            reason = (
                f"recycling it moved the output by {drift:.3g} relative L2 (limit {limit:g}): one of {layers} "
                "has a use the forward pass did not show"
            )
            rejected.append(SkippedSite(plan.site.name, plan.units, reason))
            continue
        if plan.units:
            kept.append(plan)
            redraws.update(counts)
    return kept, redraws, rejected


def _try_plan(
    work: nn.Module,
    plan: SitePlan,
    context: _Context,
    generator: torch.Generator,
    reference: list[torch.Tensor],
    limit: float,
) -> tuple[float | None, dict[str, int]]:
    """Recycle one plan in ``work``; undo it and return its drift when that exceeds ``limit``, else (None, re-draws)."""
    saved = copy.deepcopy(work.state_dict())
    counts = _apply_recycle(work, [plan], context, generator)
    drift = drift_against(reference, work, context.replay).relative_l2
    if drift > limit:
        work.load_state_dict(saved)
        return drift, {}
    return None, counts


def _fold_reason(drift: float, limit: float, consumers: str) -> str:
    return (
        f"folding the dying units' mean activation into the bias of {consumers} moved the output by {drift:.3g} "
        f"relative L2 (limit {limit:g}): they fire on some inputs, so their output is not a constant; "
        "raise --max-drift to accept it, or recycle the dead units only"
    )


def _still_dead(work: nn.Module, plans: Sequence[SitePlan], context: _Context) -> list[tuple[SitePlan, list[int]]]:
    observer, _ = observe(work, context.replay, unit_dim=context.unit_dim, reducer=context.reducer)
    names = site_names(observer.sites)
    by_name = {name: seen for name, seen in zip(names, observer.sites)}
    silent = []
    for plan in plans:
        seen = by_name.get(plan.site.name)
        if seen is None:
            continue
        dead = set(build_site(seen.record(), plan.site.name, context.thresholds).dead_units)
        units = [u for u in plan.units if u in dead]
        if units:
            silent.append((plan, units))
    return silent
