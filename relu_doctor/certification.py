"""``certify(model, domain) -> Certification``: per-site bounds of every relu's pre-activation over an input domain.

A unit is **certified dead** when its pre-activation is <= 0 at every position for every input in the domain
(then it can never fire there), **certified active** when it is > 0 everywhere. Bounds are computed in float64
and a claim needs a margin of :data:`TOLERANCE` x (1 + |bounds|) beyond 0, so float32 rounding in the model's
own forward pass cannot turn a claim false near the threshold. Nothing here prints.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .analysis.build import with_gate
from .analysis.gate import evaluate
from .analysis.sites import site_names
from .engine.bounds.domain import DomainSpec, parse_domain
from .engine.bounds.propagate import BoundPass, SitePass
from .engine.bounds.relax import DEFAULT_WORK_LIMIT, Refined, Relaxation
from .engine.bounds.rules import Interval, RuleTable, default_rules
from .engine.model_state import restored_model_state
from .engine.observe import ObservedSite, ReluObserver
from .engine.site_keys import SiteKey
from .errors import CertifyError, ReluDoctorError
from .report import Certification, CertifiedSite, Report

METHODS = ("interval", "linear")
"""Interval bound propagation, then the linear relaxation (back-substitution)."""

TOLERANCE = 1e-5
"""Relative margin a bound must clear 0 by before a unit is certified (see the module docstring); a half-precision
model gets 10x its dtype's epsilon instead (1e-2 for float16, 8e-2 for bfloat16)."""


@dataclass(frozen=True)
class Box:
    """A per-feature box of inputs: ``lo <= x <= hi`` elementwise, for one sample (no batch axis)."""

    lo: torch.Tensor
    """Lower bound of every input feature."""
    hi: torch.Tensor
    """Upper bound of every input feature."""
    spec: str = "custom"
    """How the user named it (probe, box:0,1, file:PATH)."""
    description: str = "a per-feature box"
    """What it is, in words."""

    def __post_init__(self) -> None:
        if self.lo.shape != self.hi.shape:
            raise CertifyError(f"domain bounds differ in shape: lo {tuple(self.lo.shape)}, hi {tuple(self.hi.shape)}")
        if not (bool(torch.isfinite(self.lo).all()) and bool(torch.isfinite(self.hi).all())):
            raise CertifyError(f"domain {self.spec}: every bound must be a finite number")
        if bool((self.lo > self.hi).any()):
            raise CertifyError(f"domain {self.spec}: some lower bounds exceed their upper bounds")


def box_from_spec(
    spec: DomainSpec | str, *, input_shape: Sequence[int] | None = None, samples: Iterable[torch.Tensor] | None = None
) -> Box:
    """The box a ``--domain`` names: ``probe`` needs ``samples`` (batches), ``box:LO,HI`` the ``input_shape``."""
    spec = parse_domain(spec) if isinstance(spec, str) else spec
    if spec.kind == "probe":
        if samples is None:
            raise CertifyError(f"--domain {spec.text} needs probe samples")
        return _probe_box(spec, samples)
    if spec.kind == "box":
        if input_shape is None:
            raise CertifyError(f"--domain {spec.text} needs the input shape of one sample")
        shape = tuple(int(s) for s in input_shape)
        lo, hi = torch.full(shape, spec.low, dtype=torch.float64), torch.full(shape, spec.high, dtype=torch.float64)
        return Box(lo, hi, spec.text, f"every input feature in [{spec.low:g}, {spec.high:g}]")
    return _file_box(spec, input_shape)


def _probe_box(spec: DomainSpec, samples: Iterable[torch.Tensor]) -> Box:
    lo = hi = None
    count = 0
    for batch in samples:
        if not isinstance(batch, torch.Tensor) or batch.dim() < 1 or not batch.is_floating_point():
            raise CertifyError("--domain probe needs a probe of floating-point tensors")
        batch = batch.detach().to("cpu", torch.float64)
        low, high = batch.amin(0), batch.amax(0)
        lo = low if lo is None else torch.minimum(lo, low)
        hi = high if hi is None else torch.maximum(hi, high)
        count += int(batch.shape[0])
    if lo is None or hi is None:
        raise CertifyError("--domain probe: the probe has no samples")
    widened = f", widened by {spec.margin:g} on each side" if spec.margin else ""
    return Box(lo - spec.margin, hi + spec.margin, spec.text, f"per-feature min/max of {count} probe samples{widened}")


