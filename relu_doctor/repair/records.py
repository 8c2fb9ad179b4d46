"""The records of a repair, as frozen, torch-free data: what was changed, what was skipped and why, and the check.

The CLI renders these (``repair.render``); nothing here imports torch.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

RECYCLE_MAX_DRIFT = 1e-6
"""Default relative L2 output drift a recycle of dead units may cause (it should be exactly 0 up to rounding)."""
RECYCLE_DYING_MAX_DRIFT = 1e-2
"""Default with --include-dying: folding a dying unit's mean into the next bias keeps the output only on average."""


class Strategy(str, enum.Enum):
    """How `relu-doctor fix` repairs dead units."""

    recycle = "recycle"
    bias_shift = "bias-shift"
    leaky = "leaky"


@dataclass(frozen=True)
class SiteRepair:
    """What the repair changed at one site."""

    site: str
    """Site name, as in the scan report."""
    units: tuple[int, ...]
    """Units repaired (dead units, plus dying ones with --include-dying)."""
    dying_units: tuple[int, ...]
    """Of ``units``, those that were dying rather than dead (their mean was folded into the next bias)."""
    layers: tuple[str, ...]
    """State-dict paths of the modules whose tensors were changed (producer, norm, consumers), or swapped."""
    redraws: int = 0
    """Extra draws needed before every recycled unit fired on the probe (recycle only)."""


@dataclass(frozen=True)
class SkippedSite:
    """Units the repair left alone, and why."""

    site: str
    """Site name ("" when the reason concerns the whole model)."""
    units: tuple[int, ...]
    """Units that needed repair but were not changed."""
    reason: str
    """One sentence naming what stopped the repair."""


@dataclass(frozen=True)
class Drift:
    """How far the model output moved, over every probe batch and every output element."""

    max_abs: float
    """Largest absolute difference of any output element."""
    relative_l2: float
    """||after - before||_2 / ||before||_2 over all output elements (0 when both are 0)."""


@dataclass(frozen=True)
class RepairResult:
    """What one repair of a model in memory did; the model itself is returned beside it."""

    strategy: Strategy
    """The strategy used."""
    seed: int
    """Seed of the re-drawn weights."""
    include_dying: bool
    """Whether dying units were repaired as well as dead ones."""
    repaired: tuple[SiteRepair, ...]
    """Sites changed, in call order."""
    skipped: tuple[SkippedSite, ...]
    """Sites (or units) left alone, with the reason."""
    drift: Drift
    """Output drift of the repaired model against the original, on the probe, measured in memory."""
    notes: tuple[str, ...] = ()
    """What the user should know or do (code changes for leaky, functional calls not changeable, ...)."""

    @property
    def units_repaired(self) -> int:
        """Units changed over all sites."""
        return sum(len(r.units) for r in self.repaired)


@dataclass(frozen=True)
class SiteCheck:
    """One site before and after the repair, measured on the same probe."""

    site: str
    """Site name in the original model."""
    units: int
    """Number of units."""
    dead_before: int
    """Dead units before."""
    dying_before: int
    """Dying units before."""
    dead_after: int | None
    """Dead units after; None when the site is no longer a relu site (swapped to LeakyReLU)."""
    dying_after: int | None
    """Dying units after; None as for ``dead_after``."""
    newly_dead: tuple[int, ...] = ()
    """Units dead after the repair that were not dead before (a fix made them worse), ascending."""


@dataclass(frozen=True)
class Verification:
    """The written file rescanned on the probe and compared to the original."""

    sites: tuple[SiteCheck, ...]
    """Every site of the original model, before and after."""
    drift: Drift
    """Output drift of the written model against the original input file."""
    max_drift: float | None
    """The relative L2 drift allowed; None when drift is reported but not limited."""
    still_dead: tuple[tuple[str, tuple[int, ...]], ...]
    """(site, units) that were meant to be revived but are still dead."""
    applied: bool = True
    """True when the checked model is the written file; False for a check in memory (nothing was written)."""

    @property
    def newly_dead(self) -> tuple[tuple[str, tuple[int, ...]], ...]:
        """(site, units) of every site where units died that were not dead before, in call order."""
        return tuple((check.site, check.newly_dead) for check in self.sites if check.newly_dead)

    @property
    def passed(self) -> bool:
        """True when every repaired unit is alive, no unit anywhere died, and the drift is within the limit."""
        drift_ok = self.max_drift is None or self.drift.relative_l2 <= self.max_drift
        return drift_ok and not self.still_dead and not self.newly_dead


@dataclass(frozen=True)
class FixOutcome:
    """Everything `relu-doctor fix` did, for the renderers and the exit code."""

    model_path: str
    """The input checkpoint (never modified)."""
    output_path: str | None
    """The file written; None when nothing was written (leaky on a state dict: the change is in your code)."""
    format: str
    """The checkpoint format of both files."""
    result: RepairResult
    """The repair."""
    verification: Verification | None
    """The check of the written file, or of the repaired model in memory when nothing was written
    (``applied`` False); None only when nothing was checked."""
    written: tuple[str, ...] = ()
    """What the writer did besides the weights (optimizer moments reset, keys kept, ...)."""

    @property
    def applied(self) -> bool:
        """True when a repaired file was written."""
        return self.output_path is not None

    @property
    def exit_code(self) -> int:
        """0 verified (written, or for a code change checked in memory), 1 the repair did not verify."""
        return 0 if self.verification is None or self.verification.passed else 1
