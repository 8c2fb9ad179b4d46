"""Names from files (a checkpoint's path, stats files' site names) cannot inject lines, escapes or workflow commands."""

from __future__ import annotations

import csv
import io
import re
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest
import torch
from _hostile import ARCH, run_inprocess
from _loading_helpers import reference_model

EVIL = "m\n::add-mask::secret\r\x1b[2J\x00\x07::error file=x::pwned"
COMMAND = re.compile(r"^::(error|warning|notice)( [^:]*)?::")


@pytest.fixture(scope="module")
def evil_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("inject")
    path = folder / EVIL.replace("\x00", "0").replace("/", "_")  # a file name may hold anything but NUL and /
    torch.save(reference_model().state_dict(), path)
    return path


def _lines(text: str) -> list[str]:
    return text.split("\n")


@pytest.mark.parametrize("fmt", ["table", "markdown", "csv", "junit", "json", "sarif", "github"])
def test_no_stdout_line_is_a_workflow_command_or_holds_a_control_character(evil_model: Path, fmt: str) -> None:
    outcome = run_inprocess(
        "scan", str(evil_model), "--arch", ARCH, "--no-simulate", "-f", fmt, "--max-dead-fraction", "0"
    )
    assert outcome.code in (0, 1), outcome.stderr
    for line in _lines(outcome.stdout):
        assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f]", line), f"{fmt}: control character in {line!r}"
        if fmt == "github":
            assert not line or COMMAND.match(line), f"not one of our commands: {line!r}"
        else:
            assert not line.lstrip().startswith("::"), f"{fmt}: {line!r}"
    if fmt == "github":  # the name's colons are escaped inside our properties, so it cannot end one early
        assert "%3A%3Aadd-mask%3A%3A" in outcome.stdout


def test_junit_stays_valid_xml_and_csv_keeps_one_row_per_site(evil_model: Path) -> None:
    junit = run_inprocess("scan", str(evil_model), "--arch", ARCH, "--no-simulate", "-f", "junit").stdout
    ElementTree.fromstring(junit)  # raises on invalid XML
    table = run_inprocess("scan", str(evil_model), "--arch", ARCH, "--no-simulate", "-f", "csv").stdout
    rows = list(csv.reader(io.StringIO(table)))
    assert len(rows) == len(table.strip().split("\n"))  # no field spans two lines


def test_the_escape_keeps_the_name_readable(evil_model: Path) -> None:
    table = run_inprocess("scan", str(evil_model), "--arch", ARCH, "--no-simulate", "-f", "markdown").stdout
    assert "m\\n" in table and "\\x1b[2J" in table
