"""The records that cross module boundaries: what a scan found, as frozen, torch-free data.

Renderers, the gate, config and the CLI read these; none of them imports torch.
Per-unit numbers are plain tuples indexed by unit (channel or feature) number.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field, replace
from pathlib import PurePath
from typing import Any

from .settings import DEFAULT_DYING_RATE, DEFAULT_TAU

SCHEMA_VERSION = 2
"""Version of the JSON report's schema; 2: a finding's ``predicted`` is a list of prediction objects."""


@dataclass(frozen=True)
class UnitCounters:
    """Raw per-unit counters of one site, merged over every probe batch (exact for counts and max)."""

    positive: tuple[int, ...]
    """How many measured positions had a pre-activation > 0, per unit."""
    positions: int
    """How many positions each unit was measured on (samples x spatial positions or tokens)."""
    samples_fired: tuple[int, ...]
    """In how many probe samples the unit fired at least once (samples are the independent trials)."""
    samples: int
    """How many probe samples reached this site."""
    max_preactivation: tuple[float, ...]
    """Largest finite pre-activation seen, per unit (-inf if none was finite)."""
    activation_sum: tuple[float, ...]
    """Sum of the activation (the op's output) over all finite positions, per unit."""
    nan: tuple[int, ...]
    """How many positions had a NaN pre-activation, per unit."""
    inf: tuple[int, ...]
    """How many positions had an infinite pre-activation, per unit."""

    def merged(self, other: UnitCounters) -> UnitCounters:
        """These counters and ``other``'s (the same site on another probe shard) as one: counts and sums added,
        maxima maxed, as the engine merges batches and ranks (exact: sums are float64 on both sides)."""
        if len(other.positive) != len(self.positive):
            raise ValueError(f"cannot merge a site of {len(other.positive)} units into one of {len(self.positive)}")
        return UnitCounters(
            positive=_added(self.positive, other.positive),
            positions=self.positions + other.positions,
            samples_fired=_added(self.samples_fired, other.samples_fired),
            samples=self.samples + other.samples,
            max_preactivation=tuple(map(max, self.max_preactivation, other.max_preactivation)),
            activation_sum=_added(self.activation_sum, other.activation_sum),
            nan=_added(self.nan, other.nan),
            inf=_added(self.inf, other.inf),
        )


def _added(ours: tuple[Any, ...], theirs: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(a + b for a, b in zip(ours, theirs))


@dataclass(frozen=True)
class RateSummary:
    """Minimum, median and mean of the per-unit firing rate of one site."""

    min: float
    """Lowest firing rate of any unit."""
    median: float
    """Median firing rate over units."""
    mean: float
    """Mean firing rate over units."""


@dataclass(frozen=True)
class Producer:
    """The layer whose output reaches a site's input, followed through the forward pass."""

    module_path: str
    """State-dict path of the Linear/Conv-style module that computed the pre-activation."""
    op: str
    """The aten op it ran (linear, conv2d, addmm, ...)."""
    norm_path: str | None = None
    """State-dict path of a BatchNorm between the producer and the relu, if there is one."""
    elementwise_only: bool = True
    """True when only per-unit (elementwise, dropout, norm) ops lie between producer and relu."""
    input_sites: tuple[int, ...] = ()
    """Indices of the sites whose output (followed through unit-preserving ops) the producer read, in call order."""


@dataclass(frozen=True)
class RateInterval:
    """A dying unit's firing rate with a Wilson 95% interval."""

    unit: int
    """Unit (channel or feature) number within its site."""
    rate: float
    """Share of its measured positions where the pre-activation was > 0 (the rate compared with --dying-rate)."""
    samples_fired: int
    """Probe samples in which the unit fired at least once."""
    low: float
    """Lower end of the 95% Wilson interval of ``rate``, with the site's samples as trials."""
    high: float
    """Upper end of the 95% Wilson interval of ``rate``, with the site's samples as trials."""


SiteKey = tuple[str, int, int]
"""Which relu op of a forward pass a site is: (owner module path, call of the owner in the pass, relu op of that
call, each from 1). It is the same in every pass, rank and stats file: the observer keys its sites with it, the fix
simulations key their re-runs with it, and :attr:`Site.key` gives it back."""


@dataclass(frozen=True)
class SiteIdentity:
    """What makes two observations (torchrun ranks, probe shards, stats files) one site: the same relu op, with
    as many units on the same axis."""

    key: SiteKey
    """Owner path, call of the owner, relu op of that call."""
    op: str
    """The aten op as observed (:attr:`SiteRecord.op`)."""
    member: str
    """The relu-family member it runs (:attr:`SiteRecord.member`)."""
    units: int
    """Number of units."""
    unit_axis: int
    """Axis of the activation that indexes units."""


@dataclass(frozen=True)
class SiteRecord:
    """A site as a scan observed it, before any threshold judged it: what a stats file stores, and what a
    report's :class:`Site` is built from. Fields have the Site's names and meanings."""

    index: int
    """Position in call order, from 0."""
    module_path: str
    """State-dict path of the module whose forward made the call (the root is "")."""
    call_index: int
    """Which call of that module this is, from 1."""
    ordinal: int
    """Which relu op of that call this is, from 1."""
    op: str
    """The aten op as observed (``hardtanh`` for relu6; :attr:`Site.op` shows it as users know it)."""
    member: str
    """The relu-family member it runs (a name in the activations table: its display name, cap, ...)."""
    kind: str
    """"module" when the op ran inside an activation module (nn.ReLU, ...), else "functional"."""
    unit_axis: int
    """Axis of the activation tensor that indexes units."""
    layout: str
    """How the unit axis was chosen: channel-first, feature-last, rank, or override."""
    activation_shape: tuple[int, ...]
    """Shape of the activation in the first batch that reached the site."""
    counters: UnitCounters
    """The raw counters."""
    producer: Producer | None = None
    """The layer computing this site's input, when the forward pass shows one."""

    @property
    def key(self) -> SiteKey:
        """Which relu op of the forward pass this is."""
        return (self.module_path, self.call_index, self.ordinal)

    @property
    def identity(self) -> SiteIdentity:
        """What another run's record must equal to be merged with this one."""
        return SiteIdentity(self.key, self.op, self.member, len(self.counters.positive), self.unit_axis)

    def merged(self, other: SiteRecord) -> SiteRecord:
        """This record with ``other``'s counters added (the same site, another probe shard)."""
        return replace(self, counters=self.counters.merged(other.counters))


@dataclass(frozen=True)
class Site:
    """One relu-family call in the forward pass and what its units did on the probe."""

    index: int
    """Position in call order, from 0."""
    name: str
    """Unique display name: module path, ``#k`` for the k-th call of a reused module, ``:op`` for functional calls."""
    module_path: str
    """State-dict path of the module whose forward made the call (the root is "")."""
    call_index: int
    """Which call of that module this is, from 1."""
    ordinal: int
    """Which relu op of that call this is, from 1 (a functional site's ``#k`` when a call makes several)."""
    op: str
    """The relu-family operation as users know it: relu, relu6, threshold; a trailing ``_`` means in-place."""
    kind: str
    """"module" when the op ran inside an activation module (nn.ReLU, ...), else "functional"."""
    unit_axis: int
    """Axis of the activation tensor that indexes units."""
    layout: str
    """How the unit axis was chosen: channel-first, feature-last, rank, or override."""
    activation_shape: tuple[int, ...]
    """Shape of the activation in the first batch that reached the site."""
    units: int
    """Number of units (channels or features)."""
    counters: UnitCounters
    """The raw counters everything else here is derived from."""
    dead_units: tuple[int, ...]
    """Units that never had a pre-activation > 0 on any position of the probe (NaN units excluded)."""
    dying_units: tuple[int, ...]
    """Units that fired, but on fewer than the dying rate of their positions."""
    nan_units: tuple[int, ...]
    """Units with at least one NaN or infinite pre-activation; neither dead nor alive."""
    firing_rate: RateSummary
    """Summary of positive / positions over units."""
    sparsity: float
    """Share of all measured positions where the activation was zero (not > 0)."""
    dead_max_preactivation: tuple[float, float] | None
    """(lowest, highest) max pre-activation among the dead units; None if there are none."""
    producer: Producer | None = None
    """The layer computing this site's input, when the forward pass shows one."""
    dormant_units: tuple[int, ...] = ()
    """tau-dormant units (ReDo): mean |activation| / the site's mean of that <= tau."""
    constant_units: tuple[int, ...] = ()
    """Alive units whose output never varied over the probe (e.g. a BatchNorm with gamma ~ 0)."""
    status: str = "ok"
    """One word: FAIL (breaks its threshold), dead (all units), nan, warn (some dead), ok."""
    ignored: bool = False
    """Left out of the gate and the totals (matches an ``ignore`` glob)."""
    limit: float | None = None
    """Its dead-fraction limit: the last matching site override, else max-layer-dead-fraction; None: no limit."""
    constant_output: bool = False
    """Every unit is dead or constant: the site's output does not depend on the input."""
    dead_rate_bound_95: float = math.nan
    """95% upper bound on the firing rate of a unit that never fired on this site's samples."""
    dying_intervals: tuple[RateInterval, ...] = ()
    """A Wilson 95% interval for each dying unit's rate (trials: the site's samples)."""

    @property
    def key(self) -> SiteKey:
        """Which relu op of the forward pass this is (:data:`SiteKey`)."""
        return (self.module_path, self.call_index, self.ordinal)

    @property
    def dead(self) -> int:
        """Number of dead units."""
        return len(self.dead_units)

    @property
    def dying(self) -> int:
        """Number of dying units."""
        return len(self.dying_units)

    @property
    def dead_fraction(self) -> float:
        """Dead units / units (0 for a site without units)."""
        return self.dead / self.units if self.units else 0.0

    def firing_rates(self) -> tuple[float, ...]:
        """Per-unit firing rate: positive / positions."""
        n = self.counters.positions
        return tuple(p / n if n else 0.0 for p in self.counters.positive)


@dataclass(frozen=True)
class ModelInfo:
    """Where the model came from."""

    path: str
    """The path given by the user ("" for a model passed in from Python)."""
    format: str
    """Checkpoint format as sniffed from content (state-dict, safetensors, ...), or "in-memory"."""
    sha256: str | None
    """sha256 of the file (or of the sorted file hashes of a directory); None in memory."""
    arch: str | None = None
    """The --arch spec used to build the module, if any."""
    notes: tuple[str, ...] = ()
    """What the loader did that the user should know (prefix stripped, key chosen, ...)."""


@dataclass(frozen=True)
class ProbeInfo:
    """What was fed through the model."""

    source: str
    """"file" or "synthetic"."""
    samples: int
    """Number of probe samples that went through the model."""
    batch_size: int
    """Samples per forward pass."""
    path: str | None = None
    """The probe file, for a file probe."""
    input_shape: tuple[int, ...] = ()
    """Shape of one sample (without the batch axis)."""
    seed: int | None = None
    """Seed of a synthetic probe."""
    shape_source: str | None = None
    """Where a synthetic probe's sample shape came from: --input-shape, the exported program, or the first layer."""

    @property
    def dead_rate_bound_95(self) -> float:
        """Exact 95% upper bound on the firing probability of a unit that never fired in n samples."""
        return 1.0 - 0.05 ** (1.0 / self.samples) if self.samples else 1.0


@dataclass(frozen=True)
class Thresholds:
    """Gate settings and the classification parameters used for this report."""

    dying_rate: float = DEFAULT_DYING_RATE
    """A live unit firing on fewer than this share of its positions is dying."""
    tau: float = DEFAULT_TAU
    """ReDo dormancy threshold."""
    max_dead_fraction: float | None = None
    """Fail when the whole model's dead fraction exceeds this."""
    max_layer_dead_fraction: float | None = None
    """Fail when any one site's dead fraction exceeds this."""
    site_overrides: tuple[tuple[str, float], ...] = ()
    """(glob, max_layer_dead_fraction) pairs that replace the per-site limit for matching sites."""
    ignore: tuple[str, ...] = ()
    """Globs of site names left out of the gate and the totals."""
    gate_on: str = "probe"
    """What the dead-fraction limits count: units dead on the probe, or units certified dead (``certified``)."""


@dataclass(frozen=True)
class Summary:
    """Totals over every site."""

    sites: int
    """Number of sites."""
    units: int
    """Units over all sites."""
    dead: int
    """Dead units over all sites."""
    dying: int
    """Dying units over all sites."""
    nan_units: int
    """Units with NaN/Inf pre-activations over all sites."""
    dormant: int = 0
    """tau-dormant units over all sites."""

    @property
    def dead_fraction(self) -> float:
        """Dead units / units over the whole model."""
        return self.dead / self.units if self.units else 0.0


@dataclass(frozen=True)
class Prediction:
    """What one suggested fix did, measured by re-running the probe's first samples through the modified model."""

    fix: str
    """Which fix: ``leaky``, ``bias_shift`` or ``recycle`` (:data:`relu_doctor.codes.FIXES`)."""
    scope: str
    """``site``: the finding's site alone was changed (LeakyReLU here); ``model``: the whole fix as ``relu-doctor
    fix`` applies it (every planned site; LeakyReLU everywhere)."""
    output_drift: float
    """Relative L2 change of the model's output, ||y' - y|| / ||y|| over the simulated samples."""
    argmax_changed: float | None
    """Share of the simulated samples whose argmax changed; None when the output is not a (N, C >= 2) classifier's."""
    newly_dead: int
    """Units of the relu sites left in place that fired on the unmodified model and never fire with the fix."""
    revived: int | None
    """How many of the finding's units fired with the fix; None for a LeakyReLU swap, which leaves no dead unit."""
    targeted: int
    """How many units the finding names (what ``revived`` is out of)."""
    units_with_gradient_before: int
    """Units of all relu sites that fired on the unmodified model (the ones a relu lets gradient through)."""
    units_with_gradient: int
    """The same with the fix: units that fired, plus every unit of a swapped site (a LeakyReLU passes gradient)."""
    simulated_samples: int
    """On how many samples it was measured: the probe's first ones (``--simulate-samples``)."""
    forward_passes: int
    """Forward passes over those samples that the fix took (a recycle: one per round of re-drawn weights)."""


@dataclass(frozen=True)
class Finding:
    """A diagnosis: what is wrong where, why, and what to do, with a stable code."""

    code: str
    """Stable code, RD### (see README)."""
    site: str
    """Site name ("" for a model-wide finding)."""
    units: tuple[int, ...]
    """Units concerned."""
    cause: str
    """Why, in one sentence with numbers."""
    suggestion: str
    """What to do, in one sentence with numbers."""
    severity: str = "warning"
    """"error" (a threshold broken), "warning" or "note"."""
    predicted: tuple[Prediction, ...] = ()
    """Simulated effects of the suggested fixes, each measured on the probe's first samples (empty: none ran)."""

    def prediction(self, fix: str) -> Prediction | None:
        """The simulated effect of ``fix`` (``leaky``, ``bias_shift``, ``recycle``); None when it was not simulated."""
        return next((p for p in self.predicted if p.fix == fix), None)


@dataclass(frozen=True)
class Violation:
    """One exceeded threshold (or, under --strict, one warning)."""

    text: str
    """The line shown to users, e.g. ``site fc1: 3 of 8 units dead (37.5%) > max-layer-dead-fraction 0.2``."""
    site: str = ""
    """The site it concerns; "" for a model-wide one."""

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class GateResult:
    """The outcome of checking a report against its thresholds."""

    passed: bool
    """True when no threshold is exceeded."""
    violations: tuple[Violation, ...] = ()
    """One record per exceeded threshold."""
    failing_sites: tuple[str, ...] = ()
    """Names of the sites whose dead fraction exceeds their limit."""

    @property
    def exit_code(self) -> int:
        """0 when passed, 1 when a threshold is exceeded."""
        return 0 if self.passed else 1


@dataclass(frozen=True)
class Report:
    """Everything a scan found; the one value renderers and the gate work from."""

    tool_version: str
    """relu-doctor version that made the report."""
    model: ModelInfo
    """Where the model came from."""
    probe: ProbeInfo
    """What went through it."""
    sites: tuple[Site, ...]
    """Every relu-family call, in call order."""
    summary: Summary
    """Totals over the sites not ignored."""
    thresholds: Thresholds
    """The classification and gate settings used."""
    gate: GateResult
    """Pass or fail against the thresholds."""
    findings: tuple[Finding, ...] = ()
    """Diagnoses with stable codes."""
    warnings: tuple[str, ...] = ()
    """Blind spots and caveats: synthetic probe, modules never called, relu-like ops not counted, ..."""
    other_activations: tuple[tuple[str, int], ...] = ()
    """Activations seen that are not relu sites (op, calls), e.g. (gelu, 12)."""
    unit_dim_override: int | None = None
    """--unit-dim, when the user forced the unit axis."""
    certification: Certification | None = None
    """Bounds proved over a whole input domain (--certify), or None when not asked for."""
    schema_version: int = SCHEMA_VERSION
    """Version of the JSON schema this report renders to."""
    samples_needed_for_dying_rate: int | None = None
    """Probe samples needed to support "a dead unit fires on fewer than --dying-rate" (None: a rate of 0)."""
    extra: dict[str, object] = field(default_factory=dict, compare=False)
    """Room for later issues' sections (e.g. simulation results) without a schema break."""

    @property
    def exit_code(self) -> int:
        """The gate's exit code: 0 within thresholds, 1 exceeded."""
        return self.gate.exit_code

    @property
    def supports_dying_rate(self) -> bool:
        """True when the probe has :attr:`samples_needed_for_dying_rate` samples (or none are needed)."""
        needed = self.samples_needed_for_dying_rate
        return needed is None or self.probe.samples >= needed

    def model_violations(self) -> tuple[Violation, ...]:
        """Gate violations not tied to one site (the model-wide limit, --strict warnings)."""
        return tuple(v for v in self.gate.violations if not v.site)

    def site_violations(self, site: str) -> tuple[Violation, ...]:
        """Gate violations of one site."""
        return tuple(v for v in self.gate.violations if v.site == site)


@dataclass(frozen=True)
class CertifiedSite:
    """What bound propagation proved about one site's pre-activation over the whole domain."""

    name: str
    """The site's name, as in :attr:`Site.name`."""
    units: int
    """Number of units."""
    upper_bound: tuple[float, ...]
    """Per unit: the largest pre-activation possible on the domain, by the best method (inf: unbounded)."""
    lower_bound: tuple[float, ...]
    """Per unit: the smallest pre-activation possible on the domain (-inf: unbounded)."""
    interval_upper_bound: tuple[float, ...]
    """Per unit: the upper bound from interval propagation alone."""
    certified_dead: tuple[int, ...]
    """Units whose pre-activation is <= 0 on every input of the domain: they can never fire."""
    dead_method: tuple[str, ...]
    """For each certified-dead unit (same order), the method that proved it: interval or linear."""
    certified_active: tuple[int, ...]
    """Units whose pre-activation is > 0 on every input of the domain: they always fire."""
    active_method: tuple[str, ...]
    """For each certified-active unit (same order), the method that proved it."""
    relaxed: bool
    """Whether the linear relaxation re-bounded this site (it was asked for and within its size limit)."""
    notes: tuple[str, ...] = ()
    """Why bounds here may be loose or absent: ops without a bound upstream, a skipped relaxation, ..."""


@dataclass(frozen=True)
class Certification:
    """Bounds on every site over one input domain (``--certify``): proofs, unlike the probe's counts."""

    domain: str
    """The domain as given: probe, probe:MARGIN, box:LO,HI, file:PATH (or "custom" from Python)."""
    description: str
    """What the domain is, in words, with its range."""
    input_shape: tuple[int, ...]
    """Shape of one input sample the domain bounds."""
    methods: tuple[str, ...]
    """Methods run, in order: interval, then linear (the relaxation) when asked for."""
    sites: tuple[CertifiedSite, ...]
    """One record per site, in call order; sites the bound pass did not reach are absent."""
    seconds: tuple[tuple[str, float], ...] = ()
    """Wall time of one forward pass of the domain's centre, and of each method."""
    notes: tuple[str, ...] = ()
    """Ops that had no bound (their outputs unbounded) and anything else that voided claims."""

    def site(self, name: str) -> CertifiedSite | None:
        """The record of the site with this name, or None."""
        return next((s for s in self.sites if s.name == name), None)

    @property
    def certified_dead(self) -> int:
        """Certified-dead units over all sites."""
        return sum(len(s.certified_dead) for s in self.sites)

    @property
    def certified_active(self) -> int:
        """Certified-active units over all sites."""
        return sum(len(s.certified_active) for s in self.sites)


def rate_summary(rates: tuple[float, ...]) -> RateSummary:
    """Min, median and mean of a tuple of rates (all NaN for an empty site)."""
    if not rates:
        return RateSummary(math.nan, math.nan, math.nan)
    return RateSummary(min(rates), statistics.median(rates), statistics.fmean(rates))


@dataclass(frozen=True)
class SiteTrend:
    """One site followed over the checkpoints."""

    name: str
    """Site name, as in each report."""
    units: int
    """Number of units (the same in every checkpoint)."""
    dead: tuple[int | None, ...]
    """Dead units per checkpoint; None where the site did not run."""
    dead_fraction: tuple[float | None, ...]
    """Dead share per checkpoint; None where the site did not run."""
    died_at: tuple[tuple[int, int], ...]
    """(unit, checkpoint index) for each unit dead at the last checkpoint: the first index from which it stays dead."""
    revived: tuple[int, ...]
    """Units dead at some earlier checkpoint but alive at the last one."""

    def deaths_per_checkpoint(self) -> dict[int, tuple[int, ...]]:
        """Checkpoint index -> the units that died there, in index order."""
        grouped: dict[int, list[int]] = {}
        for unit, index in self.died_at:
            grouped.setdefault(index, []).append(unit)
        return {index: tuple(units) for index, units in sorted(grouped.items())}


@dataclass(frozen=True)
class TrendReport:
    """Reports of several checkpoints of one run, and each site's trend across them."""

    checkpoints: tuple[str, ...]
    """Checkpoint paths, in natural order."""
    reports: tuple[Report, ...]
    """One report per checkpoint, same order."""
    sites: tuple[SiteTrend, ...]
    """Every site seen, in the call order of the first checkpoint that has it."""

    @property
    def last(self) -> Report:
        """The last checkpoint's report: the one thresholds and exit codes apply to."""
        return self.reports[-1]

    @property
    def gate(self) -> GateResult:
        """The last checkpoint's gate result."""
        return self.last.gate

    @property
    def exit_code(self) -> int:
        """0 when the last checkpoint is within thresholds, 1 when not."""
        return self.gate.exit_code

    def labels(self) -> tuple[str, ...]:
        """Short names for the checkpoints: file names when those are unique, else the paths."""
        names = tuple(PurePath(path).name for path in self.checkpoints)
        return names if len(set(names)) == len(names) else self.checkpoints


@dataclass(frozen=True)
class ModelScan:
    """One model of a run over several (``relu-doctor scan a.pt b.pt``): its report, or why there is none."""

    path: str
    """The model path as given on the command line."""
    report: Report | None = None
    """The scan's report; None when the model could not be scanned."""
    error: str | None = None
    """Why it could not be scanned, in one line; None when it was scanned."""

    @property
    def exit_code(self) -> int:
        """The report's gate code (0 or 1), or 2 when the model could not be scanned."""
        return self.report.exit_code if self.report is not None else 2


@dataclass(frozen=True)
class ScanBatch:
    """The reports of one run over several models, in the order given (a model that could not be scanned keeps
    its place, with its error)."""

    scans: tuple[ModelScan, ...]
    """One entry per model."""

    @property
    def exit_code(self) -> int:
        """The worst of the models' codes: 2 when any could not be scanned, else 1 when any gate failed, else 0."""
        return max((scan.exit_code for scan in self.scans), default=0)
