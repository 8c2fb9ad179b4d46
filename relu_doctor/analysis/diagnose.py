"""Diagnosis rules: pure functions from sites (and, when the model was at hand, per-unit causes) to findings.

Every code's meaning, severity and fixes are registered once in :mod:`relu_doctor.codes`; its rule is registered
here, in :data:`RULES` (site rules, from the counters alone), :data:`CAUSES` (why dead units are dead, from the
model's parameters), :data:`ADVICE` or :data:`MODEL_WIDE`; codes never change meaning once released. Torch-free: :mod:`relu_doctor.causes` reads the model and hands over :class:`SiteCause` records.

Codes: RD0xx site counts, RD1xx causes of dead units, RD2xx training advice, RD3xx model-wide simulated fixes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from ..codes import severity
from ..report import Finding, ProbeInfo, Site, UnitCounters

BIAS_MARGIN = 0.1
"""Positive margin a bias shift aims for above zero, in pre-activation units."""
NORM_SHIFT_K = 3.0
"""A norm channel is shifted off when beta <= -k |gamma|: about N(beta, gamma^2), it is positive with P < 0.14%."""
CONSTANT_TOLERANCE = 1e-6
"""Relative gap between a unit's mean and max activation below which its output counts as constant."""

Rule = Callable[[Site, ProbeInfo], Iterable[Finding]]


@dataclass(frozen=True)
class SiteCause:
    """Why some dead units of one site are dead: one cause code, and per unit the numbers that show it.

    One record per site and code (a deep net has tens of thousands of dead units: one record each cost more than
    the rest of the report); the per-unit tuples are aligned with ``units`` (NaN where a number does not apply).
    """

    site: str
    """Name of the site the units belong to."""
    code: str
    """The cause's stable code (RD100-RD106)."""
    units: tuple[int, ...]
    """The units (channels or features) of the site with this cause, ascending."""
    parameter: str = ""
    """State-dict name of the parameter at fault (``fc2.bias``, ``bn1.bias``, ``fc2.weight``), if one is; for
    RD100 the reason no cause could be read, when there is one."""
    values: tuple[float, ...] = ()
    """Per unit, that parameter's value: the bias, beta, or the norm of the incoming weights."""
    reaches: tuple[float, ...] = ()
    """Per unit, the largest pre-activation its inputs produced on the probe, without its bias (or beta)."""
    shifts: tuple[float, ...] = ()
    """Per unit, the bias (or beta) shift that brings its max pre-activation to +BIAS_MARGIN."""
    scales: tuple[float, ...] = ()
    """Per unit, |gamma| (RD102), the probe's RMS (RD105), or the share of incoming weight that is negative (RD106)."""
    upstream: str = ""
    """The site whose dead units are these units' only inputs (RD103)."""


@dataclass(frozen=True)
class Evidence:
    """What the model and the forward pass add to the counters; absent when only counters are known."""

    causes: tuple[SiteCause, ...] = ()
    """The causes of the dead units of every site whose producer could be analysed: each dead unit is in exactly
    one record of its site."""
    analysed_sites: tuple[str, ...] = ()
    """Sites whose dead units all got a cause (RD001 is left out for them)."""
    output_sites: tuple[str, ...] = ()
    """Sites whose output is (part of) the model's output."""


# -- site rules (counters only) -----------------------------------------------------------------------------
def dead_units(site: Site, probe: ProbeInfo) -> Iterable[Finding]:
    """RD001: units that never fired on the probe, with the shift that would wake them."""
    if not site.dead or site.dead == site.units:
        return
    low, high = site.dead_max_preactivation or (0.0, 0.0)
    need_low, need_high = BIAS_MARGIN - high, BIAS_MARGIN - low
    yield Finding(
        code="RD001",
        site=site.name,
        units=site.dead_units,
        severity=severity("RD001"),
        cause=(
            f"{site.dead} of {site.units} units never fired on {probe.samples} samples; "
            f"their max pre-activation is {low:.3g} … {high:.3g}: a negative bias or shift keeps them off"
        ),
        suggestion=(
            f"raise their bias by ≈{need_low:.3g}"
            + (f" to {need_high:.3g}" if need_high > need_low + 1e-9 else "")
            + ", use LeakyReLU(0.01), or re-initialise them (relu-doctor fix --strategy recycle)"
        ),
    )


