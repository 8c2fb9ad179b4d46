"""Why each dead unit is dead: one cause per unit, from the model's parameters and the observed pre-activations.

The layer computing a site's input is the one the forward pass showed (``Site.producer``: a Linear/Conv, with
an optional norm), never a guess from module order. Causes are tried in this order and the first that holds
is the unit's cause, so the causes of a site add up to its dead units:

1. RD104 collapsed weights: the unit's incoming weights are ≈0 (norm ≤ 1e-3 × the layer's median unit);
2. RD103 dead inputs: every input column with a non-zero weight belongs to a dead unit of the upstream site;
3. RD102 norm shift: the norm feeding the relu has β ≤ −3·|γ| (data-free);
4. RD105 input range: the first layer reads the probe itself and the probe's RMS is outside [0.01, 10]
   (a first layer's units die when inputs are unnormalised: check preprocessing before anything else);
5. RD101 negative bias: bias (or β) < 0 while W·x alone reached above zero on the probe;
6. RD106 negative weights: W·x stayed ≤ 0 on the whole probe even without the bias;
7. RD100 unknown.

"W·x alone" is the max pre-activation minus the bias (or β): exact when only elementwise ops lie between the
producer and the relu, which rules 4 and 6 require.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn
from torch.utils._pytree import tree_flatten

from ..engine.layers import first_layer_path
from ..engine.observe import ObservedSite
from ..report import Site
from .diagnose import BIAS_MARGIN, NORM_SHIFT_K, Evidence, SiteCause

COLLAPSED_RATIO = 1e-3
"""Incoming-weight norm, relative to the layer's median unit, below which a unit's weights count as collapsed."""
INPUT_RMS_RANGE = (0.01, 10.0)
"""Probe RMS outside this range is far from the ~unit scale a first layer is initialised for."""


@dataclass(frozen=True)
class InputScale:
    """Statistics of the probe as it enters the model (the first floating tensor of each batch)."""

    values: int
    """How many input values were seen."""
    mean: float
    """Mean of every input value."""
    rms: float
    """Root mean square of every input value."""


class InputScaleMeter:
    """Accumulates :class:`InputScale` while the probe streams through (one reduction per batch)."""

    def __init__(self) -> None:
        self.values = 0
        self.total = 0.0
        self.squares = 0.0

    def tap(self, batches: Iterable[Any]) -> Iterator[Any]:
        """Yield every batch unchanged, counting its first floating tensor on the way."""
        for batch in batches:
            first = next((t for t in tree_flatten(batch)[0] if isinstance(t, torch.Tensor)), None)
            if first is not None and first.is_floating_point() and first.numel():
                wide = first.detach().double()
                self.values += first.numel()
                self.total += float(wide.sum())
                self.squares += float(wide.square().sum())
            yield batch

    def result(self) -> InputScale | None:
        """The statistics, or None when no floating input was seen (token ids, ...)."""
        if not self.values:
            return None
        return InputScale(self.values, self.total / self.values, math.sqrt(self.squares / self.values))


@dataclass(frozen=True)
class _Layer:
    """The parameters deciding one site's pre-activation (held only while causes are computed)."""

    path: str
    rows: torch.Tensor
    """Incoming weights, one row per unit, flattened."""
    bias: torch.Tensor
    """Effective bias per unit: the norm's beta when there is a norm, else the producer's bias (or 0)."""
    bias_name: str
    gamma: torch.Tensor | None
    groups: int
    """Conv groups (1 for a Linear)."""
    kernel: int
    """Weights per input channel (kernel positions; 1 for a Linear)."""

    @functools.cached_property
    def negative_shares(self) -> torch.Tensor:
        """Per unit: the share of its incoming weights' L1 mass that is negative."""
        return self.rows.clamp(max=0).abs().sum(dim=1) / self.rows.abs().sum(dim=1).clamp(min=1e-30)

    @functools.cached_property
    def row_norms(self) -> torch.Tensor:
        """L2 norm of each unit's incoming weights (computed once per layer, not once per dead unit)."""
        return self.rows.norm(dim=1)

    @functools.cached_property
    def typical_norm(self) -> float:
        return float(self.row_norms.median())


