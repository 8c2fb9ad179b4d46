"""Renderers: pure functions from a plain record to text. They never import torch.

Every output format is one :class:`~relu_doctor.render.registry.OutputFormat` entry in the registry of the record
it renders: :data:`REPORT_FORMATS` (a scan's or merge's :class:`~relu_doctor.report.Report`), :data:`TREND_FORMATS`
(a :class:`~relu_doctor.report.TrendReport`), :data:`FIX_FORMATS` (a
:class:`~relu_doctor.repair.records.FixOutcome`), :data:`BATCH_FORMATS` (a :class:`~relu_doctor.report.ScanBatch`:
several models in one run, the same names as :data:`REPORT_FORMATS`). The CLI's ``--format`` choices are a registry's names.
To add a format: a renderer module here and one entry below.

The registries name every format, media type and extension at import time, but a renderer's module (and what it
imports: rich, xml, hashlib, ...) is imported only when something is rendered in that format: one CLI run uses
one format, and importing all of them cost tens of milliseconds per run (``python -X importtime``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from .common import verdict_lines
from .registry import OutputFormat, Registry, Renderer

if TYPE_CHECKING:
    from ..repair.records import FixOutcome
    from ..report import Report, ScanBatch, TrendReport

__all__ = [
    "BATCH_FORMATS",
    "FIX_FORMATS",
    "REPORT_FORMATS",
    "TREND_FORMATS",
    "OutputFormat",
    "Registry",
    "Renderer",
    "render",
]

RecordT = TypeVar("RecordT")


@dataclass(frozen=True)
class _Deferred(Generic[RecordT]):
    """A renderer (or verdict) that imports its module the first time it is called."""

    module: str
    """The module in this package, e.g. ``"table"``."""
    function: str
    """The function's name in that module."""
    laid_out: bool = True
    """It takes ``width`` and ``color`` (a terminal format); else it takes the record alone (JSON, CSV, ...)."""

    def _target(self) -> Any:
        return getattr(importlib.import_module(f"{__name__}.{self.module}"), self.function)

    def __call__(self, record: RecordT, /, *, width: int | None = None, color: bool = False) -> str:
        target = self._target()
        text: str = target(record, width=width, color=color) if self.laid_out else target(record)
        return text


def _laid_out_by_itself(module: str, function: str) -> Renderer[Any]:
    """A renderer for a format with no width or colour (JSON, CSV, ...): the layout arguments are ignored."""
    return _Deferred(module, function, laid_out=False)


def _terminal(module: str, function: str) -> Renderer[Any]:
    """A renderer laid out to the terminal's width, coloured on request."""
    return _Deferred(module, function)


def _verdict(module: str, function: str) -> Callable[[Any], str]:
    """A record's one-line verdict, from a renderer module imported when a verdict is asked for."""
    return _Deferred(module, function, laid_out=False)


_PLAIN = "text/plain"
_JSON = "application/json"

REPORT_FORMATS: Registry[Report] = Registry(
    "report",
    (
        OutputFormat(
            "table",
            _terminal("table", "render_table"),
            terminal=True,
            media_type=_PLAIN,
            extension=".txt",
            escape_names=True,
        ),
        OutputFormat(
            "json",
            _laid_out_by_itself("json_format", "render_json"),
            terminal=False,
            media_type=_JSON,
            extension=".json",
        ),
        OutputFormat(
            "markdown",
            _laid_out_by_itself("markdown", "render_markdown"),
            terminal=False,
            media_type="text/markdown",
            extension=".md",
            escape_names=True,
        ),
        OutputFormat(
            "csv",
            _laid_out_by_itself("csv_format", "render_csv"),
            terminal=False,
            media_type="text/csv",
            extension=".csv",
            escape_names=True,
        ),
        OutputFormat(
            "github",
            _laid_out_by_itself("github", "render_github"),
            terminal=False,
            media_type=_PLAIN,
            extension=".txt",
            escape_names=True,
            workflow_commands=True,
        ),
        OutputFormat(
            "sarif",
            _laid_out_by_itself("sarif", "render_sarif"),
            terminal=False,
            media_type="application/sarif+json",
            extension=".sarif",
        ),
        OutputFormat(
            "junit",
            _laid_out_by_itself("junit", "render_junit"),
            terminal=False,
            media_type="application/xml",
            extension=".xml",
            escape_names=True,
        ),
    ),
    verdict_lines,
)
"""Formats of a scan's (or merge's) report: ``scan --format``, ``merge --format``, the callbacks' report."""

_TREND_NAMES = ("table", "json", "markdown", "csv", "github")
"""The report formats a trend also has (no SARIF or JUnit: a trend is no list of results)."""


def _counterpart(entry: OutputFormat[Report], module: str) -> OutputFormat[Any]:
    """A report format's counterpart for another record: the same name and facts, rendered by ``module``'s
    ``render_<module>_<name>`` (``trend``: a trend report; ``batch``: several models in one output)."""
    renderer = _Deferred[Any](module, f"render_{module}_{entry.name}", laid_out=entry.terminal)
    return OutputFormat(
        entry.name,
        renderer,
        terminal=entry.terminal,
        media_type=entry.media_type,
        extension=entry.extension,
        escape_names=entry.escape_names,
        workflow_commands=entry.workflow_commands,
    )


TREND_FORMATS: Registry[TrendReport] = Registry(
    "trend",
    tuple(_counterpart(entry, "trend") for entry in REPORT_FORMATS if entry.name in _TREND_NAMES),
    lambda trend: verdict_lines(trend.last, "last checkpoint: "),
)
"""Formats of ``trend --format``; the verdict is the last checkpoint's."""

FIX_FORMATS: Registry[FixOutcome] = Registry(
    "fix outcome",
    (
        OutputFormat(
            "table",
            _terminal("fix", "render_fix_text"),
            terminal=True,
            media_type=_PLAIN,
            extension=".txt",
            escape_names=True,
        ),
        OutputFormat(
            "json", _laid_out_by_itself("fix", "render_fix_json"), terminal=False, media_type=_JSON, extension=".json"
        ),
    ),
    _verdict("fix", "verdict"),
)
"""Formats of ``fix --format``."""


BATCH_FORMATS: Registry[ScanBatch] = Registry(
    "report",
    tuple(_counterpart(entry, "batch") for entry in REPORT_FORMATS),
    _verdict("batch", "batch_verdict"),
)
"""Formats of ``scan MODEL MODEL...`` (several models, one output): the names of :data:`REPORT_FORMATS`, each
holding every model's report (:mod:`relu_doctor.render.batch`)."""


def render(report: Report, fmt: str, *, width: int | None = 100, color: bool = False) -> str:
    """The report in the format named ``fmt`` (see :data:`REPORT_FORMATS`); ``width`` and ``color`` matter to the
    table only.

    Names from files (paths, module names, stats files) cannot inject: control characters are escaped in the
    text formats (JSON and SARIF escape them themselves), and outside ``github`` no line starts with ``::``.
    """
    return REPORT_FORMATS.render(report, fmt, width=width, color=color)
