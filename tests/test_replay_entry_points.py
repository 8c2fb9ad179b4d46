"""Replay passes that find the relu calls at the relu family's own entry points (engine/replay.py EntryPoints)
instead of under a torch-function mode that every torch call pays for. The counts must be bit-identical to the
mode's replay; a relu the entry points cannot see (a reference taken before the pass, a call from another thread)
must send the pass to the mode, never go uncounted; everything replaced is put back, exception or not."""

from __future__ import annotations

import sys
import threading
import types

import pytest
import torch
import torch.nn.functional as F
from models import ConvBNReluShifted, EveryReluForm, FunctionalReluNet, ReusedReluBlock, TokenFFN
from torch import nn

from relu_doctor.engine import replay
from relu_doctor.engine.observe import ReluObserver


class EveryEntryPoint(nn.Module):
    """One call through each entry point the replay replaces, in-place forms included, a module attribute that
    holds F.relu (as nn.TransformerEncoderLayer's activation does), a reused nn.ReLU, a keyword input, and a
    hardtanh(-1, 1) that is not a site."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 6)
        self.act = F.relu  # an instance attribute holding the function itself
        self.reused = nn.ReLU()
        self.six = nn.ReLU6(inplace=True)
        self.clip = nn.Hardtanh(0.0, 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x) * 4
        outputs = [
            F.relu(h),
            F.relu(h.clone(), inplace=True),  # runs torch.relu_ inside: one call, counted once
            F.relu_(h.clone()),
            F.relu(input=h),
            F.relu6(h),
            F.relu6(h.clone(), inplace=True),
            F.hardtanh(h, 0.0, 6.0),
            F.hardtanh_(h.clone(), 0.0, 6.0),
            F.hardtanh(h),  # (-1, 1): not a site
            F.threshold(h, 0.0, 0.0),
            F.threshold_(h.clone(), 0.0, 0.0),
            torch.relu(h),
            torch.relu_(h.clone()),
            torch.threshold(h, 0.0, 0.0),
            torch._C._nn.relu6(h),
            torch._C._nn.hardtanh(h, 0.0, 6.0),
            h.relu(),
            h.clone().relu_(),
            self.act(h),
            self.reused(h),
            self.reused(h - 1),
            self.six(h.clone()),
            self.clip(h),
        ]
        return torch.stack(outputs).sum(0)


def _encoder() -> nn.Module:
    layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
    return nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)


MODELS = [
    (EveryEntryPoint, (20, 3)),
    (EveryReluForm, (20, 3)),
    (FunctionalReluNet, (20, 6)),
    (TokenFFN, (20, 6, 8)),
    (ReusedReluBlock, (20, 8)),
    (ConvBNReluShifted, (20, 3, 5, 5)),
    (_encoder, (20, 5, 8)),
]


def _observe(make, shape, entry_points: bool, monkeypatch: pytest.MonkeyPatch) -> tuple[list, set[str]]:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(replay, "USE_ENTRY_POINTS", entry_points)
    torch.manual_seed(0)
    model = make().eval()
    probe = torch.randn(shape, generator=torch.Generator().manual_seed(4))
    probe.view(-1)[7] = float("nan")
    ways = set()
    with ReluObserver(model, reducer="torch") as observer:
        for batch in probe.split(4):
            observer.run(batch)
            if observer._replay is not None and observer._passes > 1:
                ways.add(observer._replay.last_way)
        assert observer.replaying
    return [(s.key, s.op, s.counters.snapshot()) for s in observer.sites], ways


def _identical(a: list, b: list) -> None:
    assert [x[:2] for x in a] == [y[:2] for y in b]
    for (_, _, x), (_, _, y) in zip(a, b):
        assert (x.positions, x.samples, x.nan, x.inf) == (y.positions, y.samples, y.nan, y.inf)
        for field in ("positive", "samples_fired", "max_preactivation", "activation_sum"):
            assert torch.equal(torch.as_tensor(getattr(x, field)), torch.as_tensor(getattr(y, field))), field


@pytest.mark.parametrize(("make", "shape"), MODELS, ids=lambda v: getattr(v, "__name__", ""))
def test_entry_point_replays_count_bit_for_bit_what_the_mode_replays_count(
    make, shape, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    cheap, cheap_ways = _observe(make, shape, True, monkeypatch)
    mode, mode_ways = _observe(make, shape, False, monkeypatch)
    assert cheap_ways == {"entry points"} and mode_ways == {"torch function mode"}
    _identical(cheap, mode)


def test_every_entry_point_is_a_site_counted_once() -> None:
    with ReluObserver(EveryEntryPoint().eval()) as observer:
        for batch in torch.randn(8, 3).split(4):
            observer.run(batch)
        assert observer._replay is not None and observer._replay.last_way == "entry points"
    assert len(observer.sites) == 22  # 23 calls, hardtanh(-1, 1) is not one
    assert {s.counters.samples for s in observer.sites} == {8}


def _originals() -> list:
    """Every replaced entry point as it is now (torch.Tensor's own entries too: another test may have left one)."""
    return [
        vars(torch.Tensor).get("relu"),
        vars(torch.Tensor).get("relu_"),
        F.relu,
        F.relu_,
        F.relu6,
        F.hardtanh,
        F.threshold,
        torch.relu,
        torch.relu_,
        torch.threshold,
        torch._C._nn.relu6,
        torch._C._nn.hardtanh,
    ]


class FailsAfterItsRelu(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 4)
        self.act = F.relu
        self.fail = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.fc(x)) + x.relu().sum()
        if self.fail:
            raise RuntimeError("boom")
        return h


