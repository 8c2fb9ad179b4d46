"""Padding masks: which positions of a token batch are real, lined up with the tensors a model makes from it.

A token batch (:class:`relu_doctor.engine.batches.MaskedBatch`) carries a (samples, positions) attention mask,
True at real tokens. Every pass that reads what the model computed (the observer's counters, the fix
simulations' fired units, output drift) uses these functions, so a padded position counts nowhere.
"""

from __future__ import annotations

from typing import Any

import torch


def batch_mask(batch: Any) -> torch.Tensor | None:
    """The (samples, positions) bool mask of a token batch (True at real tokens); None for any other batch."""
    mask = getattr(batch, "attention_mask", None)
    return mask.bool() if isinstance(mask, torch.Tensor) else None


def token_view(view: torch.Tensor, unit_axis: int, mask: torch.Tensor) -> torch.Tensor | None:
    """``view`` as (samples, positions, units) lined up with ``mask``, copy-free; None when it does not line up.

    (samples, positions, units) is taken as it is; (samples x positions, units) is what OPT's feed-forward makes
    of it by flattening, and is viewed back."""
    samples, positions = mask.shape
    if view.dim() == 3 and tuple(view.shape[:2]) == (samples, positions) and unit_axis == 2:
        return view
    if view.dim() == 2 and view.shape[0] == samples * positions and unit_axis == 1:
        return view.reshape(samples, positions, view.shape[1])
    return None


Block = tuple[int, int, int, int]
"""(first row, row stop, first position, position stop) of a block of real tokens."""


def real_blocks(mask: torch.Tensor) -> list[Block] | None:
    """Blocks of real tokens that cover each real token once, or None when some row's real tokens are not one
    contiguous run (a mask with holes).

    Each row with real tokens gives the block of its run (right or left padding); consecutive rows whose run is
    the whole sequence share one block. A row with no real token is in no block: it is not a sample. Every block
    of a contiguous (samples, positions, units) tensor is itself contiguous, so the reducers' copy-free fast paths
    read it as they read an unpadded batch.
    """
    real = mask.bool().cpu()
    samples, positions = real.shape
    starts = torch.cat([real[:, :1], real[:, 1:] & ~real[:, :-1]], dim=1)  # a real token after padding or at 0
    if bool((starts.sum(dim=1) > 1).any()):
        return None
    lengths = real.sum(dim=1).tolist()
    firsts = real.int().argmax(dim=1).tolist()
    blocks: list[Block] = []
    for row, (first, length) in enumerate(zip(firsts, lengths)):
        if length == 0:
            continue
        if length == positions and blocks and blocks[-1][1] == row and blocks[-1][2:] == (0, positions):
            blocks[-1] = (blocks[-1][0], row + 1, 0, positions)
        else:
            blocks.append((row, row + 1, first, first + length))
    return blocks


def real_positions(output: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The entries of a model output at real tokens only, for outputs that line up with the mask: (samples,
    positions, ...) and (samples x positions, ...) such as logits and hidden states, or (samples, heads, positions,
    ...) such as cached keys and values. Anything else (a pooled (samples, classes) output) is returned whole."""
    samples, positions = mask.shape
    mask = mask.to(output.device)
    if output.dim() >= 3 and tuple(output.shape[:2]) == (samples, positions):
        return output[mask]
    if output.dim() >= 2 and output.shape[0] == samples * positions and positions > 1:
        return output[mask.reshape(-1)]
    if output.dim() >= 3 and output.shape[0] == samples:
        axis = next((d for d in range(2, output.dim()) if output.shape[d] == positions), None)
        if axis is not None:
            return output.movedim(axis, 1)[mask]
    return output
