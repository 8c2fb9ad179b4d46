"""Probe batches: read from a file (streamed, never all in memory) or generated synthetically, batch by batch.

Formats are recognised by content: ``.npy`` (memory-mapped), ``.npz``, safetensors (read by slices),
a ``torch.save`` file (``weights_only=True``, ``mmap=True``), or a directory of ``.npy`` shards.
"""

from __future__ import annotations

import math
import stat
import warnings
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..engine.layers import first_layer
from ..errors import ProbeError, first_line
from ..report import ProbeInfo
from ..settings import MAX_SEED
from ..settings import parse_shape as parse_shape  # re-exported: checked before torch is imported

SYNTHETIC_CHUNK = 256
SYNTHETIC_CHUNK_BYTES = 256 << 20
"""A chunk of big samples (e.g. 3x1024x1024) shrinks so one draw stays under this many bytes."""
MAX_NPZ_BYTES = 1 << 30
"""The largest array a .npz probe may inflate to (it is read whole); save bigger probes as .npy (read by rows)."""
"""Synthetic samples are drawn in seeded chunks of this size, so the probe does not depend on --batch-size."""


@dataclass(frozen=True)
class Probe:
    """A source of probe batches and what it is."""

    info: ProbeInfo
    """Source, sample count, shape, seed."""
    read: Callable[[int, int], torch.Tensor]
    """read(start, stop) -> samples start..stop as a tensor."""

    def batches(self, dtype: torch.dtype | None = None, device: torch.device | str = "cpu") -> Iterator[torch.Tensor]:
        """The probe in batches of ``info.batch_size``, converted for the model (integer ids stay integers)."""
        for start in range(0, self.info.samples, self.info.batch_size):
            batch = self.read(start, min(start + self.info.batch_size, self.info.samples))
            if dtype is not None and batch.is_floating_point():
                batch = batch.to(dtype)
            yield batch.to(device)


