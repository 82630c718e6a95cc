"""Noisy BatchNorm against its oracles: bnlab's BatchNorm followed by the drawn scale and shift (float64,
values and gradients), BatchNorm itself without noise and in eval mode, the draws' distribution, their
reproducibility across a state-dict round trip, and finite differences at fixed noise."""

import io
import math

import pytest
import torch
from norm_checks import assert_gradchecks, step

from bnlab.nn import BatchNorm1d, BatchNorm2d, NoisyBatchNorm1d, NoisyBatchNorm2d

TOL64 = {"atol": 1e-12, "rtol": 1e-12}
C = 4
SHAPES = {"NC": (6, C), "NCL": (3, C, 5), "NCHW": (2, C, 3, 2), "channels_last": (2, C, 3, 2)}


def make_input(shape_name, dtype=torch.float64):
    x = torch.randn(SHAPES[shape_name], dtype=dtype) * 2 + 1.5
    return x.contiguous(memory_format=torch.channels_last) if shape_name == "channels_last" else x


def make_layers(shape, dtype=torch.float64, **kwargs):
    """(noisy layer, bnlab BatchNorm) of the same rank with the same random affine parameters."""
    noisy_cls, bn_cls = (NoisyBatchNorm2d, BatchNorm2d) if len(shape) == 4 else (NoisyBatchNorm1d, BatchNorm1d)
    bn_kwargs = {k: v for k, v in kwargs.items() if k in ("momentum", "affine", "eps", "track_running_stats")}
    noisy, bn = noisy_cls(shape[1], dtype=dtype, **kwargs), bn_cls(shape[1], dtype=dtype, **bn_kwargs)
    with torch.no_grad():
        if noisy.weight is not None:
            noisy.weight.uniform_(0.5, 1.5)
            noisy.bias.normal_()
    bn.load_state_dict(noisy.state_dict(), strict=False)  # all but the noise's extra state
    return noisy, bn


@pytest.mark.parametrize("shape_name", list(SHAPES))
@pytest.mark.parametrize("affine", [True, False])
def test_training_output_is_batchnorm_scaled_and_shifted_by_the_steps_noise(shape_name, affine):
    torch.manual_seed(0)
    noisy, bn = make_layers(SHAPES[shape_name], affine=affine, seed=11, noise_mean=0.7, noise_std=2.0)
    params = [p for p in (noisy.weight, noisy.bias) if p is not None]
    bn_params = [p for p in (bn.weight, bn.bias) if p is not None]
    view = (1, C) + (1,) * (len(SHAPES[shape_name]) - 2)
    for t in range(3):
        x, grad_out = make_input(shape_name), torch.randn(SHAPES[shape_name], dtype=torch.float64)
        scale, shift = noisy.draw_noise(t)
        assert noisy.noise_step == t
        ours = step(noisy, params, x, grad_out)
        reference = step(lambda v, s=scale, m=shift: s.view(view) * bn(v) + m.view(view), bn_params, x, grad_out)
        for a, b in zip(ours, reference, strict=True):
            torch.testing.assert_close(a, b, **TOL64)
        assert torch.equal(noisy.noise_scale, scale) and torch.equal(noisy.noise_shift, shift)
        for name in ("running_mean", "running_var", "num_batches_tracked"):  # BatchNorm's, of x
            torch.testing.assert_close(getattr(noisy, name), getattr(bn, name), **TOL64)
    assert ours[0].stride() == x.stride()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_no_noise_is_batchnorm_exactly_and_eval_mode_has_no_noise(dtype):
    torch.manual_seed(1)
    quiet, bn = make_layers((2, C, 3, 3), dtype, noise_mean=0.0, noise_std=1.0, seed=5)
    params = lambda layer: [layer.weight, layer.bias]  # noqa: E731
    for training in (True, True, False):
        quiet.train(training)
        bn.train(training)
        x, grad_out = torch.randn(2, C, 3, 3, dtype=dtype), torch.randn(2, C, 3, 3, dtype=dtype)
        for a, b in zip(step(quiet, params(quiet), x, grad_out), step(bn, params(bn), x, grad_out), strict=True):
            assert torch.equal(a, b)
    assert quiet.noise_step == 2
    noisy, _ = make_layers((2, C, 3, 3), dtype, noise_mean=3.0, noise_std=3.0)
    noisy.load_state_dict(quiet.state_dict())
    noisy.eval()  # eval: no noise at any setting, and no draw
    for a, b in zip(step(noisy, params(noisy), x, grad_out), step(bn, params(bn), x, grad_out), strict=True):
        assert torch.equal(a, b)
    assert noisy.noise_step == 2


