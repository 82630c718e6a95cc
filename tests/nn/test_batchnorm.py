"""bnlab's BatchNorm against its oracles: torch's own layer (float64, 1e-10), finite differences,
a float64 recomputation of the statistics, and torch's saved-tensor sizes."""

import inspect

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from bnlab.nn import BatchNorm1d, BatchNorm2d
from bnlab.nn import functional as bnf

TOL64 = {"atol": 1e-10, "rtol": 1e-10}
C = 5
# name -> input shape; channels_last is a 4-D input in that memory format
SHAPES = {"NC": (8, C), "NCL": (6, C, 7), "NCHW": (4, C, 3, 3), "channels_last": (4, C, 3, 3)}


def make_pair(shape, dtype=torch.float64, **kwargs):
    """(bnlab layer, torch layer) with identical random affine parameters."""
    ours_cls, torch_cls = ((BatchNorm2d, torch.nn.BatchNorm2d) if len(shape) == 4
                           else (BatchNorm1d, torch.nn.BatchNorm1d))
    ours, ref = ours_cls(shape[1], dtype=dtype, **kwargs), torch_cls(shape[1], dtype=dtype, **kwargs)
    with torch.no_grad():
        for name in ("weight", "bias"):
            if getattr(ref, name) is not None:
                getattr(ref, name).uniform_(0.5, 1.5)
                getattr(ours, name).copy_(getattr(ref, name))
    return ours, ref


def make_input(shape_name, dtype=torch.float64, offset=2.0):
    x = torch.randn(SHAPES[shape_name], dtype=dtype) * 3 + offset
    if shape_name == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def run_step(layer, x, grad_out):
    """Forward + backward on a fresh leaf copy of x; returns (y, dx, [dweight, dbias] where present)."""
    x = x.detach().clone().requires_grad_()
    layer.zero_grad(set_to_none=True)
    y = layer(x)
    y.backward(grad_out)
    grads = [p.grad for p in (layer.weight, layer.bias) if p is not None]
    return y, x.grad, grads


def assert_same_step(ours, ref, x):
    grad_out = torch.randn_like(x)
    y, dx, grads = run_step(ours, x, grad_out)
    y_ref, dx_ref, grads_ref = run_step(ref, x, grad_out)
    torch.testing.assert_close(y, y_ref, **TOL64)
    torch.testing.assert_close(dx, dx_ref, **TOL64)
    for grad, grad_ref in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(grad, grad_ref, **TOL64)
    assert y.stride() == y_ref.stride() and dx.stride() == dx_ref.stride()  # same memory format
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        ours_buf, ref_buf = getattr(ours, name), getattr(ref, name)
        assert (ours_buf is None) == (ref_buf is None)
        if ref_buf is not None:
            torch.testing.assert_close(ours_buf, ref_buf, **TOL64)


@pytest.mark.parametrize("shape_name", list(SHAPES))
@pytest.mark.parametrize("momentum", [0.1, None, 0.5])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("track_running_stats", [True, False])
def test_parity_with_torch_float64(shape_name, momentum, affine, track_running_stats):
    torch.manual_seed(0)
    kwargs = {"momentum": momentum, "affine": affine, "track_running_stats": track_running_stats}
    ours, ref = make_pair(SHAPES[shape_name], **kwargs)
    for _ in range(3):  # training steps: batch statistics, running-stat updates
        assert_same_step(ours, ref, make_input(shape_name))
    ours.eval()
    ref.eval()
    assert_same_step(ours, ref, make_input(shape_name))  # running statistics (or batch ones if untracked)

    # State dicts load both ways and give the same eval outputs.
    x = make_input(shape_name)
    fresh_ours, fresh_ref = make_pair(SHAPES[shape_name], **kwargs)
    fresh_ours.load_state_dict(ref.state_dict())
    fresh_ref.load_state_dict(ours.state_dict())
    for layer in (fresh_ours, fresh_ref):
        layer.eval()
    torch.testing.assert_close(fresh_ours(x), ref(x), **TOL64)
    torch.testing.assert_close(fresh_ref(x), ours(x), **TOL64)


def test_bias_false_matches_torch():
    ours, ref = make_pair((8, C), bias=False)
    assert ours.bias is None and list(ours.state_dict()) == list(ref.state_dict())
    assert_same_step(ours, ref, make_input("NC"))


