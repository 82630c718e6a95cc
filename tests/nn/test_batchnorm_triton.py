"""The Triton kernels (bnlab/nn/triton_kernels.py) against torch's batch norm in float64 and bnlab's PyTorch path.

On a CUDA machine the kernels run compiled on the GPU. Without one they run in Triton's interpreter
on CPU tensors (TRITON_INTERPRET=1, set before the kernels are defined): the same kernel code, index
arithmetic, masks and reductions, executed with numpy. `make setup` installs Triton for this; where it
is missing the module is skipped.
"""

import importlib
import os

import pytest
import torch
import torch.nn.functional as F

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu":  # read as Triton is imported and as the kernels are defined: set first, and left set
    os.environ["TRITON_INTERPRET"] = "1"
pytest.importorskip("triton", reason="Triton is not installed (make setup installs it)")
tk = importlib.import_module("bnlab.nn.kernels.triton")

from bnlab.nn import functional  # noqa: E402

TOL = {torch.float64: 1e-10, torch.float32: 1e-5, torch.bfloat16: 2e-2}
# (shape, channels_last): channels inner (2-D, channels-last) and spatial inner (3-D, 4-D), with
# partial row, channel and spatial blocks.
LAYOUTS = [((60, 100), False), ((37, 5), False), ((6, 7, 9), False), ((5, 6, 7, 3), False), ((5, 6, 7, 3), True),
           ((3, 2, 9, 11), False)]


@pytest.fixture(params=["one split", "many splits"])
def splits(request, monkeypatch):
    """Default tiles, or tiles of 64 elements, so that rows are split over many programs, each over
    several tiles, and partials loaded 32 at a time, so that the apply kernels merge them in chunks."""
    if request.param == "many splits":
        monkeypatch.setattr(tk, "TILE", 64)
        monkeypatch.setattr(tk, "MAX_BLOCK_S", 32)
        monkeypatch.setattr(tk, "MERGE_TILE", 32)
    return request.param


def _inputs(shape, dtype, channels_last, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * 3 + 2).to(dtype)
    dy = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
    c = shape[1]
    param_dtype = torch.float32 if dtype == torch.bfloat16 else dtype
    w = (torch.rand(c, generator=g, dtype=torch.float64) + 0.5).to(param_dtype)
    b = torch.randn(c, generator=g, dtype=torch.float64).to(param_dtype)
    x, dy, w, b = (t.to(DEVICE) for t in (x, dy, w, b))
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, dy, w, b


def _oracle(x, dy, w, b, eps):
    """torch's own batch norm in float64 on the same (rounded) values: y, dx, grad_weight, grad_bias, mean, var."""
    x64, w64, b64 = (None if t is None else t.detach().to(torch.float64, copy=True).requires_grad_() for t in (x, w, b))
    y = F.batch_norm(x64, None, None, w64, b64, training=True, eps=eps)
    y.backward(dy.double())
    dims = (0, *range(2, x.dim()))
    return (y.detach(), x64.grad, None if w is None else w64.grad, None if b is None else b64.grad,
            x64.detach().mean(dims), x64.detach().var(dims, unbiased=False))


def _close(got, want, dtype, scale=1.0):
    err = (got.double() - want).abs().max().item()
    bound = TOL[dtype] * scale * max(1.0, want.abs().max().item())
    assert err <= bound, (err, bound)


@pytest.mark.parametrize("shape,channels_last", LAYOUTS)
@pytest.mark.parametrize("dtype,affine,splits", [
    (torch.float64, True, "one split"), (torch.float32, True, "one split"), (torch.bfloat16, True, "one split"),
    (torch.float32, False, "one split"),
    # The split logic does not depend on the dtype: two cover it (the interpreter is slow).
    (torch.float64, True, "many splits"), (torch.float32, False, "many splits")], indirect=["splits"])
