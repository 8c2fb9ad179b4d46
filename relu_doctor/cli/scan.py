"""`relu-doctor scan`: resolve options (command line > RELU_DOCTOR_* > config file > defaults) into a
ScanRequest, run it, render the report, exit with the gate's code. All the work happens in the library.

To add an option: declare it in the signature (in its panel's block), then use it in the body; if it should
also be configurable from a file, add its key to relu_doctor.config.KEYS and read it from ``settings.values``.
"""

from __future__ import annotations

import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import UntrustedCodeError
from ..render import REPORT_FORMATS
from ..report import Report
from ..settings import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_DEVICE,
    DEFAULT_DTYPE,
    DEFAULT_DYING_RATE,
    DEFAULT_MAX_LENGTH,
    DEFAULT_REDUCER,
    DEFAULT_SAMPLES,
    DEFAULT_SEED,
    DEFAULT_SIMULATE_SAMPLES,
    DEFAULT_TAU,
)
from ..workflow.distributed import is_primary
from ..workflow.scan import certify_domain, unmatched_ignores
from . import options as opt
from .app import (
    OutputStyle,
    ReluCommand,
    StageDisplay,
    app,
    configure,
    describe_settings,
    emit,
    error_boundary,
    exit_code,
    note,
    plan_outputs,
    strict_report,
    style_from_options,
    warn,
    write_output,
)


@app.command(cls=ReluCommand)
def scan(
    ctx: typer.Context,
    model: Annotated[
        Path,
        typer.Argument(metavar="MODEL", help="Checkpoint file or Hugging Face-style directory.", show_default=False),
    ],
    # Loading
    arch: opt.Arch = None,
    arch_kwargs: opt.ArchKwargs = None,
    key: opt.Key = None,
    trust: opt.Trust = False,
    imports: opt.Imports = None,
    allow_global: opt.AllowGlobal = None,
    device: opt.Device = DEFAULT_DEVICE,
    dtype: opt.Dtype = DEFAULT_DTYPE,
    reducer: opt.Reducer = DEFAULT_REDUCER,
    # Probe
    probe: opt.Probe = None,
    probe_key: opt.ProbeKey = None,
    tokenizer: opt.Tokenizer = None,
    max_length: opt.MaxLength = DEFAULT_MAX_LENGTH,
    probe_mask: opt.ProbeMask = None,
    samples: opt.Samples = DEFAULT_SAMPLES,
    seed: opt.Seed = DEFAULT_SEED,
    batch_size: opt.BatchSize = DEFAULT_BATCH_SIZE,
    input_shape: opt.InputShape = None,
    unit_dim: opt.UnitDim = None,
    # Gate
    dying_rate: opt.DyingRate = DEFAULT_DYING_RATE,
    tau: opt.Tau = DEFAULT_TAU,
    max_dead_fraction: opt.MaxDeadFraction = None,
    max_layer_dead_fraction: opt.MaxLayerDeadFraction = None,
    ignore: opt.Ignore = None,
    strict: opt.Strict = False,
    exit_zero: opt.ExitZero = False,
    config: opt.Config = None,
    isolated: opt.Isolated = False,
    certify: opt.Certify = False,
    domain: opt.Domain = None,
    gate_on: opt.GateOn = "probe",
    # Output
    fmt: opt.ReportFormat = REPORT_FORMATS.default.name,
    output: opt.Output = None,
    plot: opt.Plot = None,
    save_stats: Annotated[
        Path | None,
        typer.Option(
            "--save-stats",
            help="Also write every site's counters to this safetensors file; combine files with `relu-doctor merge`.",
            rich_help_panel=opt.OUTPUT,
        ),
    ] = None,
    no_simulate: Annotated[
        bool,
        typer.Option(
            "--no-simulate",
            help="Skip the extra forward passes that measure what each suggested fix would do.",
            rich_help_panel=opt.OUTPUT,
        ),
    ] = False,
    simulate_samples: Annotated[
        int,
        typer.Option(
            "--simulate-samples",
            help="How many of the probe's first samples the fix simulations re-run (each prediction says how many).",
            rich_help_panel=opt.OUTPUT,
        ),
    ] = DEFAULT_SIMULATE_SAMPLES,
    force: opt.Force = False,
    quiet: opt.Quiet = False,
    verbose: opt.Verbose = False,
    color: opt.Color = opt.ColorMode.auto,
    no_color: opt.NoColor = False,
    debug: opt.Debug = False,
) -> None:
    """Scan MODEL with a probe and report dead and dying ReLU units per site."""
    style = style_from_options(quiet, verbose, no_color, output, color)
    with error_boundary(debug):
        settings = configure(ctx, config, near=[model], isolated=isolated)
        for line in settings.warnings:
            warn(style, line)
        for line in describe_settings(settings):
            note(style, line, verbose_only=True)
        if plot is not None:
            from ..render.plot import require_matplotlib

            require_matplotlib()
        request = opt.scan_request(
            model,
            settings.values,
            key=key,
            trust=trust,
            imports=imports,
            allow_global=allow_global,
            limit_samples=settings.sources["samples"] != "default",
        )
        request = replace(
            request,
            simulate=not no_simulate,
            simulate_samples=simulate_samples,
            tokenizer=None if tokenizer is None else str(tokenizer),
            max_length=max_length,
            probe_mask=None if probe_mask is None else str(probe_mask),
            save_stats=None if save_stats is None else str(save_stats),
            certify=certify_domain(certify, domain, gate_on, request.probe_path is not None),
            thresholds=replace(request.thresholds, gate_on=gate_on),
            force=force,
            inputs=tuple(p for p in (settings.config_path,) if p),
        )
        from ..workflow.scan import check_inputs, scan_inputs

        check_inputs(request)  # before torch is imported: a typo costs no second
        targets = plan_outputs(scan_inputs(request), force, output=output, plot=plot, save_stats=save_stats)
        started = time.perf_counter()
        display = StageDisplay(enabled=style.progress, style=style)
        try:
            report = _run_with_trust_prompt(request, style, display)
            scanned = f"scanned {len(report.sites)} sites in {time.perf_counter() - started:.2f} s"
            display.stage("writing", None)  # rendering (a plot takes seconds), up to the first byte written
            if settings.values.get("strict"):
                report = strict_report(report)
            if not is_primary():  # under torchrun every rank has the same report; rank 0 writes it
                raise typer.Exit(exit_code(report.gate, exit_zero=exit_zero))
            name = settings.values["format"]
            text = REPORT_FORMATS.render(report, name, width=style.width, color=style.color)
            if plot is not None:
                from ..render.plot import report_png

                png = report_png(report)
            display.stop()  # before anything is printed: a live line and printed text must not interleave
            note(style, scanned, verbose_only=True)
            note(style, simulation_line(report), verbose_only=True)
            for line in unmatched_ignores(report):
                warn(style, line)
            emit(REPORT_FORMATS, report, name, targets["output"], style, text=text)
            if plot is not None:
                write_output(png, targets["plot"])
        finally:
            display.stop()
    raise typer.Exit(exit_code(report.gate, exit_zero=exit_zero))


