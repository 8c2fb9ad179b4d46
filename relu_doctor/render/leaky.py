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
    swapped, functional = [], []
    for site in report.sites:
        if not site.dead or site.ignored:
            continue
        if site.kind != "module":
            functional.append(site.name)
            continue
        swapped.append(f"{site.name}{_effect(report, site)}")
    if not swapped and not functional:
        return None
    alone = " (each measured alone)" if len(swapped) > 1 else ""
    parts = [f"would swap {', '.join(swapped)} to LeakyReLU(0.01){alone}"] if swapped else []
    parts += [f"cannot swap {', '.join(functional)} (functional relu: change the code)"] if functional else []
    return "fix -s leaky: " + "; ".join(parts)


def _effect(report: Report, site: Site) -> str:
    """`` (drift 19.10%, argmax changed 3.52%)`` from the site's own LeakyReLU simulation, or ``(not simulated)``."""
    for finding in report.findings:
        prediction = finding.prediction("leaky") if finding.site == site.name else None
        if prediction is not None and prediction.scope == "site":
            argmax = prediction.argmax_changed
            killed = prediction.newly_dead
            return (
                f" (drift {_share(prediction.output_drift)}"
                + ("" if argmax is None else f", argmax changed {_share(argmax)}")
                + (f", {killed} units newly dead elsewhere" if killed else "")
                + ")"
            )
    return " (not simulated)"


def _share(value: float) -> str:
    return "-" if not math.isfinite(value) else f"{value:.2%}"
