"""``--save-stats`` files and ``relu-doctor merge``: per-site counters of separate jobs, combined exactly.

A stats file is a safetensors file: the tensors are every site's counters (``site<k>.<counter>``, from
:meth:`UnitAccumulator.tensors`), and the header's metadata holds one JSON document (key ``relu_doctor``) with
each site's :class:`~relu_doctor.report.SiteRecord` fields (the report's names: which relu op it is, its unit
axis and layout, its producer), the probe, the model and the scan settings. Reading gives back SiteRecords, never
the engine's types. Merging adds counters site by site (:meth:`UnitCounters.merged`: sums for counts and sums,
max for maxima, as the engine merges batches) and builds the report from the records
(:func:`relu_doctor.analysis.build.report_from_records`), so merging the files of disjoint probe shards equals
one scan of their union. What needs the model's weights (the per-unit causes) is left out of a merged report.

Layout versions: 2 stores the SiteRecord fields; 1 (relu-doctor 0.1) also stored the observer's graph facts
(consumers, sums, concatenations), which a merge never used; both are read.
"""

from __future__ import annotations

# Imports inside functions keep this module free of torch at import time (the CLI's --help and --version stay
# fast); they do not hide a cycle: .importlinter checks every one of them.
import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._version import __version__
from ..errors import UsageError
from ..report import ModelInfo, ProbeInfo, Producer, Report, SiteRecord, Thresholds, UnitCounters
from .writer import OutputTarget, plan_output, write_with

FORMAT = "relu-doctor-stats"
"""The ``format`` field of every stats file."""
VERSION = 2
"""Layout version of the JSON metadata this relu-doctor writes; a newer file is refused with a clear message."""
READABLE_VERSIONS = (1, 2)
"""Layout versions this relu-doctor reads."""
METADATA_KEY = "relu_doctor"
"""safetensors metadata key holding the JSON document."""
_SITE_FIELDS = tuple(f.name for f in dataclasses.fields(SiteRecord) if f.name not in ("counters", "producer"))
"""What a stats file says of a site besides its counters and producer: the SiteRecord's plain fields."""


@dataclass(frozen=True)
class SavedStats:
    """One stats file, read back."""

    path: str
    """Where it was read from."""
    sites: tuple[SiteRecord, ...]
    """The sites with their counters, in call order."""
    probe: ProbeInfo
    """The probe that was scanned."""
    model: ModelInfo
    """The model that was scanned."""
    thresholds: Thresholds
    """The classification and gate settings of that scan."""
    unit_dim: int | None
    """--unit-dim of that scan."""
    warnings: tuple[str, ...]
    """The observer's blind-spot warnings."""
    other_activations: tuple[tuple[str, int], ...]
    """Non-relu activations seen (op, calls)."""


class StatsWriter:
    """A scan combiner (:class:`relu_doctor.api.Combiner`) that writes ``--save-stats`` after the last batch.

    It wraps the torchrun combiner when there is one, so the file holds the counters of every rank, and only
    the primary process writes it.
    """

    def __init__(
        self,
        path: OutputTarget | str | Path,
        *,
        inner: Any,
        probe: ProbeInfo,
        model: ModelInfo,
        thresholds: Thresholds,
        unit_dim: int | None,
        primary: bool = True,
    ) -> None:
        self.path, self.inner, self.primary = path, inner, primary
        self.probe, self.model, self.thresholds, self.unit_dim = probe, model, thresholds, unit_dim

    def batches(self, batches: Any) -> Any:
        """The inner combiner's batches (this rank's shard), or all of them."""
        return batches if self.inner is None else self.inner.batches(batches)

    def combine(self, observer: Any, samples: int, meter: Any = None) -> int:
        """Combine through the inner combiner, then write the file; returns the total sample count."""
        if self.inner is not None:
            samples = self.inner.combine(observer, samples, meter)
        if self.primary:
            probe = dataclasses.replace(self.probe, samples=samples)
            save_stats(
                self.path, observer, probe=probe, model=self.model, thresholds=self.thresholds, unit_dim=self.unit_dim
            )
        return samples