def test_noise_is_redrawn_every_step_per_unit_and_within_its_ranges():
    layer = NoisyBatchNorm1d(2000, noise_mean=0.5, noise_std=1.5, seed=3)
    draws = [layer.draw_noise(t) for t in range(3)]
    for scale, shift in draws:
        u_scale, u_shift = torch.log(scale) / math.log(1.5), shift / 0.5  # each U(-1, 1) if drawn as documented
        for u in (u_scale, u_shift):
            assert u.min() >= -1 and u.max() <= 1
            assert abs(float(u.mean())) < 0.06 and abs(float(u.var()) - 1 / 3) < 0.03  # U(-1, 1): mean 0, var 1/3
            assert float(u.min()) < -0.99 and float(u.max()) > 0.99
        assert abs(float(torch.corrcoef(torch.stack([u_scale, u_shift]))[0, 1])) < 0.08
    (scale0, shift0), (scale1, shift1) = draws[:2]
    assert abs(float(torch.corrcoef(torch.stack([shift0, shift1]))[0, 1])) < 0.08  # steps independent
    assert torch.equal(layer.draw_noise(1)[0], scale1)  # a draw is a function of (seed, step)
    other = NoisyBatchNorm1d(2000, noise_mean=0.5, noise_std=1.5, seed=4)
    assert abs(float(torch.corrcoef(torch.stack([shift0, other.draw_noise(0)[1]]))[0, 1])) < 0.08
    x = torch.randn(8, 2000)
    assert not torch.equal(layer(x), layer(x))  # the same batch, another step, another noise


def test_state_dict_carries_seed_and_step_so_a_resumed_layer_draws_the_same_noise():
    torch.manual_seed(2)
    noisy, _ = make_layers((6, C), seed=2**62 + 7)
    for _ in range(3):
        noisy(make_input("NC"))
    state = noisy.state_dict()
    assert list(state) == ["weight", "bias", "running_mean", "running_var", "num_batches_tracked", "_extra_state"]
    assert state["_extra_state"].tolist() == [2**62 + 7, 3]
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    resumed = NoisyBatchNorm1d(C, dtype=torch.float64)  # another seed until the state dict arrives
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    for _ in range(3):
        x = make_input("NC")
        assert torch.equal(resumed(x), noisy(x))
    bn = BatchNorm1d(C, dtype=torch.float64)
    bn.load_state_dict(noisy.state_dict(), strict=False)  # a noisy state dict is BatchNorm's plus the noise's


@pytest.mark.parametrize("shape", [(4, 3), (3, 2, 2, 2)])
@pytest.mark.parametrize("training", [True, False])
def test_gradcheck_and_gradgradcheck(shape, training):
    torch.manual_seed(3)
    noisy, _ = make_layers(shape, momentum=0.0, seed=9, noise_mean=1.0, noise_std=2.0)
    with torch.no_grad():
        noisy.running_mean.normal_()
        noisy.running_var.uniform_(0.5, 2)
    noisy.train(training)
    noisy.noise_step, noisy.replaying = 1, True  # draw 0 at every evaluation: s and m are constants of the gradient
    assert_gradchecks(noisy, shape)


@pytest.mark.parametrize("kwargs, fragment", [
    ({"noise_mean": -0.1}, "noise_mean=-0.1"),
    ({"noise_std": 0.5}, "noise_std=0.5"),
    ({"noise_std": float("nan")}, "noise_std=nan"),
    ({"noise_mean": float("inf")}, "noise_mean=inf"),
])
def test_impossible_settings_are_value_errors(kwargs, fragment):
    with pytest.raises(ValueError, match="NoisyBatchNorm1d needs finite noise_mean >= 0 and noise_std >= 1") as error:
        NoisyBatchNorm1d(C, **kwargs)
    assert fragment in str(error.value)


def test_impossible_shapes_are_value_errors():
    with pytest.raises(ValueError, match=r"NoisyBatchNorm2d expected 4D input \(N, C, H, W\), got 2D input"):
        NoisyBatchNorm2d(C)(torch.randn(2, C))
    with pytest.raises(ValueError, match=r"needs more than one value per channel.*shape \(1, 4\)"):
        NoisyBatchNorm1d(C)(torch.randn(1, C))
    assert "noise_mean=0.5, noise_std=1.5" in repr(NoisyBatchNorm1d(C))
