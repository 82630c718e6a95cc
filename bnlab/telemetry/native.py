"""bnlab's compiled telemetry loops (`rowstats.cpp` beside this file): a measured step's statistics of CPU
float32 tensors in one call, built and loaded by bnlab's one loader (`bnlab.nn.kernels.build`, switched off by
`BNLAB_NATIVE=0`), called through ctypes. Where `library()` is None, `bnlab.telemetry.statistics` computes
the same statistics with PyTorch ops (the reference this is tested against).
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path

import numpy as np
import torch

from bnlab.nn.kernels import build

SOURCE = Path(__file__).with_name("rowstats.cpp")
_P, _N, _INT = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int  # every array is passed as its address
_SIGNATURES = {  # name: (argument types, result type)
    "bnlab_moments": ([_N, _P, _P, _INT, _P], None),
    "bnlab_update_norms": ([_N, _P, _P, _P, _P], None),
    "bnlab_histograms": ([_N, _P, _P, _N, _P, _P, _P], None),
    "bnlab_saturated": ([_N, _P, _P, _P, _INT, _P], None),
    "bnlab_step": ([_P], None),
    "bnlab_step_start": ([_P], _P),
    "bnlab_step_wait": ([_P], None),
}
SATURATION_KINDS = {"sigmoid": 1, "tanh": 2, "relu": 3, "gelu": 4}


def library() -> ctypes.CDLL | None:
    """The compiled statistics, or None where they are switched off (BNLAB_NATIVE=0) or cannot be built."""
    return build.load((SOURCE,), _SIGNATURES, "telemetry statistics use the slower PyTorch path")


def handles(tensors: list[torch.Tensor]) -> bool:
    """Whether the compiled statistics can take these tensors (CPU, float32) and are available."""
    return bool(tensors) and all(t.is_cpu and t.dtype == torch.float32 for t in tensors) \
        and library() is not None


# The wrappers below take lists of CPU float32 tensors (see `handles`) and return float64 numpy arrays (a
# training step's measurement calls them on a worker thread, where every Python op competes for the GIL).


def moments(tensors: list[torch.Tensor], centered: bool = True) -> np.ndarray:
    """(len, 6): sum, sum of squares, min, max, mean, population std (0 unless `centered`) of each tensor."""
    tensors = [_dense(t) for t in tensors]
    out = np.empty((len(tensors), 6))
    library().bnlab_moments(len(tensors), _addresses(tensors), _sizes(tensors), int(centered), out.ctypes.data)
    return out


def update_norms(after: list[torch.Tensor], before: list[torch.Tensor]) -> np.ndarray:
    """(len, 2): the L2 norms of after[i] and of after[i] - before[i], each difference exact (in float64)."""
    pairs = [_same_layout(x, y) for x, y in zip(after, before, strict=True)]
    after, before = [x for x, _ in pairs], [y for _, y in pairs]
    out = np.empty((len(after), 2))
    library().bnlab_update_norms(len(after), _addresses(after), _addresses(before), _sizes(after), out.ctypes.data)
    return out


def histogram_counts(tensors: list[torch.Tensor], edges: np.ndarray) -> np.ndarray:
    """(len, bins) counts of each tensor over its row of float64 `edges` (len, bins + 1), which must be
    numpy's linspace edges (as `statistics` makes them): the loop reads their ends and recomputes the rest."""
    tensors = [_dense(t) for t in tensors]
    edges = np.ascontiguousarray(edges, dtype=np.float64)
    bins = edges.shape[1] - 1
    if not 0 < bins <= 255:
        raise ValueError(f"histograms take 1 to 255 bins, got {bins}")
    scratch = np.empty(max(t.numel() for t in tensors), dtype=np.int32)
    out = np.empty((len(tensors), bins))
    library().bnlab_histograms(len(tensors), _addresses(tensors), _sizes(tensors), bins, edges.ctypes.data,
                               scratch.ctypes.data, out.ctypes.data)
    return out


def saturated(activation: str, pres: list[torch.Tensor], posts: list[torch.Tensor]) -> np.ndarray:
    """(len,): the fraction of each layer's units in the flat part of its nonlinearity
    (bnlab.telemetry.probes.saturated_mask's thresholds)."""
    pairs = [_same_layout(pre, post) for pre, post in zip(pres, posts, strict=True)]
    pres, posts = [pre for pre, _ in pairs], [post for _, post in pairs]
    out = np.empty(len(pres))
    library().bnlab_saturated(len(pres), _addresses(pres), _addresses(posts), _sizes(pres),
                              SATURATION_KINDS.get(activation, 0), out.ctypes.data)
    return out


class _Step(ctypes.Structure):
    """csrc/rowstats.cpp's `Step`: one measured step's tensors and where its statistics go."""

    _fields_ = [(name, _N) for name in ("grads", "weights", "outputs", "activations")] + [
        (name, _P) for name in ("grad", "grad_sizes", "after", "before", "weight_sizes", "output", "output_sizes",
                                "pre", "post", "activation_sizes", "unit", "unit_shapes", "unit_strides")] + [
        ("kind", _INT), ("percentile_count", _INT), ("qs", _P), ("bins", _N), ("values", _P), ("histograms", _P)]


