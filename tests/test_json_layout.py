"""The one JSON layout (relu_doctor/render/json_layout.py): the same data as ``json.dumps(data, indent=2)``, the
same strictness (no NaN, string keys), arrays of scalars on one line; every JSON output goes through it."""

from __future__ import annotations

import json
import math
import random
from dataclasses import replace
from typing import Any

import pytest
from models import GoldenReportNet

from relu_doctor import scan
from relu_doctor.render import BATCH_FORMATS, REPORT_FORMATS
from relu_doctor.render.json_format import report_dict
from relu_doctor.render.json_layout import json_document
from relu_doctor.render.sarif import sarif_log
from relu_doctor.report import ModelInfo, ModelScan, ProbeInfo, Report, ScanBatch


def _stdlib(data: Any) -> Any:
    """The oracle: what the old layout (``json.dumps(..., indent=2, allow_nan=False)``) parses back to."""
    return json.loads(json.dumps(data, indent=2, allow_nan=False))


def test_small_documents_are_laid_out_exactly_so() -> None:
    assert json_document({}) == "{}\n" and json_document([]) == "[]\n"
    assert json_document({"units": [3, 17, 42], "rate": None}) == '{\n  "units": [3, 17, 42],\n  "rate": null\n}\n'
    # an array that holds containers keeps one member per line; its flat members are still one line each
    assert json_document([[1, 2], [], {"a": {}}]) == '[\n  [1, 2],\n  [],\n  {\n    "a": {}\n  }\n]\n'
    # strings escaped as json.dumps escapes them (ASCII only, control characters), tuples are arrays
    assert (
        json_document({"é\n": ("x\x1b", True, -0.0, 1e300)})
        == '{\n  "\\u00e9\\n": ["x\\u001b", true, -0.0, 1e+300]\n}\n'
    )
    # each single-type array takes its own fast path; every one must read as json.dumps writes it
    flat: list[Any] = [[3, 17, 10**30], (3, 17), [0.5, -1e-300], [True, False], ["a", "\u2028"], [None], [1, None, 0.5]]
    for array in flat:
        assert json_document(array) == json.dumps(array, separators=(", ", ": ")) + "\n"


def _random_value(rng: random.Random, depth: int) -> Any:
    scalars = [None, True, False, rng.randint(-(10**20), 10**20), rng.uniform(-1e6, 1e6), 5e-324, 's"\\é\u2028\t']
    kind = rng.randrange(5 if depth < 4 else 1)
    if kind == 0:
        return rng.choice(scalars)
    if kind in (1, 2):
        return [rng.choice(scalars) for _ in range(rng.randrange(6))]  # a flat array (often empty)
    if kind == 3:
        return [_random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {f"k{i}\u00fc": _random_value(rng, depth + 1) for i in range(rng.randrange(4))}


def test_random_documents_parse_to_the_same_data_with_the_same_key_order() -> None:
    rng = random.Random(0)
    for _ in range(300):
        data = _random_value(rng, 0)
        text = json_document(data)
        assert json.loads(text) == _stdlib(data)
        # key order too: the old layout of what we wrote is the old layout of the data
        assert json.dumps(json.loads(text), indent=2) == json.dumps(data, indent=2)
        assert text.isascii() and text.endswith("\n")


def test_it_is_as_strict_as_allow_nan_false() -> None:
    for bad in (math.nan, [math.inf], [0.5, math.nan], {"a": [1, -math.inf]}, {"a": {"b": math.nan}}):
        with pytest.raises(ValueError, match="Out of range float"):
            json_document(bad)
    with pytest.raises(TypeError, match="keys must be strings"):
        json_document({1: 2})
    with pytest.raises(TypeError, match="not JSON serializable"):
        json_document({"a": {1, 2}})


@pytest.fixture(scope="module")
def report() -> Report:
    model = GoldenReportNet()
    return scan(
        model,
        list(GoldenReportNet.probe().split(50)),
        model_info=ModelInfo("golden.safetensors", "safetensors", "0" * 64, arch="tests/models.py:GoldenReportNet"),
        probe_info=ProbeInfo("file", 200, 50, "golden_probe.npy", (4,)),
    )


def test_report_and_sarif_hold_the_data_the_old_layout_held(report: Report) -> None:
    assert json.loads(REPORT_FORMATS.render(report, "json")) == _stdlib(report_dict(report))
    assert json.loads(REPORT_FORMATS.render(report, "sarif")) == _stdlib(sarif_log(report))
    # the unit lists are one line each: the document has one line per key, not one per unit
    text = REPORT_FORMATS.render(report, "json")
    assert '"dead_units": [5],' in text and '"activation_shape": [50, 6],' in text


def test_batch_json_holds_every_models_report_as_the_report_json_does(report: Report) -> None:
    other = replace(report, model=replace(report.model, path="other.safetensors"))
    batch = ScanBatch((ModelScan("golden.safetensors", report), ModelScan("other.safetensors", other)))
    data = json.loads(BATCH_FORMATS.render(batch, "json"))
    assert data["reports"] == [_stdlib(report_dict(report)), _stdlib(report_dict(other))]
    sarif = json.loads(BATCH_FORMATS.render(batch, "sarif"))
    assert sarif["runs"] == [*_stdlib(sarif_log(report))["runs"], *_stdlib(sarif_log(other))["runs"]]
