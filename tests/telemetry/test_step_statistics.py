"""A whole step's statistics in one compiled call (`native.StepStatistics`), against numpy, inline and on
its own thread; the percentiles' selection (no sort) against numpy's sort on data built to reach every
branch: clustered values (all three digit levels), ties, NaN and infinities, -0.0, short and odd rows. The
compiled loops fill the layout Python declares (`bnlab.telemetry.layout`): every value lands where its tag
says, in any order of the families, and a statistic they do not measure comes from PyTorch ops."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bnlab.telemetry import layout, native
from bnlab.telemetry.layout import HISTOGRAMS, PERCENTILES, SCALARS, TORCH_STATISTICS, step_layout
from bnlab.telemetry.statistics import HISTOGRAM_BINS, row_percentiles

QS = list(PERCENTILES.values())
KEYS = list(PERCENTILES)


@pytest.fixture(autouse=True)
def compiled(monkeypatch):
    monkeypatch.delenv("BNLAB_NATIVE", raising=False)
    assert native.library() is not None, "the compiled loops did not build (see the log's warning)"


def _names(count: int) -> tuple[str, ...]:
    return tuple(f"layer{i:02d}" for i in range(count))


def _measure(grads, after, before, outputs, pres, posts, unit=0, activation="sigmoid", histograms=False,
             background=False):
    """({tag: value}, {histogram tag: row}) of one step measured by the compiled loops, as the probes lay it out."""
    kinds = (("grads", _names(len(grads))), ("weights", _names(len(after))), ("outputs", _names(len(outputs))),
             ("activations", _names(len(pres))))
    placed = step_layout(kinds, histograms)
    compiled = native.statistics()  # the families the compiled loops measure (the probes fill the rest in PyTorch)
    placements = tuple((family.statistic, family.q, first) for family, first, _ in placed.scalars + placed.histograms
                       if family.statistic in compiled)
    stats = native.StepStatistics(grads, after, before, outputs, pres, posts, unit, activation, placements,
                                  len(placed.tags), len(placed.histogram_tags), HISTOGRAM_BINS, background).wait()
    measured = {tag for family, first, count in placed.histograms if family.statistic in compiled
                for tag in placed.histogram_tags[first:first + count]}
    rows = {tag: row for tag, row in zip(placed.histogram_tags, stats.histograms, strict=True) if tag in measured} \
        if placed.histogram_tags else {}
    return dict(zip(placed.tags, stats.values.tolist(), strict=True)), rows


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
    values, _ = _measure([], [], [], [], [pre], [torch.sigmoid(pre)])
    got = [values[f"preact/{key}/layer00"] for key in KEYS]
    assert _same(got, _expected_percentiles(pre.numpy()))
    assert _same([values[f"preact/unit0/{key}/layer00"] for key in KEYS], got)  # the unit is the whole column here
    assert _same(got, row_percentiles([pre], QS)[0])  # the PyTorch path
    if kind in ("normal", "ties"):
        assert got == pytest.approx(np.percentile(pre.numpy().astype(np.float64), [15, 50, 85]), rel=1e-12)


def _step_tensors(rng, channels_last: bool):
    """A small CNN-like step: weights of several shapes, 4-D activations (channels-last or not)."""
    def t(*shape, scale=1.0):
        return torch.from_numpy((rng.standard_normal(shape) * scale).astype(np.float32))

    weights = [t(8, 3, 3, 3), t(16, 8, 3, 3), t(10, 16)]
    before = [w.clone() for w in weights]
    after = [w - t(*w.shape, scale=1e-3) for w in weights]
    grads = [t(*w.shape, scale=1e-4) for w in weights]
    grads[1].view(-1)[:100] = 0.0  # exact zeros: no logarithm, left out of the log10 |g| histogram
    grads[2] *= torch.from_numpy(10.0 ** rng.integers(-30, 3, grads[2].shape)).float()  # decades apart
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
    args = (grads, after, before, outputs, pres, posts, 2, "tanh", True)
    inline, inline_rows = _measure(*args, background=False)
    threaded, threaded_rows = _measure(*args, background=True)
    assert _same(list(inline.values()), list(threaded.values()))
    assert inline_rows.keys() == threaded_rows.keys()
    assert all(_same(inline_rows[tag], threaded_rows[tag]) for tag in inline_rows)

    wide = lambda tensor: tensor.numpy().astype(np.float64)  # noqa: E731
    expected = {}
    for i, (g, a, b, o) in enumerate(zip(grads, after, before, outputs, strict=True)):
        expected[f"grad_norm/weight/layer{i:02d}"] = np.linalg.norm(wide(g))
        expected[f"weight_norm/layer{i:02d}"] = np.linalg.norm(wide(a))
        expected[f"update_ratio/layer{i:02d}"] = np.linalg.norm(wide(a) - wide(b)) / np.linalg.norm(wide(b))
        expected[f"grad_norm/output/layer{i:02d}"] = np.linalg.norm(wide(o))
    exact = []  # order statistics: equal to numpy's, not only close
    for i, (pre, post, unit) in enumerate(zip(pres, posts, units, strict=True)):
        name = f"layer{i:02d}"
        expected |= {f"preact/mean/{name}": wide(pre).mean(), f"preact/std/{name}": wide(pre).std(),
                     f"act/mean/{name}": wide(post).mean(), f"act/std/{name}": wide(post).std(),
                     f"act/saturated/{name}": (np.abs(post.numpy()) > np.float32(0.99)).mean()}
        for key, whole, one in zip(KEYS, _expected_percentiles(pre.numpy()), _expected_percentiles(unit.numpy()),
                                   strict=True):
            expected |= {f"preact/{key}/{name}": whole, f"preact/unit0/{key}/{name}": one}
            exact += [f"preact/{key}/{name}", f"preact/unit0/{key}/{name}"]
    assert inline.keys() == expected.keys()
    assert inline == pytest.approx(expected, rel=1e-10, nan_ok=True)
    assert _same([inline[tag] for tag in exact], [expected[tag] for tag in exact])

    tensors = {f"preact/layer{i:02d}": wide(p).ravel() for i, p in enumerate(pres)}
    tensors |= {f"grad/weight/layer{i:02d}": wide(g).ravel() for i, g in enumerate(grads)}
    # log10 |g| of the nonzero values, as numpy computes it from the float32 gradient
    tensors |= {f"grad/log10_abs_weight/layer{i:02d}": np.log10(np.abs(wide(g)[g.numpy() != 0]))
                for i, g in enumerate(grads)}
    assert inline_rows.keys() == tensors.keys()
    for tag, values in tensors.items():
        row = inline_rows[tag]
        assert row[2] == values.size
        if np.isnan(values).any():
            assert np.isnan(row[0]) and not row[5:5 + HISTOGRAM_BINS].any()
            continue
        counts, edges = np.histogram(values, bins=HISTOGRAM_BINS, range=(values.min(), values.max()))
        # log10 from the C library, numpy's may differ in the last bit: extremes and edges to a few ulps
        same = (lambda a, b: a == pytest.approx(b, rel=1e-15, abs=1e-13)) if "log10" in tag else (lambda a, b: a == b)
        assert same(row[:2].tolist(), [values.min(), values.max()])
        assert row[5:5 + HISTOGRAM_BINS].tolist() == counts.tolist()
        assert same(row[5 + HISTOGRAM_BINS:].tolist(), edges[1:].tolist())
        assert row[3:5].tolist() == pytest.approx([values.sum(), (values ** 2).sum()], rel=1e-12)


@pytest.mark.parametrize("shape", [(9, 4), (5, 3, 7), (4, 3, 5, 6), (3, 4, 2, 3, 5)])
def test_the_unit_s_percentiles_in_every_layout(shape):
    pre = torch.randn(shape).transpose(0, -1).contiguous().transpose(0, -1)  # strided: batch innermost
    values, _ = _measure([], [], [], [], [pre], [pre.sigmoid()], unit=1)
    assert _same([values[f"preact/unit0/{key}/layer00"] for key in KEYS], _expected_percentiles(pre[:, 1].numpy()))


def test_histograms_of_the_widest_float32_range_and_of_infinities():
    values = np.array([-3.4e38, 0.0, 1.0, 3.4e38], dtype=np.float32)  # float64 edges never overflow
    grads = [torch.from_numpy(values), torch.tensor([-np.inf, 0.0, 1.0], dtype=torch.float32)]
    _, rows = _measure(grads, [], [], [], [], [], histograms=True)
    wide = values.astype(np.float64)
    counts, edges = np.histogram(wide, bins=HISTOGRAM_BINS, range=(wide.min(), wide.max()))
    assert rows["grad/weight/layer00"][5:].tolist() == counts.tolist() + edges[1:].tolist()
    assert not rows["grad/weight/layer01"][5:5 + HISTOGRAM_BINS].any()  # no finite range to bin: counts 0


def test_the_log10_histogram_of_a_gradient_of_zeros_counts_nothing():
    grads = [torch.zeros(4, 3), torch.tensor([0.0, 1e-30, -1e-2, float("nan")])]
    _, rows = _measure(grads, [], [], [], [], [], histograms=True)
    assert not rows["grad/log10_abs_weight/layer00"].any()  # a row of count 0, which the writer leaves out
    values = np.log10(np.array([1e-30, 1e-2], dtype=np.float32).astype(np.float64))  # NaN is left out too
    counts, edges = np.histogram(values, bins=HISTOGRAM_BINS)
    row = rows["grad/log10_abs_weight/layer01"]
    assert row[:3].tolist() == pytest.approx([values.min(), values.max(), 2], rel=1e-15)
    assert row[5:5 + HISTOGRAM_BINS].tolist() == counts.tolist()
    assert row[5 + HISTOGRAM_BINS:].tolist() == pytest.approx(edges[1:].tolist(), rel=1e-15, abs=1e-13)


def test_without_histograms_or_layers_of_some_kind():
    grads, after, before, outputs, pres, posts = _step_tensors(np.random.default_rng(1), False)
    values, rows = _measure([], after, before, [], [], [], histograms=True, background=True)
    assert rows == {} and sorted(values) == sorted(f"{family}/layer{i:02d}" for family in ("weight_norm",
                                                                                             "update_ratio")
                                                   for i in range(len(after)))


def test_an_empty_activation_gives_nan_statistics_not_a_crash():
    empty = torch.empty(0, 3)
    values, rows = _measure([], [], [], [], [empty], [empty], histograms=True, background=True)
    assert all(np.isnan(value) for tag, value in values.items() if tag.startswith("preact/"))
    assert not rows["preact/layer00"][5:5 + HISTOGRAM_BINS].any()


def test_bad_arguments_name_the_value():
    with pytest.raises(ValueError, match="got 256"):
        native.StepStatistics([], [], [], [], [], [], 0, "relu", (("grad_histogram", None, 0),), 0, 1, 256)
    with pytest.raises(ValueError, match="at most 8 percentiles of preact_percentile a step, got 9"):
        native.StepStatistics([], [], [], [], [], [], 0, "relu", (("preact_percentile", 0.5, 0),) * 9, 1)
    with pytest.raises(ValueError, match="measure no 'act_max'; they measure grad_norm, weight_norm"):
        native.StepStatistics([], [], [], [], [], [], 0, "relu", (("act_max", None, 0),), 1)
    weights = [torch.ones(3), torch.ones(4)]  # two layers: update_ratio at offset 1 would write values[2]
    with pytest.raises(ValueError, match=r"update_ratio cannot go where it is placed \(\[\('update_ratio', None, 1\)"
                                         r"\]\): .* the step's 2 values"):
        native.StepStatistics([], weights, weights, [], [], [], 0, "relu", (("update_ratio", None, 1),), 2)
    with pytest.raises(ValueError, match="grad_norm cannot go"):
        native.StepStatistics(weights, [], [], [], [], [], 0, "relu", (("grad_norm", None, -1),), 2)


def test_every_declared_statistic_has_a_pytorch_computation_and_every_compiled_loop_a_family():
    declared = {family.statistic for family in SCALARS + HISTOGRAMS}
    assert declared == set(TORCH_STATISTICS)
    assert set(native.statistics()) <= declared


def _captured_step(seed: int = 0):
    """A real float32 step of a small CNN (channels-last, as CNNs train here), captured by the probes."""
    from conftest import compose

    from bnlab.models.nets import build_model
    from bnlab.telemetry.probes import Probes

    cfg = compose("model=cnn", "model.depth=3", "model.width=8", "norm=bnlab")
    torch.manual_seed(seed)
    net = build_model(cfg.model, cfg.norm, (1, 8, 8), 4).to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.5)
    probes = Probes(net)
    probes.start(histograms=True)
    x = torch.randn(16, 1, 8, 8).contiguous(memory_format=torch.channels_last)
    torch.nn.functional.cross_entropy(net(x), torch.randint(0, 4, (16,))).backward()
    optimizer.step()
    return probes.capture()


def _by_tag(measurement) -> tuple[dict, dict]:
    values = dict(zip(measurement.tags, np.asarray(measurement.values).tolist(), strict=True))
    rows = dict(zip(measurement.histogram_tags, np.asarray(measurement.histogram_rows).tolist(), strict=True))
    return values, rows


def test_the_compiled_loops_put_every_value_where_the_declared_layout_says(monkeypatch):
    capture = _captured_step()
    declared = _by_tag(capture.measure())
    monkeypatch.setattr(layout, "SCALARS", SCALARS[::-1])  # the families in another order, and another place
    monkeypatch.setattr(layout, "HISTOGRAMS", HISTOGRAMS[::-1])
    layout.step_layout.cache_clear()
    try:
        reordered = capture.measure()
    finally:
        layout.step_layout.cache_clear()
    assert reordered.tags != list(declared[0]) and reordered.histogram_tags != list(declared[1])
    assert _by_tag(reordered) == declared


def test_a_statistic_declared_only_in_python_is_measured_on_the_compiled_path_too(monkeypatch):
    """Adding a statistic is one family and one PyTorch computation: a CPU step without its compiled loop gets
    it from PyTorch ops, in its place among the compiled values."""
    capture = _captured_step(1)
    monkeypatch.setattr(layout, "SCALARS", SCALARS[:3] + (layout.Family("act/max", "activations", "act_max"),)
                        + SCALARS[3:])
    monkeypatch.setitem(TORCH_STATISTICS, "act_max", lambda step, q: step.post_summary[:, 3])
    layout.step_layout.cache_clear()
    try:
        compiled = capture.measure()
        monkeypatch.setenv("BNLAB_NATIVE", "0")
        reference = capture.measure()
    finally:
        layout.step_layout.cache_clear()
    assert isinstance(compiled.values, np.ndarray) and isinstance(reference.values, torch.Tensor)  # the two paths
    assert compiled.tags == reference.tags and "act/max/layer00" in compiled.tags
    assert compiled.values.tolist() == pytest.approx(reference.values.tolist(), rel=1e-12)
    post = capture.pre_post["layer01"][1]
    assert compiled.values[compiled.tags.index("act/max/layer01")] == post.max().item()
