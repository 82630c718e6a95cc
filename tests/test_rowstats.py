"""Row statistics against numpy: percentiles, histograms (numpy.histogram's bins exactly) and norms."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bnlab.rowstats import (
    EXACT_NORM_FLOOR,
    HISTOGRAM_BINS,
    HISTOGRAM_HEAD,
    histograms,
    percentiles,
    row_norms,
    sort_rows,
)


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


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_histograms_equal_numpy_for_groups_of_rows(dtype):
    torch.manual_seed(0)
    a = torch.randn(3, 1000, dtype=dtype) * torch.tensor([[1.0], [1e-20], [1e6]], dtype=dtype)
    b = torch.rand(2, 17, dtype=dtype)
    rows = histograms([sort_rows(a), sort_rows(b)])
    assert _mismatches(rows, [row.numpy() for row in a] + [row.numpy() for row in b]) == []


def test_values_on_and_next_to_bin_edges_fall_in_numpy_s_bin():
    # integers 0..30 put every value on an edge; float32 neighbours of the float64 edges straddle them
    on_edges = torch.arange(31, dtype=torch.float32)
    edges = np.linspace(-1.0, 2.0, HISTOGRAM_BINS + 1)  # edges like -0.9, 0.1, ... are not float32 values
    near = torch.tensor(np.concatenate([np.nextafter(edges.astype(np.float32), np.float32(-np.inf)),
                                        edges.astype(np.float32),
                                        np.nextafter(edges.astype(np.float32), np.float32(np.inf))]))
    near = near.clamp(-1.0, 2.0)
    rows = histograms([sort_rows(on_edges[None]), sort_rows(near[None])])
    assert _mismatches(rows, [on_edges.numpy(), near.numpy()]) == []


def test_a_row_of_equal_values_gets_numpy_s_unit_range():
    constant = torch.zeros(2, 50)
    constant[1] = 3.5
    assert _mismatches(histograms([sort_rows(constant)]), [constant[0].numpy(), constant[1].numpy()]) == []


def test_half_precision_rows_are_widened_and_binned_exactly():
    x = (torch.randn(2, 500) * 4).to(torch.bfloat16)
    assert _mismatches(histograms([sort_rows(x)]), [row.float().numpy() for row in x]) == []


def test_non_finite_values_do_not_fail():
    x = torch.tensor([[1.0, float("nan"), 2.0, 3.0], [1.0, float("inf"), -1.0, 0.0]])
    rows = histograms([sort_rows(x)])
    assert rows.shape == (2, HISTOGRAM_HEAD + 2 * HISTOGRAM_BINS)
    assert rows[:, 2].tolist() == [4.0, 4.0]


def test_percentiles_match_numpy_linear_interpolation_row_by_row():
    x = torch.randn(3, 1001, dtype=torch.float64)
    got = percentiles(sort_rows(x), [0.0, 0.15, 0.5, 0.85, 1.0])
    expected = np.percentile(x.numpy(), [0, 15, 50, 85, 100], axis=1).T
    assert np.allclose(got.numpy(), expected, rtol=0, atol=1e-12)


def test_vanished_gradients_are_measured_not_rounded_to_zero():
    # Per-element values of 1e-25 square to 1e-50, below float32's range: the norm must still be right.
    g = torch.full((64, 128), 1e-25, dtype=torch.float32)
    assert row_norms([g, 2 * g])[0].item() == pytest.approx(1e-25 * np.sqrt(64 * 128), rel=1e-6)
    assert row_norms([g, 2 * g])[1].item() == pytest.approx(2e-25 * np.sqrt(64 * 128), rel=1e-6)


def test_float32_norms_are_exact_to_float32_and_tiny_or_huge_ones_to_float64():
    torch.manual_seed(3)
    ordinary = [torch.randn(128, 128) * scale for scale in (1e-3, 1.0, 1e3)]
    tiny = torch.randn(64, 128) * 1e-20  # every square underflows float32
    mixed = torch.randn(64, 128) * 1e-20  # norm just above the floor, all squares but one underflow
    mixed[0, 0] = 2 * EXACT_NORM_FLOOR
    huge = torch.randn(64, 128) * 1e25  # every square overflows float32
    tensors = [*ordinary, tiny, mixed, huge]
    got = row_norms(tensors).tolist()
    bf16 = torch.randn(64, 128).to(torch.bfloat16)  # half precision: every norm in float64
    assert row_norms([bf16]).item() == pytest.approx(np.linalg.norm(bf16.double().numpy()), rel=1e-12)
    for index, (tensor, value) in enumerate(zip(tensors, got, strict=True)):
        exact = np.linalg.norm(tensor.double().numpy())
        tolerance = {len(ordinary): 1e-12, len(ordinary) + 1: 1e-8, len(ordinary) + 2: 1e-12}.get(index, 1e-6)
        assert value == pytest.approx(exact, rel=tolerance)
