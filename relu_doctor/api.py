"""The library entry point: ``scan(model, batches) -> Report``. No printing, no files, no exit."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence, Sized
from dataclasses import replace
from typing import Any, Protocol

import torch
from torch import nn

from ._version import __version__
from .causes import InputScale, InputScaleMeter, explain
from .confidence import probe_size_warning
from .diagnose import Evidence, constant_units, diagnose
from .errors import ObservationError, ReluDoctorError
from .gate import evaluate, summarize
from .observe import ACTIVATION_MODULES, ObservedSite, ReluObserver
from .report import ModelInfo, ProbeInfo, Report, Site, Thresholds
from .sites import build_site, site_names

Progress = Callable[[int], None]
"""Called after each batch with the number of samples in it."""


class Combiner(Protocol):
    """Chooses the batches this process observes and combines its counters after the last one."""

    def batches(self, batches: Iterable[Any]) -> Iterable[Any]:
        """The batches this process runs (a torchrun rank: its shard)."""
        ...

    def combine(self, observer: ReluObserver, samples: int, meter: InputScaleMeter) -> int:
        """Combine the observer's counters (in place) with other processes; returns the total sample count."""
        ...


def observe(
    model: nn.Module,
    batches: Iterable[Any],
    *,
    unit_dim: int | None = None,
    site_paths: tuple[str, ...] | None = None,
    progress: Progress | None = None,
    reducer: str = "auto",
    expected_batches: int | None = None,
) -> tuple[ReluObserver, int]:
    """Run every batch through ``model`` under the observer; returns it (closed) and the sample count.

    ``expected_batches`` (default: ``len(batches)`` when it has one) lets ``reducer="auto"`` judge whether
    loading the fused reducer pays off."""
    samples = 0
    if expected_batches is None and isinstance(batches, Sized):
        expected_batches = len(batches)
    with ReluObserver(
        model, unit_dim=unit_dim, site_paths=site_paths, reducer=reducer, expected_passes=expected_batches
    ) as observer:
        for batch in batches:
            _forward(observer, batch)
            size = _batch_samples(batch)
            samples += size
            if progress is not None:
                progress(size)
    if samples == 0:
        raise ObservationError("the probe yielded no batches; pass a probe with at least one sample")
    return observer, samples


def scan(
    model: nn.Module,
    batches: Iterable[Any],
    *,
    thresholds: Thresholds | None = None,
    unit_dim: int | None = None,
    site_paths: tuple[str, ...] | None = None,
    model_info: ModelInfo | None = None,
    probe_info: ProbeInfo | None = None,
    progress: Progress | None = None,
    simulate: bool = False,
    combiner: Combiner | None = None,
    reducer: str = "auto",
) -> Report:
    """Observe every relu-family call of ``model`` over ``batches`` and report dead, dying and dormant units.

    ``batches`` yields tensors (or tuples of positional inputs) already on the model's device. The model is
    left exactly as it was (training flags, buffers). Raises a :class:`~relu_doctor.errors.ReluDoctorError`
    subclass when the scan cannot be done.

    ``simulate=True`` re-runs the probe through modified versions of the model (LeakyReLU swaps, bias shifts,
    recycled units) and fills each finding's ``predicted``; it costs extra forward passes, so it is off by
    default here (the CLI turns it on). An iterator of batches is then kept in memory to be replayed.

    ``combiner`` picks the batches this process observes and combines its counters afterwards: under torchrun
    (:class:`relu_doctor.distributed.ShardedScan`) each rank observes its shard and every rank returns the
    single-process report; :class:`relu_doctor.stats_io.StatsWriter` also writes ``--save-stats``.

    ``reducer`` picks how activations are reduced: ``fused`` (the one-pass numba reducer of
    :mod:`relu_doctor.fused`), ``torch``, or ``auto``: fused once it is loaded in this process, or from the
    second batch on when numba is installed and the batches left (``len(batches)``) hold enough work to pay for
    loading it; torch otherwise. Counts and maxima are identical either way; sums may differ in the last bits.
    """
    if simulate and isinstance(batches, Iterator):
        batches = list(batches)
    meter = InputScaleMeter()
    mine = batches if combiner is None else combiner.batches(batches)
    observer, samples = observe(
        model, meter.tap(mine), unit_dim=unit_dim, site_paths=site_paths, progress=progress, reducer=reducer,
        expected_batches=len(batches) if isinstance(batches, Sized) else None,
    )
    if combiner is not None:
        samples = combiner.combine(observer, samples, meter)
    probe = probe_info or ProbeInfo("in-memory", samples, 0)
    if probe.samples != samples:
        probe = ProbeInfo(probe.source, samples, probe.batch_size, probe.path, probe.input_shape, probe.seed)
    report = build_report(
        observer.sites, observer, model, thresholds or Thresholds(), probe,
        model_info or ModelInfo("", "in-memory", None), unit_dim, input_scale=meter.result(),
    )  # fmt: skip
    if not simulate:
        return report
    from .simulate import simulate_findings

    return simulate_findings(report, model, observer.sites, batches, site_paths=site_paths)