@pytest.mark.parametrize("shape_name", ["NCL", "NCHW", "channels_last"])
def test_parity_with_two_step_channel_sums(monkeypatch, shape_name):
    monkeypatch.setattr(bnf, "TWO_STEP_SUM_MIN_NUMEL", 0)  # the path large inputs take
    ours, ref = make_pair(SHAPES[shape_name])
    for _ in range(2):
        assert_same_step(ours, ref, make_input(shape_name))


@pytest.mark.parametrize("x_format, grad_format", [(torch.channels_last, torch.contiguous_format),
                                                   (torch.contiguous_format, torch.channels_last)])
def test_memory_formats_follow_torch(x_format, grad_format):
    ours, ref = make_pair((4, C, 3, 3))
    x = make_input("NCHW").contiguous(memory_format=x_format)
    grad_out = torch.randn_like(x).contiguous(memory_format=grad_format)
    (y, dx, _), (y_ref, dx_ref, _) = run_step(ours, x, grad_out), run_step(ref, x, grad_out)
    assert y.stride() == y_ref.stride() and dx.stride() == dx_ref.stride()
    torch.testing.assert_close(dx, dx_ref, **TOL64)


def test_parameter_gradients_without_input_gradient():
    ours, ref = make_pair(SHAPES["NCL"])
    x = make_input("NCL")
    grad_out = torch.randn_like(x)
    for layer in (ours, ref):
        layer.bias.requires_grad_(False)
        layer(x).backward(grad_out)  # x needs no gradient: dx is skipped
    torch.testing.assert_close(ours.weight.grad, ref.weight.grad, **TOL64)
    assert ours.bias.grad is None


def test_constructor_repr_and_state_dict_match_torch():
    for ours_cls, torch_cls in ((BatchNorm1d, torch.nn.BatchNorm1d), (BatchNorm2d, torch.nn.BatchNorm2d)):
        assert inspect.signature(ours_cls.__init__) == inspect.signature(torch_cls.__init__)
        args = {"eps": 1e-3, "momentum": None, "affine": False, "track_running_stats": False}
        assert repr(ours_cls(7, **args)).split("(", 1)[1] == repr(torch_cls(7, **args)).split("(", 1)[1]
        assert repr(ours_cls(100)) == repr(torch_cls(100))
        assert list(ours_cls(7).state_dict()) == list(torch_cls(7).state_dict())
        assert not isinstance(ours_cls(7), torch.nn.modules.batchnorm._NormBase)
    assert repr(BatchNorm1d(100)) == (
        "BatchNorm1d(100, eps=1e-05, momentum=0.1, affine=True, bias=True, track_running_stats=True)")


def test_loads_state_dict_written_before_num_batches_tracked():
    state = torch.nn.BatchNorm1d(C).state_dict()
    del state["num_batches_tracked"]
    state._metadata[""]["version"] = 1
    layer = BatchNorm1d(C)
    layer.load_state_dict(state)
    assert layer.num_batches_tracked.item() == 0


def test_reset_running_stats_and_parameters():
    layer, _ = make_pair((8, C))
    layer(make_input("NC"))
    layer.reset_parameters()
    assert layer.num_batches_tracked.item() == 0 and torch.all(layer.running_var == 1)
    assert torch.all(layer.weight == 1) and torch.all(layer.bias == 0)


# -- gradients: finite differences and second order --------------------------------------

def functional_layer(layer):
    """f(x, weight, bias) running `layer` with the given parameters (gradcheck needs them as inputs)."""
    def f(x, weight, bias):
        return torch.func.functional_call(layer, {"weight": weight, "bias": bias}, (x,))
    return f


@pytest.mark.parametrize("shape", [(4, 3), (3, 2, 2, 2)])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("affine", [True, False])
def test_gradcheck_and_gradgradcheck(shape, training, affine):
    torch.manual_seed(0)
    cls = BatchNorm2d if len(shape) == 4 else BatchNorm1d
    layer = cls(shape[1], affine=affine, dtype=torch.float64, track_running_stats=not training)
    with torch.no_grad():  # eval mode uses these running statistics
        if layer.running_mean is not None:
            layer.running_mean.uniform_(-1, 1)
            layer.running_var.uniform_(0.5, 2)
    layer.train(training)
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    if affine:
        weight = torch.rand(shape[1], dtype=torch.float64).add_(0.5).requires_grad_()
        bias = torch.randn(shape[1], dtype=torch.float64, requires_grad=True)
        f, inputs = functional_layer(layer), (x, weight, bias)
    else:
        f, inputs = layer, (x,)
    assert torch.autograd.gradcheck(f, inputs)
    assert torch.autograd.gradgradcheck(f, inputs)


