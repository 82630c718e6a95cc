"""bnlab's BatchNorm on a CUDA device against torch's cuDNN kernel: time and effective memory bandwidth.

Usage: python scripts/bench_bn_gpu.py [--sweep]  (needs a CUDA device and Triton; prints tables)

1. The layers, forward+backward, interleaved, timed with CUDA events (median of repeats): torch's
   (cuDNN), bnlab's on its Triton kernels (the CUDA default) and bnlab's on its PyTorch path
   (BNLAB_TRITON=0), float32.
2. The Triton kernels alone on large tensors: forward (reads x twice, writes y: 3 tensor passes) and
   backward (reads x and dy twice, writes dx: 5 passes), as a fraction of what a plain
   device-to-device copy reaches (bytes read + written), timed as CUDA-graph replays so that the
   host's launch overhead stays out. #7's goal for a GPU kernel: at least 80 %.
3. --sweep: the same for other tile sizes, warps and programs per multiprocessor.
"""

import statistics
import sys

import torch

from bnlab.nn import BatchNorm1d, BatchNorm2d, triton_kernels

SHAPES = [(256, 1024), (60, 100), (128, 64, 32, 32), (128, 256, 8, 8), (64, 16, 8, 8), (256, 64, 56, 56)]
LARGE = [((256, 64, 56, 56), False), ((256, 64, 56, 56), True), ((262144, 256), False), ((128, 256, 28, 28), False)]


def cuda_ms(fn, iters: int) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters


def median_ms(fn, iters: int, repeats: int = 7) -> float:
    cuda_ms(fn, 3)  # warm up: compilation, caches
    return statistics.median(cuda_ms(fn, iters) for _ in range(repeats))


def graph_ms(fn, iters: int = 20) -> float:
    """GPU time of fn's launches, captured once in a CUDA graph and replayed: no host overhead in it."""
    fn()  # compile outside the capture
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return median_ms(graph.replay, iters)


def copy_bandwidth() -> float:
    x = torch.empty(256 * 1024 * 1024 // 4, device="cuda")
    y = torch.empty_like(x)
    ms = median_ms(lambda: y.copy_(x), 20)
    return 2 * x.numel() * 4 / (ms / 1e3) / 1e9  # GB/s, bytes read + written


def timed_step(layer, use_triton: bool, x, grad, iters: int) -> float:
    """ms for one forward+backward of layer, on bnlab's Triton kernels or not."""
    triton_kernels.ENABLED = use_triton
    try:
        return cuda_ms(lambda: layer(x).backward(grad), iters)
    finally:
        triton_kernels.ENABLED = True


def layers_table(copy: float) -> None:
    print("\n1. layers, forward+backward, float32 (ms; %copy counts 8 tensor passes)")
    print(f"{'shape':>16} {'cuDNN':>8} {'triton':>8} {'pytorch':>8} {'tri/cuDNN':>9} {'cuDNN %':>8} {'triton %':>8}")
    for shape in SHAPES:
        four_d = len(shape) == 4
        torch_layer = (torch.nn.BatchNorm2d if four_d else torch.nn.BatchNorm1d)(shape[1], device="cuda")
        ours = (BatchNorm2d if four_d else BatchNorm1d)(shape[1], device="cuda")
        x = torch.randn(shape, device="cuda", requires_grad=True)
        grad = torch.randn(shape, device="cuda")
        runs = {"cuDNN": (torch_layer, True), "triton": (ours, True), "pytorch": (ours, False)}
        iters = max(5, int(2e8 // (x.numel() * 4 * 8)))
        times = {name: [] for name in runs}
        for name in runs:
            timed_step(*runs[name], x, grad, iters)  # warm up
        for repeat in range(7):
            for name in (list(runs) if repeat % 2 == 0 else list(runs)[::-1]):
                times[name].append(timed_step(*runs[name], x, grad, iters))
        ms = {name: statistics.median(t) for name, t in times.items()}
        gbs = {name: 8 * x.numel() * 4 / (ms[name] / 1e3) / 1e9 for name in ms}
        print(f"{'x'.join(map(str, shape)):>16} {ms['cuDNN']:8.4f} {ms['triton']:8.4f} {ms['pytorch']:8.4f} "
              f"{ms['triton'] / ms['cuDNN']:9.2f} {100 * gbs['cuDNN'] / copy:7.0f}% {100 * gbs['triton'] / copy:7.0f}%")


def kernels_row(shape, channels_last, copy: float) -> tuple[float, float]:
    x = torch.randn(shape, device="cuda")
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    dy = torch.randn_like(x)
    w, b = torch.rand(shape[1], device="cuda") + 0.5, torch.randn(shape[1], device="cuda")
    y, mean, var, invstd, scale = triton_kernels.forward(x, w, b, 1e-5)
    reference = torch.nn.functional.batch_norm(x, None, None, w, b, training=True, eps=1e-5)
    assert torch.allclose(y, reference, rtol=1e-4, atol=1e-4), "forward disagrees with torch"
    fwd = graph_ms(lambda: triton_kernels.forward(x, w, b, 1e-5))
    bwd = graph_ms(lambda: triton_kernels.backward(dy, x, mean, invstd, scale, True))
    size = x.numel() * 4
    return 100 * 3 * size / (fwd / 1e3) / 1e9 / copy, 100 * 5 * size / (bwd / 1e3) / 1e9 / copy


def kernels_table(copy: float) -> None:
    print("\n2. Triton kernels alone, float32: % of copy bandwidth (goal >= 80 %)")
    print(f"{'shape':>16} {'layout':>13} {'forward':>8} {'backward':>9}")
    for shape, channels_last in LARGE:
        fwd, bwd = kernels_row(shape, channels_last, copy)
        layout = "channels-last" if channels_last else "contiguous"
        print(f"{'x'.join(map(str, shape)):>16} {layout:>13} {fwd:7.0f}% {bwd:8.0f}%")


def sweep(copy: float) -> None:
    print("\n3. sweep: % of copy bandwidth, forward / backward")
    names = ("TILE", "NUM_WARPS", "PROGRAMS_PER_SM")
    defaults = tuple(getattr(triton_kernels, name) for name in names)
    print(f"{'tile':>5} {'warps':>5} {'prog/SM':>7} "
          + " ".join(f"{'x'.join(map(str, s)) + ('cl' if cl else ''):>16}" for s, cl in LARGE))
    configs = [(4096, 4, 4), (2048, 4, 4), (8192, 4, 4), (4096, 8, 4), (4096, 4, 2), (4096, 4, 8)]
    for config in configs:
        for name, value in zip(names, config, strict=True):
            setattr(triton_kernels, name, value)
        cells = [kernels_row(shape, cl, copy) for shape, cl in LARGE]
        tile, warps, programs = config
        print(f"{tile:5d} {warps:5d} {programs:7d} "
              + " ".join(f"{f:6.0f}% / {b:4.0f}%" for f, b in cells))
    for name, value in zip(names, defaults, strict=True):
        setattr(triton_kernels, name, value)


def main() -> None:
    torch.manual_seed(0)
    assert triton_kernels.triton is not None, "Triton is not installed"
    copy = copy_bandwidth()
    print(f"{torch.cuda.get_device_name()} | torch {torch.__version__} | triton "
          f"{triton_kernels.triton.__version__} | copy {copy:.0f} GB/s (read + write)")
    layers_table(copy)
    kernels_table(copy)
    if "--sweep" in sys.argv:
        sweep(copy)


if __name__ == "__main__":
    main()
