"""bnlab's GroupNorm and LayerNorm against torch's F.group_norm, F.layer_norm and layers (float64, values
and gradients), in training and eval mode, and finite differences."""

import pytest
import torch
import torch.nn.functional as F
from norm_checks import assert_gradchecks, step

from bnlab.nn import GroupNorm, LayerNorm

TOL64 = {"atol": 1e-12, "rtol": 1e-12}
C = 6
SHAPES = {"NC": (5, C), "NCL": (3, C, 4), "NCHW": (2, C, 3, 2), "channels_last": (2, C, 3, 2)}


def make_input(shape_name, dtype=torch.float64):
    x = torch.randn(SHAPES[shape_name], dtype=dtype) * 3 + 2
    return x.contiguous(memory_format=torch.channels_last) if shape_name == "channels_last" else x


def randomize(layer):
    with torch.no_grad():
        if layer.weight is not None:
            layer.weight.uniform_(0.5, 1.5)
            layer.bias.normal_()
    return layer


@pytest.mark.parametrize("shape_name", list(SHAPES))
@pytest.mark.parametrize("groups", [1, 2, 3, C])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("training", [True, False])
def test_group_norm_matches_torch_float64(shape_name, groups, affine, training):
    torch.manual_seed(0)
    layer = randomize(GroupNorm(C, groups=groups, eps=1e-3, affine=affine, dtype=torch.float64)).train(training)
    params = [p for p in (layer.weight, layer.bias) if p is not None]
    x, grad_out = make_input(shape_name), torch.randn(SHAPES[shape_name], dtype=torch.float64)
    if x[0].numel() == groups:  # one value per group: torch returns beta, bnlab says why that is useless
        with pytest.raises(ValueError, match="more than one value per sample and group"):
            layer(x)
        return
    ours = step(layer, params, x, grad_out)
    reference = step(lambda v: F.group_norm(v, groups, layer.weight, layer.bias, 1e-3), params, x, grad_out)
    for a, b in zip(ours, reference, strict=True):
        torch.testing.assert_close(a, b, **TOL64)
    assert ours[0].stride() == x.stride()  # memory format kept


@pytest.mark.parametrize("shape_name", list(SHAPES))
@pytest.mark.parametrize("affine", [True, False])
def test_layer_norm_matches_torch_layer_norm_over_all_features(shape_name, affine):
    torch.manual_seed(1)
    layer = randomize(LayerNorm(C, eps=1e-4, elementwise_affine=affine, dtype=torch.float64))
    params = [p for p in (layer.weight, layer.bias) if p is not None]
    x, grad_out = make_input(shape_name), torch.randn(SHAPES[shape_name], dtype=torch.float64)
    features = x.shape[1:]
    per_channel = (C,) + (1,) * (x.dim() - 2)

    def reference(v):  # F.layer_norm over (C, *) with the per-channel gamma and beta spread over positions
        weight = None if layer.weight is None else layer.weight.view(per_channel).expand(features)
        bias = None if layer.bias is None else layer.bias.view(per_channel).expand(features)
        return F.layer_norm(v, features, weight, bias, 1e-4)

    for training in (True, False):
        layer.train(training)
        for a, b in zip(step(layer, params, x, grad_out), step(reference, params, x, grad_out), strict=True):
            torch.testing.assert_close(a, b, **TOL64)


def test_layer_norm_is_torchs_layer_norm_on_features_state_dict_included():
    torch.manual_seed(2)
    reference = randomize(torch.nn.LayerNorm(C, dtype=torch.float64))
    ours = LayerNorm(C, dtype=torch.float64)
    ours.load_state_dict(reference.state_dict())
    x = make_input("NC")
    torch.testing.assert_close(ours(x), reference(x), **TOL64)
    assert list(ours.state_dict()) == list(reference.state_dict())
    assert list(GroupNorm(C, 3).state_dict()) == list(torch.nn.GroupNorm(3, C).state_dict())
    assert repr(ours) == "LayerNorm((6,), eps=1e-05, elementwise_affine=True)"


def test_each_sample_is_normalized_on_its_own_and_a_batch_of_one_is_fine():
    torch.manual_seed(3)
    layer = GroupNorm(C, groups=2, dtype=torch.float64)
    x = make_input("NCHW")
    alone = torch.cat([layer(sample) for sample in x.split(1)])
    torch.testing.assert_close(layer(x), alone, **TOL64)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_uses_float32_statistics(dtype):
    torch.manual_seed(4)
    x = (torch.randn(4, C, 5, 5) * 3 + 100).to(dtype)  # a mean large against the spread
    layer = randomize(GroupNorm(C, groups=3))
    expected = F.group_norm(x.float(), 3, layer.weight, layer.bias, layer.eps)
    y = layer(x)
    assert y.dtype == dtype
    torch.testing.assert_close(y.float(), expected.to(dtype).float(), atol=0.02, rtol=0.02)


@pytest.mark.parametrize("shape, groups", [((4, 6), 2), ((3, 4, 3), 1), ((2, 4, 2, 2), 2), ((2, 4, 2, 2), 4)])
def test_gradcheck_and_gradgradcheck(shape, groups):
    torch.manual_seed(5)
    layer = GroupNorm(shape[1], groups=groups, dtype=torch.float64)
    assert_gradchecks(layer, shape)


def test_impossible_shapes_are_value_errors_naming_shape_and_fix():
    with pytest.raises(ValueError, match=r"cannot split C=6 channels into groups=4 equal groups; use a number "
                                         r"of groups that divides 6 \(e\.g\. 3\)"):
        GroupNorm(C, groups=4)
    with pytest.raises(ValueError, match=r"groups=0"):
        GroupNorm(C, groups=0)
    with pytest.raises(ValueError, match=r"GroupNorm expected an input \(N, C, \*\) of 2 or more dims, got 1D"):
        GroupNorm(C, groups=2)(torch.randn(C))
    with pytest.raises(ValueError, match=r"LayerNorm\(6\) expected C=6 channels in dim 1, got 4 \(input of shape "
                                         r"\(2, 4\)\)"):
        LayerNorm(C)(torch.randn(2, 4))
    with pytest.raises(ValueError, match=r"one value per sample and group.*shape \(2, 6\) in 6 group"):
        GroupNorm(C, groups=C)(torch.randn(2, C))
    with pytest.raises(TypeError, match="floating-point input, got dtype torch.int64"):
        LayerNorm(C)(torch.ones(2, C, dtype=torch.long))
