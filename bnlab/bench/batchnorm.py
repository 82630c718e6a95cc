"""Speed and memory of bnlab's BatchNorm against torch's native kernel (CPU, forward + backward).

Returns numbers only; scripts/bench_bn.py and `bnlab bench bn` print them.

Timing: at each shape both layers run in the same process, interleaved repeat by repeat (the
order alternates). A repeat times each forward+backward step on its own and keeps the median
step: on a shared 2-core machine, any other busy process stalls a 2-thread OpenMP barrier for a
scheduler slice (steps of 0.2 ms were seen taking 20-700 ms), and a mean per repeat measured
those stalls rather than the kernels. Each arm reports the median over repeats; the ratio is the
median over repeats of bnlab / torch within the same repeat, so slow drifts in load hit both.

Peak memory: torch.profiler with profile_memory=True records every allocation and free made by
the CPU allocator (including temporaries inside torch's own kernel, which a dispatch-level count
would miss). Replaying those events in time order gives the highest number of bytes held at once
during one step, above what was held before it (input and upstream gradient excluded).
"""

import contextlib
import math
import os
import platform
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch.profiler import ProfilerActivity, profile

from bnlab.nn.batchnorm import BatchNorm1d, BatchNorm2d

DEFAULT_SHAPES: tuple[tuple[int, ...], ...] = (
    (256, 1024), (60, 100), (128, 64, 32, 32), (128, 256, 8, 8), (64, 16, 8, 8),
)
TARGET_GEOMEAN = 1.5  # geometric mean of time ratios over the shapes
TARGET_WORST = 2.5  # no single shape slower than this
TARGET_PEAK_RATIO = 1.0  # peak memory no more than torch's


@dataclass(frozen=True)
class BenchRow:
    shape: tuple[int, ...]
    layer: str
    torch_ms: float
    bnlab_ms: float
    ratio: float  # median over repeats of bnlab / torch in the same repeat
    torch_peak_bytes: int
    bnlab_peak_bytes: int
    peak_ratio: float  # bnlab / torch
    noisy: bool  # other processes stalled the steps (see _time_shape): the timings are suspect


@dataclass(frozen=True)
class BenchReport:
    rows: list[BenchRow]
    geomean_ratio: float
    worst_ratio: float
    worst_peak_ratio: float
    meets_target: bool  # by the numbers; trust it only when reliable
    reliable: bool  # no row was disturbed by other processes
    cpu: str
    threads: int
    torch_version: str


def bench_bn(shapes=DEFAULT_SHAPES, repeats: int = 7, min_repeat_s: float = 0.05, threads: int = 2,
             seed: int = 0) -> BenchReport:
    """Time and measure forward+backward of bnlab vs torch BatchNorm (float32, train mode)."""
    shapes = [tuple(shape) for shape in shapes]
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        times = [_time_shape(_Setup(shape, seed), repeats, min_repeat_s) for shape in shapes]
        # After all timing: once torch.profiler has run, later native kernels in the same process
        # were measured up to 100x slower (its threads fight the OpenMP pool), which would poison timings.
        peaks = [_peak_shape(_Setup(shape, seed)) for shape in shapes]
    finally:
        torch.set_num_threads(previous_threads)
    rows = [BenchRow(shape, _layer_classes(shape)[0].__name__, torch_ms, bnlab_ms, ratio,
                     torch_peak, bnlab_peak, bnlab_peak / max(torch_peak, 1), noisy)
            for shape, (torch_ms, bnlab_ms, ratio, noisy), (torch_peak, bnlab_peak)
            in zip(shapes, times, peaks, strict=True)]
    ratios = [row.ratio for row in rows]
    geomean = math.exp(statistics.fmean(math.log(r) for r in ratios))
    worst_peak = max(row.peak_ratio for row in rows)
    meets = geomean <= TARGET_GEOMEAN and max(ratios) <= TARGET_WORST and worst_peak <= TARGET_PEAK_RATIO
    reliable = not any(row.noisy for row in rows)
    return BenchReport(rows, geomean, max(ratios), worst_peak, meets, reliable, cpu_model(), threads,
                       torch.__version__)