def _file_box(spec: DomainSpec, input_shape: Sequence[int] | None) -> Box:
    import numpy as np

    path = Path(spec.path or "")
    if not path.is_file():
        raise CertifyError(f"--domain {spec.text}: {str(path)!r} is not a file")
    try:
        loaded = np.load(path, allow_pickle=False)
        try:
            lo, hi = _bounds_from(loaded, spec)
        finally:
            if hasattr(loaded, "close"):
                loaded.close()
    except CertifyError:
        raise
    except Exception as exc:
        raise CertifyError(f"--domain {spec.text}: cannot read it ({type(exc).__name__}: {str(exc)[:200]})") from exc
    if input_shape is not None and tuple(lo.shape) != tuple(input_shape):
        raise CertifyError(
            f"--domain {spec.text}: bounds of shape {tuple(lo.shape)} do not fit inputs of shape {tuple(input_shape)}"
        )
    return Box(lo, hi, spec.text, f"per-feature box from {path.name}")


def _bounds_from(loaded: Any, spec: DomainSpec) -> tuple[torch.Tensor, torch.Tensor]:
    import numpy as np

    if isinstance(loaded, np.ndarray):
        if loaded.ndim < 1 or loaded.shape[0] != 2:
            raise CertifyError(
                f"--domain {spec.text}: a .npy box needs shape (2, *sample shape), lower bounds first; got {loaded.shape}"
            )
        lo, hi = loaded[0], loaded[1]
    else:
        if "lo" not in loaded or "hi" not in loaded:
            raise CertifyError(
                f"--domain {spec.text}: a .npz box needs arrays 'lo' and 'hi'; it has {sorted(loaded.files)}"
            )
        lo, hi = loaded["lo"], loaded["hi"]
    if lo.shape != hi.shape or lo.dtype.kind not in "fiu" or hi.dtype.kind not in "fiu":
        raise CertifyError(f"--domain {spec.text}: lo and hi must be numeric arrays of one shape")
    return torch.from_numpy(np.asarray(lo, dtype=np.float64)), torch.from_numpy(np.asarray(hi, dtype=np.float64))


def certify(
    model: nn.Module,
    domain: Box | str,
    *,
    input_shape: Sequence[int] | None = None,
    samples: Iterable[torch.Tensor] | None = None,
    methods: Sequence[str] = METHODS,
    unit_dim: int | None = None,
    site_paths: tuple[str, ...] | None = None,
    work_limit: int = DEFAULT_WORK_LIMIT,
    rules: RuleTable | None = None,
) -> Certification:
    """Bound every relu site's pre-activation of ``model`` over ``domain`` and certify dead / always-active units.

    ``domain`` is a :class:`Box` or a spec (``box:0,1`` with ``input_shape``; ``probe`` with ``samples``, an
    iterable of batches; ``file:PATH``). ``methods`` is ``("interval",)`` or ``("interval", "linear")``; the
    relaxation skips a site whose work (undecided neurons x values before it) exceeds ``work_limit`` and says so
    in that site's notes. Sites are named exactly as :func:`relu_doctor.scan` names them. The model (its
    single floating-point input) is left exactly as it was.
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown or "interval" not in methods:
        raise CertifyError(f"methods must be ('interval',) or ('interval', 'linear'), got {tuple(methods)!r}")
    box = domain if isinstance(domain, Box) else box_from_spec(domain, input_shape=input_shape, samples=samples)
    centre, bounds = _batched(model, box)
    observed, names, forward_seconds = _observed_sites(model, centre, unit_dim, site_paths)
    started = time.perf_counter()
    bound_pass = BoundPass(model, rules or default_rules(), site_paths, record_graph="linear" in methods)
    _run(bound_pass, centre, bounds)
    seconds = [("forward", forward_seconds), ("interval", time.perf_counter() - started)]
    refined: dict[SiteKey, Refined] = {}
    if "linear" in methods:
        started = time.perf_counter()
        refined = _relax(bound_pass, observed, work_limit)
        seconds.append(("linear", time.perf_counter() - started))
    margin = max(TOLERANCE, 10 * torch.finfo(centre.dtype).eps)
    sites = tuple(
        _certified_site(name, site, bound_pass.sites[key], refined.get(key), margin)
        for site, name in zip(observed, names)
        if (key := site.key) in bound_pass.sites
    )
    return Certification(
        domain=box.spec,
        description=_describe(box),
        input_shape=tuple(box.lo.shape),
        methods=tuple(methods),
        sites=sites,
        seconds=tuple(seconds),
        notes=tuple(bound_pass.notes),
    )


def with_certification(report: Report, certification: Certification) -> Report:
    """The report carrying ``certification``, its gate re-evaluated (``gate_on = "certified"`` counts it)."""
    gate = evaluate(report.sites, report.summary, report.thresholds, certification)
    return with_gate(replace(report, certification=certification), gate)


def _describe(box: Box) -> str:
    return f"{box.description} (inputs from {float(box.lo.min()):.4g} to {float(box.hi.max()):.4g})"


def _batched(model: nn.Module, box: Box) -> tuple[torch.Tensor, Interval]:
    """The centre as a batch of one in the model's dtype and device, and the box with a batch axis (float64)."""
    reference = next((p for p in model.parameters() if p.is_floating_point()), None)
    dtype = reference.dtype if reference is not None else torch.float32
    device = reference.device if reference is not None else torch.device("cpu")
    lo, hi = box.lo.to(device, torch.float64).unsqueeze(0), box.hi.to(device, torch.float64).unsqueeze(0)
    return ((lo + hi) / 2).to(dtype), Interval(lo, hi)


