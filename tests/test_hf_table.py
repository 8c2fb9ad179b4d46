"""The table groups sites by layer (issue 17) so a deep stack stays readable; JSON keeps every site.

``LayeredReluStack`` is exact (weights 0, 0.25 and -1000; integer inputs), so its golden table does not depend on
the machine. A tiny OPT decoder with many layers checks the rule on what it was made for."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

from relu_doctor import scan
from relu_doctor.render.json_format import render_json
from relu_doctor.render.layers import GROUP_ABOVE, layer_rows, should_group
from relu_doctor.render.table import render_table
from relu_doctor.report import ModelInfo, ProbeInfo, Report

Parser = Callable[[str], list[dict[str, str]]]


class StackBlock(nn.Module):
    """fc1 -> relu1 -> fc2 -> relu2, every weight 0.25 (a unit is the mean of its inputs), biases 0."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.relu1, self.fc2, self.relu2 = nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4), nn.ReLU()
        with torch.no_grad():
            for fc in (self.fc1, self.fc2):
                fc.weight.fill_(0.25)
                fc.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu2(self.fc2(self.relu1(self.fc1(x))))


class LayeredReluStack(nn.Module):
    """9 numbered blocks of 2 relu sites (18 > GROUP_ABOVE): block 1's relu1 has units 0 and 1 killed by a bias
    of -1000, block 6's relu2 unit 0; blocks 0, 2-5 and 7-8 are clean (2-5 fold into one row, 7-8 are too few)."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(StackBlock() for _ in range(9))
        with torch.no_grad():
            self.blocks[1].fc1.bias[:2] = -1000.0
            self.blocks[6].fc2.bias[0] = -1000.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x

    @staticmethod
    def probe() -> torch.Tensor:
        """64 samples of 4 integers in -3..3 (every sample's mean differs in sign across the probe)."""
        return ((torch.arange(64 * 4) * 7 % 11) - 3).float().reshape(64, 4)


@pytest.fixture(scope="module")
def stack_report() -> Report:
    report = scan(
        LayeredReluStack(),
        list(LayeredReluStack.probe().split(16)),
        model_info=ModelInfo("stack.safetensors", "safetensors", "0" * 64, arch="tests:LayeredReluStack"),
        probe_info=ProbeInfo("file", 64, 16, "stack_probe.npy", (4,)),
    )
    return replace(report, tool_version="0.0.0+golden")


def _covered(rows: list[dict[str, str]]) -> list[int]:
    """Site indices the '#' cells cover, in order ('4' or '4–11')."""
    indices: list[int] = []
    for row in rows:
        first, _, last = row["#"].partition("–")
        indices.extend(range(int(first), int(last or first) + 1))
    return indices


def _dead(cell: str) -> int:
    return int(re.match(r"[\d,]+", cell)[0].replace(",", ""))  # type: ignore[index]


def test_stack_table_golden(stack_report: Report, golden: Callable[[str, str], str]) -> None:
    assert len(stack_report.sites) == 18 > GROUP_ABOVE and should_group(stack_report)
    actual = render_table(stack_report, width=110)
    assert actual == golden("table_by_layer.golden", actual)


def test_grouped_rows_cover_every_site_once_and_keep_the_totals(stack_report: Report, table_rows: Parser) -> None:
    rows = table_rows(render_table(stack_report, width=None))
    # layers 0, 1, 2-5 folded, 6, 7, 8 -> 6 rows for 18 sites
    assert len(rows) == 6
    assert _covered(rows) == list(range(18))
    assert sum(_dead(row["dead"]) for row in rows) == stack_report.summary.dead == 3
    assert rows[1]["site"].startswith("blocks.1 (2 sites; worst relu1)") and rows[1]["status"] != "ok"
    assert rows[2]["site"] == "blocks.2–5 (4 layers, 8 sites)" and rows[2]["status"] == "ok"
    assert [row["status"] for row in rows[4:]] == ["ok", "ok"]  # 2 clean layers are too few to fold
    data = json.loads(render_json(stack_report))
    assert [site["name"] for site in data["sites"]] == [site.name for site in stack_report.sites]  # JSON stays flat


def test_grouping_can_be_forced_either_way(stack_report: Report, table_rows: Parser) -> None:
    assert len(table_rows(render_table(stack_report, width=None, by_layer=False))) == 18
    small = replace(stack_report, sites=stack_report.sites[:6])
    assert not should_group(small)
    assert len(table_rows(render_table(small, width=None))) == 6
    assert len(table_rows(render_table(small, width=None, by_layer=True))) == 3


def test_many_layer_opt_decoder_reads_one_row_per_layer_at_most(tmp_path: Path, table_rows: Parser) -> None:
    pytest.importorskip("transformers")
    from _hf_models import TEXTS, make_tokenizer, opt_model

    from relu_doctor.engine.batches import MaskedBatch

    tokenizer = make_tokenizer()
    model = opt_model(layers=20, vocab=len(tokenizer))
    encoded = tokenizer(TEXTS, padding=True, return_tensors="pt")
    report = scan(model, [MaskedBatch(encoded["input_ids"], encoded["attention_mask"])])
    assert len(report.sites) == 20 and should_group(report)
    rows = table_rows(render_table(report, width=None))
    assert len(rows) == len(layer_rows(report)) <= 20
    assert _covered(rows) == list(range(20))
    assert rows[0]["site"] == "model.decoder.layers.0.activation_fn" and _dead(rows[0]["dead"]) >= 4
    assert sum(_dead(row["dead"]) for row in rows) == report.summary.dead
