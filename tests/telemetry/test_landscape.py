"""The loss-landscape probe against finite differences of the loss on a tiny float64 network."""

from __future__ import annotations

import copy

import pytest
import torch
from probe_nets import assert_same, cross_entropy, snapshot, tiny_net
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from bnlab.telemetry.landscape import TAGS, landscape, step_sizes


def _finite_difference_oracle(net, x, y, etas, h=1e-6):
    """The landscape quantities from losses alone: every gradient by central differences."""
    twin = copy.deepcopy(net)
    origin = parameters_to_vector(net.parameters()).detach()

    @torch.no_grad()
    def loss(theta):
        vector_to_parameters(theta, twin.parameters())
        return cross_entropy(twin, x, y).item()

    def gradient(theta):
        steps = torch.eye(len(theta), dtype=theta.dtype) * h
        return torch.tensor([(loss(theta + e) - loss(theta - e)) / (2 * h) for e in steps], dtype=theta.dtype)

    g = gradient(origin)
    losses, changes, smoothness = [loss(origin)], [], []
    for eta in etas:
        moved = origin - eta * g
        losses.append(loss(moved))
        change = torch.linalg.vector_norm(gradient(moved) - g).item()
        changes.append(change)
        smoothness.append(change / (eta * torch.linalg.vector_norm(g).item()))
    return {"landscape/loss_min": min(losses), "landscape/loss_max": max(losses),
            "landscape/loss_range": max(losses) - min(losses), "landscape/grad_predictiveness": max(changes),
            "landscape/beta_smoothness": max(smoothness)}


@pytest.mark.parametrize("norm", ["bnlab", "torch", "none"])
def test_loss_range_predictiveness_and_smoothness_match_finite_differences(norm):
    net, x, y = tiny_net(norm=norm, activation="tanh", depth=2, width=3)  # 45 parameters: 360 losses
    etas = [0.05, 0.2, 0.8]
    measured = {tag: value.item() for tag, value in landscape(net, cross_entropy, x, y, etas).items()}
    expected = _finite_difference_oracle(net, x, y, etas)
    assert list(measured) == list(TAGS)
    for tag in TAGS:
        assert measured[tag] == pytest.approx(expected[tag], rel=1e-6, abs=1e-9), tag
    assert measured["landscape/loss_range"] > 0 and measured["landscape/grad_predictiveness"] > 0


def test_the_live_model_its_gradients_and_batchnorm_buffers_are_left_exactly_as_they_were():
    net, x, y = tiny_net(norm="torch")
    cross_entropy(net, x, y).backward()  # the step's gradients, which the probe must not touch
    before = snapshot(net)
    landscape(net, cross_entropy, x, y, [0.1, 0.4])
    assert_same(snapshot(net), before)
    assert net.blocks[0].norm.num_batches_tracked.item() == 1  # only the step's own forward pass counted


def test_step_sizes_double_up_to_the_stated_multiple_of_the_learning_rate():
    assert step_sizes(0.1, 5, 4.0) == pytest.approx([0.025, 0.05, 0.1, 0.2, 0.4])
    assert step_sizes(0.3, 1, 2.0) == pytest.approx([0.6])
