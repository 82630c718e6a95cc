"""bnlab's compiled telemetry loops (`rowstats.cpp` beside this file): a measured step's statistics of CPU
float32 tensors in one call, built and loaded by bnlab's one loader (`bnlab.nn.kernels.build`, switched off by
`BNLAB_NATIVE=0`), called through ctypes. Where `library()` is None, `bnlab.telemetry.statistics` computes
the same statistics with PyTorch ops (the reference this is tested against). Where each value goes is the
layout Python declares (`bnlab.telemetry.layout`), handed over as offsets; the compiled code only names the
statistics it measures (`statistics()`).
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
    "bnlab_statistics": ([], ctypes.c_char_p),
    "bnlab_step_check": ([_P], _INT),
    "bnlab_step": ([_P], None),
    "bnlab_step_start": ([_P], _P),
    "bnlab_step_wait": ([_P], None),
}
SATURATION_KINDS = {"sigmoid": 1, "tanh": 2, "relu": 3, "gelu": 4}
MAX_PERCENTILES = 8  # of one statistic in one step (rowstats.cpp's MAX_RANKS / 2)
MAX_BINS = 255  # rowstats.cpp's histogram tallies


def library() -> ctypes.CDLL | None:
    """The compiled statistics, or None where they are switched off (BNLAB_NATIVE=0) or cannot be built."""
    return build.load((SOURCE,), _SIGNATURES, "telemetry statistics use the slower PyTorch path")


def handles(tensors: list[torch.Tensor]) -> bool:
    """Whether the compiled statistics can take these tensors (CPU, float32) and are available."""
    return bool(tensors) and all(t.is_cpu and t.dtype == torch.float32 for t in tensors) \
        and library() is not None


def statistics() -> tuple[str, ...]:
    """The names of the statistics the compiled loops measure (rowstats.cpp's BNLAB_STATISTICS), in the
    order `bnlab_step` takes their placements; () where they are not available."""
    lib = library()
    return _names(lib) if lib is not None else ()


@functools.cache
def _names(lib: ctypes.CDLL) -> tuple[str, ...]:
    return tuple(lib.bnlab_statistics().decode().split())


@functools.lru_cache(maxsize=16)
def _placements(lib: ctypes.CDLL, placements: tuple[tuple[str, float | None, int], ...]):
    """`bnlab_step`'s table of placements, one per statistic it measures (the same few layouts step after
    step), and the arrays it points to."""
    names = _names(lib)
    places: dict[str, list[tuple[float, int]]] = {name: [] for name in names}
    for statistic, q, offset in placements:
        if statistic not in places:
            raise ValueError(f"the compiled statistics measure no {statistic!r}; they measure {', '.join(names)}")
        places[statistic].append((0.0 if q is None else q, offset))
    for statistic in ("preact_percentile", "unit_percentile"):
        if len(places[statistic]) > MAX_PERCENTILES:
            raise ValueError(f"at most {MAX_PERCENTILES} percentiles of {statistic} a step, "
                             f"got {len(places[statistic])}")
    offsets = [np.array([offset for _, offset in places[name]], dtype=np.int64) for name in names]
    qs = [np.array([q for q, _ in places[name]], dtype=np.float64) for name in names]
    table = (_Placement * len(names))(*(_Placement(len(o), o.ctypes.data, q.ctypes.data)
                                         for o, q in zip(offsets, qs, strict=True)))
    return table, offsets, qs


class _Placement(ctypes.Structure):
    """rowstats.cpp's `Placement`: where one statistic's values go."""

    _fields_ = [("count", _N), ("offsets", _P), ("qs", _P)]


class _Step(ctypes.Structure):
    """rowstats.cpp's `Step`: one measured step's tensors and where its statistics go."""

    _fields_ = [(name, _N) for name in ("grads", "weights", "outputs", "activations")] + [
        (name, _P) for name in ("grad", "grad_sizes", "after", "before", "weight_sizes", "output", "output_sizes",
                                "pre", "post", "activation_sizes", "unit", "unit_shapes", "unit_strides")] + [
        ("kind", _INT), ("bins", _N), ("placements", _P), ("value_count", _N), ("histogram_count", _N),
        ("values", _P), ("histograms", _P)]


class StepStatistics:
    """A measured step's statistics (bnlab.telemetry.probes.Capture.start_measuring) computed in one compiled
    call, on a thread of its own when `background` (it never takes the GIL, so the training thread never waits
    for it).

    `placements`: (statistic, q, offset) for each tag family to fill, as `layout.step_layout` places it: the
    statistic's value of layer i goes to `values[offset + i]` (a histogram's row to `histograms[offset + i]`;
    `q`: a percentile's fraction, else None). Every statistic must be one of `statistics()`. `values` holds
    `value_count` scalars (NaN where nothing was placed), `histograms` `histogram_count` rows of
    `statistics.histogram_rows` with `bins` bins (None without rows). Read them after `wait()`. The tensors
    must not change until then (this object keeps them alive)."""

    def __init__(self, grads, after, before, outputs, pres, posts, unit: int, activation: str,
                 placements: tuple[tuple[str, float | None, int], ...], value_count: int, histogram_count: int = 0,
                 bins: int = 0, background: bool = False):
        self._thread = None
        if histogram_count and not 0 < bins <= MAX_BINS:
            raise ValueError(f"histograms take 1 to {MAX_BINS} bins, got {bins}")
        self._lib = library()
        table = _placements(self._lib, tuple(placements))
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
        self.values = np.full(value_count, np.nan)
        self.histograms = np.zeros((histogram_count, 5 + 2 * bins)) if histogram_count else None
        arrays = [_addresses(grads), _sizes(grads), _addresses([x for x, _ in weights]),
                  _addresses([y for _, y in weights]), _sizes([x for x, _ in weights]), _addresses(outputs),
                  _sizes(outputs), _addresses([pre for pre, _ in activations]),
                  _addresses([post for _, post in activations]), _sizes([pre for pre, _ in activations]), units]
        self._step = _Step(len(grads), len(weights), len(outputs), len(activations), *map(ctypes.addressof, arrays),
                           shapes.ctypes.data, strides.ctypes.data, SATURATION_KINDS.get(activation, 0), bins,
                           ctypes.addressof(table[0]), value_count, histogram_count, self.values.ctypes.data,
                           self.histograms.ctypes.data if histogram_count else None)
        if (unplaceable := self._lib.bnlab_step_check(ctypes.byref(self._step))) >= 0:
            name = _names(self._lib)[unplaceable]
            raise ValueError(f"{name} cannot go where it is placed ({[p for p in placements if p[0] == name]}): "
                             f"its layers' values must fit in the step's {value_count} values "
                             f"({histogram_count} histogram rows)")
        self._keep = (grads, weights, outputs, activations, pres, copies, shapes, strides, table, arrays)
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
