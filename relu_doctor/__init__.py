"""relu-doctor: find dead and dying ReLU units in a PyTorch model.

The public API is :func:`scan` (model + batches -> :class:`Report`) and :func:`watch` (count while training,
:mod:`relu_doctor.watching`). Importing this package does not import torch (nor lightning or transformers); the
torch-backed names load on first use so the CLI's --help stays instant.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._version import __version__
from .report import Finding, Report, Site, Summary, Thresholds

if TYPE_CHECKING:
    from .api import scan
    from .watching import watch

__all__ = ["Finding", "Report", "Site", "Summary", "Thresholds", "__version__", "scan", "watch"]


def __getattr__(name: str) -> Any:
    if name == "scan":
        from .api import scan

        return scan
    if name == "watch":
        from .watching import watch

        return watch
    raise AttributeError(f"module 'relu_doctor' has no attribute {name!r}")
