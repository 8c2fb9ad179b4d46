"""Every pass after the first replays it (engine/replay.py): the relu calls are found again at the torch-function
level, with hooks on the sites' owner modules only. Counts equal a brute force and a first-pass-only scan of the
same samples; no op reaches the dispatch mode; a pass that is not a replay of the first (data-dependent control
flow) is dropped and run under the dispatch mode."""

from __future__ import annotations

import copy
import math
from collections import Counter

import pytest
import torch
import torch.nn.functional as F
from models import ConvBNReluShifted, EveryReluForm, FunctionalReluNet, ReusedReluBlock, TokenFFN
from torch import nn

from relu_doctor import scan
from relu_doctor.engine.observe import ReluObserver
from relu_doctor.engine.passes import ForwardingMode
from relu_doctor.engine.reduce import fused


class Residual(nn.Module):
    """In-place ReLU, one ReLU module called twice, ReLU6, conv and linear sites: every hookable form."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.act = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.six = nn.ReLU6()
        self.fc = nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.conv(x))
        h = self.act(self.conv2(h) + h)
        return self.six(self.fc(h.mean(dim=(2, 3))) * 40)


class SometimesTwice(nn.Module):
    """Calls its ReLU a second time only for inputs whose sum is positive: data-dependent control flow."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 6)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu(self.fc(x))
        if float(x.sum()) > 0:
            h = self.relu(h - 0.5)
        return h


def _observe(model: nn.Module, batches: list[torch.Tensor], reducer: str = "torch") -> dict:
    with ReluObserver(model, reducer=reducer) as observer:
        for batch in batches:
            observer.run(batch)
        assert observer.replaying  # every pass after the first replayed it
    return {(s.module_path, s.call_index): s.counters.snapshot() for s in observer.sites}


def _brute_force(model: nn.Module, batches: list[torch.Tensor]) -> dict:
    """Per (module path, call): counts from the pre-activations that plain forward pre-hooks see (unit axis 1)."""
    seen: dict[tuple[str, int], list[torch.Tensor]] = {}
    calls: Counter[str] = Counter()

    def keep(path: str):  # type: ignore[no-untyped-def]
        def hook(module: nn.Module, args: tuple) -> None:
            calls[path] += 1
            seen.setdefault((path, calls[path]), []).append(args[0].detach().clone().double())

        return hook

    twin = copy.deepcopy(model).eval()
    for path, module in twin.named_modules():
        if isinstance(module, (nn.ReLU, nn.Hardtanh)):
            module.register_forward_pre_hook(keep(path))
    with torch.no_grad():
        for batch in batches:
            calls.clear()
            twin(batch)
    counts = {}
    for key, pres in seen.items():
        other = [d for d in range(pres[0].dim()) if d != 1]
        positions = [d for d in other if d != 0]
        finite = [torch.where(p.isfinite(), p, -math.inf) for p in pres]
        sample_max = [p.amax(dim=positions) if positions else p for p in finite]
        counts[key] = (
            tuple(sum(((p > 0) & p.isfinite()).sum(dim=other) for p in pres).tolist()),
            tuple(sum((m > 0).sum(dim=0) for m in sample_max).tolist()),
            tuple(torch.stack([p.amax(dim=other) for p in finite]).amax(dim=0).float().tolist()),
            tuple(sum(p.isnan().sum(dim=other) for p in pres).tolist()),
            sum(p.shape[0] for p in pres),
        )
    return counts


REDUCERS = ["torch", pytest.param("fused", marks=pytest.mark.skipif(not fused.available(), reason="no numba"))]


@pytest.mark.parametrize("reducer", REDUCERS)
@pytest.mark.parametrize(
    ("make", "shape"),
    [(Residual, (4, 3, 6, 6)), (ReusedReluBlock, (5, 8)), (ConvBNReluShifted, (4, 3, 5, 5))],
    ids=["residual", "reused-relu", "conv-bn"],
)
def test_replay_passes_count_what_a_brute_force_counts(make: type, shape: tuple[int, ...], reducer: str) -> None:
    torch.manual_seed(0)
    model = make()
    gen = torch.Generator().manual_seed(1)
    batches = [torch.randn(shape, generator=gen) for _ in range(3)]
    batches[2].view(-1)[0] = float("nan")  # the exact path, on hooks too
    replayed, expected = _observe(model, batches, reducer), _brute_force(model, batches)
    assert list(replayed) == list(expected)
    for key, counters in replayed.items():
        positive, fired, highest, nan, samples = expected[key]
        assert (counters.positive, counters.samples_fired, counters.nan, counters.samples) == (
            positive,
            fired,
            nan,
            samples,
        )
        assert counters.max_preactivation == pytest.approx(highest, abs=1e-6)
    if make is Residual:  # ReLU6 saturates, so a wrong cap would show in the sums
        six = replayed[("six", 1)]
        assert max(six.max_preactivation) > 6
        assert max(six.activation_sum) <= 6 * six.positions


