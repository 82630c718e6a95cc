"""Internal covariate shift as Santurkar et al. (2018, Definition 2.1) define it, at one training step.

For layer i, with the step's batch (x, y) and parameters W_1 .. W_k before the step:

    G_i  = grad_{W_i} L(W_1, ..., W_k; x, y)
    G'_i = grad_{W_i} L(W_1', ..., W_{i-1}', W_i, ..., W_k; x, y)

where W' are the parameters after the step the optimizer takes now (its own update rule and state:
momentum, Adam's moments, weight decay, and the gradients as the loop hands them to it, after
optim.grad_clip and optim.adaptive_clip). G'_i is the gradient layer i would see if only the layers below it had
moved: the change of its input distribution, measured by what it does to the gradient. Logged per layer:

- covariate_shift/l2/layerNN = ||G_i - G'_i||
- covariate_shift/cosine/layerNN = cos(G_i, G'_i)

G is the gradient of the layer's weight matrix (as grad_norm/weight); "the layers below" are whole blocks
(weight, bias, BatchNorm's gamma and beta). The first layer has nothing below it (G' = G) and is not
logged. Costs one forward and backward pass per layer on a copy of the model.
"""

from __future__ import annotations

import torch
from torch import nn

from bnlab.telemetry.passes import LossFunction, cosine, flat, layer_units, parameters_after_step, replica

L2, COSINE = "covariate_shift/l2", "covariate_shift/cosine"


def covariate_shift(model: nn.Module, optimizer: torch.optim.Optimizer, loss_of: LossFunction,
                    x: torch.Tensor, y: torch.Tensor, twin: nn.Module | None = None) -> dict[str, torch.Tensor]:
    """{tag: 0-d float64 tensor}: ||G - G'|| and cos(G, G') of every layer but the first.

    Call after the step's backward pass (and gradient clipping), before `optimizer.step()`.
    `twin`: a copy of the model to work on (`passes.Twin.synced()`), else a fresh `replica`."""
    after = parameters_after_step(model, optimizer)
    twin = replica(model) if twin is None else twin
    params = dict(twin.named_parameters())
    units = layer_units(twin)
    weights = [params[weight] for _, _, weight in units]
    before = torch.autograd.grad(loss_of(twin, x, y), weights)
    values = {}
    for i in range(1, len(units)):
        with torch.no_grad():
            for name in units[i - 1][1]:  # the layers below i have moved: i - 1 joins them
                params[name].copy_(after[name])
        (shifted,) = torch.autograd.grad(loss_of(twin, x, y), [weights[i]])
        g, g_shifted = flat([before[i]]), flat([shifted])
        layer = units[i][0]
        values[f"{L2}/{layer}"] = torch.linalg.vector_norm(g - g_shifted)
        values[f"{COSINE}/{layer}"] = cosine(g, g_shifted)
    return values
