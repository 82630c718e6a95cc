"""Signal-propagation statistics against numpy on the blocks' explicit outputs, and their figure."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from probe_nets import assert_same, snapshot, tiny_net

from bnlab.telemetry.signal_figure import signal_propagation_figure
from bnlab.telemetry.signal_propagation import profiles, signal_propagation


def _numpy_oracle(net, x):
    """Each block's output and residual branch, computed block by block as the paper writes them, and
    reduced with numpy: per channel over the batch (and positions), biased variance."""
    net = copy.deepcopy(net)  # the running statistics of the oracle's own pass stay out of the model
    expected, h = {}, x
    with torch.no_grad():
        for i, block in enumerate(net.blocks):
            z = block.weight_layer(h)
            branch = block.act(block.norm(z)) if block.norm_first else block.norm(block.act(z))
            output = h + branch if block.residual else branch
            axes = (0, 2, 3) if output.dim() == 4 else (0,)
            out = output.numpy()
            expected[f"signal_prop/mean_sq/layer{i:02d}"] = np.mean(np.mean(out, axis=axes) ** 2)
            expected[f"signal_prop/var/layer{i:02d}"] = np.mean(np.var(out, axis=axes))
            if block.residual:
                expected[f"signal_prop/residual_var/layer{i:02d}"] = np.mean(np.var(branch.numpy(), axis=axes))
            h = net.pools[str(i)](output) if str(i) in net.pools else output
    return expected


@pytest.mark.parametrize("model", ["mlp", "cnn"])
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("norm", ["bnlab", "none"])
def test_channel_mean_variance_and_residual_variance_match_numpy(model, residual, norm):
    net, x, _ = tiny_net(model=model, norm=norm, residual=residual, activation="relu", depth=4, width=5)
    before = snapshot(net)
    measured = {tag: value.item() for tag, value in signal_propagation(net, x).items()}
    expected = _numpy_oracle(net, x)
    assert set(measured) == set(expected)
    assert sum(tag.startswith("signal_prop/residual_var/") for tag in measured) == (3 if residual else 0)
    for tag, value in expected.items():
        assert measured[tag] == pytest.approx(value, rel=1e-9, abs=1e-15), tag
    assert_same(snapshot(net), before)  # BatchNorm's running statistics and counter untouched


def test_the_figure_draws_each_family_against_block_index_from_plain_tags():
    net, x, _ = tiny_net(residual=True, depth=4, width=5)
    values = {tag: value.item() for tag, value in signal_propagation(net, x).items()}
    curves = profiles(values)
    assert curves["signal_prop/residual_var"][0] == [1, 2, 3]  # block 0 changes the width: no skip
    other = {tag: 2 * value for tag, value in values.items()}
    figure = signal_propagation_figure([("bnlab", values), ("doubled", other)], "two runs")
    axes = figure.axes
    assert len(axes) == 3 and [len(ax.lines) for ax in axes] == [2, 2, 2]
    x_data, y_data = axes[2].lines[0].get_data()
    assert list(x_data) == [1, 2, 3] and list(y_data) == curves["signal_prop/residual_var"][1]
    assert list(axes[1].lines[1].get_ydata()) == [2 * v for v in curves["signal_prop/var"][1]]
    plain = signal_propagation_figure([("step 0", {k: v for k, v in values.items() if "residual" not in k})], "t")
    assert [len(ax.lines) for ax in plain.axes] == [1, 1, 0]
    assert "no residual blocks" in plain.axes[2].texts[0].get_text()
