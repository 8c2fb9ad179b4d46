"""The finding-code registry (relu_doctor.codes) is the one list: every rule's code is in it, every registered code
has a rule, severities come from it, and every fix it names is simulated."""

from __future__ import annotations

import torch
from torch import nn

from relu_doctor import scan
from relu_doctor.analysis import diagnose
from relu_doctor.codes import BY_CODE, CODES, FIXES, describe_codes, fixable_by
from relu_doctor.whatif import SIMULATED_FIXES


def test_every_rule_code_is_registered_and_every_registered_code_has_a_rule() -> None:
    ruled = [
        code
        for registry in (diagnose.RULES, diagnose.CAUSES, diagnose.ADVICE, diagnose.MODEL_WIDE)
        for code, _ in registry
    ]
    assert len(ruled) == len(set(ruled))
    assert set(ruled) == set(BY_CODE)
    assert list(describe_codes()) == sorted(BY_CODE)  # code order


def test_every_fix_a_code_names_has_a_simulation() -> None:
    # A code registered as fixable by something whatif does not simulate would silently get no prediction.
    named = {fix for entry in CODES for fix in entry.fixes}
    assert named <= set(FIXES)
    assert named <= SIMULATED_FIXES, named - SIMULATED_FIXES


def test_the_cause_codes_fix_sets_are_the_simulations_before_the_registry() -> None:
    # The sets simulate.py spelled out before the registry existed: same predictions as before.
    assert fixable_by("bias_shift") == {"RD101", "RD102", "RD106"}
    assert fixable_by("recycle") == {"RD100", "RD101", "RD102", "RD104", "RD105", "RD106"}
    assert fixable_by("leaky") == {"RD100", "RD101", "RD102", "RD103", "RD104", "RD105", "RD106", "RD301"}


class BiasKilledMLP(nn.Module):
    """fc1 units 0 and 1 killed by a bias of -4 (inputs reach ~ +1): RD101, fixable by every fix."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.relu, self.fc2 = nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)
        with torch.no_grad():
            self.fc1.weight.fill_(0.3)
            self.fc1.bias.copy_(torch.tensor([-4.0, -4.0, 0.5, 0.5]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.relu(self.fc1(x)))


def test_each_finding_takes_its_severity_and_predictions_from_the_registry() -> None:
    torch.manual_seed(0)
    report = scan(BiasKilledMLP(), [torch.randn(32, 3) for _ in range(2)], simulate=True, simulate_budget=None)
    assert report.findings and all(f.severity == BY_CODE[f.code].severity for f in report.findings)
    bias_killed = next(f for f in report.findings if f.code == "RD101")
    predicted = {p.fix for p in bias_killed.predicted}
    # every fix the registry names for RD101 got a measured prediction
    assert {"leaky", "bias_shift", "recycle"} <= predicted
