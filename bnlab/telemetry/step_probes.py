"""The opt-in probes of a run: which of them are on, and the one call that runs them at a measured step.

Four `log.*` switches, all off by default, each a module of its own:

- log.landscape          `bnlab.telemetry.landscape` (Santurkar et al. 2018, Figure 4)
- log.covariate_shift    `bnlab.telemetry.covariate_shift` (Santurkar et al. 2018, Definition 2.1)
- log.signal_prop        `bnlab.telemetry.signal_propagation` (Brock, De & Smith 2021), at step 0, or at
                         every measured step with log.signal_prop_over_training; with log.images its plot
                         `profile/signal_propagation` at step 0 and the last step
- log.gradient_noise     `bnlab.telemetry.gradient_noise` (ghost-batch gradient noise, McCandlish et al. 2018)

Telemetry builds `StepProbes` only when a switch is on (`create` returns None otherwise: the loop's call
then returns at once, and nothing is copied, hooked or run). At a measured step, after the backward pass
and before the optimizer's step, `measure` runs the probes on copies of the model and optimizer
(`bnlab.telemetry.passes`) and returns plain numbers: the training step is the one an unmeasured run takes.
"""

from __future__ import annotations

import torch
from torch import nn

from bnlab.telemetry import plots
from bnlab.telemetry.covariate_shift import covariate_shift
from bnlab.telemetry.gradient_noise import gradient_noise
from bnlab.telemetry.landscape import landscape, step_sizes
from bnlab.telemetry.passes import LossFunction, Twin, preserved_rng
from bnlab.telemetry.signal_figure import IMAGE_TAG, signal_propagation_figure
from bnlab.telemetry.signal_propagation import signal_propagation

SWITCHES = ("landscape", "covariate_shift", "signal_prop", "gradient_noise")


class StepProbes:
    """The probes a run's `log` config switches on, run on copies of the model at measured steps."""

    def __init__(self, model: nn.Module, log_cfg, total_steps: int):
        self.model = model
        self.twin = Twin(model)  # the copy every probe works on, refreshed before each
        self.total_steps = total_steps
        self.switches = {name: bool(getattr(log_cfg, name)) for name in SWITCHES}
        self.landscape_points = int(log_cfg.landscape_points)
        self.landscape_max_multiple = float(log_cfg.landscape_max_multiple)
        self.signal_prop_over_training = bool(log_cfg.signal_prop_over_training)
        self.gradient_noise_chunks = int(log_cfg.gradient_noise_chunks)
        self.images = bool(log_cfg.images)

    @classmethod
    def create(cls, model: nn.Module, log_cfg, total_steps: int) -> StepProbes | None:
        """The run's opt-in probes, or None when every switch is off."""
        return cls(model, log_cfg, total_steps) if any(getattr(log_cfg, name) for name in SWITCHES) else None

    def measure(self, step: int, optimizer: torch.optim.Optimizer, loss_of: LossFunction, x: torch.Tensor,
                y: torch.Tensor) -> tuple[dict[str, float], list[tuple[str, tuple[bytes, int, int]]]]:
        """({tag: value}, [(image tag, (png, width, height))]) of this step, from (x, y) and the gradients in
        the live parameters' `.grad` (the step the optimizer will take), which stay as they are."""
        signal = self.switches["signal_prop"] and (step == 0 or self.signal_prop_over_training)
        tensors: dict[str, torch.Tensor] = {}
        with preserved_rng():
            if self.switches["landscape"]:
                etas = step_sizes(optimizer.param_groups[0]["lr"], self.landscape_points,
                                  self.landscape_max_multiple)
                tensors.update(landscape(self.model, loss_of, x, y, etas, self.twin.synced()))
            if self.switches["covariate_shift"]:
                tensors.update(covariate_shift(self.model, optimizer, loss_of, x, y, self.twin.synced()))
            if signal:
                tensors.update(signal_propagation(self.model, x, self.twin.synced()))
            if self.switches["gradient_noise"]:
                tensors.update(gradient_noise(self.model, loss_of, x, y, self.gradient_noise_chunks,
                                              self.twin.synced()))
        values = dict(zip(tensors, torch.stack(list(tensors.values())).tolist(), strict=True)) if tensors else {}
        images = []
        if signal and self.images and step in (0, self.total_steps - 1):
            title = f"signal propagation · {len(self.model.blocks)} blocks · step {step}"
            images.append((IMAGE_TAG, plots.png(signal_propagation_figure([(f"step {step}", values)], title))))
        return values, images
