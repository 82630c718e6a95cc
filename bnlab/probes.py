"""Probes: per-layer gradient and activation statistics, observed through hooks.

The training loop only says when to measure (`start` before the forward pass,
`finish` after the optimizer step); it does not know which statistics exist.
Hooks only keep references; `capture` takes the step's tensors (the weights before
the step are the one copy) and `Capture.measure` computes every statistic on the
device, each for all layers at once (`bnlab.rowstats`: on a CPU the per-op overhead,
not the arithmetic, is the cost), into one float64 vector that the caller brings to
the host in one transfer. Between measurements no hook is attached (between two
measured steps in a row they stay, disarmed), so an unlogged step costs nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from bnlab import native
from bnlab.figures import UNIT
from bnlab.rowstats import histogram_rows, row_norms, row_percentiles, summaries, update_norms

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
    `histogram_rows[i]` the histogram of `histogram_tags[i]` (the columns of `bnlab.rowstats.histogram_rows`)."""

    tags: list[str] = field(default_factory=list)
    values: torch.Tensor | None = None
    histogram_tags: list[str] = field(default_factory=list)
    histogram_rows: torch.Tensor | None = None

    @property
    def scalars(self) -> dict[str, torch.Tensor]:
        """{tag: 0-d tensor}: convenient for tests; the writer uses tags and values directly."""
        return dict(zip(self.tags, self.values, strict=True)) if self.tags else {}


