"""Batch Renormalization against its oracles: bnlab's BatchNorm (rmax=1, dmax=0 is BatchNorm exactly), a
float64 implementation of Ioffe (2017)'s Algorithm 1 and of its gradient equations, the warm-up schedule
computed by hand, and finite differences where r and d are locally constant."""

import math

import pytest
import torch
from norm_checks import assert_gradchecks

from bnlab.nn import BatchNorm1d, BatchNorm2d, BatchRenorm1d, BatchRenorm2d

TOL64 = {"atol": 1e-12, "rtol": 1e-12}
C = 3
SHAPES = {"NC": (4, C), "NCL": (3, C, 5), "NCHW": (2, C, 3, 2), "channels_last": (2, C, 3, 2)}
CONSTANT = {"warmup_steps": 0, "rmax_step": 0, "dmax_step": 0}  # rmax and dmax from the first step


def make_input(shape_name, dtype=torch.float64):
    x = torch.randn(SHAPES[shape_name], dtype=dtype) * 2 + 1.5
    return x.contiguous(memory_format=torch.channels_last) if shape_name == "channels_last" else x


def make_layers(shape, dtype=torch.float64, **kwargs):
    """(renorm layer, bnlab BatchNorm) of the same rank, same random affine parameters and running estimates."""
    renorm_cls, bn_cls = (BatchRenorm2d, BatchNorm2d) if len(shape) == 4 else (BatchRenorm1d, BatchNorm1d)
    bn_kwargs = {k: v for k, v in kwargs.items() if k in ("momentum", "affine", "eps")}
    renorm, bn = renorm_cls(shape[1], dtype=dtype, **kwargs), bn_cls(shape[1], dtype=dtype, **bn_kwargs)
    with torch.no_grad():
        if renorm.weight is not None:
            renorm.weight.uniform_(0.5, 1.5)
            renorm.bias.normal_()
        renorm.running_mean.normal_()
        renorm.running_var.uniform_(0.5, 2)
    bn.load_state_dict(renorm.state_dict())
    return renorm, bn


def step(layer, x, grad_out):
    x = x.detach().clone().requires_grad_()
    layer.zero_grad(set_to_none=True)
    y = layer(x)
    y.backward(grad_out)
    return [y, x.grad] + [p.grad for p in (layer.weight, layer.bias) if p is not None]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape_name", list(SHAPES))
@pytest.mark.parametrize("affine", [True, False])
def test_rmax_1_dmax_0_is_batchnorm_exactly(dtype, shape_name, affine):
    torch.manual_seed(0)
    renorm, bn = make_layers(SHAPES[shape_name], dtype, rmax=1.0, dmax=0.0, affine=affine, **CONSTANT)
    for training in (True, True, True, False):
        renorm.train(training)
        bn.train(training)
        x, grad_out = make_input(shape_name, dtype), torch.randn(SHAPES[shape_name], dtype=dtype)
        for ours, reference in zip(step(renorm, x, grad_out), step(bn, x, grad_out), strict=True):
            assert torch.equal(ours, reference)
        assert all(torch.equal(a, b) for a, b in zip(renorm.state_dict().values(), bn.state_dict().values(),
                                                         strict=True))


def algorithm_1(x, gamma, beta, mu, sigma, r_max, d_max, eps):
    """Ioffe (2017), Algorithm 1, in float64 on (N, C, *): y, and what the gradient equations need."""
    dims = (0, *range(2, x.dim()))
    view = (1, -1) + (1,) * (x.dim() - 2)
    mu_b = x.mean(dims)
    sigma_b = torch.sqrt(((x - mu_b.view(view)) ** 2).mean(dims) + eps)
    r = torch.clamp(sigma_b / sigma, 1 / r_max, r_max)
    d = torch.clamp((mu_b - mu) / sigma, -d_max, d_max)
    x_hat = (x - mu_b.view(view)) / sigma_b.view(view) * r.view(view) + d.view(view)
    return gamma.view(view) * x_hat + beta.view(view), (mu_b, sigma_b, r, d, x_hat, view, dims)


