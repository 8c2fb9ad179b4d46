"""Every default and every choice of a scan, written once, and the one check of a scan's settings.

The CLI's option defaults, the config file's allowed values, :class:`relu_doctor.workflow.scan.ScanRequest`,
:class:`relu_doctor.report.Thresholds` and the observer all read their defaults and choices from here, so a
default changes in one line. Plain values only: importing this module imports nothing heavy.
"""

from __future__ import annotations

from .errors import ProbeError, UsageError

DEFAULT_SAMPLES = 512
"""Synthetic probe size: enough that a unit never firing supports "fires on fewer than 1%" (299 needed)."""
DEFAULT_BATCH_SIZE = 64
"""Samples per forward pass."""
DEFAULT_SEED = 0
"""Seed of the synthetic probe."""
DEFAULT_DYING_RATE = 0.01
"""A live unit firing on fewer than this share of its positions is dying."""
DEFAULT_TAU = 0.025
"""ReDo dormancy threshold."""
DEFAULT_SIMULATE_SAMPLES = 256
"""The most samples a fix simulation re-runs (the first ones the scan saw): a unit a fix leaves unfired on all of
them fires on fewer than 1.2% of inputs (95% bound), and the cost stays bounded whatever the probe size."""
DEFAULT_SIMULATE_BUDGET = 0.02
"""The fix simulations re-run at most this share of the samples the scan observed, every pass counted, but always
MIN_SIMULATED_PASSES passes of MIN_SIMULATED_SAMPLES samples: the default scan then costs about 1.02-1.05x its
observation pass, or that minimum on a small probe. Fixes are measured in order of value while it lasts; the report
names the ones left out."""
MIN_SIMULATED_PASSES = 3
"""Passes over the sub-probe every budget allows: the unmodified model's and the two fixes of most value."""
MIN_SIMULATED_SAMPLES = 32
"""The fewest samples a budgeted simulation re-runs (fewer when the probe has fewer): below this a drift or an
argmax share says little, so fewer fixes are measured rather than all of them on too few samples."""

DEVICES = ("auto", "cpu", "cuda", "mps")
"""Where the model runs: ``auto`` picks cuda, then mps, then cpu."""
DEFAULT_DEVICE = "cpu"
DTYPES = ("float32", "bfloat16", "float16")
"""Model and probe dtype; counters accumulate in float32 or wider regardless."""
DEFAULT_DTYPE = "float32"
REDUCERS = ("auto", "torch", "fused")
"""How each site's activation is reduced to counters: fused (numba, :mod:`relu_doctor.engine.reduce.fused`) wherever the
layout allows, torch never, auto when it pays off (:func:`relu_doctor.engine.reduce.fused.worth_loading`)."""
DEFAULT_REDUCER = "auto"


MAX_SAMPLES = 100_000_000
"""The most probe samples a scan takes: 10**8 tiny samples already take hours; more could never finish."""
MAX_SEED = 2**32 - 1
"""Seeds are 0 .. 2**32 - 1 (a larger one overflowed the generator's 64-bit seed)."""


def check_scan_settings(
    *,
    device: str = DEFAULT_DEVICE,
    dtype: str = DEFAULT_DTYPE,
    reducer: str = DEFAULT_REDUCER,
    batch_size: int = DEFAULT_BATCH_SIZE,
    samples: int = DEFAULT_SAMPLES,
    simulate_samples: int = DEFAULT_SIMULATE_SAMPLES,
    simulate_budget: float = DEFAULT_SIMULATE_BUDGET,
    dying_rate: float = DEFAULT_DYING_RATE,
    tau: float = DEFAULT_TAU,
    max_dead_fraction: float | None = None,
    max_layer_dead_fraction: float | None = None,
) -> None:
    """Raise :class:`~relu_doctor.errors.UsageError` naming the first bad setting and its allowed values."""
    for option, value, allowed in (("--device", device, DEVICES), ("--dtype", dtype, DTYPES)):
        if value not in allowed:
            raise UsageError(f"{option} must be one of {', '.join(allowed)}, got {value!r}")
    check_reducer_name(reducer)
    if batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {batch_size}")
    if not 1 <= samples <= MAX_SAMPLES:
        raise UsageError(f"--samples must be between 1 and {MAX_SAMPLES:,}, got {samples}")
    if simulate_samples < 1:
        raise UsageError(f"--simulate-samples must be at least 1, got {simulate_samples}")
    check_simulate_budget(simulate_budget)
    if not 0 <= dying_rate <= 1:
        raise UsageError(f"--dying-rate must be between 0 and 1, got {dying_rate}")
    if not 0 <= tau < float("inf"):  # also refuses NaN
        raise UsageError(f"--tau must be a finite number >= 0, got {tau}")
    for name, fraction in (
        ("--max-dead-fraction", max_dead_fraction),
        ("--max-layer-dead-fraction", max_layer_dead_fraction),
    ):
        if fraction is not None and not 0 <= fraction <= 1:
            raise UsageError(f"{name} must be between 0 and 1, got {fraction}")


def check_simulate_budget(budget: float) -> None:
    """Raise :class:`~relu_doctor.errors.UsageError` unless ``budget`` is a finite number > 0."""
    if not 0 < budget < float("inf"):  # also refuses NaN
        raise UsageError(f"--simulate-budget must be a finite number > 0, got {budget}")


def check_reducer_name(reducer: str) -> None:
    """A usage error for a reducer name that is not one of :data:`REDUCERS`."""
    if reducer not in REDUCERS:
        raise UsageError(f"--reducer must be one of {', '.join(REDUCERS)}, got {reducer!r}")


DEFAULT_MAX_LENGTH = 512
"""Tokens kept per text of a text probe unless --max-length says otherwise."""


def parse_shape(text: str) -> tuple[int, ...]:
    """``3x32x32`` -> (3, 32, 32); a ProbeError naming --input-shape otherwise."""
    try:
        shape = tuple(int(part) for part in text.lower().replace("×", "x").split("x"))
    except ValueError:
        shape = ()
    if not shape or any(s <= 0 for s in shape):
        raise ProbeError(f"--input-shape expects positive sizes joined by x, e.g. 3x32x32, got {text!r}")
    return shape