def test_hessian_vector_product_matches_torch():
    torch.manual_seed(0)
    ours, ref = make_pair((6, C, 4))
    x = make_input("NCL")
    probe, vector = torch.randn_like(x), torch.randn_like(x)

    def hvp(layer):
        xg = x.clone().requires_grad_()
        loss = (layer(xg) ** 2 * probe).sum()
        (grad,) = torch.autograd.grad(loss, xg, create_graph=True)
        return torch.autograd.grad((grad * vector).sum(), (xg, layer.weight, layer.bias))

    for ours_part, ref_part in zip(hvp(ours), hvp(ref), strict=True):
        torch.testing.assert_close(ours_part, ref_part, **TOL64)


def test_fast_backward_equals_reference_backward():
    torch.manual_seed(0)
    x = make_input("NCHW")
    dy, weight = torch.randn_like(x), torch.rand(C, dtype=torch.float64) + 0.5
    _, mean, _, invstd, scale = bnf.forward_kernel(x, weight, torch.zeros_like(weight), 1e-5)
    fast = bnf.backward_kernel(dy, x, mean, invstd, scale, need_dx=True)
    reference = bnf.backward_reference(dy, x, weight, 1e-5)
    for fast_part, reference_part in zip(fast, reference, strict=True):
        torch.testing.assert_close(fast_part, reference_part, **TOL64)


# -- numerics: large means, low precision, empty batches ---------------------------------

def test_variance_is_stable_for_large_mean():
    torch.manual_seed(0)
    x = torch.randn(256, 8, 16) + 1e4  # float32, mean 1e4, std 1 per channel
    layer = BatchNorm1d(8)
    y = layer(x)
    x64 = x.double()
    var64 = x64.var(dim=(0, 2), unbiased=False)
    torch.testing.assert_close(layer.batch_var.double(), var64, rtol=1e-3, atol=0)
    torch.testing.assert_close(layer.batch_mean.double(), x64.mean(dim=(0, 2)), rtol=1e-6, atol=0)
    # The float32 mean is off by ~5e-7 relative (5e-3 here); torch accumulates in double and is off
    # by ~6e-4. The output inherits that absolute error, which is harmless at |mean| / std ~ 1e4.
    y64 = (x64 - x64.mean(dim=(0, 2), keepdim=True)) / torch.sqrt(var64.view(1, -1, 1) + 1e-5)
    torch.testing.assert_close(y.double(), y64, rtol=0, atol=1e-2)


