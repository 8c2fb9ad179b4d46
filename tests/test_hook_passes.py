"""After a first full pass, a model whose sites are all activation modules is observed on those modules' hooks
alone: the same counts as the dispatch mode, no Python on any other op, and back to the dispatch mode when a call
the first pass did not see turns up."""

from __future__ import annotations

import copy
import math
from collections import Counter

import pytest
import torch
from models import ConvBNReluShifted, FunctionalReluNet, ReusedReluBlock
from torch import nn

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
        assert observer.hooked  # every pass after the first ran on the activation modules' hooks
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
def test_hook_passes_count_what_a_brute_force_counts(make: type, shape: tuple[int, ...], reducer: str) -> None:
    torch.manual_seed(0)
    model = make()
    gen = torch.Generator().manual_seed(1)
    batches = [torch.randn(shape, generator=gen) for _ in range(3)]
    batches[2].view(-1)[0] = float("nan")  # the exact path, on hooks too
    hooked, expected = _observe(model, batches, reducer), _brute_force(model, batches)
    assert list(hooked) == list(expected)
    for key, counters in hooked.items():
        positive, fired, highest, nan, samples = expected[key]
        assert (counters.positive, counters.samples_fired, counters.nan, counters.samples) == (
            positive,
            fired,
            nan,
            samples,
        )
        assert counters.max_preactivation == pytest.approx(highest, abs=1e-6)
    if make is Residual:  # ReLU6 saturates, so a wrong cap would show in the sums
        six = hooked[("six", 1)]
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


def test_functional_relus_keep_the_dispatch_mode() -> None:
    with ReluObserver(FunctionalReluNet()) as observer:
        observer.run(torch.randn(3, 6))
        assert not observer.hooked


def test_a_call_first_seen_in_a_later_batch_is_counted_and_ends_the_hook_passes() -> None:
    torch.manual_seed(0)
    model = SometimesTwice()
    negative, positive = -torch.rand(3, 4) - 1, torch.rand(3, 4) + 1
    with ReluObserver(model) as observer:
        observer.run(negative)  # one call: one site
        assert observer.hooked and len(observer.sites) == 1
        observer.run(positive)  # a second call of the same module: a new site, on hooks
        assert not observer.hooked and len(observer.sites) == 2
        observer.run(positive)  # back on the dispatch mode
    second = observer.sites[1]
    with torch.no_grad():
        pre = torch.relu(model.fc(positive)) - 0.5
    assert second.counters.samples == 6
    assert second.counters.positive.tolist() == (2 * (pre > 0).sum(0)).tolist()
    assert any("first ran after the first batch" in w for w in observer.warnings)


def test_forward_passes_outside_run_are_not_observed() -> None:
    model, x = Residual(), torch.randn(2, 3, 6, 6)
    with ReluObserver(model) as observer:
        observer.run(x)
        observer.run(x)
        before = [s.counters.snapshot() for s in observer.sites]
        with torch.no_grad():
            model(x)
        assert [s.counters.snapshot() for s in observer.sites] == before
