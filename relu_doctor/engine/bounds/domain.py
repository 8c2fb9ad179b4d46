"""The certification domain as the user writes it (``--domain``), parsed and checked before any forward pass.

Torch-free, so the command line can validate it up front:

- ``probe`` / ``probe:MARGIN``: the per-feature box of the probe's minimum and maximum, each side widened by
  MARGIN (an absolute amount in input units, default 0);
- ``box:LO,HI``: every input feature between LO and HI (e.g. ``box:0,1`` for images scaled to [0, 1]);
- ``file:PATH`` (or a bare path ending in .npy / .npz): a per-feature box; a .npy holds an array of shape
  (2, *sample shape), lower bounds first; a .npz holds arrays ``lo`` and ``hi`` of the sample shape.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ...errors import UsageError

EXAMPLES = "probe, probe:0.1, box:0,1 or file:bounds.npy"


@dataclass(frozen=True)
class DomainSpec:
    """A parsed ``--domain``."""

    text: str
    """The spec as given."""
    kind: str
    """probe, box or file."""
    margin: float = 0.0
    """probe: how far each side of the probe's box is widened (input units)."""
    low: float = 0.0
    """box: lower bound of every feature."""
    high: float = 0.0
    """box: upper bound of every feature."""
    path: str | None = None
    """file: the .npy / .npz holding the bounds."""


def parse_domain(text: str) -> DomainSpec:
    """The spec, or a UsageError naming the bad value and the accepted forms."""
    kind, _, rest = text.partition(":")
    if kind == "probe":
        margin = _number(rest, text) if rest else 0.0
        if margin < 0:
            raise UsageError(f"--domain probe:MARGIN needs a margin >= 0, got {text!r}")
        return DomainSpec(text, "probe", margin=margin)
    if kind == "box":
        parts = rest.split(",")
        if len(parts) != 2:
            raise UsageError(f"--domain box:LO,HI needs two numbers, e.g. box:0,1, got {text!r}")
        low, high = (_number(p, text) for p in parts)
        if low > high:
            raise UsageError(f"--domain box:LO,HI needs LO <= HI, got {text!r}")
        return DomainSpec(text, "box", low=low, high=high)
    path = rest if kind == "file" else text
    if kind == "file" or text.endswith((".npy", ".npz")):
        if not path.endswith((".npy", ".npz")):
            raise UsageError(f"--domain file:PATH needs a .npy or .npz file, got {text!r}")
        return DomainSpec(text, "file", path=path)
    raise UsageError(f"--domain must be one of {EXAMPLES}, got {text!r}")


def _number(text: str, spec: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"--domain {spec!r}: {text!r} is not a number; use e.g. {EXAMPLES}") from None
    if not math.isfinite(value):
        raise UsageError(f"--domain {spec!r}: bounds must be finite numbers, got {text!r}")
    return value
