"""BatchNorm's two kernels, on the fastest path that takes the tensor.

On a CUDA tensor, Triton kernels (`triton.py`, where Triton is installed; `BNLAB_TRITON=0` switches them
off); on a CPU float32 tensor, compiled C++ loops (`compiled.py`; `BNLAB_NATIVE=0` switches them off);
otherwise, and always as the reference they are tested against, the plain PyTorch path of
`bnlab.nn.functional`.
"""

from torch import Tensor

from bnlab.nn import functional
from bnlab.nn.kernels import compiled


def _triton(x: Tensor):
    """The Triton kernels module if it takes x (a CUDA tensor, Triton installed), else None."""
    if not x.is_cuda:
        return None
    from bnlab.nn.kernels import triton  # imported on first CUDA use only: CPU runs never load Triton

    return triton if triton.supports(x) else None


def forward(x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float):
    """functional.forward_kernel on the fastest path: (y, mean, var, invstd, scale)."""
    if (kernels := _triton(x)) is not None:
        return kernels.forward(x, weight, bias, eps)
    if (layout := compiled.accepts(x, weight, bias)) is not None:
        return compiled.forward(x, weight, bias, eps, layout)
    return functional.forward_kernel(x, weight, bias, eps)


def backward(dy: Tensor, x: Tensor, mean: Tensor, invstd: Tensor, scale: Tensor, need_dx: bool):
    """functional.backward_kernel on the fastest path: (dx or None, grad_weight, grad_bias)."""
    if (kernels := _triton(x)) is not None:
        return kernels.backward(dy, x, mean, invstd, scale, need_dx)
    same_layout = dy.stride() == x.stride() and dy.dtype == x.dtype and dy.is_cpu  # (any dense layout)
    if same_layout and (layout := compiled.accepts(x, mean, invstd, scale)) is not None:
        return compiled.backward(dy, x, mean, invstd, scale, need_dx, layout)
    return functional.backward_kernel(dy, x, mean, invstd, scale, need_dx)
