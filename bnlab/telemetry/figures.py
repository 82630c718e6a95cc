"""The vanishing-gradient figures of one gradient profile across depth.

A profile is `grad_norm/output` of the hidden layers, input side first. Two numbers
sum it up:

- `ratio_first_last`: first hidden layer / last hidden layer. Far below 1 means the
  gradient vanishes on its way to the input; far above 1 means it explodes.
- `growth_factor`: exp(-slope) of the least-squares line through log(gradient) against
  layer index, i.e. the factor the back-propagated gradient is multiplied by per layer
  toward the input (< 1 vanishing, > 1 exploding; Yang et al. 2019 predict about
  sqrt(pi / (pi - 1)) = 1.21 for BatchNorm with ReLU).

`derived_scalars` turns a logged step's values into the scalars TensorBoard charts best: the two
figures at that step (`PROFILE_TAGS`: one number per run, so a sweep draws one line per run) and the
log10 of each per-layer quantity that spans decades (`log10/<family>/layerNN`, so 20 layers over 17
orders of magnitude read as 20 lines rather than one flat line at 0).
"""

from __future__ import annotations

import functools
import math
import re

HIDDEN_MARKER = re.compile(r"^preact/mean/(layer\d+)$")
# The fixed unit whose input distribution the probes also record on its own, as Ioffe & Szegedy (2015)
# plot one sigmoid's input in Figure 1(b, c): unit (channel, for convolutions) 0 of each layer, over the
# batch (and a channel's spatial positions), tags preact/unit0/{p15,p50,p85}/layerNN.
UNIT = 0
PROFILE_TAGS = ("profile/log10_grad_ratio_first_last", "profile/growth_factor")
PROFILE_FAMILY = "grad_norm/output"  # the family a profile is made of
LOG10_FAMILIES = (PROFILE_FAMILY, "grad_norm/weight", "update_ratio")
_LOG10_TAG = re.compile(rf"^(?:{'|'.join(map(re.escape, LOG10_FAMILIES))})/layer\d+$")


def hidden_layers(tags) -> list[str]:
    """Names of the hidden layers (those with a nonlinearity), input side first."""
    return sorted(match[1] for tag in tags if (match := HIDDEN_MARKER.match(tag)))


def profile(metrics: dict[str, float], family: str = PROFILE_FAMILY) -> list[float]:
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


def derived_scalars(values: dict[str, float]) -> dict[str, float]:
    """The profile figures of this step and log10 of the decade-spanning per-layer values (see the module's
    docstring). A value that has no logarithm (0, NaN) gets no log10 point rather than -inf."""
    profile_tags, log10_tags = _derived_from(tuple(values))
    gradients = [values[tag] for tag in profile_tags]
    ratio, growth = ratio_first_last(gradients), growth_factor(gradients)
    derived = {}
    if ratio > 0 and math.isfinite(ratio):
        derived[PROFILE_TAGS[0]] = math.log10(ratio)
    if math.isfinite(growth):
        derived[PROFILE_TAGS[1]] = growth
    for tag, log10_tag in log10_tags:
        if (value := values[tag]) > 0 and math.isfinite(value):
            derived[log10_tag] = math.log10(value)
    return derived


@functools.lru_cache(maxsize=16)
def _derived_from(tags: tuple[str, ...]) -> tuple[list[str], list[tuple[str, str]]]:
    """Which of a step's tags `derived_scalars` reads (the same few tag sets step after step): the profile's, in
    its order, and each decade-spanning tag with the tag of its log10."""
    present = set(tags)
    profile_tags = [tag for layer in hidden_layers(tags) if (tag := f"{PROFILE_FAMILY}/{layer}") in present]
    return profile_tags, [(tag, f"log10/{tag}") for tag in tags if _LOG10_TAG.match(tag)]
