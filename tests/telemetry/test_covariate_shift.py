"""The internal-covariate-shift probe against explicit two-pass updates on a tiny float64 network."""

from __future__ import annotations

import copy

import pytest
import torch
from probe_nets import BATCH, CLASSES, INPUT, assert_same, cross_entropy, snapshot, tiny_net

from bnlab.telemetry.covariate_shift import covariate_shift
from bnlab.telemetry.passes import parameters_after_step
from bnlab.train.loop import build_optimizer

LR, MOMENTUM, DECAY = 0.1, 0.9, 1e-3


def _optimizer(name, net):
    from omegaconf import OmegaConf

    return build_optimizer(OmegaConf.create({"name": name, "lr": LR, "momentum": MOMENTUM,
                                             "weight_decay": DECAY}), net)


def _train_a_little(net, optimizer, steps=2):
    """A few real steps, so that momentum buffers (or Adam's moments) are not empty."""
    for seed in range(steps):
        generator = torch.Generator().manual_seed(100 + seed)
        x = torch.randn(BATCH, *INPUT["mlp"], dtype=torch.float64, generator=generator)
        y = torch.randint(0, CLASSES, (BATCH,), generator=generator)
        optimizer.zero_grad(set_to_none=True)
        cross_entropy(net, x, y).backward()
        optimizer.step()


def _explicit_update(name, optimizer, parameter):
    """torch's update rule written out: SGD with momentum and weight decay (a momentum buffer exists after
    the warm-up steps), or Adam's first step (empty state)."""
    g = parameter.grad
    if name == "sgd":
        buffer = MOMENTUM * optimizer.state[parameter]["momentum_buffer"] + (g + DECAY * parameter.detach())
        return parameter.detach() - LR * buffer
    g = g + DECAY * parameter.detach()
    return parameter.detach() - LR * g / (g.abs() + 1e-8)  # m_hat = g, v_hat = g^2 at step 1


def _oracle(net, optimizer, name, x, y):
    """G_i on the batch; G'_i after explicitly moving every block below i (two separate passes per layer)."""
    units = [*net.blocks, net.classifier]
    before = [w.grad.clone() for w in (layer.weight for layer in net.weight_layers.values())]
    expected = {}
    for i in range(1, len(units)):
        shifted = copy.deepcopy(net)
        with torch.no_grad():
            for live_unit, unit in zip(units[:i], [*shifted.blocks, shifted.classifier][:i], strict=True):
                for live, moved in zip(live_unit.parameters(), unit.parameters(), strict=True):
                    moved.copy_(_explicit_update(name, optimizer, live))
        weight = list(shifted.weight_layers.values())[i].weight
        (g_shifted,) = torch.autograd.grad(cross_entropy(shifted, x, y), [weight])
        g = before[i]
        expected[f"covariate_shift/l2/layer{i:02d}"] = torch.linalg.vector_norm(g - g_shifted).item()
        expected[f"covariate_shift/cosine/layer{i:02d}"] = (torch.sum(g * g_shifted) / (g.norm() * g_shifted.norm())
                                                            ).item()
    return expected


@pytest.mark.parametrize("optimizer_name", ["sgd", "adam"])
@pytest.mark.parametrize("norm", ["bnlab", "none"])
def test_shift_of_each_layer_matches_two_explicit_passes(optimizer_name, norm):
    net, x, y = tiny_net(norm=norm, depth=3, width=5)
    optimizer = _optimizer(optimizer_name, net)
    if optimizer_name == "sgd":
        _train_a_little(net, optimizer)
    optimizer.zero_grad(set_to_none=True)
    cross_entropy(net, x, y).backward()
    expected = _oracle(net, optimizer, optimizer_name, x, y)
    measured = {tag: value.item() for tag, value in covariate_shift(net, optimizer, cross_entropy, x, y).items()}
    assert set(measured) == set(expected) and len(measured) == 2 * 3  # layers 01..03 (the classifier last)
    for tag, value in expected.items():
        assert measured[tag] == pytest.approx(value, rel=1e-9, abs=1e-12), tag
    assert all(measured[f"covariate_shift/l2/layer{i:02d}"] > 0 for i in (1, 2, 3))


def test_the_step_it_assumes_is_the_step_the_optimizer_then_takes_and_nothing_live_changes():
    net, x, y = tiny_net(norm="torch")
    optimizer = _optimizer("sgd", net)
    _train_a_little(net, optimizer)
    optimizer.zero_grad(set_to_none=True)
    cross_entropy(net, x, y).backward()
    before = snapshot(net, optimizer)
    predicted = parameters_after_step(net, optimizer)
    covariate_shift(net, optimizer, cross_entropy, x, y)
    assert_same(snapshot(net, optimizer), before)  # parameters, gradients, buffers, momentum buffers
    optimizer.step()
    assert_same({name: p.detach() for name, p in net.named_parameters()}, predicted)
