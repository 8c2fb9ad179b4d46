"""Scan every checkpoint of one training run and follow its sites (:mod:`relu_doctor.analysis.trend`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

from ..analysis.trend import build_trend, sort_naturally
from ..report import TrendReport
from .scan import ScanRequest, run_scan


def scan_checkpoints(
    paths: Sequence[str], request: ScanRequest, *, on_checkpoint: Callable[[int, str], None] | None = None
) -> TrendReport:
    """Scan each checkpoint with ``request`` (a :class:`~relu_doctor.workflow.scan.ScanRequest`; its model path is
    replaced), in natural order, and follow the sites. ``on_checkpoint(index, path)`` runs before each scan."""
    ordered = sort_naturally(list(dict.fromkeys(paths)))
    reports = []
    for index, path in enumerate(ordered):
        if on_checkpoint is not None:
            on_checkpoint(index, path)
        reports.append(run_scan(replace(request, model_path=path)))
    return build_trend(ordered, reports)
