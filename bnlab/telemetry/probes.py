"""Probes: per-layer gradient and activation statistics, observed through hooks.

The training loop only says when to measure (`start` before the forward pass,
`finish` after the optimizer step); it does not know which statistics exist.
Hooks only keep references; `capture` takes the step's tensors (the weights before
the step are the one copy, and with `copy_weights` the weights after) and
`Capture.start_measuring` computes every statistic: on CPU float32 tensors in one call of
bnlab's compiled loops (`native.StepStatistics`), which may run on a thread of its own
beside the next step; elsewhere in PyTorch ops on the device, each for all layers at once
(`bnlab.telemetry.statistics`: on a CPU the per-op overhead, not the arithmetic, is the cost). Either
way one float64 vector comes to the host in one transfer. Between measurements no hook is
attached (between two measured steps in a row they stay, disarmed), so an unlogged step
costs nothing."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from bnlab.telemetry import native
from bnlab.telemetry.figures import UNIT
from bnlab.telemetry.statistics import (
    HISTOGRAM_BINS,
    histogram_rows,
    row_norms,
    row_percentiles,
    summaries,
    update_norms,
)

PERCENTILES = {"p15": 0.15, "p50": 0.50, "p85": 0.85}


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


@dataclass
class Measurement:
    """One step's statistics, all on the device: `values[i]` (float64) is the value of `tags[i]`, and
    `histogram_rows[i]` the histogram of `histogram_tags[i]` (the columns of `statistics.histogram_rows`)."""

    tags: list[str] = field(default_factory=list)
    values: torch.Tensor | None = None
    histogram_tags: list[str] = field(default_factory=list)
    histogram_rows: torch.Tensor | None = None

    @property
    def scalars(self) -> dict[str, torch.Tensor]:
        """{tag: 0-d tensor}: convenient for tests; the writer uses tags and values directly."""
        return dict(zip(self.tags, self.values, strict=True)) if self.tags else {}


class Probes:
    """Hooks on a model's weight layers and activations (see `bnlab.models.nets.DeepNet`)."""

    def __init__(self, model: nn.Module):
        self.layers: dict[str, nn.Module] = model.weight_layers
        self.activations: dict[str, nn.Module] = model.activations
        self.activation_name: str = model.activation_name
        self._handles: list = []
        # Two sets of weight copies, reused every measured step (fresh memory costs as much as the copy):
        # the weights before the step, and (for `capture(copy_weights=True)`) after it. `_copied[i]` holds
        # the weights' addresses and version counters when set i was copied: while they match, set i still
        # equals the weights, and a step measured next reuses it as its weights before instead of copying.
        self._sets: list[list[torch.Tensor]] = [[], []]
        self._copied: list[list[tuple[int, int]] | None] = [None, None]
        self._before = 0  # the set holding this step's weights before
        self._outputs: dict[str, torch.Tensor] = {}  # each layer's output z, which keeps its gradient
        self._pre_post: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._histograms = False
        self._armed = False  # hooks kept between two measured steps record nothing in between (evaluation)

    def start(self, histograms: bool = False) -> None:
        """Attach hooks for the coming forward/backward pass and remember the weights before the step."""
        self._histograms = histograms
        self._outputs = {}
        self._pre_post = {}
        weights = self._weights()
        current = self._current_copy(weights)
        self._before = current if current is not None else self._copy_weights(0, weights)
        if not self._handles:
            for name, layer in self.layers.items():
                self._handles.append(layer.register_forward_hook(self._output_hook(name)))
            for name, act in self.activations.items():
                self._handles.append(act.register_forward_hook(self._activation_hook(name)))
        self._armed = True

    def capture(self, keep_hooks: bool = False, copy_weights: bool = False) -> Capture:
        """Take this step's tensors (call after optimizer.step()); cheap. Detaches the hooks unless
        `keep_hooks` (the next step is measured too: attaching them again would cost more than keeping).

        Only references, to tensors nothing changes later (gradients are set to None, not zeroed, by
        bnlab's loop), except the weights: those after the step are the live weights unless
        `copy_weights` (one copy, which the next measured step reuses as its weights before), and
        the weights before are a kept copy that a later `start` overwrites. So measure the capture
        before the next optimizer step, or with `copy_weights`, before the `capture` after next
        (`finish` measures at once)."""
        self._armed = False
        if not keep_hooks:
            self.detach()
        grads = {name: layer.weight.grad.detach() for name, layer in self.layers.items()
                 if layer.weight.grad is not None}
        after = self._weights()
        if copy_weights:
            after = self._sets[self._copy_weights(1 - self._before, after)]
        output_grads = {name: z.grad for name, z in self._outputs.items() if z.grad is not None}
        capture = Capture(self.activation_name, list(self.layers), grads, after, self._sets[self._before],
                          output_grads, self._pre_post, self._histograms)
        self._outputs, self._pre_post = {}, {}
        return capture

    def finish(self, keep_hooks: bool = False) -> Measurement:
        """Compute this step's statistics (call after optimizer.step()); see `capture`."""
        return self.capture(keep_hooks).measure()

    def start_copies(self) -> bool:
        """Whether `start` will write a set of weight copies (none of them equals the weights now)."""
        return self._current_copy(self._weights()) is None

    def _current_copy(self, weights: list[torch.Tensor]) -> int | None:
        versions = _versions(weights)
        return next((i for i in (0, 1) if self._copied[i] == versions), None)

    def _weights(self) -> list[torch.Tensor]:
        """The weight Parameters themselves (measured under no_grad; a detached view each call cost ~1 us)."""
        return [layer.weight for layer in self.layers.values()]

    @torch.no_grad()  # copies, not part of any graph
    def _copy_weights(self, index: int, weights: list[torch.Tensor]) -> int:
        """Copy the weights into set `index` (one op for all of them); return `index`."""
        if _same_layouts(self._sets[index], weights):
            torch._foreach_copy_(self._sets[index], weights)
        else:
            self._sets[index] = [weight.clone() for weight in weights]
        self._copied[index] = _versions(weights)
        return index

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _output_hook(self, name: str):
        def hook(module: nn.Module, inputs, z: torch.Tensor) -> None:
            # z is the layer's output before norm and activation; dL/dz is the back-propagated signal, kept
            # by autograd itself (retain_grad: no Python call in the backward pass)
            if self._armed and z.requires_grad:
                z.retain_grad()
                self._outputs[name] = z

        return hook

    def _activation_hook(self, name: str):
        def hook(module: nn.Module, inputs, post: torch.Tensor) -> None:
            # the input to the nonlinearity (after BatchNorm when it comes first), and its output
            if self._armed:
                self._pre_post[name] = (inputs[0].detach(), post.detach())

        return hook


