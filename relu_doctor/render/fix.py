"""Renderers of a :class:`~relu_doctor.repair.records.FixOutcome`: pure functions to text. They never import torch."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from ..repair.records import Drift, FixOutcome, SiteCheck, SiteRepair, Verification
from .common import plural, printable_report
from .json_layout import json_document
from .table import print_to_text

FIX_SCHEMA_VERSION = 1


def verdict(outcome: FixOutcome) -> str:
    """One line: what was repaired (or would be), whether a file was written, and whether it verified."""
    result, check = outcome.result, outcome.verification
    skipped = sum(len(s.units) for s in result.skipped)
    if not result.repaired:
        left = f"; {plural(skipped, 'unit')} skipped (reasons above)" if skipped else ""
        return f"nothing repaired ({result.strategy.value}){left}; " + (
            f"{outcome.output_path} written unchanged" if outcome.output_path else "no file written"
        )
    planned = (
        f"{plural(result.units_repaired, 'unit')} at {plural(len(result.repaired), 'site')} ({result.strategy.value})"
    )
    planned += f", {skipped} skipped" if skipped else ""
    if outcome.output_path is None:
        head = f"not applied: no file written, the change is in your model code ({planned})"
        if check is not None and not check.passed:
            return f"{head}; in memory it did NOT verify: {'; '.join(failures(check))}"
        return head
    if check is None or check.passed:
        return f"{planned} repaired; {outcome.output_path} written and verified"
    return f"{planned} changed; {outcome.output_path} written but did NOT verify: {'; '.join(failures(check))}"


def failures(check: Verification) -> list[str]:
    """Why a verification failed, one phrase per reason, naming every unit concerned."""
    found = []
    if check.max_drift is not None and check.drift.relative_l2 > check.max_drift:
        found.append(f"output drift {check.drift.relative_l2:.3g} relative L2 exceeds {check.max_drift:g}")
    for site, units in check.still_dead:
        found.append(f"{site}: {plural(len(units), 'repaired unit')} still dead ({_all_units(units)})")
    for site, units in check.newly_dead:
        found.append(f"{site}: {plural(len(units), 'unit')} newly dead ({_all_units(units)})")
    return found


def drift_text(drift: Drift, limit: float | None = None) -> str:
    """max abs and relative L2 output drift, with the limit when there is one."""
    bound = f" (limit {limit:g})" if limit is not None else " (reported, not limited)"
    return f"output drift on the probe: max abs {drift.max_abs:.3g}, relative L2 {drift.relative_l2:.3g}{bound}"


def checks_table(checks: tuple[SiteCheck, ...], samples: str = "") -> Table:
    """Before/after dead and dying units per site."""
    table = Table(title=f"before / after on the same probe{samples}", title_justify="left")
    for name, justify in (
        ("site", "left"),
        ("units", "right"),
        ("dead before", "right"),
        ("dead after", "right"),
        ("dying before", "right"),
        ("dying after", "right"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for check in checks:
        table.add_row(
            Text(check.site),  # Text: a name from a file is never rich markup
            str(check.units),
            str(check.dead_before),
            _after(check.dead_after),
            str(check.dying_before),
            _after(check.dying_after),
        )
    return table


def outcome_renderable(outcome: FixOutcome) -> RenderableType:
    """The whole terminal summary of a fix as one rich renderable."""
    result, check = outcome.result, outcome.verification
    target = outcome.output_path or "(no file written)"
    parts: list[RenderableType] = [
        Text(
            f"relu-doctor fix: {outcome.model_path} -> {target} ({result.strategy.value}, seed {result.seed})",
            style="bold",
        )
    ]
    parts += [_repair_line(r, outcome) for r in result.repaired]
    parts += [
        Text(f"– {s.site or 'model'}: {plural(len(s.units), 'unit')} skipped: {s.reason}", style="yellow")
        for s in result.skipped
    ]
    if check is not None:
        where = "" if check.applied else " (in memory: nothing was written)"
        parts.append(checks_table(check.sites, where))
        parts.append(Text(drift_text(check.drift, check.max_drift)))
    else:
        parts.append(Text(drift_text(result.drift)))
    parts += [Text(f"! {note}", style="dim") for note in (*result.notes, *outcome.written)]
    passed = check is None or check.passed
    style = "bold green" if passed and outcome.applied else ("bold yellow" if passed else "bold red")
    parts.append(Text(verdict(outcome), style=style))
    return Group(*parts)


def _repair_line(repair: SiteRepair, outcome: FixOutcome) -> Text:
    """✓ a site whose units all fire in the written file; ✗ one where some do not; • a change not applied."""
    check = outcome.verification
    failed = check is not None and any(site == repair.site for site, _ in check.still_dead)
    mark = "•" if not outcome.applied else ("✗" if failed else "✓")
    verb = "would change" if not outcome.applied else "changed"
    text = f"{mark} {repair.site}: {plural(len(repair.units), 'unit')} ({_units(repair.units)}) {verb} via {', '.join(repair.layers)}"
    text += f"; {plural(repair.redraws, 're-draw')}" if repair.redraws else ""
    return Text(text, style="red" if failed else "")


def render_fix_text(outcome: FixOutcome, *, width: int | None = 100, color: bool = False) -> str:
    """The terminal summary as text, with or without ANSI colour (``width`` None: a pipe or file, no wrapping)."""
    shown = printable_report(outcome)  # names from files: control characters escaped, as in the scan's table
    return print_to_text(outcome_renderable(shown), width=width, color=color)


def fix_dict(outcome: FixOutcome) -> dict[str, Any]:
    """The outcome as JSON-ready data (non-finite numbers become null)."""
    result = outcome.result
    data: dict[str, Any] = {
        "schema_version": FIX_SCHEMA_VERSION,
        "model": outcome.model_path,
        "output": outcome.output_path,
        "format": outcome.format,
        "strategy": result.strategy.value,
        "seed": result.seed,
        "include_dying": result.include_dying,
        "applied": outcome.applied,
        "units_repaired": result.units_repaired,
        "repaired": [dataclasses.asdict(r) for r in result.repaired],
        "skipped": [dataclasses.asdict(s) for s in result.skipped],
        "drift_in_memory": dataclasses.asdict(result.drift),
        "notes": list(result.notes),
        "written": list(outcome.written),
        "verification": None if outcome.verification is None else _verification_dict(outcome.verification),
        "exit_code": outcome.exit_code,
    }
    return _finite(data)


def render_fix_json(outcome: FixOutcome) -> str:
    """The outcome as one JSON document on stdout."""
    return json_document(fix_dict(outcome))


def _verification_dict(check: Verification) -> dict[str, Any]:
    return {
        "passed": check.passed,
        "drift": dataclasses.asdict(check.drift),
        "max_drift": check.max_drift,
        "sites": [dataclasses.asdict(c) for c in check.sites],
        "applied": check.applied,
        "still_dead": [{"site": site, "units": list(units)} for site, units in check.still_dead],
        "newly_dead": [{"site": site, "units": list(units)} for site, units in check.newly_dead],
        "failures": failures(check),
    }


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _after(value: int | None) -> str:
    return "–" if value is None else str(value)


def _all_units(units: tuple[int, ...]) -> str:
    return ", ".join(map(str, units))


def _units(units: tuple[int, ...], shown: int = 8) -> str:
    head = ", ".join(map(str, units[:shown]))
    return head + (f", … {len(units) - shown} more" if len(units) > shown else "")
