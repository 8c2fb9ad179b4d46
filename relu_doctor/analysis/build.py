"""From observed sites to a Report: classify, total, explain causes, diagnose and gate (no forward passes)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from torch import nn

from .._version import __version__
from ..activations import ACTIVATION_MODULES
from ..engine.observe import ObservedSite, ReluObserver
from ..report import GateResult, ModelInfo, ProbeInfo, Report, Site, SiteRecord, Thresholds
from .causes import InputScale, explain
from .confidence import dead_rate_bound_95, dying_intervals, probe_size_warning, samples_needed
from .diagnose import Evidence, constant_units, diagnose, is_constant_output
from .gate import evaluate, is_ignored, site_limit, site_status, summarize
from .sites import build_site, site_names


def build_report(
    observed: Sequence[ObservedSite],
    observer: ReluObserver | None,
    model: nn.Module | None,
    thresholds: Thresholds,
    probe: ProbeInfo,
    model_info: ModelInfo,
    unit_dim: int | None = None,
    *,
    input_scale: InputScale | None = None,
) -> Report:
    """Classify observed sites, total them, diagnose and gate: everything after the forward passes.

    With the model and its observer at hand, each dead unit also gets a cause (:mod:`relu_doctor.causes`).
    """
    records = [site.record() for site in observed]
    return _report(records, thresholds, probe, model_info, unit_dim, observed, observer, model, input_scale)


def report_from_records(
    records: Sequence[SiteRecord], thresholds: Thresholds, probe: ProbeInfo, model_info: ModelInfo, unit_dim: int | None
) -> Report:
    """A report from sites as saved (stats files, merged ones): classified, totalled, diagnosed and gated. Without
    the model there are no per-unit causes and no observer warnings."""
    return _report(records, thresholds, probe, model_info, unit_dim, (), None, None, None)


def judged_sites(records: Sequence[SiteRecord], thresholds: Thresholds) -> tuple[Site, ...]:
    """The report's sites of ``records`` (in call order), named and classified, before the gate's verdicts."""
    names = site_names(records)
    return tuple(_with_constant_units(build_site(record, name, thresholds)) for record, name in zip(records, names))


def _report(
    records: Sequence[SiteRecord],
    thresholds: Thresholds,
    probe: ProbeInfo,
    model_info: ModelInfo,
    unit_dim: int | None,
    observed: Sequence[ObservedSite],
    observer: ReluObserver | None,
    model: nn.Module | None,
    input_scale: InputScale | None,
) -> Report:
    sites = judged_sites(records, thresholds)
    summary = summarize(sites, thresholds)
    gate = evaluate(sites, summary, thresholds)
    sites = tuple(_with_verdicts(site, thresholds, gate) for site in sites)
    warnings = _warnings(observer, model, probe, len(sites))
    warnings += tuple(w for w in [probe_size_warning(probe.samples, thresholds.dying_rate)] if w)
    evidence = (
        explain(model, sites, observed, input_scale) if model is not None and observer is not None else Evidence()
    )
    return Report(
        tool_version=__version__,
        model=model_info,
        probe=probe,
        sites=sites,
        summary=summary,
        thresholds=thresholds,
        gate=gate,
        findings=diagnose(sites, probe, evidence),
        warnings=warnings,
        other_activations=tuple(sorted(observer.other_activations.items())) if observer else (),
        unit_dim_override=unit_dim,
        samples_needed_for_dying_rate=samples_needed(thresholds.dying_rate) if thresholds.dying_rate > 0 else None,
    )


def _with_verdicts(site: Site, thresholds: Thresholds, gate: GateResult) -> Site:
    """The site with every verdict renderers show, computed here once (renderers never compute)."""
    return replace(
        site,
        status=site_status(site, gate),
        ignored=is_ignored(site.name, thresholds),
        limit=site_limit(site.name, thresholds),
        constant_output=is_constant_output(site),
        dead_rate_bound_95=dead_rate_bound_95(site.counters.samples),
        dying_intervals=dying_intervals(site),
    )


def _with_constant_units(site: Site) -> Site:
    # build_site leaves constant_units empty; they need only the counters (alive, same value everywhere).
    return replace(site, constant_units=constant_units(site.counters, (*site.dead_units, *site.nan_units)))


def _warnings(
    observer: ReluObserver | None, model: nn.Module | None, probe: ProbeInfo, site_count: int
) -> tuple[str, ...]:
    found: list[str] = []
    if probe.source == "synthetic":
        found.append(
            f"synthetic probe ({probe.samples} standard-normal samples{_shape_note(probe)}, seed {probe.seed}): "
            "real data gives truer answers; pass --probe"
        )
    if observer is not None:
        found.extend(observer.warnings)
        if model is not None:
            found.extend(_never_called(observer, model))
    if site_count == 0:
        found.append("no relu-family call ran in the forward pass: nothing to count")
    return tuple(found)


def _never_called(observer: ReluObserver, model: nn.Module) -> list[str]:
    called = observer.tracker.ever_called
    # MultiheadAttention reads out_proj's weights directly, never calling it: not a blind spot.
    attention = {path for path, module in observer.tracker.paths.items() if isinstance(module, nn.MultiheadAttention)}
    missing = [
        path
        for path, module in observer.tracker.paths.items()
        if path
        and path not in called
        and not list(module.children())
        and path.rpartition(".")[0] not in attention
        and (isinstance(module, ACTIVATION_MODULES) or any(True for _ in module.parameters(recurse=False)))
    ]
    if not missing:
        return []
    shown = ", ".join(missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
    return [f"{len(missing)} modules were never called by the forward pass: {shown}"]


def _shape_note(probe: ProbeInfo) -> str:
    """of shape 3x32x32, inferred from the first layer conv1 (Conv2d)": which sample shape a synthetic probe used."""
    if not probe.input_shape:
        return ""
    text = "x".join(map(str, probe.input_shape))
    if probe.shape_source is None or probe.shape_source == "--input-shape":
        return f" of shape {text}"
    return f" of shape {text}, inferred from {probe.shape_source}"


def with_gate(report: Report, gate: GateResult) -> Report:
    """``report`` judged by another gate result (e.g. on certified-dead units): the gate and every site's status."""
    sites = tuple(replace(site, status=site_status(site, gate)) for site in report.sites)
    return replace(report, gate=gate, sites=sites)