@dataclass(frozen=True)
class _Context:
    """Everything the cause rules of one site need."""

    site: Site
    layer: _Layer
    sites: Sequence[Site]
    observed: Sequence[ObservedSite]
    input_scale: InputScale | None
    first_layer: str | None
    upstream: Site | None = None
    """The one site the producer reads unmixed, if any (see :func:`_upstream`)."""
    fed_by_dead: torch.Tensor | None = None
    """Per unit (bool): every input with a non-zero weight comes from a dead unit of ``upstream`` (None: no map)."""


def explain(
    model: nn.Module, sites: Sequence[Site], observed: Sequence[ObservedSite], input_scale: InputScale | None = None
) -> Evidence:
    """A cause for every dead unit of every site whose producing layer can be read, plus the output sites."""
    first = first_layer_path(model)
    sites_by_index = {s.index: s for s in sites}
    observed_by_index = {s.index: s for s in observed}
    causes: list[SiteCause] = []
    analysed: list[str] = []
    for site in sites:
        if not site.dead:
            continue
        layer, why_not = _layer(model, site)
        if layer is None:
            causes.append(SiteCause(site.name, "RD100", tuple(sorted(site.dead_units)), parameter=why_not))
        else:
            upstream = _upstream(site, sites_by_index, observed_by_index)
            fed = _fed_by_dead(layer, upstream) if upstream is not None and upstream.dead else None
            context = _Context(site, layer, sites, observed, input_scale, first, upstream, fed)
            causes.extend(site_causes(context))
        analysed.append(site.name)
    outputs = tuple(s.name for s, seen in zip(sites, observed) if seen.reaches_output)
    return Evidence(tuple(causes), tuple(analysed), outputs)


def site_causes(context: _Context) -> list[SiteCause]:
    """The causes of the site's dead units, one record per code: each unit gets the first rule that holds.

    The rules, in priority order (the module docstring), are evaluated for all dead units at once as tensor
    masks, in float64 on the same float32 values, so every comparison and every number is the one the rule
    gives unit by unit in Python floats; no per-unit Python runs (a per-unit rule and record cost more than the
    rest of the report on a deep net with tens of thousands of dead units).
    """
    site, layer = context.site, context.layer
    dead = torch.tensor(sorted(site.dead_units), dtype=torch.long)
    highest = torch.tensor(site.counters.max_preactivation, dtype=torch.float64)[dead]
    bias = layer.bias.double()[dead]
    norm = layer.row_norms.double()[dead]
    reach = highest - bias
    shift = torch.where(torch.isfinite(highest), BIAS_MARGIN - highest, math.nan)
    elementwise = _elementwise(context)
    never = torch.zeros(len(dead), dtype=torch.bool)
    gamma = None if layer.gamma is None else layer.gamma.double()[dead].abs()
    fed = context.fed_by_dead
    rules = (
        ("RD104", ~((norm > COLLAPSED_RATIO * layer.typical_norm) & (norm > 0))),
        ("RD103", fed[dead] if fed is not None and context.upstream is not None else never),
        ("RD102", ~(bias > -NORM_SHIFT_K * gamma) if gamma is not None else never),
        ("RD105", torch.full_like(never, _input_out_of_range(context))),
        ("RD101", (~(bias >= 0) & (reach > 0)) if elementwise else never),
        ("RD106", (reach <= 0) if elementwise and gamma is None else never),
    )
    chosen = torch.full((len(dead),), len(rules), dtype=torch.long)  # len(rules): none holds, RD100
    for index in reversed(range(len(rules))):  # the first rule that holds wins
        chosen = torch.where(rules[index][1], index, chosen)
    records = []
    for index, code in enumerate([code for code, _ in rules] + ["RD100"]):
        mine = chosen == index
        if bool(mine.any()):
            records.append(_site_cause(context, code, dead[mine], bias[mine], norm[mine], reach[mine], shift[mine]))
    return records