@dataclass
class Capture:
    """One step's tensors, taken by `Probes.capture`; `measure` turns them into statistics."""

    activation_name: str
    names: list[str]  # every weight layer, input side first
    weight_grads: dict[str, torch.Tensor]
    weights_after: list[torch.Tensor]
    weights_before: list[torch.Tensor]
    output_grads: dict[str, torch.Tensor]
    pre_post: dict[str, tuple[torch.Tensor, torch.Tensor]]
    histograms: bool

    def measure(self) -> Measurement:
        """Every statistic, computed on the tensors' device."""
        return self.start_measuring(background=False).result()

    @torch.no_grad()
    def start_measuring(self, background: bool = True) -> PendingMeasurement:
        """Start computing every statistic; `result()` of what this returns gives the Measurement.

        CPU float32 tensors: one call of bnlab's compiled loops (`native.StepStatistics`), with
        `background` on a thread of its own while the caller goes on. Otherwise PyTorch ops on the tensors'
        device (`bnlab.telemetry.statistics`; a GPU runs them asynchronously until the result is read). The two paths
        are tested against each other."""
        grad_names, grads = list(self.weight_grads), list(self.weight_grads.values())
        output_names, outputs = list(self.output_grads), list(self.output_grads.values())
        names = list(self.pre_post)
        pres = [pre for pre, _ in self.pre_post.values()]
        posts = [post for _, post in self.pre_post.values()]
        families = [("grad_norm/weight", grad_names)] if grads else []
        families += [("weight_norm", self.names), ("update_ratio", self.names)]
        families += [("grad_norm/output", output_names)] if outputs else []
        if names:
            families += [("preact/mean", names), ("preact/std", names)]
            families += [(f"preact/{key}", names) for key in PERCENTILES]
            families += [(f"preact/unit{UNIT}/{key}", names) for key in PERCENTILES]
            families += [("act/mean", names), ("act/std", names), ("act/saturated", names)]
        tags = list(_tags(tuple((family, tuple(layers)) for family, layers in families)))
        histogram_tags, magnitudes = [], None
        if self.histograms:
            histogram_tags = [f"preact/{name}" for name in names] + [f"grad/weight/{name}" for name in grad_names]
            magnitudes = log_magnitude_histograms(grad_names, grads)
        if native.handles(grads + outputs + pres + posts + self.weights_after + self.weights_before):
            statistics = native.StepStatistics(grads, self.weights_after, self.weights_before, outputs, pres, posts,
                                               UNIT, self.activation_name, list(PERCENTILES.values()),
                                               HISTOGRAM_BINS if histogram_tags else 0, background)
            return PendingMeasurement(tags, histogram_tags, statistics, magnitudes)
        units = [pre[:, UNIT] for pre in pres]  # one unit over the batch (and positions, for a convolution)
        values = self._torch_values(grads, outputs, pres, posts, units)
        rows = histogram_rows(pres + grads) if histogram_tags else None
        return PendingMeasurement(tags, histogram_tags, Measurement(tags, values, histogram_tags, rows), magnitudes)

    def _torch_values(self, grads, outputs, pres, posts, units) -> torch.Tensor:
        """The scalars in the order of `start_measuring`'s tags, by PyTorch ops (`bnlab.telemetry.statistics`)."""
        columns = []
        if grads:
            columns.append(row_norms(grads))
        norms = update_norms(self.weights_after, self.weights_before)  # (L, 2): |W|, |W - W before|
        columns += [norms[:, 0], norms[:, 1] / norms[:, 0]]
        if outputs:
            columns.append(row_norms(outputs))
        if pres:
            pre_summary = summaries(pres)  # (L, 6): sum, squares, min, max, mean, std
            post_summary = summaries(posts)
            qs = list(PERCENTILES.values())
            columns += [pre_summary[:, 4], pre_summary[:, 5], *row_percentiles(pres, qs).T,
                        *row_percentiles(units, qs).T, post_summary[:, 4], post_summary[:, 5],
                        saturated_fractions(self.activation_name, pres, posts)]
        return torch.cat([column.double().reshape(-1) for column in columns])


