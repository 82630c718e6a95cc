"""Row statistics against numpy, on both measuring paths: PyTorch ops (`bnlab.telemetry.statistics`, the
reference) and bnlab's compiled loops (`native.StepStatistics`, which take CPU float32 tensors only), each
statistic placed on its own as a step's layout would place it.

The `measure` fixture runs a test once on each; the compiled one fails if the library cannot be built (this
project's machines have a C++ compiler).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bnlab.telemetry import native, statistics
from bnlab.telemetry.statistics import HISTOGRAM_BINS, HISTOGRAM_HEAD


class Torch:
    """The PyTorch path, as `bnlab.telemetry.layout.TORCH_STATISTICS` calls it."""

    norms = staticmethod(statistics.row_norms)
    histogram_rows = staticmethod(statistics.histogram_rows)
    log10_rows = staticmethod(statistics.log10_magnitude_rows)
    log10 = staticmethod(np.log10)  # what its log10 histograms bin
    percentiles = staticmethod(statistics.row_percentiles)

    @staticmethod
    def moments(tensors):
        return statistics.summaries(tensors)[:, 4:]  # mean, population std

    @staticmethod
    def updates(after, before):
        return torch.stack([statistics.row_norms(after), statistics.update_ratios(after, before)], dim=1)


class Compiled:
    """The compiled loops: each tensor one layer of a step that measures one statistic (or two)."""


    @staticmethod
    def _values(placements, count, **tensors):
        kinds = {kind: tensors.get(kind, []) for kind in ("grads", "after", "before", "outputs", "pres", "posts")}
        rows = len(kinds["grads"]) if placements[0][0].endswith("histogram") else 0
        step = native.StepStatistics(*kinds.values(), 0, "relu", placements, count, rows, HISTOGRAM_BINS)
        return torch.from_numpy(step.histograms if rows else step.values)

    @classmethod
    def norms(cls, tensors):
        return cls._values((("grad_norm", None, 0),), len(tensors), grads=tensors)

    @classmethod
    def histogram_rows(cls, tensors):
        return cls._values((("grad_histogram", None, 0),), 0, grads=tensors)

    log10 = staticmethod(np.vectorize(math.log10, otypes=[np.float64]))  # the C library's, which numpy's may
    # differ from in the last bit

    @classmethod
    def log10_rows(cls, tensors):
        return cls._values((("grad_log10_histogram", None, 0),), 0, grads=tensors)

    @classmethod
    def percentiles(cls, tensors, qs):
        pres = [t.reshape(len(t), -1) if t.dim() < 2 else t for t in tensors]  # (batch, units), as layers give
        placements = tuple(("preact_percentile", q, j * len(pres)) for j, q in enumerate(qs))
        return cls._values(placements, len(qs) * len(pres), pres=pres, posts=pres).reshape(len(qs), -1).T

    @classmethod
    def moments(cls, tensors):
        pres = [t.reshape(len(t), -1) if t.dim() < 2 else t for t in tensors]
        placements = (("preact_mean", None, 0), ("preact_std", None, len(pres)))
        return cls._values(placements, 2 * len(pres), pres=pres, posts=pres).reshape(2, -1).T

    @classmethod
    def updates(cls, after, before):
        placements = (("weight_norm", None, 0), ("update_ratio", None, len(after)))
        return cls._values(placements, 2 * len(after), after=after, before=before).reshape(2, -1).T


@pytest.fixture(autouse=True)
def compiled_available(monkeypatch):
    monkeypatch.delenv("BNLAB_NATIVE", raising=False)
    assert native.library() is not None, "the compiled loops did not build (see the log's warning)"


@pytest.fixture(params=[Torch, Compiled], ids=["torch", "compiled"])
def measure(request):
    return request.param


# The compiled loops take float32 tensors only (the probes send others to the PyTorch path)
BY_DTYPE = pytest.mark.parametrize("measure,dtype", [(Torch, torch.float32), (Torch, torch.float64),
                                                     (Compiled, torch.float32)],
                                   ids=["torch-float32", "torch-float64", "compiled-float32"])


def _expected_row(values: np.ndarray) -> list[float]:
    values = values.astype(np.float64).ravel()
    counts, edges = np.histogram(values, bins=HISTOGRAM_BINS, range=(values.min(), values.max()))
    return [values.min(), values.max(), values.size, values.sum(), (values ** 2).sum(), *counts, *edges[1:]]


def _mismatches(rows: torch.Tensor, expected: list[np.ndarray]) -> list[str]:
    """Where the histogram rows differ from numpy's for each of `expected` (an empty list: nowhere)."""
    if rows.shape != (len(expected), HISTOGRAM_HEAD + 2 * HISTOGRAM_BINS):
        return [f"shape {tuple(rows.shape)}"]
    found = []
    for index, (got, values) in enumerate(zip(rows.tolist(), expected, strict=True)):
        want = _expected_row(values)
        if got[:3] != want[:3]:
            found.append(f"row {index}: min, max, count {got[:3]} != {want[:3]}")
        if got[3:5] != pytest.approx(want[3:5], rel=1e-12, abs=1e-300):
            found.append(f"row {index}: sum, sum of squares {got[3:5]} != {want[3:5]}")
        if got[HISTOGRAM_HEAD:] != want[HISTOGRAM_HEAD:]:  # counts and edges, exactly
            found.append(f"row {index}: bins {got[HISTOGRAM_HEAD:]} != {want[HISTOGRAM_HEAD:]}")
    return found


