"""CPU time of writing a big report as JSON: the one JSON layout (relu_doctor/render/json_layout.py) against the
layout it replaced (``json.dumps(data, indent=2, allow_nan=False)``, one line per unit index, pure-Python encoder).

The report is a real scan (no simulations) of a 200-layer, 256-wide Linear-ReLU stack with dead units planted (an
eighth of every bias set to -10) over a 512-sample synthetic probe, the shape of ``bench_default_scan.py --only
mlp200``, with three placeholder prediction records on each finding (the shape of a default scan's findings).
Both layouts render the same dict, interleaved rep by rep; medians of CPU time. Each pair is checked to
parse to equal data.

Usage: ``python bench/bench_render.py [--reps 7] [--depth 200] [--samples 512]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from relu_doctor import scan
from relu_doctor.render.json_format import report_dict
from relu_doctor.render.json_layout import json_document
from relu_doctor.render.sarif import sarif_log
from relu_doctor.report import Prediction, Report


def deep_mlp(depth: int, width: int = 256) -> nn.Module:
    layers: list[nn.Module] = []
    for _ in range(depth):
        linear = nn.Linear(width, width)
        with torch.no_grad():
            linear.bias[: width // 8] = -10.0  # dead after the next relu
        layers += [linear, nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(width, 10)).eval()


def big_report(depth: int, samples: int) -> tuple[Report, float]:
    """The scan's report, and the CPU time of a plain forward of the same probe (for scale)."""
    torch.manual_seed(0)
    model, batches = deep_mlp(depth), list(torch.randn(samples, 256).split(64))
    with torch.inference_mode():
        forward = statistics.median(cpu_seconds(lambda: [model(batch) for batch in batches]) for _ in range(3))
    return _with_predictions(scan(model, batches)), forward


def _with_predictions(report: Report) -> Report:
    """Three prediction records on every finding with units, the shape a default scan's findings have (the
    simulations themselves are not run: their numbers do not change what writing them costs)."""
    findings = []
    for finding in report.findings:
        n = len(finding.units)
        predicted = tuple(
            Prediction(fix, "site", 0.01 * i, None, 0, n if fix != "leaky" else None, n, 1000, 1000 + n, 256, 1)
            for i, fix in enumerate(("leaky", "bias_shift", "recycle"))
        )
        findings.append(replace(finding, predicted=predicted) if n else finding)
    return replace(report, findings=tuple(findings))


def old_layout(data: Any) -> str:
    return json.dumps(data, indent=2, allow_nan=False) + "\n"


def cpu_seconds(function: Callable[..., object], *args: Any) -> float:
    start = time.process_time()
    function(*args)
    return time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--depth", type=int, default=200)
    parser.add_argument("--samples", type=int, default=512)
    args = parser.parse_args()
    torch.set_num_threads(1)
    report, forward = big_report(args.depth, args.samples)
    units = sum(len(finding.units) for finding in report.findings)
    print(
        f"{args.depth}-layer MLP, {args.samples} samples: {report.summary.dead} dead units, {units} in findings;"
        f" plain forward of the probe {forward:.3f} s CPU"
    )
    print(
        f"{'document':16} {'old s':>8} {'new s':>8} {'speed-up':>9} {'old MB':>7} {'new MB':>7} {'old lines':>10} {'new lines':>10}"
    )
    for name, build in (("report (json)", report_dict), ("sarif", sarif_log)):
        data = build(report)
        old_text, new_text = old_layout(data), json_document(data)
        assert json.loads(old_text) == json.loads(new_text)
        times: dict[str, list[float]] = {"old": [], "new": []}
        for _ in range(args.reps):  # interleaved, so load on a shared machine hits both alike
            times["old"].append(cpu_seconds(old_layout, data))
            times["new"].append(cpu_seconds(json_document, data))
        old, new = statistics.median(times["old"]), statistics.median(times["new"])
        print(
            f"{name:16} {old:8.4f} {new:8.4f} {old / new:8.1f}x {len(old_text) / 1e6:7.2f} {len(new_text) / 1e6:7.2f}"
            f" {old_text.count(chr(10)):10d} {new_text.count(chr(10)):10d}"
        )
    # the whole renderer, dict building included, as the CLI calls it
    full = [cpu_seconds(lambda: json_document(report_dict(report))) for _ in range(args.reps)]
    build = [cpu_seconds(lambda: report_dict(report)) for _ in range(args.reps)]
    print(
        f"render_json as a whole: {statistics.median(full):.4f} s CPU, of which report_dict {statistics.median(build):.4f} s"
    )


if __name__ == "__main__":
    main()
