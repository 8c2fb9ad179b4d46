"""How sure a probe lets us be: bounds for units that never fired, intervals for units that rarely fire.

Trials are probe *samples* (images, sequences), never positions: positions and tokens within one sample are
correlated, so counting them as trials would overstate what the probe shows (README "Confidence").
Pure and torch-free.
"""

from __future__ import annotations

import math

from ..report import RateInterval, Site

Z_95 = 1.959963984540054
"""Two-sided 95% standard-normal quantile."""


def dead_rate_bound_95(samples: int) -> float:
    """Exact 95% upper bound on the firing probability of a unit that fired in none of ``samples`` trials."""
    return 1.0 - 0.05 ** (1.0 / samples) if samples > 0 else 1.0


def samples_needed(rate: float) -> int:
    """Fewest samples whose :func:`dead_rate_bound_95` is at most ``rate`` (about 3 / rate, the rule of three)."""
    if rate >= 1:
        return 1
    if rate <= 0:
        raise ValueError(f"a rate bound must be > 0, got {rate}")
    return math.ceil(math.log(0.05) / math.log1p(-rate) - 1e-9)


def wilson_interval(rate: float, trials: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval of a proportion ``rate`` observed over ``trials`` trials ((0, 1) without trials)."""
    if trials <= 0:
        return (0.0, 1.0)
    denominator = 1 + z * z / trials
    centre = (rate + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(rate * (1 - rate) / trials + z * z / (4 * trials * trials)) / denominator
    return (max(0.0, centre - half), min(1.0, centre + half))


def dying_intervals(site: Site) -> tuple[RateInterval, ...]:
    """A Wilson interval for each dying unit's rate.

    The rate is the positional one the dying rule uses; the trials are the site's samples. With one position
    per sample this is the textbook Wilson interval; with many positions per sample it is conservative (the
    effective number of trials lies between the samples and the positions).
    """
    rates = site.firing_rates()
    trials = site.counters.samples
    return tuple(
        RateInterval(u, rates[u], site.counters.samples_fired[u], *wilson_interval(rates[u], trials))
        for u in site.dying_units
    )


def probe_size_warning(samples: int, dying_rate: float) -> str | None:
    """A caveat when ``samples`` cannot support "a dead unit fires on fewer than --dying-rate of inputs"."""
    if dying_rate <= 0 or samples <= 0:
        return None
    needed = samples_needed(dying_rate)
    if samples >= needed:
        return None
    return (
        f"a probe of {samples} samples cannot support --dying-rate {dying_rate:g}: a unit that never fired may still "
        f"fire on up to {dead_rate_bound_95(samples):.2%} of inputs (95% bound); use at least {needed:,} samples"
    )
