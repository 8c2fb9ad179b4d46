"""Options shared by the commands that scan (``scan``, ``trend``), as reusable annotated types, and the one
function that turns resolved settings into a :class:`~relu_doctor.pipeline.ScanRequest`.

Any option whose long name is a key of :data:`relu_doctor.config.KEYS` can also come from a config file or a
RELU_DOCTOR_* variable (see :func:`relu_doctor.cli.app.configure`); the code-running ones never can.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import UsageError
from ..render import FIX_FORMATS, REPORT_FORMATS, TREND_FORMATS
from ..render.registry import Registry
from ..settings import DEFAULT_REDUCER, parse_shape

LOAD, PROBE, GATE, OUTPUT = "Loading", "Probe", "Gate", "Output"

Arch = Annotated[
    str | None,
    typer.Option(
        metavar="SPEC",
        help="Architecture for a state dict: package.module:callable or path/to/file.py:callable.",
        rich_help_panel=LOAD,
    ),
]
ArchKwargs = Annotated[
    str | None,
    typer.Option(
        metavar="JSON", help="JSON object of keyword arguments for the --arch callable.", rich_help_panel=LOAD
    ),
]
Key = Annotated[
    str | None,
    typer.Option(metavar="NAME", help="Nested state dict to use in a training checkpoint.", rich_help_panel=LOAD),
]
Trust = Annotated[
    bool,
    typer.Option(
        "--trust",
        help="Allow formats that run code from the file (pickled module, TorchScript, torch.export). Command line only.",
        rich_help_panel=LOAD,
    ),
]
Imports = Annotated[
    list[str] | None,
    typer.Option(
        "--import",
        metavar="MODULE",
        help="Module to import before unpickling a trusted module (repeatable).",
        rich_help_panel=LOAD,
    ),
]
AllowGlobal = Annotated[
    list[str] | None,
    typer.Option(
        metavar="MODULE.NAME",
        help="Allow one pickled global (module.Name) in a weights-only load (repeatable).",
        rich_help_panel=LOAD,
    ),
]
Device = Annotated[
    str, typer.Option(metavar="[auto|cpu|cuda|mps]", help="auto, cpu, cuda or mps.", rich_help_panel=LOAD)
]
Dtype = Annotated[
    str,
    typer.Option(
        metavar="[float32|bfloat16|float16]",
        help="float32, bfloat16 or float16 (counters stay float32 or wider).",
        rich_help_panel=LOAD,
    ),
]
Reducer = Annotated[
    str,
    typer.Option(
        metavar="[auto|torch|fused]",
        help="auto, torch or fused (one pass, numba: relu-doctor\\[fast]). auto: fused when installed and the probe is big enough to pay for loading it, else torch.",
        rich_help_panel=LOAD,
    ),
]
Probe = Annotated[
    Path | None,
    typer.Option(
        help="Probe tensor: .npy, .npz, .safetensors, .pt, or a directory of .npy shards; or texts (.txt one per "
        "line, .jsonl with a text field) for a Hugging Face model.",
        rich_help_panel=PROBE,
    ),
]
Tokenizer = Annotated[
    Path | None,
    typer.Option(
        metavar="DIR",
        help="Folder with the tokenizer for a text probe (.txt/.jsonl); default: the model folder. Needs relu-doctor\\[hf].",
        rich_help_panel=PROBE,
    ),
]
MaxLength = Annotated[
    int, typer.Option(help="Tokens kept per text of a text probe (longer texts are truncated).", rich_help_panel=PROBE)
]
ProbeMask = Annotated[
    Path | None,
    typer.Option(
        help="Attention mask (.npy of 0/1, same shape) for a token-id --probe: padded positions are not counted.",
        rich_help_panel=PROBE,
    ),
]
ProbeKey = Annotated[
    str | None,
    typer.Option(metavar="NAME", help="Tensor to use from a probe file holding several.", rich_help_panel=PROBE),
]
Samples = Annotated[
    int,
    typer.Option(
        help="Synthetic probe size; with --probe, read at most this many samples (default: all).",
        show_default=False,
        rich_help_panel=PROBE,
    ),
]
Seed = Annotated[int, typer.Option(metavar="SEED", help="Seed of the synthetic probe.", rich_help_panel=PROBE)]
BatchSize = Annotated[int, typer.Option(help="Samples per forward pass.", rich_help_panel=PROBE)]
InputShape = Annotated[
    str | None,
    typer.Option(metavar="SHAPE", help="Shape of one synthetic sample, e.g. 3x32x32.", rich_help_panel=PROBE),
]
UnitDim = Annotated[
    int | None,
    typer.Option(
        metavar="DIM",
        help="Force the unit axis of every site (default: channels for conv-style, last axis for linear-style).",
        rich_help_panel=PROBE,
    ),
]
DyingRate = Annotated[
    float,
    typer.Option(
        metavar="RATE",
        help="A live unit firing on fewer than this share of its positions is dying.",
        rich_help_panel=GATE,
    ),
]
Tau = Annotated[float, typer.Option(metavar="TAU", help="ReDo dormancy threshold.", rich_help_panel=GATE)]
MaxDeadFraction = Annotated[
    float | None,
    typer.Option(metavar="FRACTION", help="Exit 1 when the model's dead fraction exceeds this.", rich_help_panel=GATE),
]
MaxLayerDeadFraction = Annotated[
    float | None,
    typer.Option(
        metavar="FRACTION",
        help="Exit 1 when any site's dead fraction exceeds this (\\[tool.relu-doctor.sites] sets it per glob).",
        rich_help_panel=GATE,
    ),
]
Ignore = Annotated[
    list[str] | None,
    typer.Option(
        metavar="GLOB",
        help="Leave sites matching this glob out of the gate and the totals (repeatable), e.g. 'head.*'.",
        rich_help_panel=GATE,
    ),
]
Strict = Annotated[
    bool,
    typer.Option(
        "--strict",
        help="Warnings (synthetic probe, module never called, ...) also fail the gate (exit 1).",
        rich_help_panel=GATE,
    ),
]
ExitZero = Annotated[
    bool,
    typer.Option(
        "--exit-zero",
        help="Report, but exit 0 even when a threshold is exceeded (errors still exit 2).",
        rich_help_panel=GATE,
    ),
]
Config = Annotated[
    Path | None,
    typer.Option(
        "--config",
        help="TOML config file (default: \\[tool.relu-doctor] of the nearest pyproject.toml).",
        rich_help_panel=GATE,
    ),
]
Isolated = Annotated[
    bool,
    typer.Option(
        "--isolated",
        help="Ignore every config file and RELU_DOCTOR_* variable: only the command line and the defaults count.",
        rich_help_panel=GATE,
    ),
]
Output = Annotated[
    Path | None,
    typer.Option(
        "--output", "-o", help="Write the report to this file (atomically) instead of stdout.", rich_help_panel=OUTPUT
    ),
]
Reports = Annotated[
    list[str] | None,
    typer.Option(
        "--report",
        metavar="FORMAT=FILE",
        help="Also write the report in FORMAT to FILE, atomically (repeatable): one scan, many outputs, e.g. "
        "--report sarif=relu-doctor.sarif --report junit=relu-doctor.xml.",
        rich_help_panel=OUTPUT,
    ),
]
Plot = Annotated[
    Path | None,
    typer.Option(
        "--plot",
        metavar="FILE.png",
        help="Also save a PNG picture here (needs relu-doctor\\[plot]).",
        rich_help_panel=OUTPUT,
    ),
]
Force = Annotated[
    bool,
    typer.Option(
        "--force",
        help="Replace an existing output file (--output, --plot, --save-stats); an input is never replaced.",
        rich_help_panel=OUTPUT,
    ),
]
Quiet = Annotated[
    bool,
    typer.Option(
        "--quiet",
        "-q",
        help="Print nothing; the exit code says it all (--output and --plot still write).",
        rich_help_panel=OUTPUT,
    ),
]
Verbose = Annotated[
    bool, typer.Option("--verbose", "-v", help="Say on stderr where each setting came from.", rich_help_panel=OUTPUT)
]


class ColorMode(str, enum.Enum):
    """--color: auto (a terminal gets colour; NO_COLOR and FORCE_COLOR are honoured), always, never."""

    auto = "auto"
    always = "always"
    never = "never"


Color = Annotated[
    ColorMode,
    typer.Option(
        "--color",
        help="ANSI colour on stdout and stderr (progress included): auto follows the terminal, NO_COLOR and FORCE_COLOR.",
        rich_help_panel=OUTPUT,
    ),
]
NoColor = Annotated[
    bool,
    typer.Option("--no-color", help="Same as --color never.", rich_help_panel=OUTPUT),
]
Debug = Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.", rich_help_panel=OUTPUT)]


_UNUSED = "Accepted so a scan's command line works unchanged (checked, then unused: trend runs no simulations)."
_SIMULATE_HELP = {
    "--no-simulate": "Skip the extra forward passes that measure what each suggested fix would do.",
    "--simulate-samples": "The most of the probe's first samples a fix simulation re-runs (each prediction says how many).",
    "--simulate-budget": (
        "Share of the probe's samples the fix simulations may re-run, every pass counted (at least the unmodified "
        "model and two fixes, on 32 samples); fixes past it are named, not measured. 1000 measures every fix."
    ),
}


def _simulate_option(kind: type, name: str, *, used: bool) -> Any:
    """``scan``'s simulation option ``name``, or ``trend``'s copy of it, accepted and checked but unused."""
    return Annotated[kind, typer.Option(name, help=_SIMULATE_HELP[name] if used else _UNUSED, rich_help_panel=OUTPUT)]


NoSimulate = _simulate_option(bool, "--no-simulate", used=True)
SimulateSamples = _simulate_option(int, "--simulate-samples", used=True)
SimulateBudget = _simulate_option(float, "--simulate-budget", used=True)
AcceptedNoSimulate = _simulate_option(bool, "--no-simulate", used=False)
AcceptedSimulateSamples = _simulate_option(int, "--simulate-samples", used=False)
AcceptedSimulateBudget = _simulate_option(float, "--simulate-budget", used=False)


def format_option(formats: Registry[Any], help: str) -> Any:
    """``--format/-f``: one of the registry's format names (its choices are listed in ``--help``)."""
    names = formats.names()

    def parse(value: str) -> str:
        if value not in formats:
            raise typer.BadParameter(f"must be one of {', '.join(names)}, got {value!r}")
        return value

    return typer.Option(
        "--format",
        "-f",
        help=help,
        parser=parse,
        metavar=f"[{'|'.join(names)}]",
        autocompletion=lambda: list(names),
        rich_help_panel=OUTPUT,
    )