def test_everything_replaced_is_put_back_even_when_the_pass_raises() -> None:
    before = _originals()
    model = FailsAfterItsRelu()
    with ReluObserver(model) as observer:
        observer.run(torch.randn(2, 3))
        observer.run(torch.randn(2, 3))
        assert observer._replay is not None and observer._replay.last_way == "entry points"
        model.fail = True
        with pytest.raises(RuntimeError, match="boom"):
            observer.run(torch.randn(2, 3))
        assert _originals() == before and model.act is F.relu
        model.fail = False
        observer.run(torch.randn(2, 3))
    assert _originals() == before and model.act is F.relu
    assert [s.counters.samples for s in observer.sites] == [6, 6]  # the failed pass was dropped


class CapturedOnABranch(nn.Module):
    """Calls a relu taken from a module's globals (like ``from torch.nn.functional import relu``) only for
    positive-sum batches: the first pass cannot see it, so only the reference's existence can keep it counted."""

    def __init__(self, captured: types.ModuleType) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 6)
        self.relu = nn.ReLU()
        self.captured = captured

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu(self.fc(x))
        return self.captured.relu(h - 0.5) if float(x.sum()) > 0 else h


def test_a_relu_held_as_a_global_elsewhere_keeps_the_replays_under_the_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    captured = types.ModuleType("captured_relu_user")
    captured.relu = F.relu  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, captured.__name__, captured)
    negative, positive = -torch.rand(3, 4) - 1, torch.rand(3, 4) + 1
    with ReluObserver(CapturedOnABranch(captured)) as observer:
        observer.run(negative)
        assert observer._replay is not None and observer._replay.entries is None
        observer.run(positive)  # the mode sees the new call: not a replay, so it runs under the dispatch mode
        assert not observer.replaying
    assert [s.counters.samples for s in observer.sites] == [6, 3]


class CapturedInAClosure(nn.Module):
    """Every pass calls torch.relu through a reference bound before any pass (a closure, not a global)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 6)
        relu = torch.relu
        self.act = lambda h: relu(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.fc(x)) + F.relu(x).sum()


def test_a_relu_the_entry_points_missed_in_the_first_pass_keeps_the_replays_under_the_mode() -> None:
    x = torch.randn(6, 4)
    with ReluObserver(CapturedInAClosure()) as observer:
        for batch in x.split(2):
            observer.run(batch)
        assert not observer._entries.proven
        assert observer.replaying and observer._replay is not None
        assert observer._replay.last_way == "torch function mode"
    assert [s.counters.samples for s in observer.sites] == [6, 6]


class ReluInAThread(nn.Module):
    """Each forward starts a thread that makes relu calls (a data loader's thread, say) while its own run."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 6)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        thread = threading.Thread(target=lambda: [F.relu(torch.randn(3)), torch.relu(h), h.relu()])
        thread.start()
        thread.join()
        return self.relu(h) + F.relu(h)


@pytest.mark.parametrize("entry_points", [True, False])
def test_relu_calls_of_another_thread_during_a_pass_are_not_counted(
    entry_points: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(replay, "USE_ENTRY_POINTS", entry_points)
    with ReluObserver(ReluInAThread()) as observer:
        for batch in torch.randn(8, 4).split(2):
            observer.run(batch)
        assert observer.replaying and observer._replay is not None
        assert observer._replay.last_way == ("entry points" if entry_points else "torch function mode")
    assert [(s.module_path, s.counters.samples) for s in observer.sites] == [("relu", 8), ("", 8)]


def test_a_second_observer_replaying_at_the_same_time_uses_the_mode() -> None:
    before = _originals()
    model = ReusedReluBlock()
    with ReluObserver(model) as first, ReluObserver(model) as second:
        first.run(torch.randn(2, 8))
        second.run(torch.randn(2, 8))
        assert first._replay is not None and second._replay is not None
        with first._replay.replaying(tolerant=True):
            assert first._replay.last_way == "entry points"
            with second._replay.replaying(tolerant=True):
                assert second._replay.last_way == "torch function mode"
    assert _originals() == before


class SometimesTwice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 6)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu(self.fc(x))
        return self.relu(h - 0.5) if float(x.sum()) > 0 else h


@pytest.mark.parametrize("entry_points", [True, False])
def test_a_training_pass_with_a_stray_call_leaves_it_uncounted_and_says_so(
    entry_points: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(replay, "USE_ENTRY_POINTS", entry_points)
    before = _originals()
    model = SometimesTwice().train()
    observer = ReluObserver(model)
    negative, positive = -torch.rand(3, 4) - 1, torch.rand(3, 4) + 1
    with observer.observed_pass(negative) as record:
        record(model(negative))
    assert observer.replaying and observer._replay is not None and observer._replay.entries is not None
    with observer.observed_pass(negative) as record:
        record(model(negative))
    assert observer._replay.last_way == ("entry points" if entry_points else "torch function mode")
    with observer.observed_pass(positive) as record:
        record(model(positive))
    assert not observer.replaying and any("uncounted" in w for w in observer.warnings)
    assert [s.counters.samples for s in observer.sites] == [9]  # its first call matched and counts; not the stray
    assert _originals() == before
