"""Markdown for pull-request comments: a summary line, a GitHub-flavoured table, causes and fixes, caveats.

Also home of the plain-text pieces the terminal table shares (cause codes per site, simulated predictions).
"""

from __future__ import annotations

import math
from collections import Counter

from ..report import Finding, Report, Site
from .certificate import certification_lines
from .common import dead_range, percent, rate, summary_line

CAUSE_PREFIXES = ("RD1", "RD005")
"""Codes shown in the per-site causes column: why units are dead (RD1xx) and constant units (RD005)."""


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def site_causes(report: Report, site: Site) -> str:
    """The site's cause codes with their unit counts, e.g. ``RD101×5 RD104×1``."""
    counts: Counter[str] = Counter()
    for finding in report.findings:
        if finding.site == site.name and finding.code.startswith(CAUSE_PREFIXES):
            counts[finding.code] += len(finding.units)
    return " ".join(f"{code}×{n}" for code, n in sorted(counts.items()))


def units_text(units: tuple[int, ...], shown: int = 8) -> str:
    """``0 1 2 4 7`` (the first ``shown`` unit numbers, then how many more)."""
    head = " ".join(str(u) for u in units[:shown])
    return head + (f" … (+{len(units) - shown})" if len(units) > shown else "")


def predicted_text(finding: Finding) -> str:
    """The simulated effects of a finding's fixes in one line ('' when nothing was simulated)."""
    numbers = dict(finding.predicted)
    parts = []
    if "leaky_drift" in numbers:
        where = "here" if finding.site else "everywhere"
        parts.append(
            f"LeakyReLU {where}: drift {_share(numbers['leaky_drift'])}{_argmax(numbers, 'leaky')}, units with "
            f"gradient {_count(numbers.get('units_with_gradient_before'))} → {_count(numbers.get('leaky_units_with_gradient'))}"
            + _newly_dead(numbers, "leaky")
        )
    for prefix, label in (("bias_shift", "bias shift"), ("recycle", "recycle")):
        if f"{prefix}_drift" in numbers:
            revived = _count(numbers.get(f"{prefix}_revived"))
            parts.append(
                f"{label}: drift {_share(numbers[f'{prefix}_drift'])}{_argmax(numbers, prefix)}, "
                f"revived {revived}/{len(finding.units)}" + _newly_dead(numbers, prefix)
            )
    return " · ".join(parts)


def _newly_dead(numbers: dict[str, float], prefix: str) -> str:
    killed = int(numbers.get(f"{prefix}_newly_dead", 0))
    return f", {killed:,} other unit{'' if killed == 1 else 's'} newly dead" if killed else ""


def render_markdown(report: Report) -> str:
    """The report as Markdown."""
    icon = "✅" if report.gate.passed else "❌"
    lines = [f"### {icon} relu-doctor: `{_cell(report.model.path or 'model')}`", "", summary_line(report), ""]
    lines += [
        "| # | site | op | units | dead | dying | dormant | sparsity | firing min / median | dead max pre-act | causes | status |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for s in report.sites:
        lines.append(
            f"| {s.index} | `{_cell(s.name)}` | {s.op} | {s.units} | {s.dead} ({percent(s.dead_fraction)}) | {s.dying} "
            f"| {len(s.dormant_units)} | {percent(s.sparsity)} | {rate(s.firing_rate.min)} / {rate(s.firing_rate.median)} "
            f"| {_cell(dead_range(s))} | {site_causes(report, s)} | {s.status} |"
        )
    lines += ["", f"_{_cell(confidence_line(report))}_"]
    lines.extend(["", *(f"- ❌ {_cell(v.text)}" for v in report.gate.violations)])
    if report.findings:
        lines += ["", "**Causes and fixes**", ""]
        lines += [_finding_item(f) for f in report.findings]
    certified = certification_lines(report)
    if certified:
        lines += ["", "**Certified**", ""] + [f"- {_cell(line.strip())}" for line in certified]
    if report.warnings:
        lines += ["", "**Blind spots and caveats**", ""] + [f"- {_cell(w)}" for w in report.warnings]
    return "\n".join(lines).rstrip() + "\n"


def confidence_line(report: Report) -> str:
    """What a unit that never fired can still do, given the probe size (samples are the trials)."""
    return (
        f"a unit that never fired on {report.probe.samples} samples fires on fewer than "
        f"{report.probe.dead_rate_bound_95:.2%} of inputs (95% upper bound); dormant: τ = {report.thresholds.tau:g}"
    )


def _finding_item(finding: Finding) -> str:
    units = f" (units {units_text(finding.units)})" if finding.units else ""
    item = f"- `{finding.code}` `{_cell(finding.site or 'model')}`{units}: {_cell(finding.cause)}; {_cell(finding.suggestion)}"
    simulated = predicted_text(finding)
    return item + (f"  \n  _simulated on the probe_: {_cell(simulated)}" if simulated else "")


def _share(value: float) -> str:
    return "-" if not math.isfinite(value) else f"{value:.2%}"


def _count(value: float | None) -> str:
    return "?" if value is None or not math.isfinite(value) else f"{value:.0f}"


def _argmax(numbers: dict[str, float], prefix: str) -> str:
    value = numbers.get(f"{prefix}_argmax_changed")
    return "" if value is None else f", argmax changed {_share(value)}"
