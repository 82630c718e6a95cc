"""The BatchNorm arithmetic in plain PyTorch: batch statistics, the train/eval kernels, running statistics.

Everything is plain PyTorch tensor arithmetic; no aten batch-norm kernel (F.batch_norm,
torch.native_batch_norm, cudnn, ...) is called. This is the readable reference: the fast paths in
`bnlab.nn.kernels` (Triton on CUDA, compiled C++ loops for CPU float32) compute the same
forward_kernel and backward_kernel and are tested against these.
Shapes: x is (N, C, *) in any memory format; per-channel tensors are (C,) and get viewed as
(C, 1, ...) where they broadcast against x.

Speed on CPU comes from touching full-size memory as rarely as possible. Each direction
allocates one full-size buffer and reuses it: the forward's holds (x - mean)^2 for the variance,
then the output; the backward's holds dy * x for its reduction, then dx. Per-channel
coefficients are folded first so that each output is one or two fused multiply-adds
(y = x * scale + shift, dx = dy * scale + x * b + c).
"""

import torch
from torch import Tensor

# Half-precision inputs are normalized with float32 statistics, as torch does.
_REDUCED_PRECISION = (torch.float16, torch.bfloat16)
# From this many elements on, channels-first tensors are reduced in two steps (see _reduce_channels).
TWO_STEP_SUM_MIN_NUMEL = 1 << 20


def _reduce_dims(x: Tensor) -> tuple[int, ...]:
    """Every dim but the channel dim: (0, 2, 3, ...)."""
    return (0, *range(2, x.dim()))


def _reduce_channels(t: Tensor, op: str) -> Tensor:
    """torch.sum or torch.mean ("sum"/"mean") over every dim but the channel dim: (N, C, *) -> (C,).

    Large channels-first tensors are reduced over their contiguous spatial rows first: one
    reduction over (0, 2, 3) ran ~2x slower at (128, 256, 8, 8); below ~1M elements the extra
    op costs more than it saves.
    """
    reduce = getattr(torch, op)
    if t.dim() > 2 and t.numel() >= TWO_STEP_SUM_MIN_NUMEL and t.is_contiguous():
        return reduce(reduce(t.view(t.shape[0], t.shape[1], -1), 2), 0)  # (N, C, spatial) -> (N, C) -> (C,)
    return reduce(t, _reduce_dims(t))


def _bcast(t: Tensor, x: Tensor) -> Tensor:
    """A (C,) tensor viewed as (C, 1, ...) so that it broadcasts against x of shape (N, C, *)."""
    return t if x.dim() == 2 else t.view(-1, *([1] * (x.dim() - 2)))


def _shift(x: Tensor, base: Tensor, t1: Tensor, t2: Tensor) -> Tensor:
    """Per-channel base - t1 * t2, laid out for a fast x * scale + shift.

    CPU elementwise loops are vectorized only when at most one operand is constant along x's
    innermost memory dim. For channels-first inputs with spatial dims both scale and shift would
    be (the loop ran ~4x slower), so the shift is written out over the spatial dims instead:
    (C, *spatial) values, 1/N of x.
    """
    base = _bcast(base, x)
    if x.dim() > 2 and x.stride(1) != 1 and x.shape[0] > 1:
        base = base.expand(x.shape[1:])  # (C, *spatial)
    return torch.addcmul(base, _bcast(t1, x), _bcast(t2, x), value=-1)


def _compute_dtype(x: Tensor) -> torch.dtype:
    return torch.float32 if x.dtype in _REDUCED_PRECISION else x.dtype


def _to(t: Tensor, dtype: torch.dtype) -> Tensor:
    return t if t.dtype == dtype else t.to(dtype)


def _scale_shift(x: Tensor, mean: Tensor, invstd: Tensor, weight: Tensor | None, bias: Tensor | None):
    """Fold y = weight * (x - mean) * invstd + bias into y = x * scale + shift."""
    scale = invstd if weight is None else _to(invstd * weight, invstd.dtype)  # (C,)
    shift = _shift(x, torch.zeros_like(mean) if bias is None else _to(bias, mean.dtype), mean, scale)
    return scale, shift


def forward_kernel(x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float):
    """Normalize x with its own batch statistics.

    Returns (y, mean, var, invstd, scale), each but y (C,) in the compute dtype; var is biased
    and scale = weight * invstd.
    """
    xc = _to(x, _compute_dtype(x))
    mean = _reduce_channels(xc, "mean")  # (C,)
    # Two passes (mean first, then squared deviations) keep the variance exact for inputs whose
    # mean is large against their spread; E[x^2] - E[x]^2 would cancel catastrophically.
    y = torch.sub(xc, _bcast(mean, x))  # (N, C, *) x - mean; this buffer becomes the output
    var = _reduce_channels(y.square_(), "mean")  # (C,)
    invstd = torch.rsqrt(var + eps)
    scale, shift = _scale_shift(x, mean, invstd, weight, bias)
    torch.addcmul(shift, xc, _bcast(scale, x), out=y)  # one fused multiply-add per element
    return _to(y, x.dtype), mean, var, invstd, scale


