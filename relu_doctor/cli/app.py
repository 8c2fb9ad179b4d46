"""The Typer app, the shared error boundary and output helpers for every command."""

from __future__ import annotations

import os
import sys
import tempfile
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.console import Console

from .._version import __version__
from ..errors import ReluDoctorError

EXIT_OK, EXIT_GATE, EXIT_ERROR = 0, 1, 2

app = typer.Typer(
    name="relu-doctor",
    help="Find dead and dying ReLU units in a PyTorch checkpoint, say why, and gate CI on them.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"relu-doctor {__version__}")
        raise typer.Exit(EXIT_OK)


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """Find dead and dying ReLU units in a PyTorch checkpoint, say why, and gate CI on them."""


def stderr_console() -> Console:
    """The console for progress, summaries and errors (never stdout)."""
    return Console(stderr=True, highlight=False)


def fail(message: str, code: int = EXIT_ERROR) -> NoReturn:
    """One line on stderr, then exit with ``code``."""
    typer.echo(f"relu-doctor: error: {message}", err=True)
    raise typer.Exit(code)


@contextmanager
def error_boundary(debug: bool) -> Iterator[None]:
    """Turn every failure into one line on stderr and exit 2; ``--debug`` shows the traceback."""
    try:
        yield
    except (typer.Exit, typer.Abort, KeyboardInterrupt):
        raise
    except ReluDoctorError as exc:
        if debug:
            traceback.print_exc()
        fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__, exc.exit_code)
    except Exception as exc:  # an internal error must never look like a gate failure (exit 1)
        if debug:
            traceback.print_exc()
        first = str(exc).splitlines()[0] if str(exc) else ""
        fail(f"internal error: {type(exc).__name__}: {first} (rerun with --debug for the traceback)")


def write_output(text: str, path: Path | None) -> None:
    """Write ``text`` to stdout, or atomically to ``path`` (a temporary file in the same folder, then rename)."""
    if path is None:
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    target = path.resolve()
    fd, temporary = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def progress_bar(total: int, enabled: bool) -> Any:
    """A rich progress bar on stderr for multi-batch probes when stderr is a terminal, else a no-op."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    console = stderr_console()
    if not enabled or not console.is_terminal:
        return None
    bar = Progress(TextColumn("scanning"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=console,
                   transient=True)  # fmt: skip
    task = bar.add_task("scan", total=total)
    return bar, (lambda n: bar.advance(task, n))


def main() -> None:
    """Console-script entry point."""
    app()

