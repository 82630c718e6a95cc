"""bnlab's compiled BatchNorm loops (bnlab/nn/kernels/batchnorm.cpp, CPU float32) against torch's float64 batch norm and
against the PyTorch path they replace (BNLAB_NATIVE=0), in every layout they read; and when they step aside."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bnlab.nn import kernels
from bnlab.nn.kernels import compiled

LAYOUTS = {  # name: (shape, memory format)
    "NC": ((48, 37), torch.contiguous_format),
    "N1": ((9, 1), torch.contiguous_format),
    "NCL": ((6, 5, 11), torch.contiguous_format),
    "NCHW": ((7, 6, 5, 3), torch.contiguous_format),
    "NHWC": ((7, 6, 5, 3), torch.channels_last),
    "NHWC, one channel": ((4, 1, 3, 3), torch.channels_last),
}


@pytest.fixture(autouse=True)
def compiled_loops(monkeypatch):
    monkeypatch.delenv("BNLAB_NATIVE", raising=False)
    assert compiled.library() is not None, "the compiled loops did not build (see the log's warning)"


def _inputs(shape, memory_format, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=g) * 3 + 2).contiguous(memory_format=memory_format)
    dy = torch.randn(shape, generator=g).contiguous(memory_format=memory_format)
    weight, bias = torch.rand(shape[1], generator=g) + 0.5, torch.randn(shape[1], generator=g)
    return x, dy, weight, bias


def _kernels(x, dy, weight, bias):
    y, mean, var, invstd, scale = kernels.forward(x, weight, bias, 1e-5)
    dx, grad_weight, grad_bias = kernels.backward(dy, x, mean, invstd, scale, True)
    return {"y": y, "mean": mean, "var": var, "dx": dx, "grad_weight": grad_weight, "grad_bias": grad_bias}


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("affine", [True, False])
def test_compiled_kernels_match_torch_in_float64_and_the_pytorch_path(layout, affine, monkeypatch):
    shape, memory_format = LAYOUTS[layout]
    x, dy, weight, bias = _inputs(shape, memory_format)
    if not affine:
        weight = bias = None
    assert compiled.accepts(x, weight, bias) is not None  # this test covers the compiled loops
    ours = _kernels(x, dy, weight, bias)
    assert ours["y"].stride() == x.stride() and ours["dx"].stride() == x.stride()

    xr = x.double().requires_grad_()
    wr = None if weight is None else weight.double().requires_grad_()
    br = None if bias is None else bias.double().requires_grad_()
    yr = F.batch_norm(xr, None, None, wr, br, training=True, eps=1e-5)
    yr.backward(dy.double())
    dims = [0, *range(2, x.dim())]
    reference = {"y": yr, "mean": x.double().mean(dims), "var": x.double().var(dims, unbiased=False), "dx": xr.grad}
    if affine:
        reference.update(grad_weight=wr.grad, grad_bias=br.grad)
    for name, expected in reference.items():
        torch.testing.assert_close(ours[name].double(), expected.detach(), rtol=2e-6, atol=2e-6, msg=name)

    monkeypatch.setenv("BNLAB_NATIVE", "0")
    assert compiled.accepts(x, weight, bias) is None
    pytorch_path = _kernels(x, dy, weight, bias)
    for name in ours:
        torch.testing.assert_close(ours[name], pytorch_path[name], rtol=1e-5, atol=1e-5, msg=name)


def test_the_variance_stays_exact_for_a_large_mean():
    x = torch.randn(256, 8) + 1e4  # float32: mean 1e4, spread 1
    _, mean, var, _, _ = kernels.forward(x, None, None, 1e-5)
    torch.testing.assert_close(var.double(), x.double().var(0, unbiased=False), rtol=1e-6, atol=0)
    torch.testing.assert_close(mean.double(), x.double().mean(0), rtol=1e-7, atol=0)


def test_other_inputs_take_the_pytorch_path(monkeypatch):
    x = torch.randn(8, 4, 3, 3)
    assert compiled.accepts(x.double()) is None  # float64: exact to 1e-10 on the reference path
    assert compiled.accepts(x[:, :, :, :2]) is None  # not dense
    assert compiled.accepts(x.permute(0, 2, 1, 3)) is None  # a layout the loops do not read
    assert compiled.accepts(torch.randn(4, 3, 2, 2, 2)) is None  # 5-D
    assert compiled.accepts(x, torch.rand(4).double()) is None  # float64 weight
    big = torch.empty(compiled.COMPILED_MAX_NUMEL + 1, 1)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)  # large tensors: torch's threads beat one compiled loop
        assert compiled.accepts(big) is None
        torch.set_num_threads(1)
        assert compiled.accepts(big) is not None
    finally:
        torch.set_num_threads(threads)


def test_dy_in_another_layout_than_x_is_still_right():
    x, dy, weight, bias = _inputs((5, 4, 3, 3), torch.channels_last)
    y, mean, var, invstd, scale = kernels.forward(x, weight, bias, 1e-5)
    dx, grad_weight, grad_bias = kernels.backward(dy.contiguous(), x, mean, invstd, scale, True)
    expected = kernels.backward(dy, x, mean, invstd, scale, True)
    for ours, reference in zip((dx, grad_weight, grad_bias), expected, strict=True):
        torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-6)


def test_both_directions_run_compiled_in_every_layout(monkeypatch):
    """Counted at the library: a channels-last dy with x's strides takes the compiled backward too."""
    calls = {"bnlab_bn_forward": 0, "bnlab_bn_backward": 0}
    library = compiled.library()

    class Counting:
        def __getattr__(self, name):
            calls[name] = calls.get(name, 0) + 1
            return getattr(library, name)

    monkeypatch.setattr(compiled, "library", Counting)
    for shape, memory_format in LAYOUTS.values():
        x, dy, weight, bias = _inputs(shape, memory_format)
        _kernels(x, dy, weight, bias)
    assert calls["bnlab_bn_forward"] == calls["bnlab_bn_backward"] == len(LAYOUTS)


def test_statistics_are_float32_whatever_the_default_dtype():
    x, dy, weight, bias = _inputs((16, 4, 3, 3), torch.channels_last)
    expected = _kernels(x, dy, weight, bias)
    default = torch.get_default_dtype()
    try:
        torch.set_default_dtype(torch.float64)
        ours = _kernels(x, dy, weight, bias)
    finally:
        torch.set_default_dtype(default)
    for name, value in ours.items():
        assert value.dtype == torch.float32, name
        torch.testing.assert_close(value, expected[name], rtol=0, atol=0, msg=name)
