"""Ghost BatchNorm against its oracles: bnlab's BatchNorm applied ghost batch by ghost batch (float64,
values and gradients), a float64 recomputation of the running statistics, BatchNorm itself when the ghost
batch is the whole batch, and finite differences."""

import pytest
import torch
from norm_checks import assert_gradchecks, step

from bnlab.nn import BatchNorm1d, BatchNorm2d, GhostBatchNorm1d, GhostBatchNorm2d

TOL64 = {"atol": 1e-12, "rtol": 1e-12}
C = 3
SHAPES = {"NC": (12, C), "NCL": (12, C, 5), "NCHW": (12, C, 3, 2), "channels_last": (12, C, 3, 2)}


def make_input(shape_name, dtype=torch.float64):
    x = torch.randn(SHAPES[shape_name], dtype=dtype) * 2 + 1.5
    return x.contiguous(memory_format=torch.channels_last) if shape_name == "channels_last" else x


def make_layers(shape, ghost_batch_size, dtype=torch.float64, **kwargs):
    """(ghost layer, bnlab BatchNorm) of the same rank with the same random affine parameters."""
    ghost_cls, bn_cls = (GhostBatchNorm2d, BatchNorm2d) if len(shape) == 4 else (GhostBatchNorm1d, BatchNorm1d)
    ghost = ghost_cls(shape[1], ghost_batch_size, dtype=dtype, **kwargs)
    bn = bn_cls(shape[1], dtype=dtype, **kwargs)
    with torch.no_grad():
        for name in ("weight", "bias"):
            if getattr(ghost, name) is not None:
                getattr(ghost, name).uniform_(0.5, 1.5)
                getattr(bn, name).copy_(getattr(ghost, name))
    return ghost, bn


def chunked_oracle_statistics(x, ghost_batch_size):
    """The batch's statistics for the running estimates: mean of the ghost batches' means and of their
    unbiased variances, straight from their definitions in float64."""
    dims = (0, *range(2, x.dim()))
    ghosts = x.double().split(ghost_batch_size)
    means = torch.stack([g.mean(dims) for g in ghosts]).mean(0)
    variances = torch.stack([g.var(dims, correction=1) for g in ghosts]).mean(0)
    return means, variances


@pytest.mark.parametrize("shape_name", list(SHAPES))
@pytest.mark.parametrize("ghost_batch_size", [2, 3, 4])
@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("affine", [True, False])
def test_equals_batchnorm_applied_ghost_batch_by_ghost_batch(shape_name, ghost_batch_size, momentum, affine):
    torch.manual_seed(0)
    ghost, bn = make_layers(SHAPES[shape_name], ghost_batch_size, momentum=momentum, affine=affine)
    params = [p for p in (ghost.weight, ghost.bias) if p is not None]
    bn_params = [p for p in (bn.weight, bn.bias) if p is not None]
    running_mean, running_var = ghost.running_mean.clone(), ghost.running_var.clone()
    for t in range(1, 4):  # training steps
        x, grad_out = make_input(shape_name), torch.randn(SHAPES[shape_name], dtype=torch.float64)
        y, dx, *grads = step(ghost, params, x, grad_out)
        y_ref, dx_ref, *grads_ref = step(lambda v: torch.cat([bn(g) for g in v.split(ghost_batch_size)]),
                                        bn_params, x, grad_out)
        torch.testing.assert_close(y, y_ref, **TOL64)
        torch.testing.assert_close(dx, dx_ref, **TOL64)
        for grad, grad_ref in zip(grads, grads_ref, strict=True):
            torch.testing.assert_close(grad, grad_ref, **TOL64)
        assert y.stride() == x.stride()  # channels-last in, channels-last out
        # One update a step, by the ghost batches' average statistics.
        mean, var = chunked_oracle_statistics(x, ghost_batch_size)
        factor = momentum if momentum is not None else 1 / t
        running_mean, running_var = running_mean + factor * (mean - running_mean), running_var + factor * (
            var - running_var)
        torch.testing.assert_close(ghost.running_mean, running_mean, **TOL64)
        torch.testing.assert_close(ghost.running_var, running_var, **TOL64)
        assert ghost.num_batches_tracked == t
    ghost.eval()
    bn.load_state_dict(ghost.state_dict())
    bn.eval()
    x, grad_out = make_input(shape_name), torch.randn(SHAPES[shape_name], dtype=torch.float64)
    y, dx, *grads = step(ghost, params, x, grad_out)
    y_ref, dx_ref, *grads_ref = step(bn, bn_params, x, grad_out)
    assert torch.equal(y, y_ref) and torch.equal(dx, dx_ref)  # eval mode is BatchNorm's on the running estimates
    assert all(torch.equal(a, b) for a, b in zip(grads, grads_ref, strict=True))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape_name", list(SHAPES))
def test_one_ghost_batch_is_batchnorm_exactly(dtype, shape_name):
    torch.manual_seed(1)
    ghost, bn = make_layers(SHAPES[shape_name], SHAPES[shape_name][0], dtype=dtype)
    params, bn_params = [ghost.weight, ghost.bias], [bn.weight, bn.bias]
    for training in (True, True, False):
        ghost.train(training)
        bn.train(training)
        x, grad_out = make_input(shape_name, dtype), torch.randn(SHAPES[shape_name], dtype=dtype)
        for a, b in zip(step(ghost, params, x, grad_out), step(bn, bn_params, x, grad_out), strict=True):
            a, b = (a, b) if isinstance(a, list) else ([a], [b])
            assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            assert torch.equal(getattr(ghost, name), getattr(bn, name)), name