def _layer_classes(shape: tuple[int, ...]):
    """(bnlab class, torch class) for an input shape."""
    return (BatchNorm2d, torch.nn.BatchNorm2d) if len(shape) == 4 else (BatchNorm1d, torch.nn.BatchNorm1d)


class _Setup:
    """One input, one upstream gradient and both layers, for one shape."""

    def __init__(self, shape: tuple[int, ...], seed: int) -> None:
        torch.manual_seed(seed)
        bnlab_cls, torch_cls = _layer_classes(shape)
        self.x = torch.randn(shape, requires_grad=True)
        self.grad_out = torch.randn(shape)
        self.arms = {"torch": torch_cls(shape[1]), "bnlab": bnlab_cls(shape[1])}

    def clear_grads(self, name: str) -> None:
        self.x.grad = None
        self.arms[name].zero_grad(set_to_none=True)

    def forward_backward(self, name: str) -> None:
        self.arms[name](self.x).backward(self.grad_out)

    def step(self, name: str) -> None:
        self.clear_grads(name)
        self.forward_backward(name)


def _time_shape(setup: _Setup, repeats: int, min_repeat_s: float) -> tuple[float, float, float, bool]:
    """Median ms per step of (torch, bnlab), the median paired ratio, and whether stalls showed."""
    for name in setup.arms:  # warm up allocator caches and lazy initialization
        for _ in range(3):
            setup.step(name)
    iterations = _iterations_for(lambda: setup.step("torch"), min_repeat_s)
    times: dict[str, list[float]] = {"torch": [], "bnlab": []}
    all_steps: dict[str, list[float]] = {"torch": [], "bnlab": []}
    waited_start, wall_start = _cpu_wait_seconds(), time.perf_counter()
    for repeat in range(repeats):
        for name in ("torch", "bnlab") if repeat % 2 == 0 else ("bnlab", "torch"):
            steps = []
            for _ in range(iterations):
                start = time.perf_counter()
                setup.step(name)
                steps.append(time.perf_counter() - start)
            times[name].append(statistics.median(steps) * 1e3)
            all_steps[name] += steps
    wall_s = time.perf_counter() - wall_start
    ratio = statistics.median(b / t for t, b in zip(times["torch"], times["bnlab"], strict=True))
    # Stalls show as a median step far above the fastest or, when every step stalls (a spinning
    # OpenMP barrier still burns CPU), as tasks waiting for a CPU (Linux pressure stall info).
    waited = _cpu_wait_seconds()
    noisy = (any(statistics.median(steps) > 2 * min(steps) for steps in all_steps.values())
             or (waited is not None and waited_start is not None and (waited - waited_start) > 0.1 * wall_s))
    return statistics.median(times["torch"]), statistics.median(times["bnlab"]), ratio, noisy


def _cpu_wait_seconds() -> float | None:
    """Seconds, since boot, in which some runnable task waited for a CPU (None off Linux)."""
    try:
        with open("/proc/pressure/cpu") as pressure:
            some = pressure.readline().split()  # some avg10=.. avg60=.. avg300=.. total=<microseconds>
    except OSError:
        return None
    return int(some[-1].split("=")[1]) / 1e6


def _peak_shape(setup: _Setup) -> tuple[int, int]:
    """Peak bytes of one forward+backward step of (torch, bnlab)."""
    peaks = []
    for name in ("torch", "bnlab"):
        setup.step(name)  # warm-up
        setup.clear_grads(name)  # frees of earlier gradients must not offset this step's peak
        peaks.append(_peak_bytes(lambda name=name: setup.forward_backward(name)))
    return peaks[0], peaks[1]


def _iterations_for(fn, min_seconds: float) -> int:
    """Enough calls of fn that one repeat lasts at least min_seconds (fastest of 5 calls as the unit)."""
    durations = []
    for _ in range(5):
        start = time.perf_counter()
        fn()
        durations.append(time.perf_counter() - start)
    return max(1, math.ceil(min_seconds / max(min(durations), 1e-6)))


def _peak_bytes(fn) -> int:
    """Highest net CPU-allocator bytes held at once while fn runs (see the module docstring)."""
    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]")
    held = peak = 0
    for _, nbytes in events:
        held += nbytes
        peak = max(peak, held)
    return peak


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence Kineto's C++ start/stop log lines, which go straight to file descriptor 2."""
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (Linux), else what platform reports."""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()