def whole_site_dead(site: Site, probe: ProbeInfo) -> Iterable[Finding]:
    """RD002: every unit of the site is dead, so its output is constant zero and nothing behind it learns."""
    if site.units and site.dead == site.units:
        low, high = site.dead_max_preactivation or (0.0, 0.0)
        yield Finding(
            code="RD002",
            site=site.name,
            units=site.dead_units,
            severity=severity("RD002"),
            cause=f"all {site.units} units are dead (max pre-activation {low:.3g} … {high:.3g}): the output is constant 0",
            suggestion="check the layer before it (bias, BatchNorm shift, input scale); re-initialise it or lower the learning rate",
        )


def dying_units(site: Site, probe: ProbeInfo) -> Iterable[Finding]:
    """RD003: units that fire, but rarely; they get almost no gradient."""
    if site.dying:
        rates = site.firing_rates()
        low, high = min(rates[u] for u in site.dying_units), max(rates[u] for u in site.dying_units)
        span = f"{low:.2%}" if low == high else f"{low:.2%} … {high:.2%}"
        yield Finding(
            code="RD003",
            site=site.name,
            units=site.dying_units,
            severity=severity("RD003"),
            cause=f"{site.dying} of {site.units} units fire, but only on {span} of their positions",
            suggestion="watch them across checkpoints (relu-doctor trend); a lower learning rate or LeakyReLU keeps them learning",
        )


def nan_units(site: Site, probe: ProbeInfo) -> Iterable[Finding]:
    """RD004: NaN or Inf pre-activations; these units are neither dead nor alive."""
    if site.nan_units:
        nans = sum(site.counters.nan)
        infs = sum(site.counters.inf)
        yield Finding(
            code="RD004",
            site=site.name,
            units=site.nan_units,
            severity=severity("RD004"),
            cause=f"{len(site.nan_units)} units saw {nans:,} NaN and {infs:,} Inf pre-activations",
            suggestion="the weights or the probe hold non-finite values: check the checkpoint and the input scale",
        )


def constant_units_rule(site: Site, probe: ProbeInfo) -> Iterable[Finding]:
    """RD005: alive units whose output is the same on every input: they carry no information."""
    if not site.constant_units:
        return
    values = [site.counters.max_preactivation[u] for u in site.constant_units]
    whole = "; with the dead units, the whole site's output is constant" if is_constant_output(site) else ""
    norm = (
        f" (e.g. {site.producer.norm_path} with γ≈0 outputs relu(β))"
        if site.producer and site.producer.norm_path
        else ""
    )
    yield Finding(
        code="RD005",
        site=site.name,
        units=site.constant_units,
        severity=severity("RD005"),
        cause=(
            f"{len(site.constant_units)} of {site.units} units output the same value on every position "
            f"({min(values):.3g} … {max(values):.3g}): alive, but they carry no information{norm}{whole}"
        ),
        suggestion="fold their constant into the next layer's bias and prune them, or re-initialise them",
    )


def is_constant_output(site: Site) -> bool:
    """True when every unit of the site is dead or constant: the site's output does not depend on the input."""
    return bool(site.units) and len(set(site.dead_units) | set(site.constant_units)) == site.units


def constant_units(counters: UnitCounters, excluded: Sequence[int] = ()) -> tuple[int, ...]:
    """Alive units that fired on every position with the same value: mean activation == max pre-activation."""
    n = counters.positions
    if not n:
        return ()
    skip = set(excluded)
    return tuple(
        u
        for u, positive in enumerate(counters.positive)
        if positive == n
        and u not in skip
        and abs(counters.activation_sum[u] / n - counters.max_preactivation[u])
        <= CONSTANT_TOLERANCE * max(1.0, abs(counters.max_preactivation[u]))
    )


