"""What both callbacks share: settings checked once, thresholds as the gate's, metrics, the end-of-fit report."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..render import REPORT_FORMATS, render
from ..report import Report, Thresholds
from ..watching.records import RecycleEvent, WindowRecord

ON_THRESHOLD = ("warn", "stop")
"""What a callback does when a window breaks a threshold: warn, or warn and stop training."""


class DyingReluWarning(UserWarning):
    """A window of training broke a dead-unit threshold (max_layer_dead_fraction / max_dead_fraction)."""


@dataclass(frozen=True)
class CallbackSettings:
    """A callback's settings, checked once when it is built."""

    every: int
    """Observe every ``every``-th optimizer step."""
    window: int
    """Observed steps per window."""
    thresholds: Thresholds
    """Classification and gate settings (max_layer_dead_fraction, max_dead_fraction included)."""
    on_threshold: str
    """warn, or stop (warn and stop training)."""
    per_site: bool
    """Log every site's fractions, not only the model's."""
    report_format: str | None
    """Format of the end-of-fit report, a name in :data:`~relu_doctor.render.REPORT_FORMATS` (None: no report)."""
    report_path: str | None
    """Where the end-of-fit report goes: a file path, or ``-`` for standard output."""
    recycle_every: int | None
    """Recycle units every this many steps (None: never)."""
    recycle: str
    """dormant or dead."""
    seed: int
    """Seed of the recycled units' new weights."""

    def watch_settings(self) -> dict[str, Any]:
        """The keyword arguments of :class:`~relu_doctor.watching.Watch` these settings make."""
        return {
            "every": self.every,
            "window": self.window,
            "thresholds": self.thresholds,
            "recycle_every": self.recycle_every,
            "recycle": self.recycle,
            "seed": self.seed,
        }


def callback_settings(
    *,
    every: int,
    window: int,
    max_layer_dead_fraction: float | None,
    max_dead_fraction: float | None,
    on_threshold: str,
    per_site: bool,
    report_format: str | None,
    report_path: str | None,
    recycle_every: int | None,
    recycle: str,
    seed: int,
    thresholds: Thresholds | None,
) -> CallbackSettings:
    """Checked settings; a bad value raises :class:`~relu_doctor.errors.UsageError` naming it."""
    if on_threshold not in ON_THRESHOLD:
        raise UsageError(f"on_threshold must be one of {', '.join(ON_THRESHOLD)}, got {on_threshold!r}")
    for name, value in (("max_layer_dead_fraction", max_layer_dead_fraction), ("max_dead_fraction", max_dead_fraction)):
        if value is not None and not 0 <= value <= 1:
            raise UsageError(f"{name} must be a fraction from 0 to 1 or None, got {value!r}")
    if report_format is not None and report_format not in REPORT_FORMATS:
        choices = ", ".join(REPORT_FORMATS.names())
        raise UsageError(f"report_format must be one of {choices}, got {report_format!r}")
    if report_path is not None and report_format is None:
        report_format = REPORT_FORMATS.default.name
    limits = replace(
        thresholds or Thresholds(), max_layer_dead_fraction=max_layer_dead_fraction, max_dead_fraction=max_dead_fraction
    )
    return CallbackSettings(
        every,
        window,
        limits,
        on_threshold,
        per_site,
        report_format,
        report_path if report_path is not None else ("-" if report_format else None),
        recycle_every,
        recycle,
        seed,
    )


def threshold_message(record: WindowRecord) -> str | None:
    """One line naming every broken threshold of a window, or None when it is within them."""
    if record.gate_passed:
        return None
    return f"relu-doctor: steps {record.first_step}..{record.last_step} (window {record.index}): " + "; ".join(
        record.violations
    )


def metrics_of(record: WindowRecord, events: tuple[RecycleEvent, ...], per_site: bool) -> dict[str, float]:
    """Logger-ready scalars of a window, with the units recycled so far when recycling is on."""
    found = record.metrics(per_site=per_site)
    if events:
        found["relu_doctor/recycled_units"] = float(sum(event.units for event in events))
    return found


def write_report(report: Report, settings: CallbackSettings) -> str | None:
    """Render the end-of-fit report and write it where the settings say; returns the text (None when off)."""
    if settings.report_format is None:
        return None
    text = render(report, settings.report_format)
    text = text if text.endswith("\n") else text + "\n"
    if settings.report_path == "-":
        sys.stdout.write(text)
    elif settings.report_path is not None:
        Path(settings.report_path).write_text(text, encoding="utf-8")
    return text


def new_records(history: tuple[WindowRecord, ...], seen: int) -> tuple[WindowRecord, ...]:
    """The windows closed since ``seen`` were handled."""
    return history[seen:]


def numeric(metrics: Mapping[str, float]) -> dict[str, float]:
    """Plain floats (loggers reject numpy and tensor scalars in places)."""
    return {name: float(value) for name, value in metrics.items()}
