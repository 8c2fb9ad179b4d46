"""Content hashes that identify the weights a report was made from."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

_CHUNK = 1 << 20


def file_sha256(path: Path) -> str:
    """sha256 of one file, read in 1 MiB chunks so a large checkpoint never sits in memory twice."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def files_sha256(root: Path, files: Iterable[Path]) -> str:
    """sha256 over the sorted (name relative to root, file sha256) pairs: a directory's identity.

    Only the files the loader read take part, so an unrelated file beside the weights (a README,
    a second copy in another format) does not change the hash.
    """
    digest = hashlib.sha256()
    pairs = sorted((file.relative_to(root).as_posix(), file_sha256(file)) for file in set(files))
    for name, file_digest in pairs:
        digest.update(f"{name}\0{file_digest}\n".encode())
    return digest.hexdigest()
