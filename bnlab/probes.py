"""Probes: per-layer gradient and activation statistics, observed through hooks.

The training loop only says when to measure (`start` before the forward pass,
`finish` after the optimizer step); it does not know which statistics exist.
Hooks only keep references; `capture` takes the step's tensors (the weights before
the step are the one copy) and `Capture.measure` computes every
statistic on the device, batched across layers of the same shape (one stacked op per
statistic instead of one per layer: on a CPU the per-op overhead, not the arithmetic,
is the cost), into one float64 vector that the caller brings to the host in one
transfer. Between measurements no hook is attached, so an unlogged step costs nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from bnlab.figures import UNIT
from bnlab.rowstats import histograms, percentiles, row_norms, sort_rows, stack_by_shape

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
    `histogram_rows[i]` the histogram of `histogram_tags[i]` (the columns of `bnlab.rowstats.histograms`)."""

    tags: list[str] = field(default_factory=list)
    values: torch.Tensor | None = None
    histogram_tags: list[str] = field(default_factory=list)
    histogram_rows: torch.Tensor | None = None

    @property
    def scalars(self) -> dict[str, torch.Tensor]:
        """{tag: 0-d tensor}: convenient for tests; the writer uses tags and values directly."""
        return dict(zip(self.tags, self.values, strict=True)) if self.tags else {}


def _std(rows: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """Population std of each row, two-pass (torch's own std reduction is several times slower on CPU)."""
    return (rows - mean[:, None]).square_().mean(dim=1).sqrt_()


class Probes:
    """Hooks on a model's weight layers and activations (see `bnlab.models.DeepNet`)."""

    def __init__(self, model: nn.Module):
        self.layers: dict[str, nn.Module] = model.weight_layers
        self.activations: dict[str, nn.Module] = model.activations
        self.activation_name: str = model.activation_name
        self._handles: list = []
        self._weights_before: list[torch.Tensor] = []
        self._output_grads: dict[str, torch.Tensor] = {}
        self._pre_post: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._histograms = False

    def start(self, histograms: bool = False) -> None:
        """Attach hooks for the coming forward/backward pass and remember the weights before the step."""
        self._histograms = histograms
        self._output_grads = {}
        self._pre_post = {}
        self._weights_before = [layer.weight.detach().clone() for layer in self.layers.values()]
        for name, layer in self.layers.items():
            self._handles.append(layer.register_forward_hook(self._output_hook(name)))
        for name, act in self.activations.items():
            self._handles.append(act.register_forward_hook(self._activation_hook(name)))

    def capture(self) -> Capture:
        """Detach the hooks and take this step's tensors (call after optimizer.step()); cheap.

        Only references: measure the capture before the next optimizer step, which updates the
        weights in place (`finish` measures at once)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        grads = {name: layer.weight.grad.detach() for name, layer in self.layers.items()
                 if layer.weight.grad is not None}
        capture = Capture(self.activation_name, list(self.layers), grads,
                          [layer.weight.detach() for layer in self.layers.values()], self._weights_before,
                          self._output_grads, self._pre_post, self._histograms)
        self._weights_before, self._output_grads, self._pre_post = [], {}, {}
        return capture

    def finish(self) -> Measurement:
        """Detach the hooks and compute this step's statistics (call after optimizer.step())."""
        return self.capture().measure()

    def _output_hook(self, name: str):
        def hook(module: nn.Module, inputs, z: torch.Tensor) -> None:
            # z is the layer's output before norm and activation; dL/dz is the back-propagated signal.
            if z.requires_grad:
                grads = self._output_grads
                z.register_hook(lambda grad: grads.__setitem__(name, grad.detach()))

        return hook

    def _activation_hook(self, name: str):
        def hook(module: nn.Module, inputs, post: torch.Tensor) -> None:
            # the input to the nonlinearity (after BatchNorm when it comes first), and its output
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

    @torch.no_grad()
    def measure(self) -> Measurement:
        """Every statistic, computed on the tensors' device, batched across layers of one shape."""
        tags: list[str] = []
        values: list[torch.Tensor] = []

        def add(family: str, names: list[str], tensor: torch.Tensor) -> None:
            tags.extend(f"{family}/{name}" for name in names)
            values.append(tensor.double().reshape(-1))

        if self.weight_grads:
            add("grad_norm/weight", list(self.weight_grads), row_norms(list(self.weight_grads.values())))
        weight_norms = row_norms(self.weights_after)
        add("weight_norm", self.names, weight_norms)
        steps = torch._foreach_sub(self.weights_after, self.weights_before)
        add("update_ratio", self.names, row_norms(steps) / weight_norms)
        if self.output_grads:
            add("grad_norm/output", list(self.output_grads), row_norms(list(self.output_grads.values())))
        sorted_preacts = self._add_activation_stats(add)
        histogram_tags, histogram_rows = [], None
        if self.histograms:  # each tensor sorted once: the preactivations' sorts are the percentiles' own
            groups = [ordered for _, ordered in sorted_preacts]
            histogram_tags = [f"preact/{name}" for group, _ in sorted_preacts for name in group]
            grad_names, grads = list(self.weight_grads), list(self.weight_grads.values())
            for indices, stacked in stack_by_shape(grads):
                groups.append(sort_rows(stacked))
                histogram_tags += [f"grad/weight/{grad_names[i]}" for i in indices]
            histogram_rows = histograms(groups) if groups else None
        return Measurement(tags, torch.cat(values) if values else None, histogram_tags, histogram_rows)

    def _add_activation_stats(self, add) -> list[tuple[list[str], torch.Tensor]]:
        """Add the activation statistics; return (layer names, their preactivations sorted) per group."""
        names = list(self.pre_post)
        pres = [self.pre_post[name][0] for name in names]
        posts = [self.pre_post[name][1] for name in names]
        qs = list(PERCENTILES.values())
        sorted_groups = []
        for indices, pre in stack_by_shape(pres):  # (L, n): the layers of one shape, one op per statistic
            group = [names[i] for i in indices]
            post = torch.stack([posts[i].reshape(-1) for i in indices])  # (L, n)
            pre_mean, post_mean = pre.mean(dim=1), post.mean(dim=1)
            add("preact/mean", group, pre_mean)
            add("preact/std", group, _std(pre, pre_mean))
            ordered = sort_rows(pre)
            sorted_groups.append((group, ordered))
            quantiles = percentiles(ordered, qs)  # (L, 3)
            for column, key in enumerate(PERCENTILES):
                add(f"preact/{key}", group, quantiles[:, column])
            # one unit over the batch (and positions): rows are (batch, channels, rest) in logical order
            batch, channels = pres[indices[0]].shape[:2]
            unit = pre.view(len(indices), batch, channels, -1)[:, :, UNIT].reshape(len(indices), -1)
            quantiles = percentiles(sort_rows(unit), qs)
            for column, key in enumerate(PERCENTILES):
                add(f"preact/unit{UNIT}/{key}", group, quantiles[:, column])
            add("act/mean", group, post_mean)
            add("act/std", group, _std(post, post_mean))
            saturated = torch.count_nonzero(saturated_mask(self.activation_name, pre, post), dim=1)
            add("act/saturated", group, saturated.double() / post.shape[1])
        return sorted_groups
