"""In-training recycling: the fix's function-preserving recycle on the live model, and the optimizer state reset."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import relu_doctor

DEAD = (0, 1, 2, 3)
DORMANT = (4, 5)


class PlantedMLP(nn.Module):
    """Hidden layer ``fc1``: units 0-3 dead (bias -100), units 4-5 dormant (incoming weights scaled by 1e-3, bias
    0: they fire on about half the inputs, a thousandth as strongly as the others); ``fc2``'s bias 1 keeps every
    unit of the second relu alive, so only the planted units are recycled."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2, self.act2, self.head = (
            nn.Linear(6, 16),
            nn.ReLU(),
            nn.Linear(16, 16),
            nn.ReLU(),
            nn.Linear(16, 3),
        )
        with torch.no_grad():
            self.fc1.bias[list(DEAD)] = -100.0
            self.fc1.weight[list(DORMANT)] *= 1e-3
            self.fc1.bias[list(DORMANT)] = 0.0
            self.fc2.bias.fill_(1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act2(self.fc2(self.act(self.fc1(x)))))


def _batch(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(32, 6, generator=g), torch.randint(0, 3, (32,), generator=g)


def _train_step(model: nn.Module, optimizer: torch.optim.Optimizer, seed: int) -> None:
    x, y = _batch(seed)
    loss = F.cross_entropy(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def _eval_output(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.eval()  # eval-mode forwards are not counted by the watch
    with torch.no_grad():
        out = model(x)
    model.train()
    return out


def _state(optimizer: torch.optim.Optimizer, parameter: torch.Tensor) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in optimizer.state[parameter].items() if v.shape == parameter.shape}


@pytest.mark.parametrize(
    "make_optimizer",
    [
        lambda p: torch.optim.Adam(p, lr=1e-3),
        lambda p: torch.optim.SGD(p, lr=1e-2, momentum=0.9),
    ],
    ids=["adam", "sgd-momentum"],
)
def test_recycle_keeps_the_output_and_resets_the_optimizer_state_of_the_changed_weights(make_optimizer) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model = PlantedMLP()
    optimizer = make_optimizer(model.parameters())
    probe = _batch(99)[0]
    seen: list[tuple[torch.Tensor, dict[str, dict[str, torch.Tensor]]]] = []

    def just_before_the_recycle(*_: object) -> None:
        # Registered before the watch's own post-step hook, so it runs first: the model and state the recycle gets.
        seen.append((_eval_output(model, probe), {n: _state(optimizer, p) for n, p in model.named_parameters()}))

    optimizer.register_step_post_hook(just_before_the_recycle)
    with relu_doctor.watch(model, every=1, window=2, optimizer=optimizer, recycle_every=2) as watch:
        for seed in (0, 1):  # the step ending step 1 closes window 0, 2 steps after the start: recycle
            _train_step(model, optimizer, seed)
        after_output = _eval_output(model, probe)
        after_state = {name: _state(optimizer, p) for name, p in model.named_parameters()}
        for seed in (2, 3):  # window 1, after the recycle
            _train_step(model, optimizer, seed)
    before_output, before_state = seen[1]
    event = watch.recycles[0]
    assert (event.step, event.window) == (1, 0)
    (repair,) = event.recycled
    assert repair.site == "act" and repair.units == DEAD + DORMANT and repair.dying_units == DORMANT
    assert repair.layers == ("fc1", "fc2")
    # dead units contribute exactly 0 before and after; the dormant ones' mean is folded into fc2's bias, which keeps
    # the output on average: within fix --include-dying's default drift (1e-2 relative L2)
    drift = float((after_output - before_output).norm() / before_output.norm())
    assert 0 < drift < 1e-2
    recycled = list(DEAD + DORMANT)
    assert torch.count_nonzero(before_state["fc1.weight"][next(iter(before_state["fc1.weight"]))][list(DORMANT)]) > 0
    for name, entries in after_state.items():
        for key, value in entries.items():
            if name == "fc1.weight" or name == "fc1.bias":
                assert torch.count_nonzero(value[recycled]) == 0, (name, key)
                assert torch.equal(value[6:], before_state[name][key][6:]), (name, key)
            elif name == "fc2.weight":
                assert torch.count_nonzero(value[:, recycled]) == 0, (name, key)
                assert torch.equal(value[:, 6:], before_state[name][key][:, 6:]), (name, key)
            else:  # fc2.bias absorbs the fold but keeps its state, like every other weight
                assert torch.equal(value, before_state[name][key]), (name, key)
    # fc1.weight (16x6): 6 rows reset; fc1.bias: 6; fc2.weight (16x16): 6 columns; per state tensor
    per_tensor = 6 * 6 + 6 + 16 * 6
    tensors = 2 if isinstance(optimizer, torch.optim.Adam) else 1
    assert event.optimizer_values_reset == per_tensor * tensors
    first, second = watch.history
    assert first.site("act").dead == 4 and first.site("act").dormant == 6
    assert second.site("act").dead == 0  # fresh incoming weights, bias 0: the recycled units fire again


def test_recycle_dead_only_leaves_dormant_units_and_no_recycle_without_recycle_every() -> None:
    torch.manual_seed(0)
    model = PlantedMLP()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    probe = _batch(99)[0]
    outputs: list[torch.Tensor] = []
    optimizer.register_step_post_hook(lambda *_: outputs.append(_eval_output(model, probe)))
    with relu_doctor.watch(model, every=1, window=2, optimizer=optimizer, recycle_every=2, recycle="dead") as watch:
        for seed in range(2):
            _train_step(model, optimizer, seed)
        after = _eval_output(model, probe)
    (repair,) = watch.recycles[0].recycled
    assert repair.units == DEAD and repair.dying_units == ()
    assert torch.equal(after, outputs[1])  # dead units only: the output is unchanged to the bit
    plain = PlantedMLP()
    with relu_doctor.watch(plain, every=1, window=2, optimizer=torch.optim.SGD(plain.parameters(), lr=0.0)) as off:
        for seed in range(4):
            plain(_batch(seed)[0])
            off.step()
    assert off.recycles == () and off.history[-1].site("act").dead == 4  # nothing changed the model


def test_sites_that_cannot_be_recycled_are_reported_with_the_reason() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU())  # the relu is the output: ReDo never recycles it
    with torch.no_grad():
        model[0].bias[:2] = -100.0
        model[0].bias[2:] = 1.0
    with relu_doctor.watch(model, every=1, window=1, recycle_every=1) as watch:
        model(torch.randn(8, 4))
        watch.step()
    (skipped,) = watch.recycles[0].skipped
    assert skipped.units == (0, 1) and "model output" in skipped.reason
    assert watch.recycles[0].recycled == ()
