"""One call of a site, handed to the reducer: its pre-activation as a view of at least 2 axes, checked against the
site, with its sample axis (from the pass's batch size) or its tokens lined up with the pass's padding mask."""

from __future__ import annotations

from typing import Any

import torch

from ..activations import Member
from ..errors import ObservationError
from .masking import token_view
from .reduce import Reducer
from .sites import ObservedSite, site_label


class CallRecorder:
    """Turns each call of a site into the reducer's ``before_op`` arguments, for the batch now running."""

    def __init__(self, reducer: Reducer, warnings: dict[str, None]) -> None:
        self.reducer = reducer
        self.warnings = warnings
        """The observer's warnings (a padded batch whose activation does not line up with its mask adds one)."""
        self.batch_size = 0
        self.mask: torch.Tensor | None = None
        """(samples, positions) True at real tokens of the current token batch; None for other batches."""

    def start_batch(self, batch_size: int, mask: torch.Tensor | None = None) -> None:
        self.batch_size, self.mask = batch_size, mask

    def before_op(self, site: ObservedSite, name: str, pre: torch.Tensor, member: Member) -> Any:
        """Hand the pre-activation to the reducer before the op runs (an in-place relu overwrites it)."""
        view = pre.reshape(1, -1) if pre.dim() < 2 else pre
        if view.shape[site.unit_axis] != site.counters.units:
            raise ObservationError(
                f"site {site.module_path or '<root>'} ({name}) had {site.counters.units} units, then an activation "
                f"of shape {tuple(pre.shape)}; pass --unit-dim to choose the unit axis"
            )
        if not view.numel():  # an empty batch: nothing to count (the site's units were checked above)
            return None
        if self.mask is not None:
            tokens = self._token_view(site, view, self.mask)
            if tokens is not None:
                return self.reducer.before_op(site.counters, tokens, 2, 0, member, self.mask)
        sample_axis = self.sample_axis(view, site.unit_axis)
        if sample_axis == 0 and site.unit_axis == 1 and view.dim() > 2 and view.numel() == len(view) * view.shape[1]:
            # (samples, units, 1, ...), e.g. a squeeze-excitation relu or a conv net's last 1x1 map: one position
            # per sample, so the reducers' (samples, units) paths take it (grouped with others of its shape).
            view = view.view(view.shape[0], view.shape[1])
        return self.reducer.before_op(site.counters, view, site.unit_axis, sample_axis, member)

    def after_op(self, token: Any, output: torch.Tensor) -> None:
        """Hand the op's output to the reducer."""
        self.reducer.after_op(token, output.detach())

    def sample_axis(self, view: torch.Tensor, unit_axis: int) -> int | None:
        """The axis of the batch's samples in ``view`` (None: the whole tensor is one sample)."""
        if view.shape[0] == self.batch_size and unit_axis != 0:
            return 0
        if view.dim() >= 3 and view.shape[1] == self.batch_size and unit_axis != 1:
            return 1  # (T, N, F): sequence-first transformers
        return None

    def _token_view(self, site: ObservedSite, view: torch.Tensor, mask: torch.Tensor) -> torch.Tensor | None:
        """The pre-activation as (samples, positions, units) lined up with the attention mask, or None (with a
        warning) when its shape does not line up: (B, T, U) as is, or (B*T, U) as OPT's feed-forward flattens it."""
        tokens = token_view(view, site.unit_axis, mask)
        if tokens is not None:
            return tokens
        self.warnings[
            f"{site_label(site)}: its activation of shape {tuple(view.shape)} does not line up with the attention "
            "mask's (samples, positions); padded positions are counted there"
        ] = None
        return None