def test_no_op_reaches_python_after_the_first_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []
    real = ForwardingMode.__torch_dispatch__

    def spy(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        seen.append(str(func))
        return real(self, func, types, args, kwargs)

    monkeypatch.setattr(ForwardingMode, "__torch_dispatch__", spy)
    model, x = Residual(), torch.randn(2, 3, 6, 6)
    with ReluObserver(model) as observer:
        observer.run(x)
        first = len(seen)
        observer.run(x)
        observer.run(x)
    assert first >= 9 and len(seen) == first  # conv, relu, conv, add, relu, mean, linear, mul, hardtanh
    assert observer.sites[0].counters.samples == 6


def _snapshots(batches: list[torch.Tensor], make: type) -> list:
    torch.manual_seed(0)
    report = scan(make().eval(), batches, reducer="torch")
    return [(s.name, s.op, s.counters) for s in report.sites]


@pytest.mark.parametrize(
    ("make", "shape"),
    [(EveryReluForm, (24, 3)), (FunctionalReluNet, (24, 6)), (TokenFFN, (24, 6, 8))],
    ids=["every-relu-form", "functional", "tokens"],
)
def test_functional_relus_are_replayed_and_count_what_one_first_pass_counts(make: type, shape: tuple) -> None:
    probe = torch.randn(shape, generator=torch.Generator().manual_seed(2))
    probe.view(-1)[5] = float("inf")  # the exact path inside a replay too
    whole = _snapshots([probe], make)  # one pass: the dispatch mode only
    streamed = _snapshots(list(probe.split(5)), make)  # a first pass, then four replays
    assert [s[:2] for s in streamed] == [s[:2] for s in whole]
    for (_, _, a), (_, _, b) in zip(streamed, whole):
        assert (a.positive, a.samples_fired, a.max_preactivation) == (b.positive, b.samples_fired, b.max_preactivation)
        assert (a.positions, a.samples, a.nan, a.inf) == (b.positions, b.samples, b.nan, b.inf)
        assert a.activation_sum == pytest.approx(b.activation_sum, rel=1e-5, abs=1e-5)
    with ReluObserver(make().eval()) as observer:
        for batch in probe.split(5):
            observer.run(batch)
        assert observer.replaying


def test_a_call_first_seen_in_a_later_batch_is_counted_and_ends_the_replays() -> None:
    torch.manual_seed(0)
    model = SometimesTwice()
    negative, positive = -torch.rand(3, 4) - 1, torch.rand(3, 4) + 1
    with ReluObserver(model) as observer:
        observer.run(negative)  # one call: one site
        assert observer.replaying and len(observer.sites) == 1
        observer.run(positive)  # a second call of the same module: not a replay, so run under the dispatch mode
        assert not observer.replaying and len(observer.sites) == 2
        observer.run(positive)
    first, second = observer.sites
    with torch.no_grad():
        pre = torch.relu(model.fc(positive)) - 0.5
    assert (first.counters.samples, second.counters.samples) == (9, 6)
    assert second.counters.positive.tolist() == (2 * (pre > 0).sum(0)).tolist()
    assert second.producer is not None  # found by a dispatched pass: its provenance is known


class Inner(nn.Module):
    """Runs F.relu on its input when told to."""

    def forward(self, h: torch.Tensor, relu: bool) -> torch.Tensor:
        return F.relu(h) if relu else h


class MovesItsRelu(nn.Module):
    """Its relu runs in its own forward for a negative-sum batch, inside a child that owned no site otherwise: the
    same number of relu calls, of the same shape, so only the module running tells the two apart."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 6)
        self.inner = Inner()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        positive = float(x.sum()) > 0
        h = self.inner(self.fc(x), positive)
        return h if positive else F.relu(h)


def test_a_relu_that_moved_to_another_module_is_not_replayed_as_the_old_site() -> None:
    model = MovesItsRelu()
    negative, positive = -torch.rand(3, 4) - 1, torch.rand(5, 4) + 1
    with ReluObserver(model) as observer:
        observer.run(negative)
        observer.run(torch.zeros(2, 4))  # a replay: same module, same call
        assert observer.replaying
        observer.run(positive)
    assert [(s.module_path, s.counters.samples) for s in observer.sites] == [("", 5), ("inner", 5)]


def test_forward_passes_outside_run_are_not_observed() -> None:
    model, x = Residual(), torch.randn(2, 3, 6, 6)
    with ReluObserver(model) as observer:
        observer.run(x)
        observer.run(x)
        before = [s.counters.snapshot() for s in observer.sites]
        with torch.no_grad():
            model(x)
        assert [s.counters.snapshot() for s in observer.sites] == before


class LateLayer(nn.Module):
    """A layer (no relu) that runs only for positive-sum batches, next to a relu that runs always."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.late = nn.Linear(4, 4)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu(self.fc(x))
        return self.late(h) if float(x.sum()) > 0 else h


def test_a_module_first_called_in_a_replay_is_not_reported_as_never_called() -> None:
    model = LateLayer()
    negative, positive = -torch.rand(3, 4) - 1, torch.rand(3, 4) + 1
    with ReluObserver(model) as observer:
        observer.run(negative)
        assert observer.replaying and "late" not in observer.tracker.ever_called
        observer.run(positive)
        assert observer.replaying  # the same relu calls: still a replay
    assert "late" in observer.tracker.ever_called
    report = scan(model, [negative, positive])
    assert not any("never called" in w for w in report.warnings), report.warnings
    assert any("never called" in w for w in scan(model, [negative]).warnings)


def test_counters_replaced_between_passes_keep_counting_like_one_scan() -> None:
    # The torch reducer keeps small linear sites' counters as rows of shared tensors; an all-reduce or a merge
    # replaces a site's counters object between passes, and the next passes must count into the new one.
    torch.manual_seed(0)
    model = ReusedReluBlock()
    batches = list(torch.randn(12, 8, generator=torch.Generator().manual_seed(3)).split(4))
    with ReluObserver(model, reducer="torch") as observer:
        for batch in batches[:2]:
            observer.run(batch)
        for site in observer.sites:
            site.counters = site.counters.copy()  # what combine_counters does (a new object, same counts)
        observer.run(batches[2])
    whole = scan(model, [torch.cat(batches)], reducer="torch")
    for site, expected in zip(observer.sites, whole.sites):
        got = site.counters.snapshot()
        assert (got.positive, got.samples_fired, got.samples) == (
            expected.counters.positive,
            expected.counters.samples_fired,
            expected.counters.samples,
        )
        assert got.max_preactivation == expected.counters.max_preactivation
