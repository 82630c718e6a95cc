r"""Normalization without batch statistics: Group Normalization (Wu & He, 2018,
https://arxiv.org/abs/1803.08494) and Layer Normalization (Ba, Kiros & Hinton, 2016,
https://arxiv.org/abs/1607.06450) as its one-group case.

Each sample is normalized with statistics of its own features, so the output of a sample does not
depend on the rest of the batch, training and eval modes compute the same thing, and a batch of one
is fine: the contrast to BatchNorm at small batches. Written in plain PyTorch arithmetic (no aten
group/layer-norm kernel), tested against torch's F.group_norm and F.layer_norm.
"""

import torch
from torch import Tensor, nn

_REDUCED_PRECISION = (torch.float16, torch.bfloat16)


def group_norm(x: Tensor, groups: int, weight: Tensor | None, bias: Tensor | None, eps: float) -> Tensor:
    """y = gamma * (x - E[x]) / sqrt(Var[x] + eps) + beta, E and biased Var per sample and group of channels.

    x is (N, C, *) in any memory format; weight and bias are (C,); half inputs use float32 statistics.
    """
    xc = x.float() if x.dtype in _REDUCED_PRECISION else x
    grouped = xc.unflatten(1, (groups, -1))  # (N, G, C/G, *), a view in any memory format
    dims = tuple(range(2, grouped.dim()))
    mean = grouped.mean(dims, keepdim=True)  # (N, G, 1, ...)
    centered = grouped - mean
    var = centered.square().mean(dims, keepdim=True)  # (N, G, 1, ...)
    x_hat = (centered * torch.rsqrt(var + eps)).flatten(1, 2)  # (N, C, *)
    channel = (-1,) + (1,) * (x.dim() - 2)  # (C,) viewed as (C, 1, ...) against (N, C, *)
    if weight is not None:
        x_hat = x_hat * weight.view(channel)
    if bias is not None:
        x_hat = x_hat + bias.view(channel)
    return x_hat.to(x.dtype)


class GroupNorm(nn.Module):
    r"""Group Normalization over an (N, C, *) input.

    .. math::

        y = \gamma \frac{x - \mathrm{E}_g[x]}{\sqrt{\mathrm{Var}_g[x] + \epsilon}} + \beta

    The channels are split into `groups` groups of C / groups consecutive channels; E_g and Var_g
    (biased) are taken per sample over one group's channels and all positions. gamma and beta are
    per channel. Training and eval modes are the same; there are no running statistics. State dict
    keys (weight, bias) match torch.nn.GroupNorm's.

    Args:
        num_channels: C, the number of channels.
        groups: the number of groups; must divide C. Default: 8.
        eps: added to the variance for numerical stability. Default: 1e-5.
        affine: learn gamma (weight) and beta (bias). Default: True.

    Shape:
        Input (N, C, *); output the same shape and memory format.

    Example::

        >>> gn = GroupNorm(64, groups=8)
        >>> y = gn(torch.randn(2, 64, 8, 8))
    """

    def __init__(self, num_channels: int, groups: int = 8, eps: float = 1e-5, affine: bool = True,
                 device=None, dtype=None) -> None:
        super().__init__()
        if groups < 1 or num_channels % groups:
            raise ValueError(f"{type(self).__name__} cannot split C={num_channels} channels into groups={groups} "
                             f"equal groups; use a number of groups that divides {num_channels} "
                             f"(e.g. {_divisor_near(num_channels, groups)})")
        self.num_groups, self.num_channels, self.eps, self.affine = groups, num_channels, eps, affine
        factory_kwargs = {"device": device, "dtype": dtype}
        if affine:
            self.weight = nn.Parameter(torch.ones(num_channels, **factory_kwargs))
            self.bias = nn.Parameter(torch.zeros(num_channels, **factory_kwargs))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def reset_parameters(self) -> None:
        if self.affine:
            nn.init.ones_(self.weight)
            nn.init.zeros_(self.bias)

    def forward(self, input: Tensor) -> Tensor:
        self._check_input(input)
        return group_norm(input, self.num_groups, self.weight, self.bias, self.eps)

    def _check_input(self, input: Tensor) -> None:
        name, shape = type(self).__name__, tuple(input.shape)
        if input.dim() < 2:
            raise ValueError(f"{name} expected an input (N, C, *) of 2 or more dims, got {input.dim()}D input of "
                             f"shape {shape}")
        if not input.is_floating_point():
            raise TypeError(f"{name} expected a floating-point input, got dtype {input.dtype}; "
                            "convert it first, e.g. x.float()")
        if input.shape[1] != self.num_channels:
            raise ValueError(f"{name}({self.num_channels}) expected C={self.num_channels} channels in dim 1, got "
                             f"{input.shape[1]} (input of shape {shape}); build the layer with "
                             f"{input.shape[1]} channels or fix the input")
        if input.shape[0] and input[0].numel() == self.num_groups:
            raise ValueError(f"{name} needs more than one value per sample and group to normalize, got input "
                             f"of shape {shape} in {self.num_groups} group(s); use fewer groups or a wider input")

    def extra_repr(self) -> str:
        return f"{self.num_groups}, {self.num_channels}, eps={self.eps}, affine={self.affine}"


class LayerNorm(GroupNorm):
    r"""Layer Normalization over an (N, C, *) input: GroupNorm with one group.

    .. math::

        y = \gamma \frac{x - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}} + \beta

    E and Var (biased) are taken per sample over all of its C (and spatial) values; gamma and beta
    are per channel. On (N, C) this is torch.nn.LayerNorm(C), state dict included; on (N, C, H, W) it
    is F.layer_norm over (C, H, W) with per-channel gamma and beta, i.e. torch.nn.GroupNorm(1, C).
    Training and eval modes are the same.

    Args:
        num_features: C, the number of channels.
        eps: added to the variance for numerical stability. Default: 1e-5.
        elementwise_affine: learn gamma (weight) and beta (bias). Default: True.

    Shape:
        Input (N, C, *); output the same shape and memory format.

    Example::

        >>> ln = LayerNorm(100)
        >>> y = ln(torch.randn(1, 100))  # a batch of one is fine
    """

    def __init__(self, num_features: int, eps: float = 1e-5, elementwise_affine: bool = True,
                 device=None, dtype=None) -> None:
        super().__init__(num_features, 1, eps, elementwise_affine, device, dtype)
        self.normalized_shape = (num_features,)
        self.elementwise_affine = elementwise_affine

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}"


def _divisor_near(channels: int, groups: int) -> int:
    """The divisor of `channels` closest to `groups` (the smaller one on a tie)."""
    return min((d for d in range(1, channels + 1) if channels % d == 0), key=lambda d: (abs(d - groups), d))
