"""relu-doctor: find dead and dying ReLU units in a PyTorch model.

The public API is :func:`scan` (model + batches -> :class:`Report`), :func:`certify` (model + input
domain -> proved bounds per site) and :func:`watch` (count while training, :mod:`relu_doctor.watching`).
Importing this package does not import torch (nor lightning or transformers); the torch-backed names load on
first use so the CLI's --help stays instant.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._version import __version__
from .report import Finding, Report, Site, Summary, Thresholds

if TYPE_CHECKING:
    from .certification import certify
    from .watching import watch
    from .whatif import scan

__all__ = ["Finding", "Report", "Site", "Summary", "Thresholds", "__version__", "certify", "scan", "watch"]


def __getattr__(name: str) -> Any:
    if name == "scan":
        # Imported on first use: importing relu_doctor must not import torch (the CLI's --help stays fast).
        from .whatif import scan

        return scan
    if name == "certify":
        from .certification import certify

        return certify
    if name == "watch":
        from .watching import watch

        return watch
    raise AttributeError(f"module 'relu_doctor' has no attribute {name!r}")
