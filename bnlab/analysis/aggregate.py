"""From runs to configurations: seeds grouped, means and 95% confidence intervals.

A configuration is the set of runs whose overrides agree except for `train.seed`
(`RunInfo.label`). Its statistics use its completed runs; when none completed they
use the runs as far as they got, and the configuration is marked `partial`.

Intervals are Student-t intervals across seeds, mean ± t(0.975, n-1) · s / sqrt(n),
none for a single seed. Gradient ratios and growth factors are multiplicative, so
they are averaged in log space: the geometric mean, with the interval computed on
the logs and mapped back (mean ×/÷ factor).

Example::

    runs, warnings = load_runs(["runs/sweep/2026-11-26_12-00-00_abc123"])  # bnlab.analysis.readback
    for config in configurations(runs):
        accuracy = config.stats["acc/test"]  # a Stat, or None when no run has the value
        print(config.label, config.n, accuracy.mean, accuracy.low, accuracy.high)
        print(mean_series(config.used, "acc/test"))  # [(step, mean over seeds)]
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from bnlab.analysis.readback import FIGURE_NAMES, RunData

FINAL_TAGS = ("loss/train", "loss/test", "acc/test")
SATURATION = "act/saturated"  # mean over hidden layers of the final act/saturated
ARITHMETIC = (*FINAL_TAGS, SATURATION)
GEOMETRIC = FIGURE_NAMES
LEVEL = 0.95


@dataclass
class Stat:
    """A mean across seeds and its 95% interval (low, high); no interval for n < 2."""

    mean: float
    low: float | None
    high: float | None
    n: int
    geometric: bool = False

    @property
    def half_width(self) -> float | None:
        """The ± of an arithmetic mean."""
        return None if self.low is None else (self.high - self.low) / 2

    @property
    def factor(self) -> float | None:
        """The ×/÷ of a geometric mean."""
        return None if self.low is None else math.sqrt(self.high / self.low)


def two_sided_t_cdf(t: float, df: int) -> float:
    """P(|T| < t) for Student's t with integer `df` (Abramowitz & Stegun 26.7.3-4, a finite series)."""
    theta = math.atan(t / math.sqrt(df))
    sin, cos2 = math.sin(theta), math.cos(theta) ** 2
    if df % 2 == 1:
        term = total = math.cos(theta)
        for power in range(1, df - 2, 2):  # cos, (2/3) cos^3, (2·4)/(3·5) cos^5, ... up to cos^(df-2)
            term *= cos2 * (power + 1) / (power + 2)
            total += term
        return 2 / math.pi * (theta + (sin * total if df > 1 else 0.0))
    term = total = 1.0
    for power in range(0, df - 2, 2):  # 1, (1/2) cos^2, (1·3)/(2·4) cos^4, ... up to cos^(df-2)
        term *= cos2 * (power + 1) / (power + 2)
        total += term
    return sin * total


def t_quantile(p: float, df: int) -> float:
    """The p-quantile (p > 0.5) of Student's t with `df` degrees of freedom: t_quantile(0.975, 2) = 4.303."""
    if not 0.5 < p < 1 or df < 1 or int(df) != df:
        raise ValueError(f"t_quantile needs 0.5 < p < 1 and an integer df >= 1, got p={p}, df={df}")
    target, low, high = 2 * p - 1, 0.0, 1.0
    while two_sided_t_cdf(high, int(df)) < target:
        high *= 2
    for _ in range(200):  # bisection: the cdf is increasing in t
        middle = (low + high) / 2
        low, high = (middle, high) if two_sided_t_cdf(middle, int(df)) < target else (low, middle)
        if high - low < 1e-12 * high:
            break
    return (low + high) / 2


def mean_interval(values, geometric: bool = False) -> Stat | None:
    """Mean and 95% t interval of the finite values (positive ones in log space when `geometric`), or None."""
    values = [v for v in values if v is not None and math.isfinite(v) and (v > 0 or not geometric)]
    if not values:
        return None
    points = [math.log(v) for v in values] if geometric else values
    n = len(points)
    mean = sum(points) / n
    low = high = None
    if n > 1:
        sd = math.sqrt(sum((x - mean) ** 2 for x in points) / (n - 1))
        half = t_quantile(0.5 + LEVEL / 2, n - 1) * sd / math.sqrt(n)
        low, high = mean - half, mean + half
    if geometric:
        return Stat(math.exp(mean), _exp(low), _exp(high), n, geometric=True)
    return Stat(mean, low, high, n)


def run_values(run: RunData) -> dict[str, float]:
    """The per-run numbers a configuration's statistics are made of (NaN where the run has none)."""
    values = {tag: _number(run.last(tag)) for tag in FINAL_TAGS}
    values.update({name: _number(value) for name, value in run.figures.items()})
    saturated = [v for v in run.profile("act/saturated") if math.isfinite(v)]
    values[SATURATION] = sum(saturated) / len(saturated) if saturated else math.nan
    return values


@dataclass
class Configuration:
    """The runs of one configuration (seeds), and their statistics."""

    label: str
    runs: list[RunData]
    stats: dict[str, Stat | None] = field(default_factory=dict)

    @property
    def statuses(self) -> Counter:
        return Counter(run.status for run in self.runs)

    @property
    def partial(self) -> bool:
        """No run of this configuration completed: the statistics describe runs cut short."""
        return not self.statuses["completed"]

    @property
    def used(self) -> list[RunData]:
        """The runs the statistics and figures use: the completed ones, or all of them when none completed."""
        return self.runs if self.partial else [run for run in self.runs if run.status == "completed"]

    @property
    def n(self) -> int:
        return len(self.runs)

    @property
    def last_hidden_layer(self) -> str | None:
        layers = max((run.hidden_layers for run in self.runs), key=len, default=[])
        return layers[-1] if layers else None


def configurations(runs: list[RunData]) -> list[Configuration]:
    """Group `runs` by label (seeds together), sorted by label, with each configuration's statistics."""
    groups: dict[str, list[RunData]] = defaultdict(list)
    for run in runs:
        groups[run.label].append(run)
    result = []
    for label in sorted(groups):
        seeds = sorted(groups[label], key=lambda run: (run.seed is None, run.seed or 0))
        config = Configuration(label, seeds)
        per_run = [run_values(run) for run in config.used]
        for name in (*ARITHMETIC, *GEOMETRIC):
            values = [run_value[name] for run_value in per_run]
            config.stats[name] = mean_interval(values, geometric=name in GEOMETRIC)
        result.append(config)
    return result


def mean_series(runs: list[RunData], tag: str) -> list[tuple[int, float]]:
    """`tag` over steps, the arithmetic mean of the runs that have each step."""
    by_step: dict[int, list[float]] = defaultdict(list)
    for run in runs:
        for step, value in run.series(tag):
            if math.isfinite(value):
                by_step[step].append(value)
    return [(step, sum(v) / len(v)) for step, v in sorted(by_step.items())]


def geometric_mean_profile(runs: list[RunData], family: str, step: int | None = None) -> list[float]:
    """`family` across hidden layers at `step` (None: the end), geometric mean over runs, NaN where none."""
    profiles = [run.profile(family, step) for run in runs]
    depth = max((len(p) for p in profiles), default=0)
    result = []
    for layer in range(depth):
        present = [p[layer] for p in profiles if layer < len(p)]
        logs = [math.log(v) for v in present if math.isfinite(v) and v > 0]
        result.append(math.exp(sum(logs) / len(logs)) if logs else math.nan)
    return result


def _number(value) -> float:
    return math.nan if value is None else float(value)


def _exp(value: float | None) -> float | None:
    return None if value is None else math.exp(value)
