r"""Batch Renormalization (Ioffe, 2017, "Batch Renormalization: Towards Reducing Minibatch Dependence in
Batch-Normalized Models", https://arxiv.org/abs/1702.03275, Algorithm 1).

In training each channel is normalized with its batch statistics and then corrected towards the
moving ones by r and d, which are treated as constants by the gradient:

    r = clip(sigma_B / sigma, 1/r_max, r_max),   d = clip((mu_B - mu) / sigma, -d_max, d_max)
    x_hat = (x - mu_B) / sigma_B * r + d,         y = gamma * x_hat + beta

with sigma_B = sqrt(Var_B[x] + eps). Eval mode is BatchNorm's: y = gamma * (x - mu) / sigma + beta.

Moving statistics. The paper keeps a moving standard deviation; this layer keeps BatchNorm's moving
variance (running_var, updated with the unbiased batch variance) and uses sigma = sqrt(running_var + eps)
in both modes. Why: the state dict is BatchNorm's, eval mode is BatchNorm's, and r_max = 1, d_max = 0
give exactly BatchNorm in training and eval; and at the small batches renorm is for, a moving average
of sigma_B is biased low (E[sigma_B] = 0.56 sigma at two values a channel, 0.80 sigma at four), where
the moving unbiased variance is not.

Warm-up. As in the paper's schedule (r_max = 1, d_max = 0 for the first 5k steps, then relaxed
linearly to reach d_max = 5 at 25k and r_max = 3 at 40k), scaled to bnlab's 1000-step runs by 1/100:
plain BatchNorm for `warmup_steps` = 50 steps, then r_max rises linearly from 1 to `rmax` at step
`rmax_step` = 400 and d_max from 0 to `dmax` at `dmax_step` = 250. The step is num_batches_tracked,
the layer's count of training forward passes, so a resumed run continues the schedule.
"""

import math

import torch
from torch import Tensor

from bnlab.nn.batchnorm import batch_norm_train
from bnlab.nn.variant import BatchNormVariant, empty_batch, per_channel


def _ramp(step: Tensor, start: int, end: int) -> Tensor:
    """0 before `start`, rising linearly to 1 at `end`, then 1; a jump at `start` when end == start."""
    if end <= start:
        return (step >= start).to(step.dtype)
    return ((step - start) / (end - start)).clamp(0, 1)