def backward_kernel(dy: Tensor, x: Tensor, mean: Tensor, invstd: Tensor, scale: Tensor, need_dx: bool):
    """Gradients of forward_kernel for fixed (saved) statistics; not differentiable itself.

    With x_hat = (x - mean) * invstd, M values per channel and scale = weight * invstd,
      dx = scale * (dy - mean(dy) - x_hat * mean(dy * x_hat)),
    regrouped into per-channel coefficients as dx = dy * scale + x * b + c so that the
    full-size work is two fused multiply-adds into one buffer.
    """
    dtype = _compute_dtype(x)
    dyc, xc = _to(dy, dtype), _to(x, dtype)
    count = x.numel() // x.shape[1]
    grad_bias = _reduce_channels(dyc, "sum")  # (C,) sum(dy)
    # sum(dy * (x - mean)) as sum(dy * x) - mean * sum(dy) saves a full pass; its rounding error
    # grows with |mean| / std just as the float32 mean's own does (measured within 2x of torch's).
    dx = torch.mul(xc, dyc)  # (N, C, *) laid out like x; this buffer becomes dx below
    grad_weight = torch.addcmul(_reduce_channels(dx, "sum"), mean, grad_bias, value=-1).mul_(invstd)  # sum(dy * x_hat)
    if not need_dx:
        return None, grad_weight, grad_bias
    k = scale * (-1 / count)
    b = torch.mul(k, invstd).mul_(grad_weight)  # -scale * invstd * mean(dy * x_hat)
    c = _shift(x, k * grad_bias, b, mean)  # -scale * mean(dy) - b * mean
    torch.addcmul(c, xc, _bcast(b, x), out=dx)
    dx.addcmul_(dyc, _bcast(scale, x))
    return _to(dx, x.dtype), grad_weight, grad_bias


def backward_reference(dy: Tensor, x: Tensor, weight: Tensor | None, eps: float):
    """The same gradients written out of differentiable ops, statistics recomputed from x.

    Used when the backward itself is differentiated (create_graph=True, e.g. Hessian-vector
    products): the saved mean and invstd are constants to autograd, so the graph must rebuild
    them from x to get the second derivative through the statistics right.
    """
    dtype = _compute_dtype(x)
    dy, x = _to(dy, dtype), _to(x, dtype)
    dims = _reduce_dims(x)
    x_mu = x - x.mean(dims, keepdim=True)
    invstd = torch.rsqrt((x_mu * x_mu).mean(dims, keepdim=True) + eps)  # (1, C, 1, ...)
    x_hat = x_mu * invstd
    grad_bias = dy.sum(dims, keepdim=True)
    grad_weight = (dy * x_hat).sum(dims, keepdim=True)
    count = x.numel() // x.shape[1]
    scale = invstd if weight is None else invstd * weight.view_as(invstd)
    dx = scale * (dy - grad_bias / count - x_hat * (grad_weight / count))
    return dx, grad_weight.view(-1), grad_bias.view(-1)


def batch_norm_eval(x, running_mean, running_var, weight, bias, eps: float) -> Tensor:
    """Normalize with the running statistics: one multiply-add per element, autograd does the rest."""
    invstd = torch.rsqrt(_to(running_var, _compute_dtype(x)) + eps)
    scale, shift = _scale_shift(x, running_mean, invstd, weight, bias)
    return _to(torch.addcmul(shift, x, _bcast(scale, x)), x.dtype)


def update_running_stats(running_mean: Tensor, running_var: Tensor, mean: Tensor, var: Tensor,
                         count: int, factor: float) -> None:
    """running <- (1 - factor) * running + factor * batch, with the unbiased batch variance."""
    if running_mean.dtype == mean.dtype:
        running_mean.lerp_(mean, factor)
    else:  # e.g. bfloat16 buffers, float32 statistics
        running_mean.mul_(1 - factor).add_(mean, alpha=factor)
    running_var.mul_(1 - factor).add_(var, alpha=factor * count / (count - 1))


def empty_output(x: Tensor, weight: Tensor | None, bias: Tensor | None) -> Tensor:
    """An empty y still wired to weight and bias so that their gradients come out as zeros."""
    y = x.clone()
    if weight is not None:
        y = y * _bcast(_to(weight, x.dtype), x)
    if bias is not None:
        y = y + _bcast(_to(bias, x.dtype), x)
    return y