def _site_cause(
    context: _Context,
    code: str,
    units: torch.Tensor,
    bias: torch.Tensor,
    norm: torch.Tensor,
    reach: torch.Tensor,
    shift: torch.Tensor,
) -> SiteCause:
    """The record of ``code`` for ``units`` (ascending), with the numbers that code shows."""
    name, layer = context.site.name, context.layer
    listed = tuple(units.tolist())

    def column(values: torch.Tensor) -> tuple[float, ...]:
        return tuple(values.tolist())

    if code == "RD104":
        return SiteCause(name, code, listed, parameter=f"{layer.path}.weight", values=column(norm))
    if code == "RD103":
        upstream = context.upstream.name if context.upstream is not None else ""
        return SiteCause(name, code, listed, parameter=layer.bias_name, values=column(bias), upstream=upstream)
    if code == "RD102":
        assert layer.gamma is not None
        gamma = column(layer.gamma.double()[units].abs())
        return SiteCause(
            name,
            code,
            listed,
            parameter=layer.bias_name,
            values=column(bias),
            reaches=column(reach),
            shifts=column(shift),
            scales=gamma,
        )
    if code == "RD105":
        rms = context.input_scale.rms if context.input_scale is not None else math.nan
        return SiteCause(name, code, listed, reaches=column(reach), scales=(rms,) * len(listed))
    if code == "RD101":
        return SiteCause(
            name,
            code,
            listed,
            parameter=layer.bias_name,
            values=column(bias),
            reaches=column(reach),
            shifts=column(shift),
        )
    if code == "RD106":
        negative = column(layer.negative_shares.double()[units])
        return SiteCause(
            name,
            code,
            listed,
            parameter=f"{layer.path}.weight",
            reaches=column(reach),
            shifts=column(shift),
            scales=negative,
        )
    return SiteCause(name, code, listed)


def _input_out_of_range(context: _Context) -> bool:
    """RD105's condition (the same for every unit of a site): the first layer reads the probe itself, and the
    probe's RMS is far from unit scale."""
    scale, producer = context.input_scale, context.site.producer
    if scale is None or producer is None or producer.input_sites or producer.module_path != context.first_layer:
        return False
    low, high = INPUT_RMS_RANGE
    return not low <= scale.rms <= high


# -- helpers ---------------------------------------------------------------------------------------------
def _elementwise(context: _Context) -> bool:
    return context.site.producer is not None and context.site.producer.elementwise_only


def _upstream(site: Site, sites: Mapping[int, Site], observed: Mapping[int, ObservedSite]) -> Site | None:
    """The one site the producer reads, when its output reaches the producer unmixed (no sum, no concat)."""
    producer = site.producer
    indices = set(producer.input_sites) if producer else set()
    if len(indices) != 1:
        return None
    index = indices.pop()
    seen = observed.get(index)
    if seen is None or seen.feeds_sum or seen.feeds_concat:
        return None
    return sites.get(index)


