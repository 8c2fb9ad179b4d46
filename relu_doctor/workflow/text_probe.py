"""Token probes for language models: texts tokenised batch by batch, or token ids from a .npy.

Texts are lines of a .txt or the ``text`` field of a .jsonl. A *sample* of a token model is one sequence (one
text, one row of ids): the trials of the dead-rate bound are sequences, since tokens of one sequence are
correlated; each real token is one *position*, the evidence a unit's firing rate and sparsity are measured on.
Batches are padded to their longest text and carry the attention mask, so the model never attends to padding and
the observer leaves padded positions out of every counter (:class:`relu_doctor.engine.batches.MaskedBatch`); a
row with no real token at all is not a sample. Token ids without a mask get an all-ones mask when the model takes
``attention_mask`` (:func:`with_token_rows`), so a model that flattens (sequences x tokens) into rows, as OPT's
feed-forward does, still counts one sample per sequence.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..engine.batches import MaskedBatch
from ..errors import ProbeError
from ..report import ProbeInfo
from ..settings import DEFAULT_MAX_LENGTH

MAX_TEXT_BYTES = 256 << 20
"""The largest text probe read (texts are held in memory; token ids are made per batch)."""


def read_texts(path: Path) -> list[str]:
    """The texts of a .txt (one per non-empty line) or .jsonl (the ``text`` field of each object)."""
    if not path.is_file():
        raise ProbeError(f"probe file {str(path)!r} does not exist or is not a regular file")
    if path.stat().st_size > MAX_TEXT_BYTES:
        raise ProbeError(f"text probe {str(path)!r} is larger than {MAX_TEXT_BYTES >> 20} MiB; use fewer texts")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as error:
        raise ProbeError(f"text probe {str(path)!r} is not UTF-8 ({error.reason} at byte {error.start})") from None
    if path.suffix.lower() == ".txt":
        texts = [line for line in lines if line.strip()]
    else:
        texts = []
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                raise ProbeError(f"{path}:{number}: not a JSON object; each line of a .jsonl probe holds one") from None
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                raise ProbeError(f'{path}:{number}: no "text" string field; each line needs {{"text": "..."}}')
            texts.append(record["text"])
    if not texts:
        raise ProbeError(f"text probe {str(path)!r} holds no texts")
    return texts


@dataclass(frozen=True)
class TextProbe:
    """Texts tokenised per batch; yields :class:`MaskedBatch` (the same protocol as the tensor probes)."""

    info: ProbeInfo
    """Source, sample count (texts), batch size."""
    texts: tuple[str, ...]
    """The probe's texts, in order."""
    tokenizer: Any
    """A transformers tokenizer with a pad token."""
    max_length: int
    """Tokens kept per text (longer texts are truncated)."""

    def batches(self, dtype: torch.dtype | None = None, device: torch.device | str = "cpu") -> Iterator[MaskedBatch]:
        """The texts in padded batches of ``info.batch_size`` with their attention masks (dtype is unused)."""
        del dtype
        for start in range(0, self.info.samples, self.info.batch_size):
            chunk = list(self.texts[start : start + self.info.batch_size])
            encoded = self.tokenizer(
                chunk, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
            )
            if encoded["input_ids"].shape[1] == 0:
                raise ProbeError(f"the tokenizer turned texts {start}..{start + len(chunk) - 1} into no tokens at all")
            yield MaskedBatch(encoded["input_ids"].to(device), encoded["attention_mask"].to(device))


def text_probe(
    path: str, *, tokenizer_dir: str, batch_size: int, max_length: int = DEFAULT_MAX_LENGTH, limit: int | None = None
) -> TextProbe:
    """A text probe from ``path`` tokenised with the tokenizer in ``tokenizer_dir``."""
    from ..loading.hf import tokenizer_from

    if max_length < 1:
        raise ProbeError(f"--max-length must be at least 1, got {max_length}")
    texts = read_texts(Path(path))[:limit]
    tokenizer = tokenizer_from(Path(tokenizer_dir))
    info = ProbeInfo("file", len(texts), batch_size, str(path), (), shape_source="texts")
    return TextProbe(info, tuple(texts), tokenizer, max_length)


