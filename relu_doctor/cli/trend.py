"""`relu-doctor trend CKPT...`: scan checkpoints of one run (natural order) and show how each site's dead share
moves, and when each unit died. Thresholds and the exit code apply to the last checkpoint."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ..render import TREND_FORMATS
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
from ..workflow.scan import certify_domain
from . import options as opt
from .app import (
    OutputStyle,
    ReluCommand,
    app,
    configure,
    describe_settings,
    emit,
    emit_reports,
    error_boundary,
    exit_code,
    note,
    parse_reports,
    plan_outputs,
    settle_imports,
    strict_report,
    style_from_options,
    warn,
    write_output,
)

if TYPE_CHECKING:
    from ..report import TrendReport


@app.command(cls=ReluCommand)
def trend(
    ctx: typer.Context,
    checkpoints: Annotated[
        list[Path],
        typer.Argument(
            metavar="CKPT",
            help="Checkpoints of one run (any order: sorted naturally, epoch_10 after epoch_9).",
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
    # Gate (applied to the last checkpoint)
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
    fmt: opt.TrendFormat = TREND_FORMATS.default.name,
    output: opt.Output = None,
    reports: opt.Reports = None,
    plot: opt.Plot = None,
    no_simulate: opt.AcceptedNoSimulate = False,
    simulate_samples: opt.AcceptedSimulateSamples = DEFAULT_SIMULATE_SAMPLES,
    simulate_budget: opt.AcceptedSimulateBudget = DEFAULT_SIMULATE_BUDGET,
    force: opt.Force = False,
    quiet: opt.Quiet = False,
    verbose: opt.Verbose = False,
    color: opt.Color = opt.ColorMode.auto,
    no_color: opt.NoColor = False,
    debug: opt.Debug = False,
) -> None:
    """Follow dead units across the CKPT checkpoints of one training run; gate on the last one."""
    style = style_from_options(quiet, verbose, no_color, output, color)
    with error_boundary(debug):
        from ..workflow.trend import scan_checkpoints

        # a config's format is scan's; trend has its own choices
        settings = configure(ctx, config, near=checkpoints, exclude={"format"}, isolated=isolated)
        for line in settings.warnings:
            warn(style, line)
        for line in describe_settings(settings):
            note(style, line, verbose_only=True)
        if plot is not None:
            from ..render.plot import require_matplotlib

            require_matplotlib()
        request = opt.scan_request(
            Path(),
            settings.values,
            key=key,
            trust=trust,
            imports=imports,
            allow_global=allow_global,
            limit_samples=settings.sources["samples"] != "default",
        )
        request = replace(
            request,
            simulate_samples=simulate_samples,  # validated like scan's, though trend simulates nothing
            simulate_budget=simulate_budget,
            tokenizer=None if tokenizer is None else str(tokenizer),
            max_length=max_length,
            probe_mask=None if probe_mask is None else str(probe_mask),
            certify=certify_domain(certify, domain, gate_on, request.probe_path is not None),
            thresholds=replace(request.thresholds, gate_on=gate_on),
        )
        extra = parse_reports(reports, TREND_FORMATS)
        from ..workflow.scan import check_inputs, check_model_path, scan_inputs

        for checkpoint in checkpoints:  # before torch is imported
            check_model_path(str(checkpoint))
        check_inputs(request, model=False)

        inputs = [*checkpoints, *scan_inputs(replace(request, model_path="")), settings.config_path]
        targets = plan_outputs(inputs, force, extra, output=output, plot=plot)
        settle_imports()
        result = scan_checkpoints(
            [str(c) for c in checkpoints],
            request,
            on_checkpoint=lambda i, path: note(style, f"[{i + 1}/{len(checkpoints)}] {path}", verbose_only=True),
        )
        if settings.values.get("strict"):
            result = replace(result, reports=(*result.reports[:-1], strict_report(result.last)))
        emit_trend(result, fmt, targets["output"], targets["plot"], style)
        emit_reports(TREND_FORMATS, result, targets["reports"])
    raise typer.Exit(exit_code(result.gate, exit_zero=exit_zero))


def emit_trend(result: TrendReport, fmt: str, output: Any, plot: Any, style: OutputStyle) -> None:
    """The trend on stdout (or --output), the last checkpoint's verdict on stderr, and the picture if asked for."""
    emit(TREND_FORMATS, result, fmt, output, style)
    if plot is not None:
        from ..render.plot import trend_png

        write_output(trend_png(result), plot)