def save_stats(
    path: OutputTarget | str | Path,
    observer: Any,
    *,
    probe: ProbeInfo,
    model: ModelInfo,
    thresholds: Thresholds,
    unit_dim: int | None = None,
) -> None:
    """Write every site's counters and identity to ``path`` through the one atomic writer.

    A plain path may replace an existing file (never an input: callers with inputs plan an :class:`OutputTarget`).
    """
    from safetensors.torch import save_file

    tensors = {
        f"site{k}.{name}": tensor.detach().cpu().contiguous()
        for k, site in enumerate(observer.sites)
        for name, tensor in site.counters.tensors().items()
    }
    document = {
        "format": FORMAT,
        "version": VERSION,
        "tool_version": __version__,
        "sites": [_site_document(site.record()) for site in observer.sites],
        "probe": dataclasses.asdict(probe),
        "model": dataclasses.asdict(model),
        "thresholds": dataclasses.asdict(thresholds),
        "unit_dim": unit_dim,
        "warnings": list(observer.warnings),
        "other_activations": dict(observer.other_activations),
    }
    target = path if isinstance(path, OutputTarget) else plan_output(path, (), force=True, option="--save-stats")
    write_with(target, lambda temporary: save_file(tensors, temporary, metadata={METADATA_KEY: json.dumps(document)}))


