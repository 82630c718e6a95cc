"""Model shapes, layer naming, bias placement, residual blocks, initialization schemes, and every norm arm."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import compose
from torch import nn

from bnlab.models.nets import build_model
from bnlab.nn import (
    BatchNorm1d,
    BatchNorm2d,
    BatchRenorm1d,
    BatchRenorm2d,
    GhostBatchNorm1d,
    GhostBatchNorm2d,
    GroupNorm,
    LayerNorm,
    NoisyBatchNorm1d,
    NoisyBatchNorm2d,
)


def _model(*overrides, input_shape=(64,), classes=10):
    cfg = compose(*overrides)
    return build_model(cfg.model, cfg.norm, input_shape, classes)


def test_mlp_has_depth_hidden_layers_then_a_classifier_named_from_the_input_side():
    net = _model("model.depth=4", "model.width=8")
    names = list(net.weight_layers)
    assert names == ["layer00", "layer01", "layer02", "layer03", "layer04"]
    assert net.weight_layers["layer00"].in_features == 64 and net.weight_layers["layer04"].out_features == 10
    assert list(net.activations) == names[:-1]
    assert all(isinstance(block.norm, BatchNorm1d) for block in net.blocks)
    assert net(torch.randn(5, 64)).shape == (5, 10)


def test_with_norm_before_the_activation_the_weight_layer_has_no_bias():
    with_norm = _model("model.depth=2", "model.width=8")
    without = _model("model.depth=2", "model.width=8", "norm=none")
    after = _model("model.depth=2", "model.width=8", "norm.position=after_act")
    assert with_norm.weight_layers["layer00"].bias is None
    assert without.weight_layers["layer00"].bias is not None
    assert after.weight_layers["layer00"].bias is not None  # norm follows the activation, not the layer
    assert isinstance(without.blocks[0].norm, nn.Identity)


def test_norm_position_changes_the_order():
    net = _model("model.depth=1", "model.width=8", "norm.position=after_act", "model.activation=relu")
    net.train()
    y = net.blocks[0](torch.randn(32, 64))
    # BatchNorm last: every unit of the block's output has zero batch mean.
    assert torch.allclose(y.mean(0), torch.zeros(8), atol=1e-5)


def test_torch_norm_arm_uses_torch_layers():
    net = _model("model.depth=2", "model.width=8", "norm=torch")
    assert type(net.blocks[0].norm) is nn.BatchNorm1d


@pytest.mark.parametrize("input_shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32)])
def test_cnn_runs_on_8x8_28x28_and_32x32_images(input_shape):
    net = _model("model=cnn", "model.depth=6", "model.width=8", input_shape=input_shape)
    assert list(net.weight_layers) == [f"layer{i:02d}" for i in range(7)]
    assert all(isinstance(block.norm, BatchNorm2d) for block in net.blocks)
    assert all(block.weight_layer.bias is None for block in net.blocks)
    assert len(net.pools) == 2  # downsampling at two stages
    assert net(torch.randn(4, *input_shape)).shape == (4, 10)


def test_residual_blocks_add_their_input_where_shapes_match():
    net = _model("model.depth=3", "model.width=8", "model.residual=true", "norm=none", "model.activation=linear")
    assert [block.residual for block in net.blocks] == [False, True, True]  # block 0 changes the width
    block, x = net.blocks[1], torch.randn(3, 8)
    assert torch.allclose(block(x), x + block.weight_layer(x))


def _weights(net):
    return [layer.weight.detach() for layer in net.weight_layers.values()]


def test_standard_init_is_uniform_within_one_over_sqrt_fan_in_with_zero_bias():
    net = _model("model.depth=2", "model.width=512", "model.init=standard", "norm=none", input_shape=(256,))
    for layer in net.weight_layers.values():
        bound = 1 / math.sqrt(layer.in_features)
        w = layer.weight.detach()
        assert w.abs().max() <= bound and w.abs().max() > 0.99 * bound
        assert abs(w.std().item() - bound / math.sqrt(3)) < 0.03 * bound  # U(-a, a) has std a/sqrt(3)
        assert torch.count_nonzero(layer.bias) == 0


def test_xavier_kaiming_orthogonal_and_gaussian_inits():
    xavier = _model("model.depth=1", "model.width=400", "model.init=xavier", input_shape=(200,))
    w = xavier.weight_layers["layer00"].weight.detach()
    assert w.abs().max() <= math.sqrt(6 / 600) and w.abs().max() > 0.99 * math.sqrt(6 / 600)
    kaiming = _model("model.depth=1", "model.width=400", "model.init=kaiming", input_shape=(200,))
    assert abs(kaiming.weight_layers["layer00"].weight.std().item() - math.sqrt(2 / 200)) < 0.03 * math.sqrt(2 / 200)
    orthogonal = _model("model.depth=2", "model.width=64", "model.init=orthogonal", input_shape=(64,))
    w = orthogonal.weight_layers["layer01"].weight.detach()
    assert torch.allclose(w @ w.T, torch.eye(64), atol=1e-5)
    gaussian = _model("model.depth=1", "model.width=400", "model.init=gaussian", input_shape=(200,))
    assert abs(gaussian.weight_layers["layer00"].weight.std().item() - 0.1) < 0.003


def test_default_init_keeps_torchs_own_initialization():
    torch.manual_seed(0)
    net = _model("model.depth=1", "model.width=16", "norm=none", input_shape=(8,))
    torch.manual_seed(0)
    reference = nn.Linear(8, 16)
    assert torch.equal(net.weight_layers["layer00"].weight, reference.weight)
    assert torch.equal(net.weight_layers["layer00"].bias, reference.bias)


@pytest.mark.parametrize("norm, mlp_class, cnn_class, attributes", [
    ("ghost", GhostBatchNorm1d, GhostBatchNorm2d, {"ghost_batch_size": 8}),
    ("renorm", BatchRenorm1d, BatchRenorm2d, {"rmax": 2.0, "dmax": 1.5, "warmup_steps": 3, "rmax_step": 9,
                                              "dmax_step": 7}),
    ("noisy", NoisyBatchNorm1d, NoisyBatchNorm2d, {"noise_mean": 0.25, "noise_std": 1.25}),
    ("layer", LayerNorm, LayerNorm, {}),
    ("group", GroupNorm, GroupNorm, {"num_groups": 4}),
    ("torch_layer", nn.LayerNorm, nn.GroupNorm, {}),
    ("torch_group", nn.GroupNorm, nn.GroupNorm, {"num_groups": 4}),
])
def test_every_norm_variant_builds_in_the_mlp_and_the_cnn_with_its_config(norm, mlp_class, cnn_class, attributes):
    keys = {"num_groups": "groups"}
    overrides = [f"norm={norm}", "model.depth=3", "model.width=16", "norm.eps=0.001"]
    overrides += [f"norm.{keys.get(name, name)}={value}" for name, value in attributes.items()]
    for model, layer_class, input_shape in (("mlp", mlp_class, (64,)), ("cnn", cnn_class, (1, 8, 8))):
        net = _model(*overrides, f"model={model}", input_shape=input_shape)
        assert all(type(block.norm) is layer_class for block in net.blocks)
        for block in net.blocks:
            assert block.norm.eps == 0.001 and block.weight_layer.bias is None  # beta plays the bias
            assert {name: getattr(block.norm, name) for name in attributes} == attributes
        assert net(torch.randn(16, *input_shape)).shape == (16, 10)


def test_noisy_layers_draw_their_own_noise_from_the_runs_seed_without_changing_the_weights():
    torch.manual_seed(7)
    noisy = _model("norm=noisy", "model.depth=3", "model.width=8")
    torch.manual_seed(7)
    plain = _model("norm=bnlab", "model.depth=3", "model.width=8")
    torch.manual_seed(7)
    again = _model("norm=noisy", "model.depth=3", "model.width=8")
    torch.manual_seed(8)
    other = _model("norm=noisy", "model.depth=3", "model.width=8")
    assert all(torch.equal(a, b) for a, b in zip(_weights(noisy), _weights(plain), strict=True))
    seeds = [block.norm.noise_seed for block in noisy.blocks]
    assert seeds == [7, 8, 9] and seeds == [block.norm.noise_seed for block in again.blocks]
    draws = [block.norm.draw_noise(0)[1] for block in noisy.blocks]
    assert not torch.equal(draws[0], draws[1]) and not torch.equal(draws[1], draws[2])
    assert not torch.equal(other.blocks[0].norm.draw_noise(0)[1], draws[0])


def test_ghost_batches_change_what_the_network_computes_in_training_only():
    torch.manual_seed(0)
    ghost = _model("norm=ghost", "norm.ghost_batch_size=4", "model.depth=2", "model.width=8")
    plain = _model("norm=bnlab", "model.depth=2", "model.width=8")
    plain.load_state_dict(ghost.state_dict())
    x = torch.randn(16, 64)
    assert not torch.allclose(ghost(x), plain(x))
    plain.load_state_dict(ghost.state_dict())  # the same running estimates ...
    ghost.eval()
    plain.eval()  # ... and eval mode normalizes with them alone
    assert torch.equal(ghost(x), plain(x))
