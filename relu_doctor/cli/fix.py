"""`relu-doctor fix`: repair dead units in a checkpoint, write the same format atomically, verify on the probe.

Exit codes: 0 repaired and verified (or, for leaky on a state dict, the code change printed); 1 written but the
repair did not verify (output drift above --max-drift, or repaired units still dead on the probe); 2 could not
repair (bad option, OUT exists without --force, unreadable or unwritable checkpoint, probe mismatch).
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from ..errors import UsageError
from ..render import FIX_FORMATS
from ..repair.records import Strategy
from ..settings import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_DEVICE,
    DEFAULT_DTYPE,
    DEFAULT_DYING_RATE,
    DEFAULT_REDUCER,
    DEFAULT_SAMPLES,
    DEFAULT_SEED,
)
from . import options as opt
from .app import (
    ReluCommand,
    app,
    configure,
    describe_settings,
    emit,
    emit_reports,
    error_boundary,
    note,
    parse_reports,
    plan_outputs,
    settle_imports,
    style_from_options,
    warn,
)

REPAIR = "Repair"


@app.command(cls=ReluCommand)
def fix(
    ctx: typer.Context,
    model: Annotated[
        Path, typer.Argument(metavar="MODEL", help="Checkpoint file to repair (never modified).", show_default=False)
    ],
    strategy: Annotated[
        Strategy,
        typer.Option(
            "--strategy",
            "-s",
            help="recycle: re-initialise dead units and zero their outgoing weights (output unchanged); bias-shift: raise their bias until they fire; leaky: swap nn.ReLU for nn.LeakyReLU(0.01).",
            rich_help_panel=REPAIR,
            show_default=False,
        ),
    ],
    output: Annotated[
        Path,
        typer.Option(
            "--output",
            "-o",
            help="Where to write the repaired checkpoint (same format as MODEL).",
            rich_help_panel=REPAIR,
            show_default=False,
        ),
    ],
    seed: Annotated[
        int, typer.Option(help="Seed of the re-drawn weights (and of a synthetic probe).", rich_help_panel=REPAIR)
    ] = DEFAULT_SEED,
    include_dying: Annotated[
        bool,
        typer.Option(
            "--include-dying",
            help="Also recycle dying units, folding their mean activation into the next bias first.",
            rich_help_panel=REPAIR,
        ),
    ] = False,
    force: Annotated[
        bool,
        typer.Option(
            "--force", help="Replace OUT if it exists (MODEL itself is never replaced).", rich_help_panel=REPAIR
        ),
    ] = False,
    max_drift: Annotated[
        float | None,
        typer.Option(
            metavar="DRIFT",
            help="Relative L2 output drift allowed before exit 1 (default: 1e-6 for recycle, 1e-2 with --include-dying, none for bias-shift and leaky).",
            rich_help_panel=REPAIR,
            show_default=False,
        ),
    ] = None,
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
    samples: opt.Samples = DEFAULT_SAMPLES,
    batch_size: opt.BatchSize = DEFAULT_BATCH_SIZE,
    input_shape: opt.InputShape = None,
    unit_dim: opt.UnitDim = None,
    dying_rate: opt.DyingRate = DEFAULT_DYING_RATE,
    config: opt.Config = None,
    isolated: opt.Isolated = False,
    # Output
    fmt: opt.FixFormat = FIX_FORMATS.default.name,
    reports: opt.Reports = None,
    verbose: opt.Verbose = False,
    color: opt.Color = opt.ColorMode.auto,
    no_color: opt.NoColor = False,
    debug: opt.Debug = False,
) -> None:
    """Repair the dead units of MODEL into OUT, keeping its format, and verify OUT on the same probe.

    Loading, probe and --dying-rate settings come from the same layers as scan's: command line > RELU_DOCTOR_* >
    config file > defaults (the repair's own options are command line only).
    """
    style = style_from_options(False, verbose, no_color, None, color)
    with error_boundary(debug):
        from ..workflow.fix import FixRequest, run_fix
        from ..workflow.scan import check_inputs, scan_inputs

        # seed is the re-draw seed here; format has other choices: neither comes from scan's config keys
        settings = configure(ctx, config, near=[model], exclude={"format", "seed"}, isolated=isolated)
        for line in settings.warnings:
            warn(style, line)
        for line in describe_settings(settings):
            note(style, line, verbose_only=True)
        scan = opt.scan_request(
            model,
            {**settings.values, "seed": seed},
            key=key,
            trust=trust,
            imports=imports,
            allow_global=allow_global,
            limit_samples=settings.sources["samples"] != "default",
        )
        scan = replace(scan, inputs=tuple(p for p in (settings.config_path,) if p))
        check_inputs(scan)  # before torch is imported
        request = FixRequest(scan, str(output), strategy, seed, include_dying, force, max_drift)
        targets = plan_outputs(scan_inputs(scan), force, parse_reports(reports, FIX_FORMATS))
        for _, target in targets["reports"]:
            if target.path == Path(os.path.realpath(output)):
                raise UsageError(f"--report {str(target.given)!r} is also --output; give each output its own file")
        outcome = run_fix(request, on_checked=settle_imports)
        emit(FIX_FORMATS, outcome, fmt, None, style)
        emit_reports(FIX_FORMATS, outcome, targets["reports"])
    raise typer.Exit(outcome.exit_code)
