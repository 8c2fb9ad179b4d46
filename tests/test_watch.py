"""The training watch: counts equal a brute-force count of the same training forwards; training is unchanged by it.

Oracle: the test models write every relu input of a training forward to their own trace (plain tensor copies, no
hooks), and the expected dead / dying / dormant units of each window are counted from those traces directly.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import relu_doctor
from relu_doctor.errors import UsageError
from relu_doctor.render import REPORT_FORMATS, render
from relu_doctor.watching import Watch

EVERY, WINDOW, STEPS = 3, 2, 20
TAU, DYING_RATE = 0.025, 0.01


class TracedNet(nn.Module):
    """BatchNorm and dropout in training mode, one nn.ReLU called twice, and a functional relu; every relu input is
    appended to ``trace`` while ``tracing`` is on (the oracle the watch is checked against)."""

    def __init__(self, functional: bool = True) -> None:
        super().__init__()
        self.functional = functional
        self.fc1, self.bn, self.act = nn.Linear(6, 12), nn.BatchNorm1d(12), nn.ReLU()
        self.drop, self.fc2, self.fc3, self.head = (
            nn.Dropout(0.3),
            nn.Linear(12, 12),
            nn.Linear(12, 10),
            nn.Linear(10, 3),
        )
        self.act3 = nn.ReLU()
        self.trace: list[tuple[torch.Tensor, ...]] = []
        self.tracing = False
        with torch.no_grad():
            self.fc2.bias[:3] = -4.0  # three units start dead: the counts are not all zero

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.bn(self.fc1(x))
        b = self.fc2(self.drop(self.act(a)))
        h = self.act(b)
        c = self.fc3(h)
        out = self.head(F.relu(c) if self.functional else self.act3(c))
        if self.tracing:
            self.trace.append((a.detach().clone(), b.detach().clone(), c.detach().clone()))
        return out


def _batches(n: int = STEPS, size: int = 16) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(7)
    return [(torch.randn(size, 6, generator=g), torch.randint(0, 3, (size,), generator=g)) for _ in range(n)]


def _train(model: TracedNet, watch: Watch | None, batches: list, lr: float = 0.5) -> None:
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    torch.manual_seed(3)  # dropout masks
    for step, (x, y) in enumerate(batches):
        model.tracing = step % EVERY == 0
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if watch is not None:
            watch.step()


def _oracle(traces: list[tuple[torch.Tensor, ...]]) -> list[dict[str, tuple[int, int, int]]]:
    """(dead, dying, dormant) per site for every window of WINDOW traced steps, counted directly."""
    windows = []
    for start in range(0, len(traces), WINDOW):
        chunk = traces[start : start + WINDOW]
        counts = {}
        for name, k in (("act#1", 0), ("act#2", 1), ("fc3_relu", 2)):
            pre = torch.cat([t[k] for t in chunk])
            fired = (pre > 0).sum(dim=0)
            rate = fired / pre.shape[0]
            means = pre.clamp(min=0).double().mean(dim=0)
            dormant = means / means.mean() <= TAU if means.mean() > 0 else torch.ones_like(means, dtype=torch.bool)
            counts[name] = (int((fired == 0).sum()), int(((rate > 0) & (rate < DYING_RATE)).sum()), int(dormant.sum()))
        windows.append(counts)
    return windows


@pytest.mark.parametrize("functional", [True, False], ids=["dispatch-passes", "hook-passes"])
def test_window_counts_equal_a_brute_force_count_of_the_same_training_forwards(functional: bool) -> None:
    torch.manual_seed(0)
    model = TracedNet(functional)
    with relu_doctor.watch(model, every=EVERY, window=WINDOW) as watch:
        _train(model, watch, _batches())
    expected = _oracle(model.trace)
    # 20 steps, every 3rd observed -> 7 observed steps (0, 3, ..., 18) -> windows of 2, 2, 2 and a last one of 1
    assert [r.observed_steps for r in watch.history] == [2, 2, 2, 1]
    assert [(r.first_step, r.last_step) for r in watch.history] == [(0, 3), (6, 9), (12, 15), (18, 18)]
    assert [r.samples for r in watch.history] == [32, 32, 32, 16]
    third = ":relu" if functional else "act3"  # a functional relu in the root's forward is named ":relu"
    for record, oracle in zip(watch.history, expected):
        got = {
            name: (record.site(name).dead, record.site(name).dying, record.site(name).dormant)
            for name in ("act#1", "act#2", third)
        }
        assert got == {"act#1": oracle["act#1"], "act#2": oracle["act#2"], third: oracle["fc3_relu"]}
    assert sum(r.dead for r in watch.history) > 0  # the planted units make the comparison non-trivial
    # After the first (dispatch) pass the observed steps replay it (no dispatch mode), though the root's own call
    # began before the watch's hooks (it was never seen called); before round 2 they stayed in the dispatch mode.
    assert watch._observer.replaying


def test_the_watch_changes_nothing_in_training_and_removes_its_hooks() -> None:
    torch.manual_seed(0)
    watched, plain = TracedNet(), TracedNet()
    plain.load_state_dict(watched.state_dict())
    batches = _batches()
    with relu_doctor.watch(watched, every=1, window=4) as watch:
        _train(watched, watch, batches)
    _train(plain, None, batches)
    for (name, a), b in zip(watched.state_dict().items(), plain.state_dict().values()):
        assert torch.equal(a, b), name  # weights and BatchNorm running statistics bit for bit
    assert watched.training
    hooks = [m._forward_hooks or m._forward_pre_hooks for m in watched.modules()]
    assert not any(hooks)
    counters = watch._observer.sites[0].counters
    assert not counters.max_preactivation.requires_grad and not counters.activation_sum.requires_grad


def test_the_report_is_a_scan_report_that_says_it_counted_training_forwards() -> None:
    torch.manual_seed(0)
    model = TracedNet()
    with relu_doctor.watch(model, every=EVERY, window=WINDOW) as watch:
        _train(model, watch, _batches(6))  # steps 0 and 3 observed: one full window
    report = watch.report()
    assert report.probe.source == "training" and report.probe.samples == 32
    assert "training mode" in report.warnings[0] and "steps 0..3" in report.warnings[0]
    assert report.summary.dead == watch.history[-1].dead
    for fmt in REPORT_FORMATS.names():  # every renderer works on it unchanged
        assert render(report, fmt)
    assert not any("even in eval mode" in w for w in report.warnings)  # training-mode dropout is no blind spot here


def test_steps_are_counted_by_the_optimizer_when_one_is_given() -> None:
    torch.manual_seed(0)
    model = TracedNet()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = _batches(1)[0]
    with relu_doctor.watch(model, every=2, window=2, optimizer=optimizer) as watch:
        for _ in range(4):  # steps 0..3: 0 and 2 observed, one window
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        assert watch.current_step == 4
    assert [(r.first_step, r.last_step, r.samples) for r in watch.history] == [(0, 2, 32)]
    assert not optimizer._optimizer_step_post_hooks


def test_eval_forwards_unobserved_steps_and_forwards_after_exit_are_not_counted() -> None:
    torch.manual_seed(0)
    model = TracedNet()
    x, _ = _batches(1)[0]
    with relu_doctor.watch(model, every=2, window=1) as watch:
        model(x)  # step 0: counted
        model.eval()
        model(x)  # eval mode (validation mid-step): not counted
        model.train()
        watch.step()
        model(x)  # step 1: not observed
        watch.step()
    model(x)  # after exit
    assert [(r.first_step, r.samples) for r in watch.history] == [(0, 16)]


def test_gradient_accumulation_counts_every_micro_batch_of_an_observed_step() -> None:
    torch.manual_seed(0)
    model = TracedNet()
    x, _ = _batches(1)[0]
    with relu_doctor.watch(model, every=1, window=1) as watch:
        for _ in range(3):
            model(x[:5])
        watch.step()
    assert watch.history[0].samples == 15 and watch.history[0].observed_steps == 1


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"every": 0}, "every= must be an integer >= 1, got 0"),
        ({"window": 2.5}, "window= must be an integer >= 1, got 2.5"),
        ({"recycle_every": 0}, "recycle_every= must be an integer >= 1 or None"),
        ({"recycle": "all"}, "recycle= must be one of dormant, dead, got 'all'"),
        ({"attach": "auto"}, "attach= must be one of forward, manual"),
    ],
)
def test_bad_settings_are_refused_before_any_hook(settings: dict, message: str) -> None:
    model = TracedNet()
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        relu_doctor.watch(model, **settings)
    assert not any(m._forward_pre_hooks for m in model.modules())


def test_report_before_any_observed_step_and_step_outside_the_watch_say_what_to_do() -> None:
    watch = relu_doctor.watch(TracedNet())
    with pytest.raises(UsageError, match="needs a started watch"):
        watch.step()
    with watch, pytest.raises(UsageError, match="observed no training step yet"):
        watch.report()


def test_report_before_the_first_window_closes_counts_the_steps_so_far() -> None:
    torch.manual_seed(0)
    model = TracedNet()
    x, _ = _batches(1)[0]
    with relu_doctor.watch(model, every=1, window=10) as watch:
        model(x)
        watch.step()
        model(x)
        partial = watch.report()
        assert partial.probe.samples == 32 and not watch.history


def test_importing_relu_doctor_and_the_watch_imports_no_training_framework() -> None:
    code = (
        "import sys, relu_doctor, relu_doctor.integrations; relu_doctor.watch; import relu_doctor.watching; "
        "bad = [m for m in ('lightning', 'pytorch_lightning', 'transformers', 'accelerate') if m in sys.modules]; "
        "print(bad)"
    )
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert completed.stdout.strip() == "[]", completed.stderr
