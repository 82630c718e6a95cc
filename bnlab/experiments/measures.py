"""Selecting runs by their resolved config, and the per-run measures the experiments share.

Numbers across seeds are `bnlab.analysis.aggregate.Stat`s: mean and 95% interval, geometric for
ratios and growth factors, written with `bnlab.formatting.stat` as `bnlab report` writes them.
"""

from __future__ import annotations

import math
from collections import defaultdict

from bnlab.analysis.aggregate import Stat, mean_interval
from bnlab.analysis.readback import RunData
from bnlab.telemetry import figures

Parts = dict[str, list[RunData]]  # part name -> its runs, read back


def setting(run: RunData, key: str):
    """The run's resolved config value at a dotted key, e.g. setting(run, 'model.depth')."""
    value = run.config
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def select(runs: list[RunData], **criteria) -> list[RunData]:
    """The runs whose config matches every criterion; keys use '__' for '.', e.g. model__depth=20."""
    wanted = {key.replace("__", "."): value for key, value in criteria.items()}
    return [run for run in runs if all(setting(run, key) == value for key, value in wanted.items())]


def values_of(runs: list[RunData], key: str) -> list:
    """The distinct values of `key` among `runs`, sorted."""
    return sorted({setting(run, key) for run in runs if setting(run, key) is not None},
                  key=lambda v: (str(type(v)), v))


def listed(runs: list[RunData], key: str) -> str:
    """The values of `key` that ran, as text: '2, 5, 10' ('-' when none)."""
    return ", ".join(str(value) for value in values_of(runs, key)) or "-"


def seeds(runs: list[RunData]) -> str:
    """How many seeds ran, as text: '3 seeds', '1 seed'."""
    count = len(values_of(runs, "train.seed"))
    return f"{count} seed{'' if count == 1 else 's'}"


def largest(runs: list[RunData], *keys: str) -> dict[str, float | None]:
    """{key: the largest value among `runs`}, for `bnlab.experiments.verdict.Threshold.shortfall`;
    'seeds' counts the distinct seeds."""
    result: dict[str, float | None] = {}
    for key in keys:
        if key == "seeds":
            result[key] = len(values_of(runs, "train.seed")) or None
        else:
            result[key] = max((v for v in values_of(runs, key) if isinstance(v, int | float)), default=None)
    return result


def bn_arm(runs: list[RunData], with_bn: bool) -> list[RunData]:
    """The runs with a norm layer (any: bnlab or torch) or without one."""
    return [run for run in runs if (setting(run, "norm.name") != "none") == with_bn]


def grouped(runs: list[RunData], *keys: str) -> dict[tuple, list[RunData]]:
    """Runs grouped by their values of `keys`, in sorted key order."""
    groups: dict[tuple, list[RunData]] = defaultdict(list)
    for run in runs:
        groups[tuple(setting(run, key) for key in keys)].append(run)
    return {key: groups[key] for key in sorted(groups, key=lambda k: [(str(type(v)), v) for v in k])}


def across(runs: list[RunData], measure, geometric: bool = False) -> Stat | None:
    """`measure(run)` of each run, as a mean and 95% interval across them (None when no run has it).

    A geometric mean over values of which one is exactly 0 is 0: a gradient that underflowed float32 (and was
    flushed to zero) has vanished further than any positive value, so it is not dropped as missing.
    """
    values = [_number(measure(run)) for run in runs]
    if geometric and any(value == 0 for value in values):
        return Stat(0.0, None, None, sum(math.isfinite(value) for value in values), geometric=True)
    return mean_interval(values, geometric=geometric)


def mean(stat: Stat | None) -> float | None:
    return None if stat is None else stat.mean


def final_accuracy(run: RunData) -> float | None:
    return run.last("acc/test")


def init_figure(name: str):
    """A measure: the vanishing-gradient figure `name` (e.g. 'grad_ratio_first_last/init') of a run."""
    return lambda run: run.figures.get(name)


RATIO_INIT, RATIO_END = init_figure("grad_ratio_first_last/init"), init_figure("grad_ratio_first_last/final")
GROWTH_INIT, GROWTH_END = init_figure("growth_factor/init"), init_figure("growth_factor/final")


def saturated_fraction(run: RunData) -> float | None:
    """The final saturated fraction, averaged over the hidden layers."""
    values = [v for v in run.profile("act/saturated") if math.isfinite(v)]
    return sum(values) / len(values) if values else None


def growth(run: RunData, family: str, step: int = 0, skip_first: int = 0) -> float | None:
    """The per-layer growth factor toward the input of `family` across the hidden layers at `step`."""
    values = run.profile(family, step)[skip_first:]
    value = figures.growth_factor(values) if len(values) >= 2 else math.nan
    return value if math.isfinite(value) else None


def _number(value) -> float:
    return math.nan if value is None else float(value)