@dataclass(frozen=True)
class TokenProbe:
    """Token ids (.npy of ints) with an optional attention mask (.npy of 0/1 of the same shape)."""

    info: ProbeInfo
    """Source, sample count (sequences), batch size, sequence length."""
    ids: Any
    """(samples, positions) integer array."""
    mask: Any
    """(samples, positions) 0/1 array."""

    def batches(self, dtype: torch.dtype | None = None, device: torch.device | str = "cpu") -> Iterator[MaskedBatch]:
        """Batches of ids and mask (dtype is unused: ids stay integers)."""
        del dtype
        for start in range(0, self.info.samples, self.info.batch_size):
            stop = min(start + self.info.batch_size, self.info.samples)
            ids = torch.as_tensor(np.array(self.ids[start:stop]), dtype=torch.long)
            mask = torch.as_tensor(np.array(self.mask[start:stop]), dtype=torch.long)
            yield MaskedBatch(ids.to(device), mask.to(device))


def token_probe(path: str, mask_path: str, *, batch_size: int, limit: int | None = None) -> TokenProbe:
    """Token ids from a .npy with the attention mask from another .npy of the same shape."""
    arrays = []
    for name, what in ((path, "--probe"), (mask_path, "--probe-mask")):
        try:
            array = np.load(name, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as error:
            raise ProbeError(f"{what} {name!r} is not a readable .npy file ({error})") from None
        if array.ndim != 2 or array.dtype.kind not in "iub":
            raise ProbeError(
                f"{what} {name!r} must be a 2-D integer array (sequences x tokens), got {array.dtype} "
                f"{tuple(array.shape)}"
            )
        arrays.append(array)
    if arrays[0].shape != arrays[1].shape:
        raise ProbeError(
            f"--probe-mask shape {tuple(arrays[1].shape)} differs from the token ids' {tuple(arrays[0].shape)}"
        )
    samples = arrays[0].shape[0] if limit is None else min(limit, arrays[0].shape[0])
    info = ProbeInfo("file", samples, batch_size, path, (int(arrays[0].shape[1]),))
    return TokenProbe(info, arrays[0], arrays[1])


@dataclass(frozen=True)
class TokenRowsProbe:
    """A probe of token ids read without a mask, given an all-ones attention mask (see :func:`with_token_rows`)."""

    info: ProbeInfo
    """The wrapped probe's source, sample count (sequences) and batch size."""
    inner: Any
    """The wrapped probe (a :class:`relu_doctor.workflow.probe.Probe` of (samples, positions) integer ids)."""

    def batches(self, dtype: torch.dtype | None = None, device: torch.device | str = "cpu") -> Iterator[MaskedBatch]:
        """The wrapped probe's batches, each with an all-ones attention mask."""
        for ids in self.inner.batches(dtype, device):
            yield MaskedBatch(ids, torch.ones_like(ids))


def with_token_rows(probe: Any, model: torch.nn.Module) -> Any:
    """``probe`` with an all-ones attention mask when it holds (samples, positions) integer token ids and the model
    takes ``attention_mask``; otherwise ``probe`` unchanged.

    The mask changes nothing the model computes; it tells the observer which rows are sequences, so a model that
    flattens its activations to (samples x positions, units) still counts each sequence as one sample (without
    it a whole batch would be one sample and the dead-rate bound far wider than the probe supports).
    """
    if not _takes_attention_mask(model) or not callable(getattr(probe, "read", None)) or probe.info.samples < 1:
        return probe
    first = probe.read(0, 1)
    if (
        not isinstance(first, torch.Tensor)
        or first.dim() != 2
        or first.is_floating_point()
        or first.dtype == torch.bool
    ):
        return probe
    return TokenRowsProbe(probe.info, probe)


def _takes_attention_mask(model: torch.nn.Module) -> bool:
    try:
        return "attention_mask" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):  # a scripted or compiled forward without a Python signature
        return False
