"""Exact statistics of many tensors at once, in PyTorch ops: norms, moments, percentiles, histograms.

Each function takes a list of tensors (a step's layers) and returns one float64 row per tensor, from
PyTorch ops over tensors of one shape stacked into rows, one op per step of a computation for all of
them, on the tensors' device. This is the readable reference path: a measured training step of CPU float32
tensors takes bnlab's compiled loops instead (`bnlab.telemetry.native.StepStatistics`, one call for the
whole step, tested against these functions and numpy); everything else (a GPU, other dtypes,
`BNLAB_NATIVE=0`) comes here. Percentiles come from one sort of each tensor: numpy's on the CPU
(vectorized, ~25x faster than torch's there), the device's elsewhere.

Histograms follow `numpy.histogram(row, bins, range=(min, max))` of the float64 values exactly: bin
edges are numpy's float64 `linspace`, bin k holds edge[k] <= x < edge[k+1] (the last bin also holds
the maximum), and a row of equal values gets the range (value - 0.5, value + 0.5).
"""

from __future__ import annotations

import numpy as np
import torch

HISTOGRAM_BINS = 30
# A histogram row: min, max, count, sum, sum of squares, then the bin counts, then the bins' right edges.
HISTOGRAM_HEAD = 5


def stack_by_shape(tensors: list[torch.Tensor]):
    """(indices, (len(indices), numel) stack) for each group of tensors sharing a shape and dtype."""
    groups: dict[tuple, list[int]] = {}
    for i, t in enumerate(tensors):
        groups.setdefault((tuple(t.shape), t.dtype), []).append(i)
    for indices in groups.values():
        yield indices, torch.stack([tensors[i].reshape(-1) for i in indices])


def _by_shape(tensors: list[torch.Tensor], rows_of) -> torch.Tensor:
    """Apply `rows_of` ((L, n) stack -> (L, ...) float64) to each group of one shape; rows in input order."""
    result = None
    for indices, stacked in stack_by_shape(tensors):
        rows = rows_of(stacked)
        if result is None:
            result = rows.new_empty((len(tensors), *rows.shape[1:]))
        result[torch.tensor(indices, device=rows.device)] = rows
    return result


def row_norms(tensors: list[torch.Tensor]) -> torch.Tensor:
    """The L2 norm of each tensor: (len,) float64, its squares summed in float64 (a vanished gradient's
    1e-25 squares to 1e-50, which float32 would round to 0)."""
    try:
        return torch.stack(torch._foreach_norm(tensors, 2, dtype=torch.float64))
    except TypeError:  # a torch without the dtype argument
        return _by_shape(tensors, lambda rows: torch.linalg.vector_norm(rows.double(), dim=1))


def update_ratios(after: list[torch.Tensor], before: list[torch.Tensor]) -> torch.Tensor:
    """(len,) float64: ||after[i] - before[i]|| / ||before[i]||, a step's size relative to the weights it
    changed, the difference of float32 (or narrower) values exact."""
    steps = torch._foreach_sub([t.double() for t in after], [t.double() for t in before])
    return row_norms(steps) / row_norms(before)


def summaries(tensors: list[torch.Tensor]) -> torch.Tensor:
    """(len, 6) float64: each tensor's sum, sum of squares, min, max (NaN if it holds a NaN), mean and
    population std (two-pass), all summed in float64."""
    def rows_of(stacked):  # (L, n)
        wide = stacked.double()
        mean = wide.mean(dim=1)
        std = (wide - mean[:, None]).square_().mean(dim=1).sqrt_()
        return torch.stack([wide.sum(dim=1), wide.square().sum(dim=1), wide.amin(dim=1), wide.amax(dim=1), mean, std],
                           dim=1)

    return _by_shape(tensors, rows_of)


def sort_rows(rows: torch.Tensor) -> torch.Tensor:
    """Each row sorted ascending (bf16/fp16 widened to float32 first), NaNs last.

    On the CPU numpy sorts (on the tensor's own memory; its vectorized sort is ~25x faster than
    torch's); elsewhere the device sorts."""
    rows = rows.detach()
    rows = rows.to(torch.promote_types(rows.dtype, torch.float32))
    if rows.device.type == "cpu":
        return torch.from_numpy(np.sort(rows.numpy(), axis=-1))
    return rows.sort(dim=-1).values


def percentiles(ordered: torch.Tensor, qs: list[float]) -> torch.Tensor:
    """Linear-interpolated percentiles (numpy's default method) of sorted rows: (L, n) -> (L, len(qs)).

    Only the order statistics around each percentile are read."""
    n = ordered.shape[-1]
    position = torch.tensor(qs, dtype=torch.float64) * (n - 1)
    lower = position.floor().long()
    upper = torch.clamp(lower + 1, max=n - 1)
    frac = (position - lower).to(ordered.device)
    lower, upper = lower.to(ordered.device), upper.to(ordered.device)
    below, above = ordered[..., lower].double(), ordered[..., upper].double()
    step = above - below  # numpy's _lerp: from the nearer end, so a percentile between equal values is that value
    return torch.where(frac >= 0.5, above - step * (1 - frac), below + step * frac)


