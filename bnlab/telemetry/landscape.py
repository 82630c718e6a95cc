"""The loss landscape along the gradient (Santurkar et al. 2018, "How does batch normalization help
optimization?", Figure 4), measured at one training step.

At the parameters x of the step, with g = grad L(x) on the step's batch (BatchNorm in training mode, as
the step itself sees it), the probe evaluates the loss and its gradient at x - eta * g for step sizes

    eta_j = lr * max_multiple * 2^-(points - 1 - j),   j = 0 .. points - 1

(`log.landscape_points` sizes, doubling up to `log.landscape_max_multiple` times the learning rate; by
default 0.25, 0.5, 1, 2 and 4 times lr), and logs

- landscape/loss_min, loss_max and loss_range = max - min of L over x and the points x - eta g
  (the variation of the loss along the gradient: the shaded band of Santurkar et al.'s Figure 4a);
- landscape/grad_predictiveness = max_j ||grad L(x) - grad L(x - eta_j g)|| (Figure 4b: how far the
  gradient changes where it points; small means predictive);
- landscape/beta_smoothness = max_j ||grad L(x) - grad L(x - eta_j g)|| / ||eta_j g|| (Figure 4c, the
  "effective" beta-smoothness: the largest change of the gradient per distance moved).

The gradient is taken over all parameters (weights, biases, BatchNorm's gamma and beta) as one vector, of
the training objective (cross-entropy, plus optim.l1's penalty when set). Costs points + 1 forward and
backward passes on a copy of the model; nothing of the live run changes.
"""

from __future__ import annotations

import torch
from torch import nn

from bnlab.telemetry.passes import LossFunction, loss_and_grads, replica, total_norm

TAGS = ("landscape/loss_min", "landscape/loss_max", "landscape/loss_range", "landscape/grad_predictiveness",
        "landscape/beta_smoothness")


def step_sizes(lr: float, points: int, max_multiple: float) -> list[float]:
    """The etas of the probe, smallest first: doubling up to `max_multiple * lr`."""
    return [lr * max_multiple * 2.0 ** -(points - 1 - j) for j in range(points)]


def landscape(model: nn.Module, loss_of: LossFunction, x: torch.Tensor, y: torch.Tensor,
              etas: list[float], twin: nn.Module | None = None) -> dict[str, torch.Tensor]:
    """{tag: 0-d float64 tensor} of `TAGS` at the model's parameters, along -grad with step sizes `etas`.

    `twin`: a copy of the model to work on (`passes.Twin.synced()`), else a fresh `replica`."""
    twin = replica(model) if twin is None else twin
    params = list(twin.parameters())
    origin = [p.detach().clone() for p in params]
    loss, grads = loss_and_grads(twin, loss_of, x, y, params)
    grad_norm = total_norm(grads)
    losses, changes, smoothness = [loss.double()], [], []
    for eta in etas:
        with torch.no_grad():  # x - eta * g
            torch._foreach_copy_(params, origin)
            torch._foreach_add_(params, grads, alpha=-eta)
        moved_loss, moved_grads = loss_and_grads(twin, loss_of, x, y, params)
        change = total_norm(torch._foreach_sub(moved_grads, grads))
        losses.append(moved_loss.double())
        changes.append(change)
        smoothness.append(change / (eta * grad_norm))
    losses_vector = torch.stack(losses)
    values = [losses_vector.min(), losses_vector.max(), losses_vector.max() - losses_vector.min(),
              torch.stack(changes).max(), torch.stack(smoothness).max()]
    return dict(zip(TAGS, values, strict=True))
