"""Renderers: pure functions from a :class:`~relu_doctor.report.Report` to text. They never import torch.

Every output format is one member of :class:`Format` mapped to one renderer in :data:`RENDERERS`;
a test checks that every choice is covered.
"""

from __future__ import annotations

import enum
from collections.abc import Callable

from ..report import Report
from .common import defuse_workflow_commands, printable_report
from .csv_format import render_csv
from .github import render_github
from .json_format import render_json
from .junit import render_junit
from .markdown import render_markdown
from .sarif import render_sarif
from .table import render_table


class Format(str, enum.Enum):
    """Output formats of --format."""

    table = "table"
    json = "json"
    markdown = "markdown"
    csv = "csv"
    github = "github"
    sarif = "sarif"
    junit = "junit"


Renderer = Callable[..., str]

RENDERERS: dict[Format, Renderer] = {
    Format.table: render_table,
    Format.json: render_json,
    Format.markdown: render_markdown,
    Format.csv: render_csv,
    Format.github: render_github,
    Format.sarif: render_sarif,
    Format.junit: render_junit,
}


TEXT_FORMATS = frozenset({Format.table, Format.markdown, Format.csv, Format.github, Format.junit})
"""Formats whose text carries names raw: control characters in them are written as escapes first."""


def render(report: Report, fmt: Format, *, width: int | None = 100, color: bool = False) -> str:
    """The report in ``fmt``; ``width`` and ``color`` matter to the table only.

    Names from files (paths, module names, stats files) cannot inject: control characters are escaped in the
    text formats (JSON and SARIF escape them themselves), and outside ``github`` no line starts with ``::``.
    """
    shown = printable_report(report) if fmt in TEXT_FORMATS else report
    text = render_table(shown, width=width, color=color) if fmt is Format.table else RENDERERS[fmt](shown)
    return text if fmt is Format.github else defuse_workflow_commands(text)
