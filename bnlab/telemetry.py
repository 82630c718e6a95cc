"""Between probes and writer: when to measure, one host transfer per logged step, history.

The loop asks `due(step)`, calls `start` before the forward pass and `finish` after
the optimizer step. Telemetry keeps the last value of every tag (for summary.json),
the step-0 values (the gradient profile at initialization) and the short history the
Figure-1 image needs; all of it goes into checkpoints so a resumed run continues it.

Measuring happens on the training thread. A background thread was tried and measured
slower on this 2-core machine (default settings +14.7 % against +8.6 % inline, median of 6
interleaved runs): its hundreds of small ops each wait for the GIL held by the training
thread's Python, and the training thread then waits for it in turn. Tried again once the
heavy statistics were compiled loops that release the GIL (every statistic at every step,
4 interleaved runs, medians 16.3 s against 16.9 s inline): no gain this noisy machine
could tell from its noise, so the simpler inline measuring stays.
"""

from __future__ import annotations

import functools
import time

import torch

from bnlab.figures import hidden_layers
from bnlab.probes import Probes
from bnlab.writer import RunWriter


def _timed(method):
    """Add the wall and thread CPU time of each call to `self.seconds` and `self.cpu_seconds`: what
    telemetry cost this run, hooks aside (wall minus CPU: waiting, e.g. for the last images)."""
    @functools.wraps(method)
    def timed(self, *args, **kwargs):
        begin, cpu = time.perf_counter(), time.thread_time()
        try:
            return method(self, *args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - begin
            self.cpu_seconds += time.thread_time() - cpu

    return timed


class Telemetry:
    def __init__(self, model, writer: RunWriter, log_cfg, total_steps: int, images=None):
        self.writer = writer
        self.enabled = bool(log_cfg.enabled)
        self.every = log_cfg.every
        self.hist_every = log_cfg.hist_every
        self.probes = Probes(model) if self.enabled else None
        self.images = images  # bnlab.images.ImageLog or None: profile and Figure-1 images at their own interval
        self.last: dict[str, float] = {}
        self.initial: dict[str, float] = {}
        # (step, preact percentiles of the last hidden layer) per telemetry step: Figure 1 over training
        self.history: list[tuple[int, dict[str, float]]] = []
        self._figure1_tags: list[str] | None = None  # those tags, found once
        self._measuring = False
        self._layout_written = False
        self.total_steps = total_steps
        self.seconds = self.cpu_seconds = 0.0  # in start, finish, render_final and close (bnlab bench reads them)
        self.measured_steps = 0  # steps whose forward and backward passes ran with the probes' hooks

    def due(self, step: int) -> bool:
        """Step 0 (the gradient before any update), every `log.every` steps, and the last step."""
        return step % self.every == 0 or step == self.total_steps - 1

    @_timed
    def start(self, step: int) -> None:
        """Attach the probes for this step's forward and backward pass (if telemetry is on)."""
        self._measuring = self.probes is not None
        if self._measuring:
            self.measured_steps += 1
            self.probes.start(histograms=step % self.hist_every == 0)

    @_timed
    def finish(self, step: int, always: dict[str, torch.Tensor | float]) -> dict[str, float]:
        """Write this step's records: `always` (loss, lr) plus the probes' statistics."""
        values = _to_host(always)
        if self._measuring:
            measurement = self.probes.finish(keep_hooks=step + 1 < self.total_steps and self.due(step + 1))
            if measurement.tags:
                values.update(zip(measurement.tags, measurement.values.tolist(), strict=True))  # one transfer
            self.writer.histogram_rows(step, measurement.histogram_tags, measurement.histogram_rows)
            self._measuring = False
        self.writer.scalars(step, values)
        self.last.update(values)
        if self.probes is not None:
            if not self.initial:
                self.initial = dict(values)
            if not self._layout_written:
                self.writer.layout(list(values))
                self._layout_written = True
            if self._figure1_tags is None:
                self._figure1_tags = _last_hidden_preact_tags(values)
            self.history.append((step, {tag: values[tag] for tag in self._figure1_tags if tag in values}))
            if self.images is not None and self.images.due(step, self.total_steps):
                self.images.render(self.writer, step, self.initial, values, self.history)
        return values

    def record(self, step: int, values: dict[str, float]) -> None:
        """Write values that are already on the host (test metrics, final figures)."""
        self.writer.scalars(step, values)
        self.last.update(values)

    @_timed
    def render_final(self, step: int) -> None:
        """The last image, at the run's last step, unless that step already has one."""
        if self.images is not None and self.history and not self.images.rendered(step):
            self.images.render(self.writer, step, self.initial, self.last, self.history)

    @_timed
    def close(self) -> None:
        """Wait for images still being drawn and write them (before the writer closes)."""
        if self.images is not None:
            self.images.close(self.writer)

    def state_dict(self) -> dict:
        return {"last": self.last, "initial": self.initial, "history": self.history,
                "images": self.images.state_dict() if self.images is not None else None}

    def load_state_dict(self, state: dict) -> None:
        self.last, self.initial, self.history = state["last"], state["initial"], state["history"]
        self._layout_written = True
        if self.images is not None and state.get("images") is not None:
            self.images.load_state_dict(state["images"])


def _last_hidden_preact_tags(values: dict[str, float]) -> list[str]:
    layers = hidden_layers(values)
    if not layers:
        return []
    suffix = f"/{layers[-1]}"
    return [tag for tag in values if tag.startswith("preact/") and tag.endswith(suffix)]


def _to_host(values: dict[str, torch.Tensor | float]) -> dict[str, float]:
    """All tensors of `values` in one device-to-host transfer; plain numbers pass through."""
    tensor_tags = [tag for tag, value in values.items() if isinstance(value, torch.Tensor)]
    host = dict(values)
    if tensor_tags:
        stacked = torch.stack([values[tag].detach().double().reshape(()) for tag in tensor_tags])
        host.update(zip(tensor_tags, stacked.tolist(), strict=True))
    return {tag: float(value) for tag, value in host.items()}
