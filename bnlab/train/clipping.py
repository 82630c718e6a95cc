"""Adaptive gradient clipping (AGC; Brock et al. 2021, "High-performance large-scale image recognition
without normalization", §3), in place on the gradients between the backward pass and the optimizer step.

For each unit i of a parameter W with gradient G, with clipping threshold lambda:

    G_i <- G_i * lambda * max(||W_i||, eps) / ||G_i||    where ||G_i|| > lambda * max(||W_i||, eps)

and G_i unchanged elsewhere, so no unit's gradient is larger than lambda times its weights. A unit is an
output unit: a row of a Linear weight (out, in), an output channel of a convolution's weight (out, in, kh,
kw). A vector (a bias, a norm layer's gain or shift) or a scalar is one unit, as in the paper's reference
implementation (`unitwise_norm` of deepmind-research/nfnets, which timm's `adaptive_clip_grad` follows).
eps = 1e-3 keeps parameters that start at zero (biases, BatchNorm's shift) from having their gradient
clipped to zero. Every parameter is clipped, the classifier too (the paper's NFNets leave their final
linear layer unclipped).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

EPS = 1e-3  # the paper's floor on ||W_i||


def unit_norms(tensor: torch.Tensor) -> torch.Tensor:
    """||W_i|| of each output unit in float64: (out, 1, ...) for a weight of 2 or more dimensions, () for a
    vector or a scalar (one unit). float64, so that a large finite gradient's norm does not overflow."""
    if tensor.ndim <= 1:
        return torch.linalg.vector_norm(tensor, dtype=torch.float64)
    return torch.linalg.vector_norm(tensor, dim=tuple(range(1, tensor.ndim)), keepdim=True, dtype=torch.float64)


@torch.no_grad()
def adaptive_clip_(parameters: Iterable[torch.Tensor], clipping: float, eps: float = EPS) -> None:
    """Clip the gradient of every unit of `parameters` (those with a gradient) to `clipping` times the unit's
    weight norm (at least `eps`), in place. A non-finite gradient stays non-finite, so that a diverged step is
    still found after clipping."""
    for parameter in parameters:
        grad = parameter.grad
        if grad is None:
            continue
        largest = clipping * unit_norms(parameter).clamp_min(eps)  # (out, 1, ...) or ()
        norm = unit_norms(grad)
        # where the unit is within bounds the division is never used; where it is not, norm > 0
        scale = torch.where(norm > largest, largest / norm, torch.ones_like(norm))
        grad.mul_(scale.to(grad.dtype))
