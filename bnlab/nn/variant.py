"""What the BatchNorm variants (ghost, renorm, noisy) share with bnlab's BatchNorm and with each other.

Each variant keeps BatchNorm's constructor, parameters, buffers and state-dict keys (so it loads a
BatchNorm state dict and back) and changes only the training-mode forward. This base adds the input
rank check of the 1d/2d classes, the count of training steps (num_batches_tracked, which renorm's
warm-up reads) and the running-statistics update, written once.
"""

import torch
from torch import Tensor

from bnlab.nn import functional
from bnlab.nn.batchnorm import _BatchNorm

# dim -> (the input ranks a layer of that dim takes, how to name them)
LAYOUTS = {1: ((2, 3), "2D input (N, C) or 3D input (N, C, L)"), 2: ((4,), "4D input (N, C, H, W)")}


class BatchNormVariant(_BatchNorm):
    """A BatchNorm with its own training-mode forward; `dim` (1 or 2) is fixed by each public subclass."""

    dim = 1

    def _check_input_dim(self, input: Tensor) -> None:
        ranks, layout = LAYOUTS[self.dim]
        if input.dim() not in ranks:
            raise ValueError(f"{type(self).__name__} expected {layout}, "
                             f"got {input.dim()}D input of shape {tuple(input.shape)}")

    def _check_variant_input(self, input: Tensor) -> bool:
        """Rank, dtype and channel checks; True when this forward normalizes with batch statistics."""
        self._check_input_dim(input)
        self._check_input(input)
        return self.training or (self.running_mean is None and self.running_var is None)

    def _eval(self, input: Tensor) -> Tensor:
        return functional.batch_norm_eval(input, self.running_mean, self.running_var, self.weight, self.bias,
                                          self.eps)

    def _count_step(self) -> float:
        """Count one training step; the weight of this batch in the running statistics (0 if untracked)."""
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average over all batches so far
                factor = 1.0 / float(self.num_batches_tracked)
        return factor

    def _update_running_stats(self, mean: Tensor | None, var: Tensor | None, count: int, factor: float) -> None:
        """Fold a batch's mean and biased variance (from `count` values a channel) into the running estimates."""
        if mean is None:  # an empty batch leaves every statistic as it was
            return
        if self.training and self.track_running_stats:
            functional.update_running_stats(self.running_mean, self.running_var, mean, var, count, factor)
        self.batch_mean, self.batch_var = mean, var


def empty_batch(layer: BatchNormVariant, input: Tensor) -> Tensor:
    """An empty batch's output, wired to the affine parameters; the step is counted as torch counts it."""
    layer._count_step()
    return functional.empty_output(input, layer.weight, layer.bias)


def per_channel(t: Tensor, input: Tensor) -> Tensor:
    """A (C,) tensor in the dtype the statistics of `input` are computed in (float32 for half inputs)."""
    dtype = torch.float32 if input.dtype in (torch.float16, torch.bfloat16) else input.dtype
    return t.to(dtype)
