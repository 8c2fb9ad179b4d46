"""Shared pytest setup: the ``--regen-golden`` option and the ``golden`` fixture that uses it.

Regenerate every golden file after a deliberate renderer change with one command:

    python -m pytest tests/test_render_golden.py --regen-golden

then review the diff of tests/golden/ before committing.
"""

from __future__ import annotations

import os

# Every test model is tiny: torch's intra-op threads only add start-up and spin-wait costs, and on a machine whose
# cores are shared (CI runners, parallel jobs) two spinning threads per process made the suite twice as slow.
# Set before torch is imported, so this process and every subprocess a test starts (CLI runs, torchrun ranks)
# use one thread; no count or verdict depends on it.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

from collections.abc import Callable
from pathlib import Path

import pytest

GOLDEN_DIR = Path(__file__).parent / "golden"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--regen-golden",
        action="store_true",
        default=False,
        help="rewrite tests/golden/*.golden from the current renderers instead of comparing with them",
    )


@pytest.fixture
def golden(request: pytest.FixtureRequest) -> Callable[[str, str], str]:
    """``golden(name, actual)`` -> the stored text of tests/golden/<name> (written from ``actual`` with --regen-golden)."""
    regen = bool(request.config.getoption("--regen-golden"))

    def expected(name: str, actual: str) -> str:
        path = GOLDEN_DIR / name
        if regen:
            GOLDEN_DIR.mkdir(exist_ok=True)
            path.write_text(actual, encoding="utf-8")
            return actual
        if not path.exists():
            pytest.fail(
                f"golden file {path} is missing; create it with: python -m pytest {request.node.fspath} --regen-golden"
            )
        return path.read_text(encoding="utf-8")

    return expected


def parse_table_rows(text: str) -> list[dict[str, str]]:
    """Body rows of a rich table (box-drawn), as {header: cell}; headers wrapped over lines are joined.

    Keyed by header name, not position, so tests survive new and dropped columns. Continuation lines of a folded
    row (empty ``status`` cell, or first cell without one) are appended to the row above.
    """
    header_lines = [line.split("┃")[1:-1] for line in text.splitlines() if line.startswith("┃")]
    headers = [" ".join(part.strip() for part in column if part.strip()) for column in zip(*header_lines)]
    rows: list[dict[str, str]] = []
    for line in text.splitlines():
        if not line.startswith("│"):
            continue
        cells = [cell.strip() for cell in line.split("│")[1:-1]]
        # a folded row continues on lines whose status cell (never wrapped, never dropped) is empty
        first = cells[headers.index("status")] if "status" in headers else cells[0]
        if first or not rows:
            rows.append(dict(zip(headers, cells)))
        else:
            rows[-1] = {h: f"{rows[-1][h]} {c}".strip() for h, c in zip(headers, cells)}
    return rows


def parse_markdown_rows(text: str) -> list[dict[str, str]]:
    """Body rows of the first GitHub-flavoured Markdown table, as {header: cell}."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    split = [[cell.strip() for cell in line.strip("|").split(" | ")] for line in lines]
    headers = split[0]
    return [dict(zip(headers, cells)) for cells in split[2:]]


@pytest.fixture
def table_rows() -> Callable[[str], list[dict[str, str]]]:
    """The rich-table parser, as a fixture so every test file can use it."""
    return parse_table_rows


@pytest.fixture
def markdown_rows() -> Callable[[str], list[dict[str, str]]]:
    """The Markdown-table parser, as a fixture."""
    return parse_markdown_rows
