"""The one way relu-doctor writes a file: resolved once, never over an input, atomic, exclusive unless forced.

Every output (``scan -o``, ``--save-stats``, ``--plot``, ``trend -o``, ``merge -o``, the repaired checkpoint of
``fix -o``) goes through :func:`plan_output` and then :func:`write_with` or :func:`write_bytes`:

- the path is resolved once (symlinks and ``..`` included) and the file is written to exactly that place;
- it is refused when it is one of the command's inputs, by real path or by inode (symlinks, hard links,
  ``missing/../MODEL``), whether or not it exists yet, and when it is an existing file inside an input folder;
- the content goes to a temporary file beside it first; without ``--force`` the final step is exclusive
  (a hard link, which fails if the name exists), so a file created meanwhile, or by a concurrent writer, is not
  replaced; with ``--force`` the temporary file is renamed over the old one;
- the temporary file is removed on any error, on Ctrl-C and on SIGTERM (SIGKILL cannot be caught).
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import stat
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError


class Terminated(BaseException):  # noqa: N818 - named like KeyboardInterrupt, which it parallels
    """SIGTERM arrived while a file was being written (raised so the temporary file is cleaned up)."""


@dataclass(frozen=True)
class OutputTarget:
    """An output path, resolved once and checked against every input of the command."""

    given: str
    """The path as the user wrote it (for messages)."""
    path: Path
    """Where the file is written: absolute, symlinks and ``..`` resolved."""
    replace: bool
    """--force: an existing file (never an input) may be replaced."""
    inputs: tuple[tuple[int, int], ...]
    """(device, inode) of every input file, checked again at the final step."""
    option: str
    """The option that named it (``-o``, ``--save-stats``, ``--plot``), for messages."""


def shown(path: object) -> str:
    """A path for a one-line message: quoted, with newlines and other control characters escaped."""
    return repr(str(path))


def plan_output(
    output: str | Path, inputs: Iterable[str | Path | None], *, force: bool, option: str = "-o"
) -> OutputTarget:
    """Resolve `output` once and check it: UsageError naming the option when it is an input, exists without
    `force`, is a folder, or has no folder to go in."""
    given = str(output)
    target = Path(os.path.realpath(given))
    existing = [Path(p) for p in inputs if p is not None and Path(p).exists()]
    for source in existing:
        if _same(target, source):
            raise UsageError(
                f"{option} {shown(given)} is the input {shown(source)}; outputs never replace an input, "
                "choose another path"
            )
        if source.is_dir() and target.exists() and Path(os.path.realpath(source)) in target.parents:
            raise UsageError(
                f"{option} {shown(given)} is a file inside the input folder {shown(source)}; choose a path outside it"
            )
    if target.is_dir():
        raise UsageError(f"{option} {shown(given)} is a directory; give a file path inside it")
    if target.exists() and not force:
        raise UsageError(f"{option} {shown(given)} already exists; pass --force to replace it, or choose another path")
    if not target.parent.is_dir():
        raise UsageError(f"{option} {shown(given)}: folder {shown(target.parent)} does not exist; create it first")
    if not os.access(target.parent, os.W_OK | os.X_OK):
        raise UsageError(f"{option} {shown(given)}: folder {shown(target.parent)} is not writable; choose another path")
    identities = tuple(_identity(path) for path in existing if path.is_file())
    return OutputTarget(given, target, force, identities, option)


def write_bytes(target: OutputTarget, content: bytes | str) -> None:
    """Write `content` (str as UTF-8) to the planned target."""
    data = content.encode("utf-8") if isinstance(content, str) else content

    def save(temporary: str) -> None:
        with open(temporary, "wb") as handle:
            handle.write(data)

    write_with(target, save)


def write_with(target: OutputTarget, save: Callable[[str], None]) -> None:
    """Let `save` write a temporary file beside the target, then put it in place (exclusively unless forced)."""
    try:
        fd, temporary = tempfile.mkstemp(prefix=f".{target.path.name}.", suffix=".tmp", dir=target.path.parent)
    except OSError as error:
        raise _write_error(target, error) from None
    os.close(fd)
    try:
        with _terminate_raises():
            save(temporary)
            os.chmod(temporary, _mode(target.path))
            _finish(target, temporary)
    except OSError as error:
        raise _write_error(target, error) from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)


def _finish(target: OutputTarget, temporary: str) -> None:
    if target.path.exists() and _identity(target.path) in target.inputs:
        raise UsageError(f"{target.option} {shown(target.given)} became an input while writing; nothing was written")
    if target.replace:
        os.replace(temporary, target.path)
        return
    try:
        os.link(temporary, target.path)  # fails if the name exists: never replaces a file that appeared meanwhile
    except FileExistsError:
        raise UsageError(
            f"{target.option} {shown(target.given)} was created by something else while writing; nothing was "
            "replaced (pass --force to replace it)"
        ) from None
    except OSError as error:
        if error.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.EXDEV):
            raise
        _claim_then_replace(target, temporary)  # a filesystem without hard links


def _claim_then_replace(target: OutputTarget, temporary: str) -> None:
    try:
        os.close(os.open(target.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        raise UsageError(
            f"{target.option} {shown(target.given)} was created by something else while writing; "
            "nothing was replaced (pass --force to replace it)"
        ) from None
    os.replace(temporary, target.path)


def _mode(path: Path) -> int:
    # mkstemp makes the file private (0600); a replaced file keeps its mode, a new one gets 0644 less the umask.
    if path.exists():
        return stat.S_IMODE(path.stat().st_mode)
    umask = os.umask(0)
    os.umask(umask)
    return 0o644 & ~umask


def _same(target: Path, source: Path) -> bool:
    if target == Path(os.path.realpath(source)):
        return True
    return target.exists() and source.is_file() and _identity(target) == _identity(source)


def _identity(path: Path) -> tuple[int, int]:
    status = path.stat()
    return status.st_dev, status.st_ino


def _write_error(target: OutputTarget, error: OSError) -> UsageError:
    reason = error.strerror or type(error).__name__
    return UsageError(
        f"cannot write {target.option} {shown(target.given)} ({reason}); check the folder's permissions and free space"
    )


@contextlib.contextmanager
def _terminate_raises() -> Iterator[None]:
    """While writing, SIGTERM raises Terminated so the temporary file is removed (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