class _BatchRenorm(BatchNormVariant):

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, device=None, dtype=None, *, bias: bool = True,
                 rmax: float = 3.0, dmax: float = 5.0, warmup_steps: int = 50, rmax_step: int = 400,
                 dmax_step: int = 250) -> None:
        name = type(self).__name__
        if not track_running_stats:
            raise ValueError(f"{name} corrects batch statistics towards the moving ones, so it needs them: "
                             "use track_running_stats=True (or BatchNorm for batch statistics only)")
        if not (math.isfinite(rmax) and math.isfinite(dmax) and rmax >= 1 and dmax >= 0):
            raise ValueError(f"{name} needs finite rmax >= 1 and dmax >= 0, got rmax={rmax!r}, dmax={dmax!r}; "
                             "rmax=1, dmax=0 is BatchNorm")
        if not 0 <= warmup_steps <= min(rmax_step, dmax_step):
            raise ValueError(f"{name} needs 0 <= warmup_steps <= rmax_step and dmax_step, got "
                             f"warmup_steps={warmup_steps}, rmax_step={rmax_step}, dmax_step={dmax_step}")
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype, bias=bias)
        self.rmax, self.dmax = float(rmax), float(dmax)
        self.warmup_steps, self.rmax_step, self.dmax_step = warmup_steps, rmax_step, dmax_step
        # The last training step's corrections, (C,) and detached: for tests and probes.
        self.r: Tensor | None = None
        self.d: Tensor | None = None

    def clip_limits(self, step: Tensor) -> tuple[Tensor, Tensor]:
        """(r_max, d_max) in force at training step `step` (0 for the first), as tensors on its device."""
        r_max = 1 + (self.rmax - 1) * _ramp(step, self.warmup_steps, self.rmax_step)
        d_max = self.dmax * _ramp(step, self.warmup_steps, self.dmax_step)
        return r_max, d_max

    def forward(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        self._check_input(input)
        if not self.training:
            return self._eval(input)
        self._check_batch_size(input)
        if input.numel() == 0:
            return empty_batch(self, input)
        dims = (0, *range(2, input.dim()))
        with torch.no_grad():  # r and d are constants to the gradient (Algorithm 1)
            r_max, d_max = self.clip_limits(per_channel(self.num_batches_tracked, input))
            batch_var, batch_mean = torch.var_mean(per_channel(input, input), dims, correction=0)  # (C,) each
            sigma_batch = torch.sqrt(batch_var + self.eps)
            sigma = torch.sqrt(per_channel(self.running_var, input) + self.eps)
            mu = per_channel(self.running_mean, input)
            r = torch.clamp(sigma_batch / sigma, 1 / r_max, r_max)  # (C,)
            d = torch.clamp((batch_mean - mu) / sigma, -d_max, d_max)  # (C,)
        # y = gamma * ((x - mu_B) / sigma_B * r + d) + beta is BatchNorm's output for the weight gamma * r
        # and the bias gamma * d + beta: one pass of BatchNorm's kernels, the gradient through gamma included.
        weight = r if self.weight is None else self.weight * r
        bias = d if self.weight is None else self.weight * d
        if self.bias is not None:
            bias = bias + self.bias
        output, mean, var = batch_norm_train(input, weight, bias, self.eps)
        self._update_running_stats(mean, var, input.numel() // input.shape[1], self._count_step())
        self.r, self.d = r, d
        return output

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, rmax={self.rmax}, dmax={self.dmax}, warmup_steps={self.warmup_steps}, "
                f"rmax_step={self.rmax_step}, dmax_step={self.dmax_step}")


class BatchRenorm1d(_BatchRenorm):
    r"""Batch Renormalization over a 2D (N, C) or 3D (N, C, L) input.

    .. math::

        \hat{x} = \frac{x - \mu_B}{\sigma_B} r + d, \quad y = \gamma \hat{x} + \beta, \quad
        r = \mathrm{clip}_{[1/r_{max}, r_{max}]}\left(\frac{\sigma_B}{\sigma}\right), \quad
        d = \mathrm{clip}_{[-d_{max}, d_{max}]}\left(\frac{\mu_B - \mu}{\sigma}\right)

    In training mu_B and sigma_B^2 (biased, plus eps) are taken per channel over N (and L); r and d carry
    no gradient; mu = running_mean, sigma = sqrt(running_var + eps), both updated afterwards as in
    BatchNorm. Eval mode normalizes with mu and sigma. r_max and d_max follow the warm-up schedule
    (see the module's docstring); rmax=1, dmax=0 is BatchNorm exactly.

    Args:
        num_features: C, the number of channels.
        eps, momentum, affine, bias: as for BatchNorm1d; track_running_stats must be True.
        rmax, dmax: the clip limits after the warm-up. Default: 3, 5.
        warmup_steps: training steps of plain BatchNorm (r = 1, d = 0). Default: 50.
        rmax_step, dmax_step: the steps at which the limits reach rmax and dmax. Default: 400, 250.

    Shape:
        Input (N, C) or (N, C, L); output the same shape.

    Example::

        >>> brn = BatchRenorm1d(100, warmup_steps=0, rmax_step=0, dmax_step=0)
        >>> y = brn(torch.randn(4, 100))
    """

    dim = 1


class BatchRenorm2d(_BatchRenorm):
    r"""Batch Renormalization over a 4D (N, C, H, W) input: BatchRenorm1d's equations, with mu_B and
    sigma_B taken per channel over N, H and W.

    Args:
        num_features: C, the number of channels.
        eps, momentum, affine, bias: as for BatchNorm2d; track_running_stats must be True.
        rmax, dmax, warmup_steps, rmax_step, dmax_step: as for BatchRenorm1d.

    Shape:
        Input (N, C, H, W); output the same shape and memory format.

    Example::

        >>> brn = BatchRenorm2d(64)
        >>> y = brn(torch.randn(2, 64, 8, 8))
    """

    dim = 2
