r"""Ghost Batch Normalization (Hoffer, Hubara & Soudry, 2017, "Train longer, generalize better",
https://arxiv.org/abs/1705.08741, §4): a large batch split into "ghost" batches, each normalized with
its own statistics, so that a large-batch step keeps the noise of small-batch BatchNorm.

Running statistics. Implementations disagree; this layer makes one update per training step, from the
mean of the ghost batches' means and of their unbiased variances. Why: `momentum` then means what it
means for BatchNorm (the weight of one step) whatever the number of ghost batches, where one update per
ghost batch at full momentum forgets the past k times faster (k = 16 at momentum 0.1 keeps 19% of the
old estimate a step, not 90%); the result does not depend on the order of the ghost batches, as k
updates at momentum/k do; and with one ghost batch it is exactly BatchNorm's update.

Batch sizes. The batch must be a multiple of `ghost_batch_size`, else a ValueError: a smaller last
ghost batch would normalize its samples with noisier statistics than the others (at one sample, with
none), and bnlab's sampler always draws full batches, so the config checks the sizes once at start.
"""

import torch
from torch import Tensor

from bnlab.nn.batchnorm import batch_norm_train
from bnlab.nn.variant import BatchNormVariant, empty_batch


class _GhostBatchNorm(BatchNormVariant):

    def __init__(self, num_features: int, ghost_batch_size: int = 32, eps: float = 1e-5,
                 momentum: float | None = 0.1, affine: bool = True, track_running_stats: bool = True,
                 device=None, dtype=None, *, bias: bool = True) -> None:
        if isinstance(ghost_batch_size, bool) or not isinstance(ghost_batch_size, int) or ghost_batch_size < 1:
            raise ValueError(f"ghost_batch_size must be a whole number of samples >= 1, got {ghost_batch_size!r}")
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype, bias=bias)
        self.ghost_batch_size = ghost_batch_size

    def forward(self, input: Tensor) -> Tensor:
        if not self._check_variant_input(input):
            return self._eval(input)
        if input.numel() == 0:
            return empty_batch(self, input)
        self._check_ghost_batches(input)
        outputs, means, variances = [], [], []
        for ghost in input.split(self.ghost_batch_size):  # (G, C, *) each, in batch order
            output, mean, var = batch_norm_train(ghost, self.weight, self.bias, self.eps)
            outputs.append(output)
            means.append(mean)
            variances.append(var)
        # The running estimates move once a step, by the ghost batches' average statistics.
        count = input.numel() // input.shape[1] // len(outputs)  # values a channel in one ghost batch
        self._update_running_stats(torch.stack(means).mean(0), torch.stack(variances).mean(0), count,
                                   self._count_step())
        return torch.cat(outputs)  # (N, C, *)

    def _check_ghost_batches(self, input: Tensor) -> None:
        name, size, batch = type(self).__name__, self.ghost_batch_size, input.shape[0]
        if batch % size:
            raise ValueError(f"{name}(ghost_batch_size={size}) splits each batch into ghost batches of {size} "
                             f"samples, but the batch has {batch} (input of shape {tuple(input.shape)}); use a "
                             f"batch size that is a multiple of {size}, or a ghost_batch_size that divides {batch}")
        if size * input[0, 0].numel() == 1:
            raise ValueError(f"{name}(ghost_batch_size={size}) needs more than one value per channel in each "
                             f"ghost batch to compute its statistics, got input of shape {tuple(input.shape)}; "
                             "use ghost_batch_size=2 or more")

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, ghost_batch_size={self.ghost_batch_size}"


class GhostBatchNorm1d(_GhostBatchNorm):
    r"""Ghost BatchNorm over a 2D (N, C) or 3D (N, C, L) input.

    .. math::

        y = \gamma \frac{x - \mathrm{E}_g[x]}{\sqrt{\mathrm{Var}_g[x] + \epsilon}} + \beta

    In training, ghost batch g is samples g*G .. (g+1)*G - 1 (G = ghost_batch_size) and E_g, Var_g
    (biased) are taken per channel over its samples (and L). Then, once a step,
    running_mean <- (1 - m) running_mean + m mean_g(E_g[x]) and
    running_var <- (1 - m) running_var + m mean_g(Var_g[x]) n / (n - 1), n values a channel in a ghost batch.
    Eval mode normalizes with the running estimates, as BatchNorm does. With G = N it is BatchNorm exactly.

    Args:
        num_features: C, the number of channels.
        ghost_batch_size: G, samples per ghost batch; N must be a multiple of it. Default: 32.
        eps, momentum, affine, track_running_stats, bias: as for BatchNorm1d.

    Shape:
        Input (N, C) or (N, C, L) with N a multiple of G; output the same shape.

    Example::

        >>> gbn = GhostBatchNorm1d(100, ghost_batch_size=16)
        >>> y = gbn(torch.randn(64, 100))  # four ghost batches of 16
    """

    dim = 1


class GhostBatchNorm2d(_GhostBatchNorm):
    r"""Ghost BatchNorm over a 4D (N, C, H, W) input: GhostBatchNorm1d's equations, with E_g and Var_g
    taken per channel over the ghost batch's samples, H and W.

    Args:
        num_features: C, the number of channels.
        ghost_batch_size: G, samples per ghost batch; N must be a multiple of it. Default: 32.
        eps, momentum, affine, track_running_stats, bias: as for BatchNorm2d.

    Shape:
        Input (N, C, H, W) with N a multiple of G; output the same shape and memory format.

    Example::

        >>> gbn = GhostBatchNorm2d(64, ghost_batch_size=8)
        >>> y = gbn(torch.randn(32, 64, 8, 8))
    """

    dim = 2
