"""The finding-code registry: every code relu-doctor can emit, once, with its meaning, severity and fixes.

Rules (:mod:`relu_doctor.analysis.diagnose`) emit these codes, the fix simulations (:mod:`relu_doctor.whatif`)
ask which fixes apply to a code, SARIF lists them as rules and the README documents them; tests check that each
of those agrees with this table. Codes never change meaning once released.

Codes: RD0xx site counts, RD1xx causes of dead units, RD2xx training advice, RD3xx model-wide simulated fixes.
Plain data (no torch): renderers may read it.
"""

from __future__ import annotations

from dataclasses import dataclass

LEAKY = "leaky"
"""Swap the site's relu for LeakyReLU(0.01) (fix --strategy leaky)."""
BIAS_SHIFT = "bias_shift"
"""Raise the bias (or norm beta) of the units until they fire (fix --strategy bias-shift)."""
RECYCLE = "recycle"
"""Re-draw the units' incoming weights and zero their outgoing ones (fix --strategy recycle)."""
FIXES = (LEAKY, BIAS_SHIFT, RECYCLE)
"""Every fix a finding can name; each has a simulation in :mod:`relu_doctor.whatif`."""


@dataclass(frozen=True)
class FindingCode:
    """One finding code."""

    code: str
    """Stable code, RD###."""
    title: str
    """What it means, in one line (the README's and SARIF's description)."""
    severity: str
    """"error", "warning" or "note": the severity of every finding with this code."""
    fixes: tuple[str, ...] = ()
    """Fixes (of :data:`FIXES`) that address it; the simulations predict each one's effect."""


_CAUSE_FIXES = (LEAKY, BIAS_SHIFT, RECYCLE)
CODES: tuple[FindingCode, ...] = (
    FindingCode("RD001", "units that never fired on the probe, with the shift that would wake them.", "warning"),
    FindingCode(
        "RD002", "every unit of the site is dead, so its output is constant zero and nothing behind it learns.", "error"
    ),
    FindingCode("RD003", "units that fire, but rarely; they get almost no gradient.", "note"),
    FindingCode("RD004", "NaN or Inf pre-activations; these units are neither dead nor alive.", "error"),
    FindingCode("RD005", "alive units whose output is the same on every input: they carry no information.", "note"),
    FindingCode(
        "RD100",
        "dead, and no parameter-based cause applies (or the producing layer could not be read).",
        "warning",
        (LEAKY, RECYCLE),
    ),
    FindingCode(
        "RD101",
        "the unit's bias alone keeps it below zero: its inputs reach above zero, the bias pulls it under.",
        "warning",
        _CAUSE_FIXES,
    ),
    FindingCode(
        "RD102",
        "the norm feeding the relu has beta <= -k |gamma|: the channel is about N(beta, gamma^2), nearly never > 0.",
        "warning",
        _CAUSE_FIXES,
    ),
    # New weights cannot help a unit whose every input is dead: only a swap changes anything.
    FindingCode(
        "RD103", "every input feeding the unit is itself dead or zero; the cause is upstream.", "warning", (LEAKY,)
    ),
    # A bias shift only makes a collapsed unit (or one fed by the raw probe) constant; new weights can revive it.
    FindingCode(
        "RD104",
        "incoming weights about zero and bias <= 0: the pre-activation is a constant <= 0.",
        "warning",
        (LEAKY, RECYCLE),
    ),
    FindingCode(
        "RD105",
        "the layer reads the probe directly and the probe is far from the unit scale the layer expects.",
        "warning",
        (LEAKY, RECYCLE),
    ),
    FindingCode(
        "RD106",
        "the incoming weights point away from the data: W\u00b7x stays below zero over the whole probe.",
        "warning",
        _CAUSE_FIXES,
    ),
    FindingCode(
        "RD201", "a relu-family op computes the model's output: negative logits or targets are clipped to 0.", "warning"
    ),
    FindingCode(
        "RD301",
        "the model-wide alternative, every relu site swapped to LeakyReLU(0.01), simulated on the probe.",
        "note",
        (LEAKY,),
    ),
)
"""Every finding code, in code order."""

BY_CODE = {entry.code: entry for entry in CODES}
"""Code -> its entry."""


def describe_codes() -> dict[str, str]:
    """Every finding code and its one-line meaning, in code order."""
    return {entry.code: entry.title for entry in CODES}


def severity(code: str) -> str:
    """The severity of findings with ``code``."""
    return BY_CODE[code].severity


def fixable_by(fix: str) -> frozenset[str]:
    """The codes that ``fix`` (one of :data:`FIXES`) addresses."""
    return frozenset(entry.code for entry in CODES if fix in entry.fixes)
