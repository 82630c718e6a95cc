"""bnlab's BatchNorm1d/BatchNorm2d: drop-in replacements for torch's layers, on bnlab's own math.

The hierarchy follows torch.nn.modules.batchnorm: _NormBase owns parameters and buffers,
_BatchNorm.forward decides between batch and running statistics, and the public classes only
check the input rank. Constructor, parameters, buffers, state-dict keys and repr match torch's,
so either layer loads the other's state dict and torch's layer serves as the test oracle.
"""

import torch
from torch import Tensor, nn

from bnlab.nn import functional, kernels, sync


class BatchNormFunction(torch.autograd.Function):
    """Batch-statistics BatchNorm with a hand-written backward.

    Saves only x plus per-channel tensors (mean, invstd, weight * invstd), no full-size x_hat.
    Outputs (y, mean, var); mean and var are (C,) and non-differentiable.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        y, mean, var, invstd, scale = kernels.forward(x, weight, bias, eps)
        ctx.save_for_backward(x, weight, mean, invstd, scale)
        ctx.eps = eps
        ctx.mark_non_differentiable(mean, var)
        ctx.set_materialize_grads(False)  # mean and var never get gradients; skip zero-filling them
        return y, mean, var

    @staticmethod
    def backward(ctx, dy, _grad_mean, _grad_var):
        if dy is None:  # only mean/var were used downstream
            return None, None, None, None
        x, weight, mean, invstd, scale = ctx.saved_tensors
        need_dx, need_weight, need_bias, _ = ctx.needs_input_grad
        if torch.is_grad_enabled():  # create_graph=True: build a differentiable graph
            dx, grad_weight, grad_bias = functional.backward_reference(dy, x, weight, ctx.eps)
        else:
            dx, grad_weight, grad_bias = kernels.backward(dy, x, mean, invstd, scale, need_dx)
        # Autograd casts each gradient to its input's dtype (float32 statistics, bf16 parameters).
        return dx, grad_weight if need_weight else None, grad_bias if need_bias else None, None


def batch_norm_train(x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float):
    """Normalize with batch statistics. Returns (y, mean, var): mean/var biased, shape (C,)."""
    if x.numel() == 0:  # an empty batch has no statistics; torch returns an empty output
        return functional.empty_output(x, weight, bias), None, None
    return BatchNormFunction.apply(x, weight, bias, eps)



class _NormBase(nn.Module):
    """Parameters (weight, bias), buffers (running_mean, running_var, num_batches_tracked) and their reset.

    `sync` (set by convert_sync_batchnorm, as torch's constructor has no such argument) takes training
    batch statistics over the processes of `process_group` (None: the whole torch.distributed world; see
    bnlab.nn.sync); without an initialized group of two or more processes the layer is plain BatchNorm.
    """

    _version = 2  # torch's state-dict version: version 2 added num_batches_tracked

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True, device=None, dtype=None,
                 *, bias: bool = True) -> None:
        factory_kwargs = {"device": device, "dtype": dtype}
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.affine = affine
        self.track_running_stats = track_running_stats
        self.sync = False
        self.process_group = None
        if affine:
            self.weight = nn.Parameter(torch.empty(num_features, **factory_kwargs))
        else:
            self.register_parameter("weight", None)
        if affine and bias:
            self.bias = nn.Parameter(torch.empty(num_features, **factory_kwargs))
        else:
            self.register_parameter("bias", None)
        if track_running_stats:
            self.register_buffer("running_mean", torch.zeros(num_features, **factory_kwargs))
            self.register_buffer("running_var", torch.ones(num_features, **factory_kwargs))
            self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long, device=device))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)
        # Statistics of the last batch normalized with batch statistics, for probes: (C,), detached.
        self.batch_mean: Tensor | None = None
        self.batch_var: Tensor | None = None
        self.reset_parameters()

    def reset_running_stats(self) -> None:
        if self.track_running_stats:
            self.running_mean.zero_()
            self.running_var.fill_(1)
            self.num_batches_tracked.zero_()

    def reset_parameters(self) -> None:
        self.reset_running_stats()
        if self.weight is not None:
            nn.init.ones_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def _check_input_dim(self, input: Tensor) -> None:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
                f"bias={self.bias is not None}, track_running_stats={self.track_running_stats}"
                + (", sync=True" if self.sync else ""))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs) -> None:
        # State dicts written before version 2 lack num_batches_tracked; start it at 0 as torch does.
        version = local_metadata.get("version", None)
        key = prefix + "num_batches_tracked"
        if (version is None or version < 2) and self.track_running_stats and key not in state_dict:
            state_dict[key] = torch.tensor(0, dtype=torch.long)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)


def _dense_like_torch(x: Tensor) -> Tensor:
    """x in the memory layout torch's batch norm gives its output: channels-last if a 4-D x is channels-last,
    else contiguous. Dense inputs in either layout pass untouched; any other layout is copied once, so the layer
    stays a drop-in replacement (an output that kept a transposed input's strides would not be)."""
    layout = torch.channels_last if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) \
        else torch.contiguous_format
    return x if x.is_contiguous(memory_format=layout) else x.contiguous(memory_format=layout)


class _BatchNorm(_NormBase):
    """The forward: batch statistics in training (or when nothing is tracked), running statistics in eval."""

    def forward(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        self._check_input(input)
        input = _dense_like_torch(input)
        use_batch_stats = self.training or (self.running_mean is None and self.running_var is None)
        # Only training communicates: eval mode (even on batch statistics) stays local.
        synchronized = self.sync and self.training and sync.is_synchronized(self.process_group)
        if use_batch_stats and not synchronized:  # a synchronized layer checks the global batch instead
            self._check_batch_size(input)

        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average over all batches so far
                factor = 1.0 / float(self.num_batches_tracked)

        if not use_batch_stats:
            return functional.batch_norm_eval(input, self.running_mean, self.running_var,
                                              self.weight, self.bias, self.eps)
        if synchronized:
            output, mean, var, count = sync.sync_batch_norm_train(input, self.weight, self.bias, self.eps,
                                                                  self.process_group, type(self).__name__)
        else:
            output, mean, var = batch_norm_train(input, self.weight, self.bias, self.eps)
            count = input.numel() // input.shape[1]
        if mean is not None:  # None for an empty batch, which leaves all statistics as they were
            if self.training and self.track_running_stats:
                functional.update_running_stats(self.running_mean, self.running_var, mean, var, count, factor)
            # plain attributes (no parameters, buffers or modules): set without nn.Module.__setattr__'s checks,
            # which cost a small layer's step a measurable share of its time
            self.__dict__.update(batch_mean=mean, batch_var=var)
        return output

    def _check_input(self, input: Tensor) -> None:
        name = type(self).__name__
        if not input.is_floating_point():
            raise TypeError(f"{name} expected a floating-point input, got dtype {input.dtype}; "
                            f"convert it first, e.g. x.float()")
        if input.shape[1] != self.num_features:
            raise ValueError(f"{name}({self.num_features}) expected C={self.num_features} channels in dim 1, "
                             f"got {input.shape[1]} (input of shape {tuple(input.shape)}); "
                             f"build the layer with num_features={input.shape[1]} or fix the input")

    def _check_batch_size(self, input: Tensor) -> None:
        # A single value per channel has zero variance: the output would be all beta.
        if input.numel() // input.shape[1] != 1:
            return
        if self.track_running_stats:
            fix = "use a batch larger than one, or call .eval() to normalize with the running statistics"
        else:
            fix = "use a batch larger than one (track_running_stats=False: eval mode uses batch statistics too)"
        raise ValueError(f"{type(self).__name__} needs more than one value per channel to compute batch "
                         f"statistics, got input of shape {tuple(input.shape)}; {fix}")


def convert_sync_batchnorm(module: nn.Module, process_group=None) -> nn.Module:
    """Switch every bnlab BatchNorm layer in `module` to batch statistics over `process_group`, in place.

    Returns `module`. Unlike torch.nn.SyncBatchNorm.convert_sync_batchnorm, the layers stay bnlab's own
    (same class, forward, parameters and buffers); torch's layers are left alone.
    """
    for layer in module.modules():
        if isinstance(layer, _BatchNorm):
            layer.sync, layer.process_group = True, process_group
    return module


class BatchNorm1d(_BatchNorm):
    r"""Batch Normalization over a 2D (N, C) or 3D (N, C, L) input (Ioffe & Szegedy, 2015,
    https://arxiv.org/abs/1502.03167).

    .. math::

        y = \gamma \frac{x - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}} + \beta

    Mean and biased variance are taken per channel over N (and L) in training; the running
    estimates (updated with the unbiased variance) are used in eval mode.

    Args:
        num_features: C, the number of channels.
        eps: added to the variance for numerical stability. Default: 1e-5.
        momentum: weight of the new batch in the running estimates; None for a cumulative
            average. Default: 0.1.
        affine: learn gamma (weight) and beta (bias). Default: True.
        track_running_stats: keep running estimates; if False, eval mode uses batch statistics.
            Default: True.
        bias: learn beta when affine (keyword-only). Default: True.

    Shape:
        Input (N, C) or (N, C, L); output the same shape.

    Example::

        >>> bn = BatchNorm1d(100)
        >>> y = bn(torch.randn(20, 100))
    """

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() not in (2, 3):
            raise ValueError(f"BatchNorm1d expected 2D input (N, C) or 3D input (N, C, L), "
                             f"got {input.dim()}D input of shape {tuple(input.shape)}")


class BatchNorm2d(_BatchNorm):
    r"""Batch Normalization over a 4D (N, C, H, W) input (Ioffe & Szegedy, 2015,
    https://arxiv.org/abs/1502.03167).

    .. math::

        y = \gamma \frac{x - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}} + \beta

    Mean and biased variance are taken per channel over N, H and W in training; the running
    estimates (updated with the unbiased variance) are used in eval mode. Channels-last inputs
    give channels-last outputs.

    Args:
        num_features: C, the number of channels.
        eps: added to the variance for numerical stability. Default: 1e-5.
        momentum: weight of the new batch in the running estimates; None for a cumulative
            average. Default: 0.1.
        affine: learn gamma (weight) and beta (bias). Default: True.
        track_running_stats: keep running estimates; if False, eval mode uses batch statistics.
            Default: True.
        bias: learn beta when affine (keyword-only). Default: True.

    Shape:
        Input (N, C, H, W); output the same shape.

    Example::

        >>> bn = BatchNorm2d(64)
        >>> y = bn(torch.randn(8, 64, 32, 32))
    """

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() != 4:
            raise ValueError(f"BatchNorm2d expected 4D input (N, C, H, W), "
                             f"got {input.dim()}D input of shape {tuple(input.shape)}")
