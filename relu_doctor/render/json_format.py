"""The JSON report: a stable, documented schema (README "JSON schema"), versioned by ``schema_version``."""

from __future__ import annotations

import math
from typing import Any

from ..report import Finding, Prediction, Report, Site
from .certificate import certification_dict, site_certification_dict
from .json_layout import json_document


def report_dict(report: Report) -> dict[str, Any]:
    """The report as JSON-ready data, keys in schema order."""
    thresholds = report.thresholds
    return {
        "schema_version": report.schema_version,
        "tool_version": report.tool_version,
        "model": {
            "path": report.model.path,
            "format": report.model.format,
            "sha256": report.model.sha256,
            "arch": report.model.arch,
            "notes": list(report.model.notes),
        },
        "probe": {
            "source": report.probe.source,
            "samples": report.probe.samples,
            "batch_size": report.probe.batch_size,
            "path": report.probe.path,
            "input_shape": list(report.probe.input_shape),
            "seed": report.probe.seed,
            "dead_rate_bound_95": _number(report.probe.dead_rate_bound_95),
            **_probe_support(report),
        },
        "sites": [_with_certification(report, site_dict(site), site) for site in report.sites],
        "summary": {
            "sites": report.summary.sites,
            "units": report.summary.units,
            "dead": report.summary.dead,
            "dead_fraction": _number(report.summary.dead_fraction),
            "dying": report.summary.dying,
            "nan_units": report.summary.nan_units,
            "dormant": report.summary.dormant,
        },
        "thresholds": {
            "dying_rate": thresholds.dying_rate,
            "tau": thresholds.tau,
            "max_dead_fraction": thresholds.max_dead_fraction,
            "max_layer_dead_fraction": thresholds.max_layer_dead_fraction,
            "site_overrides": {pattern: value for pattern, value in thresholds.site_overrides},
            "ignore": list(thresholds.ignore),
        },
        "findings": [finding_dict(f) for f in report.findings],
        "warnings": list(report.warnings),
        "other_activations": {op: calls for op, calls in report.other_activations},
        "violations": [v.text for v in report.gate.violations],
        "passed": report.gate.passed,
        "exit_code": report.exit_code,
        **({} if report.certification is None else {"certification": certification_dict(report)}),
        **_simulation(report),
    }


def _simulation(report: Report) -> dict[str, Any]:
    # Present only when the fix simulations ran, so a report without them keeps its exact shape.
    cost = report.extra.get("simulation")
    if not isinstance(cost, dict):
        return {}
    return {
        "simulation": {
            "samples": cost["samples"],
            "forward_passes": cost["forward_passes"],
            "budget": cost.get("budget"),
            "not_simulated": list(cost.get("not_simulated") or ()),
        }
    }


def _with_certification(report: Report, data: dict[str, Any], site: Site) -> dict[str, Any]:
    # The certification keys appear only with --certify, so reports without it keep their exact shape.
    return data if report.certification is None else {**data, "certification": site_certification_dict(report, site)}


def site_dict(site: Site) -> dict[str, Any]:
    """One site as JSON-ready data."""
    dead_range = site.dead_max_preactivation
    return {
        "index": site.index,
        "name": site.name,
        "module_path": site.module_path,
        "call_index": site.call_index,
        "op": site.op,
        "kind": site.kind,
        "unit_axis": site.unit_axis,
        "layout": site.layout,
        "activation_shape": list(site.activation_shape),
        "units": site.units,
        "dead": site.dead,
        "dead_fraction": _number(site.dead_fraction),
        "dead_units": list(site.dead_units),
        "dying": site.dying,
        "dying_units": list(site.dying_units),
        "dormant": len(site.dormant_units),
        "dormant_units": list(site.dormant_units),
        "constant_units": list(site.constant_units),
        "constant_output": site.constant_output,
        "nan_count": sum(site.counters.nan),
        "inf_count": sum(site.counters.inf),
        "nan_units": list(site.nan_units),
        "firing_rate": {
            "min": _number(site.firing_rate.min),
            "median": _number(site.firing_rate.median),
            "mean": _number(site.firing_rate.mean),
        },
        "sparsity": _number(site.sparsity),
        "dead_max_preactivation": [_number(v) for v in dead_range] if dead_range else None,
        "samples": site.counters.samples,
        "positions_per_unit": site.counters.positions,
        "dead_rate_bound_95": _number(site.dead_rate_bound_95),
        "dying_rate_ci95": _dying_ci(site),
        "producer": None
        if site.producer is None
        else {
            "module_path": site.producer.module_path,
            "op": site.producer.op,
            "norm_path": site.producer.norm_path,
            "elementwise_only": site.producer.elementwise_only,
            "input_sites": list(site.producer.input_sites),
        },
    }


def _probe_support(report: Report) -> dict[str, Any]:
    """Whether the probe is big enough for the --dying-rate claim about units that never fired."""
    return {
        "samples_needed_for_dying_rate": report.samples_needed_for_dying_rate,
        "supports_dying_rate": report.supports_dying_rate,
    }


def _dying_ci(site: Site) -> dict[str, Any]:
    """Wilson 95% intervals of the dying units' rates; trials are the site's samples (see confidence.py)."""
    return {
        "method": "wilson",
        "trials": "samples",
        "units": [
            {
                "unit": i.unit,
                "rate": _number(i.rate),
                "samples_fired": i.samples_fired,
                "low": _number(i.low),
                "high": _number(i.high),
            }
            for i in site.dying_intervals
        ],
    }


def finding_dict(finding: Finding) -> dict[str, Any]:
    """One finding as JSON-ready data."""
    return {
        "code": finding.code,
        "severity": finding.severity,
        "site": finding.site,
        "units": list(finding.units),
        "cause": finding.cause,
        "suggestion": finding.suggestion,
        "predicted": [prediction_dict(p) for p in finding.predicted],
    }


def prediction_dict(prediction: Prediction) -> dict[str, Any]:
    """One simulated fix as JSON-ready data (docs/REFERENCE.md, "Each prediction")."""
    return {
        "fix": prediction.fix,
        "scope": prediction.scope,
        "output_drift": _number(prediction.output_drift),
        "argmax_changed": _number(prediction.argmax_changed),
        "newly_dead": prediction.newly_dead,
        "revived": prediction.revived,
        "targeted": prediction.targeted,
        "units_with_gradient_before": prediction.units_with_gradient_before,
        "units_with_gradient": prediction.units_with_gradient,
        "simulated_samples": prediction.simulated_samples,
        "forward_passes": prediction.forward_passes,
    }


def render_json(report: Report) -> str:
    """The report as indented JSON (strict: no NaN or Infinity literals)."""
    return json_document(report_dict(report))


def _number(value: float | None) -> float | None:
    # JSON has no NaN/Infinity; null says "not defined" (e.g. the firing rate of a site without units).
    return None if value is None or not math.isfinite(value) else value
