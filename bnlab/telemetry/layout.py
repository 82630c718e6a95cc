"""What a measured step records, declared once: its tag families, where each value goes, and how the
PyTorch path computes each statistic.

`SCALARS` lists the scalar families in the order their tags are logged, `HISTOGRAMS` the histograms of a
histogram step. A step's `Layout` places each family the step has layers for. Both measuring paths fill it
by statistic name: bnlab's compiled loops (`native.StepStatistics`) are handed each family's place and
measure what rowstats.cpp names; `TORCH_STATISTICS` computes everything (the reference path), and on the
compiled path whatever the compiled loops do not measure.

Adding a statistic: its family in `SCALARS` (or `HISTOGRAMS`), its computation in `TORCH_STATISTICS`, and
where it needs speed, its name and loop in rowstats.cpp.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from bnlab.telemetry.figures import UNIT
from bnlab.telemetry.statistics import (
    histogram_rows,
    log10_magnitude_rows,
    row_norms,
    row_percentiles,
    summaries,
    update_ratios,
)

PERCENTILES = {"p15": 0.15, "p50": 0.50, "p85": 0.85}


@dataclass(frozen=True)
class Family:
    """A tag family: `{prefix}/{layer}` for each layer of kind `layers` ("grads": layers with a weight
    gradient, "weights": every weight layer, "outputs": layers whose output has a gradient,
    "activations": layers with a nonlinearity), valued `statistic` of that layer (`q`: a percentile's
    fraction)."""

    prefix: str
    layers: str
    statistic: str
    q: float | None = None


# The scalar families of a measured step, in the order their tags are logged.
SCALARS = (
    Family("grad_norm/weight", "grads", "grad_norm"),
    Family("weight_norm", "weights", "weight_norm"),  # ||W|| after the step
    Family("update_ratio", "weights", "update_ratio"),  # ||W after - W before|| / ||W before||
    Family("grad_norm/output", "outputs", "output_grad_norm"),
    Family("preact/mean", "activations", "preact_mean"),
    Family("preact/std", "activations", "preact_std"),
    *(Family(f"preact/{key}", "activations", "preact_percentile", q) for key, q in PERCENTILES.items()),
    *(Family(f"preact/unit{UNIT}/{key}", "activations", "unit_percentile", q) for key, q in PERCENTILES.items()),
    Family("act/mean", "activations", "act_mean"),
    Family("act/std", "activations", "act_std"),
    Family("act/saturated", "activations", "act_saturated"),
)
# The histograms of a histogram step (`log.hist_every`), in the order they are logged.
HISTOGRAMS = (
    Family("preact", "activations", "preact_histogram"),
    Family("grad/weight", "grads", "grad_histogram"),
    Family("grad/log10_abs_weight", "grads", "grad_log10_histogram"),  # 1e-18 and 1e-2 both get bins
)


@dataclass(frozen=True)
class Layout:
    """Where one step's statistics go: `tags[i]` names value i, `histogram_tags[i]` histogram row i.
    `scalars` and `histograms` place each family the step has layers for: (family, its first index,
    its number of layers)."""

    tags: tuple[str, ...]
    histogram_tags: tuple[str, ...]
    scalars: tuple[tuple[Family, int, int], ...]
    histograms: tuple[tuple[Family, int, int], ...]


@functools.lru_cache(maxsize=16)
def step_layout(layers: tuple[tuple[str, tuple[str, ...]], ...], histograms: bool) -> Layout:
    """The layout of a step with these layer names of each kind ((kind, names) pairs; a kind without
    layers leaves its families out), the same few step after step."""
    names = dict(layers)

    def place(families) -> tuple[list[str], list[tuple[Family, int, int]]]:
        tags, places = [], []
        for family in families:
            if found := names.get(family.layers, ()):
                places.append((family, len(tags), len(found)))
                tags += [f"{family.prefix}/{name}" for name in found]
        return tags, places

    tags, scalars = place(SCALARS)
    histogram_tags, histogram_places = place(HISTOGRAMS if histograms else ())
    return Layout(tuple(tags), tuple(histogram_tags), tuple(scalars), tuple(histogram_places))


def saturated_mask(activation: str, pre: torch.Tensor, post: torch.Tensor) -> torch.Tensor:
    """Units in the flat part of the nonlinearity, where the local derivative is about 0.

    sigmoid: y < 0.01 or y > 0.99; tanh: |y| > 0.99; relu: y == 0;
    gelu: pre-activation < -3 (derivative below 0.012); linear: never.
    """
    if activation == "sigmoid":
        return (post < 0.01) | (post > 0.99)
    if activation == "tanh":
        return post.abs() > 0.99
    if activation == "relu":
        return post == 0
    if activation == "gelu":
        return pre < -3.0
    return torch.zeros_like(post, dtype=torch.bool)


class StepTensors:
    """A captured step's tensors (`bnlab.telemetry.probes.Capture`) as `TORCH_STATISTICS` reads them, with
    what several statistics share (summaries, one sort for all percentiles of a tensor) computed once."""

    def __init__(self, activation: str, grads: list[torch.Tensor], after: list[torch.Tensor],
                 before: list[torch.Tensor], outputs: list[torch.Tensor],
                 pre_post: list[tuple[torch.Tensor, torch.Tensor]]):
        self.activation, self.grads, self.after, self.before, self.outputs = activation, grads, after, before, outputs
        self.pres = [pre for pre, _ in pre_post]
        self.posts = [post for _, post in pre_post]
        self._percentiles: dict[str, dict[float, torch.Tensor]] = {}

    def compute(self, family: Family) -> torch.Tensor:
        """`family`'s values: (layers,) float64, or a histogram row per layer."""
        return TORCH_STATISTICS[family.statistic](self, family.q)

    @functools.cached_property
    def units(self) -> list[torch.Tensor]:
        return [pre[:, UNIT] for pre in self.pres]  # one unit over the batch (and positions, for a convolution)

    @functools.cached_property
    def pre_summary(self) -> torch.Tensor:
        return summaries(self.pres)  # (L, 6): sum, squares, min, max, mean, std

    @functools.cached_property
    def post_summary(self) -> torch.Tensor:
        return summaries(self.posts)

    def percentiles(self, statistic: str) -> dict[float, torch.Tensor]:
        """{q: (L,) column} for every q `SCALARS` declares for `statistic`, from one sort of each tensor."""
        if statistic not in self._percentiles:
            qs = [family.q for family in SCALARS if family.statistic == statistic]
            tensors = self.units if statistic == "unit_percentile" else self.pres
            self._percentiles[statistic] = dict(zip(qs, row_percentiles(tensors, qs).T, strict=True))
        return self._percentiles[statistic]


