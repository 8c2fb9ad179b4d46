"""Renderers: pure functions from a :class:`~relu_doctor.report.Report` to text. They never import torch.

Every output format is one member of :class:`Format` mapped to one renderer in :data:`RENDERERS`;
a test checks that every choice is covered.
"""

from __future__ import annotations

import enum
from collections.abc import Callable

from ..report import Report
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


def render(report: Report, fmt: Format, *, width: int = 100, color: bool = False) -> str:
    """The report in ``fmt``; ``width`` and ``color`` matter to the table only."""
    if fmt is Format.table:
        return render_table(report, width=width, color=color)
    return RENDERERS[fmt](report)
