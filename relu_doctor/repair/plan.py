"""Which units of which site can be repaired, and which layers a repair touches, from the observed forward pass.

Producers and consumers come from the observer (the layer that computed a relu's input, the layers that read its
output), never from module order. A site is recyclable when the repair can keep the network's output: its producer
is a Linear/Conv run for this site alone, any norm in between is per-channel, and every reader of its output is a
Linear/Conv whose input columns for a unit are known. Anything else is skipped with a reason naming what stopped it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

from ..engine.observe import ObservedSite
from ..report import Site
from .records import SkippedSite

_PRODUCER_LAYOUTS = ("channel-first", "feature-last")
"""Unit axes that follow from the producer (not --unit-dim or a guess by rank), so units are its output rows."""
_PER_CHANNEL_NORMS = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)


@dataclass(frozen=True)
class Consumer:
    """A layer that reads a site's output, and which of its input slots belong to each unit."""

    module_path: str
    """State-dict path of the nn.Linear / nn.ConvNd."""
    block: int
    """Input columns per unit: 1 for a direct read, H*W (or pooled size) after conv -> flatten -> linear."""


@dataclass(frozen=True)
class SitePlan:
    """One site's repair: the units and every layer it changes."""

    site: Site
    """The site as scanned."""
    units: tuple[int, ...]
    """Units to repair, ascending."""
    dying: tuple[int, ...]
    """Of ``units``, the dying ones (folded, then recycled)."""
    producer: str
    """Module path of the Linear/Conv computing the site's input."""
    norm: str | None
    """Module path of a norm between producer and relu."""
    consumers: tuple[Consumer, ...] = ()
    """Readers of the site's output (recycle only)."""


def units_to_repair(site: Site, include_dying: bool) -> tuple[int, ...]:
    """Dead units, plus dying ones when asked."""
    return tuple(sorted(set(site.dead_units) | (set(site.dying_units) if include_dying else set())))


def plan_recycle(
    model: nn.Module, observed: Sequence[ObservedSite], sites: Sequence[Site], include_dying: bool
) -> tuple[list[SitePlan], list[SkippedSite]]:
    """Recycle plans for every site with units to repair, and the sites that cannot be recycled."""
    modules = dict(model.named_modules())
    producers = Counter(s.producer.module_path for s in observed if s.producer is not None)
    readers = Counter(path for s in observed for path in {c[0] for c in s.consumers})
    plans: list[SitePlan] = []
    skipped: list[SkippedSite] = []
    for seen, site in zip(observed, sites):
        units = units_to_repair(site, include_dying)
        if not units:
            continue
        reason = _producer_problem(seen, modules, producers, recycle=True) or _output_problem(seen)
        consumers, consumer_reason = _consumers(seen, modules, readers)
        reason = reason or consumer_reason
        if reason:
            skipped.append(SkippedSite(site.name, units, reason))
            continue
        plan = SitePlan(
            site,
            units,
            tuple(u for u in units if u in site.dying_units),
            seen.producer.module_path,  # type: ignore[union-attr]  # a site without a producer was refused above
            seen.producer.norm_path,  # type: ignore[union-attr]
            consumers,
        )
        plans.append(_without_unfoldable(plan, modules, skipped))
    return [p for p in plans if p.units], skipped


def plan_bias_shift(
    model: nn.Module, observed: Sequence[ObservedSite], sites: Sequence[Site]
) -> tuple[list[SitePlan], list[SkippedSite]]:
    """Bias-shift plans for every site with dead units: raise the norm's shift (beta) or the producer's bias."""
    modules = dict(model.named_modules())
    producers = Counter(s.producer.module_path for s in observed if s.producer is not None)
    plans: list[SitePlan] = []
    skipped: list[SkippedSite] = []
    for seen, site in zip(observed, sites):
        if not site.dead_units:
            continue
        reason = _producer_problem(seen, modules, producers, recycle=False) or _shift_target_problem(
            seen, modules, site
        )
        if reason:
            skipped.append(SkippedSite(site.name, site.dead_units, reason))
            continue
        producer = seen.producer
        assert producer is not None
        plans.append(SitePlan(site, site.dead_units, (), producer.module_path, producer.norm_path))
    return plans, skipped


def _producer_problem(
    seen: ObservedSite, modules: dict[str, nn.Module], producers: Counter[str], *, recycle: bool
) -> str | None:
    producer = seen.producer
    if producer is None:
        return "the forward pass shows no Linear/Conv layer computing its input (e.g. a LayerNorm or a sum in between)"
    if not producer.elementwise_only:
        return f"its input mixes the output of {producer.module_path} with other tensors (a sum before the relu)"
    module = modules.get(producer.module_path)
    # A bias shift works on any Linear/Conv bias; a recycle also needs weight rows that are the output units.
    allowed = _is_weight_layer(module) if recycle else isinstance(module, (nn.Linear, nn.modules.conv._ConvNd))
    if not allowed:
        return f"its input comes from {producer.module_path or '<root>'} ({type(module).__name__}), not an nn.Linear or nn.ConvNd module"
    if producers[producer.module_path] > 1:
        return f"{producer.module_path} feeds more than one relu site (a reused layer): changing it changes them all"
    return _recycle_problem(seen, module, modules) if recycle and module is not None else None


