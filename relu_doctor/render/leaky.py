"""Which sites ``relu-doctor fix --strategy leaky`` would swap, with what the scan's simulation measured for each.

``fix -s leaky`` swaps the ``nn.ReLU`` modules of sites with dead units for ``nn.LeakyReLU(0.01)``; a functional
relu (``F.relu``, ``x.relu()``) is code it cannot change. The scan simulates each swap on its own ("LeakyReLU
here", a finding's prediction); this line puts those numbers next to the table so the choice is visible at once.
"""

from __future__ import annotations

import math

from ..report import Report, Site


def leaky_swap_line(report: Report) -> str | None:
    """``fix -s leaky would swap act2 (drift 19.10%, argmax changed 3.52%); cannot swap block:relu (functional)``;
    None when no site has dead units."""
    modules = [site for site in report.sites if site.dead and not site.ignored and site.kind == "module"]
    functional = [site.name for site in report.sites if site.dead and not site.ignored and site.kind != "module"]
    if not modules and not functional:
        return None
    effects = [_effect(report, site) for site in modules]
    if any(effects):
        swapped = [f"{site.name} ({effect or 'not simulated'})" for site, effect in zip(modules, effects)]
        note = " (each measured alone)" if len(modules) > 1 else ""
    else:  # --no-simulate, or nothing simulated: say it once
        swapped, note = [site.name for site in modules], " (not simulated)"
    parts = [f"would swap {', '.join(swapped)} to LeakyReLU(0.01){note}"] if modules else []
    parts += [f"cannot swap {', '.join(functional)} (functional relu: change the code)"] if functional else []
    return "fix -s leaky: " + "; ".join(parts)


def _effect(report: Report, site: Site) -> str:
    """``drift 19.10%, argmax changed 3.52%`` from the site's own LeakyReLU simulation; "" when none ran."""
    for finding in report.findings:
        prediction = finding.prediction("leaky") if finding.site == site.name else None
        if prediction is not None and prediction.scope == "site":
            argmax, killed = prediction.argmax_changed, prediction.newly_dead
            return (
                f"drift {_share(prediction.output_drift)}"
                + ("" if argmax is None else f", argmax changed {_share(argmax)}")
                + (f", {killed} units newly dead elsewhere" if killed else "")
            )
    return ""


def _share(value: float) -> str:
    return "-" if not math.isfinite(value) else f"{value:.2%}"
