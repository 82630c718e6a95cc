"""bnlab's compiled loops: row statistics (csrc/rowstats.cpp), TensorBoard summaries (csrc/events.cpp) and
BatchNorm of CPU float32 tensors (csrc/batchnorm.cpp, called by bnlab.nn.functional), built on first use into
one library, called through ctypes.

The sources are compiled once per machine with the system's C++ compiler (`$CXX`, else `c++` or `g++`;
about a second) into `$BNLAB_CACHE_DIR` (default `~/.cache/bnlab`), under a name that hashes the sources,
the compiler, its flags and the CPU it is tuned for, so an edit or another machine rebuilds it. Without
a compiler, or with `BNLAB_NATIVE=0`, `library()` is None and bnlab.rowstats computes everything with
PyTorch ops instead (the reference it is tested against), bnlab.writer builds protobuf objects and
BatchNorm runs its PyTorch path.
Only CPU float32 tensors come here: those are what a CPU training run normalizes and measures.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import torch

SOURCES = [Path(__file__).with_name("csrc") / name for name in ("rowstats.cpp", "events.cpp", "batchnorm.cpp")]
# -fno-trapping-math lets the histogram loop vectorize; -ffp-contract=off keeps k * step + first rounded twice, as
# numpy rounds its bin edges. -march=native uses this CPU's vector width; where the compiler refuses it, the
# portable build follows.
FLAGS = ["-O3", "-fno-trapping-math", "-ffp-contract=off", "-std=c++17", "-shared", "-fPIC", "-pthread"]
TUNED = ["-march=native"]
log = logging.getLogger(__name__)

_P, _N, _INT = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int  # every array is passed as its address
_SIGNATURES = {  # name: (argument types, result type)
    "bnlab_moments": ([_N, _P, _P, _INT, _P], None),
    "bnlab_update_norms": ([_N, _P, _P, _P, _P], None),
    "bnlab_histograms": ([_N, _P, _P, _N, _P, _P, _P], None),
    "bnlab_saturated": ([_N, _P, _P, _P, _INT, _P], None),
    "bnlab_step": ([_P], None),
    "bnlab_step_start": ([_P], _P),
    "bnlab_step_wait": ([_P], None),
    "bnlab_bn_forward": ([_P, _N, _N, _N, _N, _N, _N, _P, _P, ctypes.c_double, _P, _P, _P, _P, _P], None),
    "bnlab_bn_backward": ([_P, _P, _N, _N, _N, _N, _N, _N, _P, _P, _P, _INT, _P, _P, _P], None),
    "bnlab_scalar_summary": ([_N, _P, _P, _P, _P], _N),
    "bnlab_scalar_summary_size": ([_N, _P], _N),
    "bnlab_histogram_summary": ([_N, _P, _P, _P, _N, _P], _N),
    "bnlab_histogram_summary_size": ([_N, _P, _N], _N),
}
SATURATION_KINDS = {"sigmoid": 1, "tanh": 2, "relu": 3, "gelu": 4}


def cache_dir() -> Path:
    return Path(os.environ.get("BNLAB_CACHE_DIR") or Path.home() / ".cache" / "bnlab")


def library() -> ctypes.CDLL | None:
    """The compiled statistics, or None where they are switched off (BNLAB_NATIVE=0) or cannot be built."""
    if os.environ.get("BNLAB_NATIVE", "1") == "0":
        return None
    return _load()


@functools.cache
def _load() -> ctypes.CDLL | None:
    compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if compiler is None:
        log.warning("bnlab: no C++ compiler found (set CXX, or install g++); telemetry statistics use the "
                    "slower PyTorch path")
        return None
    source = b"".join(path.read_bytes() for path in SOURCES)
    errors = []
    for flags in (FLAGS + TUNED, FLAGS):
        # the name hashes the source, the compiler, the flags and, for a tuned build, this CPU: a cache shared by
        # machines with other CPUs (a cluster's home directory) never hands one a library it cannot run
        identity = [compiler, *flags] + ([_cpu()] if flags != FLAGS else [])
        target = cache_dir() / f"bnlab-{hashlib.sha256(source + repr(identity).encode()).hexdigest()[:16]}.so"
        try:
            if not target.exists():
                _build(compiler, flags, target)
            lib = ctypes.CDLL(str(target))
            break
        except (OSError, subprocess.CalledProcessError) as error:
            errors.append(str(getattr(error, "stderr", "") or error).strip()[:300])
    else:
        log.warning("bnlab: could not build %s (%s); telemetry statistics use the slower PyTorch path",
                    " and ".join(path.name for path in SOURCES), " / ".join(errors))
        return None
    for name, (argtypes, restype) in _SIGNATURES.items():
        function = getattr(lib, name)
        function.argtypes, function.restype = argtypes, restype
    return lib


def _cpu() -> str:
    """This CPU's model and instruction-set flags (Linux), else what `platform` knows."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return "\n".join(sorted({line for line in lines if line.startswith(("model name", "flags", "Features"))}))
    except OSError:
        return f"{platform.machine()} {platform.processor()}"