@BY_DTYPE
def test_histograms_equal_numpy_for_tensors_of_several_shapes(measure, dtype):
    torch.manual_seed(0)
    a = torch.randn(3, 1000, dtype=dtype) * torch.tensor([[1.0], [1e-20], [1e6]], dtype=dtype)
    tensors = [*a, torch.rand(2, 17, dtype=dtype), torch.rand(17, 2, dtype=dtype), torch.randn(5, 3, 4, 4, dtype=dtype)]
    assert _mismatches(measure.histogram_rows(tensors), [t.numpy() for t in tensors]) == []


def test_values_on_and_next_to_bin_edges_fall_in_numpy_s_bin(measure):
    # integers 0..30 put every value on an edge; float32 neighbours of the float64 edges straddle them
    on_edges = torch.arange(31, dtype=torch.float32)
    edges = np.linspace(-1.0, 2.0, HISTOGRAM_BINS + 1)  # edges like -0.9, 0.1, ... are not float32 values
    near = torch.tensor(np.concatenate([np.nextafter(edges.astype(np.float32), np.float32(-np.inf)),
                                        edges.astype(np.float32),
                                        np.nextafter(edges.astype(np.float32), np.float32(np.inf))]))
    near = near.clamp(-1.0, 2.0)
    assert _mismatches(measure.histogram_rows([on_edges, near]), [on_edges.numpy(), near.numpy()]) == []


def test_a_row_of_equal_values_gets_numpy_s_unit_range(measure):
    constant = [torch.zeros(50), torch.full((7, 3), 3.5)]
    assert _mismatches(measure.histogram_rows(constant), [t.numpy() for t in constant]) == []


def test_channels_last_tensors_give_the_statistics_of_their_values(measure):
    x = torch.randn(4, 6, 5, 5)
    wide = x.contiguous(memory_format=torch.channels_last)
    assert wide.stride() != x.stride()
    assert _mismatches(measure.histogram_rows([wide]), [x.numpy()]) == []
    assert measure.moments([wide])[0].tolist() == pytest.approx(measure.moments([x])[0].tolist(), rel=1e-14)
    assert measure.percentiles([wide[:, 0]], [0.5]).tolist() == measure.percentiles([x[:, 0]], [0.5]).tolist()


def test_half_precision_tensors_are_widened_and_binned_exactly():
    x = (torch.randn(2, 500) * 4).to(torch.bfloat16)
    assert _mismatches(statistics.histogram_rows(list(x)), [row.float().numpy() for row in x]) == []
    assert statistics.row_percentiles(list(x), [0.15, 0.5]).tolist() == \
        [np.percentile(row.double().numpy(), [15, 50]).tolist() for row in x]