def test_untracked_eval_normalizes_with_ghost_batch_statistics():
    torch.manual_seed(2)
    ghost, _ = make_layers((8, C), 4, track_running_stats=False)
    x = make_input("NC")[:8]
    train_output = ghost(x)
    ghost.eval()
    assert torch.equal(ghost(x), train_output)
    assert ghost.running_mean is None and list(ghost.state_dict()) == ["weight", "bias"]


def test_each_ghost_batch_is_normalized_on_its_own():
    torch.manual_seed(3)
    ghost = GhostBatchNorm1d(C, ghost_batch_size=4, affine=False, dtype=torch.float64)
    x = make_input("NC")
    x[4:8] = x[4:8] * 100 - 7  # one ghost batch far off: the others are untouched by it
    y = ghost(x)
    for g in y.split(4):
        torch.testing.assert_close(g.mean(0), torch.zeros(C, dtype=torch.float64), atol=1e-12, rtol=0)
        torch.testing.assert_close(g.var(0, correction=0), torch.ones(C, dtype=torch.float64), atol=1e-4, rtol=0)
    reference = GhostBatchNorm1d(C, ghost_batch_size=4, affine=False, dtype=torch.float64)
    x2 = x.clone()
    x2[4:8] = x2[4:8] / 100
    assert torch.equal(reference(x2)[:4], y[:4]) and torch.equal(reference(x2)[8:], y[8:])


@pytest.mark.parametrize("shape, ghost_batch_size", [((8, 3), 4), ((6, 2, 3), 3), ((4, 2, 2, 2), 2),
                                                     ((4, 2, 2, 2), 1)])
@pytest.mark.parametrize("training", [True, False])
def test_gradcheck_and_gradgradcheck(shape, ghost_batch_size, training):
    torch.manual_seed(4)
    ghost, _ = make_layers(shape, ghost_batch_size, momentum=0.0)  # momentum 0: every call sees the same state
    with torch.no_grad():
        ghost.running_mean.normal_()
        ghost.running_var.uniform_(0.5, 2)
    ghost.train(training)
    assert_gradchecks(ghost, shape)


def test_state_dict_is_batchnorms_and_loads_both_ways():
    torch.manual_seed(5)
    ghost, bn = make_layers((8, C, 2, 2), 4)
    ghost(torch.randn(8, C, 2, 2, dtype=torch.float64))
    assert list(ghost.state_dict()) == list(torch.nn.BatchNorm2d(C).state_dict())
    bn.load_state_dict(ghost.state_dict())
    fresh, _ = make_layers((8, C, 2, 2), 4)
    fresh.load_state_dict(bn.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), ghost.state_dict().values(),
                                                     strict=True))
    assert "ghost_batch_size=4" in repr(ghost)


def test_a_batch_not_a_multiple_of_the_ghost_size_names_shape_and_fix():
    ghost = GhostBatchNorm1d(C, ghost_batch_size=4)
    with pytest.raises(ValueError) as error:
        ghost(torch.randn(10, C))
    message = str(error.value)
    assert "(10, 3)" in message and "multiple of 4" in message and "ghost_batch_size that divides 10" in message
    with pytest.raises(ValueError, match="multiple of 4"):  # smaller than one ghost batch
        ghost(torch.randn(2, C))
    ghost.eval()
    assert ghost(torch.randn(10, C)).shape == (10, C)  # eval mode uses the running estimates: any batch


def test_impossible_shapes_and_sizes_are_value_errors():
    with pytest.raises(ValueError, match=r"ghost_batch_size=1\) needs more than one value per channel.*"
                                         r"ghost_batch_size=2 or more"):
        GhostBatchNorm1d(C, ghost_batch_size=1)(torch.randn(4, C))
    assert GhostBatchNorm2d(C, ghost_batch_size=1)(torch.randn(4, C, 2, 2)).shape == (4, C, 2, 2)
    for bad in (0, -2, 2.5, True):
        with pytest.raises(ValueError, match="ghost_batch_size must be a whole number"):
            GhostBatchNorm1d(C, ghost_batch_size=bad)
    with pytest.raises(ValueError, match=r"GhostBatchNorm2d expected 4D input \(N, C, H, W\), got 2D input "
                                         r"of shape \(4, 3\)"):
        GhostBatchNorm2d(C, ghost_batch_size=2)(torch.randn(4, C))
    with pytest.raises(ValueError, match=r"GhostBatchNorm1d expected 2D input \(N, C\) or 3D input"):
        GhostBatchNorm1d(C, ghost_batch_size=2)(torch.randn(4, C, 2, 2))
    with pytest.raises(ValueError, match=r"expected C=3 channels in dim 1, got 5"):
        GhostBatchNorm1d(C, ghost_batch_size=2)(torch.randn(4, 5))


def test_empty_batch_gives_an_empty_output_and_leaves_the_estimates():
    ghost = GhostBatchNorm1d(C, ghost_batch_size=4)
    y = ghost(torch.randn(0, C, requires_grad=True))
    y.sum().backward()
    assert y.shape == (0, C) and torch.equal(ghost.weight.grad, torch.zeros(C))
    assert torch.equal(ghost.running_mean, torch.zeros(C)) and torch.equal(ghost.running_var, torch.ones(C))
