"""From a path on disk to a Report: load the checkpoint, build the probe, scan. Used by the CLI and by Python.

:class:`ScanRequest` holds every option of ``relu-doctor scan``, validated once in ``__post_init__``.
"""

from __future__ import annotations

# Imports inside functions keep this module free of torch at import time (the CLI's --help and --version stay
# fast); they do not hide a cycle: .importlinter checks every one of them.
import difflib
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from ..errors import (
    ArchitectureError,
    CertifyError,
    CheckpointError,
    ProbeError,
    ReluDoctorError,
    UsageError,
    first_line,
)
from ..report import ModelScan, Report, ScanBatch, Thresholds
from ..settings import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_DEVICE,
    DEFAULT_DTYPE,
    DEFAULT_MAX_LENGTH,
    DEFAULT_REDUCER,
    DEFAULT_SAMPLES,
    DEFAULT_SEED,
    DEFAULT_SIMULATE_BUDGET,
    DEFAULT_SIMULATE_SAMPLES,
    check_scan_settings,
)


@dataclass(frozen=True)
class ScanRequest:
    """Everything needed to scan a checkpoint file; field names follow the CLI options."""

    model_path: str
    """The checkpoint file or directory."""
    arch: str | None = None
    """``package.module:callable`` or ``path/to/file.py:callable`` building the architecture."""
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments for the --arch callable."""
    key: str | None = None
    """Which nested state dict of a training checkpoint to use."""
    trust: bool = False
    """Allow formats that run code from the file (pickled modules, TorchScript, torch.export)."""
    imports: tuple[str, ...] = ()
    """Modules to import before unpickling a trusted module."""
    allow_globals: tuple[str, ...] = ()
    """``module.Name`` globals allowed in a weights-only load."""
    probe_path: str | None = None
    """Probe file; None for a synthetic probe."""
    probe_key: str | None = None
    """Which tensor of a probe file holding several."""
    tokenizer: str | None = None
    """Tokenizer folder for a text probe; None: the model folder."""
    max_length: int = DEFAULT_MAX_LENGTH
    """Tokens kept per text of a text probe."""
    probe_mask: str | None = None
    """Attention mask (.npy) for a token-id probe; padded positions are not counted."""
    samples: int = DEFAULT_SAMPLES
    """Synthetic probe size (or the most samples read from a probe file when ``limit_samples``)."""
    limit_samples: bool = False
    """Read at most ``samples`` samples from the probe file."""
    seed: int = DEFAULT_SEED
    """Seed of the synthetic probe."""
    batch_size: int = DEFAULT_BATCH_SIZE
    """Samples per forward pass."""
    input_shape: tuple[int, ...] | None = None
    """Shape of one synthetic sample, when the model does not tell."""
    unit_dim: int | None = None
    """Force the unit axis of every site."""
    device: str = DEFAULT_DEVICE
    """auto, cpu, cuda or mps."""
    dtype: str = DEFAULT_DTYPE
    """Model and probe dtype; counters accumulate in float32 or wider regardless."""
    reducer: str = DEFAULT_REDUCER
    """auto, torch or fused: how activations are reduced to counters (see :func:`relu_doctor.scan`)."""
    thresholds: Thresholds = field(default_factory=Thresholds)
    """Classification and gate settings."""
    simulate: bool = False
    """Re-run the probe through each suggested fix to measure its effect (``scan`` turns it on; --no-simulate)."""
    simulate_samples: int = DEFAULT_SIMULATE_SAMPLES
    """The most of the probe's first samples a simulation re-runs."""
    simulate_budget: float = DEFAULT_SIMULATE_BUDGET
    """The simulations re-run at most this share of the probe's samples, every pass counted (--simulate-budget)."""
    save_stats: str | None = None
    """Also write every site's counters to this safetensors file, for ``relu-doctor merge``."""
    certify: str | None = None
    """The --domain to certify units on (probe, probe:MARGIN, box:LO,HI, file:PATH); None: no certification."""
    force: bool = False
    """--force: outputs may replace an existing file (never an input)."""
    inputs: tuple[str, ...] = ()
    """Other files the command read (its config file): no output may replace them."""

    def __post_init__(self) -> None:
        from ..engine.bounds.domain import parse_domain

        if self.certify is not None:
            parse_domain(self.certify)
        if self.thresholds.gate_on not in GATE_ON:
            raise UsageError(f"--gate-on must be one of {', '.join(GATE_ON)}, got {self.thresholds.gate_on!r}")
        if self.thresholds.gate_on == "certified" and self.certify is None:
            raise UsageError("--gate-on certified needs --certify (and a --domain without --probe)")
        t = self.thresholds
        check_scan_settings(
            device=self.device,
            dtype=self.dtype,
            reducer=self.reducer,
            batch_size=self.batch_size,
            samples=self.samples,
            simulate_samples=self.simulate_samples,
            simulate_budget=self.simulate_budget,
            dying_rate=t.dying_rate,
            tau=t.tau,
            max_dead_fraction=t.max_dead_fraction,
            max_layer_dead_fraction=t.max_layer_dead_fraction,
        )
        # Checked here, not only when a text probe is read, so a bad value is never silently ignored.
        if self.max_length < 1:
            raise UsageError(f"--max-length must be at least 1, got {self.max_length}")
        if self.probe_mask is not None and self.probe_path is None:
            raise UsageError("--probe-mask goes with a token-id --probe (.npy); pass --probe too")


