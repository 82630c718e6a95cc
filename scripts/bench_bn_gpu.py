"""bnlab's BatchNorm against torch's cuDNN kernel on a CUDA device: time and effective memory bandwidth.

Usage: python scripts/bench_bn_gpu.py  (needs a CUDA device; prints a table)

Each shape times forward+backward of both layers interleaved, with CUDA events, median of repeats.
Effective bandwidth counts the bytes a two-pass BatchNorm must move (forward: read x for the statistics,
read x and write y; backward: read x and dy for the reductions, read them again and write dx: 8 tensor
sizes), divided by the time, and is compared with what a plain device-to-device copy reaches.
"""

import statistics

import torch

from bnlab.nn import BatchNorm1d, BatchNorm2d

SHAPES = [(256, 1024), (60, 100), (128, 64, 32, 32), (128, 256, 8, 8), (64, 16, 8, 8), (256, 64, 56, 56)]


def cuda_ms(fn, iters: int) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters


def copy_bandwidth() -> float:
    x = torch.empty(256 * 1024 * 1024 // 4, device="cuda")
    y = torch.empty_like(x)
    for _ in range(3):
        y.copy_(x)
    ms = statistics.median(cuda_ms(lambda: y.copy_(x), 20) for _ in range(5))
    return 2 * x.numel() * 4 / (ms / 1e3) / 1e9  # GB/s, bytes read + written


def main() -> None:
    torch.manual_seed(0)
    copy = copy_bandwidth()
    print(f"{torch.cuda.get_device_name()} | torch {torch.__version__} | copy {copy:.0f} GB/s (read + write)")
    print(f"{'shape':>18} {'torch ms':>9} {'bnlab ms':>9} {'ratio':>6} {'torch %copy':>11} {'bnlab %copy':>11}")
    for shape in SHAPES:
        layers = {}
        for name, cls in (("torch", torch.nn.BatchNorm2d if len(shape) == 4 else torch.nn.BatchNorm1d),
                          ("bnlab", BatchNorm2d if len(shape) == 4 else BatchNorm1d)):
            layers[name] = cls(shape[1], device="cuda")
        x = torch.randn(shape, device="cuda", requires_grad=True)
        grad = torch.randn(shape, device="cuda")

        def step(layer, x=x, grad=grad):
            return lambda: layer(x).backward(grad)

        iters = max(5, int(2e8 // (x.numel() * 4 * 8)))
        times = {"torch": [], "bnlab": []}
        for name in layers:
            cuda_ms(step(layers[name]), 3)  # warm up
        for repeat in range(7):
            for name in (("torch", "bnlab") if repeat % 2 == 0 else ("bnlab", "torch")):
                times[name].append(cuda_ms(step(layers[name]), iters))
        t, b = statistics.median(times["torch"]), statistics.median(times["bnlab"])
        bytes_moved = 8 * x.numel() * 4
        t_bw, b_bw = bytes_moved / (t / 1e3) / 1e9, bytes_moved / (b / 1e3) / 1e9
        print(f"{'x'.join(map(str, shape)):>18} {t:9.4f} {b:9.4f} {b / t:6.2f} {100 * t_bw / copy:10.0f}% "
              f"{100 * b_bw / copy:10.0f}%")


if __name__ == "__main__":
    main()
