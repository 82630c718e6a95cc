"""Probes: per-layer gradient and activation statistics, observed through hooks.

The training loop only says when to measure (`start` before the forward pass,
`finish` after the optimizer step); it does not know which statistics exist.
Hooks only keep references; `capture` takes the step's tensors (the weights before
the step are the one copy, and with `copy_weights` the weights after) and
`Capture.start_measuring` computes every statistic of the step's layout (`bnlab.telemetry.layout`,
where they are declared once): on CPU float32 tensors in one call of bnlab's compiled loops
(`native.StepStatistics`), which may run on a thread of its own beside the next step; elsewhere in
PyTorch ops on the device (`layout.TORCH_STATISTICS`), each for all layers at once
(`bnlab.telemetry.statistics`: on a CPU the per-op overhead, not the arithmetic, is the cost). Either
way one float64 vector comes to the host in one transfer. Between measurements no hook is
attached (between two measured steps in a row they stay, disarmed), so an unlogged step
costs nothing."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from bnlab.telemetry import native
from bnlab.telemetry.figures import UNIT
from bnlab.telemetry.layout import Layout, StepTensors, step_layout
from bnlab.telemetry.statistics import HISTOGRAM_BINS


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
        # the weights before the step, and (for `capture(copy_weights=True)`) after it. The copy after step t
        # is the weights before step t + 1, unless an optimizer step came in between: `_holds[i]` is the step
        # whose weights before set i holds, with the weights' addresses and version counters when it was
        # copied. The step count is what tells (torch's fused optimizers change the weights without bumping
        # their version counters); the counters catch any other in-place change (a `load_state_dict`).
        self._sets: list[list[torch.Tensor]] = [[], []]
        self._holds: list[tuple[int, list[tuple[int, int]]] | None] = [None, None]
        self._before = 0  # the set holding this step's weights before
        self._step: int | None = None  # the step being measured
        self._outputs: dict[str, torch.Tensor] = {}  # each layer's output z, which keeps its gradient
        self._pre_post: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._histograms = False
        self._armed = False  # hooks kept between two measured steps record nothing in between (evaluation)

    def start(self, step: int | None = None, histograms: bool = False) -> None:
        """Attach hooks for the coming forward/backward pass and remember the weights before the step.

        `step`: the training loop's step count, which says whether a copy of the weights after an earlier
        step still equals the weights now (None: it never does, and the weights are copied)."""
        self._histograms, self._step = histograms, step
        self._outputs = {}
        self._pre_post = {}
        weights = self._weights()
        current = self._current_copy(step, weights)
        self._before = current if current is not None else self._copy_weights(0, weights, step)
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
        `copy_weights` (one copy, which a measured step right after, `start(step + 1)`, reuses as its
        weights before), and the weights before are a kept copy that a later `start` overwrites. So
        measure the capture before the next optimizer step, or with `copy_weights`, before the `capture`
        after next (`finish` measures at once)."""
        self._armed = False
        if not keep_hooks:
            self.detach()
        after = self._weights()
        grads = {name: weight.grad for name, weight in zip(self.layers, after, strict=True) if weight.grad is not None}
        if copy_weights:
            next_step = None if self._step is None else self._step + 1
            after = self._sets[self._copy_weights(1 - self._before, after, next_step)]
        output_grads = {name: z.grad for name, z in self._outputs.items() if z.grad is not None}
        capture = Capture(self.activation_name, list(self.layers), grads, after, self._sets[self._before],
                          output_grads, self._pre_post, self._histograms)
        self._outputs, self._pre_post = {}, {}
        return capture

    def finish(self, keep_hooks: bool = False) -> Measurement:
        """Compute this step's statistics (call after optimizer.step()); see `capture`."""
        return self.capture(keep_hooks).measure()

    def start_copies(self, step: int | None = None) -> bool:
        """Whether `start(step)` will write a set of weight copies (none of them holds the weights now)."""
        return self._current_copy(step, self._weights()) is None

    def _current_copy(self, step: int | None, weights: list[torch.Tensor]) -> int | None:
        if step is None:
            return None
        holds = (step, _versions(weights))
        return next((i for i in (0, 1) if self._holds[i] == holds), None)

    def _weights(self) -> list[torch.Tensor]:
        """The weight Parameters themselves (measured under no_grad; a detached view each call cost ~1 us)."""
        return [layer.weight for layer in self.layers.values()]

    @torch.no_grad()  # copies, not part of any graph
    def _copy_weights(self, index: int, weights: list[torch.Tensor], step: int | None) -> int:
        """Copy the weights, the weights before `step`, into set `index` (one op for all of them); return `index`."""
        if _same_layouts(self._sets[index], weights):
            torch._foreach_copy_(self._sets[index], weights)
        else:
            self._sets[index] = [weight.clone() for weight in weights]
        self._holds[index] = None if step is None else (step, _versions(weights))
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

    @property
    def layout(self) -> Layout:
        layers = (("grads", tuple(self.weight_grads)), ("weights", tuple(self.names)),
                  ("outputs", tuple(self.output_grads)), ("activations", tuple(self.pre_post)))
        return step_layout(layers, self.histograms)

    def measure(self) -> Measurement:
        """Every statistic, computed on the tensors' device."""
        return self.start_measuring(background=False).result()

    @torch.no_grad()
    def start_measuring(self, background: bool = True) -> PendingMeasurement:
        """Start computing every statistic of the step's layout; `result()` of what this returns gives the
        Measurement.

        CPU float32 tensors: one call of bnlab's compiled loops (`native.StepStatistics`), with
        `background` on a thread of its own while the caller goes on (any statistic they do not measure
        comes from `layout.TORCH_STATISTICS` on this thread). Otherwise PyTorch ops on the tensors' device
        (`layout.TORCH_STATISTICS`; a GPU runs them asynchronously until the result is read). The two paths are
        tested against each other."""
        layout = self.layout
        tensors = StepTensors(self.activation_name, list(self.weight_grads.values()), self.weights_after,
                              self.weights_before, list(self.output_grads.values()), list(self.pre_post.values()))
        if native.handles(tensors.grads + tensors.outputs + tensors.pres + tensors.posts + self.weights_after
                          + self.weights_before):
            compiled = native.statistics()
            placements = [(family.statistic, family.q, first) for family, first, _ in layout.scalars + layout.histograms
                          if family.statistic in compiled]
            statistics = native.StepStatistics(
                tensors.grads, self.weights_after, self.weights_before, tensors.outputs, tensors.pres,
                tensors.posts, UNIT, self.activation_name, tuple(placements), len(layout.tags),
                len(layout.histogram_tags), HISTOGRAM_BINS, background)
            rest = [(histogram, first, tensors.compute(family))
                    for histogram, places in ((False, layout.scalars), (True, layout.histograms))
                    for family, first, _ in places if family.statistic not in compiled]
            return PendingMeasurement(layout, statistics, rest)
        scalars = [tensors.compute(family).double().reshape(-1) for family, _, _ in layout.scalars]
        rows = [tensors.compute(family) for family, _, _ in layout.histograms]
        measurement = Measurement(list(layout.tags), torch.cat(scalars) if scalars else None,
                                  list(layout.histogram_tags), torch.cat(rows) if rows else None)
        return PendingMeasurement(layout, measurement)