GATE_ON = ("probe", "certified")
"""What the dead-fraction limits count (--gate-on)."""


def certify_domain(certify: bool, domain: str | None, gate_on: str, has_probe_file: bool) -> str | None:
    """The domain to certify on from --certify / --domain / --gate-on, or None when certification is off.

    ``--gate-on certified`` turns certification on; without a probe file the domain must be named, since the
    synthetic probe's box says nothing about the model's real inputs."""
    if not (certify or gate_on == "certified" or domain is not None):
        return None
    if domain is not None:
        return domain
    if not has_probe_file:
        raise UsageError(
            "--certify without --probe needs --domain, e.g. box:0,1 (or --domain probe for the synthetic probe's box)"
        )
    return "probe"


def resolve_device(name: str) -> Any:
    """``auto`` -> cuda when available, else mps, else cpu; an unavailable device is a usage error."""
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        return torch.device("mps" if mps is not None and mps.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available here; use --device cpu or auto")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UsageError("--device mps: no MPS device is available here; use --device cpu or auto")
    return torch.device(name)


def load_for_scan(request: ScanRequest) -> Any:
    """The loaded model (a :class:`relu_doctor.loading.LoadedModel`) on the requested device and dtype."""
    import torch

    from ..loading import load_model

    return load_model(
        request.model_path,
        arch=request.arch,
        arch_kwargs=request.arch_kwargs,
        key=request.key,
        trust=request.trust,
        imports=request.imports,
        allow_globals=request.allow_globals,
        device=str(_device(request)),
        dtype=getattr(torch, request.dtype),
    )


def _device(request: ScanRequest) -> Any:
    """The requested device; under torchrun, ``cuda`` is this rank's GPU (``cuda:LOCAL_RANK``)."""
    from .distributed import rank_device, rank_info

    return rank_device(resolve_device(request.device), rank_info())


def build_probe(request: ScanRequest, model: Any, example: Any = None) -> Any:
    """The probe for this request: the file, or a synthetic one shaped for the model.

    ``example`` (a :class:`relu_doctor.loading.ExampleInput`) is a torch.export program's own input: it gives a
    synthetic probe its sample shape and, when the program fixes it, its batch size.
    """
    from .probe import file_probe, synthetic_probe
    from .text_probe import with_token_rows

    static_batch = example.static_batch if example is not None else None
    if request.probe_path is not None and (is_text_probe(request.probe_path) or request.probe_mask is not None):
        return _token_probe(request)
    if request.probe_path is not None:
        # Never refused by a guess from the first layer: the forward pass decides (its error carries the hint).
        limit = request.samples if request.limit_samples else None
        probe = file_probe(request.probe_path, batch_size=request.batch_size, key=request.probe_key, limit=limit)
        _check_static_batch(probe.info.samples, probe.info.batch_size, static_batch, request.model_path)
        return with_token_rows(probe, model)
    samples, batch_size = request.samples, request.batch_size
    if static_batch is not None:  # a synthetic probe can follow the program: whole batches of its size
        samples, batch_size = -(-samples // static_batch) * static_batch, static_batch
    probe = synthetic_probe(
        model,
        samples=samples,
        seed=request.seed,
        batch_size=batch_size,
        input_shape=request.input_shape,
        example_shape=example.sample_shape if example is not None else None,
    )
    return with_token_rows(probe, model)


def is_text_probe(path: str) -> bool:
    """True for a probe path read as texts (.txt one per line, .jsonl with a ``text`` field)."""
    return Path(path).suffix.lower() in (".txt", ".jsonl")


def _token_probe(request: ScanRequest) -> Any:
    """A text probe (tokenised with --tokenizer or the model folder's tokenizer) or token ids with --probe-mask."""
    from .text_probe import text_probe, token_probe

    assert request.probe_path is not None
    limit = request.samples if request.limit_samples else None
    if request.probe_mask is not None:
        return token_probe(request.probe_path, request.probe_mask, batch_size=request.batch_size, limit=limit)
    tokenizer_dir = request.tokenizer or request.model_path
    if request.tokenizer is None and not Path(request.model_path).is_dir():
        raise ProbeError("a text probe needs a tokenizer: pass --tokenizer DIR (a folder with tokenizer.json)")
    return text_probe(
        request.probe_path,
        tokenizer_dir=tokenizer_dir,
        batch_size=request.batch_size,
        max_length=request.max_length,
        limit=limit,
    )


def _check_static_batch(samples: int, batch_size: int, static_batch: int | None, model_path: str) -> None:
    """A program exported with a fixed batch size accepts only whole batches of that size: say so before running."""
    if static_batch is None or (batch_size == static_batch and samples % static_batch == 0):
        return
    raise ProbeError(
        f"{model_path} was exported with a fixed batch of {static_batch} samples, but the probe runs batches of "
        f"{min(batch_size, samples)} ({samples} samples); pass --batch-size {static_batch} and a probe whose sample "
        f"count is a multiple of {static_batch} (--samples), or re-export with a dynamic batch dimension"
    )


Stage = Callable[[str, "int | None"], None]
"""Called when a stage starts, with its name (loading, observing, simulating, certifying) and its size in
samples (observing) or forward passes (simulating), None when unknown. The CLI adds the last one, writing."""


def run_scan(
    request: ScanRequest,
    *,
    progress: Callable[[int], None] | None = None,
    on_probe: Callable[[int], None] | None = None,
    on_stage: Stage | None = None,
    simulate_progress: Callable[[int, int], None] | None = None,
) -> Report:
    """Load, probe and scan; ``on_probe(total_samples)`` is called once the probe size is known.

    ``on_stage`` names each stage as it starts; ``progress(samples)`` follows the observation and
    ``simulate_progress(done, planned)`` the simulations' forward passes."""
    import torch

    from ..whatif import scan
    from .distributed import check_enough_batches, rank_info, torchrun_scan

    check_inputs(request)
    stage = on_stage or (lambda name, total: None)
    info = rank_info()
    stage("loading", None)
    loaded = load_for_scan(request)
    probe = build_probe(request, loaded.model, loaded.example_input)
    check_enough_batches(-(-probe.info.samples // probe.info.batch_size), info)
    if on_probe is not None:
        on_probe(probe.info.samples)
    stage("observing", probe.info.samples)
    batches = replay_probe(probe, getattr(torch, request.dtype), _device(request))
    simulating: list[bool] = []

    def simulated(done: int, planned: int) -> None:
        if not simulating:
            simulating.append(True)
            stage("simulating", planned)
        if simulate_progress is not None:
            simulate_progress(done, planned)

    with torchrun_scan(info) as sharded:
        report = scan(
            loaded.model,
            batches,
            thresholds=request.thresholds,
            unit_dim=request.unit_dim,
            site_paths=loaded.site_paths,
            model_info=loaded.info,
            probe_info=probe.info,
            progress=progress,
            simulate=request.simulate,
            simulate_samples=request.simulate_samples,
            simulate_budget=request.simulate_budget,
            simulate_progress=simulated,
            combiner=_combiner(request, sharded, probe.info, loaded.info),
            reducer=request.reducer,
        )
    if request.certify is None:
        return report
    stage("certifying", None)
    return _certified(report, request, loaded, probe.info, batches)


def _certified(report: Report, request: ScanRequest, loaded: Any, probe: Any, batches: Any) -> Report:
    """The report with bounds proved on the requested domain (the probe's own box for ``probe``)."""
    from ..certification import box_from_spec, certify, with_certification

    assert request.certify is not None
    box = box_from_spec(request.certify, input_shape=probe.input_shape or None, samples=batches)
    certification = certify(loaded.model, box, unit_dim=request.unit_dim, site_paths=loaded.site_paths)
    return with_certification(report, certification)


def scan_inputs(request: ScanRequest) -> tuple[str, ...]:
    """Every file a scan reads: the checkpoint, the probe, a file --arch, a --domain file, the config file."""
    named = (
        request.model_path,
        request.probe_path,
        request.probe_mask,
        request.tokenizer,
        arch_file(request.arch),
        arch_module_file(request.arch),
        _domain_file(request.certify),
        *request.inputs,
    )
    return tuple(path for path in named if path)


def arch_file(spec: str | None) -> str | None:
    """The file of a ``path/to/file.py:callable`` --arch, an input no output may replace (None without --arch)."""
    if spec is None:
        return None
    target = spec.rpartition(":")[0]
    return target if target.endswith(".py") or "/" in target or "\\" in target else None


def arch_module_file(spec: str | None) -> str | None:
    """The source file of a ``package.module:callable`` --arch, found on sys.path as ``import`` would find it but
    without importing anything (no code runs, no torch): an input no output may replace."""
    if spec is None or arch_file(spec) is not None:
        return None
    dotted = spec.rpartition(":")[0]
    loaded = sys.modules.get(dotted)
    if loaded is not None:
        return getattr(loaded, "__file__", None)
    parts = dotted.split(".")
    for entry in sys.path:
        base = Path(entry or os.curdir).joinpath(*parts)
        for candidate in (base.with_name(base.name + ".py"), base / "__init__.py"):
            if candidate.is_file():
                return str(candidate)
    return None


def _domain_file(certify: str | None) -> str | None:
    return certify[5:] if certify and certify.startswith("file:") else None


def check_inputs(request: ScanRequest, *, model: bool = True) -> None:
    """Every file the scan will read exists: checked without torch, so a typo is reported at once (the loaders
    check again, and say more, when a file exists but cannot be read). ``model=False`` leaves the checkpoint
    out (``trend`` checks each of its own)."""
    if model:
        check_model_path(request.model_path)
    for option, path, error in (
        ("--probe", request.probe_path, ProbeError),
        ("--probe-mask", request.probe_mask, ProbeError),
        ("--tokenizer", request.tokenizer, ProbeError),
    ):
        if path is not None and not os.path.exists(path):
            raise error(f"{option} {str(path)!r} does not exist; check the path")
    domain = _domain_file(request.certify)
    if domain is not None and not os.path.isfile(domain):
        raise CertifyError(f"--domain {request.certify}: {domain!r} is not a file")
    file = arch_file(request.arch)
    if file is not None and not os.path.isfile(file):
        raise ArchitectureError(f"--arch {request.arch!r}: no such file {file!r}; check the path before ':'")


def scan_models(
    requests: Sequence[ScanRequest],
    scan_one: Callable[[ScanRequest], Report],
    *,
    on_error: Callable[[str], None] | None = None,
) -> ScanBatch:
    """Scan each request's model in turn with ``scan_one`` (the same options for each, as ``scan a.pt b.pt``).
    A model that cannot be scanned (a :class:`~relu_doctor.errors.ReluDoctorError`: missing, unsafe, mismatched)
    keeps its place with its one-line error, given to ``on_error`` too, and the next model is scanned, as ruff and
    mypy go on past a bad file; the batch's exit code is then 2."""
    scans = []
    for request in requests:
        try:
            scans.append(ModelScan(request.model_path, scan_one(request)))
        except ReluDoctorError as error:
            message = first_line(error, limit=None) or type(error).__name__
            if request.model_path not in message:
                message = f"{request.model_path}: {message}"
            if on_error is not None:
                on_error(message)
            scans.append(ModelScan(request.model_path, error=message))
    return ScanBatch(tuple(scans))


def unmatched_ignores(report: Report) -> list[str]:
    """One warning per ``--ignore`` glob that matches no site of ``report`` (a typo would silently gate on the
    site it meant to leave out), with the closest site name when one is near."""
    names = [site.name for site in report.sites]
    lines = []
    for pattern in report.thresholds.ignore:
        if any(fnmatchcase(name, pattern) for name in names):
            continue
        close = difflib.get_close_matches(pattern, names, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        lines.append(f"--ignore {pattern!r} matches no site{hint}")
    return lines


def check_model_path(path: str) -> None:
    """A CheckpointError when the checkpoint does not exist (torch-free; the loader checks the rest)."""
    if not os.path.lexists(path):
        raise CheckpointError(f"{path}: no such file or directory; check the model path")


def _combiner(request: ScanRequest, sharded: Any, probe: Any, model: Any) -> Any:
    """torchrun's combiner, wrapped by a --save-stats writer when asked for one; None for a plain scan."""
    if request.save_stats is None:
        return sharded
    from .distributed import is_primary
    from .stats_io import StatsWriter
    from .writer import plan_output

    return StatsWriter(
        plan_output(request.save_stats, scan_inputs(request), force=request.force, option="--save-stats"),
        inner=sharded,
        probe=probe,
        model=model,
        thresholds=request.thresholds,
        unit_dim=request.unit_dim,
        primary=is_primary(),
    )


def replay_probe(probe: Any, dtype: Any, device: Any) -> Any:
    """The probe's batches, read again from the file (or regenerated) each time they are iterated, with their
    number (a :class:`~relu_doctor.engine.batches.Replayable`: what scan, fix and its verification iterate)."""
    from ..engine.batches import Replayable

    return Replayable.sized(lambda: probe.batches(dtype, device), -(-probe.info.samples // probe.info.batch_size))
