"""Per-unit counters: streaming a probe in batches gives the numbers of one big batch, and they are right."""

from __future__ import annotations

import pytest
import torch
from models import ConvBNReluShifted, NaNUnit, TokenFFN

from relu_doctor import scan
from relu_doctor.activations import MEMBERS_BY_NAME
from relu_doctor.engine.counters import UnitAccumulator
from relu_doctor.engine.reduce import count_batch
from relu_doctor.engine.reduce.torch_reducer import TorchReducer, count_and_sum, reduce_sample_max
from relu_doctor.report import UnitCounters

RELU = MEMBERS_BY_NAME["relu"]


def _probe(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def _assert_same_counters(streamed: UnitCounters, whole: UnitCounters) -> None:
    """Counts and maxima exactly equal; sums equal up to float summation order."""
    assert streamed.positive == whole.positive
    assert (streamed.positions, streamed.samples) == (whole.positions, whole.samples)
    assert streamed.samples_fired == whole.samples_fired
    assert streamed.nan == whole.nan and streamed.inf == whole.inf
    assert streamed.max_preactivation == whole.max_preactivation
    assert streamed.activation_sum == pytest.approx(whole.activation_sum, rel=1e-6, abs=1e-6)


def _assert_brute_force(counters: UnitCounters, pre: torch.Tensor, unit_axis: int, cap: float = torch.inf) -> None:
    """Every counter of a (samples first) site equals a count over its whole pre-activation, NaN and Inf apart."""
    other = tuple(d for d in range(pre.dim()) if d != unit_axis)
    positions = tuple(d for d in other if d != 0)
    finite = torch.isfinite(pre)
    fired = (pre > 0) & finite
    assert counters.positive == tuple(fired.sum(other).tolist())
    per_sample = fired.any(dim=positions) if positions else fired
    assert counters.samples_fired == tuple(per_sample.sum(0).tolist())
    assert counters.max_preactivation == tuple(torch.where(finite, pre, -torch.inf).amax(other).tolist())
    assert counters.nan == tuple(torch.isnan(pre).sum(other).tolist())
    assert counters.inf == tuple(torch.isinf(pre).sum(other).tolist())
    expected_sum = torch.where(finite, pre.clamp(min=0, max=cap), 0).double().sum(other)
    assert counters.activation_sum == pytest.approx(expected_sum.tolist(), rel=1e-5)
    assert (counters.positions, counters.samples) == (pre.numel() // pre.shape[unit_axis], len(pre))


@pytest.mark.parametrize(
    ("model_type", "shape"),
    [(ConvBNReluShifted, (48, 3, 5, 5)), (TokenFFN, (48, 6, 8)), (NaNUnit, (48, 4))],
    ids=["conv-bn", "tokens", "nan"],
)
def test_streamed_batches_equal_one_big_batch(model_type: type, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    model, probe = model_type(), _probe(shape)
    whole = scan(model, [probe])
    streamed = scan(model, list(probe.split(7)))  # 7+7+...+6: uneven batches on purpose
    assert len(streamed.sites) == len(whole.sites) == 1
    _assert_same_counters(streamed.sites[0].counters, whole.sites[0].counters)
    assert streamed.sites[0].dead_units == whole.sites[0].dead_units
    assert streamed.probe.samples == whole.probe.samples == 48


def test_counters_match_a_brute_force_count() -> None:
    torch.manual_seed(0)
    model, x = ConvBNReluShifted(), _probe((10, 3, 4, 4))
    (site,) = scan(model, list(x.split(3))).sites
    with torch.no_grad():
        pre = model.preactivation(x)
    per_sample_max = pre.amax(dim=(2, 3))  # (samples, channels)
    assert site.counters.positive == tuple((pre > 0).sum(dim=(0, 2, 3)).tolist())
    assert site.counters.samples_fired == tuple((per_sample_max > 0).sum(0).tolist())
    assert site.counters.max_preactivation == pytest.approx(per_sample_max.amax(0).tolist(), rel=1e-6)
    expected_sum = pre.clamp(min=0).double().sum(dim=(0, 2, 3))
    assert site.counters.activation_sum == pytest.approx(expected_sum.tolist(), rel=1e-5)
    # 10 samples x 4 x 4 positions -> 160 per channel
    assert (site.counters.positions, site.counters.samples) == (160, 10)


def test_firing_rate_is_positive_over_positions() -> None:
    acc = UnitAccumulator(2, torch.device("cpu"))
    pre = torch.tensor(
        [[1.0, -1.0], [2.0, -1.0], [-3.0, 0.5], [-1.0, -2.0], [4.0, -1.0], [-1.0, -1.0], [0.0, -1.0], [1.0, -1.0]]
    )
    count_batch(TorchReducer(), acc, pre, RELU)
    # unit 0 is > 0 in 4 of 8 rows -> 0.5; unit 1 in 1 of 8 -> 0.125 (0.0 is not > 0)
    assert acc.snapshot().positive == (4, 1)
    assert acc.snapshot().positions == 8


def test_merge_of_accumulators_equals_accumulating_both() -> None:
    pre = _probe((12, 3, 5))
    parts = [UnitAccumulator(3, torch.device("cpu")) for _ in range(3)]
    for acc, chunk in zip(parts[:2], (pre[:5], pre[5:])):
        count_batch(TorchReducer(), acc, chunk, RELU)
    count_batch(TorchReducer(), parts[2], pre, RELU)
    parts[0].merge(parts[1])
    _assert_same_counters(parts[0].snapshot(), parts[2].snapshot())


def test_merge_refuses_a_different_unit_count() -> None:
    with pytest.raises(ValueError, match="cannot merge a site of 4 units into one of 3"):
        UnitAccumulator(3, torch.device("cpu")).merge(UnitAccumulator(4, torch.device("cpu")))


def test_tensors_round_trip() -> None:
    pre = _probe((6, 4))
    acc = UnitAccumulator(4, torch.device("cpu"))
    count_batch(TorchReducer(), acc, pre, RELU)
    assert UnitAccumulator.from_tensors(acc.tensors()).snapshot() == acc.snapshot()


def test_reduce_sample_max_never_aliases_its_input() -> None:
    # an in-place relu runs right after the reduction: an alias would be rectified too (found by this suite)
    pre = torch.tensor([[-5.0, 2.0], [-3.0, -1.0]])
    sample_max = reduce_sample_max(pre, 1, 0)
    pre.relu_()
    assert sample_max.tolist() == [[-5.0, 2.0], [-3.0, -1.0]]
    whole = reduce_sample_max(torch.tensor([[-5.0, 2.0]]), 1, None)
    assert whole.tolist() == [[-5.0, 2.0]]


def test_count_and_sum_reuses_its_scratch_buffer_inside_and_outside_inference_mode() -> None:
    x = torch.relu(_probe((6, 4, 5, 5)))
    expected = ((x > 0).sum(dim=(0, 2, 3)).tolist(), x.sum(dim=(0, 2, 3)))
    with torch.inference_mode():
        inside = count_and_sum(x, 1)
    outside = count_and_sum(x, 1)  # the buffer made inside inference mode must still be writable here
    for count, total in (inside, outside):
        assert count.tolist() == expected[0]
        assert torch.allclose(total, expected[1])


def test_replayable_batches_start_over_on_every_iteration() -> None:
    from relu_doctor.engine.batches import Replayable, replayable

    batches = [torch.zeros(2, 3), torch.ones(1, 3)]
    assert replayable(batches) is batches
    fresh = replayable(lambda: iter(batches))
    assert [b.shape[0] for b in fresh] == [b.shape[0] for b in fresh] == [2, 1]
    once = replayable(iter(batches))  # an iterator is read once, kept, and replayed
    assert [len(list(once)), len(list(once))] == [2, 2]
    sized = Replayable.sized(lambda: iter(batches), 2)
    assert len(sized) == 2 and len(list(sized)) == 2


class _WideRows(torch.nn.Module):
    """A relu straight on the input, times one (a new tensor: an in-place relu must not change the probe)."""

    def __init__(self, inplace: bool) -> None:
        super().__init__()
        self.act = torch.nn.ReLU(inplace=inplace)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x * 1.0)


@pytest.mark.parametrize("inplace", [False, True], ids=["relu", "relu_"])
@pytest.mark.parametrize("bad", [None, float("nan"), float("inf"), -float("inf")], ids=["finite", "nan", "inf", "-inf"])
def test_wide_one_position_sites_match_a_brute_force_count(bad: float | None, inplace: bool) -> None:
    # (samples, units) sites too big to be grouped read only each unit's extremes and the output; batch 1 runs
    # under the dispatch mode, batches 2 and 3 replay on hooks, and a non-finite value takes the exact path.
    from relu_doctor.engine.reduce.torch_reducer import ROW_SITE_ELEMENTS

    x = _probe((3 * 128, 600))
    x[::7, ::5] = -x[::7, ::5].abs() - 1.0  # some units negative more often
    x[:, 3] = -1.0  # a dead unit
    if bad is not None:
        x[200, 11] = bad  # in the second batch: a replay
        x[300, 12] = bad
    assert ROW_SITE_ELEMENTS < 128 * 600
    (site,) = scan(_WideRows(inplace), list(x.split(128)), reducer="torch").sites
    _assert_brute_force(site.counters, x, 1)
    assert 3 in site.dead_units


class _SmallMaps(torch.nn.Module):
    """A relu-family op on two inputs of one shape: (samples, channels, few positions) maps (a ResNet's last stage,
    a 1-D conv) or (samples, tokens, features); in the training-step layouts a model gives them."""

    def __init__(self, op: str) -> None:
        super().__init__()
        self.op = op

    def preactivations(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [x * 1.0, 0.5 - x.flip(0)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sum(self._act(pre) for pre in self.preactivations(x))

    def _act(self, x: torch.Tensor) -> torch.Tensor:
        if self.op == "relu_":
            return torch.relu_(x)
        if self.op == "relu6":
            return torch.nn.functional.relu6(x)
        return torch.relu(x)


def _maps(shape: tuple[int, ...], bad: float | None, unit_axis: int = 1) -> torch.Tensor:
    x = _probe(shape) * 3
    x.select(unit_axis, 1).copy_(-x.select(unit_axis, 1).abs() - 0.5)  # dead on the first input
    x[::4].select(unit_axis, 2).abs_().neg_()  # silent on some samples only
    if bad is not None:  # in units 3 and 4, the second and third batches (replays)
        for sample, unit in ((12, 3), (20, 4)):
            index = [sample] + [0] * (x.dim() - 1)
            index[unit_axis] = unit
            x[tuple(index)] = bad
    return x


@pytest.mark.parametrize("path", ["grouped", "alone"])
@pytest.mark.parametrize("op", ["relu", "relu_", "relu6"])
@pytest.mark.parametrize("bad", [None, float("nan"), float("inf"), -float("inf")], ids=["finite", "nan", "inf", "-inf"])
@pytest.mark.parametrize("positions", [(4, 4), (7, 7), (3,)], ids=["4x4", "7x7", "3"])
def test_few_position_sites_match_a_brute_force_count(
    positions: tuple[int, ...], bad: float | None, op: str, path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Small sites are copied and reduced with the others of their shape at the end of the pass; a larger one with
    # few positions per sample reads its unit maxima along the samples and its fired samples from the output's
    # signs (here in sample chunks). Batch 1 runs under the dispatch mode, batches 2 and 3 replay, a non-finite
    # value takes the exact path.
    from relu_doctor.engine.reduce import torch_reducer

    x = _maps((3 * 9, 5, *positions), bad)
    if path == "alone":
        monkeypatch.setattr(torch_reducer, "MAP_SITE_ELEMENTS", 0)
        monkeypatch.setattr(torch_reducer, "CHUNK_ELEMENTS", 100)
        assert torch_reducer.few_positions(x[:9], 1, 0)
    else:
        assert torch_reducer.small_maps(x[:9], 1, 0)
    model = _SmallMaps(op)
    sites = scan(model, list(x.split(9)), reducer="torch", unit_dim=1).sites
    assert len(sites) == 2
    for site, pre in zip(sites, model.preactivations(x)):
        _assert_brute_force(site.counters, pre, 1, 6.0 if op == "relu6" else torch.inf)
    assert 1 in sites[0].dead_units


@pytest.mark.parametrize("path", ["grouped", "alone"])
@pytest.mark.parametrize("bad", [None, float("nan")], ids=["finite", "nan"])
def test_small_token_sites_match_a_brute_force_count(
    bad: float | None, path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # (samples, tokens, features): grouped with the transposed (sites, samples, units, positions) view.
    from relu_doctor.engine.reduce import torch_reducer

    if path == "alone":
        monkeypatch.setattr(torch_reducer, "MAP_SITE_ELEMENTS", 0)
    x = _maps((3 * 9, 6, 5), bad, unit_axis=2)
    model = _SmallMaps("relu")
    sites = scan(model, list(x.split(9)), reducer="torch", unit_dim=2).sites
    assert len(sites) == 2
    for site, pre in zip(sites, model.preactivations(x)):
        _assert_brute_force(site.counters, pre, 2)
    assert 1 in sites[0].dead_units


@pytest.mark.parametrize("reducer", ["torch", "fused"])
@pytest.mark.parametrize("units", [8, 600], ids=["grouped", "wide"])
@pytest.mark.parametrize("bad", [None, float("nan"), -float("inf")], ids=["finite", "nan", "-inf"])
@pytest.mark.parametrize("op", ["relu", "relu_"])
def test_one_by_one_maps_count_as_one_position_per_sample(
    op: str, bad: float | None, units: int, reducer: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # (samples, units, 1, 1) activations (squeeze-excitation, a small input's last stage) take the (samples, units)
    # paths: grouped with the other sites of their shape when small, read for their extremes when wide.
    from relu_doctor.engine.reduce import torch_reducer

    if reducer == "fused":
        pytest.importorskip("numba")
    grouped: list[tuple[int, ...]] = []
    add = torch_reducer._RowGroup.add
    monkeypatch.setattr(
        torch_reducer._RowGroup, "add", lambda self, c, rows: grouped.append(rows.shape) or add(self, c, rows)
    )
    x = _maps((3 * 128, units, 1, 1), bad)
    model = _SmallMaps(op)
    sites = scan(model, list(x.split(128)), reducer=reducer, unit_dim=1).sites
    for site, pre in zip(sites, model.preactivations(x)):
        _assert_brute_force(site.counters, pre, 1)
    assert 1 in sites[0].dead_units
    assert grouped == ([(128, units)] * 6 if units * 128 <= torch_reducer.ROW_SITE_ELEMENTS else [])


@pytest.mark.parametrize("positions", [(4, 4), (1, 1), (9, 9)], ids=["4x4", "1x1", "9x9"])
def test_an_empty_batch_adds_nothing(positions: tuple[int, ...]) -> None:
    x = _probe((18, 5, *positions))
    whole = scan(_SmallMaps("relu"), [x], reducer="torch", unit_dim=1).sites
    with_empty = scan(_SmallMaps("relu"), [x[:9], x[:0], x[9:]], reducer="torch", unit_dim=1).sites
    for a, b in zip(with_empty, whole, strict=True):
        _assert_same_counters(a.counters, b.counters)