def synthetic_probe(
    model: nn.Module,
    *,
    samples: int,
    seed: int,
    batch_size: int,
    input_shape: tuple[int, ...] | None,
    example_shape: tuple[int, ...] | None = None,
) -> Probe:
    """A seeded standard-normal probe (random token ids for an Embedding first layer), made batch by batch.

    The sample shape is ``input_shape`` (--input-shape), else ``example_shape`` (a torch.export program's own
    example input), else a guess from the first layer, which a trial forward pass must confirm.
    """
    _check_counts(samples, batch_size)
    if not 0 <= seed <= MAX_SEED:
        raise ProbeError(f"--seed must be between 0 and {MAX_SEED:,}, got {seed}")
    first = first_layer(model)
    if input_shape is not None:
        shape, source = input_shape, "--input-shape"
    elif example_shape is not None:
        shape, source = example_shape, "the exported program's example input"
    else:
        shape, source = _inferred_shape(model, first)
    if isinstance(first, nn.Embedding):
        vocabulary = first.num_embeddings

        def draw(gen: torch.Generator, n: int) -> torch.Tensor:
            return torch.randint(0, vocabulary, (n, *shape), generator=gen)
    else:

        def draw(gen: torch.Generator, n: int) -> torch.Tensor:
            return torch.randn((n, *shape), generator=gen)

    # Samples of the default size keep chunks of 256 (the probe does not depend on --batch-size); huge samples
    # get smaller chunks so one draw never holds gigabytes.
    size = (
        SYNTHETIC_CHUNK
        if math.prod(shape) * 4 * SYNTHETIC_CHUNK <= SYNTHETIC_CHUNK_BYTES
        else (max(1, SYNTHETIC_CHUNK_BYTES // max(1, math.prod(shape) * 4)))
    )

    def read(start: int, stop: int) -> torch.Tensor:
        parts = []
        for chunk in range(start // size, math.ceil(stop / size)):
            gen = torch.Generator().manual_seed((seed * 1_000_003 + chunk) % 2**63)
            block = draw(gen, size)
            lo = max(start - chunk * size, 0)
            parts.append(block[lo : min(stop - chunk * size, size)])
        return torch.cat(parts)

    if source.startswith("the first layer"):
        _confirm_shape(model, read(0, min(2, samples)), shape, source)
    info = ProbeInfo("synthetic", samples, batch_size, None, tuple(shape), seed, shape_source=source)
    return Probe(info, read)


def _confirm_shape(model: nn.Module, trial: torch.Tensor, shape: tuple[int, ...], source: str) -> None:
    """A guessed shape is used only when the model accepts it: one small forward pass, or a ProbeError."""
    parameter = next(model.parameters(), None)
    if parameter is not None:
        trial = trial.to(parameter.device, parameter.dtype if trial.is_floating_point() else trial.dtype)
    try:
        with torch.no_grad():
            model(trial)
    except Exception as exc:
        text = "x".join(map(str, shape))
        raise ProbeError(
            f"the synthetic probe's sample shape {text} was inferred from {source}, but the model refuses it "
            f"({type(exc).__name__}: {first_line(exc)}); pass --input-shape with the shape one sample has, "
            "or a real probe with --probe"
        ) from None


def file_probe(path: str | Path, *, batch_size: int, key: str | None = None, limit: int | None = None) -> Probe:
    """A probe read from ``path``; ``key`` picks a tensor from a file holding several."""
    source = Path(path)
    _check_counts(limit or 1, batch_size)
    if not source.exists():
        raise ProbeError(f"probe file {str(source)!r} does not exist; pass an existing file to --probe")
    if not (source.is_dir() or stat.S_ISREG(source.stat().st_mode)):
        raise ProbeError(
            f"probe {str(source)!r} is not a regular file (a pipe, device or socket); save the probe to a file"
        )
    try:
        array = _open_array(source, key)
    except ProbeError:
        raise
    except Exception as exc:  # a library error on a broken file becomes one clear line
        raise ProbeError(f"cannot read probe {str(source)!r}: {type(exc).__name__}: {first_line(exc)}") from exc
    if len(array.shape) < 1 or array.shape[0] == 0:
        raise ProbeError(
            f"probe {str(source)!r} has shape {tuple(array.shape)}; it needs at least one sample on axis 0"
        )
    samples = array.shape[0] if limit is None else min(limit, array.shape[0])
    info = ProbeInfo("file", samples, batch_size, str(source), tuple(int(s) for s in array.shape[1:]))
    return Probe(info, lambda start, stop: _as_tensor(array[start:stop]))


def _inferred_shape(model: nn.Module, first: nn.Module | None) -> tuple[tuple[int, ...], str]:
    path = next((p for p, m in model.named_modules() if m is first), "")
    if isinstance(first, nn.Linear):
        return (first.in_features,), f"the first layer {path} (Linear)"
    what = type(first).__name__ if first is not None else "no parameterised layer"
    hint = f" (e.g. {first.in_channels}x32x32)" if isinstance(first, nn.modules.conv._ConvNd) else ""
    raise ProbeError(
        f"cannot infer the input shape from the model's first layer ({what}); "
        f"pass --input-shape{hint} or a real probe with --probe"
    )


def _open_array(source: Path, key: str | None) -> Any:
    if source.is_dir():
        shards = sorted(source.glob("*.npy"))
        odd = [shard for shard in shards if not shard.is_file()]
        if odd:
            raise ProbeError(f"probe shard {str(odd[0])!r} is not a regular file; the folder must hold .npy files only")
        return _ShardedNpy(shards, source)
    with source.open("rb") as handle:
        head = handle.read(16)
    if head.startswith(b"\x93NUMPY"):
        return npy_rows(source)
    if _is_safetensors(head):
        return _safetensors_array(source, key)
    if zipfile.is_zipfile(source):
        names = zipfile.ZipFile(source).namelist()
        if any(n.endswith(".npy") for n in names) and not any(n.endswith("data.pkl") for n in names):
            return _npz_array(source, key)
    return _torch_probe(source, key)


def _npz_array(source: Path, key: str | None) -> Any:
    """One array of a .npz, after checking what it inflates to (header and member size) against MAX_NPZ_BYTES."""
    archive = np.load(source, allow_pickle=False)
    _pick(dict.fromkeys(archive.files, np.zeros(0)), key, source)  # the same choice rules and messages
    chosen = next(k for k in archive.files if key is None or k == key)
    with zipfile.ZipFile(source) as members, members.open(f"{chosen}.npy") as member:
        version = np.lib.format.read_magic(member)
        reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = reader(member)
        stored = members.getinfo(f"{chosen}.npy").file_size
    claimed = math.prod(shape) * dtype.itemsize
    if claimed > MAX_NPZ_BYTES or claimed > stored:
        raise ProbeError(
            f"probe {str(source)!r}: array {chosen!r} inflates to {claimed:,} bytes (limit {MAX_NPZ_BYTES:,}, "
            f"stored {stored:,}); save the probe as .npy, which is read batch by batch"
        )
    return archive[chosen]


def _torch_probe(source: Path, key: str | None) -> Any:
    _prescan(source)
    try:
        with warnings.catch_warnings():  # e.g. TypedStorage deprecation on old files: not the user's concern
            warnings.simplefilter("ignore")
            loaded = torch.load(source, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(source))
    except Exception as exc:
        raise ProbeError(
            f"probe {str(source)!r} is not .npy, .npz, safetensors or a weights-only torch.save file "
            f"({type(exc).__name__}: {first_line(exc)})"
        ) from exc
    if isinstance(loaded, (tuple, list)):
        loaded = {str(i): v for i, v in enumerate(loaded)}
    picked = _pick(loaded, key, source) if isinstance(loaded, dict) else loaded
    if isinstance(picked, torch.Tensor):
        _check_probe_tensor(picked, source)
    return picked


def _prescan(source: Path) -> None:
    """The loader's bounded pickle pre-scan (depth, size, tensor count, non-dense tensors) before torch.load."""
    from ..loading.pickle_scan import PickleLimitError, check_torch_file

    try:
        check_torch_file(source)
    except PickleLimitError as exc:
        raise ProbeError(f"refusing probe {str(source)!r}: its pickle {exc}") from None
    except (OSError, zipfile.BadZipFile, ValueError, EOFError):
        pass  # not a readable torch.save file: torch.load below says so in its own words


def _check_probe_tensor(tensor: torch.Tensor, source: Path) -> None:
    """A dense CPU tensor whose storage really holds every element (no stride-0 rows repeated forever)."""
    from ..loading.dense import tensor_problem

    problem = tensor_problem(tensor)
    if problem is not None:
        raise ProbeError(f"refusing probe {str(source)!r}: it is {problem}; save a dense tensor (tensor.to_dense())")
    needed = tensor.numel() * tensor.element_size()
    held = tensor.untyped_storage().nbytes()
    if needed > held:
        raise ProbeError(
            f"refusing probe {str(source)!r}: shape {tuple(tensor.shape)} needs {needed:,} bytes but its storage holds "
            f"{held:,} (a stride-0 or overlapping view); save tensor.contiguous()"
        )


def _pick(tensors: dict[str, Any], key: str | None, source: Path) -> Any:
    arrays = {k: v for k, v in tensors.items() if isinstance(v, (torch.Tensor, np.ndarray))}
    if key is not None:
        if key not in arrays:
            raise ProbeError(f"--probe-key {key!r} not in {str(source)!r}; it holds {sorted(arrays)[:10]}")
        return arrays[key]
    if len(arrays) != 1:
        raise ProbeError(
            f"probe {str(source)!r} holds {len(arrays)} tensors {sorted(arrays)[:10]}; choose one with --probe-key"
        )
    return next(iter(arrays.values()))


def _safetensors_array(source: Path, key: str | None) -> Any:
    from safetensors import safe_open

    handle = safe_open(str(source), framework="pt")
    names = list(handle.keys())
    if key is None and len(names) != 1:
        raise ProbeError(f"probe {str(source)!r} holds {len(names)} tensors {names[:10]}; choose one with --probe-key")
    if key is not None and key not in names:
        raise ProbeError(f"--probe-key {key!r} not in {str(source)!r}; it holds {names[:10]}")
    return _SafetensorsSlice(handle.get_slice(key or names[0]))


class _SafetensorsSlice:
    """Rows of a safetensors tensor, read on demand."""

    def __init__(self, sliced: Any) -> None:
        self._slice = sliced
        self.shape = tuple(sliced.get_shape())

    def __getitem__(self, rows: slice) -> torch.Tensor:
        return self._slice[rows]


class _NpyRows:
    """Rows of a C-ordered .npy file, read with plain file reads.

    Unlike a memory map, the pages of batches already scanned do not stay in the process's memory, so peak
    memory does not grow with the size of the probe file.
    """

    def __init__(self, path: Path, shape: tuple[int, ...], dtype: np.dtype, offset: int) -> None:
        self._path, self.shape, self.dtype, self._offset = path, shape, dtype, offset
        self._row_items = math.prod(shape[1:])

    def __getitem__(self, rows: slice) -> np.ndarray:
        start, stop = rows.start or 0, min(rows.stop, self.shape[0])
        count = max(stop - start, 0) * self._row_items
        offset = self._offset + start * self._row_items * self.dtype.itemsize
        data = np.fromfile(self._path, dtype=self.dtype, count=count, offset=offset)
        if data.size != count:
            raise ProbeError(f"probe {str(self._path)!r} is shorter than its header says; re-save it")
        return data.reshape((max(stop - start, 0), *self.shape[1:]))


def npy_rows(path: Path) -> Any:
    """A .npy file as rows read on demand (a memory map for Fortran-ordered or object arrays)."""
    with path.open("rb") as handle:
        version = np.lib.format.read_magic(handle)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran_order, dtype = read_header(handle)
        offset = handle.tell()
    if fortran_order or dtype.hasobject or len(shape) == 0:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    return _NpyRows(path, tuple(int(s) for s in shape), dtype, offset)


class _ShardedNpy:
    """A directory of .npy shards concatenated on axis 0, each memory-mapped."""

    def __init__(self, files: list[Path], source: Path) -> None:
        if not files:
            raise ProbeError(
                f"probe directory {str(source)!r} holds no .npy shards; pass a file or a directory of .npy"
            )
        self._shards = [npy_rows(f) for f in files]
        tails = {s.shape[1:] for s in self._shards}
        if len(tails) != 1:
            raise ProbeError(f"probe shards in {str(source)!r} disagree on sample shape: {sorted(tails)}")
        self._starts = np.cumsum([0] + [s.shape[0] for s in self._shards])
        self.shape = (int(self._starts[-1]), *tails.pop())

    def __getitem__(self, rows: slice) -> np.ndarray:
        start, stop = rows.start or 0, rows.stop
        parts = []
        for shard, offset in zip(self._shards, self._starts[:-1]):
            lo, hi = max(start - offset, 0), min(stop - offset, shard.shape[0])
            if lo < hi:
                parts.append(shard[lo:hi])
        return np.concatenate(parts)


def _as_tensor(rows: Any) -> torch.Tensor:
    if isinstance(rows, torch.Tensor):
        return rows.clone()
    array = np.asarray(rows)
    if array.dtype.kind not in "fiub":
        raise ProbeError(f"probe has dtype {array.dtype}; it needs a numeric (float or integer) array")
    if not array.dtype.isnative:  # big-endian .npy: torch reads native byte order only
        array = array.astype(array.dtype.newbyteorder("="))
    return torch.from_numpy(np.array(array, copy=True))


def _is_safetensors(head: bytes) -> bool:
    if len(head) < 9:
        return False
    size = int.from_bytes(head[:8], "little")
    return 0 < size < 100_000_000 and head[8:9] == b"{"


def _check_counts(samples: int, batch_size: int) -> None:
    if batch_size < 1:
        raise ProbeError(f"--batch-size must be at least 1, got {batch_size}")
    if samples < 1:
        raise ProbeError(f"--samples must be at least 1, got {samples}")
