"""Print bnlab's BatchNorm vs torch's native kernel: time and peak memory of forward+backward.

Usage: .venv/bin/python scripts/bench_bn.py [--repeats 7] [--threads 2] [--min-repeat-s 0.05]
"""

import argparse

from rich.console import Console
from rich.table import Table

from bnlab.bench.batchnorm import TARGET_GEOMEAN, TARGET_PEAK_RATIO, TARGET_WORST, bench_bn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="interleaved repeats per shape (median)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--min-repeat-s", type=float, default=0.05, help="minimum seconds per repeat")
    args = parser.parse_args()

    report = bench_bn(repeats=args.repeats, min_repeat_s=args.min_repeat_s, threads=args.threads)
    console = Console()
    console.width = max(console.width, 100)  # pipes default to 80 columns, which folds the shapes
    console.print(f"CPU: {report.cpu} | threads: {report.threads} | torch {report.torch_version} | "
                  f"float32, train mode, forward+backward; median step per repeat, median of {args.repeats} "
                  f"interleaved repeats")
    table = Table(title="bnlab BatchNorm vs torch (ratio = bnlab / torch)")
    for column in ("layer", "shape", "torch ms", "bnlab ms", "time ratio", "peak mem ratio"):
        table.add_column(column, justify="left" if column in ("layer", "shape") else "right")
    for row in report.rows:
        table.add_row(row.layer, "x".join(map(str, row.shape)), f"{row.torch_ms:.3f}", f"{row.bnlab_ms:.3f}",
                      f"{row.ratio:.2f}" + (" (noisy)" if row.noisy else ""), f"{row.peak_ratio:.2f}")
    console.print(table)
    if not report.reliable:
        verdict = ("[yellow]inconclusive: rows marked (noisy) were disturbed by other processes "
                   "(tasks waited for a CPU over 10% of the time, or the median step took over 2x the "
                   "fastest); rerun on an idle machine[/yellow]")
    elif report.meets_target:
        verdict = "[green]meets the target[/green]"
    else:
        verdict = "[red]falls short of the target[/red]"
    console.print(f"geometric mean time ratio {report.geomean_ratio:.3f} (target <= {TARGET_GEOMEAN}), "
                  f"worst {report.worst_ratio:.3f} (target <= {TARGET_WORST}), worst peak-memory ratio "
                  f"{report.worst_peak_ratio:.2f} (target <= {TARGET_PEAK_RATIO}): {verdict}")


if __name__ == "__main__":
    main()
