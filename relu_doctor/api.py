"""The library's scan stage: observe the model on the batches, then build the Report. No printing, no files.

Nothing else happens here: the fix simulations are a later stage (:mod:`relu_doctor.whatif`), and
``relu_doctor.scan(..., simulate=True)`` chains the two.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence, Sized
from typing import TYPE_CHECKING, Any, Protocol, TypedDict

from torch import nn

from .analysis.build import build_report
from .analysis.causes import InputScaleMeter
from .engine.observe import ObservedSite, ReluObserver
from .engine.runner import Progress, observe
from .report import ModelInfo, ProbeInfo, Report, Thresholds
from .settings import DEFAULT_REDUCER

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["Combiner", "Progress", "ScanOptions", "scan", "scan_observed"]


class Combiner(Protocol):
    """Chooses the batches this process observes and combines its counters after the last one."""

    def batches(self, batches: Iterable[Any]) -> Iterable[Any]:
        """The batches this process runs (a torchrun rank: its shard)."""
        ...

    def combine(self, observer: ReluObserver, samples: int, meter: InputScaleMeter) -> int:
        """Combine the observer's counters (in place) with other processes; returns the total sample count."""
        ...


class ScanOptions(TypedDict, total=False):
    """What a scan may be told besides the model and the batches: the keyword arguments of :func:`scan`,
    :func:`scan_observed` and the public ``relu_doctor.scan``, declared once."""

    thresholds: Thresholds | None
    """Classification and gate settings (default: :class:`~relu_doctor.report.Thresholds`'s)."""
    unit_dim: int | None
    """Force the unit axis of every site (default: chosen per site)."""
    site_paths: tuple[str, ...] | None
    """Site names of an opaque model (TorchScript, torch.export), in graph order."""
    model_info: ModelInfo | None
    """What the report says of the model (default: in-memory)."""
    probe_info: ProbeInfo | None
    """What the report says of the probe (its sample count is the one observed)."""
    progress: Progress | None
    """Called with the samples done after each batch."""
    combiner: Combiner | None
    """Picks this process's batches and combines its counters afterwards (torchrun ranks, --save-stats)."""
    reducer: str
    """``auto``, ``fused`` or ``torch`` (default: ``auto``)."""


def scan(model: nn.Module, batches: Iterable[Any], **options: Unpack[ScanOptions]) -> Report:
    """Observe every relu-family call of ``model`` over ``batches`` and report dead, dying and dormant units.

    ``batches`` yields tensors (or tuples of positional inputs) already on the model's device. The model is
    left exactly as it was (training flags, buffers). Raises a :class:`~relu_doctor.errors.ReluDoctorError`
    subclass when the scan cannot be done. The keyword arguments are :class:`ScanOptions`.

    ``combiner`` picks the batches this process observes and combines its counters afterwards: under torchrun
    (:class:`relu_doctor.engine.distributed.ShardedScan`) each rank observes its shard and every rank returns the
    single-process report; :class:`relu_doctor.workflow.stats_io.StatsWriter` also writes ``--save-stats``.

    ``reducer`` picks how activations are reduced: ``fused`` (the one-pass numba reducer of
    :mod:`relu_doctor.engine.reduce.fused`), ``torch``, or ``auto``: fused once it is loaded in this process, or from the
    second batch on when numba is installed and the batches left (``len(batches)``) hold enough work to pay for
    loading it; torch otherwise. Counts and maxima are identical either way; sums may differ in the last bits.
    """
    report, _ = scan_observed(model, batches, **options)
    return report


def scan_observed(
    model: nn.Module, batches: Iterable[Any], **options: Unpack[ScanOptions]
) -> tuple[Report, Sequence[ObservedSite]]:
    """:func:`scan`, also returning the engine's observed sites (what a later stage re-runs the model with)."""
    meter = InputScaleMeter()
    combiner, unit_dim = options.get("combiner"), options.get("unit_dim")
    mine = batches if combiner is None else combiner.batches(batches)
    observer, samples = observe(
        model,
        meter.tap(mine),
        unit_dim=unit_dim,
        site_paths=options.get("site_paths"),
        progress=options.get("progress"),
        reducer=options.get("reducer", DEFAULT_REDUCER),
        expected_batches=len(mine) if isinstance(mine, Sized) else None,  # a torchrun rank: its shard
    )
    if combiner is not None:
        samples = combiner.combine(observer, samples, meter)
    probe = options.get("probe_info") or ProbeInfo("in-memory", samples, 0)
    if probe.samples != samples:
        probe = ProbeInfo(probe.source, samples, probe.batch_size, probe.path, probe.input_shape, probe.seed)
    report = build_report(
        observer.sites,
        observer,
        model,
        options.get("thresholds") or Thresholds(),
        probe,
        options.get("model_info") or ModelInfo("", "in-memory", None),
        unit_dim,
        input_scale=meter.result(),
    )
    return report, observer.sites