def _build(compiler: str, flags: list[str], target: Path) -> None:
    """Compile into a temporary file beside the target, then rename: parallel runs never load half a file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, partial = tempfile.mkstemp(dir=target.parent, suffix=".so.partial")
    os.close(handle)
    try:
        subprocess.run([compiler, *flags, *map(str, SOURCES), "-o", partial], check=True, capture_output=True,
                       text=True)
        os.replace(partial, target)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)


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
    numpy's linspace edges (as `bnlab.rowstats` makes them): the loop reads their ends and recomputes the rest."""
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
    (bnlab.probes.saturated_mask's thresholds)."""
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
    """A measured step's statistics (bnlab.probes.Capture.measure) computed in one compiled call, on a thread
    of its own when `background` (it never takes the GIL, so the training thread never waits for it).

    `values`: the scalars in bnlab.probes' tag order; `histograms`: a `bnlab.rowstats.histogram_rows` row of
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


# TensorBoard summaries (csrc/events.cpp): the serialized `Summary` protobuf of one step's records.


class Tags:
    """A list of tags encoded once (UTF-8, one after another, and where each starts) for the summaries below."""

    def __init__(self, tags: list[str]):
        encoded = [tag.encode() for tag in tags]
        self.count = len(encoded)
        self.blob = b"".join(encoded)
        self.offsets = np.cumsum([0] + [len(tag) for tag in encoded], dtype=np.int64)


def scalar_summary(tags: Tags, values: np.ndarray) -> bytes:
    """A `Summary` holding `simple_value=values[i]` (rounded to float32) for tags[i]: protobuf's own bytes."""
    values = np.ascontiguousarray(values, dtype=np.float64)
    if values.shape != (tags.count,):
        raise ValueError(f"{tags.count} tags but values of shape {values.shape}")
    lib = library()
    out = np.empty(lib.bnlab_scalar_summary_size(tags.count, tags.offsets.ctypes.data), dtype=np.uint8)
    size = lib.bnlab_scalar_summary(tags.count, tags.blob, tags.offsets.ctypes.data, values.ctypes.data,
                                    out.ctypes.data)
    return out[:size].tobytes()


def histogram_summary(tags: Tags, rows: np.ndarray) -> bytes:
    """A `Summary` holding a `HistogramProto` per tag from rows of `bnlab.rowstats.histogram_rows` (min, max,
    num, sum, sum of squares, the bins' counts, their right edges): protobuf's own bytes."""
    rows = np.ascontiguousarray(rows, dtype=np.float64)
    bins = (rows.shape[1] - 5) // 2 if rows.ndim == 2 else -1
    if rows.shape != (tags.count, 5 + 2 * bins) or not 0 <= bins <= 256:
        raise ValueError(f"{tags.count} tags want rows of 5 + 2 * bins (bins <= 256) values, got shape {rows.shape}")
    lib = library()
    out = np.empty(lib.bnlab_histogram_summary_size(tags.count, tags.offsets.ctypes.data, bins), dtype=np.uint8)
    size = lib.bnlab_histogram_summary(tags.count, tags.blob, tags.offsets.ctypes.data, rows.ctypes.data, bins,
                                       out.ctypes.data)
    return out[:size].tobytes()
