"""The command line: the only place that parses options, prints and picks exit codes.

Exit codes: 0 scanned and within thresholds; 1 a threshold exceeded; 2 could not scan (usage error, bad or
unsafe file, architecture or probe mismatch, failed forward pass, internal error). A crash never exits 1.
Each command lives in its own module and registers itself on :data:`app`; none of them imports torch at
import time, so ``--help`` and ``--version`` stay instant.
"""

from __future__ import annotations

from . import fix as _fix  # noqa: F401  (registers the command)
from . import merge as _merge  # noqa: F401  (registers the command)
from . import scan as _scan  # noqa: F401  (registers the command)
from . import trend as _trend  # noqa: F401  (registers the command)
from .app import app, main

__all__ = ["app", "main"]
