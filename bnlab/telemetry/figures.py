"""The vanishing-gradient figures of one gradient profile across depth.

A profile is `grad_norm/output` of the hidden layers, input side first. Two numbers
sum it up:

- `ratio_first_last`: first hidden layer / last hidden layer. Far below 1 means the
  gradient vanishes on its way to the input; far above 1 means it explodes.
- `growth_factor`: exp(-slope) of the least-squares line through log(gradient) against
  layer index, i.e. the factor the back-propagated gradient is multiplied by per layer
  toward the input (< 1 vanishing, > 1 exploding; Yang et al. 2019 predict about
  sqrt(pi / (pi - 1)) = 1.21 for BatchNorm with ReLU).
"""

from __future__ import annotations

import math
import re

HIDDEN_MARKER = re.compile(r"^preact/mean/(layer\d+)$")
# The fixed unit whose input distribution the probes also record on its own, as Ioffe & Szegedy (2015)
# plot one sigmoid's input in Figure 1(b, c): unit (channel, for convolutions) 0 of each layer, over the
# batch (and a channel's spatial positions), tags preact/unit0/{p15,p50,p85}/layerNN.
UNIT = 0


def hidden_layers(tags) -> list[str]:
    """Names of the hidden layers (those with a nonlinearity), input side first."""
    return sorted(match[1] for tag in tags if (match := HIDDEN_MARKER.match(tag)))


def profile(metrics: dict[str, float], family: str = "grad_norm/output") -> list[float]:
    """`family` of each hidden layer, input side first."""
    return [metrics[f"{family}/{layer}"] for layer in hidden_layers(metrics) if f"{family}/{layer}" in metrics]


def ratio_first_last(values: list[float]) -> float:
    if len(values) < 2 or values[-1] == 0:
        return math.nan
    return values[0] / values[-1]


def growth_factor(values: list[float]) -> float:
    points = [(i, math.log(v)) for i, v in enumerate(values) if v > 0 and math.isfinite(v)]
    if len(points) < 2:
        return math.nan
    mean_i = sum(i for i, _ in points) / len(points)
    mean_y = sum(y for _, y in points) / len(points)
    slope = sum((i - mean_i) * (y - mean_y) for i, y in points) / sum((i - mean_i) ** 2 for i, _ in points)
    return math.exp(-slope)


def gradient_figures(initial: dict[str, float], final: dict[str, float]) -> dict[str, float]:
    """The figures at initialization (step 0) and at the end, keyed as in summary.json."""
    first, last = profile(initial), profile(final)
    return {
        "grad_ratio_first_last/init": ratio_first_last(first),
        "grad_ratio_first_last/final": ratio_first_last(last),
        "growth_factor/init": growth_factor(first),
        "growth_factor/final": growth_factor(last),
    }
