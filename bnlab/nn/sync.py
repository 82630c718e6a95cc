"""Synchronized BatchNorm: batch statistics over every process of a torch.distributed group.

torch's SyncBatchNorm converts only torch's own layers (rebuilding them as torch's layer) and refuses CPU
tensors; this is the same idea on bnlab's arithmetic, for gloo (CPU) and nccl (GPU) alike. Each process
holds its own part of the global batch, of any size, none included:

- forward: each process reduces its part to (count, mean, M2 = sum of squared deviations) per channel, one
  all_gather shares them, and every process combines them identically (Chan, Golub & LeVeque's parallel
  formula, in float64), so that all normalize with the statistics of the concatenated batch;
- backward: dx needs the global sum(dy) and sum(dy * (x - mean)) per channel, one all_reduce of both.

The weight and bias gradients returned are this process's share (its own sums), as torch's SyncBatchNorm
returns them: DistributedDataParallel's all-reduce of the parameter gradients adds the shares up.
Every process of the group must run each forward and each backward of the layer, or the others wait.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor
from torch.autograd.function import once_differentiable

from bnlab.nn import functional

# Half-precision inputs are normalized with float32 statistics, as in bnlab's BatchNorm.
_REDUCED_PRECISION = (torch.float16, torch.bfloat16)


def is_synchronized(group=None) -> bool:
    """Whether a layer with sync=True communicates: an initialized group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1


def combine_moments(counts: Tensor, means: Tensor, m2s: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(count, mean, M2) of the union of R parts from each part's: counts (R,), means and m2s (R, C).

    Chan et al.'s update, all parts at once: M2 = sum_r M2_r + n_r (mean_r - mean)^2. An empty part
    (n_r = 0) contributes nothing, whatever its mean.
    """
    count = counts.sum()
    mean = (counts[:, None] * means).sum(0) / count.clamp(min=1)  # (C,)
    m2 = (m2s + counts[:, None] * (means - mean).square()).sum(0)  # (C,)
    return count, mean, m2


def _reduce_dims(x: Tensor) -> tuple[int, ...]:
    return (0, *range(2, x.dim()))


def _bcast(t: Tensor, x: Tensor) -> Tensor:
    """A (C,) tensor viewed as (C, 1, ...) so that it broadcasts against x of shape (N, C, *)."""
    return t if x.dim() == 2 else t.view(-1, *([1] * (x.dim() - 2)))


def global_moments(x: Tensor, group=None) -> tuple[int, Tensor, Tensor]:
    """(count, mean, biased var) per channel of the batch that the group's processes hold together.

    mean and var are (C,) in x's compute dtype (float32 for half-precision x); one all_gather.
    """
    dtype = torch.float32 if x.dtype in _REDUCED_PRECISION else x.dtype
    xc = x.detach().to(dtype)
    channels, count = x.shape[1], x.numel() // x.shape[1]
    if count:
        mean = xc.mean(_reduce_dims(x))  # (C,)
        m2 = (xc - _bcast(mean, x)).square().sum(_reduce_dims(x))  # (C,) two passes: exact for large means
    else:
        mean = m2 = xc.new_zeros(channels)
    # float64 throughout: a float32 count is exact only up to 2^24 values per channel
    local = torch.cat([torch.full((1,), count, dtype=torch.float64, device=x.device), mean.double(), m2.double()])
    parts = [torch.empty_like(local) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, local, group=group)
    stacked = torch.stack(parts)  # (R, 1 + 2C)
    total, mean64, m2_64 = combine_moments(stacked[:, 0], stacked[:, 1:1 + channels], stacked[:, 1 + channels:])
    total = int(total.item())
    var64 = m2_64 / max(total, 1)
    return total, mean64.to(dtype), var64.to(dtype)


class SyncBatchNormFunction(torch.autograd.Function):
    """Normalization with given global statistics; the backward all-reduces the two per-channel sums."""

    @staticmethod
    def forward(ctx, x, weight, bias, mean, var, eps, count, group):
        # The same affine map as eval mode, y = weight * (x - mean) / sqrt(var + eps) + bias, with the
        # global batch statistics in place of the running ones.
        y = functional.batch_norm_eval(x, mean, var, weight, bias, eps)
        ctx.save_for_backward(x, weight, mean, torch.rsqrt(var + eps))
        ctx.count, ctx.group = count, group
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        x, weight, mean, invstd = ctx.saved_tensors
        dyc, xc = dy.to(mean.dtype), x.to(mean.dtype)
        x_mu = xc - _bcast(mean, x)  # (N, C, *)
        local = torch.stack([dyc.sum(_reduce_dims(x)), (dyc * x_mu).sum(_reduce_dims(x))])  # (2, C)
        grad_bias, grad_weight = local[0], local[1] * invstd  # this process's share
        sums = local.clone()
        dist.all_reduce(sums, group=ctx.group)  # every process, whether or not it needs dx
        dx = None
        if ctx.needs_input_grad[0]:
            sum_dy, sum_dy_xmu = sums[0] / ctx.count, sums[1] / ctx.count  # (C,) global means
            scale = invstd if weight is None else invstd * weight.to(invstd.dtype)
            # dx = scale * (dy - mean(dy) - x_hat * mean(dy * x_hat)), the means over the global batch
            dx = (dyc - _bcast(sum_dy, x) - x_mu * _bcast(invstd.square() * sum_dy_xmu, x)) * _bcast(scale, x)
            dx = dx.to(x.dtype)
        need_weight, need_bias = ctx.needs_input_grad[1:3]
        return (dx, grad_weight if need_weight else None, grad_bias if need_bias else None,
                None, None, None, None, None)


def sync_batch_norm_train(x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float, group=None,
                          layer: str = "BatchNorm"):
    """Normalize x with the statistics of the group's global batch.

    Returns (y, mean, var, count): mean and biased var (C,) of the global batch and its count of values
    per channel; mean and var are None when the global batch is empty.
    """
    count, mean, var = global_moments(x, group)
    if count == 0:  # every process's part is empty: nothing to normalize, no statistics
        return functional.empty_output(x, weight, bias), None, None, 0
    if count == 1:  # decided on the global count, so every process raises alike
        raise ValueError(f"{layer} needs more than one value per channel to compute batch statistics, got one "
                         f"across all {dist.get_world_size(group)} processes; use a larger global batch")
    y = SyncBatchNormFunction.apply(x, weight, bias, mean, var, eps, count, group)
    return y, mean, var, count

