r"""BatchNorm followed by a random shift of each unit's distribution, re-drawn every training step
(Santurkar, Tsipras, Ilyas & Madry, 2018, "How Does Batch Normalization Help Optimization?",
https://arxiv.org/abs/1805.11604, §2.1, "noisy" BatchNorm).

The paper injects noise of non-zero mean and non-unit variance after each BatchNorm, its distribution
changing at every step, so that the layers above see an input distribution that keeps moving (internal
covariate shift, made large on purpose). Here each unit j (a feature, or a channel of a CNN) gets at
step t a scale s and a shift m, the same for every sample of the batch:

    y = s * BN(x) + m,   s = noise_std ** u,  u ~ U(-1, 1),   m ~ U(-noise_mean, noise_mean)

so the unit's output has mean s * beta + m and standard deviation s * gamma: at the defaults, a standard
deviation anywhere from 2/3 to 1.5 times what BatchNorm made it and a mean moved by up to 0.5, afresh at
every step. log s and m have mean 0, so eval mode, which adds no noise, sees the typical training
distribution. s and m carry no gradient. The paper perturbs each sample's activations with i.i.d. noise
whose distribution changes every step; here the samples of a step share their unit's s and m, so that
what moves is the distribution itself (the shift under study), without a per-sample jitter on top.

Reproducible. Step t's noise comes from a generator seeded by (seed, t), drawn on the CPU in float64
(the same noise on every device) and cast to the input's dtype. The seed and the count of draws are the
layer's extra state, so they are saved in its state dict and a resumed run continues the same noise.
"""

import math

import torch
from torch import Tensor

from bnlab.nn.batchnorm import batch_norm_train
from bnlab.nn.variant import BatchNormVariant, empty_batch, per_channel

_MASK64 = (1 << 64) - 1


def _splitmix64(value: int) -> int:
    """A 64-bit integer hash (Steele et al. 2014): nearby (seed, step) pairs give unrelated seeds."""
    value = (value + 0x9E3779B97F4A7C15) & _MASK64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK64
    return value ^ (value >> 31)


class _NoisyBatchNorm(BatchNormVariant):

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, device=None, dtype=None, *, bias: bool = True,
                 noise_mean: float = 0.5, noise_std: float = 1.5, seed: int = 0) -> None:
        if not (math.isfinite(noise_mean) and math.isfinite(noise_std) and noise_mean >= 0 and noise_std >= 1):
            raise ValueError(f"{type(self).__name__} needs finite noise_mean >= 0 and noise_std >= 1, got "
                             f"noise_mean={noise_mean!r}, noise_std={noise_std!r}; noise_mean=0, noise_std=1 "
                             "is BatchNorm")
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype, bias=bias)
        self.noise_mean, self.noise_std = float(noise_mean), float(noise_std)
        self.noise_seed = seed % (1 << 63)  # an int64, as the state dict stores it
        self.noise_step = 0  # noise draws so far; the next one is seeded by (noise_seed, noise_step)
        self.replaying = False  # a probe's copy: repeat the last draw instead of drawing (`replay_noise_of`)
        # The last training step's noise, (C,) in the statistics' dtype: for tests and probes.
        self.noise_scale: Tensor | None = None
        self.noise_shift: Tensor | None = None

    def draw_noise(self, step: int) -> tuple[Tensor, Tensor]:
        """Step `step`'s (scale, shift): (C,) float64 on the CPU, the same on every call."""
        generator = torch.Generator().manual_seed(_splitmix64(_splitmix64(self.noise_seed) + step))
        u = torch.rand(2, self.num_features, generator=generator, dtype=torch.float64) * 2 - 1  # U(-1, 1)
        return self.noise_std ** u[0], self.noise_mean * u[1]

    def replay_noise_of(self, live: "_NoisyBatchNorm") -> None:
        """Make this copy's training passes use `live`'s last draw, the noise of the step it trained, without
        drawing: the extra passes of a probe (bnlab.telemetry.passes) see the noise the step saw."""
        self.noise_seed, self.noise_step, self.replaying = live.noise_seed, live.noise_step, True

    def forward(self, input: Tensor) -> Tensor:
        if not self.training:  # no noise: BatchNorm on the running statistics (or the batch's if untracked)
            return super().forward(input)
        self._check_variant_input(input)
        self._check_batch_size(input)
        draw = self.noise_step - 1 if self.replaying else self.noise_step
        scale, shift = (per_channel(t.to(input.device, non_blocking=True), input) for t in self.draw_noise(draw))
        self.noise_step += 0 if self.replaying else 1
        if input.numel() == 0:
            return empty_batch(self, input)
        # y = scale * (gamma * x_hat + beta) + shift is BatchNorm's output for the weight scale * gamma and
        # the bias scale * beta + shift: one pass of BatchNorm's kernels, the gradient through gamma included.
        weight = scale if self.weight is None else scale * self.weight
        bias = shift if self.bias is None else scale * self.bias + shift
        output, mean, var = batch_norm_train(input, weight, bias, self.eps)
        self._update_running_stats(mean, var, input.numel() // input.shape[1], self._count_step())
        self.noise_scale, self.noise_shift = scale, shift
        return output

    def get_extra_state(self) -> Tensor:
        return torch.tensor([self.noise_seed, self.noise_step], dtype=torch.long)

    def set_extra_state(self, state: Tensor) -> None:
        self.noise_seed, self.noise_step = (int(value) for value in state)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, noise_mean={self.noise_mean}, noise_std={self.noise_std}"


class NoisyBatchNorm1d(_NoisyBatchNorm):
    r"""BatchNorm1d followed by per-unit noise re-drawn every training step, over (N, C) or (N, C, L).

    .. math::

        y = s_t \left(\gamma \frac{x - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}} + \beta\right) + m_t,
        \quad s_t = \mathrm{noise\_std}^{u_t}, \; u_t \sim U(-1, 1), \; m_t \sim U(-\mathrm{noise\_mean},
        \mathrm{noise\_mean})

    s_t and m_t are (C,), drawn at every training forward pass t from a generator seeded by (seed, t) and
    constant to the gradient. The running statistics are BatchNorm's, of x. Eval mode is BatchNorm's,
    without noise.

    Args:
        num_features: C, the number of channels.
        eps, momentum, affine, track_running_stats, bias: as for BatchNorm1d.
        noise_mean: the largest shift of a unit's mean. Default: 0.5.
        noise_std: the largest factor on a unit's standard deviation (>= 1). Default: 1.5.
        seed: seeds the noise; give each layer its own. Default: 0.

    Shape:
        Input (N, C) or (N, C, L); output the same shape.

    Example::

        >>> nbn = NoisyBatchNorm1d(100, seed=1)
        >>> y = nbn(torch.randn(20, 100))
    """

    dim = 1


class NoisyBatchNorm2d(_NoisyBatchNorm):
    r"""BatchNorm2d followed by per-channel noise re-drawn every training step, over (N, C, H, W):
    NoisyBatchNorm1d's equations, each channel's s_t and m_t shared by all its positions.

    Args:
        num_features: C, the number of channels.
        eps, momentum, affine, track_running_stats, bias: as for BatchNorm2d.
        noise_mean, noise_std, seed: as for NoisyBatchNorm1d.

    Shape:
        Input (N, C, H, W); output the same shape and memory format.

    Example::

        >>> nbn = NoisyBatchNorm2d(64, seed=1)
        >>> y = nbn(torch.randn(8, 64, 8, 8))
    """

    dim = 2