RULES: tuple[tuple[str, Rule], ...] = (
    ("RD001", dead_units),
    ("RD002", whole_site_dead),
    ("RD003", dying_units),
    ("RD004", nan_units),
    ("RD005", constant_units_rule),
)


# -- causes (RD1xx): one text function per code, over the dead units of one site sharing that cause ----------
CauseText = Callable[[SiteCause, Site], tuple[str, str]]


def _number(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"


def _span(values: Iterable[float]) -> str:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return "?"
    low, high = min(finite), max(finite)
    same = math.isclose(low, high, rel_tol=1e-3, abs_tol=1e-12)
    return _number(low) if same else f"{_number(low)} … {_number(high)}"


def _units(causes: SiteCause, site: Site) -> str:
    return f"{len(causes.units)} of {site.units} units"


def unknown_cause(causes: SiteCause, site: Site) -> tuple[str, str]:
    """RD100: dead, and no parameter-based cause applies (or the producing layer could not be read)."""
    why = causes.parameter or "no bias, norm shift, dead input, collapsed weight or input-range cause applies"
    return (
        f"{_units(causes, site)} are dead and {why}",
        "re-initialise them (relu-doctor fix --strategy recycle) or try LeakyReLU(0.01)",
    )


def negative_bias(causes: SiteCause, site: Site) -> tuple[str, str]:
    """RD101: the unit's bias alone keeps it below zero: its inputs reach above zero, the bias pulls it under."""
    return (
        f"{_units(causes, site)}: {causes.parameter} = {_span(causes.values)} keeps them below zero, "
        f"although W·x alone reaches {_span(causes.reaches)} on the probe",
        f"raise {causes.parameter} of these units by {_span(causes.shifts)} (max pre-activation to "
        f"+{BIAS_MARGIN:g}), or recycle them; a large negative bias is the usual trace of too high a learning rate",
    )


def norm_shift(causes: SiteCause, site: Site) -> tuple[str, str]:
    """RD102: the norm feeding the relu has beta <= -k |gamma|: the channel is about N(beta, gamma^2), nearly never > 0."""
    return (
        f"{_units(causes, site)}: {causes.parameter} (β) = {_span(causes.values)} ≤ −{NORM_SHIFT_K:g}·|γ| "
        f"(|γ| = {_span(causes.scales)}); the channel is about N(β, γ²) and almost never positive",
        f"raise β of these channels by {_span(causes.shifts)}, or reset them (γ 1, β 0) when recycling; "
        "with Adam, L2 on BatchNorm parameters drives β down: use less L2 or AdamW",
    )


def dead_inputs(causes: SiteCause, site: Site) -> tuple[str, str]:
    """RD103: every input feeding the unit is itself dead or zero; the cause is upstream."""
    return (
        f"{_units(causes, site)}: every input with a non-zero weight comes from dead units of "
        f"{causes.upstream}; their pre-activation is just the bias ({_span(causes.values)})",
        f"fix {causes.upstream} first: these units can only come back with it",
    )


def collapsed_weights(causes: SiteCause, site: Site) -> tuple[str, str]:
    """RD104: incoming weights about zero and bias <= 0: the pre-activation is a constant <= 0."""
    return (
        f"{_units(causes, site)}: incoming weights {causes.parameter} have norm {_span(causes.values)} "
        "(≈0 next to the layer's other units) and the bias does not lift them above zero",
        "re-initialise them (He / the layer's default initialiser); weights of units that stopped firing "
        "shrink to zero under L2 / weight decay with Adam (Mehta et al. 2019): use less L2 or AdamW",
    )


def input_range(causes: SiteCause, site: Site) -> tuple[str, str]:
    """RD105: the layer reads the probe directly and the probe is far from the unit scale the layer expects."""
    return (
        f"{_units(causes, site)} of the first layer are dead and the probe's RMS is {_span(causes.scales)}, "
        "far from the ~unit scale a first layer is built for: the inputs look unnormalised",
        "check preprocessing: feed inputs normalised as in training (e.g. pixel / 255, then mean/std)",
    )


def negative_weights(causes: SiteCause, site: Site) -> tuple[str, str]:
    """RD106: the incoming weights point away from the data: W·x stays below zero over the whole probe."""
    return (
        f"{_units(causes, site)}: W·x never rises above {_span(causes.reaches)} on the probe even without "
        f"the bias; {_span(100 * scale for scale in causes.scales)}% of their incoming weight is negative",
        f"weights turned away from the data are the usual trace of an update step that was too large: lower or "
        f"warm up the learning rate; recycle them, or raise their bias by {_span(causes.shifts)}",
    )


CAUSES: tuple[tuple[str, CauseText], ...] = (
    ("RD100", unknown_cause),
    ("RD101", negative_bias),
    ("RD102", norm_shift),
    ("RD103", dead_inputs),
    ("RD104", collapsed_weights),
    ("RD105", input_range),
    ("RD106", negative_weights),
)


def cause_findings(site: Site, causes: Sequence[SiteCause]) -> tuple[Finding, ...]:
    """One finding per cause code among the site's dead units, in code order."""
    by_code = {cause.code: cause for cause in causes if cause.site == site.name and cause.units}
    findings = []
    for code, text in CAUSES:
        if code in by_code:
            cause, suggestion = text(by_code[code], site)
            findings.append(Finding(code, site.name, by_code[code].units, cause, suggestion, severity(code)))
    return tuple(findings)


# -- advice (RD2xx) ------------------------------------------------------------------------------------------
def relu_on_output(site: Site) -> Finding:
    """RD201: a relu-family op computes the model's output: negative logits or targets are clipped to 0."""
    return Finding(
        "RD201",
        site.name,
        (),
        severity=severity("RD201"),
        cause=f"{site.name} ({site.op}) writes the model's output: every negative output is clipped to 0",
        suggestion="drop the nonlinearity on the last layer (logits and regression targets need negative values)",
    )


ADVICE: tuple[tuple[str, Callable[[Site], Finding]], ...] = (("RD201", relu_on_output),)


def leaky_everywhere(sites: Sequence[Site], dead: int, units: int) -> Finding:
    """RD301: the model-wide alternative, every relu site swapped to LeakyReLU(0.01), simulated on the probe."""
    dead_sites = sum(1 for s in sites if s.dead)
    return Finding(
        "RD301",
        "",
        (),
        severity=severity("RD301"),
        cause=f"{dead} of {units} units are dead across {dead_sites} site{'s' if dead_sites != 1 else ''}",
        suggestion="swap every relu site to LeakyReLU(0.01): every unit then carries gradient, "
        "at the cost of the output drift measured here",
    )


MODEL_WIDE: tuple[tuple[str, Callable[..., Finding]], ...] = (("RD301", leaky_everywhere),)


def diagnose(sites: Sequence[Site], probe: ProbeInfo, evidence: Evidence | None = None) -> tuple[Finding, ...]:
    """Every registered rule over every site, in site order; causes replace RD001 where the model was analysed."""
    evidence = evidence or Evidence()
    causes_by_site: dict[str, list[SiteCause]] = {}
    for cause in evidence.causes:  # grouped once: linear in sites, not sites x causes
        causes_by_site.setdefault(cause.site, []).append(cause)
    analysed_sites = set(evidence.analysed_sites)
    found: list[Finding] = []
    for site in sites:
        analysed = site.name in analysed_sites
        found.extend(f for code, rule in RULES if not (analysed and code == "RD001") for f in rule(site, probe))
        found.extend(cause_findings(site, causes_by_site.get(site.name, ())))
        if site.name in evidence.output_sites:
            found.append(relu_on_output(site))
    return tuple(found)
