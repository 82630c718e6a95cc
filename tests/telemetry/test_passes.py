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


def test_a_copy_of_a_noisy_network_repeats_the_live_step_s_noise():
    """norm=noisy draws new noise at every training pass: the probes' passes on the copy must see the noise
    of the step the live model trained, however many of them there are, and leave the live draws alone."""
    net, x, y = tiny_net(norm="noisy")
    live_output = net(x)  # the step's training pass: draw 0
    steps = [m.noise_step for m in net.modules() if hasattr(m, "noise_step")]
    assert steps and all(step == 1 for step in steps)
    for copy in (replica(net), Twin(net).synced()):
        with torch.no_grad():
            first, second = copy(x), copy(x)
        assert torch.equal(first, live_output.detach()) and torch.equal(second, first)
    twin = Twin(net)
    twin.synced()
    second_output = net(x)  # the live model's next step draws anew (draw 1): another output
    assert [m.noise_step for m in net.modules() if hasattr(m, "noise_step")] == [2] * len(steps)
    assert not torch.equal(second_output, live_output)
    with torch.no_grad():
        assert torch.equal(twin.synced()(x), second_output.detach())  # the refreshed copy replays draw 1
