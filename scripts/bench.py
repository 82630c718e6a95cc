"""Print the performance targets as measured: telemetry cost, the loop against a plain script, the experience.

Usage: .venv/bin/python scripts/bench.py [bn|telemetry|loop|experience ...] [--repeats 5]
The same benchmarks as `bnlab bench`; every figure is a ratio measured side by side in this process.
"""

import argparse

from rich.console import Console

from bnlab.bench.targets import BENCHES, machine
from bnlab.console import print_bench


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("which", nargs="*", default=list(BENCHES), choices=list(BENCHES))
    parser.add_argument("--repeats", type=int, default=5, help="interleaved repeats (median)")
    args = parser.parse_args()
    console = Console()
    for name in args.which:
        rows = BENCHES[name]() if name == "experience" else BENCHES[name](repeats=args.repeats)
        print_bench(console, rows, machine())


if __name__ == "__main__":
    main()
