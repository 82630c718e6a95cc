"""Gradient noise that stays well defined under BatchNorm: the spread of the gradient across ghost batches.

Per-example gradients do not exist for a network with BatchNorm in training mode: every example's output
depends on the whole batch. So the step's batch of B examples is split into k chunks of b = B / k
(`log.gradient_noise_chunks`), and the forward and backward pass run on each chunk alone: each chunk is
normalized with its own statistics (a ghost batch, Hoffer et al. 2017), and g_j is the gradient of the
mean loss over chunk j. With g_bar = (1/k) sum_j g_j, per layer (the weight matrix, as grad_norm/weight)
and for all parameters together (the tag's last part `all`):

- grad_noise/variance = tr(S) = 1/(k-1) sum_j ||g_j - g_bar||^2, the unbiased estimate of the trace of
  the covariance of one chunk's gradient;
- grad_noise/snr = ||g_bar||^2 / (tr(S) / k): the squared norm of the mean gradient against the variance
  of that mean (its estimated noise); above 1, the k chunks resolve the gradient's direction;
- grad_noise/b_simple = b * tr(S) / (||g_bar||^2 - tr(S) / k) = B / (snr - 1): the "simple noise scale"
  B_simple = tr(Sigma) / |G|^2 of McCandlish et al. (2018), with Sigma = b * (the chunk covariance) and
  |G|^2 estimated without bias as ||g_bar||^2 - tr(S) / k; NaN when that estimate is not positive
  (snr <= 1: the gradient's signal is not resolved by k chunks).

What it estimates: the noise of gradients of b examples normalized together, the ghost-batch objective
at chunk size b, and from it the batch size at which that noise matches the signal (McCandlish et al.'s
estimate of the critical batch size, under their assumptions: an ideal step size and a Hessian of one
scale). What it does not: the noise of the step's own gradient (its B examples are normalized together,
and that gradient is not the mean of the chunk gradients), nor per-example noise under BatchNorm, which
does not exist; Sigma = b * the chunk covariance holds exactly only when examples enter the gradient
independently (norm=none), and with k chunks tr(S) has k - 1 degrees of freedom: it is noisy for small k.
Costs k forward and backward passes of b examples on a copy of the model.
"""

from __future__ import annotations

import torch
from torch import nn

from bnlab.telemetry.passes import LossFunction, loss_and_grads, replica

VARIANCE, SNR, B_SIMPLE = "grad_noise/variance", "grad_noise/snr", "grad_noise/b_simple"
ALL = "all"


def noise_statistics(chunk_grads: torch.Tensor, chunk_size: int) -> tuple[torch.Tensor, ...]:
    """(tr(S), snr, b_simple) of chunk gradients (k, P), as the module docstring defines them."""
    trace, mean_sq = chunk_sums(chunk_grads)
    return estimates(trace, mean_sq, chunk_grads.shape[0], chunk_size)


def chunk_sums(chunk_grads: torch.Tensor) -> torch.Tensor:
    """(2,) float64: tr(S) and ||g_bar||^2 of chunk gradients (k, ...), sums over coordinates."""
    stacked = chunk_grads.reshape(chunk_grads.shape[0], -1).double()  # (k, P)
    mean = stacked.mean(dim=0)  # (P,)
    # the unbiased variance summed over coordinates (Tensor.var over the chunk dimension measured 20x slower)
    deviation = (stacked - mean).reshape(-1)  # (k * P,)
    trace = torch.dot(deviation, deviation) / (stacked.shape[0] - 1)
    return torch.stack([trace, torch.dot(mean, mean)])


def estimates(trace: torch.Tensor, mean_sq: torch.Tensor, chunks: int, chunk_size: int) -> tuple[torch.Tensor, ...]:
    """(tr(S), snr, b_simple) from tr(S) and ||g_bar||^2."""
    signal = mean_sq - trace / chunks  # unbiased estimate of |G|^2
    b_simple = torch.where(signal > 0, chunk_size * trace / signal, torch.full_like(signal, float("nan")))
    return trace, mean_sq / (trace / chunks), b_simple


def gradient_noise(model: nn.Module, loss_of: LossFunction, x: torch.Tensor, y: torch.Tensor,
                   chunks: int, twin: nn.Module | None = None) -> dict[str, torch.Tensor]:
    """{tag: 0-d float64 tensor} of the three families for each weight layer and for `all` parameters.

    `twin`: a copy of the model to work on (`passes.Twin.synced()`), else a fresh `replica`."""
    if len(x) % chunks or chunks < 2:
        raise ValueError(f"a batch of {len(x)} does not split into {chunks} equal chunks (2 chunks or more)")
    twin = replica(model) if twin is None else twin
    params = list(twin.parameters())
    rows = [loss_and_grads(twin, loss_of, x_chunk, y_chunk, params)[1]  # each ghost batch alone: (b, ...)
            for x_chunk, y_chunk in zip(x.chunk(chunks), y.chunk(chunks), strict=True)]
    # Per parameter tensor, as tr(S) and ||g_bar||^2 of a layer and of the whole model are sums of these.
    per_tensor = torch.stack([chunk_sums(torch.stack([grads[i] for grads in rows]))  # (k, *shape) in, (2,) out
                              for i in range(len(params))])  # (tensors, 2)
    index = {id(p): i for i, p in enumerate(params)}
    groups = [(name, per_tensor[index[id(layer.weight)]]) for name, layer in twin.weight_layers.items()]
    values = {}
    for name, (trace, mean_sq) in [*groups, (ALL, per_tensor.sum(dim=0))]:
        trace, snr, b_simple = estimates(trace, mean_sq, chunks, len(x) // chunks)
        values[f"{VARIANCE}/{name}"], values[f"{SNR}/{name}"], values[f"{B_SIMPLE}/{name}"] = trace, snr, b_simple
    return values
