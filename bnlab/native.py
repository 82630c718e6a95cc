"""bnlab's compiled row statistics (csrc/rowstats.cpp): built on first use, called through ctypes.

The source is compiled once per machine with the system's C++ compiler (`$CXX`, else `c++` or `g++`;
about a second) into `$BNLAB_CACHE_DIR` (default `~/.cache/bnlab`), under a name that hashes the source,
the compiler, its flags and the CPU it is tuned for, so an edit or another machine rebuilds it. Without
a compiler, or with `BNLAB_NATIVE=0`, `library()` is None and bnlab.rowstats computes everything with
PyTorch ops instead (the reference it is tested against).
Only CPU float32 tensors come here: those are what a CPU training run measures.
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

import torch

SOURCE = Path(__file__).with_name("csrc") / "rowstats.cpp"
# -fno-trapping-math lets the histogram loop vectorize; -ffp-contract=off keeps k * step + first rounded twice, as
# numpy rounds its bin edges. -march=native uses this CPU's vector width; where the compiler refuses it, the
# portable build follows.
FLAGS = ["-O3", "-fno-trapping-math", "-ffp-contract=off", "-std=c++17", "-shared", "-fPIC"]
TUNED = ["-march=native"]
log = logging.getLogger(__name__)

_P, _N, _INT = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int  # every array is passed as its address
_SIGNATURES = {
    "bnlab_moments": [_N, _P, _P, _INT, _P],
    "bnlab_update_norms": [_N, _P, _P, _P, _P],
    "bnlab_histograms": [_N, _P, _P, _N, _P, _P, _P],
    "bnlab_saturated": [_N, _P, _P, _P, _INT, _P],
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
    source = SOURCE.read_bytes()
    errors = []
    for flags in (FLAGS + TUNED, FLAGS):
        # the name hashes the source, the compiler, the flags and, for a tuned build, this CPU: a cache shared by
        # machines with other CPUs (a cluster's home directory) never hands one a library it cannot run
        identity = [compiler, *flags] + ([_cpu()] if flags != FLAGS else [])
        target = cache_dir() / f"rowstats-{hashlib.sha256(source + repr(identity).encode()).hexdigest()[:16]}.so"
        try:
            if not target.exists():
                _build(compiler, flags, target)
            lib = ctypes.CDLL(str(target))
            break
        except (OSError, subprocess.CalledProcessError) as error:
            errors.append(str(getattr(error, "stderr", "") or error).strip()[:300])
    else:
        log.warning("bnlab: could not build %s (%s); telemetry statistics use the slower PyTorch path",
                    SOURCE.name, " / ".join(errors))
        return None
    for name, argtypes in _SIGNATURES.items():
        function = getattr(lib, name)
        function.argtypes, function.restype = argtypes, None
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
        subprocess.run([compiler, *flags, str(SOURCE), "-o", partial], check=True, capture_output=True, text=True)
        os.replace(partial, target)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)


def handles(tensors: list[torch.Tensor]) -> bool:
    """Whether the compiled statistics can take these tensors (CPU, float32) and are available."""
    return bool(tensors) and all(t.is_cpu and t.dtype == torch.float32 for t in tensors) \
        and library() is not None


# The wrappers below take lists of CPU float32 tensors (see `handles`) and return float64 tensors.


def moments(tensors: list[torch.Tensor], centered: bool = True) -> torch.Tensor:
    """(len, 6): sum, sum of squares, min, max, mean, population std (0 unless `centered`) of each tensor."""
    tensors = [_dense(t) for t in tensors]
    out = torch.empty(len(tensors), 6, dtype=torch.float64)
    library().bnlab_moments(len(tensors), _addresses(tensors), _sizes(tensors), int(centered), out.data_ptr())
    return out


def update_norms(after: list[torch.Tensor], before: list[torch.Tensor]) -> torch.Tensor:
    """(len, 2): the L2 norms of after[i] and of after[i] - before[i], each difference exact (in float64)."""
    pairs = [_same_layout(x, y) for x, y in zip(after, before, strict=True)]
    after, before = [x for x, _ in pairs], [y for _, y in pairs]
    out = torch.empty(len(after), 2, dtype=torch.float64)
    library().bnlab_update_norms(len(after), _addresses(after), _addresses(before), _sizes(after), out.data_ptr())
    return out


def histogram_counts(tensors: list[torch.Tensor], edges: torch.Tensor) -> torch.Tensor:
    """(len, bins) float64 counts of each tensor over its row of float64 `edges` (len, bins + 1), which must be
    numpy's linspace edges (`bnlab.rowstats._edges`): the loop reads their ends and recomputes the rest."""
    tensors = [_dense(t) for t in tensors]
    edges = edges.to(torch.float64).contiguous()
    bins = edges.shape[1] - 1
    if not 0 < bins <= 255:
        raise ValueError(f"histograms take 1 to 255 bins, got {bins}")
    scratch = torch.empty(max(t.numel() for t in tensors), dtype=torch.int32)
    out = torch.empty(len(tensors), bins, dtype=torch.float64)
    library().bnlab_histograms(len(tensors), _addresses(tensors), _sizes(tensors), bins, edges.data_ptr(),
                               scratch.data_ptr(), out.data_ptr())
    return out


def saturated(activation: str, pres: list[torch.Tensor], posts: list[torch.Tensor]) -> torch.Tensor:
    """(len,): the fraction of each layer's units in the flat part of its nonlinearity
    (bnlab.probes.saturated_mask's thresholds)."""
    pairs = [_same_layout(pre, post) for pre, post in zip(pres, posts, strict=True)]
    pres, posts = [pre for pre, _ in pairs], [post for _, post in pairs]
    out = torch.empty(len(pres), dtype=torch.float64)
    library().bnlab_saturated(len(pres), _addresses(pres), _addresses(posts), _sizes(pres),
                              SATURATION_KINDS.get(activation, 0), out.data_ptr())
    return out


def _dense(t: torch.Tensor) -> torch.Tensor:
    """`t` if its elements fill its memory without gaps (any order: channels-last too), else a contiguous copy."""
    if t.is_contiguous() or (t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last)):
        return t
    return t.contiguous()


def _same_layout(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two dense tensors whose elements lie in the same order in memory (element i of one matches the other's)."""
    a, b = _dense(a), _dense(b)
    if a.shape != b.shape or a.stride() != b.stride():
        a, b = a.contiguous(), b.contiguous()
    return a, b


def _addresses(tensors: list[torch.Tensor]):
    return (ctypes.c_void_p * len(tensors))(*[t.data_ptr() for t in tensors])


def _sizes(tensors: list[torch.Tensor]):
    return (ctypes.c_int64 * len(tensors))(*[t.numel() for t in tensors])