def _fed_by_dead(layer: _Layer, upstream: Site) -> torch.Tensor | None:
    """Per unit of the layer: it has a non-zero incoming weight and every one reads a dead unit of ``upstream``.

    None when the layer's inputs do not map onto the upstream units. One tensor expression for all units at once:
    a set per unit costs seconds on a wide conv.
    """
    units, fan_in = layer.rows.shape
    per_group = fan_in // layer.kernel
    inputs = per_group * layer.groups
    if inputs % upstream.units:
        return None
    if not upstream.dead_units:  # nothing dead upstream: no unit can be fed only by dead ones (and wide layers
        return torch.zeros(units, dtype=torch.bool)  # would pay for the expression below for nothing)
    dead = torch.zeros(upstream.units, dtype=torch.bool)
    dead[list(upstream.dead_units)] = True
    weighted = layer.rows != 0
    # conv -> flatten -> linear: each upstream channel owns a block of inputs // upstream.units columns.
    block = inputs // upstream.units
    if layer.groups == 1:  # one owner per column, the same for every unit: no (units, fan_in) index matrix
        live_columns = ~dead[torch.arange(fan_in) // layer.kernel // block]
        return weighted.any(dim=1) & ~(weighted & live_columns).any(dim=1)
    group = torch.arange(units) // (units // layer.groups)
    channels = (torch.arange(fan_in) // layer.kernel)[None, :] + (group * per_group)[:, None]
    return weighted.any(dim=1) & (~weighted | dead[channels // block]).all(dim=1)


def _layer(model: nn.Module, site: Site) -> tuple[_Layer | None, str]:
    """The producing layer's parameters, or None and why it cannot be read."""
    module, why_not = _producer_module(model, site)
    if module is None or site.producer is None:
        return None, why_not
    path = site.producer.module_path
    weight = cast(torch.Tensor, module.weight).detach().float()
    rows, kernel, groups = (
        weight.reshape(site.units, -1),
        math.prod(weight.shape[2:]),
        int(getattr(module, "groups", 1)),
    )
    norm_path = site.producer.norm_path
    gamma, beta = _norm_affine(_submodule(model, norm_path), site.units)
    if beta is not None:
        return _Layer(path, rows, beta, f"{norm_path}.bias", gamma, groups, kernel), ""
    bias = getattr(module, "bias", None)
    if not isinstance(bias, torch.Tensor):
        return _Layer(path, rows, torch.zeros(site.units), "(no bias)", None, groups, kernel), ""
    return _Layer(path, rows, bias.detach().float(), f"{path}.bias", None, groups, kernel), ""


_LAYER_OPS = frozenset(
    {
        "linear",
        "addmm",
        "mm",
        "matmul",
        "conv1d",
        "conv2d",
        "conv3d",
        "convolution",
        "_convolution",
        "mkldnn_convolution",
        "cudnn_convolution",
    }
)
"""Ops that compute a Linear/Conv layer: in an opaque graph (TorchScript, torch.export) they identify the layer the
op's weights belong to, which is no nn.Linear/nn.Conv instance there."""
_OPAQUE_LAYER_NAMES = frozenset({"Linear", "Conv1d", "Conv2d", "Conv3d"})


def _producer_module(model: nn.Module, site: Site) -> tuple[nn.Module | None, str]:
    """The Linear/Conv computing the site's input, or None and why it is not analysed."""
    producer = site.producer
    if producer is None:
        return None, "the layer computing its input is not visible in the forward pass"
    module = _submodule(model, producer.module_path)
    if not _is_layer(module, producer.op):
        kind = type(module).__name__ if module is not None else "opaque"
        return (
            None,
            f"its input comes from {producer.module_path or '<root>'} ({kind}, {producer.op}), which is not analysed",
        )
    weight = cast(torch.Tensor, getattr(module, "weight", None))
    if weight.shape[0] != site.units:
        return None, f"{producer.module_path}.weight has {weight.shape[0]} rows for {site.units} units"
    return module, ""


def _is_layer(module: nn.Module | None, op: str) -> bool:
    """An nn.Linear/nn.Conv (not transposed), or its counterpart in an opaque graph: a scripted Linear/Conv, or the
    plain parameter holder torch.export leaves, whose weights a linear/conv op read."""
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        return False
    if isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)):
        return True
    if module is None or not isinstance(getattr(module, "weight", None), torch.Tensor) or op not in _LAYER_OPS:
        return False
    if isinstance(module, torch.jit.ScriptModule):
        return getattr(module, "original_name", "") in _OPAQUE_LAYER_NAMES
    return type(module) is nn.Module


def _norm_affine(norm: nn.Module | None, units: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    if norm is None:
        return None, None
    weight, bias = getattr(norm, "weight", None), getattr(norm, "bias", None)
    if not isinstance(bias, torch.Tensor) or bias.numel() != units:
        return None, None
    gamma = (
        weight.detach().float() if isinstance(weight, torch.Tensor) and weight.numel() == units else torch.ones(units)
    )
    return gamma, bias.detach().float()


def _submodule(model: nn.Module, path: str | None) -> nn.Module | None:
    if path is None:
        return None
    try:
        return model.get_submodule(path)
    except (AttributeError, RuntimeError):  # RuntimeError: a ScriptModule has no get_submodule
        return dict(model.named_modules()).get(path)