def can_ask() -> bool:
    """A person is there to answer: stdin and stderr are both terminals (never in CI or a pipe)."""
    return sys.stdin.isatty() and sys.stderr.isatty()


def simulation_line(report: Report) -> str:
    """How much the fix simulations cost: their forward passes and the samples each one re-ran."""
    cost = report.extra.get("simulation")
    if not isinstance(cost, dict):
        return "simulations: none run (no dead units, --no-simulate, or nothing to simulate)"
    return (
        f"simulations: {cost['forward_passes']} extra forward passes of a batch, on the probe's first "
        f"{cost['samples']} samples ({cost['batches']} batches)"
    )


def _run_with_trust_prompt(request: Any, style: OutputStyle, display: StageDisplay) -> Report:
    from dataclasses import replace

    try:
        return _run(request, display)
    except UntrustedCodeError as exc:
        display.stop()  # the question needs the terminal
        if style.quiet or not can_ask():
            raise
        typer.echo(f"relu-doctor: {exc}", err=True)
        if not typer.confirm(f"Load this {exc.format_name} file and run the code it carries?", default=False, err=True):
            raise
        return _run(replace(request, trust=True), display)


def _run(request: Any, display: StageDisplay) -> Report:
    from ..workflow.scan import run_scan

    return run_scan(request, progress=display.advance, on_stage=display.stage, simulate_progress=display.update)