def _observed_sites(
    model: nn.Module, centre: torch.Tensor, unit_dim: int | None, site_paths: tuple[str, ...] | None
) -> tuple[list[ObservedSite], list[str], float]:
    """The scan's sites (keys, unit axes, names) from one observed pass of the centre, and a plain forward's time."""
    with restored_model_state(model, {}), torch.inference_mode():
        started = time.perf_counter()
        try:
            model(centre)
        except Exception as exc:
            raise CertifyError(
                f"the forward pass failed on the domain's centre {tuple(centre.shape)}: {type(exc).__name__}: {str(exc)[:200]}"
            ) from exc
        forward_seconds = time.perf_counter() - started
    with ReluObserver(model, unit_dim=unit_dim, site_paths=site_paths, reducer="torch") as observer:
        observer.run(centre)
    return observer.sites, site_names(observer.sites), forward_seconds


def _run(bound_pass: BoundPass, centre: torch.Tensor, bounds: Interval) -> None:
    try:
        bound_pass.run(centre, bounds)
    except ReluDoctorError:
        raise
    except Exception as exc:
        raise CertifyError(f"bound propagation failed: {type(exc).__name__}: {str(exc)[:200]}") from exc


def _relax(bound_pass: BoundPass, observed: list[ObservedSite], work_limit: int) -> dict[SiteKey, Refined]:
    relaxation = Relaxation(bound_pass.graph, work_limit)
    refined = {}
    for site in observed:
        key = site.key
        found = bound_pass.sites.get(key)
        if found is not None and found.node is not None and found.pre is not None:
            refined[key] = relaxation.refine(found.node)
    return refined


def _certified_site(
    name: str, site: ObservedSite, found: SitePass, refined: Refined | None, margin: float
) -> CertifiedSite:
    if found.pre is None:
        unbounded = (math.inf,) * site.counters.units
        return CertifiedSite(
            name,
            site.counters.units,
            unbounded,
            tuple(-v for v in unbounded),
            unbounded,
            (),
            (),
            (),
            (),
            False,
            found.notes,
        )
    interval_lo, interval_hi = _per_unit(found.pre, site.unit_axis)
    lo, hi = interval_lo, interval_hi
    notes = list(found.notes)
    if refined is not None:
        lo, hi = _per_unit(refined.interval, site.unit_axis)
        if refined.skipped:
            notes.append(f"linear relaxation skipped: {refined.skipped}")
    dead = [u for u in range(len(hi)) if _below_zero(hi[u], lo[u], margin)]
    active = [u for u in range(len(lo)) if _below_zero(-lo[u], -hi[u], margin)]
    return CertifiedSite(
        name=name,
        units=len(hi),
        upper_bound=tuple(hi),
        lower_bound=tuple(lo),
        interval_upper_bound=tuple(interval_hi),
        certified_dead=tuple(dead),
        dead_method=tuple(
            "interval" if _below_zero(interval_hi[u], interval_lo[u], margin) else "linear" for u in dead
        ),
        certified_active=tuple(active),
        active_method=tuple(
            "interval" if _below_zero(-interval_lo[u], -interval_hi[u], margin) else "linear" for u in active
        ),
        relaxed=refined is not None and refined.skipped is None,
        notes=tuple(notes),
    )


def _per_unit(interval: Interval, unit_axis: int) -> tuple[list[float], list[float]]:
    """(lowest, highest) bound of each unit over its positions, the unit axis as the observer chose it."""
    lo, hi = interval.lo, interval.hi
    if lo.dim() < 2:
        lo, hi = lo.reshape(1, -1), hi.reshape(1, -1)
    other = [d for d in range(lo.dim()) if d != unit_axis]
    return lo.amin(dim=other).tolist(), hi.amax(dim=other).tolist()


def _below_zero(bound: float, other: float, margin: float) -> bool:
    """bound <= 0 with the float margin: a claim needs bound < -margin * (1 + |bound| + |other|)."""
    if not math.isfinite(bound):
        return False
    scale = 1.0 + abs(bound) + (abs(other) if math.isfinite(other) else 0.0)
    return bound < -margin * scale
