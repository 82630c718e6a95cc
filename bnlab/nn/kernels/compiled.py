"""BatchNorm of CPU float32 tensors in one compiled call a direction (`batchnorm.cpp` beside this file).

For small tensors the dozen ops of the PyTorch path cost more in per-op overhead than in arithmetic;
one loop reads and writes each tensor the fewest times a two-pass BatchNorm can. Same results as
`bnlab.nn.functional.forward_kernel` / `backward_kernel`, the reference they are tested against.
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path

import torch
from torch import Tensor

from bnlab.nn.kernels import build

P, N, INT = build.POINTER, build.INT64, build.INT
SIGNATURES = {
    "bnlab_bn_forward": ([P, N, N, N, N, N, N, P, P, build.DOUBLE, P, P, P, P, P], None),
    "bnlab_bn_backward": ([P, P, N, N, N, N, N, N, P, P, P, INT, P, P, P], None),
}
# Above this many elements, with more than one torch thread, torch's multi-threaded ops beat the
# single-threaded compiled loops; below it, one compiled call beats the per-op overhead of a dozen ops
# (docs/performance.md).
COMPILED_MAX_NUMEL = 1 << 17


def library() -> ctypes.CDLL | None:
    """The compiled loops, or None where they are switched off (BNLAB_NATIVE=0) or cannot be built. Called
    several times a layer a step: the switch is read each time, the rest once."""
    return _library() if build.enabled() else None


@functools.cache
def _library() -> ctypes.CDLL | None:
    return build.load((Path(__file__).with_name("batchnorm.cpp"),), SIGNATURES, "BatchNorm uses its PyTorch path")


def _layout(x: Tensor) -> tuple[int, ...] | None:
    """(N, C, S, stride N, stride C, stride S) of a dense x that the loops read (channels-first
    contiguous, (N, C), or 4-D channels-last), else None."""
    n, c = x.shape[0], x.shape[1]
    s = x.numel() // max(n * c, 1)
    if x.is_contiguous():
        return (n, c, s, c * s, s, 1) if x.dim() > 2 or c == 1 else (n, c, 1, c, 1, 1)
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
        return n, c, s, c * s, 1, c
    return None


def accepts(x: Tensor, *others: Tensor | None) -> tuple[int, ...] | None:
    """x's layout if the compiled loops take x (a non-empty CPU float32 tensor in a layout they read, with
    contiguous float32 (C,) per-channel tensors `others`) and they are built, else None."""
    if x.dtype != torch.float32 or not x.is_cpu or x.numel() == 0 or x.dim() not in (2, 3, 4):
        return None
    if x.numel() > COMPILED_MAX_NUMEL and torch.get_num_threads() > 1:
        return None
    if any(t is not None and (t.dtype != torch.float32 or not t.is_cpu or not t.is_contiguous()) for t in others):
        return None
    layout = _layout(x)
    return layout if layout is not None and library() is not None else None


def _address(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def forward(x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float, layout: tuple[int, ...]):
    """As functional.forward_kernel, for an x that `accepts` (its `layout`)."""
    y = torch.empty_like(x)
    mean, var, invstd, scale = torch.empty(4, x.shape[1], dtype=torch.float32).unbind()
    library().bnlab_bn_forward(x.data_ptr(), *layout, _address(weight), _address(bias), float(eps), y.data_ptr(),
                               mean.data_ptr(), var.data_ptr(), invstd.data_ptr(), scale.data_ptr())
    return y, mean, var, invstd, scale


def backward(dy: Tensor, x: Tensor, mean: Tensor, invstd: Tensor, scale: Tensor, need_dx: bool,
             layout: tuple[int, ...]):
    """As functional.backward_kernel, for an x that `accepts` and a dy in x's layout."""
    dx = torch.empty_like(x) if need_dx else None
    grad_weight, grad_bias = torch.empty(2, x.shape[1], dtype=torch.float32).unbind()
    library().bnlab_bn_backward(dy.data_ptr(), x.data_ptr(), *layout, mean.data_ptr(), invstd.data_ptr(),
                                scale.data_ptr(), int(need_dx), _address(dx), grad_weight.data_ptr(),
                                grad_bias.data_ptr())
    return dx, grad_weight, grad_bias
