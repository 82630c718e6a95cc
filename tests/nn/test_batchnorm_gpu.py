"""bnlab's BatchNorm on a CUDA device against torch's (cuDNN) layer: the CPU parity suite's checks, on the GPU.

Every test runs twice: with the Triton kernels (the default on CUDA where Triton is installed) and on
the plain PyTorch path (BNLAB_TRITON=0). Marked `gpu`: deselected by default and in CI (which has no
GPU); run with `pytest -m gpu` where a GPU is present.
"""

import pytest
import torch

from bnlab.nn import BatchNorm1d, BatchNorm2d, kernels

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
TOL = {torch.float64: {"atol": 1e-10, "rtol": 1e-10}, torch.float32: {"atol": 1e-4, "rtol": 1e-4},
       torch.bfloat16: {"atol": 5e-2, "rtol": 5e-2}}
SHAPES = [(256, 1024), (60, 100), (32, 7, 9), (16, 64, 8, 8), (8, 16, 5, 5)]
LAYOUTS = [(shape, False) for shape in SHAPES] + [(shape, True) for shape in SHAPES if len(shape) == 4]


@pytest.fixture(autouse=True, params=["triton", "pytorch"])
def backend(request):
    """Run the test on the Triton kernels, then on the PyTorch path."""
    from bnlab.nn.kernels import triton as triton_kernels

    if request.param == "triton" and triton_kernels.triton is None:
        pytest.fail("Triton is not installed: the CUDA path would silently be the PyTorch one")
    enabled = triton_kernels.ENABLED
    triton_kernels.ENABLED = request.param == "triton"
    yield request.param
    triton_kernels.ENABLED = enabled


def _pair(shape, dtype, momentum=0.1, affine=True):
    ours_cls, torch_cls = ((BatchNorm2d, torch.nn.BatchNorm2d) if len(shape) == 4
                           else (BatchNorm1d, torch.nn.BatchNorm1d))
    module_dtype = torch.float32 if dtype == torch.bfloat16 else dtype
    ours = ours_cls(shape[1], momentum=momentum, affine=affine, device="cuda", dtype=module_dtype)
    ref = torch_cls(shape[1], momentum=momentum, affine=affine, device="cuda", dtype=module_dtype)
    if affine:
        with torch.no_grad():
            ref.weight.uniform_(0.5, 1.5)
            ref.bias.uniform_(-0.5, 0.5)
            ours.weight.copy_(ref.weight)
            ours.bias.copy_(ref.bias)
    return ours, ref


def _step(layer, x, grad_out):
    x = x.detach().clone().requires_grad_()
    layer.zero_grad(set_to_none=True)
    y = layer(x)
    y.backward(grad_out)
    return y, x.grad, [p.grad for p in (layer.weight, layer.bias) if p is not None]


def _assert_as_accurate_as_torch(ours, ref, exact, tol):
    """Within `tol` of torch's layer, or (low precision) at least as close to the float64 oracle as torch."""
    try:
        torch.testing.assert_close(ours, ref, **tol)
    except AssertionError:
        if ours.dtype == torch.float64:
            raise
        ours_error = (ours.double() - exact).abs().max().item()
        torch_error = (ref.double() - exact).abs().max().item()
        assert ours_error <= 1.5 * torch_error + 1e-6, (ours_error, torch_error)


@pytest.mark.parametrize("shape,channels_last", LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("momentum", [0.1, None])
def test_train_and_eval_parity_on_cuda(shape, dtype, momentum, channels_last):
    torch.manual_seed(0)
    ours, ref = _pair(shape, dtype, momentum)
    oracle = _pair(shape, torch.float64, momentum)[1]  # torch's layer in float64 on the same rounded input
    with torch.no_grad():
        if ref.weight is not None:
            oracle.weight.copy_(ref.weight)
            oracle.bias.copy_(ref.bias)
    tol = TOL[dtype]
    for _ in range(3):  # several train steps: outputs, gradients, running statistics
        x = (torch.randn(shape, device="cuda", dtype=torch.float64) * 3 + 2).to(dtype)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        grad_out = torch.randn_like(x)
        results = [_step(layer, x, grad_out) for layer in (ours, ref)]
        exact = _step(oracle, x.double(), grad_out.double())
        for got, want, truth in zip(_flat(results[0]), _flat(results[1]), _flat(exact), strict=True):
            _assert_as_accurate_as_torch(got, want, truth, tol)
    buffer_tol = TOL[torch.float64] if dtype == torch.float64 else TOL[torch.float32]  # buffers are float32+
    torch.testing.assert_close(ours.running_mean, ref.running_mean, **buffer_tol)
    torch.testing.assert_close(ours.running_var, ref.running_var, **buffer_tol)
    assert int(ours.num_batches_tracked) == int(ref.num_batches_tracked) == 3
    ours.eval(), ref.eval(), oracle.eval()
    results = [_step(layer, x, grad_out) for layer in (ours, ref)]
    exact = _step(oracle, x.double(), grad_out.double())
    for got, want, truth in zip(_flat(results[0])[:2], _flat(results[1])[:2], _flat(exact)[:2], strict=True):
        _assert_as_accurate_as_torch(got, want, truth, tol)


def _flat(result):
    y, dx, grads = result
    return [y, dx, *grads]


@pytest.mark.parametrize("shape", [(6, 3), (4, 3, 2, 2)])
@pytest.mark.parametrize("training", [True, False])
def test_gradcheck_and_gradgradcheck_on_cuda(shape, training):
    torch.manual_seed(0)
    ours, _ = _pair(shape, torch.float64)
    ours.train(training)
    if not training:
        ours.running_mean.uniform_(-1, 1)
        ours.running_var.uniform_(0.5, 2)
    x = torch.randn(shape, device="cuda", dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b: ours(x), (x, ours.weight, ours.bias))
    assert torch.autograd.gradgradcheck(lambda x, w, b: ours(x), (x, ours.weight, ours.bias))


def test_stable_variance_for_large_mean_on_cuda():
    x = torch.randn(512, 8, device="cuda", dtype=torch.float64) + 1e4
    layer = BatchNorm1d(8, device="cuda")
    layer(x.float())
    expected = x.var(dim=0, unbiased=False).float()
    torch.testing.assert_close(layer.batch_var.float(), expected, rtol=1e-3, atol=0)


def test_the_layer_runs_the_chosen_path(backend):
    """On CUDA the layer hands over to Triton, unless disabled; never on CPU."""
    from bnlab.nn.kernels import triton as triton_kernels

    x = torch.randn(8, 4, device="cuda")
    assert kernels._triton(x) is (triton_kernels if backend == "triton" else None)
    assert kernels._triton(x.cpu()) is None
