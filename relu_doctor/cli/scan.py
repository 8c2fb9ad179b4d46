"""`relu-doctor scan`: parse options into a ScanRequest, run it, render the report, exit with the gate's code."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import UntrustedCodeError, UsageError
from ..render import Format, render
from ..render.common import summary_line
from ..report import Report, Thresholds
from .app import app, error_boundary, progress_bar, stderr_console, write_output

LOAD = "Loading"
PROBE = "Probe"
GATE = "Gate"
OUTPUT = "Output"


@app.command()
def scan(
    ctx: typer.Context,
    model: Annotated[Path, typer.Argument(help="Checkpoint file or Hugging Face-style directory.", show_default=False)],
    arch: Annotated[str | None, typer.Option(help="Architecture for a state dict: package.module:callable or path/to/file.py:callable.", rich_help_panel=LOAD)] = None,
    arch_kwargs: Annotated[str | None, typer.Option(help="JSON object of keyword arguments for the --arch callable.", rich_help_panel=LOAD)] = None,
    key: Annotated[str | None, typer.Option(help="Nested state dict to use in a training checkpoint.", rich_help_panel=LOAD)] = None,
    trust: Annotated[bool, typer.Option("--trust", help="Allow formats that run code from the file (pickled module, TorchScript, torch.export).", rich_help_panel=LOAD)] = False,
    imports: Annotated[list[str] | None, typer.Option("--import", help="Module to import before unpickling a trusted module (repeatable).", rich_help_panel=LOAD)] = None,
    allow_global: Annotated[list[str] | None, typer.Option(help="Allow one pickled global (module.Name) in a weights-only load (repeatable).", rich_help_panel=LOAD)] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or mps.", rich_help_panel=LOAD)] = "cpu",
    dtype: Annotated[str, typer.Option(help="float32, bfloat16 or float16 (counters stay float32 or wider).", rich_help_panel=LOAD)] = "float32",
    probe: Annotated[Path | None, typer.Option(help="Probe tensor: .npy, .npz, .safetensors, .pt, or a directory of .npy shards.", rich_help_panel=PROBE)] = None,
    probe_key: Annotated[str | None, typer.Option(help="Tensor to use from a probe file holding several.", rich_help_panel=PROBE)] = None,
    samples: Annotated[int, typer.Option(help="Synthetic probe size (default 256; with --probe, read at most this many samples).", show_default=False, rich_help_panel=PROBE)] = 256,
    seed: Annotated[int, typer.Option(help="Seed of the synthetic probe.", rich_help_panel=PROBE)] = 0,
    batch_size: Annotated[int, typer.Option(help="Samples per forward pass.", rich_help_panel=PROBE)] = 64,
    input_shape: Annotated[str | None, typer.Option(help="Shape of one synthetic sample, e.g. 3x32x32.", rich_help_panel=PROBE)] = None,
    unit_dim: Annotated[int | None, typer.Option(help="Force the unit axis of every site (default: channels for conv-style, last axis for linear-style).", rich_help_panel=PROBE)] = None,
    dying_rate: Annotated[float, typer.Option(help="A live unit firing on fewer than this share of its positions is dying.", rich_help_panel=GATE)] = 0.01,
    tau: Annotated[float, typer.Option(help="ReDo dormancy threshold.", rich_help_panel=GATE)] = 0.025,
    max_dead_fraction: Annotated[float | None, typer.Option(help="Exit 1 when the model's dead fraction exceeds this.", rich_help_panel=GATE)] = None,
    max_layer_dead_fraction: Annotated[float | None, typer.Option(help="Exit 1 when any site's dead fraction exceeds this.", rich_help_panel=GATE)] = None,
    fmt: Annotated[Format, typer.Option("--format", "-f", help="Report format on stdout.", rich_help_panel=OUTPUT)] = Format.table,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write the report to this file (atomically) instead of stdout.", rich_help_panel=OUTPUT)] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.", rich_help_panel=OUTPUT)] = False,
) -> None:
    """Scan MODEL with a probe and report dead and dying ReLU units per site."""
    with error_boundary(debug):
        from ..pipeline import ScanRequest

        thresholds = Thresholds(dying_rate, tau, max_dead_fraction, max_layer_dead_fraction)
        request = ScanRequest(
            model_path=str(model), arch=arch, arch_kwargs=_json_object(arch_kwargs), key=key, trust=trust,
            imports=tuple(imports or ()), allow_globals=tuple(allow_global or ()),
            probe_path=None if probe is None else str(probe), probe_key=probe_key, samples=samples,
            limit_samples=probe is not None and _given(ctx, "samples"), seed=seed, batch_size=batch_size,
            input_shape=None if input_shape is None else _shape(input_shape), unit_dim=unit_dim,
            device=device, dtype=dtype, thresholds=thresholds,
        )  # fmt: skip
        report = _run_with_trust_prompt(request)
        emit_report(report, fmt, output)
    raise typer.Exit(report.exit_code)


def emit_report(report: Report, fmt: Format, output: Path | None) -> None:
    """The report on stdout (or --output), the one-line verdict on stderr unless the table already shows it."""
    console = stderr_console()
    to_terminal = output is None and sys.stdout.isatty()
    width = int(os.environ.get("COLUMNS", 0) or (os.get_terminal_size().columns if to_terminal else 100))
    color = to_terminal and "NO_COLOR" not in os.environ
    write_output(render(report, fmt, width=width, color=color), output)
    if fmt is not Format.table or output is not None:
        console.print(summary_line(report), highlight=False, markup=False)


def _run_with_trust_prompt(request: Any) -> Report:
    from dataclasses import replace

    from ..pipeline import run_scan

    try:
        return _run(request, run_scan)
    except UntrustedCodeError as exc:
        if not (sys.stdin.isatty() and sys.stderr.isatty()):
            raise
        typer.echo(f"relu-doctor: {exc}", err=True)
        if not typer.confirm(f"Load this {exc.format_name} file and run the code it carries?", default=False, err=True):
            raise
        return _run(replace(request, trust=True), run_scan)


def _run(request: Any, run_scan: Any) -> Report:
    state: dict[str, Any] = {}

    def on_probe(total: int) -> None:
        state["bar"] = progress_bar(total, enabled=total > request.batch_size)
        if state["bar"] is not None:
            state["bar"][0].start()

    def advance(n: int) -> None:
        if state.get("bar") is not None:
            state["bar"][1](n)

    try:
        return run_scan(request, progress=advance, on_probe=on_probe)
    finally:
        if state.get("bar") is not None:
            state["bar"][0].stop()


def _json_object(text: str | None) -> dict[str, Any]:
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"--arch-kwargs expects a JSON object, e.g. '{{\"width\": 64}}', got {text!r} ({exc.msg})") from exc
    if not isinstance(value, dict):
        raise UsageError(f"--arch-kwargs expects a JSON object, e.g. '{{\"width\": 64}}', got {text!r}")
    return value


def _shape(text: str) -> tuple[int, ...]:
    from ..probe import parse_shape

    return parse_shape(text)


def _given(ctx: typer.Context, name: str) -> bool:
    """True when the user set the option (not just its default)."""
    from click.core import ParameterSource

    return ctx.get_parameter_source(name) not in (None, ParameterSource.DEFAULT)