def test_non_finite_values_do_not_fail(measure):
    x = [torch.tensor([1.0, float("nan"), 2.0, 3.0]), torch.tensor([1.0, float("inf"), -1.0, 0.0])]
    rows = measure.histogram_rows(x)
    assert rows.shape == (2, HISTOGRAM_HEAD + 2 * HISTOGRAM_BINS)
    assert rows[:, 2].tolist() == [4.0, 4.0]
    assert rows[:, HISTOGRAM_HEAD:HISTOGRAM_HEAD + HISTOGRAM_BINS].count_nonzero() == 0  # no finite range to bin
    # NaN sorts after every number, as numpy.sort puts it: the low percentiles stay numbers
    assert measure.percentiles(x[:1], [0.0, 0.5])[0].tolist() == [1.0, 2.5]


def _log10_cases() -> dict[str, np.ndarray]:
    """float32 gradients whose log10 |g| lands on, and within float32 ulps of, bin edges."""
    rng = np.random.default_rng(5)
    edges = np.linspace(-6.0, -2.0, HISTOGRAM_BINS + 1)  # the bins of magnitudes 1e-6 .. 1e-2
    on_edges = (10.0 ** edges).astype(np.float32)
    neighbours = np.concatenate([on_edges.view(np.int32) + step for step in (-2, -1, 0, 1, 2)]).view(np.float32)
    neighbours = neighbours[(neighbours >= on_edges[0]) & (neighbours <= on_edges[-1])]
    return {
        "on and next to edges": np.concatenate([neighbours, -neighbours[::3], rng.uniform(1e-6, 1e-2, 500),
                                                [0.0, np.nan]]).astype(np.float32),
        # a range a few ulps wide: every value is near an edge
        "adjacent floats": (np.float32(0.75).view(np.int32) + np.arange(40) % 7).view(np.float32),
        "subnormal to huge": np.array([1e-45, 3e-42, 1e-39, 1.2e-38, 0.5, -2.0, 3.4e38], dtype=np.float32),
        "log-uniform": (10.0 ** rng.uniform(-40, 38, 20000) * rng.choice([-1, 1], 20000)).astype(np.float32),
        "equal": np.array([0.125] * 7 + [-0.125, 0.0], dtype=np.float32),
        # 2^a .. 2^(a + 30 m): the bins' edges fall on the values' log10, to within the last bits of both
        **{f"2^{low} to 2^{low + span}": 2.0 ** np.arange(low, low + span + 1, dtype=np.float32)
           for low, span in ((-39, 30), (-30, 30), (0, 30), (-149, 30), (-100, 60), (50, 60))},
    }


def _expected_log10_row(g: np.ndarray, log10) -> np.ndarray:
    """numpy's row of log10 |g| over g's nonzero, non-NaN values."""
    values = log10(np.abs(g[(g != 0) & ~np.isnan(g)].astype(np.float64)))
    counts, edges = np.histogram(values, bins=HISTOGRAM_BINS, range=(values.min(), values.max()))
    return np.array([values.min(), values.max(), values.size, values.sum(), (values ** 2).sum(), *counts, *edges[1:]])


@pytest.mark.parametrize("case", list(_log10_cases()))
def test_log10_histograms_bin_every_value_as_numpy_bins_its_log10(measure, case):
    g = _log10_cases()[case]
    row, expected = measure.log10_rows([torch.from_numpy(g)])[0].numpy(), _expected_log10_row(g, measure.log10)
    sums = [3, 4]
    assert np.delete(row, sums).tolist() == np.delete(expected, sums).tolist()  # min, max, count, bins, edges
    assert row[sums].tolist() == pytest.approx(expected[sums].tolist(), rel=1e-14)


def test_log10_histogram_of_an_infinite_gradient_counts_it_and_bins_nothing(measure):
    row = measure.log10_rows([torch.tensor([2.0 ** -10, float("inf"), 0.0, -(2.0 ** -20)])])[0].tolist()
    assert row[:HISTOGRAM_HEAD] == [np.log10(2.0 ** -20), float("inf"), 3.0, float("inf"), float("inf")]
    assert not any(row[HISTOGRAM_HEAD:HISTOGRAM_HEAD + HISTOGRAM_BINS])  # no finite range to bin
    assert row[HISTOGRAM_HEAD + HISTOGRAM_BINS:] == [float("inf")] * HISTOGRAM_BINS