class StepStatistics:
    """A measured step's statistics (bnlab.telemetry.probes.Capture.measure) computed in one compiled call, on a thread
    of its own when `background` (it never takes the GIL, so the training thread never waits for it).

    `values`: the scalars in the probes' tag order; `histograms`: a `statistics.histogram_rows` row of
    each preactivation, then each gradient (None with bins=0). Read them after `wait()`. The tensors must
    not change until then (this object keeps them alive)."""

    def __init__(self, grads, after, before, outputs, pres, posts, unit: int, activation: str, qs: list[float],
                 bins: int, background: bool):
        self._thread = None
        if not 0 <= bins <= 255:
            raise ValueError(f"histograms take 1 to 255 bins (0: none), got {bins}")
        if len(qs) > 8:
            raise ValueError(f"at most 8 percentiles a step, got {len(qs)}")
        grads, outputs = [_dense(t) for t in grads], [_dense(t) for t in outputs]
        weights = [_same_layout(x, y) for x, y in zip(after, before, strict=True)]
        activations = [_same_layout(pre, post) for pre, post in zip(pres, posts, strict=True)]
        # pre[:, unit] (the batch and any positions) by its address and up to 3 (size, stride) dims: no tensor op
        units, dims, copies = [], [], []
        for pre in pres:
            if pre.dim() <= 4:
                offset, unit_dims = _unit_view(pre.shape, pre.stride(), unit)
                units.append(pre.data_ptr() + offset * 4)  # float32
            else:
                copies.append(pre[:, unit].contiguous())
                units.append(copies[-1].data_ptr())
                unit_dims = [(copies[-1].numel(), 1), (1, 0), (1, 0)]
            dims += unit_dims
        units = (ctypes.c_void_p * len(units))(*units)
        shapes = np.array([size for size, _ in dims], dtype=np.int64)
        strides = np.array([step for _, step in dims], dtype=np.int64)
        qs = np.asarray(qs, dtype=np.float64)
        count = len(grads) + 2 * len(weights) + len(outputs) + (5 + 2 * len(qs)) * len(activations)
        self.values = np.empty(count)
        self.histograms = np.empty((len(activations) + len(grads), 5 + 2 * bins)) if bins else None
        arrays = [_addresses(grads), _sizes(grads), _addresses([x for x, _ in weights]),
                  _addresses([y for _, y in weights]), _sizes([x for x, _ in weights]), _addresses(outputs),
                  _sizes(outputs), _addresses([pre for pre, _ in activations]),
                  _addresses([post for _, post in activations]), _sizes([pre for pre, _ in activations]), units]
        self._step = _Step(len(grads), len(weights), len(outputs), len(activations), *map(ctypes.addressof, arrays),
                           shapes.ctypes.data, strides.ctypes.data, SATURATION_KINDS.get(activation, 0), len(qs),
                           qs.ctypes.data, bins, self.values.ctypes.data,
                           self.histograms.ctypes.data if bins else None)
        self._keep = (grads, weights, outputs, activations, pres, copies, shapes, strides, qs, arrays)
        self._lib = library()
        if background:
            self._thread = self._lib.bnlab_step_start(ctypes.byref(self._step))
        else:
            self._lib.bnlab_step(ctypes.byref(self._step))

    def wait(self) -> StepStatistics:
        if self._thread is not None:
            thread, self._thread = self._thread, None
            self._lib.bnlab_step_wait(thread)
        return self

    def __del__(self):  # never free what the thread still reads
        self.wait()


def _dense(t: torch.Tensor) -> torch.Tensor:
    """`t` if its elements fill its memory without gaps (any order: channels-last too), else a contiguous copy."""
    if t.is_contiguous() or (t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last)):
        return t
    return t.contiguous()


def _same_layout(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two dense tensors whose elements lie in the same order in memory (element i of one matches the other's)."""
    if a.is_contiguous() and b.is_contiguous() and a.shape == b.shape:  # the usual case, checked first
        return a, b
    a, b = _dense(a), _dense(b)
    if a.shape != b.shape or a.stride() != b.stride():
        a, b = a.contiguous(), b.contiguous()
    return a, b


def _addresses(tensors: list[torch.Tensor]):
    return (ctypes.c_void_p * len(tensors))(*map(torch.Tensor.data_ptr, tensors))


def _sizes(tensors: list[torch.Tensor]):
    return (ctypes.c_int64 * len(tensors))(*map(torch.Tensor.numel, tensors))


@functools.lru_cache(maxsize=64)
def _unit_view(shape: torch.Size, stride: tuple[int, ...], unit: int) -> tuple[int, list[tuple[int, int]]]:
    """Where pre[:, unit] starts (in elements) in a tensor of this shape and strides, and its 3 (size, stride)
    dims: the batch, then up to two positions, padded with (1, 0)."""
    dims = [(shape[0], stride[0]), *zip(shape[2:], stride[2:], strict=True)]
    return unit * stride[1], dims + [(1, 0)] * (3 - len(dims))