# How the PyTorch path computes each statistic of the layout for all layers at once (`bnlab.telemetry.statistics`).
TORCH_STATISTICS = {
    "grad_norm": lambda step, q: row_norms(step.grads),
    "weight_norm": lambda step, q: row_norms(step.after),
    "update_ratio": lambda step, q: update_ratios(step.after, step.before),
    "output_grad_norm": lambda step, q: row_norms(step.outputs),
    "preact_mean": lambda step, q: step.pre_summary[:, 4],
    "preact_std": lambda step, q: step.pre_summary[:, 5],
    "preact_percentile": lambda step, q: step.percentiles("preact_percentile")[q],
    "unit_percentile": lambda step, q: step.percentiles("unit_percentile")[q],
    "act_mean": lambda step, q: step.post_summary[:, 4],
    "act_std": lambda step, q: step.post_summary[:, 5],
    "act_saturated": lambda step, q: saturated_fractions(step.activation, step.pres, step.posts),
    "preact_histogram": lambda step, q: histogram_rows(step.pres, step.pre_summary),
    "grad_histogram": lambda step, q: histogram_rows(step.grads),
    "grad_log10_histogram": lambda step, q: log10_magnitude_rows(step.grads),
}


def saturated_fractions(activation: str, pres: list[torch.Tensor], posts: list[torch.Tensor]) -> torch.Tensor:
    """(len,) float64: the fraction of each layer's units in the flat part of its nonlinearity."""
    return torch.stack([torch.count_nonzero(saturated_mask(activation, pre, post)).double() / post.numel()
                        for pre, post in zip(pres, posts, strict=True)])