def _recycle_problem(seen: ObservedSite, module: nn.Module, modules: dict[str, nn.Module]) -> str | None:
    """Units must be the producer's output rows (not --unit-dim or a guess by rank); a norm between, per channel."""
    producer = seen.producer
    assert producer is not None
    weight = getattr(module, "weight", None)
    if seen.layout not in _PRODUCER_LAYOUTS or weight is None or weight.shape[0] != seen.counters.units:
        return f"its units (axis {seen.unit_axis}, {seen.layout}) are not the output units of {producer.module_path}"
    norm = modules.get(producer.norm_path) if producer.norm_path is not None else None
    if producer.norm_path is not None and not isinstance(norm, _PER_CHANNEL_NORMS):
        return f"{producer.norm_path} ({type(norm).__name__}) normalises it together with other channels"
    return None


def _shift_target_problem(seen: ObservedSite, modules: dict[str, nn.Module], site: Site) -> str | None:
    assert seen.producer is not None
    path = seen.producer.norm_path or seen.producer.module_path
    bias = getattr(modules.get(path), "bias", None)
    if not isinstance(bias, nn.Parameter) or bias.dim() != 1 or bias.numel() != site.units:
        what = "an affine shift (beta)" if seen.producer.norm_path else "a bias"
        return f"{path} has no {what} with one entry per unit to raise; use --strategy recycle or leaky"
    if any(site.counters.max_preactivation[u] == float("-inf") for u in site.dead_units):
        return "some dead units never had a finite pre-activation, so the shift they need is unknown"
    return None


def _output_problem(seen: ObservedSite) -> str | None:
    if seen.feeds_sum:
        return "its output reaches a residual sum, whose other branch cannot be zeroed with it"
    if seen.feeds_concat:
        return "its output reaches a concatenation the tool does not follow"
    if seen.reaches_output:
        return "its output is the model output (ReDo never recycles the output layer)"
    if seen.unknown_uses:
        return f"its output goes through ops whose effect on units is not followed ({', '.join(sorted(seen.unknown_uses))})"
    if not seen.consumers:
        return "no Linear/Conv layer reads its output, so nothing can be zeroed to keep the output unchanged"
    return None


def _consumers(
    seen: ObservedSite, modules: dict[str, nn.Module], readers: Counter[str]
) -> tuple[tuple[Consumer, ...], str | None]:
    found: dict[str, Consumer] = {}
    for path, op, shape in sorted(seen.consumers):
        module = modules.get(path)
        if module is None or not _is_weight_layer(module):
            return (
                (),
                f"its output is read by {path or '<root>'} ({type(module).__name__}, {op}), not an nn.Linear or nn.ConvNd",
            )
        if readers[path] > 1:
            return (), f"{path} also reads another relu site's output: zeroing its inputs would change that one"
        block = _block(seen, module, shape)
        if block is None:
            return (
                (),
                f"{path} reads its output with shape {shape}, which the tool cannot map to its {seen.counters.units} units",
            )
        if found.get(path, Consumer(path, block)).block != block:
            return (), f"{path} reads its output in two different shapes"
        found[path] = Consumer(path, block)
    return tuple(found.values()), None


def _block(seen: ObservedSite, module: nn.Module, shape: tuple[int, ...]) -> int | None:
    """Input columns per unit for this reader, or None when its input axis is not the site's unit axis."""
    units, ndim = seen.counters.units, len(seen.activation_shape)
    last_axis = seen.unit_axis == ndim - 1
    if isinstance(module, nn.Linear):
        if len(shape) == ndim and last_axis and shape[-1] == units == module.in_features:
            return 1
        flattened = len(shape) == 2 and ndim >= 3 and seen.unit_axis == 1
        if flattened and shape[1] == module.in_features and shape[1] % units == 0:
            return shape[1] // units  # conv -> (pool) -> flatten -> linear: channel c is a block of columns
        return None
    conv = module
    assert isinstance(conv, nn.modules.conv._ConvNd)
    return 1 if len(shape) >= 3 and seen.unit_axis == 1 and shape[1] == units == conv.in_channels else None


def _without_unfoldable(plan: SitePlan, modules: dict[str, nn.Module], skipped: list[SkippedSite]) -> SitePlan:
    """Dying units need a bias in every consumer to fold their mean into; drop them where one has none."""
    if not plan.dying:
        return plan
    biasless = [c.module_path for c in plan.consumers if getattr(modules[c.module_path], "bias", None) is None]
    if not biasless:
        return plan
    skipped.append(
        SkippedSite(
            plan.site.name, plan.dying, f"{biasless[0]} has no bias to fold the dying units' mean activation into"
        )
    )
    units = tuple(u for u in plan.units if u not in plan.dying)
    return SitePlan(plan.site, units, (), plan.producer, plan.norm, plan.consumers)


def _is_weight_layer(module: nn.Module | None) -> bool:
    """nn.Linear or a (non-transposed) nn.ConvNd: weight rows are output units, columns input units."""
    if isinstance(module, nn.Linear):
        return True
    return isinstance(module, nn.modules.conv._ConvNd) and not module.transposed
