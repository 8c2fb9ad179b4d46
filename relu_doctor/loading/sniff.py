"""Recognise a checkpoint by its bytes (never its extension) and name its format.

Sniffing reads only headers, zip directories and the pickle opcodes of torch.save files; it never
unpickles, so it is safe on any input.
"""

from __future__ import annotations

import os
import stat
import zipfile
from pathlib import Path

from ..errors import CheckpointError
from .messages import describe_exception, first_few
from .pickle_scan import PickleFacts, PickleLimitError, check_torch_file, module_classes

SAFETENSORS = "safetensors"
TORCH_SAVE = "torch-save"
TORCH_SAVE_LEGACY = "torch-save-legacy"
PICKLED_MODULE = "pickled-module"
TORCHSCRIPT = "torchscript"
TORCH_EXPORT = "torch-export"
TORCH_EXPORT_LEGACY = "torch-export-legacy"
HF_SAFETENSORS = "hf-safetensors"
HF_SAFETENSORS_SHARDED = "hf-safetensors-sharded"
HF_BIN = "hf-bin"
HF_BIN_SHARDED = "hf-bin-sharded"

CODE_FORMATS = frozenset({TORCHSCRIPT, TORCH_EXPORT, TORCH_EXPORT_LEGACY})
"""Formats whose loading runs code from the file; a pickled module is decided by its globals."""
DIRECTORY_FORMATS = {
    "model.safetensors.index.json": HF_SAFETENSORS_SHARDED,
    "pytorch_model.bin.index.json": HF_BIN_SHARDED,
    "model.safetensors": HF_SAFETENSORS,
    "pytorch_model.bin": HF_BIN,
}
"""Hugging Face layout: the first of these names found in a directory decides its format."""

# torch.save's legacy format starts with a pickled LONG1 of this magic number.
_LEGACY_MAGIC = b"\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")
_ZIP_MAGIC = b"PK\x03\x04"
_HEAD_BYTES = 512


def sniff(path: Path) -> str:
    """The checkpoint format of `path` (a file or a Hugging Face style directory), by content.

    Raises CheckpointError naming what was found when it is not a checkpoint relu-doctor reads.
    """
    path = Path(path)
    mode = _stat_mode(path)
    if stat.S_ISDIR(mode):
        return sniff_directory(path)
    if not stat.S_ISREG(mode):
        raise CheckpointError(f"{path} is not a regular file (a pipe, device or socket); give the checkpoint file")
    return _sniff_head(path, read_head(path))


def _stat_mode(path: Path) -> int:
    try:
        return os.stat(path).st_mode
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file or directory; check the model path") from None
    except OSError as error:
        raise CheckpointError(f"{path}: cannot access it ({describe_exception(error)}); check the path") from None


def read_head(path: Path, size: int = _HEAD_BYTES) -> bytes:
    """The first `size` bytes of a file, with unreadable files turned into CheckpointError."""
    try:
        with path.open("rb") as stream:
            return stream.read(size)
    except OSError as error:
        raise CheckpointError(f"{path}: cannot read it ({describe_exception(error)}); check its permissions") from None


def _sniff_head(path: Path, head: bytes) -> str:
    if not head:
        raise CheckpointError(f"{path} is empty (0 bytes); the save or download was probably interrupted")
    if head.startswith(_ZIP_MAGIC):
        return _sniff_zip(path)
    if len(head) > 8 and head[8:9] == b"{":
        return SAFETENSORS  # 8-byte little-endian header length, then the JSON header
    if head[0] == 0x80 and _LEGACY_MAGIC in head[:32]:
        return _sniff_legacy(path)
    raise CheckpointError(f"{path} is not a PyTorch checkpoint: it looks like {describe_bytes(head)}")


def describe_bytes(head: bytes) -> str:
    """A few words on what an unrecognised file seems to be, for the error message."""
    if len(head) > 1 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "a plain Python pickle, not torch.save output; re-save it with torch.save(model.state_dict(), path)"
    if head[257:262] == b"ustar":
        return "a tar archive (the pre-1.0 torch.save format or an archive); re-save it with a current torch.save"
    if head.startswith(b"\x1f\x8b"):
        return "gzip-compressed data; decompress it first"
    if head.startswith(b"\x89HDF"):
        return "an HDF5 file (Keras?); relu-doctor reads PyTorch checkpoints"
    if all(32 <= byte < 127 or byte in b"\t\r\n" for byte in head[:64]):
        return f"text starting {head[:24].decode('ascii')!r}"
    return f"unrecognised binary data starting with 0x{head[:8].hex()}"


def _sniff_zip(path: Path) -> str:
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            return _classify_zip(path, archive, names)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError, KeyError) as error:
        raise CheckpointError(
            f"{path} starts like a zip archive but cannot be read ({describe_exception(error)}); "
            "the file is truncated or corrupted, re-download or re-save it"
        ) from None


def _classify_zip(path: Path, archive: zipfile.ZipFile, names: list[str]) -> str:
    records = {name.split("/", 1)[1] if "/" in name else name: name for name in names}
    if _is_pt2(archive, records):
        return TORCH_EXPORT
    if "serialized_exported_program.json" in records:
        return TORCH_EXPORT_LEGACY  # torch.export.save before the PT2 archive (torch < 2.7)
    if "constants.pkl" in records:
        return TORCHSCRIPT
    if "data.pkl" in records:
        return _pickle_format(path)
    raise CheckpointError(
        f"{path} is a zip archive, not a PyTorch checkpoint (it holds {first_few(names, 3)}); "
        "give a torch.save, safetensors, TorchScript or torch.export file"
    )


def _is_pt2(archive: zipfile.ZipFile, records: dict[str, str]) -> bool:
    name = records.get("archive_format")
    return name is not None and archive.getinfo(name).file_size < 64 and archive.read(name).strip() == b"pt2"


def _pickle_format(path: Path) -> str:
    return PICKLED_MODULE if module_classes(torch_file_facts(path).globals) else TORCH_SAVE


def _sniff_legacy(path: Path) -> str:
    return PICKLED_MODULE if module_classes(torch_file_facts(path).globals) else TORCH_SAVE_LEGACY


def torch_file_facts(path: Path) -> PickleFacts:
    """The bounded pre-scan of a torch.save file, before anything unpickles it; CheckpointError when it fails."""
    try:
        return check_torch_file(path)
    except PickleLimitError as error:
        raise CheckpointError(
            f"refusing {path}: its pickle {error}; re-save the weights with torch.save or as .safetensors"
        ) from None


def sniff_directory(path: Path) -> str:
    """The Hugging Face layout of a directory, or CheckpointError listing what it holds instead."""
    for name, format_name in DIRECTORY_FORMATS.items():
        if (path / name).is_file():
            return format_name
    try:
        found = [entry.name for entry in path.iterdir()]
    except OSError as error:
        raise CheckpointError(f"{path}: cannot list it ({describe_exception(error)}); check its permissions") from None
    listing = first_few(found, 4) if found else "nothing"
    raise CheckpointError(
        f"{path} is a directory without model weights (found {listing}); expected model.safetensors, "
        "pytorch_model.bin or a sharded *.index.json (Hugging Face layout), or give the weights file itself"
    )
