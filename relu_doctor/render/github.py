"""GitHub Actions workflow commands: one ``::error`` / ``::warning`` / ``::notice`` annotation per site that
needs attention, escaped exactly as the Actions toolkit (``@actions/core`` ``command.ts``) escapes them.

A site breaking a threshold, or with an error-level finding, is an ``::error``; a site with dead units or a
warning-level finding is a ``::warning``; a site with notes only is a ``::notice``; a healthy site is silent.
Model-wide threshold violations and blind spots follow, and a closing ``::notice`` carries the summary.
"""

from __future__ import annotations

from ..report import Finding, Report, Site
from .common import percent, summary_line

_LEVEL_OF_SEVERITY = {"error": "error", "warning": "warning", "note": "notice"}
_RANK = {"": 0, "notice": 1, "warning": 2, "error": 3}


def escape_data(text: str) -> str:
    """Escape a command's message: ``%``, ``\\r`` and ``\\n`` (as ``escapeData`` in the toolkit)."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(text: str) -> str:
    """Escape a property value: as :func:`escape_data`, plus ``:`` and ``,`` (``escapeProperty``)."""
    return escape_data(text).replace(":", "%3A").replace(",", "%2C")


def workflow_command(level: str, message: str, **properties: str) -> str:
    """``::level key=value,...::message`` with every part escaped; empty properties are left out."""
    props = ",".join(f"{key}={escape_property(value)}" for key, value in properties.items() if value)
    return f"::{level}{' ' + props if props else ''}::{escape_data(message)}"


def site_level(site: Site, report: Report, findings: list[Finding]) -> str:
    """error, warning, notice, or "" (nothing to say) for one site."""
    if site.status == "FAIL":
        return "error"
    levels = [_LEVEL_OF_SEVERITY.get(f.severity, "warning") for f in findings]
    if site.dead or site.nan_units:
        levels.append("warning")
    return max(levels, key=_RANK.__getitem__, default="")


def render_github(report: Report) -> str:
    """The report as workflow commands, one line each."""
    file = report.model.path
    lines = []
    for site in report.sites:
        if site.ignored:
            continue
        findings = [f for f in report.findings if f.site == site.name]
        level = site_level(site, report, findings)
        if level:
            lines.append(
                workflow_command(
                    level, _site_message(site, report, findings), title=f"relu-doctor: {site.name}", file=file
                )
            )
    lines += [
        workflow_command("error", v.text, title="relu-doctor: model", file=file) for v in report.model_violations()
    ]
    lines += [
        workflow_command(
            "error" if f.severity == "error" else "warning",
            f"[{f.code}] {f.cause}; {f.suggestion}",
            title="relu-doctor: model",
            file=file,
        )
        for f in report.findings
        if not f.site
    ]
    lines += [workflow_command("warning", w, title="relu-doctor: blind spot", file=file) for w in report.warnings]
    lines.append(workflow_command("notice", summary_line(report), title="relu-doctor"))
    return "\n".join(lines) + "\n"


def _site_message(site: Site, report: Report, findings: list[Finding]) -> str:
    head = f"{site.name}: {site.dead} of {site.units} units dead ({percent(site.dead_fraction)}), {site.dying} dying"
    violations = [v.text for v in report.site_violations(site.name)]
    body = [f"[{f.code}] {f.cause}; {f.suggestion}" for f in findings]
    return "\n".join([head, *violations, *body])
