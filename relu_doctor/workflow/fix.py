"""From a checkpoint path to a verified repaired file: what `relu-doctor fix` runs. No printing, no exit.

Steps: check OUT (before any loading), load and probe as ``scan`` does, repair a copy in memory, write OUT in the
input's format (temporary file + rename), then load OUT back and scan it on the same probe, comparing its output with
the input file's model. Every failure is a :class:`~relu_doctor.errors.ReluDoctorError` (exit 2).
"""

from __future__ import annotations

# Imports inside functions keep this module free of torch at import time (the CLI's --help and --version stay
# fast); they do not hide a cycle: .importlinter checks every one of them.
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..repair.records import FixOutcome, Strategy
from .scan import ScanRequest, scan_inputs


@dataclass(frozen=True)
class FixRequest:
    """Everything `relu-doctor fix` needs; the loading and probe options are a scan's."""

    scan: ScanRequest
    """How to load the checkpoint and build the probe (same options as ``scan``)."""
    output: str
    """Where to write the repaired checkpoint."""
    strategy: Strategy
    """recycle, bias-shift or leaky."""
    seed: int = 0
    """Seed of the re-drawn weights."""
    include_dying: bool = False
    """Also recycle dying units (recycle only)."""
    force: bool = False
    """Replace OUT if it exists."""
    max_drift: float | None = None
    """Relative L2 output drift allowed; None for the strategy's default."""

    def __post_init__(self) -> None:
        if self.include_dying and self.strategy is not Strategy.recycle:
            raise UsageError(f"--include-dying works with --strategy recycle only, not {self.strategy.value}")
        if self.max_drift is not None and not (self.max_drift >= 0 and math.isfinite(self.max_drift)):
            raise UsageError(f"--max-drift must be a finite number >= 0, got {self.max_drift}")


def run_fix(request: FixRequest, *, on_checked: Callable[[], None] | None = None) -> FixOutcome:
    """Load, repair, write and verify; returns what was done. The input file is never modified.

    ``on_checked`` is called once the request's paths are checked, before torch is imported (the console script
    imports it there with the GC paused)."""
    from .scan import check_inputs
    from .writer import plan_output

    source = Path(request.scan.model_path)
    check_inputs(request.scan)  # both checks before torch is imported: a typo costs no second
    target = plan_output(request.output, scan_inputs(request.scan), force=request.force)
    if on_checked is not None:
        on_checked()

    import torch

    from ..loading.sniff import PICKLED_MODULE
    from ..repair.api import default_max_drift, repair_model
    from ..repair.write import check_writable
    from .scan import build_probe, load_for_scan, replay_probe, resolve_device

    loaded = load_for_scan(request.scan)
    writes = request.strategy is not Strategy.leaky or loaded.info.format == PICKLED_MODULE
    if writes:
        check_writable(source, loaded.info.format)
    probe = build_probe(request.scan, loaded.model, loaded.example_input)
    dtype, device = getattr(torch, request.scan.dtype), resolve_device(request.scan.device)
    replay = replay_probe(probe, dtype, device)
    limit = (
        request.max_drift
        if request.max_drift is not None
        else default_max_drift(request.strategy, request.include_dying)
    )
    repaired = repair_model(
        loaded.model,
        replay,
        strategy=request.strategy,
        seed=request.seed,
        include_dying=request.include_dying,
        max_drift=limit,
        thresholds=request.scan.thresholds,
        unit_dim=request.scan.unit_dim,
        model_info=loaded.info,
        probe_info=probe.info,
        reducer=request.scan.reducer,
    )
    if not writes:  # the change is in the user's code: check the repaired model in memory, write nothing
        from ..repair.verify import verification

        in_memory = verification(
            repaired.before, repaired.after, repaired.result.repaired, repaired.result.drift, limit, applied=False
        )
        return FixOutcome(str(source), None, loaded.info.format, repaired.result, in_memory)
    notes = _write(request, target, loaded, repaired)
    return FixOutcome(
        str(source),
        str(target.path),
        loaded.info.format,
        repaired.result,
        _verify(request, loaded, repaired, replay, limit),
        notes,
    )


def _write(request: FixRequest, target: Any, loaded: Any, repaired: Any) -> tuple[str, ...]:
    from ..loading.torch_save import TrustPolicy
    from ..repair.write import write_repaired
    from .writer import write_with

    scan = request.scan
    policy = TrustPolicy(trust=scan.trust, allow_globals=scan.allow_globals, imports=scan.imports)
    return write_repaired(
        Path(scan.model_path),
        lambda save: write_with(target, save),
        key=scan.key,
        policy=policy,
        original=loaded.model,
        repaired=repaired.model,
        swapped=repaired.swapped,
    )


def _verify(request: FixRequest, loaded: Any, repaired: Any, replay: Any, limit: float | None) -> Any:
    """Load OUT like the input, scan it on the same probe and compare its output with the input's."""
    from ..api import scan
    from ..repair.drift import drift_between
    from ..repair.verify import verification
    from .scan import load_for_scan

    written = load_for_scan(replace(request.scan, model_path=request.output))
    after = scan(
        written.model,
        replay,
        thresholds=request.scan.thresholds,
        unit_dim=request.scan.unit_dim,
        model_info=written.info,
        probe_info=repaired.before.probe,
        reducer=request.scan.reducer,
    )
    drift = drift_between(loaded.model, written.model, replay)
    return verification(repaired.before, after, repaired.result.repaired, drift, limit)
