"""Where telemetry's time goes in one run: the time spent inside each telemetry call, summed.

Usage: .venv/bin/python scripts/telemetry_costs.py [OVERRIDES...]   (e.g. log.every=1 log.hist_every=1)
Complements `bnlab bench telemetry` (an end-to-end ratio, noisy on a shared machine) with a direct
account: each call's share of the run's wall time. `Telemetry.finish` includes capturing, starting the
measurement and writing the step before (`_flush`: waiting for its measurement, `PendingMeasurement.result`,
then `_write`); `Telemetry.close` is the wait for the last images to be drawn.
"""

import collections
import sys
import tempfile
import time
from pathlib import Path

from bnlab.bench.targets import _trainer
from bnlab.telemetry import images, probes, writer
from bnlab.telemetry import recorder as telemetry

CALLS = [(telemetry.Telemetry, "start"), (telemetry.Telemetry, "finish"), (telemetry.Telemetry, "close"),
         (telemetry.Telemetry, "_flush"), (telemetry.Telemetry, "_write"), (probes.Probes, "start"),
         (probes.Probes, "capture"), (probes.Capture, "start_measuring"), (probes.PendingMeasurement, "result"),
         (writer.RunWriter, "scalars"), (writer.RunWriter, "histogram_rows"), (images.ImageLog, "render")]


def main() -> None:
    spent = collections.Counter()
    for owner, name in CALLS:
        original = getattr(owner, name)

        def timed(*args, _original=original, _key=f"{owner.__name__}.{name}", **kwargs):
            start = time.perf_counter()
            try:
                return _original(*args, **kwargs)
            finally:
                spent[_key] += time.perf_counter() - start

        setattr(owner, name, timed)
    run = _trainer(sys.argv[1:], Path(tempfile.mkdtemp()))
    run()  # warm-up: imports, the drawing process
    spent.clear()
    start = time.perf_counter()
    run()
    total = time.perf_counter() - start
    print(f"run with {' '.join(sys.argv[1:]) or 'the defaults'}: {total:.2f} s")
    for key, seconds in spent.most_common():
        print(f"  {key:<22} {seconds * 1e3:8.0f} ms  {seconds / total:6.1%}")


if __name__ == "__main__":
    main()