class PendingMeasurement:
    """A step's statistics on their way (`Capture.start_measuring`); `result()` waits for them."""

    def __init__(self, tags: list[str], histogram_tags: list[str], source, extra_histograms=None):
        self._tags, self._histogram_tags, self._source = tags, histogram_tags, source
        self._extra = extra_histograms  # (tags, rows) computed beside `source`, e.g. log10 |gradient|

    def result(self) -> Measurement:
        if isinstance(self._source, Measurement):
            measurement = self._source
        else:
            statistics = self._source.wait()
            measurement = Measurement(self._tags, statistics.values, self._histogram_tags, statistics.histograms)
        if self._extra is not None and self._extra[0]:
            tags, rows = self._extra
            own = torch.as_tensor(measurement.histogram_rows).to(rows.device, torch.float64)
            measurement = Measurement(measurement.tags, measurement.values, measurement.histogram_tags + tags,
                                      torch.cat([own, rows]))
            self._extra = None
        return measurement


@functools.lru_cache(maxsize=16)
def _tags(families: tuple[tuple[str, tuple[str, ...]], ...]) -> tuple[str, ...]:
    """Every scalar tag of a measurement, family by family (the same few lists step after step)."""
    return tuple(f"{family}/{name}" for family, names in families for name in names)


def _versions(weights: list[torch.Tensor]) -> list[tuple[int, int]]:
    """Each weight's address and version counter (which every in-place change, an optimizer step
    too, increments)."""
    return [(weight.data_ptr(), weight._version) for weight in weights]


def _same_layouts(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(x.shape == y.shape and x.stride() == y.stride() and x.dtype == y.dtype
                                    and x.get_device() == y.get_device() for x, y in zip(a, b, strict=True))


def log_magnitude_histograms(names: list[str], grads: list[torch.Tensor]) -> tuple[list[str], torch.Tensor | None]:
    """Histograms of log10 |g| of each weight gradient (tags grad/log10_abs_weight/<layer>): a vanished
    gradient's 1e-18 and a healthy 1e-2 both get bins, where a histogram of g itself puts every value of
    a vanished layer in the one bin around 0. Exact zeros have no logarithm and are left out (the row's
    count says how many values are binned)."""
    tags, magnitudes = [], []
    for name, grad in zip(names, grads, strict=True):
        # (n,) in float32 at least: it reaches 1e-45 (float16's 6e-8 does not), and the compiled loops bin it
        values = grad.detach().reshape(-1).abs().to(torch.promote_types(grad.dtype, torch.float32))
        if values.is_cpu:  # numpy selects the nonzero values ~5x faster than torch's boolean indexing
            array = values.numpy()
            values = torch.from_numpy(np.log10(array[array > 0]))
        else:
            values = values[values > 0].log10()
        if values.numel():
            tags.append(f"grad/log10_abs_weight/{name}")
            magnitudes.append(values)
    return tags, (histogram_rows(magnitudes) if magnitudes else None)


def saturated_fractions(activation: str, pres: list[torch.Tensor], posts: list[torch.Tensor]) -> torch.Tensor:
    """(len,) float64: the fraction of each layer's units in the flat part of its nonlinearity."""
    if native.handles(pres + posts):
        return torch.from_numpy(native.saturated(activation, pres, posts))
    return torch.stack([torch.count_nonzero(saturated_mask(activation, pre, post)).double() / post.numel()
                        for pre, post in zip(pres, posts, strict=True)])
