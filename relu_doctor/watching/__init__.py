"""Watch relu units while a model trains: :func:`watch` (plain PyTorch loops) and the records it keeps.

The Lightning and Hugging Face callbacks (:mod:`relu_doctor.integrations`) are built on :class:`Watch`.
"""

from __future__ import annotations

from .records import RecycleEvent, SiteWindow, WindowRecord
from .session import Watch, watch

__all__ = ["RecycleEvent", "SiteWindow", "Watch", "WindowRecord", "watch"]