def build_report(
    observed: Sequence[ObservedSite], observer: ReluObserver | None, model: nn.Module | None,
    thresholds: Thresholds, probe: ProbeInfo, model_info: ModelInfo, unit_dim: int | None = None,
    *, input_scale: InputScale | None = None,
) -> Report:  # fmt: skip
    """Classify observed sites, total them, diagnose and gate: everything after the forward passes.

    With the model and its observer at hand, each dead unit also gets a cause (:mod:`relu_doctor.causes`).
    """
    names = site_names(observed)
    sites = tuple(_with_constant_units(build_site(site, name, thresholds)) for site, name in zip(observed, names))
    summary = summarize(sites, thresholds)
    warnings = _warnings(observer, model, probe, len(sites))
    warnings += tuple(w for w in [probe_size_warning(probe.samples, thresholds.dying_rate)] if w)
    evidence = explain(model, sites, observed, input_scale) if model is not None and observer is not None else Evidence()
    return Report(
        tool_version=__version__, model=model_info, probe=probe, sites=sites, summary=summary,
        thresholds=thresholds, gate=evaluate(sites, summary, thresholds), findings=diagnose(sites, probe, evidence),
        warnings=warnings, other_activations=tuple(sorted(observer.other_activations.items())) if observer else (),
        unit_dim_override=unit_dim,
    )  # fmt: skip


def _with_constant_units(site: Site) -> Site:
    # build_site leaves constant_units empty; they need only the counters (alive, same value everywhere).
    return replace(site, constant_units=constant_units(site.counters, (*site.dead_units, *site.nan_units)))


def _warnings(observer: ReluObserver | None, model: nn.Module | None, probe: ProbeInfo, site_count: int) -> tuple[str, ...]:
    found: list[str] = []
    if probe.source == "synthetic":
        found.append(
            f"synthetic probe ({probe.samples} standard-normal samples, seed {probe.seed}): "
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
        path for path, module in observer.tracker.paths.items()
        if path and path not in called and not list(module.children()) and path.rpartition(".")[0] not in attention
        and (isinstance(module, ACTIVATION_MODULES) or any(True for _ in module.parameters(recurse=False)))
    ]  # fmt: skip
    if not missing:
        return []
    shown = ", ".join(missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
    return [f"{len(missing)} modules were never called by the forward pass: {shown}"]


def _forward(observer: ReluObserver, batch: Any) -> None:
    try:
        observer.run(batch)
    except ReluDoctorError:
        raise
    except Exception as exc:
        shape = tuple(batch.shape) if isinstance(batch, torch.Tensor) else type(batch).__name__
        message = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise ObservationError(
            f"the forward pass failed on a probe batch of shape {shape}: {type(exc).__name__}: {message}; "
            "check --probe / --input-shape against what the model expects"
        ) from exc


def _batch_samples(batch: Any) -> int:
    first = batch[0] if isinstance(batch, (tuple, list)) else batch
    return int(first.shape[0]) if isinstance(first, torch.Tensor) and first.dim() > 0 else 1