def load_stats(path: str | Path) -> SavedStats:
    """Read a stats file written by ``--save-stats``; a file that is not one is a UsageError naming it."""
    source = Path(path)
    document, tensors = _read(source)
    try:
        sites = tuple(_site_from(record, tensors, k) for k, record in enumerate(document["sites"]))
        return SavedStats(
            path=str(source),
            sites=sites,
            probe=_record(ProbeInfo, document["probe"]),
            model=_record(ModelInfo, document["model"]),
            thresholds=_record(Thresholds, document["thresholds"]),
            unit_dim=document.get("unit_dim"),
            warnings=tuple(document.get("warnings", ())),
            other_activations=tuple(sorted(document.get("other_activations", {}).items())),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise UsageError(
            f"stats file {str(source)!r} is incomplete ({type(exc).__name__}: {exc}); write it again with --save-stats"
        ) from None


def merge_stats(paths: Sequence[str | Path], overrides: Mapping[str, Any] | None = None) -> Report:
    """One report from several stats files of the same model: counters merged site by site.

    The thresholds are those saved in the first file, with ``overrides`` (Thresholds field -> value) applied.
    Raises UsageError when the files come from different models or saw different sites.
    """
    from ..analysis.build import report_from_records

    if not paths:
        raise UsageError("merge needs at least one stats file; pass the files written by scan --save-stats")
    saved = [load_stats(p) for p in paths]
    _check_compatible(saved)
    sites = _merged_sites(saved)
    thresholds = dataclasses.replace(saved[0].thresholds, **(overrides or {}))
    report = report_from_records(sites, thresholds, _merged_probe(saved), saved[0].model, saved[0].unit_dim)
    return dataclasses.replace(
        report,
        warnings=tuple(dict.fromkeys(w for s in saved for w in s.warnings)) + report.warnings,
        other_activations=_summed_activations(saved),
    )


def _site_document(record: SiteRecord) -> dict[str, Any]:
    document = {name: getattr(record, name) for name in _SITE_FIELDS}
    document["producer"] = None if record.producer is None else dataclasses.asdict(record.producer)
    return document


def _site_from(document: dict[str, Any], tensors: dict[str, Any], k: int) -> SiteRecord:
    """Site ``k`` of a file: its fields (a version-1 file's extra graph facts are passed over) and counters."""
    prefix = f"site{k}."
    counters = {n[len(prefix) :]: t.tolist() for n, t in tensors.items() if n.startswith(prefix)}
    if "member" not in document:  # written before sites recorded their member: the op's first one, as meant then
        from ..activations import member_for_op

        document = {**document, "member": member_for_op(document["op"]).name}
    fields = {name: _tupled(document[name]) for name in _SITE_FIELDS}
    producer = None if document.get("producer") is None else _record(Producer, document["producer"])
    return SiteRecord(counters=_record(UnitCounters, counters), producer=producer, **fields)


def _record(cls: Any, values: dict[str, Any]) -> Any:
    """A frozen record from its asdict() form; lists become tuples, unknown keys (newer files) are ignored."""
    known = {f.name for f in dataclasses.fields(cls)}
    return cls(**{name: _tupled(value) for name, value in values.items() if name in known})


def _tupled(value: Any) -> Any:
    return tuple(_tupled(v) for v in value) if isinstance(value, list) else value


def _read(source: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    from safetensors import safe_open

    if not source.is_file():
        raise UsageError(f"stats file {str(source)!r} does not exist; pass files written by scan --save-stats")
    try:
        with safe_open(str(source), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118 (not a dict)
        document = json.loads(metadata[METADATA_KEY])
    except Exception as exc:  # a library error on a foreign or broken file becomes one clear line
        raise UsageError(
            f"{str(source)!r} is not a relu-doctor stats file ({type(exc).__name__}); pass files written by scan --save-stats"
        ) from None
    _check_version(source, document)
    return document, tensors


def _check_version(source: Path, document: Any) -> None:
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise UsageError(f"{str(source)!r} is not a relu-doctor stats file; pass files written by scan --save-stats")
    if document.get("version") not in READABLE_VERSIONS:
        raise UsageError(
            f"stats file {str(source)!r} has layout version {document.get('version')!r}, this relu-doctor reads "
            f"{', '.join(map(str, READABLE_VERSIONS))}; merge with the relu-doctor version that wrote it "
            f"({document.get('tool_version')})"
        )


def _check_compatible(saved: list[SavedStats]) -> None:
    first = saved[0]
    for other in saved[1:]:
        if first.model.sha256 and other.model.sha256 and first.model.sha256 != other.model.sha256:
            raise UsageError(
                f"{other.path!r} scanned a different model (sha256 {other.model.sha256[:12]}) than {first.path!r} "
                f"({first.model.sha256[:12]}); merge only the shards of one model"
            )
        ours, theirs = [s.identity for s in first.sites], [s.identity for s in other.sites]
        if ours != theirs:
            raise UsageError(
                f"{other.path!r} saw {len(theirs)} sites, {first.path!r} saw {len(ours)} (or they differ in order, "
                "op or units); merge only files from one model scanned with the same --unit-dim"
            )


def _merged_sites(saved: list[SavedStats]) -> list[SiteRecord]:
    sites = list(saved[0].sites)
    for other in saved[1:]:
        sites = [site.merged(more) for site, more in zip(sites, other.sites)]
    return sites


def _merged_probe(saved: list[SavedStats]) -> ProbeInfo:
    """The union's probe: samples added; path, seed and shape kept only where every file agrees."""
    probes = [s.probe for s in saved]
    first = probes[0]

    def agreed(name: str) -> Any:
        values = {getattr(p, name) for p in probes}
        return getattr(first, name) if len(values) == 1 else None

    return dataclasses.replace(
        first,
        samples=sum(p.samples for p in probes),
        path=agreed("path"),
        seed=agreed("seed"),
        source=agreed("source") or "merged",
        input_shape=agreed("input_shape") or (),
    )


def _summed_activations(saved: list[SavedStats]) -> tuple[tuple[str, int], ...]:
    totals: dict[str, int] = {}
    for stats in saved:
        for op, calls in stats.other_activations:
            totals[op] = totals.get(op, 0) + int(calls)
    return tuple(sorted(totals.items()))
