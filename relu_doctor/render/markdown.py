"""Markdown for pull-request comments: a summary line, a GitHub-flavoured table, findings and warnings."""

from __future__ import annotations

from ..report import Report
from .common import dead_range, percent, rate, site_status, summary_line


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(report: Report) -> str:
    """The report as Markdown."""
    icon = "✅" if report.gate.passed else "❌"
    lines = [f"### {icon} relu-doctor: `{_cell(report.model.path or 'model')}`", "", summary_line(report), ""]
    lines += ["| # | site | op | units | dead | dying | firing min / median | dead max pre-act | status |",
              "|---:|---|---|---:|---:|---:|---:|---:|---|"]  # fmt: skip
    for s in report.sites:
        lines.append(
            f"| {s.index} | `{_cell(s.name)}` | {s.op} | {s.units} | {s.dead} ({percent(s.dead_fraction)}) | {s.dying} "
            f"| {rate(s.firing_rate.min)} / {rate(s.firing_rate.median)} | {_cell(dead_range(s))} | {site_status(s, report)} |"
        )
    lines.extend(["", *(f"- ❌ {_cell(v)}" for v in report.gate.violations)])
    if report.findings:
        lines += ["", "**Suggested fixes**", ""]
        lines += [f"- `{f.code}` `{_cell(f.site or 'model')}`: {_cell(f.cause)}; {_cell(f.suggestion)}" for f in report.findings]
    if report.warnings:
        lines += ["", "**Blind spots and caveats**", ""] + [f"- {_cell(w)}" for w in report.warnings]
    return "\n".join(lines).rstrip() + "\n"