def algorithm_1_gradients(dy, x, gamma, saved):
    """The paper's backward equations (§3, below Algorithm 1), r and d held constant."""
    mu_b, sigma_b, r, _, x_hat, view, dims = saved
    m = x.numel() // x.shape[1]
    dx_hat = dy * gamma.view(view)
    centered = x - mu_b.view(view)
    d_sigma_b = (dx_hat * centered).sum(dims) * (-r / sigma_b ** 2)
    d_mu_b = dx_hat.sum(dims) * (-r / sigma_b)
    dx = (dx_hat * (r / sigma_b).view(view) + d_sigma_b.view(view) * centered / (m * sigma_b.view(view))
          + d_mu_b.view(view) / m)
    return dx, (dy * x_hat).sum(dims), dy.sum(dims)


@pytest.mark.parametrize("shape_name", list(SHAPES))
@pytest.mark.parametrize("r_max, d_max", [(1.2, 0.3), (3.0, 5.0), (1e6, 1e6)])
def test_training_step_follows_the_papers_equations(shape_name, r_max, d_max):
    torch.manual_seed(1)
    eps, momentum = 1e-3, 0.25
    renorm, _ = make_layers(SHAPES[shape_name], rmax=r_max, dmax=d_max, eps=eps, momentum=momentum, **CONSTANT)
    clipped = 0
    for _ in range(3):
        x, dy = make_input(shape_name) * torch.rand(()) * 3, torch.randn(SHAPES[shape_name], dtype=torch.float64)
        mu, sigma = renorm.running_mean.clone(), torch.sqrt(renorm.running_var + eps)
        y_ref, saved = algorithm_1(x, renorm.weight.detach(), renorm.bias.detach(), mu, sigma, r_max, d_max, eps)
        dx_ref, dgamma_ref, dbeta_ref = algorithm_1_gradients(dy, x, renorm.weight.detach(), saved)
        y, dx, dgamma, dbeta = step(renorm, x, dy)
        for ours, reference in ((y, y_ref), (dx, dx_ref), (dgamma, dgamma_ref), (dbeta, dbeta_ref)):
            torch.testing.assert_close(ours, reference, **TOL64)
        mu_b, sigma_b, r, d = saved[:4]
        torch.testing.assert_close(renorm.r, r, **TOL64)
        torch.testing.assert_close(renorm.d, d, **TOL64)
        clipped += int(((r == r_max) | (r == 1 / r_max) | (d.abs() == d_max)).sum())
        # The moving statistics: BatchNorm's, the variance unbiased.
        m = x.numel() // C
        torch.testing.assert_close(renorm.running_mean, mu + momentum * (mu_b - mu), **TOL64)
        unbiased = (sigma_b ** 2 - eps) * m / (m - 1)
        torch.testing.assert_close(renorm.running_var, sigma ** 2 - eps + momentum * (unbiased - sigma ** 2 + eps),
                                   **TOL64)
    assert (clipped > 0) == (r_max < 10)  # the small limits clip, the huge ones never


def test_unclipped_training_output_is_the_eval_output():
    # With r and d unclipped, (x - mu_B) / sigma_B * r + d = (x - mu) / sigma: the paper's point.
    torch.manual_seed(2)
    renorm, _ = make_layers((4, C, 3), rmax=1e6, dmax=1e6, momentum=0.0, **CONSTANT)
    x = make_input("NCL")[:4]
    train_output = renorm(x)
    renorm.eval()
    torch.testing.assert_close(train_output, renorm(x), **TOL64)


def test_warm_up_schedule():
    layer = BatchRenorm1d(C, rmax=3.0, dmax=5.0, warmup_steps=50, rmax_step=400, dmax_step=250)
    for step, r_max, d_max in [(0, 1, 0), (49, 1, 0), (50, 1, 0), (225, 2, 5 * 175 / 200), (250, 1 + 2 * 200 / 350, 5),
                               (400, 3, 5), (10_000, 3, 5)]:
        r_limit, d_limit = layer.clip_limits(torch.tensor(float(step), dtype=torch.float64))
        assert math.isclose(r_limit, r_max, rel_tol=1e-12) and math.isclose(d_limit, d_max, rel_tol=1e-12), step
    jump = BatchRenorm1d(C, rmax=3.0, dmax=5.0, warmup_steps=10, rmax_step=10, dmax_step=10)
    assert [float(jump.clip_limits(torch.tensor(float(s)))[0]) for s in (9, 10)] == [1, 3]


