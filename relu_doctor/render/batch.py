"""Several models in one run (``relu-doctor scan a.pt b.pt``): one output holding every model's report.

Each format keeps its single-model shape per model and adds the least structure that keeps the whole one valid
document of its kind: the table and markdown one section per model; JSON one versioned document with the list of
reports (each exactly the single-model object); CSV one header with a leading ``model`` column; GitHub the
annotations of each model; SARIF one run per model; JUnit one ``<testsuite>`` per model. A model that could not be
scanned is named with its error in every format.
"""

from __future__ import annotations

import csv
import io
import xml.etree.ElementTree as ET
from typing import Any

from rich.console import Group, RenderableType
from rich.text import Text

from ..report import ScanBatch
from .common import plural, summary_line
from .csv_format import render_csv
from .github import render_github, workflow_command
from .json_format import report_dict
from .json_layout import json_document
from .junit import render_junit
from .markdown import render_markdown
from .sarif import SCHEMA, sarif_log
from .table import print_to_text, render_table

BATCH_SCHEMA_VERSION = 1
"""Version of the several-models JSON document (its ``reports`` items follow the report's own schema_version)."""


def batch_summary(batch: ScanBatch) -> str:
    """``3 models: 1 passed, 1 gate FAILED, 1 could not be scanned``."""
    passed = sum(1 for scan in batch.scans if scan.report is not None and scan.report.gate.passed)
    failed = sum(1 for scan in batch.scans if scan.report is not None and not scan.report.gate.passed)
    errors = len(batch.scans) - passed - failed
    parts = [f"{passed} passed", f"{failed} gate FAILED"] + ([f"{errors} could not be scanned"] if errors else [])
    return f"{plural(len(batch.scans), 'model')}: {', '.join(parts)}"


def _why_not_scanned(path: str, error: str | None) -> str:
    """``path: error``, without naming the path twice when the error already begins with it."""
    text = error or "could not scan"
    return text if text.startswith(f"{path}:") else f"{path}: {text}"


def batch_verdict(batch: ScanBatch) -> str:
    """One line per model (its verdict, or why it was not scanned), its violations, then the summary line."""
    from .common import verdict_lines

    lines = [
        f"{scan.path}: " + verdict_lines(scan.report)
        if scan.report is not None
        else _why_not_scanned(scan.path, scan.error)
        for scan in batch.scans
    ]
    return "\n".join([*lines, batch_summary(batch)])


def render_batch_table(batch: ScanBatch, *, width: int | None = 100, color: bool = False) -> str:
    """Each model's table, one section after another, then the summary line."""
    sections = []
    for scan in batch.scans:
        if scan.report is not None:
            sections.append(render_table(scan.report, width=width, color=color))
        else:
            sections.append(print_to_text(_not_scanned(scan.path, scan.error), width=width, color=color))
    closing = Text(batch_summary(batch), style="bold green" if batch.exit_code == 0 else "bold red")
    sections.append(print_to_text(closing, width=width, color=color))
    return "\n".join(sections)


def _not_scanned(path: str, error: str | None) -> RenderableType:
    return Group(Text(f"relu-doctor: {path}", style="bold"), Text(f"✗ could not scan: {error}", style="red"))


def batch_dict(batch: ScanBatch) -> dict[str, Any]:
    """The several-models JSON document (docs/REFERENCE.md, "Several models")."""
    return {
        "schema_version": BATCH_SCHEMA_VERSION,
        "kind": "reports",
        "tool_version": next((scan.report.tool_version for scan in batch.scans if scan.report), None),
        "models": [scan.path for scan in batch.scans],
        "reports": [report_dict(scan.report) for scan in batch.scans if scan.report is not None],
        "errors": [{"path": scan.path, "error": scan.error} for scan in batch.scans if scan.report is None],
        "passed": batch.exit_code == 0,
        "exit_code": batch.exit_code,
    }


def render_batch_json(batch: ScanBatch) -> str:
    """The several-models document as indented JSON."""
    return json_document(batch_dict(batch))


def render_batch_markdown(batch: ScanBatch) -> str:
    """A summary line, then one ``##`` section per model."""
    parts = [f"**relu-doctor**: {batch_summary(batch)}\n"]
    for scan in batch.scans:
        body = render_markdown(scan.report) if scan.report is not None else f"**could not scan**: {scan.error}\n"
        parts.append(f"## `{scan.path}`\n\n{body}")
    return "\n".join(parts)


def render_batch_csv(batch: ScanBatch) -> str:
    """The sites of every model under one header, with a leading ``model`` column; a model not scanned has no rows."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    header_written = False
    for scan in batch.scans:
        if scan.report is None:
            continue
        header, *rows = csv.reader(io.StringIO(render_csv(scan.report)))
        if not header_written:
            writer.writerow(["model", *header])
            header_written = True
        writer.writerows([scan.path, *row] for row in rows)
    return buffer.getvalue()


def render_batch_github(batch: ScanBatch) -> str:
    """Each model's annotations, an ``::error`` for a model not scanned, and a closing ``::notice``."""
    lines = []
    for scan in batch.scans:
        if scan.report is not None:
            annotations = render_github(scan.report).rstrip("\n").splitlines()
            # each model's closing summary names its model: several summaries in one log must be told apart
            annotations[-1] = workflow_command(
                "notice", f"{scan.path}: {summary_line(scan.report)}", title="relu-doctor"
            )
            lines.extend(annotations)
        else:
            lines.append(
                workflow_command("error", f"could not scan: {scan.error}", title="relu-doctor", file=scan.path)
            )
    lines.append(workflow_command("notice", batch_summary(batch), title="relu-doctor"))
    return "\n".join(lines) + "\n"


def render_batch_sarif(batch: ScanBatch) -> str:
    """One SARIF 2.1.0 log with one run per model; a model not scanned is a run whose invocation failed."""
    runs = []
    for scan in batch.scans:
        if scan.report is not None:
            runs.extend(sarif_log(scan.report)["runs"])
            continue
        notification = {"level": "error", "message": {"text": _why_not_scanned(scan.path, scan.error)}}
        invocation = {"executionSuccessful": False, "exitCode": 2, "toolExecutionNotifications": [notification]}
        runs.append({"tool": {"driver": {"name": "relu-doctor"}}, "invocations": [invocation], "results": []})
    return json_document({"$schema": SCHEMA, "version": "2.1.0", "runs": runs})


def render_batch_junit(batch: ScanBatch) -> str:
    """One ``<testsuites>`` with each model's ``<testsuite>`` (named after the model); a model not scanned is a
    suite with one errored ``scan`` case."""
    root = ET.Element("testsuites", name="relu-doctor")
    for scan in batch.scans:
        if scan.report is not None:
            suite = ET.fromstring(render_junit(scan.report).split("\n", 1)[1]).find("testsuite")
            assert suite is not None
            suite.set("name", scan.path)
        else:
            suite = ET.Element("testsuite", name=scan.path, tests="1", failures="0", errors="1", skipped="0", time="0")
            case = ET.SubElement(suite, "testcase", classname=scan.path, name="scan", time="0")
            ET.SubElement(case, "error", message=scan.error or "could not scan", type="ScanError")
        root.append(suite)
    for key in ("tests", "failures", "errors", "skipped"):
        root.set(key, str(sum(int(suite.get(key, "0")) for suite in root)))
    root.set("time", "0")
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