class Probes:
    """Hooks on a model's weight layers and activations (see `bnlab.models.DeepNet`)."""

    def __init__(self, model: nn.Module):
        self.layers: dict[str, nn.Module] = model.weight_layers
        self.activations: dict[str, nn.Module] = model.activations
        self.activation_name: str = model.activation_name
        self._handles: list = []
        self._weights_before: list[torch.Tensor] = []
        self._before_buffers: list[torch.Tensor] = []  # reused each measured step
        self._output_grads: dict[str, torch.Tensor] = {}
        self._pre_post: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._histograms = False
        self._armed = False  # hooks kept between two measured steps record nothing in between (evaluation)

    def start(self, histograms: bool = False) -> None:
        """Attach hooks for the coming forward/backward pass and remember the weights before the step."""
        self._histograms = histograms
        self._output_grads = {}
        self._pre_post = {}
        weights = [layer.weight.detach() for layer in self.layers.values()]
        if _same_layouts(self._before_buffers, weights):  # fresh memory costs as much as the copy itself
            for buffer, weight in zip(self._before_buffers, weights, strict=True):
                buffer.copy_(weight)
        else:
            self._before_buffers = [weight.clone() for weight in weights]
        self._weights_before = self._before_buffers
        if not self._handles:
            for name, layer in self.layers.items():
                self._handles.append(layer.register_forward_hook(self._output_hook(name)))
            for name, act in self.activations.items():
                self._handles.append(act.register_forward_hook(self._activation_hook(name)))
        self._armed = True

    def capture(self, keep_hooks: bool = False) -> Capture:
        """Take this step's tensors (call after optimizer.step()); cheap. Detaches the hooks unless
        `keep_hooks` (the next step is measured too: attaching them again would cost more than keeping).

        Only references: measure the capture before the next `start` or optimizer step, which
        overwrite the weights before and after in place (`finish` measures at once)."""
        self._armed = False
        if not keep_hooks:
            self.detach()
        grads = {name: layer.weight.grad.detach() for name, layer in self.layers.items()
                 if layer.weight.grad is not None}
        capture = Capture(self.activation_name, list(self.layers), grads,
                          [layer.weight.detach() for layer in self.layers.values()], self._weights_before,
                          self._output_grads, self._pre_post, self._histograms)
        self._weights_before, self._output_grads, self._pre_post = [], {}, {}
        return capture

    def finish(self, keep_hooks: bool = False) -> Measurement:
        """Compute this step's statistics (call after optimizer.step()); see `capture`."""
        return self.capture(keep_hooks).measure()

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _output_hook(self, name: str):
        def hook(module: nn.Module, inputs, z: torch.Tensor) -> None:
            # z is the layer's output before norm and activation; dL/dz is the back-propagated signal.
            if self._armed and z.requires_grad:
                grads = self._output_grads
                z.register_hook(lambda grad: grads.__setitem__(name, grad.detach()))

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

    @torch.no_grad()
    def measure(self) -> Measurement:
        """Every statistic, computed on the tensors' device (see `bnlab.rowstats`)."""
        tags: list[str] = []
        values: list[torch.Tensor] = []

        def add(family: str, names: list[str], tensor: torch.Tensor) -> None:
            tags.extend(f"{family}/{name}" for name in names)
            values.append(tensor.double().reshape(-1))

        grad_names, grads = list(self.weight_grads), list(self.weight_grads.values())
        grad_summary = summaries(grads) if grads else None  # (L, 6): sum, squares, min, max, mean, std
        if grads:
            add("grad_norm/weight", grad_names, grad_summary[:, 1].sqrt())
        norms = update_norms(self.weights_after, self.weights_before)  # (L, 2): |W|, |W - W before|
        add("weight_norm", self.names, norms[:, 0])
        add("update_ratio", self.names, norms[:, 1] / norms[:, 0])
        if self.output_grads:
            add("grad_norm/output", list(self.output_grads), row_norms(list(self.output_grads.values())))
        names = list(self.pre_post)
        pres = [self.pre_post[name][0] for name in names]
        posts = [self.pre_post[name][1] for name in names]
        pre_summary = self._add_activation_stats(add, names, pres, posts) if names else None
        histogram_tags, rows = [], None
        if self.histograms and pres + grads:
            histogram_tags = [f"preact/{name}" for name in names] + [f"grad/weight/{name}" for name in grad_names]
            together = [s for s in (pre_summary, grad_summary) if s is not None]
            rows = histogram_rows(pres + grads, torch.cat(together))
        return Measurement(tags, torch.cat(values), histogram_tags, rows)

    def _add_activation_stats(self, add, names: list[str], pres: list[torch.Tensor],
                              posts: list[torch.Tensor]) -> torch.Tensor:
        """Add the activation statistics; return the preactivations' `summaries` (histograms reuse them)."""
        pre_summary = summaries(pres)  # (L, 6): sum, squares, min, max, mean, std
        add("preact/mean", names, pre_summary[:, 4])
        add("preact/std", names, pre_summary[:, 5])
        quantiles = row_percentiles(pres, list(PERCENTILES.values()))  # (L, 3)
        for column, key in enumerate(PERCENTILES):
            add(f"preact/{key}", names, quantiles[:, column])
        # one unit over the batch (and positions, for a convolution's channel): (batch, *positions)
        quantiles = row_percentiles([pre[:, UNIT] for pre in pres], list(PERCENTILES.values()))
        for column, key in enumerate(PERCENTILES):
            add(f"preact/unit{UNIT}/{key}", names, quantiles[:, column])
        post_summary = summaries(posts)
        add("act/mean", names, post_summary[:, 4])
        add("act/std", names, post_summary[:, 5])
        add("act/saturated", names, saturated_fractions(self.activation_name, pres, posts))
        return pre_summary


def _same_layouts(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(x.shape == y.shape and x.stride() == y.stride() and x.dtype == y.dtype
                                    and x.device == y.device for x, y in zip(a, b, strict=True))


def saturated_fractions(activation: str, pres: list[torch.Tensor], posts: list[torch.Tensor]) -> torch.Tensor:
    """(len,) float64: the fraction of each layer's units in the flat part of its nonlinearity."""
    if native.handles(pres + posts):
        return native.saturated(activation, pres, posts)
    return torch.stack([torch.count_nonzero(saturated_mask(activation, pre, post)).double() / post.numel()
                        for pre, post in zip(pres, posts, strict=True)])
