"""JUnit XML for CI test dashboards (GitLab, Jenkins, Azure, GitHub test-report actions).

One ``<testcase>`` per site (classname = the model path, name = the site), failing when the site breaks its
dead-fraction limit; ignored sites are ``<skipped>``; one more testcase, ``model``, fails on model-wide
violations (the model dead-fraction limit, --strict warnings). Findings go to each case's ``<system-out>``.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from ..report import Report, Site
from .common import percent


def _site_case(site: Site, report: Report, classname: str) -> ET.Element:
    case = ET.Element("testcase", classname=classname, name=site.name, time="0")
    violations = [v.text for v in report.site_violations(site.name)]
    if site.ignored:
        ET.SubElement(case, "skipped", message="ignored by configuration")
    elif violations:
        failure = ET.SubElement(case, "failure", message=violations[0], type="DeadUnits")
        failure.text = "\n".join(violations)
    lines = [f"{site.dead} of {site.units} units dead ({percent(site.dead_fraction)}), {site.dying} dying"]
    lines += [f"[{f.code}] {f.cause}; {f.suggestion}" for f in report.findings if f.site == site.name]
    ET.SubElement(case, "system-out").text = "\n".join(lines)
    return case


def _model_case(report: Report, classname: str) -> ET.Element:
    case = ET.Element("testcase", classname=classname, name="model", time="0")
    violations = [v.text for v in report.model_violations()]
    if violations:
        failure = ET.SubElement(case, "failure", message=violations[0], type="DeadUnits")
        failure.text = "\n".join(violations)
    advice = [f"[{f.code}] {f.cause}; {f.suggestion}" for f in report.findings if not f.site]
    if advice:
        ET.SubElement(case, "system-out").text = "\n".join(advice)
    if report.warnings:
        ET.SubElement(case, "system-err").text = "\n".join(report.warnings)
    return case


def render_junit(report: Report) -> str:
    """The report as a JUnit XML document with one ``<testsuite name="relu-doctor">``."""
    classname = report.model.path or "model"
    cases = [_site_case(site, report, classname) for site in report.sites] + [_model_case(report, classname)]
    failures = sum(1 for case in cases if case.find("failure") is not None)
    skipped = sum(1 for case in cases if case.find("skipped") is not None)
    counts = {"tests": str(len(cases)), "failures": str(failures), "errors": "0", "skipped": str(skipped), "time": "0"}
    root = ET.Element("testsuites", {"name": "relu-doctor", **counts})
    suite = ET.SubElement(root, "testsuite", {"name": "relu-doctor", **counts})
    suite.extend(cases)
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
