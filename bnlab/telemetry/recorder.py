"""Between probes and writer: when to measure, one host transfer per logged step, history.

The loop asks `due(step)`, calls `start` before the forward pass and `finish` after
the optimizer step. Telemetry keeps the last value of every tag (for summary.json),
the step-0 values (the gradient profile at initialization) and the short history the
Figure-1 image needs; all of it goes into checkpoints so a resumed run continues it.

With `log.background` (the default), when the next step is measured too, a measured step's
statistics are computed while that step trains: on CPU float32 tensors by bnlab's compiled loops
on a thread of their own that never touches Python (`bnlab.telemetry.native.StepStatistics`), so it takes
no GIL from the training thread; on a GPU by kernels the device runs asynchronously. The
training thread only takes references to the step's tensors and one copy of its weights, and
writes a step's records when the next one finishes (or before anything reads them: `last`,
`initial`, `history`, `record`, `state_dict`, `close`), so records and checkpoints are complete
and in order, and at most one step is in flight. A Python worker thread was tried first and
measured slower than measuring inline: its Python competes with the training thread's for the
GIL. `log.background=false` measures inline; the numbers are the same.
"""

from __future__ import annotations

import functools
import time

import torch

from bnlab.telemetry.figures import derived_scalars, hidden_layers
from bnlab.telemetry.probes import Measurement, PendingMeasurement, Probes
from bnlab.telemetry.step_probes import StepProbes
from bnlab.telemetry.writer import RunWriter


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
        self.images = images  # images.ImageLog or None: profile and Figure-1 images at their own interval
        self._last: dict[str, float] = {}
        self._initial: dict[str, float] = {}
        # (step, preact percentiles of the last hidden layer) per telemetry step: Figure 1 over training
        self._history: list[tuple[int, dict[str, float]]] = []
        self.background = bool(log_cfg.background)  # measure a step while the next one trains
        self._pending: tuple[int, dict[str, float], PendingMeasurement] | None = None  # the step in flight
        self._figure1_tags: list[str] | None = None  # those tags, found once
        self._measuring = False
        self._layout_written = False
        self.total_steps = total_steps
        self.seconds = self.cpu_seconds = 0.0  # in start, finish, render_final and close (bnlab bench reads them)
        self.measured_steps = 0  # steps whose forward and backward passes ran with the probes' hooks
        self.step_probes = StepProbes.create(model, log_cfg, total_steps)  # the opt-in probes, None when all off
        self._step_probe_records: tuple[dict[str, float], list] = ({}, [])  # this step's, until `finish`

    def due(self, step: int) -> bool:
        """Step 0 (the gradient before any update), every `log.every` steps, and the last step."""
        return step % self.every == 0 or step == self.total_steps - 1

    @property
    def last(self) -> dict[str, float]:
        """The last value of every tag."""
        self.wait()
        return self._last

    @property
    def initial(self) -> dict[str, float]:
        """Every tag's value at the first telemetry step (the gradient profile at initialization)."""
        self.wait()
        return self._initial

    @property
    def history(self) -> list[tuple[int, dict[str, float]]]:
        self.wait()
        return self._history

    @_timed
    def start(self, step: int) -> None:
        """Attach the probes for this step's forward and backward pass (if telemetry is on)."""
        self._measuring = self.probes is not None
        if self._measuring:
            self.measured_steps += 1
            # the step count tells the probes whether the copy of the weights after the step before is this
            # step's weights before (no optimizer step in between); if not, they copy the weights into a set
            # the step in flight may still be reading
            if self.probes.start_copies(step):
                self._flush()
            self.probes.start(step, histograms=step % self.hist_every == 0)

    @_timed
    def observe_step(self, step: int, optimizer, loss_of, x: torch.Tensor, y: torch.Tensor) -> None:
        """Run the opt-in probes (`bnlab.telemetry.step_probes`) on copies of this step's model and optimizer,
        after its backward pass and before its optimizer step; their records go out with `finish`."""
        if self.step_probes is not None:
            self._step_probe_records = self.step_probes.measure(step, optimizer, loss_of, x, y)

    @_timed
    def finish(self, step: int, always: dict[str, torch.Tensor | float]) -> None:
        """Write this step's records: `always` (loss, lr) plus the probes' statistics (with `log.background`,
        when the next measured step finishes or `wait` is called)."""
        values = _to_host(always)
        self._flush()  # the step in flight: its weight copies are about to be reused, and records stay in order
        (probe_values, probe_images), self._step_probe_records = self._step_probe_records, ({}, [])
        values.update(probe_values)
        for tag, (data, width, height) in probe_images:
            self.writer.image_png(tag, data, step, width, height)
        if not self._measuring:
            self._write(step, values, None)
            return
        self._measuring = False
        next_measured = step + 1 < self.total_steps and self.due(step + 1)
        # Only beside a measured step: after an unmeasured one the records (and the step's tensors, held
        # until then) would wait until the next measured step, for a gain of a fraction of a percent.
        overlap = self.background and next_measured
        pending = self.probes.capture(next_measured, copy_weights=overlap).start_measuring(overlap)
        if overlap:
            self._pending = (step, values, pending)
        else:
            self._write(step, values, pending.result())

    @_timed
    def wait(self) -> None:
        """Write the measured step in flight, if any."""
        self._flush()

    def _flush(self) -> None:
        if self._pending is not None:
            step, values, pending = self._pending
            self._pending = None
            self._write(step, values, pending.result())

    def _write(self, step: int, values: dict[str, float], measurement: Measurement | None) -> None:
        histograms = ((), None)
        if measurement is not None:
            if measurement.tags:
                values.update(zip(measurement.tags, measurement.values.tolist(), strict=True))  # one transfer
                values.update(derived_scalars(values))
            histograms = (measurement.histogram_tags, measurement.histogram_rows)
        self.writer.records(step, values, *histograms)
        self._last.update(values)
        if self.probes is not None:
            if not self._initial:
                self._initial = dict(values)
            if not self._layout_written:
                self.writer.layout(list(values))
                self._layout_written = True
            if self._figure1_tags is None:
                self._figure1_tags = _last_hidden_preact_tags(values)
            self._history.append((step, {tag: values[tag] for tag in self._figure1_tags if tag in values}))
            if self.images is not None and self.images.due(step, self.total_steps):
                self.images.render(self.writer, step, self._initial, values, self._history)

    def record(self, step: int, values: dict[str, float]) -> None:
        """Write values that are already on the host (test metrics, final figures)."""
        self.wait()
        self.writer.scalars(step, values)
        self._last.update(values)

    @_timed
    def render_final(self, step: int) -> None:
        """The last image, at the run's last step, unless that step already has one."""
        self._flush()
        if self.images is not None and self._history and not self.images.rendered(step):
            self.images.render(self.writer, step, self._initial, self._last, self._history)

    @_timed
    def close(self) -> None:
        """Write the step in flight and the images still being drawn (before the writer closes)."""
        try:
            self._flush()
        finally:
            if self.images is not None:
                self.images.close(self.writer)

    def state_dict(self) -> dict:
        return {"last": self.last, "initial": self.initial, "history": self.history,
                "images": self.images.state_dict() if self.images is not None else None}

    def load_state_dict(self, state: dict) -> None:
        self._flush()
        self._last, self._initial, self._history = state["last"], state["initial"], state["history"]
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
