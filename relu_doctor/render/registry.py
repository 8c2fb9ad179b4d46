"""One interface for every output format, and one registry per kind of output (a report, a trend, a fix outcome).

A format is an :class:`OutputFormat` entry: a name, a :class:`Renderer`, and the few facts the CLI needs about it
(is it for people at a terminal, its media type and file extension, how names from files are made safe in it).
The CLI and the workflow look formats up by name in a :class:`Registry`; nothing outside ``render/`` tells one
format from another. Adding a format is one renderer module and one entry in its registry.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from ..errors import UsageError
from .common import defuse_workflow_commands, printable_report

RecordT = TypeVar("RecordT")
RecordT_contra = TypeVar("RecordT_contra", contravariant=True)


class Renderer(Protocol[RecordT_contra]):
    """Text of one record. Pure: it reads the record (which already carries every verdict), computes nothing,
    writes nothing. ``width`` (None: no wrapping) and ``color`` (ANSI escapes) matter to terminal formats only."""

    def __call__(self, record: RecordT_contra, /, *, width: int | None = ..., color: bool = ...) -> str: ...


@dataclass(frozen=True)
class OutputFormat(Generic[RecordT]):
    """One output format of one kind of record."""

    name: str
    """What ``--format`` takes; unique within its registry."""
    renderer: Renderer[RecordT]
    """Turns the record into text."""
    terminal: bool
    """For people at a terminal: laid out to the width, coloured on request, and it shows the one-line verdict
    itself (the CLI repeats the verdict on stderr for every other format, or when the text goes to a file)."""
    media_type: str
    """The text's media type (for files and uploads)."""
    extension: str
    """The usual file name extension, with its dot."""
    escape_names: bool = False
    """Names from files (paths, module names) appear raw in this format, so their control characters are written
    as escapes first (JSON and SARIF escape them themselves)."""
    workflow_commands: bool = False
    """The text is GitHub Actions workflow commands. Every other format gets an invisible guard in front of any
    line that would start with ``::``."""


@dataclass(frozen=True)
class Registry(Generic[RecordT]):
    """Every output format of one kind of record, in the order ``--help`` lists them; the first is the default."""

    kind: str
    """What the formats render, in the user's words (named in error messages): report, trend, fix outcome."""
    formats: tuple[OutputFormat[RecordT], ...]
    """The entries."""
    verdict: Callable[[RecordT], str]
    """The record's one-line verdict, for stderr when the chosen format does not show it."""

    def __post_init__(self) -> None:
        names = self.names()
        if not names or len(set(names)) != len(names):
            raise ValueError(f"{self.kind} formats need unique names, got {names}")

    def __iter__(self) -> Iterator[OutputFormat[RecordT]]:
        return iter(self.formats)

    def __contains__(self, name: object) -> bool:
        return name in self.names()

    def names(self) -> tuple[str, ...]:
        """The format names, default first."""
        return tuple(entry.name for entry in self.formats)

    @property
    def default(self) -> OutputFormat[RecordT]:
        """The format used when none is asked for."""
        return self.formats[0]

    def get(self, name: str) -> OutputFormat[RecordT]:
        """The entry called ``name``; an unknown name raises :class:`~relu_doctor.errors.UsageError` listing
        the choices."""
        for entry in self.formats:
            if entry.name == name:
                return entry
        raise UsageError(f"unknown {self.kind} format {name!r}; choose one of {', '.join(self.names())}")

    def render(self, record: RecordT, name: str, *, width: int | None = 100, color: bool = False) -> str:
        """``record`` in the format ``name``, with names from files made safe as that format needs."""
        entry = self.get(name)
        shown = printable_report(record) if entry.escape_names else record
        text = entry.renderer(shown, width=width, color=color)
        return text if entry.workflow_commands else defuse_workflow_commands(text)
