"""The Typer app, the shared error boundary and output helpers for every command."""

from __future__ import annotations

import functools
import os
import sys
import traceback
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from enum import Enum
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import typer

from .._version import __version__
from ..errors import ReluDoctorError, UsageError
from ..render.registry import Registry
from ..report import GateResult, Report, Violation
from .command import ReluCommand as ReluCommand
from .command import ReluGroup
from .config import Resolved

if TYPE_CHECKING:  # rich's console is imported when something is printed, not by `import relu_doctor.cli`
    from rich.console import Console

EXIT_OK, EXIT_GATE, EXIT_ERROR = 0, 1, 2
RecordT = TypeVar("RecordT")
EXIT_INTERRUPTED, EXIT_TERMINATED = 130, 143

app = typer.Typer(
    name="relu-doctor",
    cls=ReluGroup,
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
    version: bool = typer.Option(
        False, "--version", "-V", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Find dead and dying ReLU units in a PyTorch checkpoint, say why, and gate CI on them."""


def stderr_console(style: OutputStyle | None = None) -> Console:
    """The console for progress, summaries and errors (never stdout): ``--color never`` gives no ANSI colour at
    all, ``always`` colour even in a pipe; ``auto`` is rich's own choice (NO_COLOR, FORCE_COLOR, a terminal)."""
    from rich.console import Console

    if style is not None and style.no_color:
        return Console(stderr=True, highlight=False, no_color=True, color_system=None)
    if style is not None and style.force_color:
        return Console(stderr=True, highlight=False, force_terminal=True, color_system="standard")
    return Console(stderr=True, highlight=False)


@dataclass(frozen=True)
class OutputStyle:
    """How a command talks: what goes to stdout and stderr, with or without colour, how wide."""

    quiet: bool
    """Nothing on stdout and no chatter on stderr (errors still print); the exit code says it all."""
    verbose: bool
    """Say on stderr where each setting came from and how long the scan took."""
    color: bool
    """ANSI colour in the table on stdout."""
    width: int | None
    """Width of the table on stdout; None for a pipe or a file without COLUMNS: no line is wrapped."""
    progress: bool
    """Show a progress bar on stderr."""
    no_color: bool = False
    """--color never, --no-color or NO_COLOR: keep stderr plain too (progress included)."""
    force_color: bool = False
    """--color always: colour on stderr even when it is not a terminal."""


def output_style(
    *,
    quiet: bool,
    verbose: bool,
    no_color: bool,
    to_file: bool,
    environ: Mapping[str, str],
    stdout_tty: bool,
    stderr_tty: bool,
    color_mode: str = "auto",
) -> OutputStyle:
    """Colour (as ruff and pytest): ``--color always`` on, ``never`` (or --no-color) off; ``auto``: off with
    NO_COLOR (non-empty), on with FORCE_COLOR, else when stdout is a terminal. A file never gets colour.
    Width: COLUMNS, else the terminal's, else None (a pipe: nothing wrapped). Progress only on a terminal stderr,
    never when quiet."""
    never = no_color or color_mode == "never"
    always = color_mode == "always" and not never
    plain = never or (not always and bool(environ.get("NO_COLOR")))
    color = not plain and not to_file and (always or bool(environ.get("FORCE_COLOR")) or stdout_tty)
    return OutputStyle(
        quiet=quiet,
        verbose=verbose and not quiet,
        color=color,
        width=_width(environ, stdout_tty and not to_file),
        progress=stderr_tty and not quiet,
        no_color=plain,
        force_color=always,
    )


def _width(environ: Mapping[str, str], terminal: bool) -> int | None:
    columns = environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        return int(columns)
    if terminal:
        try:
            return os.get_terminal_size(sys.stdout.fileno()).columns
        except (OSError, ValueError):
            pass
        return 100
    return None


def style_from_options(
    quiet: bool, verbose: bool, no_color: bool, output: Path | None, color: Enum | str = "auto"
) -> OutputStyle:
    """:func:`output_style` for this process's environment and streams."""
    return output_style(
        quiet=quiet,
        verbose=verbose,
        no_color=no_color,
        to_file=output is not None,
        environ=os.environ,
        stdout_tty=sys.stdout.isatty(),
        stderr_tty=sys.stderr.isatty(),
        color_mode=color.value if isinstance(color, Enum) else color,
    )


def note(style: OutputStyle, message: str, *, verbose_only: bool = False) -> None:
    """One plain line on stderr, unless quiet (or, for ``verbose_only``, unless verbose)."""
    if style.quiet or (verbose_only and not style.verbose):
        return
    stderr_console(style).print(message, highlight=False, markup=False, soft_wrap=True)


def given_on_command_line(ctx: typer.Context, name: str) -> bool:
    """True when the user typed the option (not its default)."""
    # Compared by name: Typer >= 0.29 vendors click, so its ParameterSource is not click.core's enum.
    source = ctx.get_parameter_source(name)
    return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")


def configure(
    ctx: typer.Context,
    config_file: Path | None,
    *,
    near: Collection[Path] = (),
    exclude: Collection[str] = (),
    isolated: bool = False,
) -> Resolved:
    """Layer the command's options over RELU_DOCTOR_* variables, the config file and the option defaults.

    Keys are the long option names; ``exclude`` keys are taken from the command line or default only.
    ``isolated`` (--isolated, as in ruff) reads no config file and no variable: the command line and defaults only.
    Without ``--config`` the file is the nearest one above the models ``near`` (:func:`config.find_config_for`).
    """
    from . import config

    keyed = {
        config.normalize(opt[2:]): param.name
        for param in ctx.command.params
        for opt in param.opts[:1]
        if opt.startswith("--") and param.name
    }
    known = {key: name for key, name in keyed.items() if key in config.KEYS}
    given = {key: ctx.params[name] for key, name in known.items() if given_on_command_line(ctx, name)}
    defaults = {key: ctx.params[name] for key, name in known.items() if key not in given}
    if isolated:
        if config_file is not None:
            raise UsageError("--isolated reads no config file; drop --config or --isolated")
        return config.resolve(given, {}, None, defaults)
    path = config_file or config.find_config_for(near, Path.cwd())
    file = config.load_config(path) if path is not None else None
    if file is not None and exclude:
        file = replace(file, values={k: v for k, v in file.values.items() if k not in exclude})
    environment = {k: v for k, v in config.parse_environment(os.environ).items() if k not in exclude}
    resolved = config.resolve(given, environment, file, defaults)
    return replace(resolved, warnings=tuple(config.unknown_variables(os.environ)))


def warn(style: OutputStyle, message: str) -> None:
    """``relu-doctor: warning: ...`` on stderr, unless quiet."""
    note(style, f"relu-doctor: warning: {message}")


def describe_settings(resolved: Resolved) -> list[str]:
    """Verbose lines: the config file, then every setting that did not come from its default."""
    lines = [
        f"config: {resolved.config_path or 'none found (no .relu-doctor.toml, nor [tool.relu-doctor] in a pyproject.toml, above the model or here)'}"
    ]
    lines += [
        f"  {key} = {_shown(resolved.values[key])}  ({source})"
        for key, source in resolved.sources.items()
        if source != "default"
    ]
    return lines


def _shown(value: Any) -> str:
    if isinstance(value, Enum):
        return repr(value.value)
    return repr(str(value)) if isinstance(value, PurePath) else repr(value)


def strict_report(report: Report) -> Report:
    """--strict: every warning (synthetic probe, module never called, ...) becomes a gate violation."""
    if not report.warnings:
        return report
    violations = report.gate.violations + tuple(Violation(f"strict: {warning}") for warning in report.warnings)
    return replace(report, gate=GateResult(False, violations, report.gate.failing_sites))


def exit_code(gate: GateResult, *, exit_zero: bool) -> int:
    """The process exit code of a completed scan: the gate's, or 0 with --exit-zero."""
    return EXIT_OK if exit_zero else gate.exit_code


def fail_line(style: OutputStyle, message: str) -> None:
    """``relu-doctor: error: ...`` on stderr without exiting (one model of several could not be scanned); printed
    even when quiet, as every error is."""
    typer.echo(f"relu-doctor: error: {one_line(message)}", err=True)


def fail(message: str, code: int = EXIT_ERROR) -> NoReturn:
    """One line on stderr, then exit with ``code``."""
    typer.echo(f"relu-doctor: error: {message}", err=True)
    raise typer.Exit(code)


@contextmanager
def error_boundary(debug: bool) -> Iterator[None]:
    """Turn every failure into one line on stderr and exit 2; ``--debug`` shows the traceback."""
    from ..workflow.writer import Terminated

    try:
        yield
    except (typer.Exit, typer.Abort):
        raise
    except KeyboardInterrupt:
        fail("interrupted; a file being written was removed, inputs are untouched", EXIT_INTERRUPTED)
    except Terminated:
        fail("terminated (SIGTERM); a file being written was removed, inputs are untouched", EXIT_TERMINATED)
    except ReluDoctorError as exc:
        if debug:
            traceback.print_exc()
        message = one_line(str(exc)) if str(exc) else type(exc).__name__
        fail(message + (help_hint() if isinstance(exc, UsageError) else ""), exc.exit_code)
    except Exception as exc:  # an internal error must never look like a gate failure (exit 1)
        if debug:
            traceback.print_exc()
        fail(f"internal error: {type(exc).__name__}: {one_line(str(exc))} (rerun with --debug for the traceback)")


def help_hint() -> str:
    """``; see 'relu-doctor scan --help'`` for the running command, ending every usage error (as click's do)."""
    from typer._click.globals import get_current_context  # Typer's vendored click keeps its own context

    context = get_current_context(silent=True)
    return f"; see '{context.command_path} --help'" if context is not None else ""


def one_line(text: str) -> str:
    """`text` on one line: newlines and other control characters (from a path, say) escaped, not cut."""
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text.strip())


def plan_outputs(
    inputs: Collection[str | Path | None],
    force: bool,
    reports: Sequence[tuple[str, Path]] = (),
    **outputs: Path | None,
) -> dict[str, Any]:
    """Each output option (name -> path or None) and each ``--report`` (format, path) resolved once and checked
    against every input and each other; ``planned["reports"]`` lists the reports' (format, target)."""
    from ..workflow.writer import plan_output

    planned: dict[str, Any] = {}
    taken: list[Any] = []
    named = [(option, "--" + option.replace("_", "-"), path) for option, path in outputs.items()]
    named += [(f"report:{index}", "--report", path) for index, (_, path) in enumerate(reports)]
    for option, flag, path in named:
        if path is None:
            planned[option] = None
            continue
        target = plan_output(path, inputs, force=force, option=flag)
        for other in taken:
            if other.path == target.path:
                raise UsageError(f"{flag} {str(path)!r} is also {other.option}; give each output its own file")
        taken.append(target)
        planned[option] = target
    planned["reports"] = [(name, planned.pop(f"report:{index}")) for index, (name, _) in enumerate(reports)]
    return planned


def parse_reports(specs: Sequence[str] | None, formats: Registry[Any]) -> list[tuple[str, Path]]:
    """``--report FORMAT=FILE`` (repeatable) as (format, path) pairs; a bad spec or an unknown format is a usage
    error naming it and the choices, raised before any work."""
    parsed = []
    for spec in specs or ():
        name, equals, file = spec.partition("=")
        if not equals or not name.strip() or not file.strip():
            raise UsageError(f"--report expects FORMAT=FILE, e.g. sarif=relu-doctor.sarif, got {spec!r}")
        if name.strip() not in formats:
            raise UsageError(
                f"--report {spec!r}: unknown format {name.strip()!r}; choose one of {', '.join(formats.names())}"
            )
        parsed.append((name.strip(), Path(file)))
    return parsed


def emit_reports(formats: Registry[RecordT], record: RecordT, reports: Sequence[tuple[str, Any]]) -> None:
    """Each planned ``--report``: ``record`` in its format, written atomically to its file (no colour, no wrapping)."""
    for name, target in reports:
        write_output(formats.render(record, name, width=None, color=False), target)


def emit(
    formats: Registry[RecordT], record: RecordT, name: str, output: Any, style: OutputStyle, text: str | None = None
) -> None:
    """``record`` in the format ``name`` (``text``, when already rendered) on stdout (or --output), and its one-line
    verdict on stderr unless that text, shown on the terminal, says it already."""
    text = formats.render(record, name, width=style.width, color=style.color) if text is None else text
    if output is not None or not style.quiet:
        write_output(text, output)
    if not formats.get(name).terminal or output is not None:
        note(style, formats.verdict(record))


def write_output(content: str | bytes, target: Any = None) -> None:
    """Write to stdout, or through the one atomic writer to a planned target (see :func:`plan_outputs`)."""
    if target is None:
        if isinstance(content, bytes):
            sys.stdout.buffer.write(content)
        else:
            sys.stdout.write(content)
        sys.stdout.flush()
        return
    from ..workflow.writer import write_bytes

    write_bytes(target, content)


class StageDisplay:
    """One live line on stderr naming the running stage (loading, observing k/n, simulating k/m, writing) with
    its progress and an ETA; every method is a no-op when the display is off (not a terminal, or quiet)."""

    def __init__(self, enabled: bool, style: OutputStyle | None = None) -> None:
        self._bar: Any = None
        self._task: Any = None
        self._shown = False
        # FORCE_COLOR makes rich think it is a terminal; a live display needs a real one
        if not enabled or not sys.stderr.isatty():
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=stderr_console(style),  # --color never: no ANSI colour in the display either
            transient=True,
        )
        self._task = self._bar.add_task("starting", total=None)
        self._bar.start()
        self._shown = True

    @property
    def live(self) -> bool:
        """The display is shown."""
        return self._bar is not None and self._shown

    def stage(self, name: str, total: int | None) -> None:
        """Start stage ``name`` of ``total`` steps (None: unknown, shown as a pulse); shown again after a stop (the
        verbose notes between a model's scan and the writing stage stop it)."""
        if self._bar is not None:
            if not self._shown:
                self._bar.start()
                self._shown = True
            self._bar.reset(self._task, total=total, completed=0, description=name)

    def advance(self, steps: int) -> None:
        """``steps`` more steps of the current stage are done."""
        if self._bar is not None:
            self._bar.advance(self._task, steps)

    def update(self, done: int, total: int) -> None:
        """``done`` of ``total`` steps of the current stage are done (the total may grow)."""
        if self._bar is not None:
            self._bar.update(self._task, completed=done, total=total)

    def stop(self) -> None:
        """Remove the display until the next stage (idempotent)."""
        if self._bar is not None and self._shown:
            self._bar.stop()
            self._shown = False


