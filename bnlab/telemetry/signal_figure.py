"""The signal-propagation plot (Brock, De & Smith 2021, Figure 1): three statistics against depth.

One figure for both uses: the TensorBoard image `profile/signal_propagation` of one run, and a
report's comparison of several runs read back from their event files (`signal_propagation_figure`
takes each run's tags at one step, as `bnlab.telemetry.signal_propagation` names them). Drawn in the
style of `bnlab.telemetry.plots`: matplotlib's object API only, one colour per run; linear axes, as
the paper's, on which the linear growth of a residual network's variance with depth reads as a line.
"""

from __future__ import annotations

import math

from bnlab.telemetry import plots
from bnlab.telemetry.signal_propagation import MEAN_SQ, RESIDUAL_VAR, VAR, profiles

IMAGE_TAG = "profile/signal_propagation"
PANELS = ((MEAN_SQ, "avg. channel squared mean"), (VAR, "avg. channel variance"),
          (RESIDUAL_VAR, "residual avg. channel variance"))
BLOCK_AXIS = "block (input → output)"


def signal_propagation_figure(runs: list[tuple[str | None, dict[str, float]]], title: str):
    """Each run's (label, {tag: value} at one step) drawn as one line per panel; a Figure.

    One run makes a TensorBoard-sized image with fixed margins; several make a report figure."""
    single = len(runs) == 1
    margins = {"left": 0.07, "right": 0.99, "bottom": 0.15, "top": 0.82, "wspace": 0.3} if single else None
    figure, axes = plots.new_figure(960, 360, 1, 3, margins, sharex=True)
    for index, (label, values) in enumerate(runs):
        curves = profiles(values)
        for ax, (family, _) in zip(axes, PANELS, strict=True):
            blocks, points = curves[family]
            if blocks:
                finite = [v if math.isfinite(v) else math.nan for v in points]  # a diverged run leaves gaps
                ax.plot(blocks, finite, color=f"C{index % 10}", label=label, marker="o", markersize=3)
    for ax, (family, ylabel) in zip(axes, PANELS, strict=True):
        if not ax.lines:
            ax.text(0.5, 0.5, "no residual blocks\n(model.residual=false)" if family == RESIDUAL_VAR
                    else "not measured", transform=ax.transAxes, ha="center", va="center", fontsize=9)
        ax.set_title(ylabel, fontsize=10, y=1.0)
        ax.set_xlabel(BLOCK_AXIS)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(True, which="major", alpha=0.3)
    if any(label for label, _ in runs) and axes[0].lines:
        axes[0].legend(fontsize=8 if single else 7, loc="best")
    figure.suptitle(title, fontsize=11 if single else 9)
    return figure

