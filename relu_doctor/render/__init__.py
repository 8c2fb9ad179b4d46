"""Renderers: pure functions from a plain record to text. They never import torch.

Every output format is one :class:`~relu_doctor.render.registry.OutputFormat` entry in the registry of the record
it renders: :data:`REPORT_FORMATS` (a scan's or merge's :class:`~relu_doctor.report.Report`), :data:`TREND_FORMATS`
(a :class:`~relu_doctor.report.TrendReport`), :data:`FIX_FORMATS` (a
:class:`~relu_doctor.repair.records.FixOutcome`), :data:`BATCH_FORMATS` (a :class:`~relu_doctor.report.ScanBatch`:
several models in one run, the same names as :data:`REPORT_FORMATS`). The CLI's ``--format`` choices are a registry's names.
To add a format: a renderer module here and one entry below.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from ..repair.records import FixOutcome
from ..report import Report, ScanBatch, TrendReport
from .batch import (
    batch_verdict,
    render_batch_csv,
    render_batch_github,
    render_batch_json,
    render_batch_junit,
    render_batch_markdown,
    render_batch_sarif,
    render_batch_table,
)
from .common import verdict_lines
from .csv_format import render_csv
from .fix import render_fix_json, render_fix_text, verdict
from .github import render_github
from .json_format import render_json
from .junit import render_junit
from .markdown import render_markdown
from .registry import OutputFormat, Registry, Renderer
from .sarif import render_sarif
from .table import render_table
from .trend import (
    render_trend_csv,
    render_trend_github,
    render_trend_json,
    render_trend_markdown,
    render_trend_table,
)

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


def _laid_out_by_itself(render: Callable[[RecordT], str]) -> Renderer[RecordT]:
    """A renderer for a format with no width or colour (JSON, CSV, ...): the layout arguments are ignored."""

    def renderer(record: RecordT, /, *, width: int | None = None, color: bool = False) -> str:
        return render(record)

    renderer.__doc__ = render.__doc__
    return renderer


_PLAIN = "text/plain"
_JSON = "application/json"

REPORT_FORMATS: Registry[Report] = Registry(
    "report",
    (
        OutputFormat("table", render_table, terminal=True, media_type=_PLAIN, extension=".txt", escape_names=True),
        OutputFormat("json", _laid_out_by_itself(render_json), terminal=False, media_type=_JSON, extension=".json"),
        OutputFormat(
            "markdown",
            _laid_out_by_itself(render_markdown),
            terminal=False,
            media_type="text/markdown",
            extension=".md",
            escape_names=True,
        ),
        OutputFormat(
            "csv",
            _laid_out_by_itself(render_csv),
            terminal=False,
            media_type="text/csv",
            extension=".csv",
            escape_names=True,
        ),
        OutputFormat(
            "github",
            _laid_out_by_itself(render_github),
            terminal=False,
            media_type=_PLAIN,
            extension=".txt",
            escape_names=True,
            workflow_commands=True,
        ),
        OutputFormat(
            "sarif",
            _laid_out_by_itself(render_sarif),
            terminal=False,
            media_type="application/sarif+json",
            extension=".sarif",
        ),
        OutputFormat(
            "junit",
            _laid_out_by_itself(render_junit),
            terminal=False,
            media_type="application/xml",
            extension=".xml",
            escape_names=True,
        ),
    ),
    verdict_lines,
)
"""Formats of a scan's (or merge's) report: ``scan --format``, ``merge --format``, the callbacks' report."""

TREND_FORMATS: Registry[TrendReport] = Registry(
    "trend",
    (
        OutputFormat(
            "table", render_trend_table, terminal=True, media_type=_PLAIN, extension=".txt", escape_names=True
        ),
        OutputFormat(
            "json", _laid_out_by_itself(render_trend_json), terminal=False, media_type=_JSON, extension=".json"
        ),
        OutputFormat(
            "markdown",
            _laid_out_by_itself(render_trend_markdown),
            terminal=False,
            media_type="text/markdown",
            extension=".md",
            escape_names=True,
        ),
        OutputFormat(
            "csv",
            _laid_out_by_itself(render_trend_csv),
            terminal=False,
            media_type="text/csv",
            extension=".csv",
            escape_names=True,
        ),
        OutputFormat(
            "github",
            _laid_out_by_itself(render_trend_github),
            terminal=False,
            media_type=_PLAIN,
            extension=".txt",
            escape_names=True,
            workflow_commands=True,
        ),
    ),
    lambda trend: verdict_lines(trend.last, "last checkpoint: "),
)
"""Formats of ``trend --format``; the verdict is the last checkpoint's."""

FIX_FORMATS: Registry[FixOutcome] = Registry(
    "fix outcome",
    (
        OutputFormat("table", render_fix_text, terminal=True, media_type=_PLAIN, extension=".txt", escape_names=True),
        OutputFormat("json", _laid_out_by_itself(render_fix_json), terminal=False, media_type=_JSON, extension=".json"),
    ),
    verdict,
)
"""Formats of ``fix --format``."""


BATCH_FORMATS: Registry[ScanBatch] = Registry(
    "report",
    (
        OutputFormat(
            "table", render_batch_table, terminal=True, media_type=_PLAIN, extension=".txt", escape_names=True
        ),
        OutputFormat(
            "json", _laid_out_by_itself(render_batch_json), terminal=False, media_type=_JSON, extension=".json"
        ),
        OutputFormat(
            "markdown",
            _laid_out_by_itself(render_batch_markdown),
            terminal=False,
            media_type="text/markdown",
            extension=".md",
            escape_names=True,
        ),
        OutputFormat(
            "csv",
            _laid_out_by_itself(render_batch_csv),
            terminal=False,
            media_type="text/csv",
            extension=".csv",
            escape_names=True,
        ),
        OutputFormat(
            "github",
            _laid_out_by_itself(render_batch_github),
            terminal=False,
            media_type=_PLAIN,
            extension=".txt",
            escape_names=True,
            workflow_commands=True,
        ),
        OutputFormat(
            "sarif",
            _laid_out_by_itself(render_batch_sarif),
            terminal=False,
            media_type="application/sarif+json",
            extension=".sarif",
        ),
        OutputFormat(
            "junit",
            _laid_out_by_itself(render_batch_junit),
            terminal=False,
            media_type="application/xml",
            extension=".xml",
            escape_names=True,
        ),
    ),
    batch_verdict,
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
