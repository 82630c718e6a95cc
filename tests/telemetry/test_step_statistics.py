"""A whole step's statistics in one compiled call (`native.StepStatistics`), against numpy, inline and on
its own thread; the percentiles' selection (no sort) against numpy's sort on data built to reach every
branch: clustered values (all three digit levels), ties, NaN and infinities, -0.0, short and odd rows."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bnlab.telemetry import native
from bnlab.telemetry.statistics import HISTOGRAM_BINS, numpy_percentiles

QS = [0.15, 0.5, 0.85]


@pytest.fixture(autouse=True)
def compiled(monkeypatch):
    monkeypatch.delenv("BNLAB_NATIVE", raising=False)
    assert native.library() is not None, "the compiled loops did not build (see the log's warning)"


def _rows(kind: str, n: int, rng) -> np.ndarray:
    x = rng.standard_normal(n)
    if kind == "clustered":  # one top-12-bit bucket, most in one middle one: the selection's last level
        x = 1.0 + 1e-6 * x
    elif kind == "ties":
        x = np.round(x)
    elif kind == "special":
        x[rng.integers(0, n, max(n // 50, 3))] = np.nan
        x[:6] = [np.inf, -np.inf, -0.0, 0.0, 0.0, -0.0][:n]
    elif kind == "wide":
        x = x * 10.0 ** rng.integers(-30, 30, n)
    return x.astype(np.float32)


def _expected_percentiles(x: np.ndarray) -> list[float]:
    """numpy's sort (NaN last) and linear interpolation, written out here as an independent oracle."""
    ordered = np.sort(x.astype(np.float64).ravel())
    out = []
    for q in QS:
        position = q * (ordered.size - 1)
        lower = int(np.floor(position))
        upper, frac = min(lower + 1, ordered.size - 1), position - lower
        below, above = ordered[lower], ordered[upper]
        with np.errstate(invalid="ignore"):
            out.append(above - (above - below) * (1 - frac) if frac >= 0.5 else below + (above - below) * frac)
    return out


def _same(a, b) -> bool:
    return np.array_equal(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64), equal_nan=True)


@pytest.mark.parametrize("kind", ["normal", "clustered", "ties", "special", "wide"])
@pytest.mark.parametrize("n", [1, 2, 7, 256, 257, 4099, 60000])
def test_percentiles_by_selection_equal_numpy_s_sort(kind, n):
    rng = np.random.default_rng(n)
    pre = torch.from_numpy(_rows(kind, n, rng)).reshape(n, 1)
    post = torch.sigmoid(pre)
    stats = native.StepStatistics([], [], [], [], [pre], [post], 0, "sigmoid", QS, 0, False)
    values = stats.values  # mean, std, p15, p50, p85, unit p15, p50, p85, act mean, std, saturated
    assert _same(values[2:5], _expected_percentiles(pre.numpy()))
    assert _same(values[5:8], _expected_percentiles(pre.numpy()))  # the unit is the whole column here
    assert _same(values[2:5], numpy_percentiles([pre.numpy()], QS)[0])  # the PyTorch path's numpy
    if kind in ("normal", "ties"):
        assert values[2:5].tolist() == pytest.approx(np.percentile(pre.numpy().astype(np.float64), [15, 50, 85]),
                                                     rel=1e-12)


def _step_tensors(rng, channels_last: bool):
    """A small CNN-like step: weights of several shapes, 4-D activations (channels-last or not)."""
    def t(*shape, scale=1.0):
        return torch.from_numpy((rng.standard_normal(shape) * scale).astype(np.float32))

    weights = [t(8, 3, 3, 3), t(16, 8, 3, 3), t(10, 16)]
    before = [w.clone() for w in weights]
    after = [w - t(*w.shape, scale=1e-3) for w in weights]
    grads = [t(*w.shape, scale=1e-4) for w in weights]
    pres = [t(6, 8, 5, 5), t(6, 16, 3, 3)]
    pres[1][0, 0, 0, 0] = float("nan")  # a NaN: its histogram counts nothing, its percentiles sort it last
    if channels_last:
        pres = [p.contiguous(memory_format=torch.channels_last) for p in pres]
    posts = [torch.tanh(p) for p in pres]
    outputs = [t(6, 8, 5, 5), t(6, 16, 3, 3), t(6, 10)]
    return grads, after, before, outputs, pres, posts


