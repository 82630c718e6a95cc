"""A child Python process that draws figures while training goes on.

Jobs go in pickled on the child's stdin, results come back pickled on its stdout and
are collected by a reader thread. A plain `python -m bnlab.telemetry.drawer` child, not
multiprocessing: multiprocessing's spawn re-imports the parent's main script, which
breaks any user script without a `__main__` guard. The child has no torch and its own
GIL, and runs at the lowest priority (nice 19), so drawing never stalls the training loop:
with two children at normal priority the training thread of a default run lost 0.47-0.67 s
to them (its wall minus CPU time over plain steps), niced 0.02 s. When the parent dies, the
child sees end-of-file (or a broken pipe) and exits quietly.
"""

from __future__ import annotations

import pickle
import queue
import subprocess
import sys
import threading

_FAILED = object()
_shared: list[Drawer] = []


def shared_drawers(count: int) -> list[Drawer]:
    """This process's `count` drawing children, started on first use and kept for the next run: a
    sweep's jobs run one after another in one process, and each start costs a matplotlib import
    (~0.5 s). A child with results still due (a run that failed) or that has exited is replaced."""
    global _shared
    _shared = [drawer if not drawer.pending and drawer._process.poll() is None else Drawer()
               for drawer in _shared[:count]]
    _shared += [Drawer() for _ in range(count - len(_shared))]
    return list(_shared)


class Drawer:
    """Calls `bnlab.telemetry.image_figures.draw(*args)` in a child process, in submission order."""

    def __init__(self) -> None:
        self._process = subprocess.Popen([sys.executable, "-m", "bnlab.telemetry.drawer"], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE)
        self._results: queue.Queue = queue.Queue()
        self.pending = 0
        threading.Thread(target=self._read, daemon=True).start()

    def submit(self, *args) -> None:
        pickle.dump(args, self._process.stdin)
        self._process.stdin.flush()
        self.pending += 1

    def finished(self, wait: bool) -> list:
        """Results ready now (or, with wait, every result still due), oldest first."""
        results = []
        while self.pending:
            try:
                result = self._results.get(block=wait)
            except queue.Empty:
                break
            if result is _FAILED:
                self.pending = 0
                raise RuntimeError("the figure-drawing process stopped; see its error output above")
            self.pending -= 1
            results.append(result)
        return results

    def _read(self) -> None:
        try:
            while True:
                self._results.put(pickle.load(self._process.stdout))
        except (EOFError, OSError, pickle.UnpicklingError):
            self._results.put(_FAILED)


def _serve() -> None:
    import os

    os.nice(19)  # the lowest priority: the drawers never take a core from the training loop
    from bnlab.telemetry.image_figures import draw

    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    while True:
        try:
            args = pickle.load(stdin)
        except EOFError:
            return
        try:
            pickle.dump(draw(*args), stdout)
            stdout.flush()
        except BrokenPipeError:  # the parent ended (e.g. its run failed) while this drawing was due
            os._exit(0)  # at once: flushing stdout again at exit would only print the same error


if __name__ == "__main__":
    _serve()