def test_float32_matches_torch():
    torch.manual_seed(0)
    ours, ref = make_pair((16, C, 6, 6), dtype=torch.float32)
    x = torch.randn(16, C, 6, 6) * 2 + 1
    grad_out = torch.randn_like(x)
    y, dx, grads = run_step(ours, x, grad_out)
    y_ref, dx_ref, grads_ref = run_step(ref, x, grad_out)
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(dx, dx_ref, atol=1e-5, rtol=1e-5)
    for grad, grad_ref in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(grad, grad_ref, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(ours.running_var, ref.running_var, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("input_dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("module_dtype", [torch.float32, "same"])
def test_low_precision_matches_torch(input_dtype, module_dtype):
    torch.manual_seed(0)
    module_dtype = input_dtype if module_dtype == "same" else module_dtype
    ours, ref = make_pair((32, C, 4, 4), dtype=module_dtype)
    x = (torch.randn(32, C, 4, 4) * 2 + 3).to(input_dtype)
    grad_out = torch.randn(x.shape).to(input_dtype)
    y, dx, grads = run_step(ours, x, grad_out)
    y_ref, dx_ref, grads_ref = run_step(ref, x, grad_out)
    assert y.dtype == dx.dtype == input_dtype and ours.weight.dtype == module_dtype
    assert ours.running_mean.dtype == module_dtype and grads[0].dtype == module_dtype
    low = {"atol": 2e-2, "rtol": 2e-2}
    torch.testing.assert_close(y, y_ref, **low)
    torch.testing.assert_close(dx, dx_ref, **low)
    for grad, grad_ref in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(grad, grad_ref, atol=0.5, rtol=2e-2)  # sums of 512 rounded terms
    torch.testing.assert_close(ours.running_mean, ref.running_mean, **low)
    torch.testing.assert_close(ours.running_var, ref.running_var, **low)
    assert ours.batch_mean.dtype == torch.float32  # statistics accumulate in float32


@pytest.mark.parametrize("shape", [(0, C), (0, C, 3), (2, C, 0), (0, C, 2, 2)])
@pytest.mark.parametrize("momentum", [0.1, None])
def test_empty_batch_matches_torch(shape, momentum):
    ours, ref = make_pair(shape, momentum=momentum)
    real_batch = torch.randn([4, C] + [size or 2 for size in shape[2:]], dtype=torch.float64) + 1
    for layer in (ours, ref):
        layer(real_batch)  # so that "unchanged running statistics" is not trivially 0 and 1
    x = torch.randn(shape, dtype=torch.float64)
    y, dx, grads = run_step(ours, x, torch.randn(shape, dtype=torch.float64))
    y_ref, dx_ref, grads_ref = run_step(ref, x, torch.randn(shape, dtype=torch.float64))
    assert y.shape == y_ref.shape == shape and dx.shape == dx_ref.shape
    for grad, grad_ref in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(grad, grad_ref)  # zeros
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(ours, name), getattr(ref, name), **TOL64)
    ours.eval()
    ref.eval()
    assert ours(x).shape == ref(x).shape == shape


# -- memory: saved tensors ----------------------------------------------------------------

def saved_bytes(layer, x):
    """Bytes autograd keeps alive between forward and backward of layer(x)."""
    total = 0

    def pack(tensor):
        nonlocal total
        total += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        layer(x.detach().requires_grad_())
    return total


@pytest.mark.parametrize("shape", [(64, 32), (16, 32, 8, 8)])
def test_saved_tensors_no_larger_than_torch(shape):
    ours, ref = make_pair(shape, dtype=torch.float32)
    x = torch.randn(shape)
    ours_bytes, ref_bytes = saved_bytes(ours, x), saved_bytes(ref, x)
    assert ours_bytes <= ref_bytes
    assert ours_bytes <= x.numel() * 4 + 8 * shape[1] * 4  # the input plus a few per-channel vectors


# -- errors a user can fix ----------------------------------------------------------------

@pytest.mark.parametrize("layer, x", [
    (BatchNorm1d(10), torch.randn(1, 10)),
    (BatchNorm1d(10), torch.randn(1, 10, 1)),
    (BatchNorm2d(10), torch.randn(1, 10, 1, 1)),
])
def test_one_value_per_channel_in_training_says_what_to_do(layer, x):
    with pytest.raises(ValueError, match=r"more than one value per channel") as error:
        layer(x)
    message = str(error.value)
    assert str(tuple(x.shape)) in message
    assert "use a batch larger than one" in message and "call .eval()" in message
    assert layer.num_batches_tracked.item() == 0  # a rejected batch leaves the state alone
    layer.eval()
    assert layer(x).shape == x.shape


def test_wrong_rank_names_expected_layout_and_shape():
    with pytest.raises(ValueError) as error:
        BatchNorm2d(4)(torch.randn(3, 4))
    assert str(error.value) == "BatchNorm2d expected 4D input (N, C, H, W), got 2D input of shape (3, 4)"
    with pytest.raises(ValueError, match=r"BatchNorm1d expected 2D input \(N, C\) or 3D input \(N, C, L\), "
                                         r"got 4D input of shape \(2, 4, 3, 3\)"):
        BatchNorm1d(4)(torch.randn(2, 4, 3, 3))


def test_wrong_channel_count_names_both():
    expected = r"BatchNorm1d\(10\) expected C=10 channels in dim 1, got 7 \(input of shape \(4, 7\)\)"
    with pytest.raises(ValueError, match=expected):
        BatchNorm1d(10)(torch.randn(4, 7))


def test_integer_input_names_dtype_and_fix():
    with pytest.raises(TypeError, match=r"floating-point input, got dtype torch\.int64.*\.float\(\)"):
        BatchNorm1d(3)(torch.ones(4, 3, dtype=torch.long))


# -- own math, and the statistics a study reads -------------------------------------------

FORBIDDEN = ("batch_norm", "batchnorm")


class OpLog(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("shape_name", ["NC", "channels_last"])
@pytest.mark.parametrize("training", [True, False])
def test_no_torch_batch_norm_kernel_runs(monkeypatch, shape_name, training):
    def refuse(*args, **kwargs):
        raise AssertionError("bnlab called one of torch's batch-norm functions")

    for module, name in [(torch.nn.functional, "batch_norm"), (torch, "batch_norm"),
                         (torch, "native_batch_norm"), (torch, "_native_batch_norm_legit"),
                         (torch, "cudnn_batch_norm"), (torch, "miopen_batch_norm"),
                         (torch, "_batch_norm_impl_index")]:
        if hasattr(module, name):
            monkeypatch.setattr(module, name, refuse)
    layer, _ = make_pair(SHAPES[shape_name])
    layer.train(training)
    x = make_input(shape_name).requires_grad_()
    with OpLog() as log:
        y = layer(x)
        (grad,) = torch.autograd.grad((y ** 2).sum(), x, create_graph=True)
        grad.sum().backward()  # second order too
    assert log.ops and not [op for op in log.ops if any(word in op.lower() for word in FORBIDDEN)]


def test_batch_statistics_exposed_after_training_forward():
    torch.manual_seed(0)
    layer = BatchNorm2d(C)
    assert layer.batch_mean is None and layer.batch_var is None
    x = torch.randn(8, C, 4, 4) * 2 + 1
    layer(x.requires_grad_())
    torch.testing.assert_close(layer.batch_mean, x.detach().mean(dim=(0, 2, 3)))
    torch.testing.assert_close(layer.batch_var, x.detach().var(dim=(0, 2, 3), unbiased=False))
    assert layer.batch_mean.shape == (C,) and not layer.batch_var.requires_grad
    before = layer.batch_mean
    layer.eval()
    layer(torch.randn(2, C, 4, 4))  # eval with running statistics: nothing new to report
    assert layer.batch_mean is before


def test_training_a_small_network_matches_torch():
    """Swapping the layer into a model changes nothing: same losses and weights after SGD steps."""
    torch.manual_seed(0)

    def model(norm):
        return torch.nn.Sequential(torch.nn.Linear(6, 8), norm(8), torch.nn.ReLU(), torch.nn.Linear(8, 3))

    ours, ref = model(BatchNorm1d).double(), model(torch.nn.BatchNorm1d).double()
    ref.load_state_dict(ours.state_dict())
    optimizers = [torch.optim.SGD(net.parameters(), lr=0.1) for net in (ours, ref)]
    for _ in range(3):
        x, target = torch.randn(16, 6, dtype=torch.float64), torch.randn(16, 3, dtype=torch.float64)
        for net, optimizer in zip((ours, ref), optimizers, strict=True):
            optimizer.zero_grad()
            torch.nn.functional.mse_loss(net(x), target).backward()
            optimizer.step()
    for (name, ours_value), ref_value in zip(ours.state_dict().items(), ref.state_dict().values(), strict=True):
        torch.testing.assert_close(ours_value, ref_value, **TOL64, msg=name)


@pytest.mark.parametrize("make", [
    lambda: torch.randn(4, 8, dtype=torch.float64).t(),  # (8, 4) transposed
    lambda: torch.randn(6, 5, 3, dtype=torch.float64).transpose(1, 2),  # (6, 3, 5)
    lambda: torch.randn(2, 3, 4, 5, dtype=torch.float64).permute(0, 1, 3, 2),  # spatial dims swapped
    lambda: torch.randn(2, 4, 5, 3, dtype=torch.float64).permute(0, 3, 1, 2),  # channels-last
    lambda: torch.randn(4, 6, 5, 5, dtype=torch.float64)[:, ::2],  # a strided slice
    lambda: torch.randn(4, 3, 5, 5, dtype=torch.float64).permute(2, 1, 0, 3),  # batch and height swapped
])
@pytest.mark.parametrize("training", [True, False])
def test_a_non_contiguous_input_gives_torch_s_output_layout_and_values(make, training):
    x = make()
    ours = (BatchNorm1d if x.dim() < 4 else BatchNorm2d)(x.shape[1], dtype=torch.float64).train(training)
    theirs = (torch.nn.BatchNorm1d if x.dim() < 4 else torch.nn.BatchNorm2d)(x.shape[1], dtype=torch.float64)
    theirs.train(training)
    x_ours, x_theirs = x.clone().requires_grad_(), x.clone().requires_grad_()
    y_ours, y_theirs = ours(x_ours), theirs(x_theirs)
    assert y_ours.stride() == y_theirs.stride()
    torch.testing.assert_close(y_ours, y_theirs, rtol=1e-12, atol=1e-12)
    dy = torch.randn_like(y_theirs)
    y_ours.backward(dy)
    y_theirs.backward(dy)
    torch.testing.assert_close(x_ours.grad, x_theirs.grad, rtol=1e-10, atol=1e-12)