def row_percentiles(tensors: list[torch.Tensor], qs: list[float]) -> torch.Tensor:
    """(len, len(qs)) float64: numpy's linear percentiles of each tensor (any layout), from one sort."""
    return _by_shape(tensors, lambda stacked: percentiles(sort_rows(stacked), qs))


def histogram_rows(tensors: list[torch.Tensor], summary: torch.Tensor | None = None,
                   bins: int = HISTOGRAM_BINS) -> torch.Tensor:
    """One histogram row per tensor: (len, HISTOGRAM_HEAD + 2 * bins) float64 (see HISTOGRAM_HEAD).
    `summary`: the tensors' `summaries`, where the caller has them already. A tensor holding NaN or
    infinity has no finite range to bin: its counts are 0."""
    summary = summaries(tensors) if summary is None else summary
    low, high = summary[:, 2], summary[:, 3]
    edges = _edges(low, high, bins)
    counts = torch.empty(len(tensors), bins, dtype=torch.float64, device=edges.device)
    for indices, stacked in stack_by_shape(tensors):
        where = torch.tensor(indices, device=edges.device)
        counts[where] = _sorted_counts(sort_rows(stacked), edges[where])
    counts = torch.where(torch.isfinite(edges).all(dim=1, keepdim=True), counts, 0.0)  # (no host sync on a GPU)
    sizes = torch.tensor([t.numel() for t in tensors], dtype=torch.float64, device=edges.device)
    return torch.cat([torch.stack([low, high, sizes, summary[:, 0], summary[:, 1]], dim=1), counts, edges[:, 1:]],
                     dim=1)


def _edges(low: torch.Tensor, high: torch.Tensor, bins: int) -> torch.Tensor:
    """numpy.histogram's float64 bin edges for each row's (min, max): (L, bins + 1)."""
    low, high = low.double(), high.double()
    same = low == high
    first, last = torch.where(same, low - 0.5, low), torch.where(same, high + 0.5, high)
    # numpy's linspace: k * step + start, the last edge set to stop
    steps = torch.arange(bins + 1, dtype=torch.float64, device=low.device)
    edges = steps * ((last - first) / bins)[:, None] + first[:, None]
    edges[:, -1] = last
    return edges


def _sorted_counts(ordered: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """(L, bins) float64 counts of sorted (L, n) rows over their (L, bins + 1) edges: each inner edge is
    one binary search."""
    rows, n = ordered.shape
    inner = edges[:, 1:-1]
    # x < edge for a value x of the rows' dtype <=> x < (the smallest value of that dtype >= edge)
    threshold = inner.to(ordered.dtype)
    up = torch.nextafter(threshold, torch.full_like(threshold, float("inf")))
    threshold = torch.where(threshold.double() < inner, up, threshold)
    below = torch.searchsorted(ordered, threshold.contiguous())  # (rows, bins - 1): values under each edge
    cuts = torch.cat([below.new_zeros(rows, 1), below, below.new_full((rows, 1), n)], dim=1)
    return cuts.diff(dim=1).double()


def log10_magnitude_rows(tensors: list[torch.Tensor], bins: int = HISTOGRAM_BINS) -> torch.Tensor:
    """A histogram row (as `histogram_rows`) of log10 |x| over each tensor's nonzero values: a vanished
    gradient's 1e-18 and a healthy 1e-2 both get bins, where a histogram of x itself puts all of a vanished
    layer in the one bin around 0. Exact zeros have no logarithm and are left out (the row's count says how
    many values were binned); a tensor of zeros gets a row of count 0. On the CPU numpy bins each tensor
    (`numpy.histogram`, which `histogram_rows` equals; ~4x faster than its PyTorch path for one tensor)."""
    if not all(t.is_cpu for t in tensors):
        return _log10_rows_on_device(tensors, bins)
    rows = np.zeros((len(tensors), HISTOGRAM_HEAD + 2 * bins))
    for row, t in zip(rows, tensors, strict=True):
        # float32 at least: it reaches 1e-45 (float16's 6e-8 does not)
        array = np.abs(t.detach().reshape(-1).to(torch.promote_types(t.dtype, torch.float32)).numpy())
        values = np.log10(array[array > 0], dtype=np.float64)
        if values.size:
            row[:HISTOGRAM_HEAD] = values.min(), values.max(), values.size, values.sum(), np.square(values).sum()
            if np.isfinite(values.max()):
                counts, edges = np.histogram(values, bins=bins)
                row[HISTOGRAM_HEAD:HISTOGRAM_HEAD + bins], row[HISTOGRAM_HEAD + bins:] = counts, edges[1:]
            else:  # an infinite gradient: no finite range to bin (as histogram_rows), edges up to inf
                row[HISTOGRAM_HEAD + bins:] = np.inf
    return torch.from_numpy(rows)


def _log10_rows_on_device(tensors: list[torch.Tensor], bins: int) -> torch.Tensor:
    rows = []
    for t in tensors:
        values = t.detach().reshape(-1).abs().to(torch.promote_types(t.dtype, torch.float32))
        values = values[values > 0].log10()
        rows.append(histogram_rows([values], bins=bins)[0] if values.numel() else
                    torch.zeros(HISTOGRAM_HEAD + 2 * bins, dtype=torch.float64, device=values.device))
    return torch.stack(rows)
