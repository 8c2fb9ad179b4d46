"""The relu family table: every member keeps the promise the reducers rely on, and a member added to the table
alone (Hardtanh(0, 1), the demonstration of issue 12) is counted everywhere, against a brute force."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from models import dead_by_brute_force, plant_dead
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from relu_doctor import activations, scan
from relu_doctor.activations import FAMILY, FIRES_ABOVE

GRID = torch.tensor([-math.inf, -7.0, -1.0, -1e-30, -0.0, 0.0, 1e-30, 0.5, 1.0, 1.5, 6.0, 7.0, math.inf])


class _AtenCalls(TorchDispatchMode):
    """Records (aten name, args, kwargs) of every op."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, tuple, dict]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        self.calls.append((func.overloadpacket.__name__, args, kwargs or {}))
        return func(*args, **(kwargs or {}))


def _member_modules() -> list[tuple[activations.Member, nn.Module]]:
    """One module instance per member that has module classes, built with the member's required params."""
    found = []
    for member in FAMILY:
        for cls in member.modules:
            values = [p.required for p in member.params]
            module = cls(*values) if values else cls()
            if member.matches_module(module):
                found.append((member, module))
                break
    return found


@pytest.mark.parametrize(("member", "module"), _member_modules(), ids=lambda v: getattr(v, "name", ""))
def test_every_member_is_the_op_its_module_runs_and_outputs_zero_exactly_where_it_does_not_fire(
    member: activations.Member, module: nn.Module
) -> None:
    x = GRID.clone()
    with _AtenCalls() as mode:
        output = module(x.clone())
    (name, args, kwargs) = next(c for c in mode.calls if c[0] in activations.FAMILY_OPS)
    seen = activations.member_of(name, args, kwargs)  # nn.ReLU6 runs aten hardtanh(0, 6): same display and cap
    assert seen is not None and (seen.display, seen.cap) == (member.display, member.cap)
    assert activations.member_of_module(module) is member
    finite = x.isfinite()
    assert torch.equal(member.activation(x)[finite], output[finite])  # what the reducers sum is the op's output
    assert torch.equal((output != 0)[finite], (x > FIRES_ABOVE)[finite])  # what the reducers count as firing


def test_hardtanh_0_1_is_a_member_and_hardtanh_minus_1_1_is_not() -> None:
    zero_one = activations.member_of_module(nn.Hardtanh(0.0, 1.0))
    assert zero_one is not None and zero_one.cap == 1.0 and not zero_one.swappable
    assert activations.member_of_module(nn.Hardtanh(-1.0, 1.0)) is None
    assert activations.member_of_module(nn.ReLU6()).display == "relu6"  # not confused with its sibling op


class ClippedReluNet(nn.Module):
    """Hardtanh(0, 1) as a module and as ``F.hardtanh(x, 0, 1)``, with planted dead units; a Hardtanh(-1, 1) after."""

    DEAD_MODULE = (1, 4)
    DEAD_FUNCTIONAL = (0, 2, 5)

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 6)
        self.clip = nn.Hardtanh(0.0, 1.0)
        self.fc2 = nn.Linear(6, 6)
        self.fc3 = nn.Linear(6, 3)
        self.tanh_like = nn.Hardtanh(-1.0, 1.0)
        plant_dead(self.fc1, self.DEAD_MODULE)
        plant_dead(self.fc2, self.DEAD_FUNCTIONAL)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.hardtanh(self.fc2(self.clip(self.fc1(x))), 0.0, 1.0)
        return self.tanh_like(self.fc3(h))

    def preactivations(self, x: torch.Tensor) -> list[torch.Tensor]:
        first = self.fc1(x)
        return [first, self.fc2(first.clamp(0.0, 1.0))]


def test_a_dead_unit_behind_hardtanh_0_1_is_counted_against_a_brute_force() -> None:
    torch.manual_seed(0)
    model = ClippedReluNet().eval()
    x = 3 * torch.randn(300, 6, generator=torch.Generator().manual_seed(1))  # large inputs: many outputs saturate
    report = scan(model, [x[:128], x[128:]], reducer="torch")
    with torch.no_grad():
        pres = model.preactivations(x)
    assert [s.name for s in report.sites] == ["clip", ":hardtanh(0,1)"]  # Hardtanh(-1, 1) is no site
    assert [s.op for s in report.sites] == ["hardtanh(0,1)", "hardtanh(0,1)"]
    for site, pre, planted in zip(report.sites, pres, (ClippedReluNet.DEAD_MODULE, ClippedReluNet.DEAD_FUNCTIONAL)):
        assert site.dead_units == dead_by_brute_force(pre, 1) == planted
        assert site.counters.positive == tuple((pre > 0).sum(dim=0).tolist())
        assert site.counters.max_preactivation == pytest.approx(pre.amax(dim=0).tolist(), abs=1e-5)
        # the sums are of the clipped output, so a saturating unit adds at most 1 per position
        assert site.counters.activation_sum == pytest.approx(pre.clamp(0, 1).sum(dim=0).tolist(), rel=1e-5)
    assert max(report.sites[0].counters.max_preactivation) > 1  # it did saturate
    assert not report.other_activations
    assert not any("hardtanh" in w for w in report.warnings)  # tanh-like, not relu-like: nothing to report
