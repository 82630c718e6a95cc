"""The one loader of bnlab's compiled C++ loops, and their one switch (`BNLAB_NATIVE=0`).

A library's sources are compiled once per machine with the system's C++ compiler (`$CXX`, else `c++` or
`g++`; about a second) into `$BNLAB_CACHE_DIR` (default `~/.cache/bnlab`), under a name that hashes the
sources, the compiler, its flags and the CPU it is tuned for, so an edit or another machine rebuilds it.
Each library has a sidecar `<name>.so.sha256` (its size and SHA-256, written at build time) that is checked
before every load: a damaged cache file (a truncated copy, a disk that filled up) is rebuilt instead of
killing the process with SIGBUS when the loader maps it.
Without a compiler, or with `BNLAB_NATIVE=0`, `load` returns None and callers take their PyTorch path,
the reference the compiled loops are tested against. Used by BatchNorm (`batchnorm.cpp` beside this file)
and by bnlab's telemetry statistics.
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

# -fno-trapping-math lets loops with a compare vectorize; -ffp-contract=off keeps a * b + c rounded twice, as
# numpy rounds (histogram edges). -march=native uses this CPU's vector width; where the compiler refuses it,
# the portable build follows.
FLAGS = ["-O3", "-fno-trapping-math", "-ffp-contract=off", "-std=c++17", "-shared", "-fPIC", "-pthread"]
TUNED = ["-march=native"]
log = logging.getLogger(__name__)

# ctypes argument types: every array is passed as its address
POINTER, INT64, INT, DOUBLE = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_double


def enabled() -> bool:
    """False where the compiled loops are switched off (`BNLAB_NATIVE=0`)."""
    return os.environ.get("BNLAB_NATIVE", "1") != "0"


def cache_dir() -> Path:
    return Path(os.environ.get("BNLAB_CACHE_DIR") or Path.home() / ".cache" / "bnlab")


def load(sources: tuple[Path, ...], signatures: dict[str, tuple[list, object]], what: str) -> ctypes.CDLL | None:
    """The library built from `sources` with each function's (argument types, result type) set, or None
    where compiled code is switched off or cannot be built (`what` names the slower path in the warning)."""
    if not enabled():
        return None
    return _load(tuple(sources), tuple((name, tuple(args), result) for name, (args, result) in signatures.items()),
                 what)


@functools.cache
def _load(sources: tuple[Path, ...], signatures, what: str) -> ctypes.CDLL | None:
    compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if compiler is None:
        log.warning("bnlab: no C++ compiler found (set CXX, or install g++); %s", what)
        return None
    source = b"".join(path.read_bytes() for path in sources)
    errors = []
    for flags in (FLAGS + TUNED, FLAGS):
        # the name hashes the source, the compiler, the flags and, for a tuned build, this CPU: a cache shared by
        # machines with other CPUs (a cluster's home directory) never hands one a library it cannot run
        identity = [compiler, *flags] + ([_cpu()] if flags != FLAGS else [])
        target = cache_dir() / f"bnlab-{hashlib.sha256(source + repr(identity).encode()).hexdigest()[:16]}.so"
        try:
            if not _intact(target):
                _build(compiler, flags, sources, target)
            lib = ctypes.CDLL(str(target))
            break
        except (OSError, subprocess.CalledProcessError) as error:
            errors.append(str(getattr(error, "stderr", "") or error).strip()[:300])
    else:
        log.warning("bnlab: could not build %s (%s); %s", " and ".join(path.name for path in sources),
                    " / ".join(errors), what)
        return None
    for name, argtypes, restype in signatures:
        function = getattr(lib, name)
        function.argtypes, function.restype = list(argtypes), restype
    return lib


def _cpu() -> str:
    """This CPU's model and instruction-set flags (Linux), else what `platform` knows."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return "\n".join(sorted({line for line in lines if line.startswith(("model name", "flags", "Features"))}))
    except OSError:
        return f"{platform.machine()} {platform.processor()}"


def _fingerprint(path: Path | str) -> str:
    """'<size> <sha256>' of a file: what its sidecar records at build time."""
    data = Path(path).read_bytes()
    return f"{len(data)} {hashlib.sha256(data).hexdigest()}"


def _sidecar(target: Path) -> Path:
    return target.with_name(target.name + ".sha256")


def _intact(target: Path) -> bool:
    """Whether `target` is the library its sidecar describes; False (rebuild) where either is missing or
    they differ, so a damaged file is never handed to the dynamic loader."""
    try:
        recorded = _sidecar(target).read_text().split()
        found = _fingerprint(target).split()
    except OSError:
        return False  # not built yet, or built before sidecars existed: build it (again)
    if found == recorded:
        return True
    log.warning("bnlab: the compiled library %s is damaged (%s bytes; %s recorded when it was built); "
                "rebuilding it", target, found[0], recorded[0] if recorded else "nothing")
    return False


def _build(compiler: str, flags: list[str], sources: tuple[Path, ...], target: Path) -> None:
    """Compile into a temporary file beside the target, record its fingerprint, then rename: parallel runs
    never load half a file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, partial = tempfile.mkstemp(dir=target.parent, suffix=".so.partial")
    os.close(handle)
    sidecar_partial = partial + ".sha256"
    try:
        subprocess.run([compiler, *flags, *map(str, sources), "-o", partial], check=True, capture_output=True,
                       text=True)
        Path(sidecar_partial).write_text(_fingerprint(partial) + "\n")
        os.replace(sidecar_partial, _sidecar(target))
        os.replace(partial, target)
    finally:
        for leftover in (partial, sidecar_partial):
            if os.path.exists(leftover):
                os.unlink(leftover)
