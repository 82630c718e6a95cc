"""The probes' private copy of the model and their random-state guard."""

from __future__ import annotations

import random

import numpy as np
import torch
from probe_nets import assert_same, cross_entropy, tiny_net

from bnlab.telemetry.landscape import landscape
from bnlab.telemetry.passes import Twin, preserved_rng, replica


def test_the_twin_is_refreshed_to_the_live_state_and_shares_nothing_with_it():
    net, x, y = tiny_net(norm="torch")
    twin = Twin(net)
    copy = twin.synced()
    with torch.no_grad():  # a probe moves the copy; training moves the live model on
        for parameter in copy.parameters():
            parameter.add_(1.0)
        copy(x)  # the copy's own BatchNorm statistics and counter
        net.blocks[0].weight_layer.weight.mul_(2.0)
    net.eval()
    net(x)
    assert twin.synced() is copy
    assert_same(copy.state_dict(), net.state_dict())
    assert [m.training for m in copy.modules()] == [m.training for m in net.modules()]
    live = {t.data_ptr() for t in [*net.parameters(), *net.buffers()]}
    assert not live & {t.data_ptr() for t in [*copy.parameters(), *copy.buffers()]}


def test_a_copy_carries_none_of_the_live_models_hooks_and_a_refreshed_one_measures_as_a_fresh_one():
    net, x, y = tiny_net()
    calls = []
    net.blocks[1].register_forward_hook(lambda *args: calls.append(1))
    twin = Twin(net)
    first = landscape(net, cross_entropy, x, y, [0.1, 0.3], twin.synced())
    second = landscape(net, cross_entropy, x, y, [0.1, 0.3], twin.synced())  # the copy was moved in between
    assert_same(first, second)
    assert_same(first, landscape(net, cross_entropy, x, y, [0.1, 0.3], replica(net)))
    assert calls == []


def test_every_random_generator_is_restored():
    states = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
    with preserved_rng():
        torch.rand(3), np.random.rand(3), random.random()
    assert torch.equal(torch.get_rng_state(), states[0])
    assert np.array_equal(np.random.get_state()[1], states[1]) and random.getstate() == states[2]