@pytest.mark.parametrize("channels_last", [False, True])
def test_a_step_s_statistics_equal_numpy_and_do_not_depend_on_the_thread(channels_last):
    grads, after, before, outputs, pres, posts = _step_tensors(np.random.default_rng(0), channels_last)
    units = [p[:, 2] for p in pres]  # a channel over the batch and positions: strided in either layout
    args = (grads, after, before, outputs, pres, posts, 2, "tanh", QS, HISTOGRAM_BINS)
    inline = native.StepStatistics(*args, background=False)
    threaded = native.StepStatistics(*args, background=True).wait()
    assert _same(inline.values, threaded.values) and _same(inline.histograms, threaded.histograms)

    wide = lambda tensor: tensor.numpy().astype(np.float64)  # noqa: E731
    expected = [np.sqrt((wide(g) ** 2).sum()) for g in grads]
    expected += [np.sqrt((wide(a) ** 2).sum()) for a in after]
    expected += [np.sqrt(((wide(a) - wide(b)) ** 2).sum()) / np.sqrt((wide(a) ** 2).sum())
                 for a, b in zip(after, before, strict=True)]
    expected += [np.sqrt((wide(o) ** 2).sum()) for o in outputs]
    expected += [wide(p).mean() for p in pres] + [wide(p).std() for p in pres]
    expected += list(np.array([_expected_percentiles(p.numpy()) for p in pres]).T.ravel())
    expected += list(np.array([_expected_percentiles(u.numpy()) for u in units]).T.ravel())
    expected += [wide(p).mean() for p in posts] + [wide(p).std() for p in posts]
    expected += [(np.abs(p.numpy()) > np.float32(0.99)).mean() for p in posts]
    assert len(inline.values) == len(expected)
    assert inline.values.tolist() == pytest.approx(expected, rel=1e-10, nan_ok=True)
    start = len(grads) + 2 * len(after) + len(outputs) + 2 * len(pres)  # after the norms, preact mean and std
    percentiles = slice(start, start + 2 * len(QS) * len(pres))
    assert _same(inline.values[percentiles], np.array(expected)[percentiles])  # order statistics: exact

    for row, tensor in zip(inline.histograms, pres + grads, strict=True):
        values = wide(tensor).ravel()
        assert row[2] == values.size
        if np.isnan(values).any():
            assert np.isnan(row[0]) and not row[5:5 + HISTOGRAM_BINS].any()
            continue
        counts, edges = np.histogram(values, bins=HISTOGRAM_BINS, range=(values.min(), values.max()))
        assert row[:2].tolist() == [values.min(), values.max()]
        assert row[5:5 + HISTOGRAM_BINS].tolist() == counts.tolist()
        assert row[5 + HISTOGRAM_BINS:].tolist() == edges[1:].tolist()
        assert row[3:5].tolist() == pytest.approx([values.sum(), (values ** 2).sum()], rel=1e-12)


@pytest.mark.parametrize("shape", [(9, 4), (5, 3, 7), (4, 3, 5, 6), (3, 4, 2, 3, 5)])
def test_the_unit_s_percentiles_in_every_layout(shape):
    pre = torch.randn(shape).transpose(0, -1).contiguous().transpose(0, -1)  # strided: batch innermost
    stats = native.StepStatistics([], [], [], [], [pre], [pre.sigmoid()], 1, "sigmoid", QS, 0, False)
    assert _same(stats.values[5:8], _expected_percentiles(pre[:, 1].numpy()))


def test_histograms_of_the_widest_float32_range_and_of_infinities():
    values = np.array([-3.4e38, 0.0, 1.0, 3.4e38], dtype=np.float32)  # float64 edges never overflow
    rows = [torch.from_numpy(values), torch.tensor([-np.inf, 0.0, 1.0], dtype=torch.float32)]
    stats = native.StepStatistics(rows, [], [], [], [], [], 0, "relu", QS, HISTOGRAM_BINS, False)
    wide = values.astype(np.float64)
    counts, edges = np.histogram(wide, bins=HISTOGRAM_BINS, range=(wide.min(), wide.max()))
    assert stats.histograms[0, 5:].tolist() == counts.tolist() + edges[1:].tolist()
    assert not stats.histograms[1, 5:5 + HISTOGRAM_BINS].any()  # no finite range to bin: counts 0


def test_without_histograms_or_layers_of_some_kind():
    grads, after, before, outputs, pres, posts = _step_tensors(np.random.default_rng(1), False)
    stats = native.StepStatistics([], after, before, [], [], [], 0, "relu", QS, 0, background=True).wait()
    assert stats.histograms is None and len(stats.values) == 2 * len(after)


def test_an_empty_activation_gives_nan_statistics_not_a_crash():
    empty = torch.empty(0, 3)
    stats = native.StepStatistics([], [], [], [], [empty], [empty], 0, "relu", QS, HISTOGRAM_BINS, True).wait()
    assert np.isnan(stats.values[:8]).all() and not stats.histograms[0, 5:5 + HISTOGRAM_BINS].any()


def test_bad_arguments_name_the_value():
    with pytest.raises(ValueError, match="got 256"):
        native.StepStatistics([], [], [], [], [], [], 0, "relu", QS, 256, False)
    with pytest.raises(ValueError, match="at most 8 percentiles a step, got 9"):
        native.StepStatistics([], [], [], [], [], [], 0, "relu", [0.5] * 9, 0, False)