class PendingMeasurement:
    """A step's statistics on their way (`Capture.start_measuring`); `result()` waits for them.

    `source`: the finished Measurement, or the compiled loops' `native.StepStatistics`, with `rest`:
    (whether histogram rows, first index, values) of the families they do not measure, by PyTorch ops."""

    def __init__(self, layout: Layout, source, rest: list[tuple[bool, int, torch.Tensor]] = ()):
        self._layout, self._source, self._rest = layout, source, rest

    def result(self) -> Measurement:
        if isinstance(self._source, Measurement):
            return self._source
        statistics = self._source.wait()
        for histogram, first, computed in self._rest:
            target = statistics.histograms if histogram else statistics.values
            target[first:first + len(computed)] = computed.cpu().numpy()
        return Measurement(list(self._layout.tags), statistics.values, list(self._layout.histogram_tags),
                           statistics.histograms)


def _versions(weights: list[torch.Tensor]) -> list[tuple[int, int]]:
    """Each weight's address and version counter (which in-place changes by torch ops increment; torch's
    fused optimizer steps do not)."""
    return [(weight.data_ptr(), weight._version) for weight in weights]


def _same_layouts(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(x.shape == y.shape and x.stride() == y.stride() and x.dtype == y.dtype
                                    and x.get_device() == y.get_device() for x, y in zip(a, b, strict=True))
