"""What both training callbacks share: one frozen settings object, checked once, and what they do with a window
(threshold messages, logger-ready metrics, the end-of-fit report).

``ReluDoctorCallback(every=5, window=4)`` and ``ReluDoctorCallback(CallbackSettings(every=5, window=4))`` are the
same callback, for Lightning and for Hugging Face alike; a settings object can be built once and given to either.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..render import REPORT_FORMATS, render
from ..report import Report, Thresholds
from ..watching.records import RecycleEvent, WindowRecord
from ..watching.session import check_watch_settings

ON_THRESHOLD = ("warn", "stop")
"""What a callback does when a window breaks a threshold: warn, or warn and stop training."""


class DyingReluWarning(UserWarning):
    """A window of training broke a dead-unit threshold (max_layer_dead_fraction / max_dead_fraction)."""


@dataclass(frozen=True)
class CallbackSettings:
    """Everything a relu-doctor training callback is told; every value is checked when the object is built."""

    every: int = 10
    """Observe every ``every``-th optimizer step (``global_step % every == 0``)."""
    window: int = 10
    """Observed steps per window: the counters become a report and restart after this many."""
    max_layer_dead_fraction: float | None = 0.5
    """A window breaks this when one site has more than this share of its units dead (SageMaker's DeadRelu: 0.5)."""
    max_dead_fraction: float | None = None
    """A window breaks this when the model has more than this share of its units dead (None: no limit)."""
    on_threshold: str = "warn"
    """warn (a :class:`DyingReluWarning`), or stop (warn and stop training)."""
    per_site: bool = True
    """Log every site's fractions, not only the model's."""
    report_format: str | None = None
    """Format of the end-of-fit report, a name in :data:`~relu_doctor.render.REPORT_FORMATS` (None: none, or the
    default, table, when ``report_path`` is given)."""
    report_path: str | None = None
    """Where the end-of-fit report goes: a file path, or ``-`` for standard output (the default with a format)."""
    recycle_every: int | None = None
    """Recycle units every this many steps, ReDo-style (None: never; the model is then never changed)."""
    recycle: str = "dormant"
    """Which units a recycle takes: dormant (tau-dormant, dead included) or dead."""
    seed: int = 0
    """Seed of the recycled units' new weights."""
    thresholds: Thresholds | None = None
    """Classification and gate settings (dying rate, tau, ignore globs); the two limits above replace its own."""

    def __post_init__(self) -> None:
        check_watch_settings(self.every, self.window, self.recycle_every, self.recycle)
        if self.on_threshold not in ON_THRESHOLD:
            raise UsageError(f"on_threshold must be one of {', '.join(ON_THRESHOLD)}, got {self.on_threshold!r}")
        for name in ("max_layer_dead_fraction", "max_dead_fraction"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1
            ):
                raise UsageError(f"{name} must be a fraction from 0 to 1 or None, got {value!r}")
        if self.report_format is not None and self.report_format not in REPORT_FORMATS:
            choices = ", ".join(REPORT_FORMATS.names())
            raise UsageError(f"report_format must be one of {choices}, got {self.report_format!r}")

    @property
    def limits(self) -> Thresholds:
        """The gate's thresholds: ``thresholds`` with the two dead-fraction limits of these settings."""
        return replace(
            self.thresholds or Thresholds(),
            max_layer_dead_fraction=self.max_layer_dead_fraction,
            max_dead_fraction=self.max_dead_fraction,
        )

    @property
    def output(self) -> tuple[str, str] | None:
        """(format name, path) of the end-of-fit report, or None when no report is asked for."""
        if self.report_format is None and self.report_path is None:
            return None
        return self.report_format or REPORT_FORMATS.default.name, self.report_path or "-"

    def watch_options(self) -> dict[str, Any]:
        """The keyword arguments of :class:`~relu_doctor.watching.Watch` these settings make."""
        return {
            "every": self.every,
            "window": self.window,
            "thresholds": self.limits,
            "recycle_every": self.recycle_every,
            "recycle": self.recycle,
            "seed": self.seed,
        }


def settings_from(settings: CallbackSettings | None, options: Mapping[str, Any]) -> CallbackSettings:
    """The settings a callback was built with: a :class:`CallbackSettings`, or its fields as keyword options."""
    if settings is not None and options:
        raise UsageError("give a callback either a CallbackSettings or keyword options, not both")
    if settings is not None:
        if not isinstance(settings, CallbackSettings):
            raise UsageError(f"a callback's first argument must be a CallbackSettings, got {type(settings).__name__}")
        return settings
    known = [f.name for f in fields(CallbackSettings)]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise UsageError(f"unknown callback option {unknown[0]!r}; the options are: {', '.join(known)}")
    return CallbackSettings(**options)


def alerts(records: Sequence[WindowRecord], settings: CallbackSettings) -> list[str]:
    """One message per window that broke a threshold (none when all are within them)."""
    messages = []
    for record in records:
        if record.gate_passed:
            continue
        message = f"relu-doctor: steps {record.first_step}..{record.last_step} (window {record.index}): " + "; ".join(
            record.violations
        )
        if settings.on_threshold == "stop":
            message += "; stopping training (on_threshold='stop')"
        messages.append(message)
    return messages


def metrics_of(record: WindowRecord, events: tuple[RecycleEvent, ...], per_site: bool) -> dict[str, float]:
    """Logger-ready plain floats of a window, with the units recycled so far when recycling is on."""
    found = record.metrics(per_site=per_site)
    if events:
        found["relu_doctor/recycled_units"] = float(sum(event.units for event in events))
    return {name: float(value) for name, value in found.items()}


def write_report(report: Report, settings: CallbackSettings) -> str | None:
    """Render the end-of-fit report and write it where the settings say; returns the text (None when off)."""
    if settings.output is None:
        return None
    output_format, path = settings.output
    text = render(report, output_format)
    text = text if text.endswith("\n") else text + "\n"
    if path == "-":
        sys.stdout.write(text)
    else:
        Path(path).write_text(text, encoding="utf-8")
    return text