def test_the_warm_up_runs_on_the_layers_count_of_training_steps_and_resumes_with_it():
    torch.manual_seed(3)
    schedule = {"rmax": 2.0, "dmax": 1.0, "warmup_steps": 2, "rmax_step": 4, "dmax_step": 3}
    renorm, bn = make_layers((4, C), momentum=0.0, **schedule)
    batches = [make_input("NC") * 3 for _ in range(6)]
    for x in batches[:2]:  # warm-up: plain BatchNorm, whatever the running estimates are
        assert torch.equal(renorm(x), bn(x)) and torch.equal(renorm.r, torch.ones(C, dtype=torch.float64))
    resumed, _ = make_layers((4, C), momentum=0.0, **schedule)
    resumed.load_state_dict(renorm.state_dict())
    for x in batches[2:]:
        assert torch.equal(resumed(x), renorm(x)) and torch.equal(resumed.r, renorm.r)
    assert renorm.num_batches_tracked == resumed.num_batches_tracked == 6
    assert float(renorm.r.max()) == 2.0 or float(renorm.r.min()) == 0.5  # r's clip is in force after step 4


@pytest.mark.parametrize("shape", [(4, 3), (3, 2, 2, 2)])
@pytest.mark.parametrize("regime", ["batchnorm", "clipped", "eval"])
def test_gradcheck_and_gradgradcheck(shape, regime):
    # Finite differences see r and d move with x unless they sit at their clip limits or are 1 and 0.
    torch.manual_seed(4)
    limits = {"batchnorm": (1.0, 0.0), "clipped": (1.5, 0.2), "eval": (3.0, 5.0)}[regime]
    renorm, _ = make_layers(shape, rmax=limits[0], dmax=limits[1], momentum=0.0, **CONSTANT)
    with torch.no_grad():
        renorm.running_var.fill_(100.0)  # sigma_B / sigma << 1 / rmax: r = 1 / rmax
        renorm.running_mean.fill_(-50.0)  # (mu_B - mu) / sigma >> dmax: d = dmax
    renorm.train(regime != "eval")
    assert_gradchecks(renorm, shape)
    if regime == "clipped":
        assert torch.allclose(renorm.r, torch.full((shape[1],), 1 / 1.5, dtype=torch.float64))
        assert torch.equal(renorm.d, torch.full((shape[1],), 0.2, dtype=torch.float64))


def test_state_dict_and_eval_are_batchnorms():
    torch.manual_seed(5)
    renorm, bn = make_layers((4, C, 2, 2))
    renorm(torch.randn(4, C, 2, 2, dtype=torch.float64))
    assert list(renorm.state_dict()) == list(torch.nn.BatchNorm2d(C).state_dict())
    bn.load_state_dict(renorm.state_dict())
    renorm.eval()
    bn.eval()
    x = torch.randn(4, C, 2, 2, dtype=torch.float64)
    assert torch.equal(renorm(x), bn(x))
    assert "rmax=3.0, dmax=5.0, warmup_steps=50, rmax_step=400, dmax_step=250" in repr(renorm)


@pytest.mark.parametrize("kwargs, fragment", [
    ({"track_running_stats": False}, "use track_running_stats=True"),
    ({"rmax": 0.5}, "rmax >= 1 and dmax >= 0, got rmax=0.5"),
    ({"dmax": -1.0}, "got rmax=3.0, dmax=-1.0"),
    ({"rmax": float("nan")}, "rmax=nan"),
    ({"dmax": float("inf")}, "dmax=inf"),
    ({"warmup_steps": 500}, "warmup_steps=500, rmax_step=400, dmax_step=250"),
    ({"warmup_steps": -1}, "0 <= warmup_steps"),
])
def test_impossible_settings_are_value_errors(kwargs, fragment):
    with pytest.raises(ValueError, match="BatchRenorm1d") as error:
        BatchRenorm1d(C, **kwargs)
    assert fragment in str(error.value)


def test_impossible_shapes_are_value_errors():
    with pytest.raises(ValueError, match=r"BatchRenorm2d expected 4D input \(N, C, H, W\), got 3D input"):
        BatchRenorm2d(C)(torch.randn(2, C, 4))
    with pytest.raises(ValueError, match=r"needs more than one value per channel.*shape \(1, 3\)"):
        BatchRenorm1d(C)(torch.randn(1, C))
