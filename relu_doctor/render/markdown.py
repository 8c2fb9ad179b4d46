"""Markdown for pull-request comments: a summary line, a GitHub-flavoured table, causes and fixes, caveats.

Also home of the plain-text pieces the terminal table shares (cause codes per site, simulated predictions).
"""

from __future__ import annotations

import math
from collections import Counter

from ..report import Finding, Prediction, Report, Site
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


_FIX_LABELS = {("leaky", "site"): "LeakyReLU here", ("leaky", "model"): "LeakyReLU everywhere"}
_FIX_LABELS.update({("bias_shift", "model"): "bias shift", ("recycle", "model"): "recycle"})


def predicted_text(finding: Finding) -> str:
    """The simulated effects of a finding's fixes in one line, with the samples they were measured on ('' when
    nothing was simulated), e.g. ``on the first 256 samples: bias shift: drift 0.03%, revived 46/78``."""
    if not finding.predicted:
        return ""
    parts = [_prediction_text(p) for p in finding.predicted]
    samples = {p.simulated_samples for p in finding.predicted}
    if len(samples) == 1:
        return f"on the first {samples.pop():,} samples: " + " · ".join(parts)
    return " · ".join(f"{part} (first {p.simulated_samples:,} samples)" for part, p in zip(parts, finding.predicted))


def simulation_note(report: Report) -> str:
    """What the fix simulations' predictions rest on, and the fixes the budget left out, in one line ('' when none
    ran), e.g. ``fixes simulated on the probe's first 32 samples: a unit a fix leaves unfired there fires on fewer
    than 8.9% of inputs (95% bound); not simulated (--simulate-budget): LeakyReLU everywhere, recycle``."""
    cost = report.extra.get("simulation")
    if not isinstance(cost, dict) or not cost.get("samples"):
        return ""
    samples = int(cost["samples"])
    text = (
        f"fixes simulated on the probe's first {samples:,} samples: a unit a fix leaves unfired there fires on fewer "
        f"than {1 - 0.05 ** (1 / samples):.1%} of inputs (95% bound)"
    )
    names = list(cost.get("not_simulated") or ())
    if not names:
        return text
    swaps = [n for n in names if n.startswith("LeakyReLU at ")]
    grouped = swaps[0] if len(swaps) == 1 else f"LeakyReLU at {len(swaps)} sites"
    shown = [grouped if n == swaps[0] else n for n in names if n not in swaps[1:]] if swaps else names
    return f"{text}; not simulated (--simulate-budget): {', '.join(shown)}"


def _prediction_text(prediction: Prediction) -> str:
    label = _FIX_LABELS.get((prediction.fix, prediction.scope), prediction.fix.replace("_", " "))
    text = f"{label}: drift {_share(prediction.output_drift)}"
    if prediction.argmax_changed is not None:
        text += f", argmax changed {_share(prediction.argmax_changed)}"
    if prediction.revived is None:
        text += f", units with gradient {prediction.units_with_gradient_before:,} → {prediction.units_with_gradient:,}"
    else:
        text += f", revived {prediction.revived:,}/{prediction.targeted:,}"
    killed = prediction.newly_dead
    return text + (f", {killed:,} other unit{'' if killed == 1 else 's'} newly dead" if killed else "")


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
        note = simulation_note(report)
        lines += [f"- _{_cell(note)}_"] if note else []
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
    return item + (f"  \n  _simulated_ {_cell(simulated)}" if simulated else "")


def _share(value: float) -> str:
    return "-" if not math.isfinite(value) else f"{value:.2%}"
