"""Exact statistics of many tensors at once, computed on their device: norms, percentiles, histograms.

Tensors of one shape are stacked into rows, so each step of a computation is one op for all of
them: on a CPU the per-op overhead, not the arithmetic, is the cost. Percentiles and histograms
both come from each row sorted once (a preactivation's sort serves both).

Histograms follow `numpy.histogram(row, bins, range=(min, max))` exactly: bin edges are numpy's
float64 `linspace`, bin k holds edge[k] <= x < edge[k+1] (the last bin also holds the maximum),
and a row of equal values gets the range (value - 0.5, value + 0.5). On a sorted row each inner
edge is one binary search, so the bins cost almost nothing beyond the sort.
"""

from __future__ import annotations

import math

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


# A float32 norm accumulates squares in float32: squares of elements below ~1e-19 underflow (each
# loses under 1.2e-38) and above ~1e19 overflow. Where a norm is below its floor, max(this,
# 1e-15 * sqrt(numel)), or not finite, the lost squares could change it by more than 1e-8 relative.
EXACT_NORM_FLOOR = 1e-12


def row_norms(tensors: list[torch.Tensor]) -> torch.Tensor:
    """The L2 norm of each tensor: (len,) float64.

    For float32 tensors on the CPU each norm is first taken in float32, all in one multi-tensor op,
    and only those below their floor (see EXACT_NORM_FLOOR) or not finite (a vanished or exploded
    gradient: squares of 1e-21 underflow float32, and its norm would read 0 instead of ~1e-18) are
    taken again in float64; the others are then within 1e-8 of the float64 norm (float32's own
    rounding aside). Widening every tensor to float64 cost twice as much (the copies). Other
    dtypes, and other devices (where a host read to find the few would cost more), take every
    norm in float64."""
    if tensors[0].device.type != "cpu" or any(t.dtype != torch.float32 for t in tensors):
        return _norms64(tensors)
    norms = torch.stack(torch._foreach_norm(tensors, 2)).double()
    floors = torch.tensor([max(EXACT_NORM_FLOOR, 1e-15 * math.sqrt(t.numel())) for t in tensors],
                          dtype=torch.float64)
    redo = ((norms < floors) | ~torch.isfinite(norms)).nonzero().flatten().tolist()
    if redo:
        norms[redo] = _norms64([tensors[i] for i in redo])
    return norms


def _norms64(tensors: list[torch.Tensor]) -> torch.Tensor:
    try:
        return torch.stack(torch._foreach_norm(tensors, 2, dtype=torch.float64))
    except TypeError:  # a torch without the dtype argument: stack tensors of one shape, widen, reduce
        result = torch.empty(len(tensors), dtype=torch.float64, device=tensors[0].device)
        for indices, stacked in stack_by_shape(tensors):
            result[torch.tensor(indices, device=result.device)] = torch.linalg.vector_norm(stacked.double(), dim=1)
        return result


def sort_rows(rows: torch.Tensor) -> torch.Tensor:
    """Each row sorted ascending (bf16/fp16 widened to float32 first).

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
    frac = (position - lower).to(ordered.dtype).to(ordered.device)
    lower, upper = lower.to(ordered.device), upper.to(ordered.device)
    return ordered[..., lower] * (1 - frac) + ordered[..., upper] * frac


def histograms(groups: list[torch.Tensor], bins: int = HISTOGRAM_BINS) -> torch.Tensor:
    """One histogram row per row of each sorted (L_g, n_g) group, all groups' rows stacked:
    (sum of L_g, HISTOGRAM_HEAD + 2 * bins), float64 (see HISTOGRAM_HEAD for the columns)."""
    device = groups[0].device
    ends = torch.cat([g[:, [0, -1]].double() for g in groups])  # (rows, 2): each row's min and max
    low, high = ends[:, 0], ends[:, 1]
    same = low == high
    first, last = torch.where(same, low - 0.5, low), torch.where(same, high + 0.5, high)
    # numpy's linspace: k * step + start, the last edge set to stop
    steps = torch.arange(bins + 1, dtype=torch.float64, device=device)
    edges = steps * ((last - first) / bins)[:, None] + first[:, None]
    edges[:, -1] = last
    counts, sums, squares, start = [], [], [], 0
    for ordered in groups:
        rows, n = ordered.shape
        inner = edges[start:start + rows, 1:-1]
        # x < edge for a value x of the rows' dtype <=> x < (the smallest value of that dtype >= edge)
        threshold = inner.to(ordered.dtype)
        up = torch.nextafter(threshold, torch.full_like(threshold, float("inf")))
        threshold = torch.where(threshold.double() < inner, up, threshold)
        below = torch.searchsorted(ordered, threshold.contiguous())  # (rows, bins - 1): values under each edge
        cuts = torch.cat([below.new_zeros(rows, 1), below, below.new_full((rows, 1), n)], dim=1)
        counts.append(cuts.diff(dim=1))
        wide = ordered.double()  # one widened copy for both sums: faster than two reductions with dtype=
        sums.append(wide.sum(dim=1))
        squares.append(torch.linalg.vector_norm(wide, dim=1).square())  # (vecdot makes a temporary)
        start += rows
    sizes = torch.tensor([n for g in groups for n in [g.shape[1]] * g.shape[0]], dtype=torch.float64,
                         device=device)
    return torch.cat([ends, sizes[:, None], torch.cat(sums)[:, None], torch.cat(squares)[:, None],
                      torch.cat(counts).double(), edges[:, 1:]], dim=1)
