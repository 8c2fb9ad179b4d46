"""Repair dead units in a model: recycle them (function-preserving), shift their bias, or swap to LeakyReLU.

``repair_model`` works in memory on a copy; ``run_fix`` (used by ``relu-doctor fix``) loads a checkpoint, repairs
it, writes the same format atomically and verifies the written file on the probe.
"""

from __future__ import annotations

from .records import Drift, FixOutcome, RepairResult, SiteCheck, SiteRepair, SkippedSite, Strategy, Verification

__all__ = [
    "Drift",
    "FixOutcome",
    "RepairResult",
    "SiteCheck",
    "SiteRepair",
    "SkippedSite",
    "Strategy",
    "Verification",
]
