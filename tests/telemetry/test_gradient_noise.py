"""Ghost-batch gradient noise against explicit per-chunk gradients, and its estimators in closed form."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from probe_nets import assert_same, cross_entropy, snapshot, tiny_net

from bnlab.telemetry.gradient_noise import gradient_noise, noise_statistics


def _numpy_statistics(rows: np.ndarray, chunk_size: int) -> tuple[float, float, float]:
    """(tr S, snr, b_simple) of chunk gradients (k, P), as the probe's docstring defines them."""
    k = rows.shape[0]
    mean = rows.mean(axis=0)
    trace = np.sum(np.var(rows, axis=0, ddof=1))
    mean_sq = float(mean @ mean)
    signal = mean_sq - trace / k
    return trace, mean_sq / (trace / k), chunk_size * trace / signal if signal > 0 else math.nan


@pytest.mark.parametrize("chunks", [2, 4])
@pytest.mark.parametrize("norm", ["bnlab", "none"])
def test_variance_snr_and_noise_scale_match_explicit_chunk_gradients(norm, chunks):
    net, x, y = tiny_net(norm=norm, depth=3, width=5)
    before = snapshot(net)
    measured = {tag: value.item() for tag, value in gradient_noise(net, cross_entropy, x, y, chunks).items()}
    assert_same(snapshot(net), before)
    size = len(x) // chunks
    per_layer: dict[str, list[np.ndarray]] = {}
    everything = []
    for j in range(chunks):  # each ghost batch alone: its own forward pass, normalized with its own statistics
        alone = copy.deepcopy(net)
        cross_entropy(alone, x[j * size:(j + 1) * size], y[j * size:(j + 1) * size]).backward()
        for name, layer in alone.weight_layers.items():
            per_layer.setdefault(name, []).append(layer.weight.grad.numpy().ravel())
        everything.append(np.concatenate([p.grad.numpy().ravel() for p in alone.parameters()]))
    groups = {**{name: np.stack(rows) for name, rows in per_layer.items()}, "all": np.stack(everything)}
    assert len(measured) == 3 * len(groups)
    for name, rows in groups.items():
        trace, snr, b_simple = _numpy_statistics(rows, size)
        assert measured[f"grad_noise/variance/{name}"] == pytest.approx(trace, rel=1e-9)
        assert measured[f"grad_noise/snr/{name}"] == pytest.approx(snr, rel=1e-9)
        if math.isnan(b_simple):
            assert math.isnan(measured[f"grad_noise/b_simple/{name}"])
        else:
            assert measured[f"grad_noise/b_simple/{name}"] == pytest.approx(b_simple, rel=1e-9)


def test_the_estimators_in_closed_form():
    trace, snr, b_simple = noise_statistics(torch.tensor([[1.0], [3.0]], dtype=torch.float64), chunk_size=5)
    assert (trace.item(), snr.item(), b_simple.item()) == pytest.approx((2.0, 4.0, 5 * 2 / (4 - 1)))
    trace, snr, b_simple = noise_statistics(torch.tensor([[1.0, 0.0], [-1.0, 0.0]], dtype=torch.float64), 5)
    assert trace.item() == 2.0 and snr.item() == 0.0 and math.isnan(b_simple.item())  # no resolved signal


def test_a_batch_that_does_not_split_evenly_is_refused():
    net, x, y = tiny_net()
    with pytest.raises(ValueError, match="does not split into 3 equal chunks"):
        gradient_noise(net, cross_entropy, x, y, 3)
