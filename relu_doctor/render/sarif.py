"""SARIF 2.1.0 for code-scanning dashboards (GitHub ``upload-sarif``, Azure DevOps, VS Code's SARIF viewer).

Rule ids are the finding codes: every code of the registry (:mod:`relu_doctor.codes`) is described in
``tool.driver.rules`` (its title is the description), and a finding whose
code is registered nowhere still gets a rule entry of its own. The model file is the one artifact; each result names its site as a
logical location. ``partialFingerprints`` hash code, site and model path, so an alert keeps its identity from
run to run while its numbers change. Findings on ignored sites are left out. Give a repository-relative
model path for GitHub upload: an absolute path becomes a ``file://`` URI that code scanning cannot place. Model-wide gate violations have no finding code; they are reported as
error notifications of the invocation, which also says whether the gate passed.
"""

from __future__ import annotations

import hashlib
from pathlib import PurePath, PurePosixPath
from typing import Any

from ..codes import describe_codes
from ..report import Finding, Report
from .json_layout import json_document

SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
FINGERPRINT_KEY = "reluDoctorFinding/v1"
_LEVELS = {"error": "error", "warning": "warning", "note": "note"}


def registered_rules() -> dict[str, str]:
    """Finding code -> one-line description, from the code registry (:mod:`relu_doctor.codes`)."""
    return describe_codes()


def artifact_uri(path: str) -> str:
    """A relative path stays relative (resolved against the checkout by the consumer); an absolute one is a file URI."""
    if not path:
        return "model"
    pure = PurePath(path)
    return pure.as_uri() if pure.is_absolute() else PurePosixPath(*pure.parts).as_posix()


def fingerprint(finding: Finding, uri: str) -> str:
    """Stable identity of a finding across runs: code, site and artifact (not its counts)."""
    return hashlib.sha256(f"{finding.code}\0{finding.site}\0{uri}".encode()).hexdigest()[:32]


def _rule(code: str, description: str) -> dict[str, Any]:
    return {
        "id": code,
        "name": code,
        "shortDescription": {"text": description},
        "help": {"text": f"relu-doctor finding {code}: look the code up in relu-doctor's README."},
    }


def _rules(report: Report) -> list[dict[str, Any]]:
    described = registered_rules()
    for finding in report.findings:
        described.setdefault(finding.code, finding.cause)
    return [_rule(code, text) for code, text in described.items()]


def _result(finding: Finding, report: Report, rule_index: dict[str, int], uri: str) -> dict[str, Any]:
    failing = finding.site in report.gate.failing_sites
    # GitHub code scanning needs region.startLine; a checkpoint has no lines, so every result points at line 1.
    physical = {"artifactLocation": {"uri": uri, "index": 0}, "region": {"startLine": 1}}
    location: dict[str, Any] = {"physicalLocation": physical}
    if finding.site:
        location["logicalLocations"] = [{"name": finding.site, "fullyQualifiedName": finding.site, "kind": "module"}]
    return {
        "ruleId": finding.code,
        "ruleIndex": rule_index[finding.code],
        "level": "error" if failing else _LEVELS.get(finding.severity, "warning"),
        "message": {"text": f"{finding.site or 'model'}: {finding.cause}; {finding.suggestion}"},
        "locations": [location],
        "partialFingerprints": {FINGERPRINT_KEY: fingerprint(finding, uri)},
        "properties": {"site": finding.site, "units": list(finding.units), "gateFailing": failing},
    }


def _invocation(report: Report) -> dict[str, Any]:
    notes = [{"level": "error", "message": {"text": v.text}} for v in report.model_violations()]
    notes += [{"level": "warning", "message": {"text": w}} for w in report.warnings]
    return {"executionSuccessful": True, "exitCode": report.exit_code, "toolExecutionNotifications": notes}


def sarif_log(report: Report) -> dict[str, Any]:
    """The report as a SARIF 2.1.0 log object (one run)."""
    uri = artifact_uri(report.model.path)
    rules = _rules(report)
    rule_index = {rule["id"]: i for i, rule in enumerate(rules)}
    artifact: dict[str, Any] = {"location": {"uri": uri}}
    if report.model.sha256:
        artifact["hashes"] = {"sha-256": report.model.sha256}
    driver = {
        "name": "relu-doctor",
        "version": report.tool_version,
        "semanticVersion": report.tool_version,
        "informationUri": "https://pypi.org/project/relu-doctor/",
        "rules": rules,
    }
    ignored = {site.name for site in report.sites if site.ignored}
    run = {
        "tool": {"driver": driver},
        "artifacts": [artifact],
        "invocations": [_invocation(report)],
        "results": [_result(f, report, rule_index, uri) for f in report.findings if f.site not in ignored],
        "properties": {
            "summary": {
                "sites": report.summary.sites,
                "units": report.summary.units,
                "dead": report.summary.dead,
                "passed": report.gate.passed,
            }
        },
    }
    return {"$schema": SCHEMA, "version": "2.1.0", "runs": [run]}


def render_sarif(report: Report) -> str:
    """The report as indented SARIF 2.1.0 JSON."""
    return json_document(sarif_log(report))