def test_forward_and_backward_match_torch_in_float64(shape, channels_last, dtype, affine, splits):
    if splits == "many splits" and shape == (37, 5):  # the structure this case is here for: merges in chunks
        (_, block_c, _), _, (_, num_splits) = tk._blocks((37, 5, 1), 4, torch.device(DEVICE))
        assert num_splits > tk._merge_block(num_splits, block_c) > 1
    x, dy, w, b = _inputs(shape, dtype, channels_last)
    if not affine:
        w = b = None
    y, mean, var, invstd, scale = tk.forward(x, w, b, 1e-5)
    dx, grad_w, grad_b = tk.backward(dy, x, mean, invstd, scale, need_dx=True)
    want_y, want_dx, want_w, want_b, want_mean, want_var = _oracle(x, dy, w, b, 1e-5)

    assert y.dtype == dx.dtype == dtype and y.stride() == x.stride() and dx.stride() == x.stride()
    assert mean.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    _close(mean, want_mean, torch.float64 if dtype == torch.float64 else torch.float32)
    _close(var, want_var, torch.float64 if dtype == torch.float64 else torch.float32)
    torch.testing.assert_close(invstd.double(), torch.rsqrt(var.double() + 1e-5), rtol=1e-6, atol=0)
    _close(y, want_y, dtype)
    _close(dx, want_dx, dtype, scale=4.0)
    _close(grad_b, want_b if affine else dy.double().sum((0, *range(2, x.dim()))), dtype, scale=4.0)
    if affine:
        _close(grad_w, want_w, dtype, scale=4.0)
        torch.testing.assert_close(scale.double(), (w.double() * invstd.double()), rtol=1e-6, atol=0)


@pytest.mark.parametrize("shape,channels_last", LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_same_results_as_the_pytorch_path(shape, channels_last, dtype):
    """The kernels and functional.py's PyTorch reference agree to rounding, output by output."""
    x, dy, w, b = _inputs(shape, dtype, channels_last, seed=1)
    ours = tk.forward(x, w, b, 1e-3)
    ref = _pytorch_path(functional.forward_kernel, x, w, b, 1e-3)
    tol = {"rtol": 1e-12, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-5}
    for got, want in zip(ours, ref, strict=True):
        torch.testing.assert_close(got, want, **tol)
    grads = tk.backward(dy, x, ours[1], ours[3], ours[4], need_dx=True)
    ref_grads = _pytorch_path(functional.backward_kernel, dy, x, ref[1], ref[3], ref[4], True)
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want, **tol)


def _pytorch_path(fn, *args):
    """Call a functional.py kernel with the Triton hand-over off (matters on CUDA only)."""
    enabled, tk.ENABLED = tk.ENABLED, False
    try:
        return fn(*args)
    finally:
        tk.ENABLED = enabled


def test_weight_and_bias_gradients_without_dx(splits):
    x, dy, w, b = _inputs((9, 4, 5, 5), torch.float64, False)
    y, mean, var, invstd, scale = tk.forward(x, w, b, 1e-5)
    dx, grad_w, grad_b = tk.backward(dy, x, mean, invstd, scale, need_dx=False)
    _, _, want_w, want_b, _, _ = _oracle(x, dy, w, b, 1e-5)
    assert dx is None
    torch.testing.assert_close(grad_w, want_w, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(grad_b, want_b, rtol=1e-10, atol=1e-10)


def test_gradient_in_another_layout_than_the_input(splits):
    """dy may come back channels-first for a channels-last x (or be a strided view): dx follows x."""
    x, dy, w, b = _inputs((4, 6, 5, 5), torch.float64, channels_last=True)
    y, mean, var, invstd, scale = tk.forward(x, w, b, 1e-5)
    wide = torch.randn(4, 6, 5, 10, dtype=torch.float64, device=DEVICE)
    for grad in (dy.contiguous(), wide[..., ::2]):
        dx, grad_w, grad_b = tk.backward(grad, x, mean, invstd, scale, need_dx=True)
        want = _oracle(x, grad, w, b, 1e-5)
        assert dx.stride() == x.stride()
        torch.testing.assert_close(dx, want[1], rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(grad_w, want[2], rtol=1e-10, atol=1e-10)


def test_non_dense_input_is_normalized_correctly():
    """A strided view (every other column) is copied dense first: the output is still right."""
    base = torch.randn(20, 16, dtype=torch.float64, device=DEVICE) * 2 + 1
    x = base[:, ::2]
    y, *_ = tk.forward(x, None, None, 1e-5)
    torch.testing.assert_close(y, F.batch_norm(x, None, None, training=True, eps=1e-5), rtol=1e-10, atol=1e-10)


def test_variance_stays_exact_for_a_large_mean(splits):
    """Chan's merge of per-tile (mean, M2) keeps float32 variance as accurate as the two-pass PyTorch path."""
    x64 = torch.randn(512, 8, dtype=torch.float64, device=DEVICE) * 1e-2 + 1e4
    x = x64.float()
    exact = x.double().var(0, unbiased=False)
    _, _, var, _, _ = tk.forward(x, None, None, 1e-5)
    _, _, ref_var, _, _ = _pytorch_path(functional.forward_kernel, x, None, None, 1e-5)
    ours_err = ((var.double() - exact).abs() / exact).max().item()
    ref_err = ((ref_var.double() - exact).abs() / exact).max().item()
    assert ours_err <= max(2 * ref_err, 1e-4), (ours_err, ref_err)