@BY_DTYPE
def test_percentiles_match_numpy_linear_interpolation(measure, dtype):
    torch.manual_seed(1)
    x = torch.randn(3, 1001, dtype=dtype)
    x[2] = x[2].round()  # many equal values: numpy interpolates from the nearer end
    tensors = [*x, x.T[0], torch.randn(7, 5, 3, dtype=dtype)[:, 0]]  # strided views among them
    qs = [0.0, 0.15, 0.5, 0.85, 1.0]
    got = measure.percentiles(tensors, qs)
    for row, tensor in zip(got.tolist(), tensors, strict=True):
        assert row == np.percentile(tensor.double().numpy(), [q * 100 for q in qs]).tolist()


@BY_DTYPE
def test_moments_match_numpy_in_float64(measure, dtype):
    torch.manual_seed(2)
    tensors = [torch.randn(64, 128, dtype=dtype) * 3 + 1e3, torch.rand(9, dtype=dtype),
               torch.randn(2, 3, 4, 5, dtype=dtype), torch.tensor([1.0, float("nan"), -2.0], dtype=dtype)]
    moments, heads = measure.moments(tensors), measure.histogram_rows(tensors)[:, :HISTOGRAM_HEAD]
    for (mean, std), (low, high, count, total, squares), tensor in zip(moments.tolist(), heads.tolist(), tensors,
                                                                      strict=True):
        values = tensor.double().numpy()
        if np.isnan(values).any():
            assert all(np.isnan([mean, std, low, high, total]))
            continue
        assert [mean, std, total, squares] == pytest.approx([values.mean(), values.std(), values.sum(),
                                                             (values ** 2).sum()], rel=1e-12)
        assert [low, high, count] == [values.min(), values.max(), values.size]


def test_the_pytorch_summaries_match_numpy():
    tensors = [torch.randn(64, 128, dtype=torch.float64) * 3 + 1e3, torch.tensor([1.0, float("nan"), -2.0])]
    rows = statistics.summaries(tensors).tolist()
    values = tensors[0].numpy()
    assert rows[0] == pytest.approx([values.sum(), (values ** 2).sum(), values.min(), values.max(), values.mean(),
                                     values.std()], rel=1e-12)
    assert all(np.isnan(rows[1][:4]))  # sum, sum of squares, min and max are NaN


def test_vanished_gradients_are_measured_not_rounded_to_zero(measure):
    # Per-element values of 1e-25 square to 1e-50, below float32's range: the norm must still be right.
    g = torch.full((64, 128), 1e-25, dtype=torch.float32)
    assert measure.norms([g, 2 * g]).tolist() == pytest.approx([1e-25 * np.sqrt(64 * 128),
                                                                2e-25 * np.sqrt(64 * 128)], rel=1e-12)


def test_norms_are_float64_exact_from_tiny_to_huge(measure):
    torch.manual_seed(3)
    tensors = [torch.randn(128, 128) * scale for scale in (1e-20, 1e-3, 1.0, 1e3, 1e25)]
    for value, tensor in zip(measure.norms(tensors).tolist(), tensors, strict=True):
        assert value == pytest.approx(np.linalg.norm(tensor.double().numpy()), rel=1e-12)
    bf16 = torch.randn(64, 128).to(torch.bfloat16)  # the PyTorch path widens it
    assert statistics.row_norms([bf16]).item() == pytest.approx(np.linalg.norm(bf16.double().numpy()), rel=1e-12)


def test_update_ratios_take_the_float32_difference_exactly(measure):
    torch.manual_seed(4)
    after = [torch.randn(128, 128), torch.randn(10) * 1e-30,
             torch.randn(3, 4, 5, 5).contiguous(memory_format=torch.channels_last)]
    before = [a + torch.randn_like(a) * 1e-6 for a in after]
    before[2] = before[2].contiguous()  # another memory order than `after`
    got = measure.updates(after, before).tolist()
    for (norm, ratio), a, b in zip(got, after, before, strict=True):
        a, b = a.double().numpy(), b.double().numpy()
        assert norm == pytest.approx(np.linalg.norm(a), rel=1e-12)
        assert ratio == pytest.approx(np.linalg.norm(a - b) / np.linalg.norm(b), rel=1e-12)


def test_the_compiled_path_is_taken_for_cpu_float32_only(path):
    x32, x64 = torch.zeros(3), torch.zeros(3, dtype=torch.float64)
    assert native.handles([x32]) == (path == "native")
    assert not native.handles([x32, x64])
    assert not native.handles([])
