"""Figure helpers the experiment modules share, drawn with bnlab.telemetry.plots from the runs read back.

Each experiment's `figures(parts)` returns [(name, caption, Figure)]; bnlab.experiments.reproduce saves them
beside reproduce.md. Lines are means over seeds (geometric for gradients), as in `bnlab report`.
"""

from __future__ import annotations

import math

from bnlab.analysis.aggregate import geometric_mean_profile
from bnlab.analysis.readback import RunData
from bnlab.experiments.measures import across, mean, select, values_of
from bnlab.telemetry import plots

# Dashed means step 0 in every figure (bnlab.telemetry.plots), so the arms differ by colour and, in profiles at
# step 0, by marker: no BatchNorm x, any BatchNorm o.
NORM_MARKER = {"none": "x"}


def xy_panel(ax, lines: list[tuple[str, list[float], list[float | None], str, str]], xlabel: str, ylabel: str,
             logx: bool = False, logy: bool = False) -> None:
    """Lines of (label, x, y, color, linestyle) on one axis; "--" marks step 0 (plots.line_style)."""
    for label, x, y, color, style in lines:
        y = plots.positive(y) if logy else [math.nan if v is None else v for v in y]
        ax.plot(x, y, color=color, marker="o", markersize=4, label=label, **plots.line_style(style == "--"))
    if logx:
        ax.set_xscale("log")
    elif lines:
        ax.set_xticks(sorted({x for line in lines for x in line[1]}))
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=7, loc="best")


def mean_of(runs: list[RunData], measure, geometric: bool = False) -> float | None:
    """The mean of `measure` across `runs` (geometric for ratios), None when no run has it."""
    return mean(across(runs, measure, geometric))


def points(series: list[tuple[int, float]]) -> tuple[list[int], list[float]]:
    """[(step, value)] -> (steps, values)."""
    return [step for step, _ in series], [value for _, value in series]


def init_profiles(runs: list[RunData], key: str, family: str) -> list[plots.ProfileLine]:
    """One step-0 profile of `family` per (value of `key`, norm), geometric mean over seeds."""
    lines = []
    for value in values_of(runs, key):
        for norm in values_of(runs, "norm.name"):
            group = select(runs, **{key.replace(".", "__"): value, "norm__name": norm})
            lines.append(plots.ProfileLine(geometric_mean_profile(group, family, 0), f"{value}, norm={norm}",
                                           f"C{len(lines)}", initial=True, marker=NORM_MARKER.get(norm, "o")))
    return lines


def start_and_end_profiles(arms: list[tuple[str, list[RunData]]], family: str = "grad_norm/output"):
    """For each (label, runs): the step-0 profile (dashed, thin) and the last step's (solid), geometric mean."""
    lines = []
    for index, (label, runs) in enumerate(arms):
        color = f"C{index % 10}"
        lines += [plots.ProfileLine(geometric_mean_profile(runs, family, 0), None, color, initial=True),
                  plots.ProfileLine(geometric_mean_profile(runs, family), label, color)]
    return lines
