"""Between probes and writer: when to measure, a background thread that measures, history.

The loop asks `due(step)`, calls `start` before the forward pass and `finish` after
the optimizer step. `finish` only captures the step's tensors (`Probes.capture`); a
background thread turns them into statistics, brings them to the host in one transfer
and writes them, while the training thread goes on with the next steps. Everything
that touches the writer or the telemetry's state runs on that thread, in step order;
`drain` waits for it (before a checkpoint, at the end). The queue is short, so a slow
measurement makes training wait instead of piling up captures in memory.

Telemetry keeps the last value of every tag (for summary.json), the step-0 values
(the gradient profile at initialization) and the short history the Figure-1 image
needs; all of it goes into checkpoints so a resumed run continues it.
"""

from __future__ import annotations

import queue
import threading

import torch

from bnlab.figures import hidden_layers
from bnlab.probes import Probes
from bnlab.writer import RunWriter

QUEUE_DEPTH = 2  # captures waiting to be measured at most; each holds one step's tensors


class Telemetry:
    def __init__(self, model, writer: RunWriter, log_cfg, total_steps: int, images=None, threads: int = 0,
                 flush_denormal: bool = False):
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
        self._measuring = False
        self._layout_written = False
        self.total_steps = total_steps
        self._worker = _Worker(threads, flush_denormal)

    def due(self, step: int) -> bool:
        """Step 0 (the gradient before any update), every `log.every` steps, and the last step."""
        return step % self.every == 0 or step == self.total_steps - 1

    def start(self, step: int) -> None:
        """Attach the probes for this step's forward and backward pass (if telemetry is on)."""
        self._measuring = self.probes is not None
        if self._measuring:
            self.probes.start(histograms=step % self.hist_every == 0)

    def finish(self, step: int, always: dict[str, torch.Tensor | float]) -> None:
        """Capture this step's tensors and have `always` (loss, lr) plus the probes' statistics written."""
        capture = self.probes.capture() if self._measuring else None
        self._measuring = False
        self._worker.submit(self._write_step, step, always, capture)

    def _write_step(self, step: int, always: dict[str, torch.Tensor | float], capture) -> None:
        values = _to_host(always)
        histograms: dict[str, torch.Tensor] = {}
        if capture is not None:
            measurement = capture.measure()
            if measurement.tags:
                values.update(zip(measurement.tags, measurement.values.tolist(), strict=True))  # one transfer
            histograms = measurement.histograms
        self.writer.scalars(step, values)
        self.writer.histograms(step, histograms)
        self.last.update(values)
        if self.probes is not None:
            if not self.initial:
                self.initial = dict(values)
            if not self._layout_written:
                self.writer.layout(list(values))
                self._layout_written = True
            self.history.append((step, _last_hidden_preact(values)))
            if self.images is not None and self.images.due(step, self.total_steps):
                self.images.render(self.writer, step, self.initial, values, self.history)

    def record(self, step: int, values: dict[str, float]) -> None:
        """Write values that are already on the host (test metrics, final figures)."""
        self._worker.submit(self._record, step, dict(values))

    def _record(self, step: int, values: dict[str, float]) -> None:
        self.writer.scalars(step, values)
        self.last.update(values)

    def drain(self) -> None:
        """Wait until everything submitted is written; raise here what failed on the thread."""
        self._worker.drain()

    def render_final(self, step: int) -> None:
        """The last image, at the run's last step, unless that step already has one."""
        self.drain()
        if self.images is not None and self.history and not self.images.rendered(step):
            self.images.render(self.writer, step, self.initial, self.last, self.history)

    def close(self) -> None:
        """Stop the thread (after what it has been given) and write the images still being drawn."""
        self._worker.close()
        if self.images is not None:
            self.images.close(self.writer)

    def state_dict(self) -> dict:
        self.drain()
        return {"last": self.last, "initial": self.initial, "history": self.history,
                "images": self.images.state_dict() if self.images is not None else None}

    def load_state_dict(self, state: dict) -> None:
        self.drain()
        self.last, self.initial, self.history = state["last"], state["initial"], state["history"]
        self._layout_written = True
        if self.images is not None and state.get("images") is not None:
            self.images.load_state_dict(state["images"])


class _Worker:
    """One background thread running submitted calls in order; its first error is raised to the caller.

    torch's thread count and denormal flushing are per-thread settings, so the thread takes the
    run's own at its start."""

    def __init__(self, threads: int, flush_denormal: bool):
        self._queue: queue.Queue = queue.Queue(maxsize=QUEUE_DEPTH)
        self._error: BaseException | None = None
        self._raised = False
        self._settings = (threads, flush_denormal)
        self._thread: threading.Thread | None = None

    def submit(self, function, *args) -> None:
        self._raise()
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="bnlab-telemetry", daemon=True)
            self._thread.start()
        self._queue.put((function, args))

    def drain(self) -> None:
        if self._thread is not None:
            self._queue.join()
        self._raise()

    def close(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None
        self._raise()

    def _run(self) -> None:
        threads, flush_denormal = self._settings
        if threads > 0:
            torch.set_num_threads(threads)
        torch.set_flush_denormal(flush_denormal)
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                if self._error is None:  # after a failure, only drain: the caller raises it
                    function, args = item
                    function(*args)
            except BaseException as error:  # handed to the training thread at its next call
                self._error = error
            finally:
                self._queue.task_done()

    def _raise(self) -> None:
        if self._error is not None and not self._raised:  # once: the run fails on it and then closes
            self._raised = True
            raise self._error


def _last_hidden_preact(values: dict[str, float]) -> dict[str, float]:
    layers = hidden_layers(values)
    if not layers:
        return {}
    suffix = f"/{layers[-1]}"
    return {tag: value for tag, value in values.items() if tag.startswith("preact/") and tag.endswith(suffix)}


def _to_host(values: dict[str, torch.Tensor | float]) -> dict[str, float]:
    """All tensors of `values` in one device-to-host transfer; plain numbers pass through."""
    tensor_tags = [tag for tag, value in values.items() if isinstance(value, torch.Tensor)]
    host = dict(values)
    if tensor_tags:
        stacked = torch.stack([values[tag].detach().double().reshape(()) for tag in tensor_tags])
        host.update(zip(tensor_tags, stacked.tolist(), strict=True))
    return {tag: float(value) for tag, value in host.items()}