_WHOLE_PROCESS = False
"""True once :func:`main` runs: this process exists for one command (not an embedding program or a test runner)."""


@functools.cache
def settle_imports() -> None:
    """Import torch and the model-running library; in a process of its own, with the cyclic GC paused, and then
    freeze what they left alive.

    Commands that run a model call this once, after their inputs are checked (a bad path fails before torch is
    imported). ``import torch`` makes ~170,000 long-lived objects: with the GC on, it walks them in two or three full
    collections during the import and again in every later one (0.1-0.25 s of a scan). The console script's
    process lives for one run and imports make next to no garbage, so it pauses the GC for them and freezes the
    result (:func:`gc.freeze`): later collections see only the run's own objects. A program that calls the app
    in-process (a test's CliRunner) keeps its GC as it was.
    """
    import gc

    paused = _WHOLE_PROCESS and gc.isenabled()
    if paused:
        gc.disable()
    try:
        import torch  # noqa: F401

        from .. import whatif  # noqa: F401
    finally:
        if paused:
            gc.freeze()
            gc.enable()


def main() -> None:
    """Console-script entry point: usage errors become one line on stderr and exit 2, like every other error."""
    from typer.exceptions import TyperException
    from typer.main import get_command

    global _WHOLE_PROCESS
    _WHOLE_PROCESS = True
    try:
        code = get_command(app).main(prog_name="relu-doctor", standalone_mode=False)
    except TyperException as exc:  # click's usage errors (bad option value, unknown option or command)
        context = getattr(exc, "ctx", None)
        hint = f"; see '{context.command_path} --help'" if context is not None else ""
        message = " ".join(str(exc.format_message()).split()).rstrip(".")
        if message:  # no arguments at all: click has printed the help
            typer.echo(f"relu-doctor: error: {message}{hint}", err=True)
        raise SystemExit(getattr(exc, "exit_code", EXIT_ERROR)) from None
    except typer.Abort:
        typer.echo("relu-doctor: aborted", err=True)
        raise SystemExit(EXIT_ERROR) from None
    raise SystemExit(code if isinstance(code, int) else EXIT_OK)
