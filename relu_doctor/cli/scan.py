"""`relu-doctor scan`: resolve options (command line > RELU_DOCTOR_* > config file > defaults) into a
ScanRequest, run it, render the report, exit with the gate's code. All the work happens in the library.

To add an option: declare it in the signature (in its panel's block), then use it in the body; if it should
also be configurable from a file, add its key to relu_doctor.config.KEYS and read it from ``settings.values``.
"""

from __future__ import annotations

import sys
import time
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import UntrustedCodeError, UsageError
from ..render import BATCH_FORMATS, REPORT_FORMATS
from ..render.registry import Registry
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
    DEFAULT_SIMULATE_BUDGET,
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
    emit_reports,
    error_boundary,
    fail_line,
    note,
    parse_reports,
    plan_outputs,
    settle_imports,
    strict_report,
    style_from_options,
    warn,
    write_output,
)


@app.command(cls=ReluCommand)
def scan(
    ctx: typer.Context,
    models: Annotated[
        list[Path],
        typer.Argument(
            metavar="MODEL",
            help="Checkpoint files or Hugging Face-style directories; several get one report each, with the same "
            "options (exit code: the worst).",
            show_default=False,
        ),
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
    reports: opt.Reports = None,
    plot: opt.Plot = None,
    save_stats: Annotated[
        Path | None,
        typer.Option(
            "--save-stats",
            help="Also write every site's counters to this safetensors file; combine files with `relu-doctor merge`.",
            rich_help_panel=opt.OUTPUT,
        ),
    ] = None,
    no_simulate: opt.NoSimulate = False,
    simulate_samples: opt.SimulateSamples = DEFAULT_SIMULATE_SAMPLES,
    simulate_budget: opt.SimulateBudget = DEFAULT_SIMULATE_BUDGET,
    force: opt.Force = False,
    quiet: opt.Quiet = False,
    verbose: opt.Verbose = False,
    color: opt.Color = opt.ColorMode.auto,
    no_color: opt.NoColor = False,
    debug: opt.Debug = False,
) -> None:
    """Scan each MODEL with a probe and report dead and dying ReLU units per site."""
    style = style_from_options(quiet, verbose, no_color, output, color)
    with error_boundary(debug):
        from ..workflow.scan import check_inputs, scan_inputs, scan_models

        settings = configure(ctx, config, near=models, isolated=isolated)
        for line in settings.warnings:
            warn(style, line)
        for line in describe_settings(settings):
            note(style, line, verbose_only=True)
        several = len(models) > 1
        if several and (plot is not None or save_stats is not None):
            raise UsageError("--plot and --save-stats describe one model; scan one MODEL at a time to use them")
        if plot is not None:
            from ..render.plot import require_matplotlib

            require_matplotlib()
        request = opt.scan_request(
            models[0],
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
            simulate_budget=simulate_budget,
            tokenizer=None if tokenizer is None else str(tokenizer),
            max_length=max_length,
            probe_mask=None if probe_mask is None else str(probe_mask),
            save_stats=None if save_stats is None else str(save_stats),
            certify=certify_domain(certify, domain, gate_on, request.probe_path is not None),
            thresholds=replace(request.thresholds, gate_on=gate_on),
            force=force,
            inputs=tuple(p for p in (settings.config_path,) if p),
        )
        formats: Registry[Any] = BATCH_FORMATS if several else REPORT_FORMATS
        extra = parse_reports(reports, formats)
        # Before torch is imported: a typo costs no second. With several models a missing one is reported in turn.
        check_inputs(request, model=not several)
        inputs: list[str | Path | None] = [*models, *scan_inputs(request)]
        targets = plan_outputs(inputs, force, extra, output=output, plot=plot, save_stats=save_stats)
        requests = [replace(request, model_path=str(model)) for model in models]
        display = StageDisplay(enabled=style.progress, style=style)
        try:
            scan_one = partial(_scan_one, style=style, display=display, strict=bool(settings.values.get("strict")))
            if several:
                record: Any = scan_models(requests, scan_one, on_error=lambda line: fail_line(style, line))
            else:
                record = scan_one(request)
            code = record.exit_code
            if not is_primary():  # under torchrun every rank has the same report; rank 0 writes it
                raise typer.Exit(_exit(code, exit_zero))
            display.stage("writing", None)  # rendering (a plot takes seconds), up to the first byte written
            text = formats.render(record, settings.values["format"], width=style.width, color=style.color)
            if plot is not None:
                from ..render.plot import report_png

                png = report_png(record)
            display.stop()  # before anything is printed: a live line and printed text must not interleave
            emit(formats, record, settings.values["format"], targets["output"], style, text=text)
            emit_reports(formats, record, targets["reports"])
            if plot is not None:
                write_output(png, targets["plot"])
        finally:
            display.stop()
    raise typer.Exit(_exit(code, exit_zero))


def _scan_one(request: Any, *, style: OutputStyle, display: StageDisplay, strict: bool) -> Report:
    """One model's report, with the verbose notes and warnings about it (--strict applied)."""
    started = time.perf_counter()
    report = _run_with_trust_prompt(request, style, display)
    display.stop()
    note(
        style,
        f"{request.model_path}: scanned {len(report.sites)} sites in {time.perf_counter() - started:.2f} s",
        verbose_only=True,
    )
    note(style, simulation_line(report), verbose_only=True)
    for line in unmatched_ignores(report):
        warn(style, line)
    return strict_report(report) if strict else report


def _exit(code: int, exit_zero: bool) -> int:
    """The process exit code: the worst model's; --exit-zero turns a failed gate (1) into 0, never an error (2)."""
    return 0 if exit_zero and code == 1 else code


def can_ask() -> bool:
    """A person is there to answer: stdin and stderr are both terminals (never in CI or a pipe)."""
    return sys.stdin.isatty() and sys.stderr.isatty()


def simulation_line(report: Report) -> str:
    """How much the fix simulations cost: their forward passes and the samples each one re-ran."""
    cost = report.extra.get("simulation")
    if not isinstance(cost, dict):
        return "simulations: none run (no dead units, --no-simulate, or nothing to simulate)"
    line = (
        f"simulations: {cost['forward_passes']} extra forward passes of a batch, on the probe's first "
        f"{cost['samples']} samples ({cost['batches']} batches)"
    )
    if cost.get("budget") is not None:
        line += f", within a budget of {cost['budget']:,} sample-forwards (--simulate-budget)"
    left_out = cost.get("not_simulated") or []
    return line + (f"; not simulated: {', '.join(left_out)}" if left_out else "")


def _run_with_trust_prompt(request: Any, style: OutputStyle, display: StageDisplay) -> Report:
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

    settle_imports()
    return run_scan(request, progress=display.advance, on_stage=display.stage, simulate_progress=display.update)