ReportFormat = Annotated[str, format_option(REPORT_FORMATS, "Report format.")]
TrendFormat = Annotated[str, format_option(TREND_FORMATS, "Report format.")]
FixFormat = Annotated[
    str, format_option(FIX_FORMATS, "table for people, json for scripts (stdout holds only the JSON).")
]

Certify = Annotated[
    bool,
    typer.Option(
        "--certify",
        help="Also prove, by bound propagation, which units can never fire (and which always fire) on a whole input domain (--domain).",
        rich_help_panel=GATE,
    ),
]
Domain = Annotated[
    str | None,
    typer.Option(
        "--domain",
        metavar="SPEC",
        help="Input domain for --certify: probe[:MARGIN] (the probe's per-feature min/max box; the default with --probe), box:LO,HI, or file:PATH (.npy of shape (2, *sample), or .npz with lo and hi).",
        rich_help_panel=GATE,
    ),
]
GateOn = Annotated[
    str,
    typer.Option(
        "--gate-on",
        metavar="[probe|certified]",
        help="What the dead-fraction limits count: probe (units dead on the probe) or certified (units proved dead; turns on --certify).",
        rich_help_panel=GATE,
    ),
]


def arch_kwargs_value(value: str | Mapping[str, Any] | None) -> dict[str, Any]:
    """--arch-kwargs as a dict: JSON text from the command line or the environment, a table from a config file."""
    if value is None:
        return {}
    if isinstance(value, Mapping):
        return dict(value)
    shown = value if len(value) <= 80 else value[:77] + "..."
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as exc:
        raise UsageError(
            f"--arch-kwargs expects a JSON object, e.g. '{{\"width\": 64}}', got {shown!r} ({exc.msg})"
        ) from exc
    except RecursionError:
        raise UsageError(f"--arch-kwargs nests too deeply to parse, got {shown!r}; pass plain keyword values") from None
    if not isinstance(parsed, dict):
        raise UsageError(f"--arch-kwargs expects a JSON object, e.g. '{{\"width\": 64}}', got {shown!r}")
    return parsed


def scan_request(
    model: Path,
    values: Mapping[str, Any],
    *,
    key: str | None,
    trust: bool,
    imports: list[str] | None,
    allow_global: list[str] | None,
    limit_samples: bool,
) -> Any:
    """A validated ScanRequest from resolved settings plus the command-line-only options."""
    from ..workflow.scan import ScanRequest
    from .config import thresholds_from

    probe, shape = values.get("probe"), values.get("input_shape")
    return ScanRequest(
        model_path=str(model),
        arch=values.get("arch"),
        arch_kwargs=arch_kwargs_value(values.get("arch_kwargs")),
        key=key,
        trust=trust,
        imports=tuple(imports or ()),
        allow_globals=tuple(allow_global or ()),
        probe_path=None if probe is None else str(probe),
        probe_key=values.get("probe_key"),
        samples=values["samples"],
        limit_samples=probe is not None and limit_samples,
        seed=values["seed"],
        batch_size=values["batch_size"],
        input_shape=None if shape is None else parse_shape(shape),
        unit_dim=values.get("unit_dim"),
        device=values["device"],
        dtype=values["dtype"],
        reducer=values.get("reducer", DEFAULT_REDUCER),
        thresholds=thresholds_from(values),
    )
